//! Incremental sync after the bootstrap: apply the events feed page by page (changes collapsed per
//! path, cursor committed with the records), retry quarantined files, and audit by listing.
use crate::remote::types::Event;
use crate::store::db::{event_seq, Kind, MetaKey, Phase, State};
use crate::store::paths;
use crate::sync::engine::{Engine, FetchJob, Fetched, Pending, SyncError};
use crate::sync::push::conflict::{Incoming, Verdict};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};

/// Events asked per page.
const EVENTS_PAGE: u32 = 1000;

/// What the last event of a path asks for.
enum Action {
    Fetch {
        hash: Option<String>,
        revision: Option<String>,
    },
    Delete {
        revision: Option<String>,
    },
}

/// The feed's answer to the stored `cursor` begins at or before it: the server does not know the
/// cursor and replays its history from the start (ids restarted).
fn replayed(cursor: Option<&str>, events: &[Event]) -> Option<String> {
    let (cursor, first) = (cursor?, events.first()?);
    let (c, f) = (event_seq(cursor)?, event_seq(&first.event_id)?);
    (f <= c).then(|| {
        format!(
            "the server's history restarted: cursor {cursor} unknown, its feed starts again at {}",
            first.event_id
        )
    })
}

impl Engine {
    /// Apply every event after the stored cursor, up to the tail of the feed; returns how many
    /// events were applied. A feed that replays from its start (the stored cursor is unknown to a
    /// server whose history restarted) is not applied: the server is named rewound and listed again.
    pub async fn sync_pass(&self) -> Result<u64, SyncError> {
        let (feed, stored) = self
            .read(|st| Ok((st.has_feed()?, st.events_cursor()?)))
            .await?;
        if !feed {
            self.audit().await?;
            return Ok(0);
        }
        self.progress().set_phase("sync");
        let mut cursor = stored.clone();
        let mut applied = 0;
        loop {
            let page = match self.remote().events(cursor.as_deref(), EVENTS_PAGE).await {
                Ok(p) => p,
                // The feed refuses the cursor (400/410), or is gone (404): resync by a full metadata
                // listing with a fresh tip (hash-skip keeps it cheap); the feed is used again
                // afterwards (a server with no feed at all answers the tip with 404, and the listing
                // then records that).
                Err(e) if matches!(e.status(), Some(400 | 404 | 410)) => {
                    tracing::warn!(error = %e, cursor = ?cursor, "the events feed refused the cursor; resyncing with a full listing");
                    self.audit().await?;
                    return Ok(applied);
                }
                Err(e) => return Err(e.into()),
            };
            self.progress().unit();
            if cursor == stored {
                if let Some(why) = replayed(stored.as_deref(), &page.events) {
                    tracing::warn!(cause = %why, "the events feed went backwards; listing again, keeping every local file the server no longer has");
                    self.note_rewound(&why).await?;
                    self.audit().await?;
                    return Ok(applied);
                }
            }
            let Some(last) = page.events.last().map(|e| e.event_id.clone()) else {
                break;
            };
            let next = page.next_cursor.clone().unwrap_or_else(|| last.clone());
            self.apply_events(&page.events, &next).await?;
            applied += page.events.len() as u64;
            if page.next_cursor.is_none() {
                break;
            }
            cursor = Some(next);
        }
        self.set_meta(vec![(
            MetaKey::LastSyncAt,
            crate::sync::engine::now_rfc3339(),
        )])
        .await?;
        Ok(applied)
    }

    /// Apply a batch of feed events (from `/fs/events` or the realtime stream) and move the cursor to
    /// `next` in the same transaction — never backwards: an unknown cursor replays the feed from the
    /// start, so applying is idempotent. Changes are collapsed per path (the last event of a path
    /// decides); unknown event types are skipped and the cursor still moves past them.
    pub async fn apply_events(&self, events: &[Event], next: &str) -> Result<(), SyncError> {
        self.apply_events_guarded(events, next, HashMap::new())
            .await
    }

