//! Mounting and unmounting: mount (read-only, or writable in mirror mode) and serve from background threads, detect and detach a
//! stale mount first, and unmount without hanging (lazy detach, then abort the FUSE connection).
//!
//! fuser 0.18.0's `AutoUnmount` hangs on in-process unmount, so it is never used: [`MountHandle`]
//! unmounts explicitly (also on drop), and [`mount`] detaches a stale mount it finds first.
use super::adapter::FuseAdapter;
use super::adapter::WriteOptions;
use super::invalidate::FuseSink;
use super::mode::{DataMode, ModeState};
use super::mountinfo::{is_mountd_fuse, mounted_top, mountinfo};
use super::uring::{self, Transport, UringHandle};
use crate::store::change::{ChangeSink, LocalChanges};
use crate::view::fs::{FsOptions, MirrorFs};
use fuser::{BackgroundSession, Config, MountOption, Notifier, SessionACL};
use nix::mount::MntFlags;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long [`MountHandle::unmount`] waits for the session threads before forcing the connection.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Source shown in mount tables: `mountd:<workspace>`.
    pub fsname: String,
    pub allow_other: bool,
    /// Kernel TTL of entries and attributes (a zero TTL is raised to 1 ms).
    pub ttl: Duration,
    /// FUSE worker threads (at least 1).
    pub threads: usize,
    pub fs: FsOptions,
    /// How file data is served (see [`DataMode`]).
    pub data_mode: DataMode,
    /// How a writable view writes (`fs.writable`).
    pub writes: WriteOptions,
    /// Which kernel interface carries the requests (see [`Transport`]).
    pub transport: Transport,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "mountd".into(),
            allow_other: false,
            ttl: Duration::from_secs(3600),
            threads: 2,
            fs: FsOptions::default(),
            data_mode: DataMode::Auto,
            writes: WriteOptions::default(),
            transport: Transport::Auto,
        }
    }
}
/// A running mount. Unmounts on [`MountHandle::unmount`] or drop.
pub struct MountHandle {
    /// The session's main thread (it joins the worker threads).
    session: Option<JoinHandle<std::io::Result<()>>>,
    notifier: Notifier,
    mountpoint: PathBuf,
    /// `major:minor` of the mounted file system (the FUSE connection).
    /// (mount id, `major:minor`) of our mount in /proc/self/mountinfo, to recognise it later.
    key: Option<(u64, (u32, u32))>,
    /// A duplicate of the session's /dev/fuse descriptor.
    conn: OwnedFd,
    fs: Arc<MirrorFs>,
    mode: DataMode,
    /// The io_uring queues, when they carry the requests.
    uring: Option<UringHandle>,
}

