//! The `/status` document: every listener, pool and backend with its state and counters.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::app::AppState;
use crate::pool::{Backend, Pool};

/// RFC 3339 UTC timestamp, seconds precision (`2026-11-27T12:00:00Z`).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Renders `/status`.
pub fn render(state: &AppState) -> Value {
    let listeners: Vec<Value> = state
        .listeners()
        .iter()
        .map(|l| {
            json!({
                "name": l.config.name,
                "bind": l.local_addr.to_string(),
                "active_connections": l.active_connections(),
                "total_connections": l.total_connections(),
            })
        })
        .collect();
    let pools: Vec<Value> = state.pools().iter().map(|p| pool(p)).collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": (state.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        // Which process answers: it changes with every binary upgrade.
        "pid": std::process::id(),
        "listeners": listeners,
        "pools": pools,
    })
}

fn pool(p: &Pool) -> Value {
    let backends: Vec<Value> = p.members().iter().map(|b| backend(b)).collect();
    json!({
        "name": &*p.name,
        "balance": p.config().balance.as_str(),
        "fail_open": p.is_failing_open(),
        "cluster_health": p.cluster_health().map_or(Value::Null, |c| json!({
            "ok": c.ok,
            "status": c.status,
            "checked_at": timestamp(c.checked_at),
            "backend": c.backend.map(|b| b.to_string()),
            "error": c.error,
        })),
        "shared_outage": &*p.shared_outage(),
        "backends": backends,
    })
}

fn backend(b: &Backend) -> Value {
    let last_check = match b.last_check() {
        Some(c) => {
            let mut v = json!({
                "ok": c.ok,
                "status": c.status,
                "latency_ms": (c.latency.as_secs_f64() * 10_000.0).round() / 10.0,
                "error": c.error,
                "at": timestamp(c.at),
            });
            if let (Some(services), Some(obj)) = (c.services, v.as_object_mut()) {
                obj.insert("services".into(), json!(services));
            }
            v
        }
        None => Value::Null,
    };
    let mut v = json!({
        "address": b.address.to_string(),
        "state": b.state().as_str(),
        "weight": b.weight(),
        "active_connections": b.active_connections(),
        "total_connections": b.total_connections(),
        "connect_failures": b.connect_failures(),
        "last_check": last_check,
    });
    // Only while passive marking is why it is down (its last check may still be a pass).
    if let (Some(reason), Some(obj)) = (b.passive_down(), v.as_object_mut()) {
        obj.insert("down_reason".into(), json!(reason));
    }
    v
}
