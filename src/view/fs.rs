//! The read-only file system view: answers lookup, getattr, readdir, open/read and statfs from the state
//! database and the local mirror only (no network), with no FUSE types so it can be tested without a
//! kernel. [`crate::view::fuse`] maps fuser calls onto it.
//!
//! Errors are libc errno values (`i32`).
//!
//! Consistency: an open file handle holds an opened `std::fs::File` of the local copy, and the sync
//! engine replaces local files by atomic rename, so a handle keeps reading the version it opened until it
//! is closed; a fresh open sees the current version.
//!
//! Directory offsets: `.` is offset 1, `..` offset 2, and the i-th child in name order (0-based) has
//! offset `3 + i`. A directory handle remembers the names at the offsets it returned (the last batch,
//! plus every 256th offset), so the next page continues by name keyset (`name > last`) and a repeated
//! or earlier offset is answered by walking forward from the nearest remembered name.
pub use crate::store::db::Kind;
use crate::store::db::{Entry, StateError, StateReader, ROOT_INO};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A libc errno value.
pub type Errno = i32;

/// Block size reported in attributes and statfs.
pub const BLKSIZE: u32 = 4096;
/// Offsets of `.` and `..` in a directory stream; children start at `FIRST_CHILD_OFFSET`.
pub const DOT_OFFSET: u64 = 1;
pub const DOTDOT_OFFSET: u64 = 2;
pub const FIRST_CHILD_OFFSET: u64 = 3;
/// Every this many offsets a directory handle keeps a bookmark (name at that offset).
const SPARSE_EVERY: u64 = 256;
/// Largest page asked from the database while skipping forward to an offset.
const SKIP_CHUNK: usize = 1024;

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

struct OpenFile {
    file: File,
    /// Size of the version this handle opened.
    size: u64,
}

struct DirCursor {
    ino: u64,
    /// (offset, name) of the entries of the last page returned.
    recent: Vec<(u64, String)>,
    /// Bookmarks every `SPARSE_EVERY` offsets.
    sparse: BTreeMap<u64, String>,
}

/// The read-only view over a [`StateReader`] and the mirror root.
pub struct MirrorFs {
    readers: Vec<Mutex<StateReader>>,
    next_reader: AtomicUsize,
    root: PathBuf,
    opts: FsOptions,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirCursor>>>>,
    next_fh: AtomicU64,
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
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn options(&self) -> &FsOptions {
        &self.opts
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run `f` with a free database connection (or wait for one); a database error becomes EIO.
    fn db<R>(&self, f: impl FnOnce(&StateReader) -> Result<R, StateError>) -> Result<R, Errno> {
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
            Some(e) => Ok(self.attr_of(&e)),
            None => {
                // Tell a missing parent or a file parent apart from a missing name.
                self.dir_entry(parent)?;
                Err(libc::ENOENT)
            }
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        Ok(self.attr_of(&self.entry(ino)?))
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

    /// Open file `ino` for reading; returns a handle id. The handle reads the version opened now even if
    /// the mirror replaces the file later.
    pub fn open(&self, ino: u64) -> Result<u64, Errno> {
        let e = self.entry(ino)?;
        if e.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.root.join(&e.path))
            .map_err(|err| match err.raw_os_error() {
                // A symlink planted in the mirror is not ours to follow.
                Some(libc::ELOOP) => libc::EIO,
                _ => io_errno(&err),
            })?;
        let meta = file.metadata().map_err(|e| io_errno(&e))?;
        if !meta.is_file() {
            return Err(libc::EIO);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            Arc::new(OpenFile {
                file,
                size: meta.size(),
            }),
        );
        Ok(fh)
    }

    /// Read up to `size` bytes at `offset` from open handle `fh` (short only at end of file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let f = lock(&self.files).get(&fh).cloned().ok_or(libc::EBADF)?;
        let want = (size as u64).min(f.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match f.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_errno(&e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// Number of open file handles (for tests and status).
    pub fn open_files(&self) -> usize {
        lock(&self.files).len()
    }

    /// Open directory `ino`; returns a directory handle id.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        self.dir_entry(ino)?;
        let dh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(
            dh,
            Arc::new(Mutex::new(DirCursor {
                ino,
                recent: Vec::new(),
                sparse: BTreeMap::new(),
            })),
        );
        Ok(dh)
    }

    pub fn releasedir(&self, dh: u64) {
        lock(&self.dirs).remove(&dh);
    }

    /// Up to `max` entries of directory handle `dh` after stream offset `offset` (0 = from the start,
    /// including `.` and `..`). An empty page means the end of the directory.
    pub fn readdir(&self, dh: u64, offset: u64, max: usize) -> Result<Vec<DirEntry>, Errno> {
        let cursor = lock(&self.dirs).get(&dh).cloned().ok_or(libc::EBADF)?;
        let mut cur = lock(&cursor);
        let dir = self.dir_entry(cur.ino)?;
        let mut out = Vec::new();
        let mut off = offset;
        if max == 0 {
            return Ok(out);
        }
        if off < DOT_OFFSET {
            out.push(DirEntry {
                ino: dir.ino,
                offset: DOT_OFFSET,
                kind: Kind::Dir,
                name: ".".into(),
                attr: self.attr_of(&dir),
            });
            off = DOT_OFFSET;
        }
        if off < DOTDOT_OFFSET && out.len() < max {
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
                attr: self.attr_of(&parent),
            });
            off = DOTDOT_OFFSET;
        }
        if out.len() >= max {
            return Ok(out);
        }
        // `off` is now the offset of the last entry already seen (>= 2): find its name.
        let after: Option<String> = if off == DOTDOT_OFFSET {
            None
        } else {
            match self.name_at(&cur, off)? {
                Some(n) => Some(n),
                None => return Ok(out), // past the end
            }
        };
        let children = self.db(|r| r.children(dir.ino, after.as_deref(), max - out.len()))?;
        let mut batch = Vec::with_capacity(children.len());
        for (i, c) in children.into_iter().enumerate() {
            let o = off + 1 + i as u64;
            batch.push((o, c.name.clone()));
            if o.is_multiple_of(SPARSE_EVERY) {
                cur.sparse.insert(o, c.name.clone());
            }
            out.push(DirEntry {
                ino: c.ino,
                offset: o,
                kind: c.kind,
                attr: self.attr_of(&c),
                name: c.name,
            });
        }
        if !batch.is_empty() {
            cur.recent = batch;
        }
        Ok(out)
    }

