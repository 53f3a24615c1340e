//! Local edits meet remote changes: what the pull may do to a path the user changed locally, and the
//! conflict copies that keep both sides.
//!
//! Before the pull replaces or deletes a local file it asks [`Engine::guard_local`]. A path is a
//! local edit when it has a pending change in the outbox, when its file differs from the record (its
//! identity moved and its bytes no longer hash to the recorded hash), or when an unrecorded file sits
//! where mountd did not write. Then:
//!
//! | remote | mirror mode | pull-only |
//! | --- | --- | --- |
//! | the same bytes as the local file | converged: the pending change goes, the record follows | same |
//! | unchanged since the record (same hash) | the local edit stays and is pushed ([`Verdict::Skip`]) | reverted, local bytes kept as a conflict copy |
//! | changed | conflict: the remote version takes the path, the local bytes are kept as a conflict copy | same |
//! | deleted | the edit wins: the file stays and is pushed as a new file ([`Verdict::KeepFile`]) | deleted, local bytes kept as a conflict copy |
//!
//! and for a local delete still pending: a remote change brings the file back (the edit wins over the
//! delete); a remote delete settles it. A local delete not recorded yet (mirror mode) that meets the
//! recorded bytes (mountd's own write coming back) is left alone: the detection records it.
//!
//! A conflict copy is a hard link to the local file, made before the remote version is written, under
//! `<mirror>/.mountd/conflicts/` (outside the synced tree: never pushed, never served), named after
//! the file with `.conflict-<unix time>-<first 8 hex digits of its SHA-256>` before its extension.
use crate::store::db::{Conflict, FileRecord, Kind, LocalVersion, OpKind, State};
use crate::store::mirror::key_of;
use crate::store::paths::RESERVED_DIR;
use crate::sync::engine::{Engine, SyncError};
use std::collections::HashMap;

/// What the remote now has at a path the pull is about to write or delete.
#[derive(Debug, Clone)]
pub enum Incoming {
    Content {
        hash: Option<String>,
        revision: Option<String>,
    },
    Deleted,
}

impl crate::sync::engine::FetchJob {
    /// What the remote has at this job's path, as the guard needs it.
    pub fn incoming(&self) -> Incoming {
        Incoming::Content {
            hash: self.listed_hash.clone(),
            revision: self.revision.clone(),
        }
    }
}

/// What the pull may do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead (nothing local to protect, or it has been kept aside).
    Apply,
    /// Leave the path alone: the local file already is the remote's version (only its revision was
    /// recorded), or a local edit on top of an unchanged remote version, to be pushed.
    Skip,
    /// The remote deleted the path: forget the record, keep the local file (it is pushed as new).
    KeepFile,
}

/// The directory of conflict copies, relative to the mirror root.
pub fn conflicts_dir() -> String {
    format!("{RESERVED_DIR}/conflicts")
}