    /// [`Engine::apply_events`] with the local-edit verdicts the caller already has for some paths
    /// (the realtime stream asks before it writes inline content): those paths are not asked again.
    pub async fn apply_events_guarded(
        &self,
        events: &[Event],
        next: &str,
        known: HashMap<String, Verdict>,
    ) -> Result<(), SyncError> {
        let root = self.config().remote_root.clone();
        let mut actions: BTreeMap<String, Action> = BTreeMap::new();
        for ev in events {
            let Some(path) = ev.path.clone() else {
                continue;
            };
            match ev.kind.as_str() {
                "file.created" | "file.updated" => {
                    actions.insert(
                        path,
                        Action::Fetch {
                            hash: ev.content_hash.clone(),
                            revision: ev.revision.clone(),
                        },
                    );
                }
                "file.deleted" => {
                    actions.insert(
                        path,
                        Action::Delete {
                            revision: ev.revision.clone(),
                        },
                    );
                }
                _ => {}
            }
        }
        let mut p = Pending::default();
        let mut to_fetch = Vec::new();
        let mut deletes = Vec::new();
        let mut delete_revisions = Vec::new();
        for (remote, action) in actions {
            let rel = match paths::to_local(&root, &remote) {
                Ok(r) => r,
                Err(_) if !paths::is_under(&root, &remote) => continue,
                Err(why) => {
                    self.note_hostile(&mut p, remote, &why, false);
                    continue;
                }
            };
            match action {
                Action::Delete { revision } => {
                    if let Some(r) = revision {
                        delete_revisions.push((rel.clone(), r));
                    }
                    deletes.push((rel, remote));
                }
                Action::Fetch { hash, revision } => to_fetch.push(FetchJob {
                    rel,
                    remote,
                    listed_hash: hash,
                    revision,
                    listed_size: None,
                }),
            }
        }
        // The echo of a delete of mountd's own: the local side did it already (and may have written
        // the path again since, or removed its emptied directory: nothing to redo).
        let own: std::collections::HashSet<String> = delete_revisions
            .into_iter()
            .filter(|(rel, rev)| self.own_write(rel, rev))
            .map(|(rel, _)| rel)
            .collect();
        deletes.retain(|(rel, _)| !own.contains(rel));
        // Local edits are never overwritten silently (see `push::conflict`).
        let claims = to_fetch
            .iter()
            .map(|j| (j.rel.clone(), j.incoming()))
            .chain(
                deletes
                    .iter()
                    .map(|(rel, _)| (rel.clone(), Incoming::Deleted)),
            )
            .filter(|(rel, _)| !known.contains_key(rel))
            .collect();
        let mut verdicts = self.guard_local(claims).await?;
        verdicts.extend(known);
        let apply = |rel: &String| verdicts.get(rel).is_none_or(|v| *v == Verdict::Apply);
        to_fetch.retain(|j| apply(&j.rel));
        deletes.retain(|(rel, remote)| {
            if verdicts.get(rel) == Some(&Verdict::KeepFile) {
                p.forget.push(rel.clone());
                p.cleared.push(remote.clone());
            }
            apply(rel)
        });
        let (changed, removed) = (to_fetch.len(), deletes.len());
        self.remove_files(deletes, &mut p).await?;
        self.fetch_all(to_fetch, &mut p, false).await?;
        let deleted = p.deletes.clone();
        let seen = self.read(|st| st.current_seen()).await?;
        p.cursor = Some(next.to_string());
        self.commit(p, seen, None, vec![]).await?;
        self.prune_empty_dirs(deleted).await?;
        tracing::info!(
            events = events.len(),
            fetched = changed,
            deleted = removed,
            cursor = next,
            "applied a batch of changes"
        );
        Ok(())
    }

    /// Remove the local files of `file.deleted` events (what is recorded as a file) and note the deletes.
    async fn remove_files(
        &self,
        deletes: Vec<(String, String)>,
        p: &mut Pending,
    ) -> Result<(), SyncError> {
        if deletes.is_empty() {
            return Ok(());
        }
        let store = self.store().clone();
        let deletes = self
            .db()
            .run(move |st: &mut State| -> Result<_, SyncError> {
                let mut files = Vec::with_capacity(deletes.len());
                let mut gone = Vec::new();
                let mut stray = Vec::new();
                for (rel, remote) in deletes {
                    // A recorded file, or one written by an interrupted run before its record was
                    // committed: the remote deleted it. (`guard_local` has had its say: a local
                    // edit is not among these, or has been kept as a conflict copy.)
                    let dir_record = st.file(&rel)?.is_some_and(|r| r.kind != Kind::File);
                    let err = |e: std::io::Error| SyncError::local(&store.abs(&rel), &e);
                    // A directory on disk is left alone (a later listing or event says what it
                    // holds), and so is anything but a regular file where a directory is recorded.
                    if !dir_record || store.lstat(&rel).map_err(err)?.is_some_and(|m| m.is_file()) {
                        store.remove_file(&rel).map_err(err)?;
                    }
                    if dir_record {
                        // The record is still the directory the remote replaced by this file: a
                        // file there is one an interrupted run wrote before its record was
                        // committed (a pending write, mountd's), or a local file the guard kept as
                        // a conflict copy (pull-only). Either way it went with the remote's
                        // delete. The directory's record is not a file.deleted's business, but a
                        // quarantine of the deleted file goes all the same, and so does the
                        // pending write.
                        stray.push(rel);
                        gone.push(remote);
                    } else {
                        files.push((rel, remote));
                    }
                }
                Ok((files, gone, stray))
            })
            .await?;
        let (deletes, gone, stray) = deletes;
        for (rel, remote) in deletes {
            p.deletes.push(rel);
            p.cleared.push(remote);
        }
        p.cleared.extend(gone);
        p.orphans.extend(stray);
        Ok(())
    }

