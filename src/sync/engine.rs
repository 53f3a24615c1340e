//! The sync engine's shared parts: its inputs (a [`Remote`], the local store, the database thread),
//! fetching one file with hash-skip, committing a batch of results after the durability barrier, and
//! telling the file system view what changed. The bootstrap and incremental sync build on these.
use crate::remote::body::{self, BodyError};
use crate::remote::scan::{read_file_object, BadKind, EntryOutcome};
use crate::remote::{Remote, RemoteError};
use crate::store::change::ChangeSink;
use crate::store::db::{Checkpoint, Db, FileMeta, MetaKey, State, StateError};
use crate::store::mirror::WriteError;
pub use crate::store::space::human_bytes;
use crate::store::space::{describe_space, Need};
use crate::store::{paths, LocalStore};
use crate::sync::progress::Progress;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Remote(#[from] RemoteError),
    #[error("{0}")]
    State(#[from] StateError),
    /// The local disk failed (full, read-only, permissions, I/O error): the run stops, no file is
    /// quarantined for it.
    #[error("local disk: {0}")]
    Local(String),
    #[error("stalled: {0}")]
    Stalled(String),
    /// The stall guard: no checkpoint progress in `--stall-limit` consecutive attempts.
    #[error("stalled: {0}")]
    GaveUp(String),
    #[error("refusing to delete {would} of {tracked} mirrored files at completion (the remote listing lost more than half of the tree); if that is really intended, run again with --allow-mass-delete")]
    MassDelete { would: u64, tracked: u64 },
    /// The server's history restarted or was rewound (`cause` says how it showed, see
    /// [`crate::sync::count_check`]): the listing that follows keeps every local file the server
    /// lost until the operator says to follow it.
    #[error("{cause}; it now has {server} files, the mirror {mirror}; nothing deleted; run again with --allow-mass-delete to follow it")]
    ServerRewound {
        cause: String,
        server: u64,
        mirror: u64,
    },
    /// Most files of the run failed the same way: a cause outside any one file.
    #[error("systemic failure: {failed} of {of} files failed the same way ({class}); the mirror is not reported complete")]
    Systemic { class: String, failed: u64, of: u64 },
    /// A worker task or thread died (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl SyncError {
    /// A local I/O failure on `path`, said precisely (a full disk says which file system and how much
    /// is left; a read-only file system, a permission or an I/O error names the path).
    pub fn local(path: &Path, e: &std::io::Error) -> SyncError {
        SyncError::Local(describe_local(path, e, None))
    }

    /// [`SyncError::local`] for a write that needed `need` (a full disk says how much).
    pub fn local_writing(path: &Path, e: &std::io::Error, need: Need) -> SyncError {
        SyncError::Local(describe_local(path, e, Some(need)))
    }
}

/// A local error, with what it means and the path it hit; a full disk also says how much room the
/// write needed (when known) and what the file system holding it has left.
pub fn describe_local(path: &Path, e: &std::io::Error, need: Option<Need>) -> String {
    let p = path.display();
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            let what = if e.raw_os_error() == Some(libc::EDQUOT) {
                "disk quota exceeded"
            } else {
                "the disk is full"
            };
            let mut m = format!("{what}: writing {p} failed ({e})");
            let need = need.and_then(|n| n.describe());
            let space = describe_space(path);
            match (need, space) {
                (Some(n), Some(s)) => m.push_str(&format!("; {n}, and {s}")),
                (Some(n), None) => m.push_str(&format!("; {n}")),
                (None, Some(s)) => m.push_str(&format!("; {s}")),
                (None, None) => {}
            }
            m
        }
        Some(libc::EROFS) => format!("the file system holding {p} is read-only ({e})"),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "permission denied on {p} ({e}); mountd runs as uid {}",
            nix::unistd::geteuid()
        ),
        Some(libc::EIO) => format!("I/O error on {p} ({e}): the disk may be failing"),
        _ => format!("{p}: {e}"),
    }
}

impl From<WriteError> for SyncError {
    fn from(e: WriteError) -> SyncError {
        match e {
            WriteError::Local { path, source, need } => {
                SyncError::Local(describe_local(&path, &source, need))
            }
            WriteError::Content(m) => {
                SyncError::Internal(format!("unclassified content error: {m}"))
            }
        }
    }
}

