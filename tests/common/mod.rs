//! Shared harness for the integration tests: splicer in-process on port-0 listeners, the rig,
//! tiny HTTP(S) clients and bounded waits. Loopback only.
#![allow(dead_code)]

pub mod admin;
pub mod installed;
pub mod load;
pub mod peer;
pub mod process;
pub mod prometheus;
pub mod sockets;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use splicer::app::{self, Running};
use splicer::config;
use splicer::rig::{Rig, RigOptions};
use splicer::server;

/// Every wait in a test is bounded by this unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(20);

/// Installs a log subscriber once (RUST_LOG controls it), so failing tests show splicer's logs.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `cond` every 20 ms until it is true; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rig of `n` nodes on 127.0.0.2.. with ephemeral ports (tests run in parallel).
pub async fn rig(n: usize) -> Rig {
    Rig::start(RigOptions {
        nodes: n,
        first_ip: std::net::Ipv4Addr::new(127, 0, 0, 2),
        port: 0,
        control: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RigOptions::default()
    })
    .await
    .expect("rig starts")
}

/// splicer running in this process.
pub struct Splicer {
    /// The running app (taken by `shutdown`).
    pub running: Option<Running>,
    /// Address of the first listener.
    pub addr: SocketAddr,
    /// Address of the admin API.
    pub admin: SocketAddr,
}

impl Splicer {
    /// Graceful shutdown; returns whether every connection drained.
    pub async fn shutdown(&mut self) -> bool {
        match self.running.take() {
            Some(r) => r.shutdown().await,
            None => true,
        }
    }
}

/// `[[pool]] backends = [...]` value for `addrs`.
pub fn backends_toml(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", list.join(", "))
}

/// Turns the access log off for splicer running in this process, unless `text` asks for it.
/// Its lines go to the process's stdout from a thread of their own, which the test harness
/// does not capture: thousands of lines from passing tests would bury the result. Tests that
/// read access-log lines run splicer as a child process, whose stdout they pipe.
fn quiet_access_log(config: &mut config::Config, text: &str) {
    if !text.contains("access_log") {
        config.runtime.access_log = false;
    }
}

/// Starts splicer from config text (listeners and admin should bind port 0; admin is added
/// on 127.0.0.1:0 if the text has no `[admin]`).
pub async fn start_splicer(toml: &str) -> Splicer {
    init_logs();
    let text = if toml.contains("[admin]") {
        toml.to_string()
    } else {
        format!("[admin]\nbind = \"127.0.0.1:0\"\n{toml}")
    };
    let mut config = config::parse(Path::new("test.toml"), &text)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
    quiet_access_log(&mut config, &text);
    let first = config.listeners[0].name.clone();
    let bound = app::Bound::bind(&config).expect("bind");
    let running = server::start(config, bound).await.expect("start");
    let addr = running.listener_addr(&first).expect("listener addr");
    let admin = running.admin_addr().expect("admin addr");
    Splicer {
        running: Some(running),
        addr,
        admin,
    }
}

/// A minimal HTTP/1.1 exchange over plain TCP: returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        parse_response(&buf)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("http exchange timed out")
}

/// Parses a `Connection: close` HTTP/1.1 response (no chunking support needed by our servers
/// beyond what `Content-Length`/close give).
pub fn parse_response(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// GET `path` on the admin API, parsed as JSON.
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/status", "").await;
    assert_eq!(code, 200, "/status answered {code}: {body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// State of backend `addr` in pool `pool` on `/status`.
pub async fn backend_state(admin: SocketAddr, pool: &str, addr: SocketAddr) -> String {
    let s = status(admin).await;
    let pools = s["pools"].as_array().cloned().unwrap_or_default();
    for p in pools {
        if p["name"] == pool {
            for b in p["backends"].as_array().cloned().unwrap_or_default() {
                if b["address"] == addr.to_string() {
                    return b["state"].as_str().unwrap_or("").to_string();
                }
            }
        }
    }
    panic!("backend {addr} not in pool {pool} on /status: {s}");
}

/// POST to the rig's control API; returns (status, body).
pub async fn control(rig: &Rig, path: &str, body: &str) -> (u16, String) {
    http(rig.control_addr(), "POST", path, body).await
}

/// Accepts any server certificate: the rig's and test backends' certificates are self-signed.
#[derive(Debug)]
pub struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client config that accepts any certificate and offers `alpn`.
pub fn tls_client(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// One HTTPS GET through `addr` (e.g. splicer in front of the rig): (status, body).
pub async fn https_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(tls_client(&[b"http/1.1"]));
        let name = ServerName::try_from("node").map_err(std::io::Error::other)?;
        let mut tls = connector.connect(name, tcp).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // A peer closing without close_notify is fine for these tests.
        match tls.read_to_end(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(parse_response(&buf))
    };
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "https_get timed out",
        ))
    })
}

