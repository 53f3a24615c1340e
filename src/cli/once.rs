//! Wiring: turn validated arguments into an engine, run `--once`, report, and map outcomes to exit codes.
use crate::cli::args::{clamp_export_timeout, validate_timeouts, ProgressMode, RunArgs};
use crate::remote::retry::RetryPolicy;
use crate::remote::{ClientConfig, RemoteClient};
use crate::store::db::{Identity, State};
use crate::store::LocalStore;
use crate::sync::engine::{Engine, SyncConfig, SyncError};
use crate::sync::progress::Progress;
use crate::sync::statefile::{StateFile, StateFileContent};
use std::path::PathBuf;
use std::sync::Arc;

/// Documented exit codes (see `mountd --help`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const AUTH: i32 = 3;
    pub const STALLED: i32 = 4;
    pub const QUARANTINED: i32 = 5;
    pub const MASS_DELETE: i32 = 6;
}

/// A failure before or outside the engine, with its exit code.
#[derive(Debug)]
pub struct Fatal {
    pub code: i32,
    pub msg: String,
}

impl Fatal {
    pub fn usage(msg: impl Into<String>) -> Fatal {
        Fatal {
            code: exit::USAGE,
            msg: msg.into(),
        }
    }
}

pub fn state_db_path(local_dir: &std::path::Path, explicit: Option<&PathBuf>) -> PathBuf {
    explicit.cloned().unwrap_or_else(|| {
        local_dir
            .join(crate::store::paths::RESERVED_DIR)
            .join("state.db")
    })
}

fn read_token(a: &RunArgs) -> Result<String, Fatal> {
    if let Some(p) = &a.token_file {
        let t = std::fs::read_to_string(p)
            .map_err(|e| Fatal::usage(format!("cannot read --token-file {}: {e}", p.display())))?;
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(Fatal::usage(format!(
                "--token-file {} is empty",
                p.display()
            )));
        }
        return Ok(t);
    }
    match std::env::var("RELAYFILE_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(Fatal::usage(
            "no token: pass --token-file PATH or set RELAYFILE_TOKEN",
        )),
    }
}

/// Everything a run needs, built and validated before the first request.
pub struct Setup {
    pub engine: Engine,
    pub idle: std::time::Duration,
    pub cap: std::time::Duration,
    pub stall_limit: u32,
    pub _lock: crate::cli::lock::MirrorLock,
}

pub fn setup(a: &RunArgs, interactive_bar: bool) -> Result<Setup, Fatal> {
    let base_url = a
        .base_url
        .clone()
        .ok_or_else(|| Fatal::usage("missing --base-url (or RELAYFILE_BASE_URL)"))?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(Fatal::usage(format!(
            "--base-url {base_url:?} must start with http:// or https://"
        )));
    }
    let workspace = a
        .workspace
        .clone()
        .filter(|w| !w.is_empty())
        .ok_or_else(|| Fatal::usage("missing --workspace (or RELAYFILE_WORKSPACE)"))?;
    let local_dir = a
        .local_dir
        .clone()
        .ok_or_else(|| Fatal::usage("missing --local-dir (or RELAYFILE_LOCAL_DIR)"))?;
    let remote_root = crate::store::paths::normalize_root(&a.remote_path)
        .map_err(|e| Fatal::usage(format!("--remote-path {:?}: {e}", a.remote_path)))?;
    validate_timeouts(a).map_err(Fatal::usage)?;
    let token = read_token(a)?;
    let (export_timeout, clamp_warning) = clamp_export_timeout(
        a.export_timeout,
        a.bootstrap_idle_timeout,
        a.bootstrap_timeout,
    );
    if let (Some(w), false) = (clamp_warning, a.no_export) {
        tracing::warn!("{w}");
    }

    // The state file exists before the first network request.
    let state_file = match &a.state_file {
        Some(p) => Some(
            StateFile::create(
                p,
                &StateFileContent {
                    phase: "starting".into(),
                    mount_kind: a.mount_kind.as_str().into(),
                    ..Default::default()
                },
            )
            .map_err(|e| {
                Fatal::usage(format!("cannot create --state-file {}: {e}", p.display()))
            })?,
        ),
        None => None,
    };

    let store = LocalStore::open(&local_dir).map_err(|e| {
        Fatal::usage(format!(
            "cannot use --local-dir {}: {e}",
            local_dir.display()
        ))
    })?;
    let db = state_db_path(store.root(), a.state_db.as_ref());
    let lock = crate::cli::lock::acquire(&db).map_err(Fatal::usage)?;
    let identity = Identity {
        base_url: base_url.trim_end_matches('/').to_string(),
        workspace: workspace.clone(),
        remote_root: remote_root.clone(),
        local_dir: store.root().display().to_string(),
    };
    let state = State::open(&db, &identity).map_err(|e| Fatal::usage(e.to_string()))?;

    let client = RemoteClient::new(&ClientConfig {
        base_url,
        workspace,
        token,
        connect_timeout: a.connect_timeout,
        read_timeout: a.read_timeout,
        retry: RetryPolicy {
            max_retries: a.retries,
            max_wait: a.max_retry_wait,
            ..Default::default()
        },
    })
    .map_err(Fatal::usage)?;

    let bar = interactive_bar.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:8} [{bar:30}] {pos}/{len} files {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let _ = crate::sync::progress::BAR.set(bar.clone());
        bar
    });
    let progress = Progress::new(state_file, a.mount_kind.as_str(), bar);
    let engine = Engine {
        client: Arc::new(client),
        store: Arc::new(store),
        state,
        cfg: SyncConfig {
            remote_root,
            tree_depth: a.tree_depth,
            concurrency: a.read_concurrency as usize,
            use_export: !a.no_export,
            export_timeout,
            allow_mass_delete: a.allow_mass_delete,
        },
        progress,
        sink: None,
    };
    Ok(Setup {
        engine,
        idle: a.bootstrap_idle_timeout,
        cap: a.bootstrap_timeout,
        stall_limit: a.stall_limit,
        _lock: lock,
    })
}

