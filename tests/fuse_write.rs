//! The writable FUSE view (`--sync-mode mirror`, the default) end to end: the real `mountd` binary as a
//! service with `--mountpoint`, the reference remote on loopback, real FUSE mounts (root and /dev/fuse;
//! a test that cannot mount fails). What a user of the mount checks: the bytes read back through the
//! mount, the bytes on the server, errno values, exit codes, what the log and `mountd status` say.
//! Every wait is on a condition bounded by a deadline; nothing sleeps to synchronize.
mod common;
use common::*;
use mountd_remote::{ErrorFault, FailNext, Faults};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The service with a FUSE mount at `<tmp>/mnt`, its stderr collected.
struct Svc {
    child: Option<Child>,
    mnt: PathBuf,
    logs: Lines,
}

impl Svc {
    /// Start the service and wait until its mount serves.
    fn start(h: &Harness, extra: &[&str]) -> Svc {
        let mnt = h.tmp.path().join("mnt");
        // (A dead mount left there answers ENOTCONN: the service detaches it.)
        let _ = std::fs::create_dir(&mnt);
        let mut c = h.service_cmd();
        c.arg("--mountpoint")
            .arg(&mnt)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("service starts");
        let logs = Lines::collect(child.stderr.take().unwrap());
        let mut s = Svc {
            child: Some(child),
            mnt,
            logs,
        };
        s.wait_mounted();
        s
    }

