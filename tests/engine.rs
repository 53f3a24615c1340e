//! Engine behaviour in-process (no process, no socket): the reference store behind the `Remote`
//! trait, the fault injector, a real SQLite file and a real mirror directory. Bootstrap paths, the
//! export's fall-through rules, resume after a kill, incremental sync, quarantine and the stall guard.
mod common;
use common::inproc::Rig;
use mountd::remote::fault::{Fault, Op, Rule};
use mountd::store::db::MetaKey;
use mountd::sync::engine::SyncError;
use mountd_remote::HideEvents;
use std::time::Duration;

fn sample(r: &Rig, n: usize) {
    r.put("/README.md", b"# hi\n");
    r.put("/empty", b"");
    r.ws.put_base64(
        "/bin/blob",
        &(0..=255u8).cycle().take(5000).collect::<Vec<_>>(),
    );
    r.put("/deep/a/b/c/d/e/f/g/h/i/j/k/leaf.txt", b"deep\n");
    r.put("/ünï/日本語 file.txt", "こんにちは".as_bytes());
    for i in 0..n {
        r.put(
            &format!("/docs/d{}/f{i:04}.txt", i % 5),
            format!("file {i}\n").as_bytes(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_bootstrap_is_exact_with_one_request() {
    let mut r = Rig::new(1000);
    sample(&r, 200);
    assert_eq!(r.attempt().await.unwrap(), "export");
    r.assert_exact();
    assert_eq!(r.faults.count(Op::Export), 1);
    assert_eq!(r.faults.count(Op::File), 0);
    // One metadata request: the count check before "complete" (a depth-1 page of the root).
    assert_eq!(r.faults.count(Op::Tree), 1);
    assert!(r.state(|st| st.is_complete()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_bootstrap_is_exact_and_deep_directories_are_queued() {
    let mut r = Rig::new(7);
    r.cfg.use_export = false;
    r.cfg.tree_depth = 2;
    sample(&r, 60);
    assert_eq!(r.attempt().await.unwrap(), "tree");
    r.assert_exact();
    assert_eq!(r.faults.count(Op::Export), 0);
    assert!(
        r.faults.count_path(Op::Tree, "/deep/a") >= 1,
        "deep directory listed on its own"
    );
    assert!(r.state(|st| st.checkpoint()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fall_through_class_completes_via_the_tree_in_the_same_run() {
    let faults = [
        Fault::Hang,
        Fault::throttle("workspace_busy", None),
        Fault::status(404),
        Fault::status(413),
        Fault::status(400),
        Fault::ExportTruncate(3000),
        Fault::ExportReset(3000),
        Fault::ExportHangAfter(3000),
    ];
    for f in faults {
        let mut r = Rig::new(50);
        r.cfg.export_timeout = Duration::from_millis(300);
        sample(&r, 80);
        r.faults.add(Rule::new(Op::Export, f.clone()));
        assert_eq!(r.attempt().await.unwrap(), "tree", "{f:?}");
        r.assert_exact();
        assert!(r.faults.count(Op::Tree) >= 1, "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_5xx_and_transport_errors_on_the_export_fail_visibly_and_advance_nothing() {
    for f in [
        Fault::throttle("rate_limited", None),
        Fault::throttle("queue_full", None),
        Fault::status(500),
        Fault::status(503),
        Fault::Transport,
    ] {
        let mut r = Rig::new(50);
        sample(&r, 10);
        r.faults.add(Rule::new(Op::Export, f.clone()));
        let err = r.attempt().await.unwrap_err();
        assert!(matches!(err, SyncError::Remote(_)), "{f:?}: {err}");
        assert_eq!(r.faults.count(Op::Export), 4, "{f:?}: 1 + 3 retries");
        assert_eq!(r.faults.count(Op::Tree), 0, "{f:?}: no fall-through");
        assert!(!r.state(|st| st.is_complete()).await);
        assert_eq!(r.state(|st| st.events_cursor()).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_shrunk_export_never_completes_a_populated_mirror() {
    let mut r = Rig::new(50);
    sample(&r, 100);
    r.cfg.use_export = false;
    r.attempt().await.unwrap();
    // The state is lost but the files stay: the export must not be trusted when it returns nothing.
    r.kill();
    std::fs::remove_file(r.db_path()).unwrap();
    r.cfg.use_export = true;
    r.faults
        .add(Rule::new(Op::Export, Fault::ExportTruncate(1)).times(0));
    // A 200 with `[]` (the export of an empty subtree stands in for the host's broken code path).
    let empty_root = "/nothing-here";
    let _ = empty_root;
    r.faults.reset_counts();
    assert_eq!(r.attempt().await.unwrap(), "export");
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tree_pull_resumes_from_its_checkpoint_without_refetching() {
    let mut r = Rig::new(20);
    r.cfg.use_export = false;
    r.cfg.concurrency = 2;
    for i in 0..200 {
        r.put(&format!("/d{}/f{i:03}", i % 3), format!("{i}").as_bytes());
    }
    // Hang after a few pages' worth of calls, and drop everything in memory (kill -9).
    r.faults.hang_at_call(90);
    assert!(
        r.attempt_until_hang().await.is_none(),
        "the attempt hung and was dropped"
    );
    r.kill();
    let first: std::collections::BTreeMap<String, u64> =
        r.faults.calls().iter().filter(|c| c.op == Op::File).fold(
            Default::default(),
            |mut m, c| {
                *m.entry(c.path.clone()).or_default() += 1;
                m
            },
        );
    let ck = r
        .state(|st| st.checkpoint())
        .await
        .expect("checkpoint persisted");
    assert!(ck.pages_done >= 1, "{ck:?}");
    r.faults.clear();
    r.faults.reset_counts();
    assert_eq!(r.attempt().await.unwrap(), "tree");
    r.assert_exact();
    let refetched = r
        .faults
        .calls()
        .iter()
        .filter(|c| c.op == Op::File && first.contains_key(&c.path))
        .count();
    assert!(
        refetched <= 20,
        "at most one page fetched twice, got {refetched}"
    );
}

/// What a run killed right after it replaced the directory `b/a` by the remote's file `b/a` leaves:
/// the file on disk and its pending write, while the records (and the cursor) still say `b/a` is a
/// directory holding `b/a/f0`.
async fn killed_after_replacing_a_directory_by_a_file(r: &mut Rig) {
    r.put("/b/a/f0", b"in the directory");
    r.put("/b/keep", b"stays");
    r.attempt().await.unwrap();
    r.delete("/b/a/f0");
    r.put("/b/a", b"the file that replaced it");
    let e = r.engine();
    e.intend(vec!["b/a".into()]).await.unwrap();
    std::fs::remove_file(r.local().join("b/a/f0")).unwrap();
    std::fs::remove_dir(r.local().join("b/a")).unwrap();
    std::fs::write(r.local().join("b/a"), b"the file that replaced it").unwrap();
    r.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_removes_the_file_a_killed_run_wrote_over_a_recorded_directory() {
    let mut r = Rig::new(100);
    killed_after_replacing_a_directory_by_a_file(&mut r).await;
    // The remote deletes the file before the next run: the file is mountd's own (pending), not a
    // local file to keep.
    r.delete("/b/a");
    assert_eq!(r.attempt().await.unwrap(), "catch-up");
    r.assert_exact();
    assert!(r.state(|st| st.pending()).await.is_empty());
    assert!(r.state(|st| st.conflicts()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_removes_the_file_a_killed_run_wrote_over_a_directory_the_remote_no_longer_has() {
    let mut r = Rig::new(100);
    killed_after_replacing_a_directory_by_a_file(&mut r).await;
    // The feed never says the file went: only the audit's listing does.
    r.ws.hide_events(HideEvents {
        next: u64::MAX,
        ..Default::default()
    });
    r.delete("/b/a");
    r.ws.hide_events(HideEvents::default());
    r.cfg.force_audit = true;
    r.attempt().await.unwrap();
    r.assert_exact();
    assert!(r.state(|st| st.pending()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_file_over_a_recorded_directory_is_kept_as_a_conflict_copy_when_the_remote_deletes_it(
) {
    let mut r = Rig::new(100);
    r.put("/b/a/f0", b"in the directory");
    r.attempt().await.unwrap();
    // The user (not mountd: nothing pending) puts a file where the directory was, and the remote
    // does the same, then deletes its file.
    std::fs::remove_file(r.local().join("b/a/f0")).unwrap();
    std::fs::remove_dir(r.local().join("b/a")).unwrap();
    std::fs::write(r.local().join("b/a"), b"the user's own").unwrap();
    r.delete("/b/a/f0");
    r.put("/b/a", b"the remote's");
    r.delete("/b/a");
    r.attempt().await.unwrap();
    // Pull-only: the remote's delete applies, the user's bytes are kept aside.
    r.assert_exact();
    let c = r.state(|st| st.conflicts()).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].path, "b/a");
    assert_eq!(
        std::fs::read(r.local().join(&c[0].copy)).unwrap(),
        b"the user's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_applies_creates_updates_and_deletes() {
    let mut r = Rig::new(100);
    sample(&r, 20);
    r.attempt().await.unwrap();
    r.put("/docs/d0/f0000.txt", b"changed");
    r.put("/new/file", b"new");
    r.delete("/docs/d1/f0001.txt");
    r.delete("/deep/a/b/c/d/e/f/g/h/i/j/k/leaf.txt");
    r.faults.reset_counts();
    assert_eq!(r.attempt().await.unwrap(), "catch-up");
    r.assert_exact();
    assert_eq!(
        r.faults.count(Op::File),
        2,
        "only the two changed files are fetched"
    );
    assert!(
        !r.local().join("deep").exists(),
        "emptied directories are removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_nobody_waited_for_does_not_interrupt_a_later_attempt() {
    let mut r = Rig::new(20);
    r.cfg.use_export = true;
    r.cfg.export_timeout = Duration::from_millis(50);
    sample(&r, 10);
    // The export hangs with nobody waiting for a hang; its sub-deadline cuts it, the tree pull runs.
    r.faults.add(Rule::new(Op::Export, Fault::Hang).times(1));
    assert_eq!(r.attempt().await.unwrap(), "tree");
    // A hang armed later (and never reached) does not end this attempt at once.
    r.put("/late", b"late");
    r.faults.hang_at_call(10_000);
    let run = r.attempt_until_hang().await;
    assert!(run.is_some(), "interrupted by the earlier hang");
    run.unwrap().unwrap();
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_replays_writes_made_during_it_in_the_same_run() {
    let mut r = Rig::new(5);
    r.cfg.use_export = false;
    sample(&r, 30);
    // Slow pages; write while the bootstrap runs.
    r.faults
        .add(Rule::new(Op::Tree, Fault::Delay(Duration::from_millis(20))));
    let e = r.engine();
    let limits = r.limits;
    let run = tokio::spawn(async move {
        mountd::sync::attempt::attempt(&e, limits)
            .await
            .map(|a| a.path)
    });
    while r.faults.count(Op::Tree) < 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    r.put("/docs/d0/f0000.txt", b"written during the bootstrap");
    r.put("/zzz/late", b"late");
    assert_eq!(run.await.unwrap().unwrap(), "tree");
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_file_is_quarantined_and_healed_later() {
    let mut r = Rig::new(100);
    r.cfg.use_export = false;
    sample(&r, 10);
    r.faults
        .add(Rule::new(Op::File, Fault::WrongHash).path("/README.md"));
    r.faults
        .add(Rule::new(Op::File, Fault::status(403)).path("/empty"));
    r.attempt().await.unwrap();
    let q = r.state(|st| st.quarantined()).await;
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter().any(|q| q.reason.contains("hash mismatch")),
        "{q:?}"
    );
    assert!(!r.local().join("README.md").exists());
    r.faults.clear();
    r.attempt().await.unwrap();
    assert!(r.state(|st| st.quarantined()).await.is_empty());
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_cancels_a_hung_attempt_and_the_stall_guard_gives_up() {
    let mut r = Rig::new(5);
    r.cfg.use_export = false;
    r.limits.idle = Duration::from_millis(300);
    r.limits.stall_limit = 2;
    sample(&r, 20);
    r.faults.add(Rule::new(Op::Tree, Fault::Hang));
    let e1 = r.attempt().await.unwrap_err();
    assert!(matches!(e1, SyncError::Stalled(_)), "{e1}");
    let e2 = r.attempt().await.unwrap_err();
    assert!(matches!(e2, SyncError::GaveUp(_)), "{e2}");
    assert_eq!(r.state(|st| st.no_progress_runs()).await, 2);
    r.faults.clear();
    r.attempt().await.unwrap();
    r.assert_exact();
    assert_eq!(r.state(|st| st.no_progress_runs()).await, 0);
    assert_eq!(
        r.state(|st| st.meta(MetaKey::LastError)).await.as_deref(),
        Some("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_closes_the_gate_for_every_worker_until_retry_after() {
    let mut r = Rig::new(100);
    r.cfg.use_export = false;
    r.cfg.concurrency = 8;
    // 50 ms is the rig's retry-wait cap; every file's first call gets a 429 with Retry-After.
    for i in 0..16 {
        let p = format!("/f{i:02}");
        r.put(&p, b"x");
        r.faults.add(
            Rule::new(
                Op::File,
                Fault::throttle("rate_limited", Some(Duration::from_millis(40))),
            )
            .path(&p)
            .times(1),
        );
    }
    r.attempt().await.unwrap();
    r.assert_exact();
    let calls: Vec<_> = r
        .faults
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::File)
        .collect();
    let first_429 = calls[0].at;
    let retried: Vec<_> = calls.iter().skip(16).collect();
    assert!(!retried.is_empty());
    for c in retried {
        assert!(
            c.at.duration_since(first_429) >= Duration::from_millis(38),
            "a request went out {:?} after the first 429, before its Retry-After",
            c.at.duration_since(first_429)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_429s_with_retry_after_in_a_row_pace_a_request_without_using_its_retries() {
    let mut r = Rig::new(100);
    r.cfg.use_export = false;
    // The rig's retries are the default 3: ten 429s in a row on the tip, a listing and a file would
    // exhaust them several times over if they counted.
    r.put("/a.txt", b"a\n");
    r.put("/d/b.txt", b"b\n");
    let paced = |op| {
        Rule::new(
            op,
            Fault::throttle("rate_limited", Some(Duration::from_millis(5))),
        )
    };
    r.faults.add(paced(Op::EventsTip).times(10));
    r.faults.add(paced(Op::Tree).path("/").times(10));
    r.faults.add(
        Rule::new(
            Op::File,
            Fault::throttle("workspace_busy", Some(Duration::from_millis(5))),
        )
        .path("/d/b.txt")
        .times(10),
    );
    assert_eq!(r.attempt().await.unwrap(), "tree");
    r.assert_exact();
    assert_eq!(r.faults.count(Op::EventsTip), 11);
    // 10 refused + the listing's page, and the count check before "complete".
    assert_eq!(r.faults.count_path(Op::Tree, "/"), 12);
    assert_eq!(r.faults.count_path(Op::File, "/d/b.txt"), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_without_retry_after_and_a_5xx_still_use_the_retries() {
    for fault in [Fault::throttle("rate_limited", None), Fault::status(503)] {
        let mut r = Rig::new(100);
        r.cfg.use_export = false;
        r.put("/a.txt", b"a\n");
        r.faults
            .add(Rule::new(Op::File, fault.clone()).path("/a.txt").times(4));
        let res = r.attempt().await;
        assert_eq!(
            r.faults.count_path(Op::File, "/a.txt"),
            4,
            "{fault:?}: the first try and 3 retries, then given up: {res:?}"
        );
        match fault {
            // A 429 stops the run (the server is throttling); a 5xx of one file quarantines it.
            Fault::Throttle { .. } => assert!(
                matches!(&res, Err(SyncError::Remote(e)) if e.status() == Some(429)),
                "{res:?}"
            ),
            _ => {
                res.unwrap();
                let q = r.state(|st| st.quarantined()).await;
                assert_eq!(q.len(), 1, "{q:?}");
            }
        }
        // One fewer and the retries suffice.
        let mut r = Rig::new(100);
        r.cfg.use_export = false;
        r.put("/a.txt", b"a\n");
        r.faults
            .add(Rule::new(Op::File, fault.clone()).path("/a.txt").times(3));
        r.attempt().await.unwrap();
        r.assert_exact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_only_answers_429_with_retry_after_ends_with_the_idle_timeout() {
    let mut r = Rig::new(100);
    r.cfg.use_export = false;
    r.limits.idle = Duration::from_millis(400);
    r.put("/a.txt", b"a\n");
    for op in [Op::EventsTip, Op::Events, Op::Tree, Op::File] {
        r.faults.add(Rule::new(
            op,
            Fault::throttle("rate_limited", Some(Duration::from_millis(10))),
        ));
    }
    let started = std::time::Instant::now();
    // Bounded here too: a hang fails the test instead of blocking it.
    let e = tokio::time::timeout(Duration::from_secs(20), r.attempt())
        .await
        .expect("the attempt ends on its own")
        .unwrap_err();
    let took = started.elapsed();
    let msg = e.to_string();
    assert!(matches!(e, SyncError::Stalled(_)), "{msg}");
    assert!(
        msg.contains("no progress for 400ms")
            && msg.contains("the remote is unavailable")
            && msg.contains("HTTP 429 rate_limited"),
        "the idle timeout, and why: {msg}"
    );
    // Paced for the whole idle timeout (far more than 1 + 3 requests), then the probe: paced for
    // at most the idle timeout again, then its 3 counted retries.
    let tips = r.faults.count(Op::EventsTip);
    assert!(
        tips > 8,
        "the 429s were waited out, not counted: {tips} requests"
    );
    assert!(
        took < Duration::from_secs(5),
        "watchdog (0.4 s) + probe (≤ 0.4 s paced + retries): took {took:?}"
    );
    // An outage, not a stall of an answering server: the stall guard does not count it.
    assert_eq!(r.state(|st| st.no_progress_runs()).await, 0);
    assert!(!r.state(|st| st.is_complete()).await);
    // Once the remote serves again, the next attempt completes.
    r.faults.clear();
    r.attempt().await.unwrap();
    r.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_repairs_local_drift_even_at_the_same_size() {
    let mut r = Rig::new(100);
    sample(&r, 10);
    r.attempt().await.unwrap();
    // The user changes a file in place (same size), removes another, and adds one of their own.
    let changed = r.local().join("docs/d0/f0000.txt");
    let len = std::fs::metadata(&changed).unwrap().len() as usize;
    std::fs::write(&changed, vec![b'X'; len]).unwrap();
    std::fs::remove_file(r.local().join("README.md")).unwrap();
    std::fs::write(r.local().join("mine.txt"), b"the user's own").unwrap();
    r.cfg.force_audit = true;
    r.kill();
    r.faults.reset_counts();
    assert_eq!(r.attempt().await.unwrap(), "tree");
    assert_eq!(
        r.faults.count(Op::File),
        2,
        "only the two drifted files are fetched"
    );
    // The user's own file is reported, not deleted; everything else is exact again.
    assert_eq!(
        std::fs::read(r.local().join("mine.txt")).unwrap(),
        b"the user's own"
    );
    std::fs::remove_file(r.local().join("mine.txt")).unwrap();
    r.assert_exact();
    assert_eq!(
        r.state(|st| st.meta(MetaKey::ExtraFiles)).await.as_deref(),
        Some("1")
    );
}
