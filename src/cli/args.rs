//! Command line and environment (`RELAYFILE_*` aliases of the reference daemon, relayfile-mount).
//!
//! Values follow Go's parsing, like the reference daemon: durations such as `45s`, `1m30s`, `300ms`,
//! `0` ([`parse_duration`]); booleans `1/0/true/false/t/f/yes/no/on/off` in any case, also in the
//! `--flag=false` form ([`parse_bool`]). The reference daemon's flags that mean the same here are
//! mapped onto mountd's settings, the others are accepted with one warning, in [`crate::cli::compat`]
//! (the whole table: docs/COMPATIBILITY.md).
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Parse a Go duration (`45s`, `1m30s`, `1.5h`, `300ms`, `-1s`, `0`); `off` means zero ("disabled").
/// Returns whole-value sign and magnitude so callers can give a negative value its meaning.
pub fn parse_go_duration(s: &str) -> Result<(bool, Duration), String> {
    let t = s.trim();
    let err = || format!("{s:?} is not a duration (use Go syntax such as 45s, 1m30s, 300ms)");
    if t.eq_ignore_ascii_case("off") {
        return Ok((false, Duration::ZERO));
    }
    let (neg, mut rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if rest == "0" {
        return Ok((false, Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let v: f64 = num.parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += v * secs;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(err());
    }
    Ok((neg && total > 0.0, Duration::from_secs_f64(total)))
}

/// `auto`, `uring` or `dev`.
pub fn parse_transport(s: &str) -> Result<crate::view::fuse::Transport, String> {
    crate::view::fuse::Transport::parse(s)
        .ok_or_else(|| format!("unknown FUSE transport '{s}' (expected auto, uring or dev)"))
}

/// `auto`, `passthrough`, `page-cache` or `direct-io`.
pub fn parse_data_mode(s: &str) -> Result<crate::view::fuse::DataMode, String> {
    crate::view::fuse::DataMode::parse(s)
        .ok_or_else(|| format!("{s:?} is not auto, passthrough, page-cache or direct-io"))
}

/// A non-negative Go duration; `0` and `off` mean "disabled" where the flag says so.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match parse_go_duration(s)? {
        (false, d) => Ok(d),
        (true, _) => Err(format!("{s:?} is negative (use 0 to disable)")),
    }
}

/// A Go duration where a negative value (`-1`, `-1s`) means "off", like `0`: returned as zero.
pub fn parse_duration_or_off(s: &str) -> Result<Duration, String> {
    if s.trim() == "-1" {
        return Ok(Duration::ZERO);
    }
    match parse_go_duration(s)? {
        (true, _) => Ok(Duration::ZERO),
        (false, d) => Ok(d),
    }
}

/// A Go duration, accepted in any form the reference accepts (negative values are kept as zero; the
/// caller decides what an out-of-range value means).
pub fn parse_duration_lenient(s: &str) -> Result<Duration, String> {
    Ok(match parse_go_duration(s)? {
        (true, _) => Duration::ZERO,
        (false, d) => d,
    })
}

/// Go's `strconv.ParseBool` plus `yes/no/on/off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Ok(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "{s:?} is not a boolean (use 1/0, true/false, t/f, yes/no or on/off)"
        )),
    }
}

/// A ratio between 0 and 1 (`0.3`).
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1 (such as 0.2)"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?} is not between 0 and 1"));
    }
    Ok(v)
}

/// A bearer token given directly. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_string()))
}

