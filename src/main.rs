//! `mountd`: command line entry point.
use mountd::cli::args::{Command, LogFormat, RunArgs};
use mountd::cli::once as app;
use mountd::cli::{compat, setup};
use std::time::Duration;

/// The log filter, first match wins: -v/-q, MOUNTD_LOG, RUST_LOG, info. Colours only on a terminal.
fn init_logging(a: &RunArgs) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let mut bad = None;
    let filter = if a.verbose > 0 || a.quiet > 0 {
        EnvFilter::new(match (a.verbose, a.quiet) {
            (1, _) => "info,mountd=debug",
            (v, _) if v >= 2 => "debug,mountd=trace",
            (_, 1) => "warn",
            _ => "error",
        })
    } else {
        ["MOUNTD_LOG", "RUST_LOG"]
            .iter()
            .find_map(|var| {
                let v = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
                match EnvFilter::try_new(&v) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        bad.get_or_insert(format!(
                            "{var}={v:?} is not a valid log filter ({e}); ignored"
                        ));
                        None
                    }
                }
            })
            .unwrap_or_else(|| EnvFilter::new("info"))
    };
    // The WebSocket library logs its handshake request (the URL, which carries the stream's token)
    // at trace level: never let that through, whatever the filter asks for.
    let filter = ["tungstenite=info", "tokio_tungstenite=info"]
        .iter()
        .fold(filter, |f, d| match d.parse() {
            Ok(d) => f.add_directive(d),
            Err(_) => f,
        });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| mountd::sync::progress::LogWriter);
    match a.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
    if let Some(w) = bad {
        tracing::warn!("{w}");
    }
}

/// Log the settings' warnings; exit 2 on a refused combination.
fn resolve(a: &mut RunArgs, m: &clap::ArgMatches) -> compat::Resolution {
    match compat::resolve(a, m) {
        Ok(r) => {
            for w in &r.warnings {
                tracing::warn!("{w}");
            }
            for n in &r.notes {
                tracing::info!("{n}");
            }
            r
        }
        Err(e) => {
            eprintln!("mountd: error: {e}");
            std::process::exit(mountd::cli::exit::USAGE);
        }
    }
}

/// `--once` until done or until SIGTERM/SIGINT (then: which signal, and the exit code).
async fn once_or_signal(a: &RunArgs) -> Result<i32, (&'static str, i32)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        code = app::run_once(a) => Ok(code),
        _ = term.recv() => Err(("SIGTERM", 143)),
        _ = int.recv() => Err(("SIGINT", 130)),
    }
}

fn main() {
    let (cli, matches, check) = compat::parse(std::env::args_os().collect());
    let mut run = match cli.command {
        Some(Command::Status(s)) => std::process::exit(mountd::cli::status::command(&s)),
        Some(Command::Completions(c)) => {
            std::process::exit(mountd::cli::completions::completions(c.shell))
        }
        Some(Command::Man) => std::process::exit(mountd::cli::completions::man()),
        Some(Command::Reset(r)) => std::process::exit(mountd::cli::reset::command(&r)),
        Some(Command::Conflicts(c)) => std::process::exit(mountd::cli::conflicts::conflicts(&c)),
        Some(Command::Outbox(o)) => std::process::exit(mountd::cli::conflicts::outbox(&o)),
        Some(Command::Check(_)) => {
            eprintln!("mountd: error: write `check` first: mountd check [FLAGS]");
            std::process::exit(mountd::cli::exit::USAGE);
        }
        None => cli.run,
    };
    init_logging(&run);
    resolve(&mut run, &matches);
    if check {
        std::process::exit(mountd::cli::check::command(&run));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = if run.once || run.push_once().is_some() {
        match rt.block_on(once_or_signal(&run)) {
            Ok(code) => code,
            Err((sig, code)) => {
                // Stop the in-flight work first, so nothing overwrites the final state below.
                rt.shutdown_timeout(Duration::from_secs(2));
                if let Some(p) = setup::PROGRESS.get() {
                    p.finish_bar();
                    p.set_error(Some(format!("interrupted by {sig}")));
                    p.final_write("interrupted");
                }
                tracing::warn!(
                    signal = sig,
                    exit_code = code,
                    "stopped by {sig}: everything committed is kept; run again to resume from the checkpoint"
                );
                std::process::exit(code);
            }
        }
    } else {
        mountd::cli::service::run(&run, &rt)
    };
    drop(rt);
    std::process::exit(code);
}
