//! The read-only file system view: answers lookup, getattr, readdir, open/read and statfs from the state
//! database and the local mirror only (no network), with no FUSE types so it can be tested without a
//! kernel. [`crate::view::fuse`] maps fuser calls onto it.
//!
//! Errors are libc errno values (`i32`).
//!
//! Versions: every content version of a file has an inode number of its own (the sync engine inserts a
//! new record for new content and removes the old one), so the bytes behind an inode never change. The
//! view keeps one opened [`Version`] (a `std::fs::File` of the local copy) per inode while the kernel
//! may still read it: while a handle is open ([`MirrorFs::open`] .. [`MirrorFs::release`]) and, for reads
//! that come without a handle (the kernel's zero-message open), from the first read until the kernel
//! forgets the inode ([`MirrorFs::forget`]). The sync engine replaces local files by atomic rename, so an
//! opened `File` keeps the bytes it opened after the path holds a newer version; every reader of one
//! inode reads the same opened file, so the kernel's page cache of an inode holds one version only.
//!
//! Directory offsets: `.` is offset 1, `..` offset 2, and a child has offset `inode + 2`; children come
//! in inode order. Paging needs no per-handle state (`ino > offset - 2`), so the kernel may skip
//! OPENDIR, and an offset stays valid while the directory changes (new entries have larger inodes).
pub use crate::store::db::Kind;
use crate::store::db::{Entry, StateError, StateReader, ROOT_INO};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A libc errno value.
pub type Errno = i32;

/// Block size reported in attributes and statfs.
pub const BLKSIZE: u32 = 4096;
/// Offsets of `.` and `..` in a directory stream; a child's offset is its inode + `CHILD_OFFSET_BASE`.
pub const DOT_OFFSET: u64 = 1;
pub const DOTDOT_OFFSET: u64 = 2;
pub const CHILD_OFFSET_BASE: u64 = 2;
/// Default bound on versions pinned for handle-less reads (each holds a file descriptor).
pub const DEFAULT_MAX_PINNED: usize = 8192;

/// Ownership and permission bits presented for every file and directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of regular files (default 0o444).
    pub file_mode: u16,
    /// Permission bits of directories (default 0o555).
    pub dir_mode: u16,
}

