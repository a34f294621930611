//! `POST /pools/{pool}/backends` and `DELETE /pools/{pool}/backends/{address}`: membership at
//! run time for autoscaling hooks (docs/architecture.md §10). The body is read by a pure function (tested
//! below) with the config file's own address and weight rules; the change itself is the app's.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::{error, json_response, status};
use crate::app::AppState;
use crate::config;
use crate::pool::AdminError;

/// What `POST /pools/{pool}/backends` expects, for error messages.
const BODY_SHAPE: &str = r#"{"address":"ip:port","weight":N} (weight optional, 1 by default)"#;

/// Reads the body of `POST /pools/{pool}/backends`: a JSON object with `address` (`ip:port`, as
/// a `backends` entry of the config file is written) and an optional integer `weight` (1 to
/// 256, default 1); nothing else.
pub(super) fn parse_add_body(body: &[u8]) -> Result<(SocketAddr, u32), String> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not JSON ({e}); send {BODY_SHAPE}"))?;
    let Value::Object(fields) = doc else {
        return Err(format!("the body must be a JSON object: {BODY_SHAPE}"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "address" | "weight"))
    {
        return Err(format!(
            "unknown field {unknown:?}; the body is {BODY_SHAPE}"
        ));
    }
    let address = match fields.get("address") {
        Some(Value::String(s)) => config::parse_backend_address(s)?,
        Some(_) => {
            return Err(format!(
                "address must be a string \"ip:port\"; {BODY_SHAPE}"
            ))
        }
        None => return Err(format!("the body has no address; send {BODY_SHAPE}")),
    };
    let weight = match fields.get("weight") {
        None => 1,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(w) => config::check_backend_weight(w)?,
            None => {
                return Err(format!(
                    "weight must be a whole number from 1 to {}, not {n}",
                    config::MAX_BACKEND_WEIGHT
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "weight must be a whole number from 1 to {}, not {other}",
                config::MAX_BACKEND_WEIGHT
            ))
        }
    };
    Ok((address, weight))
}

/// `POST /pools/{pool}/backends`: 201 with the backend as `/status` shows it (it starts down);
/// 404 unknown pool, 400 a malformed body, 409 an existing member or a pool fed by DNS.
pub(super) async fn add(state: &AppState, pool: &str, body: &Bytes) -> Response<Full<Bytes>> {
    if state.pool(pool).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool}"));
    }
    let (address, weight) = match parse_add_body(body) {
        Ok(parsed) => parsed,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match state.add_backend(pool, address, weight).await {
        Ok(backend) => {
            let body = serde_json::to_string(&status::backend(&backend))
                .unwrap_or_else(|_| "{}".to_owned());
            let mut resp = json_response(StatusCode::CREATED, body);
            let location = format!("/pools/{pool}/backends/{address}");
            if let Ok(value) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, value);
            }
            resp
        }
        Err(e) => refused(&e),
    }
}

/// `DELETE /pools/{pool}/backends/{address}`: 202 while the backend drains (it leaves after its
/// last connection or `drain_timeout`); 404 unknown pool or backend, 409 a pool fed by DNS.
pub(super) async fn remove(state: &AppState, pool: &str, address: &str) -> Response<Full<Bytes>> {
    if state.pool(pool).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool}"));
    }
    let Ok(addr) = config::parse_address(address) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("pool {pool} has no backend {address} (backends are named ip:port)"),
        );
    };
    match state.remove_backend(pool, addr).await {
        Ok(()) => json_response(
            StatusCode::ACCEPTED,
            json!({"pool": pool, "address": addr.to_string(), "state": "draining"}).to_string(),
        ),
        Err(e) => refused(&e),
    }
}

/// The status code of a refused membership change.
fn refused(e: &AdminError) -> Response<Full<Bytes>> {
    let code = match e {
        AdminError::UnknownPool(_) | AdminError::UnknownBackend { .. } => StatusCode::NOT_FOUND,
        AdminError::Exists { .. } | AdminError::Discovered(_) | AdminError::Removed { .. } => {
            StatusCode::CONFLICT
        }
        AdminError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_bodies() {
        let ok = |body: &str| parse_add_body(body.as_bytes());
        assert_eq!(
            ok(r#"{"address":"10.0.0.14:443","weight":1}"#),
            Ok(("10.0.0.14:443".parse().unwrap(), 1))
        );
        assert_eq!(
            ok(r#"{"address":"[::1]:8443"}"#),
            Ok(("[::1]:8443".parse().unwrap(), 1))
        );
        assert_eq!(
            ok(r#"{"weight":256,"address":"10.0.0.14:443"}"#),
            Ok(("10.0.0.14:443".parse().unwrap(), 256))
        );
        let cases = [
            ("", "not JSON"),
            ("{", "not JSON"),
            ("10.0.0.14:443", "not JSON"),
            (r#"["10.0.0.14:443"]"#, "JSON object"),
            ("{}", "no address"),
            (r#"{"address":1}"#, "must be a string"),
            (r#"{"address":"10.0.0.14"}"#, "no port"),
            (r#"{"address":"10.0.0.14:0"}"#, "port 0"),
            (r#"{"address":"10.0.0.14:0443"}"#, "leading zero"),
            (r#"{"address":"quay-4.internal:443"}"#, "hostname"),
            (r#"{"address":"10.0.0.14:443","weight":0}"#, "at least 1"),
            (r#"{"address":"10.0.0.14:443","weight":257}"#, "at most 256"),
            (
                r#"{"address":"10.0.0.14:443","weight":1.5}"#,
                "whole number",
            ),
            (
                r#"{"address":"10.0.0.14:443","weight":"2"}"#,
                "whole number",
            ),
            (
                r#"{"address":"10.0.0.14:443","weight":null}"#,
                "whole number",
            ),
            (
                r#"{"address":"10.0.0.14:443","wieght":2}"#,
                "unknown field \"wieght\"",
            ),
        ];
        for (body, phrase) in cases {
            let e = ok(body).unwrap_err();
            assert!(e.contains(phrase), "{body:?}: {e}");
        }
    }
}
