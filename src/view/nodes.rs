//! The inodes the kernel knows: node id → (parent node, name), with the kernel's lookup count.
//!
//! A node id is the mirror file's own inode number (the root's is swapped with 1, the FUSE root), so
//! numbers are stable across remounts and restarts, a file written in place keeps its inode (and the
//! kernel's page cache of it), and a file the sync engine replaces (a new file renamed over the path)
//! is a new inode, whose readers of the old one keep their version. The generation is the file's birth
//! time, so a reused inode number is a new inode to the kernel too.
//!
//! The table holds only what the kernel holds (a node is added by a lookup, a create or a readdirplus
//! entry and dropped when the kernel forgets it); a node's path is rebuilt from its ancestors, which
//! the kernel keeps while it keeps a child. Renames through the view move the node; a path the engine
//! replaced or removed is noticed when the node's inode is no longer at its path.
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Mutex, MutexGuard};

/// The FUSE root's node id.
pub const ROOT: u64 = 1;

struct Node {
    parent: u64,
    name: Box<[u8]>,
    lookups: u64,
}

/// The node table (see the module doc).
pub struct Nodes {
    /// The mirror root's own inode number (shown as [`ROOT`]).
    root_ino: u64,
    map: Mutex<HashMap<u64, Node>>,
}

impl Nodes {
    pub fn new(root_ino: u64) -> Nodes {
        Nodes {
            root_ino,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Node>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node id of a mirror inode number.
    pub fn id_of(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            ROOT
        } else if ino == ROOT {
            self.root_ino
        } else {
            ino
        }
    }

    /// The kernel learnt of node `id` at `parent`/`name` (one more lookup).
    pub fn remember(&self, id: u64, parent: u64, name: &OsStr) {
        if id == ROOT {
            return;
        }
        let mut m = self.lock();
        let n = m.entry(id).or_insert_with(|| Node {
            parent,
            name: name.as_bytes().into(),
            lookups: 0,
        });
        n.lookups += 1;
        if n.parent != parent || *n.name != *name.as_bytes() {
            // Seen under another name (a hard link, or moved by the engine): the latest one serves.
            n.parent = parent;
            n.name = name.as_bytes().into();
        }
    }

    /// The kernel forgot `nlookup` lookups of `id`.
    pub fn forget(&self, id: u64, nlookup: u64) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(&id) {
            n.lookups = n.lookups.saturating_sub(nlookup);
            if n.lookups == 0 {
                m.remove(&id);
            }
        }
    }

    /// Node `id` was renamed to `parent`/`name` through the view.
    pub fn moved(&self, id: u64, parent: u64, name: &OsStr) {
        if let Some(n) = self.lock().get_mut(&id) {
            n.parent = parent;
            n.name = name.as_bytes().into();
        }
    }

    /// The path of node `id` relative to the mirror root ("" for the root); `None` for a node the
    /// kernel has not told about (or has forgotten).
    pub fn path(&self, id: u64) -> Option<OsString> {
        if id == ROOT {
            return Some(OsString::new());
        }
        let m = self.lock();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = id;
        // A cycle cannot be built through rename(2) (the kernel refuses to move a directory into
        // itself); the bound only protects against a corrupted table.
        for _ in 0..4096 {
            if at == ROOT {
                let mut out = Vec::new();
                for (i, p) in parts.iter().rev().enumerate() {
                    if i > 0 {
                        out.push(b'/');
                    }
                    out.extend_from_slice(p);
                }
                return Some(OsString::from_vec(out));
            }
            let n = m.get(&at)?;
            parts.push(&n.name);
            at = n.parent;
        }
        None
    }

    /// The path of `name` in directory `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> Option<OsString> {
        let mut p = self.path(parent)?;
        if !p.is_empty() {
            p.push("/");
        }
        p.push(name);
        Some(p)
    }

    /// Nodes the kernel holds (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every node id held (to refresh the kernel's attributes when the view's permissions change).
    pub fn ids(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_forgets() {
        let n = Nodes::new(77);
        assert_eq!((n.id_of(77), n.id_of(1), n.id_of(5)), (ROOT, 77, 5));
        assert_eq!(n.id_of(n.id_of(1)), 1, "the mapping is its own inverse");
        n.remember(10, ROOT, OsStr::new("a"));
        n.remember(11, 10, OsStr::new("b.txt"));
        assert_eq!(n.path(11).unwrap(), "a/b.txt");
        assert_eq!(n.child_path(10, OsStr::new("c")).unwrap(), "a/c");
        assert_eq!(n.child_path(ROOT, OsStr::new("c")).unwrap(), "c");
        n.remember(12, ROOT, OsStr::new("z"));
        n.moved(10, 12, OsStr::new("a2"));
        assert_eq!(n.path(11).unwrap(), "z/a2/b.txt");
        n.remember(11, 10, OsStr::new("b.txt"));
        n.forget(11, 1);
        assert_eq!(n.path(11).unwrap(), "z/a2/b.txt");
        n.forget(11, 1);
        assert!(n.path(11).is_none());
        assert_eq!(n.len(), 2);
    }
}
