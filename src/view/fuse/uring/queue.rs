//! One io_uring queue of the FUSE connection: a thread bound to one CPU that registers its entries'
//! buffers with the kernel, then for each completed entry rebuilds the request ([`proto`]), runs it
//! through the session's [`Dispatcher`] and commits the answer with the next fetch. The kernel puts a
//! request on the queue of the CPU its caller runs on, so the request is served there.
use super::proto::{self, Answer};
use super::Stats;
use fuser::{Dispatched, Dispatcher, Filesystem, ReplySink};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Page size of the entry layout: the header page, then the prefix page, then the payload.
const PAGE: usize = 4096;
/// `user_data` of the stop eventfd's poll.
const STOP: u64 = u64::MAX;

/// What a queue needs to start.
pub(super) struct QueueConfig {
    pub qid: u16,
    pub depth: usize,
    /// Payload bytes per entry (at least the kernel's `max_write`/`max_pages`).
    pub payload: usize,
    pub fuse_fd: RawFd,
    /// An eventfd: readable means stop.
    pub stop_fd: RawFd,
}

/// An entry's memory: `[header page][prefix page][payload]`, anonymous and private.
struct Region {
    base: NonNull<u8>,
    len: usize,
    payload: usize,
}

impl Region {
    fn new(payload: usize) -> std::io::Result<Region> {
        let len = 2 * PAGE + payload.div_ceil(PAGE) * PAGE;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Region {
            base: NonNull::new(p.cast()).expect("mmap returned a non-null pointer"),
            len,
            payload,
        })
    }

    fn header_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn payload_ptr(&self) -> *mut u8 {
        // SAFETY: within the mapping (2 pages + payload).
        unsafe { self.base.as_ptr().add(2 * PAGE) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced (the ring that knew it is closed first).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The answer of the request an entry holds, until the queue commits it.
#[derive(Default)]
struct Pending {
    /// A request is being served (answers outside that window are late and dropped).
    active: bool,
    /// The request has no payload, so the answer may go straight into the payload buffer (nothing of
    /// the request lives there).
    direct: bool,
    answer: Option<Answer>,
    /// An answer to a request with a payload waits here until the request's bytes are released.
    staged: Vec<u8>,
}

/// One ring entry: its memory and its pending answer.
struct Slot {
    region: Region,
    pending: Mutex<Pending>,
    /// The `iovec`s handed to the kernel at registration (they must stay put).
    iov: [libc::iovec; 2],
}

// SAFETY: the region is only touched by the queue thread between a completion and its commit, and
// by the slot's sink while the queue thread is dispatching that same request (under `pending`).
unsafe impl Send for Slot {}
// SAFETY: as for Send: all access is serialized by the queue thread's protocol and `pending`.
unsafe impl Sync for Slot {}

impl Slot {
    fn new(payload: usize) -> std::io::Result<Slot> {
        let region = Region::new(payload)?;
        let iov = [
            libc::iovec {
                iov_base: region.header_ptr().cast(),
                iov_len: proto::REQ_HEADER_LEN,
            },
            libc::iovec {
                iov_base: region.payload_ptr().cast(),
                iov_len: payload,
            },
        ];
        Ok(Slot {
            region,
            pending: Mutex::new(Pending::default()),
            iov,
        })
    }

    fn header(&self) -> &[u8] {
        // SAFETY: the header page; the kernel wrote it before posting the completion.
        unsafe { std::slice::from_raw_parts(self.region.header_ptr(), proto::REQ_HEADER_LEN) }
    }

    #[allow(clippy::mut_from_ref)]
    fn header_mut(&self) -> &mut [u8] {
        // SAFETY: only the queue thread, after dispatch, with no other view of the header alive.
        unsafe { std::slice::from_raw_parts_mut(self.region.header_ptr(), proto::REQ_HEADER_LEN) }
    }

    #[allow(clippy::mut_from_ref)]
    fn payload_mut(&self) -> &mut [u8] {
        // SAFETY: see `Pending::direct` and the callers: never while the request's bytes are borrowed
        // from the payload.
        unsafe { std::slice::from_raw_parts_mut(self.region.payload_ptr(), self.region.payload) }
    }

    /// The request's bytes: its in header and op header copied just in front of its payload.
    fn request(&self, inc: &proto::Incoming) -> &[u8] {
        let prefix = proto::IN_HEADER_LEN + inc.op_len;
        // SAFETY: `prefix <= PAGE` (op_len <= 128) so the range starts in the prefix page and ends
        // inside the payload (payload_len <= capacity, checked by parse_incoming).
        unsafe {
            let start = self.region.payload_ptr().sub(prefix);
            proto::write_prefix(
                self.header(),
                inc,
                std::slice::from_raw_parts_mut(start, prefix),
            );
            std::slice::from_raw_parts(start, prefix + inc.payload_len)
        }
    }
}

/// Where the file system's answer to a slot's request goes.
struct SlotSink(Arc<Slot>);

impl std::fmt::Debug for SlotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotSink")
    }
}

