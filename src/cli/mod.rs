//! The command line: arguments and their validation, `--once`, the long-running service, `mountd status`
//! and the one-daemon-per-mirror lock. This layer wires the others together and maps outcomes to exit codes.
pub mod args;
pub mod lock;
pub mod once;
pub mod service;
pub mod status;
