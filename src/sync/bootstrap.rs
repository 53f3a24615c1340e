//! The bootstrap: export first under its own sub-deadline, falling through to the resumable per-page
//! tree pull; completion sweeps what the authoritative listing no longer has and sets the events cursor
//! to the tip taken before the snapshot started.
use crate::remote::body::BodyError;
use crate::remote::export::{stream_entries, ExportItem};
use crate::remote::scan::{Decoded, EntryOutcome, Meta};
use crate::remote::BodyStream;
use crate::store::db::{Checkpoint, FileMeta, Kind, MetaKey, Phase, State};
use crate::store::mirror::WriteError;
use crate::store::space::Need;
use crate::store::{paths, LocalStore};
use crate::sync::content::{place, Staged, Stager, EXPORT_QUEUE};
use crate::sync::engine::{
    Engine, FetchJob, Fetched, FileError, Pending, QuarantineNote, Recorded, SyncError,
};
use futures_util::StreamExt;
use std::sync::Arc;

/// How the bootstrap got its listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUsed {
    Export,
    Tree,
}

impl PathUsed {
    pub fn as_str(self) -> &'static str {
        match self {
            PathUsed::Export => "export",
            PathUsed::Tree => "tree",
        }
    }
}

/// Deletions below this count never trip the mass-deletion guard.
const MASS_DELETE_MIN: u64 = 20;
/// Inside a large page or the export, records are committed once this many are pending and
/// [`INTRA_PAGE_EVERY`] has passed since the last commit (or at [`INTRA_PAGE_MAX`] regardless), so a kill
/// loses little work while the durability barrier (syncfs) stays rare.
const INTRA_PAGE_RECORDS: usize = 256;
const INTRA_PAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const INTRA_PAGE_MAX: usize = 4096;

fn intra_commit_due(pending: usize, last: std::time::Instant) -> bool {
    pending >= INTRA_PAGE_MAX
        || (pending >= INTRA_PAGE_RECORDS && last.elapsed() >= INTRA_PAGE_EVERY)
}

enum ExportOutcome {
    Complete,
    FallThrough(String),
}

fn segments(p: &str) -> usize {
    p.split('/').filter(|s| !s.is_empty()).count()
}

impl Engine {
    /// Resume or start a bootstrap and run it to completion.
    pub async fn bootstrap(&self) -> Result<PathUsed, SyncError> {
        let mut ck = match self.read(|st| st.checkpoint()).await? {
            Some(ck) => {
                tracing::info!(phase = ?ck.phase, dir = ?ck.current_dir, pages = ck.pages_done, "resuming bootstrap from checkpoint");
                // Files that failed in an earlier attempt are tried again (those of this attempt are
                // not: a straggler is retried by the next run, not in a loop).
                self.retry_quarantine().await?;
                ck
            }
            None => {
                let phase = if self.config().use_export {
                    Phase::Export
                } else {
                    Phase::Tree
                };
                self.new_checkpoint(phase).await?
            }
        };
        self.progress().set_total(ck.total_files);
        if ck.phase == Phase::Export {
            match self.try_export(&ck).await? {
                ExportOutcome::Complete => {
                    self.complete(&ck, PathUsed::Export).await?;
                    return Ok(PathUsed::Export);
                }
                ExportOutcome::FallThrough(reason) => {
                    tracing::warn!(%reason, "export unusable; falling through to the per-page tree pull");
                    self.progress().set_error(Some(format!("export: {reason}")));
                    ck.phase = Phase::Tree;
                    ck.snapshot = self.db().run(|st: &mut State| st.next_snapshot()).await?;
                    self.start_traversal(&mut ck).await?;
                }
            }
        }
        self.tree_pull(&mut ck).await?;
        self.complete(&ck, PathUsed::Tree).await?;
        Ok(PathUsed::Tree)
    }

