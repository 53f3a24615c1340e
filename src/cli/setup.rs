//! Wiring: turn validated arguments into an engine (HTTP remote with retries, local store, database
//! thread, progress), checking everything a run needs before its first request.
use crate::cli::args::{clamp_export_timeout, validate_timeouts, ProgressMode, RunArgs};
use crate::cli::exit;
use crate::remote::http::{ClientConfig, HttpRemote};
use crate::remote::retry::{RetryPolicy, Retrying};
use crate::store::db::{Db, Identity, State};
use crate::store::LocalStore;
use crate::sync::attempt::Limits;
use crate::sync::engine::{Engine, SyncConfig};
use crate::sync::progress::Progress;
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
    pub limits: Limits,
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
    let db = Db::spawn(state).map_err(|e| Fatal::usage(e.to_string()))?;

    let http = HttpRemote::new(&ClientConfig {
        base_url,
        workspace,
        token,
        connect_timeout: a.connect_timeout,
        read_timeout: a.read_timeout,
    })
    .map_err(Fatal::usage)?;
    let remote = Retrying::new(
        http,
        RetryPolicy {
            max_retries: a.retries,
            max_wait: a.max_retry_wait,
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
    let engine = Engine::new(
        Arc::new(remote),
        Arc::new(store),
        db,
        SyncConfig {
            remote_root,
            tree_depth: a.tree_depth,
            concurrency: a.read_concurrency as usize,
            use_export: !a.no_export,
            export_timeout,
            allow_mass_delete: a.allow_mass_delete,
            memory_budget: a.memory_budget as usize,
        },
        progress,
    );
    Ok(Setup {
        engine,
        limits: Limits {
            idle: a.bootstrap_idle_timeout,
            cap: a.bootstrap_timeout,
            stall_limit: a.stall_limit,
        },
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
