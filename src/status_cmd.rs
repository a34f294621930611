//! `splicer status`: a running instance's `GET /status` (docs/architecture.md §5) as plain-text tables,
//! as JSON, or as a live view, with an exit code a monitor can act on (§10).
//!
//! The I/O is kept apart so the rest is tested without sockets: [`fetch`] is the only network
//! code (one HTTP/1.1 exchange under one deadline and a body cap) and hands back the typed
//! document ([`crate::status_doc::Status`], read leniently: an older or newer splicer's
//! document still reads); [`render`] (the table), [`Verdict`] (the exit code) and [`Watch`]
//! (the frames of `--watch`) are pure functions of it. The URL of `--admin` is parsed in
//! `url.rs` with `hyper::Uri`.

mod once;
mod render;
mod url;
mod verdict;
mod watch;

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::status_doc::Status;
use url::AdminUrl;

pub use once::{once, ready, READY_TIMEOUT};
pub use render::{render, render_at};
pub use verdict::{failure_message, problems, Verdict, EXIT_HEALTHY, EXIT_UNHEALTHY};
pub use watch::{parse_every, watch, Watch, DEFAULT_EVERY, MIN_EVERY};

/// Admin URL used without `--admin`: where the default `[admin] bind` listens.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// Bound on a whole fetch by default: `/status` is built from memory in microseconds, so an
/// instance that has not answered in 5 s is wedged, not busy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `/status` body accepted; a pool of thousands of backends is well under 1 MiB, so
/// anything near this is not splicer talking.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// How much of an error answer's body is kept in [`StatusCmdError::Http`].
const ERROR_BODY_KEEP: usize = 4096;

/// How much of an error answer's body goes into the one-line message.
const ERROR_BODY_SHOW: usize = 200;

/// Why `splicer status` could not get a `/status` document.
#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    /// The `--admin` value is not a usable `http://host:port`.
    #[error("invalid admin URL {url:?}: {reason}")]
    BadUrl {
        /// The value as given.
        url: String,
        /// What is wrong with it, and the fix where there is one.
        reason: String,
    },
    /// The admin host name did not resolve to any address.
    #[error("cannot resolve the host of the admin API at {url}")]
    Resolve {
        /// The admin URL.
        url: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// No TCP connection could be made to the admin API.
    #[error("cannot reach the admin API at {url}: {reason} (is splicer running, and is [admin] enabled?)")]
    Connect {
        /// The admin URL.
        url: String,
        /// The failure in words (`connection refused`), named from the error's kind.
        reason: String,
        /// The last connect error (one per resolved address was tried).
        #[source]
        source: io::Error,
    },
    /// The deadline passed before a whole answer arrived.
    #[error("{}", timeout_message(url, *after, *connected))]
    Timeout {
        /// The admin URL.
        url: String,
        /// The bound that passed.
        after: Duration,
        /// Whether the TCP connection was made (so the peer accepted but did not answer).
        connected: bool,
    },
    /// The peer did not speak HTTP/1.1 back.
    #[error("the admin API at {url} {reason} (is that the admin port, not a listener?)")]
    Protocol {
        /// The admin URL.
        url: String,
        /// What went wrong, in words.
        reason: &'static str,
        /// The HTTP client's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The answer's body exceeded [`MAX_BODY`].
    #[error("the admin API at {url} sent more than {limit} bytes for /status")]
    TooLarge {
        /// The admin URL.
        url: String,
        /// The cap in bytes.
        limit: usize,
    },
    /// `/status` answered with a non-success status.
    #[error("the admin API at {url} answered GET /status with {}{}", status_line(*status), body_detail(body))]
    Http {
        /// The admin URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body (its first 4 KiB, lossily decoded).
        body: String,
    },
    /// `/status` answered 2xx with a body that is not JSON.
    #[error("the admin API at {url} answered /status with invalid JSON (line {}, column {})", source.line(), source.column())]
    Json {
        /// The admin URL.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `/status` answered JSON that is not a status document (a field of another type).
    // The serde message is the only place that names the field, so it is part of the line.
    #[error("the admin API at {url} answered /status with JSON that is not a status document ({source})")]
    Shape {
        /// The admin URL.
        url: String,
        /// The type error.
        #[source]
        source: serde_json::Error,
    },
}

impl StatusCmdError {
    /// Whether no answer came at all (name not resolved, connection refused, no answer in
    /// time), as opposed to an answer that was wrong.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StatusCmdError::Resolve { .. }
                | StatusCmdError::Connect { .. }
                | StatusCmdError::Timeout { .. }
        )
    }
}

fn timeout_message(url: &str, after: Duration, connected: bool) -> String {
    let after = humantime::format_duration(after);
    if connected {
        format!("the admin API at {url} accepted the connection but did not answer GET /status within {after}")
    } else {
        format!("timed out after {after} connecting to the admin API at {url} (is a firewall dropping packets?)")
    }
}

