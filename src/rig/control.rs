//! The control API: plain HTTP/1.1 with one `match` over (method, path), every answer JSON.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::node::Node;
use super::Cluster;

/// Control bodies are a number, a duration or a short JSON object; anything bigger is a mistake.
const MAX_BODY: usize = 64 * 1024;

/// Longest `/delay` accepted: a delay is a fault to inject, not a way to park clients for days.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Serves one control connection.
pub(crate) async fn serve_connection(stream: TcpStream, cluster: Arc<Cluster>) {
    let service = service_fn(move |request| answer(request, cluster.clone()));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    cluster: Arc<Cluster>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let method = &parts.method;
    let response = match segments.as_slice() {
        ["nodes"] => match *method {
            Method::GET => {
                let nodes: Vec<_> = cluster.nodes.iter().map(|n| n.view()).collect();
                ok(json!(nodes))
            }
            _ => not_allowed("GET"),
        },
        ["nodes", index] => match *method {
            Method::GET => match find_node(&cluster, index) {
                Some(node) => ok(json!(node.view())),
                None => no_node(index),
            },
            _ => not_allowed("GET"),
        },
        ["nodes", index, action @ ("health" | "stop" | "start" | "hang" | "delay")] => {
            if method != Method::POST {
                not_allowed("POST")
            } else {
                match find_node(&cluster, index) {
                    Some(node) => act(node, action, body).await,
                    None => no_node(index),
                }
            }
        }
        ["shared", service, direction @ ("down" | "up")] => {
            if method != Method::POST {
                not_allowed("POST")
            } else if service.is_empty() {
                error(StatusCode::BAD_REQUEST, "service name is empty")
            } else {
                let down = cluster.shared.set(service, *direction == "down");
                ok(json!({ "shared_down": down }))
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(response)
}

async fn act(node: &Node, action: &str, body: Incoming) -> Response<Full<Bytes>> {
    match action {
        "stop" => node.stop().await,
        "start" => {
            if let Err(e) = node.start().await {
                let message = format!("binding {}: {e}", node.addr);
                return error(StatusCode::INTERNAL_SERVER_ERROR, &message);
            }
        }
        "hang" => node.hang(),
        "delay" => match read_body(body).await.and_then(|b| parse_delay(&b)) {
            Ok(delay) => node.set_delay(delay),
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        },
        "health" => match read_body(body).await.and_then(|b| parse_health(&b)) {
            Ok(change) => node.set_health(change.status, change.failing),
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        },
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    }
    ok(json!(node.view()))
}

fn find_node<'c>(cluster: &'c Cluster, index: &str) -> Option<&'c Node> {
    let position = index.parse::<usize>().ok()?.checked_sub(1)?;
    cluster.nodes.get(position)
}

fn no_node(index: &str) -> Response<Full<Bytes>> {
    error(StatusCode::NOT_FOUND, &format!("no node {index}"))
}

async fn read_body(body: Incoming) -> Result<String, String> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| "body is not UTF-8".to_owned())
}

/// A health change: either part may be absent (the JSON form allows both to be optional).
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthChange {
    pub(crate) status: Option<u16>,
    pub(crate) failing: Option<Vec<String>>,
}

/// Parses `/health` bodies: a bare status code (`503`) or `{"status":503,"failing":[..]}`.
pub(crate) fn parse_health(body: &str) -> Result<HealthChange, String> {
    const EXPECTED: &str =
        r#"expected a status code such as 503 or {"status":503,"failing":["disk_space"]}"#;
    let value: Value = serde_json::from_str(body.trim()).map_err(|_| EXPECTED.to_owned())?;
    let change = match value {
        Value::Number(n) => {
            let status = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("status {n} is not a valid HTTP status"))?;
            HealthChange {
                status: Some(status),
                failing: None,
            }
        }
        Value::Object(_) => {
            serde_json::from_value(value).map_err(|e| format!("{e}; {EXPECTED}"))?
        }
        _ => return Err(EXPECTED.to_owned()),
    };
    if let Some(status) = change.status {
        // 1xx cannot end an exchange and 600+ is not HTTP: a checker would see garbage.
        if !(200..=599).contains(&status) {
            return Err(format!("status {status} is outside 200..=599"));
        }
    }
    if let Some(failing) = &change.failing {
        if failing.iter().any(|name| name.trim().is_empty()) {
            return Err("failing service names must not be empty".to_owned());
        }
    }
    Ok(change)
}

/// Parses `/delay` bodies: a whole number with unit `ms`, `s` or `m` (`250ms`, `2s`, `0s`),
/// bare or as a JSON string; a bare `0` is also accepted.
pub(crate) fn parse_delay(body: &str) -> Result<Duration, String> {
    let text = body.trim();
    let text = match serde_json::from_str::<Value>(text) {
        Ok(Value::String(s)) => s,
        _ => text.to_owned(),
    };
    let text = text.trim();
    let invalid =
        || format!("invalid duration {text:?}: expected e.g. \"250ms\", \"2s\" or \"1m\"");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let delay = match unit.trim() {
        "ms" => Duration::from_millis(amount),
        "s" => Duration::from_secs(amount),
        "m" => Duration::from_secs(amount.saturating_mul(60)),
        "" if amount == 0 => Duration::ZERO,
        _ => return Err(invalid()),
    };
    if delay > MAX_DELAY {
        return Err(format!(
            "delay {text} is longer than {}s",
            MAX_DELAY.as_secs()
        ));
    }
    Ok(delay)
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &body)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    // A trailing newline keeps `curl` output tidy; JSON parsers ignore it.
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_bodies() {
        let status = |s| HealthChange {
            status: Some(s),
            failing: None,
        };
        assert_eq!(parse_health("503"), Ok(status(503)));
        assert_eq!(parse_health(" 200\n"), Ok(status(200)));
        assert_eq!(parse_health(r#"{"status":503}"#), Ok(status(503)));
        assert_eq!(
            parse_health(r#"{"status":503,"failing":["disk_space"]}"#),
            Ok(HealthChange {
                status: Some(503),
                failing: Some(vec!["disk_space".into()])
            })
        );
        assert_eq!(
            parse_health(r#"{"failing":[]}"#),
            Ok(HealthChange {
                status: None,
                failing: Some(vec![])
            })
        );
        assert_eq!(parse_health("{}"), Ok(HealthChange::default()));
        for bad in [
            "",
            "abc",
            "99",
            "600",
            "70000",
            "-1",
            "5.5",
            "[503]",
            r#""503""#,
            r#"{"status":"503"}"#,
            r#"{"status":503,"extra":1}"#,
            r#"{"failing":"disk_space"}"#,
            r#"{"failing":[""]}"#,
        ] {
            assert!(parse_health(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn delay_bodies() {
        let cases = [
            ("250ms", 250),
            ("2s", 2000),
            ("1m", 60_000),
            ("0s", 0),
            ("0", 0),
            (" 5ms\n", 5),
            (r#""250ms""#, 250),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_delay(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in [
            "",
            "ms",
            "5",
            "5h",
            "-5ms",
            "1.5s",
            "2 s s",
            "99999999999999999999s",
            "61m",
            "abc",
        ] {
            assert!(parse_delay(bad).is_err(), "{bad:?} accepted");
        }
    }
}
