//! The sync engine: the bootstrap (export with fall-through to the resumable tree pull), incremental
//! sync from the events feed, the no-progress watchdog, progress accounting and the outer wrapper's
//! state file. It reaches the remote only through [`crate::remote::Remote`] and the disk only through
//! [`crate::store`].
pub mod attempt;
pub mod bootstrap;
pub mod content;
pub mod count_check;
pub mod engine;
pub mod incremental;
pub mod progress;
pub mod push;
pub mod realtime;
pub mod statefile;
pub mod watchdog;
