//! The schema of the state database, versioned by `PRAGMA user_version` with forward-only migrations.

/// The schema version this build writes; a newer database is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
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
    // v2: files about to be written into the mirror whose records are not committed yet (so a file
    // written before a crash is known to be mountd's, and removed if the remote no longer has it).
    // Directories whose listing failed: never treated as listed, listed again later (`snapshot`: the
    // snapshot that last failed to list it). The class of each quarantined file's failure (to tell a
    // systemic cause from stragglers). Directory listings page by inode number (stable offsets without
    // per-handle state, so the kernel can skip OPENDIR); each content version of a file has an inode of
    // its own. `local_stat`: the identity of the local file when its record was written (inode, change
    // time, size), so an audit notices local drift without reading every byte.
    "CREATE TABLE pending(path TEXT PRIMARY KEY);
     CREATE TABLE unlisted(path TEXT PRIMARY KEY, reason TEXT NOT NULL, snapshot INTEGER NOT NULL,
        attempts INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     ALTER TABLE quarantine ADD COLUMN class TEXT NOT NULL DEFAULT '';
     ALTER TABLE quarantine ADD COLUMN snapshot INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX entries_parent_ino ON entries(parent, ino);
     ALTER TABLE entries ADD COLUMN local_stat TEXT;",
    // v3: two-way sync. `outbox`: one row per local path with a change not yet on the remote (the
    // newest change of a path supersedes an older unpushed one), recorded in the same transaction as
    // the local state it describes. `conflicts`: local versions kept aside when the remote's took their
    // path. `write_issues`: paths the remote will not take as they are (write-denied, too large, a kind
    // of file the remote cannot hold), reported once and not retried until they change.
    "CREATE TABLE outbox(
        path TEXT PRIMARY KEY,
        op INTEGER NOT NULL,
        base_revision TEXT,
        content_hash TEXT,
        size INTEGER NOT NULL DEFAULT 0,
        local_stat TEXT,
        held TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL);
     CREATE TABLE conflicts(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        copy TEXT NOT NULL,
        local_hash TEXT,
        size INTEGER NOT NULL DEFAULT 0,
        base_revision TEXT,
        remote_revision TEXT,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL);
     CREATE INDEX conflicts_path ON conflicts(path);
     CREATE TABLE write_issues(
        path TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        local_stat TEXT,
        token TEXT,
        updated_at INTEGER NOT NULL);",
];