/// Which node answered `GET /` through `addr` (`"node-2"`), or the error.
pub async fn which_node(addr: SocketAddr) -> std::io::Result<String> {
    let (code, body) = https_get(addr, "/").await?;
    if code != 200 {
        return Err(std::io::Error::other(format!("status {code}")));
    }
    Ok(body.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Helpers for the reload, drain, admin-action and access-log tests.

/// splicer in-process, started from the config file at `path` (so a reload re-reads it);
/// listeners and admin should bind port 0, and the file must have an `[admin]` table.
pub async fn start_splicer_file(path: &Path) -> Splicer {
    init_logs();
    let config = config::load(path).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let first = config.listeners[0].name.clone();
    let bound = app::Bound::bind(&config).expect("bind");
    let running = server::start(config, bound).await.expect("start");
    let addr = running.listener_addr(&first).expect("listener addr");
    let admin = running.admin_addr().expect("admin addr");
    Splicer {
        running: Some(running),
        addr,
        admin,
    }
}

/// A loopback port that was free a moment ago (bind port 0, read it, close).
/// A free `ip:port` for another process to listen on, on a loopback address of its own
/// (127.77.x.y): a port found by binding and dropping could otherwise be taken, before that
/// process binds it, by a parallel test's port-0 listener on 127.0.0.1 — and a readiness check
/// would then be answered by the wrong server.
pub fn free_addr() -> SocketAddr {
    let n: u16 = rand::random();
    let ip = std::net::Ipv4Addr::new(127, 77, (n >> 8) as u8, (n as u8).max(1));
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("find a free loopback address")
}

/// A port nothing listens on now, on 127.0.0.1 (prefer [`free_addr`] for another process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// The value of the sample `series` (name plus labels exactly as printed, e.g.
/// `splicer_config_reloads_total{result="ok"}`) in a `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `GET /metrics` of the admin API at `admin`, as text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let (code, body) = http(admin, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "/metrics answered {code}: {body}");
    body
}

/// An HTTP exchange that reports a refused or failed connection instead of panicking.
pub async fn try_http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(parse_response(&buf))
    };
    tokio::time::timeout(WAIT, fut).await.ok().flatten()
}

// ---------------------------------------------------------------------------------------------
// Plain TCP test backends and bits shared by the drain, shutdown, reload and access-log tests.

/// A TCP server on 127.0.0.1:0 that hands every accepted connection, with the server's own
/// address, to `handler` in a task of its own; it accepts until dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start<F, Fut>(handler: F) -> TestServer
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handler(stream, addr));
            }
        });
        TestServer { addr, task }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a `GO <n>\n` request (at most 64 bytes) and returns `n`; `None` when the peer closes
/// or sends anything else (health checks send nothing).
pub async fn read_go(stream: &mut TcpStream) -> Option<usize> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\n") && request.len() < 64 {
        match stream.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return None,
        }
    }
    std::str::from_utf8(&request)
        .ok()
        .and_then(|r| r.trim().strip_prefix("GO "))
        .and_then(|n| n.parse::<usize>().ok())
}

/// Writes `chunks` chunks of `size` bytes, `every` apart (chunk `i` all bytes `i % 256`), then
/// a clean close; stops at the first write error.
pub async fn write_chunks(stream: &mut TcpStream, chunks: usize, size: usize, every: Duration) {
    for i in 0..chunks {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        if stream
            .write_all(&vec![(i % 256) as u8; size])
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// Appends every line `output` yields to `log`, until EOF.
pub fn collect_lines(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Arc<std::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut l) = log.lock() {
                l.push(line);
            }
        }
    })
}

/// A loopback address nothing listens on, for as long as this test process runs: the port is
/// held by a bound socket that never listens, so a connect is refused and no other socket (a
/// listener another test binds to port 0 meanwhile) can take it. A port merely freed again
/// was taken that way once, and a test meant to reach nothing reached an admin API.
pub async fn dead_addr() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("a bound address");
    if let Ok(mut held) = HELD.lock() {
        held.push(socket);
    }
    addr
}

/// A config file in its own temp dir (removed on drop).
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    /// `splicer.toml` in that dir.
    pub path: std::path::PathBuf,
}

impl ConfigFile {
    /// Creates the file with `text`.
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("splicer.toml");
        let file = ConfigFile { _dir: dir, path };
        file.write(text);
        file
    }

    /// Replaces its text.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write config");
    }
}