/// Now, as the RFC 3339 timestamp stored in the state DB (`last_sync_at`, `last_audit_at`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Fixed settings of the engine.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub remote_root: String,
    pub tree_depth: u32,
    pub concurrency: usize,
    pub use_export: bool,
    pub export_timeout: Duration,
    pub allow_mass_delete: bool,
    /// Bytes in flight across all concurrent reads (see [`crate::sync::content::Budget`]).
    pub memory_budget: usize,
    /// A listing that keeps less than this share of the tracked files is not trusted (mass-delete
    /// guard, and the export's plausibility check). relayfile-mount's default is 0.5.
    pub mass_delete_ratio: f64,
    /// Run one full re-listing (audit) at the next catch-up.
    pub force_audit: bool,
    /// Two-way sync: which way changes flow, and the push side's settings.
    pub push: crate::sync::push::PushConfig,
}

impl SyncConfig {
    pub fn budget(&self) -> crate::sync::content::Budget {
        crate::sync::content::Budget {
            bytes: self.memory_budget,
            readers: self.concurrency,
        }
    }
}

/// The quarantine class of a directory whose path cannot be mirrored: the files below it are not
/// counted by the mirror (see `sync::count_check`).
pub const HOSTILE_DIR: &str = "hostile directory";

/// Times a file whose body breaks while streaming is fetched again (from its first byte: the API has
/// no ranges) before the run fails.
const BODY_RETRIES: u32 = 3;

/// Why one file could not be mirrored.
#[derive(Debug)]
pub enum FileError {
    /// The server refused this file (403, 404, ...): quarantined, retried later.
    Remote(RemoteError),
    /// Its content is unusable (bad base64, hash mismatch, malformed body): quarantined.
    BadData { kind: BadKind, detail: String },
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Remote(e) => e.fmt(f),
            FileError::BadData { detail, .. } => f.write_str(detail),
        }
    }
}

impl FileError {
    /// The HTTP status when the server refused the file.
    pub fn status(&self) -> Option<u16> {
        match self {
            FileError::Remote(e) => e.status(),
            FileError::BadData { .. } => None,
        }
    }

    /// The cause, without the file's specifics: failures of one class have one cause.
    pub fn class(&self) -> String {
        match self {
            FileError::Remote(e) => match e {
                RemoteError::Http { status, code, .. } => format!("HTTP {status} {code}"),
                RemoteError::Transport { .. } => "transport error".into(),
                RemoteError::BadData { .. } => "malformed response".into(),
            },
            FileError::BadData { kind, .. } => match kind {
                BadKind::HashMismatch => "content hash mismatch".into(),
                BadKind::Content => "undecodable content".into(),
                BadKind::Entry => "malformed file object".into(),
            },
        }
    }
}

/// What the user can do about a systemic failure of `class`.
pub fn systemic_hint(class: &str) -> &'static str {
    if class.contains("hash mismatch") {
        "the bytes received do not match their contentHash: something between mountd and the server may be rewriting response bodies (a proxy, an antivirus, a content filter), or the server stores corrupt data"
    } else if class.contains("403") {
        "the token may read the listing but not the files: check its scopes and the workspace's file ACLs"
    } else if class.contains("404") {
        "the server lists files it cannot serve: check the server (and --remote-path)"
    } else {
        "check the server and the network path to it; the run resumes from its checkpoint once fixed"
    }
}

/// Fetch outcomes of one attempt, to tell a systemic cause from stragglers.
#[derive(Debug, Default)]
pub struct Tally {
    ok: u64,
    failed: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    /// `Some` when the files of the run failed the same way: every one of at least 3, or more than half
    /// of at least 20.
    pub fn systemic(&self) -> Option<SyncError> {
        systemic(self.ok, self.failed.iter().map(|(c, n)| (c.clone(), *n)))
    }
}

/// The systemic rule over `ok` successes and failures per class.
pub fn systemic(ok: u64, failed: impl Iterator<Item = (String, u64)>) -> Option<SyncError> {
    let failed: Vec<(String, u64)> = failed.collect();
    let total = ok + failed.iter().map(|(_, n)| n).sum::<u64>();
    failed.into_iter().find_map(|(class, n)| {
        ((n == total && total >= 3) || (total >= 20 && n * 2 > total)).then(|| {
            SyncError::Systemic {
                class,
                failed: n,
                of: total,
            }
        })
    })
}

/// One file to fetch: where it goes, where it comes from, and what the listing or event said of it.
#[derive(Debug, Clone)]
pub struct FetchJob {
    pub rel: String,
    pub remote: String,
    pub listed_hash: Option<String>,
    pub revision: Option<String>,
    /// The size the listing gave (a hint, for a full disk's message).
    pub listed_size: Option<u64>,
}

