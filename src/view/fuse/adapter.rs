//! The fuser adapter: maps FUSE requests onto [`MirrorFs`] (which decides everything, including what a
//! read-only view refuses), converts errors to errno values and records per-operation latency metrics.
//!
//! Caching: a file the sync engine replaces is a new inode, and the view's own writes go through the
//! kernel, so the kernel may cache file data for as long as it keeps the inode, and entry and attribute
//! replies carry a long TTL (never zero); the sync engine's change sink ([`super::invalidate`])
//! invalidates exactly what changed. A writable view may ask for the kernel's writeback cache in the
//! page-cache mode (`--writeback-cache`, off by default: the kernel then refetches a file's attributes
//! after every close, which costs readers of many small files a round trip each): writes gather in the
//! page cache and reach the daemon as large WRITEs, at the latest when the file is closed. File data is
//! served in one of the [`DataMode`]s:
//! * passthrough: OPEN registers the inode's opened version as the kernel's backing file (one
//!   `BackingId` per inode, shared by its open handles); reads and mmap never reach the daemon. The id
//!   outlives the last handle (up to [`MAX_IDLE_BACKINGS`], least recently released dropped first, and
//!   dropped when the kernel forgets the inode), so opening a file again costs the daemon a map lookup:
//!   no database read, no `open(2)`, no ioctl;
//! * page cache: OPEN is answered ENOSYS once (`FUSE_NO_OPEN_SUPPORT`), after which the kernel opens
//!   without a message and keeps the inode's page cache (`FOPEN_KEEP_CACHE` is its default then); a
//!   cache miss is a READ without a handle, served from the version pinned at the inode's first read;
//! * direct I/O: every read is a READ request (`FOPEN_DIRECT_IO`).
//!
//! OPENDIR is answered ENOSYS too (`FUSE_NO_OPENDIR_SUPPORT`: listings page statelessly by the file
//! system's own cookies, and the kernel caches them). FLUSH is answered ENOSYS once when opens send no
//! message (read-only closes would each cost a round trip); otherwise read-only opens carry
//! `FOPEN_NOFLUSH` and a FLUSH of a written handle records it in the outbox before `close` returns.
use super::mode::{DataMode, ModeState};
use crate::view::fs::{Attr, Caller, Kind, MirrorFs};
use crate::view::ops::{SetAttr, SetTime};
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Backing ids kept registered with no handle open (each holds a kernel `struct file` of the mirror,
/// not a descriptor of the daemon's).
const MAX_IDLE_BACKINGS: usize = 65536;
/// Handles of opens answered from a kept backing id (no [`MirrorFs`] handle behind them) count from
/// here, far above the ones [`MirrorFs::open`] hands out.
const KEPT_FH_BASE: u64 = 1 << 62;

/// One inode's registered backing file: how many handles use it, and the release stamp that queued it
/// as idle (its entry in [`Backings::idle`]) when none does.
struct Backing {
    id: BackingId,
    handles: u32,
    idle_stamp: u64,
}

/// Passthrough bookkeeping: one backing id per inode, the handles that were opened in passthrough, and
/// the idle ids in release order.
#[derive(Default)]
struct Backings {
    by_ino: HashMap<u64, Backing>,
    handles: HashSet<u64>,
    /// (inode, stamp) in release order; an entry whose stamp no longer matches its inode's is stale.
    idle: VecDeque<(u64, u64)>,
    idle_count: usize,
    stamp: u64,
}

impl Backings {
    /// A handle of `ino` was opened on its kept id; `None` when there is none.
    fn reuse(&mut self, ino: u64, fh: u64) -> Option<&BackingId> {
        let b = self.by_ino.get_mut(&ino)?;
        if b.handles == 0 {
            self.idle_count -= 1;
        }
        b.handles += 1;
        b.idle_stamp = 0;
        self.handles.insert(fh);
        Some(&b.id)
    }

    /// Handle `fh` of `ino` was released; its last one makes the id idle, and the oldest idle ids over
    /// the bound are unregistered.
    fn release(&mut self, ino: u64, fh: u64) {
        if !self.handles.remove(&fh) {
            return;
        }
        let Some(b) = self.by_ino.get_mut(&ino) else {
            return;
        };
        b.handles = b.handles.saturating_sub(1);
        if b.handles > 0 {
            return;
        }
        self.stamp += 1;
        b.idle_stamp = self.stamp;
        self.idle.push_back((ino, self.stamp));
        self.idle_count += 1;
        while self.idle_count > MAX_IDLE_BACKINGS {
            let Some((old, stamp)) = self.idle.pop_front() else {
                break;
            };
            if self.by_ino.get(&old).is_some_and(|b| b.idle_stamp == stamp) {
                // Dropping the id unregisters it (the kernel keeps its own reference while in use).
                self.by_ino.remove(&old);
                self.idle_count -= 1;
            }
        }
        if self.idle.len() > 2 * MAX_IDLE_BACKINGS + 64 {
            let by_ino = &self.by_ino;
            self.idle
                .retain(|(i, s)| by_ino.get(i).is_some_and(|b| b.idle_stamp == *s));
        }
    }

    /// Handle `fh` of `ino` registered a new backing id.
    fn register(&mut self, ino: u64, fh: u64, id: BackingId) {
        self.by_ino.insert(
            ino,
            Backing {
                id,
                handles: 1,
                idle_stamp: 0,
            },
        );
        self.handles.insert(fh);
    }

    /// The kernel forgot `ino`: nothing can open it again.
    fn forget(&mut self, ino: u64) {
        if let Some(b) = self.by_ino.remove(&ino) {
            if b.handles == 0 {
                self.idle_count -= 1;
            }
        }
    }
}

/// The `fuser::Filesystem` over a [`MirrorFs`].
pub struct FuseAdapter {
    fs: Arc<MirrorFs>,
    ttl: Duration,
    mode: Arc<ModeState>,
    backings: Mutex<Backings>,
    backing_failed: AtomicBool,
    next_kept_fh: AtomicU64,
    /// Ask for the kernel's writeback cache (a writable view in the page-cache mode).
    writeback: bool,
    /// `fsync` waits for the remote's answer.
    fsync_push: bool,
    /// Ask for FUSE over io_uring at INIT.
    uring: bool,
}

/// How a writable mount uses the kernel for writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// The kernel's writeback cache (page-cache mode only).
    pub writeback_cache: bool,
    /// `fsync` waits until the remote answered the file (and fails with EIO when it refused it).
    pub fsync_push: bool,
}