#[derive(Debug, Parser)]
#[command(
    name = "mountd",
    version,
    about = "Mirror a relayfile workspace to local disk, keep it in sync both ways, and serve it over FUSE",
    long_about = "mountd copies a remote relayfile workspace onto local disk and keeps it in sync.\n\n\
    With --once it bootstraps (or catches up) the mirror and exits: 0 only when the mirror is complete.\n\
    Without --once it runs as a service: bootstrap if needed, then mount a FUSE view at --mountpoint\n\
    (writable in mirror mode, the default: local changes are pushed; read-only with --read-only) or,\n\
    with --no-fuse / --mode poll, keep --local-dir in sync as a plain directory, and apply the events\n\
    feed and the realtime stream.\n\n\
    mountd is a drop-in for relayfile-mount: its flags and RELAYFILE_* variables are accepted (see\n\
    docs/COMPATIBILITY.md). Durations use Go syntax (45s, 1m30s, 300ms); booleans accept\n\
    1/0/true/false/t/f/yes/no and --flag=false.",
    after_help = "Run `mountd check ...` to validate a configuration without any network request.",
    after_long_help = concat!(
        "Run `mountd check ...` to validate a configuration without any network request.\n\n",
        "LOGGING:\n  Logs go to stderr: human-readable (colours only on a terminal) or --log-format json.\n  The filter is, first match wins: -v/-vv/-q/-qq on the command line (debug, trace, warn, error),\n  then MOUNTD_LOG, then RUST_LOG (tracing EnvFilter syntax, e.g. info,mountd=debug), then info.\n  The token is never logged.\n\n",
        "EXIT CODES:\n  0    complete and consistent (mirror mode: both directions converged)\n  1    failed (remote or local error after retries; see the diagnosis)\n  2    usage or configuration error (including a dangerous configuration, a state DB of another\n       mirror, or a lock held by another mountd)\n  3    authentication or authorization failure (401/403): check the token and workspace\n  4    stalled: no progress within the idle timeout, hard cap reached, or no progress in several runs\n  5    complete except for quarantined files, conflicts, write-denied or too-large files (see\n       `mountd status`, `mountd conflicts`)\n  6    refused: the completion would delete too much of the mirror, or local deletes are held\n       (see --allow-mass-delete, `mountd outbox allow-deletes`)\n  130  --once interrupted by SIGINT (143: by SIGTERM); the state is kept, the next run resumes"
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print where a mirror stands (health, daemon, last success, last error, counts, quarantined files).
    #[command(after_help = crate::cli::status::EXIT_CODES_HELP)]
    Status(StatusArgs),
    /// Validate a configuration (flags, environment, paths, token source) and exit: 0 when a run
    /// would start. No network request, nothing written.
    Check(Box<CheckArgs>),
    /// Re-tie a mirror to new settings (e.g. after a typo in --base-url) without losing its files:
    /// forget the state DB's identity, bootstrap-complete flag and events cursor, so the next run
    /// verifies every file by hash and fetches only what differs.
    Reset(MirrorArgs),
    /// Two-way sync: list the conflicts (local versions kept aside when the remote's version took
    /// their path), or settle one: `mountd conflicts resolve PATH --keep local|remote`.
    Conflicts(ConflictsArgs),
    /// Two-way sync: the local changes not yet pushed; `mountd outbox allow-deletes` lets local
    /// deletes held by the mass-deletion guard go.
    Outbox(OutboxArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout, e.g. `mountd man > mountd.1`.
    Man,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Which mirror a maintenance command is about.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The mirror's local directory (its state DB is <dir>/.mountd/state.db unless --state-db).
    #[arg(long, env = "RELAYFILE_LOCAL_DIR", global = true)]
    pub local_dir: Option<PathBuf>,
    /// Path of the SQLite state database.
    #[arg(long, env = "MOUNTD_STATE_DB", global = true)]
    pub state_db: Option<PathBuf>,
    /// Directory of private state (with --workspace: the state DB is derived as for a run).
    #[arg(long, env = "RELAYFILE_MOUNT_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Workspace id (only used to find the state DB under --state-dir).
    #[arg(long, env = "RELAYFILE_WORKSPACE", global = true)]
    pub workspace: Option<String>,
}

impl MirrorArgs {
    /// The state database these arguments name (absolute).
    pub fn state_db(&self) -> Result<PathBuf, String> {
        let db = match (&self.state_db, &self.local_dir) {
            (None, None) => return Err("pass --local-dir DIR (or --state-db PATH)".into()),
            (Some(p), _) => p.clone(),
            (None, Some(d)) => crate::cli::safety::state_db_for(
                d,
                None,
                self.state_dir.as_ref(),
                self.workspace.as_deref(),
            )?,
        };
        Ok(crate::cli::safety::abs_path(&db))
    }
}

#[derive(Debug, Args)]
pub struct ConflictsArgs {
    #[command(subcommand)]
    pub action: Option<ConflictsAction>,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Machine-readable output (the list).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// Settle a conflict: `--keep local` puts the local version back at the path (it is pushed on
    /// top of the remote's current revision by the running service, or by the next run);
    /// `--keep remote` drops the local copy.
    Resolve {
        /// The conflict's path (as listed) or its id.
        path: String,
        /// Which version stays at the path.
        #[arg(long, value_enum)]
        keep: Keep,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Keep {
    Local,
    Remote,
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub action: Option<OutboxAction>,
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Let the local deletes held by the mass-deletion guard go (pushed by the running service at
    /// its next push, or by the next run).
    AllowDeletes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MountKind {
    Daemon,
    InitialSync,
    /// relayfile-mount's outbox flush: recorded in the state file; the run is an ordinary sync (use
    /// --flush-outbox-once to push what is pending and exit).
    Flush,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Daemon => "daemon",
            MountKind::InitialSync => "initial-sync",
            MountKind::Flush => "flush",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Always,
    Never,
}

/// relayfile-mount's `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MountMode {
    /// Plain directory kept in sync (mountd's --no-fuse).
    Poll,
    /// FUSE view at --mountpoint (writable in mirror mode).
    Fuse,
}

/// relayfile-mount's `--sync-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// Two-way: remote changes pulled, local changes pushed (the default).
    Mirror,
    /// Remote → local only; a local edit the remote replaces is kept as a conflict copy.
    PullOnly,
    /// Local → remote only: refused (mountd always keeps the mirror in step with the remote).
    WriteOnly,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Bootstrap or catch up the mirror, then exit (0 only when complete).
    #[arg(long, help_heading = "Mode", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub once: bool,

    /// Base URL of the relayfile server, e.g. https://relay.example.com
    #[arg(
        long,
        env = "RELAYFILE_BASE_URL",
        default_value = "http://127.0.0.1:8080",
        help_heading = "Remote"
    )]
    pub base_url: Option<String>,
    /// Workspace id to mirror.
    #[arg(long, env = "RELAYFILE_WORKSPACE", help_heading = "Remote")]
    pub workspace: Option<String>,
    /// File holding the bearer token (re-read after a 401, so a rotated token is picked up).
    #[arg(long, env = "RELAYFILE_TOKEN_FILE", help_heading = "Remote")]
    pub token_file: Option<PathBuf>,
    /// JSON credentials file (relayfile-mount's): first of "token", "accessToken",
    /// "relayfileToken"; re-read after a 401.
    #[arg(long, env = "RELAYFILE_MOUNT_CREDS_FILE", help_heading = "Remote")]
    pub creds_file: Option<PathBuf>,
    /// The bearer token itself. On the command line it is visible in `ps`: prefer --token-file.
    /// Never logged.
    #[arg(
        long,
        env = "RELAYFILE_TOKEN",
        hide_env_values = true,
        value_parser = parse_secret,
        help_heading = "Remote"
    )]
    pub token: Option<Secret>,
    /// Remote directory to mirror [default: /]. Repeatable for relayfile-mount compatibility, but
    /// (like relayfile-mount) only one path is accepted.
    #[arg(
        long = "remote-path",
        env = "RELAYFILE_REMOTE_PATH",
        action = ArgAction::Append,
        help_heading = "Remote"
    )]
    pub remote_paths: Vec<String>,
    /// File listing the remote path: a JSON array or one path per line (one path only).
    #[arg(long, env = "RELAYFILE_MOUNT_PATHS_FILE", help_heading = "Remote")]
    pub paths_file: Option<PathBuf>,
    /// The remote root after resolving --remote-path / --paths-file.
    #[arg(skip = String::from("/"))]
    pub remote_path: String,

    /// Local directory holding the mirror (created if missing).
    #[arg(long, env = "RELAYFILE_LOCAL_DIR", help_heading = "Local")]
    pub local_dir: Option<PathBuf>,
    /// SQLite state database [default: <local-dir>/.mountd/state.db, or under --state-dir].
    #[arg(long, env = "MOUNTD_STATE_DB", help_heading = "Local")]
    pub state_db: Option<PathBuf>,
    /// Directory for private state when --state-db is not given: the state DB is then
    /// <state-dir>/<workspace>-<hash of the local dir>.db instead of inside the mirror.
    #[arg(long, env = "RELAYFILE_MOUNT_STATE_DIR", help_heading = "Local")]
    pub state_dir: Option<PathBuf>,
    /// Progress file for an outer wrapper: its mtime moves on every progress unit.
    #[arg(long, env = "RELAYFILE_MOUNT_STATE_FILE", help_heading = "Local")]
    pub state_file: Option<PathBuf>,
    /// Who runs this mirror (recorded in the state file).
    #[arg(
        long,
        env = "RELAYFILE_MOUNT_KIND",
        value_enum,
        default_value = "daemon",
        help_heading = "Local"
    )]
    pub mount_kind: MountKind,
    /// First bootstrap into a non-empty directory that is not a mountd mirror: adopt its files
    /// (each verified by hash, replaced only when different; files the remote lacks are reported).
    #[arg(long, env = "MOUNTD_ADOPT", help_heading = "Local", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub adopt: bool,

    /// No-progress watchdog: cancel and resume from the checkpoint after this long without progress.
    #[arg(long, env = "RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", value_parser = parse_duration_lenient, default_value = "90s", help_heading = "Bootstrap")]
    pub bootstrap_idle_timeout: Duration,
    /// Hard cap on a whole bootstrap attempt (0 = off).
    #[arg(long, env = "RELAYFILE_BOOTSTRAP_TIMEOUT", value_parser = parse_duration_lenient, default_value = "0", help_heading = "Bootstrap")]
    pub bootstrap_timeout: Duration,
    /// Export sub-deadline: longest the export may go without delivering an entry before falling
    /// through to the tree pull. Clamped to 3/4 of the idle timeout and of the hard cap.
    #[arg(long, env = "RELAYFILE_EXPORT_TIMEOUT", value_parser = parse_duration_lenient, default_value = "45s", help_heading = "Bootstrap")]
    pub export_timeout: Duration,
    /// Never try the export; bootstrap with the per-page tree pull.
    #[arg(long, env = "MOUNTD_NO_EXPORT", help_heading = "Bootstrap", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub no_export: bool,
    /// Parallel file reads during the bootstrap and sync (at most 64, like relayfile-mount).
    #[arg(
        long,
        env = "RELAYFILE_BOOTSTRAP_READ_CONCURRENCY",
        default_value_t = 16,
        allow_negative_numbers = true,
        help_heading = "Bootstrap"
    )]
    pub read_concurrency: i64,
    /// Parallel file reads of an incremental sync (RELAYFILE_INCREMENTAL_READ_CONCURRENCY, at most 64).
    #[arg(
        long,
        env = "RELAYFILE_INCREMENTAL_READ_CONCURRENCY",
        default_value_t = 16,
        allow_negative_numbers = true,
        hide = true
    )]
    pub incremental_read_concurrency: i64,
    /// Memory for file content in flight across all concurrent reads, in bytes (suffixes K, M, G):
    /// each read gets an equal share for its buffer and for content kept in memory; larger files are
    /// streamed into a temp file, so a file of any size costs the same.
    #[arg(long, env = "MOUNTD_MEMORY_BUDGET", default_value = "64M", value_parser = parse_size, help_heading = "Bootstrap")]
    pub memory_budget: u64,
    /// Levels listed per /fs/tree request (1..100).
    #[arg(long, env = "MOUNTD_TREE_DEPTH", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Bootstrap")]
    pub tree_depth: u32,
    /// Stop with a diagnosis after this many consecutive attempts without checkpoint progress
    /// (alias: RELAYFILE_BOOTSTRAP_STALL_CYCLES).
    #[arg(
        long,
        env = "MOUNTD_STALL_LIMIT",
        default_value_t = 3,
        help_heading = "Bootstrap"
    )]
    pub stall_limit: u32,
    /// relayfile-mount's stall guard, mapped onto --stall-limit.
    #[arg(
        long,
        env = "RELAYFILE_BOOTSTRAP_STALL_CYCLES",
        hide = true,
        allow_negative_numbers = true
    )]
    pub bootstrap_stall_cycles: Option<i64>,
    /// Allow a completion to delete more than the --mass-delete-ratio share of the mirror.
    #[arg(long, env = "MOUNTD_ALLOW_MASS_DELETE", help_heading = "Bootstrap", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub allow_mass_delete: bool,
    /// Pull only (the same as --sync-mode pull-only): nothing is pushed; a local edit the remote
    /// replaces is kept as a conflict copy (see `mountd conflicts`).
    #[arg(long, env = "MOUNTD_READ_ONLY", help_heading = "Two-way sync", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub read_only: bool,
    /// The server's request body cap (relayfile's RELAYFILE_MAX_BODY_BYTES, 1 MiB by default):
    /// pushes are batched within it, and a file whose encoded body exceeds it is reported as too
    /// large and kept locally (suffixes K, M, G).
    #[arg(long, env = "MOUNTD_MAX_PUSH_BYTES", value_parser = parse_body_cap, default_value = "1M", help_heading = "Two-way sync")]
    pub max_push_bytes: u64,
    /// A completed listing holding less than this share of the tracked files is not trusted
    /// (refused, exit 6) (alias: RELAYFILE_SNAPSHOT_DELETE_MIN_RATIO).
    #[arg(long, env = "MOUNTD_MASS_DELETE_RATIO", value_parser = parse_ratio, default_value = "0.5", help_heading = "Bootstrap")]
    pub mass_delete_ratio: f64,
    /// relayfile-mount's name for --mass-delete-ratio.
    #[arg(long, env = "RELAYFILE_SNAPSHOT_DELETE_MIN_RATIO", value_parser = parse_ratio, hide = true)]
    pub snapshot_delete_min_ratio: Option<f64>,
    /// relayfile-mount's per-cycle file budget. mountd has none (it checkpoints every page and runs a
    /// healthy bootstrap to completion): accepted, warned unless -1.
    #[arg(
        long,
        env = "RELAYFILE_BOOTSTRAP_MAX_FILES_PER_CYCLE",
        allow_negative_numbers = true,
        help_heading = "relayfile-mount compatibility"
    )]
    pub bootstrap_max_files_per_cycle: Option<i64>,

    /// Per-read idle timeout of HTTP responses (never a whole-request deadline)
    /// [default: min(30s, idle timeout / 2)].
    #[arg(long, env = "MOUNTD_READ_TIMEOUT", value_parser = parse_duration_lenient, help_heading = "Network")]
    pub read_timeout: Option<Duration>,
    /// TCP/TLS connect timeout.
    #[arg(long, env = "MOUNTD_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s", help_heading = "Network")]
    pub connect_timeout: Duration,
    /// relayfile-mount's per-cycle HTTP budget. mountd never puts a deadline on a whole request (it
    /// would kill a long export that is still arriving): it bounds each connect and each read.
    #[arg(long, env = "RELAYFILE_MOUNT_TIMEOUT", value_parser = parse_duration_lenient, help_heading = "Network")]
    pub timeout: Option<Duration>,
    /// Retries of a failed request (transport, 429, 5xx), exponential backoff from 100ms. A 429
    /// with Retry-After is waited out without counting (pacing, not failure) for up to the idle
    /// timeout per request; the no-progress watchdog bounds a run that only gets 429s.
    #[arg(
        long,
        env = "MOUNTD_RETRIES",
        default_value_t = 3,
        help_heading = "Network"
    )]
    pub retries: usize,
    /// Cap on any single retry wait, including the server's Retry-After.
    #[arg(long, env = "MOUNTD_MAX_RETRY_WAIT", value_parser = parse_duration, default_value = "60s", help_heading = "Network")]
    pub max_retry_wait: Duration,

    /// Where to mount the FUSE view (service mode; writable in mirror mode). Must be an empty directory
    /// outside the mirror and the state DB's directory.
    #[arg(long, env = "RELAYFILE_MOUNTPOINT", help_heading = "Mount service")]
    pub mountpoint: Option<PathBuf>,
    /// Mount over a non-empty --mountpoint (its files are hidden while mounted).
    #[arg(long, env = "MOUNTD_ALLOW_NON_EMPTY", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub allow_non_empty: bool,
    /// Keep --local-dir in sync as a plain directory; no FUSE mount.
    #[arg(long, env = "MOUNTD_NO_FUSE", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub no_fuse: bool,
    /// relayfile-mount's mode: poll = plain directory (--no-fuse), fuse = FUSE view at --mountpoint.
    /// Without --mode and --mountpoint the service runs as poll, like relayfile-mount.
    #[arg(
        long,
        env = "RELAYFILE_MOUNT_MODE",
        value_enum,
        help_heading = "Mount service"
    )]
    pub mode: Option<MountMode>,
    /// relayfile-mount's switch for --mode fuse (false: --mode poll).
    #[arg(long, env = "RELAYFILE_MOUNT_FUSE", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set)]
    pub fuse: Option<bool>,
    /// Poll interval of the events feed (± --interval-jitter).
    #[arg(long, env = "RELAYFILE_MOUNT_INTERVAL", value_parser = parse_duration_lenient, default_value = "30s", help_heading = "Mount service")]
    pub interval: Duration,
    /// Ping period of the realtime stream (--websocket): a stream silent for twice this long is
    /// given up (polling meanwhile) and reconnected.
    #[arg(long, env = "MOUNTD_WS_PING_INTERVAL", value_parser = parse_duration, default_value = "15s", hide = true)]
    pub ws_ping_interval: Duration,
    /// Random jitter of the poll interval, as a ratio (0.2 = ±20%).
    #[arg(long, env = "RELAYFILE_MOUNT_INTERVAL_JITTER", value_parser = parse_ratio, default_value = "0.2", help_heading = "Mount service")]
    pub interval_jitter: f64,
    /// Interval of the metadata audit that heals drift (0 or -1 = off)
    /// (relayfile-mount: --full-pull-min-interval).
    #[arg(long, visible_alias = "full-pull-min-interval", env = "MOUNTD_AUDIT_INTERVAL", value_parser = parse_duration_or_off, default_value = "24h", allow_negative_numbers = true, help_heading = "Mount service")]
    pub audit_interval: Duration,
    /// relayfile-mount's RELAYFILE_MOUNT_FULL_PULL_MIN_INTERVAL (same as --audit-interval).
    #[arg(long, env = "RELAYFILE_MOUNT_FULL_PULL_MIN_INTERVAL", value_parser = parse_duration_or_off, allow_negative_numbers = true, hide = true)]
    pub full_pull_min_interval_env: Option<Duration>,
    /// relayfile-mount's full pull every N cycles: audits no more often than every N intervals.
    #[arg(
        long,
        env = "RELAYFILE_MOUNT_FULL_PULL_EVERY",
        allow_negative_numbers = true,
        hide = true
    )]
    pub full_pull_every: Option<i64>,
    /// Run a full re-listing (audit) on the next pass, once (relayfile-mount: --full-reconcile).
    #[arg(long, visible_alias = "full-reconcile", env = "RELAYFILE_FORCE_FULL_RECONCILE", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub force_audit: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long, env = "MOUNTD_ALLOW_OTHER", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub allow_other: bool,
    /// Owner uid of files in the mount [default: the daemon's].
    #[arg(long, env = "MOUNTD_UID", help_heading = "Mount service")]
    pub uid: Option<u32>,
    /// Owner gid of files in the mount [default: the daemon's].
    #[arg(long, env = "MOUNTD_GID", help_heading = "Mount service")]
    pub gid: Option<u32>,
    /// Permission bits of files in a read-only mount (pull-only; a writable mount shows and keeps the
    /// files' own modes) (octal).
    #[arg(long, env = "MOUNTD_FILE_MODE", default_value = "0444", value_parser = parse_mode, help_heading = "Mount service")]
    pub file_mode: u16,
    /// Permission bits of directories in a read-only mount (pull-only) (octal).
    #[arg(long, env = "MOUNTD_DIR_MODE", default_value = "0555", value_parser = parse_mode, help_heading = "Mount service")]
    pub dir_mode: u16,
    /// How the mount serves file data: `auto` (the page cache with message-free opens: best for many
    /// small files; where the kernel lacks that, passthrough), `passthrough` (FUSE passthrough, Linux >=
    /// 6.9 and CAP_SYS_ADMIN: large files read at the disk's own speed and are cached once, but every
    /// open(2) is a round trip to the daemon), `page-cache`, or `direct-io` (every read through the
    /// daemon). docs/PERFORMANCE.md has the measurements behind the default.
    #[arg(long, env = "MOUNTD_DATA_MODE", value_parser = parse_data_mode, default_value = "auto", help_heading = "Mount service")]
    pub data_mode: crate::view::fuse::DataMode,
    /// How FUSE requests travel between the kernel and mountd: `auto` (io_uring when the kernel offers
    /// it, else /dev/fuse, with one log line saying why), `uring` (io_uring or the mount fails), or
    /// `dev` (/dev/fuse). io_uring (Linux >= 6.14, CONFIG_FUSE_IO_URING) serves each request on its
    /// caller's CPU, one at a time per CPU (so `auto` keeps /dev/fuse under --fsync-push); an operator
    /// turns it on with `echo Y > /sys/module/fuse/parameters/enable_uring` (or the boot option
    /// fuse.enable_uring=1). docs/PERFORMANCE.md has the figures.
    #[arg(long, env = "MOUNTD_FUSE_TRANSPORT", value_parser = parse_transport, default_value = "auto", help_heading = "Mount service")]
    pub fuse_transport: crate::view::fuse::Transport,
    /// Writable mount (mirror mode), page-cache data mode: let the kernel gather writes in its page
    /// cache (FUSE's writeback cache) and send them as large WRITEs, at the latest on close. Off by
    /// default: with it the kernel asks the daemon for a file's attributes after every close, which
    /// makes reading many small files slower (docs/PERFORMANCE.md has both measured); without it every
    /// write(2) is one round trip to the daemon.
    #[arg(long, env = "MOUNTD_WRITEBACK_CACHE", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub writeback_cache: bool,
    /// Writable mount: `fsync` returns only once the server accepted the file, and fails with EIO when
    /// the push failed (a conflict, a refusal, the server unreachable for 2 minutes). Default: `fsync`
    /// makes the file durable on local disk and records it in the outbox.
    #[arg(long, env = "MOUNTD_FSYNC_PUSH", help_heading = "Mount service", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set)]
    pub fsync_push: bool,
    /// Kernel attribute and entry cache TTL (changes are pushed by explicit invalidation).
    #[arg(long, env = "MOUNTD_METADATA_TTL", value_parser = parse_duration, default_value = "60s", help_heading = "Mount service")]
    pub metadata_ttl: Duration,
    /// Serve Prometheus metrics on this loopback address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "MOUNTD_METRICS_ADDR", help_heading = "Mount service")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Log format on stderr.
    #[arg(
        long,
        env = "MOUNTD_LOG_FORMAT",
        value_enum,
        default_value = "human",
        help_heading = "Output"
    )]
    pub log_format: LogFormat,
    /// More log output: -v debug, -vv trace (wins over MOUNTD_LOG and RUST_LOG).
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet", help_heading = "Output")]
    pub verbose: u8,
    /// Less log output: -q warnings and errors only, -qq errors only.
    #[arg(short, long, action = ArgAction::Count, help_heading = "Output")]
    pub quiet: u8,
    /// Progress bar for --once (auto: only on a terminal).
    #[arg(
        long,
        env = "MOUNTD_PROGRESS",
        value_enum,
        default_value = "auto",
        help_heading = "Output"
    )]
    pub progress: ProgressMode,

    /// Write the metrics (Prometheus text) to this file, atomically, for node-exporter's textfile
    /// collector: at the end of a --once run (failed runs included), after every pass of the service.
    #[arg(long, env = "MOUNTD_METRICS_FILE", help_heading = "Output")]
    pub metrics_file: Option<PathBuf>,

    /// relayfile-mount's settings that mountd accepts (see docs/COMPATIBILITY.md).
    #[command(flatten)]
    pub compat: CompatArgs,
}

