//! mountd: a resumable mirror of a relayfile workspace on local disk, served read-only over FUSE.
//!
//! One directory per layer (see `docs/ARCHITECTURE.md`); each layer only uses the ones below it:
//! - [`cli`]: arguments, `--once`, the service loop, `mountd status`, the mirror lock.
//! - [`sync`]: the engine (bootstrap, incremental sync), the watchdog, progress and the state file.
//! - [`remote`]: the [`remote::Remote`] trait, the HTTP client, retries, error classes, wire types.
//! - [`store`]: the mirror on disk, remote-to-local path mapping, the SQLite state database.
//! - [`view`]: the read-only file system logic and its FUSE adapter (no HTTP anywhere below it).
//! - [`metrics`]: process-wide counters, rendered as Prometheus text.
#![deny(clippy::undocumented_unsafe_blocks)]
pub mod cli;
pub mod metrics;
pub mod remote;
pub mod store;
pub mod sync;
pub mod view;
