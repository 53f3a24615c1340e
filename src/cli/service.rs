//! The long-running service: bootstrap if needed, then serve (FUSE or plain directory) and apply the
//! events feed every interval (±20% jitter) until SIGTERM/SIGINT.
use crate::cli::args::RunArgs;
use crate::cli::exit;
use crate::cli::once as app;
use crate::cli::setup::{self, Setup};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Why the serve loop ended.
enum Stop {
    Signal,
    Fatal(i32),
}

fn notify(states: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(states);
}

/// ±20% jitter around the poll interval.
fn jittered(d: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

/// `mountd` without `--once`: the long-running service.
pub fn run(a: &RunArgs, rt: &tokio::runtime::Runtime) -> i32 {
    if a.mountpoint.is_none() && !a.no_fuse {
        eprintln!("mountd: error: the service needs --mountpoint MNT (or --no-fuse to keep --local-dir in sync as a plain directory)\nmountd: hint: use --once for a one-shot sync");
        return exit::USAGE;
    }
    let mut s = match setup::setup(a, false) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("mountd: error: {}", f.msg);
            return f.code;
        }
    };
    let code = rt.block_on(serve(a, &mut s));
    notify(&[sd_notify::NotifyState::Stopping]);
    code
}

async fn serve(a: &RunArgs, s: &mut Setup) -> i32 {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let healthy = Arc::new(AtomicBool::new(true));
    if let Some(period) = sd_notify::watchdog_enabled() {
        let h = healthy.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period / 2).await;
                if h.load(Ordering::Relaxed) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        });
    }
    let metrics = crate::metrics::Metrics::global();
    if let Some(addr) = a.metrics_addr {
        if let Err(e) = crate::cli::metrics_server::serve(addr).await {
            eprintln!("mountd: error: cannot serve metrics on {addr}: {e}");
            return exit::USAGE;
        }
    }

    // 1. Bootstrap (or catch up) until complete; the mount is not served before that.
    notify(&[sd_notify::NotifyState::Status("bootstrapping")]);
    let mut failures = 0u32;
    // A complete mirror is served at once (even if the server is down); catch-up happens in the loop.
    loop {
        match s.engine.read(|st| st.is_complete()).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                eprintln!("mountd: error: {e}");
                return exit::FAILED;
            }
        }
        let r = tokio::select! {
            r = app::attempt(s) => r,
            _ = term.recv() => return stopped("SIGTERM during bootstrap"),
            _ = int.recv() => return stopped("SIGINT during bootstrap"),
        };
        match r {
            Ok(at) => {
                tracing::info!(path = at.path, "mirror complete");
                break;
            }
            Err(e) => {
                let code = exit::code_for(&e);
                if code == exit::AUTH
                    || code == exit::MASS_DELETE
                    || matches!(e, crate::sync::engine::SyncError::GaveUp(_))
                {
                    eprintln!("mountd: error: {e}\nmountd: hint: {}", exit::hint_for(&e));
                    return code;
                }
                failures += 1;
                let wait = jittered(a.interval.min(Duration::from_secs(5) * failures));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "bootstrap attempt failed; resuming from the checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = term.recv() => return stopped("SIGTERM"),
                    _ = int.recv() => return stopped("SIGINT"),
                }
            }
        }
    }

    // 2. Serve.
    let mount = match (&a.mountpoint, a.no_fuse) {
        (Some(mnt), false) => {
            let opts = crate::view::fuse::MountOptions {
                fsname: format!("mountd:{}", a.workspace.clone().unwrap_or_default()),
                allow_other: a.allow_other,
                ttl: a.metadata_ttl,
                threads: 2,
                fs: crate::view::fs::FsOptions {
                    uid: a.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
                    gid: a.gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
                    file_mode: a.file_mode,
                    dir_mode: a.dir_mode,
                },
                data_mode: crate::view::fuse::DataMode::from_env(),
            };
            match crate::view::fuse::mount(mnt, s.engine.db().path(), s.engine.store().root(), opts)
            {
                Ok(m) => {
                    s.engine.set_sink(m.sink());
                    tracing::info!(mountpoint = %mnt.display(), "mounted read-only");
                    Some(m)
                }
                Err(e) => {
                    eprintln!("mountd: error: cannot mount {}: {e}\nmountd: hint: FUSE needs /dev/fuse (and fuse3's fusermount3 when not root); use --no-fuse on machines without it", mnt.display());
                    return exit::FAILED;
                }
            }
        }
        _ => {
            tracing::info!(dir = %s.engine.store().root().display(), "serving the mirror as a plain directory (--no-fuse)");
            None
        }
    };
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    // 3. Incremental sync every interval (±20%), audit by listing every audit interval.
    let mut last_audit = Instant::now();
    let mut consecutive_failures = 0u32;
    // The first pass runs at once: a restarted service catches up without waiting an interval.
    let mut wait = Duration::ZERO;
    let stop = loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = hup.recv() => tracing::info!("SIGHUP: syncing now"),
            _ = term.recv() => break Stop::Signal,
            _ = int.recv() => break Stop::Signal,
        }
        wait = jittered(a.interval);
        let audit_due = !a.audit_interval.is_zero() && last_audit.elapsed() >= a.audit_interval;
        let e = s.engine.clone();
        let progress = e.progress().clone();
        let started = Instant::now();
        let pass =
            crate::sync::watchdog::guarded(&progress, s.limits.idle, Duration::ZERO, async move {
                let traversal = e.read(|st| st.checkpoint()).await?.is_some();
                if audit_due || traversal {
                    e.audit().await?;
                } else {
                    e.sync_pass().await?;
                }
                e.retry_quarantine().await?;
                Ok(())
            });
        let r = tokio::select! {
            r = pass => r,
            // Abandon the in-flight page: everything committed stays, the rest is redone next start.
            _ = term.recv() => break Stop::Signal,
            _ = int.recv() => break Stop::Signal,
        };
        metrics.observe_pass(started.elapsed(), r.is_ok());
        match r {
            Ok(()) => {
                if audit_due {
                    last_audit = Instant::now();
                }
                consecutive_failures = 0;
                healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                consecutive_failures += 1;
                tracing::warn!(error = %e, consecutive_failures, "sync pass failed; retrying next interval");
                if exit::code_for(&e) == exit::AUTH {
                    eprintln!("mountd: error: {e}\nmountd: hint: {}", exit::hint_for(&e));
                    break Stop::Fatal(exit::AUTH);
                }
                if consecutive_failures >= s.limits.stall_limit {
                    healthy.store(false, Ordering::Relaxed);
                }
            }
        }
        if mount.as_ref().is_some_and(|m| !m.is_alive()) {
            eprintln!("mountd: error: the FUSE session ended (unmounted from outside?)");
            break Stop::Fatal(exit::FAILED);
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(m) = mount {
        m.unmount();
        tracing::info!("unmounted");
    }
    match stop {
        Stop::Signal => stopped("signal"),
        Stop::Fatal(code) => code,
    }
}

/// A signal ended the service: everything committed is persisted; exit 0.
fn stopped(why: &str) -> i32 {
    tracing::info!(why, "stopping: state persisted");
    exit::OK
}