/// relayfile-mount flags kept for drop-in compatibility. Each one that has no effect in mountd is
/// accepted with one warning saying why (see [`crate::cli::compat`]).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "relayfile-mount compatibility")]
pub struct CompatArgs {
    /// mirror (the default: remote changes pulled, local changes pushed), pull-only (alias
    /// --read-only) or write-only (refused).
    #[arg(
        long,
        env = "RELAYFILE_MOUNT_SYNC_MODE",
        value_enum,
        help_heading = "Two-way sync"
    )]
    pub sync_mode: Option<SyncMode>,
    /// Realtime events over /fs/ws [default: true]: changes are applied as they arrive; polling
    /// /fs/events every --interval continues as the safety net and the fallback while the stream is down.
    #[arg(long, env = "RELAYFILE_MOUNT_WEBSOCKET", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set)]
    pub websocket: Option<bool>,
    /// Time budget for resolving the events tip. In mountd that is one ordinary request under the
    /// per-read timeout and retries.
    #[arg(long, env = "RELAYFILE_CURSOR_TIMEOUT", value_parser = parse_duration_lenient)]
    pub cursor_timeout: Option<Duration>,
    /// FUSE content cache TTL. mountd reads file content through (no content cache) and invalidates
    /// the kernel's caches when files change.
    #[arg(long, env = "RELAYFILE_MOUNT_FUSE_CONTENT_TTL", value_parser = parse_duration_lenient)]
    pub fuse_content_ttl: Option<Duration>,
    #[arg(long, env = "RELAYFILE_MOUNT_LOW_MEMORY", hide = true, value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set)]
    pub low_memory: Option<bool>,
    #[arg(long, env = "RELAYFILE_MOUNT_PPROF_ADDR", hide = true)]
    pub pprof_addr: Option<String>,
    #[arg(long, env = "RELAYFILE_MOUNT_MEMLOG_INTERVAL", hide = true, value_parser = parse_duration_lenient)]
    pub memlog_interval: Option<Duration>,
    #[arg(long, env = "RELAYFILE_MOUNT_LOG_HTTP_STATUS", hide = true, value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set)]
    pub log_http_status: Option<bool>,
    #[arg(long, env = "RELAYFILE_MOUNT_PROVIDER", hide = true)]
    pub provider: Option<String>,
    #[arg(long, env = "RELAYFILE_MOUNT_LOCAL_LAYOUT", hide = true)]
    pub local_layout: Option<String>,
    #[arg(long, env = "RELAYFILE_MOUNT_LAZY_REPOS", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub lazy_repos: Option<String>,
    /// Plain-directory mirror: a changed file that was not closed is pushed once it stayed
    /// unchanged this long [default: 250ms] (a closed file, or one renamed into place, goes at once).
    #[arg(long, env = "RELAYFILE_MOUNT_FILE_SETTLE_DELAY", value_parser = parse_duration_lenient, help_heading = "Two-way sync")]
    pub file_settle_delay: Option<Duration>,
    /// Plain-directory mirror: after a file is deleted or renamed away, wait this long for the rest
    /// of an editor's atomic save (its new version renamed over it) [default: 50ms].
    #[arg(long, env = "RELAYFILE_MOUNT_ATOMIC_SAVE_SETTLE_DELAY", value_parser = parse_duration_lenient, help_heading = "Two-way sync")]
    pub atomic_save_settle_delay: Option<Duration>,
    /// Plain-directory mirror: local change events within this window are taken together [default: 5ms].
    #[arg(long, env = "RELAYFILE_MOUNT_CHANGE_BATCH_WINDOW", value_parser = parse_duration_lenient, help_heading = "Two-way sync")]
    pub change_batch_window: Option<Duration>,
    /// Push the changes already pending in the outbox, then exit (no pull, no scan); 0 when none is left.
    #[arg(long, env = "RELAYFILE_MOUNT_FLUSH_OUTBOX_ONCE", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set, help_heading = "Two-way sync")]
    pub flush_outbox_once: Option<bool>,
    /// Scan the mirror directory for local changes, push them, then exit (no pull); 0 when none is left.
    #[arg(long, env = "RELAYFILE_MOUNT_PUSH_LOCAL_ONCE", value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set, help_heading = "Two-way sync")]
    pub push_local_once: Option<bool>,
    #[arg(long, env = "RELAYFILE_MOUNT_LAZY_SKIP_UNTRACKED_PUSH", hide = true, value_parser = parse_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", action = ArgAction::Set)]
    pub lazy_skip_untracked_push: Option<bool>,
}

