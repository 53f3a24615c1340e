//! Two-way sync end to end: the real `mountd` binary (`--once`, the push-only one-shots, the service
//! in plain-directory mode, the operator commands) against the reference remote over loopback. What
//! only a process shows: exit codes and what the run says, the server's request log and counters,
//! the files on both sides, and a `kill -9` in the middle of pushing. Every wait is on a condition
//! (the server's state, a file), bounded by a deadline; nothing sleeps to synchronize.
mod common;
use common::*;
use mountd_remote::{ErrorFault, FailNext, Faults};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn mountd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mountd"));
    c.stdin(Stdio::null());
    c
}

/// `mountd <command> --local-dir <mirror> <rest>` (an operator command), run to completion.
fn op(h: &Harness, args: &[&str]) -> Run {
    let mut c = mountd();
    c.arg(args[0])
        .arg("--local-dir")
        .arg(h.local())
        .args(&args[1..]);
    run_cmd(c)
}

/// Files written or deleted through the write API at `path` (the test's own `put`s not counted).
fn writes(h: &Harness, path: &str) -> u64 {
    h.remote
        .counts()
        .writes_per_path
        .get(path)
        .copied()
        .unwrap_or(0)
}

/// Write requests (PUT, DELETE, bulk) seen since the counters were last reset.
fn write_requests(h: &Harness) -> u64 {
    let c = h.remote.counts();
    c.put + c.delete + c.bulk
}

/// The conflict copies kept under `<mirror>/.mountd/conflicts` (path relative to it → bytes).
fn copies(h: &Harness) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = h.local().join(".mountd/conflicts");
    if !dir.exists() {
        return Default::default();
    }
    read_tree(&dir)
}

/// Every event of the remote's feed, oldest first, as (type, path).
fn events(h: &Harness) -> Vec<(String, String)> {
    let ws = h.remote.workspace();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page: serde_json::Value =
            serde_json::from_slice(&ws.events_json(cursor.as_deref(), 1000, false)).unwrap();
        let evs = page["events"].as_array().unwrap();
        for e in evs {
            out.push((
                e["type"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
            ));
        }
        match page["nextCursor"].as_str() {
            Some(c) if !evs.is_empty() => cursor = Some(c.to_string()),
            _ => return out,
        }
    }
}

fn write(h: &Harness, rel: &str, bytes: &[u8]) {
    let p = h.local().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn read(h: &Harness, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(h.local().join(rel)).ok()
}

fn wait_remote(h: &Harness, path: &str, want: Option<&[u8]>) {
    wait_for(
        &format!(
            "the remote's {path} to be {:?}",
            want.map(String::from_utf8_lossy)
        ),
        WAIT,
        || h.remote.content(path).as_deref() == want,
    );
}

/// A complete first mirror of what the harness's remote holds.
fn first_sync(h: &Harness) {
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "first sync: {}", r.all());
}

