//! Client load for the lifecycle tests: short HTTPS requests at a steady rate and long
//! downloads, through splicer to the rig, each outcome classified (refused, reset, other), so
//! a test can assert that a restart or an upgrade cost no client anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{parse_response, tls_client};

/// Where the load goes; tests may move it (an outer balancer's part).
#[derive(Clone)]
pub struct Target(Arc<Mutex<SocketAddr>>);

impl Target {
    /// Load aimed at `addr`.
    pub fn new(addr: SocketAddr) -> Target {
        Target(Arc::new(Mutex::new(addr)))
    }

    /// Aim at `addr` from the next request on.
    pub fn set(&self, addr: SocketAddr) {
        if let Ok(mut a) = self.0.lock() {
            *a = addr;
        }
    }

    /// The current address.
    pub fn get(&self) -> SocketAddr {
        *self.0.lock().expect("target lock")
    }
}

/// How long a reader pauses after each read, changeable while downloads run (a test slows them
/// until the moment they must span, then lets them finish).
#[derive(Clone, Default)]
pub struct Pace(Arc<AtomicU64>);

impl Pace {
    /// A pause of `pause` per read.
    pub fn new(pause: Duration) -> Pace {
        let pace = Pace::default();
        pace.set(pause);
        pace
    }

    /// From the next read on, pause `pause`.
    pub fn set(&self, pause: Duration) {
        let micros = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
        self.0.store(micros, Ordering::Relaxed);
    }

    /// The pause now in force.
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

/// Outcomes so far.
#[derive(Default)]
pub struct Tally {
    /// Requests answered 200.
    pub ok: AtomicU64,
    /// Connects refused (nothing listening).
    pub refused: AtomicU64,
    /// Connections reset (by the kernel or a peer).
    pub reset: AtomicU64,
    /// Every other failure (timeouts, wrong answers, broken TLS).
    pub failed: AtomicU64,
    /// The first few failures, for the assertion message.
    pub errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), std::io::Error>) {
        let e = match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => e,
        };
        let counter = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => &self.refused,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                &self.reset
            }
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < 10 {
                errors.push(e.to_string());
            }
        }
    }

    /// `ok=… refused=… reset=… failed=…` and the first errors.
    pub fn summary(&self) -> String {
        format!(
            "ok={} refused={} reset={} failed={} first errors: {:?}",
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.reset.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.lock().map(|e| e.clone()).unwrap_or_default()
        )
    }

    /// Whether every request so far succeeded.
    pub fn is_clean(&self) -> bool {
        self.refused.load(Ordering::Relaxed) == 0
            && self.reset.load(Ordering::Relaxed) == 0
            && self.failed.load(Ordering::Relaxed) == 0
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}

/// Longest a single request may take before it counts as failed: well beyond a restart's
/// queueing in the backlog, short of the test's own bound.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

/// Longest a slow download may take.
pub const DOWNLOAD_LIMIT: Duration = Duration::from_secs(90);

/// One `GET path` over TLS through `addr`; the body must be `expect_len` bytes (if given) in
/// the rig's `/bytes` pattern, or start with `node-` otherwise. `read_pause` slows the reading
/// (a long download that spans several restarts).
pub async fn request(
    addr: SocketAddr,
    path: &str,
    expect_len: Option<usize>,
    read_pause: &Pace,
    limit: Duration,
) -> Result<(), std::io::Error> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(tls_client(&[b"http/1.1"]));
        let name = ServerName::try_from("node").map_err(std::io::Error::other)?;
        let mut tls = connector.connect(name, tcp).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(expect_len.unwrap_or(0) + 512);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => n,
                // A peer closing without close_notify is fine once the answer is whole.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
                Err(e) => return Err(e),
            };
            buf.extend_from_slice(&chunk[..n]);
            let pause = read_pause.get();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let head_end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP header in the answer"))?;
        let (code, _) = parse_response(&buf[..head_end + 4]);
        if code != 200 {
            return Err(std::io::Error::other(format!("status {code}")));
        }
        let body = &buf[head_end + 4..];
        match expect_len {
            Some(len) => {
                if body.len() != len {
                    return Err(std::io::Error::other(format!(
                        "download of {len} bytes got {}",
                        body.len()
                    )));
                }
                let period = splicer::rig::BYTE_PATTERN_PERIOD;
                if let Some(k) = body
                    .iter()
                    .enumerate()
                    .position(|(k, b)| u64::from(*b) != k as u64 % period)
                {
                    return Err(std::io::Error::other(format!(
                        "download corrupt at byte {k}"
                    )));
                }
            }
            None if !body.starts_with(b"node-") => {
                return Err(std::io::Error::other("answer is not from a rig node"));
            }
            None => {}
        }
        Ok(())
    };
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "request timed out",
        ))
    })
}

/// Short requests from `workers` loops, each pausing `every` between requests, until stopped.
pub struct Load {
    /// Outcomes.
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the loops (bounded: each stops after `limit` even if never told).
    pub fn start(target: Target, workers: usize, every: Duration, limit: Duration) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (tally, stop, target) = (tally.clone(), stop.clone(), target.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        tally.record(
                            request(target.get(), "/", None, &Pace::default(), REQUEST_LIMIT).await,
                        );
                        tokio::time::sleep(every).await;
                    }
                })
            })
            .collect();
        Load { tally, stop, tasks }
    }

    /// Stops the loops and waits for the requests in flight.
    pub async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(REQUEST_LIMIT + Duration::from_secs(1), t).await;
        }
        self.tally
    }
}

/// `count` downloads of `bytes` each through `addr`, read slowly (`read_pause` per read),
/// started now; their outcomes land in the returned tally when they end, and each task
/// answers how long its download took.
pub fn downloads(
    addr: SocketAddr,
    count: usize,
    bytes: usize,
    read_pause: Pace,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<Duration>>) {
    let tally = Arc::new(Tally::default());
    let tasks = (0..count)
        .map(|_| {
            let (tally, pace) = (tally.clone(), read_pause.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let path = format!("/bytes/{bytes}");
                tally.record(request(addr, &path, Some(bytes), &pace, DOWNLOAD_LIMIT).await);
                started.elapsed()
            })
        })
        .collect();
    (tally, tasks)
}
