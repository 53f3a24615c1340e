//! `mountd status`: where a mirror stands, read from its state database, and whether a daemon holds it.
use crate::cli::args::StatusArgs;
use crate::cli::exit;
use crate::store::db::{MetaKey, State, StateError};
use serde::Serialize;
use std::time::SystemTime;

/// `mountd status` exits 7 when the mirror is complete but degraded: the last sync failed (the
/// remote is unavailable or failing) and the mirror holds the last good state.
pub const DEGRADED: i32 = 7;

/// The exit codes of `mountd status` (its `--help`).
pub const EXIT_CODES_HELP: &str = "EXIT CODES:\n  \
    0  healthy: bootstrap complete, the last sync succeeded, nothing quarantined\n  \
    1  the bootstrap is not complete (no usable mirror yet)\n  \
    2  usage error, or no usable state database\n  \
    5  healthy except for quarantined files, unsettled conflicts, write-denied or too-large files (listed)\n  \
    7  degraded: complete, but the last sync failed (remote unavailable or failing); the mirror holds the\n     \
    last good state. `lastError`, `errorSince` and `failedAttempts` say what and since when\n\n\
    Whether a daemon holds the mirror (and its pid) is reported, not reflected in the exit code.";

/// `mountd status`.
pub fn command(s: &StatusArgs) -> i32 {
    let db = match s.mirror.state_db() {
        Ok(db) => db,
        Err(e) => {
            eprintln!("mountd status: {e}");
            return exit::USAGE;
        }
    };
    // A starting mountd creates the file empty, then switches it to WAL (which writes its first page):
    // opening it in between would race that switch and could make the daemon fail. Not yet usable.
    if std::fs::metadata(&db).is_ok_and(|m| m.len() == 0) {
        eprintln!(
            "mountd status: state database {} is being created (a mountd is starting); try again in a moment",
            db.display()
        );
        return exit::USAGE;
    }
    let status = State::open_existing(&db).and_then(|st| read(&st));
    match status {
        Ok(mut status) => {
            match crate::cli::lock::probe(&db) {
                Ok(crate::cli::lock::Holder::Held(pid)) => {
                    status.daemon_running = true;
                    status.daemon_pid = pid;
                }
                Ok(crate::cli::lock::Holder::Free) => status.daemon_stopped(),
                Err(e) => eprintln!("mountd status: cannot check the mirror lock: {e}"),
            }
            if s.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serializes")
                );
            } else {
                print!("{}", render(&status));
            }
            exit_code(&status)
        }
        Err(e) => {
            eprintln!("mountd status: {e}");
            exit::USAGE
        }
    }
}

