//! `mountd status`: where a mirror stands, read from its state database.
use crate::cli::args::StatusArgs;
use crate::cli::exit;
use crate::store::db::{MetaKey, State, StateError};
use serde::Serialize;

/// `mountd status`.
pub fn command(s: &StatusArgs) -> i32 {
    let db = match (&s.state_db, &s.local_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => crate::cli::setup::state_db_path(d, None),
        (None, None) => {
            eprintln!("mountd status: pass --local-dir DIR or --state-db PATH");
            return exit::USAGE;
        }
    };
    let status = State::open_existing(&db).and_then(|st| read(&st));
    match status {
        Ok(status) => {
            if s.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serializes")
                );
            } else {
                print!("{}", render(&status));
            }
            if status.bootstrap_complete && status.quarantined.is_empty() {
                exit::OK
            } else if status.bootstrap_complete {
                exit::QUARANTINED
            } else {
                exit::FAILED
            }
        }
        Err(e) => {
            eprintln!("mountd status: {e}");
            exit::USAGE
        }
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
    pub last_sync_at: Option<String>,
    /// Seconds since the last successful sync (bootstrap completion or events pass).
    pub lag_seconds: Option<u64>,
    pub last_audit_at: Option<String>,
    pub last_error: Option<String>,
    pub no_progress_runs: u64,
    pub traversal: Option<Traversal>,
    pub quarantined: Vec<crate::store::db::Quarantined>,
    pub remote: Remote,
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
    let last_sync_at = st.meta(MetaKey::LastSyncAt)?;
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
    Ok(Status {
        state_db: st.path().display().to_string(),
        phase: phase.into(),
        bootstrap_complete: complete,
        files: st.tracked_files()?,
        bytes: st.tracked_bytes()?,
        events_cursor: st.events_cursor()?,
        events_feed: st.has_feed()?,
        last_path: st.meta(MetaKey::LastPath)?,
        lag_seconds: last_sync_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs()),
        last_sync_at,
        last_audit_at: st.meta(MetaKey::LastAuditAt)?,
        last_error: st.meta(MetaKey::LastError)?.filter(|s| !s.is_empty()),
        no_progress_runs: st.no_progress_runs()?,
        traversal,
        quarantined: st.quarantined()?,
        remote: Remote {
            base_url: st.meta(MetaKey::IdentityBaseUrl)?,
            workspace: st.meta(MetaKey::IdentityWorkspace)?,
            remote_root: st.meta(MetaKey::IdentityRemoteRoot)?,
            local_dir: st.meta(MetaKey::IdentityLocalDir)?,
        },
    })
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
        "last sync:     {} (via {}){}\n",
        opt(&s.last_sync_at),
        opt(&s.last_path),
        s.lag_seconds
            .map_or(String::new(), |l| format!(", {l}s ago"))
    ));
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
        out.push_str(&format!("last error:    {e}\n"));
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
    out
}
