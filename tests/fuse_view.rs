//! Real FUSE mounts of a mirror built without network (State + LocalStore). These tests need root and
//! /dev/fuse; a test that cannot mount fails.
use mountd::store::change::Change;
use mountd::store::db::{FileMeta, Identity, State};
use mountd::store::LocalStore;
use mountd::view::fs::FsOptions;
use mountd::view::fuse::{mount, DataMode, MountHandle, MountOptions, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Mirror {
    dir: tempfile::TempDir,
    st: State,
    store: LocalStore,
}

fn identity(root: &Path) -> Identity {
    Identity {
        base_url: "http://test".into(),
        workspace: "ws".into(),
        remote_root: "/".into(),
        local_dir: root.display().to_string(),
    }
}

impl Mirror {
    fn new() -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mirror");
        let store = LocalStore::open(&root).unwrap();
        let st = State::open(&dir.path().join("state.db"), &identity(store.root())).unwrap();
        Mirror { dir, st, store }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Write and record files in one transaction; returns the changes (for the sink).
    fn put(&mut self, files: &[(&str, &[u8])]) -> Vec<Change> {
        let mut b = self.st.batch().unwrap();
        for (rel, bytes) in files {
            self.store.write_atomic(rel, bytes).unwrap();
            b.upsert_file(
                rel,
                &FileMeta {
                    size: bytes.len() as u64,
                    content_hash: Some(format!("{:x}", fnv(bytes))),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        }
        b.commit().unwrap()
    }

    fn remove(&mut self, rel: &str) -> Vec<Change> {
        let mut b = self.st.batch().unwrap();
        b.delete(rel).unwrap().expect("recorded");
        let changes = b.commit().unwrap();
        self.store.remove_file(rel).unwrap();
        changes
    }

    fn mount_at(&self, mp: &Path) -> Mounted {
        self.mount_mode(mp, DataMode::Auto)
    }

    fn mount_mode(&self, mp: &Path, mode: DataMode) -> Mounted {
        let o = MountOptions {
            data_mode: mode,
            ..opts()
        };
        let handle = mount(mp, self.store.root(), o, None).expect("mount must work here");
        if transport() != Transport::Auto {
            assert_eq!(
                handle.transport(),
                transport(),
                "the mount must use the transport asked for"
            );
        }
        if mode != DataMode::Auto {
            assert_eq!(
                handle.data_mode(),
                mode,
                "the mount must use the mode asked for"
            );
        }
        Mounted {
            handle: Some(handle),
        }
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

fn opts() -> MountOptions {
    MountOptions {
        fsname: "mountd:ws".into(),
        allow_other: false,
        // Long TTLs: the tests see fresh data only if invalidation works.
        ttl: Duration::from_secs(3600),
        threads: 2,
        fs: FsOptions::default(),
        data_mode: DataMode::Auto,
        writes: Default::default(),
        transport: transport(),
    }
}

/// The transport under test: `MOUNTD_FUSE_TRANSPORT` (as for the daemon), `auto` when unset.
/// scripts/test.sh runs these tests once over io_uring (where the kernel allows) and once over
/// /dev/fuse.
fn transport() -> Transport {
    std::env::var("MOUNTD_FUSE_TRANSPORT")
        .ok()
        .map(|s| Transport::parse(&s).expect("MOUNTD_FUSE_TRANSPORT: auto, uring or dev"))
        .unwrap_or_default()
}

/// Unmounts on drop, even when the test fails.
struct Mounted {
    handle: Option<MountHandle>,
}

impl Mounted {
    fn h(&self) -> &MountHandle {
        self.handle.as_ref().unwrap()
    }
    fn unmount(mut self) {
        self.handle.take().unwrap().unmount();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.unmount();
        }
    }
}

fn binary(n: usize) -> Vec<u8> {
    let mut x = 0x9e3779b97f4a7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap().to_str().unwrap().to_string();
        if e.file_type().unwrap().is_dir() {
            walk(&p, base, out);
        } else {
            out.insert(rel, std::fs::read(&p).unwrap());
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
    r.expect_err("must fail").raw_os_error()
}

#[test]
fn tree_reads_back_exactly() {
    let mut m = Mirror::new();
    let big = binary(3 * 1024 * 1024 + 17);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"hello world\n".to_vec()),
        ("empty", Vec::new()),
        ("bin/blob.bin", big.clone()),
        ("bin/small.bin", vec![0, 255, 0, 1, 2, 3]),
        ("dir/sub/deep/x.txt", b"deep".to_vec()),
        (
            "ünïcødé/日本語 ファイル.txt",
            "こんにちは".as_bytes().to_vec(),
        ),
        ("space name.txt", b"spaces".to_vec()),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    m.put(&refs);
    let mp = tempfile::tempdir().unwrap();
    let mnt = m.mount_at(mp.path());
    assert!(mnt.h().is_alive());

    let mut seen = BTreeMap::new();
    walk(mp.path(), mp.path(), &mut seen);
    let want: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, b)| (p.to_string(), b.clone()))
        .collect();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (p, b) in &want {
        assert!(seen[p] == *b, "{p} differs");
    }
    // Random-offset reads of the big file.
    let mut f = std::fs::File::open(mp.path().join("bin/blob.bin")).unwrap();
    for off in [0u64, 1, 4095, 4096, 131_071, 1 << 20, big.len() as u64 - 5] {
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0; 10_000];
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &big[off as usize..off as usize + n]);
    }

    // Attributes.
    drop(f);
    let md = std::fs::metadata(mp.path().join("bin/blob.bin")).unwrap();
    assert_eq!(md.len(), big.len() as u64);
    assert_eq!(md.permissions().mode() & 0o7777, 0o444);
    // Sizes, blocks and inode numbers are the mirror file's own.
    let disk = std::fs::metadata(m.store.root().join("bin/blob.bin")).unwrap();
    assert_eq!((md.blocks(), md.ino()), (disk.blocks(), disk.ino()));
    assert_eq!(md.nlink(), 1);
    assert_eq!(md.uid(), unsafe { libc::geteuid() });
    let dm = std::fs::metadata(mp.path().join("dir")).unwrap();
    assert!(dm.is_dir());
    assert_eq!(dm.permissions().mode() & 0o7777, 0o555);
    assert_eq!(std::fs::metadata(mp.path()).unwrap().ino(), 1);
    assert_eq!(
        std::fs::metadata(mp.path().join("nope"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );

    // Tools.
    let ls = run("ls", &["-lR", mp.path().to_str().unwrap()]);
    assert!(ls.contains("blob.bin") && ls.contains("日本語"), "{ls}");
    let find = run("find", &[mp.path().to_str().unwrap(), "-type", "f"]);
    assert_eq!(find.lines().count(), files.len(), "{find}");
    let df = run("df", &["-P", mp.path().to_str().unwrap()]);
    assert!(df.contains("mountd:ws"), "{df}");
    let stat = run("stat", &["-f", "-c", "%T %c", mp.path().to_str().unwrap()]);
    assert!(stat.starts_with("fuse"), "{stat}");
    // statfs reports the file system holding the mirror (its inode count), not the mirror's files.
    let inodes = nix::sys::statvfs::statvfs(m.store.root()).unwrap().files();
    assert_eq!(
        stat.split_whitespace().nth(1),
        Some(inodes.to_string().as_str()),
        "{stat}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(mp.path().to_str().unwrap()))
        .expect("in mountinfo");
    assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
    assert!(line.contains("fuse.mountd mountd:ws"), "{line}");
    mnt.unmount();
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(mp.path().to_str().unwrap()));
}

#[test]
fn five_thousand_entries_listed_exactly_once() {
    let mut m = Mirror::new();
    let names: Vec<String> = (0..5000)
        .map(|i| format!("big/file-{i:05}-{}.txt", "x".repeat(i % 40)))
        .collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"1"[..])).collect();
    m.put(&files);
    let mp = tempfile::tempdir().unwrap();
    let _mnt = m.mount_at(mp.path());
    for round in 0..2 {
        let mut got = Vec::new();
        for e in std::fs::read_dir(mp.path().join("big")).unwrap() {
            got.push(e.unwrap().file_name().into_string().unwrap());
        }
        assert_eq!(got.len(), 5000, "round {round}");
        let set: BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(set.len(), 5000, "duplicates in round {round}");
        let want: BTreeSet<_> = names.iter().map(|n| n[4..].to_string()).collect();
        assert_eq!(set, want);
    }
    let ls = run("ls", &["-f", mp.path().join("big").to_str().unwrap()]);
    assert_eq!(ls.lines().count(), 5002); // with . and ..
    let lsl = run("ls", &["-l", mp.path().join("big").to_str().unwrap()]);
    assert_eq!(
        lsl.lines().filter(|l| l.starts_with("-r--r--r--")).count(),
        5000
    );
}

