//! The active health-check probe: one connection per check (TCP, then TLS for `https`, then one
//! HTTP/1.1 `GET`), judged against `expect_status`. This module only talks to sockets; the
//! rise/fall hysteresis and the live-set updates live elsewhere in `health`. `https` checks
//! resume each backend's last TLS session (`sessions`).
//!
//! Everything a backend sends is untrusted: every failure becomes a [`ProbeError`] whose Display
//! is a short reason shown verbatim in logs and `/status`, never a panic.

mod sessions;
mod tls;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::config::{CheckKind, HealthConfig, SendProxy, StatusMatcher};
use crate::net::proxy_protocol;

pub use tls::ProbeSetupError;

/// Most body bytes a check keeps: enough for Quay's JSON health report, small enough that a
/// backend streaming garbage cannot make probes costly.
pub const BODY_CAP: usize = 64 * 1024;

/// Sent on every check so backend operators can tell probes from clients in their access logs.
const USER_AGENT_VALUE: &str = concat!("splicer/", env!("CARGO_PKG_VERSION"));

/// Checks the backends of one pool; built once from its health settings, cheap to clone and share.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Settings>,
}

/// What a pool's checks need, validated once so a check itself cannot fail to build a request.
struct Settings {
    check: Check,
    path: Uri,
    /// `Host` header from `host`; `None` = the probed address.
    host: Option<HeaderValue>,
    /// SNI and name to verify; an IP address (so no SNI) is substituted per check when `None`.
    server_name: Option<ServerName<'static>>,
    expect_status: StatusMatcher,
    timeout: Duration,
    /// PROXY header written first on every check connection, for pools with `send_proxy`
    /// (backends that expect it reject connections without one).
    proxy_header: Option<Vec<u8>>,
}

/// The check kind with what it needs, so an `https` check always has its TLS settings.
enum Check {
    None,
    Tcp,
    Http,
    Https(Box<sessions::Sessions>),
}

impl Check {
    fn kind(&self) -> CheckKind {
        match self {
            Check::None => CheckKind::None,
            Check::Tcp => CheckKind::Tcp,
            Check::Http => CheckKind::Http,
            Check::Https(_) => CheckKind::Https,
        }
    }
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner;
        f.debug_struct("Prober")
            .field("check", &s.check.kind())
            .field("path", &s.path)
            .field("host", &s.host)
            .field("expect_status", &s.expect_status)
            .field("timeout", &s.timeout)
            .finish()
    }
}

/// The result of one check, with what was seen of the response.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    /// HTTP status when a response head arrived (kept even if the check then failed).
    pub status: Option<u16>,
    /// Time from the start of the check to its verdict.
    pub latency: Duration,
    /// The verdict: `Ok` means the backend passed.
    pub result: Result<(), ProbeError>,
    /// At most [`BODY_CAP`] bytes of the response body (empty for `tcp` and `none`).
    pub body: Bytes,
}

impl ProbeOutcome {
    /// Whether the backend passed this check.
    pub fn is_pass(&self) -> bool {
        self.result.is_ok()
    }
}

/// Why a check failed; the Display is the operator-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens on the port.
    #[error("connection refused")]
    Refused,
    /// The backend reset or closed the connection before answering.
    #[error("connection reset")]
    Reset,
    /// The check did not finish within `timeout`.
    #[error("timeout")]
    Timeout,
    /// No route to the backend's host or network.
    #[error("unreachable")]
    Unreachable,
    /// The TLS handshake failed (rustls's reason).
    #[error("tls: {0}")]
    Tls(String),
    /// The response was not valid HTTP/1.1 or was cut short.
    #[error("http: {0}")]
    Http(String),
    /// The response status is not in `expect_status`.
    #[error("status {0}")]
    Status(u16),
    /// Any other socket error.
    #[error("io: {0}")]
    Io(String),
    /// This machine is out of descriptors or memory: the check could not run (not the
    /// backend's failure).
    #[error("not run: this machine is out of file descriptors or memory ({0})")]
    LocalResources(String),
}

impl Prober {
    /// Builds the prober for one pool; reads `ca_file` (or the system roots) only for `https`
    /// checks with `tls_verify`, so other pools never depend on those files.
    pub fn new(health: &HealthConfig) -> Result<Prober, ProbeSetupError> {
        Prober::with_send_proxy(health, SendProxy::Off)
    }

