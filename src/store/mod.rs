//! Local persistence: the mirror on disk ([`mirror`]), remote-to-local path mapping ([`paths`]) and the
//! SQLite state database ([`db`]), the one owner of durable state; [`space`] says how full a disk is.
pub mod change;
pub mod db;
pub mod mirror;
pub mod paths;
pub mod space;

pub use mirror::LocalStore;