impl ReplySink for SlotSink {
    fn send(&self, data: &[IoSlice<'_>]) -> std::io::Result<()> {
        let slot = &self.0;
        let mut p = slot.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !p.active || p.answer.is_some() {
            return Err(std::io::Error::other(
                "answer to a ring entry that is not waiting for one",
            ));
        }
        let answer = if p.direct {
            proto::split_answer(data, slot.payload_mut())
        } else {
            let body: usize = data.iter().map(|s| s.len()).sum::<usize>();
            let mut staged = std::mem::take(&mut p.staged);
            staged.resize(body.saturating_sub(proto::OUT_HEADER_LEN), 0);
            let r = proto::split_answer(data, &mut staged);
            p.staged = staged;
            r
        };
        match answer {
            Ok(a) if a.payload_len <= slot.region.payload => {
                p.answer = Some(a);
                Ok(())
            }
            Ok(a) => Err(std::io::Error::other(format!(
                "answer of {} bytes does not fit the ring entry",
                a.payload_len
            ))),
            Err(e) => Err(std::io::Error::other(format!("bad answer: {e:?}"))),
        }
    }
}

/// Run one queue until the connection ends or `stop_fd` fires. `started` gets the registration's
/// outcome (the queue is serving once every queue of the connection registered).
pub(super) fn run<FS: Filesystem>(
    cfg: QueueConfig,
    dispatcher: &Dispatcher<FS>,
    stats: &Stats,
    started: impl FnOnce(Result<(), String>),
) {
    let mut state = match Queue::register(&cfg) {
        Ok(q) => {
            started(Ok(()));
            q
        }
        Err(e) => {
            started(Err(e));
            return;
        }
    };
    if let Err(e) = state.serve(&cfg, dispatcher, stats) {
        tracing::warn!(qid = cfg.qid, error = %e, "FUSE io_uring queue stopped");
    }
}

struct Queue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Arc<Slot>>,
    sinks: Vec<Arc<dyn ReplySink>>,
    /// Completions seen while checking the registration (requests can arrive at once).
    early: Vec<(u64, i32)>,
}

