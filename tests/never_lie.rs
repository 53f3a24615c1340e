//! "Never lie, never lose", process-level: the real `mountd` binary against the reference remote, each
//! behaviour checked the way a user would check it — the bytes on disk, the exit code, what the
//! messages say, `mountd status --json`, the state DB and the requests the remote saw.
mod common;
use common::*;
use mountd_remote::{ErrorFault, FailNext, Faults, LoggedRequest, PathFault};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Files of a small tree in three top-level directories (`/ok`, `/locked`, `/other`).
fn three_dirs(h: &mut Harness) {
    for d in ["ok", "locked", "other"] {
        for i in 0..6 {
            h.put(
                &format!("/{d}/f{i}.txt"),
                format!("{d} {i} v1\n").as_bytes(),
            );
        }
    }
    h.put("/locked/sub/deep.txt", b"deep v1\n");
}

fn forbidden() -> ErrorFault {
    ErrorFault::new(403, "forbidden")
}

/// Local files under `rel_dir` (relative paths) with their bytes.
fn local_under(h: &Harness, rel_dir: &str) -> BTreeMap<String, Vec<u8>> {
    read_tree(&h.local())
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{rel_dir}/")))
        .collect()
}

fn expected_under(h: &Harness, dir: &str) -> BTreeMap<String, Vec<u8>> {
    h.expected
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{dir}/")))
        .map(|(k, v)| (k.trim_start_matches('/').to_string(), v.clone()))
        .collect()
}

