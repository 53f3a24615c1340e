//! Where the ring threads run: each on its own CPU in the idle scheduling class, so that a caller
//! waiting for an answer keeps its CPU (the kernel counts a CPU that only runs idle-class threads as
//! idle and wakes the caller there, instead of waking the other vCPU out of halt). The idle class only
//! runs when nothing else wants the CPU, so a guard watches each ring thread's run-queue wait
//! (`/proc/thread-self/schedstat`): a thread kept waiting is moved to the normal class, and back once
//! its CPU is mostly idle again.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the guard looks. It cannot sleep longer, or wait for a request to wake it: a starved
/// ring thread is exactly the one that does not run. Two small /proc reads per queue per tick.
const TICK: Duration = Duration::from_millis(25);
/// Run-queue wait within one tick that counts as starving (half the tick).
const STARVED: Duration = Duration::from_millis(12);
/// How long a promoted thread stays in the normal class at least.
const HOLD: Duration = Duration::from_secs(1);

/// The calling thread's kernel id.
pub(super) fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::gettid() }
}

/// Bind the calling thread to `cpu` (best effort: a CPU that went offline leaves it unbound).
pub(super) fn bind_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                tracing::debug!(cpu, error = %std::io::Error::last_os_error(), "binding a ring thread to its CPU");
            }
        }
    }
}

/// Put thread `tid` in the idle (`idle = true`) or the normal scheduling class.
pub(super) fn set_idle(tid: i32, idle: bool) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: a valid sched_param; tid is one of our threads.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Nanoseconds thread `tid` has spent runnable but waiting for a CPU (`schedstat`'s second field).
fn run_delay_ns(tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// Idle and total jiffies of `cpu` from /proc/stat.
fn cpu_times(cpu: usize) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu} ");
    let line = s.lines().find(|l| l.starts_with(&name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().sum()))
}

/// A ring thread as the guard sees it.
pub(super) struct Watched {
    pub tid: i32,
    pub cpu: usize,
}

/// Shared with the guard: its stop flag, and how often it promoted a thread.
#[derive(Default)]
pub(super) struct GuardState {
    pub stop: AtomicBool,
    pub promotions: AtomicU64,
}

struct Track {
    w: Watched,
    delay: u64,
    promoted: Option<Instant>,
    cpu_at_promotion: Option<(u64, u64)>,
}

/// The guard's loop: promote a starved ring thread, demote it when its CPU is mostly idle again.
pub(super) fn guard(watched: Vec<Watched>, state: Arc<GuardState>) {
    let mut tracks: Vec<Track> = watched
        .into_iter()
        .map(|w| Track {
            delay: run_delay_ns(w.tid).unwrap_or(0),
            w,
            promoted: None,
            cpu_at_promotion: None,
        })
        .collect();
    while !state.stop.load(Ordering::Acquire) {
        std::thread::sleep(TICK);
        for t in &mut tracks {
            let delay = run_delay_ns(t.w.tid).unwrap_or(t.delay);
            let waited = Duration::from_nanos(delay.saturating_sub(t.delay));
            t.delay = delay;
            match t.promoted {
                None if waited >= STARVED && set_idle(t.w.tid, false).is_ok() => {
                    state.promotions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        cpu = t.w.cpu,
                        waited_ms = waited.as_millis() as u64,
                        "FUSE ring thread kept waiting for its CPU: normal scheduling class"
                    );
                    t.promoted = Some(Instant::now());
                    t.cpu_at_promotion = cpu_times(t.w.cpu);
                }
                Some(at) if at.elapsed() >= HOLD => {
                    let now = cpu_times(t.w.cpu);
                    let mostly_idle = match (t.cpu_at_promotion, now) {
                        (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => (i1 - i0) * 2 >= (t1 - t0),
                        _ => true,
                    };
                    if mostly_idle {
                        if set_idle(t.w.tid, true).is_ok() {
                            tracing::debug!(
                                cpu = t.w.cpu,
                                "FUSE ring thread back in the idle class"
                            );
                            t.promoted = None;
                        }
                    } else {
                        t.promoted = Some(Instant::now());
                        t.cpu_at_promotion = now;
                    }
                }
                _ => {}
            }
        }
    }
}