/// relayfile-mount's push-only one-shot modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOnce {
    /// `--flush-outbox-once`: push what is already pending.
    FlushOutbox,
    /// `--push-local-once`: scan the mirror directory, then push.
    PushLocal,
}

impl RunArgs {
    /// The push-only one-shot mode asked for, if any.
    pub fn push_once(&self) -> Option<PushOnce> {
        if self.compat.push_local_once == Some(true) {
            Some(PushOnce::PushLocal)
        } else if self.compat.flush_outbox_once == Some(true) {
            Some(PushOnce::FlushOutbox)
        } else {
            None
        }
    }
}

/// A byte size: `65536`, `512K`, `64M`, `1G` (powers of 1024), at least 1M (`--memory-budget`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s, 1 << 20, "1M, such as 64M or 1G")
}

/// A server's request body cap (`--max-push-bytes`): `65536`, `64K`, `1M`, at least 1K (a server's
/// RELAYFILE_MAX_BODY_BYTES may be below 1M).
pub fn parse_body_cap(s: &str) -> Result<u64, String> {
    parse_bytes(s, 1 << 10, "1K, such as 256K or 1M")
}

fn parse_bytes(s: &str, min: u64, least: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: use a size such as 65536, 512K, 64M or 1G")),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|n| *n >= min)
        .ok_or_else(|| format!("{s:?}: use a size of at least {least}"))
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0444"))
}

