//! Wiring: turn validated arguments into an engine (HTTP remote with retries, local store, database
//! thread, progress), checking everything a run needs before its first request.
use crate::cli::args::{validate_timeouts, ProgressMode, PushOnce, RunArgs};
use crate::cli::exit;
use crate::remote::http::{ClientConfig, HttpRemote, TokenSource};
use crate::remote::retry::{RetryPolicy, Retrying};
use crate::store::db::{Db, Identity, State};
use crate::store::LocalStore;
use crate::sync::attempt::Limits;
use crate::sync::engine::{Engine, SyncConfig};
use crate::sync::progress::Progress;
use crate::sync::push::{token_fingerprint, Direction, PushConfig};
use crate::sync::statefile::{StateFile, StateFileContent};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

pub fn state_db_path(local_dir: &Path, explicit: Option<&PathBuf>) -> PathBuf {
    explicit.cloned().unwrap_or_else(|| {
        local_dir
            .join(crate::store::paths::RESERVED_DIR)
            .join("state.db")
    })
}

/// The progress of the running `--once`, for the signal handler's final state-file write.
pub static PROGRESS: std::sync::OnceLock<Progress> = std::sync::OnceLock::new();

/// Everything validated before a run writes anything or makes a request.
pub struct Preflight {
    pub base_url: String,
    pub workspace: String,
    pub local_dir: PathBuf,
    pub remote_root: String,
    pub token: TokenSource,
    pub read_timeout: std::time::Duration,
    /// Where the state DB will be (absolute; see [`crate::cli::safety::state_db_for`]).
    pub state_db: PathBuf,
    /// The FUSE mountpoint, when this run mounts one.
    pub mountpoint: Option<PathBuf>,
}

/// Validate a resolved configuration (see [`crate::cli::compat::resolve`]) and refuse dangerous ones.
/// Reads only (the token source included); writes nothing and sends nothing.
pub fn preflight(a: &RunArgs) -> Result<Preflight, Fatal> {
    let base_url = a
        .base_url
        .clone()
        .filter(|u| !u.is_empty())
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
    let (read_timeout, _) =
        crate::cli::args::resolve_read_timeout(a.read_timeout, a.bootstrap_idle_timeout);
    validate_timeouts(a, read_timeout).map_err(Fatal::usage)?;
    let token = crate::cli::compat::token_source(a).map_err(Fatal::usage)?;
    token.load().map_err(Fatal::usage)?;
    let state_db = crate::cli::safety::state_db_for(
        &local_dir,
        a.state_db.as_ref(),
        a.state_dir.as_ref(),
        Some(&workspace),
    )
    .map_err(Fatal::usage)?;
    let state_db = crate::cli::safety::abs_path(&state_db);
    let mountpoint = if a.once || a.no_fuse {
        None
    } else {
        a.mountpoint.clone()
    };
    crate::cli::safety::check(&crate::cli::safety::Plan {
        local_dir: &local_dir,
        state_db: &state_db,
        mountpoint: mountpoint.as_deref(),
        allow_non_empty: a.allow_non_empty,
        adopt: a.adopt,
    })
    .map_err(Fatal::usage)?;
    Ok(Preflight {
        base_url,
        workspace,
        local_dir,
        remote_root,
        token,
        read_timeout,
        state_db,
        mountpoint,
    })
}

/// The start-up line: version and the effective configuration (never the token).
pub fn log_startup(a: &RunArgs, p: &Preflight) {
    let ms = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let or_dash = |p: Option<&PathBuf>| {
        p.map(|f| f.display().to_string())
            .unwrap_or_else(|| "-".into())
    };
    tracing::info!(
        mode = if a.once {
            "once"
        } else if let Some(PushOnce::FlushOutbox) = a.push_once() {
            "flush-outbox-once"
        } else if a.push_once().is_some() {
            "push-local-once"
        } else if p.mountpoint.is_some() {
            "service (FUSE)"
        } else {
            "service (plain directory)"
        },
        base_url = %p.base_url,
        workspace = %p.workspace,
        remote_path = %p.remote_root,
        local_dir = %p.local_dir.display(),
        state_db = %p.state_db.display(),
        state_file = %or_dash(a.state_file.as_ref()),
        mountpoint = %or_dash(p.mountpoint.as_ref()),
        mount_kind = a.mount_kind.as_str(),
        token = %p.token.describe(),
        idle_timeout = %ms(a.bootstrap_idle_timeout),
        hard_cap = %ms(a.bootstrap_timeout),
        export_timeout = %if a.no_export { "off".to_string() } else { ms(a.export_timeout) },
        read_timeout = %ms(p.read_timeout),
        connect_timeout = %ms(a.connect_timeout),
        read_concurrency = a.read_concurrency,
        interval = %ms(a.interval),
        interval_jitter = a.interval_jitter,
        audit_interval = %if a.audit_interval.is_zero() { "off".to_string() } else { ms(a.audit_interval) },
        stall_limit = a.stall_limit,
        mass_delete_ratio = a.mass_delete_ratio,
        adopt = a.adopt,
        sync_mode = if a.read_only { "pull-only" } else { "mirror" },
        max_push_bytes = a.max_push_bytes,
        "mountd {} starting",
        env!("CARGO_PKG_VERSION")
    );
}

