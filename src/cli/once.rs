//! `mountd --once`: one attempt under the watchdog (bootstrap or catch up), the stall guard, the final
//! summary and the exit code.
use crate::cli::args::RunArgs;
use crate::cli::exit;
use crate::cli::setup::{setup, want_bar, Setup};
use crate::sync::attempt::Attempt;
use crate::sync::engine::SyncError;

/// One attempt with this run's limits.
pub async fn attempt(s: &Setup) -> Result<Attempt, SyncError> {
    crate::sync::attempt::attempt(&s.engine, s.limits).await
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
    if let Some(p) = &a.metrics_file {
        crate::cli::metrics_server::write_file(p);
    }
    let e = &s.engine;
    e.progress().finish_bar();
    let secs = e.progress().elapsed().as_secs_f64();
    let summary = e
        .read(|st| {
            Ok((
                st.quarantined()?.len(),
                st.tracked_files()?,
                st.is_complete()?,
                st.unlisted()?,
            ))
        })
        .await;
    let (quarantined, tracked, complete, unlisted) = match summary {
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
            for d in &unlisted {
                eprintln!(
                    "mountd: directory {:?} could not be listed ({}); it keeps what it had and is listed again on the next run",
                    d.path, d.reason
                );
            }
            if quarantined > 0 {
                eprintln!("mountd: {quarantined} file(s) quarantined (not mirrored); see `mountd status` for paths and reasons");
            }
            if quarantined > 0 || !unlisted.is_empty() {
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