#[test]
fn a_directory_whose_listing_is_refused_fails_the_bootstrap_by_name_and_heals() {
    let mut h = Harness::with_page_size(4);
    three_dirs(&mut h);
    let mut f = Faults::default();
    f.tree_path_faults.insert("/locked".into(), forbidden());
    h.set_faults(f);
    // Depth 1: every directory is listed on its own, so the refusal hits exactly `/locked`.
    let r = h.run(&["--no-export", "--tree-depth", "1"]);
    assert_eq!(
        r.code,
        5,
        "not complete while a directory is unlisted: {}",
        r.all()
    );
    assert!(
        r.stderr.contains("\"/locked\" could not be listed") && r.stderr.contains("403"),
        "the message names the directory and the cause: {}",
        r.all()
    );
    assert!(h.remote.counts().tree >= 4, "{:?}", h.remote.counts());
    // Everything else is mirrored; nothing of `/locked` was invented.
    for d in ["ok", "other"] {
        assert_eq!(local_under(&h, d), expected_under(&h, &format!("/{d}")));
    }
    assert!(local_under(&h, "locked").is_empty());
    // The server heals: the next run lists the directory again, exits 0, and its files arrive.
    h.set_faults(Faults::default());
    h.remote.reset_counts();
    let r = h.run(&["--no-export", "--tree-depth", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert!(
        h.remote
            .requests()
            .iter()
            .any(|q| q.route == "tree" && q.path.as_deref() == Some("/locked")),
        "the directory was listed again"
    );
}

#[test]
fn an_audit_whose_directory_listing_fails_removes_nothing_under_it() {
    let mut h = Harness::with_page_size(4);
    three_dirs(&mut h);
    let r = h.run(&["--no-export", "--tree-depth", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let before = local_under(&h, "locked");
    assert_eq!(before.len(), 7);
    // A complete mirror is re-listed (audit) while `/locked` refuses to be listed: every record under
    // it is "unseen" by that snapshot, and the sweep must not take that for "deleted".
    let mut f = Faults::default();
    f.tree_path_faults.insert("/locked".into(), forbidden());
    h.set_faults(f);
    let r = h.run(&["--no-export", "--tree-depth", "1", "--force-audit"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stderr.contains("\"/locked\""), "{}", r.all());
    assert_eq!(
        local_under(&h, "locked"),
        before,
        "nothing under the unlisted directory was removed or changed"
    );
    h.assert_mirror_exact();
    assert_eq!(h.status_json()["bootstrapComplete"], true);
    // Meanwhile the remote really deletes a file there; once the directory can be listed again the
    // deletion is applied (and only then).
    h.delete("/locked/f0.txt");
    h.set_faults(Faults::default());
    let r = h.run(&["--no-export", "--tree-depth", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
}

#[test]
fn a_404_on_a_changed_file_deletes_nothing_locally() {
    let mut h = Harness::new();
    h.sample_tree(10);
    h.put("/e/a.txt", b"a v1\n");
    assert_eq!(h.run(&[]).code, 0);
    h.assert_mirror_exact();
    // The feed says the file changed, but the server answers 404 for it.
    h.remote.put("/e/a.txt", b"a v2\n");
    let mut f = Faults::default();
    f.path_faults.insert(
        "/e/a.txt".into(),
        PathFault::Status(ErrorFault::new(404, "not_found")),
    );
    h.set_faults(f);
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 5, "not reported current: {}", r.all());
    assert!(h.remote.counts().file_paths["/e/a.txt"] >= 1);
    assert_eq!(
        std::fs::read(h.local().join("e/a.txt")).unwrap(),
        b"a v1\n",
        "the local file was kept as it was"
    );
    // Everything else is untouched (the expectation still holds v1 for it).
    h.assert_mirror_exact();
    let q = h.status_json()["quarantined"].as_array().unwrap().clone();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["path"], "/e/a.txt");
    // Healed: the new bytes arrive.
    h.set_faults(Faults::default());
    h.expected.insert("/e/a.txt".into(), b"a v2\n".to_vec());
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
}

#[test]
fn once_after_writes_during_an_interrupted_bootstrap_exits_0_only_when_current() {
    let mut h = Harness::with_page_size(5);
    for i in 0..60 {
        h.put(&format!("/w/f{i:03}.txt"), format!("v1 {i}\n").as_bytes());
    }
    h.set_faults(Faults {
        tree_delay_ms: 30,
        ..Default::default()
    });
    let mut child = KillOnDrop(h.spawn(&["--no-export"]));
    wait_for("a few pages", Duration::from_secs(30), || {
        h.remote.counts().tree >= 3
    });
    // Writes during the run: behind the traversal, ahead of it, a delete and a new directory.
    h.put("/w/f000.txt", b"v2 written during the bootstrap\n");
    h.put("/w/f059.txt", b"v2 ahead of the traversal\n");
    h.delete("/w/f001.txt");
    h.put("/new/dir/x.txt", b"new during the bootstrap\n");
    wait_for("more pages", Duration::from_secs(30), || {
        h.remote.counts().tree >= 5
    });
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    assert!(!h.is_complete(), "killed before completion");
    // And writes between the runs.
    h.put("/w/f002.txt", b"v3 between the runs\n");
    h.delete("/w/f003.txt");
    h.set_faults(Faults::default());
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.state_file()).unwrap()).unwrap();
    assert_eq!(st["phase"], "complete", "{st}");
    // The same with a catch-up that cannot finish: then the run must not exit 0.
    h.put("/w/f004.txt", b"v4 after completion\n");
    h.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "events".into(),
            count: 100,
            error: ErrorFault::new(503, "unavailable"),
        }],
        ..Default::default()
    });
    let r = h.run(&["--retries", "1"]);
    assert_ne!(r.code, 0, "not current, so not 0: {}", r.all());
    assert_eq!(
        std::fs::read(h.local().join("w/f004.txt")).unwrap(),
        format!("v1 {}\n", 4).as_bytes()
    );
    h.set_faults(Faults::default());
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
}

#[test]
fn every_file_failing_its_hash_is_systemic_not_a_quarantine() {
    for export in [false, true] {
        let mut h = Harness::with_page_size(10);
        h.sample_tree(30);
        let mut f = Faults::default();
        for p in h.expected.keys() {
            f.path_faults.insert(p.clone(), PathFault::BadHash);
        }
        h.set_faults(f);
        let args: &[&str] = if export { &[] } else { &["--no-export"] };
        let r = h.run(args);
        assert_eq!(r.code, 1, "export={export}: {}", r.all());
        assert!(r.stderr.contains("systemic"), "{}", r.all());
        assert!(
            r.stderr.contains("proxy") && r.stderr.contains("rewriting response bodies"),
            "the hint points at a body-rewriting proxy: {}",
            r.all()
        );
        let s = h.status_json();
        assert_eq!(s["bootstrapComplete"], false, "export={export}: {s}");
        // No file with a wrong hash was written.
        assert!(read_tree(&h.local()).is_empty(), "export={export}");
        // Once the path is clean, the mirror completes.
        h.set_faults(Faults::default());
        let r = h.run(args);
        assert_eq!(r.code, 0, "{}", r.all());
        h.assert_mirror_exact();
    }
}

