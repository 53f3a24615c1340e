//! Documented exit codes (see `mountd --help`) and how engine errors map onto them.
use crate::sync::engine::SyncError;

pub const OK: i32 = 0;
pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const AUTH: i32 = 3;
pub const STALLED: i32 = 4;
pub const QUARANTINED: i32 = 5;
pub const MASS_DELETE: i32 = 6;

pub fn code_for(e: &SyncError) -> i32 {
    match e {
        SyncError::Remote(r) if r.is_auth() || r.status() == Some(403) => AUTH,
        SyncError::Stalled(_) | SyncError::GaveUp(_) => STALLED,
        SyncError::MassDelete { .. } | SyncError::ServerRewound { .. } => MASS_DELETE,
        _ => FAILED,
    }
}

pub fn hint_for(e: &SyncError) -> String {
    if let SyncError::State(s) = e {
        if let Some(detail) = s.disk_full_detail() {
            return format!("the disk holding the state database is full: {detail}; free space there (or move --state-db to another file system) and run again; nothing is lost");
        }
    }
    let hint: &str = match e {
        SyncError::Remote(r) => r.hint(),
        SyncError::Stalled(_) | SyncError::GaveUp(_) => "run again to resume from the checkpoint; if it keeps stalling, check the server (or raise --bootstrap-idle-timeout)",
        SyncError::MassDelete { .. } => "check that --base-url, --workspace and --remote-path point at the right tree",
        SyncError::ServerRewound { .. } => "the server lost or restored its data (a restart of an in-memory server, a restore from backup): the local files it no longer has are kept; if the server is right, --allow-mass-delete makes the mirror exact; if the files should be on the server, restore them there (mountd does not push them back on its own)",
        SyncError::State(s) if s.is_disk_full() => "the disk holding the state database is full: free space there (or move --state-db to another file system) and run again; nothing is lost",
        SyncError::State(_) => "the state database is unusable; move it aside to start over (files on disk are kept and re-verified by hash)",
        SyncError::Local(_) => "fix the local file system named above (free space, permissions, read-only mount, failing disk) and run again: no file was quarantined for it and nothing committed refers to bytes that were not written",
        SyncError::Internal(_) => "this is a bug in mountd; please report it with the log",
        SyncError::Systemic { class, .. } => crate::sync::engine::systemic_hint(class),
    };
    hint.to_string()
}
