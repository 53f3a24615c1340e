//! `latency-probe`: remote write → visible on disk (`scripts/bench-mount.sh`), and local write →
//! readable on the server (`--push`, `scripts/bench-push.sh`).
//!
//! Pull (default): for each sample, a random pause (0..`--pause-ms`), then `PUT /fs/file` of a fresh
//! small text file on one kept-alive TCP connection (`TCP_NODELAY`, one write per request), and reads
//! of `ROOT/<path>` every `--poll-us` until it holds the new bytes. The time runs from just before the
//! request is written to the first read that sees the new bytes (so it includes the PUT's round
//! trip).
//!
//! Push (`--push`): for each sample, the same pause, then the file is saved into `ROOT` as an editor
//! does (a temp file written, then renamed over the target), and `GET /fs/file` is asked every
//! `--poll-us` until the server holds the new bytes. With `--burst N`, each sample writes N new files
//! at once into a fresh directory and waits until the server's `totalFiles` for it is N.
//!
//! Prints one line per sample: the latency in milliseconds, or `timeout`.

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
    /// Measure local write → readable on the server instead.
    #[arg(long)]
    push: bool,
    /// With --push: N new files (1 KiB each) per sample, all at once.
    #[arg(long, default_value_t = 0)]
    burst: u32,
}

struct Conn {
    host: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// One request on the kept-alive connection; the answer's status and body.
    fn request(
        &mut self,
        method: &str,
        target: &str,
        token: &str,
        body: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.host)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(BufReader::new(s));
        }
        let r = self.stream.as_mut().expect("connected");
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nX-Correlation-Id: latency_probe_{}\r\nIf-Match: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
        Ok((status, body))
    }

    /// [`Conn::request`], once more on a new connection when the kept-alive one broke.
    fn retried(
        &mut self,
        method: &str,
        target: &str,
        token: &str,
        body: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request(method, target, token, body).or_else(|_| {
            self.stream = None;
            self.request(method, target, token, body)
        })
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
        let sample = Sample {
            a: &a,
            token: &token,
            i,
        };
        let r = if !a.push {
            sample.pull(&mut conn)
        } else if a.burst > 0 {
            sample.burst(&mut conn)
        } else {
            sample.push(&mut conn)
        };
        match r {
            Some(d) => println!("{:.1}", d.as_secs_f64() * 1000.0),
            None => println!("timeout"),
        }
        let _ = std::io::stdout().flush();
    }
}

struct Sample<'a> {
    a: &'a Args,
    token: &'a str,
    i: u32,
}

impl Sample<'_> {
    fn remote(&self, name: &str) -> String {
        format!("{}/{name}", self.a.dir.trim_end_matches('/'))
    }

    /// Wait until `done` holds (polling every `--poll-us`); the time since `t0`, `None` past the limit.
    fn until(&self, t0: Instant, mut done: impl FnMut() -> bool) -> Option<Duration> {
        let limit = Duration::from_secs(self.a.timeout_s);
        loop {
            if done() {
                return Some(t0.elapsed());
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_micros(self.a.poll_us));
        }
    }

    /// A PUT on the server until the file under `--root` holds its bytes.
    fn pull(&self, conn: &mut Conn) -> Option<Duration> {
        let (a, i) = (self.a, self.i);
        let remote = self.remote(&format!("latency-{}-{i}.txt", a.label));
        let want = format!("latency {} sample {i} {}\n", a.label, rand_u32());
        let body = serde_json::json!({"contentType": "text/plain", "content": want}).to_string();
        let local = a.root.join(remote.trim_start_matches('/'));
        let t0 = Instant::now();
        let target = format!("/v1/workspaces/{}/fs/file?path={remote}", a.workspace);
        match conn.retried("PUT", &target, self.token, &body) {
            Ok((s, _)) if (200..300).contains(&s) => {}
            other => {
                eprintln!("latency-probe: PUT {remote} failed: {other:?}");
                std::process::exit(1);
            }
        }
        self.until(t0, || {
            std::fs::read(&local).ok().as_deref() == Some(want.as_bytes())
        })
    }

    /// An editor's save under `--root` until `GET /fs/file` answers its bytes.
    fn push(&self, conn: &mut Conn) -> Option<Duration> {
        let (a, i) = (self.a, self.i);
        let remote = self.remote(&format!("push-{}-{i}.txt", a.label));
        let want = format!("push {} sample {i} {}\n", a.label, rand_u32());
        let local = a.root.join(remote.trim_start_matches('/'));
        let tmp = local.with_extension("txt.swp");
        let target = format!("/v1/workspaces/{}/fs/file?path={remote}", a.workspace);
        let t0 = Instant::now();
        std::fs::write(&tmp, &want).expect("write the temp file");
        std::fs::rename(&tmp, &local).expect("rename it into place");
        self.until(t0, || {
            conn.retried("GET", &target, self.token, "")
                .ok()
                .filter(|(s, _)| *s == 200)
                .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["content"].as_str() == Some(want.as_str()))
        })
    }

    /// `--burst` new 1 KiB files at once until the server counts them all.
    fn burst(&self, conn: &mut Conn) -> Option<Duration> {
        let (a, i) = (self.a, self.i);
        let dir = self.remote(&format!("burst-{}-{i}", a.label));
        let local = a.root.join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&local).expect("burst directory");
        let target = format!("/v1/workspaces/{}/fs/tree?path={dir}&depth=1", a.workspace);
        let line = format!("burst {} sample {i}\n", a.label);
        let content = line.repeat(1024 / line.len() + 1)[..1024].to_string();
        let t0 = Instant::now();
        for n in 0..a.burst {
            std::fs::write(local.join(format!("f{n:05}.txt")), &content).expect("write a file");
        }
        let want = u64::from(a.burst);
        self.until(t0, || {
            conn.retried("GET", &target, self.token, "")
                .ok()
                .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["totalFiles"].as_u64() == Some(want))
        })
    }
}
