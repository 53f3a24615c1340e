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

    /// `creat`/`open(O_CREAT)`: create (or, without `O_EXCL`, open) `name` in `parent` with `mode`
    /// (less `umask`); returns its attributes, a handle and its version.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, u64, Arc<Version>), Errno> {
        self.count();
        self.writable()?;
        let (dir, rel) = self.parent_dir(parent, name)?;
        let keep = flags & (libc::O_EXCL | libc::O_TRUNC);
        let file = sys::open_in(
            dir.as_fd(),
            name,
            libc::O_CREAT | libc::O_RDWR | keep,
            mode & !umask & 0o7777,
        )
        .map_err(|e| io_errno(&e))?;
        self.chown_new(&dir, name, caller)?;
        let a = self.entry_at(parent, &dir, name)?;
        if a.kind != super::fs::Kind::File {
            return Err(libc::EISDIR);
        }
        let (fh, v) = self.open_created(Version {
            ino: a.ino,
            file,
            writable: true,
            touched_ms: AtomicU64::new(0),
        });
        self.touch(&rel, Touch::Writing);
        Ok((a, fh, v))
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
        let (a, fh, _) = self.create(parent, name, mode, umask, libc::O_EXCL, caller)?;
        self.release(fh);
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
        nix::sys::stat::mkdirat(
            &dir,
            name,
            nix::sys::stat::Mode::from_bits_truncate((mode & !umask & 0o7777) as _),
        )
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
        // Act on the file itself: the node's path (checked to be the node), or the version a handle
        // or the kernel still holds (a file deleted or replaced while open: ftruncate, fchmod).
        let target = match sys::open_beneath(self.root_fd.as_fd(), &rel, nix::fcntl::OFlag::O_PATH)
        {
            Ok(fd) if sys::fstat(fd.as_fd()).is_ok_and(|st| self.nodes.id_of(st.ino) == id) => fd,
            Ok(_) | Err(_) => {
                let v = self.files.kept(id).ok_or(libc::ENOENT)?;
                if s.size.is_some() {
                    self.check_current(&v)?;
                }
                OwnedFd::from(v.file.try_clone().map_err(|e| io_errno(&e))?)
            }
        };
        let proc_path = format!("/proc/self/fd/{}", target.as_raw_fd());
        if let Some(mode) = s.mode {
            // fchmod does not work on O_PATH descriptors; the magic link names this very inode.
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                nix::sys::stat::Mode::from_bits_truncate((mode & 0o7777) as _),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(errno)?;
        }
        if s.uid.is_some() || s.gid.is_some() {
            let (uid, gid) = self.backing_ids(s.uid, s.gid);
            let now = sys::fstat(target.as_fd()).map_err(|e| io_errno(&e))?;
            let change = uid.is_some_and(|u| u != now.uid) || gid.is_some_and(|g| g != now.gid);
            if change && !self.root_user {
                return Err(libc::EPERM);
            }
            if change {
                nix::unistd::fchownat(
                    &target,
                    "",
                    uid.map(nix::unistd::Uid::from_raw),
                    gid.map(nix::unistd::Gid::from_raw),
                    nix::fcntl::AtFlags::AT_EMPTY_PATH,
                )
                .map_err(errno)?;
            }
        }
        if let Some(size) = s.size {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&proc_path)
                .map_err(|e| io_errno(&e))?;
            f.set_len(size).map_err(|e| io_errno(&e))?;
        }
        if s.atime.is_some() || s.mtime.is_some() {
            let times = [timespec(s.atime), timespec(s.mtime)];
            let c = sys::cstr(OsStr::new(&proc_path)).map_err(|e| io_errno(&e))?;
            // SAFETY: a NUL-terminated path and two timespecs.
            let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
            if rc != 0 {
                return Err(io_errno(&std::io::Error::last_os_error()));
            }
        }
        if s.size.is_some() || s.mtime.is_some() {
            self.touch(&rel, Touch::Writing);
        }
        let st = sys::fstat(target.as_fd()).map_err(|e| io_errno(&e))?;
        Ok(self.attr_of(&st))
    }
}