#[test]
fn a_feed_that_refuses_the_cursor_is_resynced_by_listing_and_used_again() {
    for (status, code) in [(410u16, "cursor_expired"), (400, "invalid_cursor")] {
        let mut h = Harness::with_page_size(7);
        h.sample_tree(20);
        assert_eq!(h.run(&[]).code, 0);
        let stored = h.state().events_cursor().unwrap().expect("a cursor");
        // Changes the refused feed would have carried.
        h.put(
            "/docs/d0/f00000.txt",
            b"changed while the feed was refusing\n",
        );
        h.delete("/docs/d1/f00001.txt");
        h.put("/added.txt", b"added\n");
        let mut f = Faults::default();
        f.events_cursor_faults
            .insert(stored.clone(), ErrorFault::new(status, code));
        h.set_faults(f);
        h.remote.reset_counts();
        let r = h.run(&[]);
        assert_eq!(r.code, 0, "{status}: {}", r.all());
        h.assert_mirror_exact();
        let c = h.remote.counts();
        assert!(c.tree >= 1, "{status}: resynced by a full listing: {c:?}");
        assert_eq!(
            c.file, 2,
            "{status}: only what changed is fetched (hash-skip): {:?}",
            c.file_paths
        );
        let next = h.state().events_cursor().unwrap().expect("a cursor");
        assert_ne!(next, stored, "{status}: a fresh cursor after the resync");
        // The next run uses the feed again (the refusal of the old cursor is still armed).
        h.put("/later.txt", b"later\n");
        h.remote.reset_counts();
        let r = h.run(&[]);
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(r.stdout.contains("via catch-up"), "{}", r.all());
        h.assert_mirror_exact();
        let c = h.remote.counts();
        assert_eq!(
            c.tree, 1,
            "{status}: no listing, only the count check: {c:?}"
        );
        assert!(c.events >= 1);
        assert!(
            h.remote
                .requests()
                .iter()
                .filter(|q| q.route == "events")
                .all(|q| q.status == 200),
            "{status}"
        );
    }
}

fn big(i: usize) -> Vec<u8> {
    format!("big file {i:03}\n")
        .repeat(100 << 10 >> 4)
        .into_bytes()
}

#[test]
fn a_full_disk_fails_the_run_says_so_and_quarantines_nothing() {
    let mut h = Harness::with_page_size(10);
    let _fs = Tmpfs::mount(&h.local(), "2m");
    // ~4 MiB of files for a 2 MiB file system.
    for i in 0..40 {
        h.put(&format!("/big/f{i:02}.bin"), &big(i));
    }
    let mut full_messages = Vec::new();
    for args in [&["--no-export"][..], &[][..]] {
        let r = h.run(args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.all());
        // Full under a file ("the disk is full: writing ...") or under the state DB ("database or
        // disk is full"), with a hint either way.
        assert!(r.stderr.contains("disk is full"), "{args:?}: {}", r.all());
        assert!(r.stderr.contains("free space"), "a hint: {}", r.all());
        full_messages.push(r.stderr.clone());
        let s = h.status_json();
        assert_eq!(s["quarantined"].as_array().unwrap().len(), 0, "{s}");
        assert_eq!(s["bootstrapComplete"], false, "{s}");
        // What is on disk is right, byte for byte (no torn file).
        for (k, v) in read_tree(&h.local()) {
            assert_eq!(h.expected[&format!("/{k}")], v, "{k}");
        }
    }
    // Either way the message says which file system and what it has left (the state DB's hint too).
    let fs = format!("the file system mounted at {}", h.local().display());
    for m in &full_messages {
        eprintln!("full disk: {m}");
        assert!(
            m.contains(&fs) && m.contains("available of 2.0 MiB"),
            "which file system, and the space left: {m}"
        );
        if m.contains("database or disk is full") {
            assert!(
                m.contains("SQLite needs room to commit its transaction"),
                "what the state DB needed room for: {m}"
            );
        }
    }
}

