//! `mountd status`: where a mirror stands, read from its state database.
use crate::store::db::State;
use serde::Serialize;

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

pub fn read(st: &State) -> Status {
    let ck = st.checkpoint();
    let complete = st.is_complete();
    let phase = match (&ck, complete) {
        (Some(_), true) => "synced (audit in progress)",
        (None, true) => "synced",
        (Some(_), false) => "bootstrapping",
        (None, false) => "not started",
    };
    Status {
        state_db: st.path().display().to_string(),
        phase: phase.into(),
        bootstrap_complete: complete,
        files: st.tracked_files(),
        bytes: st.tracked_bytes(),
        events_cursor: st.events_cursor(),
        events_feed: st.has_feed(),
        last_path: st.meta("last_path"),
        lag_seconds: st
            .meta("last_sync_at")
            .and_then(|t| humantime::parse_rfc3339(&t).ok())
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs()),
        last_sync_at: st.meta("last_sync_at"),
        last_audit_at: st.meta("last_audit_at"),
        last_error: st.meta("last_error").filter(|s| !s.is_empty()),
        no_progress_runs: st
            .meta("no_progress_runs")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        traversal: ck.map(|c| Traversal {
            phase: format!("{:?}", c.phase).to_lowercase(),
            current_dir: st.queue_front().map(|(_, d)| d),
            queued_dirs: st.queue_len(),
            pages_done: c.pages_done,
            files_done: c.files_done,
            total_files: c.total_files,
        }),
        quarantined: st.quarantined(),
        remote: Remote {
            base_url: st.meta("identity.base_url"),
            workspace: st.meta("identity.workspace"),
            remote_root: st.meta("identity.remote_root"),
            local_dir: st.meta("identity.local_dir"),
        },
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
