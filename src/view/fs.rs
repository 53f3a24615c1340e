//! The file system view over the mirror directory: the core the FUSE adapter maps requests onto, with
//! no FUSE types so it can be tested without a kernel. Errors are libc errno values (`i32`).
//!
//! The view serves the mirror's own files: a node is a mirror inode ([`super::nodes`]), its attributes
//! are the file's, and data is read from and written to the mirror file itself (no copy, any size, flat
//! daemon memory). Hidden: mountd's `.mountd/` directory at the root, and anything that is neither a
//! regular file nor a directory.
//!
//! * **Read-only** (`pull-only`): every call that would modify answers `EROFS`; files and directories
//!   show the configured modes (0444 / 0555).
//! * **Writable** (`mirror`): creates, writes, truncates, renames, deletes, mkdir/rmdir, utimens and
//!   chmod act on the mirror directory (modes are kept locally: the remote has none), and every change
//!   is handed to the push side ([`LocalChanges`]): written paths when they settle, and at once on
//!   `fsync` (and on close where the kernel tells the view of it). Symlinks, hard links, devices,
//!   FIFOs and sockets answer `EPERM` (the remote cannot hold them), xattrs `EOPNOTSUPP`. With a token
//!   that may not write, writes answer `EACCES` and the modes shown lose their write bits.
//!
//! Versions (see [`super::files`]): a file the sync engine replaces is a new inode, so a reader of the
//! old one keeps reading the bytes it opened.
//!
//! Directory offsets are the mirror file system's own cookies (`d_off`), valid for any later listing
//! of the same directory, so the kernel may page listings without OPENDIR.
use super::files::Files;
use super::nodes::{Nodes, ROOT};
use super::sys::{self, Stat};
use crate::store::change::{LocalChanges, Touch};
pub use crate::store::db::Kind;
use crate::store::paths::RESERVED_DIR;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// A libc errno value.
pub type Errno = i32;

/// Block size reported in attributes and statfs.
pub const BLKSIZE: u32 = 4096;
/// Default bound on versions pinned for handle-less reads (each holds a file descriptor).
pub const DEFAULT_MAX_PINNED: usize = 8192;

/// Ownership and permission bits presented, and whether the view may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    /// Owner shown for what the daemon owns (and given to the daemon's files created through the view).
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of regular files in a read-only view (default 0o444).
    pub file_mode: u16,
    /// Permission bits of directories in a read-only view (default 0o555).
    pub dir_mode: u16,
    /// Writable view (`mirror` mode): the files' own modes are shown and kept.
    pub writable: bool,
}

impl Default for FsOptions {
    /// The daemon's effective uid/gid, 0444 files, 0555 directories, read-only.
    fn default() -> Self {
        FsOptions {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            file_mode: 0o444,
            dir_mode: 0o555,
            writable: false,
        }
    }
}

/// Attributes of one inode, as the kernel is told them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub generation: u64,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    /// The offset to pass back to continue *after* this entry.
    pub offset: u64,
    pub kind: Kind,
    pub name: OsString,
    /// Attributes (read for `readdirplus` listings only; `None` for plain ones).
    pub attr: Option<Attr>,
}

/// File system statistics (`statfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Who makes a request (creates are owned by them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

pub(super) fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The view over the mirror root.
pub struct MirrorFs {
    pub(super) root: PathBuf,
    pub(super) root_fd: OwnedFd,
    pub(super) nodes: Nodes,
    pub(super) files: Files,
    pub(super) opts: FsOptions,
    pub(super) changes: Option<Arc<dyn LocalChanges>>,
    /// The daemon's effective uid and gid (files it owns are shown as `opts.uid`/`opts.gid`).
    pub(super) euid: u32,
    pub(super) egid: u32,
    pub(super) root_user: bool,
    /// The daemon's umask (the bits its `open(O_CREAT)` takes off a new file's mode).
    pub(super) umask: u32,
    /// The kernel left dropping set-ID bits to the view (see `MirrorFs::drop_privs`).
    pub(super) kill_privs: AtomicBool,
    pub(super) calls: AtomicU64,
    refusal_logged: AtomicBool,
}

