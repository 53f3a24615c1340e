//! Incremental sync after the bootstrap: apply the events feed page by page (changes collapsed per
//! path, cursor committed with the records), retry quarantined files, and audit by listing.
use crate::remote::types::event_seq;
use crate::store::db::{Phase, KIND_FILE};
use crate::store::paths;
use crate::sync::engine::{Engine, Fetched, Pending, SyncError};
use futures_util::StreamExt;
use std::collections::BTreeMap;

/// Events asked per page.
const EVENTS_PAGE: u32 = 1000;

enum Action {
    Fetch(Option<String>, Option<String>),
    Delete,
}

impl Engine {
    /// Apply every event after the stored cursor, up to the tail of the feed.
    pub async fn sync_pass(&mut self) -> Result<(), SyncError> {
        if !self.state.has_feed() {
            return self.audit().await;
        }
        self.progress.set_phase("sync");
        let root = self.cfg.remote_root.clone();
        let stored = self.state.events_cursor();
        let mut cursor = stored.clone();
        loop {
            let page = match self.client.events(cursor.as_deref(), EVENTS_PAGE).await {
                Ok(p) => p,
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!(
                        "the events feed is gone (404); falling back to periodic listings"
                    );
                    let mut b = self.state.batch()?;
                    b.set_meta("feed", "0")?;
                    b.commit()?;
                    return self.audit().await;
                }
                Err(e) => return Err(e.into()),
            };
            self.progress.unit();
            let Some(last) = page.events.last().map(|e| e.event_id.clone()) else {
                break;
            };
            // Collapse per path: the last event of a path decides.
            let mut actions: BTreeMap<String, Action> = BTreeMap::new();
            for ev in &page.events {
                let Some(path) = ev.path.clone() else {
                    continue;
                };
                match ev.kind.as_str() {
                    "file.created" | "file.updated" => {
                        actions.insert(
                            path,
                            Action::Fetch(ev.content_hash.clone(), ev.revision.clone()),
                        );
                    }
                    "file.deleted" => {
                        actions.insert(path, Action::Delete);
                    }
                    _ => {}
                }
            }
            let mut p = Pending::default();
            let mut to_fetch = Vec::new();
            for (remote, action) in actions {
                let rel = match paths::to_local(&root, &remote) {
                    Ok(r) => r,
                    Err(_) if !paths::is_under(&root, &remote) => continue,
                    Err(why) => {
                        self.note_failure(
                            &mut p,
                            None,
                            remote,
                            format!("skipped hostile path: {why}"),
                            true,
                        );
                        continue;
                    }
                };
                match action {
                    Action::Delete => {
                        if self.state.file(&rel).is_some_and(|r| r.kind == KIND_FILE) {
                            self.store
                                .remove_file(&rel)
                                .map_err(|e| SyncError::Io(format!("cannot remove {rel}: {e}")))?;
                        }
                        p.deletes.push(rel);
                        p.cleared.push(remote);
                    }
                    Action::Fetch(hash, rev) => to_fetch.push((rel, remote, hash, rev)),
                }
            }
            self.fetch_all(to_fetch, &mut p).await?;
            // Never move the stored cursor backwards (an unknown cursor replays the feed from the start).
            let next = page.next_cursor.clone().unwrap_or_else(|| last.clone());
            let advance = match (&stored, event_seq(&next)) {
                (Some(s), Some(n)) => event_seq(s).is_none_or(|s| n >= s),
                _ => true,
            };
            let meta: Vec<(&str, &str)> = if advance {
                vec![("events_cursor", next.as_str())]
            } else {
                vec![]
            };
            let deleted = p.deletes.clone();
            self.commit(&mut p, self.current_seen(), None, &meta)?;
            self.prune_empty_dirs(deleted)?;
            if page.next_cursor.is_none() {
                break;
            }
            cursor = Some(next);
        }
        let now = crate::sync::engine::now_rfc3339();
        let mut b = self.state.batch()?;
        b.set_meta("last_sync_at", &now)?;
        b.commit()?;
        Ok(())
    }

    /// Directories are implied by files on the remote: remove those a delete left empty, bottom-up.
    fn prune_empty_dirs(&mut self, deleted: Vec<String>) -> Result<(), SyncError> {
        let mut level: Vec<String> = deleted
            .iter()
            .map(|r| paths::parent(r).to_string())
            .filter(|d| !d.is_empty())
            .collect();
        while !level.is_empty() {
            level.sort();
            level.dedup();
            let mut p = Pending::default();
            for dir in level.drain(..) {
                if self.state.dir_is_empty(&dir) {
                    self.store.remove_dir_if_empty(&dir);
                    p.deletes.push(dir);
                }
            }
            if p.deletes.is_empty() {
                break;
            }
            level = p
                .deletes
                .iter()
                .map(|d| paths::parent(d).to_string())
                .filter(|d| !d.is_empty())
                .collect();
            self.commit(&mut p, self.current_seen(), None, &[])?;
        }
        Ok(())
    }

    /// The stamp given to records written outside a traversal (keeps them from an in-progress sweep).
    fn current_seen(&self) -> i64 {
        self.state
            .checkpoint()
            .map(|c| c.snapshot)
            .unwrap_or_else(|| {
                self.state
                    .meta("snapshot_seq")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            })
    }

    /// Fetch files with bounded concurrency into `p`; per-file failures are quarantined.
    async fn fetch_all(
        &mut self,
        list: Vec<(String, String, Option<String>, Option<String>)>,
        p: &mut Pending,
    ) -> Result<u64, SyncError> {
        let (client, store) = (self.client.clone(), self.store.clone());
        let mut results = futures_util::stream::iter(list)
            .map(|(rel, remote, hash, rev)| {
                Engine::fetch_one(client.clone(), store.clone(), rel, remote, hash, rev)
            })
            .buffer_unordered(self.cfg.concurrency);
        let mut n = 0;
        while let Some(r) = results.next().await {
            match r? {
                Fetched::Ok(rel, meta) => {
                    n += 1;
                    self.note_done(p, paths::to_remote(&self.cfg.remote_root, &rel), rel, meta);
                }
                Fetched::PerFile {
                    rel,
                    remote,
                    reason,
                    status,
                } => {
                    // 404 after an event: the file was deleted since; treat as a delete.
                    if status == Some(404) {
                        let _ = self.store.remove_file(&rel);
                        p.deletes.push(rel);
                        p.cleared.push(remote);
                    } else {
                        self.note_failure(p, Some(rel), remote, reason, false);
                    }
                }
            }
        }
        Ok(n)
    }

    /// Try quarantined files again (not hostile paths, which never change).
    pub async fn retry_quarantine(&mut self) -> Result<u64, SyncError> {
        let list: Vec<_> = self
            .state
            .quarantined()
            .into_iter()
            .filter(|q| !q.permanent)
            .filter_map(|q| {
                paths::to_local(&self.cfg.remote_root, &q.path)
                    .ok()
                    .map(|rel| (rel, q.path, None, None))
            })
            .collect();
        if list.is_empty() {
            return Ok(0);
        }
        let mut p = Pending::default();
        let n = self.fetch_all(list, &mut p).await?;
        self.commit(&mut p, self.current_seen(), None, &[])?;
        Ok(n)
    }

    /// Heal drift with a full metadata listing: a tree traversal with a fresh snapshot, which only fetches
    /// files whose hash differs, then the usual guarded sweep. The mirror stays served meanwhile.
    pub async fn audit(&mut self) -> Result<(), SyncError> {
        let mut ck = match self.state.checkpoint() {
            Some(ck) if ck.phase == Phase::Tree => ck,
            _ => self.new_checkpoint(Phase::Tree).await?,
        };
        self.tree_pull(&mut ck).await?;
        self.complete(&ck, crate::sync::bootstrap::PathUsed::Tree)?;
        let now = crate::sync::engine::now_rfc3339();
        let mut b = self.state.batch()?;
        b.set_meta("last_audit_at", &now)?;
        b.commit()?;
        Ok(())
    }
}
