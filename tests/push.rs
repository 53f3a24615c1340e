//! Two-way sync in-process: local changes of the plain-directory mirror recorded by the start scan
//! (`record_local`), pushed (`flush`, as `--once` does), and what comes back through the feed; the
//! reference store behind the `Remote` trait, the fault injector and the retry layer, a real SQLite
//! file and a real mirror directory.
mod common;
use common::inproc::Rig;
use mountd::remote::fault::{Call, Fault, Op, Rule};
use mountd::store::db::{IssueKind, OpKind};
use mountd::sync::push::Direction;
use std::time::Duration;

/// Writes mountd applied to the remote at `path` (the store's own `put`s are not counted).
fn writes(r: &Rig, path: &str) -> u64 {
    r.ws.counts()
        .writes_per_path
        .get(path)
        .copied()
        .unwrap_or(0)
}

/// The write calls seen so far, in order, as (operation, path).
fn write_calls(r: &Rig) -> Vec<(Op, String)> {
    r.faults
        .calls()
        .into_iter()
        .filter(|c: &Call| matches!(c.op, Op::Put | Op::Bulk | Op::Delete))
        .map(|c| (c.op, c.path))
        .collect()
}

fn pushes(r: &Rig) -> u64 {
    r.faults.count(Op::Put) + r.faults.count(Op::Bulk) + r.faults.count(Op::Delete)
}

/// Files kept under `.mountd/conflicts` (relative to the mirror root).
fn conflict_copies(r: &Rig) -> Vec<String> {
    let dir = r.local().join(".mountd/conflicts");
    if !dir.exists() {
        return Vec::new();
    }
    common::read_tree(&dir).into_keys().collect()
}

