//! The SQLite state database: the one owner of durable state (file records with stable inode numbers,
//! the bootstrap checkpoint and directory queue, the events cursor, quarantine, the mirror's identity).
//!
//! WAL mode, mode 0600, schema versioned by `user_version` ([`schema`]). Every write goes through a
//! [`Batch`] (one transaction) whose cost depends on what it records, not on the tree size. Every read
//! returns a `Result`: a failing query is an error, never "nothing there". The engine reaches the
//! database only through [`Db`], which runs all work on one dedicated thread.
mod batch;
mod meta;
mod outbox;
mod reader;
mod schema;
mod thread;

pub use batch::Batch;
pub use meta::{event_seq, MetaKey};
pub use outbox::{Conflict, IssueKind, LocalVersion, OpKind, OutboxSummary, Outgoing, WriteIssue};
pub use reader::{Entry, StateReader};
pub use thread::Db;

use crate::store::space::{describe_space, human_bytes};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ROOT_INO: u64 = 1;

/// What an entry is. Stored as an integer (1 file, 2 directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
}

impl Kind {
    pub(crate) fn to_sql(self) -> i64 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
        }
    }

    pub(crate) fn from_sql(v: i64) -> rusqlite::Result<Kind> {
        match v {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(0, other)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("state database {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: its worker thread is gone")]
    Gone { path: PathBuf },
}

impl StateError {
    /// SQLite says the disk (or the database) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StateError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            ),
            StateError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }

    /// The database file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            StateError::Sqlite { path, .. }
            | StateError::Invalid { path, .. }
            | StateError::Io { path, .. }
            | StateError::Gone { path } => path,
        }
    }

    /// For a full disk: what SQLite needed room for and what the file system holding the database
    /// has left. SQLite does not say how many bytes the transaction needed; the database and its
    /// write-ahead log are what grows.
    pub fn disk_full_detail(&self) -> Option<String> {
        if !self.is_disk_full() {
            return None;
        }
        let db = self.path();
        let size = |p: &Path| std::fs::metadata(p).ok().map(|m| human_bytes(m.len()));
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let files = match (size(db), size(Path::new(&wal))) {
            (Some(d), Some(w)) => format!(" (the database is {d}, its write-ahead log {w})"),
            (Some(d), None) => format!(" (the database is {d})"),
            _ => String::new(),
        };
        let mut m = format!(
            "SQLite needs room to commit its transaction next to {}{files}",
            db.display()
        );
        if let Some(space) = describe_space(db) {
            m.push_str(&format!(", and {space}"));
        }
        Some(m)
    }
}

/// What a state database belongs to. A database of another mirror is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub base_url: String,
    pub workspace: String,
    pub remote_root: String,
    pub local_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Export,
    Tree,
}

/// Where an unfinished bootstrap stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Stamp written on every record this snapshot lists; unstamped records are swept at completion.
    pub snapshot: i64,
    pub phase: Phase,
    /// Remote directory being listed and the cursor after the last persisted page.
    pub current_dir: Option<String>,
    pub cursor: Option<String>,
    /// Events tip taken before the snapshot started (`None`: empty feed).
    pub events_tip: Option<String>,
    /// False when the server has no events feed.
    pub feed: bool,
    pub total_files: Option<u64>,
    pub files_done: u64,
    pub pages_done: u64,
    /// A traversal of one subtree only (re-listing a directory whose listing failed): the sweep at its
    /// end is limited to it. `None`: the whole tree.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A committed record, as the engine needs it for hash-skip.
#[derive(Debug, Clone)]
pub struct FileRecord {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub revision: Option<String>,
    pub content_hash: Option<String>,
    /// The local file's identity when the record was written (see [`crate::store::LocalStore::stat_key`]).
    pub local_stat: Option<String>,
}