#[test]
fn writes_fail_with_erofs() {
    let mut m = Mirror::new();
    m.put(&[("d/f.txt", b"data")]);
    let mp = tempfile::tempdir().unwrap();
    let _mnt = m.mount_at(mp.path());
    let f = mp.path().join("d/f.txt");
    let erofs = Some(libc::EROFS);
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().write(true).open(&f)),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().append(true).open(&f)),
        erofs
    );
    assert_eq!(errno_of(std::fs::File::create(&f)), erofs);
    assert_eq!(
        errno_of(std::fs::File::create(mp.path().join("new"))),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::write(mp.path().join("d/new"), b"x")),
        erofs
    );
    assert_eq!(errno_of(std::fs::remove_file(&f)), erofs);
    assert_eq!(errno_of(std::fs::create_dir(mp.path().join("nd"))), erofs);
    assert_eq!(errno_of(std::fs::remove_dir(mp.path().join("d"))), erofs);
    assert_eq!(
        errno_of(std::fs::rename(&f, mp.path().join("d/g.txt"))),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::set_permissions(
            &f,
            std::fs::Permissions::from_mode(0o644)
        )),
        erofs
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", mp.path().join("l"))),
        erofs
    );
    assert_eq!(errno_of(std::fs::hard_link(&f, mp.path().join("h"))), erofs);
    // Nothing changed.
    assert_eq!(std::fs::read(&f).unwrap(), b"data");
    assert_eq!(std::fs::read(m.store.abs("d/f.txt")).unwrap(), b"data");
    let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::access(c.as_ptr(), libc::W_OK) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(unsafe { libc::access(c.as_ptr(), libc::R_OK) }, 0);
}

