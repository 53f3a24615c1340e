//! The reference store without HTTP: a [`Workspace`] answers tree, file, events and export requests
//! with exactly the JSON bodies the routes serve (no faults, no auth), for in-process clients. A
//! [`crate::RemoteHandle`] shares its store through [`crate::RemoteHandle::workspace`], and a
//! workspace can also stand alone, with no server at all.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::export::FileJson;
use crate::store::absolute;
use crate::{RemoteConfig, Shared};

/// An error answer: status, relayfile error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A relayfile workspace held in memory.
#[derive(Clone)]
pub struct Workspace {
    shared: Arc<Shared>,
    /// Keeps the (never signalled) shutdown channel of a standalone workspace open.
    _keep: Option<Arc<watch::Sender<bool>>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage {
    events: Vec<crate::store::Event>,
    next_cursor: Option<String>,
}

impl Workspace {
    /// A standalone workspace with `page_size` entries per tree page.
    pub fn new(page_size: usize) -> Workspace {
        let (tx, rx) = watch::channel(false);
        let cfg = RemoteConfig {
            page_size,
            ..Default::default()
        };
        Workspace {
            shared: Shared::new(&cfg, rx),
            _keep: Some(Arc::new(tx)),
        }
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Workspace {
        Workspace {
            shared,
            _keep: None,
        }
    }

    /// Creates or overwrites a file (UTF-8 → text, otherwise base64); appends an event.
    pub fn put(&self, path: &str, bytes: &[u8]) {
        self.shared.put_bytes(path, bytes, false);
    }

    /// Like [`Workspace::put`] but always stores base64.
    pub fn put_base64(&self, path: &str, bytes: &[u8]) {
        self.shared.put_bytes(path, bytes, true);
    }

    /// Removes a file; appends a `file.deleted` event (nothing when it did not exist).
    pub fn delete(&self, path: &str) {
        self.shared.store().delete(path);
    }

    pub fn file_count(&self) -> usize {
        self.shared.store().file_count()
    }

    pub fn set_page_size(&self, n: usize) {
        self.shared.page_size.store(n.max(1), Ordering::SeqCst);
    }

    /// Every file under `/` with its decoded bytes, sorted by path.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        self.shared
            .store()
            .snapshot("/")
            .into_iter()
            .map(|r| {
                let bytes = crate::store::decode_content(&r.content, r.base64)
                    .expect("stored content decodes");
                (r.path.clone(), bytes)
            })
            .collect()
    }

    /// `GET /fs/tree` body.
    pub fn tree_json(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        let page_size = self.shared.page_size.load(Ordering::SeqCst);
        let page = self
            .shared
            .store()
            .tree(path, depth.clamp(1, 100) as usize, cursor, page_size)
            .map_err(|m| ApiError::new(400, "bad_request", m))?;
        Ok(serde_json::to_vec(&page).expect("tree page serializes"))
    }

    /// `GET /fs/file` body.
    pub fn file_json(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let rec = self
            .shared
            .store()
            .get(&absolute(path))
            .ok_or_else(|| ApiError::new(404, "not_found", "file not found"))?;
        Ok(serde_json::to_vec(&FileJson::new(&rec, false)).expect("file serializes"))
    }

    /// `GET /fs/events` body (`desc` for the newest first).
    pub fn events_json(&self, cursor: Option<&str>, limit: u32, desc: bool) -> Vec<u8> {
        let (events, next_cursor) =
            self.shared
                .store()
                .events(cursor, limit.clamp(1, 1000) as usize, desc);
        serde_json::to_vec(&EventsPage {
            events,
            next_cursor,
        })
        .expect("events serialize")
    }

    /// `GET /fs/export?format=json` body (one consistent snapshot).
    pub fn export_json(&self, path: &str) -> Vec<u8> {
        let files = self.shared.store().snapshot(path);
        let mut out = Vec::with_capacity(64 * files.len() + 2);
        out.push(b'[');
        for (i, rec) in files.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &FileJson::new(rec, false)).expect("file serializes");
        }
        out.push(b']');
        out
    }
}