/// Everything a run needs, built and validated before the first request.
pub struct Setup {
    pub engine: Engine,
    /// How to reach the workspace (for the realtime stream, which is not a [`crate::remote::Remote`]
    /// call).
    pub client: ClientConfig,
    pub limits: Limits,
    pub _lock: crate::cli::lock::MirrorLock,
}

pub fn setup(a: &RunArgs, interactive_bar: bool) -> Result<Setup, Fatal> {
    let pre = preflight(a)?;
    log_startup(a, &pre);
    let Preflight {
        base_url,
        workspace,
        local_dir,
        remote_root,
        token,
        read_timeout,
        state_db,
        mountpoint: _,
    } = pre;
    let export_timeout = a.export_timeout;

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
    // Derived before the mirror existed (see `safety::abs_path`): the same path now that it does.
    let db = state_db;
    let lock = crate::cli::lock::acquire(&db).map_err(Fatal::usage)?;
    let identity = Identity {
        base_url: base_url.trim_end_matches('/').to_string(),
        workspace: workspace.clone(),
        remote_root: remote_root.clone(),
        local_dir: store.root().display().to_string(),
    };
    let state = State::open(&db, &identity).map_err(|e| Fatal::usage(e.to_string()))?;
    let db = Db::spawn(state).map_err(|e| Fatal::usage(e.to_string()))?;

    let client = ClientConfig {
        base_url,
        workspace,
        token,
        connect_timeout: a.connect_timeout,
        read_timeout,
    };
    let http = HttpRemote::new(&client).map_err(Fatal::usage)?;
    let remote = Retrying::new(
        http,
        RetryPolicy {
            max_retries: a.retries,
            max_wait: a.max_retry_wait,
            // A request is paced by 429s with Retry-After for at most the idle timeout before they
            // count as retries (an attempt without progress is stopped by the watchdog first).
            max_pacing: a.bootstrap_idle_timeout,
            ..Default::default()
        },
    );

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
    let _ = PROGRESS.set(progress.clone());
    let engine = Engine::new(
        Arc::new(remote),
        Arc::new(store),
        db,
        SyncConfig {
            remote_root,
            tree_depth: a.tree_depth,
            concurrency: a
                .read_concurrency
                .clamp(1, crate::cli::compat::MAX_CONCURRENCY) as usize,
            use_export: !a.no_export,
            export_timeout,
            allow_mass_delete: a.allow_mass_delete,
            memory_budget: a.memory_budget as usize,
            mass_delete_ratio: a.mass_delete_ratio,
            force_audit: a.force_audit,
            push: push_config(a, &client),
        },
        progress,
    );
    Ok(Setup {
        engine,
        client,
        limits: Limits {
            idle: a.bootstrap_idle_timeout,
            cap: a.bootstrap_timeout,
            stall_limit: a.stall_limit,
        },
        _lock: lock,
    })
}

/// The push side's settings from the arguments. Local changes come from the writable FUSE view, or
/// from a plain-directory mirror (behind a FUSE view the mirror directory is mountd's own store).
fn push_config(a: &RunArgs, client: &ClientConfig) -> PushConfig {
    let d = PushConfig::default();
    PushConfig {
        direction: if a.read_only {
            Direction::PullOnly
        } else {
            Direction::Mirror
        },
        max_body_bytes: a.max_push_bytes as usize,
        token_id: client.token.load().ok().map(|t| token_fingerprint(&t)),
        file_settle: a.compat.file_settle_delay.unwrap_or(d.file_settle),
        atomic_save_settle: a
            .compat
            .atomic_save_settle_delay
            .unwrap_or(d.atomic_save_settle),
        batch_window: a.compat.change_batch_window.unwrap_or(d.batch_window),
    }
}

pub fn want_bar(mode: ProgressMode) -> bool {
    use std::io::IsTerminal;
    match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    }
}
