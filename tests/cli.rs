//! The command line as operators and wrappers use it: relayfile-mount's flags and variables (drop-in),
//! Go-style values, clear errors naming the variable, timeout derivation and clamps, dangerous
//! configurations refused before anything is written, `--adopt`, `reset`, the token never logged,
//! `--creds-file` rotation, SIGTERM during `--once`, completions, the man page and the systemd
//! environment example.
mod common;
use common::*;
use mountd_remote::Faults;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `mountd` with an empty environment (nothing inherited from the test process or the harness).
fn bare() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mountd"));
    c.env_clear().stdin(Stdio::null());
    c
}

/// `mountd ARGS` against this harness's remote and mirror, configured by environment only (like a
/// unit's env file), with short test timeouts.
fn env_cmd(h: &Harness, args: &[&str]) -> Command {
    let mut c = bare();
    c.args(args)
        .env("RELAYFILE_BASE_URL", h.remote.base_url())
        .env("RELAYFILE_WORKSPACE", "ws_test")
        .env("RELAYFILE_TOKEN_FILE", h.tmp.path().join("token"))
        .env("RELAYFILE_LOCAL_DIR", h.local())
        .env("MOUNTD_PROGRESS", "never")
        .env("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "10s");
    c
}

fn check(h: &Harness, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let mut c = env_cmd(h, &all);
    c.envs(env.iter().copied());
    run_cmd(c)
}

/// Every path under `dir` (files and directories) with file contents: to show nothing was written.
fn snapshot(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn the_relayfile_mount_command_line_runs_unchanged() {
    let mut h = Harness::new();
    h.sample_tree(30);
    let state = h.tmp.path().join("wrapper.state.json");
    let mut c = bare();
    c.args(["--once", "--base-url"])
        .arg(h.remote.base_url())
        .args(["--workspace", "ws_test", "--token", TOKEN, "--local-dir"])
        .arg(h.local())
        .arg("--state-file")
        .arg(&state)
        .args([
            "--timeout",
            "10m",
            "--bootstrap-max-files-per-cycle",
            "-1",
            "--websocket=false",
        ]);
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["phase"], "complete", "{st}");
    // One warning for the token in `ps`, one for --timeout's different meaning; none for -1.
    assert_eq!(
        r.stderr.matches("visible to every user").count(),
        1,
        "{}",
        r.all()
    );
    assert!(r.stderr.contains("--timeout 10m"), "{}", r.all());
    assert!(!r.stderr.contains("per-cycle file budget"), "{}", r.all());
    assert!(!r.all().contains(TOKEN), "the token leaked: {}", r.all());
    assert!(
        r.stderr.contains("mountd 0.") && r.stderr.contains("starting"),
        "{}",
        r.all()
    );

    // More of the reference's flags, on a second run (catch-up).
    h.put("/new.txt", b"new\n");
    let sd = h.tmp.path().join("st");
    let mut c = bare();
    c.args(["--once", "--base-url"])
        .arg(h.remote.base_url())
        .args(["--workspace", "ws_test", "--creds-file"])
        .arg(creds(&h, TOKEN))
        .arg("--local-dir")
        .arg(h.local())
        .args([
            "--interval-jitter",
            "0.3",
            "--mount-kind",
            "initial-sync",
            "--mode",
            "poll",
            "--sync-mode",
            "pull-only",
            "--remote-path",
            "/",
            "--full-pull-min-interval",
            "-1",
            "--cursor-timeout",
            "60s",
            "--fuse-content-ttl",
            "30s",
            "--full-reconcile",
            "--low-memory=false",
            "--provider",
            "github",
        ])
        .arg("--state-dir")
        .arg(&sd);
    let r = run_cmd(c);
    // --state-dir does not move an existing mirror's DB: a new DB there is a first bootstrap into a
    // directory mountd owns (.mountd/ is in it), verified by hash.
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    for w in ["--cursor-timeout", "--fuse-content-ttl", "--provider"] {
        assert_eq!(
            r.stderr.matches(w).count(),
            1,
            "one warning for {w}: {}",
            r.all()
        );
    }
    assert!(!r.stderr.contains("--low-memory"), "{}", r.all());
    let dbs: Vec<_> = std::fs::read_dir(&sd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        dbs.iter().any(|n| {
            let n = n.to_string_lossy();
            n.starts_with("ws_test-") && n.ends_with(".db")
        }),
        "state DB under --state-dir: {dbs:?}"
    );
    // `mountd status` finds it the same way.
    let r = run_cmd({
        let mut c = bare();
        c.args(["status", "--json", "--workspace", "ws_test", "--local-dir"])
            .arg(h.local())
            .arg("--state-dir")
            .arg(&sd);
        c
    });
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains(&sd.display().to_string()), "{}", r.all());
}