/// With the state DB on another file system, the mirror's own disk is what fills: the message names
/// the mirrored file and how much it needed. (In the test above either may fill first.)
#[test]
fn a_full_mirror_disk_names_the_file_and_its_size() {
    let mut h = Harness::with_page_size(10);
    let _fs = Tmpfs::mount(&h.local(), "2m");
    for i in 0..40 {
        h.put(&format!("/big/f{i:02}.bin"), &big(i));
    }
    let db = h.tmp.path().join("elsewhere.db");
    let r = h.run(&["--state-db", db.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    // Every file has the same size, 81.2 KiB.
    let needs = format!(
        "it needs {}",
        mountd::sync::engine::human_bytes(big(0).len() as u64)
    );
    assert!(
        r.stderr.contains("the disk is full: writing")
            && r.stderr.contains("/big/f")
            && r.stderr.contains(&needs),
        "a full disk under a mirrored file names the file and its size: {}",
        r.all()
    );
    assert!(r.stderr.contains("free space"), "a hint: {}", r.all());
}

#[test]
fn a_full_disk_under_the_state_database_says_which_and_what_it_needed() {
    let mut h = Harness::with_page_size(200);
    // The mirror has room; the state DB's file system (160 KiB) does not hold 3,000 records.
    let dir = h.tmp.path().join("dbfs");
    let _fs = Tmpfs::mount(&dir, "160k");
    let db = dir.join("state.db");
    for i in 0..3000 {
        h.put(
            &format!("/many/d{:02}/a-rather-long-file-name-{i:05}.txt", i % 30),
            b"x",
        );
    }
    let mut c = h.cmd();
    c.arg("--state-db").arg(&db).arg("--no-export");
    let r = run_cmd(c);
    assert_eq!(r.code, 1, "{}", r.all());
    let hint = r
        .stderr
        .lines()
        .find(|l| l.starts_with("mountd: hint:"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "{}\n{hint}",
        r.stderr
            .lines()
            .find(|l| l.starts_with("mountd: error:"))
            .unwrap_or_default()
    );
    assert!(r.stderr.contains("database or disk is full"), "{}", r.all());
    assert!(
        hint.contains("the disk holding the state database is full")
            && hint.contains(&format!(
                "SQLite needs room to commit its transaction next to {}",
                db.display()
            ))
            && hint.contains(&format!("the file system mounted at {}", dir.display()))
            && hint.contains("available of 160.0 KiB")
            && hint.contains("free space there"),
        "the hint says which file system, what it needed room for and what is left: {}",
        r.all()
    );
}

#[test]
fn a_read_only_mirror_fails_the_run_naming_the_path() {
    let mut h = Harness::new();
    let fs = Tmpfs::mount(&h.local(), "8m");
    h.sample_tree(5);
    assert_eq!(h.run(&[]).code, 0);
    h.assert_mirror_exact();
    h.put("/docs/d0/new.txt", b"new\n");
    fs.remount("ro");
    // The state DB on the same file system: refused before anything starts, naming the path.
    let r = h.run(&[]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("Read-only file system")
            && r.stderr
                .contains(&h.local().join(".mountd").display().to_string()),
        "{}",
        r.all()
    );
    // The state DB elsewhere (writable): the run fails when it writes into the mirror, naming it.
    let db = h.tmp.path().join("db/state.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    fs.remount("rw");
    let mut c = h.cmd();
    c.arg("--state-db").arg(&db);
    h.remote.put("/docs/d0/new.txt", b"older\n");
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    h.remote.put("/docs/d0/new.txt", b"new\n");
    fs.remount("ro");
    let mut c = h.cmd();
    c.arg("--state-db").arg(&db);
    let r = run_cmd(c);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains(&format!("the file system holding {}/", h.local().display()))
            && r.stderr.contains("is read-only"),
        "the message names the path and says read-only: {}",
        r.all()
    );
    fs.remount("rw");
    let mut c = h.cmd();
    c.arg("--state-db").arg(&db);
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let (_, s) = {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mountd"))
            .args(["status", "--json", "--state-db"])
            .arg(&db)
            .output()
            .unwrap();
        (
            o.status,
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        )
    };
    assert_eq!(s["quarantined"].as_array().unwrap().len(), 0, "{s}");
}

/// Swaps a file into a directory (`/a/f` → `/a/f/x`) and back, each change applied once through the
/// events feed and once through a full listing (the feed refusing every cursor).
#[test]
fn file_directory_swaps_converge_through_events_and_through_listings() {
    for via_listing in [false, true] {
        let mut h = Harness::with_page_size(3);
        h.put("/a/f", b"a file\n");
        h.put("/a/g", b"g\n");
        h.put("/b/d/x", b"inside a directory\n");
        h.put("/b/d/y", b"also inside\n");
        assert_eq!(h.run(&[]).code, 0);
        if via_listing {
            let mut f = Faults::default();
            f.events_cursor_faults
                .insert("*".into(), ErrorFault::new(410, "cursor_expired"));
            h.set_faults(f);
        }
        // File → directory, and directory → file.
        h.delete("/a/f");
        h.put("/a/f/x", b"now a directory\n");
        h.delete("/b/d/x");
        h.delete("/b/d/y");
        h.put("/b/d", b"now a file\n");
        h.remote.reset_counts();
        let r = h.run(&[]);
        assert_eq!(r.code, 0, "listing={via_listing}: {}", r.all());
        h.assert_mirror_exact();
        // More tree requests than the count check's one.
        assert_eq!(h.remote.counts().tree > 1, via_listing);
        // And back again.
        h.delete("/a/f/x");
        h.put("/a/f", b"a file again\n");
        h.delete("/b/d");
        h.put("/b/d/z", b"a directory again\n");
        let r = h.run(&[]);
        assert_eq!(r.code, 0, "listing={via_listing}: {}", r.all());
        h.assert_mirror_exact();
        assert!(h.local().join("b/d").is_dir() && h.local().join("a/f").is_file());
    }
}

/// Remote changes between kills: updates, deletes, creates and file↔directory swaps.
fn churn(h: &mut Harness, rng: &mut rand::rngs::StdRng, n: usize) {
    for _ in 0..n {
        let keys: Vec<String> = h.expected.keys().cloned().collect();
        let pick = keys[rng.random_range(0..keys.len())].clone();
        match rng.random_range(0..6) {
            0 | 1 => {
                let v = format!("updated {}\n", rng.random::<u32>());
                h.put(&pick, v.as_bytes());
            }
            2 => {
                if keys.len() > 50 {
                    h.delete(&pick);
                }
            }
            3 => {
                let p = format!(
                    "/k{}/new{}.txt",
                    rng.random_range(0..4),
                    rng.random::<u16>()
                );
                if !h.expected.keys().any(|k| k.starts_with(&format!("{p}/"))) {
                    h.put(&p, b"created between kills\n");
                }
            }
            4 => {
                // File → directory.
                h.delete(&pick);
                h.put(&format!("{pick}/inside"), b"was a file\n");
            }
            _ => {
                // Directory → file (the directory of `pick`, when it is not top level).
                let dir = pick.rsplit_once('/').unwrap().0.to_string();
                if dir.matches('/').count() >= 2 {
                    let under: Vec<String> = keys
                        .iter()
                        .filter(|k| k.starts_with(&format!("{dir}/")))
                        .cloned()
                        .collect();
                    for k in under {
                        h.delete(&k);
                    }
                    h.put(&dir, b"was a directory\n");
                }
            }
        }
    }
}

#[test]
fn a_kill_9_loop_with_a_changing_remote_converges_exactly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b696c6c);
    let mut h = Harness::with_page_size(7);
    for i in 0..240 {
        h.put(
            &format!("/k{}/s{}/f{i:04}.txt", i % 4, i % 3),
            format!("v0 {i}\n").as_bytes(),
        );
    }
    h.set_faults(Faults {
        file_delay_ms: 4,
        ..Default::default()
    });
    let mut kills = 0;
    let mut rounds = 0;
    while kills < 12 {
        rounds += 1;
        assert!(rounds < 40, "fewer than 12 kills landed in 40 rounds");
        let seen = h.remote.counts();
        let requests = seen.tree + seen.file + seen.events + seen.export;
        // A random moment: after 1..60 more requests reach the remote (or the run ends first).
        let at = requests + rng.random_range(1..60);
        let mut child = KillOnDrop(h.spawn(&[
            "--no-export",
            "--read-concurrency",
            "4",
            "--tree-depth",
            "2",
        ]));
        let mut exited = None;
        wait_for(
            "the kill moment or the end",
            Duration::from_secs(60),
            || {
                if let Some(st) = child.0.try_wait().unwrap() {
                    exited = Some(st);
                    return true;
                }
                let c = h.remote.counts();
                c.tree + c.file + c.events + c.export >= at
            },
        );
        if exited.is_none() {
            child.0.kill().unwrap(); // SIGKILL
            child.0.wait().unwrap();
            kills += 1;
        }
        let n = rng.random_range(1..8);
        churn(&mut h, &mut rng, n);
    }
    h.set_faults(Faults::default());
    let r = h.run(&["--no-export", "--tree-depth", "2"]);
    assert_eq!(r.code, 0, "after {kills} kills: {}", r.all());
    h.assert_mirror_exact();
    assert_eq!(h.status_json()["quarantined"].as_array().unwrap().len(), 0);
}

/// File requests of `log` before the first events request that follows the first tree request: the
/// tree pull's fetches (the catch-up's, and the count check, come after).
fn tree_phase_fetches(log: &[LoggedRequest]) -> Vec<String> {
    let first_tree = log
        .iter()
        .position(|q| q.route == "tree")
        .expect("the run listed");
    let end = log[first_tree..]
        .iter()
        .position(|q| q.route == "events")
        .map_or(log.len(), |i| first_tree + i);
    log[..end]
        .iter()
        .filter(|q| q.route == "file")
        .filter_map(|q| q.path.clone())
        .collect()
}

#[test]
fn kill_9_loses_at_most_the_page_in_flight_even_when_hash_skip_cannot_hide_refetches() {
    const PAGE: usize = 20;
    let mut h = Harness::with_page_size(PAGE);
    for i in 0..300 {
        h.put(
            &format!("/d{}/f{i:04}.txt", i % 3),
            format!("v1 {i}\n").as_bytes(),
        );
    }
    h.set_faults(Faults {
        file_delay_ms: 5,
        ..Default::default()
    });
    let mut child = KillOnDrop(h.spawn(&["--no-export", "--read-concurrency", "4"]));
    wait_for("6 tree pages", Duration::from_secs(60), || {
        h.remote.counts().tree >= 6
    });
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let first: BTreeSet<String> = h.remote.counts().file_paths.keys().cloned().collect();
    assert!(first.len() < 300, "killed mid-run");
    // What the state DB committed at the kill.
    let recorded: BTreeSet<String> = {
        let st = h.state();
        h.expected
            .keys()
            .filter(|p| st.file(&p[1..]).unwrap().is_some())
            .cloned()
            .collect()
    };
    let ck = h.state().checkpoint().unwrap().expect("checkpoint");
    assert!(ck.pages_done >= 1, "{ck:?}");
    let lost: Vec<_> = first.difference(&recorded).collect();
    assert!(
        lost.len() <= PAGE,
        "a kill -9 loses at most the page in flight, lost {}: {lost:?}",
        lost.len()
    );
    // Every file changes, so a hash-skip cannot hide a refetch: any file the resumed tree pull lists
    // is fetched again.
    for i in 0..300 {
        h.put(
            &format!("/d{}/f{i:04}.txt", i % 3),
            format!("v2 {i}\n").as_bytes(),
        );
    }
    h.set_faults(Faults::default());
    h.remote.reset_counts();
    let r = h.run(&["--no-export", "--read-concurrency", "4"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let log = h.remote.requests();
    let resumed = tree_phase_fetches(&log);
    let relisted: Vec<_> = resumed.iter().filter(|p| recorded.contains(*p)).collect();
    assert!(
        relisted.is_empty(),
        "the resumed pull listed and fetched {} committed files again: {:?}",
        relisted.len(),
        &relisted[..relisted.len().min(10)]
    );
    assert_eq!(
        resumed.len(),
        300 - recorded.len(),
        "the resumed pull fetched exactly the files not yet committed"
    );
    // The committed files are brought up to date by the catch-up (events), once each.
    let mut per_path: BTreeMap<&str, u32> = BTreeMap::new();
    for q in log.iter().filter(|q| q.route == "file") {
        *per_path.entry(q.path.as_deref().unwrap()).or_default() += 1;
    }
    assert_eq!(per_path.len(), 300);
    assert!(per_path.values().all(|n| *n == 1), "each file fetched once");
}

#[test]
fn a_429_closes_the_gate_of_every_worker_until_retry_after() {
    let mut h = Harness::new();
    for i in 0..64 {
        h.put(&format!("/g/f{i:02}"), b"g");
    }
    // The first 4 file requests (4 of the 8 workers' first ones) answer 429 with Retry-After: 2.
    h.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "file".into(),
            count: 4,
            error: ErrorFault::new(429, "rate_limited").with_retry_after("2"),
        }],
        ..Default::default()
    });
    let r = h.run(&["--no-export", "--read-concurrency", "8"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let log = h.remote.requests();
    let throttled: Vec<&LoggedRequest> = log.iter().filter(|q| q.status == 429).collect();
    assert_eq!(throttled.len(), 4, "no 429 beyond the injected ones");
    let gate_from = throttled.iter().map(|q| q.done).min().unwrap();
    // Requests already on the wire when the first 429 went out may still land just after it.
    let grace = Duration::from_millis(150);
    let early: Vec<f64> = log
        .iter()
        .filter(|q| q.at > gate_from + grace && q.at < gate_from + Duration::from_secs(2) - grace)
        .map(|q| q.at.duration_since(gate_from).as_secs_f64())
        .collect();
    assert!(
        early.is_empty(),
        "{} request(s) reached the server before Retry-After elapsed (s after the 429): {early:?}",
        early.len()
    );
    let after = log.iter().filter(|q| q.at >= gate_from + grace).count();
    assert!(
        after >= 64 - 8,
        "the rest went out after the pause: {after}"
    );
    assert_eq!(h.remote.counts().file, 68);
}

#[test]
fn a_huge_retry_after_is_capped_by_max_retry_wait() {
    let mut h = Harness::new();
    h.sample_tree(10);
    h.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "file".into(),
            count: 2,
            error: ErrorFault::new(429, "rate_limited").with_retry_after("3600"),
        }],
        ..Default::default()
    });
    let start = Instant::now();
    let mut c = h.cmd();
    c.args(["--no-export", "--max-retry-wait", "1s"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(30), start);
    assert_eq!(
        r.code,
        0,
        "finished (not killed by the 30 s limit): {}",
        r.all()
    );
    assert!(
        r.elapsed < Duration::from_secs(15),
        "Retry-After 3600 capped to 1s: took {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed >= Duration::from_secs(1),
        "the capped wait happened"
    );
    h.assert_mirror_exact();
    assert_eq!(
        h.remote
            .requests()
            .iter()
            .filter(|q| q.status == 429)
            .count(),
        2
    );
}

