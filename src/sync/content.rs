//! File content from the remote, decoded straight to the mirror: the scanner's [`ContentTarget`]
//! keeps a small file in memory and spools a larger one into a temp file in the mirror's reserved
//! directory as its bytes arrive, so no file is ever held whole in memory; [`place`] then moves a
//! verified file into the mirror (or keeps the local copy when its bytes already match).
//!
//! Memory: every read in flight holds at most one read buffer plus one in-memory share (both
//! [`Budget::share`] bytes), and the export's batch (finished entries waiting for their intents and
//! placement on the parser's thread) holds at most [`EXPORT_QUEUE`] shares of content, a spooled file
//! counting as one: the configured budget divided among the concurrent reads, so large files take
//! their share without starving small ones.
use crate::remote::scan::{ContentTarget, Decoded, Meta};
use crate::store::mirror::{Placement, TempFile, WriteError};
use crate::store::space::Need;
use crate::store::LocalStore;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Shares of the memory budget that finished export entries waiting to be placed may hold.
pub const EXPORT_QUEUE: usize = 16;

/// The memory budget for bytes in flight, shared by the concurrent reads.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Total bytes (`--memory-budget`).
    pub bytes: usize,
    /// Concurrent file reads (`--read-concurrency`).
    pub readers: usize,
}

impl Budget {
    /// One read's share: its read buffer, and the largest content it keeps in memory.
    pub fn share(&self) -> usize {
        // Each reader holds a buffer and a share; the export also queues EXPORT_QUEUE shares.
        let parts = 2 * self.readers.max(1) + EXPORT_QUEUE;
        (self.bytes / parts).clamp(16 << 10, 1 << 20)
    }
}

/// Decoded content on its way into the mirror.
pub enum Staged {
    Mem(Vec<u8>),
    File(TempFile),
}

/// The [`ContentTarget`] writing into memory, then a temp file once the content outgrows `limit`.
pub struct Stager {
    store: Arc<LocalStore>,
    limit: usize,
    /// The current file's remote path and the bytes of it accepted so far.
    path: Option<String>,
    received: u64,
    failed: StageFailures,
}

/// Where a [`Stager`] notes its last failed write, readable after the stager moved into a scanner.
#[derive(Debug, Clone, Default)]
pub struct StageFailures(Arc<Mutex<Option<StageFailure>>>);

impl StageFailures {
    /// The last failed write, if any.
    pub fn last(&self) -> Option<StageFailure> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, f: StageFailure) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }
}

/// A write the stager could not make: which file, and how much of it had arrived before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    /// The remote path (`None` when the object had not said it yet).
    pub path: Option<String>,
    pub received: u64,
}

impl Stager {
    pub fn new(store: Arc<LocalStore>, limit: usize) -> Stager {
        Stager {
            store,
            limit,
            path: None,
            received: 0,
            failed: StageFailures::default(),
        }
    }

    /// Where the last failed write is noted.
    pub fn failures(&self) -> StageFailures {
        self.failed.clone()
    }

    fn note_failure(&self) {
        self.failed.note(StageFailure {
            path: self.path.clone(),
            received: self.received,
        });
    }
}

impl ContentTarget for Stager {
    type Out = Staged;

    fn begin(&mut self, meta: &Meta) -> io::Result<Staged> {
        self.path = meta.path.clone();
        self.received = 0;
        Ok(Staged::Mem(Vec::new()))
    }

    fn write(&mut self, out: &mut Staged, decoded: &[u8]) -> io::Result<()> {
        let r = match out {
            Staged::Mem(v) if v.len() + decoded.len() <= self.limit => {
                v.extend_from_slice(decoded);
                Ok(())
            }
            Staged::Mem(v) => {
                let spilled = self.store.temp_file().and_then(|mut t| {
                    t.write_all(v)?;
                    t.write_all(decoded)?;
                    Ok(t)
                });
                spilled.map(|t| *out = Staged::File(t))
            }
            Staged::File(t) => t.write_all(decoded),
        };
        match r {
            Ok(()) => self.received += decoded.len() as u64,
            Err(_) => self.note_failure(),
        }
        r
    }
}

/// Put verified content at `rel`; with `check_local`, keep the local file when it already holds
/// exactly these bytes.
pub fn place(
    store: &LocalStore,
    rel: &str,
    staged: Staged,
    decoded: &Decoded,
    check_local: bool,
) -> Result<Placement, WriteError> {
    if let (true, Staged::Mem(v)) = (check_local, &staged) {
        return store.write_unless_same(rel, v, &decoded.sha256);
    }
    let local = |e| WriteError::local(&store.abs(rel), e);
    if check_local
        && store.file_size(rel).map_err(local)? == Some(decoded.size)
        && store.matches_hash(rel, &decoded.sha256).map_err(local)?
    {
        return Ok(Placement::Same(None));
    }
    match staged {
        Staged::Mem(v) => store.write_atomic(rel, &v)?,
        Staged::File(t) => store
            .persist(t, rel)
            .map_err(|e| e.writing(&store.abs(rel), Need::Exact(decoded.size)))?,
    }
    Ok(Placement::Written(None))
}