/// A `URING_CMD` for the FUSE device; `iov` set for a registration (`addr` = the iovecs, `len` = 2).
fn fuse_cmd(
    cfg: &QueueConfig,
    op: u32,
    idx: usize,
    commit_id: u64,
    iov: Option<&[libc::iovec; 2]>,
) -> squeue::Entry128 {
    let mut b =
        opcode::UringCmd80::new(types::Fd(cfg.fuse_fd), op).cmd(proto::cmd_req(cfg.qid, commit_id));
    if let Some(iov) = iov {
        b = b.addr(Some(iov.as_ptr() as u64));
    }
    let e = b.build().user_data(idx as u64);
    if iov.is_none() {
        return e;
    }
    // The crate has no setter for the SQE's `len` (byte 24..28): the number of iovecs.
    // SAFETY: Entry128 is `repr(C)`, 128 bytes: the 64-byte `io_uring_sqe` and its extension.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: the same bytes with `len` set.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

impl Queue {
    /// Create the ring, map the entries and register them. An error here leaves the connection on
    /// `/dev/fuse` (the kernel uses the ring only once every queue registered).
    fn register(cfg: &QueueConfig) -> Result<Queue, String> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize((cfg.depth as u32 + 1) * 2)
            .build(cfg.depth as u32 + 1)
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        let mut slots = Vec::with_capacity(cfg.depth);
        for _ in 0..cfg.depth {
            slots.push(Arc::new(
                Slot::new(cfg.payload).map_err(|e| format!("mapping a ring entry: {e}"))?,
            ));
        }
        let sinks: Vec<Arc<dyn ReplySink>> = slots
            .iter()
            .map(|s| Arc::new(SlotSink(s.clone())) as Arc<dyn ReplySink>)
            .collect();
        let mut q = Queue {
            ring,
            slots,
            sinks,
            early: Vec::new(),
        };
        {
            let mut sq = q.ring.submission();
            for (i, slot) in q.slots.iter().enumerate() {
                let e = fuse_cmd(cfg, proto::CMD_REGISTER, i, 0, Some(&slot.iov));
                // SAFETY: the iovecs and buffers live in `slots`, which outlive the ring.
                unsafe { sq.push(&e) }.map_err(|_| "submission queue full".to_string())?;
            }
            let poll = opcode::PollAdd::new(types::Fd(cfg.stop_fd), libc::POLLIN as u32)
                .build()
                .user_data(STOP);
            // SAFETY: plain poll of an fd we own.
            unsafe { sq.push(&poll.into()) }.map_err(|_| "submission queue full".to_string())?;
        }
        q.ring
            .submit()
            .map_err(|e| format!("registering the ring entries: {e}"))?;
        // A registration the kernel refuses completes at once; an accepted one stays pending until
        // a request arrives.
        q.ring
            .submitter()
            .submit_and_wait(0)
            .map_err(|e| format!("registering the ring entries: {e}"))?;
        let mut refused = None;
        let mut early = Vec::new();
        for cqe in q.ring.completion() {
            if cqe.result() < 0 && cqe.user_data() != STOP {
                refused = Some(std::io::Error::from_raw_os_error(-cqe.result()));
            } else {
                // The last queue to register makes the ring ready: a request may be here already.
                early.push((cqe.user_data(), cqe.result()));
            }
        }
        if let Some(e) = refused {
            return Err(format!("the kernel refused the ring entries: {e}"));
        }
        q.early = early;
        Ok(q)
    }

    fn serve<FS: Filesystem>(
        &mut self,
        cfg: &QueueConfig,
        dispatcher: &Dispatcher<FS>,
        stats: &Stats,
    ) -> Result<(), String> {
        let mut done: Vec<(u64, i32)> = std::mem::take(&mut self.early);
        loop {
            if done.is_empty() {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(format!("io_uring_enter: {e}")),
                }
                done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            }
            for &(idx, res) in &done {
                if idx == STOP {
                    return Ok(());
                }
                let idx = idx as usize;
                match res {
                    0 => self.serve_entry(cfg, idx, dispatcher, stats)?,
                    r if r == -libc::EAGAIN || r == -libc::EINTR => {
                        let slot = &self.slots[idx];
                        let e = fuse_cmd(cfg, proto::CMD_REGISTER, idx, 0, Some(&slot.iov));
                        self.push(e)?;
                    }
                    // The connection is gone (unmount, abort): the normal end.
                    r if r == -libc::ENOTCONN || r == -libc::ECANCELED || r == -libc::ENODEV => {
                        return Ok(())
                    }
                    r => {
                        return Err(format!(
                            "ring entry failed: {}",
                            std::io::Error::from_raw_os_error(-r)
                        ))
                    }
                }
            }
            done.clear();
        }
    }

    fn push(&mut self, e: squeue::Entry128) -> Result<(), String> {
        // SAFETY: the entry's buffers live in `slots`.
        unsafe { self.ring.submission().push(&e) }.map_err(|_| "submission queue full".to_string())
    }

    /// Serve the request in entry `idx` and queue its commit-and-fetch.
    fn serve_entry<FS: Filesystem>(
        &mut self,
        cfg: &QueueConfig,
        idx: usize,
        dispatcher: &Dispatcher<FS>,
        stats: &Stats,
    ) -> Result<(), String> {
        let slot = self.slots[idx].clone();
        let answer = match proto::parse_incoming(slot.header(), slot.region.payload) {
            Ok(inc) => {
                {
                    let mut p = slot.pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.active = true;
                    p.direct = inc.payload_len == 0;
                    p.answer = None;
                }
                let outcome = dispatcher.dispatch(slot.request(&inc), self.sinks[idx].clone());
                let mut p = slot.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.active = false;
                stats.requests.fetch_add(1, Ordering::Relaxed);
                match (p.answer.take(), outcome) {
                    (Some(a), _) => {
                        if !p.direct {
                            slot.payload_mut()[..a.payload_len]
                                .copy_from_slice(&p.staged[..a.payload_len]);
                        }
                        a
                    }
                    (None, Dispatched::Invalid) => {
                        tracing::warn!(
                            unique = inc.unique,
                            "FUSE io_uring: a request fuser could not parse"
                        );
                        proto::error_answer(inc.unique, libc::EIO)
                    }
                    (None, _) => {
                        // Every operation that reaches the ring has an answer, and the adapter answers
                        // before returning: a missing one would leave the caller waiting forever.
                        tracing::warn!(
                            unique = inc.unique,
                            "FUSE io_uring: no answer from the file system"
                        );
                        proto::error_answer(inc.unique, libc::EIO)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "FUSE io_uring: malformed ring entry");
                let unique = u64::from_ne_bytes(slot.header()[8..16].try_into().expect("8 bytes"));
                proto::error_answer(unique, libc::EIO)
            }
        };
        proto::write_answer(slot.header_mut(), &answer);
        let commit_id = u64::from_ne_bytes(
            slot.header()[proto::ENT_OFFSET + 8..proto::ENT_OFFSET + 16]
                .try_into()
                .expect("8 bytes"),
        );
        let e = fuse_cmd(cfg, proto::CMD_COMMIT_AND_FETCH, idx, commit_id, None);
        self.push(e)
    }
}
