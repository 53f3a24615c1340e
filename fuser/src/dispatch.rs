//! Requests that do not come from reading `/dev/fuse` (mountd patch).
//!
//! With FUSE over io_uring the kernel puts a request into a buffer the daemon registered with
//! io_uring and takes the answer from that buffer. The transport rebuilds the request's bytes as
//! `/dev/fuse` would have delivered them and runs them through a [`Dispatcher`]; the answer's
//! bytes (the `fuse_out_header` and its payload) arrive at the request's [`ReplySink`] instead of
//! being written to `/dev/fuse`.

use std::io;
use std::io::IoSlice;
use std::sync::Arc;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::ll::Operation;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// Receives the answer to one request: the same bytes fuser would write to `/dev/fuse`.
pub trait ReplySink: Send + Sync + std::fmt::Debug + 'static {
    /// Take the answer (`fuse_out_header` first). Called once per request that has an answer.
    fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()>;
}

/// What [`Dispatcher::dispatch`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// The file system ran it (and answered, or will answer, through the sink).
    Done,
    /// It was `FUSE_DESTROY`: answered; the session is ending.
    Destroy,
    /// The bytes were not a request fuser understands; nothing was answered.
    Invalid,
}

/// Runs raw requests against a session's file system (see [`crate::Session::dispatcher`]).
pub struct Dispatcher<FS: Filesystem> {
    se: SessionEventLoop<FS>,
}

impl<FS: Filesystem> std::fmt::Debug for Dispatcher<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("name", &self.se.thread_name)
            .finish_non_exhaustive()
    }
}

impl<FS: Filesystem> Dispatcher<FS> {
    pub(crate) fn new(se: SessionEventLoop<FS>) -> Self {
        Dispatcher { se }
    }

    /// Run one request: `data` holds exactly the bytes `/dev/fuse` would have delivered
    /// (`fuse_in_header`, the operation's arguments). The answer goes to `sink`.
    pub fn dispatch(&self, data: &[u8], sink: Arc<dyn ReplySink>) -> Dispatched {
        let Some(req) = RequestWithSender::new(self.se.ch.sender(), data) else {
            return Dispatched::Invalid;
        };
        let req = req.with_sink(sink);
        if let Ok(Operation::Destroy(_)) = req.request.operation() {
            req.reply::<ReplyEmpty>().ok();
            return Dispatched::Destroy;
        }
        req.dispatch(&self.se);
        Dispatched::Done
    }
}
