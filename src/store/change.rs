//! What a committed transaction changed, for whoever caches the mirror (the FUSE adapter invalidates
//! the kernel's caches with it). Produced by [`crate::store::db::Batch`], consumed through [`ChangeSink`].

/// One changed entry: its inode, its parent directory's inode and its name there.
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