#[test]
fn a_mountpoint_served_by_another_live_mountd_is_refused() {
    let mut h = Harness::new();
    h.sample_tree(3);
    let mnt = h.tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut c = h.service_cmd();
    c.arg("--mountpoint")
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = KillOnDrop(c.spawn().unwrap());
    wait_for("the mount", Duration::from_secs(60), || is_mounted(&mnt));
    // A second service for another mirror, onto the same mountpoint: refused even with
    // --allow-non-empty (mountd would otherwise detach the live mount as "stale").
    let mut c = env_cmd(&h, &["--allow-non-empty", "--mountpoint"]);
    c.arg(&mnt)
        .env("RELAYFILE_LOCAL_DIR", h.tmp.path().join("mirror2"));
    let r = run_cmd(c);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("another live mountd"), "{}", r.all());
    assert!(is_mounted(&mnt), "the first mount is untouched");
    assert!(!h.tmp.path().join("mirror2").exists());
    // Stop the first one cleanly (it unmounts).
    unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
    let _ = first.0.wait();
    assert!(!is_mounted(&mnt));
}

fn creds(h: &Harness, token: &str) -> PathBuf {
    let p = h.tmp.path().join("creds.json");
    let tmp = h.tmp.path().join("creds.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::json!({ "workspace": "ws_test", "accessToken": token }).to_string(),
    )
    .unwrap();
    std::fs::rename(tmp, &p).unwrap();
    p
}

