//! `mountd --once` bootstrap through the export and its fall-through rules, against the reference remote.
mod common;
use common::*;
use mountd_remote::{ErrorFault, Faults};

#[test]
fn export_happy_path_is_complete_and_byte_exact() {
    let mut h = Harness::new();
    h.sample_tree(40);
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(
        (c.export, c.tree, c.file),
        (1, 1, 0),
        "one export, no file request, one tree request: the count check before 'complete'"
    );
    assert!(r.stdout.contains("via export"), "{}", r.all());
    let st = h.state();
    assert!(st.is_complete().unwrap());
    // A second run catches up from the feed and fetches nothing.
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let c = h.remote.counts();
    // One tree request: the count check.
    assert_eq!((c.export, c.tree, c.file), (0, 1, 0));
}

#[test]
fn slow_export_falls_through_to_tree_in_the_same_run() {
    let mut h = Harness::with_page_size(7);
    h.sample_tree(30);
    h.set_faults(Faults {
        export_delay_ms: 60_000,
        ..Default::default()
    });
    let r = h.run(&["--export-timeout", "1s"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(c.export, 1, "export requested exactly once");
    assert!(c.tree >= 5, "tree pull used: {c:?}");
    assert!(r.stdout.contains("via tree"), "{}", r.all());
    assert!(h.state().is_complete().unwrap());
}

#[test]
fn hard_cap_clamps_export_timeout_and_still_completes() {
    let mut h = Harness::new();
    h.sample_tree(10);
    h.set_faults(Faults {
        export_hang: true,
        ..Default::default()
    });
    let r = h.run(&[
        "--bootstrap-timeout",
        "4s",
        "--export-timeout",
        "10s",
        "--bootstrap-idle-timeout",
        "20s",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let warnings: Vec<_> = r
        .stderr
        .lines()
        .filter(|l| l.contains("export timeout clamped"))
        .collect();
    assert_eq!(warnings.len(), 1, "one clamp warning: {}", r.all());
    assert!(
        warnings[0].contains("10s") && warnings[0].contains("3s"),
        "{}",
        warnings[0]
    );
    assert_eq!(h.remote.counts().export, 1);
}

#[test]
fn workspace_busy_falls_through_after_retries() {
    let mut h = Harness::new();
    h.sample_tree(10);
    h.set_faults(Faults {
        export_status: Some(ErrorFault::new(429, "workspace_busy").with_retry_after("1")),
        ..Default::default()
    });
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(c.export, 4, "first try + 3 retries");
    assert!(c.tree >= 1);
    assert!(
        r.elapsed.as_secs_f64() >= 3.0,
        "Retry-After honoured: {:?}",
        r.elapsed
    );
}

#[test]
fn rate_limited_and_queue_full_fail_visibly_without_fall_through() {
    for code in ["rate_limited", "queue_full"] {
        let mut h = Harness::new();
        h.sample_tree(3);
        h.set_faults(Faults {
            export_status: Some(ErrorFault::new(429, code).with_retry_after("1")),
            ..Default::default()
        });
        let r = h.run(&[]);
        assert_eq!(r.code, 1, "{code}: {}", r.all());
        let c = h.remote.counts();
        assert_eq!(
            (c.export, c.tree),
            (4, 0),
            "{code}: 4 export attempts, no fall-through"
        );
        assert!(
            r.elapsed.as_secs_f64() >= 3.0,
            "{code}: Retry-After honoured: {:?}",
            r.elapsed
        );
        assert!(
            r.stderr.contains(code) && r.stderr.contains("correlation id"),
            "{}",
            r.all()
        );
        let st = h.state();
        assert!(!st.is_complete().unwrap());
        assert_eq!(st.events_cursor().unwrap(), None);
    }
}

#[test]
fn unsupported_too_large_or_truncated_exports_fall_through() {
    let faults = [
        Faults {
            export_status: Some(ErrorFault::new(404, "not_found")),
            ..Default::default()
        },
        Faults {
            export_status: Some(ErrorFault::new(413, "payload_too_large")),
            ..Default::default()
        },
        Faults {
            export_status: Some(ErrorFault::new(400, "bad_request")),
            ..Default::default()
        },
        Faults {
            export_truncate_at: Some(700),
            ..Default::default()
        },
        Faults {
            export_reset_at: Some(900),
            ..Default::default()
        },
    ];
    for f in faults {
        let mut h = Harness::new();
        h.sample_tree(20);
        h.set_faults(f.clone());
        let r = h.run(&[]);
        assert_eq!(r.code, 0, "{f:?}: {}", r.all());
        h.assert_mirror_exact();
        let c = h.remote.counts();
        assert_eq!(c.export, 1, "{f:?}");
        assert!(c.tree >= 1, "{f:?}");
        assert!(r.stdout.contains("via tree"), "{}", r.all());
    }
}

#[test]
fn empty_export_never_marks_a_populated_mirror_complete() {
    let mut h = Harness::new();
    h.sample_tree(20);
    assert_eq!(h.run(&[]).code, 0);
    // The state DB is lost while the files stay; the export now answers [] for a populated workspace.
    h.remove_state_db();
    h.put("/new-after-loss.txt", b"new\n");
    h.set_faults(Faults {
        export_empty: true,
        ..Default::default()
    });
    h.remote.reset_counts();
    // Pull-only: in mirror mode the files of a mirror whose state was lost are local changes to
    // push, and the guarded tree pull lists instead of the export.
    let r = h.run(&["--read-only"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("export returned no files"), "{}", r.all());
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(c.export, 1);
    assert!(c.tree >= 1);
    assert_eq!(
        c.file, 1,
        "unchanged local files are verified by hash, only the new one fetched: {:?}",
        c.file_paths
    );
}

#[test]
fn a_lost_state_db_in_mirror_mode_pushes_nothing_and_loses_nothing() {
    let mut h = Harness::new();
    h.sample_tree(20);
    assert_eq!(h.run(&[]).code, 0);
    h.remove_state_db();
    std::fs::write(
        h.local().join("docs/d1/f00001.txt"),
        b"edited while the state was lost\n",
    )
    .unwrap();
    h.remote.reset_counts();
    // Every local file is new to mountd now: the same bytes as the remote's converge, the one that
    // differs is kept as a conflict copy, nothing is written to the remote.
    let r = h.run(&[]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(
        r.stderr.contains("conflict: docs/d1/f00001.txt"),
        "{}",
        r.all()
    );
    h.assert_mirror_exact();
    assert_eq!(h.remote.counts().writes_applied, 0, "nothing pushed");
    let copies = common::read_tree(&h.local().join(".mountd/conflicts"));
    assert_eq!(
        copies.values().collect::<Vec<_>>(),
        vec![&b"edited while the state was lost\n".to_vec()]
    );
}

#[test]
fn shrunk_export_with_tracked_files_falls_through() {
    let mut h = Harness::new();
    h.sample_tree(30);
    assert_eq!(h.run(&[]).code, 0);
    h.remove_state_db();
    h.set_faults(Faults {
        export_drop: Some(3),
        ..Default::default()
    });
    h.remote.reset_counts();
    let r = h.run(&["--read-only"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("less than 50% of the"), "{}", r.all());
    assert!(r.stdout.contains("via tree"), "{}", r.all());
    h.assert_mirror_exact();
    assert_eq!(h.remote.counts().file, 0, "everything verified by hash");
}

#[test]
fn empty_export_on_an_empty_workspace_completes() {
    let h = Harness::new();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(h.state().is_complete().unwrap());
    let c = h.remote.counts();
    // The tree request is the count check.
    assert_eq!((c.export, c.tree), (1, 1));
}

#[test]
fn export_5xx_after_retries_fails_and_advances_nothing() {
    let mut h = Harness::new();
    h.sample_tree(5);
    h.set_faults(Faults {
        export_status: Some(ErrorFault::new(500, "export_error")),
        ..Default::default()
    });
    let r = h.run(&[]);
    assert_eq!(r.code, 1, "{}", r.all());
    let c = h.remote.counts();
    assert_eq!((c.export, c.tree, c.file), (4, 0, 0));
    let st = h.state();
    assert!(!st.is_complete().unwrap());
    assert_eq!(st.events_cursor().unwrap(), None);
    assert!(r.stderr.contains("hint:"), "{}", r.all());
    // Once the export recovers, the next run completes.
    h.set_faults(Faults::default());
    assert_eq!(h.run(&[]).code, 0);
    h.assert_mirror_exact();
}