impl MountHandle {
    /// A change sink that invalidates the kernel's caches for what each sync commit changed.
    pub fn sink(&self) -> Arc<dyn ChangeSink> {
        Arc::new(FuseSink {
            notifier: self.notifier.clone(),
            fs: self.fs.clone(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The data mode in use (decided at mount time).
    pub fn data_mode(&self) -> DataMode {
        self.mode
    }

    /// The transport in use: [`Transport::Uring`] or [`Transport::Dev`].
    pub fn transport(&self) -> Transport {
        if self.uring.is_some() {
            Transport::Uring
        } else {
            Transport::Dev
        }
    }

    /// Requests answered over io_uring so far (0 over `/dev/fuse`).
    pub fn uring_requests(&self) -> u64 {
        self.uring.as_ref().map_or(0, |u| {
            u.stats()
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The file system view served by this mount.
    pub fn fs(&self) -> &Arc<MirrorFs> {
        &self.fs
    }

    /// True while the session threads run and the mount is in the mount table.
    pub fn is_alive(&self) -> bool {
        let running = self.session.as_ref().is_some_and(|s| !s.is_finished());
        running
            && connected(&self.conn)
            && self
                .key
                .is_none_or(|k| mounted_top(&self.mountpoint) == Some(k))
    }

    /// Unmount and wait for the session to end. Never hangs: a busy mount is detached lazily, and a
    /// session that does not end within a few seconds has its FUSE connection aborted.
    pub fn unmount(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(bg) = self.session.take() else {
            return;
        };
        // Only unmount what is still our mount (the path may have been unmounted and reused since).
        // A dead session means the kernel already dropped our mount (its device number and mount id may
        // have been reused by a newer mount at the same path).
        let ours = connected(&self.conn)
            && self
                .key
                .is_none_or(|k| mounted_top(&self.mountpoint) == Some(k));
        if ours && self.fs.options().writable {
            flush_writeback(&self.mountpoint);
        }
        if ours {
            if let Err(e) = umount(&self.mountpoint, MntFlags::empty()) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e,
                    "unmount failed; detaching lazily");
                if let Err(e) = umount(&self.mountpoint, MntFlags::MNT_DETACH) {
                    tracing::warn!(error = %e, "lazy unmount failed; trying fusermount3 -uz");
                    fusermount_detach(&self.mountpoint);
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::Builder::new()
            .name("mountd-fuse-join".into())
            .spawn(move || {
                let r = bg
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("FUSE session thread panicked")));
                let _ = tx.send(r);
            });
        if joiner.is_err() {
            tracing::warn!("could not spawn a thread to join the FUSE session");
            return;
        }
        let mut result = rx.recv_timeout(JOIN_TIMEOUT);
        if result.is_err() {
            if let (Some((_, d)), true) = (self.key, connected(&self.conn)) {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "FUSE session still serving open files after a lazy unmount; aborting its connection");
                if abort_connection(d) {
                    result = rx.recv_timeout(JOIN_TIMEOUT);
                }
            }
        }
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "FUSE session ended with an error"),
            Err(_) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "FUSE session did not end; leaving it detached");
                // A detached mount still being served keeps its ring threads too: stopping them
                // would leave the kernel's requests on the rings without a server.
                if let Some(u) = self.uring.take() {
                    std::mem::forget(u);
                }
            }
        }
        // The connection is gone: the ring threads have ended or end now.
        if let Some(u) = self.uring.take() {
            let promotions = u.promotions();
            if promotions > 0 {
                tracing::info!(
                    promotions,
                    "FUSE ring threads left the idle class while kept waiting for their CPU"
                );
            }
            u.stop();
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Make the kernel write what a writable mount still caches (the writeback cache of files left open)
/// to the daemon, and so to the mirror's files, while the session still serves: a lazy unmount would
/// lose it with the connection. Bounded: a session that does not answer is left to the unmount.
fn flush_writeback(mountpoint: &Path) {
    let mp = mountpoint.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("mountd-fuse-syncfs".into())
        .spawn(move || {
            let r =
                std::fs::File::open(&mp).and_then(|d| nix::unistd::syncfs(&d).map_err(Into::into));
            let _ = tx.send(r);
        });
    if spawned.is_err() {
        return;
    }
    match rx.recv_timeout(JOIN_TIMEOUT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "syncfs of the mount before unmounting failed"),
        Err(_) => tracing::warn!(
            "syncfs of the mount did not finish within {JOIN_TIMEOUT:?}; unmounting anyway"
        ),
    }
}

/// True while the FUSE connection behind `fd` is up (the kernel reports POLLERR once it is gone).
fn connected(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::ZERO) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
            Ok(0) => return true,
            Ok(_) => {
                let bad = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
                return !fds[0].revents().is_some_and(|r| r.intersects(bad));
            }
        }
    }
}

fn umount(p: &Path, flags: MntFlags) -> std::io::Result<()> {
    nix::mount::umount2(p, flags).map_err(std::io::Error::from)
}

