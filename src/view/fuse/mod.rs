//! FUSE: the fuser adapter over [`crate::view::fs::MirrorFs`] ([`adapter`]), kernel cache invalidation
//! for what each sync changed ([`invalidate`]), the data modes ([`mode`]), the io_uring transport
//! ([`uring`]), mounting and unmounting ([`mount`]) and the mount table ([`mountinfo`]). fuser appears
//! nowhere else in the crate.
mod adapter;
mod invalidate;
mod mode;
mod mount;
mod mountinfo;
mod uring;

pub use adapter::{FuseAdapter, WriteOptions};
pub use invalidate::FuseSink;
pub use mode::DataMode;
pub use mount::{cleanup_stale_mount, is_dead_mount, mount, MountHandle, MountOptions};
pub use uring::Transport;
