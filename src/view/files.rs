//! Open files of the view: one opened mirror file per inode (a [`Version`]) while the kernel may use
//! it, reads and writes on it, and what closing and syncing a written file means.
//!
//! A version stays open while a handle is open (open .. release) and, for I/O that comes without a
//! handle (the kernel's zero-message open, and the writeback cache), from its first use until the
//! kernel forgets the inode (bounded: the oldest pinned versions are closed first). The sync engine
//! replaces files by atomic rename, so an opened version keeps the bytes it opened after the path holds
//! a newer one; every user of one inode shares one opened file, so the kernel's page cache of an inode
//! is the one file's. In a writable view versions are opened read-write: writes go to the mirror file
//! itself.
//!
//! Closing and syncing: a written path is handed to the push side as it is written and when its
//! handle is released; `fsync` makes the file durable on the mirror's disk and records the change in
//! the outbox before it returns (and, with `--fsync-push`, waits for the remote's answer: EIO when the
//! push failed). Where the kernel sends FLUSH (the modes with an OPEN per open(2)), `close` records it
//! too.
use super::fs::{io_errno, Errno, MirrorFs};
use super::sys;
use crate::store::change::Touch;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The opened mirror file of one inode.
#[derive(Debug)]
pub struct Version {
    pub ino: u64,
    pub file: File,
    /// Opened read-write (a writable view; a file the daemon may not write is opened read-only).
    pub writable: bool,
    /// When this version last told the push side it is being written (ms since the view started).
    pub(super) touched_ms: AtomicU64,
}

/// One open handle.
struct Handle {
    version: Arc<Version>,
    write: bool,
    wrote: AtomicBool,
}

/// One inode with an opened version: its handles, and whether it is pinned for handle-less I/O.
struct Live {
    version: Arc<Version>,
    handles: u32,
    pinned: bool,
}

#[derive(Default)]
struct Table {
    /// Inodes deleted (or replaced by a rename) through the view: still writable while open.
    unlinked: std::collections::HashSet<u64>,
    live: HashMap<u64, Live>,
    handles: HashMap<u64, Arc<Handle>>,
    /// Pinned inodes, oldest first (may hold inodes unpinned since; skipped when evicting).
    pin_order: VecDeque<u64>,
    pinned: usize,
}

impl Table {
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

/// The open-file table (see the module doc).
pub struct Files {
    table: Mutex<Table>,
    max_pinned: AtomicUsize,
    pin_on_entry: AtomicBool,
    next_fh: AtomicU64,
    reads: AtomicU64,
    started: Instant,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            table: Mutex::new(Table::default()),
            max_pinned: AtomicUsize::new(super::fs::DEFAULT_MAX_PINNED),
            pin_on_entry: AtomicBool::new(false),
            next_fh: AtomicU64::new(1),
            reads: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

/// READs of at least this size (the kernel's read-ahead) prefetch the window after them.
const PREFETCH_FROM: usize = 256 << 10;
/// A file being written tells the push side again at most this often.
const TOUCH_EVERY_MS: u64 = 50;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Files {
    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// The kept version of `ino`, if one is open or pinned.
    pub fn kept(&self, ino: u64) -> Option<Arc<Version>> {
        self.table().live.get(&ino).map(|l| l.version.clone())
    }

    /// Pin versions when the kernel learns of a file (zero-message opens: the daemon never hears of
    /// an open, so the version a reader may open later is pinned while it is still on disk).
    pub fn set_pin_on_entry(&self, on: bool) {
        self.pin_on_entry.store(on, Ordering::Relaxed);
    }

    /// Bound the number of versions pinned for handle-less I/O (each holds a file descriptor).
    pub fn set_max_pinned(&self, n: usize) {
        self.max_pinned.store(n.max(1), Ordering::Relaxed);
    }

    pub(super) fn pin_entry(&self, fs: &MirrorFs, ino: u64, rel: &OsString) {
        if self.pin_on_entry.load(Ordering::Relaxed) {
            let _ = self.pin_with(ino, || fs.open_version(ino, Some(rel)));
        }
    }

    fn with_live_or<R>(
        &self,
        ino: u64,
        open: impl FnOnce() -> Result<Version, Errno>,
        f: impl FnOnce(&mut Live) -> R,
    ) -> Result<R, Errno> {
        if let Some(l) = self.table().live.get_mut(&ino) {
            return Ok(f(l));
        }
        // Open outside the lock; another thread may win the race, and then its version is used so
        // that one inode never has two opened versions.
        let v = Arc::new(open()?);
        let mut t = self.table();
        let l = t.live.entry(ino).or_insert(Live {
            version: v,
            handles: 0,
            pinned: false,
        });
        Ok(f(l))
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
            let mut t = self.table();
            t.pin_order.push_back(ino);
            t.pinned += 1;
            if t.pin_order.len() > 2 * max + 64 {
                let Table {
                    live, pin_order, ..
                } = &mut *t;
                pin_order.retain(|i| live.get(i).is_some_and(|l| l.pinned));
            }
            while t.pinned > max {
                let Some(old) = t.pin_order.pop_front() else {
                    break;
                };
                t.unpin(old);
            }
        }
        Ok(v)
    }