impl FetchJob {
    /// A file known only by its path (nothing listed about it): fetched whatever the local bytes.
    pub fn unlisted(rel: String, remote: String) -> FetchJob {
        FetchJob {
            rel,
            remote,
            listed_hash: None,
            revision: None,
            listed_size: None,
        }
    }
}

/// Outcome of fetching one file (run-level failures are the `Err` of [`Engine::fetch_one`]).
pub enum Fetched {
    /// Written (`fetched`) or verified by hash.
    Done {
        job: FetchJob,
        meta: FileMeta,
        fetched: bool,
    },
    /// This file failed on its own: quarantine it.
    Failed { job: FetchJob, error: FileError },
}

/// A file to record as quarantined, and the local path whose old record is kept meanwhile.
#[derive(Debug, Clone)]
pub struct QuarantineNote {
    pub remote: String,
    pub reason: String,
    /// The cause without the file's specifics (see [`FileError::class`]).
    pub class: String,
    pub permanent: bool,
    /// A retry of an earlier quarantine: the row keeps the snapshot that noted it (a retry is not a
    /// listing meeting the path again).
    pub retry: bool,
    pub keep: Option<String>,
}

/// A file written or verified, to record.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub rel: String,
    pub meta: FileMeta,
}

/// The files and directories one directory's listing holds (remote paths).
#[derive(Debug, Default)]
struct Listing {
    files: std::collections::HashSet<String>,
    dirs: std::collections::HashSet<String>,
}

/// What a commit records, built while a page is processed.
#[derive(Default)]
pub struct Pending {
    pub files: Vec<Recorded>,
    pub dirs: Vec<String>,
    pub deletes: Vec<String>,
    pub quarantine: Vec<QuarantineNote>,
    pub cleared: Vec<String>,
    /// Remote paths of files fetched in this batch: their ancestors are directories on the remote, so
    /// a quarantine of an ancestor as a file (one the remote has since replaced by a directory) goes.
    pub fetched: Vec<String>,
    pub queue_push: Vec<String>,
    pub queue_remove: Option<i64>,
    /// Directories whose listing failed: (remote dir, local dir, reason).
    pub unlisted: Vec<(String, Option<String>, String)>,
    /// Directories listed to their end.
    pub listed: Vec<String>,
    /// Move the events cursor here (never backwards), in the same transaction as the records.
    pub cursor: Option<String>,
    /// Pending writes that turned out to be orphans (removed from disk): forget them.
    pub orphans: Vec<String>,
    /// The traversal is over: drop the checkpoint and the queue in the same transaction.
    pub finish: bool,
    /// Records to delete while their local files stay (see [`crate::store::db::Batch::forget`]).
    pub forget: Vec<String>,
    /// Outbox rows whose change the remote now has (removed with the records).
    pub pushed: Vec<String>,
    /// Records left as they are, stamped seen by this snapshot (a local edit the listing must not
    /// sweep or overwrite).
    pub keep_seen: Vec<String>,
    /// The records describe local files mountd did not write (pushed ones): no durability barrier
    /// is needed before them (if a crash takes the user's bytes back, the file no longer matches its
    /// record and is looked at again).
    pub nothing_written: bool,
}

impl Pending {
    /// Move the file records (not the traversal bookkeeping) into a batch of their own, for an
    /// intra-page checkpoint that must not advance the cursor.
    pub fn take_records(&mut self) -> Pending {
        Pending {
            files: std::mem::take(&mut self.files),
            cleared: std::mem::take(&mut self.cleared),
            fetched: std::mem::take(&mut self.fetched),
            quarantine: std::mem::take(&mut self.quarantine),
            dirs: self.dirs.clone(),
            ..Default::default()
        }
    }
}

/// The engine. Cheap to clone (every part is shared), so each attempt can run as its own task that the
/// watchdog aborts.
#[derive(Clone)]
pub struct Engine {
    remote: Arc<dyn Remote>,
    store: Arc<LocalStore>,
    db: Db,
    cfg: Arc<SyncConfig>,
    progress: Progress,
    sink: Option<Arc<dyn ChangeSink>>,
    tally: Arc<std::sync::Mutex<Tally>>,
    /// A forced audit not run yet.
    audit_requested: Arc<std::sync::atomic::AtomicBool>,
    /// Held by whoever applies feed events (a service sync pass, a realtime batch): see
    /// [`Engine::exclusive`].
    apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// The push side's state in memory (why deletes are held, a delete storm's end).
    push_state: Arc<std::sync::Mutex<crate::sync::push::pusher::PushState>>,
    /// Wakes the service's poll loop for a pass (with its count check) now.
    check_now: Arc<tokio::sync::Notify>,
    /// Service passes in a row that put off a listing because the server kept changing.
    busy_deferrals: Arc<std::sync::atomic::AtomicU32>,
    /// Revisions mountd's own pushes created, per path (see [`Engine::own_write`]).
    own_writes: Arc<std::sync::Mutex<HashMap<String, Vec<String>>>>,
}