/// See [`EXIT_CODES_HELP`].
pub fn exit_code(s: &Status) -> i32 {
    if !s.bootstrap_complete {
        exit::FAILED
    } else if s.degraded {
        DEGRADED
    } else if !s.quarantined.is_empty() || s.push.unsettled() {
        exit::QUARANTINED
    } else {
        exit::OK
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub state_db: String,
    pub phase: String,
    pub bootstrap_complete: bool,
    pub files: u64,
    pub bytes: u64,
    pub events_cursor: Option<String>,
    pub events_feed: bool,
    pub last_path: Option<String>,
    /// "healthy", "degraded" or "incomplete" (see [`EXIT_CODES_HELP`]).
    pub health: String,
    pub degraded: bool,
    /// A process holds the mirror's lock (a service, or a `--once` run).
    pub daemon_running: bool,
    pub daemon_pid: Option<u32>,
    /// When the engine last finished a sync (bootstrap completion or events pass).
    pub last_sync_at: Option<String>,
    /// When an attempt or sync pass last succeeded end to end.
    pub last_success_at: Option<String>,
    /// Seconds since the last successful sync (`lastSuccessAt`, else `lastSyncAt`).
    pub lag_seconds: Option<u64>,
    pub last_audit_at: Option<String>,
    /// The error of the last attempt or pass, `null` once one succeeded.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// When the current run of failures began.
    pub error_since: Option<String>,
    /// Consecutive failed attempts or passes since the last success.
    pub failed_attempts: u64,
    pub no_progress_runs: u64,
    pub traversal: Option<Traversal>,
    pub quarantined: Vec<crate::store::db::Quarantined>,
    pub remote: Remote,
    /// The realtime stream (`/fs/ws`) as the service last recorded it: `state` is `connected`,
    /// `polling` (the stream is down, the feed is polled meanwhile), `off` (`--websocket=false`) or
    /// `stopped` (no daemon); `lagMs` is the delivery lag of the last event it applied. `null` before
    /// a service ever ran on this mirror.
    pub realtime: Option<crate::sync::realtime::RealtimeState>,
    /// True while a running service has the stream connected.
    pub realtime_connected: bool,
    /// Two-way sync: local changes not yet on the remote, conflicts, write issues.
    pub push: PushStatus,
    /// The last check of the mirror's file count against the server's (`totalFiles`): when, both
    /// counts, the verdict (`match`, `mismatch`, `inconclusive`, `unsupported`) and what followed.
    pub count_check: Option<crate::sync::count_check::CountCheck>,
    /// Why the server is believed rewound or reset, while the local files it lost are kept.
    pub server_rewound: Option<String>,
}

/// The push side in `mountd status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushStatus {
    /// Pending local changes, their bytes, the age of the oldest (seconds), and how many deletes
    /// wait for an operator (the mass-deletion guard).
    pub pending: u64,
    pub pending_bytes: u64,
    pub oldest_pending_seconds: Option<u64>,
    pub held_deletes: u64,
    pub changes: Vec<crate::store::db::Outgoing>,
    pub conflicts: Vec<crate::store::db::Conflict>,
    pub write_issues: Vec<crate::store::db::WriteIssue>,
}

impl PushStatus {
    /// Something an operator must settle (exit 5).
    pub fn unsettled(&self) -> bool {
        !self.conflicts.is_empty()
            || self
                .write_issues
                .iter()
                .any(|i| i.kind != crate::store::db::IssueKind::Unsupported)
    }

    fn read(st: &State) -> Result<PushStatus, StateError> {
        let sum = st.outbox_summary()?;
        let now = crate::store::db::now_secs();
        Ok(PushStatus {
            pending: sum.pending,
            pending_bytes: sum.bytes,
            oldest_pending_seconds: sum.oldest.map(|t| now.saturating_sub(t).max(0) as u64),
            held_deletes: sum.held,
            changes: st.outbox()?.into_iter().take(100).collect(),
            conflicts: st.conflicts()?,
            write_issues: st.write_issues()?,
        })
    }
}

