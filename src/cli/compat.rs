//! relayfile-mount compatibility: parse the command line so that a bad environment value names its
//! variable, then map the reference daemon's flags and variables onto mountd's settings. Every one
//! that has no effect here is accepted with one warning saying why (docs/COMPATIBILITY.md).
use crate::cli::args::{
    clamp_export_timeout, resolve_read_timeout, Cli, MountKind, MountMode, RunArgs, SyncMode,
};
use crate::remote::http::TokenSource;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::time::Duration;

/// relayfile-mount's caps on read concurrency.
pub const MAX_CONCURRENCY: i64 = 64;
pub const DEFAULT_CONCURRENCY: i64 = 16;
const DEFAULT_IDLE: Duration = Duration::from_secs(90);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Parse `argv`; exit 2 with a message on a usage error (one that names the environment variable when
/// the bad value came from one), 0 for `--help`/`--version`.
///
/// `mountd check FLAGS...` is parsed as `mountd FLAGS...` (the returned `bool` is true): the flags
/// and variables are read once, exactly as for a run. (The `check` subcommand in the clap definition
/// is there for `--help`, completions and the man page.)
pub fn parse(mut argv: Vec<OsString>) -> (Cli, ArgMatches, bool) {
    let check = argv.get(1).is_some_and(|a| a == "check");
    if check {
        argv.remove(1);
    }
    let cmd = Cli::command();
    let m = match cmd.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => {
            if let Some(msg) = env_error(&cmd, &argv, &e) {
                eprintln!("mountd: error: {msg}");
                std::process::exit(crate::cli::exit::USAGE);
            }
            e.exit()
        }
    };
    match Cli::from_arg_matches(&m) {
        Ok(c) => (c, m, check),
        Err(e) => e.exit(),
    }
}

/// When clap refused a value that came from an environment variable, say which variable.
fn env_error(cmd: &clap::Command, argv: &[OsString], e: &clap::Error) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let shown = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return None,
    };
    let long = shown
        .strip_prefix("--")?
        .split(['[', ' ', '=', '<'])
        .next()?
        .to_string();
    let mut cmds = vec![cmd];
    cmds.extend(cmd.get_subcommands());
    let arg = cmds
        .iter()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long.as_str()))?;
    let env = arg.get_env()?;
    let value = std::env::var_os(env)?;
    // A command-line value overrides the variable: then the flag carried the bad value.
    let names: Vec<String> = std::iter::once(long.clone())
        .chain(
            arg.get_all_aliases()
                .into_iter()
                .flatten()
                .map(String::from),
        )
        .collect();
    let on_cmdline = argv.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        names
            .iter()
            .any(|n| a == format!("--{n}") || a.starts_with(&format!("--{n}=")))
            || arg.get_short().is_some_and(|s| a == format!("-{s}"))
    });
    if on_cmdline {
        return None;
    }
    let reason = match e.kind() {
        ErrorKind::ValueValidation => std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "invalid value".into()),
        _ => match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(v)) => format!("expected one of: {}", v.join(", ")),
            _ => "invalid value".into(),
        },
    };
    Some(format!(
        "invalid value {:?} in environment variable {} (for --{long}): {reason}",
        value.to_string_lossy(),
        env.to_string_lossy()
    ))
}