#[test]
fn once_pushes_an_edit_a_new_file_a_delete_and_a_rename_each_once_then_nothing() {
    let h = Harness::new();
    h.remote.put("/a.md", b"alpha\n");
    h.remote.put("/gone.txt", b"bye\n");
    h.remote.put("/docs/old.txt", b"moving house\n");
    h.remote.put("/keep.txt", b"kept\n");
    first_sync(&h);

    write(&h, "a.md", b"alpha, edited locally\n");
    write(&h, "new/dir/n.txt", b"brand new\n");
    std::fs::remove_file(h.local().join("gone.txt")).unwrap();
    std::fs::create_dir_all(h.local().join("moved")).unwrap();
    std::fs::rename(
        h.local().join("docs/old.txt"),
        h.local().join("moved/old.txt"),
    )
    .unwrap();
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("pushed 5 local change(s)"),
        "3 puts and 2 deletes: {}",
        r.all()
    );
    let rc = |p: &str| h.remote.content(p);
    assert_eq!(
        rc("/a.md").as_deref(),
        Some(&b"alpha, edited locally\n"[..])
    );
    assert_eq!(rc("/new/dir/n.txt").as_deref(), Some(&b"brand new\n"[..]));
    assert_eq!(
        rc("/moved/old.txt").as_deref(),
        Some(&b"moving house\n"[..])
    );
    assert_eq!(rc("/gone.txt"), None);
    assert_eq!(rc("/docs/old.txt"), None);
    assert_eq!(rc("/keep.txt").as_deref(), Some(&b"kept\n"[..]));
    for p in [
        "/a.md",
        "/new/dir/n.txt",
        "/moved/old.txt",
        "/gone.txt",
        "/docs/old.txt",
    ] {
        assert_eq!(
            writes(&h, p),
            1,
            "{p} written once: {:?}",
            h.remote.counts()
        );
    }
    assert_eq!(writes(&h, "/keep.txt"), 0);
    assert_eq!(h.remote.counts().writes_applied, 5);

    // mountd's own writes come back through the feed: recognised, nothing pushed or downloaded.
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("pushed 0 local change(s)"), "{}", r.all());
    let c = h.remote.counts();
    assert_eq!(write_requests(&h), 0, "nothing pushed again: {c:?}");
    assert_eq!(c.file, 0, "no GET /fs/file for mountd's own writes: {c:?}");
    assert!(c.events > 0, "the run did read the feed: {c:?}");
    assert!(
        copies(&h).is_empty(),
        "no conflict: {:?}",
        copies(&h).keys()
    );
    assert_eq!(
        read(&h, "a.md").as_deref(),
        Some(&b"alpha, edited locally\n"[..])
    );
    assert_eq!(
        read(&h, "moved/old.txt").as_deref(),
        Some(&b"moving house\n"[..])
    );
}