pub fn want_bar(mode: ProgressMode) -> bool {
    use std::io::IsTerminal;
    match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    }
}

/// What a bootstrap-or-catch-up attempt did.
pub struct Attempt {
    pub path: &'static str,
}

/// One attempt under the watchdog: bootstrap if incomplete (or a traversal is pending), else catch up
/// from the feed; then retry quarantined files. Updates the stall counter.
pub async fn attempt(s: &mut Setup) -> Result<Attempt, SyncError> {
    let e = &mut s.engine;
    let before = e.progress.checkpoints();
    let result = crate::sync::watchdog::guarded(&e.progress.clone(), s.idle, s.cap, async {
        // Files quarantined by an earlier run are retried once; a bootstrap retries nothing it just failed.
        let path = if !e.state.is_complete() {
            e.bootstrap().await?.as_str()
        } else if e.state.checkpoint().is_some() {
            e.audit().await?;
            "tree"
        } else {
            e.retry_quarantine().await?;
            e.sync_pass().await?;
            "catch-up"
        };
        Ok(Attempt { path })
    })
    .await;
    let progressed = e.progress.checkpoints() > before;
    let runs = if progressed || result.is_ok() {
        0
    } else {
        e.state
            .meta("no_progress_runs")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1
    };
    let err_text = result
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    if let Ok(mut b) = e.state.batch() {
        let _ = b.set_meta("no_progress_runs", &runs.to_string());
        let _ = b.set_meta("last_error", &err_text);
        let _ = b.commit();
    }
    match result {
        Err(err) if runs >= s.stall_limit as u64 => Err(SyncError::GaveUp(format!(
            "no checkpoint progress in {runs} consecutive attempts; giving up instead of looping. Last error: {err}. \
             Check the server's health and `mountd status`; the mirror resumes from its checkpoint once the cause is fixed"
        ))),
        other => other,
    }
}

pub fn exit_code_for(e: &SyncError) -> i32 {
    match e {
        SyncError::Remote(r) if r.is_auth() || r.status() == Some(403) => exit::AUTH,
        SyncError::Stalled(_) | SyncError::GaveUp(_) => exit::STALLED,
        SyncError::MassDelete { .. } => exit::MASS_DELETE,
        _ => exit::FAILED,
    }
}

pub fn hint_for(e: &SyncError) -> &'static str {
    match e {
        SyncError::Remote(r) => r.hint(),
        SyncError::Stalled(_) | SyncError::GaveUp(_) => "run again to resume from the checkpoint; if it keeps stalling, check the server (or raise --bootstrap-idle-timeout)",
        SyncError::MassDelete { .. } => "check that --base-url, --workspace and --remote-path point at the right tree",
        SyncError::State(_) => "the state database is unusable; move it aside to start over (files on disk are kept and re-verified by hash)",
        SyncError::Io(_) => "check free space and permissions of --local-dir",
    }
}

/// `mountd --once`.
pub async fn run_once(a: &RunArgs) -> i32 {
    let mut s = match setup(a, want_bar(a.progress)) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("mountd: error: {}", f.msg);
            return f.code;
        }
    };
    let r = attempt(&mut s).await;
    let e = &s.engine;
    e.progress.finish_bar();
    let secs = e.progress.elapsed().as_secs_f64();
    let quarantined = e.state.quarantined().len();
    match r {
        Ok(at) => {
            e.progress.final_write("complete");
            println!(
                "mountd: complete: {} files ({} in mirror), {} bytes written or verified in {:.1}s via {}; {} quarantined",
                e.progress.files(),
                e.state.tracked_files(),
                e.progress.bytes(),
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
            e.progress.set_error(Some(err.to_string()));
            e.progress.final_write("failed");
            tracing::error!(error = %err, "run failed");
            eprintln!("mountd: error: {err}\nmountd: hint: {}", hint_for(&err));
            println!(
                "mountd: incomplete: {} files written or verified in {:.1}s; {} quarantined; bootstrap complete: {}",
                e.progress.files(),
                secs,
                quarantined,
                e.state.is_complete()
            );
            exit_code_for(&err)
        }
    }
}
