//! `mountd reset`: re-tie a mirror to new settings (a typo in `--base-url` on a first run, a moved
//! directory, another workspace) without losing its files. The state DB forgets its identity, the
//! bootstrap-complete flag, the events cursor and any unfinished traversal; file records stay, so the
//! next run re-lists the remote and verifies every local file by hash, fetching only what differs.
use crate::cli::args::MirrorArgs;
use crate::cli::exit;
use crate::store::db::{MetaKey, State, StateError};

/// The rows `reset` deletes.
pub const RESET_KEYS: [MetaKey; 10] = [
    MetaKey::IdentityBaseUrl,
    MetaKey::IdentityWorkspace,
    MetaKey::IdentityRemoteRoot,
    MetaKey::IdentityLocalDir,
    MetaKey::BootstrapComplete,
    MetaKey::EventsCursor,
    MetaKey::Checkpoint,
    MetaKey::Feed,
    MetaKey::NoProgressRuns,
    MetaKey::LastError,
];

fn reset(st: &mut State) -> Result<(), StateError> {
    let mut b = st.batch()?;
    for k in RESET_KEYS {
        b.delete_meta(k)?;
    }
    b.queue_clear()?;
    b.commit()?;
    Ok(())
}

/// `mountd reset`.
pub fn command(r: &MirrorArgs) -> i32 {
    let db = match r.state_db() {
        Ok(db) => db,
        Err(e) => {
            eprintln!("mountd reset: {e}");
            return exit::USAGE;
        }
    };
    if !db.exists() {
        eprintln!(
            "mountd reset: no state DB at {}: nothing to reset (the next run ties the mirror to its settings)",
            db.display()
        );
        return exit::USAGE;
    }
    let _lock = match crate::cli::lock::acquire(&db) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mountd reset: {e}");
            return exit::USAGE;
        }
    };
    let mut st = match State::open_existing(&db) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("mountd reset: {e}");
            return exit::USAGE;
        }
    };
    let was = |k| st.meta(k).ok().flatten().unwrap_or_else(|| "-".into());
    let (url, ws, root) = (
        was(MetaKey::IdentityBaseUrl),
        was(MetaKey::IdentityWorkspace),
        was(MetaKey::IdentityRemoteRoot),
    );
    let files = st.tracked_files().unwrap_or(0);
    if let Err(e) = reset(&mut st) {
        eprintln!("mountd reset: {e}");
        return exit::FAILED;
    }
    println!(
        "mountd reset: {} no longer belongs to base_url {url:?}, workspace {ws:?}, remote path {root:?}.\n\
         Its {files} file record(s) and the files on disk are kept; the next run ties it to its settings,\n\
         re-lists the remote and verifies every file by hash (only files that differ are fetched).",
        db.display()
    );
    exit::OK
}