fn fusermount_detach(p: &Path) {
    for bin in ["fusermount3", "fusermount"] {
        if let Ok(out) = std::process::Command::new(bin)
            .args(["-u", "-z", "--"])
            .arg(p)
            .output()
        {
            if out.status.success() {
                return;
            }
            tracing::warn!(
                "{bin} -uz failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Abort a FUSE connection through fusectl (`/sys/fs/fuse/connections/<dev>/abort`). False when fusectl
/// is not mounted (then a lazily detached session keeps serving its open files until they are closed).
fn abort_connection((major, minor): (u32, u32)) -> bool {
    let id = (major << 20) | minor;
    let dir = format!("/sys/fs/fuse/connections/{id}");
    if !Path::new(&dir).is_dir() {
        tracing::warn!(
            "fusectl is not mounted at /sys/fs/fuse/connections: the detached FUSE session keeps \
             serving files still open and ends when they are closed"
        );
        return false;
    }
    match std::fs::write(format!("{dir}/abort"), b"1") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir, error = %e, "could not abort the FUSE connection");
            false
        }
    }
}

/// The mountpoint as the mount table spells it, without touching the (possibly dead) mount itself.
fn absolute_mountpoint(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|c| c.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The error a FUSE mount whose daemon died answers: ENOTCONN ("Transport endpoint is not
/// connected"), or, while the kernel still tears down the io_uring queues of a dead daemon,
/// ECONNABORTED or ECANCELED (a request the dying ring thread could no longer take).
pub fn is_dead_mount(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) | Some(libc::ECANCELED)
    )
}

/// Detach a dead FUSE mount ("Transport endpoint is not connected") or an earlier mountd mount left at
/// `mountpoint`. Returns how many mounts were detached.
pub fn cleanup_stale_mount(mountpoint: &Path) -> Result<usize, String> {
    let mp = absolute_mountpoint(mountpoint);
    let mut detached = 0;
    for _ in 0..8 {
        let dead = std::fs::metadata(&mp).is_err_and(|e| is_dead_mount(&e));
        let top = mountinfo().into_iter().rev().find(|m| m.mountpoint == mp);
        let ours = top.as_ref().is_some_and(is_mountd_fuse);
        if !dead && !ours {
            return Ok(detached);
        }
        tracing::warn!(
            mountpoint = %mp.display(),
            source = top.as_ref().map(|m| m.source.as_str()).unwrap_or("?"),
            "{} mount found at the mountpoint; detaching it (umount -l)",
            if dead { "stale (Transport endpoint is not connected)" } else { "earlier mountd" }
        );
        if let Err(e) = umount(&mp, MntFlags::MNT_DETACH) {
            tracing::warn!(error = %e, "umount2(MNT_DETACH) failed; trying fusermount3 -uz");
            fusermount_detach(&mp);
        }
        let still_dead = std::fs::metadata(&mp).is_err_and(|e| is_dead_mount(&e));
        let same = mountinfo()
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == mp)
            .map(|m| m.dev);
        if (dead && still_dead) || (top.is_some() && same == top.as_ref().map(|m| m.dev)) {
            return Err(format!(
                "cannot detach the stale mount at {}; run `umount -l {}` (or `fusermount3 -uz`) as root",
                mp.display(),
                mp.display()
            ));
        }
        detached += 1;
    }
    Ok(detached)
}

/// Take the session thread out of fuser's `BackgroundSession` and never let fuser unmount.
///
/// fuser 0.18.0 unmounts by *path* when its `Mount` is dropped (after the session ends), and its
/// "already unmounted?" check is true for a dead connection too: if the mountpoint was detached and
/// mounted again meanwhile (stale-mount cleanup, a restart), dropping the old session would unmount the
/// new mount. [`MountHandle`] unmounts itself, checking the mount table for its own device first. The
/// price is a leaked `Mount` (a few bytes and a dead /dev/fuse descriptor) per mount.
fn detach_fuser_unmount(mut bg: BackgroundSession) -> JoinHandle<std::io::Result<()>> {
    let guard = std::mem::replace(&mut bg.guard, std::thread::spawn(|| Ok(())));
    std::mem::forget(bg);
    guard
}

/// How long [`mount`] waits for the kernel's INIT.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_CLOSE: u64 = (1 << 30) | (4 << 16) | (229 << 8) | 2;

/// The data mode to use, from what was asked and what the kernel accepted. `probe` checks that a
/// backing file can really be registered (the kernel also wants CAP_SYS_ADMIN and a backing file
/// system it can stack on).
fn decide_mode(
    m: &ModeState,
    probe: impl FnOnce() -> Result<(), String>,
) -> Result<DataMode, String> {
    if let Some(known) = m.known_at_init() {
        return Ok(known);
    }
    match m.requested {
        DataMode::Passthrough => {
            if !ModeState::flag(&m.passthrough) {
                return Err("FUSE passthrough was requested but the kernel does not offer it (Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)".into());
            }
            probe()
                .map_err(|e| format!("FUSE passthrough was requested but is unavailable: {e}"))?;
            Ok(DataMode::Passthrough)
        }
        // The page cache with zero-message opens is the measured best (docs/PERFORMANCE.md), and
        // was decided at INIT. Passthrough serves when opens would cost a message anyway (no
        // FUSE_NO_OPEN_SUPPORT).
        _ => {
            if ModeState::flag(&m.passthrough) {
                match probe() {
                    Ok(()) => return Ok(DataMode::Passthrough),
                    Err(e) => tracing::info!(error = %e, "FUSE passthrough unavailable"),
                }
            }
            Ok(DataMode::PageCache)
        }
    }
}

/// Register and unregister an unnamed temporary file of the mirror's file system as a backing file.
fn probe_passthrough(conn: &OwnedFd, root: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(root)
        .map_err(|e| format!("creating a probe file in {}: {e}", root.display()))?;
    let id = fuser::BackingId::create_raw(conn, &file)
        .map_err(|e| format!("registering a backing file: {e}"))?;
    // SAFETY: `id` was just registered on this connection and is closed exactly once here.
    let rc = unsafe {
        libc::ioctl(
            conn.as_raw_fd(),
            FUSE_DEV_IOC_BACKING_CLOSE as _,
            &id as *const u32,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "closing the probe backing id failed");
    }
    Ok(())
}

