//! A node's HTTP answers: health, identity, bulk bytes and a checksum service.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::body::{endtoend_report, instance_report, HealthReport, PatternBody};
use super::node::NodeContext;

/// Largest `/bytes/{n}`: enough for any throughput test, small enough that a typo
/// cannot keep a connection busy for days.
pub const MAX_BYTES: u64 = 16 << 30;

/// Body type of every node answer: small fixed ones and the streamed pattern.
pub(crate) type AnswerBody = BoxBody<Bytes, Infallible>;

/// Answers one request, after the node's hang (if any) ends and its delay has passed.
pub(crate) async fn answer(
    request: Request<Incoming>,
    node: Arc<NodeContext>,
) -> Result<Response<AnswerBody>, Infallible> {
    // The connection stops being polled when the node hangs, but a request read in the same
    // poll as the hang flag's change must not slip through.
    let mut state = node.state.subscribe();
    let delay = match state.wait_for(|s| !s.hang).await {
        Ok(s) => s.delay,
        Err(_) => std::time::Duration::ZERO,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = route(request, &node).await;
    response.headers_mut().insert("x-node", node.x_node.clone());
    Ok(response)
}

async fn route(request: Request<Incoming>, node: &NodeContext) -> Response<AnswerBody> {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, "/") => text(StatusCode::OK, format!("{}\n", node.name)),
        (&Method::GET, "/health/instance") => {
            let state = node.state.borrow().clone();
            health(instance_report(
                state.health,
                &state.failing,
                &node.shared.snapshot(),
            ))
        }
        (&Method::GET, "/health/endtoend") => {
            let state = node.state.borrow().clone();
            health(endtoend_report(
                state.health,
                &state.failing,
                &node.shared.snapshot(),
            ))
        }
        (&Method::GET, p) if p.starts_with("/bytes/") => bytes(&p["/bytes/".len()..]),
        (&Method::POST, "/sha256") => sha256(request.into_body()).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn bytes(count: &str) -> Response<AnswerBody> {
    match count.parse::<u64>() {
        Ok(n) if n <= MAX_BYTES => {
            let mut response = Response::new(PatternBody::new(n).boxed());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Ok(_) => text(
            StatusCode::BAD_REQUEST,
            format!("byte count above the limit of {MAX_BYTES}\n"),
        ),
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "byte count must be a non-negative integer\n".to_owned(),
        ),
    }
}

async fn sha256(mut body: Incoming) -> Response<AnswerBody> {
    let mut hasher = Sha256::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                }
            }
            Err(_) => {
                return text(StatusCode::BAD_REQUEST, "request body broken\n".to_owned());
            }
        }
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(digest.len() * 2 + 1);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.push('\n');
    text(StatusCode::OK, hex)
}

fn health(report: HealthReport) -> Response<AnswerBody> {
    let status = StatusCode::from_u16(report.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = Response::new(Full::new(Bytes::from(report.body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: String) -> Response<AnswerBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