/// The export sub-deadline after the 3/4 clamps, and the warning to log when a clamp changed it.
/// `configured`: whether the user set the value (the warning says "configured" or "default").
pub fn clamp_export_timeout(
    export: Duration,
    idle: Duration,
    cap: Duration,
    configured: bool,
) -> (Duration, Option<String>) {
    let mut eff = export;
    let mut why = Vec::new();
    if !idle.is_zero() && eff > idle * 3 / 4 {
        eff = idle * 3 / 4;
        why.push(format!(
            "3/4 of the bootstrap idle timeout {}",
            humantime::format_duration(idle)
        ));
    }
    if !cap.is_zero() && eff > cap * 3 / 4 {
        eff = cap * 3 / 4;
        why.push(format!(
            "3/4 of the bootstrap hard cap {}",
            humantime::format_duration(cap)
        ));
    }
    if eff == export {
        return (eff, None);
    }
    let msg = format!(
        "export timeout clamped from {} ({}) to {}: it must stay under {} so a slow export falls through to the tree pull before the bootstrap is cancelled",
        humantime::format_duration(export),
        if configured { "configured" } else { "default" },
        humantime::format_duration(eff),
        why.join(" and ")
    );
    (eff, Some(msg))
}

/// The per-read timeout: derived from the idle timeout when not configured (min(30s, idle/2)); a
/// configured value not shorter than the idle timeout is clamped to idle/2 with a warning (a hung read
/// must be retried before the watchdog fires).
pub fn resolve_read_timeout(
    configured: Option<Duration>,
    idle: Duration,
) -> (Duration, Option<String>) {
    let half = (idle / 2).max(Duration::from_millis(1));
    match configured {
        None => (Duration::from_secs(30).min(half), None),
        Some(d) if !d.is_zero() && d < idle => (d, None),
        Some(d) => (
            half,
            Some(format!(
                "read timeout clamped from {} (configured) to {}: it must be positive and shorter than the bootstrap idle timeout {}, or a hung read is never retried before the watchdog fires",
                humantime::format_duration(d),
                humantime::format_duration(half),
                humantime::format_duration(idle)
            )),
        ),
    }
}

