//! The long-running service: bootstrap if needed, then serve (FUSE or plain directory) and keep the
//! mirror in sync until SIGTERM/SIGINT: from the realtime stream (`/fs/ws`, [`crate::sync::realtime`])
//! as changes arrive, and by polling the events feed every interval (±20% jitter) — the safety net
//! while the stream is healthy and the fallback whenever it is not (`--websocket=false`: polling only).
//! Both apply events under the engine's exclusive lock and share one cursor.
//!
//! It stays up whatever the remote does. A failed attempt or pass is retried with capped exponential
//! backoff ([`backoff`]: 1 s doubling up to the poll interval, at most 5 min, ±20 % jitter), forever
//! when the remote is unavailable (transport errors, 429, 5xx); only a 401/403 (exit 3), a refused
//! mass deletion during the bootstrap (exit 6), and the stall guard for a bootstrap that gets answers but
//! no progress (exit 4, see [`crate::sync::attempt`]) stop it. Failures are logged at a bounded rate
//! ([`Failures`]: the first, then one reminder a minute, and a line when it recovers) and recorded in the
//! state DB for `mountd status`. systemd's watchdog is fed by a task of the runtime that also runs the
//! sync, whatever the remote does, and `STATUS=` says the phase and the current error.
use crate::cli::args::RunArgs;
use crate::cli::exit;
use crate::cli::once as app;
use crate::cli::setup::{self, Setup};
use crate::sync::attempt::{is_unavailable, Health};
use crate::sync::engine::{Engine, SyncError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// Why the serve loop ended.
enum Stop {
    Signal,
    Fatal(i32),
}

fn notify(states: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(states);
}

/// ±20% jitter.
fn jittered(d: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

/// Longest wait between retries of a failing sync, whatever the poll interval.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// While failing, one reminder log line per this period (every attempt is logged at debug level).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The wait before retry number `failures` (1 after the first failure): 1 s doubling, capped at the
/// poll interval and at 5 minutes, ±20 % jitter.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let cap = interval.min(MAX_BACKOFF);
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    jittered(exp.min(cap))
}

/// `12s`, `5m`, `3h`: a coarse age for `STATUS=`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The current run of failures, and the log lines about it at a bounded rate.
#[derive(Default)]
struct Failures {
    /// When the run began (wall clock, for humans) and how long ago (monotonic).
    since: Option<(SystemTime, Instant)>,
    count: u32,
    last_log: Option<Instant>,
    error: String,
    unavailable: bool,
}

impl Failures {
    /// Note one failure of `what` ("bootstrap" or "sync"); `retry_in` is the wait before the next try.
    fn failed(&mut self, what: &str, e: &SyncError, retry_in: Duration) {
        let now = Instant::now();
        let first = self.since.is_none();
        if first {
            self.since = Some((SystemTime::now(), now));
        }
        self.count += 1;
        self.error = e.to_string();
        self.unavailable = is_unavailable(e);
        let retry_in_ms = retry_in.as_millis() as u64;
        let due = self.last_log.is_none_or(|t| now - t >= LOG_EVERY);
        if !due {
            tracing::debug!(error = %e, attempts = self.count, retry_in_ms, "{what} failed again");
            return;
        }
        self.last_log = Some(now);
        let since = self.since.map_or(String::new(), |(t, _)| rfc3339(t));
        let serving = if what == "bootstrap" {
            "nothing is served until the bootstrap completes"
        } else {
            "serving the last good state"
        };
        match (first, self.unavailable) {
            (true, true) => tracing::warn!(error = %e, retry_in_ms,
                "remote unavailable ({what}); {serving}; retrying with backoff (next reminder in 1 min)"),
            (true, false) => tracing::warn!(error = %e, retry_in_ms,
                "{what} failed; {serving}; retrying with backoff (next reminder in 1 min)"),
            (false, true) => tracing::warn!(error = %e, since = %since, attempts = self.count,
                "remote still unavailable ({what})"),
            (false, false) => tracing::warn!(error = %e, since = %since, attempts = self.count,
                "{what} still failing"),
        }
    }

    /// A success: one line if it ends a run of failures.
    fn recovered(&mut self, what: &str) {
        if let Some((since, t)) = self.since.take() {
            let down_for = humantime::format_duration(Duration::from_secs(t.elapsed().as_secs()));
            if self.unavailable {
                tracing::info!(since = %rfc3339(since), attempts = self.count, down_for = %down_for,
                    "remote reachable again ({what} succeeded)");
            } else {
                tracing::info!(since = %rfc3339(since), attempts = self.count, down_for = %down_for,
                    "{what} recovered");
            }
        }
        *self = Failures::default();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Bootstrapping,
    Serving,
}

/// What `STATUS=` says; shared by the loops and the notifier task.
struct Shown {
    phase: Phase,
    /// The current failure: since when, whether the remote is unavailable, the error.
    failure: Option<(SystemTime, bool, String)>,
    last_success: Option<SystemTime>,
    /// The realtime stream is on (`--websocket`): say whether it is connected.
    realtime: bool,
}

fn status_text(s: &Shown, engine: &Engine) -> String {
    let phase = match s.phase {
        Phase::Bootstrapping => {
            let p = engine.progress();
            match p.total() {
                Some(t) => format!("bootstrapping {}/{t} files", p.files()),
                None => format!("bootstrapping {} files", p.files()),
            }
        }
        Phase::Serving => {
            let mut t = match s.last_success.and_then(|t| t.elapsed().ok()) {
                Some(d) => format!("serving; last sync {} ago", age(d)),
                None => "serving".to_string(),
            };
            t.push_str(&crate::metrics::Metrics::global().outbox_status());
            if s.realtime {
                t.push_str(if crate::metrics::Metrics::global().realtime_connected() {
                    "; realtime stream connected"
                } else {
                    "; realtime stream down, polling"
                });
            }
            t
        }
    };
    match &s.failure {
        None => phase,
        Some((since, unavailable, err)) => {
            let mut err = err.replace('\n', " ");
            if err.len() > 200 {
                let mut cut = 200;
                while !err.is_char_boundary(cut) {
                    cut -= 1;
                }
                err.truncate(cut);
                err.push('…');
            }
            let what = if *unavailable {
                "remote unavailable"
            } else {
                "sync failing"
            };
            let serving = match s.phase {
                Phase::Serving => "serving last good state",
                Phase::Bootstrapping => "nothing served until the bootstrap completes",
            };
            format!(
                "{what} since {}: {err}; {serving}; {phase}",
                rfc3339(*since)
            )
        }
    }
}

/// Feed systemd's watchdog (when `WATCHDOG_USEC` asks for it) and keep `STATUS=` current, from a task of
/// the runtime that also runs the sync: it pings while the process is alive and responsive, whatever the
/// remote does.
fn spawn_notifier(shown: Arc<Mutex<Shown>>, engine: Engine) {
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(Duration::from_secs(1), |p| {
        (p / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
    });
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            if watchdog.is_some() {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            let text = status_text(&shown.lock().unwrap(), &engine);
            if text != last {
                notify(&[sd_notify::NotifyState::Status(&text)]);
                last = text;
            }
            tokio::time::sleep(tick).await;
        }
    });
}

fn parse_time(t: Option<&str>) -> Option<SystemTime> {
    humantime::parse_rfc3339(t?).ok()
}

/// `mountd` without `--once`: the long-running service.
pub fn run(a: &RunArgs, rt: &tokio::runtime::Runtime) -> i32 {
    if a.mountpoint.is_none() && !a.no_fuse {
        eprintln!("mountd: error: the service needs --mountpoint MNT (or --no-fuse to keep --local-dir in sync as a plain directory)\nmountd: hint: use --once for a one-shot sync");
        return exit::USAGE;
    }
    let mut s = match setup::setup(a, false) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("mountd: error: {}", f.msg);
            return f.code;
        }
    };
    let code = rt.block_on(serve(a, &mut s));
    notify(&[sd_notify::NotifyState::Stopping]);
    code
}

