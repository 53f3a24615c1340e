//! The local mirror on disk: verified, atomic writes (an unnamed `O_TMPFILE` linked in, or a temp file in
//! `<root>/.mountd/tmp` renamed over the target),
//! deletes, and the durability barrier used before each checkpoint commit.
//!
//! fsync policy: files are not fsynced one by one. Before each checkpoint is committed to SQLite the
//! whole file system of the root is flushed with `syncfs(2)`, so a committed record never points at bytes
//! that a power loss could take back. Between checkpoints, a crash may lose uncommitted files; the next
//! run re-verifies them by hash.
use crate::store::paths::{self, RESERVED_DIR};
use crate::store::space::Need;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why writing a file into the mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The content is unusable (bad base64, hash mismatch...): a problem of this one file.
    #[error("{0}")]
    Content(String),
    /// The local disk failed (full, read-only, permissions...): a problem of the whole run. `need`:
    /// how much room the write needed, when known (for a full disk's message).
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        source: io::Error,
        need: Option<Need>,
    },
}

impl WriteError {
    pub fn local(path: &Path, source: io::Error) -> WriteError {
        WriteError::Local {
            path: path.to_path_buf(),
            source,
            need: None,
        }
    }

    /// Say which mirrored file was being written and how much room it needed (unless already said).
    /// A full disk is then reported under that file rather than under its temp file in the reserved
    /// directory (the same file system); any other error keeps the path that failed.
    pub fn writing(self, target: &Path, needed: Need) -> WriteError {
        match self {
            WriteError::Local { path, source, need } => {
                let full = matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
                WriteError::Local {
                    path: if full { target.to_path_buf() } else { path },
                    source,
                    need: need.or(Some(needed)),
                }
            }
            other => other,
        }
    }
}

/// What a verified write did ([`LocalStore::write_unless_same`], `sync::content::place`), with the
/// identity ([`LocalStore::stat_key`]) of the file now at the path when it is known without another
/// `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Written(Option<String>),
    /// The local file already held these bytes; it was left alone.
    Same(Option<String>),
}

impl Placement {
    /// The identity of the local file now at the path, when known.
    pub fn into_stat_key(self) -> Option<String> {
        match self {
            Placement::Written(k) | Placement::Same(k) => k,
        }
    }
}

/// A local file's identity: inode, change time, size.
pub fn key_of(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{}:{}.{}:{}", m.ino(), m.ctime(), m.ctime_nsec(), m.size())
}

pub struct LocalStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Directories already known to be real directories (not symlinks) under the root.
    known_dirs: Mutex<HashSet<String>>,
    seq: AtomicU64,
    /// How unnamed temp files (`O_TMPFILE`) are linked in; `None`: not supported, named temp files.
    unnamed: Option<LinkBy>,
}

