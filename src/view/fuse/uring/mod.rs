//! FUSE over io_uring (Linux ≥ 6.14, `fuse.enable_uring`): the kernel hands each request to a queue
//! of the CPU its caller runs on, and the daemon answers it there ([`queue`]), in the idle scheduling
//! class so the caller keeps its CPU ([`sched`]). The session still starts on `/dev/fuse` (INIT, and
//! forgets and interrupts stay there; fuser's own threads serve them), and the same fuser
//! [`Dispatcher`](fuser::Dispatcher) runs the same file-system core: the view does not know which
//! transport serves it. The wire format is in [`proto`].
mod proto;
mod queue;
mod sched;

use fuser::{Dispatcher, Filesystem};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Entries per queue. A queue's thread serves one request at a time; the others wait in the kernel
/// with their buffers ready.
pub const QUEUE_DEPTH: usize = 8;
/// The largest request or answer payload: the connection's `max_write` and read size are held to it
/// at INIT when io_uring is wanted (the kernel's default page limit is the same 1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

const SYS_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Which kernel interface carries the FUSE requests (`--fuse-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// io_uring when the kernel offers it, else `/dev/fuse` (one log line says why).
    #[default]
    Auto,
    /// io_uring, or the mount fails with the reason.
    Uring,
    /// `read(2)`/`writev(2)` on `/dev/fuse`, the classic transport.
    Dev,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Uring => "uring",
            Transport::Dev => "dev",
        }
    }

    /// Parse `auto`, `uring` (or `io_uring`) or `dev` (or `dev-fuse`).
    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(Transport::Auto),
            "uring" | "io_uring" | "io-uring" => Some(Transport::Uring),
            "dev" | "dev-fuse" | "/dev/fuse" => Some(Transport::Dev),
            _ => None,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether this kernel lets a FUSE server use io_uring, and if not, what an operator can do.
pub fn kernel_support() -> Result<(), String> {
    match std::fs::read_to_string(SYS_PARAM) {
        Ok(s) if matches!(s.trim(), "Y" | "y" | "1") => Ok(()),
        Ok(_) => Err(format!(
            "the fuse module parameter enable_uring is off (as root: echo Y > {SYS_PARAM}, or boot with fuse.enable_uring=1)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "this kernel has no FUSE over io_uring (it needs Linux 6.14 or later built with CONFIG_FUSE_IO_URING)".into(),
        ),
        Err(e) => Err(format!("reading {SYS_PARAM}: {e}")),
    }
}

/// The kernel's number of possible CPUs (`nr_cpu_ids`): it expects one queue for each.
fn possible_cpus() -> usize {
    let from_sys = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit([',', '-']).next()?.to_string();
            last.parse::<usize>().ok().map(|n| n + 1)
        });
    // SAFETY: sysconf has no preconditions.
    from_sys.unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

/// Counters of the io_uring transport.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered through the rings.
    pub requests: AtomicU64,
}

/// The running queues of one connection. Stops them on [`UringHandle::stop`] or drop; they also end
/// by themselves when the connection goes away.
pub struct UringHandle {
    stop_fd: OwnedFd,
    threads: Vec<JoinHandle<()>>,
    guard: Option<JoinHandle<()>>,
    guard_state: Arc<sched::GuardState>,
    stats: Arc<Stats>,
    queues: usize,
    /// The duplicate of the `/dev/fuse` descriptor the rings submit on (kept open while they run).
    fuse: OwnedFd,
}

impl UringHandle {
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn queues(&self) -> usize {
        self.queues
    }

    /// How often a ring thread had to leave the idle class because it was kept waiting.
    pub fn promotions(&self) -> u64 {
        self.guard_state.promotions.load(Ordering::Relaxed)
    }

    /// Stop the queues and wait for their threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe {
            libc::write(self.stop_fd.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
        self.guard_state.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(g) = self.guard.take() {
            let _ = g.join();
        }
    }
}

impl Drop for UringHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start one queue per possible CPU on the connection behind `fuse_fd`, each with a dispatcher from
/// `dispatcher`. Returns once every queue registered, or the first reason one could not (then none
/// runs and the connection stays on `/dev/fuse`).
pub fn start<FS: Filesystem>(
    fuse_fd: BorrowedFd<'_>,
    dispatcher: impl Fn(usize) -> Dispatcher<FS>,
    payload: usize,
) -> Result<UringHandle, String> {
    let fuse = fuse_fd
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the /dev/fuse descriptor: {e}"))?;
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let stop_fd = unsafe { OwnedFd::from_raw_fd(efd) };
    let queues = possible_cpus();
    let stats = Arc::new(Stats::default());
    let guard_state = Arc::new(sched::GuardState::default());
    let mut handle = UringHandle {
        stop_fd,
        threads: Vec::with_capacity(queues),
        guard: None,
        guard_state: guard_state.clone(),
        stats: stats.clone(),
        queues,
        fuse,
    };
    let (tx, rx) = std::sync::mpsc::channel::<(usize, i32, Result<(), String>)>();
    for qid in 0..queues {
        let cfg = queue::QueueConfig {
            qid: qid as u16,
            depth: QUEUE_DEPTH,
            payload,
            fuse_fd: handle.fuse.as_raw_fd(),
            stop_fd: handle.stop_fd.as_raw_fd(),
        };
        let d = dispatcher(qid);
        let stats = stats.clone();
        let tx = tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("mountd-ring-{qid}"))
            .spawn(move || {
                sched::bind_to_cpu(qid);
                let tid = sched::gettid();
                if let Err(e) = sched::set_idle(0, true) {
                    tracing::debug!(qid, error = %e, "FUSE ring thread: no idle scheduling class");
                }
                queue::run(cfg, &d, &stats, |r| {
                    let _ = tx.send((qid, tid, r));
                });
            })
            .map_err(|e| format!("starting a ring thread: {e}"))?;
        handle.threads.push(t);
    }
    drop(tx);
    let mut watched = Vec::with_capacity(queues);
    for _ in 0..queues {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((qid, tid, Ok(()))) => watched.push(sched::Watched { tid, cpu: qid }),
            Ok((qid, _, Err(e))) => return Err(format!("queue {qid}: {e}")),
            Err(_) => return Err("the ring threads did not start".into()),
        }
    }
    handle.guard = Some(
        std::thread::Builder::new()
            .name("mountd-ring-guard".into())
            .spawn(move || sched::guard(watched, guard_state))
            .map_err(|e| format!("starting the ring guard: {e}"))?,
    );
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_print() {
        for t in [Transport::Auto, Transport::Uring, Transport::Dev] {
            assert_eq!(Transport::parse(t.as_str()), Some(t));
        }
        assert_eq!(Transport::parse("io_uring"), Some(Transport::Uring));
        assert_eq!(Transport::parse("ring"), None);
    }

    #[test]
    fn one_queue_per_possible_cpu() {
        assert!(possible_cpus() >= 1);
    }
}