/// After an attempt or pass was recorded: the metrics file (when asked for) and what `STATUS=` shows.
fn after_record(a: &RunArgs, shown: &Mutex<Shown>, health: Option<Health>) {
    if let Some(p) = &a.metrics_file {
        crate::cli::metrics_server::write_file(p);
    }
    if let Some(h) = health {
        if let Some(t) = parse_time(h.last_success_at.as_deref()) {
            shown.lock().unwrap().last_success = Some(t);
        }
    }
}

fn show_failure(shown: &Mutex<Shown>, f: &Failures) {
    shown.lock().unwrap().failure = f.since.map(|(t, _)| (t, f.unavailable, f.error.clone()));
}

/// The signals the service reacts to.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What serves the mirror once it is complete; dropped in this order when the service stops.
struct Served {
    push: Option<PushSide>,
    realtime: Option<crate::sync::realtime::Realtime>,
    mount: Option<crate::view::fuse::MountHandle>,
}

async fn serve(a: &RunArgs, s: &mut Setup) -> i32 {
    let mut sig = Signals {
        term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
        int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
    };
    let start_health = crate::sync::attempt::refresh_metrics(&s.engine).await;
    let shown = Arc::new(Mutex::new(Shown {
        phase: Phase::Bootstrapping,
        failure: None,
        last_success: start_health
            .ok()
            .and_then(|h| parse_time(h.last_success_at.as_deref())),
        realtime: a.compat.websocket.unwrap_or(true),
    }));
    spawn_notifier(shown.clone(), s.engine.clone());
    if let Some(addr) = a.metrics_addr {
        if let Err(e) = crate::cli::metrics_server::serve(addr).await {
            eprintln!("mountd: error: cannot serve metrics on {addr}: {e}");
            return exit::USAGE;
        }
    }
    // 1. Bootstrap (or catch up) until complete; the mount is not served before that.
    let failures = match bootstrap(a, s, &shown, &mut sig).await {
        Ok(f) => f,
        Err(code) => return code,
    };
    // 2. Serve: the mount, the realtime stream and the push side.
    let served = match start_serving(a, s).await {
        Ok(served) => served,
        Err(code) => return code,
    };
    shown.lock().unwrap().phase = Phase::Serving;
    let text = status_text(&shown.lock().unwrap(), &s.engine);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&text),
    ]);
    // 3. The poll loop, until a signal or a fatal error.
    let stop = poll_loop(a, s, &shown, &served, failures, &mut sig).await;
    notify(&[sd_notify::NotifyState::Stopping]);
    // Stop the push side and the stream before the mount goes: no commit (and no cache
    // invalidation) after it. A push cut short is pushed again, once, at the next start.
    let Served {
        push,
        realtime,
        mount,
    } = served;
    drop(push);
    drop(realtime);
    if let Some(m) = mount {
        m.unmount();
        tracing::info!("unmounted");
    }
    match stop {
        Stop::Signal => stopped("signal"),
        Stop::Fatal(code) => code,
    }
}

