//! `mountd-remote`: the reference relayfile remote as a standalone server, for the demo, the
//! benchmarks and manual testing. Serves the relayfile API (see the `mountd_remote` library),
//! including the realtime WebSocket `/v1/workspaces/{ws}/fs/ws?token=...`, with switchable
//! faults (`--faults` or `PUT /_control/faults`, e.g. `'{"ws_stall_after":10}'`) and the
//! writes' rules (`If-Match`, `--max-body-bytes`, `--read-only`) until SIGINT/SIGTERM.
//!
//! Prints exactly one line to stdout, `listening on http://ADDR`, then logs to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mountd_remote::{Faults, RemoteConfig, RemoteHandle};

#[derive(Parser, Debug)]
#[command(
    name = "mountd-remote",
    version,
    about = "Reference relayfile remote (loopback test server)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory whose files seed the remote (remote path = "/" + relative path).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Expected bearer token.
    #[arg(
        long,
        env = "MOUNTD_REMOTE_TOKEN",
        default_value = "test-token",
        hide_env_values = true
    )]
    token: String,
    /// Read the expected bearer token from this file (overrides --token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Entries per /fs/tree page.
    #[arg(long, default_value_t = 1000)]
    page_size: usize,
    /// Largest write request body (PUT /fs/file, POST /fs/bulk); a larger one gets 413
    /// payload_too_large. Suffixes K, M, G (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "1048576", value_parser = parse_size)]
    max_body_bytes: usize,
    /// The token lacks the fs:write scope: every write gets 403 forbidden, reads work.
    #[arg(long)]
    read_only: bool,
    /// Initial fault set as JSON (see `Faults`), e.g. '{"export_delay_ms":2000}'.
    #[arg(long)]
    faults: Option<String>,
    /// Synthesize N files (in addition to --root).
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Size in bytes of each generated file.
    #[arg(long, default_value_t = 1024)]
    file_size: usize,
    /// Number of directories the generated files are spread over.
    #[arg(long, default_value_t = 50)]
    dirs: usize,
    /// Add a large file with deterministic content at PATH, SIZE bytes (suffixes K, M, G: powers of
    /// 1024), e.g. `/big/one.txt:1G`. Repeatable. The server holds its content in memory.
    #[arg(long, value_name = "PATH:SIZE", value_parser = parse_big)]
    big_file: Vec<(String, usize)>,
    /// Add N large files of SIZE bytes each, `/big/bNNN.dat` (e.g. `16:256M`).
    #[arg(long, value_name = "N:SIZE", value_parser = parse_generate_big)]
    generate_big: Option<(usize, usize)>,
    /// Store the large files as base64 (pseudo-random bytes) instead of text lines.
    #[arg(long)]
    big_base64: bool,
}

/// `1024`, `64K`, `256M`, `1G` (powers of 1024; an optional trailing `iB`/`B`).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?} (e.g. 1048576, 256M, 1G)"))
}

fn parse_big(s: &str) -> Result<(String, usize), String> {
    let (path, size) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected PATH:SIZE, got {s:?}"))?;
    if path.is_empty() {
        return Err("empty path".into());
    }
    Ok((path.to_string(), parse_size(size)?))
}

fn parse_generate_big(s: &str) -> Result<(usize, usize), String> {
    let (n, size) = s
        .split_once(':')
        .ok_or_else(|| format!("expected N:SIZE, got {s:?}"))?;
    let n = n.parse().map_err(|_| format!("invalid count {n:?}"))?;
    Ok((n, parse_size(size)?))
}

fn fail(msg: String) -> ! {
    eprintln!("mountd-remote: {msg}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let token = match &args.token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t.trim().to_string(),
            Err(e) => fail(format!("cannot read token file {}: {e}", p.display())),
        },
        None => args.token.clone(),
    };
    let faults: Option<Faults> = args.faults.as_deref().map(|j| {
        serde_json::from_str(j).unwrap_or_else(|e| fail(format!("invalid --faults JSON: {e}")))
    });
    let cfg = RemoteConfig {
        token,
        page_size: args.page_size.max(1),
        seed_dir: args.root.clone(),
        max_body_bytes: args.max_body_bytes,
    };
    let remote = match RemoteHandle::start_on(cfg, args.listen).await {
        Ok(r) => r,
        Err(e) => fail(format!("cannot start: {e}")),
    };
    if args.generate > 0 {
        remote.generate(args.generate, args.file_size, args.dirs);
    }
    for (path, size) in &args.big_file {
        remote.put_big(path, *size, args.big_base64);
    }
    if let Some((n, size)) = args.generate_big {
        for i in 0..n {
            remote.put_big(&format!("/big/b{i:03}.dat"), size, args.big_base64);
        }
    }
    if let Some(f) = faults {
        remote.set_faults(f);
    }
    remote.set_read_only(args.read_only);
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", remote.base_url());
        let _ = out.flush();
    }
    tracing::info!(files = remote.file_count(), "serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(format!("cannot install SIGTERM handler: {e}")));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    remote.shutdown().await;
    tracing::info!("stopped");
}
