//! "Complete" is checked against the server, not assumed (in-process, over the reference store): a
//! feed with gaps (events the reference server hides) and a server that lost its state and restarted
//! (its store reset: event ids and revisions counting from 1 again). What a user checks: the bytes
//! in the mirror, the run's outcome and its exit code, and the requests the server saw.
mod common;
use common::inproc::Rig;
use mountd::cli::exit;
use mountd::remote::fault::{Fault, Op, Rule};
use mountd::store::db::MetaKey;
use mountd::sync::count_check::{CountCheck, Verdict};
use mountd::sync::engine::SyncError;
use mountd_remote::HideEvents;

/// A complete mirror of `n` files in two directories (tree pull, so no export in the counts).
async fn synced(n: usize) -> Rig {
    let mut r = Rig::new(100);
    r.cfg.use_export = false;
    for i in 0..n {
        r.put(
            &format!("/d{}/f{i:03}.txt", i % 2),
            format!("file {i}\n").as_bytes(),
        );
    }
    r.attempt().await.unwrap();
    r.assert_exact();
    r
}

/// Events of `paths` appended from now on never appear in the feed.
fn hide(r: &Rig, paths: &[&str]) {
    r.ws.hide_events(HideEvents {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        next: 0,
    });
}

async fn last_check(r: &mut Rig) -> CountCheck {
    let json = r.state(|st| st.meta(MetaKey::CountCheck)).await;
    CountCheck::parse(&json.expect("a count check was recorded")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_feed_never_showed_is_found_by_the_count_and_fetched() {
    let mut r = synced(10).await;
    hide(&r, &["/d0/new.txt"]);
    r.put("/d0/new.txt", b"created behind the feed's back\n");
    r.faults.reset_counts();
    assert_eq!(r.attempt().await.unwrap(), "catch-up");
    r.assert_exact();
    // The check (mismatch), the listing (one page: depth 10 reaches every file), the recheck.
    assert_eq!(r.faults.count(Op::Tree), 3);
    assert_eq!(r.faults.count(Op::File), 1, "only the new file is fetched");
    let c = last_check(&mut r).await;
    assert_eq!(
        (c.verdict, c.server, c.mirror),
        (Verdict::Match, Some(11), 11)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_feed_never_showed_is_found_by_the_count_and_applied() {
    let mut r = synced(10).await;
    hide(&r, &["/d1/f003.txt"]);
    r.delete("/d1/f003.txt");
    r.faults.reset_counts();
    r.attempt().await.unwrap();
    r.assert_exact();
    assert!(!r.local().join("d1/f003.txt").exists());
    assert_eq!(r.faults.count(Op::File), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_count_costs_one_request_and_no_listing() {
    let mut r = synced(10).await;
    r.put("/d0/seen.txt", b"in the feed\n");
    r.faults.reset_counts();
    r.attempt().await.unwrap();
    r.assert_exact();
    assert_eq!(r.faults.count(Op::Tree), 1);
    assert_eq!(r.faults.count_path(Op::Tree, "/"), 1);
}

/// A lost update changes no count: the check cannot see it. The periodic audit (`--audit-interval`,
/// here forced as the service does when it is due) is what heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_update_is_invisible_to_the_count_and_healed_by_the_audit() {
    let mut r = synced(10).await;
    hide(&r, &["/d0/f000.txt"]);
    r.put("/d0/f000.txt", b"updated behind the feed's back\n");
    r.faults.reset_counts();
    r.attempt().await.unwrap();
    assert_eq!(
        std::fs::read(r.local().join("d0/f000.txt")).unwrap(),
        b"file 0\n",
        "no count can see an update"
    );
    assert_eq!(r.faults.count(Op::Tree), 1, "the check only");
    // The periodic audit.
    r.kill();
    r.cfg.force_audit = true;
    r.attempt().await.unwrap();
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_total_files_is_not_checked() {
    let mut r = synced(10).await;
    hide(&r, &["/d0/new.txt"]);
    r.put("/d0/new.txt", b"x");
    r.faults.add(Rule::new(Op::Tree, Fault::NoTotal));
    r.faults.reset_counts();
    r.attempt().await.unwrap();
    assert_eq!(r.faults.count(Op::Tree), 1);
    assert!(!r.local().join("d0/new.txt").exists());
    assert_eq!(last_check(&mut r).await.verdict, Verdict::Unsupported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_listed_makes_the_check_inconclusive_not_a_loop() {
    let mut r = synced(10).await;
    // d1 cannot be listed; the root's own listing still shows its files.
    r.cfg.tree_depth = 1;
    r.kill();
    r.faults
        .add(Rule::new(Op::Tree, Fault::status(403)).path("/d1"));
    hide(&r, &["/d1/more.txt"]);
    r.put(
        "/d1/more.txt",
        b"behind the refused listing, and the feed's\n",
    );
    r.cfg.force_audit = true;
    r.attempt().await.unwrap();
    r.cfg.force_audit = false;
    r.kill();
    r.faults.reset_counts();
    r.attempt().await.unwrap();
    // The unlisted directory is tried again, then one check: no listing of the root.
    assert_eq!(r.faults.count_path(Op::Tree, "/"), 1);
    assert_eq!(last_check(&mut r).await.verdict, Verdict::Inconclusive);
}

/// The case: a server with in-memory storage restarted. Its ids start again from 1, the
/// stored cursor is unknown to it, its feed replays a short history.
async fn reset_server() -> Rig {
    let mut r = synced(48).await;
    for i in 0..5 {
        r.put(
            &format!("/d{}/f{i:03}.txt", i % 2),
            format!("v2 {i}\n").as_bytes(),
        );
    }
    r.attempt().await.unwrap();
    let cursor = r.state(|st| st.events_cursor()).await.unwrap();
    assert_eq!(cursor, "evt_53");
    r.ws.reset_store();
    for i in 0..8 {
        r.put(
            &format!("/d{}/f{i:03}.txt", i % 2),
            format!("file {i}\n").as_bytes(),
        );
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_server_is_named_and_nothing_is_deleted_until_the_operator_says_so() {
    let mut r = reset_server().await;
    let before = r.actual();
    assert_eq!(before.len(), 48);
    let err = r.attempt().await.unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::ServerRewound {
                server: 8,
                mirror: 48,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    for want in [
        "the server's history restarted",
        "cursor evt_53 unknown",
        "it now has 8 files, the mirror 48",
        "nothing deleted",
        "--allow-mass-delete",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    assert_eq!(exit::code_for(&err), exit::MASS_DELETE);
    // Every local file kept; the server's 8 hold what it has (some were updated locally to v2).
    assert_eq!(r.actual().len(), 48);
    for (p, b) in r.expected() {
        assert_eq!(r.actual()[&p], b, "{p}");
    }
    // Said again on the next run, and still nothing deleted.
    r.kill();
    let again = r.attempt().await.unwrap_err();
    assert!(matches!(again, SyncError::ServerRewound { .. }), "{again}");
    assert_eq!(r.actual().len(), 48);
    // The operator follows the server: exact, and the feed is used from the new history on.
    r.kill();
    r.cfg.allow_mass_delete = true;
    r.attempt().await.unwrap();
    r.assert_exact();
    r.kill();
    r.cfg.allow_mass_delete = false;
    r.put("/d0/after.txt", b"after the reset\n");
    r.faults.reset_counts();
    assert_eq!(r.attempt().await.unwrap(), "catch-up");
    r.assert_exact();
    assert_eq!(
        r.faults.count(Op::Tree),
        1,
        "the check only: the feed is trusted again"
    );
    assert_eq!(
        r.state(|st| st.meta(MetaKey::ServerRewound))
            .await
            .as_deref(),
        Some("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_server_with_a_long_new_history_is_caught_by_its_count() {
    let mut r = reset_server().await;
    // 60 writes: the stored cursor (evt_53) is known again, the feed no longer replays.
    for i in 0..60 {
        r.put("/d0/busy.txt", format!("{i}").as_bytes());
    }
    let err = r.attempt().await.unwrap_err();
    assert!(matches!(err, SyncError::ServerRewound { .. }), "{err}");
    assert_eq!(exit::code_for(&err), exit::MASS_DELETE);
    assert!(r.actual().len() >= 48);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_reset_server_is_held_too() {
    let mut r = synced(6).await;
    r.put("/d0/f000.txt", b"v2\n");
    r.attempt().await.unwrap();
    r.ws.reset_store();
    r.put("/d0/f000.txt", b"v2\n");
    r.put("/d1/f001.txt", b"file 1\n");
    let err = r.attempt().await.unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::ServerRewound {
                server: 2,
                mirror: 6,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(r.actual().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_whose_revisions_went_back_is_named_rewound() {
    let mut r = synced(4).await;
    // Many writes to one file: its revision climbs well past what a restored server has.
    for i in 0..30 {
        r.put("/d0/f000.txt", format!("v{i}\n").as_bytes());
    }
    r.attempt().await.unwrap();
    let files = r.ws.files();
    r.ws.reset_store();
    // Restored from an older backup minus one file, then a long new history (the cursor is known).
    for (p, b) in files.iter().filter(|(p, _)| p != "/d1/f003.txt") {
        r.put(p, b);
    }
    for i in 0..40 {
        r.put("/z/noise.txt", format!("{i}").as_bytes());
    }
    r.delete("/z/noise.txt");
    let err = r.attempt().await.unwrap_err();
    match &err {
        SyncError::ServerRewound { cause, .. } => {
            assert!(cause.contains("went back"), "{cause}")
        }
        e => panic!("{e}"),
    }
    assert!(r.local().join("d1/f003.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_mirror_mode_a_reset_server_loses_nothing_and_gets_nothing_pushed_back() {
    let mut r = reset_server().await;
    r.kill();
    r.cfg.push.direction = mountd::sync::push::Direction::Mirror;
    let e = r.engine();
    // A `--once` in mirror mode: local changes recorded, pull, push.
    e.record_local(vec![String::new()]).await.unwrap();
    let err = r.attempt().await.unwrap_err();
    assert!(matches!(err, SyncError::ServerRewound { .. }), "{err}");
    mountd::cli::once::flush(&e).await.unwrap();
    assert_eq!(r.actual().len(), 48, "every local file kept");
    let writes = r.faults.count(Op::Put) + r.faults.count(Op::Bulk) + r.faults.count(Op::Delete);
    assert_eq!(writes, 0, "nothing the reset server lost is pushed back");
    assert_eq!(r.ws.file_count(), 8);
    assert_eq!(r.state(|st| st.outbox_summary()).await.pending, 0);
    // The operator follows the server: the mirror becomes exactly its 8 files, still nothing pushed.
    r.kill();
    r.cfg.allow_mass_delete = true;
    let e = r.engine();
    e.record_local(vec![String::new()]).await.unwrap();
    r.attempt().await.unwrap();
    mountd::cli::once::flush(&e).await.unwrap();
    r.assert_exact();
    assert_eq!(r.ws.file_count(), 8);
    let writes = r.faults.count(Op::Put) + r.faults.count(Op::Bulk) + r.faults.count(Op::Delete);
    assert_eq!(writes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_directory_makes_the_check_inconclusive_not_a_listing_loop() {
    let mut r = Rig::new(100);
    r.cfg.use_export = false;
    r.cfg.tree_depth = 1;
    r.put("/ok.txt", b"ok\n");
    // Two files below a directory whose name cannot be mirrored: listed one level at a time, the
    // directory is met at the depth limit and what it holds is never listed.
    r.put("/h/../a.txt", b"a\n");
    r.put("/h/../b.txt", b"b\n");
    r.attempt().await.unwrap();
    let q = r.state(|st| st.quarantined()).await;
    assert!(
        q.iter()
            .any(|q| q.class == mountd::sync::engine::HOSTILE_DIR),
        "the hostile directory is reported: {q:?}"
    );
    assert_eq!(last_check(&mut r).await.verdict, Verdict::Inconclusive);
    // The next run checks once and lists nothing again.
    r.faults.reset_counts();
    r.attempt().await.unwrap();
    assert_eq!(r.faults.count(Op::Tree), 1, "the check only");
    assert_eq!(r.actual().keys().collect::<Vec<_>>(), vec!["ok.txt"]);
}