/// Bootstrap (or catch up) until the mirror is complete, retrying with backoff; a complete mirror is
/// served at once (even if the server is down: catch-up happens in the poll loop). `Err` is the exit
/// code (a fatal error, or a signal).
async fn bootstrap(
    a: &RunArgs,
    s: &mut Setup,
    shown: &Mutex<Shown>,
    sig: &mut Signals,
) -> Result<Failures, i32> {
    let mut failures = Failures::default();
    loop {
        match s.engine.read(|st| st.is_complete()).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                eprintln!("mountd: error: {e}");
                return Err(exit::FAILED);
            }
        }
        let r = tokio::select! {
            r = app::attempt(s) => r,
            _ = sig.term.recv() => return Err(stopped("SIGTERM during bootstrap")),
            _ = sig.int.recv() => return Err(stopped("SIGINT during bootstrap")),
        };
        after_record(a, shown, None);
        match r {
            Ok(at) => {
                failures.recovered("bootstrap");
                tracing::info!(path = at.path, "mirror complete");
                break;
            }
            Err(e) => {
                let code = exit::code_for(&e);
                if code == exit::AUTH
                    || code == exit::MASS_DELETE
                    || matches!(e, SyncError::GaveUp(_))
                {
                    eprintln!("mountd: error: {e}\nmountd: hint: {}", exit::hint_for(&e));
                    return Err(code);
                }
                let wait = backoff(failures.count + 1, a.interval);
                failures.failed("bootstrap", &e, wait);
                show_failure(shown, &failures);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = sig.hup.recv() => tracing::info!("SIGHUP: retrying now"),
                    _ = sig.term.recv() => return Err(stopped("SIGTERM")),
                    _ = sig.int.recv() => return Err(stopped("SIGINT")),
                }
            }
        }
    }
    show_failure(shown, &failures);
    if let Ok(h) = crate::sync::attempt::refresh_metrics(&s.engine).await {
        after_record(a, shown, Some(h));
    }
    Ok(failures)
}

