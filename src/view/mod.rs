//! The read-only view of the mirror: file system logic with no FUSE types ([`fs`]) and the FUSE
//! adapter, mount handling and kernel cache invalidation ([`fuse`]).
pub mod fs;
pub mod fuse;
