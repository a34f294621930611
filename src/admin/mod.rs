//! The admin HTTP API: one hyper service with a single `match (method, path)`. Reads go to
//! atomics and snapshots; actions and reloads are messages to the pool supervisors and the app,
//! so nothing here can stall the data path. `GET /` is the dashboard (`dashboard.rs`), a page
//! that uses the same endpoints from the operator's browser.

mod dashboard;
mod guard;
mod membership;
mod status;

use guard::Arrival;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::lifecycle::UpgradeError;
use crate::metrics;
use crate::pool::{AdminAction, AdminError};

/// An admin client that sends nothing for this long is dropped, so idle sockets can't pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to receive a request's body once its head arrived.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an answer; the work itself runs in a task of its own and is never cut off
/// half-way (a reload or an upgrade finishes and is logged), the client just hears 503. Above
/// the default `upgrade_timeout` (30s) plus a start-up health round.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest life of one admin connection (keep-alive included): a client that never reads its
/// answers cannot hold one of the [`MAX_CONNECTIONS`] slots for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Admin connections served at once; more are closed as soon as they are accepted, so a flood
/// costs the process neither memory nor tasks (operators and scrapers need a handful).
const MAX_CONNECTIONS: usize = 64;
/// hyper's read buffer, which bounds a request head: 16 KiB (hyper's own minimum is 8 KiB); a
/// larger head is answered 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body; no endpoint needs more than a small JSON document.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Serves the admin API on `listener`: accepts until `stop_accepting` is cancelled (then drops
/// its hold on the socket), and serves each accepted connection until `stop` is cancelled.
pub async fn serve(
    listener: Arc<TcpListener>,
    state: Arc<AppState>,
    stop_accepting: CancellationToken,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    let bind = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    loop {
        let accepted = tokio::select! {
            _ = stop_accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                // Out of fds: pause instead of spinning.
                tokio::select! {
                    _ = stop_accepting.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = MAX_CONNECTIONS, "admin connection limit reached: closed");
            drop(stream);
            continue;
        };
        let at = Arrival {
            bind,
            local: stream.local_addr().unwrap_or(bind),
        };
        let state = state.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(state, at, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
            }
            // The answer in flight still goes out (the `POST /upgrade` that made this process
            // hand over and stop is answered by it), then the connection closes.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(FINISH_GRACE, conn).await;
        });
    }
    // Held until the connections end, so whoever waits for this task waits for their answers.
    connections.close();
    connections.wait().await;
}

/// How long an admin connection may take to finish its answer once told to stop.
const FINISH_GRACE: Duration = Duration::from_secs(1);

/// The edge checks every request passes (Host, body size), then the route, run in a task of
/// its own under [`RESPONSE_TIMEOUT`].
async fn answer(
    state: Arc<AppState>,
    at: Arrival,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string());
    // Liveness and readiness answer whatever Host a prober sends (cloud balancers and
    // orchestrators name targets their own way); they reveal nothing a rebinding page could use.
    let is_probe = req.method() == Method::GET && matches!(req.uri().path(), "/health" | "/ready");
    if !is_probe {
        if let Err(why) = guard::host_allowed(host.as_deref(), at) {
            return error(StatusCode::MISDIRECTED_REQUEST, &why);
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(),
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "cannot read the request body"),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
        }
    };
    let req = Request::from_parts(parts, body);
    let work = tokio::spawn(async move { route(&state, at, req).await });
    match tokio::time::timeout(RESPONSE_TIMEOUT, work).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request handler failed",
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer within 120s; the action goes on, see the log",
        ),
    }
}

/// Whether the request carries the configured bearer token (or none is configured).
fn is_authorized(state: &AppState, req: &Request<Bytes>) -> bool {
    let token = state.admin_token();
    let Some(token) = token.as_ref() else {
        return true;
    };
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()))
        .is_some_and(|given| token.matches(given))
}

/// The credentials of a `Bearer` authorization value; the scheme name is case-insensitive
/// (RFC 9110 §11.1), so `bearer <token>` is accepted as well.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then_some(rest)
}

/// Methods this API implements anywhere; others are 501.
/// The methods RFC 9110 (and RFC 5789's PATCH) define.
fn is_standard_method(m: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .contains(m)
}

fn is_known_method(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD || m == Method::POST || m == Method::DELETE
}

/// Checks a POST (or DELETE) must pass before it acts: same origin (403), then the token (401).
fn refuse_post(
    state: &AppState,
    at: Arrival,
    req: &Request<Bytes>,
) -> Option<Response<Full<Bytes>>> {
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap_or("\u{fffd}"))
    };
    if !guard::origin_allowed(header(ORIGIN), header(HOST), at) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: the Origin header names another site than this admin API",
        ));
    }
    if !is_authorized(state, req) {
        return Some(unauthorized());
    }
    None
}

