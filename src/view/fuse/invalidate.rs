//! Kernel cache invalidation: the [`ChangeSink`] the engine tells what each commit changed. For each
//! change the entry (and for a removal the dentry) is invalidated, then the listing of every touched
//! directory.
//!
//! An inode's content never changes (a new version is a new inode), so the data cached for an inode is
//! never invalidated: a removed inode's dentry is deleted (the kernel marks the inode unlinked) and
//! readers that hold it open keep reading their version from its page cache or backing file. An added
//! inode is new to the kernel: only the name and the parent's listing need invalidating.
use crate::store::change::{Change, ChangeSink};
use fuser::{INodeNo, Notifier};
use std::collections::HashSet;
use std::ffi::OsStr;

/// Invalidates kernel caches for what a sync changed.
pub struct FuseSink {
    pub(super) notifier: Notifier,
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
            let name = OsStr::new(&c.name);
            if c.removed {
                self.note(
                    "delete",
                    self.notifier
                        .delete(INodeNo(c.parent), INodeNo(c.ino), name),
                );
                self.note(
                    "inval_entry",
                    self.notifier.inval_entry(INodeNo(c.parent), name),
                );
            } else {
                // A negative dentry (or one of an older version) may be cached for the name.
                self.note(
                    "inval_entry",
                    self.notifier.inval_entry(INodeNo(c.parent), name),
                );
            }
            parents.insert(c.parent);
        }
        // The listing of every touched directory (its cached readdir pages and attributes).
        for p in parents {
            self.note("inval_inode", self.notifier.inval_inode(INodeNo(p), 0, -1));
        }
    }
}
