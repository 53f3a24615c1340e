//! The few system calls the view makes on the mirror that the standard library does not offer:
//! `statx` (for the birth time that tells a reused inode number apart), `getdents64` from a directory
//! cookie (stateless directory paging), and opening a directory *beneath* the mirror root without
//! following any symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so nothing the view
//! does can reach outside the mirror.
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the view needs of a `statx`.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub ino: u64,
    pub dev: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// A number that changes when the inode number is reused: the birth time where the file system
    /// reports one, else 1.
    pub generation: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// The process's umask, read from `/proc/self/status` (`umask(2)` cannot read it without setting
/// it); all bits when it cannot be read, so that callers never assume a bit survives.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(v.trim(), 8).ok()
        })
        .unwrap_or(0o7777)
}

/// The permission bits of regular file `st` without the set-user-ID bit, and without the
/// set-group-ID bit where group execution is on (the bits a write, a truncation or a `chown` drops);
/// `None` when there is nothing to drop.
pub fn privs_dropped(st: &Stat) -> Option<u32> {
    if !st.is_file() {
        return None;
    }
    let mut drop = st.mode & libc::S_ISUID;
    if st.mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        drop |= libc::S_ISGID;
    }
    (drop != 0).then_some(st.mode & 0o7777 & !drop)
}

fn time(t: libc::statx_timestamp) -> SystemTime {
    if t.tv_sec >= 0 {
        UNIX_EPOCH + Duration::new(t.tv_sec as u64, t.tv_nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.tv_sec.unsigned_abs())
            + Duration::from_nanos(t.tv_nsec as u64)
    }
}

pub fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `statx(dirfd, path)` without following a final symlink; an empty `path` is `dirfd` itself.
pub fn statx(dirfd: BorrowedFd<'_>, path: &OsStr) -> io::Result<Stat> {
    let c = cstr(path)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT;
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut sx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a valid descriptor, a NUL-terminated path and a buffer of the right type.
    let rc = unsafe {
        libc::statx(
            dirfd.as_raw_fd(),
            c.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            sx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx filled the buffer.
    let sx = unsafe { sx.assume_init() };
    let generation = if sx.stx_mask & libc::STATX_BTIME != 0 {
        let g = (sx.stx_btime.tv_sec as u64)
            .wrapping_mul(1_000_000_007)
            .wrapping_add(sx.stx_btime.tv_nsec as u64);
        g.max(1)
    } else {
        1
    };
    Ok(Stat {
        ino: sx.stx_ino,
        dev: libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        mode: sx.stx_mode as u32,
        nlink: sx.stx_nlink,
        uid: sx.stx_uid,
        gid: sx.stx_gid,
        size: sx.stx_size,
        blocks: sx.stx_blocks,
        atime: time(sx.stx_atime),
        mtime: time(sx.stx_mtime),
        ctime: time(sx.stx_ctime),
        generation,
    })
}

/// `fstat` of an open file, as a [`Stat`].
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    statx(fd, OsStr::new(""))
}

/// Open `rel` (a path relative to the root, "" = the root) beneath `root`, following no symlink on
/// the way.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() { OsStr::new(".") } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    nix::fcntl::openat2(root, path, how).map_err(io::Error::from)
}

/// [`open_beneath`] of a directory (`O_PATH`: for the `*at` calls that act on its entries).
pub fn dir_beneath(root: BorrowedFd<'_>, rel: &OsStr) -> io::Result<OwnedFd> {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
}

/// Open file `name` in directory `dir` (never through a symlink).
pub fn open_in(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: i32,
    mode: u32,
) -> io::Result<std::fs::File> {
    let c = cstr(name)?;
    // SAFETY: a valid descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we own.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One entry of a directory read with [`read_dir_at`].
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub ino: u64,
    /// The cookie to continue *after* this entry.
    pub next: i64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// Entries of the open directory `dir` from cookie `offset` (0 = the start), until `take` returns
/// false or the directory ends. The cookies are the file system's own (`d_off`), valid for another
/// descriptor of the same directory.
pub fn read_dir_at(
    dir: &OwnedFd,
    offset: i64,
    mut take: impl FnMut(RawEntry) -> bool,
) -> io::Result<()> {
    // SAFETY: seeking a directory descriptor we own.
    if unsafe { libc::lseek(dir.as_raw_fd(), offset, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: the buffer is writable for its whole length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_fd().as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        let mut at = 0usize;
        while at < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let rec = &buf[at..];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
            let next = i64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let dtype = rec[18];
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            at += reclen;
            if !take(RawEntry {
                ino,
                next,
                dtype,
                name: name_bytes[..len].to_vec(),
            }) {
                return Ok(());
            }
        }
    }
}
