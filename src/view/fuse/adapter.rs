//! The fuser adapter: maps FUSE requests onto [`MirrorFs`], mounts read-only, invalidates kernel caches
//! for what each sync changed ([`MountHandle::sink`]), detects and detaches stale mounts, and unmounts
//! without hanging.
//!
//! Caching: entry and attribute replies carry a long TTL (never zero); the sync engine's change sink
//! invalidates exactly what changed. Directory listings are cached by the kernel (`FOPEN_CACHE_DIR` +
//! `FOPEN_KEEP_CACHE`) and invalidated with the parent directory inode. Files are opened with
//! `FOPEN_DIRECT_IO`: the kernel page cache is shared by every open of an inode, and a replaced file keeps
//! its inode number, so page caching could serve the new version to a handle that opened the old one (or
//! the reverse). Direct I/O gives each open exactly the version it opened.
//!
//! fuser 0.18.0's `AutoUnmount` hangs on in-process unmount, so it is never used: [`MountHandle`]
//! unmounts explicitly (also on drop), and [`mount`] detaches a stale mount it finds first.
use crate::store::db::State;
use crate::sync::engine::{Change, ChangeSink};
use crate::view::fs::{Attr, FsOptions, Kind, MirrorFs};
use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption,
    Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// The FUSE generation of every inode. Inode numbers are SQLite `AUTOINCREMENT` row ids, never reused,
/// so one constant generation keeps every (inode, generation) pair unique. The record's `generation`
/// (bumped when a file's content is replaced) must NOT be sent: the kernel treats a new generation for a
/// known node id as a different inode and marks the old one bad, so a handle that opened the previous
/// version would get EIO instead of reading its version to the end.
const FUSE_GENERATION: Generation = Generation(1);
/// Entries fetched from the database per step while filling one readdir reply.
const READDIR_CHUNK: usize = 128;
/// How long [`MountHandle::unmount`] waits for the session threads before forcing the connection.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Source shown in mount tables: `mountd:<workspace>`.
    pub fsname: String,
    pub allow_other: bool,
    /// Kernel TTL of entries and attributes (a zero TTL is raised to 1 ms).
    pub ttl: Duration,
    /// FUSE worker threads (at least 1).
    pub threads: usize,
    pub fs: FsOptions,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "mountd".into(),
            allow_other: false,
            ttl: Duration::from_secs(3600),
            threads: 2,
            fs: FsOptions::default(),
        }
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
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

/// The `fuser::Filesystem` over a [`MirrorFs`].
pub struct FuseAdapter {
    fs: Arc<MirrorFs>,
    ttl: Duration,
}

impl FuseAdapter {
    pub fn new(fs: Arc<MirrorFs>, ttl: Duration) -> FuseAdapter {
        FuseAdapter {
            fs,
            ttl: ttl.max(Duration::from_millis(1)),
        }
    }
}

