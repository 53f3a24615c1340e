//! What a committed transaction changed, for whoever caches the mirror (the FUSE adapter invalidates
//! the kernel's caches with it). Produced by [`crate::store::db::Batch`], consumed through [`ChangeSink`].

/// One changed entry: its inode, its parent directory's inode and its name there.
///
/// Inodes are never modified in place: a file's new content version is a new inode (`removed: false`)
/// and its previous version's inode is removed (`removed: true`). So an addition always names an inode
/// no reader has seen before, and a cache may keep whatever it holds for an inode until it is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    /// Its path relative to the mirror root.
    pub path: String,
    /// The entry is gone (deleted or replaced by an entry of another kind).
    pub removed: bool,
}

/// Receives what each commit changed.
pub trait ChangeSink: Send + Sync {
    fn changed(&self, changes: &[Change]);

    /// The sync is about to look at these local files to replace or delete them: anything written to
    /// them but still held by a cache (the kernel's writeback cache) must reach the files first, so a
    /// local edit is seen as one (and kept).
    fn before_replace(&self, _paths: &[&str]) {}

    /// What the view shows of every file changed (the token may no longer write: modes lose their
    /// write bits): cached attributes must go.
    fn attributes_changed(&self) {}
}

/// How a path changed through the file system view, for the push side (two-way sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Complete for now: a writer closed it, it was renamed into place, a directory appeared.
    Settled,
    /// Being written.
    Writing,
    /// Gone: deleted or renamed away.
    Gone,
}

/// Where the writable view sends its local changes (the push side implements it). Paths are relative
/// to the mirror root.
pub trait LocalChanges: Send + Sync {
    /// `rel` changed; it is recorded in the outbox once it settled.
    fn touched(&self, rel: &str, how: Touch);
    /// Record `rels` in the outbox now (fsync; close where the view sees it); with `wait_push`, also
    /// wait until the remote answered them. An error says why (the caller answers EIO).
    fn record_now(&self, rels: Vec<String>, wait_push: bool) -> Result<(), String>;
    /// Why writes are refused (the token may not write), when they are.
    fn refused(&self) -> Option<String>;
}