    /// Directories are implied by files on the remote: remove those a delete left empty, bottom-up.
    async fn prune_empty_dirs(&self, deleted: Vec<String>) -> Result<(), SyncError> {
        let mut level: Vec<String> = deleted
            .iter()
            .map(|r| paths::parent(r).to_string())
            .filter(|d| !d.is_empty())
            .collect();
        while !level.is_empty() {
            level.sort();
            level.dedup();
            let store = self.store().clone();
            let batch = std::mem::take(&mut level);
            let empty = self
                .db()
                .run(move |st: &mut State| -> Result<_, SyncError> {
                    let mut empty = Vec::new();
                    for dir in batch {
                        if st.dir_is_empty(&dir)? {
                            store.remove_dir_if_empty(&dir);
                            empty.push(dir);
                        }
                    }
                    Ok(empty)
                })
                .await?;
            if empty.is_empty() {
                break;
            }
            level = empty
                .iter()
                .map(|d| paths::parent(d).to_string())
                .filter(|d| !d.is_empty())
                .collect();
            let p = Pending {
                deletes: empty,
                ..Default::default()
            };
            let seen = self.read(|st| st.current_seen()).await?;
            self.commit(p, seen, None, vec![]).await?;
        }
        Ok(())
    }

    /// Fetch files with bounded concurrency into `p`; per-file failures are quarantined.
    /// (`retry`: these are quarantined files tried again.)
    async fn fetch_all(
        &self,
        list: Vec<FetchJob>,
        p: &mut Pending,
        retry: bool,
    ) -> Result<u64, SyncError> {
        self.intend(list.iter().map(|j| j.rel.clone()).collect())
            .await?;
        let mut results = futures_util::stream::iter(list)
            .map(|job| self.fetch_one(job))
            .buffer_unordered(self.config().concurrency);
        let mut n = 0;
        let mut failed = Vec::new();
        while let Some(r) = results.next().await {
            match r? {
                Fetched::Done { job, meta, fetched } => {
                    n += 1;
                    if fetched {
                        self.note_fetched();
                    }
                    self.note_done(p, job.remote, job.rel, meta);
                }
                Fetched::Failed { job, error } => failed.push((job, error)),
            }
        }
        drop(results);
        // Even a 404 is not a delete: only a file.deleted event or a fresh listing says so. The
        // local copy stays; a file still listed is retried (and a later delete event clears it), one
        // its directory no longer lists vanished and is not quarantined.
        self.note_file_failures(p, failed, retry).await?;
        Ok(n)
    }

    /// Try quarantined files again (not hostile paths, which never change).
    pub async fn retry_quarantine(&self) -> Result<u64, SyncError> {
        let quarantined = self.read(|st| st.quarantined()).await?;
        let list: Vec<FetchJob> = quarantined
            .into_iter()
            .filter(|q| !q.permanent)
            .filter_map(|q| {
                self.to_local(&q.path)
                    .ok()
                    .map(|rel| FetchJob::unlisted(rel, q.path))
            })
            .collect();
        if list.is_empty() {
            return Ok(0);
        }
        let claims = list.iter().map(|j| (j.rel.clone(), j.incoming())).collect();
        let verdicts = self.guard_local(claims).await?;
        let list: Vec<FetchJob> = list
            .into_iter()
            .filter(|j| verdicts.get(&j.rel).is_none_or(|v| *v == Verdict::Apply))
            .collect();
        let mut p = Pending::default();
        let n = self.fetch_all(list, &mut p, true).await?;
        let seen = self.read(|st| st.current_seen()).await?;
        self.commit(p, seen, None, vec![]).await?;
        Ok(n)
    }

    /// Heal drift with a full metadata listing: a tree traversal with a fresh snapshot, which only fetches
    /// files whose hash differs, then the usual guarded sweep. The mirror stays served meanwhile.
    pub async fn audit(&self) -> Result<(), SyncError> {
        let mut ck = match self.read(|st| st.checkpoint()).await? {
            Some(ck) if ck.phase == Phase::Tree => {
                // Resuming an interrupted audit: files quarantined by an earlier attempt are tried
                // again first (as a resumed bootstrap does). The completion's systemic rule counts the
                // stored quarantine, so without this an audit that once failed systemically (every
                // file 404 for a while) would fail the same way on every later run, healed server or not.
                self.retry_quarantine().await?;
                ck
            }
            _ => self.new_checkpoint(Phase::Tree).await?,
        };
        self.tree_pull(&mut ck).await?;
        self.complete(&ck, crate::sync::bootstrap::PathUsed::Tree)
            .await?;
        self.set_meta(vec![(
            MetaKey::LastAuditAt,
            crate::sync::engine::now_rfc3339(),
        )])
        .await
    }
}
