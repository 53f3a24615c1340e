//! How file data reaches readers, and what the kernel agreed to at INIT.
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How the mount serves file data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataMode {
    /// The page cache with zero-message opens when the kernel supports it (the measured best for this
    /// workload, see docs/PERFORMANCE.md); else kernel passthrough; else the page cache with opens.
    #[default]
    Auto,
    /// FUSE passthrough (Linux >= 6.9, CAP_SYS_ADMIN): reads and mmap go from the kernel straight to the
    /// mirror's file; one OPEN per open(2). The mount fails when the kernel refuses it.
    Passthrough,
    /// The kernel page cache of each inode (one inode per content version), with zero-message open
    /// (`FUSE_NO_OPEN_SUPPORT`) when the kernel offers it.
    PageCache,
    /// `FOPEN_DIRECT_IO`: every read is a FUSE request (no page cache). The old behaviour; a fallback.
    DirectIo,
}

impl DataMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DataMode::Auto => "auto",
            DataMode::Passthrough => "passthrough",
            DataMode::PageCache => "page-cache",
            DataMode::DirectIo => "direct-io",
        }
    }

    /// Parse `auto`, `passthrough`, `page-cache` or `direct-io`.
    pub fn parse(s: &str) -> Option<DataMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(DataMode::Auto),
            "passthrough" => Some(DataMode::Passthrough),
            "page-cache" | "pagecache" => Some(DataMode::PageCache),
            "direct-io" | "directio" => Some(DataMode::DirectIo),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            DataMode::Auto => 0,
            DataMode::Passthrough => 1,
            DataMode::PageCache => 2,
            DataMode::DirectIo => 3,
        }
    }

    fn from_code(c: u8) -> DataMode {
        match c {
            1 => DataMode::Passthrough,
            2 => DataMode::PageCache,
            3 => DataMode::DirectIo,
            _ => DataMode::Auto,
        }
    }
}

impl std::fmt::Display for DataMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was asked for, what the kernel accepted at INIT, and the mode in use (shared by the adapter and
/// the mount; `Auto` as the active mode means "not decided yet": opens then use the page cache).
#[derive(Debug, Default)]
pub(crate) struct ModeState {
    pub requested: DataMode,
    pub passthrough: AtomicBool,
    pub no_open: AtomicBool,
    pub no_opendir: AtomicBool,
    /// The kernel's writeback cache is on (a writable view in the page-cache mode).
    pub writeback: AtomicBool,
    /// The connection may be served over io_uring (`FUSE_OVER_IO_URING` granted at INIT).
    pub uring: AtomicBool,
    active: AtomicU8,
    init_done: Mutex<bool>,
    init_cv: Condvar,
}

impl ModeState {
    pub fn new(requested: DataMode) -> ModeState {
        ModeState {
            requested,
            ..Default::default()
        }
    }

    pub fn active(&self) -> DataMode {
        DataMode::from_code(self.active.load(Ordering::Acquire))
    }

    /// The mode that needs no passthrough probe, known as soon as INIT is answered: the page cache
    /// (asked for, or `auto` with zero-message opens) or direct I/O; `None` while passthrough may
    /// still serve.
    pub fn known_at_init(&self) -> Option<DataMode> {
        match self.requested {
            DataMode::PageCache => Some(DataMode::PageCache),
            DataMode::DirectIo => Some(DataMode::DirectIo),
            DataMode::Auto if Self::flag(&self.no_open) => Some(DataMode::PageCache),
            DataMode::Auto | DataMode::Passthrough => None,
        }
    }

    /// Opens send no message (the kernel was told ENOSYS): the daemon never sees a close either.
    pub fn zero_message_open(&self) -> bool {
        self.active() == DataMode::PageCache && Self::flag(&self.no_open)
    }

    pub fn set_active(&self, m: DataMode) {
        self.active.store(m.code(), Ordering::Release);
    }

    pub fn flag(b: &AtomicBool) -> bool {
        b.load(Ordering::Acquire)
    }

    pub fn init_finished(&self) {
        *self.init_done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.init_cv.notify_all();
    }

    /// Wait until the kernel's INIT was answered (false on timeout).
    pub fn wait_init(&self, timeout: Duration) -> bool {
        let g = self.init_done.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .init_cv
            .wait_timeout_while(g, timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_known_at_init_needs_no_probe() {
        let state = |requested, no_open| {
            let m = ModeState::new(requested);
            m.no_open.store(no_open, Ordering::Release);
            m
        };
        let known = |requested, no_open| state(requested, no_open).known_at_init();
        assert_eq!(known(DataMode::Auto, true), Some(DataMode::PageCache));
        assert_eq!(known(DataMode::Auto, false), None, "passthrough may serve");
        assert_eq!(known(DataMode::PageCache, false), Some(DataMode::PageCache));
        assert_eq!(known(DataMode::DirectIo, true), Some(DataMode::DirectIo));
        assert_eq!(known(DataMode::Passthrough, true), None);
        // Zero-message opens: the page cache with the kernel's FUSE_NO_OPEN_SUPPORT, once active.
        let m = state(DataMode::Auto, true);
        assert!(!m.zero_message_open(), "nothing is active before INIT");
        m.set_active(m.known_at_init().unwrap());
        assert!(m.zero_message_open());
        let m = state(DataMode::PageCache, false);
        m.set_active(DataMode::PageCache);
        assert!(!m.zero_message_open(), "the kernel still sends OPEN");
    }
}
