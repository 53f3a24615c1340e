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
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// The running watcher; dropping it stops watching.
pub struct Watcher {
    _inner: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
    /// Nonzero while changed paths are about to be recorded (a burst in progress).
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
            at: Instant::now(),
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

    /// Nonzero while changed paths are about to be recorded: a push may then wait a moment more to
    /// take them in the same batch.
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

/// One path seen changing (`None`: everything, after lost events), and when.
struct Touched {
    rel: Option<String>,
    seen: Seen,
    at: Instant,
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

/// When each touched path settles, ordered by deadline: the next deadline, whether one is imminent
/// and the paths that are due all cost O(log n), so a burst of thousands of files (an untar through
/// the view) does not make every event walk every waiting path.
#[derive(Default)]
struct Due {
    at: HashMap<String, Instant>,
    order: BTreeSet<(Instant, String)>,
}

impl Due {
    /// `rel` settles at `t` (a path seen again waits from its newest event).
    fn set(&mut self, rel: String, t: Instant) {
        if let Some(old) = self.at.insert(rel.clone(), t) {
            self.order.remove(&(old, rel.clone()));
        }
        self.order.insert((t, rel));
    }

    /// `rel` settles at `t` unless it already waits.
    fn set_if_absent(&mut self, rel: String, t: Instant) {
        if !self.at.contains_key(&rel) {
            self.set(rel, t);
        }
    }

    fn next(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Whether a path settles by `t`.
    fn any_by(&self, t: Instant) -> bool {
        self.next().is_some_and(|n| n <= t)
    }

    /// The paths that settle by `t`, taken out.
    fn take_by(&mut self, t: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while self.any_by(t) {
            let Some((_, rel)) = self.order.pop_first() else {
                break;
            };
            self.at.remove(&rel);
            out.push(rel);
        }
        out
    }
}

async fn debounce(
    engine: Engine,
    mut rx: mpsc::UnboundedReceiver<Touched>,
    pushed: Arc<Notify>,
    unsettled: Arc<AtomicUsize>,
) {
    let cfg = engine.config().push.clone();
    let mut due = Due::default();
    // No event is due sooner than this after it happened.
    let quiet = cfg
        .batch_window
        .min(cfg.file_settle)
        .min(cfg.atomic_save_settle);
    loop {
        show_unsettled(&unsettled, &due, &cfg, &rx);
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                // The rest of a burst is gathered until then without a wake-up per event (an untar
                // through the view hands over thousands): nothing waits longer for it.
                let gather = ev.at + quiet;
                note(ev, &cfg, &mut due);
                show_unsettled(&unsettled, &due, &cfg, &rx);
                tokio::time::sleep_until(due.next().map_or(gather, |n| n.min(gather))).await;
                note_pending(&mut rx, &cfg, &mut due);
            }
            _ = sleep_until(due.next()) => {
                // Everything the kernel has said so far first, and what settles within the batch
                // window with it: a burst of new files goes in a few transactions, not one per file.
                note_pending(&mut rx, &cfg, &mut due);
                let ready = due.take_by(Instant::now() + cfg.batch_window);
                show_unsettled(&unsettled, &due, &cfg, &rx);
                match engine.record_local_settled(ready, Some(cfg.file_settle)).await {
                    Ok(d) => {
                        if d.changes() > 0 || d.pending > 0 {
                            pushed.notify_one();
                        }
                        // Files found still being written in a new directory: again once settled.
                        let later = Instant::now() + cfg.file_settle;
                        for p in d.deferred {
                            due.set_if_absent(p, later);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot record local changes; they are looked at again by the next scan"),
                }
            }
        }
    }
}

/// Publish what [`Watcher::unsettled`] says: the events not taken in yet, plus 1 when a path is about
/// to be recorded (due within two batch windows: a burst in progress). A path waiting out a delete's
/// or a write's settle delay does not count (a lone save's temp file does not hold a push).
fn show_unsettled(
    unsettled: &AtomicUsize,
    due: &Due,
    cfg: &crate::sync::push::PushConfig,
    rx: &mpsc::UnboundedReceiver<Touched>,
) {
    let imminent = due.any_by(Instant::now() + cfg.batch_window * 2);
    unsettled.store(usize::from(imminent) + rx.len(), Ordering::Relaxed);
}

/// Note every event already sent.
fn note_pending(
    rx: &mut mpsc::UnboundedReceiver<Touched>,
    cfg: &crate::sync::push::PushConfig,
    due: &mut Due,
) {
    while let Ok(ev) = rx.try_recv() {
        note(ev, cfg, due);
    }
}

/// What one inotify event says, path by path (see the module doc).
fn touches_of(
    ev: notify::Result<notify::Event>,
    root: &Path,
    warned: &std::sync::atomic::AtomicBool,
) -> Vec<Touched> {
    let at = Instant::now();
    let everything = |seen| {
        vec![Touched {
            rel: None,
            seen,
            at,
        }]
    };
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
                at,
            })
        })
        .collect()
}

/// Note when a touched path settles (see the module doc).
fn note(t: Touched, cfg: &crate::sync::push::PushConfig, due: &mut Due) {
    let wait = match t.seen {
        Seen::Settled => cfg.batch_window,
        Seen::Writing => cfg.file_settle,
        Seen::Gone => cfg.atomic_save_settle,
        Seen::Overflow => cfg.batch_window,
    };
    // The whole mirror (lost events) or one path; a path seen again waits from its newest event.
    due.set(t.rel.unwrap_or_default(), t.at + wait);
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_paths_come_out_by_their_newest_deadline() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut due = Due::default();
        due.set("a".into(), ms(10));
        due.set("b".into(), ms(5));
        due.set("a".into(), ms(30)); // seen again: waits from the newer event
        due.set_if_absent("b".into(), ms(100)); // already waiting: unchanged
        due.set_if_absent("c".into(), ms(20));
        assert_eq!(due.next(), Some(ms(5)));
        assert!(due.any_by(ms(5)) && !due.any_by(ms(4)));
        assert_eq!(due.take_by(ms(20)), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(due.next(), Some(ms(30)));
        assert!(due.take_by(ms(29)).is_empty());
        assert_eq!(due.take_by(ms(30)), vec!["a".to_string()]);
        assert_eq!((due.next(), due.at.len(), due.order.len()), (None, 0, 0));
    }
}
