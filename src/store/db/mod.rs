//! The SQLite state database: the one owner of durable state (file records with stable inode numbers,
//! the bootstrap checkpoint and directory queue, the events cursor, quarantine, the mirror's identity).
//!
//! WAL mode, mode 0600, schema versioned by `user_version` with forward migrations. Every write goes
//! through a [`Batch`] (one transaction); its cost depends on the page it records, not the tree size.
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ROOT_INO: u64 = 1;
pub const KIND_FILE: i64 = 1;
pub const KIND_DIR: i64 = 2;
const SCHEMA_VERSION: i64 = 1;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE entries(
        ino INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        revision TEXT,
        content_hash TEXT,
        content_type TEXT,
        generation INTEGER NOT NULL DEFAULT 1,
        mtime INTEGER NOT NULL DEFAULT 0,
        seen INTEGER NOT NULL DEFAULT 0);
     CREATE UNIQUE INDEX entries_parent_name ON entries(parent, name);
     INSERT INTO entries(ino, parent, name, path, kind) VALUES (1, 1, '', '', 2);
     CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL);
     CREATE TABLE quarantine(
        path TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        permanent INTEGER NOT NULL,
        updated_at INTEGER NOT NULL);",
];

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
}

#[derive(Debug, Clone)]
pub struct FileRecord {
    pub ino: u64,
    pub kind: i64,
    pub size: u64,
    pub revision: Option<String>,
    pub content_hash: Option<String>,
}

/// Metadata of a file just written or verified.
#[derive(Debug, Clone, Default)]
pub struct FileMeta {
    pub size: u64,
    pub revision: Option<String>,
    pub content_hash: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub path: String,
    pub reason: String,
    pub attempts: i64,
    pub permanent: bool,
}

/// A row as the file system view needs it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub path: String,
    pub kind: i64,
    pub size: u64,
    pub generation: u64,
    pub mtime: i64,
}

pub struct State {
    conn: Connection,
    path: PathBuf,
    /// Directory path → (inode, last `seen` stamp written).
    dirs: HashMap<String, (u64, i64)>,
}

