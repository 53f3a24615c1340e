//! Reference-model property test of two-way sync: random local edits (writes, deletes, renames of
//! files and of a directory, editors' atomic saves) and remote edits of the same small set of paths,
//! random faults on both directions (pull: failing files and feed; push: 5xx, transport errors,
//! answers lost after the write was applied), random interruptions (a run dropped at a hung call) and
//! `kill -9` (everything in memory lost). Each step changes both sides, runs mountd once (local changes
//! recorded, pull, push) under the faults, then lets it quiesce with the faults gone, and checks:
//!
//! - the local tree equals the remote tree, byte for byte;
//! - every path ends as the two-way rules say: a version written on one side only is at its path on
//!   both sides; written on both sides, the remote's version is at the path and the local bytes are
//!   in a reported conflict copy (byte-exact, under `.mountd/conflicts/`); an edit wins over a delete
//!   on either side; deleted on one side only (or both), it is gone;
//! - no conflict is reported that the step did not make (mountd's own writes are never conflicts);
//! - each local change reached the remote exactly once (the reference store counts applied writes
//!   per path), crashes and lost answers included;
//! - the outbox is empty.
//!
//! `PROPTEST_CASES=N` runs more cases (`scripts/test.sh` runs the quick profile, `scripts/chaos.sh`
//! the long one).
mod common;
use common::inproc::Rig;
use mountd::remote::fault::{Fault, Op, Rule};
use mountd::sync::attempt::Limits;
use mountd::sync::engine::Engine;
use mountd::sync::push::Direction;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// The paths both sides write (no file/directory clashes among them: those are the pull-only model's).
const PATHS: &[&str] = &[
    "a.txt",
    "b.bin",
    "d/c.txt",
    "d/e.txt",
    "dd/c.txt",
    "x y/ünï.txt",
];

#[derive(Debug, Clone)]
enum LocalOp {
    Write {
        p: usize,
        bytes: Vec<u8>,
    },
    /// An editor's save: a temp file renamed over the target.
    AtomicSave {
        p: usize,
        bytes: Vec<u8>,
    },
    Delete {
        p: usize,
    },
    /// Rename a file to another path of the set (when the target is free).
    Rename {
        from: usize,
        to: usize,
    },
    /// Rename directory `d` to `dd` (or back), with everything in it.
    RenameDir,
}

#[derive(Debug, Clone)]
enum RemoteOp {
    Write { p: usize, bytes: Vec<u8> },
    Delete { p: usize },
}

#[derive(Debug, Clone)]
enum FaultSpec {
    PushStatus { op: u8, times: u32 },
    LoseAnswer { op: u8 },
    PushTransport { op: u8 },
    FileFail { times: u32 },
    EventsFail { times: u32 },
}

#[derive(Debug, Clone)]
struct Step {
    local: Vec<LocalOp>,
    remote: Vec<RemoteOp>,
    faults: Vec<FaultSpec>,
    /// Hang at this call and drop the run there.
    interrupt: Option<u64>,
    /// After the run, lose everything in memory (reopen from SQLite).
    kill: bool,
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        "[a-z ]{1,30}".prop_map(|s| s.into_bytes()),
    ]
}

fn path() -> impl Strategy<Value = usize> {
    0..PATHS.len()
}

fn local_op() -> impl Strategy<Value = LocalOp> {
    prop_oneof![
        4 => (path(), bytes()).prop_map(|(p, bytes)| LocalOp::Write { p, bytes }),
        2 => (path(), bytes()).prop_map(|(p, bytes)| LocalOp::AtomicSave { p, bytes }),
        2 => path().prop_map(|p| LocalOp::Delete { p }),
        1 => (path(), path()).prop_map(|(from, to)| LocalOp::Rename { from, to }),
        1 => Just(LocalOp::RenameDir),
    ]
}

fn remote_op() -> impl Strategy<Value = RemoteOp> {
    prop_oneof![
        3 => (path(), bytes()).prop_map(|(p, bytes)| RemoteOp::Write { p, bytes }),
        1 => path().prop_map(|p| RemoteOp::Delete { p }),
    ]
}

