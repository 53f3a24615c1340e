//! Command line and environment (`RELAYFILE_*` aliases of the reference daemon), validated together.
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Parse a Go-syntax duration (`45s`, `1m30s`, `300ms`); `0` and `off` mean "disabled".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{e} (use Go syntax such as 45s, 1m30s, 300ms)"))
}

#[derive(Debug, Parser)]
#[command(
    name = "mountd",
    version,
    about = "Mirror a relayfile workspace to local disk, keep it in sync, and serve it read-only over FUSE",
    long_about = "mountd copies a remote relayfile workspace onto local disk and keeps it in sync.\n\n\
    With --once it bootstraps (or catches up) the mirror and exits: 0 only when the mirror is complete.\n\
    Without --once it runs as a service: bootstrap if needed, then mount a read-only FUSE view at\n\
    --mountpoint (or, with --no-fuse, keep --local-dir itself in sync) and apply the events feed.",
    after_help = "EXIT CODES:\n  0  complete and consistent\n  1  failed (remote or local error after retries; see the diagnosis)\n  2  usage or configuration error (including a state DB of another mirror, or a lock held by another mountd)\n  3  authentication or authorization failure (401/403): check the token and workspace\n  4  stalled: no progress within the idle timeout, hard cap reached, or no progress in several runs\n  5  complete except for quarantined files (see `mountd status`)\n  6  refused: the completion would delete more than half of the mirror (see --allow-mass-delete)"
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
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The mirror's local directory (its state DB is <dir>/.mountd/state.db unless --state-db).
    #[arg(long, env = "RELAYFILE_LOCAL_DIR")]
    pub local_dir: Option<PathBuf>,
    /// Path of the SQLite state database.
    #[arg(long, env = "MOUNTD_STATE_DB")]
    pub state_db: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MountKind {
    Daemon,
    InitialSync,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Daemon => "daemon",
            MountKind::InitialSync => "initial-sync",
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Bootstrap or catch up the mirror, then exit (0 only when complete).
    #[arg(long, help_heading = "Mode")]
    pub once: bool,

    /// Base URL of the relayfile server, e.g. https://relay.example.com
    #[arg(long, env = "RELAYFILE_BASE_URL", help_heading = "Remote")]
    pub base_url: Option<String>,
    /// Workspace id to mirror.
    #[arg(long, env = "RELAYFILE_WORKSPACE", help_heading = "Remote")]
    pub workspace: Option<String>,
    /// File holding the bearer token (or set RELAYFILE_TOKEN). The token is never logged.
    #[arg(long, env = "RELAYFILE_TOKEN_FILE", help_heading = "Remote")]
    pub token_file: Option<PathBuf>,
    /// Remote directory to mirror.
    #[arg(
        long,
        env = "RELAYFILE_REMOTE_PATH",
        default_value = "/",
        help_heading = "Remote"
    )]
    pub remote_path: String,

    /// Local directory holding the mirror (created if missing).
    #[arg(long, env = "RELAYFILE_LOCAL_DIR", help_heading = "Local")]
    pub local_dir: Option<PathBuf>,
    /// SQLite state database [default: <local-dir>/.mountd/state.db].
    #[arg(long, env = "MOUNTD_STATE_DB", help_heading = "Local")]
    pub state_db: Option<PathBuf>,
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

    /// No-progress watchdog: cancel and resume from the checkpoint after this long without progress.
    #[arg(long, env = "RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "90s", help_heading = "Bootstrap")]
    pub bootstrap_idle_timeout: Duration,
    /// Hard cap on a whole bootstrap attempt (0 = off).
    #[arg(long, env = "RELAYFILE_BOOTSTRAP_TIMEOUT", value_parser = parse_duration, default_value = "0", help_heading = "Bootstrap")]
    pub bootstrap_timeout: Duration,
    /// Export sub-deadline: longest the export may go without delivering an entry before falling
    /// through to the tree pull. Clamped to 3/4 of the idle timeout and of the hard cap.
    #[arg(long, env = "RELAYFILE_EXPORT_TIMEOUT", value_parser = parse_duration, default_value = "45s", help_heading = "Bootstrap")]
    pub export_timeout: Duration,
    /// Never try the export; bootstrap with the per-page tree pull.
    #[arg(long, env = "MOUNTD_NO_EXPORT", help_heading = "Bootstrap")]
    pub no_export: bool,
    /// Parallel file reads during the tree pull and sync.
    #[arg(long, env = "RELAYFILE_BOOTSTRAP_READ_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256), help_heading = "Bootstrap")]
    pub read_concurrency: u32,
    /// Memory for file content in flight across all concurrent reads, in bytes (suffixes K, M, G):
    /// each read gets an equal share for its buffer and for content kept in memory; larger files are
    /// streamed into a temp file, so a file of any size costs the same.
    #[arg(long, env = "MOUNTD_MEMORY_BUDGET", default_value = "64M", value_parser = parse_size, help_heading = "Bootstrap")]
    pub memory_budget: u64,
    /// Levels listed per /fs/tree request (1..100).
    #[arg(long, env = "MOUNTD_TREE_DEPTH", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Bootstrap")]
    pub tree_depth: u32,
    /// Stop with a diagnosis after this many consecutive attempts without checkpoint progress.
    #[arg(
        long,
        env = "MOUNTD_STALL_LIMIT",
        default_value_t = 3,
        help_heading = "Bootstrap"
    )]
    pub stall_limit: u32,
    /// Allow a completion to delete more than half of the mirrored files.
    #[arg(long, env = "MOUNTD_ALLOW_MASS_DELETE", help_heading = "Bootstrap")]
    pub allow_mass_delete: bool,

    /// Per-read idle timeout of HTTP responses (never a whole-request deadline).
    #[arg(long, env = "MOUNTD_READ_TIMEOUT", value_parser = parse_duration, default_value = "30s", help_heading = "Network")]
    pub read_timeout: Duration,
    /// TCP/TLS connect timeout.
    #[arg(long, env = "MOUNTD_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s", help_heading = "Network")]
    pub connect_timeout: Duration,
    /// Retries of a failed request (transport, 429, 5xx), exponential backoff from 100ms.
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

    /// Where to mount the read-only FUSE view (service mode).
    #[arg(long, env = "RELAYFILE_MOUNTPOINT", help_heading = "Mount service")]
    pub mountpoint: Option<PathBuf>,
    /// Keep --local-dir in sync as a plain directory; no FUSE mount.
    #[arg(long, env = "MOUNTD_NO_FUSE", help_heading = "Mount service")]
    pub no_fuse: bool,
    /// Poll interval of the events feed (±20% jitter).
    #[arg(long, env = "RELAYFILE_MOUNT_INTERVAL", value_parser = parse_duration, default_value = "30s", help_heading = "Mount service")]
    pub interval: Duration,
    /// Interval of the metadata audit that heals drift (0 = off).
    #[arg(long, env = "MOUNTD_AUDIT_INTERVAL", value_parser = parse_duration, default_value = "24h", help_heading = "Mount service")]
    pub audit_interval: Duration,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long, env = "MOUNTD_ALLOW_OTHER", help_heading = "Mount service")]
    pub allow_other: bool,
    /// Owner uid of files in the mount [default: the daemon's].
    #[arg(long, env = "MOUNTD_UID", help_heading = "Mount service")]
    pub uid: Option<u32>,
    /// Owner gid of files in the mount [default: the daemon's].
    #[arg(long, env = "MOUNTD_GID", help_heading = "Mount service")]
    pub gid: Option<u32>,
    /// Permission bits of files in the mount (octal).
    #[arg(long, env = "MOUNTD_FILE_MODE", default_value = "0444", value_parser = parse_mode, help_heading = "Mount service")]
    pub file_mode: u16,
    /// Permission bits of directories in the mount (octal).
    #[arg(long, env = "MOUNTD_DIR_MODE", default_value = "0555", value_parser = parse_mode, help_heading = "Mount service")]
    pub dir_mode: u16,
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
}

