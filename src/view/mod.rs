//! The file system view of the mirror: the core with no FUSE types ([`fs`]: lookups, attributes,
//! listings; [`files`]: open files, reads and writes; [`ops`]: what modifies the tree; [`nodes`]: the
//! inodes the kernel knows; [`sys`]: the system calls the standard library lacks) and the FUSE adapter,
//! mount handling and kernel cache invalidation ([`fuse`]).
pub mod files;
pub mod fs;
pub mod fuse;
pub mod nodes;
pub mod ops;
pub mod sys;

#[cfg(test)]
mod tests;
