//! Pushing the outbox: each pending change goes to the remote with `If-Match` = the revision it was
//! made on (`0` for a new file), and its answer is committed with the records in one transaction.
//!
//! * **Puts** are read from disk (and hashed again: what is pushed is what is recorded), batched
//!   into `POST /fs/bulk` requests within the server's body cap (a 413 splits a batch in two; a
//!   lone file goes as `PUT /fs/file`). A file whose encoded body alone exceeds the cap is noted as
//!   too large and not tried again until it changes.
//! * **Deletes** go one request each (`DELETE /fs/file`; bulk has none), a few at a time, after the
//!   puts of the same round (so a rename is a create, then a delete: the content is never absent
//!   from the remote). The mass-deletion guard holds them all when too many files were deleted
//!   locally, or when the mirror directory is on another file system than before.
//! * **Exactly once.** A write whose answer was lost (a crash, a reset) is sent again after the
//!   restart; the remote then answers 409 (it is no longer at the base revision), and the remote's
//!   current version is fetched: if its hash is the pushed one, it was this write, recorded as done
//!   (no conflict, no second write). Otherwise it is a real conflict: the remote version takes the
//!   path, the local bytes stay as a conflict copy ([`super::conflict`]).
//! * A 403 marks the path write-denied (kept, reported once, tried again only under another token);
//!   429 `delete_storm_rejected` holds deletes until its `Retry-After`.
use super::conflict::copy_path;
use crate::remote::retry::DELETE_STORM;
use crate::remote::types::{BulkOutcome, PushFile, WriteOutcome};
use crate::remote::RemoteError;
use crate::store::db::{Conflict, FileMeta, IssueKind, MetaKey, OpKind, Outgoing, State};
use crate::store::mirror::key_of;
use crate::store::paths;
use crate::sync::engine::{Engine, FetchJob, Fetched, Pending, Recorded, SyncError};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

/// Files above this size are pushed straight from disk (`PUT`, base64 streamed, hashed as sent): the
/// daemon never holds one whole in memory.
const STREAM_FROM: u64 = 4 << 20;
/// Rows taken per round.
const ROUND: usize = 1000;
/// Bytes of a bulk body around its files (`{"files":[...]}`, commas).
const BULK_OVERHEAD: usize = 64;
/// Deletes in flight at once.
const DELETES_IN_FLIGHT: usize = 8;
/// The mass-deletion guard needs at least this many local deletes (besides an emptied mirror).
const MASS_DELETE_MIN: u64 = 20;

/// The push side's state in memory.
#[derive(Debug, Default)]
pub struct PushState {
    /// Why deletes are held (logged when it changes).
    pub held: Option<String>,
    /// A delete storm was refused: no delete before this instant.
    pub storm_until: Option<Instant>,
    /// The token may not write (a 403 on a write): the writable view refuses writes with EACCES.
    pub denied: Option<String>,
}

/// What one [`Engine::push_pending`] call did.
#[derive(Debug, Default, Clone)]
pub struct Pushed {
    pub files: u64,
    pub requests: u64,
    pub conflicts: u64,
    pub failed: u64,
    /// Why deletes wait for an operator, if they do.
    pub held: Option<String>,
}

/// A put read from disk.
struct Staged {
    row: Outgoing,
    file: PushFile,
    hash: String,
    size: u64,
    stat: String,
    content_type: String,
}

/// What became of one pushed change.
enum Fate {
    Done {
        staged: Staged,
        revision: Option<String>,
    },
    Conflict {
        staged: Staged,
    },
    /// The base revision no longer exists on the remote: push it as a new file next time.
    Absent {
        rel: String,
    },
    Denied {
        rel: String,
        why: String,
    },
    TooLarge {
        rel: String,
        stat: String,
        why: String,
    },
    Failed {
        rel: String,
        why: String,
    },
}