impl MirrorFs {
    /// The view of the mirror at `root`; local changes go to `changes` (a writable view needs one).
    pub fn new(
        root: &Path,
        opts: FsOptions,
        changes: Option<Arc<dyn LocalChanges>>,
    ) -> std::io::Result<MirrorFs> {
        let root_fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)?;
        let root_fd = OwnedFd::from(root_fd);
        let st = sys::fstat(root_fd.as_fd())?;
        let euid = nix::unistd::geteuid().as_raw();
        Ok(MirrorFs {
            root: root.to_path_buf(),
            nodes: Nodes::new(st.ino),
            files: Files::default(),
            opts: FsOptions {
                writable: opts.writable && changes.is_some(),
                ..opts
            },
            changes,
            euid,
            egid: nix::unistd::getegid().as_raw(),
            root_user: euid == 0,
            umask: sys::umask(),
            kill_privs: AtomicBool::new(false),
            root_fd,
            calls: AtomicU64::new(0),
            refusal_logged: AtomicBool::new(false),
        })
    }

    pub fn options(&self) -> &FsOptions {
        &self.opts
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Requests that did work in the daemon so far (for tests).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Nodes the kernel holds.
    pub fn known_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The node ids the kernel holds (the root included).
    pub fn known_ids(&self) -> Vec<u64> {
        let mut ids = self.nodes.ids();
        ids.push(super::nodes::ROOT);
        ids
    }

    pub(super) fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The path of node `id` (ESTALE for one the kernel never told about).
    pub(super) fn path_of(&self, id: u64) -> Result<OsString, Errno> {
        self.nodes.path(id).ok_or(libc::ESTALE)
    }

    /// Drop set-ID bits on writes, truncations and chowns (`FUSE_HANDLE_KILLPRIV` granted: the
    /// kernel no longer does it).
    pub fn set_kill_privs(&self, on: bool) {
        self.kill_privs.store(on, Ordering::Relaxed);
    }

    /// The mode `st` should have after a write, truncation or chown, when the view drops set-ID
    /// bits and there are some to drop.
    pub(super) fn privs_dropped(&self, st: &Stat) -> Option<u32> {
        if !self.kill_privs.load(Ordering::Relaxed) {
            return None;
        }
        sys::privs_dropped(st)
    }

    /// `statx` of `rel` (relative to the root).
    pub(super) fn stat_rel(&self, rel: &OsStr) -> Result<Stat, Errno> {
        sys::statx(self.root_fd.as_fd(), rel).map_err(|e| io_errno(&e))
    }

    /// Whether `name` in directory `parent` is hidden from the view (`.mountd` at the root).
    pub(super) fn hidden(parent: u64, name: &[u8]) -> bool {
        parent == ROOT && name == RESERVED_DIR.as_bytes()
    }

    /// The attributes of a mirror file as the view shows them.
    pub(super) fn attr_of(&self, st: &Stat) -> Attr {
        let dir = st.is_dir();
        let mut perm = if self.opts.writable {
            (st.mode & 0o7777) as u16
        } else if dir {
            self.opts.dir_mode
        } else {
            self.opts.file_mode
        };
        if self.opts.writable && self.refused().is_some() {
            perm &= !0o222;
        }
        Attr {
            ino: self.nodes.id_of(st.ino),
            generation: st.generation,
            kind: if dir { Kind::Dir } else { Kind::File },
            size: if dir { 0 } else { st.size },
            blocks: if dir { 0 } else { st.blocks },
            atime: st.atime,
            mtime: st.mtime,
            ctime: st.ctime,
            perm,
            nlink: if self.opts.writable {
                st.nlink
            } else if dir {
                2
            } else {
                st.nlink.min(1)
            },
            uid: if st.uid == self.euid {
                self.opts.uid
            } else {
                st.uid
            },
            gid: if st.gid == self.egid {
                self.opts.gid
            } else {
                st.gid
            },
            blksize: BLKSIZE,
        }
    }

    /// The mirror owner for a shown owner (the inverse of [`MirrorFs::attr_of`]'s mapping).
    pub(super) fn backing_ids(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> (Option<u32>, Option<u32>) {
        (
            uid.map(|u| if u == self.opts.uid { self.euid } else { u }),
            gid.map(|g| if g == self.opts.gid { self.egid } else { g }),
        )
    }

    /// Why writes are refused, if they are (a token that may not write); logged once.
    pub fn refused(&self) -> Option<String> {
        let why = self.changes.as_ref()?.refused()?;
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(reason = %why, "file system view: writes are refused with EACCES (the token may not write)");
        }
        Some(why)
    }

    /// Check that the view may be written (EROFS when read-only, EACCES when refused).
    pub(super) fn writable(&self) -> Result<&Arc<dyn LocalChanges>, Errno> {
        let Some(c) = self.changes.as_ref().filter(|_| self.opts.writable) else {
            return Err(libc::EROFS);
        };
        if self.refused().is_some() {
            return Err(libc::EACCES);
        }
        Ok(c)
    }

    /// Tell the push side that `rel` changed (names that are not UTF-8 go as their directory: the
    /// detection there notes them as impossible to push).
    pub(super) fn touch(&self, rel: &OsStr, how: Touch) {
        let Some(c) = self.changes.as_ref() else {
            return;
        };
        match rel.to_str() {
            Some(s) => c.touched(s, how),
            None => {
                let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
                c.touched(&parent.to_string_lossy(), Touch::Settled);
            }
        }
    }

    /// Look `name` up in directory `parent`; the kernel then holds one more lookup of the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.count();
        if name.as_bytes().contains(&b'/') || name.is_empty() {
            return Err(libc::ENOENT);
        }
        if name == "." {
            return self.getattr(parent);
        }
        if Self::hidden(parent, name.as_bytes()) {
            return Err(libc::ENOENT);
        }
        let rel = self.nodes.child_path(parent, name).ok_or(libc::ESTALE)?;
        // A parent that is no longer a directory answers ENOTDIR from the walk itself.
        let st = self.stat_rel(&rel)?;
        if !(st.is_file() || st.is_dir()) {
            return Err(libc::ENOENT);
        }
        let a = self.attr_of(&st);
        self.nodes.remember(a.ino, parent, name);
        if a.kind == Kind::File {
            self.files.pin_entry(self, a.ino, &rel);
        }
        Ok(a)
    }

    /// The kernel forgot `nlookup` lookups of `id`.
    pub fn forget(&self, id: u64, nlookup: u64) {
        self.nodes.forget(id, nlookup);
        self.files.forget(id);
    }

    /// Attributes of node `id`. A file replaced or deleted since, but still open or pinned, is
    /// answered from its kept version (with its real link count, 0), so `fstat` and reads to the end of
    /// an old version keep working.
    pub fn getattr(&self, id: u64) -> Result<Attr, Errno> {
        self.count();
        let here = self
            .nodes
            .path(id)
            .and_then(|rel| self.stat_rel(&rel).ok())
            .filter(|st| self.nodes.id_of(st.ino) == id && (st.is_file() || st.is_dir()));
        match here {
            Some(st) => Ok(self.attr_of(&st)),
            None => {
                let f = self.files.kept(id).ok_or(libc::ENOENT)?;
                let st = sys::fstat(f.file.as_fd()).map_err(|e| io_errno(&e))?;
                Ok(self.attr_of(&st))
            }
        }
    }

    /// `access(2)` (the kernel checks modes itself with `default_permissions`; this answers EROFS for
    /// write access to a read-only view).
    pub fn access(&self, id: u64, mask: i32) -> Result<(), Errno> {
        let a = self.getattr(id)?;
        if mask & libc::W_OK != 0 {
            self.writable()?;
        }
        if mask & libc::X_OK != 0 && a.kind == Kind::File && a.perm & 0o111 == 0 {
            return Err(libc::EACCES);
        }
        Ok(())
    }

    /// Check that `id` is a directory that can be listed.
    pub fn opendir(&self, id: u64) -> Result<(), Errno> {
        match self.getattr(id)?.kind {
            Kind::Dir => Ok(()),
            Kind::File => Err(libc::ENOTDIR),
        }
    }

    /// List directory `id` from `offset` (0 = the start, else an entry's offset), handing each entry
    /// to `add` until it answers `true` (the reply is full; that entry was not taken). With `plus`,
    /// entries carry their attributes and each one taken (but `.` and `..`) counts as a lookup.
    pub fn readdir(
        &self,
        id: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<(), Errno> {
        self.count();
        let rel = self.path_of(id)?;
        let dir = sys::open_beneath(
            self.root_fd.as_fd(),
            &rel,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        )
        .map_err(|e| io_errno(&e))?;
        if self
            .nodes
            .id_of(sys::fstat(dir.as_fd()).map_err(|e| io_errno(&e))?.ino)
            != id
        {
            return Err(libc::ENOENT);
        }
        let mut failed = None;
        sys::read_dir_at(&dir, offset as i64, |raw| {
            let name = OsStr::from_bytes(&raw.name);
            let dots = raw.name == b"." || raw.name == b"..";
            if Self::hidden(id, &raw.name) {
                return true;
            }
            let st = if plus || raw.dtype == libc::DT_UNKNOWN || dots {
                match sys::statx(dir.as_fd(), name) {
                    Ok(st) => Some(st),
                    Err(_) => return true, // gone meanwhile
                }
            } else {
                None
            };
            let kind = match (raw.dtype, &st) {
                (libc::DT_DIR, _) => Kind::Dir,
                (libc::DT_REG, _) => Kind::File,
                (_, Some(st)) if st.is_dir() => Kind::Dir,
                (_, Some(st)) if st.is_file() => Kind::File,
                _ => return true, // not something the view shows
            };
            let ino = match (&raw.name[..], id) {
                (b"..", ROOT) | (b".", ROOT) => ROOT,
                _ => self.nodes.id_of(st.as_ref().map_or(raw.ino, |s| s.ino)),
            };
            let e = DirEntry {
                ino,
                offset: raw.next as u64,
                kind,
                name: name.to_os_string(),
                attr: st.filter(|_| plus).map(|s| Attr {
                    ino,
                    ..self.attr_of(&s)
                }),
            };
            if add(&e) {
                return false;
            }
            if plus && !dots {
                self.nodes.remember(ino, id, name);
                if kind == Kind::File {
                    let mut p = rel.clone();
                    if !p.is_empty() {
                        p.push("/");
                    }
                    p.push(name);
                    self.files.pin_entry(self, ino, &p);
                }
            }
            true
        })
        .map_err(|e| failed = Some(io_errno(&e)))
        .ok();
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The numbers of the file system holding the mirror (`statvfs` of its root).
    pub fn statfs(&self) -> Result<StatFs, Errno> {
        let v = nix::sys::statvfs::fstatvfs(&self.root_fd).map_err(|e| {
            tracing::warn!(root = %self.root.display(), error = %e, "statfs: statvfs of the mirror failed");
            e as Errno
        })?;
        Ok(StatFs {
            blocks: v.blocks(),
            bfree: v.blocks_free(),
            bavail: v.blocks_available(),
            files: v.files(),
            ffree: v.files_free(),
            bsize: v.block_size() as u32,
            namelen: v.name_max().min(255) as u32,
            frsize: v.fragment_size() as u32,
        })
    }

    /// The node id of the regular file at `rel`, for cache invalidation.
    pub fn file_id(&self, rel: &str) -> Option<u64> {
        let st = self.stat_rel(OsStr::new(rel)).ok()?;
        st.is_file().then(|| self.nodes.id_of(st.ino))
    }

    /// The node id of the directory at `rel` ("" = the root), for cache invalidation.
    pub fn dir_id(&self, rel: &str) -> Option<u64> {
        let st = self.stat_rel(OsStr::new(rel)).ok()?;
        st.is_dir().then(|| self.nodes.id_of(st.ino))
    }
}
