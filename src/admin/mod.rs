//! The admin HTTP API: one hyper service with a single `match (method, path)`. Reads go to
//! atomics and snapshots; actions and reloads are messages to the pool supervisors and the app,
//! so nothing here can stall the data path.

mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::metrics;
use crate::pool::{AdminAction, AdminError};

/// An admin client that sends nothing for this long is dropped, so idle sockets can't pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                // Out of fds: pause instead of spinning.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Path segments, percent-decoded (so `[::1]:443` may arrive as `%5B%3A%3A1%5D%3A443`).
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request carries the configured bearer token (or none is configured).
fn is_authorized(state: &AppState, req: &Request<Incoming>) -> bool {
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

async fn route(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segs = segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let is_read = method == Method::GET || method == Method::HEAD;
    match segs.as_slice() {
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
        ["status"] if is_read => json_response(StatusCode::OK, status::render(state).to_string()),
        ["metrics"] if is_read => respond(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            Bytes::from(metrics::render(state)),
        ),
        ["health"] | ["ready"] | ["status"] | ["metrics"] => method_not_allowed("GET"),
        ["reload"] if method == Method::POST => {
            if !is_authorized(state, &req) {
                return unauthorized();
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
        ["pools", pool, "backends", address, action] => {
            let action = match *action {
                "drain" => AdminAction::Drain,
                "disable" => AdminAction::Disable,
                "enable" => AdminAction::Enable,
                _ => return error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
            };
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            if !is_authorized(state, &req) {
                return unauthorized();
            }
            backend_action(state, pool, address, action).await
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

async fn backend_action(
    state: &AppState,
    pool_name: &str,
    address: &str,
    action: AdminAction,
) -> Response<Full<Bytes>> {
    let Some(pool) = state.pool(pool_name) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool_name}"));
    };
    let Ok(addr) = address.parse::<SocketAddr>() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("pool {pool_name} has no backend {address} (backends are named ip:port)"),
        );
    };
    match pool.admin(addr, action).await {
        Ok(new_state) => json_response(
            StatusCode::OK,
            json!({"pool": pool_name, "address": addr.to_string(), "state": new_state.as_str()})
                .to_string(),
        ),
        Err(e @ AdminError::UnknownBackend { .. }) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ AdminError::Removed { .. }) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ AdminError::Stopped(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A443"), "[::1]:443");
        assert_eq!(percent_decode("10.0.0.1:443"), "10.0.0.1:443");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(
            segments("/pools/q/backends/%5B%3A%3A1%5D%3A443/drain"),
            vec!["pools", "q", "backends", "[::1]:443", "drain"]
        );
    }
}