/// Companion timeouts checked together at startup (after [`crate::cli::compat::resolve`]).
pub fn validate_timeouts(a: &RunArgs, read_timeout: Duration) -> Result<(), String> {
    if a.bootstrap_idle_timeout.is_zero() {
        return Err("--bootstrap-idle-timeout must be positive: without it a stuck bootstrap is never cancelled".into());
    }
    if read_timeout.is_zero() || read_timeout >= a.bootstrap_idle_timeout {
        return Err(format!(
            "--read-timeout ({}) must be positive and shorter than --bootstrap-idle-timeout ({}), or a hung read is never retried before the watchdog fires",
            humantime::format_duration(read_timeout),
            humantime::format_duration(a.bootstrap_idle_timeout)
        ));
    }
    if a.export_timeout.is_zero() {
        return Err(
            "--export-timeout must be positive (use --no-export to skip the export)".into(),
        );
    }
    if a.interval.is_zero() {
        return Err("--interval must be positive".into());
    }
    if a.ws_ping_interval < Duration::from_millis(10) {
        return Err("MOUNTD_WS_PING_INTERVAL must be at least 10ms".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("45s").unwrap(), s(45));
        assert_eq!(parse_duration("1m30s").unwrap(), s(90));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("1.5h").unwrap(), s(5400));
        assert_eq!(parse_duration("1h2m3s").unwrap(), s(3723));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("off").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        for bad in ["soon", "1m30", "45", "s", "1..5s", "", "-", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration_or_off("-1").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_off("-1s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_off("24h").unwrap(), s(86400));
        assert_eq!(parse_duration_lenient("-5s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn go_booleans() {
        for t in ["1", "t", "T", "true", "TRUE", "True", "yes", "YES", "on"] {
            assert!(parse_bool(t).unwrap(), "{t}");
        }
        for f in ["0", "f", "F", "false", "FALSE", "False", "no", "No", "off"] {
            assert!(!parse_bool(f).unwrap(), "{f}");
        }
        assert!(parse_bool("2").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn clamps() {
        let s = Duration::from_secs;
        assert_eq!(
            clamp_export_timeout(s(45), s(90), Duration::ZERO, false),
            (s(45), None)
        );
        let (eff, msg) = clamp_export_timeout(s(45), s(40), Duration::ZERO, false);
        assert_eq!(eff, s(30));
        let msg = msg.unwrap();
        assert!(msg.contains("45s (default)"), "{msg}");
        let (eff, msg) = clamp_export_timeout(s(45), s(90), s(20), true);
        assert_eq!(eff, s(15));
        let msg = msg.unwrap();
        assert!(
            msg.contains("45s (configured)") && msg.contains("15s") && msg.contains("hard cap"),
            "{msg}"
        );
    }

    #[test]
    fn read_timeout_follows_the_idle_timeout() {
        let s = Duration::from_secs;
        assert_eq!(resolve_read_timeout(None, s(90)), (s(30), None));
        assert_eq!(resolve_read_timeout(None, s(8)), (s(4), None));
        assert_eq!(resolve_read_timeout(Some(s(5)), s(10)), (s(5), None));
        let (eff, msg) = resolve_read_timeout(Some(s(20)), s(10));
        assert_eq!(eff, s(5));
        assert!(msg.unwrap().contains("20s (configured)"));
    }

    #[test]
    fn help_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