    /// Name of the child at stream offset `off` (>= FIRST_CHILD_OFFSET), or None past the end.
    fn name_at(&self, cur: &DirCursor, off: u64) -> Result<Option<String>, Errno> {
        let mut best: Option<(u64, &str)> = None;
        for (o, n) in &cur.recent {
            if *o <= off && best.is_none_or(|(b, _)| *o > b) {
                best = Some((*o, n));
            }
        }
        if let Some((o, n)) = cur.sparse.range(..=off).next_back() {
            if best.is_none_or(|(b, _)| *o > b) {
                best = Some((*o, n));
            }
        }
        let (mut at, mut name) = match best {
            Some((o, n)) => (o, Some(n.to_string())),
            None => (DOTDOT_OFFSET, None),
        };
        while at < off {
            let n = ((off - at) as usize).min(SKIP_CHUNK);
            let page = self.db(|r| r.children(cur.ino, name.as_deref(), n))?;
            if page.len() < n {
                return Ok(None);
            }
            at += n as u64;
            name = page.into_iter().last().map(|e| e.name);
        }
        Ok(name)
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
        let fh = fs.open(b.ino).unwrap();
        assert_eq!(fs.read(fh, 0, 100).unwrap(), b"hello");
        assert_eq!(fs.read(fh, 2, 2).unwrap(), b"ll");
        assert_eq!(fs.read(fh, 10, 2).unwrap(), b"");
        fs.release(fh);
        assert_eq!(fs.read(fh, 0, 1).unwrap_err(), libc::EBADF);
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
    fn readdir_pages_and_repeats() {
        let names: Vec<String> = (0..700).map(|i| format!("d/f{i:04}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let (_d, _st, fs) = setup(&files);
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        let dh = fs.opendir(d.ino).unwrap();
        // Tiny pages: 0..10 entries each, like the reference tests of mountpoint-s3.
        let mut all = Vec::new();
        let mut off = 0;
        let mut step = 0usize;
        loop {
            assert!(fs.readdir(dh, off, 0).unwrap().is_empty());
            let page = fs.readdir(dh, off, step % 10 + 1).unwrap();
            step += 1;
            if page.is_empty() {
                break;
            }
            if let Some(last) = page.last() {
                off = last.offset;
            }
            all.extend(page.into_iter().map(|e| e.name));
        }
        assert_eq!(all.len(), 702);
        assert_eq!(&all[..3], &[".", "..", "f0000"]);
        let mut sorted = all[2..].to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), 700);
        // A repeated or earlier offset is answered again.
        let again = fs.readdir(dh, 300, 2).unwrap();
        assert_eq!(again[0].name, format!("f{:04}", 300 - 2));
        assert_eq!(again[0].offset, 301);
        let early = fs.readdir(dh, 5, 1).unwrap();
        assert_eq!(early[0].name, "f0003");
        // A fresh handle seeking straight to an offset walks forward.
        let dh2 = fs.opendir(d.ino).unwrap();
        assert_eq!(fs.readdir(dh2, 600, 1).unwrap()[0].name, "f0598");
        assert!(fs.readdir(dh2, 702, 5).unwrap().is_empty());
        assert!(fs.readdir(dh2, 5000, 5).unwrap().is_empty());
        fs.releasedir(dh);
        fs.releasedir(dh2);
    }
}