impl Default for FsOptions {
    /// The daemon's effective uid/gid, 0444 files, 0555 directories.
    fn default() -> Self {
        FsOptions {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            file_mode: 0o444,
            dir_mode: 0o555,
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
    /// 512-byte blocks: `ceil(size / 512)`.
    pub blocks: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

/// One entry of a directory page.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    /// The offset to pass back to continue *after* this entry.
    pub offset: u64,
    pub kind: Kind,
    pub name: String,
    /// Path relative to the mirror root.
    pub path: String,
    pub attr: Attr,
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

/// The opened local copy of one inode's content version.
#[derive(Debug)]
pub struct Version {
    pub ino: u64,
    pub file: File,
    /// Size of this version (checked against the record when it was opened).
    pub size: u64,
}

/// One inode with an opened version: how many handles use it, and whether it is pinned for handle-less
/// reads until the kernel forgets the inode.
struct Live {
    version: Arc<Version>,
    handles: u32,
    pinned: bool,
}

#[derive(Default)]
struct Versions {
    live: HashMap<u64, Live>,
    /// Open handle -> its version.
    handles: HashMap<u64, Arc<Version>>,
    /// Pinned inodes, oldest first (may hold inodes unpinned since; skipped when evicting).
    pin_order: VecDeque<u64>,
    pinned: usize,
}

/// READs of at least this size (the kernel's read-ahead) prefetch the window after them.
const PREFETCH_FROM: usize = 256 << 10;

/// The read-only view over a [`StateReader`] and the mirror root.
pub struct MirrorFs {
    readers: Vec<Mutex<StateReader>>,
    next_reader: AtomicUsize,
    root: PathBuf,
    opts: FsOptions,
    versions: Mutex<Versions>,
    max_pinned: AtomicUsize,
    pin_on_entry: AtomicBool,
    next_fh: AtomicU64,
    calls: AtomicU64,
    reads: AtomicU64,
}

impl Versions {
    fn unpin(&mut self, ino: u64) {
        if let Some(l) = self.live.get_mut(&ino) {
            if l.pinned {
                l.pinned = false;
                self.pinned -= 1;
                if l.handles == 0 {
                    self.live.remove(&ino);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A failed database read is an I/O error for the caller; it is logged here, once, with its errno.
fn db_errno(e: StateError) -> Errno {
    tracing::error!(errno = libc::EIO, error = %e, "file system view: state database read failed");
    libc::EIO
}

impl MirrorFs {
    /// A view with one database connection.
    pub fn new(reader: StateReader, root: &Path, opts: FsOptions) -> MirrorFs {
        Self::with_readers(vec![reader], root, opts)
    }

    /// A view with a pool of database connections (one per FUSE worker thread is plenty).
    ///
    /// # Panics
    /// If `readers` is empty.
    pub fn with_readers(readers: Vec<StateReader>, root: &Path, opts: FsOptions) -> MirrorFs {
        assert!(!readers.is_empty(), "MirrorFs needs at least one reader");
        MirrorFs {
            readers: readers.into_iter().map(Mutex::new).collect(),
            next_reader: AtomicUsize::new(0),
            root: root.to_path_buf(),
            opts,
            versions: Mutex::new(Versions::default()),
            max_pinned: AtomicUsize::new(DEFAULT_MAX_PINNED),
            pin_on_entry: AtomicBool::new(false),
            next_fh: AtomicU64::new(1),
            calls: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// Bound the number of versions pinned for handle-less reads (each holds a file descriptor).
    pub fn set_max_pinned(&self, n: usize) {
        self.max_pinned.store(n.max(1), Ordering::Relaxed);
    }

    pub fn options(&self) -> &FsOptions {
        &self.opts
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run `f` with a free database connection (or wait for one); a database error becomes EIO.
    fn db<R>(&self, f: impl FnOnce(&StateReader) -> Result<R, StateError>) -> Result<R, Errno> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(r) = self.readers[(start + i) % n].try_lock() {
                return f(&r).map_err(db_errno);
            }
        }
        f(&lock(&self.readers[start])).map_err(db_errno)
    }

    /// Attributes of a database record.
    pub fn attr_of(&self, e: &Entry) -> Attr {
        let dir = e.kind == Kind::Dir;
        let size = if dir { 0 } else { e.size };
        let mtime = if e.mtime >= 0 {
            UNIX_EPOCH + Duration::from_secs(e.mtime as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(e.mtime.unsigned_abs())
        };
        Attr {
            ino: e.ino,
            generation: e.generation,
            kind: if dir { Kind::Dir } else { Kind::File },
            size,
            blocks: size.div_ceil(512),
            mtime,
            perm: if dir {
                self.opts.dir_mode
            } else {
                self.opts.file_mode
            },
            nlink: if dir { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            blksize: BLKSIZE,
        }
    }

    fn entry(&self, ino: u64) -> Result<Entry, Errno> {
        self.db(|r| r.get(ino))?.ok_or(libc::ENOENT)
    }

    fn dir_entry(&self, ino: u64) -> Result<Entry, Errno> {
        let e = self.entry(ino)?;
        if e.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(e)
    }

    /// Look `name` up in directory `parent`. A name that is not UTF-8 cannot be in the mirror: ENOENT.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let Some(name) = name.to_str() else {
            return Err(libc::ENOENT);
        };
        match name {
            "." => return self.getattr(parent),
            ".." => {
                let p = self.dir_entry(parent)?;
                return self.getattr(if p.ino == ROOT_INO {
                    ROOT_INO
                } else {
                    p.parent
                });
            }
            _ => {}
        }
        if name.is_empty() || name.contains('/') {
            return Err(libc::ENOENT);
        }
        match self.db(|r| r.lookup(parent, name))? {
            Some(e) => {
                if e.kind == Kind::File {
                    self.pin_entry(e.ino, &e.path, e.size);
                }
                Ok(self.attr_of(&e))
            }
            None => {
                // Tell a missing parent or a file parent apart from a missing name.
                self.dir_entry(parent)?;
                Err(libc::ENOENT)
            }
        }
    }

    /// Attributes of `ino`. An inode replaced or deleted since, but still open or pinned, is answered
    /// from its kept version (link count 0, like an unlinked file on a local disk), so `fstat` and
    /// reads to the end of a kept-open old version keep working after the attributes expire.
    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        match self.entry(ino) {
            Ok(e) => Ok(self.attr_of(&e)),
            Err(libc::ENOENT) => {
                let v = lock(&self.versions)
                    .live
                    .get(&ino)
                    .map(|l| l.version.clone())
                    .ok_or(libc::ENOENT)?;
                let mtime = v
                    .file
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH);
                Ok(Attr {
                    ino,
                    generation: 1,
                    kind: Kind::File,
                    size: v.size,
                    blocks: v.size.div_ceil(512),
                    mtime,
                    perm: self.opts.file_mode,
                    nlink: 0,
                    uid: self.opts.uid,
                    gid: self.opts.gid,
                    blksize: BLKSIZE,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `access(2)`: existence and read/execute are allowed; write is EROFS.
    pub fn access(&self, ino: u64, mask: i32) -> Result<(), Errno> {
        let e = self.entry(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(libc::EROFS);
        }
        if mask & libc::X_OK != 0 && e.kind == Kind::File && self.opts.file_mode & 0o111 == 0 {
            return Err(libc::EACCES);
        }
        Ok(())
    }

    /// Open the local copy of inode `ino`'s version. Fails with ESTALE when the inode is no longer the
    /// current version (its record is gone) or the path already holds another version (a replacement
    /// renamed in but not yet committed): the kernel then looks the name up again and opens the new
    /// inode.
    fn open_version(&self, ino: u64) -> Result<Version, Errno> {
        let e = match self.db(|r| r.get(ino))? {
            Some(e) => e,
            None => return Err(libc::ESTALE),
        };
        if e.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.open_local(ino, &e.path, e.size)
    }

    /// Open the local copy at `rel` as version `ino` of `size` bytes.
    fn open_local(&self, ino: u64, rel: &str, size: u64) -> Result<Version, Errno> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.root.join(rel))
            .map_err(|err| match err.raw_os_error() {
                // A symlink planted in the mirror is not ours to follow.
                Some(libc::ELOOP) => libc::EIO,
                // Deleted locally, record not yet committed: this version is gone.
                Some(libc::ENOENT) => libc::ESTALE,
                _ => io_errno(&err),
            })?;
        let meta = file.metadata().map_err(|e| io_errno(&e))?;
        if !meta.is_file() {
            return Err(libc::EIO);
        }
        if meta.size() != size {
            tracing::debug!(
                ino,
                path = rel,
                "local file is another version than the record"
            );
            return Err(libc::ESTALE);
        }
        Ok(Version {
            ino,
            file,
            size: meta.size(),
        })
    }

    /// The live version of `ino`, opening it if needed; the closure updates its bookkeeping.
    fn with_live<R>(&self, ino: u64, f: impl FnOnce(&mut Live) -> R) -> Result<R, Errno> {
        self.with_live_or(ino, || self.open_version(ino), f)
    }

    fn with_live_or<R>(
        &self,
        ino: u64,
        open: impl FnOnce() -> Result<Version, Errno>,
        f: impl FnOnce(&mut Live) -> R,
    ) -> Result<R, Errno> {
        if let Some(l) = lock(&self.versions).live.get_mut(&ino) {
            return Ok(f(l));
        }
        // Open outside the lock (a database read and an open(2)); another thread may win the race, and
        // then its version is used so that one inode never has two opened versions.
        let v = Arc::new(open()?);
        let mut vs = lock(&self.versions);
        let l = vs.live.entry(ino).or_insert(Live {
            version: v,
            handles: 0,
            pinned: false,
        });
        Ok(f(l))
    }

    /// Open file `ino` for reading; returns a handle id and the version it reads. Every handle of one
    /// inode shares one opened version, which stays open until its last handle is released (and, when
    /// pinned, until the kernel forgets the inode) even if the mirror replaces the file meanwhile.
    pub fn open(&self, ino: u64) -> Result<(u64, Arc<Version>), Errno> {
        let v = self.with_live(ino, |l| {
            l.handles += 1;
            l.version.clone()
        })?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.versions).handles.insert(fh, v.clone());
        Ok((fh, v))
    }

    /// Read up to `size` bytes at `offset` of inode `ino` (short only at end of file), through handle
    /// `fh` when there is one (`fh` 0: the kernel opened without telling us; the inode's version is
    /// pinned at its first read and kept until [`MirrorFs::forget`]).
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.read_with(ino, fh, offset, size, <[u8]>::to_vec)
    }

    /// [`MirrorFs::read`] handing the bytes to `reply` from a per-thread buffer that is reused by the
    /// next read of the same thread: no allocation and no zeroing per READ (a read-ahead READ is up to
    /// 1 MiB).
    pub fn read_with<R>(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Errno> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let v = match (fh != 0).then(|| lock(&self.versions).handles.get(&fh).cloned()) {
            Some(Some(v)) => v,
            Some(None) => return Err(libc::EBADF),
            None => self.pinned(ino)?,
        };
        let want = (size as u64).min(v.size.saturating_sub(offset)) as usize;
        BUF.with(|cell| {
            // A reentrant call (none today) gets a buffer of its own instead of a panic.
            let mut own = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let buf: &mut Vec<u8> = match guard.as_mut() {
                Ok(b) => b,
                Err(_) => &mut own,
            };
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let mut got = 0;
            while got < want {
                match v.file.read_at(&mut buf[got..want], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_errno(&e)),
                }
            }
            if got >= PREFETCH_FROM && offset + (got as u64) < v.size {
                // A large READ is the kernel's read-ahead of a sequential reader: start reading the
                // window after it from the mirror's disk now, so the next READ finds it cached.
                let _ = nix::fcntl::posix_fadvise(
                    &v.file,
                    (offset + got as u64) as libc::off_t,
                    (4 * got) as libc::off_t,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                );
            }
            Ok(reply(&buf[..got]))
        })
    }

    /// The version of `ino` pinned for handle-less reads (pinned now if it was not).
    fn pinned(&self, ino: u64) -> Result<Arc<Version>, Errno> {
        self.pin_with(ino, || self.open_version(ino))
    }

    /// Pin the version of an entry the kernel is being told about (a lookup or a readdirplus entry),
    /// when [`MirrorFs::set_pin_on_entry`] is on: with zero-message opens the daemon never hears of an
    /// open, so the version a reader may open later is pinned now, while it is still on disk. Errors are
    /// ignored (a later read opens the path itself).
    pub fn pin_entry(&self, ino: u64, rel: &str, size: u64) {
        if self.pin_on_entry.load(Ordering::Relaxed) {
            let _ = self.pin_with(ino, || self.open_local(ino, rel, size));
        }
    }

    /// Pin versions at lookup and readdirplus (see [`MirrorFs::pin_entry`]).
    pub fn set_pin_on_entry(&self, on: bool) {
        self.pin_on_entry.store(on, Ordering::Relaxed);
    }

    fn pin_with(
        &self,
        ino: u64,
        open: impl FnOnce() -> Result<Version, Errno>,
    ) -> Result<Arc<Version>, Errno> {
        let (v, newly) = self.with_live_or(ino, open, |l| {
            let newly = !l.pinned;
            l.pinned = true;
            (l.version.clone(), newly)
        })?;
        if newly {
            let max = self.max_pinned.load(Ordering::Relaxed);
            let mut vs = lock(&self.versions);
            vs.pin_order.push_back(ino);
            vs.pinned += 1;
            // Over the bound: unpin the oldest. Its kernel pages stay valid; a later read of it reopens
            // the path (and gets ESTALE if the path holds another version by then).
            if vs.pin_order.len() > 2 * max + 64 {
                let Versions {
                    live, pin_order, ..
                } = &mut *vs;
                pin_order.retain(|i| live.get(i).is_some_and(|l| l.pinned));
            }
            while vs.pinned > max {
                let Some(old) = vs.pin_order.pop_front() else {
                    break;
                };
                vs.unpin(old);
            }
        }
        Ok(v)
    }

    /// The kernel forgot inode `ino`: no handle-less read of it can come any more.
    pub fn forget(&self, ino: u64) {
        lock(&self.versions).unpin(ino);
    }

    pub fn release(&self, fh: u64) {
        let mut vs = lock(&self.versions);
        let Some(v) = vs.handles.remove(&fh) else {
            return;
        };
        if let Some(l) = vs.live.get_mut(&v.ino) {
            l.handles = l.handles.saturating_sub(1);
            if l.handles == 0 && !l.pinned {
                vs.live.remove(&v.ino);
            }
        }
    }

    /// Requests that did work in the daemon so far (database reads and data reads), for tests.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Data reads (READ requests) served so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Number of open file handles (for tests and status).
    pub fn open_files(&self) -> usize {
        lock(&self.versions).handles.len()
    }

    /// Number of inodes with an opened version (open handles or pinned).
    pub fn live_versions(&self) -> usize {
        lock(&self.versions).live.len()
    }

    /// Check that `ino` is a directory that can be listed.
    pub fn opendir(&self, ino: u64) -> Result<(), Errno> {
        self.dir_entry(ino).map(|_| ())
    }

    /// Up to `max` entries of directory `ino` after stream offset `offset` (0 = from the start,
    /// including `.` and `..`). An empty page means the end of the directory. Stateless: any offset
    /// returned before may be passed again.
    pub fn readdir(&self, ino: u64, offset: u64, max: usize) -> Result<Vec<DirEntry>, Errno> {
        let dir = self.dir_entry(ino)?;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        if offset < DOT_OFFSET {
            out.push(DirEntry {
                ino: dir.ino,
                offset: DOT_OFFSET,
                kind: Kind::Dir,
                name: ".".into(),
                path: dir.path.clone(),
                attr: self.attr_of(&dir),
            });
        }
        if offset < DOTDOT_OFFSET && out.len() < max {
            let parent = if dir.ino == ROOT_INO {
                dir.clone()
            } else {
                self.entry(dir.parent).unwrap_or_else(|_| dir.clone())
            };
            out.push(DirEntry {
                ino: parent.ino,
                offset: DOTDOT_OFFSET,
                kind: Kind::Dir,
                name: "..".into(),
                path: parent.path.clone(),
                attr: self.attr_of(&parent),
            });
        }
        if out.len() >= max {
            return Ok(out);
        }
        let after = offset.saturating_sub(CHILD_OFFSET_BASE);
        if after > i64::MAX as u64 {
            return Ok(out); // past any inode
        }
        let children = self.db(|r| r.children_by_ino(dir.ino, after, max - out.len()))?;
        out.extend(children.into_iter().map(|c| DirEntry {
            ino: c.ino,
            offset: c.ino + CHILD_OFFSET_BASE,
            kind: c.kind,
            attr: self.attr_of(&c),
            name: c.name,
            path: c.path,
        }));
        Ok(out)
    }

    /// The numbers of the file system holding the local mirror (`statvfs` of its root): size, free and
    /// available blocks, inodes, block size. The view stays read-only whatever they say.
    pub fn statfs(&self) -> Result<StatFs, Errno> {
        let v = nix::sys::statvfs::statvfs(&self.root).map_err(|e| {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{FileMeta, Identity, State};
    use crate::store::LocalStore;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    fn setup(files: &[(&str, &[u8])]) -> (tempfile::TempDir, State, MirrorFs) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mirror");
        let store = LocalStore::open(&root).unwrap();
        let mut st = State::open(
            &dir.path().join("s.db"),
            &Identity {
                base_url: "http://x".into(),
                workspace: "ws".into(),
                remote_root: "/".into(),
                local_dir: root.display().to_string(),
            },
        )
        .unwrap();
        let mut b = st.batch().unwrap();
        for (p, bytes) in files {
            store.write_atomic(p, bytes).unwrap();
            b.upsert_file(
                p,
                &FileMeta {
                    size: bytes.len() as u64,
                    content_hash: Some(format!("h{}", bytes.len())),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        }
        b.commit().unwrap();
        let fs = MirrorFs::new(st.reader().unwrap(), store.root(), FsOptions::default());
        (dir, st, fs)
    }

    #[test]
    fn lookup_getattr_read() {
        let (_d, _st, fs) = setup(&[("a/b.txt", b"hello"), ("e", b"")]);
        let a = fs.lookup(ROOT_INO, OsStr::new("a")).unwrap();
        assert_eq!((a.kind, a.perm, a.nlink), (Kind::Dir, 0o555, 2));
        let b = fs.lookup(a.ino, OsStr::new("b.txt")).unwrap();
        assert_eq!(
            (b.kind, b.size, b.blocks, b.perm),
            (Kind::File, 5, 1, 0o444)
        );
        assert_eq!(fs.getattr(b.ino).unwrap(), b);
        assert_eq!(
            fs.lookup(ROOT_INO, OsStr::new("nope")).unwrap_err(),
            libc::ENOENT
        );
        assert_eq!(
            fs.lookup(b.ino, OsStr::new("x")).unwrap_err(),
            libc::ENOTDIR
        );
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        assert_eq!(fs.lookup(ROOT_INO, &bad).unwrap_err(), libc::ENOENT);
        let (fh, _) = fs.open(b.ino).unwrap();
        assert_eq!(fs.read(b.ino, fh, 0, 100).unwrap(), b"hello");
        assert_eq!(fs.read(b.ino, fh, 2, 2).unwrap(), b"ll");
        assert_eq!(fs.read(b.ino, fh, 10, 2).unwrap(), b"");
        fs.release(fh);
        assert_eq!(fs.read(b.ino, fh, 0, 1).unwrap_err(), libc::EBADF);
        assert_eq!(fs.live_versions(), 0);
        // A handle-less read pins the version until the kernel forgets the inode.
        assert_eq!(fs.read(b.ino, 0, 0, 100).unwrap(), b"hello");
        assert_eq!(fs.live_versions(), 1);
        fs.forget(b.ino);
        assert_eq!(fs.live_versions(), 0);
        assert_eq!(fs.open(a.ino).unwrap_err(), libc::EISDIR);
        assert_eq!(fs.access(b.ino, libc::W_OK).unwrap_err(), libc::EROFS);
        fs.access(b.ino, libc::R_OK).unwrap();
        let s = fs.statfs().unwrap();
        let v = nix::sys::statvfs::statvfs(&fs.root).unwrap();
        assert_eq!((s.blocks, s.files), (v.blocks(), v.files()));
        assert_eq!(
            (s.bsize, s.frsize),
            (v.block_size() as u32, v.fragment_size() as u32)
        );
        assert!(
            s.blocks > 0 && s.bavail <= s.bfree && s.bfree <= s.blocks,
            "{s:?}"
        );
    }

    #[test]
    fn a_version_outlives_its_replacement() {
        let (d, mut st, fs) = setup(&[("f", b"old bytes")]);
        let store = LocalStore::open(&d.path().join("mirror")).unwrap();
        let old = fs.lookup(ROOT_INO, OsStr::new("f")).unwrap();
        let (fh, _) = fs.open(old.ino).unwrap();
        assert_eq!(fs.read(old.ino, 0, 0, 3).unwrap(), b"old"); // pinned
                                                                // Replaced: the path holds the new bytes before the record is committed.
        store.write_atomic("f", b"new!").unwrap();
        let mut b = st.batch().unwrap();
        let ino = b
            .upsert_file(
                "f",
                &FileMeta {
                    size: 4,
                    content_hash: Some("h4".into()),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        let changes = b.commit().unwrap();
        assert_ne!(ino, old.ino, "a new content version is a new inode");
        assert_eq!(changes.len(), 2);
        assert!(changes[0].removed && changes[0].ino == old.ino);
        assert!(!changes[1].removed && changes[1].ino == ino);
        // The open handle and the pinned inode keep the old bytes; the new inode has the new ones.
        assert_eq!(fs.read(old.ino, fh, 0, 100).unwrap(), b"old bytes");
        assert_eq!(fs.read(old.ino, 0, 4, 100).unwrap(), b"bytes");
        let kept = fs.getattr(old.ino).unwrap();
        assert_eq!(
            (kept.size, kept.nlink),
            (9, 0),
            "a kept version answers getattr"
        );
        assert_eq!(fs.lookup(ROOT_INO, OsStr::new("f")).unwrap().ino, ino);
        assert_eq!(fs.read(ino, 0, 0, 100).unwrap(), b"new!");
        // Once forgotten and released, the old inode cannot be opened again: ESTALE.
        fs.release(fh);
        fs.forget(old.ino);
        assert_eq!(fs.open(old.ino).unwrap_err(), libc::ESTALE);
        assert_eq!(fs.read(old.ino, 0, 0, 1).unwrap_err(), libc::ESTALE);
        // A path that holds another version than its record (renamed in, not yet committed): ESTALE.
        store.write_atomic("f", b"newer, longer").unwrap();
        fs.forget(ino);
        assert_eq!(fs.open(ino).unwrap_err(), libc::ESTALE);
    }

    #[test]
    fn pins_are_bounded() {
        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let (_d, _st, fs) = setup(&files);
        fs.set_max_pinned(3);
        for _ in 0..50 {
            for n in &names {
                let a = fs.lookup(ROOT_INO, OsStr::new(n)).unwrap();
                assert_eq!(fs.read(a.ino, 0, 0, 10).unwrap(), b"x");
                if n.ends_with('5') {
                    fs.forget(a.ino);
                }
            }
        }
        assert!(fs.live_versions() <= 3);
        assert!(lock(&fs.versions).pin_order.len() <= 2 * 3 + 64 + 1);
    }

    #[test]
    fn readdir_pages_and_repeats() {
        let names: Vec<String> = (0..700).map(|i| format!("d/f{i:04}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let (_d, _st, fs) = setup(&files);
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        fs.opendir(d.ino).unwrap();
        // Tiny pages: 0..10 entries each, like the reference tests of mountpoint-s3.
        let mut all = Vec::new();
        let mut offsets = Vec::new();
        let mut off = 0;
        let mut step = 0usize;
        loop {
            assert!(fs.readdir(d.ino, off, 0).unwrap().is_empty());
            let page = fs.readdir(d.ino, off, step % 10 + 1).unwrap();
            step += 1;
            if page.is_empty() {
                break;
            }
            if let Some(last) = page.last() {
                off = last.offset;
            }
            for e in page {
                offsets.push(e.offset);
                all.push(e.name);
            }
        }
        assert_eq!(all.len(), 702);
        assert_eq!(&all[..3], &[".", "..", "f0000"]); // inode order = insertion order here
        let mut sorted = all[2..].to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 700);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        // Any offset returned before is answered again, from the entry after it.
        let again = fs.readdir(d.ino, offsets[300], 2).unwrap();
        assert_eq!(again[0].name, all[301]);
        assert_eq!(again[0].offset, offsets[301]);
        assert_eq!(fs.readdir(d.ino, offsets[4], 1).unwrap()[0].name, all[5]);
        assert!(fs.readdir(d.ino, offsets[701], 5).unwrap().is_empty());
        assert!(fs.readdir(d.ino, u64::MAX - 8, 5).unwrap().is_empty());
        assert_eq!(
            fs.opendir(fs.lookup(d.ino, OsStr::new("f0001")).unwrap().ino)
                .unwrap_err(),
            libc::ENOTDIR
        );
    }
}