    /// Pin a just-created file's version (handle-less I/O: the kernel sends no RELEASE once opens are
    /// message-free, so a handle would never be released).
    pub(super) fn pin_created(&self, v: Version) -> Result<Arc<Version>, Errno> {
        self.pin_with(v.ino, || Ok(v))
    }

    /// The kernel forgot inode `ino`: no handle-less I/O of it can come any more.
    pub fn forget(&self, ino: u64) {
        let mut t = self.table();
        t.unpin(ino);
        t.unlinked.remove(&ino);
    }

    /// Inode `ino` is being deleted (or replaced by a rename) through the view.
    pub fn unlinking(&self, ino: u64) {
        self.table().unlinked.insert(ino);
    }

    fn unlinked_here(&self, ino: u64) -> bool {
        self.table().unlinked.contains(&ino)
    }

    /// Number of open file handles.
    pub fn open_files(&self) -> usize {
        self.table().handles.len()
    }

    /// Number of inodes with an opened version (open handles or pinned).
    pub fn live_versions(&self) -> usize {
        self.table().live.len()
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.table().handles.get(&fh).cloned()
    }

    fn add_handle(&self, v: Arc<Version>, write: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.table().handles.insert(
            fh,
            Arc::new(Handle {
                version: v,
                write,
                // Writes through a passthrough handle never reach the daemon: a handle opened for
                // writing counts as written (recording an unchanged file costs a `stat`).
                wrote: AtomicBool::new(write),
            }),
        );
        fh
    }
}

impl MirrorFs {
    /// Open the mirror file of node `ino` (at `rel`, or at the node's path) as its version. ESTALE when
    /// the path holds another inode by now (the kernel then looks the name up again).
    pub(super) fn open_version(&self, ino: u64, rel: Option<&OsString>) -> Result<Version, Errno> {
        let rel = match rel {
            Some(r) => r.clone(),
            None => self.path_of(ino)?,
        };
        let open = |flags| sys::open_beneath(self.root_fd.as_fd(), &rel, flags);
        let ro = nix::fcntl::OFlag::O_RDONLY;
        let rw = nix::fcntl::OFlag::O_RDWR;
        let (fd, writable) = if self.opts.writable {
            match open(rw) {
                Ok(fd) => (Ok(fd), true),
                // A file the daemon may not write (not root, mode without the owner's w bit).
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => (open(ro), false),
                Err(e) => (Err(e), true),
            }
        } else {
            (open(ro), false)
        };
        let fd = fd.map_err(|err| match err.raw_os_error() {
            // A symlink planted in the mirror is not ours to follow.
            Some(libc::ELOOP) | Some(libc::EXDEV) => libc::EIO,
            // Deleted or replaced, not yet known to the kernel: this version is gone.
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => libc::ESTALE,
            Some(libc::EISDIR) => libc::EISDIR,
            _ => io_errno(&err),
        })?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| io_errno(&e))?;
        if st.is_dir() {
            return Err(libc::EISDIR);
        }
        if !st.is_file() {
            return Err(libc::EIO);
        }
        if self.nodes.id_of(st.ino) != ino {
            tracing::debug!(ino, path = ?rel, "the path holds another version than the node");
            return Err(libc::ESTALE);
        }
        Ok(Version {
            ino,
            file: File::from(fd),
            writable,
            touched_ms: AtomicU64::new(0),
        })
    }

