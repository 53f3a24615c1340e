//! The remote: how mountd talks to a relayfile server, behind one trait.
//!
//! [`Remote`] is all the engine knows. Implementations compose like layers:
//! - [`http::HttpRemote`]: the relayfile HTTP API (one request per call, no retries);
//! - [`retry::Retrying`]: retries with backoff, `Retry-After` and the shared 429 gate, around any remote;
//! - [`fault::FaultyRemote`]: switchable faults for tests (delays, each error class, cut or hung
//!   exports, one directory listing or file failing, a hang at any call);
//! - the reference server's store in-process (in the test harness, `tests/common`).
//!
//! The realtime change stream (`/fs/ws`) is not a [`Remote`] method: [`ws`] opens it from the same
//! [`http::ClientConfig`].
//!
//! Error classes live in [`error`], wire types in [`types`], the incremental JSON scanner that decodes
//! file content as it arrives in [`scan`], and the export's entry stream in [`export`].
pub mod body;
pub mod error;
pub mod export;
pub mod fault;
pub mod http;
pub mod retry;
pub mod scan;
pub mod types;
pub mod ws;

pub use error::RemoteError;

use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use types::{BulkOutcome, EventsPage, PushFile, TreePage, WriteOutcome};

/// The chunks of a response body as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, RemoteError>> + Send>>;

/// A response body that arrives over time (a file, the export), with the request's correlation id.
/// A failure while it streams is a [`RemoteError::Transport`] with `after_status` set.
pub struct BodyStream {
    pub correlation_id: String,
    pub chunks: ByteStream,
}

/// The relayfile API as the engine uses it. Every method is one logical request.
#[async_trait::async_trait]
pub trait Remote: Send + Sync {
    /// One page of `/fs/tree` (metadata only) for directory `path`, `depth` levels down.
    async fn tree(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<TreePage, RemoteError>;
    /// `/fs/file`: one file with its content, once a 2xx status arrived; the JSON body streams in and
    /// is decoded by [`scan::read_file_object`] (a file of any size in flat memory).
    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError>;
    /// One page of the change feed, oldest first after `cursor`.
    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError>;
    /// The newest event id (`None`: empty feed). A 404 means the server has no feed.
    async fn events_tip(&self) -> Result<Option<String>, RemoteError>;
    /// `/fs/export?format=json` of `path`, once a 2xx status arrived; the body is read by
    /// [`export::stream_entries`].
    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError>;
    /// `PUT /fs/file` of one file with `If-Match: file.if_match`.
    async fn put_file(&self, path: &str, file: &PushFile) -> Result<WriteOutcome, RemoteError>;
    /// `DELETE /fs/file` with `If-Match: if_match`.
    async fn delete_file(&self, path: &str, if_match: &str) -> Result<WriteOutcome, RemoteError>;
    /// `POST /fs/bulk`: many files in one request (per-file `ifMatch`; per-file failures in the answer).
    async fn bulk(&self, files: &[PushFile]) -> Result<BulkOutcome, RemoteError>;
}

/// A shared remote is a remote (so wrappers can hold `Arc`s).
#[async_trait::async_trait]
impl<R: Remote + ?Sized> Remote for std::sync::Arc<R> {
    async fn tree(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<TreePage, RemoteError> {
        (**self).tree(path, depth, cursor).await
    }
    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        (**self).file(path).await
    }
    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError> {
        (**self).events(cursor, limit).await
    }
    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        (**self).events_tip().await
    }
    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError> {
        (**self).export(path).await
    }
    async fn put_file(&self, path: &str, file: &PushFile) -> Result<WriteOutcome, RemoteError> {
        (**self).put_file(path, file).await
    }
    async fn delete_file(&self, path: &str, if_match: &str) -> Result<WriteOutcome, RemoteError> {
        (**self).delete_file(path, if_match).await
    }
    async fn bulk(&self, files: &[PushFile]) -> Result<BulkOutcome, RemoteError> {
        (**self).bulk(files).await
    }
}
