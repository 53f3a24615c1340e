//! Local changes while mountd runs: the plain-directory mirror watched with inotify (through the
//! `notify` crate), or the paths the writable FUSE view hands over ([`Touches`]); both settle here.
//!
//! Events only say *where* to look: each changed path is compared with its record by
//! [`Engine::record_local`] once it has settled, so the order and the exact kind of the events do not
//! matter, and mountd's own writes (already recorded when the lock is released) come out unchanged.
//! A path settles:
//! * `--change-batch-window` (5 ms) after a writer closed it, it was renamed into place (an editor's
//!   atomic save) or a directory appeared;
//! * `--file-settle-delay` after its last write when no close was seen (a writer still at it);
//! * `--atomic-save-settle-delay` after it was deleted or renamed away, so the rest of an editor's
//!   save (the new file renamed over it) is seen as one update and the path is never missing on the
//!   remote.
//!
//! A file met while walking a new directory that changed within `--file-settle-delay` is looked at
//! again once it settled (a directory moved in whole goes at once; one created with files still being
//! written does not push them half-written).
//!
//! A queue overflow in the kernel (`IN_Q_OVERFLOW`) rescans the whole mirror: no change is missed.
//! Beyond `fs.inotify.max_user_watches` new directories are not watched: the watcher says so once and
//! changes there are found by the next full scan (at start, after an overflow, and with every audit:
//! `--audit-interval`).
use crate::store::change::Touch;
use crate::store::paths::RESERVED_DIR;
use crate::sync::engine::Engine;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::Watcher as _;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// The running watcher; dropping it stops watching.
pub struct Watcher {
    _inner: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
    /// Paths seen changing that are about to be recorded (a burst in progress, when many).
    unsettled: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Touched>,
}

/// Where the writable view says which paths changed (cheap to clone, callable from any thread).
#[derive(Clone)]
pub struct Touches {
    tx: mpsc::UnboundedSender<Touched>,
    unsettled: Arc<AtomicUsize>,
}

impl Touches {
    pub fn touched(&self, rel: &str, how: Touch) {
        let seen = match how {
            Touch::Settled => Seen::Settled,
            Touch::Writing => Seen::Writing,
            Touch::Gone => Seen::Gone,
        };
        // A change counts as unsettled at once: a push about to start waits for it.
        self.unsettled.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Touched {
            rel: Some(rel.to_string()),
            seen,
        });
    }
}

impl Watcher {
    /// The sender the writable view hands its changes to.
    pub fn touches(&self) -> Touches {
        Touches {
            tx: self.tx.clone(),
            unsettled: self.unsettled.clone(),
        }
    }

    /// How many changed paths wait to settle or to be recorded: while some do, a push may wait a
    /// moment more to take them in the same batch.
    pub fn unsettled(&self) -> Arc<AtomicUsize> {
        self.unsettled.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an event says about a path.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// Complete for now: closed after writing, renamed into place, a new directory.
    Settled,
    /// Being written.
    Writing,
    /// Gone (deleted or renamed away).
    Gone,
    /// The kernel's queue overflowed: rescan everything.
    Overflow,
}

fn classify(kind: &EventKind) -> Option<Seen> {
    Some(match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Seen::Settled,
        EventKind::Create(CreateKind::Folder) => Seen::Settled,
        EventKind::Create(_) => Seen::Writing,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Seen::Gone,
        EventKind::Modify(ModifyKind::Name(_)) => Seen::Settled,
        EventKind::Modify(ModifyKind::Metadata(_)) => return None,
        EventKind::Modify(_) => Seen::Writing,
        EventKind::Remove(_) => Seen::Gone,
        _ => return None,
    })
}

/// One path seen changing (`None`: everything, after lost events).
struct Touched {
    rel: Option<String>,
    seen: Seen,
}