    /// Like [`Prober::new`], for a pool that sends the PROXY protocol: every check (tcp too)
    /// starts with a v2 `LOCAL` or v1 `PROXY UNKNOWN` header, which says "a health check, not a
    /// client", so the backend uses the real connection's addresses.
    pub fn with_send_proxy(
        health: &HealthConfig,
        send_proxy: SendProxy,
    ) -> Result<Prober, ProbeSetupError> {
        let proxy_header = match send_proxy {
            SendProxy::Off => None,
            SendProxy::V1 => Some(proxy_protocol::encode(
                proxy_protocol::Version::V1,
                &proxy_protocol::ProxyHeader::Local,
            )),
            SendProxy::V2 => Some(proxy_protocol::encode(
                proxy_protocol::Version::V2,
                &proxy_protocol::ProxyHeader::Local,
            )),
        };
        let host = health.host.as_deref().filter(|h| !h.is_empty());
        let path = Uri::try_from(health.path.as_str()).map_err(|e| ProbeSetupError::Path {
            path: health.path.clone(),
            source: e,
        })?;
        let host_header = host
            .map(|h| {
                HeaderValue::from_str(h).map_err(|_| ProbeSetupError::HostHeader(h.to_owned()))
            })
            .transpose()?;
        let check = match health.check {
            CheckKind::None => Check::None,
            CheckKind::Tcp => Check::Tcp,
            CheckKind::Http => Check::Http,
            CheckKind::Https => Check::Https(Box::new(sessions::Sessions::new(
                tls::client_config(health)?,
            ))),
        };
        let server_name = match (&check, host) {
            (Check::Https(_), Some(h)) => {
                Some(ServerName::try_from(h.to_owned()).map_err(|e| {
                    ProbeSetupError::ServerName {
                        host: h.to_owned(),
                        source: e,
                    }
                })?)
            }
            _ => None,
        };
        Ok(Prober {
            inner: Arc::new(Settings {
                check,
                path,
                host: host_header,
                server_name,
                expect_status: health.expect_status.clone(),
                timeout: health.timeout,
                proxy_header,
            }),
        })
    }

    /// Runs one check of the backend at `addr` (the health port already applied), bounded as a
    /// whole by the pool's `timeout`.
    pub async fn probe(&self, addr: SocketAddr) -> ProbeOutcome {
        let start = Instant::now();
        let mut seen = Seen::default();
        // `seen` outlives the timed future so a head that arrived before the deadline is still
        // reported; dropping the future also aborts the connection driver (see `AbortOnDrop`).
        let result = tokio::time::timeout(self.inner.timeout, self.check(addr, &mut seen))
            .await
            .unwrap_or(Err(ProbeError::Timeout));
        ProbeOutcome {
            status: seen.status,
            latency: start.elapsed(),
            result,
            body: seen.body.freeze(),
        }
    }

    async fn check(&self, addr: SocketAddr, seen: &mut Seen) -> Result<(), ProbeError> {
        let s = &*self.inner;
        match &s.check {
            Check::None => Ok(()),
            Check::Tcp => connect(addr, s.proxy_header.as_deref()).await.map(drop),
            Check::Http => {
                let tcp = connect(addr, s.proxy_header.as_deref()).await?;
                self.exchange(tcp, addr, seen).await
            }
            Check::Https(sessions) => {
                let connector = TlsConnector::from(sessions.config_for(addr));
                let tcp = connect(addr, s.proxy_header.as_deref()).await?;
                let name = s
                    .server_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| classify_io(&e, Stage::BeforeResponse))?;
                self.exchange(stream, addr, seen).await
            }
        }
    }

    /// Sends the GET over an established stream and reads the head and capped body into `seen`.
    async fn exchange<S>(&self, io: S, addr: SocketAddr, seen: &mut Seen) -> Result<(), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let s = &*self.inner;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            // Some backends' access logs and WAFs are picky about header case; match curl.
            .title_case_headers(true)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| classify_hyper(&e, Stage::BeforeResponse))?;
        // The driver's own error is also reported through `send_request` or the body.
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));

        let host = match &s.host {
            Some(h) => h.clone(),
            None => address_host(addr)?,
        };
        let request = Request::builder()
            .method(Method::GET)
            .uri(s.path.clone())
            .header(HOST, host)
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .header(CONNECTION, HeaderValue::from_static("close"))
            .body(Empty::new())
            .map_err(|e| ProbeError::Http(format!("cannot build the request: {e}")))?;

        let response = sender
            .send_request(request)
            .await
            .map_err(|e| classify_hyper(&e, Stage::BeforeResponse))?;
        let status = response.status().as_u16();
        seen.status = Some(status);
        read_capped(response.into_body(), &mut seen.body).await?;
        verdict(status, &s.expect_status)
    }
}