fn status_line(status: u16) -> String {
    match StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// `: detail` for an error answer: the admin API's `{"error":"..."}` text, else the body's
/// first line, shortened; nothing for an empty body.
fn body_detail(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
    let detail = from_json.unwrap_or_else(|| body.lines().next().unwrap_or("").to_owned());
    let detail = render::clean(detail.trim());
    if detail.is_empty() {
        return String::new();
    }
    let mut short: String = detail.chars().take(ERROR_BODY_SHOW).collect();
    if short.len() < detail.len() {
        short.push_str("...");
    }
    format!(": {short}")
}

/// The normalised form of an `--admin` value (`http://host:port`), or why it is not one.
pub fn admin_url(admin: &str) -> Result<String, StatusCmdError> {
    AdminUrl::parse(admin).map(|u| u.url())
}

/// Fetches `GET /status` from the admin API at `admin` (`http://host:port` or `host:port`),
/// resolving, connecting and reading the whole answer within `timeout`.
pub async fn fetch(admin: &str, timeout: Duration) -> Result<Status, StatusCmdError> {
    fetch_with_json(admin, timeout)
        .await
        .map(|(status, _)| status)
}

/// [`fetch`], also returning the document as JSON exactly as sent: fields this version does
/// not know included, for `--json` to pass on.
pub async fn fetch_with_json(
    admin: &str,
    timeout: Duration,
) -> Result<(Status, Value), StatusCmdError> {
    let url = AdminUrl::parse(admin)?.url();
    let (status, body) = request(admin, Method::GET, "/status", None, timeout).await?;
    if !(200..300).contains(&status) {
        let keep = &body[..body.len().min(ERROR_BODY_KEEP)];
        return Err(StatusCmdError::Http {
            url,
            status,
            body: String::from_utf8_lossy(keep).into_owned(),
        });
    }
    let json: Value = serde_json::from_slice(&body).map_err(|source| StatusCmdError::Json {
        url: url.clone(),
        source,
    })?;
    let status =
        Status::deserialize(&json).map_err(|source| StatusCmdError::Shape { url, source })?;
    Ok((status, json))
}

/// Connects to the first of the host's addresses that accepts.
async fn connect(target: &AdminUrl, url: &str) -> Result<TcpStream, StatusCmdError> {
    let resolve_error = |source| StatusCmdError::Resolve {
        url: url.to_owned(),
        source,
    };
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(resolve_error)?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(source) => Err(StatusCmdError::Connect {
            url: url.to_owned(),
            reason: connect_reason(&source),
            source,
        }),
        None => Err(resolve_error(io::Error::new(
            io::ErrorKind::NotFound,
            "the host name has no addresses",
        ))),
    }
}

/// The connect failure in words an operator knows, without the `(os error 111)` tail.
fn connect_reason(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let reason = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::TimedOut => "connection timed out",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::PermissionDenied => "permission denied",
        _ => return e.to_string(),
    };
    reason.to_owned()
}

/// Aborts the HTTP connection's driver task when the exchange ends or is cancelled.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `method path` (with the bearer `token`, if any) to the admin API at `admin`: the answer's
/// status and body, whatever the status. For `splicer upgrade`, `status --ready` and the like.
pub async fn request(
    admin: &str,
    method: Method,
    path: &'static str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Bytes), StatusCmdError> {
    request_with(admin, method, path, token, None, timeout).await
}

/// [`request`] to any `path` (already percent-encoded where needed), with a JSON `body` if
/// given: for `splicer backend`, whose paths name a pool and a backend.
pub async fn request_with(
    admin: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    json_body: Option<Bytes>,
    timeout: Duration,
) -> Result<(u16, Bytes), StatusCmdError> {
    let target = AdminUrl::parse(admin)?;
    let url = target.url();
    let deadline = Instant::now() + timeout;
    let timed_out = |connected| StatusCmdError::Timeout {
        url: url.clone(),
        after: timeout,
        connected,
    };
    let stream = tokio::time::timeout_at(deadline, connect(&target, &url))
        .await
        .map_err(|_| timed_out(false))??;
    let exchange = exchange(stream, &target, &url, method, path, token, json_body);
    let (status, body) = tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| timed_out(true))??;
    Ok((status.as_u16(), body))
}

/// One request over `stream`: the answer's status and its body (at most [`MAX_BODY`]).
async fn exchange(
    stream: TcpStream,
    target: &AdminUrl,
    url: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    json_body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), StatusCmdError> {
    let protocol = |source: Box<dyn StdError + Send + Sync>| StatusCmdError::Protocol {
        url: url.to_owned(),
        reason: describe_http_failure(source.as_ref()),
        source,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(Box::new(e)))?;
    // The driver's own failure also surfaces through `send_request` or the body.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));

    let host = HeaderValue::from_str(&target.authority()).map_err(|_| StatusCmdError::BadUrl {
        url: url.to_owned(),
        reason: "the host is not a valid Host header".into(),
    })?;
    let uri = Uri::try_from(path).map_err(|_| StatusCmdError::BadUrl {
        url: url.to_owned(),
        reason: format!("{path:?} is not a valid request path"),
    })?;
    let has_body = json_body.is_some();
    let mut request = Request::new(Full::new(json_body.unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if has_body {
        headers.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            StatusCmdError::BadUrl {
                url: url.to_owned(),
                reason: "the token holds characters a header cannot carry".into(),
            }
        })?;
        headers.insert(hyper::header::AUTHORIZATION, value);
    }
    headers.insert(HOST, host);
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("splicer-status/", env!("CARGO_PKG_VERSION"))),
    );

    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(Box::new(e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                StatusCmdError::TooLarge {
                    url: url.to_owned(),
                    limit: MAX_BODY,
                }
            } else {
                protocol(e)
            }
        })?
        .to_bytes();
    Ok((status, body))
}

/// Names an HTTP client failure: the likely cause is pointing at something other than the
/// admin API (a TLS listener, another service).
fn describe_http_failure(e: &(dyn StdError + 'static)) -> &'static str {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() => {
            "answered something that is not HTTP/1.1"
        }
        Some(h) if h.is_incomplete_message() => "closed the connection before answering",
        _ => "broke off the HTTP exchange",
    }
}

#[cfg(test)]
mod tests;
