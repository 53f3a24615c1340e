//! `mountd --once`: one attempt under the watchdog (bootstrap or catch up), the stall guard, the final
//! summary and the exit code.
use crate::cli::args::RunArgs;
use crate::cli::exit;
use crate::cli::setup::{setup, want_bar, Setup};
use crate::store::db::{MetaKey, State};
use crate::sync::engine::SyncError;

/// What a bootstrap-or-catch-up attempt did.
pub struct Attempt {
    pub path: &'static str,
}

/// One attempt under the watchdog (see [`crate::sync::engine::Engine::converge`]); updates the stall
/// counter and the recorded last error.
pub async fn attempt(s: &Setup) -> Result<Attempt, SyncError> {
    let e = s.engine.clone();
    let before = e.progress().checkpoints();
    let work = {
        let e = e.clone();
        async move { e.converge().await }
    };
    let result = crate::sync::watchdog::guarded(e.progress(), s.idle, s.cap, work).await;
    let progressed = e.progress().checkpoints() > before;
    let err_text = result
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let clean = progressed || result.is_ok();
    let runs = e
        .db()
        .run(move |st: &mut State| -> Result<u64, SyncError> {
            let runs = if clean { 0 } else { st.no_progress_runs()? + 1 };
            let mut b = st.batch()?;
            b.set_meta(MetaKey::NoProgressRuns, &runs.to_string())?;
            b.set_meta(MetaKey::LastError, &err_text)?;
            b.commit()?;
            Ok(runs)
        })
        .await;
    let runs = match (runs, &result) {
        (Ok(n), _) => n,
        // The attempt's own error says more than a failure to record it.
        (Err(_), Err(_)) => 0,
        (Err(db), Ok(_)) => return Err(db),
    };
    match result {
        Err(err) if runs >= s.stall_limit as u64 => Err(SyncError::GaveUp(format!(
            "no checkpoint progress in {runs} consecutive attempts; giving up instead of looping. Last error: {err}. \
             Check the server's health and `mountd status`; the mirror resumes from its checkpoint once the cause is fixed"
        ))),
        Err(err) => Err(err),
        Ok(path) => Ok(Attempt { path }),
    }
}

/// `mountd --once`.
pub async fn run_once(a: &RunArgs) -> i32 {
    let s = match setup(a, want_bar(a.progress)) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("mountd: error: {}", f.msg);
            return f.code;
        }
    };
    let r = attempt(&s).await;
    let e = &s.engine;
    e.progress().finish_bar();
    let secs = e.progress().elapsed().as_secs_f64();
    let summary = e
        .read(|st| {
            Ok((
                st.quarantined()?.len(),
                st.tracked_files()?,
                st.is_complete()?,
            ))
        })
        .await;
    let (quarantined, tracked, complete) = match summary {
        Ok(v) => v,
        Err(err) => {
            eprintln!("mountd: error: {err}");
            return exit::FAILED;
        }
    };
    match r {
        Ok(at) => {
            e.progress().final_write("complete");
            println!(
                "mountd: complete: {} files ({} in mirror), {} bytes written or verified in {:.1}s via {}; {} quarantined",
                e.progress().files(),
                tracked,
                e.progress().bytes(),
                secs,
                at.path,
                quarantined
            );
            if quarantined > 0 {
                eprintln!("mountd: {quarantined} file(s) quarantined (not mirrored); see `mountd status` for paths and reasons");
                exit::QUARANTINED
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
                "mountd: incomplete: {} files written or verified in {:.1}s; {} quarantined; bootstrap complete: {}",
                e.progress().files(),
                secs,
                quarantined,
                complete
            );
            exit::code_for(&err)
        }
    }
}
