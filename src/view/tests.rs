//! The view core without a kernel: a real mirror directory, the calls the FUSE adapter makes, and a
//! recording [`LocalChanges`] in place of the push side.
use super::fs::{Caller, FsOptions, Kind, MirrorFs};
use super::nodes::ROOT;
use super::ops::{SetAttr, SetTime};
use crate::store::change::{LocalChanges, Touch};
use crate::store::LocalStore;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Default)]
struct Recorded {
    touched: Mutex<Vec<(String, Touch)>>,
    recorded: Mutex<Vec<String>>,
    refused: Mutex<Option<String>>,
}

impl LocalChanges for Recorded {
    fn touched(&self, rel: &str, how: Touch) {
        self.touched.lock().unwrap().push((rel.to_string(), how));
    }
    fn record_now(&self, rels: Vec<String>, _wait_push: bool) -> Result<(), String> {
        self.recorded.lock().unwrap().extend(rels);
        Ok(())
    }
    fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap().clone()
    }
}

impl Recorded {
    fn touches(&self) -> Vec<(String, Touch)> {
        std::mem::take(&mut *self.touched.lock().unwrap())
    }
}

fn mirror(files: &[(&str, &[u8])]) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("mirror")).unwrap();
    for (p, b) in files {
        store.write_atomic(p, b).unwrap();
    }
    (dir, store)
}

fn read_only(store: &LocalStore) -> MirrorFs {
    MirrorFs::new(store.root(), FsOptions::default(), None).unwrap()
}

fn writable(store: &LocalStore) -> (MirrorFs, Arc<Recorded>) {
    let rec = Arc::new(Recorded::default());
    let opts = FsOptions {
        writable: true,
        ..FsOptions::default()
    };
    let fs = MirrorFs::new(
        store.root(),
        opts,
        Some(rec.clone() as Arc<dyn LocalChanges>),
    )
    .unwrap();
    (fs, rec)
}