/// Wait until every handle closed through the mount has been released by the daemon (RELEASE
/// reaches the daemon asynchronously after close; in zero-message mode there is none to wait for).
fn wait_released(mnt: &Mounted) {
    let t = std::time::Instant::now();
    while mnt.h().fs().open_files() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "handles never released"
        );
        std::thread::yield_now();
    }
}

/// The version semantics and invalidation, in one data mode.
fn versions_and_invalidation(mode: DataMode) {
    let mut m = Mirror::new();
    let old = binary(200_000);
    let new: Vec<u8> = b"the new version, shorter".to_vec();
    m.put(&[
        ("d/f.bin", &old),
        ("d/keep.txt", b"keep"),
        ("d/gone.txt", b"bye"),
        ("d/same.txt", b"AAAA-version-1"),
    ]);
    let mp = tempfile::tempdir().unwrap();
    let mnt = m.mount_mode(mp.path(), mode);
    let sink = mnt.h().sink();
    let f = mp.path().join("d/f.bin");

    // Warm every kernel cache: attributes, entries, listing, data.
    assert_eq!(std::fs::read(&f).unwrap(), old);
    assert_eq!(std::fs::read(&f).unwrap(), old);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), old.len() as u64);
    assert_eq!(std::fs::read_dir(mp.path().join("d")).unwrap().count(), 4);
    let ino = std::fs::metadata(&f).unwrap().ino();
    assert!(std::fs::metadata(mp.path().join("d/later.txt")).is_err()); // negative dentry

    // Readers open the old version: one reads part of it, one has not read anything yet.
    let mut held = std::fs::File::open(&f).unwrap();
    let mut head = vec![0; 1000];
    held.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..1000]);
    let mut unread = std::fs::File::open(&f).unwrap();
    // A memory map of the old version.
    let mapped = std::fs::File::open(&f).unwrap();
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            old.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&mapped),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);

    // The sync replaces it (a new inode) and adds a file.
    let mut changes = m.put(&[("d/f.bin", &new)]);
    changes.extend(m.put(&[("d/later.txt", b"later")]));
    sink.changed(&changes);

    // Fresh opens see the new version, under a new inode number.
    assert_eq!(std::fs::read(&f).unwrap(), new);
    assert_eq!(run("cat", &[f.to_str().unwrap()]).as_bytes(), &new[..]);
    let md = std::fs::metadata(&f).unwrap();
    assert_ne!(md.ino(), ino, "a new content version is a new inode");
    assert_eq!(md.len(), new.len() as u64);
    assert_eq!(
        std::fs::read(mp.path().join("d/later.txt")).unwrap(),
        b"later"
    );
    assert_eq!(std::fs::read_dir(mp.path().join("d")).unwrap().count(), 5);

    // The old handles still read the old version to its end, and keep its attributes.
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    assert!(rest == old[1000..], "old handle must keep its version");
    let mut all = Vec::new();
    unread.read_to_end(&mut all).unwrap();
    assert!(
        all == old,
        "a handle opened before the change keeps its version"
    );
    assert_eq!(held.metadata().unwrap().ino(), ino);
    assert_eq!(held.metadata().unwrap().len(), old.len() as u64);
    let mapped_bytes = unsafe { std::slice::from_raw_parts(map as *const u8, old.len()) };
    assert!(mapped_bytes == &old[..], "the mapping keeps its version");
    unsafe { libc::munmap(map, old.len()) };
    drop((held, unread, mapped));
    assert_eq!(std::fs::read(&f).unwrap(), new);
    wait_released(&mnt);

    // No stale page: a same-size replacement of a fully cached file is seen at once.
    let same = mp.path().join("d/same.txt");
    for _ in 0..3 {
        assert_eq!(std::fs::read(&same).unwrap(), b"AAAA-version-1");
    }
    let mut held = std::fs::File::open(&same).unwrap();
    let changes = m.put(&[("d/same.txt", b"BBBB-version-2")]);
    sink.changed(&changes);
    assert_eq!(std::fs::read(&same).unwrap(), b"BBBB-version-2");
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "AAAA-version-1");
    drop(held);
    let changes = m.put(&[("d/same.txt", b"CCCC-version-3")]);
    sink.changed(&changes);
    assert_eq!(run("cat", &[same.to_str().unwrap()]), "CCCC-version-3");

    // A removal disappears from lookups and listings.
    let changes = m.remove("d/gone.txt");
    sink.changed(&changes);
    assert_eq!(
        std::fs::metadata(mp.path().join("d/gone.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let names: BTreeSet<String> = std::fs::read_dir(mp.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["f.bin", "keep.txt", "later.txt", "same.txt"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // Invalidating an inode the kernel never saw is quiet.
    sink.changed(&[Change {
        ino: 999_999,
        parent: 999_998,
        name: "x".into(),
        path: "x".into(),
        removed: false,
    }]);
    wait_released(&mnt);
    mnt.unmount();
    // After unmount the sink is harmless.
    sink.changed(&changes);
}

#[test]
fn versions_page_cache() {
    versions_and_invalidation(DataMode::PageCache);
}

#[test]
fn versions_passthrough() {
    versions_and_invalidation(DataMode::Passthrough);
}

#[test]
fn versions_direct_io() {
    versions_and_invalidation(DataMode::DirectIo);
}

/// A warm read costs the daemon nothing in the page-cache mode; in passthrough only the open reaches
/// it (never a read).
fn warm_reads_cost(mode: DataMode) -> (u64, u64) {
    let mut m = Mirror::new();
    let big = binary(300_000);
    m.put(&[("s/small.txt", b"small file"), ("s/big.bin", &big)]);
    let mp = tempfile::tempdir().unwrap();
    let mnt = m.mount_mode(mp.path(), mode);
    let small = mp.path().join("s/small.txt");
    let bigp = mp.path().join("s/big.bin");
    // Cold, then warm once (the first close may send a FLUSH answered ENOSYS).
    for _ in 0..2 {
        assert_eq!(std::fs::read(&small).unwrap(), b"small file");
        assert!(std::fs::read(&bigp).unwrap() == big);
        assert_eq!(run("cat", &[small.to_str().unwrap()]), "small file");
    }
    wait_released(&mnt);
    let (calls, reads) = (mnt.h().fs().calls(), mnt.h().fs().reads());
    for _ in 0..20 {
        assert_eq!(std::fs::read(&small).unwrap(), b"small file");
        // RELEASE is asynchronous: an OPEN that arrives before the previous handle's RELEASE shares
        // its opened version without a database read, which would make the count below vary.
        wait_released(&mnt);
        assert!(std::fs::read(&bigp).unwrap() == big);
        wait_released(&mnt);
    }
    let r = (mnt.h().fs().calls() - calls, mnt.h().fs().reads() - reads);
    mnt.unmount();
    r
}

#[test]
fn warm_reads_page_cache_cost_nothing() {
    assert_eq!(warm_reads_cost(DataMode::PageCache), (0, 0));
}

#[test]
fn warm_reads_passthrough_only_open() {
    let (calls, reads) = warm_reads_cost(DataMode::Passthrough);
    assert_eq!(reads, 0, "passthrough reads never reach the daemon");
    // Each open(2) is an OPEN, answered from the inode's kept backing id: no database read and no
    // open(2) in the daemon (a loaded machine may evict a dentry and cost a lookup or two).
    assert!(
        calls < 8,
        "warm opens should reuse the registered backing file: {calls} calls for 40 opens"
    );
}

/// The mount raises the FUSE connection's read-ahead to 1 MiB: a cold sequential read of a large file
/// reaches the daemon in READs of up to 1 MiB (the kernel's default 128 KiB read-ahead would make it
/// 64 READs for these 8 MiB).
#[test]
fn cold_sequential_read_uses_large_reads() {
    let mut m = Mirror::new();
    let big = binary(8 << 20);
    m.put(&[("big/large.bin", &big)]);
    let mp = tempfile::tempdir().unwrap();
    let mnt = m.mount_mode(mp.path(), DataMode::PageCache);
    let dev = std::fs::metadata(mp.path()).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let ra: u64 = std::fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ra >= 1024, "read_ahead_kb of the mount is {ra}");
    let before = mnt.h().fs().reads();
    let mut f = std::fs::File::open(mp.path().join("big/large.bin")).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == big, "the bytes read back differ");
    let reads = mnt.h().fs().reads() - before;
    assert!(
        (8..=16).contains(&reads),
        "8 MiB read sequentially took {reads} READs"
    );
    drop(f);
    mnt.unmount();
}