/// Mount the view (with the push side's settler first: a writable view hands it what changes), start
/// the realtime stream and the pusher. `Err` is the exit code.
async fn start_serving(a: &RunArgs, s: &mut Setup) -> Result<Served, i32> {
    let kick = Arc::new(tokio::sync::Notify::new());
    let fuse = a.mountpoint.is_some() && !a.no_fuse;
    let view_watcher = (fuse && s.engine.config().push.two_way())
        .then(|| crate::sync::push::watch::for_view(s.engine.clone(), kick.clone()));
    let changes = match &view_watcher {
        Some(w) => {
            let v = crate::sync::push::view::ViewChanges::new(
                s.engine.clone(),
                w.touches(),
                kick.clone(),
            );
            v.load_refusal().await;
            Some(Arc::new(v) as Arc<dyn crate::store::change::LocalChanges>)
        }
        None => None,
    };
    let mount = mount_view(a, s, changes)?;
    // The realtime stream, next to the poll loop.
    let realtime = if a.compat.websocket.unwrap_or(true) {
        Some(crate::sync::realtime::spawn(
            s.engine.clone(),
            crate::sync::realtime::RealtimeConfig {
                client: s.client.clone(),
                ping_interval: a.ws_ping_interval,
                poll_interval: a.interval,
            },
        ))
    } else {
        tracing::info!("realtime stream off (--websocket=false): polling every --interval");
        if let Err(e) = crate::sync::realtime::record_off(&s.engine).await {
            tracing::warn!(error = %e, "cannot record the realtime stream's state");
        }
        None
    };
    // Two-way sync: the settler (the view's or the watched directory's changes) and the pusher.
    let push = match start_push(&s.engine, kick, view_watcher, a.interval).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mountd: error: {e}");
            return Err(exit::FAILED);
        }
    };
    Ok(Served {
        push,
        realtime,
        mount,
    })
}

/// Incremental sync every interval (±20%), audit by listing every audit interval; a failed pass is
/// retried with backoff, forever. Ends on a signal, an authorization failure or a dead FUSE session.
async fn poll_loop(
    a: &RunArgs,
    s: &Setup,
    shown: &Mutex<Shown>,
    served: &Served,
    mut failures: Failures,
    sig: &mut Signals,
) -> Stop {
    let mut last_audit = Instant::now();
    // The first pass runs at once: a restarted service catches up without waiting an interval.
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = sig.hup.recv() => tracing::info!("SIGHUP: syncing now"),
            _ = s.engine.check_requested() => tracing::info!("the realtime stream reconnected without a cursor: checking the mirror now"),
            _ = sig.term.recv() => return Stop::Signal,
            _ = sig.int.recv() => return Stop::Signal,
        }
        let audit_due = !a.audit_interval.is_zero() && last_audit.elapsed() >= a.audit_interval;
        if audit_due {
            // The local side's audit: a full scan of the mirror (changes in directories inotify
            // could not watch are found here at the latest).
            if let Some(p) = &served.push {
                p.rescan(&s.engine).await;
            }
        }
        let started = Instant::now();
        let r = tokio::select! {
            r = sync_pass(s, audit_due) => r,
            // Abandon the in-flight page: everything committed stays, the rest is redone next start.
            _ = sig.term.recv() => return Stop::Signal,
            _ = sig.int.recv() => return Stop::Signal,
        };
        let health =
            crate::sync::attempt::record_pass(&s.engine, started.elapsed(), r.as_ref().map(|_| ()))
                .await;
        if let Err(db) = &health {
            tracing::error!(error = %db, "cannot record the sync outcome in the state database");
        }
        after_record(a, shown, health.ok());
        match r {
            Ok(()) => {
                if audit_due {
                    last_audit = Instant::now();
                }
                failures.recovered("sync");
                wait = jittered(a.interval);
            }
            Err(e) => {
                if exit::code_for(&e) == exit::AUTH {
                    eprintln!("mountd: error: {e}\nmountd: hint: {}", exit::hint_for(&e));
                    return Stop::Fatal(exit::AUTH);
                }
                wait = backoff(failures.count + 1, a.interval);
                failures.failed("sync", &e, wait);
            }
        }
        show_failure(shown, &failures);
        if served.mount.as_ref().is_some_and(|m| !m.is_alive()) {
            eprintln!("mountd: error: the FUSE session ended (unmounted from outside?)");
            return Stop::Fatal(exit::FAILED);
        }
    }
}

