//! The push side's durable state: the outbox (one row per local path whose change is not yet on the
//! remote), conflict copies, and write issues (write-denied, too large, unsupported kinds of file).
//!
//! A row of the outbox is written in the same transaction as whatever it describes, and removed in
//! the same transaction that records the remote's answer: a push interrupted at any instant is found
//! again at the next start, with the base revision it was made on and the hash of the bytes it carries.
use super::{now_secs, Batch, State, StateError};
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

/// What a pending change asks of the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Write the local file's bytes (create or update).
    Put,
    /// Delete the remote file.
    Delete,
}

impl OpKind {
    fn from_sql(v: i64) -> rusqlite::Result<OpKind> {
        match v {
            1 => Ok(OpKind::Put),
            2 => Ok(OpKind::Delete),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(1, other)),
        }
    }
}

/// One pending local change.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing {
    /// Local relative path.
    pub path: String,
    pub op: OpKind,
    /// The remote revision the change was made on (`None`: a new file, pushed with `If-Match: 0`).
    pub base_revision: Option<String>,
    /// Put: SHA-256 of the bytes recorded (they are read again, and checked, when pushed).
    pub content_hash: Option<String>,
    pub size: u64,
    /// Put: the local file's identity when the change was recorded.
    pub local_stat: Option<String>,
    /// Why it waits for an operator (a mass deletion), if it does.
    pub held: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// First recorded (unix seconds): the age of the oldest pending change.
    pub created_at: i64,
    /// Last changed (unix seconds).
    pub updated_at: i64,
}

impl Outgoing {
    fn from_row(r: &Row) -> rusqlite::Result<Outgoing> {
        Ok(Outgoing {
            path: r.get(0)?,
            op: OpKind::from_sql(r.get(1)?)?,
            base_revision: r.get(2)?,
            content_hash: r.get(3)?,
            size: r.get::<_, i64>(4)? as u64,
            local_stat: r.get(5)?,
            held: r.get(6)?,
            attempts: r.get(7)?,
            last_error: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
        })
    }
}

const OUT_COLS: &str = "path, op, base_revision, content_hash, size, local_stat, held, attempts, last_error, created_at, updated_at";

/// Pending changes at a glance (status, metrics, the state file).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OutboxSummary {
    pub pending: u64,
    pub bytes: u64,
    /// Unix seconds of the oldest pending change.
    pub oldest: Option<i64>,
    /// Of which held for an operator's word (mass deletion).
    pub held: u64,
    pub conflicts: u64,
    pub denied: u64,
    pub too_large: u64,
    pub unsupported: u64,
}

/// A local file's version to push: what a put row of the outbox records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVersion {
    /// Local relative path.
    pub rel: String,
    /// The remote revision it was made on (`None`: a new file).
    pub base: Option<String>,
    pub hash: String,
    pub size: u64,
    /// The local file's identity when it was read.
    pub stat: Option<String>,
}

/// A local version kept aside because the remote's version took its path.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub id: i64,
    /// Local relative path the conflict is about.
    pub path: String,
    /// Where the local bytes are, relative to the mirror root (under `.mountd/conflicts/`).
    pub copy: String,
    pub local_hash: Option<String>,
    pub size: u64,
    /// The revision the local change was made on (`None`: a new file).
    pub base_revision: Option<String>,
    /// The remote revision that took the path (`None`: unknown).
    pub remote_revision: Option<String>,
    pub reason: String,
    pub created_at: i64,
}

/// Why the remote will not take a local path as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// 403 on a write: not retried until the token changes.
    Denied,
    /// Above the server's body cap: not retried until the file changes.
    TooLarge,
    /// A symlink, device, FIFO, socket, extra hard link or a name that is not UTF-8.
    Unsupported,
}

impl IssueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueKind::Denied => "denied",
            IssueKind::TooLarge => "too_large",
            IssueKind::Unsupported => "unsupported",
        }
    }

    fn parse(s: &str) -> IssueKind {
        match s {
            "denied" => IssueKind::Denied,
            "too_large" => IssueKind::TooLarge,
            _ => IssueKind::Unsupported,
        }
    }
}

/// A path the remote will not take as it is.
#[derive(Debug, Clone, Serialize)]
pub struct WriteIssue {
    pub path: String,
    pub kind: IssueKind,
    pub detail: String,
    /// The local file's identity when noted: a changed file is tried again.
    pub local_stat: Option<String>,
    /// Fingerprint of the token that was refused (denied only): a new token is tried again.
    pub token: Option<String>,
}

