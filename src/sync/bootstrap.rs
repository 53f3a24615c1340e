//! The bootstrap: export first under its own sub-deadline, falling through to the resumable per-page
//! tree pull; completion sweeps what the authoritative listing no longer has and sets the events cursor
//! to the tip taken before the snapshot started.
use crate::remote::export::{stream_entries, ExportItem};
use crate::store::db::{Checkpoint, FileMeta, Phase, KIND_FILE};
use crate::store::paths;
use crate::sync::engine::{Engine, Fetched, Pending, SyncError};
use futures_util::StreamExt;

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
    pub async fn bootstrap(&mut self) -> Result<PathUsed, SyncError> {
        let mut ck = match self.state.checkpoint() {
            Some(ck) => {
                tracing::info!(phase = ?ck.phase, dir = ?ck.current_dir, pages = ck.pages_done, "resuming bootstrap from checkpoint");
                ck
            }
            None => {
                self.new_checkpoint(if self.cfg.use_export {
                    Phase::Export
                } else {
                    Phase::Tree
                })
                .await?
            }
        };
        self.progress.set_total(ck.total_files);
        if ck.phase == Phase::Export {
            match self.try_export(&ck).await? {
                ExportOutcome::Complete => {
                    self.complete(&ck, PathUsed::Export)?;
                    return Ok(PathUsed::Export);
                }
                ExportOutcome::FallThrough(reason) => {
                    tracing::warn!(%reason, "export unusable; falling through to the per-page tree pull");
                    self.progress.set_error(Some(format!("export: {reason}")));
                    ck.phase = Phase::Tree;
                    ck.snapshot = self.state.next_snapshot()?;
                    self.start_traversal(&mut ck)?;
                }
            }
        }
        self.tree_pull(&mut ck).await?;
        self.complete(&ck, PathUsed::Tree)?;
        Ok(PathUsed::Tree)
    }

    /// A fresh checkpoint: the events tip is taken here, before any listing, so nothing written during
    /// the snapshot is lost.
    pub async fn new_checkpoint(&mut self, phase: Phase) -> Result<Checkpoint, SyncError> {
        let (tip, feed) = match self.client.events_tip().await {
            Ok(t) => (t, true),
            Err(e) if e.status() == Some(404) => {
                tracing::info!("the server has no events feed; the mirror will be refreshed by periodic listings");
                (None, false)
            }
            Err(e) => return Err(e.into()),
        };
        self.progress.unit();
        let mut ck = Checkpoint {
            snapshot: self.state.next_snapshot()?,
            phase,
            current_dir: None,
            cursor: None,
            events_tip: tip,
            feed,
            total_files: None,
            files_done: 0,
            pages_done: 0,
        };
        if phase == Phase::Tree {
            self.start_traversal(&mut ck)?;
        } else {
            self.commit(&mut Pending::default(), ck.snapshot, Some(&ck), &[])?;
        }
        Ok(ck)
    }

    fn start_traversal(&mut self, ck: &mut Checkpoint) -> Result<(), SyncError> {
        ck.current_dir = None;
        ck.cursor = None;
        let mut b = self.state.batch()?;
        b.queue_clear()?;
        b.queue_push(&self.cfg.remote_root)?;
        b.set_checkpoint(ck)?;
        b.commit()?;
        Ok(())
    }

    /// The atomic export, applied entry by entry as it streams in.
    async fn try_export(&mut self, ck: &Checkpoint) -> Result<ExportOutcome, SyncError> {
        self.progress.set_phase("export");
        let sub = self.cfg.export_timeout;
        // What the mirror already holds: its records, or (when the state DB is new) the files on disk.
        let mut tracked_before = self.state.tracked_files();
        if tracked_before == 0 {
            let store = self.store.clone();
            tracked_before = tokio::task::spawn_blocking(move || store.count_files(10_000_000))
                .await
                .unwrap_or(0);
        }
        let started = tokio::time::timeout(sub, self.client.export(&self.cfg.remote_root)).await;
        let (resp, cid) = match started {
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
            Ok(Ok(r)) => r,
        };
        let mut rx = stream_entries(resp, cid);
        let mut pending = Pending::default();
        let mut applied: u64 = 0;
        let mut last_commit = std::time::Instant::now();
        // Entries are decoded, verified and written on blocking threads, up to `concurrency` at once
        // (file creation latency overlaps); their records are committed here.
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        let mut ended: Option<Option<String>> = None;
        loop {
            let more = ended.is_none() && inflight.len() < self.cfg.concurrency;
            if !more && inflight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    applied += 1;
                    match done {
                        Ok(Applied::Ok { remote, rel, meta }) => self.note_done(&mut pending, remote, rel, meta),
                        Ok(Applied::Failed { remote, rel, reason, permanent }) => self.note_failure(&mut pending, rel, remote, reason, permanent),
                        Err(e) => return Err(SyncError::Io(format!("export worker failed: {e}"))),
                    }
                    if intra_commit_due(pending.files.len() + pending.quarantine.len(), last_commit) {
                        self.commit(&mut pending, ck.snapshot, None, &[])?;
                        last_commit = std::time::Instant::now();
                    }
                }
                item = tokio::time::timeout(sub, rx.recv()), if more => match item {
                    Err(_) => ended = Some(Some(format!("no export entry arrived within the export timeout ({}) after {applied} entries", humantime::format_duration(sub)))),
                    Ok(None) => ended = Some(Some("export parser ended without a result".into())),
                    Ok(Some(ExportItem::Entry(obj))) => {
                        let (root, store) = (self.cfg.remote_root.clone(), self.store.clone());
                        inflight.push(tokio::task::spawn_blocking(move || apply_export_entry(&root, &store, obj)));
                    }
                    Ok(Some(ExportItem::End(Ok(_)))) => ended = Some(None),
                    Ok(Some(ExportItem::End(Err(e)))) => ended = Some(Some(e.to_string())),
                },
            }
        }
        let outcome = ended.flatten();
        self.commit(&mut pending, ck.snapshot, None, &[])?;
        if let Some(reason) = outcome {
            return Ok(ExportOutcome::FallThrough(reason));
        }
        if applied == 0 && tracked_before > 0 {
            return Ok(ExportOutcome::FallThrough(format!("export returned no files while the mirror tracks {tracked_before}; not trusting it")));
        }
        if applied * 2 < tracked_before {
            return Ok(ExportOutcome::FallThrough(format!("export returned {applied} files, less than half of the {tracked_before} tracked; not trusting it")));
        }
        Ok(ExportOutcome::Complete)
    }

    /// Breadth-first, page by page, resumable from the persisted queue and cursor.
    pub async fn tree_pull(&mut self, ck: &mut Checkpoint) -> Result<(), SyncError> {
        self.progress.set_phase("tree");
        let root = self.cfg.remote_root.clone();
        let mut cursor_resets = 0;
        while let Some((seq, dir)) = self.state.queue_front() {
            let page = match self
                .client
                .tree(&dir, self.cfg.tree_depth, ck.cursor.as_deref())
                .await
            {
                Ok(p) => p,
                Err(e) if e.status() == Some(400) && ck.cursor.is_some() && cursor_resets < 3 => {
                    cursor_resets += 1;
                    tracing::warn!(dir = %dir, error = %e, "the server refused the saved cursor; listing the directory again from its start");
                    ck.cursor = None;
                    continue;
                }
                Err(e) if e.is_per_file() && dir != root && !e.is_auth() => {
                    let mut p = Pending {
                        queue_remove: Some(seq),
                        ..Default::default()
                    };
                    self.note_failure(
                        &mut p,
                        paths::to_local(&root, &dir).ok(),
                        dir.clone(),
                        format!("cannot list directory: {e}"),
                        false,
                    );
                    ck.cursor = None;
                    self.commit(&mut p, ck.snapshot, Some(ck), &[])?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.progress.unit();
            if dir == root && ck.cursor.is_none() && page.total_files.is_some() {
                ck.total_files = page.total_files;
                self.progress.set_total(page.total_files);
            }
            let base = segments(&dir);
            let mut p = Pending::default();
            let mut to_fetch = Vec::new();
            for e in page.entries {
                let rel = match paths::to_local(&root, &e.path) {
                    Ok(r) => r,
                    Err(why) => {
                        self.note_failure(
                            &mut p,
                            None,
                            e.path.clone(),
                            format!("skipped hostile path: {why}"),
                            true,
                        );
                        continue;
                    }
                };
                if e.is_dir() {
                    if segments(&e.path) >= base + self.cfg.tree_depth as usize {
                        p.queue_push.push(e.path.clone());
                    }
                    p.dirs.push(rel);
                    continue;
                }
                // Hash-skip from the committed record: committed records are durable (syncfs before commit).
                if let (Some(h), Some(rec)) = (e.content_hash.as_deref(), self.state.file(&rel)) {
                    if rec.kind == KIND_FILE
                        && rec.content_hash.as_deref() == Some(h)
                        && self.store.file_size(&rel) == Some(rec.size)
                    {
                        self.progress.file_done(&e.path, rec.size);
                        p.files.push((
                            rel,
                            FileMeta {
                                size: rec.size,
                                revision: e.revision,
                                content_hash: rec.content_hash,
                                content_type: None,
                            },
                        ));
                        continue;
                    }
                }
                to_fetch.push((rel, e.path, e.content_hash, e.revision));
            }
            let (client, store) = (self.client.clone(), self.store.clone());
            let mut results = futures_util::stream::iter(to_fetch)
                .map(|(rel, remote, hash, rev)| {
                    Engine::fetch_one(client.clone(), store.clone(), rel, remote, hash, rev)
                })
                .buffer_unordered(self.cfg.concurrency);
            let mut fatal = None;
            let mut last_commit = std::time::Instant::now();
            while let Some(r) = results.next().await {
                match r {
                    Ok(Fetched::Ok(rel, meta)) => {
                        self.note_done(&mut p, paths::to_remote(&root, &rel), rel, meta)
                    }
                    Ok(Fetched::PerFile {
                        rel,
                        remote,
                        reason,
                        ..
                    }) => self.note_failure(&mut p, Some(rel), remote, reason, false),
                    Err(e) => {
                        fatal = Some(e);
                        break;
                    }
                }
                if intra_commit_due(p.files.len(), last_commit) {
                    last_commit = std::time::Instant::now();
                    // Intra-page checkpoint: records only, the cursor still points at this page's start.
                    self.commit(&mut p.take_records(), ck.snapshot, None, &[])?;
                }
            }
            drop(results);
            if let Some(e) = fatal {
                self.commit(&mut p.take_records(), ck.snapshot, None, &[])?;
                return Err(e.into());
            }
            ck.pages_done += 1;
            ck.files_done = self.progress.files();
            match page.next_cursor.filter(|c| !c.is_empty()) {
                Some(c) => ck.cursor = Some(c),
                None => {
                    ck.cursor = None;
                    p.queue_remove = Some(seq);
                }
            }
            cursor_resets = 0;
            self.commit(&mut p, ck.snapshot, Some(ck), &[])?;
        }
        Ok(())
    }

    /// Mark the snapshot complete: sweep unlisted records (guarded), set the events cursor to the tip
    /// taken before the snapshot, clear the checkpoint.
    pub fn complete(&mut self, ck: &Checkpoint, used: PathUsed) -> Result<(), SyncError> {
        let unseen = self.state.unseen(ck.snapshot);
        let files_gone = unseen.iter().filter(|(_, k)| *k == KIND_FILE).count() as u64;
        let tracked = self.state.tracked_files();
        if !self.cfg.allow_mass_delete && files_gone >= MASS_DELETE_MIN && files_gone * 2 > tracked
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
        for (rel, kind) in &unseen {
            if *kind == KIND_FILE {
                self.store
                    .remove_file(rel)
                    .map_err(|e| SyncError::Io(format!("cannot remove {rel}: {e}")))?;
            } else {
                self.store.remove_dir_if_empty(rel);
            }
            p.deletes.push(rel.clone());
        }
        if files_gone > 0 {
            tracing::info!(
                removed = files_gone,
                "removed local files absent from the remote listing"
            );
        }
        let cursor = ck.events_tip.clone().unwrap_or_default();
        let mut extra = vec![
            ("bootstrap_complete", "1"),
            ("events_cursor", cursor.as_str()),
            ("feed", if ck.feed { "1" } else { "0" }),
            ("last_path", used.as_str()),
        ];
        let now = crate::sync::engine::now_rfc3339();
        extra.push(("last_sync_at", now.as_str()));
        self.commit(&mut p, ck.snapshot, None, &extra)?;
        Ok(())
    }
}

/// One export entry as applied on the parser thread.
enum Applied {
    Ok {
        remote: String,
        rel: String,
        meta: FileMeta,
    },
    Failed {
        remote: String,
        rel: Option<String>,
        reason: String,
        permanent: bool,
    },
}

/// Map, decode, verify and (unless the local bytes already match) write one export entry.
fn apply_export_entry(
    root: &str,
    store: &crate::store::LocalStore,
    obj: crate::remote::types::FileObject,
) -> Applied {
    let rel = match paths::to_local(root, &obj.path) {
        Ok(r) => r,
        Err(why) => {
            return Applied::Failed {
                remote: obj.path,
                rel: None,
                reason: format!("skipped hostile path: {why}"),
                permanent: true,
            }
        }
    };
    let (bytes, hash) = match obj.decode_verified() {
        Ok(v) => v,
        Err(reason) => {
            return Applied::Failed {
                remote: obj.path,
                rel: Some(rel),
                reason,
                permanent: false,
            }
        }
    };
    let same = store.file_size(&rel) == Some(bytes.len() as u64) && store.matches_hash(&rel, &hash);
    if !same {
        if let Err(e) = store.write_atomic(&rel, &bytes) {
            return Applied::Failed {
                remote: obj.path,
                rel: Some(rel),
                reason: format!("cannot write locally: {e}"),
                permanent: false,
            };
        }
    }
    let meta = FileMeta {
        size: bytes.len() as u64,
        revision: obj.revision,
        content_hash: Some(hash),
        content_type: obj.content_type,
    };
    Applied::Ok {
        remote: obj.path,
        rel,
        meta,
    }
}
