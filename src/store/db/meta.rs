//! The keys of the `meta` table. Nothing outside the store spells a key as a string: readers and
//! writers go through [`MetaKey`] and the typed accessors of [`super::State`] and [`super::Batch`].

/// One row of the `meta` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// "1" once a snapshot completed.
    BootstrapComplete,
    /// The last event id applied (never moves backwards).
    EventsCursor,
    /// "0" when the server has no events feed (periodic listings instead).
    Feed,
    /// The unfinished traversal, as JSON ([`super::Checkpoint`]).
    Checkpoint,
    /// The last snapshot stamp handed out.
    SnapshotSeq,
    /// How the last snapshot was listed: "export" or "tree".
    LastPath,
    LastSyncAt,
    LastAuditAt,
    LastError,
    /// When the last attempt or sync pass failed (RFC 3339; empty after a success).
    LastErrorAt,
    /// When the current run of failures began (RFC 3339; empty while healthy).
    ErrorSince,
    /// When an attempt or sync pass last succeeded end to end (RFC 3339).
    LastSuccessAt,
    /// Consecutive failed attempts or sync passes since the last success (any cause).
    FailedAttempts,
    /// Consecutive attempts without checkpoint progress (the stall guard).
    NoProgressRuns,
    /// Local files the remote does not have, found by the last full listing (reported, kept).
    ExtraFiles,
    /// The realtime stream's state as the service last recorded it (JSON: connected or polling, since
    /// when, why, the last event and its lag), for `mountd status`.
    RealtimeState,
    /// The device number of the mirror directory when it was first pushed from: a mirror directory
    /// now on another file system holds every local delete for an operator.
    RootDevice,
    /// "1": an operator allowed the local deletes held by the mass-deletion guard (cleared once no
    /// delete is pending).
    AllowDeletes,
    /// The last count check (JSON: when, the server's count, the mirror's, the verdict), for
    /// `mountd status` and the metrics.
    CountCheck,
    /// Why the server is believed rewound or reset (empty: it is not): until a full listing
    /// completes, its sweep deletes nothing without `--allow-mass-delete`.
    ServerRewound,
    IdentityBaseUrl,
    IdentityWorkspace,
    IdentityRemoteRoot,
    IdentityLocalDir,
}

impl MetaKey {
    pub fn as_str(self) -> &'static str {
        match self {
            MetaKey::BootstrapComplete => "bootstrap_complete",
            MetaKey::EventsCursor => "events_cursor",
            MetaKey::Feed => "feed",
            MetaKey::Checkpoint => "checkpoint",
            MetaKey::SnapshotSeq => "snapshot_seq",
            MetaKey::LastPath => "last_path",
            MetaKey::LastSyncAt => "last_sync_at",
            MetaKey::LastAuditAt => "last_audit_at",
            MetaKey::LastError => "last_error",
            MetaKey::LastErrorAt => "last_error_at",
            MetaKey::ErrorSince => "error_since",
            MetaKey::LastSuccessAt => "last_success_at",
            MetaKey::FailedAttempts => "failed_attempts",
            MetaKey::NoProgressRuns => "no_progress_runs",
            MetaKey::ExtraFiles => "extra_files",
            MetaKey::RealtimeState => "realtime_state",
            MetaKey::RootDevice => "root_device",
            MetaKey::AllowDeletes => "allow_deletes",
            MetaKey::CountCheck => "count_check",
            MetaKey::ServerRewound => "server_rewound",
            MetaKey::IdentityBaseUrl => "identity.base_url",
            MetaKey::IdentityWorkspace => "identity.workspace",
            MetaKey::IdentityRemoteRoot => "identity.remote_root",
            MetaKey::IdentityLocalDir => "identity.local_dir",
        }
    }
}

/// Numeric part of an event id (`evt_41` → 41): a cursor never moves backwards.
pub fn event_seq(id: &str) -> Option<u64> {
    id.rsplit('_').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids() {
        assert_eq!(super::event_seq("evt_41"), Some(41));
        assert_eq!(super::event_seq("garbage"), None);
    }
}