impl State {
    /// The pending change of `rel`, if any.
    pub fn outgoing(&self, rel: &str) -> Result<Option<Outgoing>, StateError> {
        self.conn
            .prepare_cached(&format!("SELECT {OUT_COLS} FROM outbox WHERE path = ?1"))
            .and_then(|mut s| s.query_row([rel], Outgoing::from_row).optional())
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` pending changes recorded at or before `settled` (unix seconds), oldest first.
    pub fn outbox_batch(&self, settled: i64, limit: usize) -> Result<Vec<Outgoing>, StateError> {
        let mut s = self
            .conn
            .prepare_cached(&format!(
                "SELECT {OUT_COLS} FROM outbox WHERE updated_at <= ?1 ORDER BY updated_at, path LIMIT ?2"
            ))
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![settled, limit as i64], Outgoing::from_row)
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Every pending change, in path order (for `mountd status`).
    pub fn outbox(&self) -> Result<Vec<Outgoing>, StateError> {
        self.outbox_batch(i64::MAX, usize::MAX >> 1).map(|mut v| {
            v.sort_by(|a, b| a.path.cmp(&b.path));
            v
        })
    }

    /// Pending deletes (the mass-deletion guard counts them).
    pub fn outbox_deletes(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT count(*) FROM outbox WHERE op = 2", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// True when nothing is pending (one cheap query: the pull asks it before looking per path).
    pub fn outbox_is_empty(&self) -> Result<bool, StateError> {
        self.conn
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM outbox)", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    pub fn outbox_summary(&self) -> Result<OutboxSummary, StateError> {
        let (pending, bytes, oldest, held): (i64, i64, Option<i64>, i64) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(CASE WHEN op = 1 THEN size ELSE 0 END), 0), min(created_at),
                        coalesce(sum(held IS NOT NULL), 0) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| self.err(e))?;
        let conflicts: i64 = self
            .conn
            .query_row("SELECT count(*) FROM conflicts", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let mut sum = OutboxSummary {
            pending: pending as u64,
            bytes: bytes as u64,
            oldest,
            held: held as u64,
            conflicts: conflicts as u64,
            ..Default::default()
        };
        let mut s = self
            .conn
            .prepare_cached("SELECT kind, count(*) FROM write_issues GROUP BY kind")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        for (kind, n) in rows {
            match IssueKind::parse(&kind) {
                IssueKind::Denied => sum.denied = n,
                IssueKind::TooLarge => sum.too_large = n,
                IssueKind::Unsupported => sum.unsupported = n,
            }
        }
        Ok(sum)
    }

    pub fn conflicts(&self) -> Result<Vec<Conflict>, StateError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT id, path, copy, local_hash, size, base_revision, remote_revision, reason, created_at
                 FROM conflicts ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(Conflict {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    copy: r.get(2)?,
                    local_hash: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                    base_revision: r.get(5)?,
                    remote_revision: r.get(6)?,
                    reason: r.get(7)?,
                    created_at: r.get(8)?,
                })
            })
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// True when the local version `hash` of `rel` is already kept as a conflict copy.
    pub fn has_conflict(&self, rel: &str, hash: &str) -> Result<bool, StateError> {
        self.conn
            .prepare_cached("SELECT 1 FROM conflicts WHERE path = ?1 AND local_hash = ?2")
            .and_then(|mut s| s.exists([rel, hash]))
            .map_err(|e| self.err(e))
    }

    pub fn write_issue(&self, rel: &str) -> Result<Option<WriteIssue>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT path, kind, detail, local_stat, token FROM write_issues WHERE path = ?1",
            )
            .and_then(|mut s| s.query_row([rel], issue_from_row).optional())
            .map_err(|e| self.err(e))
    }

    pub fn write_issues(&self) -> Result<Vec<WriteIssue>, StateError> {
        let mut s = self
            .conn
            .prepare("SELECT path, kind, detail, local_stat, token FROM write_issues ORDER BY path")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], issue_from_row)
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// True when `rel` is in the `pending` journal: mountd is writing it (or was, when a run died).
    pub fn is_pending(&self, rel: &str) -> Result<bool, StateError> {
        self.conn
            .prepare_cached("SELECT 1 FROM pending WHERE path = ?1")
            .and_then(|mut s| s.exists([rel]))
            .map_err(|e| self.err(e))
    }

    /// Records of the files in directory `dir` ("" for the root): (name, record).
    pub fn files_in(&self, dir: &str) -> Result<Vec<(String, super::FileRecord)>, StateError> {
        let ino: Option<i64> = self
            .conn
            .prepare_cached("SELECT ino FROM entries WHERE path = ?1 AND kind = 2")
            .and_then(|mut s| s.query_row([dir], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        let Some(ino) = ino else {
            return Ok(Vec::new());
        };
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT name, ino, kind, size, revision, content_hash, local_stat FROM entries
                 WHERE parent = ?1 AND ino != 1",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([ino], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    super::FileRecord {
                        ino: r.get::<_, i64>(1)? as u64,
                        kind: super::Kind::from_sql(r.get(2)?)?,
                        size: r.get::<_, i64>(3)? as u64,
                        revision: r.get(4)?,
                        content_hash: r.get(5)?,
                        local_stat: r.get(6)?,
                    },
                ))
            })
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Pending puts at or below `rel` of paths that have no record (new files never pushed).
    pub fn unrecorded_puts_under(&self, rel: &str) -> Result<Vec<String>, StateError> {
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT o.path FROM outbox o WHERE o.op = 1
                   AND (o.path = ?1 OR (o.path > ?1 || '/' AND o.path < ?1 || '0') OR ?1 = '')
                   AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.path = o.path)",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([rel], |r| r.get(0))
            .and_then(|r| r.collect::<rusqlite::Result<Vec<String>>>());
        rows.map_err(|e| self.err(e))
    }

    /// File records at or below `rel` (a file or a directory), with their revisions.
    pub fn files_under(&self, rel: &str) -> Result<Vec<(String, Option<String>)>, StateError> {
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT path, revision FROM entries WHERE kind = 1 AND (path = ?1 OR (path > ?1 || '/' AND path < ?1 || '0'))",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([rel], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }
}

fn issue_from_row(r: &Row) -> rusqlite::Result<WriteIssue> {
    Ok(WriteIssue {
        path: r.get(0)?,
        kind: IssueKind::parse(&r.get::<_, String>(1)?),
        detail: r.get(2)?,
        local_stat: r.get(3)?,
        token: r.get(4)?,
    })
}

impl Batch<'_> {
    /// Record (or supersede) a put of `v.rel`. A newer change replaces an unpushed older one; the base
    /// revision and the first-recorded time of an existing row are kept.
    pub fn outbox_put(&mut self, v: &LocalVersion) -> Result<(), StateError> {
        let now = now_secs();
        self.tx
            .prepare_cached(
                "INSERT INTO outbox(path, op, base_revision, content_hash, size, local_stat, created_at, updated_at)
                 VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT(path) DO UPDATE SET op = 1, content_hash = excluded.content_hash,
                   size = excluded.size, local_stat = excluded.local_stat, held = NULL,
                   updated_at = excluded.updated_at",
            )
            .and_then(|mut s| {
                s.execute(params![v.rel, v.base, v.hash, v.size as i64, v.stat, now])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Record a delete of `rel` (made on `base`). A pending put of a file the remote never had
    /// (no base) simply goes: there is nothing to delete.
    pub fn outbox_delete(&mut self, rel: &str, base: Option<&str>) -> Result<(), StateError> {
        let existing: Option<(i64, Option<String>)> = self
            .tx
            .prepare_cached("SELECT op, base_revision FROM outbox WHERE path = ?1")
            .and_then(|mut s| {
                s.query_row([rel], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let base = match existing {
            Some((_, b)) => b,
            None => base.map(str::to_string),
        };
        if base.is_none() {
            return self.outbox_remove(rel);
        }
        let now = now_secs();
        self.tx
            .prepare_cached(
                "INSERT INTO outbox(path, op, base_revision, size, created_at, updated_at)
                 VALUES (?1, 2, ?2, 0, ?3, ?3)
                 ON CONFLICT(path) DO UPDATE SET op = 2, content_hash = NULL, size = 0,
                   local_stat = NULL, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![rel, base, now]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn outbox_remove(&mut self, rel: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM outbox WHERE path = ?1")
            .and_then(|mut s| s.execute([rel]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The path's pending change now builds on `revision` (the remote rewrote the same bytes).
    pub fn outbox_rebase(&mut self, rel: &str, revision: Option<&str>) -> Result<(), StateError> {
        self.tx
            .prepare_cached("UPDATE outbox SET base_revision = ?2 WHERE path = ?1")
            .and_then(|mut s| s.execute(params![rel, revision]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A push of `rel` failed in a way worth retrying later.
    pub fn outbox_failed(&mut self, rel: &str, error: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE path = ?1",
            )
            .and_then(|mut s| s.execute(params![rel, error]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Mark every pending delete held (`Some(why)`) or ready (`None`).
    pub fn outbox_hold_deletes(&mut self, why: Option<&str>) -> Result<(), StateError> {
        self.tx
            .prepare_cached("UPDATE outbox SET held = ?1 WHERE op = 2")
            .and_then(|mut s| s.execute([why]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Keep a conflict's local copy on record (`c.id` and `c.created_at` are assigned); returns its id.
    pub fn conflict_add(&mut self, c: &Conflict) -> Result<i64, StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO conflicts(path, copy, local_hash, size, base_revision, remote_revision, reason, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    c.path,
                    c.copy,
                    c.local_hash,
                    c.size as i64,
                    c.base_revision,
                    c.remote_revision,
                    c.reason,
                    now_secs()
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn conflict_remove(&mut self, id: i64) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM conflicts WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn write_issue_set(
        &mut self,
        rel: &str,
        kind: IssueKind,
        detail: &str,
        stat: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO write_issues(path, kind, detail, local_stat, token, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(path) DO UPDATE SET kind = excluded.kind, detail = excluded.detail,
                   local_stat = excluded.local_stat, token = excluded.token, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![rel, kind.as_str(), detail, stat, token, now_secs()]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn write_issue_clear(&mut self, rel: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM write_issues WHERE path = ?1")
            .and_then(|mut s| s.execute([rel]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Only the local identity of a record moves (the bytes are the recorded ones).
    pub fn set_local_stat(&mut self, rel: &str, stat: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("UPDATE entries SET local_stat = ?2 WHERE path = ?1")
            .and_then(|mut s| s.execute([rel, stat]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The local file already holds the remote's bytes: the record takes them (revision, hash, size)
    /// and the file's current identity, without anything written.
    pub fn adopt_local(
        &mut self,
        rel: &str,
        revision: Option<&str>,
        hash: &str,
        size: u64,
        stat: &str,
    ) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "UPDATE entries SET revision = ?2, content_hash = ?3, size = ?4, local_stat = ?5 WHERE path = ?1",
            )
            .and_then(|mut s| s.execute(params![rel, revision, hash, size as i64, stat]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Only the revision of a record moves (the remote rewrote the same bytes).
    pub fn set_revision(&mut self, rel: &str, revision: Option<&str>) -> Result<(), StateError> {
        self.tx
            .prepare_cached("UPDATE entries SET revision = ?2 WHERE path = ?1")
            .and_then(|mut s| s.execute(params![rel, revision]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Identity, State};
    use super::*;

    fn open(dir: &std::path::Path) -> State {
        State::open(
            &dir.join("s.db"),
            &Identity {
                base_url: "http://x".into(),
                workspace: "ws".into(),
                remote_root: "/".into(),
                local_dir: "/l".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn a_newer_change_supersedes_and_a_new_file_deleted_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut st = open(d.path());
        let mut b = st.batch().unwrap();
        let v = |rel: &str, base: Option<&str>, hash: &str, size| LocalVersion {
            rel: rel.into(),
            base: base.map(str::to_string),
            hash: hash.into(),
            size,
            stat: None,
        };
        b.outbox_put(&v("a", Some("rev_1"), "h1", 3)).unwrap();
        b.outbox_put(&v("a", Some("rev_9"), "h2", 4)).unwrap();
        b.outbox_put(&v("new", None, "h3", 1)).unwrap();
        b.commit().unwrap();
        let a = st.outgoing("a").unwrap().unwrap();
        assert_eq!(
            (
                a.base_revision.as_deref(),
                a.content_hash.as_deref(),
                a.size
            ),
            (Some("rev_1"), Some("h2"), 4),
            "the base of the first change is kept, the content is the newest"
        );
        let mut b = st.batch().unwrap();
        b.outbox_delete("new", None).unwrap();
        b.outbox_delete("a", Some("rev_5")).unwrap();
        b.commit().unwrap();
        assert!(st.outgoing("new").unwrap().is_none());
        let a = st.outgoing("a").unwrap().unwrap();
        assert_eq!(
            (a.op, a.base_revision.as_deref()),
            (OpKind::Delete, Some("rev_1"))
        );
        let s = st.outbox_summary().unwrap();
        assert_eq!((s.pending, s.bytes), (1, 0));
        assert_eq!(st.outbox_deletes().unwrap(), 1);
    }
}