#[test]
fn a_conflict_keeps_both_versions_and_is_settled_either_way() {
    let h = Harness::new();
    h.remote.put("/notes/c.md", b"base\n");
    h.remote.put("/other.txt", b"other\n");
    first_sync(&h);

    write(&h, "notes/c.md", b"local edit\n");
    h.remote.put("/notes/c.md", b"remote edit\n");
    let r = h.run(&[]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(
        r.stderr.contains("conflict: notes/c.md")
            && r.stderr.contains(".mountd/conflicts/notes/c.conflict-"),
        "stderr names the path and the copy: {}",
        r.all()
    );
    let kept = copies(&h);
    assert_eq!(kept.len(), 1, "one copy: {:?}", kept.keys());
    let (copy, bytes) = kept.iter().next().unwrap();
    assert!(
        copy.starts_with("notes/c.conflict-") && copy.ends_with(".md"),
        "{copy}"
    );
    assert_eq!(bytes, b"local edit\n", "the copy holds the local bytes");
    assert_eq!(
        read(&h, "notes/c.md").as_deref(),
        Some(&b"remote edit\n"[..])
    );
    assert_eq!(
        h.remote.content("/notes/c.md").as_deref(),
        Some(&b"remote edit\n"[..]),
        "the remote's version was not overwritten"
    );
    assert!(
        !h.remote
            .workspace()
            .files()
            .iter()
            .any(|(p, _)| p.contains("conflict")),
        "a conflict copy is never pushed"
    );

    let (code, json) = status_of(&h.local());
    assert_eq!(code, 5, "status: {json}");
    assert_eq!(
        json["push"]["conflicts"][0]["path"], "notes/c.md",
        "status lists it: {json}"
    );
    let (code, text) = status_text_of(&h.local());
    assert_eq!(code, 5);
    assert!(text.contains("notes/c.md"), "{text}");
    let l = op(&h, &["conflicts"]);
    assert_eq!(l.code, 0, "{}", l.all());
    assert!(
        l.stdout.contains("notes/c.md") && l.stdout.contains(copy.as_str()),
        "{}",
        l.all()
    );

    // Keep the local version: it is back at the path and the next run pushes it on top.
    let s = op(
        &h,
        &["conflicts", "resolve", "notes/c.md", "--keep", "local"],
    );
    assert_eq!(s.code, 0, "{}", s.all());
    assert_eq!(
        read(&h, "notes/c.md").as_deref(),
        Some(&b"local edit\n"[..])
    );
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        h.remote.content("/notes/c.md").as_deref(),
        Some(&b"local edit\n"[..])
    );
    assert!(copies(&h).is_empty(), "{:?}", copies(&h).keys());
    assert_eq!(status_of(&h.local()).0, 0);
    let l = op(&h, &["conflicts"]);
    assert!(l.stdout.contains("no conflicts"), "{}", l.all());

    // Keep the remote version: the copy goes, the path keeps the remote's bytes, nothing is pushed.
    write(&h, "notes/c.md", b"local again\n");
    h.remote.put("/notes/c.md", b"remote again\n");
    let r = h.run(&[]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert_eq!(copies(&h).len(), 1);
    let s = op(
        &h,
        &["conflicts", "resolve", "/notes/c.md", "--keep", "remote"],
    );
    assert_eq!(s.code, 0, "{}", s.all());
    assert!(
        copies(&h).is_empty(),
        "the copy is removed: {:?}",
        copies(&h).keys()
    );
    assert_eq!(
        read(&h, "notes/c.md").as_deref(),
        Some(&b"remote again\n"[..])
    );
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(write_requests(&h), 0);
    assert_eq!(
        h.remote.content("/notes/c.md").as_deref(),
        Some(&b"remote again\n"[..])
    );
    assert_eq!(status_of(&h.local()).0, 0);
}

/// A 40-file mirror with `deleted` of its files deleted locally.
fn mass_deleted(deleted: usize) -> Harness {
    let h = Harness::new();
    for i in 0..40 {
        h.remote
            .put(&format!("/m/f{i:02}.txt"), format!("file {i}\n").as_bytes());
    }
    first_sync(&h);
    for i in 0..deleted {
        std::fs::remove_file(h.local().join(format!("m/f{i:02}.txt"))).unwrap();
    }
    h.remote.reset_counts();
    h
}

#[test]
fn a_mass_deletion_is_held_until_an_operator_allows_it() {
    let h = mass_deleted(30);
    let r = h.run(&[]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(
        r.stderr.contains("30 local delete(s) held")
            && r.stderr
                .contains("30 of 40 tracked files were deleted locally")
            && r.stderr.contains("allow-deletes"),
        "says why and what to do: {}",
        r.all()
    );
    assert_eq!(h.remote.counts().delete, 0, "{:?}", h.remote.counts());
    assert_eq!(h.remote.file_count(), 40, "every file still on the remote");
    assert_eq!(h.status_json()["push"]["heldDeletes"], 30);
    // Still held by the next run.
    let r = h.run(&[]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert_eq!(h.remote.counts().delete, 0);

    let a = op(&h, &["outbox", "allow-deletes"]);
    assert_eq!(a.code, 0, "{}", a.all());
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(h.remote.counts().delete, 30);
    assert_eq!(h.remote.file_count(), 10);
    for i in 0..40 {
        let p = format!("/m/f{i:02}.txt");
        assert_eq!(h.remote.content(&p).is_some(), i >= 30, "{p}");
    }
}

#[test]
fn allow_mass_delete_lets_a_mass_deletion_go_in_one_run() {
    let h = mass_deleted(30);
    let r = h.run(&["--allow-mass-delete"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(h.remote.counts().delete, 30);
    assert_eq!(h.remote.file_count(), 10);
}

#[test]
fn a_write_denied_path_is_kept_reported_and_retried_only_under_another_token() {
    let h = Harness::new();
    h.remote.put("/w.md", b"before\n");
    first_sync(&h);
    h.remote.set_read_only(true);
    write(&h, "w.md", b"denied edit\n");
    let r = h.run(&[]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stderr.contains("write denied: w.md"), "{}", r.all());
    assert_eq!(read(&h, "w.md").as_deref(), Some(&b"denied edit\n"[..]));
    assert_eq!(h.remote.content("/w.md").as_deref(), Some(&b"before\n"[..]));

    // The same token: no request is tried again, the path stays reported.
    h.remote.set_read_only(false);
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stderr.contains("write denied: w.md"), "{}", r.all());
    assert_eq!(write_requests(&h), 0, "{:?}", h.remote.counts());
    assert_eq!(read(&h, "w.md").as_deref(), Some(&b"denied edit\n"[..]));

    // Another token (one with the write scope) brings it back.
    let token = "an0ther-token-with-fs-write-0123456789";
    h.remote.set_token(token);
    std::fs::write(h.tmp.path().join("token"), format!("{token}\n")).unwrap();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        h.remote.content("/w.md").as_deref(),
        Some(&b"denied edit\n"[..])
    );
    assert_eq!(writes(&h, "/w.md"), 1);
}

#[test]
fn a_large_file_is_streamed_from_disk_exactly_once() {
    let h = Harness::new();
    h.remote.set_max_body_bytes(32 << 20);
    h.remote.put("/small.txt", b"small\n");
    first_sync(&h);
    // Above the size pushed from memory: sent straight from disk, base64 streamed.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 5)
        .map(|i| ((i * 7) % 251) as u8)
        .collect();
    write(&h, "big.bin", &big);
    let r = h.run(&["--max-push-bytes", "32M"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        h.remote.content("/big.bin").as_deref() == Some(&big[..]),
        "the server holds the bytes"
    );
    assert_eq!(writes(&h, "/big.bin"), 1);
    // mountd's own write comes back through the feed: nothing to fetch, nothing to push.
    h.remote.reset_counts();
    let r = h.run(&["--max-push-bytes", "32M"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(write_requests(&h), 0, "{:?}", h.remote.counts());
    assert_eq!(h.remote.counts().file, 0, "{:?}", h.remote.counts());
    assert_eq!(read(&h, "big.bin").as_deref(), Some(&big[..]));
}

#[test]
fn a_file_above_the_body_cap_is_kept_reported_and_not_retried() {
    let h = Harness::new();
    h.remote.put("/small.txt", b"small\n");
    first_sync(&h);
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    write(&h, "big.bin", &big);
    write(&h, "small.txt", b"small, edited\n");
    let r = h.run(&["--max-push-bytes", "64K"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stderr.contains("too large: big.bin"), "{}", r.all());
    assert_eq!(read(&h, "big.bin").as_deref(), Some(&big[..]));
    assert_eq!(h.remote.content("/big.bin"), None);
    assert_eq!(
        h.remote.content("/small.txt").as_deref(),
        Some(&b"small, edited\n"[..]),
        "the other change is pushed"
    );

    h.remote.reset_counts();
    let r = h.run(&["--max-push-bytes", "64K"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stderr.contains("too large: big.bin"), "{}", r.all());
    assert_eq!(
        write_requests(&h),
        0,
        "not retried: {:?}",
        h.remote.counts()
    );
    assert_eq!(read(&h, "big.bin").as_deref(), Some(&big[..]));
}

#[test]
fn push_only_one_shots_push_without_pulling() {
    let h = Harness::new();
    h.remote.put("/a.md", b"a\n");
    h.remote.put("/b.md", b"b\n");
    first_sync(&h);

    // --push-local-once: scan and push; the remote's change meanwhile is not pulled.
    write(&h, "a.md", b"a, local\n");
    h.remote.put("/b.md", b"b, remote\n");
    h.remote.reset_counts();
    let r = h.run(&["--push-local-once"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        h.remote.content("/a.md").as_deref(),
        Some(&b"a, local\n"[..])
    );
    assert_eq!(
        read(&h, "b.md").as_deref(),
        Some(&b"b\n"[..]),
        "nothing pulled"
    );
    let pulls: Vec<_> = h
        .remote
        .requests()
        .into_iter()
        .filter(|q| !matches!(q.route.as_str(), "put" | "delete" | "bulk"))
        .map(|q| (q.route, q.path))
        .collect();
    assert!(pulls.is_empty(), "only writes: {pulls:?}");
    assert_eq!(writes(&h, "/a.md"), 1);

    // --flush-outbox-once pushes what is recorded, not what is only on disk. A push refused with a
    // 400 ends a run with the change still pending.
    h.remote.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "put".into(),
            count: 1,
            error: ErrorFault::new(400, "bad_request"),
        }],
        ..Default::default()
    });
    write(&h, "a.md", b"a, local twice\n");
    let r = h.run(&["--push-local-once"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(
        h.remote.content("/a.md").as_deref(),
        Some(&b"a, local\n"[..])
    );
    write(&h, "c.md", b"c, not recorded\n");
    h.remote.reset_counts();
    let r = h.run(&["--flush-outbox-once"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        h.remote.content("/a.md").as_deref(),
        Some(&b"a, local twice\n"[..])
    );
    assert_eq!(h.remote.content("/c.md"), None, "not recorded, not pushed");
    let pulls: Vec<_> = h
        .remote
        .requests()
        .into_iter()
        .filter(|q| !matches!(q.route.as_str(), "put" | "delete" | "bulk"))
        .map(|q| (q.route, q.path))
        .collect();
    assert!(pulls.is_empty(), "only writes: {pulls:?}");
    let r = h.run(&["--push-local-once"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        h.remote.content("/c.md").as_deref(),
        Some(&b"c, not recorded\n"[..])
    );
    // Nothing left: both exit 0 and send nothing.
    h.remote.reset_counts();
    for flag in ["--flush-outbox-once", "--push-local-once"] {
        let r = h.run(&[flag]);
        assert_eq!(r.code, 0, "{flag}: {}", r.all());
    }
    assert_eq!(write_requests(&h), 0);
    // The pull was only postponed.
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(read(&h, "b.md").as_deref(), Some(&b"b, remote\n"[..]));
}

#[test]
fn read_only_never_pushes_and_keeps_a_replaced_local_edit_as_a_copy() {
    let h = Harness::new();
    h.remote.put("/r.md", b"remote 1\n");
    first_sync(&h);
    write(&h, "r.md", b"local edit\n");
    write(&h, "new.md", b"local only\n");
    h.remote.reset_counts();
    let r = h.run(&["--read-only"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(h.remote.counts().writes_applied, 0);
    assert_eq!(write_requests(&h), 0);
    assert_eq!(read(&h, "r.md").as_deref(), Some(&b"local edit\n"[..]));

    h.remote.put("/r.md", b"remote 2\n");
    let r = h.run(&["--sync-mode", "pull-only"]);
    assert!(matches!(r.code, 0 | 5), "{}", r.all());
    assert!(
        r.stderr.contains("conflict: r.md") && r.stderr.contains(".mountd/conflicts/r.conflict-"),
        "the run says where the local bytes are: {}",
        r.all()
    );
    assert_eq!(read(&h, "r.md").as_deref(), Some(&b"remote 2\n"[..]));
    let kept = copies(&h);
    assert_eq!(
        kept.values().collect::<Vec<_>>(),
        vec![&b"local edit\n".to_vec()],
        "{:?}",
        kept.keys()
    );
    assert_eq!(write_requests(&h), 0);
    assert_eq!(h.remote.counts().writes_applied, 0);
    assert_eq!(h.remote.content("/new.md"), None);
    assert_eq!(read(&h, "new.md").as_deref(), Some(&b"local only\n"[..]));
}

/// The service in plain-directory mode, its stderr collected.
struct Svc {
    child: KillOnDrop,
    logs: Lines,
}

impl Svc {
    fn start(h: &Harness, extra: &[&str]) -> Svc {
        let mut c = h.service_cmd();
        c.arg("--no-fuse")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("service starts");
        let logs = Lines::collect(child.stderr.take().unwrap());
        let s = Svc {
            child: KillOnDrop(child),
            logs,
        };
        wait_for("the watcher", WAIT, || {
            s.logs.count("watching the mirror directory") > 0
        });
        s
    }

    /// Like [`wait_remote`], the service's log in the failure.
    fn wait_remote(&self, h: &Harness, path: &str, want: Option<&[u8]>) {
        let start = Instant::now();
        while h.remote.content(path).as_deref() != want {
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for the remote's {path} to be {:?}; it is {:?}\n{}",
                want.map(String::from_utf8_lossy),
                h.remote
                    .content(path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                self.logs.all()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) -> (i32, String) {
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        let mut s = self;
        let st = s.child.0.wait().unwrap();
        (st.code().unwrap_or(-1), s.logs.all())
    }
}

/// The remote's newest event id.
fn tip(h: &Harness) -> Option<String> {
    let page: serde_json::Value =
        serde_json::from_slice(&h.remote.workspace().events_json(None, 1, true)).unwrap();
    page["events"][0]["eventId"].as_str().map(str::to_string)
}

/// Wait until the service has taken in every event of the feed (its own writes coming back).
fn wait_caught_up(h: &Harness) {
    let want = tip(h);
    wait_for("the events cursor to reach the tip", WAIT, || {
        h.state().events_cursor().ok().flatten() == want
    });
}

fn inode(h: &Harness, rel: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(h.local().join(rel)).unwrap().ino()
}

#[test]
fn the_service_pushes_saves_atomic_saves_and_directories_polling() {
    service_pushes(&["--websocket=false"]);
}

#[test]
fn the_service_pushes_saves_atomic_saves_and_directories_with_the_stream() {
    service_pushes(&["--websocket=true"]);
}

fn service_pushes(extra: &[&str]) {
    let h = Harness::new();
    h.remote.put("/a.md", b"version 1\n");
    h.remote.put("/keep.txt", b"keep\n");
    first_sync(&h);
    let svc = Svc::start(&h, extra);
    h.remote.reset_counts();

    // (a) A file saved into the mirror.
    write(&h, "saved.txt", b"saved by hand\n");
    svc.wait_remote(&h, "/saved.txt", Some(b"saved by hand\n"));

    // (b) An editor's atomic save: one update, the path never missing.
    let l = h.local();
    std::fs::write(l.join("a.md.tmp"), b"version 2\n").unwrap();
    std::fs::rename(l.join("a.md.tmp"), l.join("a.md")).unwrap();
    svc.wait_remote(&h, "/a.md", Some(b"version 2\n"));

    // (c) A directory made elsewhere, files and all, moved into the mirror.
    let outside = h.tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("lib")).unwrap();
    std::fs::write(outside.join("lib/x.txt"), b"moved in\n").unwrap();
    std::fs::write(outside.join("y.txt"), b"me too\n").unwrap();
    std::fs::rename(&outside, l.join("moved-in")).unwrap();
    svc.wait_remote(&h, "/moved-in/lib/x.txt", Some(b"moved in\n"));
    svc.wait_remote(&h, "/moved-in/y.txt", Some(b"me too\n"));

    // A directory created in place with files written into it, then renamed. (The scan of a new
    // directory may catch a file between its creation and its bytes, and push that first version too:
    // only the final bytes are checked for those, not the number of writes.)
    std::fs::create_dir_all(l.join("proj/src")).unwrap();
    std::fs::write(l.join("proj/src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(l.join("proj/README"), b"proj\n").unwrap();
    svc.wait_remote(&h, "/proj/src/main.rs", Some(b"fn main() {}\n"));
    svc.wait_remote(&h, "/proj/README", Some(b"proj\n"));
    std::fs::rename(l.join("proj"), l.join("project")).unwrap();
    svc.wait_remote(&h, "/project/src/main.rs", Some(b"fn main() {}\n"));
    svc.wait_remote(&h, "/project/README", Some(b"proj\n"));
    svc.wait_remote(&h, "/proj/src/main.rs", None);
    svc.wait_remote(&h, "/proj/README", None);

    // mountd's own writes come back through the feed (or the stream): recognised, not downloaded,
    // the local files left as they are.
    let inodes: Vec<u64> = ["saved.txt", "a.md", "project/README"]
        .iter()
        .map(|r| inode(&h, r))
        .collect();
    wait_caught_up(&h);
    let (code, logs) = svc.stop();
    for (r, ino) in ["saved.txt", "a.md", "project/README"].iter().zip(inodes) {
        assert_eq!(inode(&h, r), ino, "{r} rewritten by its own echo");
    }
    let fetched = h.remote.counts().file_paths;
    assert!(
        fetched.is_empty(),
        "no GET /fs/file for mountd's own writes: {fetched:?}"
    );
    assert_eq!(code, 0, "{logs}");
    let c = h.remote.counts();
    assert_eq!(writes(&h, "/a.md"), 1, "one update: {c:?}");
    assert_eq!(
        writes(&h, "/a.md.tmp"),
        0,
        "the temp file never pushed: {c:?}"
    );
    assert_eq!(writes(&h, "/saved.txt"), 1, "{c:?}");
    for p in [
        "/project/src/main.rs",
        "/project/README",
        "/moved-in/lib/x.txt",
        "/moved-in/y.txt",
    ] {
        assert_eq!(writes(&h, p), 1, "{p}: {c:?}");
    }
    for p in ["/proj/src/main.rs", "/proj/README"] {
        assert!(writes(&h, p) >= 2, "{p} created, then deleted: {c:?}");
    }
    assert!(
        !l.join("proj").exists(),
        "the renamed directory stays renamed locally"
    );
    assert_eq!(writes(&h, "/keep.txt"), 0);
    let evs = events(&h);
    let a: Vec<_> = evs.iter().filter(|(_, p)| p == "/a.md").collect();
    assert!(
        !a.iter().any(|(t, _)| t == "file.deleted"),
        "the path was never missing on the remote: {a:?}"
    );
    assert!(!evs.iter().any(|(_, p)| p.starts_with("/a.md.")), "{evs:?}");
    assert!(
        copies(&h).is_empty(),
        "no conflict: {:?}",
        copies(&h).keys()
    );
}

#[test]
fn the_service_never_loses_a_local_edit_to_a_remote_update_polling() {
    service_keeps_both(&["--websocket=false"]);
}

#[test]
fn the_service_never_loses_a_local_edit_to_a_remote_update_with_the_stream() {
    service_keeps_both(&["--websocket=true"]);
}

fn service_keeps_both(extra: &[&str]) {
    let h = Harness::new();
    h.remote.put("/x.md", b"base\n");
    first_sync(&h);
    let svc = Svc::start(&h, extra);
    // The push is slow: the remote's update lands while it is in flight (or before it is read).
    h.remote.set_faults(Faults {
        write_delay_ms: 1500,
        ..Default::default()
    });
    write(&h, "x.md", b"local edit\n");
    wait_for("the edit in the outbox", WAIT, || {
        h.state()
            .outbox()
            .map(|o| o.iter().any(|r| r.path == "x.md"))
            .unwrap_or(false)
    });
    h.remote.put("/x.md", b"remote update\n");
    let local = b"local edit\n".to_vec();
    wait_for("the local bytes pushed or kept as a copy", WAIT, || {
        h.remote.content("/x.md").as_deref() == Some(&local[..])
            || copies(&h).values().any(|v| *v == local)
    });
    // Both sides converge on one version of the path.
    wait_for("the mirror and the remote to agree", WAIT, || {
        read(&h, "x.md") == h.remote.content("/x.md")
    });
    let (code, logs) = svc.stop();
    assert_eq!(code, 0, "{logs}");
    let on_remote = h.remote.content("/x.md").unwrap();
    let kept = copies(&h);
    assert!(
        on_remote == local || kept.values().any(|v| *v == local),
        "local bytes lost: remote {:?}, copies {kept:?}",
        String::from_utf8_lossy(&on_remote)
    );
    assert!(
        on_remote == b"remote update\n" || kept.values().any(|v| v == b"remote update\n"),
        "the remote's update is lost: remote {:?}, copies {kept:?}\n{logs}",
        String::from_utf8_lossy(&on_remote)
    );
}

#[test]
fn every_change_is_pushed_exactly_once_across_kill_9() {
    let h = Harness::new();
    for i in 0..20 {
        h.remote.put(
            &format!("/e/f{i:02}.txt"),
            format!("original {i}\n").as_bytes(),
        );
    }
    first_sync(&h);
    let body = |tag: &str, i: usize| -> Vec<u8> {
        format!("{tag} {i}: {}\n", "x".repeat(300)).into_bytes()
    };
    let mut want = std::collections::BTreeMap::new();
    for i in 0..20 {
        let b = body("edited", i);
        write(&h, &format!("e/f{i:02}.txt"), &b);
        want.insert(format!("/e/f{i:02}.txt"), b);
        let b = body("new", i);
        write(&h, &format!("n/g{i:02}.txt"), &b);
        want.insert(format!("/n/g{i:02}.txt"), b);
    }
    // Small batches (a few files a request), each slow, some answers lost after the write.
    h.remote.set_faults(Faults {
        write_delay_ms: 100,
        drop_answer_after_write: Some(3),
        ..Default::default()
    });
    h.remote.reset_counts();
    let child = h.spawn(&["--max-push-bytes", "2K"]);
    let start = Instant::now();
    wait_for("some writes applied", WAIT, || {
        h.remote.counts().writes_applied >= 10
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let r = wait_output(child, WAIT, start);
    assert_eq!(r.code, -1, "killed: {}", r.all());
    let applied = h.remote.counts().writes_applied;
    assert!(
        applied < want.len() as u64,
        "killed in the middle of pushing ({applied} of {} written)",
        want.len()
    );

    // The restart meets lost answers too.
    h.remote.set_faults(Faults {
        drop_answer_after_write: Some(2),
        ..Default::default()
    });
    let r = h.run(&["--max-push-bytes", "2K"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("conflict"), "{}", r.all());
    for (p, b) in &want {
        assert_eq!(
            h.remote.content(p).as_deref(),
            Some(&b[..]),
            "{p} on the remote"
        );
        assert_eq!(
            writes(&h, p),
            1,
            "{p} written once: {:?}",
            h.remote.counts()
        );
    }
    assert_eq!(h.remote.counts().writes_applied, want.len() as u64);
    assert!(copies(&h).is_empty(), "{:?}", copies(&h).keys());
    let (code, json) = status_of(&h.local());
    assert_eq!(code, 0, "{json}");
    // And the next run has nothing left to do.
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(write_requests(&h), 0);
}

#[test]
fn the_service_pushes_every_change_exactly_once_across_kill_9() {
    let h = Harness::new();
    h.remote.put("/keep.txt", b"keep\n");
    first_sync(&h);
    let args = ["--websocket=false", "--max-push-bytes", "2K"];
    // Small batches, each slow, some answers lost after the write.
    h.remote.set_faults(Faults {
        write_delay_ms: 100,
        drop_answer_after_write: Some(3),
        ..Default::default()
    });
    let mut svc = Svc::start(&h, &args);
    h.remote.reset_counts();
    let mut want = std::collections::BTreeMap::new();
    for i in 0..40 {
        let b = format!("saved while running {i}: {}\n", "y".repeat(300)).into_bytes();
        write(&h, &format!("s/d{}/f{i:02}.txt", i % 4), &b);
        want.insert(format!("/s/d{}/f{i:02}.txt", i % 4), b);
    }
    wait_for("some writes applied", WAIT, || {
        h.remote.counts().writes_applied >= 10
    });
    unsafe { libc::kill(svc.child.0.id() as i32, libc::SIGKILL) };
    let _ = svc.child.0.wait();
    let applied = h.remote.counts().writes_applied;
    assert!(
        applied < want.len() as u64,
        "killed in the middle of pushing ({applied} of {} written)",
        want.len()
    );
    drop(svc);

    // The restart's scan finds what is left; lost answers meet it too.
    h.remote.set_faults(Faults {
        drop_answer_after_write: Some(2),
        ..Default::default()
    });
    let svc = Svc::start(&h, &args);
    for (p, b) in &want {
        wait_remote(&h, p, Some(b));
    }
    wait_for("the outbox to be empty", WAIT, || {
        h.state().outbox().map(|o| o.is_empty()).unwrap_or(false)
    });
    wait_caught_up(&h);
    let (code, logs) = svc.stop();
    assert_eq!(code, 0, "{logs}");
    for p in want.keys() {
        assert_eq!(
            writes(&h, p),
            1,
            "{p} written once: {:?}",
            h.remote.counts()
        );
    }
    assert_eq!(h.remote.counts().writes_applied, want.len() as u64);
    assert!(copies(&h).is_empty(), "{:?}", copies(&h).keys());
    assert_eq!(h.state().conflicts().unwrap().len(), 0, "{logs}");
    assert_eq!(status_of(&h.local()).0, 0);
}