#[test]
fn inodes_stable_across_remount() {
    let mut m = Mirror::new();
    m.put(&[("a/b/c.txt", b"c"), ("a/d.txt", b"d"), ("e.txt", b"e")]);
    let mp = tempfile::tempdir().unwrap();
    let paths = ["a", "a/b", "a/b/c.txt", "a/d.txt", "e.txt"];
    let inos = |mp: &Path| -> Vec<u64> {
        paths
            .iter()
            .map(|p| std::fs::metadata(mp.join(p)).unwrap().ino())
            .collect()
    };
    let mnt = m.mount_at(mp.path());
    let first = inos(mp.path());
    mnt.unmount();
    let mnt = m.mount_at(mp.path());
    assert_eq!(inos(mp.path()), first);
    // A node is the mirror file's inode: stable across remounts and restarts.
    let disk = std::fs::metadata(m.store.root().join("a/b/c.txt")).unwrap();
    assert_eq!(first[2], disk.ino());
    drop(mnt);
}

/// Not a test on its own: the child process of `stale_mount_is_detached_by_next_mount`, which mounts and
/// then gets killed with SIGKILL, leaving a dead mount behind.
#[test]
fn helper_child_mount() {
    let (Ok(db), Ok(root), Ok(mp)) = (
        std::env::var("MOUNTD_TEST_CHILD_DB"),
        std::env::var("MOUNTD_TEST_CHILD_ROOT"),
        std::env::var("MOUNTD_TEST_CHILD_MP"),
    ) else {
        return;
    };
    let _st = State::open(Path::new(&db), &identity(Path::new(&root))).unwrap();
    let h = mount(Path::new(&mp), Path::new(&root), opts(), None).unwrap();
    println!("CHILD-READY");
    std::thread::sleep(Duration::from_secs(120));
    drop(h);
}

