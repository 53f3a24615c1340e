//! `latency-probe`: remote write → visible on disk, for `scripts/bench-mount.sh`.
//!
//! For each sample: a random pause (0..`--pause-ms`), then `PUT /fs/file` of a fresh small text file
//! on one kept-alive TCP connection (`TCP_NODELAY`, one write per request), and reads of
//! `ROOT/<path>` every `--poll-us` until it holds the new bytes. The time runs from just before the
//! request is written to the first read that sees the new bytes (so it includes the PUT's round
//! trip). Prints one line per sample: the latency in milliseconds, or `timeout`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "latency-probe",
    about = "Remote write -> visible latency samples"
)]
struct Args {
    /// Base URL of the relayfile server (http://HOST:PORT).
    #[arg(long)]
    url: String,
    #[arg(long)]
    workspace: String,
    /// File holding the bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// Where the written files show up (a mountpoint or a mirror directory).
    #[arg(long)]
    root: PathBuf,
    /// Remote directory of the probe files.
    #[arg(long, default_value = "/d001")]
    dir: String,
    /// Label in the file names.
    #[arg(long, default_value = "probe")]
    label: String,
    #[arg(long, default_value_t = 10)]
    samples: u32,
    /// Longest random pause before each write.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,
    /// Read period.
    #[arg(long, default_value_t = 1000)]
    poll_us: u64,
    /// Give up on a sample after this long.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

struct Conn {
    host: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn put(&mut self, path_q: &str, ws: &str, token: &str, body: &str) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.host)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(BufReader::new(s));
        }
        let r = self.stream.as_mut().expect("connected");
        let req = format!(
            "PUT /v1/workspaces/{ws}/fs/file?path={path_q} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nX-Correlation-Id: latency_probe_{}\r\nIf-Match: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            std::process::id() as u64 * 1_000_000 + u64::from(rand_u32() % 1_000_000),
            body.len()
        );
        r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                break;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        Ok(status)
    }
}

/// A small random number without a dependency (the clock's nanoseconds, mixed).
fn rand_u32() -> u32 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    n.wrapping_mul(2_654_435_761).rotate_left(13)
}

fn main() {
    let a = Args::parse();
    let token = std::fs::read_to_string(&a.token_file)
        .expect("token file")
        .trim()
        .to_string();
    let host = a
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut conn = Conn { host, stream: None };
    for i in 1..=a.samples {
        let pause = if a.pause_ms == 0 {
            0
        } else {
            u64::from(rand_u32()) % a.pause_ms
        };
        std::thread::sleep(Duration::from_millis(pause));
        let name = format!("latency-{}-{i}.txt", a.label);
        let remote = format!("{}/{name}", a.dir.trim_end_matches('/'));
        let want = format!("latency {} sample {i} {}\n", a.label, rand_u32());
        let body = serde_json::json!({"contentType": "text/plain", "content": want}).to_string();
        let local = a.root.join(remote.trim_start_matches('/'));
        let t0 = Instant::now();
        let mut status = conn.put(&remote, &a.workspace, &token, &body);
        if status.is_err() {
            // The kept-alive connection broke: once more on a new one.
            conn.stream = None;
            status = conn.put(&remote, &a.workspace, &token, &body);
        }
        match status {
            Ok(s) if (200..300).contains(&s) => {}
            other => {
                eprintln!("latency-probe: PUT {remote} failed: {other:?}");
                std::process::exit(1);
            }
        }
        let limit = Duration::from_secs(a.timeout_s);
        loop {
            if std::fs::read(&local).ok().as_deref() == Some(want.as_bytes()) {
                println!("{:.1}", t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t0.elapsed() > limit {
                println!("timeout");
                break;
            }
            std::thread::sleep(Duration::from_micros(a.poll_us));
        }
        let _ = std::io::stdout().flush();
    }
}
