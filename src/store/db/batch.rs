//! One write transaction. Dropping a [`Batch`] without [`Batch::commit`] rolls everything back; a
//! commit returns the [`Change`]s it made, for kernel cache invalidation.
use super::{now_secs, Checkpoint, FileMeta, Kind, MetaKey, StateError, ROOT_INO};
use crate::store::change::Change;
use crate::store::paths;
use rusqlite::{params, OptionalExtension, Transaction};
use std::collections::HashMap;
use std::path::PathBuf;

pub struct Batch<'a> {
    pub(super) tx: Transaction<'a>,
    path: PathBuf,
    cache: &'a mut HashMap<String, (u64, i64)>,
    new_dirs: HashMap<String, (u64, i64)>,
    dropped_dirs: bool,
    changes: Vec<Change>,
    /// Files whose records this batch deleted (directly or with a directory above them).
    removed_files: Vec<String>,
    /// Whether the quarantine is empty, once asked ([`Batch::unquarantine_ancestors`]).
    quarantine_empty: Option<bool>,
}

impl<'a> Batch<'a> {
    pub(super) fn new(
        tx: Transaction<'a>,
        path: PathBuf,
        cache: &'a mut HashMap<String, (u64, i64)>,
    ) -> Batch<'a> {
        Batch {
            tx,
            path,
            cache,
            new_dirs: HashMap::new(),
            dropped_dirs: false,
            changes: Vec::new(),
            removed_files: Vec::new(),
            quarantine_empty: None,
        }
    }

    pub(super) fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn set_meta(&mut self, key: MetaKey, value: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .and_then(|mut s| s.execute([key.as_str(), value]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn delete_meta(&mut self, key: MetaKey) -> Result<(), StateError> {
        self.tx
            .execute("DELETE FROM meta WHERE key = ?1", [key.as_str()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Move the events cursor to `next` unless that would move it backwards (`evt_<n>` compares by
    /// `n`; a cursor that is not of that form always moves).
    pub fn advance_cursor(&mut self, next: &str) -> Result<(), StateError> {
        let current: Option<String> = self
            .tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row([MetaKey::EventsCursor.as_str()], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let seq = super::meta::event_seq;
        let forward = match (current.as_deref().and_then(seq), seq(next)) {
            (Some(cur), Some(n)) => n >= cur,
            _ => true,
        };
        if forward {
            self.set_meta(MetaKey::EventsCursor, next)?;
        }
        Ok(())
    }

    pub fn set_checkpoint(&mut self, c: &Checkpoint) -> Result<(), StateError> {
        self.set_meta(
            MetaKey::Checkpoint,
            &serde_json::to_string(c).expect("checkpoint serializes"),
        )
    }

    /// The traversal is over: drop the checkpoint and the directory queue.
    pub fn finish_traversal(&mut self) -> Result<(), StateError> {
        self.delete_meta(MetaKey::Checkpoint)?;
        self.queue_clear()
    }

    fn lookup_dir(&self, rel: &str) -> Option<(u64, i64)> {
        self.new_dirs
            .get(rel)
            .or_else(|| self.cache.get(rel))
            .copied()
    }

    fn existing(&self, rel: &str) -> Result<Option<(u64, Kind)>, StateError> {
        self.tx
            .prepare_cached("SELECT ino, kind FROM entries WHERE path = ?1")
            .and_then(|mut s| {
                s.query_row([rel], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, Kind::from_sql(r.get(1)?)?))
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Make sure directory `rel` and its ancestors have records stamped `seen`; returns its inode.
    pub fn ensure_dir(&mut self, rel: &str, seen: i64) -> Result<u64, StateError> {
        if rel.is_empty() {
            return Ok(ROOT_INO);
        }
        if let Some((ino, stamp)) = self.lookup_dir(rel) {
            if stamp == seen {
                return Ok(ino);
            }
        }
        let parent = self.ensure_dir(paths::parent(rel), seen)?;
        let ino = match self.existing(rel)? {
            Some((ino, Kind::Dir)) => {
                self.tx
                    .prepare_cached("UPDATE entries SET seen = ?2 WHERE ino = ?1")
                    .and_then(|mut s| s.execute(params![ino as i64, seen]))
                    .map_err(|e| self.err(e))?;
                ino
            }
            other => {
                if other.is_some() {
                    self.delete(rel)?;
                }
                self.tx
                    .prepare_cached("INSERT INTO entries(parent, name, path, kind, mtime, seen) VALUES (?1, ?2, ?3, 2, ?4, ?5)")
                    .and_then(|mut s| s.execute(params![parent as i64, paths::name(rel), rel, now_secs(), seen]))
                    .map_err(|e| self.err(e))?;
                let ino = self.tx.last_insert_rowid() as u64;
                self.changes.push(Change {
                    ino,
                    parent,
                    name: paths::name(rel).to_string(),
                    path: rel.to_string(),
                    removed: false,
                });
                ino
            }
        };
        self.new_dirs.insert(rel.to_string(), (ino, seen));
        Ok(ino)
    }

    /// Insert or update a file record stamped `seen`; returns its inode.
    ///
    /// Every content version gets an inode number of its own, like a file replaced by an atomic rename on
    /// a local disk: a new file, or a content change (hash or size differs), inserts a fresh row (a new,
    /// never reused `AUTOINCREMENT` inode) and records a removal [`Change`] for the old inode and an
    /// addition for the new one. A record whose content is unchanged keeps its inode (and no change is
    /// recorded), so unchanged files keep their inode numbers across syncs and restarts.
    pub fn upsert_file(&mut self, rel: &str, m: &FileMeta, seen: i64) -> Result<u64, StateError> {
        let parent = self.ensure_dir(paths::parent(rel), seen)?;
        let existing: Option<(i64, i64, Option<String>, i64)> = self
            .tx
            .prepare_cached("SELECT ino, kind, content_hash, size FROM entries WHERE path = ?1")
            .and_then(|mut s| {
                s.query_row([rel], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        // The record commits with this transaction: the write is no longer pending.
        self.pending_clear(rel)?;
        let name = paths::name(rel);
        match existing {
            Some((ino, kind, hash, size))
                if kind == Kind::File.to_sql()
                    && hash == m.content_hash
                    && size as u64 == m.size =>
            {
                // Same content: same inode; only the bookkeeping columns move.
                self.tx
                    .prepare_cached(
                        "UPDATE entries SET revision = ?2, content_type = coalesce(?3, content_type), seen = ?4,
                         local_stat = coalesce(?5, local_stat) WHERE ino = ?1",
                    )
                    .and_then(|mut s| s.execute(params![ino, m.revision, m.content_type, seen, m.local_stat]))
                    .map_err(|e| self.err(e))?;
                return Ok(ino as u64);
            }
            Some((ino, kind, ..)) if kind == Kind::File.to_sql() => {
                // A new content version: the old inode goes away (open handles keep reading it).
                self.tx
                    .prepare_cached("DELETE FROM entries WHERE ino = ?1")
                    .and_then(|mut s| s.execute([ino]))
                    .map_err(|e| self.err(e))?;
                self.changes.push(Change {
                    ino: ino as u64,
                    parent,
                    name: name.to_string(),
                    path: rel.to_string(),
                    removed: true,
                });
            }
            Some(_) => {
                // A directory becomes a file.
                self.delete(rel)?;
            }
            None => {}
        }
        self.tx
            .prepare_cached(
                "INSERT INTO entries(parent, name, path, kind, size, revision, content_hash, content_type, mtime, seen, local_stat)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![parent as i64, name, rel, m.size as i64, m.revision, m.content_hash, m.content_type, now_secs(), seen, m.local_stat])
            })
            .map_err(|e| self.err(e))?;
        let ino = self.tx.last_insert_rowid() as u64;
        self.changes.push(Change {
            ino,
            parent,
            name: name.to_string(),
            path: rel.to_string(),
            removed: false,
        });
        Ok(ino)
    }

    /// Files about to be written into the mirror (committed before the bytes are written).
    pub fn pending_add(&mut self, rel: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO pending(path) VALUES (?1)")
            .and_then(|mut s| s.execute([rel]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn pending_clear(&mut self, rel: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM pending WHERE path = ?1")
            .and_then(|mut s| s.execute([rel]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stamp an existing record as seen (a listed file we could not fetch keeps its old copy).
    pub fn touch_seen(&mut self, rel: &str, seen: i64) -> Result<(), StateError> {
        self.tx
            .prepare_cached("UPDATE entries SET seen = ?2 WHERE path = ?1")
            .and_then(|mut s| s.execute(params![rel, seen]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Delete a record and, for a directory, everything below it. Returns the removed top inode.
    pub fn delete(&mut self, rel: &str) -> Result<Option<u64>, StateError> {
        let top: Option<(i64, i64, String)> = self
            .tx
            .prepare_cached("SELECT ino, parent, name FROM entries WHERE path = ?1")
            .and_then(|mut s| {
                s.query_row([rel], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((ino, parent, name)) = top else {
            return Ok(None);
        };
        let lo = format!("{rel}/");
        let hi = format!("{rel}0"); // '0' is the byte after '/'
        let files: Vec<String> = self
            .tx
            .prepare_cached(
                "SELECT path FROM entries WHERE kind = 1 AND (path = ?1 OR (path >= ?2 AND path < ?3))",
            )
            .and_then(|mut s| {
                s.query_map(params![rel, lo, hi], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| self.err(e))?;
        self.removed_files.extend(files);
        self.tx
            .prepare_cached("DELETE FROM entries WHERE path = ?1 OR (path >= ?2 AND path < ?3)")
            .and_then(|mut s| s.execute(params![rel, lo, hi]))
            .map_err(|e| self.err(e))?;
        self.dropped_dirs = true;
        self.new_dirs.retain(|k, _| k != rel && !k.starts_with(&lo));
        self.changes.push(Change {
            ino: ino as u64,
            parent: parent as u64,
            name,
            path: rel.to_string(),
            removed: true,
        });
        Ok(Some(ino as u64))
    }

    /// Delete a file's record but leave the local file alone (the remote no longer has it, and the
    /// local file is the user's: a pushed delete, or a local edit that outlives a remote delete).
    pub fn forget(&mut self, rel: &str) -> Result<(), StateError> {
        let n = self.removed_files.len();
        self.delete(rel)?;
        self.removed_files.truncate(n);
        Ok(())
    }

    pub fn queue_push(&mut self, remote_dir: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("INSERT INTO queue(path) VALUES (?1)")
            .and_then(|mut s| s.execute([remote_dir]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn queue_remove(&mut self, seq: i64) -> Result<(), StateError> {
        self.tx
            .execute("DELETE FROM queue WHERE seq = ?1", [seq])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn queue_clear(&mut self) -> Result<(), StateError> {
        self.tx
            .execute("DELETE FROM queue", [])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Quarantine a file: `class` groups failures of the same cause (e.g. "HTTP 403 forbidden").
    /// (`snapshot`: the listing or pass that noted it — `None` keeps the one already recorded, for a
    /// retry; a complete listing forgets what it did not note again, since the remote no longer has it.)
    pub fn quarantine(
        &mut self,
        remote_path: &str,
        reason: &str,
        class: &str,
        permanent: bool,
        snapshot: Option<i64>,
    ) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO quarantine(path, reason, attempts, permanent, updated_at, class, snapshot) VALUES (?1, ?2, 1, ?3, ?4, ?5, coalesce(?6, 0))
                 ON CONFLICT(path) DO UPDATE SET reason = excluded.reason, attempts = attempts + 1,
                 permanent = excluded.permanent, updated_at = excluded.updated_at, class = excluded.class,
                 snapshot = coalesce(?6, snapshot)",
            )
            .and_then(|mut s| s.execute(params![remote_path, reason, permanent as i64, now_secs(), class, snapshot]))
            .map_err(|e| self.err(e))?;
        self.quarantine_empty = Some(false);
        Ok(())
    }

    /// A complete listing (`snapshot`) of the remote subtree `under` (`None`: everything) is over:
    /// quarantined paths it did not meet again are gone from the remote.
    pub fn forget_quarantine_before(
        &mut self,
        snapshot: i64,
        under: Option<&str>,
    ) -> Result<(), StateError> {
        match under {
            None => self
                .tx
                .execute("DELETE FROM quarantine WHERE snapshot != ?1", [snapshot]),
            Some(dir) => {
                let dir = dir.trim_end_matches('/');
                self.tx.execute(
                    "DELETE FROM quarantine WHERE snapshot != ?1 AND path >= ?2 AND path < ?3",
                    params![snapshot, format!("{dir}/"), format!("{dir}0")],
                )
            }
        }
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A directory whose listing failed in `snapshot`: its records are kept (stamped `seen`, so no sweep
    /// removes them) and it is listed again later.
    pub fn unlisted(
        &mut self,
        remote_dir: &str,
        local_dir: Option<&str>,
        reason: &str,
        snapshot: i64,
    ) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO unlisted(path, reason, snapshot, attempts, updated_at) VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT(path) DO UPDATE SET reason = excluded.reason, snapshot = excluded.snapshot,
                 attempts = attempts + 1, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![remote_dir, reason, snapshot, now_secs()]))
            .map_err(|e| self.err(e))?;
        if let Some(rel) = local_dir {
            let lo = format!("{rel}/");
            let hi = format!("{rel}0");
            self.tx
                .prepare_cached(
                    "UPDATE entries SET seen = ?1 WHERE path = ?2 OR (path >= ?3 AND path < ?4)",
                )
                .and_then(|mut s| s.execute(params![snapshot, rel, lo, hi]))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The directory was listed after all.
    pub fn listed(&mut self, remote_dir: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM unlisted WHERE path = ?1")
            .and_then(|mut s| s.execute([remote_dir]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A complete listing of the whole tree (`snapshot`) is over: forget the unlisted directories it did
    /// not meet again (gone, or listed).
    pub fn forget_unlisted_before(&mut self, snapshot: i64) -> Result<(), StateError> {
        self.tx
            .execute("DELETE FROM unlisted WHERE snapshot != ?1", [snapshot])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn unquarantine(&mut self, remote_path: &str) -> Result<(), StateError> {
        if self.quarantine_is_empty()? {
            return Ok(());
        }
        self.tx
            .prepare_cached("DELETE FROM quarantine WHERE path = ?1")
            .and_then(|mut s| s.execute([remote_path]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// `remote_path` is a file on the remote, so each of its ancestors is a directory there: a
    /// quarantine of one of them as a file is obsolete. Free when nothing is quarantined.
    pub fn unquarantine_ancestors(&mut self, remote_path: &str) -> Result<(), StateError> {
        if self.quarantine_is_empty()? {
            return Ok(());
        }
        let mut end = remote_path.len();
        while let Some(i) = remote_path[..end].rfind('/') {
            if i > 0 {
                self.unquarantine(&remote_path[..i])?;
            }
            end = i;
        }
        Ok(())
    }

    /// Whether nothing is quarantined (asked once per batch; a quarantine in this batch clears it), so
    /// that clearing quarantines costs nothing in the common case.
    fn quarantine_is_empty(&mut self) -> Result<bool, StateError> {
        if let Some(empty) = self.quarantine_empty {
            return Ok(empty);
        }
        let empty = self
            .tx
            .query_row("SELECT NOT EXISTS(SELECT 1 FROM quarantine)", [], |r| {
                r.get::<_, bool>(0)
            })
            .map_err(|e| self.err(e))?;
        self.quarantine_empty = Some(empty);
        Ok(empty)
    }

    /// Commit; returns what changed (empty when nothing visible did).
    pub fn commit(self) -> Result<Vec<Change>, StateError> {
        self.commit_with_removed().map(|(changes, _)| changes)
    }

    /// Commit; returns what changed and the files whose records are gone (their local copies must go
    /// too, so the disk never holds a file the state does not know).
    pub fn commit_with_removed(mut self) -> Result<(Vec<Change>, Vec<String>), StateError> {
        // A file recorded again later in this batch stays.
        let mut gone = Vec::with_capacity(self.removed_files.len());
        for rel in std::mem::take(&mut self.removed_files) {
            let again: Option<i64> = self
                .tx
                .prepare_cached("SELECT ino FROM entries WHERE path = ?1")
                .and_then(|mut s| s.query_row([&rel], |r| r.get(0)).optional())
                .map_err(|e| self.err(e))?;
            if again.is_none() {
                gone.push(rel);
            }
        }
        self.removed_files = gone;
        let Batch {
            tx,
            path,
            cache,
            new_dirs,
            dropped_dirs,
            changes,
            removed_files,
            ..
        } = self;
        tx.commit()
            .map_err(|e| StateError::Sqlite { path, source: e })?;
        if dropped_dirs {
            cache.clear();
        }
        cache.extend(new_dirs);
        Ok((changes, removed_files))
    }
}