    /// This process's mount is served (its log says so and the mountpoint answers).
    fn wait_mounted(&mut self) {
        let start = Instant::now();
        loop {
            if self.logs.count("FUSE data mode") > 0
                && is_mounted(&self.mnt)
                && std::fs::read_dir(&self.mnt).is_ok()
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the service ended ({st}) before mounting:\n{}",
                    self.logs.all()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "the mount did not come up within {WAIT:?}:\n{}",
                self.logs.all()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// SIGTERM and wait (at most 30 s): the exit code.
    fn stop(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < WAIT,
                "the service did not stop within {WAIT:?} of SIGTERM:\n{}",
                self.logs.all()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` and reap.
    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        assert_eq!(st.code(), None, "killed by a signal");
    }

    /// Wait until the server holds `want` at `path` (the log in the failure).
    fn wait_remote(&self, h: &Harness, path: &str, want: Option<&[u8]>) {
        let start = Instant::now();
        while h.remote.content(path).as_deref() != want {
            assert!(
                start.elapsed() < WAIT,
                "the server's {path} is {}, want {}\n{}",
                describe(h.remote.content(path).as_deref(), want),
                describe(want, None),
                self.logs.all()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until the server holds exactly `want` (relative path → bytes), nothing else.
    fn wait_server_tree(&self, h: &Harness, want: &BTreeMap<String, Vec<u8>>) {
        let start = Instant::now();
        loop {
            let got = remote_tree(h);
            if &got == want {
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "the server never held the mount's tree: {}\n{}",
                    diff(&got, want),
                    self.logs.all()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            let p = CString::new(self.mnt.as_os_str().as_bytes()).unwrap();
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn lossy(b: &[u8]) -> String {
    if b.len() > 200 {
        return format!("{} bytes", b.len());
    }
    String::from_utf8_lossy(b).into_owned()
}

/// `got` for a failure message (with the first offset where it differs from `other`, if given).
fn describe(got: Option<&[u8]>, other: Option<&[u8]>) -> String {
    let Some(g) = got else {
        return "absent".into();
    };
    let at = other.and_then(|o| {
        g.iter()
            .zip(o)
            .position(|(a, b)| a != b)
            .or((g.len() != o.len()).then(|| g.len().min(o.len())))
    });
    match at {
        Some(i) => format!("{:?} (differs from offset {i})", lossy(g)),
        None => format!("{:?}", lossy(g)),
    }
}

/// Every file on the server (path relative to the root → bytes).
fn remote_tree(h: &Harness) -> BTreeMap<String, Vec<u8>> {
    h.remote
        .workspace()
        .files()
        .into_iter()
        .map(|(p, b)| (p.trim_start_matches('/').to_string(), b))
        .collect()
}

/// What differs between two trees, for a failure message.
fn diff(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) -> String {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, v)| format!("{k}: {:?} != {:?}", lossy(&got[k]), lossy(v)))
        .collect();
    format!("missing {missing:?}, extra {extra:?}, differ {differ:?}")
}

fn assert_tree(what: &str, got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) {
    assert!(got == want, "{what}: {}", diff(got, want));
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
    r.expect_err("must fail").raw_os_error()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// The conflict copies kept under `<mirror>/.mountd/conflicts` (path relative to it → bytes).
fn copies(h: &Harness) -> BTreeMap<String, Vec<u8>> {
    let dir = h.local().join(".mountd/conflicts");
    if !dir.exists() {
        return Default::default();
    }
    read_tree(&dir)
}

/// Every event of the server's feed about `path`, oldest first: their types.
fn events_of(h: &Harness, path: &str) -> Vec<String> {
    let ws = h.remote.workspace();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page: serde_json::Value =
            serde_json::from_slice(&ws.events_json(cursor.as_deref(), 1000, false)).unwrap();
        let evs = page["events"].as_array().unwrap();
        for e in evs.iter().filter(|e| e["path"] == path) {
            out.push(e["type"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) if !evs.is_empty() => cursor = Some(c.to_string()),
            _ => return out,
        }
    }
}

fn in_outbox(h: &Harness, rel: &str) -> bool {
    h.state()
        .outbox()
        .map(|o| o.iter().any(|r| r.path == rel))
        .unwrap_or(false)
}

fn bytes(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// Seed the server with `files` (absolute paths without the leading `/` as keys).
fn seed(h: &Harness, files: &BTreeMap<String, Vec<u8>>) {
    for (k, v) in files {
        h.remote.put(&format!("/{k}"), v);
    }
}

#[test]
fn edits_reach_the_server() {
    edits(&[]);
}

#[test]
fn edits_reach_the_server_passthrough() {
    edits(&["--data-mode", "passthrough"]);
}

#[test]
fn edits_reach_the_server_direct_io() {
    edits(&["--data-mode", "direct-io"]);
}

#[test]
fn edits_reach_the_server_with_writeback_cache() {
    edits(&["--writeback-cache"]);
}

fn edits(extra: &[&str]) {
    let h = Harness::new();
    let mut want = bytes(&[
        ("README.md", b"# readme\n"),
        ("docs/a.txt", b"alpha alpha alpha\n"),
        ("docs/b.txt", b"bravo\n"),
        ("docs/gone.txt", b"to be deleted\n"),
        ("docs/t.txt", b"a long first version\n"),
        ("victim.txt", b"to be replaced\n"),
        ("old/x.txt", b"x\n"),
        ("old/sub/y.txt", b"y\n"),
        ("editor.md", b"draft 1\n"),
        ("docs/emptied.txt", b"emptied by O_TRUNC\n"),
        ("tree/one.txt", b"1\n"),
        ("tree/two.txt", b"2\n"),
        ("tree/sub/three.txt", b"3\n"),
    ]);
    seed(&h, &want);
    let mut svc = Svc::start(&h, extra);
    assert_tree("the first mount", &read_tree(&svc.mnt), &want);

    // Create (in new directories), then append with O_APPEND.
    std::fs::create_dir_all(svc.m("new/deep")).unwrap();
    let mut f = std::fs::File::create(svc.m("new/deep/n.txt")).unwrap();
    f.write_all(b"hello").unwrap();
    drop(f);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(svc.m("new/deep/n.txt"))
        .unwrap();
    f.write_all(b" world\n").unwrap();
    drop(f);
    want.insert("new/deep/n.txt".into(), b"hello world\n".to_vec());

    // Overwrite in place at an offset (no truncation).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(svc.m("README.md"))
        .unwrap();
    f.write_all_at(b"READ", 2).unwrap();
    drop(f);
    want.insert("README.md".into(), b"# READme\n".to_vec());

    // A sparse file: a hole of 64 KiB, then bytes.
    let f = std::fs::File::create(svc.m("sparse.bin")).unwrap();
    f.write_all_at(b"tail", 65536).unwrap();
    drop(f);
    let mut sparse = vec![0u8; 65536];
    sparse.extend_from_slice(b"tail");
    want.insert("sparse.bin".into(), sparse);

    // Truncate: shorter with truncate(2), and O_TRUNC then a new version.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(svc.m("docs/a.txt"))
        .unwrap();
    f.set_len(5).unwrap();
    drop(f);
    want.insert("docs/a.txt".into(), b"alpha".to_vec());
    std::fs::write(svc.m("docs/t.txt"), b"short\n").unwrap();
    want.insert("docs/t.txt".into(), b"short\n".to_vec());

    // O_TRUNC and nothing written: an emptied file.
    std::fs::File::create(svc.m("docs/emptied.txt")).unwrap();
    want.insert("docs/emptied.txt".into(), Vec::new());

    // Rename a file over another (atomic).
    std::fs::rename(svc.m("docs/b.txt"), svc.m("victim.txt")).unwrap();
    let b = want.remove("docs/b.txt").unwrap();
    want.insert("victim.txt".into(), b);

    // Rename a directory with files.
    std::fs::rename(svc.m("old"), svc.m("new-home")).unwrap();
    for (from, to) in [
        ("old/x.txt", "new-home/x.txt"),
        ("old/sub/y.txt", "new-home/sub/y.txt"),
    ] {
        let b = want.remove(from).unwrap();
        want.insert(to.into(), b);
    }

    // mkdir (an empty directory stays local) and mkdir + rmdir.
    std::fs::create_dir(svc.m("empty-dir")).unwrap();
    std::fs::create_dir(svc.m("tmp-dir")).unwrap();
    std::fs::remove_dir(svc.m("tmp-dir")).unwrap();

    // Unlink, and a whole tree removed (rm -r).
    std::fs::remove_file(svc.m("docs/gone.txt")).unwrap();
    want.remove("docs/gone.txt");
    std::fs::remove_dir_all(svc.m("tree")).unwrap();
    want.retain(|k, _| !k.starts_with("tree/"));

    // An editor's save: the new version written aside, then renamed over the file.
    std::fs::write(svc.m(".editor.md.swp"), b"draft 2, saved\n").unwrap();
    std::fs::rename(svc.m(".editor.md.swp"), svc.m("editor.md")).unwrap();
    want.insert("editor.md".into(), b"draft 2, saved\n".to_vec());

    // The mount reads back every byte at once, and so does the mirror behind it.
    assert_tree("through the mount", &read_tree(&svc.mnt), &want);
    assert!(svc.m("empty-dir").is_dir());
    assert!(!svc.m("tmp-dir").exists() && !svc.m("old").exists() && !svc.m("tree").exists());
    assert_tree("the mirror directory", &read_tree(&h.local()), &want);

    // The server comes to hold exactly the mount's tree (empty directories are local only).
    svc.wait_server_tree(&h, &want);
    assert_tree(
        "through the mount, after the push",
        &read_tree(&svc.mnt),
        &want,
    );
    assert!(svc.m("empty-dir").is_dir(), "the empty directory stays");
    for p in ["/victim.txt", "/editor.md"] {
        let evs = events_of(&h, p);
        assert!(
            !evs.iter().any(|t| t == "file.deleted"),
            "replaced by a rename: {p} was never missing on the server: {evs:?}"
        );
    }
    let code = svc.stop();
    assert_eq!(code, 0, "{}", svc.logs.all());
    assert!(!is_mounted(&svc.mnt));
}

#[test]
fn errno_contract() {
    let h = Harness::new();
    let want = bytes(&[
        ("a.txt", b"file a\n"),
        ("b.txt", b"file b\n"),
        ("dir/inside.txt", b"inside\n"),
        ("tool.sh", b"#!/bin/sh\necho tool\n"),
        ("grow.bin", b"abc"),
    ]);
    seed(&h, &want);
    let mut svc = Svc::start(&h, &[]);
    let (a, b) = (svc.m("a.txt"), svc.m("b.txt"));

    // O_CREAT|O_EXCL on an existing file.
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&a);
    assert_eq!(errno(r), Some(libc::EEXIST));
    // rmdir of a non-empty directory.
    assert_eq!(
        errno(std::fs::remove_dir(svc.m("dir"))),
        Some(libc::ENOTEMPTY)
    );
    // renameat2(RENAME_NOREPLACE) onto an existing file.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(&a).as_ptr(),
            libc::AT_FDCWD,
            cstr(&b).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!((rc, last_errno()), (-1, libc::EEXIST));
    assert_eq!(std::fs::read(&a).unwrap(), b"file a\n");
    assert_eq!(std::fs::read(&b).unwrap(), b"file b\n");
    // RENAME_EXCHANGE: the contents swapped (or EINVAL where the mirror's file system cannot).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(&a).as_ptr(),
            libc::AT_FDCWD,
            cstr(&b).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    let exchanged = rc == 0;
    if exchanged {
        assert_eq!(std::fs::read(&a).unwrap(), b"file b\n");
        assert_eq!(std::fs::read(&b).unwrap(), b"file a\n");
    } else {
        assert_eq!(last_errno(), libc::EINVAL);
    }
    // What the remote cannot hold: EPERM; xattrs: EOPNOTSUPP.
    assert_eq!(
        errno(std::os::unix::fs::symlink("a.txt", svc.m("link"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(std::fs::hard_link(&a, svc.m("hard"))),
        Some(libc::EPERM)
    );
    let rc = unsafe { libc::mkfifo(cstr(&svc.m("fifo")).as_ptr(), 0o644) };
    assert_eq!((rc, last_errno()), (-1, libc::EPERM));
    let rc = unsafe {
        libc::setxattr(
            cstr(&a).as_ptr(),
            c"user.test".as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!((rc, last_errno()), (-1, libc::EOPNOTSUPP));
    // mountd's own directory name at the root.
    assert_eq!(
        errno(std::fs::File::create(svc.m(".mountd"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(std::fs::create_dir(svc.m(".mountd"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(std::fs::rename(svc.m("tool.sh"), svc.m(".mountd"))),
        Some(libc::EPERM)
    );
    for name in ["link", "hard", "fifo"] {
        assert!(
            std::fs::symlink_metadata(h.local().join(name)).is_err(),
            "{name} must not exist in the mirror"
        );
    }
    assert!(
        h.local().join(".mountd/state.db").is_file() && svc.m("tool.sh").is_file(),
        "mountd's own directory is intact, tool.sh was not moved"
    );

    // chmod +x shows, and survives a restart (a remount).
    std::fs::set_permissions(svc.m("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(mode_of(&svc.m("tool.sh")), 0o755);
    let out = std::process::Command::new(svc.m("tool.sh"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"tool\n", "the file runs through the mount");
    // Writing or giving away a set-user-ID file drops the bit, as on a local disk (the view does
    // it: the kernel leaves it to the daemon).
    let suid = || {
        std::fs::set_permissions(svc.m("tool.sh"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        assert_eq!(mode_of(&svc.m("tool.sh")), 0o4755);
    };
    suid();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(svc.m("tool.sh"))
        .unwrap();
    f.write_all_at(b"#", 0).unwrap();
    drop(f);
    assert_eq!(
        mode_of(&svc.m("tool.sh")),
        0o755,
        "a write drops set-user-ID"
    );
    suid();
    let me = std::fs::metadata(svc.m("tool.sh")).unwrap();
    std::os::unix::fs::chown(svc.m("tool.sh"), Some(me.uid()), Some(me.gid())).unwrap();
    assert_eq!(
        mode_of(&svc.m("tool.sh")),
        0o755,
        "a chown drops set-user-ID"
    );
    assert_eq!(mode_of(&h.local().join("tool.sh")), 0o755);

    // fallocate mode 0 extends the file.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(svc.m("grow.bin"))
        .unwrap();
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 10_000) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 10_000);
    drop(f);
    let mut grown = b"abc".to_vec();
    grown.resize(10_000, 0);
    assert_eq!(std::fs::read(svc.m("grow.bin")).unwrap(), grown);
    svc.wait_remote(&h, "/grow.bin", Some(&grown));
    if exchanged {
        svc.wait_remote(&h, "/a.txt", Some(b"file b\n"));
        svc.wait_remote(&h, "/b.txt", Some(b"file a\n"));
    }

    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
    let mut svc = Svc::start(&h, &[]);
    assert_eq!(
        mode_of(&svc.m("tool.sh")),
        0o755,
        "the mode survives a restart"
    );
    assert_eq!(mode_of(&h.local().join("tool.sh")), 0o755);
    assert_eq!(
        std::fs::read(svc.m("tool.sh")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    assert_eq!(std::fs::read(svc.m("grow.bin")).unwrap(), grown);
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

/// A mode set through the mount is kept locally (the remote has none): a remote update of the file
/// keeps it too.
#[test]
fn a_local_mode_survives_a_remote_update() {
    let h = Harness::new();
    h.remote.put("/tool.sh", b"#!/bin/sh\necho 1\n");
    let mut svc = Svc::start(&h, &[]);
    std::fs::set_permissions(svc.m("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    h.remote.put("/tool.sh", b"#!/bin/sh\necho 2\n");
    wait_for("the remote update through the mount", WAIT, || {
        std::fs::read(svc.m("tool.sh")).unwrap() == b"#!/bin/sh\necho 2\n"
    });
    assert_eq!(mode_of(&svc.m("tool.sh")), 0o755, "through the mount");
    assert_eq!(mode_of(&h.local().join("tool.sh")), 0o755, "in the mirror");
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

#[test]
fn pull_only_view_is_read_only() {
    let h = Harness::new();
    h.remote.put("/d/f.txt", b"data\n");
    for flags in [&["--read-only"][..], &["--sync-mode", "pull-only"][..]] {
        let mut svc = Svc::start(&h, flags);
        let f = svc.m("d/f.txt");
        let erofs = Some(libc::EROFS);
        assert_eq!(
            errno(std::fs::OpenOptions::new().write(true).open(&f)),
            erofs,
            "{flags:?}"
        );
        assert_eq!(
            errno(std::fs::OpenOptions::new().append(true).open(&f)),
            erofs
        );
        assert_eq!(errno(std::fs::write(&f, b"x")), erofs);
        assert_eq!(errno(std::fs::write(svc.m("new.txt"), b"x")), erofs);
        assert_eq!(errno(std::fs::create_dir(svc.m("nd"))), erofs);
        assert_eq!(errno(std::fs::remove_file(&f)), erofs);
        assert_eq!(errno(std::fs::rename(&f, svc.m("d/g.txt"))), erofs);
        assert_eq!(std::fs::read(&f).unwrap(), b"data\n");
        assert_eq!(mode_of(&f), 0o444);
        assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
    }
    assert_eq!(h.remote.counts().writes_applied, 0);
    assert_eq!(h.remote.content("/d/f.txt").unwrap(), b"data\n");
}

/// Pages of distinct bytes.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `mmap` of `len` bytes of `f` (MAP_SHARED).
fn map(f: &std::fs::File, len: usize, write: bool) -> *mut u8 {
    let prot = if write {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    p.cast()
}

#[test]
fn mmap_and_write_agree() {
    mmap_and_write(&[]);
}

#[test]
fn mmap_and_write_agree_passthrough() {
    mmap_and_write(&["--data-mode", "passthrough"]);
}

#[test]
fn mmap_and_write_agree_direct_io() {
    mmap_and_write(&["--data-mode", "direct-io"]);
}

#[test]
fn mmap_and_write_agree_with_writeback_cache() {
    mmap_and_write(&["--writeback-cache"]);
}

fn mmap_and_write(extra: &[&str]) {
    let h = Harness::new();
    h.remote.put("/seed.txt", b"seed\n");
    let mut svc = Svc::start(&h, extra);
    let path = svc.m("mapped.bin");
    let len = 3 * 4096 + 100;
    let first = pattern(len, 1);

    // write(2), then read through a shared mapping of another descriptor.
    let mut w = std::fs::File::create(&path).unwrap();
    w.write_all(&first).unwrap();
    let r = std::fs::File::open(&path).unwrap();
    let p = map(&r, len, false);
    let seen = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
    assert!(seen == first, "the mapping sees what write(2) wrote");
    // A later write(2) through the first descriptor shows in the existing mapping too.
    w.seek(SeekFrom::Start(4096)).unwrap();
    w.write_all(b"WRITTEN-BY-WRITE").unwrap();
    let seen = unsafe { std::slice::from_raw_parts(p.add(4096), 16) };
    assert_eq!(seen, b"WRITTEN-BY-WRITE");
    unsafe { libc::munmap(p.cast(), len) };
    drop((w, r));
    let mut want = first.clone();
    want[4096..4096 + 16].copy_from_slice(b"WRITTEN-BY-WRITE");
    svc.wait_remote(&h, "/mapped.bin", Some(&want));

    // A shared writable mapping of the file (on the server by now), msync, then read(2) of another
    // descriptor sees it.
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let p = map(&rw, len, true);
    let patch = b"WRITTEN-THROUGH-MMAP";
    unsafe {
        std::ptr::copy_nonoverlapping(patch.as_ptr(), p.add(2 * 4096 + 10), patch.len());
        assert_eq!(libc::msync(p.cast(), len, libc::MS_SYNC), 0);
    }
    want[2 * 4096 + 10..2 * 4096 + 10 + patch.len()].copy_from_slice(patch);
    let other = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; len];
    other.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == want, "read(2) sees the mapping's write");
    unsafe { libc::munmap(p.cast(), len) };
    drop((rw, other));

    // msync wrote through to the mirror file, and the file reaches the server.
    assert!(std::fs::read(h.local().join("mapped.bin")).unwrap() == want);
    assert!(std::fs::read(&path).unwrap() == want);
    svc.wait_remote(&h, "/mapped.bin", Some(&want));
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

/// What a writer that kept writing to a file on a mount whose daemon died was told.
#[derive(Debug)]
struct WriterEnd {
    write_errno: Option<i32>,
    close_errno: Option<i32>,
}

#[test]
fn kill9_with_writers() {
    let h = Harness::new();
    h.remote.put("/seed.txt", b"seed\n");
    let mut svc = Svc::start(&h, &[]);
    let mut want = BTreeMap::new();
    want.insert("seed.txt".to_string(), b"seed\n".to_vec());
    std::fs::create_dir(svc.m("closed")).unwrap();
    for i in 0..8 {
        let b = format!("closed file {i}: {}\n", "c".repeat(i * 100)).into_bytes();
        std::fs::write(svc.m(&format!("closed/f{i}.txt")), &b).unwrap();
        want.insert(format!("closed/f{i}.txt"), b);
    }
    // One more, fsynced and left open.
    let synced = b"fsynced, still open\n".to_vec();
    let mut held = std::fs::File::create(svc.m("synced.txt")).unwrap();
    held.write_all(&synced).unwrap();
    held.sync_all().unwrap();
    want.insert("synced.txt".into(), synced.clone());

    // A writer that keeps writing to another open file.
    let killed = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let wpath = svc.m("busy.bin");
    let writer = {
        let (killed, writes) = (killed.clone(), writes.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::create(&wpath).unwrap();
            let page = vec![b'w'; 4096];
            let mut after_kill = 0;
            let mut write_errno = None;
            for i in 0u64.. {
                if let Err(e) = f.write_all_at(&page, (i % 64) * 4096) {
                    write_errno = Some(e.raw_os_error().unwrap_or(0));
                    break;
                }
                writes.store(i + 1, Ordering::SeqCst);
                if killed.load(Ordering::SeqCst) {
                    after_kill += 1;
                    if after_kill > 200 {
                        break;
                    }
                }
            }
            let rc = unsafe { libc::close(f.into_raw_fd()) };
            WriterEnd {
                write_errno,
                close_errno: (rc != 0).then(last_errno),
            }
        })
    };
    wait_for("the writer at work", WAIT, || {
        writes.load(Ordering::SeqCst) >= 100
    });

    svc.kill9();
    killed.store(true, Ordering::SeqCst);
    let end = writer.join().unwrap();
    let told = [end.write_errno, end.close_errno];
    assert!(
        told.iter().any(|e| e.is_some()),
        "the writer was never told that the daemon died: {end:?}"
    );
    for e in told.into_iter().flatten() {
        assert!(
            [
                libc::ENOTCONN,
                libc::EIO,
                libc::ECONNABORTED,
                libc::ECANCELED
            ]
            .contains(&e),
            "unexpected errno {e}: {end:?}"
        );
    }
    // ENOTCONN; over io_uring ECONNABORTED or ECANCELED while the kernel tears the dead daemon's
    // queues down.
    let dead = [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED];
    let e = std::fs::metadata(svc.m("never-looked-up")).unwrap_err();
    assert!(dead.contains(&e.raw_os_error().unwrap_or(0)), "{e}");
    let e = std::fs::read_dir(svc.m("closed/never-looked-up-dir")).unwrap_err();
    assert!(dead.contains(&e.raw_os_error().unwrap_or(0)), "{e}");
    drop(held);

    // The restart on the same mountpoint detaches the dead mount and serves again.
    let svc = Svc::start(&h, &[]);
    assert!(
        svc.logs
            .count("stale (Transport endpoint is not connected)")
            > 0
            || svc.logs.count("earlier mountd") > 0,
        "{}",
        svc.logs.all()
    );
    let lines = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = svc.mnt.to_string_lossy().into_owned();
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(mnt.as_str()))
            .count(),
        1,
        "one mount at the mountpoint: {lines}"
    );
    for (k, v) in &want {
        svc.wait_remote(&h, &format!("/{k}"), Some(v));
        assert_eq!(
            &std::fs::read(svc.m(k)).unwrap(),
            v,
            "{k} through the mount"
        );
    }
    // The interrupted writer's file: whatever the mirror kept is what the server gets.
    let busy = std::fs::read(h.local().join("busy.bin")).unwrap();
    svc.wait_remote(&h, "/busy.bin", Some(&busy));
    assert!(std::fs::read(svc.m("busy.bin")).unwrap() == busy);
}

#[test]
fn sigterm_with_open_writer() {
    sigterm_with_open(&[]);
}

#[test]
fn sigterm_with_open_writer_with_writeback_cache() {
    sigterm_with_open(&["--writeback-cache"]);
}

fn sigterm_with_open(extra: &[&str]) {
    let h = Harness::new();
    h.remote.put("/seed.txt", b"seed\n");
    let mut svc = Svc::start(&h, extra);
    let data = pattern(20_000, 7);
    let mut w = std::fs::File::create(svc.m("open.bin")).unwrap();
    w.write_all(&data).unwrap();
    let started = Instant::now();
    let code = svc.stop();
    let took = started.elapsed();
    assert_eq!(code, 0, "SIGTERM is a clean stop: {}", svc.logs.all());
    assert!(!is_mounted(&svc.mnt), "unmounted");
    let kept = std::fs::read(h.local().join("open.bin")).unwrap();
    let rc = unsafe { libc::close(w.into_raw_fd()) };
    assert!(
        kept == data,
        "the bytes written before SIGTERM are in the mirror: {} of {} bytes (stop took {took:?}, \
         the writer's close said {})",
        kept.len(),
        data.len(),
        if rc == 0 {
            "ok".to_string()
        } else {
            std::io::Error::last_os_error().to_string()
        }
    );
    let svc = Svc::start(&h, &[]);
    svc.wait_remote(&h, "/open.bin", Some(&data));
    assert!(std::fs::read(svc.m("open.bin")).unwrap() == data);
}

/// Open `path` for appending as uid/gid 65534 in a forked child and write one byte: `Ok` or the
/// step that failed and its errno.
fn append_as_nobody(path: &Path) -> Result<(), (&'static str, i32)> {
    let c = cstr(path);
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes system calls (async-signal-safe) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            let report = |step: i32, e: i32| {
                let msg = [step, e];
                libc::write(fds[1], msg.as_ptr().cast(), 8);
                libc::_exit(0);
            };
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                report(9, *libc::__errno_location());
            }
            let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
            if fd < 0 {
                report(1, *libc::__errno_location());
            }
            if libc::write(fd, b"n".as_ptr().cast(), 1) != 1 {
                report(2, *libc::__errno_location());
            }
            if libc::close(fd) != 0 {
                report(3, *libc::__errno_location());
            }
            report(0, 0);
        }
    }
    unsafe { libc::close(fds[1]) };
    let mut msg = [0i32; 2];
    let n = unsafe { libc::read(fds[0], msg.as_mut_ptr().cast(), 8) };
    unsafe { libc::close(fds[0]) };
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(n, 8, "the child reported");
    match msg[0] {
        0 => Ok(()),
        1 => Err(("open", msg[1])),
        2 => Err(("write", msg[1])),
        3 => Err(("close", msg[1])),
        _ => panic!("the child could not become uid 65534: errno {}", msg[1]),
    }
}

#[test]
fn read_only_token_gets_eacces() {
    read_only_token(&[]);
}

#[test]
fn read_only_token_gets_eacces_with_writeback_cache() {
    read_only_token(&["--writeback-cache"]);
}

fn read_only_token(extra: &[&str]) {
    let h = Harness::new();
    h.remote.put("/shared.txt", b"shared\n");
    h.remote.set_read_only(true);
    // uid 65534 must reach the mountpoint.
    std::fs::set_permissions(h.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let args: Vec<&str> = [&["--allow-other"][..], extra].concat();
    let mut svc = Svc::start(&h, &args);
    std::fs::set_permissions(svc.m("shared.txt"), std::fs::Permissions::from_mode(0o666)).unwrap();
    // Before any refusal another user may write the world-writable file.
    assert_eq!(append_as_nobody(&svc.m("shared.txt")), Ok(()));
    // Root writes a new file: kept locally, the push gets 403.
    std::fs::write(svc.m("local.txt"), b"kept locally\n").unwrap();
    wait_for("the 403 noted as a write issue", WAIT, || {
        h.state()
            .write_issues()
            .map(|i| i.iter().any(|i| i.path == "local.txt"))
            .unwrap_or(false)
    });
    assert_eq!(
        std::fs::read(svc.m("local.txt")).unwrap(),
        b"kept locally\n"
    );

    // From now on modes lose their write bits, and writes are refused with EACCES.
    assert_eq!(
        mode_of(&svc.m("shared.txt")) & 0o222,
        0,
        "no write bits shown: {:o}",
        mode_of(&svc.m("shared.txt"))
    );
    assert_eq!(
        append_as_nobody(&svc.m("shared.txt")),
        Err(("open", libc::EACCES)),
        "another user's open for writing"
    );
    // Root passes the kernel's permission checks: the view itself refuses its write, at write(2)
    // (or, with the writeback cache, where the kernel first hands the bytes over: fsync at the latest).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(svc.m("local.txt"))
        .expect("root opens the file for appending");
    let w = f.write(b"more\n");
    let s = f.sync_all();
    let c = unsafe { libc::close(f.into_raw_fd()) };
    let c = (c != 0).then(last_errno);
    let refused = match (&w, &s) {
        (Err(e), _) => e.raw_os_error(),
        (Ok(_), Err(e)) if !extra.is_empty() => e.raw_os_error(),
        _ => None,
    };
    assert_eq!(
        refused,
        Some(libc::EACCES),
        "root's write(2) said {w:?}, fsync {s:?}, close {c:?}"
    );
    assert_eq!(
        errno(std::fs::write(svc.m("new.txt"), b"x")),
        Some(libc::EACCES)
    );
    assert_eq!(errno(std::fs::create_dir(svc.m("nd"))), Some(libc::EACCES));
    assert_eq!(
        svc.logs.count("writes are refused with EACCES"),
        1,
        "{}",
        svc.logs.all()
    );
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());

    // Nothing written before the refusal is lost: in the mirror, and shown as a write issue.
    assert_eq!(
        std::fs::read(h.local().join("local.txt")).unwrap(),
        b"kept locally\n"
    );
    assert_eq!(
        std::fs::read(h.local().join("shared.txt")).unwrap(),
        b"shared\nn"
    );
    let (code, json) = status_of(&h.local());
    assert_eq!(code, 5, "write-denied files are listed: {json}");
    let issues: Vec<&str> = json["push"]["writeIssues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(issues.contains(&"local.txt"), "{json}");
    assert_eq!(h.remote.content("/local.txt"), None);
    assert_eq!(h.remote.content("/shared.txt").unwrap(), b"shared\n");

    // A restart with the same token refuses at once.
    let mut svc = Svc::start(&h, &args);
    assert_eq!(mode_of(&svc.m("shared.txt")) & 0o222, 0);
    assert_eq!(
        errno(std::fs::write(svc.m("new.txt"), b"x")),
        Some(libc::EACCES)
    );
    assert_eq!(
        std::fs::read(svc.m("local.txt")).unwrap(),
        b"kept locally\n"
    );
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
    assert_eq!(h.remote.counts().writes_applied, 0);
}

/// The refusal shows at once on a file whose attributes the kernel cached before it: no write bits,
/// and another user's open for writing fails.
#[test]
fn read_only_token_refusal_shows_at_once_in_cached_modes() {
    let h = Harness::new();
    h.remote.put("/cached.txt", b"cached\n");
    h.remote.set_read_only(true);
    std::fs::set_permissions(h.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut svc = Svc::start(&h, &["--allow-other"]);
    std::fs::set_permissions(svc.m("cached.txt"), std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(mode_of(&svc.m("cached.txt")), 0o666);
    std::fs::write(svc.m("trigger.txt"), b"refused by the server\n").unwrap();
    wait_for("the 403 noted as a write issue", WAIT, || {
        h.state()
            .write_issues()
            .map(|i| i.iter().any(|i| i.path == "trigger.txt"))
            .unwrap_or(false)
    });
    assert_eq!(
        append_as_nobody(&svc.m("cached.txt")),
        Err(("open", libc::EACCES)),
        "another user's open for writing"
    );
    assert_eq!(
        mode_of(&svc.m("cached.txt")) & 0o222,
        0,
        "no write bits shown: {:o}",
        mode_of(&svc.m("cached.txt"))
    );
    assert_eq!(std::fs::read(svc.m("cached.txt")).unwrap(), b"cached\n");
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

#[test]
fn fsync_push_reports_failure() {
    let h = Harness::new();
    h.remote.put("/seed.txt", b"seed\n");
    let mut svc = Svc::start(&h, &["--fsync-push"]);

    // A working server: fsync returns once the server holds the bytes.
    let mut f = std::fs::File::create(svc.m("ok.txt")).unwrap();
    f.write_all(b"pushed by fsync\n").unwrap();
    f.sync_all().expect("fsync succeeds");
    assert_eq!(
        h.remote.content("/ok.txt").as_deref(),
        Some(&b"pushed by fsync\n"[..]),
        "the server holds the bytes when fsync returns"
    );
    f.write_all(b"second line\n").unwrap();
    f.sync_data().expect("fdatasync succeeds");
    assert_eq!(
        h.remote.content("/ok.txt").as_deref(),
        Some(&b"pushed by fsync\nsecond line\n"[..])
    );
    drop(f);

    // A server that refuses the file: fsync fails with EIO; the bytes stay local.
    h.remote.set_read_only(true);
    let mut f = std::fs::File::create(svc.m("refused.txt")).unwrap();
    f.write_all(b"the server says no\n").unwrap();
    assert_eq!(errno(f.sync_all()), Some(libc::EIO));
    drop(f);
    assert_eq!(h.remote.content("/refused.txt"), None);
    assert_eq!(
        std::fs::read(svc.m("refused.txt")).unwrap(),
        b"the server says no\n"
    );
    assert_eq!(
        std::fs::read(h.local().join("refused.txt")).unwrap(),
        b"the server says no\n"
    );
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

#[test]
fn remote_change_to_unpushed_local_edit() {
    let h = Harness::new();
    h.remote.put("/x.md", b"base\n");
    let mut svc = Svc::start(&h, &[]);
    assert_eq!(std::fs::read(svc.m("x.md")).unwrap(), b"base\n");
    // Every push fails for now.
    let down = ErrorFault::new(503, "unavailable");
    h.remote.set_faults(Faults {
        fail_next: ["put", "bulk"]
            .into_iter()
            .map(|route| FailNext {
                route: route.into(),
                count: 1_000_000,
                error: down.clone(),
            })
            .collect(),
        ..Default::default()
    });
    let local = b"local edit through the mount\n".to_vec();
    std::fs::write(svc.m("x.md"), &local).unwrap();
    wait_for("the edit in the outbox", WAIT, || in_outbox(&h, "x.md"));
    wait_for("a push tried and refused", WAIT, || {
        h.remote.counts().put + h.remote.counts().bulk > 0
    });
    assert_eq!(h.remote.content("/x.md").unwrap(), b"base\n");

    // The server's version changes meanwhile; then pushes work again.
    let remote = b"remote update\n".to_vec();
    h.remote.put("/x.md", &remote);
    wait_for(
        "the remote's version at the path, the local one kept",
        WAIT,
        || {
            std::fs::read(svc.m("x.md")).ok().as_deref() == Some(&remote[..])
                && copies(&h).values().any(|v| *v == local)
        },
    );
    h.remote.set_faults(Faults::default());
    wait_for("the outbox empty", WAIT, || {
        h.state().outbox().map(|o| o.is_empty()).unwrap_or(false)
    });
    assert_eq!(
        h.remote.content("/x.md").unwrap(),
        remote,
        "the remote's version stays"
    );
    assert_eq!(std::fs::read(svc.m("x.md")).unwrap(), remote);
    assert_eq!(std::fs::read(h.local().join("x.md")).unwrap(), remote);
    let kept = copies(&h);
    assert!(
        kept.values().any(|v| *v == local),
        "the local bytes are kept as a conflict copy: {:?}",
        kept.keys()
    );
    assert!(
        !remote_tree(&h).keys().any(|k| k.contains("conflict")),
        "a conflict copy is never pushed"
    );
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mountd"));
    c.args(["conflicts", "--local-dir"]).arg(h.local());
    let r = run_cmd(c);
    assert!(
        r.stdout.contains("x.md"),
        "`mountd conflicts` lists it: {}",
        r.all()
    );
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

/// The server's newest event id.
fn tip(h: &Harness) -> Option<String> {
    let page: serde_json::Value =
        serde_json::from_slice(&h.remote.workspace().events_json(None, 1, true)).unwrap();
    page["events"][0]["eventId"].as_str().map(str::to_string)
}

/// A writer holds a file open while the server's version of it changes: whatever the writer was told
/// it wrote is kept (at the path, or as a conflict copy), and so is the server's version.
#[test]
fn remote_change_while_a_writer_holds_the_file_open() {
    remote_change_with_open_writer(&[]);
}

/// With the writeback cache the bytes are in the kernel until the sync makes it write them back: the
/// guard keeps them all the same.
#[test]
fn remote_change_while_a_writer_holds_the_file_open_with_writeback_cache() {
    remote_change_with_open_writer(&["--writeback-cache"]);
}

fn remote_change_with_open_writer(extra: &[&str]) {
    let h = Harness::new();
    h.remote.put("/w.txt", b"v1\n");
    let mut svc = Svc::start(&h, extra);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(svc.m("w.txt"))
        .unwrap();
    let part1 = f.write_all(b"local part 1\n");
    let remote = b"v2 from the server\n".to_vec();
    h.remote.put("/w.txt", &remote);
    let want_tip = tip(&h);
    wait_for("the service to take in the remote update", WAIT, || {
        h.state().events_cursor().ok().flatten() == want_tip
    });
    let part2 = f.write_all(b"local part 2\n");
    let rc = unsafe { libc::close(f.into_raw_fd()) };
    let closed = if rc == 0 { Ok(()) } else { Err(last_errno()) };
    let told_ok = part1.is_ok() && part2.is_ok() && closed.is_ok();
    wait_for("the outbox empty and both sides agreeing", WAIT, || {
        h.state().outbox().map(|o| o.is_empty()).unwrap_or(false)
            && std::fs::read(h.local().join("w.txt")).ok() == h.remote.content("/w.txt")
    });
    let local = b"v1\nlocal part 1\nlocal part 2\n".to_vec();
    let mut kept: Vec<Vec<u8>> = copies(&h).into_values().collect();
    kept.push(h.remote.content("/w.txt").unwrap());
    assert!(
        !told_ok || kept.contains(&local),
        "the writer was told its bytes were written (write, write, close: {part1:?}, {part2:?}, \
         {closed:?}) but they are nowhere: the path and the conflict copies hold {:?}",
        kept.iter().map(|v| lossy(v)).collect::<Vec<_>>()
    );
    assert!(
        kept.contains(&remote),
        "the server's version is kept: {:?}",
        kept.iter().map(|v| lossy(v)).collect::<Vec<_>>()
    );
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}

/// A writer keeps a file open, its first bytes already on the server, when the server's version
/// changes: what it writes after that is kept (as a conflict copy), or it is told of an error.
#[test]
fn remote_update_of_a_file_a_writer_still_holds_open() {
    let h = Harness::new();
    h.remote.put("/log.txt", b"line 0\n");
    let mut svc = Svc::start(&h, &[]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(svc.m("log.txt"))
        .unwrap();
    f.write_all(b"line 1\n").unwrap();
    f.sync_all().unwrap();
    svc.wait_remote(&h, "/log.txt", Some(b"line 0\nline 1\n"));
    let remote = b"rewritten on the server\n".to_vec();
    h.remote.put("/log.txt", &remote);
    let want_tip = tip(&h);
    wait_for("the service to take in the remote update", WAIT, || {
        h.state().events_cursor().ok().flatten() == want_tip
    });
    let w = f.write_all(b"line 2\n");
    let rc = unsafe { libc::close(f.into_raw_fd()) };
    let closed = if rc == 0 { Ok(()) } else { Err(last_errno()) };
    wait_for("the outbox empty and both sides agreeing", WAIT, || {
        h.state().outbox().map(|o| o.is_empty()).unwrap_or(false)
            && std::fs::read(h.local().join("log.txt")).ok() == h.remote.content("/log.txt")
    });
    let mut kept: Vec<Vec<u8>> = copies(&h).into_values().collect();
    kept.push(h.remote.content("/log.txt").unwrap());
    assert!(
        w.is_err() || closed.is_err() || kept.iter().any(|k| k.ends_with(b"line 2\n")),
        "write and close succeeded ({w:?}, {closed:?}) but \"line 2\" is nowhere: the path and \
         the conflict copies hold {:?}",
        kept.iter().map(|v| lossy(v)).collect::<Vec<_>>()
    );
    assert!(kept.contains(&remote), "the server's version is kept");
    assert_eq!(svc.stop(), 0, "{}", svc.logs.all());
}
