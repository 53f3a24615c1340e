//! What modifies the tree through the view: create, mkdir, unlink, rmdir, rename and setattr act on
//! the mirror directory (beneath its root, never through a symlink) and hand the changed paths to the
//! push side; what the remote cannot hold is refused with a documented errno.
use super::files::Version;
use super::fs::{io_errno, Attr, Caller, Errno, MirrorFs};
use super::nodes::ROOT;
use super::sys;
use crate::store::change::Touch;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

/// A time to set: now, or a given instant.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// What a `setattr` changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

fn errno(e: nix::Error) -> Errno {
    e as Errno
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => {
            let (sec, nsec) = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut s = -(d.as_secs() as i64);
                    let mut n = -(d.subsec_nanos() as i64);
                    if n < 0 {
                        s -= 1;
                        n += 1_000_000_000;
                    }
                    (s, n)
                }
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

impl MirrorFs {
    /// The directory `parent` opened for `*at` calls, and the path of `name` in it. Refuses a name
    /// the view hides or cannot hold.
    fn parent_dir(&self, parent: u64, name: &OsStr) -> Result<(OwnedFd, OsString), Errno> {
        if name.is_empty() || name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(libc::EINVAL);
        }
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if Self::hidden(parent, name.as_bytes()) {
            // mountd's own directory: nobody else's to create, replace or remove.
            return Err(libc::EPERM);
        }
        let dir_rel = self.path_of(parent)?;
        let dir =
            sys::dir_beneath(self.root_fd.as_fd(), &dir_rel).map_err(|e| match io_errno(&e) {
                libc::ENOENT => libc::ENOENT,
                libc::ELOOP | libc::EXDEV => libc::EIO,
                e => e,
            })?;
        let st = sys::fstat(dir.as_fd()).map_err(|e| io_errno(&e))?;
        if self.nodes.id_of(st.ino) != parent {
            return Err(libc::ENOENT); // the directory was removed or replaced meanwhile
        }
        let rel = self.nodes.child_path(parent, name).ok_or(libc::ESTALE)?;
        Ok((dir, rel))
    }

    /// Give a new file or directory to its creator (the daemon's own files stay the daemon's; only
    /// root may give files away).
    fn chown_new(&self, dir: &OwnedFd, name: &OsStr, caller: Caller) -> Result<(), Errno> {
        let (uid, gid) = self.backing_ids(Some(caller.uid), Some(caller.gid));
        let (uid, gid) = (uid.unwrap_or(self.euid), gid.unwrap_or(self.egid));
        if (uid, gid) == (self.euid, self.egid) || !self.root_user {
            return Ok(());
        }
        nix::unistd::fchownat(
            dir,
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(errno)
    }

    /// Attributes of `name` in `dir` (just created or renamed), remembered as one more lookup.
    fn entry_at(&self, parent: u64, dir: &OwnedFd, name: &OsStr) -> Result<Attr, Errno> {
        let st = sys::statx(dir.as_fd(), name).map_err(|e| io_errno(&e))?;
        let a = self.attr_of(&st);
        self.nodes.remember(a.ino, parent, name);
        Ok(a)
    }

    /// `creat`/`open(O_CREAT)`: create (or, without `O_EXCL`, open) `name` in `parent` with the
    /// permission bits `perm` (the caller's umask applied, exactly: the daemon's own umask does not
    /// apply); returns its attributes and, with
    /// `handle`, a handle and its version (without: the version is pinned for handle-less I/O and the
    /// handle is 0 — the kernel sends no RELEASE once opens are message-free).
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        perm: u32,
        flags: i32,
        caller: Caller,
        handle: bool,
    ) -> Result<(Attr, u64, Arc<Version>), Errno> {
        self.count();
        self.writable()?;
        let (dir, rel) = self.parent_dir(parent, name)?;
        let perm = perm & 0o7777;
        let fresh = sys::open_in(
            dir.as_fd(),
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            perm,
        );
        let file = match fresh {
            Ok(f) => {
                // Exactly the mode asked for, where the daemon's umask took bits off.
                if perm & self.umask != 0 {
                    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(perm))
                        .map_err(|e| io_errno(&e))?;
                }
                self.chown_new(&dir, name, caller)?;
                f
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                let f = sys::open_in(dir.as_fd(), name, libc::O_RDWR | (flags & libc::O_TRUNC), 0)
                    .map_err(|e| io_errno(&e))?;
                if flags & libc::O_TRUNC != 0 {
                    let st = sys::fstat(f.as_fd()).map_err(|e| io_errno(&e))?;
                    self.drop_privs(f.as_fd(), &st)?;
                }
                f
            }
            Err(e) => return Err(io_errno(&e)),
        };
        let a = self.entry_at(parent, &dir, name)?;
        if a.kind != super::fs::Kind::File {
            return Err(libc::EISDIR);
        }
        let v = Version {
            ino: a.ino,
            file,
            writable: true,
            touched_ms: AtomicU64::new(0),
        };
        self.touch(&rel, Touch::Writing);
        if handle {
            let (fh, v) = self.open_created(v);
            return Ok((a, fh, v));
        }
        let v = self.files.pin_created(v)?;
        Ok((a, 0, v))
    }

    /// `mknod`: regular files only (devices, FIFOs and sockets cannot be pushed: EPERM).
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        self.writable()?;
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return Err(libc::EPERM);
        }
        let (a, _, _) = self.create(parent, name, mode & !umask, libc::O_EXCL, caller, false)?;
        Ok(a)
    }

    /// `mkdir` (empty directories stay local: the remote has none).
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        self.count();
        self.writable()?;
        let (dir, rel) = self.parent_dir(parent, name)?;
        let perm = nix::sys::stat::Mode::from_bits_truncate((mode & !umask & 0o7777) as _);
        nix::sys::stat::mkdirat(&dir, name, perm).map_err(errno)?;
        // Exactly the mode asked for (the daemon's umask took bits off).
        nix::sys::stat::fchmodat(
            &dir,
            name,
            perm,
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .or_else(|e| {
            // Some kernels refuse AT_SYMLINK_NOFOLLOW for fchmodat: the directory was just made.
            if e == nix::errno::Errno::EOPNOTSUPP || e == nix::errno::Errno::ENOTSUP {
                nix::sys::stat::fchmodat(
                    &dir,
                    name,
                    perm,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
            } else {
                Err(e)
            }
        })
        .map_err(errno)?;
        self.chown_new(&dir, name, caller)?;
        let a = self.entry_at(parent, &dir, name)?;
        self.touch(&rel, Touch::Settled);
        Ok(a)
    }

    /// `unlink` of a file.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.count();
        self.writable()?;
        let (dir, rel) = self.parent_dir(parent, name)?;
        if let Ok(st) = sys::statx(dir.as_fd(), name) {
            self.files.unlinking(self.nodes.id_of(st.ino));
        }
        nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(errno)?;
        self.touch(&rel, Touch::Gone);
        Ok(())
    }

    /// `rmdir` (ENOTEMPTY when it is not empty).
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.count();
        self.writable()?;
        let (dir, rel) = self.parent_dir(parent, name)?;
        nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::RemoveDir).map_err(errno)?;
        self.touch(&rel, Touch::Gone);
        Ok(())
    }

    /// `rename` / `renameat2`: over an existing file atomically, `RENAME_NOREPLACE` and
    /// `RENAME_EXCHANGE` as the mirror's file system does them (EINVAL where it cannot).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        self.count();
        self.writable()?;
        let (from_dir, from_rel) = self.parent_dir(parent, name)?;
        let (to_dir, to_rel) = self.parent_dir(newparent, newname)?;
        let moved = sys::statx(from_dir.as_fd(), name).map_err(|e| io_errno(&e))?;
        let exchanged = if flags & libc::RENAME_EXCHANGE != 0 {
            Some(sys::statx(to_dir.as_fd(), newname).map_err(|e| io_errno(&e))?)
        } else {
            if let Ok(victim) = sys::statx(to_dir.as_fd(), newname) {
                if victim.ino != moved.ino {
                    self.files.unlinking(self.nodes.id_of(victim.ino));
                }
            }
            None
        };
        let from = sys::cstr(name).map_err(|e| io_errno(&e))?;
        let to = sys::cstr(newname).map_err(|e| io_errno(&e))?;
        // SAFETY: valid directory descriptors and NUL-terminated names.
        let rc = unsafe {
            libc::renameat2(
                from_dir.as_raw_fd(),
                from.as_ptr(),
                to_dir.as_raw_fd(),
                to.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            return Err(io_errno(&std::io::Error::last_os_error()));
        }
        self.nodes
            .moved(self.nodes.id_of(moved.ino), newparent, newname);
        if let Some(other) = exchanged {
            self.nodes.moved(self.nodes.id_of(other.ino), parent, name);
            self.touch(&from_rel, Touch::Settled);
        } else {
            self.touch(&from_rel, Touch::Gone);
        }
        self.touch(&to_rel, Touch::Settled);
        Ok(())
    }

    /// `link`: hard links cannot be pushed (the remote holds files, not inodes): EPERM.
    pub fn link(&self) -> Result<Attr, Errno> {
        self.writable()?;
        Err(libc::EPERM)
    }

    /// `symlink`: the remote holds no symlinks: EPERM.
    pub fn symlink(&self) -> Result<Attr, Errno> {
        self.writable()?;
        Err(libc::EPERM)
    }

    /// Extended attributes are not kept (the remote has none): EOPNOTSUPP.
    pub fn setxattr(&self) -> Result<(), Errno> {
        self.writable()?;
        Err(libc::EOPNOTSUPP)
    }

    /// `chmod`, `chown`, `truncate` and `utimens` of node `id`.
    /// Modes and owners are kept locally (the remote has neither); owners change only when the daemon
    /// runs as root (else EPERM). A size change is a change of content, pushed.
    pub fn setattr(&self, id: u64, s: SetAttr) -> Result<Attr, Errno> {
        self.count();
        self.writable()?;
        let rel = self.path_of(id)?;
        if id == ROOT && s.size.is_some() {
            return Err(libc::EISDIR);
        }
        let (target, before) = self.setattr_target(id, &rel, s.size.is_some())?;
        let mut changed = false;
        if let Some(mode) = s.mode {
            target.chmod(mode)?;
            changed = true;
        }
        if s.uid.is_some() || s.gid.is_some() {
            changed |= self.chown(target.fd(), &before, s.uid, s.gid)?;
        }
        if let Some(size) = s.size {
            target.truncate(size)?;
            changed = true;
        }
        if s.atime.is_some() || s.mtime.is_some() {
            target.set_times([timespec(s.atime), timespec(s.mtime)])?;
            changed = true;
        }
        if s.size.is_some() || s.mtime.is_some() {
            self.touch(&rel, Touch::Writing);
        }
        let fstat = || sys::fstat(target.fd()).map_err(|e| io_errno(&e));
        let mut st = if changed { fstat()? } else { before };
        // A chown or a truncation drops the set-ID bits (see `drop_privs`), unless this very call
        // sets the mode (a kernel that drops them itself sends the mode it computed).
        let drops = s.uid.is_some() || s.gid.is_some() || s.size.is_some();
        if s.mode.is_none() && drops {
            if let Some(mode) = self.privs_dropped(&st) {
                target.chmod(mode)?;
                st = fstat()?;
            }
        }
        Ok(self.attr_of(&st))
    }

    /// The file a `setattr` of node `id` acts on, and its attributes: the version a handle or the
    /// kernel keeps open while it is still the node's file (no path walk: `tar` sets three attributes
    /// of every file it writes), else the node's path (checked to be the node), else the kept version
    /// of a file deleted or replaced while open (`ftruncate`, `fchmod`).
    fn setattr_target(
        &self,
        id: u64,
        rel: &OsStr,
        resize: bool,
    ) -> Result<(Target, sys::Stat), Errno> {
        let kept = self.files.kept(id);
        let node = |fd: std::os::fd::BorrowedFd<'_>| {
            sys::fstat(fd)
                .ok()
                .filter(|st| st.nlink > 0 && self.nodes.id_of(st.ino) == id)
        };
        if let Some(v) = kept.as_ref() {
            if let Some(st) = node(v.file.as_fd()) {
                return Ok((Target::Open(v.clone()), st));
            }
        }
        if let Ok(fd) = sys::open_beneath(self.root_fd.as_fd(), rel, nix::fcntl::OFlag::O_PATH) {
            if let Some(st) = node(fd.as_fd()) {
                return Ok((Target::Path(fd), st));
            }
        }
        let v = kept.ok_or(libc::ENOENT)?;
        let st = if resize {
            self.check_current(&v)?
        } else {
            sys::fstat(v.file.as_fd()).map_err(|e| io_errno(&e))?
        };
        Ok((Target::Open(v), st))
    }

    /// Change the owner of `fd` (whose attributes are `now`) to the caller-given ids (mapped to the
    /// mirror's): only as root. Returns whether they changed.
    fn chown(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        now: &sys::Stat,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<bool, Errno> {
        let (uid, gid) = self.backing_ids(uid, gid);
        let change = uid.is_some_and(|u| u != now.uid) || gid.is_some_and(|g| g != now.gid);
        if !change {
            return Ok(false);
        }
        if !self.root_user {
            return Err(libc::EPERM);
        }
        nix::unistd::fchownat(
            fd,
            "",
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(errno)?;
        Ok(true)
    }
}

/// What a `setattr` acts on: an open version of the file, or an `O_PATH` descriptor of it (whose
/// `/proc/self/fd` link names this very inode for the calls an `O_PATH` descriptor cannot make).
enum Target {
    Open(Arc<Version>),
    Path(OwnedFd),
}

impl Target {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Target::Open(v) => v.file.as_fd(),
            Target::Path(fd) => fd.as_fd(),
        }
    }

    fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd().as_raw_fd())
    }

    fn chmod(&self, mode: u32) -> Result<(), Errno> {
        let mode = nix::sys::stat::Mode::from_bits_truncate((mode & 0o7777) as _);
        match self {
            Target::Open(v) => nix::sys::stat::fchmod(v.file.as_fd(), mode).map_err(errno),
            Target::Path(_) => nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                self.proc_path().as_str(),
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(errno),
        }
    }

    fn truncate(&self, size: u64) -> Result<(), Errno> {
        match self {
            Target::Open(v) if v.writable => v.file.set_len(size).map_err(|e| io_errno(&e)),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(self.proc_path())
                .and_then(|f| f.set_len(size))
                .map_err(|e| io_errno(&e)),
        }
    }

    fn set_times(&self, times: [libc::timespec; 2]) -> Result<(), Errno> {
        let rc = match self {
            // SAFETY: an open descriptor and two timespecs.
            Target::Open(v) => unsafe { libc::futimens(v.file.as_raw_fd(), times.as_ptr()) },
            Target::Path(_) => {
                let c = sys::cstr(OsStr::new(&self.proc_path())).map_err(|e| io_errno(&e))?;
                // SAFETY: a NUL-terminated path and two timespecs.
                unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) }
            }
        };
        if rc != 0 {
            return Err(io_errno(&std::io::Error::last_os_error()));
        }
        Ok(())
    }
}