    /// A fresh checkpoint: the events tip is taken here, before any listing, so nothing written during
    /// the snapshot is lost.
    pub async fn new_checkpoint(&self, phase: Phase) -> Result<Checkpoint, SyncError> {
        let (tip, feed) = match self.remote().events_tip().await {
            Ok(t) => (t, true),
            Err(e) if e.status() == Some(404) => {
                tracing::info!("the server has no events feed; the mirror will be refreshed by periodic listings");
                (None, false)
            }
            Err(e) => return Err(e.into()),
        };
        self.progress().unit();
        let mut ck = Checkpoint {
            snapshot: self.db().run(|st: &mut State| st.next_snapshot()).await?,
            phase,
            current_dir: None,
            cursor: None,
            events_tip: tip,
            feed,
            total_files: None,
            files_done: 0,
            pages_done: 0,
            scope: None,
        };
        if phase == Phase::Tree {
            self.start_traversal(&mut ck).await?;
        } else {
            self.commit(Pending::default(), ck.snapshot, Some(ck.clone()), vec![])
                .await?;
        }
        Ok(ck)
    }

    /// Start listing from the top of the checkpoint's scope (the whole remote root by default).
    async fn start_traversal(&self, ck: &mut Checkpoint) -> Result<(), SyncError> {
        ck.current_dir = None;
        ck.cursor = None;
        let root = ck
            .scope
            .clone()
            .unwrap_or_else(|| self.config().remote_root.clone());
        let ck2 = ck.clone();
        self.db()
            .run(move |st: &mut State| {
                let mut b = st.batch()?;
                b.queue_clear()?;
                b.queue_push(&root)?;
                b.set_checkpoint(&ck2)?;
                b.commit()?;
                Ok::<_, SyncError>(())
            })
            .await
    }

