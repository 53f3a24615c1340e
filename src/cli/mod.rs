//! The command line: arguments and their validation (with relayfile-mount's flags in `compat`),
//! wiring the layers together, `--once`, the long-running service, `mountd status`, `check`,
//! `reset`, completions and the man page, the dangerous-configuration checks, the
//! one-daemon-per-mirror lock and the exit codes.
pub mod args;
pub mod check;
pub mod compat;
pub mod completions;
pub mod conflicts;
pub mod exit;
pub mod lock;
pub mod metrics_server;
pub mod once;
pub mod reset;
pub mod safety;
pub mod service;
pub mod setup;
pub mod status;