/// Run one file system call and record its latency and outcome in the metrics.
fn timed<T>(
    op: &str,
    f: impl FnOnce() -> Result<T, crate::view::fs::Errno>,
) -> Result<T, crate::view::fs::Errno> {
    let start = std::time::Instant::now();
    let r = f();
    crate::metrics::Metrics::global().observe_fuse(op, start.elapsed(), r.is_ok());
    r
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                tracing::debug!(?missing, "FUSE capability not offered by the kernel");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match timed("lookup", || self.fs.lookup(parent.0, name)) {
            Ok(a) => reply.entry_with_ttls(&self.ttl, &self.ttl, &file_attr(&a), FUSE_GENERATION),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match timed("getattr", || self.fs.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        match timed("open", || self.fs.open(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match timed("read", || self.fs.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.fs.opendir(ino.0) {
            Ok(dh) => reply.opened(
                FileHandle(dh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut off = offset;
        loop {
            let page = match timed("readdir", || self.fs.readdir(fh.0, off, READDIR_CHUNK)) {
                Ok(p) => p,
                Err(e) => return reply.error(errno(e)),
            };
            if page.is_empty() {
                break;
            }
            for e in &page {
                if reply.add(INodeNo(e.ino), e.offset, kind(e.kind), &e.name) {
                    return reply.ok();
                }
                off = e.offset;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut off = offset;
        loop {
            let page = match timed("readdir", || self.fs.readdir(fh.0, off, READDIR_CHUNK)) {
                Ok(p) => p,
                Err(e) => return reply.error(errno(e)),
            };
            if page.is_empty() {
                break;
            }
            for e in &page {
                let full = reply.add(
                    INodeNo(e.ino),
                    e.offset,
                    &e.name,
                    &self.ttl,
                    &file_attr(&e.attr),
                    FUSE_GENERATION,
                );
                if full {
                    return reply.ok();
                }
                off = e.offset;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
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
        let s = timed("statfs", || Ok(self.fs.statfs())).expect("statfs cannot fail");
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // ---- everything that would modify the tree: EROFS ----

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
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
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// Invalidates kernel caches for what a sync changed.
pub struct FuseSink {
    notifier: Notifier,
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
                self.note(
                    "inval_inode",
                    self.notifier.inval_inode(INodeNo(c.ino), 0, -1),
                );
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

/// A running mount. Unmounts on [`MountHandle::unmount`] or drop.
pub struct MountHandle {
    /// The session's main thread (it joins the worker threads).
    session: Option<JoinHandle<std::io::Result<()>>>,
    notifier: Notifier,
    mountpoint: PathBuf,
    /// `major:minor` of the mounted file system (the FUSE connection).
    /// (mount id, `major:minor`) of our mount in /proc/self/mountinfo, to recognise it later.
    key: Option<(u64, (u32, u32))>,
    /// A duplicate of the session's /dev/fuse descriptor.
    conn: OwnedFd,
    fs: Arc<MirrorFs>,
}

impl MountHandle {
    /// A change sink that invalidates the kernel's caches for what each sync commit changed.
    pub fn sink(&self) -> Arc<dyn ChangeSink> {
        Arc::new(FuseSink {
            notifier: self.notifier.clone(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The file system view served by this mount.
    pub fn fs(&self) -> &Arc<MirrorFs> {
        &self.fs
    }

    /// True while the session threads run and the mount is in the mount table.
    pub fn is_alive(&self) -> bool {
        let running = self.session.as_ref().is_some_and(|s| !s.is_finished());
        running
            && connected(&self.conn)
            && self
                .key
                .is_none_or(|k| mounted_top(&self.mountpoint) == Some(k))
    }

    /// Unmount and wait for the session to end. Never hangs: a busy mount is detached lazily, and a
    /// session that does not end within a few seconds has its FUSE connection aborted.
    pub fn unmount(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(bg) = self.session.take() else {
            return;
        };
        // Only unmount what is still our mount (the path may have been unmounted and reused since).
        // A dead session means the kernel already dropped our mount (its device number and mount id may
        // have been reused by a newer mount at the same path).
        let ours = connected(&self.conn)
            && self
                .key
                .is_none_or(|k| mounted_top(&self.mountpoint) == Some(k));
        if ours {
            if let Err(e) = umount(&self.mountpoint, 0) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e,
                    "unmount failed; detaching lazily");
                if let Err(e) = umount(&self.mountpoint, libc::MNT_DETACH) {
                    tracing::warn!(error = %e, "lazy unmount failed; trying fusermount3 -uz");
                    fusermount_detach(&self.mountpoint);
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::Builder::new()
            .name("mountd-fuse-join".into())
            .spawn(move || {
                let r = bg
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("FUSE session thread panicked")));
                let _ = tx.send(r);
            });
        if joiner.is_err() {
            tracing::warn!("could not spawn a thread to join the FUSE session");
            return;
        }
        let mut result = rx.recv_timeout(JOIN_TIMEOUT);
        if result.is_err() {
            if let (Some((_, d)), true) = (self.key, connected(&self.conn)) {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "FUSE session still serving open files after a lazy unmount; aborting its connection");
                if abort_connection(d) {
                    result = rx.recv_timeout(JOIN_TIMEOUT);
                }
            }
        }
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "FUSE session ended with an error"),
            Err(_) => tracing::warn!(mountpoint = %self.mountpoint.display(),
                "FUSE session did not end; leaving it detached"),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True while the FUSE connection behind `fd` is up (the kernel reports POLLERR once it is gone).
fn connected(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return r == 0
            || (r > 0 && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0);
    }
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn umount(p: &Path, flags: i32) -> std::io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fusermount_detach(p: &Path) {
    for bin in ["fusermount3", "fusermount"] {
        if let Ok(out) = std::process::Command::new(bin)
            .args(["-u", "-z", "--"])
            .arg(p)
            .output()
        {
            if out.status.success() {
                return;
            }
            tracing::warn!(
                "{bin} -uz failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Abort a FUSE connection through fusectl (`/sys/fs/fuse/connections/<dev>/abort`). False when fusectl
/// is not mounted (then a lazily detached session keeps serving its open files until they are closed).
fn abort_connection((major, minor): (u32, u32)) -> bool {
    let id = (major << 20) | minor;
    let dir = format!("/sys/fs/fuse/connections/{id}");
    if !Path::new(&dir).is_dir() {
        tracing::warn!(
            "fusectl is not mounted at /sys/fs/fuse/connections: the detached FUSE session keeps \
             serving files still open and ends when they are closed"
        );
        return false;
    }
    match std::fs::write(format!("{dir}/abort"), b"1") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir, error = %e, "could not abort the FUSE connection");
            false
        }
    }
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space...).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
struct MountInfo {
    id: u64,
    dev: (u32, u32),
    mountpoint: PathBuf,
    fstype: String,
    source: String,
}

fn mountinfo() -> Vec<MountInfo> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || f.len() < sep + 3 {
            continue;
        }
        let Some((ma, mi)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        out.push(MountInfo {
            id: f[0].parse().unwrap_or(0),
            dev: (ma, mi),
            mountpoint: PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(f[4]))),
            fstype: f[sep + 1].to_string(),
            source: String::from_utf8_lossy(&unescape_mountinfo(f[sep + 2])).into_owned(),
        });
    }
    out
}

/// The mountpoint as the mount table spells it, without touching the (possibly dead) mount itself.
fn absolute_mountpoint(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|c| c.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The device of the top-most mount at `p`, if `p` is a mountpoint.
fn mounted_top(p: &Path) -> Option<(u64, (u32, u32))> {
    mountinfo()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == p)
        .map(|m| (m.id, m.dev))
}

fn is_mountd_fuse(m: &MountInfo) -> bool {
    (m.fstype == "fuse" || m.fstype.starts_with("fuse.") || m.fstype == "fuseblk")
        && (m.source.starts_with("mountd") || m.fstype == "fuse.mountd")
}

/// Detach a dead FUSE mount ("Transport endpoint is not connected") or an earlier mountd mount left at
/// `mountpoint`. Returns how many mounts were detached.
pub fn cleanup_stale_mount(mountpoint: &Path) -> Result<usize, String> {
    let mp = absolute_mountpoint(mountpoint);
    let mut detached = 0;
    for _ in 0..8 {
        let dead =
            matches!(std::fs::metadata(&mp), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        let top = mountinfo().into_iter().rev().find(|m| m.mountpoint == mp);
        let ours = top.as_ref().is_some_and(is_mountd_fuse);
        if !dead && !ours {
            return Ok(detached);
        }
        tracing::warn!(
            mountpoint = %mp.display(),
            source = top.as_ref().map(|m| m.source.as_str()).unwrap_or("?"),
            "{} mount found at the mountpoint; detaching it (umount -l)",
            if dead { "stale (Transport endpoint is not connected)" } else { "earlier mountd" }
        );
        if let Err(e) = umount(&mp, libc::MNT_DETACH) {
            tracing::warn!(error = %e, "umount2(MNT_DETACH) failed; trying fusermount3 -uz");
            fusermount_detach(&mp);
        }
        let still_dead =
            matches!(std::fs::metadata(&mp), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        let same = mountinfo()
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == mp)
            .map(|m| m.dev);
        if (dead && still_dead) || (top.is_some() && same == top.as_ref().map(|m| m.dev)) {
            return Err(format!(
                "cannot detach the stale mount at {}; run `umount -l {}` (or `fusermount3 -uz`) as root",
                mp.display(),
                mp.display()
            ));
        }
        detached += 1;
    }
    Ok(detached)
}

/// Take the session thread out of fuser's `BackgroundSession` and never let fuser unmount.
///
/// fuser 0.18.0 unmounts by *path* when its `Mount` is dropped (after the session ends), and its
/// "already unmounted?" check is true for a dead connection too: if the mountpoint was detached and
/// mounted again meanwhile (stale-mount cleanup, a restart), dropping the old session would unmount the
/// new mount. [`MountHandle`] unmounts itself, checking the mount table for its own device first. The
/// price is a leaked `Mount` (a few bytes and a dead /dev/fuse descriptor) per mount.
fn detach_fuser_unmount(mut bg: BackgroundSession) -> JoinHandle<std::io::Result<()>> {
    let guard = std::mem::replace(&mut bg.guard, std::thread::spawn(|| Ok(())));
    std::mem::forget(bg);
    guard
}

/// Mount the mirror read-only at `mountpoint` and serve it from background threads.
pub fn mount(
    mountpoint: &Path,
    state: &State,
    root: &Path,
    opts: MountOptions,
) -> Result<MountHandle, String> {
    cleanup_stale_mount(mountpoint)?;
    let mp = absolute_mountpoint(mountpoint);
    match std::fs::metadata(&mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("mountpoint {} is not a directory", mp.display())),
        Err(e) => return Err(format!("mountpoint {}: {e}", mp.display())),
    }
    let threads = opts.threads.max(1);
    let mut readers = Vec::with_capacity(threads);
    for _ in 0..threads {
        readers.push(
            state
                .reader()
                .map_err(|e| format!("opening the state database for the file system: {e}"))?,
        );
    }
    let fs = Arc::new(MirrorFs::with_readers(readers, root, opts.fs));
    let fsname: String = opts
        .fsname
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(fsname),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // As root fuser calls mount(2) directly and passes no subtype to the kernel; spell it as a kernel
    // option then (fusermount3 handles `Subtype` itself for non-root mounts).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        config
            .mount_options
            .push(MountOption::CUSTOM("subtype=mountd".into()));
    } else {
        config
            .mount_options
            .push(MountOption::Subtype("mountd".into()));
    }
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(threads);
    let adapter = FuseAdapter::new(fs.clone(), opts.ttl);
    let session = fuser::Session::new(adapter, &mp, &config)
        .map_err(|e| format!("mounting {}: {e}", mp.display()))?;
    // Our own handle on the connection: POLLERR on it tells whether *our* mount is still connected.
    let conn = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the /dev/fuse descriptor: {e}"))?;
    let notifier = session.notifier();
    let session = session
        .spawn()
        .map_err(|e| format!("starting the FUSE session: {e}"))?;
    let session = detach_fuser_unmount(session);
    let key = mounted_top(&mp);
    if key.is_none() {
        tracing::warn!(mountpoint = %mp.display(), "the new mount is not in /proc/self/mountinfo");
    }
    tracing::info!(mountpoint = %mp.display(), "mounted read-only");
    Ok(MountHandle {
        session: Some(session),
        conn,
        notifier,
        mountpoint: mp,
        key,
        fs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(r"/x\04"), b"/x\\04");
        assert!(!mountinfo().is_empty());
    }
}
