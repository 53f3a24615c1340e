//! Kernel cache invalidation: the [`ChangeSink`] the engine tells what each commit changed. For each
//! changed path the name is invalidated in its directory, then the listing of every touched directory.
//!
//! A file the engine replaces is a new inode (a new file renamed over the path), so the data cached for
//! an inode is never invalidated: readers that hold the old inode keep reading their version, and the
//! next lookup of the name finds the new inode. Before the sync replaces or deletes a file of a
//! writable view, the kernel is made to write back what it still holds of it (see
//! [`ChangeSink::before_replace`]). Directories are found by their path in the mirror (a
//! node id is the mirror inode's number).
use crate::store::change::{Change, ChangeSink};
use crate::store::paths;
use crate::view::fs::MirrorFs;
use fuser::{INodeNo, Notifier};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::Arc;

/// Invalidates kernel caches for what a sync changed.
pub struct FuseSink {
    pub(super) notifier: Notifier,
    pub(super) fs: Arc<MirrorFs>,
}

impl FuseSink {
    fn note(&self, what: &str, r: std::io::Result<()>) {
        if let Err(e) = r {
            // ENOENT (an inode or name the kernel does not know) is filtered by fuser already; after an
            // unmount the channel is gone (ENODEV/EBADF): nothing to invalidate either.
            tracing::debug!(error = %e, "FUSE {what} notification failed");
        }
    }
}

impl ChangeSink for FuseSink {
    fn changed(&self, changes: &[Change]) {
        let mut parents = HashSet::new();
        for c in changes {
            // A directory removed with its parent has nothing left to invalidate in.
            let Some(parent) = self.fs.dir_id(paths::parent(&c.path)) else {
                continue;
            };
            // A negative dentry, or one of an older version, may be cached for the name.
            self.note(
                "inval_entry",
                self.notifier
                    .inval_entry(INodeNo(parent), OsStr::new(&c.name)),
            );
            parents.insert(parent);
        }
        // The listing of every touched directory (its cached readdir pages and attributes).
        for p in parents {
            self.note("inval_inode", self.notifier.inval_inode(INodeNo(p), 0, -1));
        }
    }

    fn attributes_changed(&self) {
        for id in self.fs.known_ids() {
            self.note("inval_inode", self.notifier.inval_inode(INodeNo(id), -1, 0));
        }
    }

    /// Invalidating a file's pages makes the kernel write its dirty ones (writeback cache) to the
    /// daemon first, so the file on disk holds every byte written before the sync compares it.
    fn before_replace(&self, paths: &[&str]) {
        if !self.fs.options().writable {
            return;
        }
        for p in paths {
            if let Some(id) = self.fs.file_id(p) {
                self.note("inval_inode", self.notifier.inval_inode(INodeNo(id), 0, 0));
            }
        }
    }
}