    /// Open file `ino`; returns a handle id and its version. `write`: opened for writing (checked by
    /// the caller's open flags). Every handle of one inode shares one opened version.
    pub fn open(&self, ino: u64, write: bool) -> Result<(u64, Arc<Version>), Errno> {
        self.count();
        if write {
            self.writable()?;
        }
        let v = self.files.with_live_or(
            ino,
            || self.open_version(ino, None),
            |l| {
                l.handles += 1;
                l.version.clone()
            },
        )?;
        if write && !v.writable {
            self.release_version(&v);
            return Err(libc::EACCES);
        }
        let fh = self.files.add_handle(v.clone(), write);
        Ok((fh, v))
    }

    /// A created file's first handle (the version is the file just created).
    pub(super) fn open_created(&self, v: Version) -> (u64, Arc<Version>) {
        let ino = v.ino;
        let v = self
            .files
            .with_live_or(
                ino,
                || Ok(v),
                |l| {
                    l.handles += 1;
                    l.version.clone()
                },
            )
            .expect("an opened version");
        // A handle opened for writing counts as written (see `add_handle`).
        let fh = self.files.add_handle(v.clone(), true);
        (fh, v)
    }

    fn release_version(&self, v: &Arc<Version>) {
        let mut t = self.files.table();
        if let Some(l) = t.live.get_mut(&v.ino) {
            l.handles = l.handles.saturating_sub(1);
            if l.handles == 0 && !l.pinned {
                t.live.remove(&v.ino);
            }
        }
    }

    /// The version for I/O on `ino`: through handle `fh`, or (fh 0: the kernel opened without telling)
    /// the version pinned at the inode's first use.
    fn version_for(&self, ino: u64, fh: u64) -> Result<(Arc<Version>, Option<Arc<Handle>>), Errno> {
        if fh != 0 {
            let h = self.files.handle(fh).ok_or(libc::EBADF)?;
            return Ok((h.version.clone(), Some(h)));
        }
        let v = self.files.pin_with(ino, || self.open_version(ino, None))?;
        Ok((v, None))
    }