impl LocalStore {
    /// Open (and create) the mirror root and its reserved directory.
    pub fn open(root: &Path) -> io::Result<LocalStore> {
        fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let tmp = root.join(RESERVED_DIR).join("tmp");
        fs::create_dir_all(&tmp)?;
        // Leftovers of a killed run are never part of the mirror.
        for entry in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        let unnamed = unnamed_works(&tmp);
        Ok(LocalStore {
            root,
            tmp,
            known_dirs: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
            unnamed,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// True when the local file exists and its bytes hash to `hash` (a missing file is `false`; any other
    /// read failure is an error).
    pub fn matches_hash(&self, rel: &str, hash: &str) -> io::Result<bool> {
        let path = self.abs(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(false),
            // Missing, or a parent is a file (the remote replaced that file by a directory).
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        Ok(hash_file(&path)?.eq_ignore_ascii_case(hash))
    }

    /// The identity of the local file (inode, change time, size): it changes whenever the file's bytes
    /// or metadata change or the file is replaced. `None` when it is missing or not a regular file.
    pub fn stat_key(&self, rel: &str) -> io::Result<Option<String>> {
        match fs::symlink_metadata(self.abs(rel)) {
            Ok(m) if m.is_file() => Ok(Some(key_of(&m))),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keep the local file `rel` as it is now under `copy` (relative to the root, in the reserved
    /// directory): a hard link, so the bytes are exact and the original path can be replaced
    /// atomically by the remote's version without touching them. A missing file is `Ok(false)`.
    pub fn keep_aside(&self, rel: &str, copy: &str) -> io::Result<bool> {
        let target = self.abs(copy);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir)?;
        }
        match fs::hard_link(self.abs(rel), &target) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The identity (see [`LocalStore::stat_key`]) and metadata of `rel`, without following a symlink.
    pub fn lstat(&self, rel: &str) -> io::Result<Option<fs::Metadata>> {
        match fs::symlink_metadata(self.abs(rel)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// SHA-256 of the local file `rel`.
    pub fn hash(&self, rel: &str) -> io::Result<String> {
        hash_file(&self.abs(rel))
    }

    /// Size of the local file, if it is a regular file (`None` when missing or not a file).
    pub fn file_size(&self, rel: &str) -> io::Result<Option<u64>> {
        match fs::symlink_metadata(self.abs(rel)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Make sure `rel` (relative dir) exists as a real directory chain under the root.
    pub fn ensure_dir(&self, rel: &str) -> io::Result<()> {
        if rel.is_empty() || self.known_dirs.lock().unwrap().contains(rel) {
            return Ok(());
        }
        let mut built = String::new();
        for seg in rel.split('/') {
            if !built.is_empty() {
                built.push('/');
            }
            built.push_str(seg);
            if self.known_dirs.lock().unwrap().contains(&built) {
                continue;
            }
            let p = self.abs(&built);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(io::Error::other(format!(
                        "{built} is a symlink; refusing to follow it"
                    )))
                }
                Ok(_) => {
                    // The remote has a directory where the mirror still holds a file (a file replaced
                    // by a directory): the mirror is ours, the stale file goes.
                    fs::remove_file(&p)?;
                    fs::create_dir(&p)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&p).or_else(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?
                }
                Err(e) => return Err(e),
            }
            self.known_dirs.lock().unwrap().insert(built.clone());
        }
        Ok(())
    }

    /// Write `bytes` to `rel` atomically: temp file in the reserved dir, then rename over the target.
    /// An open reader of the old file keeps reading the old version.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), WriteError> {
        self.write_atomic_with(rel, |f, tmp| {
            f.write_all(bytes).map_err(|e| WriteError::local(tmp, e))
        })
        .map_err(|e| e.writing(&self.abs(rel), Need::Exact(bytes.len() as u64)))
    }

    /// Like [`LocalStore::write_atomic`], with the content produced by `fill` into the temp file (it gets
    /// the file and the path for error messages); an error from `fill` (a hash mismatch found while
    /// decoding, say) leaves the target untouched.
    ///
    /// Where the file system supports it the content goes into an unnamed file (`O_TMPFILE`) in the
    /// target's own directory that is then linked in under its name: no temp name, nothing left behind
    /// by a crash, and no cross-directory rename (which serialises on a per-file-system lock). A target
    /// that already exists is replaced by linking the unnamed file into the reserved dir and renaming it
    /// over the target, which keeps the replacement atomic.
    pub fn write_atomic_with<T>(
        &self,
        rel: &str,
        fill: impl FnOnce(&mut fs::File, &Path) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        let parent = paths::parent(rel);
        self.ensure_dir(parent)
            .map_err(|e| WriteError::local(&self.abs(parent), e))?;
        let target = self.abs(rel);
        if let Some(by) = self.unnamed {
            match self.in_dir(parent, || open_unnamed(&self.abs(parent))) {
                Ok(mut f) => {
                    let v = fill(&mut f, &target)?;
                    self.link_unnamed(&f, by, rel, &target)?;
                    return Ok(v);
                }
                Err(e) => return Err(WriteError::local(&target, e)),
            }
        }
        self.clear_dir_in_way(rel, &target)?;
        let tmp = self.tmp_path();
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(|e| WriteError::local(&tmp, e))?;
            let v = fill(&mut f, &tmp)?;
            keep_mode(&target, &f);
            drop(f);
            fs::rename(&tmp, &target).map_err(|e| WriteError::local(&target, e))?;
            Ok(v)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Put `bytes` (whose SHA-256 is `sha256`) at `rel` unless the local file already holds exactly
    /// them. With unnamed files the new name is tried first and the local file is only looked at when
    /// the name is taken (no `stat` before creating a new file); the identity of the file written is
    /// taken from its descriptor.
    pub fn write_unless_same(
        &self,
        rel: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Placement, WriteError> {
        let target = self.abs(rel);
        let local = |e| WriteError::local(&target, e);
        let same = |m: &fs::Metadata| -> Result<bool, WriteError> {
            Ok(m.is_file()
                && m.len() == bytes.len() as u64
                && hash_file(&target)
                    .map_err(local)?
                    .eq_ignore_ascii_case(sha256))
        };
        let Some(by) = self.unnamed else {
            if let Ok(m) = fs::symlink_metadata(&target) {
                if same(&m)? {
                    return Ok(Placement::Same(Some(key_of(&m))));
                }
            }
            self.write_atomic(rel, bytes)?;
            return Ok(Placement::Written(None));
        };
        let parent = paths::parent(rel);
        self.ensure_dir(parent)
            .map_err(|e| WriteError::local(&self.abs(parent), e))?;
        let mut f = self
            .in_dir(parent, || open_unnamed(&self.abs(parent)))
            .map_err(local)?;
        f.write_all(bytes).map_err(local)?;
        match link_unnamed_at(&f, &target, by) {
            Ok(()) => return Ok(Placement::Written(f.metadata().ok().map(|m| key_of(&m)))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(local(e)),
        }
        if let Ok(m) = fs::symlink_metadata(&target) {
            if same(&m)? {
                return Ok(Placement::Same(Some(key_of(&m))));
            }
        }
        self.replace_with_unnamed(&f, by, rel, &target)?;
        Ok(Placement::Written(None))
    }

    /// Give the unnamed file `f` the name `target`: a new name is linked at once; an existing file is
    /// replaced atomically (link into the reserved dir, rename over it); a directory in the way goes.
    fn link_unnamed(
        &self,
        f: &fs::File,
        by: LinkBy,
        rel: &str,
        target: &Path,
    ) -> Result<(), WriteError> {
        match link_unnamed_at(f, target, by) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.replace_with_unnamed(f, by, rel, target)
            }
            Err(e) => Err(WriteError::local(target, e)),
        }
    }

    /// Replace whatever is at `target` by the unnamed file `f`, atomically for a file (linked into the
    /// reserved dir, renamed over it); a directory in the way goes.
    fn replace_with_unnamed(
        &self,
        f: &fs::File,
        by: LinkBy,
        rel: &str,
        target: &Path,
    ) -> Result<(), WriteError> {
        self.clear_dir_in_way(rel, target)?;
        keep_mode(target, f);
        let tmp = self.tmp_path();
        link_unnamed_at(f, &tmp, by).map_err(|e| WriteError::local(&tmp, e))?;
        fs::rename(&tmp, target).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            WriteError::local(target, e)
        })
    }

    /// The remote replaced a directory by a file: remove the stale local tree at `rel`.
    fn clear_dir_in_way(&self, rel: &str, target: &Path) -> Result<(), WriteError> {
        if let Ok(m) = fs::symlink_metadata(target) {
            if m.is_dir() {
                fs::remove_dir_all(target).map_err(|e| WriteError::local(target, e))?;
                self.forget_dirs(rel);
            }
        }
        Ok(())
    }

    /// A fresh name in the reserved temp directory.
    fn tmp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}.{n}.tmp", std::process::id()))
    }

    /// A new, empty temp file in the reserved directory; removed on drop unless [`LocalStore::persist`]ed.
    pub fn temp_file(&self) -> io::Result<TempFile> {
        let path = self.tmp_path();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        Ok(TempFile {
            file,
            path: Some(path),
        })
    }

    /// A scratch file in the reserved directory that has no name (gone when closed).
    pub fn scratch_file(&self) -> io::Result<fs::File> {
        let mut t = self.temp_file()?;
        let path = t.path.take().expect("fresh temp file has a path");
        fs::remove_file(&path)?;
        t.file.try_clone()
    }

    /// Move a finished temp file into place at `rel` (atomic rename; an open reader of the old file
    /// keeps its version). A directory in the way (the remote replaced it by a file) is removed.
    pub fn persist(&self, mut tmp: TempFile, rel: &str) -> Result<(), WriteError> {
        let parent = paths::parent(rel);
        self.ensure_dir(parent)
            .map_err(|e| WriteError::local(&self.abs(parent), e))?;
        let target = self.abs(rel);
        self.clear_dir_in_way(rel, &target)?;
        keep_mode(&target, &tmp.file);
        let from = tmp.path.take().expect("temp file not persisted twice");
        self.in_dir(parent, || fs::rename(&from, &target))
            .map_err(|e| {
                let _ = fs::remove_file(&from);
                WriteError::local(&target, e)
            })
    }

    /// Remove a file (missing, or a directory in its place, is fine).
    pub fn remove_file(&self, rel: &str) -> io::Result<()> {
        let p = self.abs(rel);
        match fs::symlink_metadata(&p) {
            // Not there, or not a file (a directory now stands there, or a parent is a file).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(()),
            Ok(m) if m.is_dir() => return Ok(()),
            _ => {}
        }
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove a directory if it is empty (non-empty or missing is fine).
    pub fn remove_dir_if_empty(&self, rel: &str) {
        if fs::remove_dir(self.abs(rel)).is_ok() {
            self.forget_dirs(rel);
        }
    }

    /// Run `op` in directory `dir` (made sure of by [`LocalStore::ensure_dir`]); when it finds the
    /// directory gone (a user removed or renamed it in a two-way mirror since it was made), make it
    /// again and run `op` once more.
    fn in_dir<T>(&self, dir: &str, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Any directory of the chain may be the one that went.
                self.known_dirs.lock().unwrap().clear();
                self.ensure_dir(dir)?;
                op()
            }
            r => r,
        }
    }

    fn forget_dirs(&self, rel: &str) {
        let prefix = format!("{rel}/");
        self.known_dirs
            .lock()
            .unwrap()
            .retain(|d| d != rel && !d.starts_with(&prefix));
    }

    /// Regular files in the mirror (outside the reserved dir), counted up to `limit`.
    pub fn count_files(&self, limit: u64) -> u64 {
        let mut n = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() && !(dir == self.root && e.file_name() == RESERVED_DIR) {
                    stack.push(e.path());
                } else if ft.is_file() {
                    n += 1;
                    if n >= limit {
                        return n;
                    }
                }
            }
        }
        n
    }

    /// Every regular file below the root (the reserved directory left out), a directory at a time:
    /// `each` gets the directory (relative) and the names of up to `max` of its files, with `whole`
    /// when they are all of them (a larger directory comes in several calls, none of them whole).
    pub fn walk_file_names(
        &self,
        max: usize,
        mut each: impl FnMut(&str, Vec<String>, bool) -> std::ops::ControlFlow<()>,
    ) -> io::Result<()> {
        let max = max.max(1);
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let (mut names, mut split) = (Vec::new(), false);
            for e in rd {
                let e = e?;
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                if rel.is_empty() && name == RESERVED_DIR {
                    continue;
                }
                let ft = e.file_type()?;
                if ft.is_dir() {
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child));
                } else if ft.is_file() {
                    names.push(name);
                    if names.len() >= max {
                        split = true;
                        if each(&rel, std::mem::take(&mut names), false).is_break() {
                            return Ok(());
                        }
                    }
                }
            }
            if !names.is_empty() && each(&rel, names, !split).is_break() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Durability barrier before a checkpoint commit: flush the root's file system.
    pub fn sync(&self) -> io::Result<()> {
        let f = fs::File::open(&self.root)?;
        nix::unistd::syncfs(&f).map_err(io::Error::from)
    }
}

