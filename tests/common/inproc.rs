//! The engine in-process: the reference server's store (`mountd_remote::Workspace`) behind the
//! `Remote` trait (a real implementation: the same JSON bodies the HTTP routes serve, parsed by the
//! same wire types), wrapped by the fault injector and the retry layer, with a real SQLite file and a
//! real mirror directory. No process, no socket.
use async_trait::async_trait;
use bytes::Bytes;
use mountd::remote::fault::FaultyRemote;
use mountd::remote::retry::{RetryPolicy, Retrying};
use mountd::remote::types::{BulkOutcome, EventsPage, PushFile, TreePage, WriteAck, WriteOutcome};
use mountd::remote::{BodyStream, Remote, RemoteError};
use mountd::store::db::{Db, Identity, State};
use mountd::store::LocalStore;
use mountd::sync::attempt::Limits;
use mountd::sync::engine::{Engine, SyncConfig, SyncError};
use mountd::sync::progress::Progress;
use mountd_remote::{ApiError, Workspace};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Wait until every job handed to the database thread so far has run (jobs run in order: one more,
/// empty, has run only after them). A dropped caller does not take back a job it handed over.
fn drain_db(db: &Db) {
    db.run_blocking(|_| Ok::<(), mountd::store::db::StateError>(()))
        .expect("the database thread is alive");
}

/// One attempt under the watchdog and the stall guard; the path it took.
async fn attempt_path(e: Engine, limits: Limits) -> Result<&'static str, SyncError> {
    mountd::sync::attempt::attempt(&e, limits)
        .await
        .map(|a| a.path)
}

/// The reference store as a [`Remote`].
pub struct InProc {
    pub ws: Workspace,
    seq: AtomicU64,
}

impl InProc {
    pub fn new(ws: Workspace) -> InProc {
        InProc {
            ws,
            seq: AtomicU64::new(0),
        }
    }