    /// Read up to `size` bytes at `offset` of inode `ino` (short only at end of file).
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.read_with(ino, fh, offset, size, <[u8]>::to_vec)
    }

    /// [`MirrorFs::read`] handing the bytes to `reply` from a per-thread buffer reused by the next read
    /// of the same thread (a read-ahead READ is up to 1 MiB: no allocation and no zeroing per READ).
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
        self.count();
        self.files.reads.fetch_add(1, Ordering::Relaxed);
        let (v, _) = self.version_for(ino, fh)?;
        let want = size as usize;
        BUF.with(|cell| {
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
            if got >= PREFETCH_FROM && got == want {
                // A large READ is the kernel's read-ahead of a sequential reader: start reading the
                // window after it from the mirror's disk now.
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

    /// Write `data` at `offset` of inode `ino` (through handle `fh`, or the pinned version).
    pub fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.count();
        self.writable()?;
        let (v, h) = self.version_for(ino, fh)?;
        if !v.writable {
            return Err(libc::EACCES);
        }
        let st = self.check_current(&v)?;
        v.file
            .write_all_at(data, offset)
            .map_err(|e| io_errno(&e))?;
        self.drop_privs(v.file.as_fd(), &st)?;
        if let Some(h) = h {
            h.wrote.store(true, Ordering::Relaxed);
        }
        self.written(&v);
        Ok(data.len() as u32)
    }

    /// A version the sync replaced (or deleted) under a writer takes no more writes: they would go to a
    /// file no longer in the mirror and be lost silently. The writer gets ESTALE (with the writeback
    /// cache, from `fsync`/`close`). A file deleted through the view stays writable while open, as on
    /// a local disk. Returns the version's attributes.
    pub(super) fn check_current(&self, v: &Version) -> Result<sys::Stat, Errno> {
        let st = sys::fstat(v.file.as_fd()).map_err(|e| io_errno(&e))?;
        if st.nlink == 0 && !self.files.unlinked_here(v.ino) {
            tracing::warn!(
                ino = v.ino,
                "a write to a file the sync replaced meanwhile was refused (ESTALE)"
            );
            return Err(libc::ESTALE);
        }
        Ok(st)
    }

    /// Writing, truncating or giving away a file drops its set-user-ID bit, and the set-group-ID bit
    /// of a group-executable file, as a local file system does for a caller without `CAP_FSETID`.
    /// Where the kernel leaves that to the view (`FUSE_HANDLE_KILLPRIV`, which spares `tar` a
    /// GETATTR before every `fchown`), the view does it, for every caller (FUSE does not say who
    /// has the capability). `st` is the file's attributes before.
    pub(super) fn drop_privs(&self, fd: BorrowedFd<'_>, st: &sys::Stat) -> Result<(), Errno> {
        let Some(mode) = self.privs_dropped(st) else {
            return Ok(());
        };
        let mode = nix::sys::stat::Mode::from_bits_truncate(mode as _);
        nix::sys::stat::fchmod(fd, mode).map_err(|e| e as Errno)
    }

    /// Tell the push side that version `v` is being written (at most every [`TOUCH_EVERY_MS`]).
    pub(super) fn written(&self, v: &Version) {
        let now = self.files.started.elapsed().as_millis() as u64 + TOUCH_EVERY_MS + 1;
        let last = v.touched_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) <= TOUCH_EVERY_MS {
            return;
        }
        v.touched_ms.store(now, Ordering::Relaxed);
        if let Ok(rel) = self.path_of(v.ino) {
            self.touch(&rel, Touch::Writing);
        }
    }

    /// `fallocate` (mode 0 only: allocate, extending the size; other modes answer EOPNOTSUPP).
    pub fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.count();
        self.writable()?;
        if mode != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let (v, h) = self.version_for(ino, fh)?;
        if !v.writable {
            return Err(libc::EACCES);
        }
        let st = self.check_current(&v)?;
        nix::fcntl::posix_fallocate(&v.file, offset as libc::off_t, len as libc::off_t)
            .map_err(|e| e as Errno)?;
        self.drop_privs(v.file.as_fd(), &st)?;
        if let Some(h) = h {
            h.wrote.store(true, Ordering::Relaxed);
        }
        self.written(&v);
        Ok(())
    }

    /// `close` of handle `fh` (FLUSH, where the kernel sends it): a handle that wrote is recorded in
    /// the outbox before close returns.
    pub fn flush(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        let Some(h) = self.files.handle(fh) else {
            return Ok(());
        };
        if !h.wrote.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.record(ino, false)
    }

    /// `fsync`: the file is durable on the mirror's disk and recorded in the outbox (with
    /// `wait_push`, pushed) before this returns.
    pub fn fsync(&self, ino: u64, fh: u64, datasync: bool, wait_push: bool) -> Result<(), Errno> {
        self.count();
        let Ok((v, _)) = self.version_for(ino, fh) else {
            return Ok(()); // nothing open, nothing written through the view
        };
        let r = if datasync {
            v.file.sync_data()
        } else {
            v.file.sync_all()
        };
        r.map_err(|e| io_errno(&e))?;
        if self.opts.writable {
            self.record(ino, wait_push)?;
        }
        Ok(())
    }

    /// Record node `ino`'s path in the outbox now.
    fn record(&self, ino: u64, wait_push: bool) -> Result<(), Errno> {
        let (Some(c), Ok(rel)) = (self.changes.as_ref(), self.path_of(ino)) else {
            return Ok(());
        };
        let rel = rel.to_string_lossy().into_owned();
        c.record_now(vec![rel.clone()], wait_push).map_err(|why| {
            tracing::warn!(path = %rel, error = %why, "file system view: recording a change failed");
            libc::EIO
        })
    }

    /// Release handle `fh`: a handle that wrote settles its path (pushed after the batch window).
    pub fn release(&self, fh: u64) {
        let h = self.files.table().handles.remove(&fh);
        let Some(h) = h else { return };
        self.release_version(&h.version);
        if h.write && h.wrote.load(Ordering::Relaxed) {
            if let Ok(rel) = self.path_of(h.version.ino) {
                self.touch(&rel, Touch::Settled);
            }
        }
    }

    /// Data reads (READ requests) served so far.
    pub fn reads(&self) -> u64 {
        self.files.reads()
    }

    /// Number of open file handles.
    pub fn open_files(&self) -> usize {
        self.files.open_files()
    }

    /// Number of inodes with an opened version (open handles or pinned).
    pub fn live_versions(&self) -> usize {
        self.files.live_versions()
    }

    /// Bound the versions pinned for handle-less I/O.
    pub fn set_max_pinned(&self, n: usize) {
        self.files.set_max_pinned(n);
    }

    /// Pin versions at lookup and readdirplus (zero-message opens).
    pub fn set_pin_on_entry(&self, on: bool) {
        self.files.set_pin_on_entry(on);
    }
}