/// Read-ahead of the mount's backing device info, in KiB: one READ of the largest size the kernel
/// allows a FUSE connection by default (`fs.fuse.max_pages_limit` 256 pages = 1 MiB; fuser asks for
/// the maximum). The kernel gives a new FUSE connection 128 KiB (and INIT can only lower it), so a
/// cold sequential read would cost one READ round trip per 128 KiB (docs/PERFORMANCE.md).
const READ_AHEAD_KB: u64 = 1024;

/// Raise `/sys/class/bdi/<major>:<minor>/read_ahead_kb` of the FUSE connection to `kb` (never lower
/// it: an operator may have set more). Best effort: a failure is logged at debug level.
fn raise_read_ahead((major, minor): (u32, u32), kb: u64) {
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let current = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match current {
        Some(c) if c >= kb => {}
        Some(_) => match std::fs::write(&path, format!("{kb}\n")) {
            Ok(()) => tracing::debug!(path, kb, "raised the FUSE read-ahead"),
            Err(e) => tracing::debug!(path, error = %e, "could not raise the FUSE read-ahead"),
        },
        None => tracing::debug!(path, "no read_ahead_kb for the FUSE connection"),
    }
}

/// How many versions may stay pinned for handle-less reads: half of the file descriptors (after
/// raising the soft limit to the hard one), within [256, 65536].
pub(super) fn pin_budget() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Err(_) => 1024,
        Ok((cur, max)) if cur < max => {
            if setrlimit(Resource::RLIMIT_NOFILE, max, max).is_ok() {
                max
            } else {
                cur
            }
        }
        Ok((cur, _)) => cur,
    };
    ((soft.saturating_sub(512) / 2).min(65536) as usize).max(256)
}

/// Mount the mirror at `mountpoint` and serve it from background threads: read-only, or writable when
/// `opts.fs.writable` (local changes then go to `changes`).
pub fn mount(
    mountpoint: &Path,
    root: &Path,
    opts: MountOptions,
    changes: Option<Arc<dyn LocalChanges>>,
) -> Result<MountHandle, String> {
    cleanup_stale_mount(mountpoint)?;
    let mp = absolute_mountpoint(mountpoint);
    match std::fs::metadata(&mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("mountpoint {} is not a directory", mp.display())),
        Err(e) => return Err(format!("mountpoint {}: {e}", mp.display())),
    }
    let threads = opts.threads.max(1);
    let fs = Arc::new(
        MirrorFs::new(root, opts.fs, changes)
            .map_err(|e| format!("opening the mirror {}: {e}", root.display()))?,
    );
    let writable = fs.options().writable;
    let fsname: String = opts
        .fsname
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut config = Config::default();
    config.mount_options = vec![
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
        MountOption::FSName(fsname),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // As root fuser calls mount(2) directly and passes no subtype to the kernel; spell it as a kernel
    // option then (fusermount3 handles `Subtype` itself for non-root mounts).
    if nix::unistd::geteuid().is_root() {
        config
            .mount_options
            .push(MountOption::CUSTOM("subtype=mountd".into()));
    } else {
        config
            .mount_options
            .push(MountOption::Subtype("mountd".into()));
    }
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(threads);
    let mode = Arc::new(ModeState::new(opts.data_mode));
    let transport = transport_for(&opts);
    let adapter = FuseAdapter::new(
        fs.clone(),
        opts.ttl,
        mode.clone(),
        opts.writes,
        transport != Transport::Dev,
    );
    let session = fuser::Session::new(adapter, &mp, &config)
        .map_err(|e| format!("mounting {}: {e}", mp.display()))?;
    // Our own handle on the connection: POLLERR on it tells whether *our* mount is still connected.
    let conn = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the /dev/fuse descriptor: {e}"))?;
    let notifier = session.notifier();
    // INIT was answered inside Session::new: the rings can register now.
    let ring = start_transport(&session, &mode, transport)
        .map_err(|e| format!("mounting {}: {e}", mp.display()))?;
    let session = session
        .spawn()
        .map_err(|e| format!("starting the FUSE session: {e}"))?;
    let session = detach_fuser_unmount(session);
    let key = mounted_top(&mp);
    if key.is_none() {
        tracing::warn!(mountpoint = %mp.display(), "the new mount is not in /proc/self/mountinfo");
    }
    let mut handle = MountHandle {
        session: Some(session),
        conn,
        notifier,
        mountpoint: mp,
        key,
        fs,
        mode: DataMode::Auto,
        uring: ring,
    };

    // The kernel sends INIT as soon as it is mounted; the mode is decided from its answer.
    if !mode.wait_init(INIT_TIMEOUT) {
        return Err(format!(
            "mounting {}: the kernel's INIT did not arrive within {INIT_TIMEOUT:?}",
            handle.mountpoint.display()
        ));
    }
    if let Some((_, dev)) = handle.key {
        raise_read_ahead(dev, READ_AHEAD_KB);
    }
    let active = decide_mode(&mode, || probe_passthrough(&handle.conn, root))
        .map_err(|e| format!("mounting {}: {e}", handle.mountpoint.display()))?;
    mode.set_active(active);
    handle.mode = active;
    // Pinning for zero-message opens was switched on at INIT (FuseAdapter::init).
    let zero_message_open = mode.zero_message_open();
    check_ring_serves(&mut handle, transport)
        .map_err(|e| format!("mounting {}: {e}", handle.mountpoint.display()))?;
    tracing::info!(mountpoint = %handle.mountpoint.display(), data_mode = %active, requested = %opts.data_mode,
        transport = %handle.transport(), uring_queues = handle.uring.as_ref().map_or(0, |u| u.queues()),
        zero_message_open, zero_message_opendir = ModeState::flag(&mode.no_opendir),
        passthrough_available = ModeState::flag(&mode.passthrough),
        writeback_cache = ModeState::flag(&mode.writeback),
        "mounted {}; FUSE data mode {active}", if writable { "writable" } else { "read-only" });
    Ok(handle)
}

