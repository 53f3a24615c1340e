//! mountd: a resumable mirror of a relayfile workspace on local disk, served read-only over FUSE.
//!
//! Layers (see `docs/ARCHITECTURE.md`):
//! - [`remote`]: the one HTTP client type for the relayfile API (retries, rate-limit gate, error classes).
//! - [`state`]: the SQLite state database, the only owner of durable state.
//! - [`store`]: the local mirror on disk (path mapping, verified atomic writes).
//! - [`bootstrap`] and [`incremental`]: the sync engine, talking only to `remote`, `store` and `state`.
//! - [`fs`] / [`fuse`]: the read-only file system view, knowing nothing about HTTP.
//! - [`refremote`]: the reference relayfile server used by tests, the demo and the benchmarks.
pub mod app;
pub mod bootstrap;
pub mod config;
pub mod engine;
pub mod fs;
pub mod fuse;
pub mod incremental;
pub mod lock;
pub mod metrics;
pub mod paths;
pub mod progress;
pub mod refremote;
pub mod remote;
pub mod service;
pub mod state;
pub mod statefile;
pub mod status;
pub mod store;
pub mod watchdog;