fn explicit(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// How a setting was given, for messages: `--flag` or the environment variable's name.
fn origin(m: &ArgMatches, id: &str, flag: &str, env: &str) -> String {
    match m.value_source(id) {
        Some(ValueSource::EnvVariable) => env.to_string(),
        _ => flag.to_string(),
    }
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// What resolving the reference daemon's settings found.
#[derive(Debug, Default)]
pub struct Resolution {
    /// One line each, logged as warnings at start.
    pub warnings: Vec<String>,
    /// Logged at info.
    pub notes: Vec<String>,
}

/// The token source: `--creds-file`, then `--token-file`, then `--token`/`RELAYFILE_TOKEN`.
pub fn token_source(a: &RunArgs) -> Result<TokenSource, String> {
    if let Some(p) = &a.creds_file {
        return Ok(TokenSource::Creds(p.clone()));
    }
    if let Some(p) = &a.token_file {
        return Ok(TokenSource::File(p.clone()));
    }
    match &a.token {
        Some(t) if !t.0.trim().is_empty() => Ok(TokenSource::Static(t.0.trim().to_string())),
        _ => Err(
            "no token: pass --token-file PATH or --creds-file PATH (or set RELAYFILE_TOKEN)".into(),
        ),
    }
}

/// Read relayfile-mount's `--paths-file`: a JSON array of strings, or one path per line (blank lines
/// and `#` comments ignored).
fn read_paths_file(p: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| format!("cannot read --paths-file {}: {e}", p.display()))?;
    let t = text.trim();
    if t.starts_with('[') {
        serde_json::from_str::<Vec<String>>(t).map_err(|e| {
            format!(
                "--paths-file {}: not a JSON array of strings: {e}",
                p.display()
            )
        })
    } else {
        Ok(t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect())
    }
}

/// Map relayfile-mount's settings onto mountd's (in place) and validate them together. `m` are the
/// matches of the command that holds `a` (to tell configured values from defaults).
pub fn resolve(a: &mut RunArgs, m: &ArgMatches) -> Result<Resolution, String> {
    let mut r = Resolution::default();
    resolve_remote_path(a)?;
    warn_token_sources(a, m, &mut r.warnings);
    resolve_direction(a, m)?;
    resolve_mode(a, &mut r.warnings, &mut r.notes)?;
    if a.mount_kind == MountKind::Flush {
        r.warnings.push("--mount-kind flush: recorded in the state file; the run is an ordinary sync (to push what is pending and exit, use --flush-outbox-once)".into());
    }

    let read = resolve_timeouts(a, m, &mut r.warnings);
    resolve_concurrency(a, m, &mut r.warnings);
    resolve_guards(a, m, &mut r.warnings, &mut r.notes);
    warn_no_effect(a, m, read, &mut r.warnings);
    if a.read_only
        && (a.compat.flush_outbox_once == Some(true) || a.compat.push_local_once == Some(true))
    {
        return Err("--flush-outbox-once and --push-local-once push local changes: they need --sync-mode mirror (not pull-only or --read-only)".into());
    }
    Ok(r)
}

/// Remote path(s): one root, like relayfile-mount.
fn resolve_remote_path(a: &mut RunArgs) -> Result<(), String> {
    let mut paths: Vec<String> = a.remote_paths.clone();
    if let Some(p) = &a.paths_file {
        paths.extend(read_paths_file(p)?);
    }
    let mut distinct: Vec<String> = Vec::new();
    for p in paths {
        let n = crate::store::paths::normalize_root(&p)
            .map_err(|e| format!("--remote-path {p:?}: {e}"))?;
        if !distinct.contains(&n) {
            distinct.push(n);
        }
    }
    if distinct.len() > 1 {
        return Err(format!(
            "more than one remote path ({}): mountd mirrors one remote root, and relayfile-mount refuses this too; run one mountd per path, each with its own --local-dir",
            distinct.join(", ")
        ));
    }
    a.remote_path = distinct.pop().unwrap_or_else(|| "/".into());

    Ok(())
}

/// Token: the command line shows it to every user (`ps`); several sources: the first one wins.
fn warn_token_sources(a: &RunArgs, m: &ArgMatches, w: &mut Vec<String>) {
    if m.value_source("token") == Some(ValueSource::CommandLine) {
        w.push("--token on the command line is visible to every user of this machine (ps, /proc/PID/cmdline); use --token-file or --creds-file (the token itself is never logged)".into());
    }
    let given: Vec<&str> = [
        (a.creds_file.is_some(), "--creds-file"),
        (a.token_file.is_some(), "--token-file"),
        (a.token.is_some(), "--token/RELAYFILE_TOKEN"),
    ]
    .iter()
    .filter(|(g, _)| *g)
    .map(|(_, n)| *n)
    .collect();
    if given.len() > 1 {
        w.push(format!(
            "several token sources given ({}); using {} (order: --creds-file, --token-file, --token)",
            given.join(", "),
            given[0]
        ));
    }
}

/// Sync direction: mirror (two-way) unless pull-only or --read-only.
fn resolve_direction(a: &mut RunArgs, m: &ArgMatches) -> Result<(), String> {
    match a.compat.sync_mode {
        Some(SyncMode::WriteOnly) => {
            return Err("--sync-mode write-only: mountd always applies remote changes; use --sync-mode mirror (two-way, the default) or pull-only".into())
        }
        Some(SyncMode::Mirror) if a.read_only => {
            return Err(format!(
                "{} mirror contradicts --read-only (pull-only): give one of them",
                origin(m, "sync_mode", "--sync-mode", "RELAYFILE_MOUNT_SYNC_MODE")
            ))
        }
        Some(SyncMode::PullOnly) => a.read_only = true,
        _ => {}
    }

    Ok(())
}

/// Mode: poll (plain directory) or fuse (the view at --mountpoint).
fn resolve_mode(
    a: &mut RunArgs,
    w: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let by_mode = a.mode.map(|x| x == MountMode::Fuse);
    let want_fuse = match (by_mode, a.fuse) {
        (Some(x), Some(y)) if x != y => {
            return Err(format!(
                "--mode {} and --fuse={y} disagree; give one of them",
                if x { "fuse" } else { "poll" }
            ))
        }
        (Some(x), _) | (None, Some(x)) => Some(x),
        (None, None) => None,
    };
    match want_fuse {
        Some(true) => {
            if a.no_fuse {
                return Err(
                    "--mode fuse (or --fuse) contradicts --no-fuse; give one of them".into(),
                );
            }
            if a.mountpoint.is_none() && !a.once {
                return Err("--mode fuse needs --mountpoint DIR: mountd serves its FUSE view at a mountpoint of its own (the mirror in --local-dir is never mounted over); or use --mode poll to keep --local-dir in sync as a plain directory".into());
            }
        }
        Some(false) => a.no_fuse = true,
        None => {
            if !a.once && !a.no_fuse && a.mountpoint.is_none() {
                a.no_fuse = true;
                notes.push("no --mountpoint: keeping --local-dir in sync as a plain directory (relayfile-mount's default --mode poll; pass --mountpoint DIR for the FUSE view)".into());
            }
        }
    }
    if a.no_fuse && !a.once {
        if let Some(mp) = &a.mountpoint {
            w.push(format!(
                "--mountpoint {} is not used: the mirror is served as a plain directory (--no-fuse / --mode poll)",
                mp.display()
            ));
        }
    }
    Ok(())
}

/// Timeouts: every value relayfile-mount accepts is accepted (companions clamped in lockstep, one
/// warning each). Returns the per-read timeout.
fn resolve_timeouts(a: &mut RunArgs, m: &ArgMatches, w: &mut Vec<String>) -> Duration {
    if a.bootstrap_idle_timeout.is_zero() {
        w.push(format!(
            "{}: the no-progress watchdog cannot be turned off in mountd (a stuck bootstrap would never be cancelled); using the default {}",
            origin(m, "bootstrap_idle_timeout", "--bootstrap-idle-timeout", "RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT"),
            fmt(DEFAULT_IDLE)
        ));
        a.bootstrap_idle_timeout = DEFAULT_IDLE;
    }
    let idle = a.bootstrap_idle_timeout;
    let configured_read = if explicit(m, "read_timeout") {
        a.read_timeout
    } else {
        None
    };
    let (mut read, warn) = resolve_read_timeout(configured_read, idle);
    w.extend(warn);
    if let Some(t) = a.timeout {
        let src = origin(m, "timeout", "--timeout", "RELAYFILE_MOUNT_TIMEOUT");
        if !t.is_zero() {
            if configured_read.is_none() {
                read = read.min(t);
            }
            if !explicit(m, "connect_timeout") {
                a.connect_timeout = a.connect_timeout.min(t);
            }
        }
        w.push(format!(
            "{src} {} (relayfile-mount's per-cycle HTTP budget): mountd never puts a deadline on a whole request or cycle (it would kill a long export that is still arriving); it bounds each connect ({}) and each read ({}) instead",
            fmt(t),
            fmt(a.connect_timeout),
            fmt(read)
        ));
    }
    a.read_timeout = Some(read);
    if a.export_timeout.is_zero() {
        let eff = idle * 3 / 4;
        w.push(format!(
            "{} 0: the export always has a sub-deadline in mountd; using 3/4 of the bootstrap idle timeout ({}) (use --no-export to skip the export)",
            origin(m, "export_timeout", "--export-timeout", "RELAYFILE_EXPORT_TIMEOUT"),
            fmt(eff)
        ));
        a.export_timeout = eff;
    } else {
        let (eff, warn) = clamp_export_timeout(
            a.export_timeout,
            idle,
            a.bootstrap_timeout,
            explicit(m, "export_timeout"),
        );
        if !a.no_export {
            w.extend(warn);
        }
        a.export_timeout = eff;
    }
    if a.interval.is_zero() {
        w.push(format!(
            "{} 0: the poll interval must be positive; using the default {}",
            origin(m, "interval", "--interval", "RELAYFILE_MOUNT_INTERVAL"),
            fmt(DEFAULT_INTERVAL)
        ));
        a.interval = DEFAULT_INTERVAL;
    }

    read
}

/// Concurrency: at most 64, like relayfile-mount.
fn resolve_concurrency(a: &mut RunArgs, m: &ArgMatches, w: &mut Vec<String>) {
    for (id, flag, env) in [
        (
            "read_concurrency",
            "--read-concurrency",
            "RELAYFILE_BOOTSTRAP_READ_CONCURRENCY",
        ),
        (
            "incremental_read_concurrency",
            "--incremental-read-concurrency",
            "RELAYFILE_INCREMENTAL_READ_CONCURRENCY",
        ),
    ] {
        let v = if id == "read_concurrency" {
            &mut a.read_concurrency
        } else {
            &mut a.incremental_read_concurrency
        };
        if *v > MAX_CONCURRENCY {
            w.push(format!(
                "{} {} clamped to {MAX_CONCURRENCY} (the most relayfile-mount allows too)",
                origin(m, id, flag, env),
                *v
            ));
            *v = MAX_CONCURRENCY;
        } else if *v < 1 {
            w.push(format!(
                "{} {}: must be at least 1; using the default {DEFAULT_CONCURRENCY}",
                origin(m, id, flag, env),
                *v
            ));
            *v = DEFAULT_CONCURRENCY;
        }
    }
    if explicit(m, "incremental_read_concurrency")
        && a.incremental_read_concurrency != a.read_concurrency
    {
        w.push(format!(
            "RELAYFILE_INCREMENTAL_READ_CONCURRENCY={}: mountd uses one read concurrency for the bootstrap and incremental sync (--read-concurrency, now {}); the incremental value has no separate effect",
            a.incremental_read_concurrency, a.read_concurrency
        ));
    }
}

/// Stall guard, mass-delete guard and audits: relayfile-mount's names, unless mountd's own are set.
fn resolve_guards(a: &mut RunArgs, m: &ArgMatches, w: &mut Vec<String>, notes: &mut Vec<String>) {
    // Stall guard and mass-delete guard: relayfile-mount's names, unless mountd's own are set.
    if let Some(n) = a.bootstrap_stall_cycles {
        if explicit(m, "stall_limit") {
            w.push(format!("RELAYFILE_BOOTSTRAP_STALL_CYCLES={n} is overridden by --stall-limit {} (MOUNTD_STALL_LIMIT)", a.stall_limit));
        } else if n >= 1 {
            a.stall_limit = u32::try_from(n).unwrap_or(u32::MAX);
        } else {
            w.push(format!(
                "RELAYFILE_BOOTSTRAP_STALL_CYCLES={n}: must be at least 1; using the default {}",
                a.stall_limit
            ));
        }
    }
    if let Some(ratio) = a.snapshot_delete_min_ratio {
        if explicit(m, "mass_delete_ratio") {
            w.push(format!("RELAYFILE_SNAPSHOT_DELETE_MIN_RATIO={ratio} is overridden by --mass-delete-ratio {} (MOUNTD_MASS_DELETE_RATIO)", a.mass_delete_ratio));
        } else {
            a.mass_delete_ratio = ratio;
        }
    }

    // Audits ("full pulls"): the minimum interval, and at most every N poll cycles.
    if let Some(d) = a.full_pull_min_interval_env {
        if !explicit(m, "audit_interval") {
            a.audit_interval = d;
        }
    }
    if let Some(n) = a.full_pull_every {
        if n >= 1 && !a.audit_interval.is_zero() {
            let every = a
                .interval
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
            if every > a.audit_interval {
                notes.push(format!(
                    "RELAYFILE_MOUNT_FULL_PULL_EVERY={n}: audits at most every {n} poll intervals ({})",
                    fmt(every)
                ));
                a.audit_interval = every;
            }
        }
    }
}

/// relayfile-mount settings with no effect here, one warning each.
fn warn_no_effect(a: &RunArgs, m: &ArgMatches, read: Duration, w: &mut Vec<String>) {
    if let Some(n) = a.bootstrap_max_files_per_cycle {
        if n != -1 {
            w.push(format!(
                "{} {n}: mountd has no per-cycle file budget: it commits a checkpoint after every page and runs a healthy bootstrap to completion (as with -1)",
                origin(m, "bootstrap_max_files_per_cycle", "--bootstrap-max-files-per-cycle", "RELAYFILE_BOOTSTRAP_MAX_FILES_PER_CYCLE")
            ));
        }
    }
    let c = &a.compat;
    let cm = m;
    let o = |id: &str, flag: &str, env: &str| origin(cm, id, flag, env);
    // --websocket is honoured (the realtime stream, on by default): nothing to warn about.
    if let Some(d) = c.cursor_timeout {
        w.push(format!("{} {}: no separate effect in mountd: resolving the events tip is one ordinary request under the per-read timeout ({}) and retries", o("cursor_timeout", "--cursor-timeout", "RELAYFILE_CURSOR_TIMEOUT"), fmt(d), fmt(read)));
    }
    if let Some(d) = c.fuse_content_ttl {
        w.push(format!("{} {}: no effect: mountd keeps no FUSE content cache (reads go through to the mirror, and the kernel's caches are invalidated when files change); the metadata TTL is --metadata-ttl", o("fuse_content_ttl", "--fuse-content-ttl", "RELAYFILE_MOUNT_FUSE_CONTENT_TTL"), fmt(d)));
    }
    let diag = "a diagnostic of the Go daemon that mountd does not have";
    if c.low_memory == Some(true) {
        w.push(format!("{}: no effect: mountd's memory stays flat already (the export is streamed, the listing goes page by page)", o("low_memory", "--low-memory", "RELAYFILE_MOUNT_LOW_MEMORY")));
    }
    if c.pprof_addr.is_some() {
        w.push(format!(
            "{}: no effect: {diag} (mountd serves Prometheus metrics with --metrics-addr)",
            o("pprof_addr", "--pprof-addr", "RELAYFILE_MOUNT_PPROF_ADDR")
        ));
    }
    if c.memlog_interval.is_some() {
        w.push(format!(
            "{}: no effect: {diag} (mountd serves Prometheus metrics with --metrics-addr)",
            o(
                "memlog_interval",
                "--memlog-interval",
                "RELAYFILE_MOUNT_MEMLOG_INTERVAL"
            )
        ));
    }
    if c.log_http_status == Some(true) {
        w.push(format!("{}: no effect: mountd logs every failed request with its status and correlation id already; -v logs every request", o("log_http_status", "--log-http-status", "RELAYFILE_MOUNT_LOG_HTTP_STATUS")));
    }
    let ro = "mountd has no provider layout, so this has no effect";
    let writeback: [(bool, &str, &str, &str); 4] = [
        (
            c.provider.is_some(),
            "provider",
            "--provider",
            "RELAYFILE_MOUNT_PROVIDER",
        ),
        (
            c.local_layout.is_some(),
            "local_layout",
            "--local-layout",
            "RELAYFILE_MOUNT_LOCAL_LAYOUT",
        ),
        (
            c.lazy_repos.is_some(),
            "lazy_repos",
            "--lazy-repos",
            "RELAYFILE_MOUNT_LAZY_REPOS",
        ),
        (
            c.lazy_skip_untracked_push == Some(true),
            "lazy_skip_untracked_push",
            "--lazy-skip-untracked-push",
            "RELAYFILE_MOUNT_LAZY_SKIP_UNTRACKED_PUSH",
        ),
    ];
    for (set, id, flag, env) in writeback {
        if set {
            w.push(format!("{}: {ro}", o(id, flag, env)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(args: &[&str]) -> (RunArgs, Resolution) {
        let mut argv = vec!["mountd"];
        argv.extend_from_slice(args);
        let m = Cli::command().try_get_matches_from(argv).unwrap();
        let mut cli = Cli::from_arg_matches(&m).unwrap();
        let r = resolve(&mut cli.run, &m).unwrap();
        (cli.run, r)
    }

    #[test]
    fn reference_command_line_resolves() {
        let (a, r) = resolved(&[
            "--once",
            "--base-url",
            "http://x",
            "--workspace",
            "ws",
            "--token",
            "t",
            "--local-dir",
            "/tmp/x",
            "--timeout",
            "10m",
            "--bootstrap-max-files-per-cycle",
            "-1",
            "--websocket=false",
            "--interval-jitter",
            "0.3",
        ]);
        assert!(a.once);
        assert_eq!(a.compat.websocket, Some(false));
        assert_eq!(a.interval_jitter, 0.3);
        assert_eq!(a.read_timeout, Some(Duration::from_secs(30)));
        assert!(r.warnings.iter().any(|w| w.contains("visible")));
        assert!(r.warnings.iter().any(|w| w.contains("--timeout 10m")));
        assert!(!r
            .warnings
            .iter()
            .any(|w| w.contains("per-cycle file budget")));
    }

    #[test]
    fn websocket_is_honoured_not_warned() {
        for flag in ["--websocket", "--websocket=true", "--websocket=false"] {
            let (_, r) = resolved(&[flag]);
            assert!(
                !r.warnings.iter().any(|w| w.contains("websocket")),
                "{flag}: {:?}",
                r.warnings
            );
        }
        let (a, _) = resolved(&["--websocket"]);
        assert_eq!(a.compat.websocket, Some(true));
    }

    #[test]
    fn concurrency_is_capped() {
        let (a, r) = resolved(&["--read-concurrency", "200"]);
        assert_eq!(a.read_concurrency, 64);
        assert!(r.warnings.iter().any(|w| w.contains("clamped to 64")));
    }

    #[test]
    fn mode_poll_means_no_fuse() {
        let (a, _) = resolved(&["--mode", "poll"]);
        assert!(a.no_fuse);
        let (a, _) = resolved(&["--fuse=false"]);
        assert!(a.no_fuse);
    }
}