/// Revisions remembered per path, and paths in all (then the memory starts over: a forgotten echo
/// costs a fetch, never a wrong result).
const OWN_WRITES_PER_PATH: usize = 8;
const OWN_WRITES_PATHS: usize = 50_000;

impl Engine {
    pub fn new(
        remote: Arc<dyn Remote>,
        store: Arc<LocalStore>,
        db: Db,
        cfg: SyncConfig,
        progress: Progress,
    ) -> Engine {
        Engine {
            remote,
            store,
            db,
            audit_requested: Arc::new(std::sync::atomic::AtomicBool::new(cfg.force_audit)),
            cfg: Arc::new(cfg),
            progress,
            sink: None,
            tally: Arc::default(),
            apply_lock: Arc::default(),
            push_state: Arc::default(),
            check_now: Arc::default(),
            busy_deferrals: Arc::default(),
            own_writes: Arc::default(),
        }
    }

    /// A push of `rel` created `revision` on the remote.
    pub(crate) fn note_own_write(&self, rel: &str, revision: &str) {
        let mut m = self.own_writes.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= OWN_WRITES_PATHS && !m.contains_key(rel) {
            m.clear();
        }
        let revs = m.entry(rel.to_string()).or_default();
        if revs.len() >= OWN_WRITES_PER_PATH {
            revs.remove(0);
        }
        revs.push(revision.to_string());
    }

    /// Whether `revision` of `rel` is one mountd's own pushes created: its event is the echo of a
    /// write mountd made (and has recorded, or superseded since), never a change to apply.
    pub(crate) fn own_write(&self, rel: &str, revision: &str) -> bool {
        let m = self.own_writes.lock().unwrap_or_else(|e| e.into_inner());
        m.get(rel).is_some_and(|v| v.iter().any(|r| r == revision))
    }

    /// Exclusive use of the events cursor and of the files it covers, until the guard is dropped. The
    /// service's sync pass and the realtime stream's batches both take it, so one never applies an older
    /// event (a delete, say) after the other applied a newer one, and each reads the cursor the other
    /// committed.
    pub async fn exclusive(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.apply_lock.clone().lock_owned().await
    }

    /// Ask the service's poll loop for a pass, and its count check, now (the realtime stream
    /// reconnected without a cursor: it replays only the server's recent events).
    pub fn request_check(&self) {
        self.check_now.notify_one();
    }

    /// Put off a listing for a server that keeps changing: `true` while fewer than `limit` passes in
    /// a row did (counted); a `limit` of 0 resets the count.
    pub fn defer_busy_listing(&self, limit: u32) -> bool {
        use std::sync::atomic::Ordering;
        if limit == 0 {
            self.busy_deferrals.store(0, Ordering::Relaxed);
            return false;
        }
        if self.busy_deferrals.fetch_add(1, Ordering::Relaxed) < limit {
            return true;
        }
        self.busy_deferrals.store(0, Ordering::Relaxed);
        false
    }

    /// Resolves once [`Engine::request_check`] was called (at once if it was since the last time).
    pub async fn check_requested(&self) {
        self.check_now.notified().await
    }

    /// Tell `sink` what each later commit changes (the FUSE view's cache invalidation).
    pub fn set_sink(&mut self, sink: Arc<dyn ChangeSink>) {
        self.sink = Some(sink);
    }

    /// The sink, if any (see [`ChangeSink::before_replace`]).
    pub(crate) fn sink(&self) -> Option<&Arc<dyn ChangeSink>> {
        self.sink.as_ref()
    }