fn me() -> Caller {
    Caller {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

fn names(fs: &MirrorFs, dir: u64) -> Vec<String> {
    let mut out = Vec::new();
    fs.readdir(dir, 0, false, |e| {
        out.push(e.name.to_string_lossy().into_owned());
        false
    })
    .unwrap();
    out.sort();
    out
}

#[test]
fn lookup_getattr_read() {
    let (_d, store) = mirror(&[("a/b.txt", b"hello"), ("e", b"")]);
    let fs = read_only(&store);
    let a = fs.lookup(ROOT, OsStr::new("a")).unwrap();
    assert_eq!((a.kind, a.perm), (Kind::Dir, 0o555));
    let b = fs.lookup(a.ino, OsStr::new("b.txt")).unwrap();
    assert_eq!((b.kind, b.size, b.perm), (Kind::File, 5, 0o444));
    let disk = std::fs::metadata(store.root().join("a/b.txt")).unwrap();
    assert_eq!(b.ino, disk.ino(), "a node is the mirror file's inode");
    assert_eq!(fs.getattr(b.ino).unwrap(), b);
    assert_eq!(fs.getattr(ROOT).unwrap().ino, ROOT);
    assert_eq!(
        fs.lookup(ROOT, OsStr::new("nope")).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(
        fs.lookup(b.ino, OsStr::new("x")).unwrap_err(),
        libc::ENOTDIR
    );
    // mountd's own directory is not part of the view.
    assert!(store.root().join(".mountd").is_dir());
    assert_eq!(
        fs.lookup(ROOT, OsStr::new(".mountd")).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(names(&fs, ROOT), [".", "..", "a", "e"]);
    let (fh, _) = fs.open(b.ino, false).unwrap();
    assert_eq!(fs.read(b.ino, fh, 0, 100).unwrap(), b"hello");
    assert_eq!(fs.read(b.ino, fh, 2, 2).unwrap(), b"ll");
    assert_eq!(fs.read(b.ino, fh, 10, 2).unwrap(), b"");
    fs.release(fh);
    assert_eq!(fs.read(b.ino, fh, 0, 1).unwrap_err(), libc::EBADF);
    assert_eq!(fs.live_versions(), 0);
    // A handle-less read pins the version until the kernel forgets the inode.
    assert_eq!(fs.read(b.ino, 0, 0, 100).unwrap(), b"hello");
    assert_eq!(fs.live_versions(), 1);
    fs.forget(b.ino, 1);
    assert_eq!(fs.live_versions(), 0);
    assert_eq!(fs.open(a.ino, false).unwrap_err(), libc::EISDIR);
    // A read-only view refuses every change.
    let b = fs.lookup(a.ino, OsStr::new("b.txt")).unwrap();
    assert_eq!(fs.access(b.ino, libc::W_OK).unwrap_err(), libc::EROFS);
    assert_eq!(fs.open(b.ino, true).unwrap_err(), libc::EROFS);
    assert_eq!(fs.write(b.ino, 0, 0, b"x").unwrap_err(), libc::EROFS);
    assert_eq!(
        fs.mkdir(ROOT, OsStr::new("n"), 0o755, 0, me()).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(
        fs.unlink(a.ino, OsStr::new("b.txt")).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(
        fs.setattr(b.ino, SetAttr::default()).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(
        std::fs::read(store.root().join("a/b.txt")).unwrap(),
        b"hello"
    );
    let s = fs.statfs().unwrap();
    let v = nix::sys::statvfs::statvfs(store.root()).unwrap();
    assert_eq!((s.blocks, s.files), (v.blocks(), v.files()));
}

#[test]
fn a_version_outlives_its_replacement() {
    let (_d, store) = mirror(&[("f", b"old bytes")]);
    let fs = read_only(&store);
    let old = fs.lookup(ROOT, OsStr::new("f")).unwrap();
    let (fh, _) = fs.open(old.ino, false).unwrap();
    assert_eq!(fs.read(old.ino, 0, 0, 3).unwrap(), b"old"); // pinned
                                                            // The engine replaces a file by renaming a new one over it: a new inode.
    store.write_atomic("f", b"new!").unwrap();
    let new = fs.lookup(ROOT, OsStr::new("f")).unwrap();
    assert_ne!(new.ino, old.ino, "a new content version is a new inode");
    assert_eq!(fs.read(old.ino, fh, 0, 100).unwrap(), b"old bytes");
    assert_eq!(fs.read(old.ino, 0, 4, 100).unwrap(), b"bytes");
    let kept = fs.getattr(old.ino).unwrap();
    assert_eq!(
        (kept.size, kept.nlink),
        (9, 0),
        "a kept version answers getattr"
    );
    assert_eq!(fs.read(new.ino, 0, 0, 100).unwrap(), b"new!");
    // Released and forgotten, the old inode cannot be opened again.
    fs.release(fh);
    fs.forget(old.ino, 1);
    assert_eq!(fs.getattr(old.ino).unwrap_err(), libc::ENOENT);
    assert_eq!(fs.open(old.ino, false).unwrap_err(), libc::ESTALE);
}

#[test]
fn pins_are_bounded() {
    let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let (_d, store) = mirror(&files);
    let fs = read_only(&store);
    fs.set_max_pinned(3);
    for _ in 0..50 {
        for n in &names {
            let a = fs.lookup(ROOT, OsStr::new(n)).unwrap();
            assert_eq!(fs.read(a.ino, 0, 0, 10).unwrap(), b"x");
            if n.ends_with('5') {
                fs.forget(a.ino, 1);
            }
        }
    }
    assert!(fs.live_versions() <= 3);
}

#[test]
fn readdir_pages_and_repeats() {
    let names: Vec<String> = (0..700).map(|i| format!("d/f{i:04}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let (_d, store) = mirror(&files);
    let fs = read_only(&store);
    let d = fs.lookup(ROOT, OsStr::new("d")).unwrap();
    fs.opendir(d.ino).unwrap();
    // Pages of 1..10 entries, like the reference tests of mountpoint-s3.
    let mut all = Vec::new();
    let mut offsets = Vec::new();
    let mut off = 0;
    let mut step = 0usize;
    loop {
        let max = step % 10 + 1;
        step += 1;
        let mut page = Vec::new();
        fs.readdir(d.ino, off, step.is_multiple_of(2), |e| {
            if page.len() == max {
                return true;
            }
            page.push((
                e.name.to_string_lossy().into_owned(),
                e.offset,
                e.attr.is_some(),
            ));
            false
        })
        .unwrap();
        if page.is_empty() {
            break;
        }
        for (name, o, plus) in page {
            assert_eq!(
                plus,
                step.is_multiple_of(2),
                "attributes only in readdirplus"
            );
            off = o;
            offsets.push(o);
            all.push(name);
        }
    }
    assert_eq!(all.len(), 702);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 702, "every entry exactly once");
    // Any offset returned before is answered again, from the entry after it.
    for i in [0usize, 4, 300, 700] {
        let mut next = None;
        fs.readdir(d.ino, offsets[i], false, |e| {
            next = Some(e.name.to_string_lossy().into_owned());
            true
        })
        .unwrap();
        assert_eq!(next.as_deref(), all.get(i + 1).map(|s| s.as_str()));
    }
    let f = fs.lookup(d.ino, OsStr::new("f0001")).unwrap();
    assert_eq!(fs.opendir(f.ino).unwrap_err(), libc::ENOTDIR);
    // readdirplus entries count as lookups: the kernel may use them without another lookup.
    assert!(fs.known_nodes() >= 350);
}

#[test]
fn writes_land_in_the_mirror_and_are_handed_to_the_push_side() {
    let (_d, store) = mirror(&[("doc.txt", b"0123456789")]);
    let (fs, rec) = writable(&store);
    let root = store.root();
    // Create, write with a hole, read back.
    let (a, fh, _) = fs
        .create(
            ROOT,
            OsStr::new("new.bin"),
            0o644 & !0o022,
            libc::O_EXCL,
            me(),
            true,
        )
        .unwrap();
    assert_eq!((a.kind, a.perm, a.size), (Kind::File, 0o644, 0));
    assert_eq!(fs.write(a.ino, fh, 0, b"head").unwrap(), 4);
    assert_eq!(fs.write(a.ino, fh, 100, b"tail").unwrap(), 4);
    assert_eq!(fs.read(a.ino, fh, 0, 200).unwrap().len(), 104);
    fs.release(fh);
    let on_disk = std::fs::read(root.join("new.bin")).unwrap();
    assert_eq!(
        (&on_disk[..4], &on_disk[100..], on_disk[50]),
        (&b"head"[..], &b"tail"[..], 0)
    );
    assert_eq!(
        fs.create(ROOT, OsStr::new("new.bin"), 0o644, libc::O_EXCL, me(), true)
            .unwrap_err(),
        libc::EEXIST
    );
    // Modes are exactly the ones asked for (less the caller's umask, not the daemon's).
    let (g, fh0, _) = fs
        .create(ROOT, OsStr::new("shared"), 0o666, 0, me(), false)
        .unwrap();
    assert_eq!((g.perm, fh0), (0o666, 0), "handle-less: pinned, no handle");
    assert_eq!(fs.write(g.ino, 0, 0, b"pinned").unwrap(), 6);
    let d = fs.mkdir(ROOT, OsStr::new("open"), 0o777, 0, me()).unwrap();
    assert_eq!(d.perm, 0o777);
    let t = rec.touches();
    assert!(t.contains(&("new.bin".into(), Touch::Writing)), "{t:?}");
    assert!(
        t.contains(&("new.bin".into(), Touch::Settled)),
        "closing a written file settles it: {t:?}"
    );
    // In place: the same inode (the kernel's page cache of it stays right).
    let doc = fs.lookup(ROOT, OsStr::new("doc.txt")).unwrap();
    assert_eq!(fs.write(doc.ino, 0, 3, b"abc").unwrap(), 3);
    assert_eq!(std::fs::read(root.join("doc.txt")).unwrap(), b"012abc6789");
    assert_eq!(fs.getattr(doc.ino).unwrap().ino, doc.ino);
    // Truncate, chmod, utimens.
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let a2 = fs
        .setattr(
            doc.ino,
            SetAttr {
                size: Some(4),
                mode: Some(0o755),
                mtime: Some(SetTime::At(t0)),
                atime: Some(SetTime::Now),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((a2.size, a2.perm, a2.mtime), (4, 0o755, t0));
    let md = std::fs::metadata(root.join("doc.txt")).unwrap();
    assert_eq!(
        (md.len(), md.mode() & 0o7777),
        (4, 0o755),
        "modes are kept locally"
    );
    assert!(rec.touches().contains(&("doc.txt".into(), Touch::Writing)));
    // fallocate mode 0 extends; other modes are refused.
    fs.fallocate(doc.ino, 0, 0, 8192, 0).unwrap();
    assert_eq!(fs.getattr(doc.ino).unwrap().size, 8192);
    assert_eq!(
        fs.fallocate(
            doc.ino,
            0,
            0,
            10,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        )
        .unwrap_err(),
        libc::EOPNOTSUPP
    );
    // fsync records at once.
    fs.fsync(doc.ino, 0, false, false).unwrap();
    assert_eq!(*rec.recorded.lock().unwrap(), ["doc.txt"]);
}

#[test]
fn namespace_changes() {
    let (_d, store) = mirror(&[("a/x.txt", b"x"), ("a/y.txt", b"y"), ("b/z.txt", b"z")]);
    let (fs, rec) = writable(&store);
    let root = store.root();
    let a = fs.lookup(ROOT, OsStr::new("a")).unwrap();
    let b = fs.lookup(ROOT, OsStr::new("b")).unwrap();
    let x = fs.lookup(a.ino, OsStr::new("x.txt")).unwrap();
    // Rename over an existing file, atomically; the node follows its file.
    fs.rename(a.ino, OsStr::new("x.txt"), b.ino, OsStr::new("z.txt"), 0)
        .unwrap();
    assert_eq!(std::fs::read(root.join("b/z.txt")).unwrap(), b"x");
    assert!(!root.join("a/x.txt").exists());
    assert_eq!(fs.getattr(x.ino).unwrap().size, 1);
    let t = rec.touches();
    assert_eq!(
        t,
        [
            ("a/x.txt".into(), Touch::Gone),
            ("b/z.txt".into(), Touch::Settled)
        ]
    );
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    assert_eq!(
        fs.rename(
            a.ino,
            OsStr::new("y.txt"),
            b.ino,
            OsStr::new("z.txt"),
            libc::RENAME_NOREPLACE
        )
        .unwrap_err(),
        libc::EEXIST
    );
    fs.rename(
        a.ino,
        OsStr::new("y.txt"),
        b.ino,
        OsStr::new("z.txt"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(std::fs::read(root.join("b/z.txt")).unwrap(), b"y");
    assert_eq!(std::fs::read(root.join("a/y.txt")).unwrap(), b"x");
    // A directory moves with its files; the nodes below follow.
    let y = fs.lookup(a.ino, OsStr::new("y.txt")).unwrap();
    let c = fs.mkdir(ROOT, OsStr::new("c"), 0o755, 0o022, me()).unwrap();
    fs.rename(ROOT, OsStr::new("a"), c.ino, OsStr::new("a2"), 0)
        .unwrap();
    assert_eq!(std::fs::read(root.join("c/a2/y.txt")).unwrap(), b"x");
    let (fh, _) = fs.open(y.ino, false).unwrap();
    assert_eq!(fs.read(y.ino, fh, 0, 10).unwrap(), b"x");
    fs.release(fh);
    // rmdir of a non-empty directory; unlink; rmdir.
    assert_eq!(
        fs.rmdir(c.ino, OsStr::new("a2")).unwrap_err(),
        libc::ENOTEMPTY
    );
    fs.unlink(a.ino, OsStr::new("y.txt")).unwrap();
    fs.rmdir(c.ino, OsStr::new("a2")).unwrap();
    assert!(!root.join("c/a2").exists());
    assert!(rec.touches().contains(&("c/a2/y.txt".into(), Touch::Gone)));
    // What the remote cannot hold, and mountd's own directory.
    assert_eq!(fs.symlink().unwrap_err(), libc::EPERM);
    assert_eq!(fs.link().unwrap_err(), libc::EPERM);
    assert_eq!(
        fs.mknod(ROOT, OsStr::new("fifo"), libc::S_IFIFO | 0o644, 0, me())
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(fs.setxattr().unwrap_err(), libc::EOPNOTSUPP);
    assert_eq!(
        fs.mkdir(ROOT, OsStr::new(".mountd"), 0o755, 0, me())
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        fs.rename(b.ino, OsStr::new("z.txt"), ROOT, OsStr::new(".mountd"), 0)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        fs.unlink(ROOT, OsStr::new(".mountd")).unwrap_err(),
        libc::EPERM
    );
    let f = fs
        .mknod(ROOT, OsStr::new("plain"), libc::S_IFREG | 0o600, 0, me())
        .unwrap();
    assert_eq!((f.kind, f.perm), (Kind::File, 0o600));
}

#[test]
fn a_refusing_token_turns_writes_into_eacces() {
    let (_d, store) = mirror(&[("kept.txt", b"mine")]);
    let (fs, rec) = writable(&store);
    let f = fs.lookup(ROOT, OsStr::new("kept.txt")).unwrap();
    assert_eq!(f.perm, 0o644);
    *rec.refused.lock().unwrap() = Some("403 forbidden".into());
    assert_eq!(
        fs.getattr(f.ino).unwrap().perm,
        0o444,
        "the modes shown lose their write bits"
    );
    assert_eq!(fs.open(f.ino, true).unwrap_err(), libc::EACCES);
    assert_eq!(fs.write(f.ino, 0, 0, b"x").unwrap_err(), libc::EACCES);
    assert_eq!(
        fs.create(ROOT, OsStr::new("n"), 0o644, 0, me(), true)
            .unwrap_err(),
        libc::EACCES
    );
    assert_eq!(
        std::fs::read(store.root().join("kept.txt")).unwrap(),
        b"mine"
    );
    let (fh, _) = fs.open(f.ino, false).unwrap();
    assert_eq!(fs.read(f.ino, fh, 0, 10).unwrap(), b"mine");
}

#[test]
fn writes_truncations_and_chowns_drop_set_id_bits() {
    let (_d, store) = mirror(&[]);
    let (fs, _rec) = writable(&store);
    // Only where the kernel leaves it to the view: else the kernel drops them itself.
    let kept = fs
        .create(ROOT, OsStr::new("k"), 0o4755, libc::O_EXCL, me(), false)
        .unwrap()
        .0;
    fs.write(kept.ino, 0, 0, b"x").unwrap();
    assert_eq!(fs.getattr(kept.ino).unwrap().perm, 0o4755);
    fs.set_kill_privs(true);
    let mode_on_disk =
        |name: &str| std::fs::metadata(store.root().join(name)).unwrap().mode() & 0o7777;
    let create = |name: &str, perm: u32| {
        fs.create(ROOT, OsStr::new(name), perm, libc::O_EXCL, me(), false)
            .unwrap()
            .0
    };
    let set = |ino: u64, s: SetAttr| fs.setattr(ino, s).unwrap().perm;
    // A write drops set-user-ID, and set-group-ID where group execution is on.
    let w = create("w", 0o6755);
    assert_eq!(w.perm, 0o6755, "a new file keeps the bits it asked for");
    fs.write(w.ino, 0, 0, b"x").unwrap();
    assert_eq!(
        (fs.getattr(w.ino).unwrap().perm, mode_on_disk("w")),
        (0o755, 0o755)
    );
    // Set-group-ID without group execution is a locking mark, not a privilege: kept.
    let g = create("g", 0o2644);
    fs.write(g.ino, 0, 0, b"x").unwrap();
    assert_eq!(mode_on_disk("g"), 0o2644);
    // A truncation and a chown (even to the same owner) drop them too.
    let t = create("t", 0o4755);
    let size = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(set(t.ino, size), 0o755);
    let c = create("c", 0o4711);
    let me_ids = SetAttr {
        uid: Some(me().uid),
        gid: Some(me().gid),
        ..Default::default()
    };
    assert_eq!(set(c.ino, me_ids), 0o711);
    assert_eq!(mode_on_disk("c"), 0o711);
    // An explicit mode is what the caller asked for, set-ID bits and all; times drop nothing.
    let mode = SetAttr {
        mode: Some(0o4755),
        ..Default::default()
    };
    assert_eq!(set(c.ino, mode), 0o4755);
    let times = SetAttr {
        mtime: Some(SetTime::Now),
        ..Default::default()
    };
    assert_eq!(set(c.ino, times), 0o4755);
    // A directory's set-group-ID bit (inheritance of the group) is not a privilege.
    let d = fs.mkdir(ROOT, OsStr::new("d"), 0o2775, 0, me()).unwrap();
    let me_ids = SetAttr {
        uid: Some(me().uid),
        ..Default::default()
    };
    assert_eq!(set(d.ino, me_ids), 0o2775);
}