    /// The atomic export, applied entry by entry as it streams in.
    async fn try_export(&self, ck: &Checkpoint) -> Result<ExportOutcome, SyncError> {
        self.progress().set_phase("export");
        let sub = self.config().export_timeout;
        // What the mirror already holds: its records, or (when the state DB is new) the files on disk.
        let mut tracked_before = self.read(|st| st.tracked_files()).await?;
        if tracked_before == 0 {
            let store = self.store().clone();
            tracked_before = tokio::task::spawn_blocking(move || store.count_files(10_000_000))
                .await
                .map_err(|e| SyncError::Internal(format!("counting local files: {e}")))?;
        }
        let root = self.config().remote_root.clone();
        let started = tokio::time::timeout(sub, self.remote().export(&root)).await;
        let body = match started {
            Err(_) => {
                return Ok(ExportOutcome::FallThrough(format!(
                    "no answer within the export timeout ({})",
                    humantime::format_duration(sub)
                )))
            }
            Ok(Err(e)) if e.export_falls_through() => {
                return Ok(ExportOutcome::FallThrough(e.to_string()))
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(b)) => b,
        };
        let share = self.config().budget().share();
        let store = self.store().clone();
        let stager = Stager::new(store.clone(), share);
        let stage_failures = stager.failures();
        let mut rx = stream_entries(
            BodyStream {
                correlation_id: body.correlation_id,
                chunks: self.counted(body.chunks),
            },
            stager,
            move || store.scratch_file(),
            share,
            EXPORT_QUEUE,
        );
        let mut pending = Pending::default();
        let mut applied: u64 = 0;
        let mut last_commit = std::time::Instant::now();
        // Entries arrive decoded and verified (in memory or a temp file); they are moved into place
        // on blocking threads, up to `concurrency` at once (file creation latency overlaps), and
        // their records are committed here.
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        let mut ended: Option<Option<String>> = None;
        // An item taken while draining ready entries, handled on the next turn.
        let mut deferred: Option<ExportItem<Staged>> = None;
        loop {
            let more = ended.is_none() && inflight.len() < self.config().concurrency;
            if !more && inflight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let done: Result<Vec<Applied>, tokio::task::JoinError> = done;
                    let mut local_error = None;
                    for a in done.map_err(|e| SyncError::Internal(format!("export worker: {e}")))? {
                        applied += 1;
                        match a {
                            Applied::Ok { remote, rel, meta } => { self.note_fetched(); self.note_done(&mut pending, remote, rel, meta) }
                            Applied::Hostile { remote, why } => self.note_hostile(&mut pending, remote, &why),
                            Applied::Local(e) => local_error = local_error.or(Some(e)),
                        }
                    }
                    if let Some(e) = local_error {
                        // What the group placed before the error is committed with the rest.
                        self.commit(pending, ck.snapshot, None, vec![]).await?;
                        return Err(e.into());
                    }
                    if intra_commit_due(pending.files.len() + pending.quarantine.len(), last_commit) {
                        self.commit(std::mem::take(&mut pending), ck.snapshot, None, vec![]).await?;
                        last_commit = std::time::Instant::now();
                    }
                }
                item = async { match deferred.take() { Some(d) => Ok(Some(d)), None => tokio::time::timeout(sub, rx.next()).await } }, if more => match item {
                    Err(_) => ended = Some(Some(format!("no export entry arrived within the export timeout ({}) after {applied} entries", humantime::format_duration(sub)))),
                    Ok(None) => ended = Some(Some("export parser ended without a result".into())),
                    Ok(Some(ExportItem::Entry(EntryOutcome::Ok { meta, decoded, out }))) => {
                        // This entry and every one already waiting: their intents in one transaction,
                        // then they are placed.
                        let mut batch = vec![(meta, decoded, out)];
                        while batch.len() < EXPORT_QUEUE {
                            match rx.try_next() {
                                Some(ExportItem::Entry(EntryOutcome::Ok { meta, decoded, out })) => batch.push((meta, decoded, out)),
                                Some(other) => { deferred = Some(other); break; }
                                None => break,
                            }
                        }
                        let rels = batch.iter().filter_map(|(m, _, _)| m.path.as_deref().and_then(|p| self.to_local(p).ok())).collect();
                        self.intend(rels).await?;
                        // Placed in groups, one blocking task each: a thread hand-off per group, not
                        // per file (most export entries are small files placed in microseconds).
                        let mut batch = batch.into_iter().peekable();
                        while batch.peek().is_some() {
                            let group: Vec<_> = batch.by_ref().take(PLACE_GROUP).collect();
                            let (root, store) = (root.clone(), self.store().clone());
                            inflight.push(tokio::task::spawn_blocking(move || place_group(&root, &store, group)));
                        }
                    }
                    Ok(Some(ExportItem::Entry(EntryOutcome::Bad { meta, reason, kind }))) => {
                        applied += 1;
                        let remote = meta.path.unwrap_or_else(|| "<export entry without a path>".into());
                        let error = FileError::BadData { kind, detail: reason };
                        let keep = self.to_local(&remote).ok();
                        self.note_failure(&mut pending, QuarantineNote { reason: error.to_string(), class: error.class(), remote, permanent: false, retry: false, keep });
                    }
                    Ok(Some(ExportItem::End(Ok(_)))) => ended = Some(None),
                    Ok(Some(ExportItem::End(Err(BodyError::Local(e))))) => {
                        self.commit(pending, ck.snapshot, None, vec![]).await?;
                        // The entry being staged (its path and how much of it had arrived), when the
                        // stager's write failed; else the scanner's own spool in the reserved directory.
                        let failed = stage_failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let rel = failed.as_ref().and_then(|f| f.path.as_deref()).and_then(|p| self.to_local(p).ok());
                        return Err(match (rel, failed) {
                            (Some(rel), Some(f)) => SyncError::local_writing(&self.store().abs(&rel), &e, Need::Streaming { received: f.received, listed: None }),
                            _ => SyncError::local(&self.store().root().join(paths::RESERVED_DIR), &e),
                        });
                    }
                    Ok(Some(ExportItem::End(Err(e)))) => ended = Some(Some(e.to_string())),
                },
            }
        }
        let outcome = ended.flatten();
        self.commit(pending, ck.snapshot, None, vec![]).await?;
        if let Some(reason) = outcome {
            return Ok(ExportOutcome::FallThrough(reason));
        }
        if applied == 0 && tracked_before > 0 {
            return Ok(ExportOutcome::FallThrough(format!("export returned no files while the mirror tracks {tracked_before}; not trusting it")));
        }
        let ratio = self.config().mass_delete_ratio;
        if (applied as f64) < ratio * tracked_before as f64 {
            return Ok(ExportOutcome::FallThrough(format!("export returned {applied} files, less than {:.0}% of the {tracked_before} tracked; not trusting it", ratio * 100.0)));
        }
        Ok(ExportOutcome::Complete)
    }

    /// Breadth-first, page by page, resumable from the persisted queue and cursor.
    pub async fn tree_pull(&self, ck: &mut Checkpoint) -> Result<(), SyncError> {
        self.progress().set_phase("tree");
        let root = self.config().remote_root.clone();
        let depth = self.config().tree_depth;
        let mut cursor_resets = 0;
        while let Some(front) = self.read(|st| st.queue_front()).await? {
            let (seq, dir) = (front.seq, front.path);
            let page = match self.remote().tree(&dir, depth, ck.cursor.as_deref()).await {
                Ok(p) => p,
                Err(e) if e.status() == Some(400) && ck.cursor.is_some() && cursor_resets < 3 => {
                    cursor_resets += 1;
                    tracing::warn!(dir = %dir, error = %e, "the server refused the saved cursor; listing the directory again from its start");
                    ck.cursor = None;
                    continue;
                }
                // A directory the server refuses to list (403, 404, 400...) is never treated as
                // listed: its records are kept (no sweep removes them) and it is listed again later.
                // Transient failures (5xx, 429, transport) fail the attempt instead.
                Err(e) if dir != root && matches!(e.status(), Some(400 | 403 | 404 | 410)) => {
                    tracing::warn!(dir = %dir, error = %e, "cannot list directory; keeping what it had and listing it again later");
                    self.progress()
                        .set_error(Some(format!("{dir}: cannot list directory: {e}")));
                    let p = Pending {
                        queue_remove: Some(seq),
                        unlisted: vec![(
                            dir.clone(),
                            self.to_local(&dir).ok(),
                            format!("cannot list directory: {e}"),
                        )],
                        ..Default::default()
                    };
                    ck.cursor = None;
                    self.commit(p, ck.snapshot, Some(ck.clone()), vec![])
                        .await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.progress().unit();
            if dir == root && ck.cursor.is_none() && page.total_files.is_some() {
                ck.total_files = page.total_files;
                self.progress().set_total(page.total_files);
            }
            let base = segments(&dir);
            let mut p = Pending::default();
            let mut listed = Vec::new();
            for e in page.entries {
                let rel = match self.to_local(&e.path) {
                    Ok(r) => r,
                    Err(why) => {
                        self.note_hostile(&mut p, e.path.clone(), &why);
                        continue;
                    }
                };
                if e.is_dir() {
                    if segments(&e.path) >= base + depth as usize {
                        p.queue_push.push(e.path.clone());
                    }
                    // The remote says it is a directory: a quarantine of the path as a file (it
                    // failed to fetch before it was replaced by this directory) is obsolete.
                    p.cleared.push(e.path.clone());
                    p.dirs.push(rel);
                    continue;
                }
                listed.push(FetchJob {
                    rel,
                    remote: e.path,
                    listed_hash: e.content_hash,
                    revision: e.revision,
                    listed_size: e.size,
                });
            }
            // Hash-skip from the committed records: committed records are durable (syncfs before commit).
            let to_fetch = self.skip_committed(listed, &mut p).await?;
            self.intend(to_fetch.iter().map(|j| j.rel.clone()).collect())
                .await?;
            let mut results = futures_util::stream::iter(to_fetch)
                .map(|job| self.fetch_one(job))
                .buffer_unordered(self.config().concurrency);
            let mut fatal = None;
            let mut last_commit = std::time::Instant::now();
            while let Some(r) = results.next().await {
                match r {
                    Ok(Fetched::Done { job, meta, fetched }) => {
                        if fetched {
                            self.note_fetched();
                        }
                        self.note_done(&mut p, job.remote, job.rel, meta)
                    }
                    Ok(Fetched::Failed { job, error }) => {
                        self.note_file_failure(&mut p, job, &error, false)
                    }
                    Err(e) => {
                        fatal = Some(e);
                        break;
                    }
                }
                if intra_commit_due(p.files.len(), last_commit) {
                    last_commit = std::time::Instant::now();
                    // Intra-page checkpoint: records only, the cursor still points at this page's start.
                    self.commit(p.take_records(), ck.snapshot, None, vec![])
                        .await?;
                }
            }
            drop(results);
            if let Some(e) = fatal {
                self.commit(p.take_records(), ck.snapshot, None, vec![])
                    .await?;
                return Err(e);
            }
            ck.pages_done += 1;
            ck.files_done = self.progress().files();
            match page.next_cursor.filter(|c| !c.is_empty()) {
                Some(c) => ck.cursor = Some(c),
                None => {
                    ck.cursor = None;
                    p.queue_remove = Some(seq);
                    p.listed.push(dir.clone());
                }
            }
            cursor_resets = 0;
            self.commit(p, ck.snapshot, Some(ck.clone()), vec![])
                .await?;
        }
        Ok(())
    }

    /// Listed files whose committed record has the listed hash and whose size on disk matches are
    /// recorded as verified; the rest are returned to be fetched.
    async fn skip_committed(
        &self,
        listed: Vec<FetchJob>,
        p: &mut Pending,
    ) -> Result<Vec<FetchJob>, SyncError> {
        let store = self.store().clone();
        let (skipped, to_fetch) = self
            .db()
            .run(move |st: &mut State| -> Result<_, SyncError> {
                let (mut skipped, mut to_fetch) = (Vec::new(), Vec::new());
                for job in listed {
                    let Some(h) = job.listed_hash.as_deref() else {
                        to_fetch.push(job);
                        continue;
                    };
                    // The record says these bytes, and the local file is still the one it was written
                    // as (same inode, change time and size): skip. Anything else (a local file
                    // changed, even at the same size, or removed) is fetched — after a hash check
                    // that avoids the download when the bytes still match.
                    let size = match st.file(&job.rel)? {
                        Some(rec)
                            if rec.kind == Kind::File && rec.content_hash.as_deref() == Some(h) =>
                        {
                            let now = store
                                .stat_key(&job.rel)
                                .map_err(|e| SyncError::local(&store.abs(&job.rel), &e))?;
                            let same = match (&rec.local_stat, &now) {
                                (Some(was), Some(is)) => was == is,
                                // A record from before local identities were kept: the size decides.
                                (None, Some(is)) => is.ends_with(&format!(":{}", rec.size)),
                                _ => false,
                            };
                            same.then_some(rec.size)
                        }
                        _ => None,
                    };
                    match size {
                        Some(size) => skipped.push((job, size)),
                        None => to_fetch.push(job),
                    }
                }
                Ok((skipped, to_fetch))
            })
            .await?;
        for (job, size) in skipped {
            self.progress().file_done(&job.remote, size);
            p.files.push(Recorded {
                rel: job.rel,
                meta: FileMeta {
                    size,
                    revision: job.revision,
                    content_hash: job.listed_hash,
                    content_type: None,
                    local_stat: None,
                },
            });
        }
        Ok(to_fetch)
    }

    /// Mark the snapshot complete: sweep unlisted records (guarded), set the events cursor to the tip
    /// taken before the snapshot, clear the checkpoint. A scoped traversal (one directory listed again)
    /// sweeps only within its directory and leaves the rest of the state alone.
    pub async fn complete(&self, ck: &Checkpoint, used: PathUsed) -> Result<(), SyncError> {
        let snapshot = ck.snapshot;
        let scope = ck.scope.as_deref().and_then(|d| self.to_local(d).ok());
        let within = scope.clone();
        let (unseen, tracked, orphans, classes, unlisted) = self
            .read(move |st| {
                // Pending writes without a record: written by an interrupted run, not in this listing.
                let mut orphans = Vec::new();
                for rel in st.pending()? {
                    if st.file(&rel)?.is_none() {
                        orphans.push(rel);
                    }
                }
                let mut unseen = st.unseen(snapshot)?;
                if let Some(dir) = &within {
                    let prefix = format!("{dir}/");
                    unseen.retain(|u| u.path.starts_with(&prefix));
                    orphans.retain(|o| o.starts_with(&prefix));
                }
                Ok((
                    unseen,
                    st.tracked_files()?,
                    orphans,
                    st.quarantine_classes(snapshot)?,
                    st.unlisted()?.len(),
                ))
            })
            .await?;
        if ck.scope.is_none() {
            // Most files failing the same way is a systemic cause: never a complete mirror.
            let quarantined: u64 = classes.iter().map(|(_, n)| n).sum();
            if let Some(e) = crate::sync::engine::systemic(
                tracked.saturating_sub(quarantined),
                classes.into_iter(),
            ) {
                return Err(e);
            }
        }
        let files_gone = unseen.iter().filter(|u| u.kind == Kind::File).count() as u64;
        let keep = tracked.saturating_sub(files_gone) as f64;
        if !self.config().allow_mass_delete
            && files_gone >= MASS_DELETE_MIN
            && keep < self.config().mass_delete_ratio * tracked as f64
        {
            return Err(SyncError::MassDelete {
                would: files_gone,
                tracked,
            });
        }
        let mut p = Pending {
            finish: true,
            ..Default::default()
        };
        let store = self.store().clone();
        let removed = unseen.clone();
        let stray = orphans.clone();
        tokio::task::spawn_blocking(move || -> Result<(), SyncError> {
            for rel in &stray {
                store
                    .remove_file(rel)
                    .map_err(|e| SyncError::local(&store.abs(rel), &e))?;
            }
            for u in &removed {
                if u.kind == Kind::File {
                    store
                        .remove_file(&u.path)
                        .map_err(|e| SyncError::local(&store.abs(&u.path), &e))?;
                } else {
                    store.remove_dir_if_empty(&u.path);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| SyncError::Internal(format!("sweep worker: {e}")))??;
        p.deletes = unseen.into_iter().map(|u| u.path).collect();
        p.orphans = orphans;
        if files_gone > 0 {
            tracing::info!(
                removed = files_gone,
                scope = scope.as_deref().unwrap_or("/"),
                "removed local files absent from the remote listing"
            );
        }
        if let Some(dir) = ck.scope.clone() {
            self.commit(p, ck.snapshot, None, vec![]).await?;
            let snapshot = ck.snapshot;
            return self
                .db()
                .run(move |st: &mut State| -> Result<(), SyncError> {
                    let mut b = st.batch()?;
                    b.forget_quarantine_before(snapshot, Some(&dir))?;
                    b.commit()?;
                    Ok(())
                })
                .await;
        }
        self.report_extra_files().await?;
        if unlisted > 0 {
            tracing::warn!(
                directories = unlisted,
                "the snapshot is complete except for directories that could not be listed; they keep what they had and are listed again on the next pass"
            );
        }
        let meta = vec![
            (MetaKey::BootstrapComplete, "1".to_string()),
            (
                MetaKey::EventsCursor,
                ck.events_tip.clone().unwrap_or_default(),
            ),
            (MetaKey::Feed, if ck.feed { "1" } else { "0" }.to_string()),
            (MetaKey::LastPath, used.as_str().to_string()),
            (MetaKey::LastSyncAt, crate::sync::engine::now_rfc3339()),
        ];
        let snapshot = ck.snapshot;
        self.commit(p, ck.snapshot, None, meta).await?;
        self.db()
            .run(move |st: &mut State| -> Result<(), SyncError> {
                let mut b = st.batch()?;
                b.forget_unlisted_before(snapshot)?;
                b.forget_quarantine_before(snapshot, None)?;
                b.commit()?;
                Ok(())
            })
            .await
    }

    /// Local files the remote does not have and mountd did not write (an adopted directory's own
    /// files, or files put into a plain-directory mirror): reported, never deleted.
    async fn report_extra_files(&self) -> Result<(), SyncError> {
        // The local files are walked in batches checked against the records as they come, so the
        // memory does not grow with the tree.
        const BATCH: usize = 4096;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<String>>(2);
        let store = self.store().clone();
        let walker = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(BATCH);
            store.walk_files(|rel| {
                batch.push(rel);
                if batch.len() >= BATCH && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            })?;
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            Ok::<(), std::io::Error>(())
        });
        let (mut count, mut extra) = (0usize, Vec::new());
        while let Some(batch) = rx.recv().await {
            let found = self
                .read(move |st| {
                    let mut found = Vec::new();
                    for rel in batch {
                        if st.file(&rel)?.is_none() {
                            found.push(rel);
                        }
                    }
                    Ok(found)
                })
                .await?;
            count += found.len();
            let room = 10usize.saturating_sub(extra.len());
            extra.extend(found.into_iter().take(room));
        }
        walker
            .await
            .map_err(|e| SyncError::Internal(format!("listing local files: {e}")))?
            .map_err(|e| SyncError::local(self.store().root(), &e))?;
        if count > 0 {
            tracing::warn!(
                count,
                first = ?extra,
                "local files the remote does not have (left in place, not mirrored)"
            );
        }
        self.set_meta(vec![(MetaKey::ExtraFiles, count.to_string())])
            .await
    }

    /// List again, each as a traversal of its own subtree, the directories whose listing failed.
    pub async fn relist_unlisted(&self) -> Result<(), SyncError> {
        let dirs = self.read(|st| st.unlisted()).await?;
        for d in dirs {
            tracing::info!(dir = %d.path, "listing again a directory whose listing failed");
            let mut ck = Checkpoint {
                snapshot: self.db().run(|st: &mut State| st.next_snapshot()).await?,
                phase: Phase::Tree,
                current_dir: None,
                cursor: None,
                events_tip: None,
                feed: true,
                total_files: None,
                files_done: 0,
                pages_done: 0,
                scope: Some(d.path.clone()),
            };
            self.start_traversal(&mut ck).await?;
            self.tree_pull(&mut ck).await?;
            self.complete(&ck, PathUsed::Tree).await?;
        }
        Ok(())
    }
}

/// One export entry as applied on a blocking thread.
enum Applied {
    Ok {
        remote: String,
        rel: String,
        meta: FileMeta,
    },
    /// A path that cannot be mirrored.
    Hostile {
        remote: String,
        why: paths::Rejected,
    },
    /// The local disk failed: the run stops.
    Local(WriteError),
}

/// Export entries placed by one blocking task.
const PLACE_GROUP: usize = 4;

/// Place a group of export entries in order; it stops at the first local disk error (the run fails
/// with it), so nothing after it is attempted.
fn place_group(
    root: &str,
    store: &Arc<LocalStore>,
    group: Vec<(Meta, Decoded, Staged)>,
) -> Vec<Applied> {
    let mut out = Vec::with_capacity(group.len());
    for (meta, decoded, staged) in group {
        let a = apply_export_entry(root, store, meta, decoded, staged);
        let stop = matches!(a, Applied::Local(_));
        out.push(a);
        if stop {
            break;
        }
    }
    out
}

/// Map and (unless the local bytes already match) place one verified export entry.
fn apply_export_entry(
    root: &str,
    store: &Arc<LocalStore>,
    meta: Meta,
    decoded: Decoded,
    staged: Staged,
) -> Applied {
    let remote = meta.path.unwrap_or_default();
    let rel = match paths::to_local(root, &remote) {
        Ok(r) => r,
        Err(why) => return Applied::Hostile { remote, why },
    };
    let local_stat = match place(store, &rel, staged, &decoded, true) {
        Ok(p) => p.into_stat_key(),
        Err(e) => return Applied::Local(e.writing(&store.abs(&rel), Need::Exact(decoded.size))),
    };
    Applied::Ok {
        remote,
        rel,
        meta: FileMeta {
            size: decoded.size,
            revision: meta.revision,
            content_hash: Some(decoded.sha256),
            content_type: meta.content_type,
            local_stat,
        },
    }
}