/// Where the local version `hash` of `rel` is kept: `.mountd/conflicts/<dir>/<stem>.conflict-<t>-<h8><.ext>`.
pub fn copy_path(rel: &str, hash: &str, now: i64) -> String {
    let (dir, name) = match rel.rfind('/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => ("", rel),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let h8 = &hash[..hash.len().min(8)];
    format!("{}/{dir}{stem}.conflict-{now}-{h8}{ext}", conflicts_dir())
}

/// The remote has the recorded bytes under a newer revision: the record (and a pending change) moves
/// to it, nothing else.
fn rebase(rel: &str, incoming: &Incoming, rec: Option<&FileRecord>) -> Option<Act> {
    match incoming {
        Incoming::Content {
            revision: Some(r), ..
        } if rec.and_then(|x| x.revision.as_ref()) != Some(r) => {
            Some(Act::Rebase(rel.to_string(), Some(r.clone())))
        }
        _ => None,
    }
}

/// A state change the guard decided, applied in one transaction after looking at every path.
enum Act {
    DropRow(String),
    Rebase(String, Option<String>),
    /// The local file already holds the incoming bytes: recorded as they are, nothing written.
    Adopt {
        rel: String,
        revision: Option<String>,
        hash: String,
        size: u64,
        stat: String,
    },
    Put(LocalVersion),
    Conflict(Conflict),
}

impl Engine {
    /// Decide, for each path the pull is about to write or delete, what it may do (see the module
    /// doc); keeps local bytes aside as conflict copies and updates the outbox accordingly, before the
    /// pull touches anything. Paths not in the answer may be applied.
    pub async fn guard_local(
        &self,
        claims: Vec<(String, Incoming)>,
    ) -> Result<HashMap<String, Verdict>, SyncError> {
        if claims.is_empty() {
            return Ok(HashMap::new());
        }
        if let Some(sink) = self.sink() {
            // Writes a writable view still holds in the kernel's cache reach the files first.
            let paths: Vec<&str> = claims.iter().map(|(p, _)| p.as_str()).collect();
            sink.before_replace(&paths);
        }
        let store = self.store().clone();
        let two_way = self.config().push.two_way();
        // Paths whose incoming revision mountd's own pushes created.
        let own: std::collections::HashSet<String> = claims
            .iter()
            .filter_map(|(rel, inc)| match inc {
                Incoming::Content {
                    revision: Some(r), ..
                } if self.own_write(rel, r) => Some(rel.clone()),
                _ => None,
            })
            .collect();
        let (verdicts, kept) = self
            .db()
            .run(move |st: &mut State| -> Result<_, SyncError> {
                let outbox_empty = st.outbox_is_empty()?;
                let mut verdicts = HashMap::new();
                let mut acts = Vec::new();
                let now = crate::store::db::now_secs();
                for (rel, incoming) in claims {
                    let rec = st.file(&rel)?.filter(|r| r.kind == Kind::File);
                    if let (
                        Some(r),
                        Incoming::Content {
                            revision: Some(ev), ..
                        },
                    ) = (&rec, &incoming)
                    {
                        if r.revision.as_deref() != Some(ev.as_str()) && own.contains(&rel) {
                            // The echo of an earlier push of mountd's own, arriving after a later
                            // change of the path was recorded: nothing to apply.
                            verdicts.insert(rel, Verdict::Skip);
                            continue;
                        }
                    }
                    let out = if outbox_empty {
                        None
                    } else {
                        st.outgoing(&rel)?
                    };
                    let local = store
                        .lstat(&rel)
                        .map_err(|e| SyncError::local(&store.abs(&rel), &e))?
                        .filter(|m| m.is_file());
                    let Some(meta) = local else {
                        let unchanged = matches!(&incoming, Incoming::Content { hash: Some(h), .. }
                            if rec.as_ref().and_then(|r| r.content_hash.as_ref()) == Some(h));
                        if out.is_none() && two_way && unchanged {
                            // Deleted (or renamed away) locally and not recorded yet (the watcher
                            // waits out an atomic save's settle delay), while the remote still has
                            // the recorded bytes (mountd's own write coming back, say): nothing to
                            // apply. Writing it would bring the file back (a renamed directory
                            // would reappear at its old name), and its delete would never be
                            // pushed. The detection records the delete.
                            acts.extend(rebase(&rel, &incoming, rec.as_ref()));
                            verdicts.insert(rel, Verdict::Skip);
                            continue;
                        }
                        // Nothing local: a pending local delete meets the remote's change.
                        if let Some(o) = out {
                            if o.op == OpKind::Delete && unchanged {
                                // The remote rewrote the same bytes: the delete goes on top of
                                // the new revision.
                                acts.extend(rebase(&rel, &incoming, rec.as_ref()));
                                verdicts.insert(rel, Verdict::Skip);
                            } else {
                                // The edit wins over the delete (the file comes back), or both
                                // sides deleted it.
                                acts.push(Act::DropRow(rel));
                            }
                        }
                        continue;
                    };
                    let stat = key_of(&meta);
                    let edited = match (&rec, &out) {
                        (_, Some(o)) if o.op == OpKind::Put => true,
                        (Some(r), _) => r.local_stat.as_deref() != Some(stat.as_str()),
                        (None, _) => !st.is_pending(&rel)?,
                    };
                    tracing::debug!(path = %rel, edited, ?incoming, record = ?rec.as_ref().map(|r| (&r.revision, &r.content_hash, &r.local_stat)), %stat, row = ?out.as_ref().map(|o| o.op), "guard: a local file the pull would replace");
                    if !edited {
                        // The local file is the recorded version; if that is what the remote has,
                        // only the revision may move (mountd's own write coming back, say).
                        if let (Some(r), Incoming::Content { hash: Some(h), .. }) =
                            (&rec, &incoming)
                        {
                            if r.content_hash.as_deref() == Some(h.as_str()) {
                                acts.extend(rebase(&rel, &incoming, rec.as_ref()));
                                verdicts.insert(rel, Verdict::Skip);
                            }
                        }
                        continue;
                    }
                    let hash = store
                        .hash(&rel)
                        .map_err(|e| SyncError::local(&store.abs(&rel), &e))?;
                    let rec_hash = rec.as_ref().and_then(|r| r.content_hash.clone());
                    if out.is_none() && rec_hash.as_deref() == Some(hash.as_str()) {
                        // Touched, not changed: the recorded bytes are still there. If the remote
                        // has them too (mountd's own write coming back), there is nothing to write:
                        // rewriting would replace the file by a copy of itself under its writers.
                        if let Incoming::Content {
                            hash: Some(h),
                            revision,
                        } = &incoming
                        {
                            if h.eq_ignore_ascii_case(&hash) {
                                acts.push(Act::Adopt {
                                    rel: rel.clone(),
                                    revision: revision.clone(),
                                    hash,
                                    size: meta.len(),
                                    stat,
                                });
                                verdicts.insert(rel, Verdict::Skip);
                            }
                        }
                        continue;
                    }
                    let base = out
                        .as_ref()
                        .map(|o| o.base_revision.clone())
                        .unwrap_or_else(|| rec.as_ref().and_then(|r| r.revision.clone()));
                    let size = meta.len();
                    match incoming {
                        Incoming::Content {
                            hash: Some(h),
                            revision,
                            ..
                        } if h.eq_ignore_ascii_case(&hash) => {
                            acts.push(Act::DropRow(rel.clone()));
                            if rec.is_some() {
                                // Both sides hold the same bytes (mountd's own push coming back
                                // while the file was touched since, say): nothing to write. Writing
                                // would replace the file by a copy of itself, a new inode, under
                                // any program that has it open.
                                acts.push(Act::Adopt {
                                    rel: rel.clone(),
                                    revision,
                                    hash,
                                    size,
                                    stat,
                                });
                                verdicts.insert(rel, Verdict::Skip);
                            }
                        }
                        Incoming::Content {
                            hash: Some(ref h), ..
                        } if two_way && rec_hash.as_deref() == Some(h.as_str()) => {
                            // The remote still has what the local edit was made on.
                            acts.extend(rebase(&rel, &incoming, rec.as_ref()));
                            let rec = rec.as_ref().expect("a recorded hash has a record");
                            if out.is_none() {
                                acts.push(Act::Put(LocalVersion {
                                    rel: rel.clone(),
                                    base: rec.revision.clone(),
                                    hash,
                                    size,
                                    stat: Some(stat),
                                }));
                            }
                            verdicts.insert(rel, Verdict::Skip);
                        }
                        Incoming::Deleted if two_way => {
                            acts.push(Act::Put(LocalVersion {
                                rel: rel.clone(),
                                base: None,
                                hash,
                                size,
                                stat: Some(stat),
                            }));
                            verdicts.insert(rel, Verdict::KeepFile);
                        }
                        incoming => {
                            let (remote, reason) = match incoming {
                                Incoming::Content { revision, .. } if two_way => {
                                    (revision, "changed on both sides")
                                }
                                Incoming::Content { revision, .. } => (
                                    revision,
                                    "local edit replaced by the remote version (pull-only)",
                                ),
                                Incoming::Deleted => {
                                    (None, "local edit of a file the remote deleted (pull-only)")
                                }
                            };
                            if st.has_conflict(&rel, &hash)? {
                                acts.push(Act::DropRow(rel));
                                continue;
                            }
                            let copy = copy_path(&rel, &hash, now);
                            store
                                .keep_aside(&rel, &copy)
                                .map_err(|e| SyncError::local(&store.abs(&copy), &e))?;
                            acts.push(Act::Conflict(Conflict {
                                id: 0,
                                path: rel,
                                copy,
                                local_hash: Some(hash),
                                size,
                                base_revision: base,
                                remote_revision: remote,
                                reason: reason.into(),
                                created_at: now,
                            }));
                        }
                    }
                }
                let mut kept = Vec::new();
                if !acts.is_empty() {
                    // The copies are durable before their rows.
                    store
                        .sync()
                        .map_err(|e| SyncError::local(store.root(), &e))?;
                    let mut b = st.batch()?;
                    for act in acts {
                        match act {
                            Act::DropRow(rel) => b.outbox_remove(&rel)?,
                            Act::Adopt {
                                rel,
                                revision,
                                hash,
                                size,
                                stat,
                            } => b.adopt_local(&rel, revision.as_deref(), &hash, size, &stat)?,
                            Act::Rebase(rel, revision) => {
                                b.set_revision(&rel, revision.as_deref())?;
                                b.outbox_rebase(&rel, revision.as_deref())?;
                            }
                            Act::Put(v) => {
                                b.outbox_put(&v)?;
                                // An existing row keeps its base otherwise: the remote deleted the
                                // path, so the edit goes as a new file.
                                b.outbox_rebase(&v.rel, v.base.as_deref())?;
                            }
                            Act::Conflict(mut c) => {
                                b.outbox_remove(&c.path)?;
                                c.id = b.conflict_add(&c)?;
                                kept.push(c);
                            }
                        }
                    }
                    b.commit()?;
                }
                Ok((verdicts, kept))
            })
            .await?;
        for c in &kept {
            self.report_conflict(c);
        }
        Ok(verdicts)
    }

    /// Say once that a conflict copy was kept (log, metrics).
    pub fn report_conflict(&self, c: &Conflict) {
        crate::metrics::Metrics::global().conflict();
        tracing::warn!(
            path = %c.path,
            copy = %self.store().abs(&c.copy).display(),
            base_revision = c.base_revision.as_deref().unwrap_or("(new file)"),
            remote_revision = c.remote_revision.as_deref().unwrap_or("(unknown)"),
            reason = %c.reason,
            "conflict: the remote version took the path; the local version is kept as a conflict copy (`mountd conflicts` lists them)"
        );
    }
}

/// A record's local identity still matches the file at the path (the bytes are the recorded ones
/// without reading them).
pub fn unchanged(rec: &FileRecord, stat: &str) -> bool {
    rec.local_stat.as_deref() == Some(stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_keep_the_extension_and_stay_in_the_reserved_directory() {
        let h = "abcdef0123456789";
        assert_eq!(
            copy_path("docs/a.md", h, 7),
            ".mountd/conflicts/docs/a.conflict-7-abcdef01.md"
        );
        assert_eq!(
            copy_path("x", h, 7),
            ".mountd/conflicts/x.conflict-7-abcdef01"
        );
        assert_eq!(
            copy_path(".bashrc", h, 7),
            ".mountd/conflicts/.bashrc.conflict-7-abcdef01"
        );
    }
}