/// Start watching the mirror; settled changes are recorded in the outbox and `pushed` is notified.
pub fn spawn(engine: Engine, pushed: Arc<Notify>) -> Result<Watcher, String> {
    let root = engine.store().root().to_path_buf();
    let (tx, rx) = mpsc::unbounded_channel();
    let events = tx.clone();
    let at = root.clone();
    let warned = std::sync::atomic::AtomicBool::new(false);
    let mut inner = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        for t in touches_of(r, &at, &warned) {
            let _ = events.send(t);
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
    inner
        .watch(&root, notify::RecursiveMode::Recursive)
        .map_err(|e| {
            format!(
                "cannot watch {}: {e} (raise fs.inotify.max_user_watches for large trees)",
                root.display()
            )
        })?;
    Ok(settle(engine, Some(inner), tx, rx, pushed))
}

/// Settle the changes the writable view hands over (see [`Watcher::touches`]); nothing is watched.
pub fn for_view(engine: Engine, pushed: Arc<Notify>) -> Watcher {
    let (tx, rx) = mpsc::unbounded_channel();
    settle(engine, None, tx, rx, pushed)
}

fn settle(
    engine: Engine,
    inner: Option<notify::RecommendedWatcher>,
    tx: mpsc::UnboundedSender<Touched>,
    rx: mpsc::UnboundedReceiver<Touched>,
    pushed: Arc<Notify>,
) -> Watcher {
    let unsettled = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(debounce(engine, rx, pushed, unsettled.clone()));
    Watcher {
        _inner: inner,
        task,
        unsettled,
        tx,
    }
}

/// The mirror-relative path of an event's path, unless it is outside the tree or reserved.
fn relative(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    let s = rel.to_string_lossy().to_string();
    if s == RESERVED_DIR || s.starts_with(&format!("{RESERVED_DIR}/")) {
        return None;
    }
    Some(s)
}

async fn debounce(
    engine: Engine,
    mut rx: mpsc::UnboundedReceiver<Touched>,
    pushed: Arc<Notify>,
    unsettled: Arc<AtomicUsize>,
) {
    let cfg = engine.config().push.clone();
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        unsettled.store(imminent(&due, &cfg) + rx.len(), Ordering::Relaxed);
        let next = due.values().min().copied();
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                note(ev, &cfg, &mut due);
            }
            _ = sleep_until(next) => {
                // Everything the kernel has said so far first, and what settles within the batch
                // window with it: a burst of new files goes in a few transactions, not one per file.
                while let Ok(ev) = rx.try_recv() {
                    note(ev, &cfg, &mut due);
                }
                let now = Instant::now() + cfg.batch_window;
                let ready: Vec<String> = due.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
                unsettled.store(imminent(&due, &cfg) + rx.len(), Ordering::Relaxed);
                for p in &ready {
                    due.remove(p);
                }
                match engine.record_local_settled(ready, Some(cfg.file_settle)).await {
                    Ok(d) => {
                        if d.changes() > 0 || d.pending > 0 {
                            pushed.notify_one();
                        }
                        // Files found still being written in a new directory: again once settled.
                        let later = Instant::now() + cfg.file_settle;
                        for p in d.deferred {
                            due.entry(p).or_insert(later);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot record local changes; they are looked at again by the next scan"),
                }
            }
        }
    }
}

/// Paths about to be recorded (due within two batch windows): a burst in progress. A path waiting out
/// a delete's or a write's settle delay is not counted (a lone save's temp file does not hold a push).
fn imminent(due: &HashMap<String, Instant>, cfg: &crate::sync::push::PushConfig) -> usize {
    let soon = Instant::now() + cfg.batch_window * 2;
    due.values().filter(|t| **t <= soon).count()
}

/// What one inotify event says, path by path (see the module doc).
fn touches_of(
    ev: notify::Result<notify::Event>,
    root: &Path,
    warned: &std::sync::atomic::AtomicBool,
) -> Vec<Touched> {
    let everything = |seen| vec![Touched { rel: None, seen }];
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            // A watch that could not be added (the inotify limit): a rescan finds what changed there.
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "the mirror watcher lost events; rescanning the mirror (raise fs.inotify.max_user_watches for large trees)");
            }
            return everything(Seen::Settled);
        }
    };
    if ev.need_rescan() {
        tracing::warn!("the kernel's inotify queue overflowed: rescanning the mirror");
        return everything(Seen::Overflow);
    }
    let Some(seen) = classify(&ev.kind) else {
        return Vec::new();
    };
    // A rename with both names: the old one is gone (it may be the first half of an editor's save),
    // the new one settled.
    let both = matches!(
        ev.kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both))
    );
    ev.paths
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let rel = relative(root, p)?;
            let seen = if both && i == 0 { Seen::Gone } else { seen };
            Some(Touched {
                rel: Some(rel),
                seen,
            })
        })
        .collect()
}

/// Note when a touched path settles (see the module doc).
fn note(t: Touched, cfg: &crate::sync::push::PushConfig, due: &mut HashMap<String, Instant>) {
    let wait = match t.seen {
        Seen::Settled => cfg.batch_window,
        Seen::Writing => cfg.file_settle,
        Seen::Gone => cfg.atomic_save_settle,
        Seen::Overflow => cfg.batch_window,
    };
    // The whole mirror (lost events) or one path; a path seen again waits from now.
    due.insert(t.rel.unwrap_or_default(), Instant::now() + wait);
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