impl Engine {
    /// Push the pending changes, each tried once per call (those recorded while it runs are left to the
    /// next call, unless a full round shows more were already waiting); returns what happened. A request
    /// that fails after its retries (the remote unavailable) ends the call with that error: the rows
    /// stay and are pushed by a later call.
    pub async fn push_pending(&self) -> Result<Pushed, SyncError> {
        let mut report = Pushed::default();
        if !self.config().push.two_way() {
            return Ok(report);
        }
        let mut tried: HashSet<String> = HashSet::new();
        loop {
            let _exclusive = self.exclusive().await;
            let skip = tried.len();
            let rows: Vec<Outgoing> = self
                .read(move |st| st.outbox_batch(i64::MAX, ROUND + skip))
                .await?
                .into_iter()
                .filter(|r| !tried.contains(&r.path))
                .collect();
            if rows.is_empty() {
                break;
            }
            tried.extend(rows.iter().map(|r| r.path.clone()));
            // A round shorter than a full one took everything that was waiting; what is recorded
            // meanwhile goes with the next call, gathered into full batches (the service waits for a
            // burst to end first) rather than trickling out a few files per request.
            let last = rows.len() < ROUND;
            let hold = self.delete_hold().await?;
            report.held = hold.clone();
            let rows = self.without_issues(rows).await?;
            let (puts, deletes): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|r| r.op == OpKind::Put);
            self.push_puts(puts, &mut report).await?;
            if hold.is_none() {
                self.push_deletes(deletes, &mut report).await?;
            }
            if last {
                break;
            }
        }
        let summary = self.read(|st| st.outbox_summary()).await?;
        crate::metrics::Metrics::global().set_outbox(&summary);
        self.progress().set_push(&summary);
        Ok(report)
    }

    /// Rows whose path the remote will not take as it is (denied under this token, too large at
    /// this version) stay pending but are not sent.
    async fn without_issues(&self, rows: Vec<Outgoing>) -> Result<Vec<Outgoing>, SyncError> {
        let token = self.config().push.token_id.clone();
        self.read(move |st| {
            let mut keep = Vec::with_capacity(rows.len());
            for r in rows {
                let blocked = match st.write_issue(&r.path)? {
                    Some(i) if i.kind == IssueKind::Denied => i.token == token,
                    Some(i) if i.kind == IssueKind::TooLarge => {
                        r.op == OpKind::Put && i.local_stat == r.local_stat
                    }
                    _ => false,
                };
                if !blocked {
                    keep.push(r);
                }
            }
            Ok(keep)
        })
        .await
    }

    /// The mass-deletion guard: why every local delete waits for an operator, if it does.
    async fn delete_hold(&self) -> Result<Option<String>, SyncError> {
        let allow = self.config().allow_mass_delete;
        let ratio = self.config().mass_delete_ratio;
        let root = self.store().root().to_path_buf();
        let reason = self
            .db()
            .run(move |st: &mut State| -> Result<Option<String>, SyncError> {
                let deletes = st.outbox_deletes()?;
                let allowed = allow || st.meta(MetaKey::AllowDeletes)?.as_deref() == Some("1");
                if deletes == 0 {
                    if st.meta(MetaKey::AllowDeletes)?.is_some() {
                        let mut b = st.batch()?;
                        b.delete_meta(MetaKey::AllowDeletes)?;
                        b.commit()?;
                    }
                    return Ok(None);
                }
                let tracked = st.tracked_files()?;
                use std::os::unix::fs::MetadataExt;
                let dev = std::fs::metadata(&root).map(|m| m.dev().to_string()).ok();
                let was = st.meta(MetaKey::RootDevice)?;
                let reason = if allowed {
                    None
                } else if dev.is_none() {
                    Some(format!("the mirror directory {} is missing", root.display()))
                } else if was.is_some() && was != dev {
                    Some(format!(
                        "the mirror directory {} is on another file system than before (device {}, was {})",
                        root.display(),
                        dev.clone().unwrap_or_default(),
                        was.clone().unwrap_or_default()
                    ))
                } else if deletes == tracked {
                    Some(format!(
                        "every tracked file ({tracked}) was deleted locally: the mirror directory was emptied"
                    ))
                } else if deletes >= MASS_DELETE_MIN && deletes as f64 > ratio * tracked as f64 {
                    Some(format!(
                        "{deletes} of {tracked} tracked files were deleted locally (more than {:.0} %)",
                        ratio * 100.0
                    ))
                } else {
                    None
                };
                let mut b = st.batch()?;
                if was.is_none() {
                    if let Some(d) = &dev {
                        b.set_meta(MetaKey::RootDevice, d)?;
                    }
                }
                b.outbox_hold_deletes(reason.as_deref())?;
                b.commit()?;
                Ok(reason)
            })
            .await?;
        let mut state = self.push_state();
        if reason != state.held {
            match &reason {
                Some(why) => {
                    tracing::warn!(reason = %why, "holding local deletes: none is pushed until an operator allows it (`mountd outbox allow-deletes`, or --allow-mass-delete); restore the files to cancel")
                }
                None if state.held.is_some() => tracing::info!("local deletes no longer held"),
                None => {}
            }
            state.held = reason.clone();
        }
        Ok(reason)
    }

    /// Read the files of `rows` and push them in batches.
    async fn push_puts(&self, rows: Vec<Outgoing>, report: &mut Pushed) -> Result<(), SyncError> {
        if rows.is_empty() {
            return Ok(());
        }
        let store = self.store().clone();
        let root = self.config().remote_root.clone();
        let cap = self.config().push.max_body_bytes;
        let (staged, mut fates) = tokio::task::spawn_blocking(move || {
            let mut staged = Vec::new();
            let mut fates = Vec::new();
            for row in rows {
                match stage(&store, &root, cap, row) {
                    Ok(Some(Ok(s))) => staged.push(s),
                    Ok(Some(Err(f))) => fates.push(f),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((staged, fates))
        })
        .await
        .map_err(|e| SyncError::Internal(format!("push reader: {e}")))??;
        // Greedy batches within the cap.
        let budget = cap.saturating_sub(BULK_OVERHEAD);
        let mut batches: Vec<Vec<Staged>> = Vec::new();
        let mut alone: Vec<Vec<Staged>> = Vec::new();
        let mut size = 0;
        for s in staged {
            let len = s.file.encoded_len() + 1;
            if s.file.source.is_some() {
                // Streamed from disk: a PUT of its own.
                alone.push(vec![s]);
                continue;
            }
            if batches.is_empty() || size + len > budget {
                batches.push(Vec::new());
                size = 0;
            }
            size += len;
            batches.last_mut().expect("a batch").push(s);
        }
        batches.extend(alone);
        while let Some(batch) = batches.pop() {
            match self.send_batch(batch, report).await? {
                Sent::Fates(f) => fates.extend(f),
                Sent::Split(a, b) => {
                    batches.push(a);
                    batches.push(b);
                }
            }
        }
        self.settle(fates, report).await
    }

    /// One request for `batch`: a PUT for a lone file, else a bulk.
    async fn send_batch(&self, batch: Vec<Staged>, report: &mut Pushed) -> Result<Sent, SyncError> {
        let m = crate::metrics::Metrics::global();
        m.push_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        report.requests += 1;
        if batch.len() == 1 {
            let s = batch.into_iter().next().expect("one file");
            let r = self.remote().put_file(&s.file.path, &s.file).await;
            return Ok(Sent::Fates(vec![match r {
                Ok(WriteOutcome::Accepted { revision }) => Fate::Done {
                    staged: s,
                    revision,
                },
                Ok(WriteOutcome::Conflict { .. }) => Fate::Conflict { staged: s },
                Ok(WriteOutcome::Absent) => Fate::Absent { rel: s.row.path },
                Err(e) => match refusal(&e) {
                    Some(Refusal::Denied) => Fate::Denied {
                        rel: s.row.path,
                        why: e.to_string(),
                    },
                    Some(Refusal::TooLarge) => Fate::TooLarge {
                        rel: s.row.path,
                        stat: s.stat,
                        why: e.to_string(),
                    },
                    None => return Err(e.into()),
                },
            }]));
        }
        let files: Vec<PushFile> = batch.iter().map(|s| s.file.clone()).collect();
        match self.remote().bulk(&files).await {
            Ok(out) => Ok(Sent::Fates(bulk_fates(batch, out))),
            Err(e) => match refusal(&e) {
                Some(Refusal::TooLarge) => {
                    let mut a = batch;
                    let b = a.split_off(a.len() / 2);
                    Ok(Sent::Split(a, b))
                }
                Some(Refusal::Denied) => Ok(Sent::Fates(
                    batch
                        .into_iter()
                        .map(|s| Fate::Denied {
                            rel: s.row.path,
                            why: e.to_string(),
                        })
                        .collect(),
                )),
                None => Err(e.into()),
            },
        }
    }

    /// Commit what became of pushed puts: done ones with their records, conflicts resolved, the
    /// rest noted.
    async fn settle(&self, fates: Vec<Fate>, report: &mut Pushed) -> Result<(), SyncError> {
        let m = crate::metrics::Metrics::global();
        let mut p = Pending {
            nothing_written: true,
            ..Default::default()
        };
        let mut conflicts = Vec::new();
        let mut notes: Vec<Fate> = Vec::new();
        for f in fates {
            match f {
                Fate::Done { staged, revision } => {
                    report.files += 1;
                    if let Some(r) = &revision {
                        self.note_own_write(&staged.row.path, r);
                    }
                    p.pushed.push(staged.row.path.clone());
                    p.files.push(Recorded {
                        rel: staged.row.path.clone(),
                        meta: FileMeta {
                            size: staged.size,
                            revision,
                            content_hash: Some(staged.hash.clone()),
                            content_type: Some(staged.content_type.clone()),
                            local_stat: Some(staged.stat.clone()),
                        },
                    });
                }
                Fate::Conflict { staged } => conflicts.push(staged),
                other => notes.push(other),
            }
        }
        m.pushed_files
            .fetch_add(p.files.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !p.files.is_empty() {
            let seen = self.read(|st| st.current_seen()).await?;
            self.commit(p, seen, None, vec![]).await?;
        }
        self.note_fates(notes, report).await?;
        for s in conflicts {
            self.resolve_conflict(s, report).await?;
        }
        Ok(())
    }

    /// Record the pushes that did not go through.
    async fn note_fates(&self, notes: Vec<Fate>, report: &mut Pushed) -> Result<(), SyncError> {
        if notes.is_empty() {
            return Ok(());
        }
        let token = self.config().push.token_id.clone();
        for n in &notes {
            match n {
                Fate::Denied { rel, why } => {
                    tracing::warn!(path = %rel, error = %why, "write denied (403): the local file is kept and not pushed again until the token changes");
                    let first = self.push_state().denied.replace(why.clone()).is_none();
                    if let (true, Some(sink)) = (first, self.sink()) {
                        // The writable view shows modes without write bits from now on.
                        sink.attributes_changed();
                    }
                }
                Fate::TooLarge { rel, why, .. } => {
                    tracing::warn!(path = %rel, error = %why, "too large for the server's body cap: the local file is kept and not pushed until it changes")
                }
                Fate::Failed { rel, why } => {
                    tracing::warn!(path = %rel, error = %why, "push failed; it is retried later")
                }
                _ => {}
            }
            if matches!(n, Fate::Failed { .. }) {
                report.failed += 1;
                crate::metrics::Metrics::global()
                    .push_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.db()
            .run(move |st: &mut State| -> Result<(), SyncError> {
                let mut b = st.batch()?;
                for n in notes {
                    match n {
                        Fate::Denied { rel, why } => b.write_issue_set(
                            &rel,
                            IssueKind::Denied,
                            &why,
                            None,
                            token.as_deref(),
                        )?,
                        Fate::TooLarge { rel, stat, why } => {
                            b.write_issue_set(&rel, IssueKind::TooLarge, &why, Some(&stat), None)?
                        }
                        Fate::Failed { rel, why } => b.outbox_failed(&rel, &why)?,
                        Fate::Absent { rel } => b.outbox_rebase(&rel, None)?,
                        Fate::Done { .. } | Fate::Conflict { .. } => {}
                    }
                }
                b.commit()?;
                Ok(())
            })
            .await
    }

    /// A put met another revision than its base. Fetch the remote's version (the local bytes kept
    /// aside first): the pushed bytes mean it was this very write (its answer was lost); anything else
    /// is a conflict, whose copy stays.
    async fn resolve_conflict(&self, s: Staged, report: &mut Pushed) -> Result<(), SyncError> {
        let rel = s.row.path.clone();
        let now_stat = self
            .store()
            .stat_key(&rel)
            .map_err(|e| SyncError::local(&self.store().abs(&rel), &e))?;
        if now_stat.as_deref() != Some(s.stat.as_str()) {
            // Changed again since it was read: detection records the new version, pushed next time.
            return Ok(());
        }
        let copy = copy_path(&rel, &s.hash, crate::store::db::now_secs());
        self.store()
            .keep_aside(&rel, &copy)
            .map_err(|e| SyncError::local(&self.store().abs(&copy), &e))?;
        self.intend(vec![rel.clone()]).await?;
        let job = FetchJob::unlisted(rel.clone(), s.file.path.clone());
        let drop_copy = || {
            let _ = std::fs::remove_file(self.store().abs(&copy));
        };
        match self.fetch_one(job).await? {
            Fetched::Done { meta, .. } => {
                let ours = meta.content_hash.as_deref() == Some(s.hash.as_str());
                let remote_rev = meta.revision.clone();
                let mut p = Pending::default();
                p.pushed.push(rel.clone());
                p.files.push(Recorded {
                    rel: rel.clone(),
                    meta,
                });
                let seen = self.read(|st| st.current_seen()).await?;
                if ours {
                    drop_copy();
                    report.files += 1;
                    tracing::info!(path = %rel, "the remote already had this push (its answer was lost): recorded, not sent again");
                    return self.commit(p, seen, None, vec![]).await;
                }
                self.commit(p, seen, None, vec![]).await?;
                report.conflicts += 1;
                let mut c = Conflict {
                    id: 0,
                    path: rel,
                    copy,
                    local_hash: Some(s.hash),
                    size: s.size,
                    base_revision: s.row.base_revision,
                    remote_revision: remote_rev,
                    reason: "changed on both sides".into(),
                    created_at: crate::store::db::now_secs(),
                };
                let c = self
                    .db()
                    .run(move |st: &mut State| -> Result<_, SyncError> {
                        let mut b = st.batch()?;
                        c.id = b.conflict_add(&c)?;
                        b.commit()?;
                        Ok(c)
                    })
                    .await?;
                self.report_conflict(&c);
                Ok(())
            }
            Fetched::Failed { error, .. } if error.status() == Some(404) => {
                // Deleted on the remote meanwhile: the edit wins, pushed as a new file.
                drop_copy();
                self.note_fates(vec![Fate::Absent { rel }], report).await
            }
            Fetched::Failed { error, .. } => {
                drop_copy();
                self.note_fates(
                    vec![Fate::Failed {
                        rel,
                        why: format!("conflict check: {error}"),
                    }],
                    report,
                )
                .await
            }
        }
    }

    /// Push deletes, a few at a time.
    async fn push_deletes(
        &self,
        rows: Vec<Outgoing>,
        report: &mut Pushed,
    ) -> Result<(), SyncError> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(until) = self.push_state().storm_until {
            if Instant::now() < until {
                return Ok(());
            }
        }
        let root = self.config().remote_root.clone();
        let mut results = futures_util::stream::iter(rows)
            .map(|row| {
                let remote = paths::to_remote(&root, &row.path);
                async move {
                    let base = row.base_revision.clone().unwrap_or_else(|| "*".into());
                    let r = self.remote().delete_file(&remote, &base).await;
                    (row, remote, r)
                }
            })
            .buffer_unordered(DELETES_IN_FLIGHT);
        let mut p = Pending::default();
        let mut back = Vec::new();
        let mut notes = Vec::new();
        let mut fatal = None;
        while let Some((row, remote, r)) = results.next().await {
            report.requests += 1;
            crate::metrics::Metrics::global()
                .push_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(outcome @ (WriteOutcome::Accepted { .. } | WriteOutcome::Absent)) => {
                    if let WriteOutcome::Accepted { revision: Some(r) } = &outcome {
                        self.note_own_write(&row.path, r);
                    }
                    report.files += 1;
                    p.forget.push(row.path.clone());
                    p.pushed.push(row.path);
                }
                // Changed on the remote since: the edit wins over the delete, the file comes back.
                Ok(WriteOutcome::Conflict { .. }) => back.push((row, remote)),
                Err(e) if e.code() == Some(DELETE_STORM) => {
                    let wait = e.retry_after().unwrap_or(Duration::from_secs(60));
                    tracing::warn!(error = %e, wait_s = wait.as_secs(), "the server refuses a burst of deletes: holding deletes until its Retry-After");
                    self.push_state().storm_until = Some(Instant::now() + wait);
                }
                Err(e) => match refusal(&e) {
                    Some(Refusal::Denied) => notes.push(Fate::Denied {
                        rel: row.path,
                        why: e.to_string(),
                    }),
                    _ if fatal.is_none() => fatal = Some(e),
                    _ => {}
                },
            }
        }
        drop(results);
        crate::metrics::Metrics::global()
            .pushed_files
            .fetch_add(p.forget.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let seen = self.read(|st| st.current_seen()).await?;
        self.commit(p, seen, None, vec![]).await?;
        self.note_fates(notes, report).await?;
        for (row, remote) in back {
            self.restore(row, remote).await?;
        }
        match fatal {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// A local delete lost to a remote change: fetch the remote version back.
    async fn restore(&self, row: Outgoing, remote: String) -> Result<(), SyncError> {
        tracing::info!(path = %row.path, "deleted locally but changed on the remote: the remote version comes back (an edit wins over a delete)");
        self.intend(vec![row.path.clone()]).await?;
        let job = FetchJob::unlisted(row.path.clone(), remote);
        let mut p = Pending::default();
        p.pushed.push(row.path.clone());
        match self.fetch_one(job).await? {
            Fetched::Done { job, meta, .. } => self.note_done(&mut p, job.remote, job.rel, meta),
            Fetched::Failed { job, error } => self.note_file_failure(&mut p, job, &error, false),
        }
        let seen = self.read(|st| st.current_seen()).await?;
        self.commit(p, seen, None, vec![]).await
    }
}

enum Sent {
    Fates(Vec<Fate>),
    Split(Vec<Staged>, Vec<Staged>),
}

enum Refusal {
    Denied,
    TooLarge,
}

/// A write refusal that is about the path or the body, not the service.
fn refusal(e: &RemoteError) -> Option<Refusal> {
    match e.status() {
        Some(403) => Some(Refusal::Denied),
        Some(413) => Some(Refusal::TooLarge),
        _ => None,
    }
}

/// Per-file fates of a bulk answer: a file in `results` is done, one in `errors` conflicted or was
/// refused; a file in neither (a server that says less) is retried.
fn bulk_fates(batch: Vec<Staged>, out: BulkOutcome) -> Vec<Fate> {
    let mut done: std::collections::HashMap<String, Option<String>> = out
        .results
        .into_iter()
        .map(|r| (r.path, r.revision))
        .collect();
    let mut errors: std::collections::HashMap<String, crate::remote::types::BulkError> = out
        .errors
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
    batch
        .into_iter()
        .map(|s| {
            let path = s.file.path.clone();
            if let Some(e) = errors.remove(&path) {
                let why = format!("{}: {}", e.error.code, e.error.message);
                return match e.error.code.as_str() {
                    "conflict" | "revision_conflict" => Fate::Conflict { staged: s },
                    "forbidden" => Fate::Denied {
                        rel: s.row.path,
                        why,
                    },
                    "payload_too_large" => Fate::TooLarge {
                        rel: s.row.path,
                        stat: s.stat,
                        why,
                    },
                    "not_found" => Fate::Absent { rel: s.row.path },
                    _ => Fate::Failed {
                        rel: s.row.path,
                        why,
                    },
                };
            }
            match done.remove(&path) {
                Some(revision) => Fate::Done {
                    staged: s,
                    revision,
                },
                None => Fate::Failed {
                    rel: s.row.path,
                    why: "the bulk answer does not mention this file".into(),
                },
            }
        })
        .collect()
}

/// The fate of a file whose request body alone exceeds the server's cap.
fn body_too_large(file: &PushFile, cap: usize, row: Outgoing, stat: String) -> Fate {
    Fate::TooLarge {
        why: format!(
            "{} needs a request body of {}, above the server's body cap of {} (--max-push-bytes)",
            row.path,
            crate::store::space::human_bytes(file.encoded_len() as u64),
            crate::store::space::human_bytes(cap as u64)
        ),
        rel: row.path,
        stat,
    }
}

/// Stage a large file to be streamed from disk: hashed now (reading it once), checked again as it is
/// sent.
fn stage_streamed(
    abs: std::path::PathBuf,
    before: &std::fs::Metadata,
    stat: String,
    root: &str,
    cap: usize,
    row: Outgoing,
) -> Result<Option<Result<Staged, Fate>>, SyncError> {
    let hash = crate::store::mirror::hash_file(&abs).map_err(|e| SyncError::local(&abs, &e))?;
    let after = std::fs::symlink_metadata(&abs).map_err(|e| SyncError::local(&abs, &e))?;
    if key_of(&after) != stat {
        // Still being written: pushed once it settles.
        return Ok(None);
    }
    let if_match = row.base_revision.clone().unwrap_or_else(|| "0".into());
    let src = crate::remote::types::FileSource {
        abs,
        size: before.len(),
        sha256: hash.clone(),
    };
    let file = PushFile::streamed(paths::to_remote(root, &row.path), src, if_match);
    if file.encoded_len() + BULK_OVERHEAD > cap {
        return Ok(Some(Err(body_too_large(&file, cap, row, stat))));
    }
    Ok(Some(Ok(Staged {
        content_type: file.content_type.clone(),
        size: before.len(),
        row,
        file,
        hash,
        stat,
    })))
}

/// Read one pending put from disk: `Ok(None)` when the file is gone or not a regular file (detection
/// records what it is now), `Ok(Some(Err))` when it cannot be pushed as it is (too large).
fn stage(
    store: &crate::store::LocalStore,
    root: &str,
    cap: usize,
    row: Outgoing,
) -> Result<Option<Result<Staged, Fate>>, SyncError> {
    let abs = store.abs(&row.path);
    let mut f = match std::fs::File::open(&abs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SyncError::local(&abs, &e)),
    };
    let before = f.metadata().map_err(|e| SyncError::local(&abs, &e))?;
    if !before.is_file() {
        return Ok(None);
    }
    let stat = key_of(&before);
    if before.len() as usize > cap {
        return Ok(Some(Err(Fate::TooLarge {
            why: format!(
                "{} is {}, above the server's body cap of {} (--max-push-bytes)",
                row.path,
                crate::store::space::human_bytes(before.len()),
                crate::store::space::human_bytes(cap as u64)
            ),
            rel: row.path,
            stat,
        })));
    }
    if before.len() > STREAM_FROM {
        return stage_streamed(abs, &before, stat, root, cap, row);
    }
    let mut bytes = Vec::with_capacity(before.len() as usize);
    f.read_to_end(&mut bytes)
        .map_err(|e| SyncError::local(&abs, &e))?;
    let after = f.metadata().map_err(|e| SyncError::local(&abs, &e))?;
    if key_of(&after) != stat {
        // Still being written: pushed once it settles.
        return Ok(None);
    }
    let hash = crate::remote::types::sha256_hex(&bytes);
    let if_match = row.base_revision.clone().unwrap_or_else(|| "0".into());
    let file = PushFile::new(paths::to_remote(root, &row.path), &bytes, if_match);
    if file.encoded_len() + BULK_OVERHEAD > cap {
        return Ok(Some(Err(body_too_large(&file, cap, row, stat))));
    }
    Ok(Some(Ok(Staged {
        content_type: file.content_type.clone(),
        size: bytes.len() as u64,
        row,
        file,
        hash,
        stat,
    })))
}