/// One pass of the poll loop under the no-progress watchdog: the feed (or an audit), the quarantine
/// retry and the count check.
async fn sync_pass(s: &Setup, audit_due: bool) -> Result<(), SyncError> {
    let e = s.engine.clone();
    let progress = e.progress().clone();
    crate::sync::watchdog::guarded(&progress, s.limits.idle, Duration::ZERO, async move {
        // Not while a realtime batch is being applied (and none starts until this is done).
        let _exclusive = e.exclusive().await;
        let traversal = e.read(|st| st.checkpoint()).await?.is_some();
        let applied = if audit_due || traversal {
            e.audit().await?;
            0
        } else {
            e.sync_pass().await?
        };
        e.retry_quarantine().await?;
        // The safety poll's count check (a mismatch lists again at once), on a pass whose feed was
        // quiet: a busy server's count moves while it is read (checked anyway after a few busy
        // passes in a row).
        if applied == 0 || !e.defer_busy_listing(crate::sync::count_check::BUSY_DEFERRALS) {
            e.confirm_complete(true).await?;
        }
        Ok(())
    })
    .await
}

/// Longest a push waits for a burst of local changes to end before it sends what it has.
const PUSH_GATHER: Duration = Duration::from_millis(100);

/// The push side of a running service; dropping it stops both tasks.
struct PushSide {
    watcher: Option<crate::sync::push::watch::Watcher>,
    pusher: tokio::task::JoinHandle<()>,
    kick: Arc<tokio::sync::Notify>,
}

impl PushSide {
    /// Scan the whole watched mirror for local changes, and push what it finds.
    async fn rescan(&self, engine: &Engine) {
        if self.watcher.is_none() {
            return;
        }
        match engine.record_local(vec![String::new()]).await {
            Ok(d) if d.changes() > 0 || d.pending > 0 => self.kick.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot scan the mirror for local changes"),
        }
    }
}

impl Drop for PushSide {
    fn drop(&mut self) {
        self.pusher.abort();
    }
}

/// Mount the FUSE view (writable when `changes` takes its local changes), unless the mirror is
/// served as a plain directory. `Err` is the exit code.
fn mount_view(
    a: &RunArgs,
    s: &mut Setup,
    changes: Option<Arc<dyn crate::store::change::LocalChanges>>,
) -> Result<Option<crate::view::fuse::MountHandle>, i32> {
    let Some(mnt) = a.mountpoint.as_ref().filter(|_| !a.no_fuse) else {
        tracing::info!(dir = %s.engine.store().root().display(), "serving the mirror as a plain directory (--no-fuse)");
        return Ok(None);
    };
    let opts = crate::view::fuse::MountOptions {
        fsname: format!("mountd:{}", a.workspace.clone().unwrap_or_default()),
        allow_other: a.allow_other,
        ttl: a.metadata_ttl,
        threads: 2,
        fs: crate::view::fs::FsOptions {
            uid: a.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
            gid: a.gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
            file_mode: a.file_mode,
            dir_mode: a.dir_mode,
            writable: changes.is_some(),
        },
        data_mode: a.data_mode,
        writes: crate::view::fuse::WriteOptions {
            writeback_cache: a.writeback_cache,
            fsync_push: a.fsync_push,
        },
        transport: a.fuse_transport,
    };
    match crate::view::fuse::mount(mnt, s.engine.store().root(), opts, changes) {
        Ok(m) => {
            s.engine.set_sink(m.sink());
            tracing::info!(mountpoint = %mnt.display(), "mounted");
            Ok(Some(m))
        }
        Err(e) => {
            eprintln!("mountd: error: cannot mount {}: {e}\nmountd: hint: FUSE needs /dev/fuse (and fuse3's fusermount3 when not root); use --no-fuse on machines without it", mnt.display());
            Err(exit::FAILED)
        }
    }
}