#[test]
fn the_data_mode_is_a_flag_and_a_bad_one_is_refused_by_name() {
    let h = Harness::new();
    for m in ["auto", "passthrough", "page-cache", "direct-io"] {
        let r = check(&h, &[], &["--once", "--data-mode", m]);
        assert_eq!(r.code, 0, "--data-mode {m}: {}", r.all());
    }
    let r = check(&h, &[("MOUNTD_DATA_MODE", "fast")], &["--once"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("MOUNTD_DATA_MODE") && r.stderr.contains("page-cache"),
        "the error names the variable and the choices: {}",
        r.all()
    );
}

#[test]
fn every_boolean_form_is_accepted_and_a_bad_value_names_its_variable() {
    let h = Harness::new();
    for var in [
        "MOUNTD_NO_FUSE",
        "MOUNTD_ALLOW_OTHER",
        "MOUNTD_NO_EXPORT",
        "MOUNTD_ALLOW_MASS_DELETE",
        "MOUNTD_ADOPT",
        "RELAYFILE_MOUNT_WEBSOCKET",
        "RELAYFILE_MOUNT_FUSE",
        "RELAYFILE_FORCE_FULL_RECONCILE",
        "RELAYFILE_MOUNT_LOW_MEMORY",
    ] {
        for v in ["1", "0", "true", "FALSE", "t", "F", "yes", "No", "True"] {
            let mut env = vec![(var, v)];
            if var == "RELAYFILE_MOUNT_FUSE" {
                env.push(("RELAYFILE_MOUNTPOINT", "/nonexistent-mnt"));
            }
            let r = check(&h, &env, &["--once"]);
            assert_eq!(r.code, 0, "{var}={v}: {}", r.all());
        }
        let r = check(&h, &[(var, "2")], &["--once"]);
        assert_eq!(r.code, 2, "{var}=2: {}", r.all());
        assert!(
            r.stderr.contains(var) && r.stderr.contains("\"2\""),
            "the error names {var}: {}",
            r.all()
        );
    }
    // The effect, seen in the start-up line.
    let r = check(&h, &[("MOUNTD_NO_EXPORT", "1")], &["--once"]);
    assert!(r.stderr.contains("export_timeout=off"), "{}", r.all());
    let r = check(
        &h,
        &[("MOUNTD_NO_EXPORT", "1")],
        &["--once", "--no-export=false"],
    );
    assert!(r.stderr.contains("export_timeout=7s 500ms"), "{}", r.all());
    let r = check(
        &h,
        &[("MOUNTD_NO_FUSE", "1")],
        &["--mountpoint", "/nonexistent-mnt"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("plain directory"), "{}", r.all());
    for flag in ["--no-fuse", "--no-fuse=true", "--no-fuse=1", "--no-fuse=T"] {
        let r = check(&h, &[], &["--mountpoint", "/nonexistent-mnt", flag]);
        assert!(r.stdout.contains("plain directory"), "{flag}: {}", r.all());
    }
    let r = check(
        &h,
        &[],
        &["--mountpoint", "/nonexistent-mnt", "--no-fuse=false"],
    );
    assert!(
        r.stdout.contains("FUSE view at /nonexistent-mnt"),
        "{}",
        r.all()
    );

    // Other kinds of values: durations, numbers, enums, ratios.
    for (var, v) in [
        ("RELAYFILE_MOUNT_INTERVAL", "5x"),
        ("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "soon"),
        ("RELAYFILE_EXPORT_TIMEOUT", "1m30"),
        ("RELAYFILE_MOUNT_KIND", "sometimes"),
        ("RELAYFILE_MOUNT_SYNC_MODE", "both"),
        ("RELAYFILE_BOOTSTRAP_READ_CONCURRENCY", "many"),
        ("RELAYFILE_MOUNT_INTERVAL_JITTER", "1.5"),
        ("RELAYFILE_SNAPSHOT_DELETE_MIN_RATIO", "half"),
        ("RELAYFILE_BOOTSTRAP_STALL_CYCLES", "x"),
    ] {
        let r = check(&h, &[(var, v)], &["--once"]);
        assert_eq!(r.code, 2, "{var}={v}: {}", r.all());
        assert!(r.stderr.contains(var), "the error names {var}: {}", r.all());
    }
    // A bad value on the command line names the flag.
    let r = check(&h, &[], &["--once", "--interval", "5x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--interval"), "{}", r.all());
    // The command line overrides a bad variable (it is never used).
    let r = check(
        &h,
        &[("RELAYFILE_MOUNT_INTERVAL", "5x")],
        &["--once", "--interval", "5s"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn go_values_and_reference_limits_are_accepted() {
    let h = Harness::new();
    for (var, v, expect) in [
        ("RELAYFILE_MOUNT_INTERVAL", "1m30s", "interval=1m 30s"),
        ("RELAYFILE_MOUNT_INTERVAL", "300ms", "interval=300ms"),
        ("RELAYFILE_MOUNT_INTERVAL", "1.5h", "interval=1h 30m"),
        ("RELAYFILE_BOOTSTRAP_TIMEOUT", "0", "hard_cap=0s"),
        (
            "RELAYFILE_MOUNT_FULL_PULL_MIN_INTERVAL",
            "-1",
            "audit_interval=off",
        ),
        (
            "RELAYFILE_MOUNT_FULL_PULL_MIN_INTERVAL",
            "2h",
            "audit_interval=2h",
        ),
        ("RELAYFILE_BOOTSTRAP_STALL_CYCLES", "20", "stall_limit=20"),
        (
            "RELAYFILE_SNAPSHOT_DELETE_MIN_RATIO",
            "0.25",
            "mass_delete_ratio=0.25",
        ),
        (
            "RELAYFILE_MOUNT_INTERVAL_JITTER",
            "0.3",
            "interval_jitter=0.3",
        ),
    ] {
        let r = check(&h, &[(var, v)], &["--once"]);
        assert_eq!(r.code, 0, "{var}={v}: {}", r.all());
        assert!(
            r.stderr.contains(expect),
            "{var}={v} → {expect}: {}",
            r.all()
        );
    }
    // Concurrency is capped at 64 like the reference, with one warning.
    let r = check(
        &h,
        &[("RELAYFILE_BOOTSTRAP_READ_CONCURRENCY", "100")],
        &["--once"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("read_concurrency=64"), "{}", r.all());
    assert_eq!(r.stderr.matches("clamped to 64").count(), 1, "{}", r.all());
    let r = check(
        &h,
        &[("RELAYFILE_INCREMENTAL_READ_CONCURRENCY", "128")],
        &["--once"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("RELAYFILE_INCREMENTAL_READ_CONCURRENCY 128 clamped to 64"),
        "{}",
        r.all()
    );
    // FULL_PULL_EVERY: audits at most every N intervals.
    let r = check(
        &h,
        &[
            ("RELAYFILE_MOUNT_FULL_PULL_EVERY", "20"),
            ("RELAYFILE_MOUNT_FULL_PULL_MIN_INTERVAL", "1m"),
        ],
        &["--once"],
    );
    assert!(r.stderr.contains("audit_interval=10m"), "{}", r.all());
    // Refused like the reference: two remote paths; write-only.
    let r = check(
        &h,
        &[],
        &["--once", "--remote-path", "/a", "--remote-path", "/b"],
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("more than one remote path"),
        "{}",
        r.all()
    );
    let pf = h.tmp.path().join("paths.json");
    std::fs::write(&pf, r#"["/docs", "/bin"]"#).unwrap();
    let r = check(
        &h,
        &[("RELAYFILE_MOUNT_PATHS_FILE", pf.to_str().unwrap())],
        &["--once"],
    );
    assert_eq!(r.code, 2, "{}", r.all());
    std::fs::write(&pf, "# the docs\n/docs\n").unwrap();
    let r = check(
        &h,
        &[("RELAYFILE_MOUNT_PATHS_FILE", pf.to_str().unwrap())],
        &["--once"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("remote_path=/docs"), "{}", r.all());
    let r = check(&h, &[], &["--once", "--sync-mode", "write-only"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("mountd always applies remote changes"),
        "{}",
        r.all()
    );
    // mirror is two-way (the default): accepted without a warning; it contradicts --read-only.
    let r = check(&h, &[], &["--once", "--sync-mode", "mirror"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr.contains("--sync-mode"),
        "no warning about it: {}",
        r.all()
    );
    assert!(r.stderr.contains("sync_mode=\"mirror\""), "{}", r.all());
    let r = check(&h, &[], &["--once", "--sync-mode", "mirror", "--read-only"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("contradicts --read-only"), "{}", r.all());
    // --mode fuse needs a mountpoint of its own.
    let r = check(&h, &[("RELAYFILE_MOUNT_MODE", "fuse")], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--mountpoint"), "{}", r.all());
    // Push one-shots: an empty outbox pushes nothing and pulls nothing (no listing, no export).
    let r = run_cmd(env_cmd(&h, &["--flush-outbox-once"]));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("pushed 0 local change(s)"), "{}", r.all());
    assert_eq!(h.remote.counts().tree + h.remote.counts().export, 0);
    let r = run_cmd(env_cmd(&h, &["--flush-outbox-once", "--read-only"]));
    assert_eq!(r.code, 2, "{}", r.all());
}

#[test]
fn timeouts_the_reference_accepts_are_accepted() {
    let mut h = Harness::new();
    h.sample_tree(10);
    // The idle timeout alone: the read timeout follows it, the export clamp says "default".
    let mut c = env_cmd(&h, &["--once"]);
    c.env("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "8s");
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert!(r.stderr.contains("read_timeout=4s"), "{}", r.all());
    assert_eq!(
        r.stderr
            .matches("export timeout clamped from 45s (default) to 6s")
            .count(),
        1,
        "{}",
        r.all()
    );
    assert!(!r.stderr.contains("(configured)"), "{}", r.all());
    // Configured values say so.
    let r = check(
        &h,
        &[
            ("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "8s"),
            ("RELAYFILE_EXPORT_TIMEOUT", "45s"),
            ("MOUNTD_READ_TIMEOUT", "20s"),
        ],
        &["--once"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("export timeout clamped from 45s (configured) to 6s"),
        "{}",
        r.all()
    );
    assert!(
        r.stderr
            .contains("read timeout clamped from 20s (configured) to 4s"),
        "{}",
        r.all()
    );
    // Zero and tiny values are accepted with a warning, never refused.
    for (var, v) in [
        ("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "0"),
        ("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "1s"),
        ("RELAYFILE_EXPORT_TIMEOUT", "0"),
        ("RELAYFILE_MOUNT_INTERVAL", "0"),
        ("RELAYFILE_MOUNT_TIMEOUT", "15s"),
        ("RELAYFILE_MOUNT_TIMEOUT", "0"),
        ("RELAYFILE_CURSOR_TIMEOUT", "60s"),
    ] {
        let r = check(&h, &[(var, v)], &["--once"]);
        assert_eq!(r.code, 0, "{var}={v}: {}", r.all());
    }
    // --timeout bounds each read.
    let r = check(&h, &[("RELAYFILE_MOUNT_TIMEOUT", "2s")], &["--once"]);
    assert!(r.stderr.contains("read_timeout=2s"), "{}", r.all());
    assert_eq!(
        r.stderr.matches("RELAYFILE_MOUNT_TIMEOUT 2s").count(),
        1,
        "{}",
        r.all()
    );
}

#[test]
fn dangerous_configurations_are_refused_before_anything_is_written() {
    let h = Harness::new();
    let t = h.tmp.path();
    let mirror = h.local();
    std::fs::create_dir_all(&mirror).unwrap();
    let state = h.state_file();
    let refused = |what: &str, args: Vec<String>, envs: Vec<(&str, PathBuf)>, needle: &str| {
        let before = snapshot(t);
        let mut c = env_cmd(&h, &[]);
        c.env("RELAYFILE_MOUNT_STATE_FILE", &state);
        c.args(&args);
        for (k, v) in &envs {
            c.env(k, v);
        }
        let r = run_cmd(c);
        assert_eq!(r.code, 2, "{what}: {}", r.all());
        assert!(
            r.stderr.contains(needle),
            "{what}: wanted {needle:?}: {}",
            r.all()
        );
        assert_eq!(snapshot(t), before, "{what}: something was written");
        assert!(!state.exists(), "{what}: the state file was created");
        assert_eq!(h.remote.counts().tree + h.remote.counts().export, 0);
    };
    let p = |p: &Path| p.display().to_string();
    refused(
        "mountpoint = mirror",
        vec!["--mountpoint".into(), p(&mirror)],
        vec![],
        "is the same directory as the mirror",
    );
    refused(
        "mountpoint inside the mirror",
        vec!["--mountpoint".into(), p(&mirror.join("mnt"))],
        vec![],
        "is inside the mirror",
    );
    std::fs::create_dir_all(t.join("outer")).unwrap();
    refused(
        "mountpoint contains the mirror",
        vec!["--mountpoint".into(), p(&t.join("outer"))],
        vec![("RELAYFILE_LOCAL_DIR", t.join("outer/mirror"))],
        "contains the mirror",
    );
    std::fs::create_dir_all(t.join("st")).unwrap();
    refused(
        "mountpoint = the state DB's directory",
        vec!["--mountpoint".into(), p(&t.join("st"))],
        vec![("MOUNTD_STATE_DB", t.join("st/state.db"))],
        "the state DB's directory",
    );
    refused(
        "mountpoint inside the state dir",
        vec!["--mountpoint".into(), p(&t.join("st/mnt"))],
        vec![("RELAYFILE_MOUNT_STATE_DIR", t.join("st"))],
        "is inside the state DB's directory",
    );
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(mnt.join("precious.txt"), b"keep me").unwrap();
    refused(
        "non-empty mountpoint",
        vec!["--mountpoint".into(), p(&mnt)],
        vec![],
        "--allow-non-empty",
    );
    // --allow-non-empty passes that check (validated without mounting).
    let r = check(&h, &[], &["--mountpoint", &p(&mnt), "--allow-non-empty"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // A first sync into a non-empty directory mountd does not own.
    std::fs::write(mirror.join("mine.txt"), b"not from the remote").unwrap();
    refused(
        "non-empty local dir",
        vec!["--once".into()],
        vec![],
        "--adopt",
    );
    refused(
        "non-empty local dir, service",
        vec!["--no-fuse".into()],
        vec![],
        "is not a mountd mirror",
    );
    assert_eq!(
        std::fs::read(mirror.join("mine.txt")).unwrap(),
        b"not from the remote"
    );
}

#[test]
fn adopt_takes_over_existing_files_verified_by_hash() {
    let mut h = Harness::new();
    h.sample_tree(10);
    let m = h.local();
    std::fs::create_dir_all(m.join("docs/d1")).unwrap();
    std::fs::write(m.join("README.md"), b"# sample\n").unwrap(); // same as the remote
    std::fs::write(m.join("docs/d1/f00001.txt"), b"stale\n").unwrap(); // differs
    std::fs::write(m.join("extra.txt"), b"only here\n").unwrap(); // the remote lacks it
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!m.join(".mountd").exists());
    // Pull-only: the remote's tree is taken as it is (mirror mode would push extra.txt).
    let r = h.run(&["--no-export", "--adopt", "--read-only"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let c = h.remote.counts();
    assert_eq!(
        c.file_paths.get("/README.md"),
        None,
        "a matching file is verified, not fetched"
    );
    assert_eq!(c.file_paths.get("/docs/d1/f00001.txt"), Some(&1));
    assert_eq!(
        std::fs::read(m.join("docs/d1/f00001.txt")).unwrap(),
        b"file 1\n"
    );
    let copies = common::read_tree(&m.join(".mountd/conflicts"));
    assert_eq!(
        copies.values().collect::<Vec<_>>(),
        vec![&b"stale\n".to_vec()],
        "the replaced local bytes are kept as a conflict copy: {copies:?}"
    );
    assert!(
        r.stderr.contains("docs/d1/f00001.txt"),
        "the conflict copy is reported: {}",
        r.all()
    );
    assert_eq!(
        std::fs::read(m.join("extra.txt")).unwrap(),
        b"only here\n",
        "an adopted file the remote lacks is never deleted"
    );
    // Owned now: later runs need no --adopt.
    assert_eq!(h.run(&["--read-only"]).code, 0);
}

#[test]
fn reset_reties_a_mirror_without_losing_files() {
    let mut h = Harness::new();
    h.sample_tree(20);
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // The same server under another URL is another identity: refused.
    let other = h.remote.base_url().replace("127.0.0.1", "localhost");
    let r = h.run(&["--no-export", "--base-url", &other]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("belongs to another mirror"),
        "{}",
        r.all()
    );
    // Refused while another mountd holds the mirror's lock.
    {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(h.local().join(".mountd/state.db.lock"))
            .unwrap();
        lock.try_lock().unwrap();
        let r = run_cmd({
            let mut c = bare();
            c.args(["reset", "--local-dir"]).arg(h.local());
            c
        });
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(r.stderr.contains("another mountd"), "{}", r.all());
    }
    let r = run_cmd({
        let mut c = bare();
        c.args(["reset", "--local-dir"]).arg(h.local());
        c
    });
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("verifies every file by hash"),
        "{}",
        r.all()
    );
    assert!(!h.is_complete());
    h.remote.reset_counts();
    let r = h.run(&["--no-export", "--base-url", &other]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert_eq!(
        h.remote.counts().file,
        0,
        "every file verified by hash, none re-fetched"
    );
    assert!(h.is_complete());
    // Nothing to reset without a state DB.
    let r = run_cmd({
        let mut c = bare();
        c.args(["reset", "--local-dir"])
            .arg(h.tmp.path().join("nothing"));
        c
    });
    assert_eq!(r.code, 2, "{}", r.all());
}

#[test]
fn the_token_never_appears_in_logs_or_state() {
    let mut h = Harness::new();
    h.sample_tree(5);
    for args in [
        vec!["--once", "-vv", "--token", TOKEN],
        vec!["check", "--once", "--token", TOKEN],
    ] {
        let mut c = env_cmd(&h, &args);
        c.env_remove("RELAYFILE_TOKEN_FILE")
            .env("RELAYFILE_MOUNT_STATE_FILE", h.state_file());
        let r = run_cmd(c);
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(!r.all().contains(TOKEN), "token in the output of {args:?}");
        assert!(r.stderr.contains("visible to every user"), "{}", r.all());
    }
    // From the environment, with debug logs and a JSON format; and a refused token.
    let mut c = env_cmd(&h, &["--once", "--log-format", "json"]);
    c.env_remove("RELAYFILE_TOKEN_FILE")
        .env("RELAYFILE_TOKEN", TOKEN)
        .env("MOUNTD_LOG", "trace");
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains(TOKEN));
    assert!(!r.stderr.contains("visible to every user"), "{}", r.all());
    let wrong = "wrong-token-0000-1111-2222";
    let mut c = env_cmd(&h, &["--once", "-v"]);
    c.env_remove("RELAYFILE_TOKEN_FILE")
        .env("RELAYFILE_TOKEN", wrong);
    let r = run_cmd(c);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(!r.all().contains(wrong), "{}", r.all());
    for f in std::fs::read_dir(h.tmp.path()).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() && p.file_name().unwrap() != "token" {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            assert!(!text.contains(TOKEN), "token in {}", p.display());
        }
    }
}

#[test]
fn a_rotated_credentials_file_is_reread_after_a_401() {
    let mut h = Harness::new();
    for i in 0..60 {
        h.put(&format!("/r/f{i:03}"), format!("r{i}\n").as_bytes());
    }
    h.set_faults(Faults {
        file_delay_ms: 40,
        ..Default::default()
    });
    let cf = creds(&h, TOKEN);
    let mut c = env_cmd(&h, &["--once", "--no-export", "--read-concurrency", "1"]);
    c.env_remove("RELAYFILE_TOKEN_FILE")
        .env("RELAYFILE_MOUNT_CREDS_FILE", &cf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = c.spawn().unwrap();
    wait_for("some files fetched", Duration::from_secs(30), || {
        h.remote.counts().file >= 5
    });
    let rotated = "rotated-token-9876543210";
    // The file first, then the server: the daemon re-reads the file only after a 401, so it never
    // meets the server's new token with the old file (that 401 would end the run with exit 3).
    creds(&h, rotated);
    h.remote.set_token(rotated);
    let r = wait_output(child, Duration::from_secs(120), start);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert!(
        h.remote.counts().unauthorized >= 1,
        "the rotation happened mid-run"
    );
    assert!(r.stderr.contains("re-read the token"), "{}", r.all());
    assert!(!r.all().contains(rotated) && !r.all().contains(TOKEN));
    // A static token cannot rotate: a 401 fails at once (exit 3).
    h.remote.set_token("yet-another");
    let mut c = env_cmd(&h, &["--once"]);
    c.env_remove("RELAYFILE_TOKEN_FILE")
        .env("RELAYFILE_TOKEN", rotated);
    h.put("/later.txt", b"later");
    assert_eq!(run_cmd(c).code, 3);
}

#[test]
fn sigterm_during_once_records_interrupted() {
    let mut h = Harness::new();
    for i in 0..200 {
        h.put(&format!("/s/f{i:03}"), b"s");
    }
    h.set_faults(Faults {
        file_delay_ms: 50,
        ..Default::default()
    });
    let start = Instant::now();
    let child = h.spawn(&["--no-export", "--read-concurrency", "1"]);
    wait_for("progress", Duration::from_secs(30), || {
        h.remote.counts().file >= 3
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let r = wait_output(child, Duration::from_secs(30), start);
    assert_eq!(r.code, 143, "{}", r.all());
    assert!(r.stderr.contains("stopped by SIGTERM"), "{}", r.all());
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.state_file()).unwrap()).unwrap();
    assert_eq!(st["phase"], "interrupted", "{st}");
    // The next run resumes and completes.
    h.set_faults(Faults::default());
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let r = run_cmd({
            let mut c = bare();
            c.args(["completions", shell]);
            c
        });
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(
            r.stdout.contains("--local-dir") && r.stdout.contains("mountd"),
            "{shell}"
        );
    }
    let r = run_cmd({
        let mut c = bare();
        c.arg("man");
        c
    });
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH mountd"),
        "{}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    assert!(r.stdout.contains("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT"));
    let r = run_cmd({
        let mut c = bare();
        c.arg("--help");
        c
    });
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("MOUNTD_LOG") && r.stdout.contains("RUST_LOG"),
        "{}",
        r.stdout
    );
}

/// `KEY=value` lines of a systemd environment file; `commented`: also the `#KEY=value` examples.
fn env_lines(text: &str, commented: bool) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = if commented {
                l.strip_prefix('#').unwrap_or(l)
            } else {
                l
            };
            let (k, v) = l.split_once('=')?;
            (!k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn the_systemd_environment_example_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("systemd/mountd.env.example")).unwrap();
    let unit = std::fs::read_to_string(root.join("systemd/mountd@.service")).unwrap();
    let t = tempfile::tempdir().unwrap();
    let creds_dir = t.path().join("credentials");
    std::fs::create_dir_all(&creds_dir).unwrap();
    std::fs::write(creds_dir.join("token"), "tok\n").unwrap();
    let inst = t.path().join("instance");
    // What the unit sets (Environment=), with its specifiers pointed at the temp dir.
    let unit_env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v
                .replace("/var/lib/mountd/%i", &inst.display().to_string())
                .replace("%d", &creds_dir.display().to_string())
                .replace("%i", "example");
            (k.to_string(), v)
        })
        .collect();
    assert!(unit_env.iter().any(|(k, _)| k == "RELAYFILE_TOKEN_FILE"));
    let active = env_lines(&example, false);
    assert!(
        active.iter().any(|(k, _)| k == "RELAYFILE_BASE_URL"),
        "{active:?}"
    );
    let run = |vars: &[(String, String)]| {
        let mut c = bare();
        c.arg("check");
        for (k, v) in unit_env.iter().chain(vars) {
            c.env(k, v);
        }
        run_cmd(c)
    };
    let r = run(&active);
    assert_eq!(r.code, 0, "the active lines: {}", r.all());
    assert!(
        !r.stderr.contains("WARN"),
        "no warning for the shipped example: {}",
        r.all()
    );
    // Every commented example value parses too (paths pointed at the temp dir).
    let all: Vec<(String, String)> = env_lines(&example, true)
        .into_iter()
        .filter(|(k, _)| k != "RELAYFILE_TOKEN")
        .map(|(k, v)| {
            let v = v.replace("/var/lib/mountd/example", &inst.display().to_string());
            let v = if k == "RELAYFILE_TOKEN_FILE" {
                creds_dir.join("token").display().to_string()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    assert!(all.len() > active.len() + 10, "{all:?}");
    let r = run(&all);
    assert_eq!(r.code, 0, "the commented examples: {}", r.all());
    assert!(!inst.exists(), "check wrote nothing");
}