/// The transport to try: `auto` keeps `/dev/fuse` under `--fsync-push`, whose `fsync` waits for the
/// server inside the call, because an io_uring queue serves one call at a time per CPU.
fn transport_for(opts: &MountOptions) -> Transport {
    if opts.transport == Transport::Auto && opts.writes.fsync_push {
        tracing::info!("FUSE transport: /dev/fuse, because --fsync-push makes fsync wait for the server inside the call (an io_uring queue serves one call at a time per CPU)");
        return Transport::Dev;
    }
    opts.transport
}

/// Start the io_uring queues when `wanted` allows it. `Auto` falls back to `/dev/fuse` with one log
/// line saying why; `Uring` fails instead.
fn start_transport(
    session: &fuser::Session<FuseAdapter>,
    mode: &ModeState,
    wanted: Transport,
) -> Result<Option<UringHandle>, String> {
    if wanted == Transport::Dev {
        return Ok(None);
    }
    let started = if ModeState::flag(&mode.uring) {
        uring::start(
            session.as_fd(),
            |q| session.dispatcher(&format!("ring-{q}")),
            uring::MAX_PAYLOAD,
        )
    } else {
        Err(uring::kernel_support()
            .err()
            .unwrap_or_else(|| "the kernel did not offer FUSE over io_uring at INIT".into()))
    };
    match started {
        Ok(h) => Ok(Some(h)),
        Err(e) if wanted == Transport::Uring => Err(format!("--fuse-transport uring: {e}")),
        Err(e) => {
            tracing::info!("FUSE transport: /dev/fuse, because io_uring is not available: {e}");
            Ok(None)
        }
    }
}

/// The kernel uses the rings only once every CPU's queue registered: ask the mount for its statistics
/// and see that the answer came through a ring. If not, serve over `/dev/fuse` (or fail for `Uring`).
fn check_ring_serves(handle: &mut MountHandle, wanted: Transport) -> Result<(), String> {
    if handle.uring.is_none() {
        return Ok(());
    }
    let before = handle.uring_requests();
    if let Err(e) = nix::sys::statfs::statfs(handle.mountpoint.as_path()) {
        // No answer either way: keep the queues (stopping them under a kernel that uses them would
        // leave its requests without a server).
        tracing::warn!(error = %e, "could not check that the io_uring queues serve the mount");
        return Ok(());
    }
    if handle.uring_requests() > before {
        return Ok(());
    }
    let why = "the kernel did not route requests to the io_uring queues";
    if wanted == Transport::Uring {
        return Err(format!("--fuse-transport uring: {why}"));
    }
    tracing::info!("FUSE transport: /dev/fuse, because {why}");
    if let Some(u) = handle.uring.take() {
        u.stop();
    }
    Ok(())
}