async fn route(state: &AppState, at: Arrival, req: Request<Bytes>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // A method HTTP does not define is 501 on every path (RFC 9110 §15.6.2), before any
    // path's own 405 (which is for defined methods the resource does not allow).
    if !is_standard_method(&method) {
        return not_found(&method, &path);
    }
    let Some(segs) = guard::segments(&path) else {
        return not_found(&method, &path);
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let is_read = method == Method::GET || method == Method::HEAD;
    let is_post = method == Method::POST;
    match segs.as_slice() {
        [] if is_read => dashboard_page(),
        [] => method_not_allowed("GET, HEAD"),
        ["health"] if is_read => text(StatusCode::OK, "ok\n"),
        ["ready"] if is_read => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if state.is_shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        ["status"] if is_read => json_response(StatusCode::OK, status::render(state)),
        ["metrics"] if is_read => respond(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            Bytes::from(metrics::render(state.scrape())),
        ),
        ["health"] | ["ready"] | ["status"] | ["metrics"] => method_not_allowed("GET, HEAD"),
        ["reload"] if is_post => {
            if let Some(refused) = refuse_post(state, at, &req) {
                return refused;
            }
            match state.reload().await {
                Ok(r) => json_response(
                    StatusCode::OK,
                    json!({
                        "listeners": {"added": r.listeners_added, "removed": r.listeners_removed},
                        "backends": {"added": r.backends_added, "removed": r.backends_removed},
                        "settings_changed": r.settings_changed,
                    })
                    .to_string(),
                ),
                Err(errors) => json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "errors": errors }).to_string(),
                ),
            }
        }
        ["reload"] => method_not_allowed("POST"),
        ["upgrade"] if is_post => {
            if let Some(refused) = refuse_post(state, at, &req) {
                return refused;
            }
            match state.upgrade().await {
                Ok(u) => json_response(
                    StatusCode::OK,
                    json!({"old_pid": u.old_pid, "new_pid": u.new_pid}).to_string(),
                ),
                Err(e @ (UpgradeError::InProgress | UpgradeError::ShuttingDown)) => {
                    error(StatusCode::CONFLICT, &e.to_string())
                }
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &crate::error_chain::error_chain(&e),
                ),
            }
        }
        ["upgrade"] => method_not_allowed("POST"),
        ["pools", pool, "backends"] => {
            if !is_post {
                return method_not_allowed("POST");
            }
            if let Some(refused) = refuse_post(state, at, &req) {
                return refused;
            }
            membership::add(state, pool, req.body()).await
        }
        ["pools", pool, "backends", address] => {
            if method != Method::DELETE {
                return method_not_allowed("DELETE");
            }
            if let Some(refused) = refuse_post(state, at, &req) {
                return refused;
            }
            membership::remove(state, pool, address).await
        }
        ["pools", pool, "backends", address, action] => {
            let action = match *action {
                "drain" => AdminAction::Drain,
                "disable" => AdminAction::Disable,
                "enable" => AdminAction::Enable,
                _ => return not_found(&method, &path),
            };
            if !is_post {
                return method_not_allowed("POST");
            }
            if let Some(refused) = refuse_post(state, at, &req) {
                return refused;
            }
            backend_action(state, pool, address, action).await
        }
        _ => not_found(&method, &path),
    }
}

/// 404 for a path no endpoint has; 501 when the method is one this API never implements.
fn not_found(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if !is_known_method(method) {
        let mut resp = error(
            StatusCode::NOT_IMPLEMENTED,
            &format!("method {method} is not implemented"),
        );
        resp.headers_mut().insert(
            hyper::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, DELETE"),
        );
        return resp;
    }
    error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"))
}

fn too_large() -> Response<Full<Bytes>> {
    let mut resp = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    );
    resp.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn backend_action(
    state: &AppState,
    pool_name: &str,
    address: &str,
    action: AdminAction,
) -> Response<Full<Bytes>> {
    if state.pool(pool_name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool_name}"));
    }
    let Ok(addr) = crate::config::parse_address(address) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("pool {pool_name} has no backend {address} (backends are named ip:port)"),
        );
    };
    match state.backend_action(pool_name, addr, action).await {
        Ok(new_state) => json_response(
            StatusCode::OK,
            json!({"pool": pool_name, "address": addr.to_string(), "state": new_state.as_str()})
                .to_string(),
        ),
        Err(e @ (AdminError::UnknownBackend { .. } | AdminError::UnknownPool(_))) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(
            e
            @ (AdminError::Removed { .. } | AdminError::Exists { .. } | AdminError::Discovered(_)),
        ) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ AdminError::Stopped(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The dashboard page, with headers that keep it from being framed, cached, sniffed as
/// something else or made to run anything but its own inline script.
fn dashboard_page() -> Response<Full<Bytes>> {
    let mut resp = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(dashboard::PAGE.as_bytes()),
    );
    let headers = resp.headers_mut();
    // The policy is ASCII built from base64 hashes; should it ever not be a valid header
    // value, serve no page rather than a page without its policy.
    let Ok(policy) = HeaderValue::from_str(&dashboard::POLICY) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the dashboard's Content-Security-Policy is not a valid header value",
        );
    };
    headers.insert(hyper::header::CONTENT_SECURITY_POLICY, policy);
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(
        hyper::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "application/json", Bytes::from(body))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "error": message }).to_string())
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "this endpoint needs the header Authorization: Bearer <token from admin.token_file>",
    );
    resp.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    resp
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
