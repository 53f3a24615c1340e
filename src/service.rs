//! The long-running service: bootstrap if needed, then serve (FUSE or plain directory) and apply the
//! events feed every interval (±20% jitter) until SIGTERM/SIGINT.
use crate::app::{self, exit};
use crate::config::{RunArgs, StatusArgs};

/// `mountd status`.
pub fn status_command(s: &StatusArgs) -> i32 {
    let db = match (&s.state_db, &s.local_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => app::state_db_path(d, None),
        (None, None) => {
            eprintln!("mountd status: pass --local-dir DIR or --state-db PATH");
            return exit::USAGE;
        }
    };
    match crate::state::State::open_existing(&db) {
        Ok(st) => {
            let status = crate::status::read(&st);
            if s.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serializes")
                );
            } else {
                print!("{}", crate::status::render(&status));
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

pub fn run(_a: &RunArgs, _rt: &tokio::runtime::Runtime) -> i32 {
    eprintln!("mountd: service mode is not implemented yet; use --once");
    exit::USAGE
}