impl Status {
    /// No process holds the mirror: whatever the stream's state was, it is not running now.
    fn daemon_stopped(&mut self) {
        if let Some(r) = &mut self.realtime {
            if r.state != "off" {
                r.state = "stopped".into();
                r.reason = Some("no mountd service is running".into());
            }
        }
        self.realtime_connected = false;
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traversal {
    pub phase: String,
    pub current_dir: Option<String>,
    pub queued_dirs: u64,
    pub pages_done: u64,
    pub files_done: u64,
    pub total_files: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Remote {
    pub base_url: Option<String>,
    pub workspace: Option<String>,
    pub remote_root: Option<String>,
    pub local_dir: Option<String>,
}

pub fn read(st: &State) -> Result<Status, StateError> {
    let ck = st.checkpoint()?;
    let complete = st.is_complete()?;
    let phase = match (&ck, complete) {
        (Some(_), true) => "synced (audit in progress)",
        (None, true) => "synced",
        (Some(_), false) => "bootstrapping",
        (None, false) => "not started",
    };
    let nonempty = |k: MetaKey| -> Result<Option<String>, StateError> {
        Ok(st.meta(k)?.filter(|s| !s.is_empty()))
    };
    let last_sync_at = nonempty(MetaKey::LastSyncAt)?;
    let last_success_at = nonempty(MetaKey::LastSuccessAt)?;
    let last_error = nonempty(MetaKey::LastError)?;
    let degraded = complete && last_error.is_some();
    let traversal = match ck {
        Some(c) => Some(Traversal {
            phase: format!("{:?}", c.phase).to_lowercase(),
            current_dir: st.queue_front()?.map(|q| q.path),
            queued_dirs: st.queue_len()?,
            pages_done: c.pages_done,
            files_done: c.files_done,
            total_files: c.total_files,
        }),
        None => None,
    };
    let realtime = st
        .meta(MetaKey::RealtimeState)?
        .and_then(|j| crate::sync::realtime::RealtimeState::parse(&j));
    Ok(Status {
        count_check: st
            .meta(MetaKey::CountCheck)?
            .and_then(|j| crate::sync::count_check::CountCheck::parse(&j)),
        server_rewound: nonempty(MetaKey::ServerRewound)?,
        realtime_connected: realtime.as_ref().is_some_and(|r| r.state == "connected"),
        realtime,
        state_db: st.path().display().to_string(),
        phase: phase.into(),
        bootstrap_complete: complete,
        files: st.tracked_files()?,
        bytes: st.tracked_bytes()?,
        events_cursor: st.events_cursor()?,
        events_feed: st.has_feed()?,
        last_path: st.meta(MetaKey::LastPath)?,
        health: match (complete, degraded) {
            (false, _) => "incomplete",
            (true, true) => "degraded",
            (true, false) => "healthy",
        }
        .into(),
        degraded,
        daemon_running: false,
        daemon_pid: None,
        lag_seconds: age(last_success_at.as_deref().or(last_sync_at.as_deref())),
        last_sync_at,
        last_success_at,
        last_audit_at: st.meta(MetaKey::LastAuditAt)?,
        last_error,
        last_error_at: nonempty(MetaKey::LastErrorAt)?,
        error_since: nonempty(MetaKey::ErrorSince)?,
        failed_attempts: nonempty(MetaKey::FailedAttempts)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        no_progress_runs: st.no_progress_runs()?,
        traversal,
        quarantined: st.quarantined()?,
        push: PushStatus::read(st)?,
        remote: Remote {
            base_url: st.meta(MetaKey::IdentityBaseUrl)?,
            workspace: st.meta(MetaKey::IdentityWorkspace)?,
            remote_root: st.meta(MetaKey::IdentityRemoteRoot)?,
            local_dir: st.meta(MetaKey::IdentityLocalDir)?,
        },
    })
}

/// Seconds since an RFC 3339 time.
fn age(t: Option<&str>) -> Option<u64> {
    let t = humantime::parse_rfc3339(t?).ok()?;
    Some(SystemTime::now().duration_since(t).ok()?.as_secs())
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 2 * 3600 => format!("{}m ago", s / 60),
        s if s < 2 * 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "mirror:        {} workspace {} path {}\n",
        opt(&s.remote.base_url),
        opt(&s.remote.workspace),
        opt(&s.remote.remote_root)
    ));
    out.push_str(&format!("local dir:     {}\n", opt(&s.remote.local_dir)));
    out.push_str(&format!(
        "daemon:        {}\n",
        match (s.daemon_running, s.daemon_pid) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            (true, None) => "running (pid unknown)".to_string(),
            (false, _) => "not running".to_string(),
        }
    ));
    let health = match (&s.error_since, s.failed_attempts) {
        (Some(since), n) if s.last_error.is_some() => format!(
            "{} (failing since {since}{}, {n} failed attempt{})",
            s.health,
            age(Some(since)).map_or(String::new(), |a| format!(", {}", ago(a))),
            if n == 1 { "" } else { "s" }
        ),
        _ => s.health.clone(),
    };
    out.push_str(&format!("health:        {health}\n"));
    out.push_str(&format!("phase:         {}\n", s.phase));
    out.push_str(&format!("files:         {} ({} bytes)\n", s.files, s.bytes));
    out.push_str(&format!(
        "events cursor: {}{}\n",
        opt(&s.events_cursor),
        if s.events_feed {
            ""
        } else {
            " (no feed: periodic listings)"
        }
    ));
    out.push_str(&format!(
        "last success:  {}{}\n",
        opt(&s.last_success_at.clone().or_else(|| s.last_sync_at.clone())),
        s.lag_seconds
            .map_or(String::new(), |l| format!(" ({})", ago(l)))
    ));
    out.push_str(&format!(
        "last sync:     {} (via {})\n",
        opt(&s.last_sync_at),
        opt(&s.last_path),
    ));
    if let Some(c) = &s.count_check {
        out.push_str(&format!("count check:   {} at {}\n", c.describe(), c.at));
    }
    if let Some(why) = &s.server_rewound {
        out.push_str(&format!(
            "server reset:  {why}; local files it lost are kept (--allow-mass-delete to follow it)\n"
        ));
    }
    if let Some(r) = &s.realtime {
        let since = r
            .since
            .as_deref()
            .map_or(String::new(), |t| match age(Some(t)) {
                Some(a) => format!(" since {t} ({})", ago(a)),
                None => format!(" since {t}"),
            });
        let line = match r.state.as_str() {
            "connected" => {
                let last = match (&r.last_event_id, r.lag_ms) {
                    (Some(id), Some(lag)) => format!("; last event {id}, lag {lag} ms"),
                    (Some(id), None) => format!("; last event {id}"),
                    _ => String::new(),
                };
                format!("connected{since}{last}")
            }
            "polling" => format!(
                "down{since}, polling every interval meanwhile: {}",
                r.reason.as_deref().unwrap_or("-")
            ),
            other => format!("{other} ({})", r.reason.as_deref().unwrap_or("-")),
        };
        out.push_str(&format!("realtime:      {line}\n"));
    }
    if let Some(t) = &s.traversal {
        out.push_str(&format!(
            "traversal:     {} phase, {} pages, {} files done of {}, {} directories queued, at {}\n",
            t.phase,
            t.pages_done,
            t.files_done,
            t.total_files.map_or("?".into(), |n| n.to_string()),
            t.queued_dirs,
            opt(&t.current_dir)
        ));
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!(
            "last error:    {e}{}\n",
            s.last_error_at
                .as_deref()
                .map_or(String::new(), |t| format!(" (at {t})"))
        ));
    }
    if s.no_progress_runs > 0 {
        out.push_str(&format!(
            "stalled runs:  {} in a row without progress\n",
            s.no_progress_runs
        ));
    }
    out.push_str(&format!("quarantined:   {}\n", s.quarantined.len()));
    for q in &s.quarantined {
        out.push_str(&format!(
            "  {:?}: {} (attempts {}{})\n",
            q.path,
            q.reason,
            q.attempts,
            if q.permanent { ", permanent" } else { "" }
        ));
    }
    render_push(&s.push, &mut out);
    out
}

