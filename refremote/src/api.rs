//! The reference store without HTTP: a [`Workspace`] answers tree, file, events, export and write
//! requests with exactly the JSON bodies the routes serve (no faults, no auth, no scope; the body
//! cap holds), for in-process clients. A [`crate::RemoteHandle`] shares its store through
//! [`crate::RemoteHandle::workspace`], and a workspace can also stand alone, with no server at all.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::export::FileJson;
use crate::store::{absolute, decode_content, HideEvents};
use crate::{writes, Counts, RemoteConfig, Shared};

/// An error answer: status, relayfile error code, message and the extra members of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Members of the error body besides `code`, `message` and `correlationId`: a 409
    /// `revision_conflict` carries `expectedRevision` (the `If-Match` sent, quotes and `W/`
    /// stripped), `currentRevision` (`rev_N`) and, for text content, `currentContentPreview`
    /// (its first 120 characters). Empty for every other error.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            extra: serde_json::Map::new(),
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

    /// Hide events appended from now on from the feed and the stream (see [`HideEvents`]).
    pub fn hide_events(&self, h: HideEvents) {
        self.shared.store().hide_events(h);
    }

    /// Lose every file and event, as an in-memory server does when it restarts: event ids and
    /// revisions start again from 1.
    pub fn reset_store(&self) {
        self.shared.store().reset();
    }

    pub fn set_page_size(&self, n: usize) {
        self.shared.page_size.store(n.max(1), Ordering::SeqCst);
    }

    /// Caps write request bodies at `n` bytes (a larger one → 413 `payload_too_large`).
    pub fn set_max_body_bytes(&self, n: usize) {
        self.shared.set_max_body_bytes(n);
    }

    /// The current revision (`rev_N`) of the file at `path`.
    pub fn revision(&self, path: &str) -> Option<String> {
        self.shared.revision(path)
    }

    /// The decoded bytes of the file at `path`.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        self.shared.content(path)
    }

    /// Snapshot of the request counters (in-process writes count in `writes_applied` and
    /// `writes_per_path`, nothing else).
    pub fn counts(&self) -> Counts {
        self.shared.counts().clone()
    }

    /// Every file under `/` with its decoded bytes, sorted by path.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        self.shared
            .store()
            .snapshot("/")
            .into_iter()
            .map(|r| {
                let bytes = decode_content(&r.content, r.base64).expect("stored content decodes");
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

    /// `PUT /fs/file?path=P` with body `body` and header `If-Match: if_match`: the 202 body
    /// `{"opId","status":"queued","targetRevision"}`, or 413, 412 (no `If-Match`), 400 (bad JSON
    /// or base64), 404 (a revision for an absent path), 409 `revision_conflict`.
    pub fn put_json(
        &self,
        path: &str,
        body: &[u8],
        if_match: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        writes::put(&self.shared, path, body, if_match).map(to_vec)
    }

    /// `DELETE /fs/file?path=P` with `If-Match: if_match`: the 202 body, or 412, 404 (absent),
    /// 409 `revision_conflict`.
    pub fn delete_json(&self, path: &str, if_match: Option<&str>) -> Result<Vec<u8>, ApiError> {
        writes::delete(&self.shared, path, if_match).map(to_vec)
    }

    /// `POST /fs/bulk` with body `body`: the 202 body `{"written","errorCount","errors",
    /// "results","correlationId":""}`, or 413, 400 for the request as a whole.
    pub fn bulk_json(&self, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        writes::bulk(&self.shared, body, &BTreeMap::new(), "").map(to_vec)
    }
}

fn to_vec(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("JSON serializes")
}