/// A temp file in the mirror's reserved directory, removed on drop unless persisted.
pub struct TempFile {
    file: fs::File,
    path: Option<PathBuf>,
}

impl TempFile {
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// A lookup error that means "no such file here": missing, or a path component is a file (ENOTDIR), as
/// when the remote replaced that file by a directory and the mirror has not caught up yet.
/// A new version of a file keeps the permission bits of the one it replaces (a mode set locally:
/// `chmod +x` through the mount; the remote has no modes). Best effort.
fn keep_mode(target: &Path, new: &fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(old) = fs::symlink_metadata(target) {
        let mode = old.permissions().mode() & 0o7777;
        if old.is_file() && mode != 0o644 {
            let _ = new.set_permissions(fs::Permissions::from_mode(mode));
        }
    }
}

/// An unnamed file (`O_TMPFILE`) in directory `dir`, to be linked in when complete.
fn open_unnamed(dir: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o644)
        .open(dir)
}

/// How an unnamed file is linked in: `linkat(fd, "", AT_EMPTY_PATH)` (Linux >= 6.10 for the opener
/// without CAP_DAC_READ_SEARCH) or through its `/proc/self/fd` link (a path walk through procfs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkBy {
    EmptyPath,
    Proc,
}

/// Link the unnamed file `f` in as `to`; fails with `AlreadyExists` when `to` exists.
fn link_unnamed_at(f: &fs::File, to: &Path, by: LinkBy) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    match by {
        LinkBy::EmptyPath => nix::unistd::linkat(
            f,
            "",
            nix::fcntl::AT_FDCWD,
            to,
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        ),
        LinkBy::Proc => nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            format!("/proc/self/fd/{}", f.as_raw_fd()).as_str(),
            nix::fcntl::AT_FDCWD,
            to,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        ),
    }
    .map_err(io::Error::from)
}

