//! Read-only queries for the file system view, on a connection of its own (WAL lets it read while the
//! engine writes). Lookup by `(parent, name)` and keyset paging of children by name or by inode.
use super::{Kind, StateError, ROOT_INO};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// A row as the file system view needs it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub generation: u64,
    pub mtime: i64,
}

/// Totals over the mirror's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

pub struct StateReader {
    conn: Connection,
    path: PathBuf,
}

const ENTRY_COLS: &str = "ino, parent, name, path, kind, size, generation, mtime";

fn entry_row(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        ino: r.get::<_, i64>(0)? as u64,
        parent: r.get::<_, i64>(1)? as u64,
        name: r.get(2)?,
        path: r.get(3)?,
        kind: Kind::from_sql(r.get(4)?)?,
        size: r.get::<_, i64>(5)? as u64,
        generation: r.get::<_, i64>(6)? as u64,
        mtime: r.get(7)?,
    })
}

impl StateReader {
    /// A read-only connection to the database at `path`.
    pub fn open_path(path: &Path) -> Result<StateReader, StateError> {
        let sq = |source| StateError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sq)?;
        Ok(StateReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn get(&self, ino: u64) -> Result<Option<Entry>, StateError> {
        let sql = format!("SELECT {ENTRY_COLS} FROM entries WHERE ino = ?1");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([ino as i64], entry_row).optional())
            .map_err(|e| self.err(e))
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Option<Entry>, StateError> {
        let sql =
            format!("SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND name = ?2 AND ino != {ROOT_INO}");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params![parent as i64, name], entry_row)
                    .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Children of `dir` in name order, strictly after `after` (keyset paging).
    pub fn children(
        &self,
        dir: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StateError> {
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND ino != {ROOT_INO} AND name > ?2 ORDER BY name LIMIT ?3"
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(
                    params![dir as i64, after.unwrap_or(""), limit as i64],
                    entry_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.err(e))
    }

    /// Children of `dir` in inode order, with an inode strictly greater than `after_ino` (keyset paging
    /// with offsets that stay valid while the directory changes: new entries get larger inodes).
    pub fn children_by_ino(
        &self,
        dir: u64,
        after_ino: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StateError> {
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND ino > ?2 AND ino != {ROOT_INO} ORDER BY ino LIMIT ?3"
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(
                    params![dir as i64, after_ino as i64, limit as i64],
                    entry_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.err(e))
    }

    pub fn totals(&self) -> Result<Totals, StateError> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(size),0) FROM entries WHERE kind = 1",
                [],
                |r| {
                    Ok(Totals {
                        files: r.get::<_, i64>(0)? as u64,
                        bytes: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .map_err(|e| self.err(e))
    }
}