/// What a check has seen so far; filled in as it goes so a timeout keeps it.
#[derive(Default)]
struct Seen {
    status: Option<u16>,
    body: BytesMut,
}

/// Aborts the spawned connection driver when the check ends, however it ends (including being
/// dropped by the timeout), so no task or socket outlives its check.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(addr: SocketAddr, proxy_header: Option<&[u8]>) -> Result<TcpStream, ProbeError> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| classify_io(&e, Stage::BeforeResponse))?;
    if let Some(header) = proxy_header {
        tcp.write_all(header)
            .await
            .map_err(|e| classify_io(&e, Stage::BeforeResponse))?;
    }
    Ok(tcp)
}

/// `Host` when none is configured: `ip:port`, IPv6 in brackets, as `SocketAddr` prints it.
fn address_host(addr: SocketAddr) -> Result<HeaderValue, ProbeError> {
    HeaderValue::from_str(&addr.to_string())
        .map_err(|e| ProbeError::Http(format!("bad Host header for {addr}: {e}")))
}

/// Appends body bytes to `buf` until the body ends or `buf` holds [`BODY_CAP`] bytes; reaching
/// the cap is not an error, the rest is simply never read.
async fn read_capped(mut body: Incoming, buf: &mut BytesMut) -> Result<(), ProbeError> {
    while buf.len() < BODY_CAP {
        let Some(frame) = body.frame().await else {
            return Ok(());
        };
        let frame = frame.map_err(|e| classify_hyper(&e, Stage::Body))?;
        if let Ok(data) = frame.into_data() {
            let room = BODY_CAP - buf.len();
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(())
}

/// Whether a complete response passes.
fn verdict(status: u16, expect: &StatusMatcher) -> Result<(), ProbeError> {
    if expect.matches(status) {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Where in the check an error happened: an early close means "reset" before the response, but a
/// truncated response once the head is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeResponse,
    Body,
}

/// rustls names a certificate's names in Rust's debug form (`certificate is only valid for
/// DnsName("node-1") or IpAddress(127.0.0.2)`); logs and `/status` show them plainly.
fn plain_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let next = [("DnsName(\"", "\")"), ("IpAddress(", ")")]
            .into_iter()
            .filter_map(|(open, close)| rest.find(open).map(|at| (at, open, close)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, open, close)) = next else {
            out.push_str(rest);
            return out;
        };
        let inner = &rest[at + open.len()..];
        let Some(end) = inner.find(close) else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push_str(&inner[..end]);
        rest = &inner[end + close.len()..];
    }
}

/// Names an io error by kind; TLS failures arrive as io errors wrapping a `rustls::Error`.
fn classify_io(e: &io::Error, stage: Stage) -> ProbeError {
    if crate::net::is_local_exhaustion(e) {
        return ProbeError::LocalResources(e.to_string());
    }
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return ProbeError::Tls(plain_names(&tls.to_string()));
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ProbeError::Reset,
        io::ErrorKind::UnexpectedEof => match stage {
            Stage::BeforeResponse => ProbeError::Reset,
            Stage::Body => ProbeError::Http("response body cut short".to_owned()),
        },
        io::ErrorKind::TimedOut => ProbeError::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ProbeError::Unreachable
        }
        _ => ProbeError::Io(e.to_string()),
    }
}

/// Names a hyper error: socket causes by their io kind, everything else as an HTTP failure.
fn classify_hyper(e: &hyper::Error, stage: Stage) -> ProbeError {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return classify_io(io, stage);
        }
        cause = c.source();
    }
    if e.is_incomplete_message() {
        return match stage {
            Stage::BeforeResponse => ProbeError::Reset,
            Stage::Body => ProbeError::Http("response body cut short".to_owned()),
        };
    }
    if e.is_timeout() {
        return ProbeError::Timeout;
    }
    match std::error::Error::source(e) {
        Some(cause) => ProbeError::Http(format!("{e}: {cause}")),
        None => ProbeError::Http(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
