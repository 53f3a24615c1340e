//! The bootstrap: export first under its own sub-deadline, falling through to the resumable per-page
//! tree pull; completion sweeps what the authoritative listing no longer has and sets the events cursor
//! to the tip taken before the snapshot started.
use crate::remote::body::BodyError;
use crate::remote::export::{stream_entries, Batcher, ExportItem};
use crate::remote::scan::{BadKind, Decoded, EntryOutcome, Meta};
use crate::remote::BodyStream;
use crate::store::db::{Checkpoint, Db, FileMeta, Kind, MetaKey, Phase, State, Unseen};
use crate::store::mirror::WriteError;
use crate::store::space::Need;
use crate::store::{paths, LocalStore};
use crate::sync::content::{place, Staged, Stager, EXPORT_QUEUE};
use crate::sync::count_check;
use crate::sync::engine::{
    Engine, FetchJob, Fetched, FileError, Pending, QuarantineNote, Recorded, SyncError,
};
use crate::sync::push::conflict::{Incoming, Verdict};
use futures_util::StreamExt;
use std::ops::ControlFlow;
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
                // The export places files without looking at local edits: with changes pending in
                // the outbox, the guarded tree pull lists instead.
                let pending = !self.read(|st| st.outbox_is_empty()).await?;
                if pending && self.config().use_export {
                    tracing::info!("local changes are pending: listing with the tree pull instead of the export, so none is overwritten");
                }
                let phase = if self.config().use_export && !pending {
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
        let placer = Placer {
            root: root.clone(),
            store: store.clone(),
            db: self.db().clone(),
            share,
            entries: Vec::new(),
            held: 0,
            threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(self.config().concurrency)
                .clamp(1, 4),
        };
        // Entries are decoded and verified (in memory or a temp file) on the parser's blocking thread,
        // which also commits a batch's intents and moves its files into place; only what became of
        // each file comes here, where the records are committed.
        let mut rx = stream_entries(
            BodyStream {
                correlation_id: body.correlation_id,
                chunks: self.counted(body.chunks),
            },
            stager,
            move || store.scratch_file(),
            placer,
            EXPORT_RESULTS,
        );
        let mut pending = Pending::default();
        let mut applied: u64 = 0;
        let mut last_commit = std::time::Instant::now();
        let outcome: Option<String> = loop {
            let item = match tokio::time::timeout(sub, rx.next()).await {
                Err(_) => break Some(format!("no export entry arrived within the export timeout ({}) after {applied} entries", humantime::format_duration(sub))),
                Ok(None) => break Some("export parser ended without a result".into()),
                Ok(Some(item)) => item,
            };
            match item {
                // The batch's intents could not be committed: nothing of it was placed.
                ExportItem::Batch(Err(e)) => return Err(e),
                ExportItem::Batch(Ok(done)) => {
                    let mut local_error = None;
                    for a in done {
                        applied += 1;
                        match a {
                            Applied::Ok { remote, rel, meta } => {
                                self.note_fetched();
                                self.note_done(&mut pending, remote, rel, meta)
                            }
                            Applied::Hostile { remote, why } => {
                                self.note_hostile(&mut pending, remote, &why, false)
                            }
                            Applied::Bad {
                                remote,
                                reason,
                                kind,
                                keep,
                            } => {
                                let error = FileError::BadData {
                                    kind,
                                    detail: reason,
                                };
                                self.note_failure(
                                    &mut pending,
                                    QuarantineNote {
                                        reason: error.to_string(),
                                        class: error.class(),
                                        remote,
                                        permanent: false,
                                        retry: false,
                                        keep,
                                    },
                                );
                            }
                            Applied::Local(e) => {
                                // The parser stopped at it: nothing after it was placed.
                                applied -= 1;
                                local_error = Some(e);
                            }
                        }
                    }
                    if let Some(e) = local_error {
                        // What the batch placed before the error is committed with the rest.
                        self.commit(pending, ck.snapshot, None, vec![]).await?;
                        return Err(e.into());
                    }
                    if intra_commit_due(pending.files.len() + pending.quarantine.len(), last_commit)
                    {
                        self.commit(std::mem::take(&mut pending), ck.snapshot, None, vec![])
                            .await?;
                        last_commit = std::time::Instant::now();
                    }
                }
                ExportItem::End(Ok(_)) => break None,
                ExportItem::End(Err(BodyError::Local(e))) => {
                    self.commit(pending, ck.snapshot, None, vec![]).await?;
                    // The entry being staged (its path and how much of it had arrived), when the
                    // stager's write failed; else the scanner's own spool in the reserved directory.
                    let failed = stage_failures.last();
                    let rel = failed
                        .as_ref()
                        .and_then(|f| f.path.as_deref())
                        .and_then(|p| self.to_local(p).ok());
                    return Err(match (rel, failed) {
                        (Some(rel), Some(f)) => SyncError::local_writing(
                            &self.store().abs(&rel),
                            &e,
                            Need::Streaming {
                                received: f.received,
                                listed: None,
                            },
                        ),
                        _ => SyncError::local(&self.store().root().join(paths::RESERVED_DIR), &e),
                    });
                }
                ExportItem::End(Err(e)) => break Some(e.to_string()),
            }
        };
        // Nothing of the export is placed after this (the tree pull may follow).
        rx.stop().await;
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
                        self.note_hostile(&mut p, e.path.clone(), &why, e.is_dir());
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
            let to_fetch = self.guard_fetches(to_fetch, &mut p).await?;
            self.intend(to_fetch.iter().map(|j| j.rel.clone()).collect())
                .await?;
            let mut results = futures_util::stream::iter(to_fetch)
                .map(|job| self.fetch_one(job))
                .buffer_unordered(self.config().concurrency);
            let mut fatal = None;
            // Files that failed: noted once the page is fetched, each 404 checked against a fresh
            // listing first (see `Engine::note_file_failures`).
            let mut failed = Vec::new();
            let mut last_commit = std::time::Instant::now();
            while let Some(r) = results.next().await {
                match r {
                    Ok(Fetched::Done { job, meta, fetched }) => {
                        if fetched {
                            self.note_fetched();
                        }
                        self.note_done(&mut p, job.remote, job.rel, meta)
                    }
                    Ok(Fetched::Failed { job, error }) => failed.push((job, error)),
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
                for (job, error) in failed {
                    self.note_file_failure(&mut p, job, &error, false);
                }
                self.commit(p.take_records(), ck.snapshot, None, vec![])
                    .await?;
                return Err(e);
            }
            self.note_file_failures(&mut p, failed, false).await?;
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
        let (skipped, to_fetch, went_back) = self
            .db()
            .run(move |st: &mut State| -> Result<_, SyncError> {
                let (mut skipped, mut to_fetch) = (Vec::new(), Vec::new());
                let mut went_back = None;
                for job in listed {
                    let rec = st.file(&job.rel)?;
                    if went_back.is_none() {
                        went_back = rec.as_ref().and_then(|r| {
                            count_check::went_back(
                                &job.remote,
                                r.revision.as_deref(),
                                job.revision.as_deref(),
                            )
                        });
                    }
                    let Some(h) = job.listed_hash.as_deref() else {
                        to_fetch.push(job);
                        continue;
                    };
                    // The record says these bytes, and the local file is still the one it was written
                    // as (same inode, change time and size): skip. Anything else (a local file
                    // changed, even at the same size, or removed) is fetched — after a hash check
                    // that avoids the download when the bytes still match.
                    let size = match rec {
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
                Ok((skipped, to_fetch, went_back))
            })
            .await?;
        if let Some(why) = went_back {
            self.note_rewound(&why).await?;
        }
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

    /// Files about to be fetched over local edits: those to leave alone are stamped seen instead (see
    /// `push::conflict`), the rest returned.
    async fn guard_fetches(
        &self,
        jobs: Vec<FetchJob>,
        p: &mut Pending,
    ) -> Result<Vec<FetchJob>, SyncError> {
        let claims = jobs.iter().map(|j| (j.rel.clone(), j.incoming())).collect();
        let verdicts = self.guard_local(claims).await?;
        Ok(jobs
            .into_iter()
            .filter(|j| match verdicts.get(&j.rel) {
                None | Some(Verdict::Apply) => true,
                Some(_) => {
                    p.keep_seen.push(j.rel.clone());
                    false
                }
            })
            .collect())
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
                // Pending writes without a file's record: written by an interrupted run, not in
                // this listing (a directory's record is the one the remote replaced by the file
                // and the listing still had, or one this completion sweeps: either way the file
                // is not the remote's).
                let mut orphans = Vec::new();
                for rel in st.pending()? {
                    if st.file(&rel)?.is_none_or(|r| r.kind != Kind::File) {
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
        if ck.scope.is_none() {
            self.rewound_guard(ck, files_gone, tracked).await?;
        }
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
        // Local edits of files the remote no longer has are not swept (see `push::conflict`): in
        // mirror mode the file stays (and is pushed), and so do the directories above it.
        let claims = unseen
            .iter()
            .filter(|u| u.kind == Kind::File)
            .map(|u| (u.path.clone(), Incoming::Deleted))
            .collect();
        let verdicts = self.guard_local(claims).await?;
        let kept: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| **v == Verdict::KeepFile)
            .map(|(r, _)| r.clone())
            .collect();
        let unseen: Vec<Unseen> = unseen
            .into_iter()
            .filter(|u| {
                !kept
                    .iter()
                    .any(|k| k == &u.path || k.starts_with(&format!("{}/", u.path)))
            })
            .collect();
        p.forget = kept;
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
            // A full listing completed: whatever rewound the server has been followed.
            (MetaKey::ServerRewound, String::new()),
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

    /// A full listing of a server believed rewound or reset (see [`crate::sync::count_check`])
    /// removes no local file unless the operator allowed it.
    async fn rewound_guard(
        &self,
        ck: &Checkpoint,
        files_gone: u64,
        tracked: u64,
    ) -> Result<(), SyncError> {
        let cause = self.read(|st| st.meta(MetaKey::ServerRewound)).await?;
        let Some(cause) = cause.filter(|c| !c.is_empty()) else {
            return Ok(());
        };
        if files_gone == 0 {
            return Ok(());
        }
        let server = ck
            .total_files
            .unwrap_or_else(|| tracked.saturating_sub(files_gone));
        if !self.config().allow_mass_delete {
            return Err(SyncError::ServerRewound {
                cause,
                server,
                mirror: tracked,
            });
        }
        tracing::warn!(%cause, removed = files_gone, "following the rewound server (--allow-mass-delete): removing the local files it no longer has");
        Ok(())
    }

    /// Local files the remote does not have and mountd did not write (an adopted directory's own
    /// files, or files put into a plain-directory mirror): reported, never deleted.
    async fn report_extra_files(&self) -> Result<(), SyncError> {
        // The local files are walked in batches checked against the records as they come, so the
        // memory does not grow with the tree.
        const BATCH: usize = 4096;
        // (directory, names of its files, whether they are all of them)
        type Group = (String, Vec<String>, bool);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Group>>(2);
        let store = self.store().clone();
        let walker = tokio::task::spawn_blocking(move || {
            let (mut batch, mut names) = (Vec::new(), 0);
            store.walk_file_names(BATCH, |dir, files, whole| {
                names += files.len();
                batch.push((dir.to_string(), files, whole));
                if names >= BATCH {
                    names = 0;
                    if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                        return std::ops::ControlFlow::Break(());
                    }
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
                    for (dir, files, whole) in batch {
                        if whole {
                            // All of a directory's files: its records are read once.
                            found.extend(st.unrecorded_in(&dir, files)?);
                            continue;
                        }
                        for name in files {
                            let rel = if dir.is_empty() {
                                name
                            } else {
                                format!("{dir}/{name}")
                            };
                            if !st.has_record(&rel)? {
                                found.push(rel);
                            }
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

/// One export entry as applied on the parser's thread.
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
    /// An entry the scanner found unusable (bad content, hash mismatch, missing path...).
    Bad {
        remote: String,
        reason: String,
        kind: BadKind,
        keep: Option<String>,
    },
    /// The local disk failed: the run stops.
    Local(WriteError),
}

/// Processed export batches that may wait for the engine (each only says what became of its files).
const EXPORT_RESULTS: usize = 4;
/// Most export entries in one batch: one intent transaction and one hand-off to the engine each.
const EXPORT_BATCH: usize = 256;

/// The export's [`Batcher`], on the parser's thread: a batch's intents are committed in one
/// transaction (before any of its bytes are placed), then its files are placed in order, stopping at
/// the first local disk error. A batch is full at [`EXPORT_BATCH`] entries, or once the content it
/// holds reaches [`EXPORT_QUEUE`] shares of the memory budget (a spooled file counts as a share).
struct Placer {
    root: String,
    store: Arc<LocalStore>,
    db: Db,
    share: usize,
    entries: Vec<EntryOutcome<Staged>>,
    held: usize,
    /// Threads that place a batch's files.
    threads: usize,
}

/// An entry of a batch, its local path mapped.
enum Mapped {
    Place {
        remote: String,
        rel: String,
        meta: Meta,
        decoded: Decoded,
        staged: Staged,
    },
    Done(Applied),
}

impl Batcher<Staged> for Placer {
    type Out = Result<Vec<Applied>, SyncError>;

    fn push(&mut self, entry: EntryOutcome<Staged>) -> bool {
        if let EntryOutcome::Ok { out, .. } = &entry {
            self.held += match out {
                Staged::Mem(v) => v.len(),
                Staged::File(_) => self.share,
            };
        }
        self.entries.push(entry);
        // Full before the next entry's content (at most a share) could take it past the limit.
        self.entries.len() >= EXPORT_BATCH || self.held > (EXPORT_QUEUE - 1) * self.share
    }

    fn process(
        &mut self,
        gone: &(dyn Fn() -> bool + Sync),
    ) -> Option<ControlFlow<Self::Out, Self::Out>> {
        if self.entries.is_empty() {
            return None;
        }
        self.held = 0;
        let mut rels = Vec::with_capacity(self.entries.len());
        let mapped: Vec<Mapped> = self
            .entries
            .drain(..)
            .map(|entry| match entry {
                EntryOutcome::Ok {
                    mut meta,
                    decoded,
                    out,
                } => {
                    let remote = meta.path.take().unwrap_or_default();
                    match paths::to_local(&self.root, &remote) {
                        Ok(rel) => {
                            rels.push(rel.clone());
                            Mapped::Place {
                                remote,
                                rel,
                                meta,
                                decoded,
                                staged: out,
                            }
                        }
                        Err(why) => Mapped::Done(Applied::Hostile { remote, why }),
                    }
                }
                EntryOutcome::Bad { meta, reason, kind } => {
                    let remote = meta
                        .path
                        .unwrap_or_else(|| "<export entry without a path>".into());
                    let keep = paths::to_local(&self.root, &remote).ok();
                    Mapped::Done(Applied::Bad {
                        remote,
                        reason,
                        kind,
                        keep,
                    })
                }
            })
            .collect();
        if !rels.is_empty() {
            let intended = self
                .db
                .run_blocking(move |st: &mut State| Ok::<_, SyncError>(st.intend(&rels)?));
            if let Err(e) = intended {
                return Some(ControlFlow::Break(Err(e)));
            }
        }
        // Placed on up to `threads` threads (creating files is kernel CPU: on ext4 it overlaps across
        // cores), each chunk in order and stopping at its first local disk error or when the engine
        // is gone.
        let places = mapped
            .iter()
            .filter(|m| matches!(m, Mapped::Place { .. }))
            .count();
        let threads = self.threads.min(places / PLACE_PER_THREAD).max(1);
        // One chunk per thread; the last is placed on this thread (the only one when `threads` is 1).
        let per = mapped.len().div_ceil(threads);
        let mut chunks = Vec::with_capacity(threads);
        let mut rest = mapped.into_iter();
        loop {
            let c: Vec<Mapped> = rest.by_ref().take(per).collect();
            if c.is_empty() {
                break;
            }
            chunks.push(c);
        }
        let store = &self.store;
        let mine = chunks.pop().unwrap_or_default();
        let joined = std::thread::scope(|s| {
            let others: Vec<_> = chunks
                .into_iter()
                .map(|c| s.spawn(move || place_all(store, c, gone)))
                .collect();
            let last = place_all(store, mine, gone);
            let mut all: Vec<_> = others.into_iter().map(|h| h.join()).collect();
            all.push(Ok(last));
            all
        });
        let (mut out, mut stop) = (Vec::new(), false);
        for r in joined {
            let Ok((a, s)) = r else {
                return Some(ControlFlow::Break(Err(SyncError::Internal(
                    "an export placement thread panicked".into(),
                ))));
            };
            out.extend(a);
            stop |= s;
        }
        Some(if stop {
            ControlFlow::Break(Ok(out))
        } else {
            ControlFlow::Continue(Ok(out))
        })
    }
}

/// Files placed per thread at least before a batch is split across threads.
const PLACE_PER_THREAD: usize = 8;

/// Place a chunk of a batch in order; `true` when it stopped early (a local disk error, which ends
/// the export, or the engine gave up).
fn place_all(
    store: &LocalStore,
    mapped: Vec<Mapped>,
    gone: &(dyn Fn() -> bool + Sync),
) -> (Vec<Applied>, bool) {
    let mut out = Vec::with_capacity(mapped.len());
    for m in mapped {
        if gone() {
            // The engine gave up on the export (and may fill the mirror otherwise): place no more.
            return (out, true);
        }
        let a = match m {
            Mapped::Done(a) => a,
            Mapped::Place {
                remote,
                rel,
                meta,
                decoded,
                staged,
            } => place_entry(store, remote, rel, meta, decoded, staged),
        };
        let stop = matches!(a, Applied::Local(_));
        out.push(a);
        if stop {
            return (out, true);
        }
    }
    (out, false)
}

/// Place one verified export entry (unless the local bytes already match).
fn place_entry(
    store: &LocalStore,
    remote: String,
    rel: String,
    meta: Meta,
    decoded: Decoded,
    staged: Staged,
) -> Applied {
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