    pub(crate) fn push_state(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::sync::push::pusher::PushState> {
        self.push_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn store(&self) -> &Arc<LocalStore> {
        &self.store
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    pub(crate) fn remote(&self) -> &Arc<dyn Remote> {
        &self.remote
    }

    /// A read on the database thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, SyncError>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> Result<T, StateError> + Send + 'static,
    {
        self.db
            .run(move |st: &mut State| f(st).map_err(SyncError::from))
            .await
    }

    /// One attempt: bootstrap if the mirror is incomplete, finish an interrupted audit, or retry
    /// quarantined files and catch up from the feed. Returns how the mirror was brought up to date.
    pub async fn converge(&self) -> Result<&'static str, SyncError> {
        self.reset_tally();
        let (complete, traversal) = self
            .read(|st| Ok((st.is_complete()?, st.checkpoint()?.is_some())))
            .await?;
        let how = if !complete {
            let used = self.bootstrap().await?;
            // Directories that could not be listed (in this or an interrupted earlier attempt of the
            // bootstrap) are listed once more before the run reports.
            self.relist_unlisted().await?;
            // Replay the events since the tip taken before the snapshot, in the same run: a completed
            // run means the mirror is current as of its end (writes during a long or interrupted
            // bootstrap included). Without a feed the listing is as current as it gets.
            if self.read(|st| st.has_feed()).await? {
                self.sync_pass().await?;
            }
            used.as_str()
        } else {
            // An interrupted audit or re-listing is finished first; then directories that could not
            // be listed and files quarantined by an earlier run are tried again (a bootstrap retries
            // nothing it just failed), and the feed is caught up.
            let forced = self
                .audit_requested
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            if traversal || forced {
                self.audit().await?;
            }
            self.relist_unlisted().await?;
            self.retry_quarantine().await?;
            self.sync_pass().await?;
            if traversal || forced {
                "tree"
            } else {
                "catch-up"
            }
        };
        // "Complete" is checked against the server's own count, not assumed from the feed.
        self.confirm_complete(false).await?;
        match self.tally_systemic() {
            Some(e) => Err(e),
            None => Ok(how),
        }
    }

    /// The remote's body chunks, each arrival counted as progress.
    pub(crate) fn counted(&self, chunks: crate::remote::ByteStream) -> crate::remote::ByteStream {
        use futures_util::TryStreamExt;
        let progress = self.progress.clone();
        Box::pin(chunks.inspect_ok(move |b| progress.bytes_arrived(b.len() as u64)))
    }

    /// Fetch one file unless the local bytes already match the listed hash; its body is decoded as it
    /// streams in (memory, then a temp file), verified, and moved into place.
    pub async fn fetch_one(&self, job: FetchJob) -> Result<Fetched, SyncError> {
        // A file not on disk (most of a bootstrap) is known from one lstat, without a blocking task.
        let on_disk = match job.listed_hash {
            Some(_) => self
                .store
                .file_size(&job.rel)
                .map_err(|e| SyncError::local(&self.store.abs(&job.rel), &e))?
                .is_some(),
            None => false,
        };
        if let (Some(h), true) = (job.listed_hash.clone(), on_disk) {
            let (s, r) = (self.store.clone(), job.rel.clone());
            let size = tokio::task::spawn_blocking(move || -> std::io::Result<Option<u64>> {
                if s.matches_hash(&r, &h)? {
                    s.file_size(&r)
                } else {
                    Ok(None)
                }
            })
            .await
            .map_err(|e| SyncError::Internal(format!("hash check worker: {e}")))?
            .map_err(|e| SyncError::local(&self.store.abs(&job.rel), &e))?;
            if let Some(size) = size {
                let meta = FileMeta {
                    size,
                    revision: job.revision.clone(),
                    content_hash: job.listed_hash.clone(),
                    content_type: None,
                    local_stat: None,
                };
                return Ok(Fetched::Done {
                    job,
                    meta,
                    fetched: false,
                });
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let body = match self.remote.file(&job.remote).await {
                Ok(b) => b,
                Err(e) if e.is_per_file() => {
                    return Ok(Fetched::Failed {
                        job,
                        error: FileError::Remote(e),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let cid = body.correlation_id.clone();
            let share = self.cfg.budget().share();
            // A body within the share is read here and scanned from memory; a larger one streams.
            let (whole, reader) = match body::collect_small(self.counted(body.chunks), share).await
            {
                body::Collected::Whole(b) => (Some(b), None),
                body::Collected::Stream(s) => (None, Some(body::reader(s, share, None))),
            };
            let (store, rel) = (self.store.clone(), job.rel.clone());
            type Scanned = Result<
                (crate::remote::scan::Meta, crate::remote::scan::Decoded),
                (BadKind, String),
            >;
            let mut stager = crate::sync::content::Stager::new(store.clone(), share);
            let failures = stager.failures();
            let scanned = tokio::task::spawn_blocking(
                move || -> Result<Result<Scanned, BodyError>, WriteError> {
                    let scanned = match (whole, reader) {
                        (Some(b), _) => {
                            read_file_object(&b[..], &mut stager, || store.scratch_file())
                        }
                        (None, Some(r)) => {
                            read_file_object(r, &mut stager, || store.scratch_file())
                        }
                        (None, None) => unreachable!("a body is either whole or a stream"),
                    };
                    match scanned {
                        Ok(EntryOutcome::Ok { meta, decoded, out }) => {
                            crate::sync::content::place(&store, &rel, out, &decoded, false)?;
                            Ok(Ok(Ok((meta, decoded))))
                        }
                        Ok(EntryOutcome::Bad { reason, kind, .. }) => Ok(Ok(Err((kind, reason)))),
                        Err(e) => Ok(Err(body::classify(e, "file", &cid))),
                    }
                },
            )
            .await
            .map_err(|e| SyncError::Internal(format!("file worker: {e}")))?;
            match scanned {
                Err(write) => return Err(SyncError::from(write)),
                Ok(Ok(Err((kind, detail)))) => {
                    return Ok(Fetched::Failed {
                        job,
                        error: FileError::BadData { kind, detail },
                    })
                }
                Ok(Ok(Ok((meta, decoded)))) => {
                    let meta = FileMeta {
                        size: decoded.size,
                        revision: meta.revision.or_else(|| job.revision.clone()),
                        content_hash: Some(decoded.sha256),
                        content_type: meta.content_type,
                        local_stat: None,
                    };
                    return Ok(Fetched::Done {
                        job,
                        meta,
                        fetched: true,
                    });
                }
                Ok(Err(BodyError::Local(e))) => {
                    // The content could not be staged (or the scanner could not spool it): how much
                    // of it had arrived, and the size the listing gave.
                    let received = failures.last().map_or(0, |f| f.received);
                    let need = Need::Streaming {
                        received,
                        listed: job.listed_size,
                    };
                    return Err(SyncError::local_writing(
                        &self.store.abs(&job.rel),
                        &e,
                        need,
                    ));
                }
                Ok(Err(BodyError::Remote(e @ RemoteError::Transport { .. }))) => {
                    if tries > BODY_RETRIES {
                        return Err(e.into());
                    }
                    tracing::warn!(path = %job.remote, error = %e, "file body broke while streaming; fetching it again from its start");
                }
                Ok(Err(BodyError::Remote(e))) => {
                    return Ok(Fetched::Failed {
                        job,
                        error: FileError::BadData {
                            kind: BadKind::Entry,
                            detail: e.to_string(),
                        },
                    })
                }
                Ok(Err(BodyError::Stopped)) => {
                    return Err(SyncError::Internal("file scan stopped".into()))
                }
            }
        }
    }

    /// Persist `p` (and the checkpoint, when given) in one transaction on the database thread, after a
    /// durability barrier (`syncfs`) when files changed on disk. Counts as a progress unit.
    pub async fn commit(
        &self,
        p: Pending,
        seen: i64,
        ck: Option<Checkpoint>,
        meta: Vec<(MetaKey, String)>,
    ) -> Result<(), SyncError> {
        let store = self.store.clone();
        let changes = self
            .db
            .run(move |st: &mut State| -> Result<_, SyncError> {
                if !p.nothing_written && (!p.files.is_empty() || !p.deletes.is_empty()) {
                    store
                        .sync()
                        .map_err(|e| SyncError::local(store.root(), &e))?;
                }
                let mut b = st.batch()?;
                // Deletes first: a path deleted and another created below it (a file replaced by a
                // directory) must end with the new records.
                for rel in &p.deletes {
                    b.delete(rel)?;
                    b.pending_clear(rel)?;
                }
                for d in &p.dirs {
                    // The disk first: a file the remote replaced by this directory goes now, not
                    // when something is written below it (its record is about to become a directory's).
                    store
                        .ensure_dir(d)
                        .map_err(|e| SyncError::local(&store.abs(d), &e))?;
                    b.ensure_dir(d, seen)?;
                }
                for r in &p.files {
                    let mut meta = r.meta.clone();
                    // Known from the placement's own descriptor, or looked up now.
                    if meta.local_stat.is_none() {
                        meta.local_stat = store
                            .stat_key(&r.rel)
                            .map_err(|e| SyncError::local(&store.abs(&r.rel), &e))?;
                    }
                    b.upsert_file(&r.rel, &meta, seen)?;
                }
                for rel in &p.orphans {
                    b.pending_clear(rel)?;
                }
                for rel in &p.forget {
                    b.forget(rel)?;
                }
                for rel in &p.pushed {
                    b.outbox_remove(rel)?;
                    b.write_issue_clear(rel)?;
                }
                for rel in &p.keep_seen {
                    b.touch_seen(rel, seen)?;
                }
                for (dir, rel, reason) in &p.unlisted {
                    b.unlisted(dir, rel.as_deref(), reason, seen)?;
                }
                for dir in &p.listed {
                    b.listed(dir)?;
                }
                for q in &p.quarantine {
                    let stamp = (!q.retry).then_some(seen);
                    b.quarantine(&q.remote, &q.reason, &q.class, q.permanent, stamp)?;
                    if let Some(rel) = &q.keep {
                        b.touch_seen(rel, seen)?;
                    }
                }
                for remote in &p.cleared {
                    b.unquarantine(remote)?;
                }
                for remote in &p.fetched {
                    b.unquarantine_ancestors(remote)?;
                }
                for d in &p.queue_push {
                    b.queue_push(d)?;
                }
                if let Some(seq) = p.queue_remove {
                    b.queue_remove(seq)?;
                }
                if let Some(ck) = &ck {
                    b.set_checkpoint(ck)?;
                }
                if let Some(c) = &p.cursor {
                    b.advance_cursor(c)?;
                }
                if p.finish {
                    b.finish_traversal()?;
                }
                for (k, v) in &meta {
                    b.set_meta(*k, v)?;
                }
                let (changes, removed) = b.commit_with_removed()?;
                // Records that went with a directory (or a file replaced by a directory): their local
                // files go too. A path that is now a directory (or below a file) is left alone.
                for rel in &removed {
                    store
                        .remove_file(rel)
                        .map_err(|e| SyncError::local(&store.abs(rel), &e))?;
                }
                Ok(changes)
            })
            .await?;
        self.progress.checkpoint();
        if let (Some(sink), false) = (&self.sink, changes.is_empty()) {
            sink.changed(&changes);
        }
        Ok(())
    }

    /// Note the files about to be written, before their bytes are (their records come later): a run
    /// interrupted in between leaves them known as mountd's, so they can be removed if the remote no
    /// longer has them.
    pub async fn intend(&self, rels: Vec<String>) -> Result<(), SyncError> {
        if rels.is_empty() {
            return Ok(());
        }
        self.db
            .run(move |st: &mut State| -> Result<(), SyncError> { Ok(st.intend(&rels)?) })
            .await
    }

    /// Set meta values in a transaction of their own.
    pub async fn set_meta(&self, meta: Vec<(MetaKey, String)>) -> Result<(), SyncError> {
        self.db
            .run(move |st: &mut State| -> Result<(), SyncError> {
                let mut b = st.batch()?;
                for (k, v) in &meta {
                    b.set_meta(*k, v)?;
                }
                b.commit()?;
                Ok(())
            })
            .await
    }

    /// Record a file written or verified in `p` (a progress unit; clears any earlier quarantine).
    pub fn note_done(&self, p: &mut Pending, remote: String, rel: String, meta: FileMeta) {
        tracing::debug!(path = %remote, size = meta.size, "file written or verified");
        self.progress.file_done(&remote, meta.size);
        p.fetched.push(remote.clone());
        p.cleared.push(remote);
        p.files.push(Recorded { rel, meta });
    }

    /// Record a per-file failure in `p` and log it once.
    pub fn note_failure(&self, p: &mut Pending, q: QuarantineNote) {
        tracing::warn!(path = %q.remote, reason = %q.reason, "file quarantined");
        self.progress
            .set_error(Some(format!("{}: {}", q.remote, q.reason)));
        if !q.permanent {
            let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            *t.failed.entry(q.class.clone()).or_default() += 1;
        }
        p.quarantine.push(q);
    }

    /// A file that failed on its own.
    pub fn note_file_failure(
        &self,
        p: &mut Pending,
        job: FetchJob,
        error: &FileError,
        retry: bool,
    ) {
        self.note_failure(
            p,
            QuarantineNote {
                reason: error.to_string(),
                class: error.class(),
                remote: job.remote,
                permanent: false,
                retry,
                keep: Some(job.rel),
            },
        );
    }

    /// Per-file failures of a batch, each 404 first checked against a fresh listing of the file's
    /// directory. A file that listing no longer has vanished after it was listed or announced (deleted,
    /// or replaced by a directory): it is no straggler, so it is not quarantined and the systemic rule
    /// does not count it (a quarantine it had goes; a delete event, or the listing's sweep, says what
    /// becomes of a local copy). A file still listed, or whose directory cannot be listed, is
    /// quarantined as any other failure: the server lists a file it does not serve.
    pub async fn note_file_failures(
        &self,
        p: &mut Pending,
        failed: Vec<(FetchJob, FileError)>,
        retry: bool,
    ) -> Result<(), SyncError> {
        let mut listings = HashMap::new();
        for (job, error) in failed {
            if error.status() == Some(404)
                && self.still_listed(&job.remote, &mut listings).await? == Some(false)
            {
                tracing::info!(path = %job.remote, "file not found and no longer listed: it vanished since it was listed; not quarantined");
                p.cleared.push(job.remote);
                continue;
            }
            self.note_file_failure(p, job, &error, retry);
        }
        Ok(())
    }

    /// Whether the remote still lists the file `path`, from a depth-1 listing of its directory
    /// (`listings`: those already made, per directory; `None` for one that could not be listed). A
    /// directory that cannot be listed is looked for in its own parent, up to the remote root: gone
    /// from a listing that worked, it took the file with it. `None`: it cannot be told.
    async fn still_listed(
        &self,
        path: &str,
        listings: &mut HashMap<String, Option<Listing>>,
    ) -> Result<Option<bool>, SyncError> {
        let root = match self.cfg.remote_root.trim_end_matches('/') {
            "" => "/",
            r => r,
        };
        let (mut child, mut child_is_dir) = (path.trim_end_matches('/').to_string(), false);
        loop {
            let parent = match child.rfind('/') {
                Some(0) => "/".to_string(),
                Some(i) => child[..i].to_string(),
                None => return Ok(None),
            };
            if parent != root && !paths::is_under(root, &parent) {
                return Ok(None);
            }
            if !listings.contains_key(&parent) {
                let l = self.list_children(&parent).await?;
                listings.insert(parent.clone(), l);
            }
            match &listings[&parent] {
                Some(l) => {
                    let there = if child_is_dir {
                        l.dirs.contains(&child)
                    } else {
                        l.files.contains(&child)
                    };
                    // A directory listed by its parent but not listable itself tells nothing.
                    return Ok(match (there, child_is_dir) {
                        (false, _) => Some(false),
                        (true, false) => Some(true),
                        (true, true) => None,
                    });
                }
                None if parent == root => return Ok(None),
                None => {
                    child = parent;
                    child_is_dir = true;
                }
            }
        }
    }

    /// Every entry of a depth-1 listing of `dir` (all its pages); `None` when the server refuses to
    /// list it (400, 403, 404, 410). Transient failures fail the attempt, as in the tree pull.
    async fn list_children(&self, dir: &str) -> Result<Option<Listing>, SyncError> {
        let mut l = Listing::default();
        let mut cursor: Option<String> = None;
        loop {
            let page = match self.remote.tree(dir, 1, cursor.as_deref()).await {
                Ok(page) => page,
                Err(e) if matches!(e.status(), Some(400 | 403 | 404 | 410)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            self.progress.unit();
            for e in page.entries {
                let path = e.path.trim_end_matches('/').to_string();
                if e.is_dir() {
                    l.dirs.insert(path);
                } else {
                    l.files.insert(path);
                }
            }
            match page.next_cursor.filter(|c| !c.is_empty()) {
                Some(c) => cursor = Some(c),
                None => return Ok(Some(l)),
            }
        }
    }

    /// A remote path that cannot be mirrored (it would escape the root, hit the reserved directory...);
    /// `dir`: the listing says it is a directory (what it holds is not mirrored either).
    pub fn note_hostile(&self, p: &mut Pending, remote: String, why: &paths::Rejected, dir: bool) {
        let (what, class) = if dir {
            ("directory", HOSTILE_DIR)
        } else {
            ("path", "hostile path")
        };
        self.note_failure(
            p,
            QuarantineNote {
                reason: format!("skipped hostile {what}: {why}"),
                class: class.into(),
                remote,
                permanent: true,
                retry: false,
                keep: None,
            },
        );
    }

    /// A file fetched over the network (not merely verified): counts toward the systemic rule.
    pub fn note_fetched(&self) {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).ok += 1;
    }

    /// Start counting a new attempt's fetches.
    pub fn reset_tally(&self) {
        *self.tally.lock().unwrap_or_else(|e| e.into_inner()) = Tally::default();
    }

    /// A systemic failure among this attempt's fetches, if any.
    pub fn tally_systemic(&self) -> Option<SyncError> {
        self.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .systemic()
    }

    /// Local relative path of a remote path under the configured root.
    pub(crate) fn to_local(&self, remote: &str) -> Result<String, paths::Rejected> {
        paths::to_local(&self.cfg.remote_root, remote)
    }
}
