//! `splicer status`: a running instance's `GET /status` (DESIGN.md §5) as plain-text tables.
//!
//! Two halves, kept apart so the table can be tested without sockets: [`fetch`] is the only
//! I/O (one HTTP/1.1 exchange under one deadline and a body cap), [`render`] a function of the
//! JSON alone. The renderer trusts nothing in the document: the instance may be an older or
//! newer splicer, so a missing or wrongly typed field prints as `?` and never panics.

use std::error::Error as StdError;
use std::io;
use std::net::Ipv6Addr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Admin URL used without `--admin`: where the default `[admin] bind` listens.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// Bound on a whole fetch by default: `/status` is built from memory in microseconds, so an
/// instance that has not answered in 5 s is wedged, not busy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `/status` body accepted; a pool of thousands of backends is well under 1 MiB, so
/// anything near this is not splicer talking.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Port assumed when the URL names none: the admin API's default, not HTTP's 80, because an
/// operator typing `--admin 10.0.0.5` means that host's admin API.
const DEFAULT_PORT: u16 = 9090;

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
    let detail = clean(detail.trim());
    if detail.is_empty() {
        return String::new();
    }
    let mut short: String = detail.chars().take(ERROR_BODY_SHOW).collect();
    if short.len() < detail.len() {
        short.push_str("...");
    }
    format!(": {short}")
}

/// Where the admin API listens, from `--admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AdminUrl {
    /// Host name or IP address; an IPv6 address without its brackets.
    host: String,
    port: u16,
}

