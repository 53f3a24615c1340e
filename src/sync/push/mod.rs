//! Two-way sync: the push side, beside the pull side.
//!
//! * [`detect`]: local changes of the plain-directory mirror found by comparing the disk with the
//!   records (a full scan at start, a subtree when the watcher says something moved there), recorded
//!   in the outbox in the same transaction as the local state they describe.
//! * [`watch`]: inotify on the mirror directory, or the paths the writable FUSE view changed; settled
//!   paths go to [`detect`].
//! * [`view`]: the push side as the writable FUSE view calls it (changed paths, `fsync`, refusals).
//! * [`pusher`]: the outbox pushed with `If-Match` (small files batched into `POST /fs/bulk` within
//!   the server's body cap), answers committed with the records; exactly once across crashes.
//! * [`conflict`]: what the pull does to a path with a local edit (never overwrite it silently: keep
//!   it, or keep a conflict copy), and settling a conflict.
//!
//! The outbox, conflicts and write issues live in the state database (`store/db/outbox.rs`).
pub mod conflict;
pub mod detect;
pub mod pusher;
pub mod view;
pub mod watch;

use std::time::Duration;

/// Which way changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Remote → local only; a local edit the remote replaces is kept as a conflict copy.
    PullOnly,
    /// Both ways (relayfile-mount's `--sync-mode mirror`, the default).
    Mirror,
}

/// Settings of the push side.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub direction: Direction,
    /// The server's request body cap (1 MiB by default on relayfile): batches stay within it, and a
    /// file whose encoded body exceeds it is reported as too large.
    pub max_body_bytes: usize,
    /// Fingerprint of the token (never the token): a path refused with 403 is tried again only
    /// under another token.
    pub token_id: Option<String>,
    /// How long a changed file must stay unchanged before it is pushed when no close was seen.
    pub file_settle: Duration,
    /// How long to wait after a delete or a rename away for the rest of an editor's atomic save.
    pub atomic_save_settle: Duration,
    /// Local change events within this window are taken together.
    pub batch_window: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            direction: Direction::PullOnly,
            max_body_bytes: 1 << 20,
            token_id: None,
            file_settle: Duration::from_millis(250),
            atomic_save_settle: Duration::from_millis(50),
            batch_window: Duration::from_millis(5),
        }
    }
}

impl PushConfig {
    pub fn two_way(&self) -> bool {
        self.direction == Direction::Mirror
    }
}

/// A short fingerprint of a token (SHA-256, 12 hex digits): tells tokens apart without keeping one.
pub fn token_fingerprint(token: &str) -> String {
    crate::remote::types::sha256_hex(token.as_bytes())[..12].to_string()
}