/// The remote holds nothing of mountd's reserved directory.
fn assert_no_copy_on_remote(r: &Rig) {
    let leaked: Vec<String> =
        r.ws.files()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.contains(".mountd") || p.contains(".conflict-"))
            .collect();
    assert!(leaked.is_empty(), "conflict copies pushed: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_a_new_file_and_a_delete_each_reach_the_remote_once_and_come_back_for_free() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"one\n");
    r.put("/gone.txt", b"bye\n");
    r.put("/keep/k.txt", b"kept\n");
    r.attempt().await.unwrap();
    let base = r.ws.revision("/a.txt").unwrap();

    r.write_local("a.txt", b"one, edited locally\n");
    r.write_local("dir/new.txt", b"brand new\n");
    r.remove_local("gone.txt");
    let d = r.record().await;
    assert_eq!((d.puts, d.deletes), (2, 1), "{d:?}");
    let rows = r.state(|st| st.outbox()).await;
    let row = |p: &str| rows.iter().find(|o| o.path == p).unwrap().clone();
    assert_eq!(
        (row("a.txt").op, row("a.txt").base_revision),
        (OpKind::Put, Some(base.clone())),
        "an edit is made on the recorded revision"
    );
    assert_eq!(
        row("dir/new.txt").base_revision,
        None,
        "a new file: If-Match 0"
    );
    assert_eq!(row("gone.txt").op, OpKind::Delete);

    let p = r.flush().await.unwrap();
    assert_eq!((p.files, p.conflicts, p.failed), (3, 0, 0), "{p:?}");
    assert_eq!(r.remote_bytes("/a.txt").unwrap(), b"one, edited locally\n");
    assert_eq!(r.remote_bytes("/dir/new.txt").unwrap(), b"brand new\n");
    assert_eq!(r.remote_bytes("/gone.txt"), None);
    for path in ["/a.txt", "/dir/new.txt", "/gone.txt"] {
        assert_eq!(writes(&r, path), 1, "{path} written once");
    }
    assert_eq!(r.ws.counts().writes_applied, 3);
    assert_ne!(r.ws.revision("/a.txt").unwrap(), base);
    let rec = r.state(|st| st.file("a.txt")).await.unwrap();
    assert_eq!(
        rec.revision,
        r.ws.revision("/a.txt"),
        "the answer's revision is recorded"
    );
    let sum = r.state(|st| st.outbox_summary()).await;
    assert_eq!((sum.pending, sum.conflicts), (0, 0), "{sum:?}");

    // The feed brings mountd's own writes back: recognised, nothing downloaded, nothing pushed.
    let (files, pushed) = (r.faults.count(Op::File), pushes(&r));
    r.engine().sync_pass().await.unwrap();
    assert_eq!(
        r.faults.count(Op::File),
        files,
        "own writes cost no GET /fs/file"
    );
    assert!(r.state(|st| st.conflicts()).await.is_empty());
    r.assert_exact();
    let rec = r.state(|st| st.file("dir/new.txt")).await.unwrap();
    assert_eq!(rec.revision, r.ws.revision("/dir/new.txt"));
    // Nothing left to push: a second scan and push send nothing.
    let d = r.record().await;
    assert_eq!(d.changes(), 0, "{d:?}");
    r.flush().await.unwrap();
    assert_eq!(pushes(&r), pushed);
    assert_eq!(r.ws.counts().writes_applied, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_local_edit_supersedes_an_unpushed_one_and_goes_once_on_the_first_base() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    let base = r.ws.revision("/a.txt");
    r.write_local("a.txt", b"first local edit\n");
    assert_eq!(r.record().await.puts, 1);
    r.write_local("a.txt", b"second local edit, the one that counts\n");
    assert_eq!(r.record().await.puts, 1);
    let rows = r.state(|st| st.outbox()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].base_revision, base);
    r.faults.reset_counts();
    r.flush().await.unwrap();
    assert_eq!(write_calls(&r), vec![(Op::Put, "/a.txt".to_string())]);
    assert_eq!(writes(&r, "/a.txt"), 1);
    assert_eq!(
        r.remote_bytes("/a.txt").unwrap(),
        b"second local edit, the one that counts\n"
    );
    // Edited back to the recorded bytes before a push: nothing to send.
    r.write_local("b.txt", b"b, edited\n");
    r.record().await;
    r.write_local("b.txt", b"b\n");
    r.record().await;
    assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0);
    r.flush().await.unwrap();
    assert_eq!(writes(&r, "/b.txt"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_file_is_created_at_its_new_path_before_the_old_one_is_deleted() {
    let mut r = Rig::two_way(100);
    r.put("/a/x.txt", b"the content that moves\n");
    r.put("/other.txt", b"other\n");
    r.put("/third.txt", b"third\n");
    r.attempt().await.unwrap();
    std::fs::create_dir_all(r.local().join("b")).unwrap();
    std::fs::rename(r.local().join("a/x.txt"), r.local().join("b/y.txt")).unwrap();
    r.faults.reset_counts();
    r.push().await;
    assert_eq!(
        r.remote_bytes("/b/y.txt").unwrap(),
        b"the content that moves\n"
    );
    assert_eq!(r.remote_bytes("/a/x.txt"), None);
    assert_eq!(
        write_calls(&r),
        vec![
            (Op::Put, "/b/y.txt".to_string()),
            (Op::Delete, "/a/x.txt".to_string())
        ],
        "a create at the new path, then a delete at the old"
    );
    assert_eq!((writes(&r, "/b/y.txt"), writes(&r, "/a/x.txt")), (1, 1));
    r.engine().sync_pass().await.unwrap();
    assert_eq!(r.faults.count(Op::File), 0);
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_directory_moves_all_its_files() {
    let mut r = Rig::two_way(100);
    for i in 0..6 {
        r.put(
            &format!("/docs/sub/f{i}.txt"),
            format!("file {i}\n").as_bytes(),
        );
    }
    for i in 0..6 {
        r.put(&format!("/stay/s{i}.txt"), b"stays\n");
    }
    r.attempt().await.unwrap();
    std::fs::rename(r.local().join("docs"), r.local().join("archive")).unwrap();
    r.faults.reset_counts();
    let p = r.push().await;
    assert_eq!(
        (p.files, p.conflicts, p.held.as_deref()),
        (12, 0, None),
        "{p:?}"
    );
    for i in 0..6 {
        let (new, old) = (
            format!("/archive/sub/f{i}.txt"),
            format!("/docs/sub/f{i}.txt"),
        );
        assert_eq!(
            r.remote_bytes(&new).unwrap(),
            format!("file {i}\n").as_bytes()
        );
        assert_eq!(r.remote_bytes(&old), None);
        assert_eq!((writes(&r, &new), writes(&r, &old)), (1, 1), "{new}");
    }
    let calls = write_calls(&r);
    let last_create = calls.iter().rposition(|(op, _)| *op != Op::Delete).unwrap();
    let first_delete = calls.iter().position(|(op, _)| *op == Op::Delete).unwrap();
    assert!(
        last_create < first_delete,
        "every create precedes every delete: {calls:?}"
    );
    assert_eq!(r.faults.count(Op::Bulk), 1, "the six creates in one bulk");
    assert_eq!(r.faults.count(Op::Delete), 6);
    r.engine().sync_pass().await.unwrap();
    assert_eq!(r.faults.count(Op::File), 0);
    r.assert_exact();
}

fn kib_file(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("file {i:04} ").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_small_new_files_go_in_a_handful_of_bulk_requests() {
    let mut r = Rig::two_way(100);
    r.put("/seed.txt", b"seed\n");
    r.attempt().await.unwrap();
    for i in 0..200 {
        r.write_local(&format!("many/f{i:03}.txt"), &kib_file(i, 1024));
    }
    r.faults.reset_counts();
    let p = r.push().await;
    assert_eq!(p.files, 200, "{p:?}");
    assert!(
        r.faults.count(Op::Bulk) <= 2,
        "{} bulk requests",
        r.faults.count(Op::Bulk)
    );
    assert_eq!(r.faults.count(Op::Put), 0);
    for i in 0..200 {
        let path = format!("/many/f{i:03}.txt");
        assert_eq!(r.remote_bytes(&path).unwrap(), kib_file(i, 1024), "{path}");
        assert_eq!(writes(&r, &path), 1, "{path}");
    }
    assert_eq!(r.ws.counts().writes_applied, 200);
    r.engine().sync_pass().await.unwrap();
    assert_eq!(r.faults.count(Op::File), 0);
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_lowered_body_cap_batches_split_and_a_file_above_it_is_reported_not_retried() {
    let cap = 16 << 10;
    let mut r = Rig::two_way(100);
    r.cfg.push.max_body_bytes = cap;
    r.ws.set_max_body_bytes(cap);
    r.put("/seed.txt", b"seed\n");
    r.attempt().await.unwrap();
    for i in 0..60 {
        r.write_local(&format!("many/f{i:03}.txt"), &kib_file(i, 1024));
    }
    r.write_local("big.txt", &kib_file(999, 20 << 10));
    r.faults.reset_counts();
    let p = r.push().await;
    assert_eq!(p.files, 60, "{p:?}");
    assert!(
        r.faults.count(Op::Bulk) >= 4,
        "60 KiB within a 16 KiB cap: {} bulk requests",
        r.faults.count(Op::Bulk)
    );
    for i in 0..60 {
        let path = format!("/many/f{i:03}.txt");
        assert_eq!(r.remote_bytes(&path).unwrap(), kib_file(i, 1024), "{path}");
        assert_eq!(writes(&r, &path), 1, "{path}");
    }
    assert_eq!(r.remote_bytes("/big.txt"), None);
    let issues = r.state(|st| st.write_issues()).await;
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(
        (issues[0].path.as_str(), issues[0].kind),
        ("big.txt", IssueKind::TooLarge)
    );
    assert_eq!(r.state(|st| st.outbox_summary()).await.too_large, 1);
    assert_eq!(
        r.local_bytes("big.txt").unwrap(),
        kib_file(999, 20 << 10),
        "kept"
    );

    // Not tried again, neither by the next push nor after a new scan.
    let calls = r.faults.total();
    r.engine().push_pending().await.unwrap();
    r.push().await;
    assert_eq!(r.faults.total(), calls, "a too-large file is not retried");

    // Once it fits, it goes.
    r.write_local("big.txt", &kib_file(999, 2 << 10));
    let p = r.push().await;
    assert_eq!(p.files, 1, "{p:?}");
    assert_eq!(r.remote_bytes("/big.txt").unwrap(), kib_file(999, 2 << 10));
    assert!(r.state(|st| st.write_issues()).await.is_empty());
    r.engine().sync_pass().await.unwrap();
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_from_a_server_with_a_smaller_cap_splits_the_batch_until_everything_lands() {
    let mut r = Rig::two_way(100);
    r.ws.set_max_body_bytes(8 << 10);
    r.put("/seed.txt", b"seed\n");
    r.attempt().await.unwrap();
    for i in 0..30 {
        r.write_local(&format!("s/f{i:02}.txt"), &kib_file(i, 1024));
    }
    r.faults.reset_counts();
    let p = r.push().await;
    assert_eq!((p.files, p.failed), (30, 0), "{p:?}");
    assert!(r.faults.count(Op::Bulk) > 1);
    for i in 0..30 {
        let path = format!("/s/f{i:02}.txt");
        assert_eq!(r.remote_bytes(&path).unwrap(), kib_file(i, 1024), "{path}");
        assert_eq!(writes(&r, &path), 1, "{path}");
    }
    assert!(r.state(|st| st.write_issues()).await.is_empty());
}

/// What a conflict must leave: the remote version at the path and on the remote, the local bytes
/// byte-exact in a copy under `.mountd/conflicts/` with both revisions on record, nothing pending,
/// and the copy never pushed.
async fn assert_conflict_kept(r: &mut Rig, local: &[u8], remote: &[u8], base: &str) {
    assert_eq!(
        r.local_bytes("a.txt").unwrap(),
        remote,
        "the remote version takes the path"
    );
    assert_eq!(r.remote_bytes("/a.txt").unwrap(), remote);
    let cs = r.state(|st| st.conflicts()).await;
    assert_eq!(cs.len(), 1, "{cs:?}");
    let c = &cs[0];
    assert_eq!(c.path, "a.txt");
    assert!(c.copy.starts_with(".mountd/conflicts/"), "{}", c.copy);
    assert_eq!(
        std::fs::read(r.local().join(&c.copy)).unwrap(),
        local,
        "byte-exact copy"
    );
    assert_eq!(c.base_revision.as_deref(), Some(base));
    assert_eq!(c.remote_revision, r.ws.revision("/a.txt"));
    let sum = r.state(|st| st.outbox_summary()).await;
    assert_eq!((sum.pending, sum.conflicts), (0, 1), "{sum:?}");
    // Later scans and pushes leave the copy alone.
    let before = r.ws.counts().writes_applied;
    r.push().await;
    r.engine().sync_pass().await.unwrap();
    r.push().await;
    assert_eq!(r.ws.counts().writes_applied, before, "nothing pushed");
    assert_no_copy_on_remote(r);
    assert_eq!(r.state(|st| st.conflicts()).await.len(), 1);
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_both_sides_seen_by_the_pull_keeps_the_local_bytes_as_a_conflict_copy() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    let base = r.ws.revision("/a.txt").unwrap();
    let local = b"local edit, byte-exact \x00\xff\n".to_vec();
    r.write_local("a.txt", &local);
    r.record().await;
    r.put("/a.txt", b"the remote's edit\n");
    r.faults.reset_counts();
    r.engine().sync_pass().await.unwrap();
    let p = r.flush().await.unwrap();
    assert_eq!(p.files, 0, "{p:?}");
    assert_eq!(pushes(&r), 0, "nothing pushed over the remote's edit");
    assert_conflict_kept(&mut r, &local, b"the remote's edit\n", &base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_both_sides_met_by_the_push_409_keeps_the_local_bytes_as_a_conflict_copy() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    let base = r.ws.revision("/a.txt").unwrap();
    let local = b"local edit, pushed too late\n".to_vec();
    r.write_local("a.txt", &local);
    r.record().await;
    r.put("/a.txt", b"the remote's edit, first\n");
    r.faults.reset_counts();
    let p = r.flush().await.unwrap();
    assert_eq!((p.files, p.conflicts), (0, 1), "{p:?}");
    assert_eq!(r.faults.count(Op::Put), 1, "a 409 is not retried blindly");
    assert_eq!(writes(&r, "/a.txt"), 0);
    assert_conflict_kept(&mut r, &local, b"the remote's edit, first\n", &base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_answer_was_lost_is_recognised_not_written_twice_nor_a_conflict() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    // One file: a PUT, applied, its answer lost; the retry meets 409.
    r.write_local("a.txt", b"pushed once, answer lost\n");
    r.faults.add(Rule::new(Op::Put, Fault::LoseAnswer).times(1));
    let p = r.push().await;
    assert_eq!((p.files, p.conflicts, p.failed), (1, 0, 0), "{p:?}");
    assert_eq!(
        r.faults.count(Op::Put),
        2,
        "sent, then sent again by the retry layer"
    );
    assert_eq!(writes(&r, "/a.txt"), 1);
    assert_eq!(
        r.remote_bytes("/a.txt").unwrap(),
        b"pushed once, answer lost\n"
    );
    // Several files: a bulk, the same.
    r.write_local("n1.txt", b"new one\n");
    r.write_local("n2.txt", b"new two\n");
    r.faults
        .add(Rule::new(Op::Bulk, Fault::LoseAnswer).times(1));
    let p = r.push().await;
    assert_eq!((p.files, p.conflicts, p.failed), (2, 0, 0), "{p:?}");
    assert_eq!(r.faults.count(Op::Bulk), 2);
    assert_eq!((writes(&r, "/n1.txt"), writes(&r, "/n2.txt")), (1, 1));

    assert!(r.state(|st| st.conflicts()).await.is_empty());
    assert!(conflict_copies(&r).is_empty(), "{:?}", conflict_copies(&r));
    assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0);
    let rec = r.state(|st| st.file("a.txt")).await.unwrap();
    assert_eq!(rec.revision, r.ws.revision("/a.txt"));
    let files = r.faults.count(Op::File);
    r.engine().sync_pass().await.unwrap();
    assert_eq!(
        r.faults.count(Op::File),
        files,
        "the feed's echo costs nothing"
    );
    assert!(r.state(|st| st.conflicts()).await.is_empty());
    assert_eq!(r.ws.counts().writes_applied, 3);
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_right_after_a_lost_answer_pushes_the_change_once_after_the_restart() {
    // Restarted as the daemon does (scan, push) and as `--once` does (scan, pull, push).
    for pull_first in [false, true] {
        let mut r = Rig::two_way(100);
        r.put("/a.txt", b"base\n");
        r.put("/b.txt", b"b\n");
        r.attempt().await.unwrap();
        let bytes = b"applied, answer lost, then kill -9\n";
        r.write_local("a.txt", bytes);
        r.record().await;
        // The write is applied and its answer lost; the retry hangs: killed there.
        r.faults.add(Rule::new(Op::Put, Fault::LoseAnswer).times(1));
        r.faults.add(Rule::new(Op::Put, Fault::Hang).times(1));
        let flushed = r
            .until_hang(|e| async move { mountd::cli::once::flush(&e).await.is_ok() })
            .await;
        assert!(flushed.is_none(), "the push should hang: ok={flushed:?}");
        r.kill();
        assert_eq!(writes(&r, "/a.txt"), 1, "applied before the kill");
        r.faults.clear();

        r.record().await;
        if pull_first {
            r.attempt().await.unwrap();
        }
        r.flush().await.unwrap();
        assert_eq!(
            r.remote_bytes("/a.txt").unwrap(),
            bytes,
            "pull_first={pull_first}"
        );
        assert_eq!(writes(&r, "/a.txt"), 1, "pull_first={pull_first}: once");
        assert!(
            r.state(|st| st.conflicts()).await.is_empty(),
            "pull_first={pull_first}"
        );
        assert!(conflict_copies(&r).is_empty(), "pull_first={pull_first}");
        assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0);
        r.engine().sync_pass().await.unwrap();
        assert!(r.state(|st| st.conflicts()).await.is_empty());
        r.assert_exact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_recorded_before_a_kill_is_pushed_after_the_restart() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    r.write_local("a.txt", b"recorded, then killed\n");
    r.write_local("c.txt", b"new, recorded, then killed\n");
    assert_eq!(r.record().await.puts, 2);
    r.kill();
    // No new scan: the outbox alone carries the changes across the kill.
    let p = r.flush().await.unwrap();
    assert_eq!(p.files, 2, "{p:?}");
    assert_eq!(
        r.remote_bytes("/a.txt").unwrap(),
        b"recorded, then killed\n"
    );
    assert_eq!(
        r.remote_bytes("/c.txt").unwrap(),
        b"new, recorded, then killed\n"
    );
    assert_eq!((writes(&r, "/a.txt"), writes(&r, "/c.txt")), (1, 1));
    assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_delete_of_a_file_the_remote_changed_brings_the_remote_version_back() {
    // The remote's edit met by the push (409 on the delete) or by the pull first.
    for pull_first in [false, true] {
        let mut r = Rig::two_way(100);
        r.put("/a.txt", b"base\n");
        r.put("/b.txt", b"b\n");
        r.put("/c.txt", b"c\n");
        r.attempt().await.unwrap();
        r.remove_local("a.txt");
        assert_eq!(r.record().await.deletes, 1);
        r.put("/a.txt", b"edited on the remote\n");
        if pull_first {
            r.engine().sync_pass().await.unwrap();
        }
        r.flush().await.unwrap();
        let ctx = format!("pull_first={pull_first}");
        assert_eq!(
            r.local_bytes("a.txt").as_deref(),
            Some(&b"edited on the remote\n"[..]),
            "{ctx}"
        );
        assert_eq!(
            r.remote_bytes("/a.txt").unwrap(),
            b"edited on the remote\n",
            "{ctx}"
        );
        assert_eq!(writes(&r, "/a.txt"), 0, "{ctx}: no delete applied");
        assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0, "{ctx}");
        assert!(r.state(|st| st.conflicts()).await.is_empty(), "{ctx}");
        r.engine().sync_pass().await.unwrap();
        r.assert_exact();
        let rec = r.state(|st| st.file("a.txt")).await.unwrap();
        assert_eq!(rec.revision, r.ws.revision("/a.txt"), "{ctx}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_edit_of_a_file_the_remote_deleted_is_kept_and_pushed_as_a_new_file() {
    // The remote's delete met by the pull first, or by the push (404 on the edit's revision).
    for pull_first in [true, false] {
        let mut r = Rig::two_way(100);
        r.put("/a.txt", b"base\n");
        r.put("/b.txt", b"b\n");
        r.attempt().await.unwrap();
        let edit = b"edited locally, deleted remotely\n";
        r.write_local("a.txt", edit);
        r.record().await;
        r.delete("/a.txt");
        let ctx = format!("pull_first={pull_first}");
        if pull_first {
            r.engine().sync_pass().await.unwrap();
            assert_eq!(r.local_bytes("a.txt").unwrap(), edit, "{ctx}: not deleted");
            let row = r.state(|st| st.outgoing("a.txt")).await.unwrap();
            assert_eq!(
                (row.op, row.base_revision),
                (OpKind::Put, None),
                "{ctx}: pushed as a new file (If-Match 0)"
            );
        }
        r.flush().await.unwrap();
        assert_eq!(r.local_bytes("a.txt").unwrap(), edit, "{ctx}");
        assert_eq!(
            r.remote_bytes("/a.txt").as_deref(),
            Some(&edit[..]),
            "{ctx}"
        );
        assert_eq!(writes(&r, "/a.txt"), 1, "{ctx}");
        assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0, "{ctx}");
        assert!(r.state(|st| st.conflicts()).await.is_empty(), "{ctx}");
        r.engine().sync_pass().await.unwrap();
        assert_eq!(r.local_bytes("a.txt").unwrap(), edit, "{ctx}");
        r.assert_exact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_most_tracked_files_holds_every_delete_until_allowed() {
    let mut r = Rig::two_way(100);
    for i in 0..40 {
        r.put(&format!("/m/f{i:02}.txt"), format!("{i}\n").as_bytes());
    }
    r.attempt().await.unwrap();
    for i in 0..30 {
        r.remove_local(&format!("m/f{i:02}.txt"));
    }
    r.write_local("m/f39.txt", b"an edit still goes\n");
    r.faults.reset_counts();
    let p = r.push().await;
    assert!(p.held.is_some(), "{p:?}");
    assert_eq!(r.faults.count(Op::Delete), 0);
    assert_eq!(r.state(|st| st.outbox_summary()).await.held, 30);
    assert_eq!(r.ws.file_count(), 40, "every remote file is still there");
    assert_eq!(
        r.remote_bytes("/m/f39.txt").unwrap(),
        b"an edit still goes\n"
    );
    // Still held by the next push.
    r.flush().await.unwrap();
    assert_eq!(r.faults.count(Op::Delete), 0);

    r.kill();
    r.cfg.allow_mass_delete = true;
    let p = r.flush().await.unwrap();
    assert_eq!((p.files, p.held.as_deref()), (30, None), "{p:?}");
    assert_eq!(r.faults.count(Op::Delete), 30);
    assert_eq!(r.ws.file_count(), 10);
    let sum = r.state(|st| st.outbox_summary()).await;
    assert_eq!((sum.pending, sum.held), (0, 0), "{sum:?}");
    r.engine().sync_pass().await.unwrap();
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_marks_one_path_write_denied_kept_locally_and_not_retried() {
    let mut r = Rig::two_way(100);
    // Each file needs its own request (a PUT), so a fault can refuse one path.
    r.cfg.push.max_body_bytes = 1200;
    r.put("/seed.txt", b"seed\n");
    r.attempt().await.unwrap();
    for (i, name) in ["ok1.txt", "denied.txt", "ok2.txt"].iter().enumerate() {
        r.write_local(name, &kib_file(i, 600));
    }
    r.faults.add(
        Rule::new(
            Op::Put,
            Fault::Status {
                status: 403,
                code: "forbidden".into(),
            },
        )
        .path("/denied.txt"),
    );
    r.push().await;
    assert_eq!(r.faults.count(Op::Bulk), 0, "one PUT per file");
    for ok in ["/ok1.txt", "/ok2.txt"] {
        assert_eq!(writes(&r, ok), 1, "{ok}");
    }
    assert_eq!(r.remote_bytes("/denied.txt"), None);
    assert_eq!(
        r.faults.count_path(Op::Put, "/denied.txt"),
        1,
        "a 403 is not retried"
    );
    let issues = r.state(|st| st.write_issues()).await;
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(
        (issues[0].path.as_str(), issues[0].kind),
        ("denied.txt", IssueKind::Denied)
    );
    assert_eq!(r.state(|st| st.outbox_summary()).await.denied, 1);

    // Not retried by the next push, nor after another local edit, nor dropped by a pull.
    let pushed = pushes(&r);
    r.flush().await.unwrap();
    r.write_local("denied.txt", b"edited again, still denied\n");
    r.push().await;
    r.engine().sync_pass().await.unwrap();
    r.flush().await.unwrap();
    assert_eq!(
        r.faults.count_path(Op::Put, "/denied.txt"),
        1,
        "not retried under the same token"
    );
    assert_eq!(pushes(&r), pushed, "no write call at all");
    assert_eq!(
        r.local_bytes("denied.txt").unwrap(),
        b"edited again, still denied\n",
        "kept locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_storm_refusal_holds_deletes_without_failing_the_edits() {
    let mut r = Rig::two_way(100);
    for name in ["/a.txt", "/b.txt", "/c.txt", "/d.txt"] {
        r.put(name, b"x\n");
    }
    r.attempt().await.unwrap();
    r.faults.add(Rule::new(
        Op::Delete,
        Fault::throttle("delete_storm_rejected", Some(Duration::from_secs(60))),
    ));
    r.write_local("a.txt", b"edited while deletes are refused\n");
    r.remove_local("b.txt");
    let p = r.push().await;
    assert_eq!((p.files, p.failed), (1, 0), "{p:?}");
    assert_eq!(
        r.remote_bytes("/a.txt").unwrap(),
        b"edited while deletes are refused\n"
    );
    assert_eq!(r.faults.count(Op::Delete), 1, "refused once, not hammered");
    assert!(r.remote_bytes("/b.txt").is_some());
    let row = r.state(|st| st.outgoing("b.txt")).await.unwrap();
    assert_eq!(row.op, OpKind::Delete, "the delete waits");
    // Its Retry-After (60 s) has not passed: the next push sends no delete.
    r.write_local("c.txt", b"another edit\n");
    let p = r.push().await;
    assert_eq!(p.files, 1, "{p:?}");
    assert_eq!(r.faults.count(Op::Delete), 1);
    assert!(r.remote_bytes("/b.txt").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_a_fifo_and_a_second_hard_link_are_noted_unsupported_and_never_pushed() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"a\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    let l = r.local();
    std::os::unix::fs::symlink("a.txt", l.join("link")).unwrap();
    let fifo = std::ffi::CString::new(l.join("pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    r.write_local("h1.txt", b"hard-linked\n");
    std::fs::hard_link(l.join("h1.txt"), l.join("h2.txt")).unwrap();
    r.faults.reset_counts();
    let d = r.record().await;
    assert_eq!((d.puts, d.unsupported), (1, 3), "{d:?}");
    r.flush().await.unwrap();
    let issues = r.state(|st| st.write_issues()).await;
    assert!(
        issues.iter().all(|i| i.kind == IssueKind::Unsupported),
        "{issues:?}"
    );
    let noted: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert!(
        noted.contains(&"link") && noted.contains(&"pipe"),
        "{noted:?}"
    );
    assert_eq!(noted.len(), 3, "{noted:?}");
    let linked = [r.remote_bytes("/h1.txt"), r.remote_bytes("/h2.txt")];
    assert_eq!(
        linked.iter().filter(|b| b.is_some()).count(),
        1,
        "only the first link is pushed"
    );
    assert!(noted.contains(&"h1.txt") != noted.contains(&"h2.txt"));
    assert_eq!(r.remote_bytes("/link"), None);
    assert_eq!(r.remote_bytes("/pipe"), None);
    assert_eq!(r.ws.counts().writes_applied, 1);
    // Reported once; never pushed by later rounds.
    let calls = pushes(&r);
    let d = r.record().await;
    assert_eq!(d, Default::default());
    r.flush().await.unwrap();
    assert_eq!(pushes(&r), calls);
    assert_eq!(r.state(|st| st.outbox_summary()).await.unsupported, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_only_keeps_a_replaced_local_edit_as_a_conflict_copy_and_pushes_nothing() {
    let mut r = Rig::new(100);
    assert_eq!(r.cfg.push.direction, Direction::PullOnly);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    // The remote updates a file edited locally.
    r.write_local("a.txt", b"local edit in pull-only\n");
    r.write_local("mine.txt", b"a new local file\n");
    assert_eq!(r.record().await, Default::default(), "nothing recorded");
    r.put("/a.txt", b"remote update\n");
    r.engine().sync_pass().await.unwrap();
    assert_eq!(r.local_bytes("a.txt").unwrap(), b"remote update\n");
    let cs = r.state(|st| st.conflicts()).await;
    assert_eq!(cs.len(), 1, "{cs:?}");
    assert_eq!(
        std::fs::read(r.local().join(&cs[0].copy)).unwrap(),
        b"local edit in pull-only\n"
    );
    assert!(cs[0].copy.starts_with(".mountd/conflicts/"));
    // A local edit of an unchanged remote file is reverted by the audit, its bytes kept.
    r.write_local("b.txt", b"local edit of b, reverted\n");
    r.engine().audit().await.unwrap();
    assert_eq!(r.local_bytes("b.txt").unwrap(), b"b\n");
    let cs = r.state(|st| st.conflicts()).await;
    assert_eq!(cs.len(), 2, "{cs:?}");
    let c = cs.iter().find(|c| c.path == "b.txt").unwrap();
    assert_eq!(
        std::fs::read(r.local().join(&c.copy)).unwrap(),
        b"local edit of b, reverted\n"
    );
    r.flush().await.unwrap();
    r.engine().push_pending().await.unwrap();
    assert_eq!(pushes(&r), 0, "pull-only pushes nothing");
    assert_eq!(r.ws.counts().writes_applied, 0);
    assert_eq!(r.remote_bytes("/mine.txt"), None);
    assert_eq!(r.remote_bytes("/a.txt").unwrap(), b"remote update\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_mirror_mode_the_audit_keeps_a_local_edit_and_the_next_push_sends_it() {
    let mut r = Rig::two_way(100);
    r.put("/a.txt", b"base\n");
    r.put("/b.txt", b"b\n");
    r.attempt().await.unwrap();
    let base = r.ws.revision("/a.txt");
    // Not scanned yet: the audit itself must notice the edit.
    r.write_local("a.txt", b"local edit the audit must keep\n");
    r.engine().audit().await.unwrap();
    assert_eq!(
        r.local_bytes("a.txt").unwrap(),
        b"local edit the audit must keep\n",
        "not reverted"
    );
    assert!(r.state(|st| st.conflicts()).await.is_empty());
    let row = r.state(|st| st.outgoing("a.txt")).await.unwrap();
    assert_eq!((row.op, row.base_revision), (OpKind::Put, base));
    let p = r.flush().await.unwrap();
    assert_eq!(p.files, 1, "{p:?}");
    assert_eq!(
        r.remote_bytes("/a.txt").unwrap(),
        b"local edit the audit must keep\n"
    );
    assert_eq!(writes(&r, "/a.txt"), 1);
    r.engine().sync_pass().await.unwrap();
    r.assert_exact();
}