impl AdminUrl {
    /// Accepts `http://host:port`, `host:port`, either without the port (then 9090), with an
    /// optional trailing `/` or `/status` (as copied from a `curl` line).
    fn parse(input: &str) -> Result<AdminUrl, StatusCmdError> {
        let bad = |reason: String| StatusCmdError::BadUrl {
            url: input.to_owned(),
            reason,
        };
        let s = input.trim();
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(bad(format!(
                    "the admin API speaks plain HTTP, not HTTPS; use http://{rest}"
                )))
            }
            Some((scheme, _)) => {
                return Err(bad(format!(
                    "unsupported scheme {scheme:?}; use http://host:port"
                )))
            }
            None => s,
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if !matches!(path, "" | "/" | "/status") {
            return Err(bad(format!(
                "unexpected path {path:?}; give only host and port, e.g. {DEFAULT_ADMIN}"
            )));
        }
        if authority.contains('@') {
            return Err(bad("user names are not supported in the admin URL".into()));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, tail) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 address".into()))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad(format!("{host:?} is not an IPv6 address")));
            }
            let port = match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| bad(format!("unexpected {t:?} after the address")))?,
                ),
            };
            (host, port)
        } else if authority.matches(':').count() > 1 {
            return Err(bad(
                "an IPv6 address needs brackets, e.g. http://[::1]:9090".into(),
            ));
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !host_ok {
            return Err(bad(format!("{host:?} is not a host name or IP address")));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(format!("{p:?} is not a port number"))),
            },
        };
        Ok(AdminUrl {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, IPv6 in brackets: the `Host` header and the URL's middle.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The normalised URL, as messages show it.
    fn url(&self) -> String {
        format!("http://{}", self.authority())
    }
}

/// Fetches `GET /status` from the admin API at `admin` (`http://host:port` or `host:port`),
/// resolving, connecting and reading the whole answer within `timeout`.
pub async fn fetch(admin: &str, timeout: Duration) -> Result<Value, StatusCmdError> {
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
    serde_json::from_slice(&body).map_err(|source| StatusCmdError::Json { url, source })
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

// ---------------------------------------------------------------------------------------------
// Rendering

/// Renders a `/status` document as plain-text tables, ages measured against the system clock.
pub fn render(status: &Value) -> String {
    render_at(status, SystemTime::now())
}

/// Renders a `/status` document as plain-text tables, ages measured against `now`.
pub fn render_at(status: &Value, now: SystemTime) -> String {
    let mut lines = vec![
        format!(
            "splicer {}, up {}",
            text(status.get("version")),
            uptime(status.get("uptime_seconds"))
        ),
        String::new(),
    ];

    match status.get("listeners").and_then(Value::as_array) {
        Some(listeners) if listeners.is_empty() => lines.push("no listeners".into()),
        Some(listeners) => {
            let rows: Vec<Vec<String>> = listeners
                .iter()
                .map(|l| {
                    vec![
                        text(l.get("name")),
                        text(l.get("bind")),
                        count(l.get("active_connections")),
                        count(l.get("total_connections")),
                    ]
                })
                .collect();
            lines.extend(table(LISTENER_COLUMNS, &rows, ""));
        }
        None => lines.push("listeners: ?".into()),
    }

    match status.get("pools").and_then(Value::as_array) {
        Some(pools) if pools.is_empty() => {
            lines.push(String::new());
            lines.push("no pools".into());
        }
        Some(pools) => {
            for pool in pools {
                lines.push(String::new());
                lines.push(pool_heading(pool));
                match pool.get("backends").and_then(Value::as_array) {
                    Some(backends) if backends.is_empty() => lines.push("  (no backends)".into()),
                    Some(backends) => {
                        let rows: Vec<Vec<String>> =
                            backends.iter().map(|b| backend_row(b, now)).collect();
                        lines.extend(table(BACKEND_COLUMNS, &rows, "  "));
                    }
                    None => lines.push("  backends: ?".into()),
                }
            }
        }
        None => {
            lines.push(String::new());
            lines.push("pools: ?".into());
        }
    }

    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// How a column's cells line up: names left, numbers right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

const LISTENER_COLUMNS: &[(&str, Align)] = &[
    ("LISTENER", Align::Left),
    ("BIND", Align::Left),
    ("ACTIVE", Align::Right),
    ("TOTAL", Align::Right),
];

const BACKEND_COLUMNS: &[(&str, Align)] = &[
    ("BACKEND", Align::Left),
    ("STATE", Align::Left),
    ("WEIGHT", Align::Right),
    ("ACTIVE", Align::Right),
    ("TOTAL", Align::Right),
    ("FAILS", Align::Right),
    ("LAST CHECK", Align::Left),
    ("LATENCY", Align::Right),
    ("AGE", Align::Left),
];

/// Column gap: two spaces, so single-space values (`ok 200`) still read as one cell.
const GAP: &str = "  ";

/// Header and rows with each column as wide as its widest cell (counted in chars, as `format!`
/// pads), each line prefixed by `indent` and without trailing blanks.
fn table(columns: &[(&str, Align)], rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .fold(name.chars().count(), usize::max)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(columns.iter().zip(&widths))
            .map(|(cell, ((_, align), &width))| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        format!("{indent}{}", padded.join(GAP))
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|(name, _)| *name).collect())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// The pool's line: name and algorithm, then only the conditions worth a look.
fn pool_heading(pool: &Value) -> String {
    let mut parts = vec![format!(
        "pool {} ({})",
        text(pool.get("name")),
        text(pool.get("balance"))
    )];
    match pool.get("fail_open") {
        Some(Value::Bool(true)) => parts.push("FAIL-OPEN".into()),
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => parts.push("fail-open: ?".into()),
    }
    match pool.get("shared_outage") {
        None | Some(Value::Null) => {}
        Some(Value::Array(services)) if services.is_empty() => {}
        Some(Value::Array(services)) => {
            let names: Vec<String> = services.iter().map(|s| text(Some(s))).collect();
            parts.push(format!("shared outage: {}", names.join(", ")));
        }
        Some(_) => parts.push("shared outage: ?".into()),
    }
    match pool.get("cluster_health") {
        None | Some(Value::Null) => {}
        Some(health) => parts.push(format!("cluster: {}", cluster_verdict(health))),
    }
    parts.join(GAP)
}

/// `ok (200)`, `FAILING (503)`, `FAILING (timeout)` or `?`.
fn cluster_verdict(health: &Value) -> String {
    let detail = match (
        health.get("status").and_then(Value::as_u64),
        health.get("error").and_then(Value::as_str),
    ) {
        (Some(status), _) => format!(" ({status})"),
        (None, Some(error)) => format!(" ({})", clean(error)),
        (None, None) => String::new(),
    };
    match health.get("ok") {
        Some(Value::Bool(true)) => format!("ok{detail}"),
        Some(Value::Bool(false)) => format!("FAILING{detail}"),
        _ => "?".into(),
    }
}

fn backend_row(backend: &Value, now: SystemTime) -> Vec<String> {
    let check = backend.get("last_check");
    vec![
        text(backend.get("address")),
        text(backend.get("state")),
        count(backend.get("weight")),
        count(backend.get("active_connections")),
        count(backend.get("total_connections")),
        count(backend.get("connect_failures")),
        check_verdict(check),
        check_latency(check),
        check_age(check, now),
    ]
}

/// `last_check` as an object; `Err` carries what to show instead (`-` for none yet, else `?`).
fn check_object(check: Option<&Value>) -> Result<&serde_json::Map<String, Value>, &'static str> {
    match check {
        Some(Value::Object(fields)) => Ok(fields),
        Some(Value::Null) => Err("-"),
        _ => Err("?"),
    }
}

/// `ok 200`, `ok` (a TCP check), `fail: status 503`, `fail: timeout`.
fn check_verdict(check: Option<&Value>) -> String {
    let fields = match check_object(check) {
        Ok(fields) => fields,
        Err(shown) => return shown.into(),
    };
    let status = fields.get("status").and_then(Value::as_u64);
    let error = fields.get("error").and_then(Value::as_str);
    match (fields.get("ok"), status, error) {
        (Some(Value::Bool(true)), Some(status), _) => format!("ok {status}"),
        (Some(Value::Bool(true)), None, _) => "ok".into(),
        (Some(Value::Bool(false)), _, Some(error)) => format!("fail: {}", clean(error)),
        (Some(Value::Bool(false)), Some(status), None) => format!("fail: status {status}"),
        (Some(Value::Bool(false)), None, None) => "fail".into(),
        _ => "?".into(),
    }
}

/// `3.2ms`, `1.25s`; `-` when there is no check or no measurement.
fn check_latency(check: Option<&Value>) -> String {
    let fields = match check_object(check) {
        Ok(fields) => fields,
        Err(shown) => return shown.into(),
    };
    match fields.get("latency_ms") {
        Some(Value::Null) => "-".into(),
        Some(v) => match v.as_f64() {
            Some(ms) if (0.0..1000.0).contains(&ms) => format!("{ms:.1}ms"),
            Some(ms) if ms.is_finite() && ms >= 1000.0 => format!("{:.2}s", ms / 1000.0),
            _ => "?".into(),
        },
        None => "?".into(),
    }
}

/// Time since the check finished: `1s ago`, `2m 5s ago`; a timestamp ahead of `now` (clock
/// skew) shows as `0s ago`.
fn check_age(check: Option<&Value>, now: SystemTime) -> String {
    let fields = match check_object(check) {
        Ok(fields) => fields,
        Err(shown) => return shown.into(),
    };
    let at = fields.get("at").and_then(Value::as_str).and_then(|s| {
        humantime::parse_rfc3339(s)
            .or_else(|_| humantime::parse_rfc3339_weak(s))
            .ok()
    });
    match at {
        Some(at) => {
            let age = now.duration_since(at).unwrap_or_default();
            format!("{} ago", span(age.as_secs()))
        }
        None => "?".into(),
    }
}

fn uptime(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        // `as` saturates; a float of seconds past u64::MAX is garbage anyway.
        Some(secs) if secs.is_finite() && secs >= 0.0 => span(secs as u64),
        _ => "?".into(),
    }
}

/// A duration in its two largest units: `45s`, `2m 5s`, `3h 12m`, `4d 2h`.
fn span(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// A string field's text, or `?` when missing or not a string.
fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .map(clean)
        .unwrap_or_else(|| "?".into())
}

/// A counter's digits, or `?` when missing or not a non-negative integer.
fn count(v: Option<&Value>) -> String {
    v.and_then(Value::as_u64)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "?".into())
}

/// Control characters replaced, so a hostile or broken value cannot break a line or a column.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
