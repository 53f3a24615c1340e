//! FUSE: the fuser adapter over [`crate::view::fs::MirrorFs`], mounting, unmounting and stale-mount
//! cleanup, and kernel cache invalidation for what each sync changed.
mod adapter;
pub use adapter::*;
