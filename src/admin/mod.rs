//! The admin HTTP API: one hyper service with a single `match (method, path)`. It only reads
//! the running state (atomics, snapshots, one short-held mutex per backend), so nothing it does
//! can stall the data path.

mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

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
                async move { Ok::<_, Infallible>(route(&state, req)) }
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

fn route(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let method = req.method();
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/health") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/ready") => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if state.is_shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/status") => {
            json(StatusCode::OK, status::render(state).to_string())
        }
        (_, "/health" | "/ready" | "/status") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "application/json", Bytes::from(body))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