/// Metadata of a file just written or verified.
#[derive(Debug, Clone, Default)]
pub struct FileMeta {
    pub size: u64,
    pub revision: Option<String>,
    pub content_hash: Option<String>,
    pub content_type: Option<String>,
    /// The local file's identity after writing or verifying it.
    pub local_stat: Option<String>,
}

/// A file (or directory) that keeps failing, with its reason.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub path: String,
    pub reason: String,
    pub attempts: i64,
    pub permanent: bool,
    /// The cause without the file's specifics (e.g. `HTTP 404 not_found`, `hostile path`).
    pub class: String,
}

/// A directory whose listing failed, to be listed again.
#[derive(Debug, Clone, Serialize)]
pub struct Unlisted {
    pub path: String,
    pub reason: String,
    pub attempts: i64,
}

/// One directory of the traversal queue.
#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: i64,
    pub path: String,
}

/// A record no completed snapshot listed.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub path: String,
    pub kind: Kind,
}

pub struct State {
    conn: Connection,
    path: PathBuf,
    /// Directory path → (inode, last `seen` stamp written).
    dirs: HashMap<String, (u64, i64)>,
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl State {
    /// Open or create the database for `identity`; refuse a database that belongs to another mirror.
    pub fn open(path: &Path, identity: &Identity) -> Result<State, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Create the file 0600 before SQLite does; its WAL and SHM files inherit this mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let mut st = Self::connect(path, false)?;
        st.migrate()?;
        st.check_identity(identity)?;
        Ok(st)
    }

