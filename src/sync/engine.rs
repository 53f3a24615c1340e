//! The sync engine's shared parts: its inputs (remote client, local store, state), fetching one file with
//! hash-skip, committing a batch of results, and telling the file system view what changed.
use crate::remote::{RemoteClient, RemoteError};
use crate::store::db::{Checkpoint, FileMeta, State, StateError};
use crate::store::paths;
use crate::store::LocalStore;
use crate::sync::progress::Progress;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Remote(#[from] RemoteError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("local mirror: {0}")]
    Io(String),
    #[error("stalled: {0}")]
    Stalled(String),
    /// The stall guard: no checkpoint progress in `--stall-limit` consecutive attempts.
    #[error("stalled: {0}")]
    GaveUp(String),
    #[error("refusing to delete {would} of {tracked} mirrored files at completion (the remote listing lost more than half of the tree); if that is really intended, run again with --allow-mass-delete")]
    MassDelete { would: u64, tracked: u64 },
}

/// Now, as the RFC 3339 timestamp stored in the state DB (`last_sync_at`, `last_audit_at`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Fixed settings of the engine.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub remote_root: String,
    pub tree_depth: u32,
    pub concurrency: usize,
    pub use_export: bool,
    pub export_timeout: Duration,
    pub allow_mass_delete: bool,
}

/// One change for the file system view's kernel cache invalidation.
#[derive(Debug, Clone)]
pub struct Change {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub removed: bool,
}

/// Receives what each commit changed (the FUSE adapter invalidates kernel caches with it).
pub trait ChangeSink: Send + Sync {
    fn changed(&self, changes: &[Change]);
}

/// Outcome of fetching one listed or announced file.
pub enum Fetched {
    /// Written or verified: its record.
    Ok(String, FileMeta),
    /// This file failed on its own (403, 404, bad hash, bad path...): quarantine it.
    PerFile {
        rel: String,
        remote: String,
        reason: String,
        /// The HTTP status when the server refused this file (404: gone since it was announced).
        status: Option<u16>,
    },
}

/// What a commit records, built while a page is processed.
#[derive(Default)]
pub struct Pending {
    pub files: Vec<(String, FileMeta)>,
    pub dirs: Vec<String>,
    pub deletes: Vec<String>,
    /// (remote path, reason, permanent) and the local path whose old record is kept.
    pub quarantine: Vec<(String, String, bool, Option<String>)>,
    pub cleared: Vec<String>,
    pub queue_push: Vec<String>,
    pub queue_remove: Option<i64>,
    /// The traversal is over: drop the checkpoint and the queue in the same transaction.
    pub finish: bool,
}

impl Pending {
    /// Move the file records (not the traversal bookkeeping) into a batch of their own, for an
    /// intra-page checkpoint that must not advance the cursor.
    pub fn take_records(&mut self) -> Pending {
        Pending {
            files: std::mem::take(&mut self.files),
            cleared: std::mem::take(&mut self.cleared),
            dirs: self.dirs.clone(),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.dirs.is_empty()
            && self.deletes.is_empty()
            && self.quarantine.is_empty()
            && self.cleared.is_empty()
    }
}

pub struct Engine {
    pub client: Arc<RemoteClient>,
    pub store: Arc<LocalStore>,
    pub state: State,
    pub cfg: SyncConfig,
    pub progress: Progress,
    pub sink: Option<Arc<dyn ChangeSink>>,
}

impl Engine {
    /// Fetch one file unless the local bytes already match `listed_hash`; decode, verify, write atomically.
    pub async fn fetch_one(
        client: Arc<RemoteClient>,
        store: Arc<LocalStore>,
        rel: String,
        remote: String,
        listed_hash: Option<String>,
        revision: Option<String>,
    ) -> Result<Fetched, RemoteError> {
        if let Some(h) = listed_hash.clone() {
            let (s, r) = (store.clone(), rel.clone());
            let size = tokio::task::spawn_blocking(move || {
                s.matches_hash(&r, &h).then(|| s.file_size(&r)).flatten()
            })
            .await
            .ok()
            .flatten();
            if let Some(size) = size {
                return Ok(Fetched::Ok(
                    rel,
                    FileMeta {
                        size,
                        revision,
                        content_hash: listed_hash,
                        content_type: None,
                    },
                ));
            }
        }
        let body = match client.file(&remote).await {
            Ok(b) => b,
            Err(e) if e.is_per_file() => {
                return Ok(Fetched::PerFile {
                    rel,
                    remote,
                    reason: e.to_string(),
                    status: e.status(),
                })
            }
            Err(e) => return Err(e),
        };
        // Decoded in bounded steps straight into the temp file, verified before the rename.
        let done = tokio::task::spawn_blocking(move || {
            let file = match body.parse() {
                Ok(f) => f,
                Err(reason) => {
                    return Fetched::PerFile {
                        rel,
                        remote,
                        reason,
                        status: None,
                    }
                }
            };
            match store.write_atomic_with(&rel, |w| file.decode_into(w)) {
                Ok((size, hash)) => Fetched::Ok(
                    rel,
                    FileMeta {
                        size,
                        revision: file.revision.clone(),
                        content_hash: Some(hash),
                        content_type: file.content_type.clone(),
                    },
                ),
                Err(reason) => Fetched::PerFile {
                    rel,
                    remote,
                    reason,
                    status: None,
                },
            }
        })
        .await
        .map_err(|e| RemoteError::BadData {
            op: "file".into(),
            detail: format!("worker failed: {e}"),
            correlation_id: String::new(),
        })?;
        Ok(done)
    }

