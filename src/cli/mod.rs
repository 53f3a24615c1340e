//! The command line: arguments and their validation, wiring the layers together, `--once`, the
//! long-running service, `mountd status`, the one-daemon-per-mirror lock and the exit codes.
pub mod args;
pub mod exit;
pub mod lock;
pub mod metrics_server;
pub mod once;
pub mod service;
pub mod setup;
pub mod status;