    fn cid(&self) -> String {
        format!("inproc_{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

fn http(op: &str, e: ApiError, cid: String) -> RemoteError {
    RemoteError::Http {
        op: op.into(),
        status: e.status,
        code: e.code,
        message: e.message,
        correlation_id: cid,
        retry_after: None,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    op: &str,
    body: &[u8],
    cid: String,
) -> Result<T, RemoteError> {
    serde_json::from_slice(body).map_err(|e| RemoteError::BadData {
        op: op.into(),
        detail: format!("malformed JSON: {e}"),
        correlation_id: cid,
    })
}

/// A body that arrives in 16 KiB chunks, like one over the network.
fn chunked(body: Bytes, correlation_id: String) -> BodyStream {
    let chunks: Vec<Result<Bytes, RemoteError>> = (0..body.len().div_ceil(16 << 10))
        .map(|i| Ok(body.slice(i * (16 << 10)..((i + 1) * (16 << 10)).min(body.len()))))
        .collect();
    BodyStream {
        correlation_id,
        chunks: Box::pin(futures_util::stream::iter(chunks)),
    }
}

#[async_trait]
impl Remote for InProc {
    async fn tree(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<TreePage, RemoteError> {
        let cid = self.cid();
        let body = self
            .ws
            .tree_json(path, depth, cursor)
            .map_err(|e| http("tree", e, cid.clone()))?;
        parse("tree", &body, cid)
    }

    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        let cid = self.cid();
        let raw = self
            .ws
            .file_json(path)
            .map_err(|e| http("file", e, cid.clone()))?;
        Ok(chunked(Bytes::from(raw), cid))
    }

    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError> {
        let cid = self.cid();
        parse("events", &self.ws.events_json(cursor, limit, false), cid)
    }

    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        let cid = self.cid();
        let page: EventsPage = parse("events_tip", &self.ws.events_json(None, 1, true), cid)?;
        Ok(page.events.into_iter().next().map(|e| e.event_id))
    }

    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError> {
        Ok(chunked(Bytes::from(self.ws.export_json(path)), self.cid()))
    }

    async fn put_file(&self, path: &str, file: &PushFile) -> Result<WriteOutcome, RemoteError> {
        // A file streamed from disk: the same JSON document, read whole here.
        let body = match &file.source {
            Some(src) => {
                use base64::Engine;
                let bytes = std::fs::read(&src.abs).unwrap();
                let (head, tail) = file.stream_frame();
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                format!("{head}{b64}{tail}").into_bytes()
            }
            None => serde_json::to_vec(file).unwrap(),
        };
        written(
            "put",
            self.ws.put_json(path, &body, Some(&file.if_match)),
            self.cid(),
        )
    }

    async fn delete_file(&self, path: &str, if_match: &str) -> Result<WriteOutcome, RemoteError> {
        written(
            "delete",
            self.ws.delete_json(path, Some(if_match)),
            self.cid(),
        )
    }

    async fn bulk(&self, files: &[PushFile]) -> Result<BulkOutcome, RemoteError> {
        let cid = self.cid();
        let body = serde_json::to_vec(&serde_json::json!({ "files": files })).unwrap();
        let out = self
            .ws
            .bulk_json(&body)
            .map_err(|e| http("bulk", e, cid.clone()))?;
        parse("bulk", &out, cid)
    }
}

/// A write's answer as the HTTP client reads it: 2xx accepted, 409 conflict, 404 absent.
fn written(
    op: &str,
    r: Result<Vec<u8>, ApiError>,
    cid: String,
) -> Result<WriteOutcome, RemoteError> {
    match r {
        Ok(body) => {
            let ack: WriteAck = parse(op, &body, cid)?;
            Ok(WriteOutcome::Accepted {
                revision: ack.target_revision.or(ack.revision),
            })
        }
        Err(e) if e.status == 409 => Ok(WriteOutcome::Conflict {
            current: e
                .extra
                .get("currentRevision")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }),
        Err(e) if e.status == 404 => Ok(WriteOutcome::Absent),
        Err(e) => Err(http(op, e, cid)),
    }
}

/// A workspace, a fault injector in front of it, and an engine over a temp mirror that can be
/// "killed" (dropped with everything in memory) and reopened from its SQLite file.
pub struct Rig {
    pub ws: Workspace,
    pub faults: Arc<FaultyRemote>,
    pub tmp: tempfile::TempDir,
    pub cfg: SyncConfig,
    pub limits: Limits,
    engine: Option<Engine>,
}

impl Rig {
    pub fn new(page_size: usize) -> Rig {
        let ws = Workspace::new(page_size);
        let faults = Arc::new(FaultyRemote::new(Arc::new(InProc::new(ws.clone()))));
        Rig {
            ws,
            faults,
            tmp: tempfile::tempdir().unwrap(),
            cfg: SyncConfig {
                remote_root: "/".into(),
                tree_depth: 10,
                concurrency: 4,
                use_export: true,
                export_timeout: Duration::from_secs(2),
                allow_mass_delete: false,
                memory_budget: 64 << 20,
                mass_delete_ratio: 0.5,
                force_audit: false,
                push: Default::default(),
            },
            limits: Limits {
                idle: Duration::from_secs(10),
                cap: Duration::ZERO,
                stall_limit: 3,
            },
            engine: None,
        }
    }

    pub fn local(&self) -> PathBuf {
        self.tmp.path().join("mirror")
    }

    pub fn db_path(&self) -> PathBuf {
        self.tmp.path().join("state.db")
    }

    /// The engine, opened from disk if there is none in memory.
    pub fn engine(&mut self) -> Engine {
        if self.engine.is_none() {
            let store = LocalStore::open(&self.local()).unwrap();
            let st = State::open(
                &self.db_path(),
                &Identity {
                    base_url: "inproc://".into(),
                    workspace: "ws".into(),
                    remote_root: self.cfg.remote_root.clone(),
                    local_dir: store.root().display().to_string(),
                },
            )
            .unwrap();
            let remote = Retrying::new(
                self.faults.clone(),
                RetryPolicy {
                    max_retries: 3,
                    base_delay: Duration::from_millis(1),
                    max_wait: Duration::from_millis(50),
                    max_pacing: self.limits.idle,
                },
            );
            self.engine = Some(Engine::new(
                Arc::new(remote),
                Arc::new(store),
                Db::spawn(st).unwrap(),
                self.cfg.clone(),
                Progress::new(None, "daemon", None),
            ));
        }
        self.engine.clone().unwrap()
    }

    /// As after `kill -9`: everything in memory is gone; the next [`Rig::engine`] reopens SQLite.
    ///
    /// Nothing of the engine is still running by then when it was only driven through
    /// [`Rig::isolated`] (as every attempt of the rig is); for whatever else a test ran on the engine,
    /// every job already handed to the database thread has run when this returns.
    pub fn kill(&mut self) {
        if let Some(e) = self.engine.take() {
            drain_db(e.db());
        }
    }

    /// Run `work` on the engine in a tokio runtime of its own, as a process of its own would, and
    /// tear that runtime down before returning — whether `work` finished or was dropped halfway (see
    /// [`Rig::until_hang`]). When this returns nothing `work` started is still running: every task it
    /// spawned was dropped at its next await (aborted ones included), every blocking job that had
    /// started ran to its end (one not started never runs), and every job handed to the database
    /// thread has run. So a "killed" run writes nothing to the mirror or the state DB afterwards
    /// (a real `kill -9` cannot), and a test reads a mirror nothing else is changing.
    pub async fn isolated<T, F, Fut>(&mut self, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let e = self.engine();
        let db = e.db().clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own: a runtime can be neither started nor dropped on one of the caller's.
        std::thread::Builder::new()
            .name("rig-run".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let out = rt.block_on(work(e));
                // Waits for the workers (each task dropped at its next await) and for every blocking
                // job that started; the queued ones are dropped unstarted.
                drop(rt);
                drain_db(&db);
                drop(db);
                let _ = tx.send(out);
            })
            .unwrap();
        rx.await
            .expect("the isolated run panicked (its message is above)")
    }

    /// [`Rig::isolated`], but `work` is dropped (as a kill would drop it) as soon as a call hangs;
    /// `None` when it hung.
    pub async fn until_hang<T, F, Fut>(&mut self, work: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let faults = self.faults.clone();
        self.isolated(move |e| async move {
            tokio::select! {
                r = work(e) => Some(r),
                _ = faults.hung() => None,
            }
        })
        .await
    }

    /// A rig whose engine pushes local changes too (`--sync-mode mirror`).
    pub fn two_way(page_size: usize) -> Rig {
        let mut r = Rig::new(page_size);
        r.cfg.push.direction = mountd::sync::push::Direction::Mirror;
        r
    }

    /// Write `bytes` at `rel` in the mirror directory (parents created), as a user would.
    pub fn write_local(&self, rel: &str, bytes: &[u8]) {
        let p = self.local().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// Remove the file `rel` from the mirror directory.
    pub fn remove_local(&self, rel: &str) {
        std::fs::remove_file(self.local().join(rel)).unwrap();
    }

    /// The bytes of the mirror's file `rel` (`None`: absent).
    pub fn local_bytes(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.local().join(rel)).ok()
    }

    /// The remote's bytes at `path` (`None`: absent).
    pub fn remote_bytes(&self, path: &str) -> Option<Vec<u8>> {
        self.ws.content(path)
    }

    /// The start scan of the mirror directory: local changes recorded in the outbox.
    pub async fn record(&mut self) -> mountd::sync::push::detect::Detected {
        self.isolated(|e| async move { e.record_local(vec![String::new()]).await })
            .await
            .unwrap()
    }

    /// What `--once` does after its pull: push until nothing more goes through.
    pub async fn flush(&mut self) -> Result<mountd::sync::push::pusher::Pushed, SyncError> {
        self.isolated(|e| async move { mountd::cli::once::flush(&e).await })
            .await
    }

    /// Record the local changes, then push them.
    pub async fn push(&mut self) -> mountd::sync::push::pusher::Pushed {
        self.record().await;
        self.flush().await.unwrap()
    }

    /// One attempt under the watchdog and the stall guard ([`Rig::isolated`]).
    pub async fn attempt(&mut self) -> Result<&'static str, SyncError> {
        let limits = self.limits;
        self.isolated(move |e| attempt_path(e, limits)).await
    }

    /// Run an attempt, but drop it (as a kill would) as soon as a call hangs; `None` when it hung.
    /// Nothing the attempt started runs on once this returns ([`Rig::isolated`]).
    pub async fn attempt_until_hang(&mut self) -> Option<Result<&'static str, SyncError>> {
        let limits = self.limits;
        self.until_hang(move |e| attempt_path(e, limits)).await
    }

    pub fn put(&self, path: &str, bytes: &[u8]) {
        self.ws.put(path, bytes);
    }

    pub fn delete(&self, path: &str) {
        self.ws.delete(path);
    }

    /// The remote's files as the mirror must hold them (relative path → bytes).
    pub fn expected(&self) -> BTreeMap<String, Vec<u8>> {
        self.ws
            .files()
            .into_iter()
            .map(|(p, b)| (p.trim_start_matches('/').to_string(), b))
            .collect()
    }

    /// The mirror's files.
    pub fn actual(&self) -> BTreeMap<String, Vec<u8>> {
        if !self.local().exists() {
            return BTreeMap::new();
        }
        super::read_tree(&self.local())
    }

    pub fn assert_exact(&self) {
        let (want, got) = (self.expected(), self.actual());
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        let wrong: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && wrong.is_empty(),
            "mirror differs: missing {missing:?}, extra {extra:?}, wrong bytes {wrong:?}"
        );
    }

    /// A read on the engine's database.
    pub async fn state<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&State) -> Result<T, mountd::store::db::StateError> + Send + 'static,
    ) -> T {
        self.engine().read(f).await.unwrap()
    }
}
