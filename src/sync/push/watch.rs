//! Watching the plain-directory mirror (inotify, through the `notify` crate) for local changes while
//! mountd runs.
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
use crate::store::paths::RESERVED_DIR;
use crate::sync::engine::Engine;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::Watcher as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// The running watcher; dropping it stops watching.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    /// Paths seen changing that are about to be recorded (a burst in progress, when many).
    unsettled: Arc<AtomicUsize>,
}

impl Watcher {
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

/// Start watching the mirror; settled changes are recorded in the outbox and `pushed` is notified.
pub fn spawn(engine: Engine, pushed: Arc<Notify>) -> Result<Watcher, String> {
    let root = engine.store().root().to_path_buf();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut inner = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        let _ = tx.send(r);
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
    let unsettled = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(debounce(engine, root, rx, pushed, unsettled.clone()));
    Ok(Watcher {
        _inner: inner,
        task,
        unsettled,
    })
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
    root: PathBuf,
    mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    pushed: Arc<Notify>,
    unsettled: Arc<AtomicUsize>,
) {
    let cfg = engine.config().push.clone();
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut warned = false;
    loop {
        unsettled.store(imminent(&due, &cfg) + rx.len(), Ordering::Relaxed);
        let next = due.values().min().copied();
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                note(ev, &root, &cfg, &mut due, &mut warned);
            }
            _ = sleep_until(next) => {
                // Everything the kernel has said so far first, and what settles within the batch
                // window with it: a burst of new files goes in a few transactions, not one per file.
                while let Ok(ev) = rx.try_recv() {
                    note(ev, &root, &cfg, &mut due, &mut warned);
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

/// Note when the paths of one event settle (see the module doc).
fn note(
    ev: notify::Result<notify::Event>,
    root: &Path,
    cfg: &crate::sync::push::PushConfig,
    due: &mut HashMap<String, Instant>,
    warned: &mut bool,
) {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            // A watch that could not be added (the inotify limit): a rescan finds what changed there.
            if !*warned {
                *warned = true;
                tracing::warn!(error = %e, "the mirror watcher lost events; rescanning the mirror (raise fs.inotify.max_user_watches for large trees)");
            }
            due.insert(String::new(), Instant::now() + cfg.batch_window);
            return;
        }
    };
    let seen = if ev.need_rescan() {
        Some(Seen::Overflow)
    } else {
        classify(&ev.kind)
    };
    let Some(seen) = seen else { return };
    let now = Instant::now();
    if let Seen::Overflow = seen {
        tracing::warn!("the kernel's inotify queue overflowed: rescanning the mirror");
        due.insert(String::new(), now + cfg.batch_window);
        return;
    }
    let wait = |seen: &Seen| match seen {
        Seen::Settled => cfg.batch_window,
        Seen::Writing => cfg.file_settle,
        Seen::Gone => cfg.atomic_save_settle,
        Seen::Overflow => Duration::ZERO,
    };
    // A rename with both names: the old one is gone (it may be the first half of an editor's save),
    // the new one settled.
    let both = matches!(
        ev.kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both))
    );
    for (i, p) in ev.paths.iter().enumerate() {
        let seen = if both && i == 0 { &Seen::Gone } else { &seen };
        if let Some(rel) = relative(root, p) {
            due.insert(rel, now + wait(seen));
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