/// In mirror mode: settle local changes (the writable view's, or a plain-directory mirror's watched
/// with inotify, started before the scan of what changed while mountd was not running, so nothing
/// falls in between) and push the outbox whenever something is recorded, and every interval while
/// pushes fail.
async fn start_push(
    engine: &Engine,
    kick: Arc<tokio::sync::Notify>,
    view: Option<crate::sync::push::watch::Watcher>,
    interval: Duration,
) -> Result<Option<PushSide>, String> {
    if !engine.config().push.two_way() {
        return Ok(None);
    }
    let (w, source) = match view {
        Some(w) => (w, "recording the mount's local changes (two-way sync)"),
        None => (
            crate::sync::push::watch::spawn(engine.clone(), kick.clone())?,
            "watching the mirror directory for local changes (two-way sync)",
        ),
    };
    let unsettled = Some(w.unsettled());
    let found = engine
        .record_local(vec![String::new()])
        .await
        .map_err(|e| format!("cannot scan the mirror for local changes: {e}"))?;
    tracing::info!(
        changes = found.changes(),
        dir = %engine.store().root().display(),
        "{source}"
    );
    let pusher = tokio::spawn(push_loop(engine.clone(), kick.clone(), unsettled, interval));
    Ok(Some(PushSide {
        watcher: Some(w),
        pusher,
        kick,
    }))
}

/// Push what is pending; then wait for the next recorded change (or, while something is pending,
/// retry with backoff). A burst of changes is taken together: after a change is recorded the push
/// waits until none came for `--change-batch-window` and the watcher has no changed path waiting
/// (`unsettled`), at most [`PUSH_GATHER`]; a lone save goes after the window.
async fn push_loop(
    engine: Engine,
    kick: Arc<tokio::sync::Notify>,
    unsettled: Option<Arc<std::sync::atomic::AtomicUsize>>,
    interval: Duration,
) {
    let window = engine.config().push.batch_window;
    let busy = || {
        unsettled
            .as_ref()
            .is_some_and(|u| u.load(std::sync::atomic::Ordering::Relaxed) > 0)
    };
    let mut failures = Failures::default();
    loop {
        let gather = tokio::time::Instant::now() + PUSH_GATHER;
        loop {
            let until = (tokio::time::Instant::now() + window).min(gather);
            let kicked = tokio::time::timeout_at(until, kick.notified())
                .await
                .is_ok();
            if !(kicked || busy()) || tokio::time::Instant::now() >= gather {
                break;
            }
        }
        let wait = match engine.push_pending().await {
            Ok(p) => {
                failures.recovered("push");
                if p.files > 0 {
                    tracing::debug!(
                        files = p.files,
                        requests = p.requests,
                        "pushed local changes"
                    );
                }
                // While something is pending (failed pushes, held deletes an operator may allow),
                // look again every interval.
                let left = engine.read(|st| st.outbox_summary()).await;
                match left {
                    Ok(l) if l.pending > 0 => Some(jittered(interval)),
                    _ => None,
                }
            }
            Err(e) => {
                let wait = backoff(failures.count + 1, interval);
                failures.failed("push", &e, wait);
                Some(wait)
            }
        };
        match wait {
            Some(w) => tokio::select! {
                _ = kick.notified() => {}
                _ = tokio::time::sleep(w) => {}
            },
            None => kick.notified().await,
        }
    }
}

/// A signal ended the service: everything committed is persisted; exit 0.
fn stopped(why: &str) -> i32 {
    tracing::info!(why, "stopping: state persisted");
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_the_interval_and_at_most_five_minutes() {
        let s = Duration::from_secs;
        let within = |d: Duration, want: Duration| d >= want.mul_f64(0.8) && d <= want.mul_f64(1.2);
        for (n, want) in [
            (1, s(1)),
            (2, s(2)),
            (3, s(4)),
            (5, s(16)),
            (6, s(30)),
            (40, s(30)),
        ] {
            let d = backoff(n, s(30));
            assert!(within(d, want), "failure {n}: {d:?}, want {want:?} ±20%");
        }
        assert!(within(backoff(30, s(3600)), s(300)), "capped at 5 min");
        assert!(within(
            backoff(1, Duration::from_millis(300)),
            Duration::from_millis(300)
        ));
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(3, s(30))).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
