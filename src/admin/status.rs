//! Builds the `/status` document ([`crate::status_doc::Status`]) from the running state.

use std::time::SystemTime;

use crate::app::AppState;
use crate::pool::{Member, Pool};
use crate::status_doc::{
    BackendStatus, CheckStatus, ClusterHealthStatus, ListenerStatus, PoolStatus, Status,
};

/// RFC 3339 UTC timestamp, seconds precision (`2026-11-27T12:00:00Z`).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The `/status` document of `state` now.
pub fn build(state: &AppState) -> Status {
    let listeners = state
        .listeners()
        .iter()
        .map(|l| ListenerStatus {
            name: l.config.name.clone(),
            bind: l.local_addr.to_string(),
            active_connections: l.active_connections(),
            total_connections: l.total_connections(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: (state.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        pid: Some(std::process::id()),
        listeners,
        pools: state.pools().iter().map(|p| pool(p)).collect(),
    }
}

/// `/status` as JSON text.
pub fn render(state: &AppState) -> String {
    // Serializing plain structs of strings, numbers and maps cannot fail.
    serde_json::to_string(&build(state)).unwrap_or_else(|_| "{}".to_owned())
}

/// One pool's part of the document, from one snapshot (so a backend shown `up` is one that
/// new connections can reach).
pub fn pool(p: &Pool) -> PoolStatus {
    let s = p.snapshot();
    PoolStatus {
        name: p.name.to_string(),
        balance: s.config().balance.as_str().to_owned(),
        fail_open: s.fail_open,
        cluster_health: s.cluster_health.clone().map(|c| ClusterHealthStatus {
            ok: c.ok,
            status: c.status,
            checked_at: timestamp(c.checked_at),
            backend: c.backend.map(|b| b.to_string()),
            error: c.error,
        }),
        shared_outage: s.shared_outage.clone(),
        backends: s.members.iter().map(backend).collect(),
    }
}

/// One backend's part of the document.
pub fn backend(m: &Member) -> BackendStatus {
    let b = &m.backend;
    BackendStatus {
        address: b.address.to_string(),
        state: m.state.as_str().to_owned(),
        weight: m.weight,
        active_connections: b.active_connections(),
        total_connections: b.total_connections(),
        connect_failures: b.connect_failures(),
        bytes_to_backend: b.bytes_to_backend(),
        bytes_to_client: b.bytes_to_client(),
        last_check: b.last_check().map(|c| CheckStatus {
            ok: c.ok,
            status: c.status,
            latency_ms: (c.latency.as_secs_f64() * 10_000.0).round() / 10.0,
            error: c.error,
            at: timestamp(c.at),
            services: c.services,
        }),
        // Only while passive marking is why it is down (its last check may still be a pass).
        down_reason: m.down_reason.clone(),
    }
}
