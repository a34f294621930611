//! The cheap check target: one tokio thread in the bench serving, on each of N loopback
//! addresses (127.0.1.1, 127.0.1.2, ...), HTTPS `GET /health/instance` → `200 ok` on one port
//! and a bare TCP accept on another. TLS resumes sessions (tickets and a session cache), so a
//! checker that offers its last session gets an abbreviated handshake. It counts what it served,
//! which gives the same check count for splicer and HAProxy, and can turn one address's answer
//! to `503` (a control flag) and note when the first changed answer was written.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

/// Longest a check connection may stay open, so a stuck checker cannot pile up tasks.
const CONN_LIMIT: Duration = Duration::from_secs(5);

/// The `i`-th target address (0-based): 250 per /24 from 127.0.1.1, clear of 127.0.0.1.
pub fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 250) as u8,
        0,
        1 + (i % 250) as u8,
    ))
}

/// What the targets served, shared with the bench.
pub struct Stats {
    pub full: AtomicU64,
    pub resumed: AtomicU64,
    pub tcp_accepts: AtomicU64,
    failing: Vec<AtomicBool>,
    /// Answer every handshake in full (no session cache, no tickets), as a server that does
    /// not resume.
    pub no_resumption: AtomicBool,
    last_status: Vec<AtomicU16>,
    /// Nanoseconds since `epoch` when an address first answered a status other than its
    /// previous one.
    changed_at: Vec<AtomicU64>,
    /// Checks served (handshakes and tcp accepts) per 100 ms since `epoch`: how evenly a
    /// balancer spreads its checks.
    per_tick: Vec<AtomicU64>,
    epoch: Instant,
}

/// Width of one `per_tick` count, and how many there are (an hour).
pub const TICK: Duration = Duration::from_millis(100);
const TICKS: usize = 36_000;

impl Stats {
    /// HTTPS checks served so far (handshakes completed, either kind).
    pub fn https_checks(&self) -> u64 {
        self.full.load(Ordering::Relaxed) + self.resumed.load(Ordering::Relaxed)
    }

    fn tick(&self) {
        let i = (self.epoch.elapsed().as_millis() / TICK.as_millis()) as usize;
        if let Some(t) = self.per_tick.get(i) {
            t.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The busiest 100 ms between `from` and `to`, as checks/s.
    pub fn peak_rate(&self, from: Instant, to: Instant) -> f64 {
        let index = |t: Instant| {
            (t.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis()) as usize
        };
        let peak = (index(from)..index(to))
            .filter_map(|i| self.per_tick.get(i))
            .map(|t| t.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        peak as f64 / TICK.as_secs_f64()
    }

    /// Makes address `i` answer 503 (`true`) or 200.
    pub fn set_failing(&self, i: usize, failing: bool) {
        self.failing[i].store(failing, Ordering::SeqCst);
    }

    /// When address `i` last started answering differently, if at or after `since`.
    pub fn changed_since(&self, i: usize, since: Instant) -> Option<Instant> {
        let at = self.epoch + Duration::from_nanos(self.changed_at[i].load(Ordering::SeqCst));
        (at >= since).then_some(at)
    }

    fn answer(&self, i: usize) -> &'static [u8] {
        let failing = self.failing[i].load(Ordering::SeqCst);
        let status = if failing { 503 } else { 200 };
        if self.last_status[i].swap(status, Ordering::SeqCst) != status {
            let nanos = self.epoch.elapsed().as_nanos() as u64;
            self.changed_at[i].store(nanos, Ordering::SeqCst);
        }
        if failing {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfail"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        }
    }
}

/// The running targets; they stop with the bench.
pub struct Targets {
    pub https_port: u16,
    pub tcp_port: u16,
    pub stats: Arc<Stats>,
    _runtime: tokio::runtime::Runtime,
}

impl Targets {
    /// Binds `count` addresses, each with an HTTPS and a TCP port (the same two ports on all).
    pub fn start(count: usize) -> Targets {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("target runtime");
        let stats = Arc::new(Stats {
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            tcp_accepts: AtomicU64::new(0),
            failing: (0..count).map(|_| AtomicBool::new(false)).collect(),
            no_resumption: AtomicBool::new(false),
            last_status: (0..count).map(|_| AtomicU16::new(200)).collect(),
            changed_at: (0..count).map(|_| AtomicU64::new(0)).collect(),
            per_tick: (0..TICKS).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        });
        let acceptors = (
            TlsAcceptor::from(server_config(true)),
            TlsAcceptor::from(server_config(false)),
        );
        let (https_port, tcp_port) = runtime.block_on(async {
            let https = bind_all(count).await;
            let tcp = bind_all(count).await;
            let ports = (https.1, tcp.1);
            for (i, l) in https.0.into_iter().enumerate() {
                let (stats, acceptors) = (stats.clone(), acceptors.clone());
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let acceptor = if stats.no_resumption.load(Ordering::Relaxed) {
                            acceptors.1.clone()
                        } else {
                            acceptors.0.clone()
                        };
                        let stats = stats.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(CONN_LIMIT, async {
                                let tls = acceptor.accept(s).await.ok()?;
                                match tls.get_ref().1.handshake_kind() {
                                    Some(HandshakeKind::Resumed) => &stats.resumed,
                                    _ => &stats.full,
                                }
                                .fetch_add(1, Ordering::Relaxed);
                                stats.tick();
                                serve(tls, &stats, i).await
                            })
                            .await;
                        });
                    }
                });
            }
            for l in tcp.0 {
                let stats = stats.clone();
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        stats.tcp_accepts.fetch_add(1, Ordering::Relaxed);
                        stats.tick();
                        drop(s);
                    }
                });
            }
            ports
        });
        Targets {
            https_port,
            tcp_port,
            stats,
            _runtime: runtime,
        }
    }

    pub fn https(&self, i: usize) -> SocketAddr {
        SocketAddr::new(ip(i), self.https_port)
    }

    pub fn tcp(&self, i: usize) -> SocketAddr {
        SocketAddr::new(ip(i), self.tcp_port)
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, stats: &Stats, i: usize) -> Option<()> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    s.write_all(stats.answer(i)).await.ok()?;
    s.shutdown().await.ok()
}

/// One listener per address on one port: the port the first address got from the kernel, tried
/// again with another if some address has it taken.
async fn bind_all(count: usize) -> (Vec<TcpListener>, u16) {
    'attempt: for _ in 0..20 {
        let mut out = Vec::with_capacity(count);
        let first = listen(SocketAddr::new(ip(0), 0)).expect("bind the first target");
        let port = first.local_addr().expect("target addr").port();
        out.push(first);
        for i in 1..count {
            match listen(SocketAddr::new(ip(i), port)) {
                Ok(l) => out.push(l),
                Err(_) => continue 'attempt,
            }
        }
        return (out, port);
    }
    panic!("no port free on all {count} target addresses");
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// ECDSA P-256 self-signed (rcgen's default key); with `resume`, resuming by tickets (TLS 1.3
/// and 1.2) and by session id (TLS 1.2) as common servers do.
fn server_config(resume: bool) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["target.test".to_owned()]).expect("cert");
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    if resume {
        config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
        config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