/// Whether (and how) unnamed files can be created in `dir` and linked in; tried once when the store
/// opens.
fn unnamed_works(dir: &Path) -> Option<LinkBy> {
    let probe = dir.join(format!("{}.probe.tmp", std::process::id()));
    let mut last = None;
    for by in [LinkBy::EmptyPath, LinkBy::Proc] {
        let r = open_unnamed(dir).and_then(|f| link_unnamed_at(&f, &probe, by));
        let _ = fs::remove_file(&probe);
        match r {
            Ok(()) => return Some(by),
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        tracing::debug!(error = %e, "unnamed temp files (O_TMPFILE) unavailable in the mirror; using named ones");
    }
    None
}

fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        s.write_atomic("a/b/c.bin", b"\x00\x01").unwrap();
        assert_eq!(fs::read(dir.path().join("a/b/c.bin")).unwrap(), b"\x00\x01");
        assert!(s
            .matches_hash("a/b/c.bin", &crate::remote::types::sha256_hex(b"\x00\x01"))
            .unwrap());
        assert!(!s.matches_hash("a/b/c.bin", "00").unwrap());
        assert!(!s.matches_hash("missing", "00").unwrap());
        assert_eq!(
            fs::read_dir(dir.path().join(".mountd/tmp"))
                .unwrap()
                .count(),
            0
        );
        s.sync().unwrap();
    }

    /// Both ways of writing (an unnamed file linked in, a named temp file renamed) create, replace
    /// (an open reader keeps the old bytes), clear a directory in the way, and leave no temp file.
    #[test]
    fn writes_create_replace_and_clear_a_directory_either_way() {
        use std::io::Read as _;
        for named in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = LocalStore::open(dir.path()).unwrap();
            if named {
                s.unnamed = None;
            } else {
                assert!(
                    s.unnamed.is_some(),
                    "O_TMPFILE works on the test file system"
                );
            }
            s.write_atomic("d/f", b"one").unwrap();
            let mut old = fs::File::open(dir.path().join("d/f")).unwrap();
            s.write_atomic("d/f", b"two!").unwrap();
            assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), b"two!");
            let mut kept = String::new();
            old.read_to_string(&mut kept).unwrap();
            assert_eq!(kept, "one", "an open reader keeps its version");
            fs::create_dir_all(dir.path().join("d/g/h")).unwrap();
            fs::write(dir.path().join("d/g/h/x"), b"x").unwrap();
            s.write_atomic("d/g", b"file now").unwrap();
            assert_eq!(fs::read(dir.path().join("d/g")).unwrap(), b"file now");
            let err = s.write_atomic_with("d/bad", |_, _| -> Result<(), WriteError> {
                Err(WriteError::Content("hash mismatch".into()))
            });
            assert!(err.is_err());
            assert!(
                !dir.path().join("d/bad").exists(),
                "a failed fill leaves nothing"
            );
            assert_eq!(
                fs::read_dir(dir.path().join(".mountd/tmp"))
                    .unwrap()
                    .count(),
                0
            );
        }
    }

    #[test]
    fn refuses_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        assert!(s.write_atomic("evil/x", b"no").is_err());
        assert!(!outside.path().join("x").exists());
    }
}