impl Default for WriteOptions {
    /// Writes go through to the daemon (the writeback cache costs readers a GETATTR per close).
    fn default() -> Self {
        WriteOptions {
            writeback_cache: false,
            fsync_push: false,
        }
    }
}

impl FuseAdapter {
    pub(crate) fn new(
        fs: Arc<MirrorFs>,
        ttl: Duration,
        mode: Arc<ModeState>,
        writes: WriteOptions,
        uring: bool,
    ) -> FuseAdapter {
        FuseAdapter {
            fs,
            ttl: ttl.max(Duration::from_millis(1)),
            mode,
            backings: Mutex::new(Backings::default()),
            backing_failed: AtomicBool::new(false),
            next_kept_fh: AtomicU64::new(KEPT_FH_BASE),
            writeback: writes.writeback_cache,
            fsync_push: writes.fsync_push,
            uring,
        }
    }

    fn add_cap(config: &mut KernelConfig, cap: InitFlags) -> bool {
        match config.add_capabilities(cap) {
            Ok(()) => true,
            Err(missing) => {
                tracing::debug!(?missing, "FUSE capability not offered by the kernel");
                false
            }
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, i32>) {
        match r {
            Ok(a) => reply.entry_with_ttls(
                &self.ttl,
                &self.ttl,
                &file_attr(&a),
                Generation(a.generation),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn attr(&self, reply: ReplyAttr, r: Result<Attr, i32>) {
        match r {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), i32>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Opens send no message (the kernel was told ENOSYS): the daemon never sees a close either.
    fn zero_message_open(&self) -> bool {
        self.mode.zero_message_open()
    }
}

/// Run one file system call and record its latency and outcome in the metrics.
fn timed<T>(
    op: &str,
    f: impl FnOnce() -> Result<T, crate::view::fs::Errno>,
) -> Result<T, crate::view::fs::Errno> {
    let start = std::time::Instant::now();
    let r = f();
    // A lookup of a missing name is an ordinary answer, not an error.
    let ok = match &r {
        Ok(_) => true,
        Err(e) => op == "lookup" && *e == libc::ENOENT,
    };
    crate::metrics::Metrics::global().observe_fuse(op, start.elapsed(), ok);
    r
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        Self::add_cap(
            config,
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Self::add_cap(config, InitFlags::FUSE_PARALLEL_DIROPS);
        let m = &self.mode;
        m.no_opendir.store(
            Self::add_cap(config, InitFlags::FUSE_NO_OPENDIR_SUPPORT),
            Ordering::Release,
        );
        if matches!(m.requested, DataMode::Auto | DataMode::PageCache) {
            m.no_open.store(
                Self::add_cap(config, InitFlags::FUSE_NO_OPEN_SUPPORT),
                Ordering::Release,
            );
        }
        if matches!(m.requested, DataMode::Auto | DataMode::Passthrough)
            && config.set_max_stack_depth(1).is_ok()
        {
            m.passthrough.store(
                Self::add_cap(config, InitFlags::FUSE_PASSTHROUGH),
                Ordering::Release,
            );
        }
        // A mode that needs no probe is decided here, before the kernel sends any other request.
        // With zero-message opens the daemon never hears of an open, so versions are pinned when
        // the kernel learns of a file, from the very first LOOKUP (a reader who opened a file in
        // the mount's first moments keeps its version across an update).
        let known = m.known_at_init();
        if let Some(mode) = known {
            m.set_active(mode);
        }
        if m.zero_message_open() {
            self.fs.set_max_pinned(super::mount::pin_budget());
            self.fs.set_pin_on_entry(true);
        }
        if m.requested == DataMode::DirectIo {
            Self::add_cap(config, InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        if self.fs.options().writable
            && self.writeback
            && matches!(m.requested, DataMode::Auto | DataMode::PageCache)
        {
            // Page-cache writes: small writes gather in the kernel (the passthrough mode writes to
            // the mirror file directly instead; the kernel does not combine the two).
            m.writeback.store(
                Self::add_cap(config, InitFlags::FUSE_WRITEBACK_CACHE),
                Ordering::Release,
            );
        }
        // Writes, truncations and chowns reach the view, which drops the set-ID bits itself: the
        // kernel then no longer refreshes a file's mode before every chown (a GETATTR per file
        // `tar` extracts). Not where passthrough may serve (its writes never reach the daemon), nor
        // with the writeback cache (the kernel would keep showing a mode the view changed).
        if self.fs.options().writable && known.is_some() && !ModeState::flag(&m.writeback) {
            let granted = Self::add_cap(config, InitFlags::FUSE_HANDLE_KILLPRIV);
            self.fs.set_kill_privs(granted);
        }
        if self.uring && Self::add_cap(config, InitFlags::FUSE_OVER_IO_URING) {
            // A ring entry's payload buffer must hold the largest request and answer: keep both at
            // 1 MiB (the kernel's default page limit caps requests there anyway).
            let max = super::uring::MAX_PAYLOAD as u32;
            let readahead = config
                .set_max_readahead(max)
                .or_else(|kernel_max| config.set_max_readahead(kernel_max.min(max)));
            let ok = config.set_max_write(max).is_ok() && readahead.is_ok();
            m.uring.store(ok, Ordering::Release);
        }
        m.init_finished();
        // The FUSE series are exported only while a mount is served.
        crate::metrics::Metrics::global().set_fuse_active(true);
        Ok(())
    }

    fn destroy(&mut self) {
        crate::metrics::Metrics::global().set_fuse_active(false);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, timed("lookup", || self.fs.lookup(parent.0, name)));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
        lock(&self.backings).forget(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(reply, timed("getattr", || self.fs.getattr(ino.0)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.attr(reply, timed("setattr", || self.fs.setattr(ino.0, s)));
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = timed("mknod", || {
            self.fs.mknod(parent.0, name, mode, umask, caller(req))
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = timed("mkdir", || {
            self.fs.mkdir(parent.0, name, mode, umask, caller(req))
        });
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, timed("unlink", || self.fs.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, timed("rmdir", || self.fs.rmdir(parent.0, name)));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry(reply, self.fs.symlink());
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = timed("rename", || {
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits())
        });
        Self::empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(reply, self.fs.link());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let mode = self.mode.active();
        if mode == DataMode::PageCache && ModeState::flag(&self.mode.no_open) {
            // From now on the kernel opens files without asking (and keeps their page cache).
            return reply.error(Errno::ENOSYS);
        }
        let noflush = if write {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        if mode == DataMode::Passthrough && !write {
            // Opened before: its backing file is still registered, nothing to look up or open.
            let fh = self.next_kept_fh.fetch_add(1, Ordering::Relaxed);
            let mut b = lock(&self.backings);
            if let Ok(Some(id)) = timed("open", || Ok(b.reuse(ino.0, fh))) {
                return reply.opened_passthrough(FileHandle(fh), noflush, id);
            }
        }
        let (fh, version) = match timed("open", || self.fs.open(ino.0, write)) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let cached = FopenFlags::FOPEN_KEEP_CACHE | noflush;
        match mode {
            DataMode::Passthrough => {
                let mut b = lock(&self.backings);
                // Another thread may have registered it meanwhile: one id per inode.
                if let Some(id) = b.reuse(ino.0, fh) {
                    return reply.opened_passthrough(FileHandle(fh), noflush, id);
                }
                match reply.open_backing(&version.file) {
                    Ok(id) => {
                        reply.opened_passthrough(FileHandle(fh), noflush, &id);
                        b.register(ino.0, fh, id);
                    }
                    Err(e) => {
                        self.no_backing(&e);
                        reply.opened(FileHandle(fh), cached);
                    }
                }
            }
            DataMode::DirectIo => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | noflush)
            }
            DataMode::PageCache | DataMode::Auto => reply.opened(FileHandle(fh), cached),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The reply is sent from the reused per-thread buffer (no copy into a fresh Vec per READ).
        let mut reply = Some(reply);
        let r = timed("read", || {
            self.fs.read_with(ino.0, fh.0, offset, size, |data| {
                if let Some(r) = reply.take() {
                    r.data(data);
                }
            })
        });
        if let (Err(e), Some(r)) = (r, reply) {
            r.error(errno(e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match timed("write", || self.fs.write(ino.0, fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.zero_message_open() || !self.fs.options().writable {
            // Closes of files opened without a message (or of a read-only view) have nothing to
            // record; ENOSYS makes the kernel stop sending FLUSH.
            return reply.error(Errno::ENOSYS);
        }
        Self::empty(reply, timed("flush", || self.fs.flush(ino.0, fh.0)));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.backings).release(ino.0, fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = timed("fsync", || {
            self.fs.fsync(ino.0, fh.0, datasync, self.fsync_push)
        });
        Self::empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ModeState::flag(&self.mode.no_opendir) {
            // Listings need no handle: from now on the kernel opens directories without asking.
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.opendir(ino.0) {
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = timed("readdir", || {
            self.fs.readdir(ino.0, offset, false, |e| {
                reply.add(INodeNo(e.ino), e.offset, kind(e.kind), &e.name)
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl;
        let r = timed("readdir", || {
            self.fs.readdir(ino.0, offset, true, |e| {
                let Some(a) = &e.attr else { return false };
                reply.add(
                    INodeNo(e.ino),
                    e.offset,
                    &e.name,
                    &ttl,
                    &file_attr(a),
                    Generation(a.generation),
                )
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match timed("statfs", || self.fs.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        Self::empty(reply, self.fs.access(ino.0, mask.bits()));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // The kernel then answers EOPNOTSUPP itself, without asking again.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.fs.setxattr());
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.fs.setxattr());
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        // Once opens are message-free the kernel sends no RELEASE either: no handle to leak then.
        let handle = !self.zero_message_open();
        let (a, fh, version) = match timed("create", || {
            self.fs
                .create(parent.0, name, mode & !umask, flags, caller(req), handle)
        }) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let generation = Generation(a.generation);
        let attr = file_attr(&a);
        match self.mode.active() {
            DataMode::Passthrough => {
                let mut b = lock(&self.backings);
                if let Some(id) = b.reuse(a.ino, fh) {
                    return reply.created_passthrough(
                        &self.ttl,
                        &attr,
                        generation,
                        FileHandle(fh),
                        FopenFlags::empty(),
                        id,
                    );
                }
                match reply.open_backing(&version.file) {
                    Ok(id) => {
                        reply.created_passthrough(
                            &self.ttl,
                            &attr,
                            generation,
                            FileHandle(fh),
                            FopenFlags::empty(),
                            &id,
                        );
                        b.register(a.ino, fh, id);
                    }
                    Err(e) => {
                        self.no_backing(&e);
                        reply.created(
                            &self.ttl,
                            &attr,
                            generation,
                            FileHandle(fh),
                            FopenFlags::FOPEN_KEEP_CACHE,
                        );
                    }
                }
            }
            DataMode::DirectIo => reply.created(
                &self.ttl,
                &attr,
                generation,
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            DataMode::PageCache | DataMode::Auto => reply.created(
                &self.ttl,
                &attr,
                generation,
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctl is meaningful on the mirror (isatty() asks TCGETS of every file it checks).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = timed("fallocate", || {
            self.fs.fallocate(ino.0, fh.0, offset, length, mode)
        });
        Self::empty(reply, r);
    }
}

impl FuseAdapter {
    fn no_backing(&self, e: &std::io::Error) {
        if !self.backing_failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e,
                "FUSE passthrough: registering a backing file failed; serving this file from the page cache");
        }
    }
}