/// A byte size: `65536`, `512K`, `64M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
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
        .filter(|n| *n >= 1 << 20)
        .ok_or_else(|| format!("{s:?}: use a size of at least 1M, such as 64M or 1G"))
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0444"))
}

/// The export sub-deadline after the 3/4 clamps, and the warning to log when a clamp changed it.
pub fn clamp_export_timeout(
    export: Duration,
    idle: Duration,
    cap: Duration,
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
        "export timeout clamped from {} (configured) to {}: it must stay under {} so a slow export falls through to the tree pull before the bootstrap is cancelled",
        humantime::format_duration(export),
        humantime::format_duration(eff),
        why.join(" and ")
    );
    (eff, Some(msg))
}

/// Companion timeouts checked together at startup.
pub fn validate_timeouts(a: &RunArgs) -> Result<(), String> {
    if a.bootstrap_idle_timeout.is_zero() {
        return Err("--bootstrap-idle-timeout must be positive: without it a stuck bootstrap is never cancelled".into());
    }
    if a.read_timeout.is_zero() || a.read_timeout >= a.bootstrap_idle_timeout {
        return Err(format!(
            "--read-timeout ({}) must be positive and shorter than --bootstrap-idle-timeout ({}), or a hung read is never retried before the watchdog fires",
            humantime::format_duration(a.read_timeout),
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn clamps() {
        let s = Duration::from_secs;
        assert_eq!(
            clamp_export_timeout(s(45), s(90), Duration::ZERO),
            (s(45), None)
        );
        let (eff, msg) = clamp_export_timeout(s(45), s(40), Duration::ZERO);
        assert_eq!(eff, s(30));
        assert!(msg.unwrap().contains("45s"));
        let (eff, msg) = clamp_export_timeout(s(45), s(90), s(20));
        assert_eq!(eff, s(15));
        let msg = msg.unwrap();
        assert!(
            msg.contains("45s") && msg.contains("15s") && msg.contains("hard cap"),
            "{msg}"
        );
    }

    #[test]
    fn help_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