    /// Open an existing database without checking identity (for `mountd status`).
    pub fn open_existing(path: &Path) -> Result<State, StateError> {
        if !path.exists() {
            return Err(StateError::Invalid {
                path: path.into(),
                msg: "does not exist (no mirror has been synced here yet)".into(),
            });
        }
        let st = Self::connect(path, false)?;
        let v: i64 = st
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| st.err(e))?;
        if v == 0 {
            return Err(StateError::Invalid {
                path: path.into(),
                msg: "is not a mountd state database".into(),
            });
        }
        Ok(st)
    }

    fn connect(path: &Path, read_only: bool) -> Result<State, StateError> {
        let sq = |source| StateError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(path, flags).map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sq)?;
        if !read_only {
            // Switching to WAL needs a moment alone with the file: another process opening a brand-new
            // database at the same instant (a `mountd status` probe) makes it report "locked" at once,
            // whatever the busy timeout. Retry briefly.
            let mut tries = 0;
            loop {
                match conn.pragma_update(None, "journal_mode", "WAL") {
                    Ok(()) => break,
                    Err(e)
                        if tries < 100
                            && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
                    {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(sq(e)),
                }
            }
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(sq)?;
        }
        Ok(State {
            conn,
            path: path.to_path_buf(),
            dirs: HashMap::new(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        let v: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if v > schema::SCHEMA_VERSION {
            return Err(StateError::Invalid {
                path: self.path.clone(),
                msg: format!(
                    "schema version {v} is newer than this mountd understands ({}); upgrade mountd",
                    schema::SCHEMA_VERSION
                ),
            });
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(v as usize) {
            let path = self.path.clone();
            let sq = |source| StateError::Sqlite {
                path: path.clone(),
                source,
            };
            let tx = self.conn.transaction().map_err(sq)?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(sq)?;
        }
        Ok(())
    }

    fn check_identity(&mut self, id: &Identity) -> Result<(), StateError> {
        let fields = [
            (MetaKey::IdentityBaseUrl, "base_url", &id.base_url),
            (MetaKey::IdentityWorkspace, "workspace", &id.workspace),
            (MetaKey::IdentityRemoteRoot, "remote_root", &id.remote_root),
            (MetaKey::IdentityLocalDir, "local_dir", &id.local_dir),
        ];
        let mut mismatches = Vec::new();
        for (key, name, want) in fields {
            match self.meta(key)? {
                Some(have) if &have != want => {
                    mismatches.push(format!("{name} is {have:?}, not {want:?}"))
                }
                _ => {}
            }
        }
        if !mismatches.is_empty() {
            return Err(StateError::Invalid {
                path: self.path.clone(),
                msg: format!(
                    "belongs to another mirror ({}); use a different --state-db or --local-dir, or delete it to start over",
                    mismatches.join(", ")
                ),
            });
        }
        let mut b = self.batch()?;
        for (key, _, want) in fields {
            b.set_meta(key, want)?;
        }
        b.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A raw meta value (see the typed accessors below for the structured ones).
    pub fn meta(&self, key: MetaKey) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key.as_str()], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    fn meta_u64(&self, key: MetaKey) -> Result<u64, StateError> {
        match self.meta(key)? {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| StateError::Invalid {
                path: self.path.clone(),
                msg: format!("meta {} holds {v:?}, not a number", key.as_str()),
            }),
        }
    }

    pub fn is_complete(&self) -> Result<bool, StateError> {
        Ok(self.meta(MetaKey::BootstrapComplete)?.as_deref() == Some("1"))
    }

    pub fn events_cursor(&self) -> Result<Option<String>, StateError> {
        Ok(self.meta(MetaKey::EventsCursor)?.filter(|c| !c.is_empty()))
    }

    pub fn has_feed(&self) -> Result<bool, StateError> {
        Ok(self.meta(MetaKey::Feed)?.as_deref() != Some("0"))
    }

    pub fn snapshot_seq(&self) -> Result<i64, StateError> {
        Ok(self.meta_u64(MetaKey::SnapshotSeq)? as i64)
    }

    pub fn no_progress_runs(&self) -> Result<u64, StateError> {
        self.meta_u64(MetaKey::NoProgressRuns)
    }

    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        match self.meta(MetaKey::Checkpoint)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| StateError::Invalid {
                    path: self.path.clone(),
                    msg: format!("unreadable checkpoint: {e}"),
                }),
        }
    }

    /// The stamp given to records written outside a traversal: the traversal's when one is in progress
    /// (so an in-progress sweep keeps them), else the last snapshot's.
    pub fn current_seen(&self) -> Result<i64, StateError> {
        match self.checkpoint()? {
            Some(c) => Ok(c.snapshot),
            None => self.snapshot_seq(),
        }
    }

    pub fn file(&self, rel: &str) -> Result<Option<FileRecord>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT ino, kind, size, revision, content_hash, local_stat FROM entries WHERE path = ?1",
            )
            .and_then(|mut s| {
                s.query_row([rel], |r| {
                    Ok(FileRecord {
                        ino: r.get::<_, i64>(0)? as u64,
                        kind: Kind::from_sql(r.get(1)?)?,
                        size: r.get::<_, i64>(2)? as u64,
                        revision: r.get(3)?,
                        content_hash: r.get(4)?,
                        local_stat: r.get(5)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Which of `names` (files in the local directory `dir`) have no record at `dir/name`: the
    /// directory's records are read once, so it is meant for all the files of one directory.
    pub fn unrecorded_in(&self, dir: &str, names: Vec<String>) -> Result<Vec<String>, StateError> {
        let ino: Option<i64> = self
            .conn
            .prepare_cached("SELECT ino FROM entries WHERE path = ?1")
            .and_then(|mut s| s.query_row([dir], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        let mut left: std::collections::HashSet<String> = names.into_iter().collect();
        if let Some(ino) = ino {
            self.conn
                .prepare_cached("SELECT name FROM entries WHERE parent = ?1")
                .and_then(|mut s| {
                    let mut rows = s.query([ino])?;
                    while let Some(r) = rows.next()? {
                        if left.is_empty() {
                            break;
                        }
                        left.remove(r.get_ref(0)?.as_str()?);
                    }
                    Ok(())
                })
                .map_err(|e| self.err(e))?;
        }
        Ok(left
            .into_iter()
            .map(|n| match dir {
                "" => n,
                _ => format!("{dir}/{n}"),
            })
            .collect())
    }

    /// True when `rel` has a record (of any kind).
    pub fn has_record(&self, rel: &str) -> Result<bool, StateError> {
        self.conn
            .prepare_cached("SELECT 1 FROM entries WHERE path = ?1")
            .and_then(|mut s| s.exists([rel]))
            .map_err(|e| self.err(e))
    }

    /// True when `rel` is a directory record with no children left.
    pub fn dir_is_empty(&self, rel: &str) -> Result<bool, StateError> {
        self.conn
            .prepare_cached(
                "SELECT d.kind = 2 AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.parent = d.ino AND e.ino != 1)
                 FROM entries d WHERE d.path = ?1",
            )
            .and_then(|mut s| s.query_row([rel], |r| r.get::<_, bool>(0)).optional())
            .map(|v| v.unwrap_or(false))
            .map_err(|e| self.err(e))
    }

    fn count(&self, sql: &str) -> Result<u64, StateError> {
        self.conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn tracked_files(&self) -> Result<u64, StateError> {
        self.count("SELECT count(*) FROM entries WHERE kind = 1")
    }

    /// Files recorded below the local directory `rel` (at any depth).
    pub fn count_files_under(&self, rel: &str) -> Result<u64, StateError> {
        // '0' follows '/': the range holds exactly the paths that start with "rel/".
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM entries WHERE kind = 1 AND path >= ?1 AND path < ?2",
            )
            .and_then(|mut s| {
                s.query_row([format!("{rel}/"), format!("{rel}0")], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn tracked_bytes(&self) -> Result<u64, StateError> {
        self.count("SELECT coalesce(sum(size),0) FROM entries WHERE kind = 1")
    }

    /// Next directory of the traversal queue, without removing it (`None`: the traversal is done).
    pub fn queue_front(&self) -> Result<Option<Queued>, StateError> {
        self.conn
            .query_row(
                "SELECT seq, path FROM queue ORDER BY seq LIMIT 1",
                [],
                |r| {
                    Ok(Queued {
                        seq: r.get(0)?,
                        path: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn queue_len(&self) -> Result<u64, StateError> {
        self.count("SELECT count(*) FROM queue")
    }

    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StateError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT path, reason, attempts, permanent, class FROM quarantine ORDER BY path",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(Quarantined {
                    path: r.get(0)?,
                    reason: r.get(1)?,
                    attempts: r.get(2)?,
                    permanent: r.get::<_, i64>(3)? != 0,
                    class: r.get(4)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Directories whose listing failed (never treated as listed).
    pub fn unlisted(&self) -> Result<Vec<Unlisted>, StateError> {
        let mut s = self
            .conn
            .prepare("SELECT path, reason, attempts FROM unlisted ORDER BY path")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(Unlisted {
                    path: r.get(0)?,
                    reason: r.get(1)?,
                    attempts: r.get(2)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Retryable files quarantined by `snapshot`, per failure class, most common first.
    pub fn quarantine_classes(&self, snapshot: i64) -> Result<Vec<(String, u64)>, StateError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT class, count(*) FROM quarantine WHERE permanent = 0 AND snapshot = ?1
                 GROUP BY class ORDER BY count(*) DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([snapshot], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Files written (or about to be) whose records were never committed: a run was interrupted.
    pub fn pending(&self) -> Result<Vec<String>, StateError> {
        let mut s = self
            .conn
            .prepare("SELECT path FROM pending ORDER BY path")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Records not stamped by `snapshot`, deepest first: what a completed snapshot removes.
    pub fn unseen(&self, snapshot: i64) -> Result<Vec<Unseen>, StateError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT path, kind FROM entries WHERE seen != ?1 AND ino != 1 ORDER BY path DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([snapshot], |r| {
                Ok(Unseen {
                    path: r.get(0)?,
                    kind: Kind::from_sql(r.get(1)?)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// A fresh snapshot stamp, committed.
    pub fn next_snapshot(&mut self) -> Result<i64, StateError> {
        let n = self.snapshot_seq()? + 1;
        let mut b = self.batch()?;
        b.set_meta(MetaKey::SnapshotSeq, &n.to_string())?;
        b.commit()?;
        Ok(n)
    }

    /// Record that the files at `rels` are about to be written into the mirror, in one transaction
    /// committed before any of their bytes are (the `pending` journal).
    pub fn intend(&mut self, rels: &[String]) -> Result<(), StateError> {
        let mut b = self.batch()?;
        for r in rels {
            b.pending_add(r)?;
        }
        b.commit()?;
        Ok(())
    }

    /// Start a transaction.
    pub fn batch(&mut self) -> Result<Batch<'_>, StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        })?;
        Ok(Batch::new(tx, path, &mut self.dirs))
    }

    /// A separate read-only connection for the file system view (WAL lets it read while we write).
    pub fn reader(&self) -> Result<StateReader, StateError> {
        StateReader::open_path(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ws: &str) -> Identity {
        Identity {
            base_url: "http://x".into(),
            workspace: ws.into(),
            remote_root: "/".into(),
            local_dir: "/l".into(),
        }
    }

    #[test]
    fn records_inodes_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let mut st = State::open(&p, &id("ws")).unwrap();
        let m = FileMeta {
            size: 3,
            content_hash: Some("h1".into()),
            ..Default::default()
        };
        let mut b = st.batch().unwrap();
        let ino = b.upsert_file("a/b/c", &m, 1).unwrap();
        let changes = b.commit().unwrap();
        assert!(changes.iter().any(|c| c.ino == ino && !c.removed));
        let mut b = st.batch().unwrap();
        let ino2 = b.upsert_file("a/b/c", &m, 2).unwrap();
        assert_eq!(ino, ino2);
        assert!(b.commit().unwrap().is_empty(), "same content: no change");
        drop(st);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let st = State::open(&p, &id("ws")).unwrap();
        assert_eq!(st.file("a/b/c").unwrap().unwrap().ino, ino);
        let r = st.reader().unwrap();
        let a = r.lookup(ROOT_INO, "a").unwrap().unwrap();
        assert_eq!(r.children(a.ino, None, 10).unwrap()[0].name, "b");
        assert_eq!(st.unseen(2).unwrap().len(), 0);
        drop(st);
        let e = State::open(&p, &id("other")).err().unwrap().to_string();
        assert!(e.contains("belongs to another mirror"), "{e}");
    }

    #[test]
    fn rollback_keeps_cache_honest() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = State::open(&dir.path().join("s.db"), &id("ws")).unwrap();
        {
            let mut b = st.batch().unwrap();
            b.upsert_file("d/x", &FileMeta::default(), 1).unwrap();
        } // dropped: rolled back
        let mut b = st.batch().unwrap();
        b.upsert_file("d/y", &FileMeta::default(), 1).unwrap();
        b.commit().unwrap();
        let r = st.reader().unwrap();
        let d = r
            .lookup(ROOT_INO, "d")
            .unwrap()
            .expect("dir recreated after rollback");
        assert_eq!(r.children(d.ino, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_broken_query_is_an_error_not_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db"), &id("ws")).unwrap();
        st.conn.execute_batch("DROP TABLE queue").unwrap();
        assert!(
            st.queue_front().is_err(),
            "a failed read must not read as 'queue empty'"
        );
        let mut b = State::open(&dir.path().join("s.db"), &id("ws")).unwrap();
        let mut tx = b.batch().unwrap();
        tx.set_meta(MetaKey::Checkpoint, "{not json").unwrap();
        tx.commit().unwrap();
        assert!(b.checkpoint().is_err());
    }
}
