//! `mountd --once`: in mirror mode, the local changes made while mountd was not running are recorded
//! first (so the pull never overwrites them), then one attempt under the watchdog (bootstrap or catch
//! up), then what is pending is pushed; the final summary and the exit code cover both directions.
//! `--push-local-once` and `--flush-outbox-once` push without pulling.
use crate::cli::args::{PushOnce, RunArgs};
use crate::cli::exit;
use crate::cli::setup::{setup, want_bar, Setup};
use crate::store::db::{Conflict, OutboxSummary, WriteIssue};
use crate::sync::attempt::Attempt;
use crate::sync::engine::{Engine, SyncError};
use crate::sync::push::pusher::Pushed;

/// One attempt with this run's limits.
pub async fn attempt(s: &Setup) -> Result<Attempt, SyncError> {
    crate::sync::attempt::attempt(&s.engine, s.limits).await
}

/// Push until the outbox is empty or a round sends nothing (what is left waits for an operator, a
/// changed file or a later run). A few rounds at most: a change whose base the remote deleted goes
/// again as a new file in the next round.
pub async fn flush(e: &Engine) -> Result<Pushed, SyncError> {
    let mut total = Pushed::default();
    for _ in 0..3 {
        let r = e.push_pending().await?;
        total.files += r.files;
        total.requests += r.requests;
        total.conflicts += r.conflicts;
        total.failed += r.failed;
        total.held = r.held.clone();
        let empty = e.read(|st| st.outbox_is_empty()).await?;
        if empty || r.requests == 0 {
            break;
        }
    }
    Ok(total)
}

/// `mountd --once` (and the push-only one-shots).
pub async fn run_once(a: &RunArgs) -> i32 {
    let s = match setup(a, want_bar(a.progress)) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("mountd: error: {}", f.msg);
            return f.code;
        }
    };
    let e = &s.engine;
    let two_way = e.config().push.two_way();
    let push_only = a.push_once();
    let r = async {
        if two_way && push_only != Some(PushOnce::FlushOutbox) {
            e.record_local(vec![String::new()]).await?;
        }
        let at = match push_only {
            None => Some(attempt(&s).await?),
            Some(_) => None,
        };
        let pushed = if two_way { Some(flush(e).await?) } else { None };
        Ok::<_, SyncError>((at, pushed))
    }
    .await;
    if let Some(p) = &a.metrics_file {
        crate::cli::metrics_server::write_file(p);
    }
    e.progress().finish_bar();
    let secs = e.progress().elapsed().as_secs_f64();
    let summary = e
        .read(|st| {
            Ok((
                st.quarantined()?.len(),
                st.tracked_files()?,
                st.is_complete()?,
                st.unlisted()?,
                st.outbox_summary()?,
                st.conflicts()?,
                st.write_issues()?,
            ))
        })
        .await;
    let (quarantined, tracked, complete, unlisted, outbox, conflicts, issues) = match summary {
        Ok(v) => v,
        Err(err) => {
            eprintln!("mountd: error: {err}");
            return exit::FAILED;
        }
    };
    crate::metrics::Metrics::global().set_outbox(&outbox);
    e.progress().set_push(&outbox);
    match r {
        Ok((at, pushed)) => {
            e.progress().final_write("complete");
            if let Some(at) = at {
                println!(
                    "mountd: complete: {} files ({} in mirror), {} bytes written or verified in {:.1}s via {}; {} quarantined",
                    e.progress().files(),
                    tracked,
                    e.progress().bytes(),
                    secs,
                    at.path,
                    quarantined
                );
            }
            if let Some(p) = &pushed {
                println!(
                    "mountd: pushed {} local change(s) in {} request(s); {} pending",
                    p.files, p.requests, outbox.pending
                );
            }
            for d in &unlisted {
                eprintln!(
                    "mountd: directory {:?} could not be listed ({}); it keeps what it had and is listed again on the next run",
                    d.path, d.reason
                );
            }
            if quarantined > 0 {
                eprintln!("mountd: {quarantined} file(s) quarantined (not mirrored); see `mountd status` for paths and reasons");
            }
            let pushed_ok = report_push(e, two_way, &outbox, &conflicts, &issues);
            if outbox.held > 0 {
                exit::MASS_DELETE
            } else if quarantined > 0 || !unlisted.is_empty() || pushed_ok == PushState::Unsettled {
                exit::QUARANTINED
            } else if pushed_ok == PushState::Pending {
                exit::FAILED
            } else {
                exit::OK
            }
        }
        Err(err) => {
            e.progress().set_error(Some(err.to_string()));
            e.progress().final_write("failed");
            tracing::error!(error = %err, "run failed");
            eprintln!(
                "mountd: error: {err}\nmountd: hint: {}",
                exit::hint_for(&err)
            );
            println!(
                "mountd: incomplete: {} files written or verified in {:.1}s; {} quarantined; bootstrap complete: {}; {} local change(s) pending",
                e.progress().files(),
                secs,
                quarantined,
                complete,
                outbox.pending
            );
            exit::code_for(&err)
        }
    }
}

#[derive(PartialEq, Eq)]
enum PushState {
    Converged,
    /// Conflicts, write-denied or too-large files: named, exit 5.
    Unsettled,
    /// Changes that could not be pushed (they are retried by the next run).
    Pending,
}

/// Say what keeps the push side from being converged, naming each path.
fn report_push(
    e: &Engine,
    two_way: bool,
    outbox: &OutboxSummary,
    conflicts: &[Conflict],
    issues: &[WriteIssue],
) -> PushState {
    use crate::store::db::IssueKind;
    for c in conflicts {
        eprintln!(
            "mountd: conflict: {} ({}; local version made on {}, remote now {}): the local version is kept at {}; settle it with `mountd conflicts resolve {} --keep local|remote`",
            c.path,
            c.reason,
            c.base_revision.as_deref().unwrap_or("(new file)"),
            c.remote_revision.as_deref().unwrap_or("(unknown)"),
            e.store().abs(&c.copy).display(),
            c.path
        );
    }
    // In pull-only mode a conflict copy is a report, not something left to push.
    let mut blocking = two_way && !conflicts.is_empty();
    for i in issues {
        let what = match i.kind {
            IssueKind::Denied => "write denied",
            IssueKind::TooLarge => "too large",
            IssueKind::Unsupported => "not pushed",
        };
        eprintln!("mountd: {what}: {}: {}", i.path, i.detail);
        blocking |= i.kind != IssueKind::Unsupported;
    }
    if outbox.held > 0 {
        let why = e
            .push_state()
            .held
            .clone()
            .unwrap_or_else(|| "the mass-deletion guard".into());
        eprintln!(
            "mountd: {} local delete(s) held: {why}; nothing was deleted on the remote; if intended, run again with --allow-mass-delete (or `mountd outbox allow-deletes`)",
            outbox.held
        );
    }
    if blocking {
        PushState::Unsettled
    } else if outbox.pending > outbox.held {
        eprintln!(
            "mountd: {} local change(s) could not be pushed yet; see `mountd status`; the next run retries them",
            outbox.pending - outbox.held
        );
        PushState::Pending
    } else {
        PushState::Converged
    }
}