    /// Persist `p` (and the checkpoint, when given) in one transaction, after a durability barrier.
    /// Returns the number of records written. Counts as a progress unit.
    pub fn commit(
        &mut self,
        p: &mut Pending,
        seen: i64,
        ck: Option<&Checkpoint>,
        extra_meta: &[(&str, &str)],
    ) -> Result<(), SyncError> {
        if !p.files.is_empty() || !p.deletes.is_empty() {
            self.store
                .sync()
                .map_err(|e| SyncError::Io(format!("syncfs failed: {e}")))?;
        }
        let mut changes = Vec::new();
        let mut b = self.state.batch()?;
        for d in p.dirs.drain(..) {
            b.ensure_dir(&d, seen)?;
        }
        for (rel, meta) in p.files.drain(..) {
            let (ino, parent, changed) = b.upsert_file(&rel, &meta, seen)?;
            if changed {
                changes.push(Change {
                    ino,
                    parent,
                    name: paths::name(&rel).to_string(),
                    removed: false,
                });
            }
        }
        for rel in p.deletes.drain(..) {
            if let Some((ino, parent, name)) = b.delete(&rel)? {
                changes.push(Change {
                    ino,
                    parent,
                    name,
                    removed: true,
                });
            }
        }
        for (remote, reason, permanent, keep) in p.quarantine.drain(..) {
            b.quarantine(&remote, &reason, permanent)?;
            if let Some(rel) = keep {
                b.touch_seen(&rel, seen)?;
            }
        }
        for remote in p.cleared.drain(..) {
            b.unquarantine(&remote)?;
        }
        for d in p.queue_push.drain(..) {
            b.queue_push(&d)?;
        }
        if let Some(seq) = p.queue_remove.take() {
            b.queue_remove(seq)?;
        }
        if let Some(ck) = ck {
            b.set_checkpoint(ck)?;
        }
        if p.finish {
            b.delete_meta("checkpoint")?;
            b.queue_clear()?;
            p.finish = false;
        }
        for (k, v) in extra_meta {
            b.set_meta(k, v)?;
        }
        b.commit()?;
        self.progress.checkpoint();
        if let (Some(sink), false) = (&self.sink, changes.is_empty()) {
            sink.changed(&changes);
        }
        Ok(())
    }

    /// Record a file written or verified in `p` (a progress unit; clears any earlier quarantine).
    pub fn note_done(&self, p: &mut Pending, remote: String, rel: String, meta: FileMeta) {
        self.progress.file_done(&remote, meta.size);
        p.cleared.push(remote);
        p.files.push((rel, meta));
    }

    /// Record a per-file failure in `p` and log it once.
    pub fn note_failure(
        &self,
        p: &mut Pending,
        rel: Option<String>,
        remote: String,
        reason: String,
        permanent: bool,
    ) {
        tracing::warn!(path = %remote, %reason, "file quarantined");
        self.progress.set_error(Some(format!("{remote}: {reason}")));
        p.quarantine.push((remote, reason, permanent, rel));
    }
}