struct KillOnDrop(std::process::Child, PathBuf);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Ok(c) = std::ffi::CString::new(self.1.to_str().unwrap()) {
            let mounted = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .contains(self.1.to_str().unwrap());
            if mounted {
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

#[test]
fn stale_mount_is_detached_by_next_mount() {
    let mut m = Mirror::new();
    m.put(&[("s.txt", b"served")]);
    let mp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["helper_child_mount", "--exact", "--nocapture"])
        .env("MOUNTD_TEST_CHILD_DB", m.db_path())
        .env("MOUNTD_TEST_CHILD_ROOT", m.store.root())
        .env("MOUNTD_TEST_CHILD_MP", mp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = KillOnDrop(child, mp.path().to_path_buf());
    let mut ready = false;
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap().contains("CHILD-READY") {
            ready = true;
            break;
        }
    }
    assert!(ready, "child did not mount");
    assert_eq!(std::fs::read(mp.path().join("s.txt")).unwrap(), b"served");
    // Kill the daemon without unmounting: the mount is left dead.
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    // (Cached attributes, entries and pages may still answer stat, open and read — opens send no
    // message in the page-cache mode; a lookup of a name never seen needs the dead daemon.)
    let e = std::fs::metadata(mp.path().join("never-looked-up")).unwrap_err();
    // ENOTCONN; over io_uring ECONNABORTED or ECANCELED while the kernel tears the dead daemon's
    // queues down.
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) | Some(libc::ECANCELED)
        ),
        "{e}"
    );

    let mnt = m.mount_at(mp.path());
    assert_eq!(std::fs::read(mp.path().join("s.txt")).unwrap(), b"served");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        info.lines()
            .filter(|l| l.contains(mp.path().to_str().unwrap()))
            .count(),
        1,
        "the dead mount must be gone: {info}"
    );
    // A second mount on a live mountd mount replaces it too (and the first handle unmounts quietly).
    let mnt2 = m.mount_at(mp.path());
    assert_eq!(std::fs::read(mp.path().join("s.txt")).unwrap(), b"served");
    assert!(!mnt.h().is_alive(), "the first mount was detached");
    assert!(mnt2.h().is_alive());
    drop(mnt); // must not unmount the new mount that took its place
    assert_eq!(std::fs::read(mp.path().join("s.txt")).unwrap(), b"served");
    mnt2.unmount();
}

#[test]
fn unmount_with_open_file_does_not_hang() {
    let mut m = Mirror::new();
    m.put(&[("busy.txt", b"busy")]);
    let mp = tempfile::tempdir().unwrap();
    let mnt = m.mount_at(mp.path());
    let mut held = std::fs::File::open(mp.path().join("busy.txt")).unwrap();
    let t = std::time::Instant::now();
    mnt.unmount();
    // Busy: detached lazily, then at most two join timeouts (5 s each).
    assert!(t.elapsed() < Duration::from_secs(11), "{:?}", t.elapsed());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(mp.path().to_str().unwrap()));
    // The held file either still reads (fusectl absent: the session serves it until closed) or fails
    // cleanly (connection aborted); it never hangs.
    let mut buf = Vec::new();
    match held.read_to_end(&mut buf) {
        Ok(_) => assert_eq!(buf, b"busy"),
        Err(e) => assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN)
                    | Some(libc::ECONNABORTED)
                    | Some(libc::ECANCELED)
                    | Some(libc::EIO)
            ),
            "{e}"
        ),
    }
}