fn render_push(p: &PushStatus, out: &mut String) {
    let oldest = p
        .oldest_pending_seconds
        .map_or(String::new(), |a| format!(", oldest {}", ago(a)));
    out.push_str(&format!(
        "local changes: {} pending ({}{oldest})\n",
        p.pending,
        crate::store::space::human_bytes(p.pending_bytes)
    ));
    for c in &p.changes {
        let op = match c.op {
            crate::store::db::OpKind::Put => "write",
            crate::store::db::OpKind::Delete => "delete",
        };
        let why = c
            .held
            .as_deref()
            .or(c.last_error.as_deref())
            .map_or(String::new(), |w| format!(": {w}"));
        out.push_str(&format!("  {op} {:?}{why}\n", c.path));
    }
    if p.held_deletes > 0 {
        out.push_str(&format!(
            "held deletes:  {} (allow with `mountd outbox allow-deletes`, or restore the files)\n",
            p.held_deletes
        ));
    }
    out.push_str(&format!("conflicts:     {}\n", p.conflicts.len()));
    for c in &p.conflicts {
        out.push_str(&format!(
            "  {:?}: {} (local on {}, remote {}); local copy {}\n",
            c.path,
            c.reason,
            c.base_revision.as_deref().unwrap_or("(new file)"),
            c.remote_revision.as_deref().unwrap_or("(unknown)"),
            c.copy
        ));
    }
    for i in &p.write_issues {
        out.push_str(&format!("not pushed:    {:?}: {}\n", i.path, i.detail));
    }
}
