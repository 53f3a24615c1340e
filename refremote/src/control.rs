//! Control endpoints that change the store itself, as an independent server's history can change
//! under a client: `PUT /_control/hide-events` (JSON [`HideEvents`]: events appended from now on
//! are recorded but never served, a feed with gaps) and `POST /_control/reset-store` (every file
//! and event lost, ids and revisions restarting from 1: a server with in-memory storage restarted).
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};

use super::store::HideEvents;
use super::Shared;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_control/hide-events", put(hide_events))
        .route("/_control/reset-store", post(reset_store))
}

async fn hide_events(State(s): State<Arc<Shared>>, Json(h): Json<HideEvents>) -> StatusCode {
    s.store().hide_events(h);
    StatusCode::NO_CONTENT
}

async fn reset_store(State(s): State<Arc<Shared>>) -> StatusCode {
    s.store().reset();
    StatusCode::NO_CONTENT
}