#[test]
fn the_mass_deletion_guard_exits_6_and_deletes_nothing() {
    let mut h = Harness::with_page_size(50);
    for i in 0..100 {
        h.put(&format!("/m/f{i:03}.txt"), format!("{i}\n").as_bytes());
    }
    assert_eq!(h.run(&[]).code, 0);
    let before = read_tree(&h.local());
    assert_eq!(before.len(), 100);
    // The listing now holds 20 of the 100 files (a wrong --remote-path, a half-restored server...).
    for i in 20..100 {
        h.delete(&format!("/m/f{i:03}.txt"));
    }
    let r = h.run(&["--force-audit"]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(
        r.stderr.contains("refusing to delete 80 of 100")
            && r.stderr.contains("--allow-mass-delete"),
        "{}",
        r.all()
    );
    assert_eq!(read_tree(&h.local()), before, "nothing deleted on disk");
    // Allowed explicitly, the deletion happens.
    let r = h.run(&["--force-audit", "--allow-mass-delete"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
}

/// Every file under `dir`, recursively (`.mountd` included).
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn the_token_is_nowhere_state_db_wal_metrics_status_or_service_logs() {
    let mut h = Harness::new();
    h.sample_tree(10);
    let metrics = free_addr();
    // The service (plain directory, no FUSE), trace logs in JSON, the token from the environment.
    let mut c = h.service_cmd();
    c.args(["--no-fuse", "--log-format", "json", "--metrics-addr"])
        .arg(metrics.to_string())
        .env_remove("RELAYFILE_TOKEN_FILE")
        .env("RELAYFILE_TOKEN", TOKEN)
        .env("MOUNTD_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut svc = KillOnDrop(c.spawn().unwrap());
    let out = Lines::collect(svc.0.stdout.take().unwrap());
    let err = Lines::collect(svc.0.stderr.take().unwrap());
    wait_for("the bootstrap", Duration::from_secs(60), || h.is_complete());
    h.put("/after.txt", b"after\n");
    wait_for("a sync pass", Duration::from_secs(30), || {
        h.local().join("after.txt").exists()
    });
    let (code, body) = http_get(metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("mountd_"), "{body}");
    let status = {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mountd"))
            .args(["status", "--json", "--local-dir"])
            .arg(h.local())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let status_text = status_text_of(&h.local()).1;
    // kill -9 while the WAL still holds the latest transactions.
    svc.0.kill().unwrap();
    svc.0.wait().unwrap();
    let files = all_files(&h.local().join(".mountd"));
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("-wal")),
        "the WAL file is there to check: {names:?}"
    );
    let mut texts: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
        .collect();
    texts.push(("state file".into(), std::fs::read(h.state_file()).unwrap()));
    texts.push(("metrics".into(), body.into_bytes()));
    texts.push(("status --json".into(), status.into_bytes()));
    texts.push(("status".into(), status_text.into_bytes()));
    texts.push(("service stdout".into(), out.all().into_bytes()));
    texts.push(("service stderr".into(), err.all().into_bytes()));
    // A --once run at trace level, too.
    let mut c = h.cmd();
    c.env_remove("RELAYFILE_TOKEN_FILE")
        .env("RELAYFILE_TOKEN", TOKEN)
        .env("MOUNTD_LOG", "trace");
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    texts.push(("--once output".into(), r.all().into_bytes()));
    assert!(err.all().len() > 1000, "the service logged at trace level");
    let needle = TOKEN.as_bytes();
    for (what, bytes) in &texts {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the token is in {what}"
        );
    }
}

#[test]
fn a_server_that_restarted_empty_exits_6_naming_it_and_keeps_every_file() {
    let mut h = Harness::new();
    for i in 0..48 {
        h.put(&format!("/m/f{i:03}.txt"), format!("{i}\n").as_bytes());
    }
    for i in 0..5 {
        h.put(&format!("/m/f{i:03}.txt"), format!("v2 {i}\n").as_bytes());
    }
    assert_eq!(h.run(&[]).code, 0);
    let (_, status) = status_text_of(&h.local());
    assert!(
        status.contains("count check:   match: 48 files"),
        "{status}"
    );
    let before = read_tree(&h.local());
    // The server lost its state and restarted; 8 writes since.
    h.remote.reset_store();
    h.expected.clear();
    for i in 0..8 {
        h.put(&format!("/m/f{i:03}.txt"), format!("{i}\n").as_bytes());
    }
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(
        r.stderr
            .contains("the server's history restarted: cursor evt_53 unknown")
            && r.stderr
                .contains("it now has 8 files, the mirror 48; nothing deleted")
            && r.stderr.contains("--allow-mass-delete"),
        "{}",
        r.all()
    );
    let after = read_tree(&h.local());
    assert_eq!(after.len(), 48, "nothing deleted on disk");
    // Two-way mode (the default): nothing the server lost is pushed back either.
    assert_eq!(h.remote.counts().writes_applied, 0, "nothing pushed");
    assert_eq!(h.remote.file_count(), 8);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    let (_, status) = status_text_of(&h.local());
    assert!(
        status.contains("server reset:  the server's history restarted"),
        "{status}"
    );
    // The operator follows the server.
    let r = h.run(&["--allow-mass-delete"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert_eq!(h.remote.counts().writes_applied, 0, "nothing pushed");
    assert_eq!(h.remote.file_count(), 8);
}