fn now_secs() -> i64 {
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
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(sq)?;
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
        if v > SCHEMA_VERSION {
            return Err(StateError::Invalid {
                path: self.path.clone(),
                msg: format!("schema version {v} is newer than this mountd understands ({SCHEMA_VERSION}); upgrade mountd"),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
            let tx = self.conn.transaction().map_err(|e| StateError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(|e| StateError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
        }
        Ok(())
    }

    fn check_identity(&mut self, id: &Identity) -> Result<(), StateError> {
        let fields = [
            ("base_url", &id.base_url),
            ("workspace", &id.workspace),
            ("remote_root", &id.remote_root),
            ("local_dir", &id.local_dir),
        ];
        let mut mismatches = Vec::new();
        for (k, want) in fields {
            match self.meta(&format!("identity.{k}")) {
                Some(have) if &have != want => {
                    mismatches.push(format!("{k} is {have:?}, not {want:?}"))
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
        for (k, want) in fields {
            b.set_meta(&format!("identity.{k}"), want)?;
        }
        b.commit()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .ok()
            .flatten()
    }

    pub fn is_complete(&self) -> bool {
        self.meta("bootstrap_complete").as_deref() == Some("1")
    }

    pub fn events_cursor(&self) -> Option<String> {
        self.meta("events_cursor").filter(|c| !c.is_empty())
    }

    pub fn has_feed(&self) -> bool {
        self.meta("feed").as_deref() != Some("0")
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.meta("checkpoint")
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    pub fn file(&self, rel: &str) -> Option<FileRecord> {
        self.conn
            .prepare_cached(
                "SELECT ino, kind, size, revision, content_hash FROM entries WHERE path = ?1",
            )
            .and_then(|mut s| {
                s.query_row([rel], |r| {
                    Ok(FileRecord {
                        ino: r.get::<_, i64>(0)? as u64,
                        kind: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        revision: r.get(3)?,
                        content_hash: r.get(4)?,
                    })
                })
                .optional()
            })
            .ok()
            .flatten()
    }

    /// True when `rel` is a directory record with no children left.
    pub fn dir_is_empty(&self, rel: &str) -> bool {
        self.conn
            .prepare_cached(
                "SELECT d.kind = 2 AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.parent = d.ino AND e.ino != 1)
                 FROM entries d WHERE d.path = ?1",
            )
            .and_then(|mut s| s.query_row([rel], |r| r.get::<_, bool>(0)))
            .unwrap_or(false)
    }

    pub fn tracked_files(&self) -> u64 {
        self.conn
            .query_row("SELECT count(*) FROM entries WHERE kind = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_or(0) as u64
    }

    pub fn tracked_bytes(&self) -> u64 {
        self.conn
            .query_row(
                "SELECT coalesce(sum(size),0) FROM entries WHERE kind = 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0) as u64
    }

    /// Next directory of the traversal queue, without removing it.
    pub fn queue_front(&self) -> Option<(i64, String)> {
        self.conn
            .query_row(
                "SELECT seq, path FROM queue ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ok()
            .flatten()
    }

    pub fn queue_len(&self) -> u64 {
        self.conn
            .query_row("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0) as u64
    }

    pub fn quarantined(&self) -> Vec<Quarantined> {
        let mut out = Vec::new();
        if let Ok(mut s) = self
            .conn
            .prepare("SELECT path, reason, attempts, permanent FROM quarantine ORDER BY path")
        {
            if let Ok(rows) = s.query_map([], |r| {
                Ok(Quarantined {
                    path: r.get(0)?,
                    reason: r.get(1)?,
                    attempts: r.get(2)?,
                    permanent: r.get::<_, i64>(3)? != 0,
                })
            }) {
                out.extend(rows.flatten());
            }
        }
        out
    }

    /// Records (path, kind) not stamped by `snapshot`, deepest first: what a completed snapshot removes.
    pub fn unseen(&self, snapshot: i64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        if let Ok(mut s) = self.conn.prepare(
            "SELECT path, kind FROM entries WHERE seen != ?1 AND ino != 1 ORDER BY path DESC",
        ) {
            if let Ok(rows) = s.query_map([snapshot], |r| Ok((r.get(0)?, r.get(1)?))) {
                out.extend(rows.flatten());
            }
        }
        out
    }

    /// A fresh snapshot stamp.
    pub fn next_snapshot(&mut self) -> Result<i64, StateError> {
        let n = self
            .meta("snapshot_seq")
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0)
            + 1;
        let mut b = self.batch()?;
        b.set_meta("snapshot_seq", &n.to_string())?;
        b.commit()?;
        Ok(n)
    }

    /// Start a transaction.
    pub fn batch(&mut self) -> Result<Batch<'_>, StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        })?;
        Ok(Batch {
            tx,
            path,
            cache: &mut self.dirs,
            new_dirs: HashMap::new(),
            dropped_dirs: false,
        })
    }

    /// A separate read-only connection for the file system view (WAL lets it read while we write).
    pub fn reader(&self) -> Result<StateReader, StateError> {
        Ok(StateReader {
            st: Self::connect(&self.path, true)?,
        })
    }
}

/// One transaction. Dropping it without [`Batch::commit`] rolls everything back.
pub struct Batch<'a> {
    tx: Transaction<'a>,
    path: PathBuf,
    cache: &'a mut HashMap<String, (u64, i64)>,
    new_dirs: HashMap<String, (u64, i64)>,
    dropped_dirs: bool,
}

impl Batch<'_> {
    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .and_then(|mut s| s.execute([key, value]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_checkpoint(&mut self, c: &Checkpoint) -> Result<(), StateError> {
        self.set_meta(
            "checkpoint",
            &serde_json::to_string(c).expect("checkpoint serializes"),
        )
    }

    fn lookup_dir(&self, rel: &str) -> Option<(u64, i64)> {
        self.new_dirs
            .get(rel)
            .or_else(|| self.cache.get(rel))
            .copied()
    }

    /// Make sure directory `rel` and its ancestors have records stamped `seen`; returns its inode.
    pub fn ensure_dir(&mut self, rel: &str, seen: i64) -> Result<u64, StateError> {
        if rel.is_empty() {
            return Ok(crate::store::db::ROOT_INO);
        }
        if let Some((ino, stamp)) = self.lookup_dir(rel) {
            if stamp == seen {
                return Ok(ino);
            }
        }
        let parent = self.ensure_dir(crate::store::paths::parent(rel), seen)?;
        let existing: Option<(i64, i64)> = self
            .tx
            .prepare_cached("SELECT ino, kind FROM entries WHERE path = ?1")
            .and_then(|mut s| {
                s.query_row([rel], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let ino = match existing {
            Some((ino, KIND_DIR)) => {
                self.tx
                    .prepare_cached("UPDATE entries SET seen = ?2 WHERE ino = ?1")
                    .and_then(|mut s| s.execute(params![ino, seen]))
                    .map_err(|e| self.err(e))?;
                ino as u64
            }
            other => {
                if other.is_some() {
                    self.delete(rel)?;
                }
                self.tx
                    .prepare_cached("INSERT INTO entries(parent, name, path, kind, mtime, seen) VALUES (?1, ?2, ?3, 2, ?4, ?5)")
                    .and_then(|mut s| s.execute(params![parent as i64, crate::store::paths::name(rel), rel, now_secs(), seen]))
                    .map_err(|e| self.err(e))?;
                self.tx.last_insert_rowid() as u64
            }
        };
        self.new_dirs.insert(rel.to_string(), (ino, seen));
        Ok(ino)
    }

    /// Insert or update a file record stamped `seen`. Returns (inode, parent inode, content changed).
    pub fn upsert_file(
        &mut self,
        rel: &str,
        m: &FileMeta,
        seen: i64,
    ) -> Result<(u64, u64, bool), StateError> {
        let parent = self.ensure_dir(crate::store::paths::parent(rel), seen)?;
        let existing: Option<(i64, i64, Option<String>, i64)> = self
            .tx
            .prepare_cached("SELECT ino, kind, content_hash, size FROM entries WHERE path = ?1")
            .and_then(|mut s| {
                s.query_row([rel], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        match existing {
            Some((ino, KIND_FILE, hash, size)) => {
                let changed = hash != m.content_hash || size as u64 != m.size;
                self.tx
                    .prepare_cached(
                        "UPDATE entries SET size = ?2, revision = ?3, content_hash = ?4, content_type = ?5, seen = ?6,
                         generation = generation + ?7, mtime = CASE WHEN ?7 = 1 THEN ?8 ELSE mtime END WHERE ino = ?1",
                    )
                    .and_then(|mut s| s.execute(params![ino, m.size as i64, m.revision, m.content_hash, m.content_type, seen, changed as i64, now_secs()]))
                    .map_err(|e| self.err(e))?;
                Ok((ino as u64, parent, changed))
            }
            other => {
                if other.is_some() {
                    self.delete(rel)?;
                }
                self.tx
                    .prepare_cached(
                        "INSERT INTO entries(parent, name, path, kind, size, revision, content_hash, content_type, mtime, seen)
                         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![parent as i64, crate::store::paths::name(rel), rel, m.size as i64, m.revision, m.content_hash, m.content_type, now_secs(), seen])
                    })
                    .map_err(|e| self.err(e))?;
                Ok((self.tx.last_insert_rowid() as u64, parent, true))
            }
        }
    }

    /// Stamp an existing record as seen (a listed file we could not fetch keeps its old copy).
    pub fn touch_seen(&mut self, rel: &str, seen: i64) -> Result<(), StateError> {
        self.tx
            .prepare_cached("UPDATE entries SET seen = ?2 WHERE path = ?1")
            .and_then(|mut s| s.execute(params![rel, seen]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Delete a record and, for a directory, everything below it. Returns (inode, parent inode, name) of
    /// the removed top record.
    pub fn delete(&mut self, rel: &str) -> Result<Option<(u64, u64, String)>, StateError> {
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
        self.tx
            .prepare_cached("DELETE FROM entries WHERE path = ?1 OR (path >= ?2 AND path < ?3)")
            .and_then(|mut s| s.execute(params![rel, lo, hi]))
            .map_err(|e| self.err(e))?;
        self.dropped_dirs = true;
        self.new_dirs.retain(|k, _| k != rel && !k.starts_with(&lo));
        Ok(Some((ino as u64, parent as u64, name)))
    }

    pub fn delete_meta(&mut self, key: &str) -> Result<(), StateError> {
        self.tx
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map_err(|e| self.err(e))?;
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

    pub fn quarantine(
        &mut self,
        remote_path: &str,
        reason: &str,
        permanent: bool,
    ) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO quarantine(path, reason, attempts, permanent, updated_at) VALUES (?1, ?2, 1, ?3, ?4)
                 ON CONFLICT(path) DO UPDATE SET reason = excluded.reason, attempts = attempts + 1,
                 permanent = excluded.permanent, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![remote_path, reason, permanent as i64, now_secs()]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn unquarantine(&mut self, remote_path: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM quarantine WHERE path = ?1")
            .and_then(|mut s| s.execute([remote_path]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn commit(self) -> Result<(), StateError> {
        let path = self.path.clone();
        let Batch {
            tx,
            cache,
            new_dirs,
            dropped_dirs,
            ..
        } = self;
        tx.commit()
            .map_err(|e| StateError::Sqlite { path, source: e })?;
        if dropped_dirs {
            cache.clear();
        }
        cache.extend(new_dirs);
        Ok(())
    }
}

/// Read-only queries for the file system view.
pub struct StateReader {
    st: State,
}

const ENTRY_COLS: &str = "ino, parent, name, path, kind, size, generation, mtime";

fn entry_row(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        ino: r.get::<_, i64>(0)? as u64,
        parent: r.get::<_, i64>(1)? as u64,
        name: r.get(2)?,
        path: r.get(3)?,
        kind: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        generation: r.get::<_, i64>(6)? as u64,
        mtime: r.get(7)?,
    })
}

impl StateReader {
    pub fn get(&self, ino: u64) -> Option<Entry> {
        let sql = format!("SELECT {ENTRY_COLS} FROM entries WHERE ino = ?1");
        self.st
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([ino as i64], entry_row).optional())
            .ok()
            .flatten()
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Option<Entry> {
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND name = ?2 AND ino != 1"
        );
        self.st
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params![parent as i64, name], entry_row)
                    .optional()
            })
            .ok()
            .flatten()
    }

    /// Children of `dir` in name order, strictly after `after` (keyset paging).
    pub fn children(&self, dir: u64, after: Option<&str>, limit: usize) -> Vec<Entry> {
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND ino != 1 AND name > ?2 ORDER BY name LIMIT ?3"
        );
        let mut out = Vec::new();
        if let Ok(mut s) = self.st.conn.prepare_cached(&sql) {
            if let Ok(rows) = s.query_map(
                params![dir as i64, after.unwrap_or(""), limit as i64],
                entry_row,
            ) {
                out.extend(rows.flatten());
            }
        }
        out
    }

    pub fn totals(&self) -> (u64, u64, u64) {
        self.st
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(size),0), max(ino) FROM entries WHERE kind = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    ))
                },
            )
            .unwrap_or((0, 0, 0))
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
        let (ino, _, changed) = b.upsert_file("a/b/c", &m, 1).unwrap();
        assert!(changed);
        b.commit().unwrap();
        let mut b = st.batch().unwrap();
        let (ino2, _, changed) = b.upsert_file("a/b/c", &m, 2).unwrap();
        assert_eq!((ino, false), (ino2, changed));
        b.commit().unwrap();
        drop(st);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let st = State::open(&p, &id("ws")).unwrap();
        assert_eq!(st.file("a/b/c").unwrap().ino, ino);
        let r = st.reader().unwrap();
        let a = r.lookup(ROOT_INO, "a").unwrap();
        assert_eq!(r.children(a.ino, None, 10)[0].name, "b");
        assert_eq!(st.unseen(2).len(), 0);
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
            .expect("dir recreated after rollback");
        assert_eq!(r.children(d.ino, None, 10).len(), 1);
    }
}
