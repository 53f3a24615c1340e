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
    /// The entry is gone (deleted or replaced by an entry of another kind).
    pub removed: bool,
}

/// Receives what each commit changed.
pub trait ChangeSink: Send + Sync {
    fn changed(&self, changes: &[Change]);
}