fn fault() -> impl Strategy<Value = FaultSpec> {
    prop_oneof![
        (0..3u8, 1..4u32).prop_map(|(op, times)| FaultSpec::PushStatus { op, times }),
        (0..3u8).prop_map(|op| FaultSpec::LoseAnswer { op }),
        (0..3u8).prop_map(|op| FaultSpec::PushTransport { op }),
        (1..3u32).prop_map(|times| FaultSpec::FileFail { times }),
        (1..3u32).prop_map(|times| FaultSpec::EventsFail { times }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::collection::vec(local_op(), 0..6),
        proptest::collection::vec(remote_op(), 0..4),
        proptest::collection::vec(fault(), 0..3),
        proptest::option::weighted(0.35, 1..40u64),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(local, remote, faults, interrupt, kill)| Step {
            local,
            remote,
            faults,
            interrupt,
            kill,
        })
}

fn case() -> impl Strategy<Value = (Vec<RemoteOp>, Vec<Step>)> {
    (
        proptest::collection::vec(remote_op(), 1..8),
        proptest::collection::vec(step(), 1..5),
    )
}

/// The last thing a side did to a path in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Last {
    Wrote(Vec<u8>),
    Deleted,
}

fn write_local(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Apply a local op; record what it did per path in `last`.
fn apply_local(root: &Path, op: &LocalOp, last: &mut BTreeMap<String, Last>) {
    let exists = |rel: &str| root.join(rel).is_file();
    match op {
        LocalOp::Write { p, bytes } => {
            write_local(root, PATHS[*p], bytes);
            last.insert(PATHS[*p].into(), Last::Wrote(bytes.clone()));
        }
        LocalOp::AtomicSave { p, bytes } => {
            let rel = PATHS[*p];
            write_local(root, &format!("{rel}.swp"), bytes);
            std::fs::rename(root.join(format!("{rel}.swp")), root.join(rel)).unwrap();
            last.insert(rel.into(), Last::Wrote(bytes.clone()));
        }
        LocalOp::Delete { p } => {
            if exists(PATHS[*p]) {
                std::fs::remove_file(root.join(PATHS[*p])).unwrap();
                last.insert(PATHS[*p].into(), Last::Deleted);
            }
        }
        LocalOp::Rename { from, to } => {
            let (f, t) = (PATHS[*from], PATHS[*to]);
            if f != t && exists(f) && !exists(t) {
                let bytes = std::fs::read(root.join(f)).unwrap();
                std::fs::create_dir_all(root.join(t).parent().unwrap()).unwrap();
                std::fs::rename(root.join(f), root.join(t)).unwrap();
                last.insert(f.into(), Last::Deleted);
                last.insert(t.into(), Last::Wrote(bytes));
            }
        }
        LocalOp::RenameDir => {
            let (from, to) = if root.join("d").is_dir() {
                ("d", "dd")
            } else {
                ("dd", "d")
            };
            if !root.join(from).is_dir() || root.join(to).exists() {
                return;
            }
            let moved: Vec<(String, Vec<u8>)> = ["c.txt", "e.txt"]
                .iter()
                .filter(|n| root.join(from).join(n).is_file())
                .map(|n| {
                    let b = std::fs::read(root.join(from).join(n)).unwrap();
                    (n.to_string(), b)
                })
                .collect();
            // Only when every file moves to a path of the set (dd/e.txt is not one).
            if moved
                .iter()
                .any(|(n, _)| !PATHS.contains(&format!("{to}/{n}").as_str()))
            {
                return;
            }
            std::fs::rename(root.join(from), root.join(to)).unwrap();
            for (n, b) in moved {
                last.insert(format!("{from}/{n}"), Last::Deleted);
                last.insert(format!("{to}/{n}"), Last::Wrote(b));
            }
        }
    }
}

fn apply_remote(r: &Rig, op: &RemoteOp, last: &mut BTreeMap<String, Last>) {
    match op {
        RemoteOp::Write { p, bytes } => {
            r.put(&format!("/{}", PATHS[*p]), bytes);
            last.insert(PATHS[*p].into(), Last::Wrote(bytes.clone()));
        }
        RemoteOp::Delete { p } => {
            if r.ws.revision(&format!("/{}", PATHS[*p])).is_some() {
                r.delete(&format!("/{}", PATHS[*p]));
                last.insert(PATHS[*p].into(), Last::Deleted);
            }
        }
    }
}

fn add_fault(r: &Rig, f: &FaultSpec) {
    let op = |k: &u8| match k {
        0 => Op::Put,
        1 => Op::Bulk,
        _ => Op::Delete,
    };
    let rule = match f {
        FaultSpec::PushStatus { op: k, times } => {
            Rule::new(op(k), Fault::status(503)).times(*times)
        }
        FaultSpec::LoseAnswer { op: k } => Rule::new(op(k), Fault::LoseAnswer).times(1),
        FaultSpec::PushTransport { op: k } => Rule::new(op(k), Fault::Transport).times(2),
        FaultSpec::FileFail { times } => Rule::new(Op::File, Fault::status(500)).times(*times),
        FaultSpec::EventsFail { times } => Rule::new(Op::Events, Fault::status(500)).times(*times),
    };
    r.faults.add(rule);
}

/// One run as `mountd --once` does it: local changes recorded, pull, push.
async fn once(e: Engine, limits: Limits) -> Result<(), String> {
    e.record_local(vec![String::new()])
        .await
        .map_err(|e| e.to_string())?;
    mountd::sync::attempt::attempt(&e, limits)
        .await
        .map_err(|e| e.to_string())?;
    mountd::cli::once::flush(&e)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// [`once`] in a runtime of its own: nothing of it runs on after it returns.
async fn run(r: &mut Rig) -> Result<(), String> {
    let limits = r.limits;
    r.isolated(move |e| once(e, limits)).await
}

/// [`run`], dropped (as a kill would drop it) as soon as a call hangs; nothing it started runs on
/// after this returns.
async fn run_until_hang(r: &mut Rig) {
    let limits = r.limits;
    r.until_hang(move |e| once(e, limits)).await;
}

fn remote_tree(r: &Rig) -> BTreeMap<String, Vec<u8>> {
    r.ws.files()
        .into_iter()
        .map(|(p, b)| (p.trim_start_matches('/').to_string(), b))
        .collect()
}

/// What changed on one side in a step: a path written with the bytes it had before the step (a
/// file renamed away and back, the same bytes saved again) did not change.
fn changes(
    before: &BTreeMap<String, Vec<u8>>,
    last: BTreeMap<String, Last>,
) -> BTreeMap<String, Last> {
    last.into_iter()
        .filter(|(p, l)| match l {
            Last::Wrote(x) => before.get(p) != Some(x),
            Last::Deleted => before.contains_key(p),
        })
        .collect()
}

/// What a path must hold after a step (`None`: absent), and the local bytes a conflict copy must hold.
type Expect = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What each path must hold after the step (`None`: absent), and whether a conflict copy of local
/// bytes must exist for it.
fn expected(
    before: &BTreeMap<String, Vec<u8>>,
    local: &BTreeMap<String, Last>,
    remote: &BTreeMap<String, Last>,
) -> BTreeMap<String, Expect> {
    let mut out = BTreeMap::new();
    let paths: BTreeSet<&String> = local.keys().chain(remote.keys()).collect();
    for p in paths {
        let at = match (local.get(p), remote.get(p)) {
            (Some(Last::Wrote(x)), Some(Last::Wrote(y))) if x != y => {
                (Some(y.clone()), Some(x.clone()))
            }
            (_, Some(Last::Wrote(y))) => (Some(y.clone()), None),
            (Some(Last::Wrote(x)), _) => (Some(x.clone()), None),
            (Some(Last::Deleted), _) | (_, Some(Last::Deleted)) => (None, None),
            (None, None) => (before.get(p).cloned(), None),
        };
        out.insert(p.clone(), at);
    }
    out
}

async fn run_case(initial: Vec<RemoteOp>, steps: Vec<Step>) -> Result<(), String> {
    let trace = std::env::var_os("MODEL_TRACE").is_some();
    if trace {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
        eprintln!("CASE initial {initial:?}\nsteps {steps:?}");
    }
    let mut r = Rig::new(3);
    r.cfg.push.direction = Direction::Mirror;
    r.cfg.allow_mass_delete = true;
    r.cfg.export_timeout = Duration::from_millis(150);
    r.limits.idle = Duration::from_secs(3);
    r.limits.stall_limit = 1000;
    let mut ignore = BTreeMap::new();
    for op in &initial {
        apply_remote(&r, op, &mut ignore);
    }
    run(&mut r).await.map_err(|e| format!("bootstrap: {e}"))?;
    for (n, s) in steps.iter().enumerate() {
        if trace {
            eprintln!("STEP {n}: {s:?}");
        }
        let before = remote_tree(&r);
        let writes_before = r.ws.counts().writes_per_path;
        let conflicts_before = r.state(|st| st.conflicts()).await.len();
        let (mut local, mut remote) = (BTreeMap::new(), BTreeMap::new());
        for op in &s.local {
            apply_local(&r.local(), op, &mut local);
        }
        for op in &s.remote {
            apply_remote(&r, op, &mut remote);
        }
        let remote_writes_by_test = r.ws.counts().writes_per_path;
        for f in &s.faults {
            add_fault(&r, f);
        }
        match s.interrupt {
            Some(at) => {
                r.faults.hang_at_call(at);
                run_until_hang(&mut r).await;
                r.kill();
            }
            None => {
                let _ = run(&mut r).await;
            }
        }
        if s.kill {
            r.kill();
        }
        r.faults.clear();
        // Quiesce: the faults are gone; one run pushes and pulls what is left, a second brings
        // mountd's own writes back through the feed.
        run(&mut r)
            .await
            .map_err(|e| format!("step {n}: quiesce: {e}"))?;
        run(&mut r)
            .await
            .map_err(|e| format!("step {n}: quiesce 2: {e}"))?;
        let (got_local, got_remote) = (r.actual(), remote_tree(&r));
        if got_local != got_remote {
            let differ: Vec<_> = got_local
                .keys()
                .chain(got_remote.keys())
                .filter(|k| got_local.get(*k) != got_remote.get(*k))
                .collect();
            return Err(format!("step {n}: local and remote differ at {differ:?}"));
        }
        let (local, remote) = (changes(&before, local), changes(&before, remote));
        let want = expected(&before, &local, &remote);
        let conflicts = r.state(|st| st.conflicts()).await;
        let new_conflicts = &conflicts[conflicts_before..];
        for (p, (at, copy)) in &want {
            if got_remote.get(p) != at.as_ref() {
                return Err(format!(
                    "step {n}: {p:?} holds {:?}, the rules say {at:?} (local {:?}, remote {:?})",
                    got_remote.get(p),
                    local.get(p),
                    remote.get(p)
                ));
            }
            if let Some(x) = copy {
                let kept = new_conflicts.iter().any(|c| {
                    c.path == *p && std::fs::read(r.local().join(&c.copy)).ok().as_ref() == Some(x)
                });
                if !kept {
                    return Err(format!(
                        "step {n}: the local version of {p:?} ({x:?}) was lost: no conflict copy holds it ({new_conflicts:?})"
                    ));
                }
            }
        }
        for c in new_conflicts {
            if !want.get(&c.path).is_some_and(|(_, copy)| copy.is_some()) {
                return Err(format!("step {n}: a conflict the step did not make: {c:?}"));
            }
        }
        // Exactly once: the writes mountd applied to each path in this step.
        let writes = r.ws.counts().writes_per_path;
        for p in want.keys() {
            let key = format!("/{p}");
            let n_of = |m: &BTreeMap<String, u64>| m.get(&key).copied().unwrap_or(0);
            let by_mountd = n_of(&writes) - n_of(&remote_writes_by_test);
            let pushed = match (local.get(p), remote.get(p)) {
                // The remote's version wins (or the same bytes on both sides): nothing to push.
                (_, Some(Last::Wrote(_))) => 0,
                // A new version, or an edit that wins over the remote's delete.
                (Some(Last::Wrote(_)), _) => 1,
                (Some(Last::Deleted), None) => 1,
                _ => 0,
            };
            if by_mountd != pushed {
                return Err(format!(
                    "step {n}: mountd wrote {p:?} {by_mountd} time(s), expected {pushed} (local {:?}, remote {:?}; before {:?})",
                    local.get(p),
                    remote.get(p),
                    writes_before.get(&key)
                ));
            }
        }
        let pending = r.state(|st| st.outbox_summary()).await.pending;
        if pending > 0 {
            return Err(format!("step {n}: {pending} change(s) left in the outbox"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn two_way_sync_converges_and_keeps_every_version((initial, steps) in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(run_case(initial, steps));
        rt.shutdown_timeout(Duration::from_secs(1));
        if let (Err(e), Some(_)) = (&r, std::env::var_os("MODEL_TRACE")) {
            eprintln!("CASE FAILED: {e}");
        }
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
