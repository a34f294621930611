//! The `/status` document as types: built by the admin API, read by `splicer status` and the
//! dashboard, so the two ends cannot drift apart. Depends on nothing else in the crate.
//!
//! Reading is lenient (every field has a default) so `splicer status` of one version can read
//! the document of an older or newer running process; writing always fills every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// splicer's version.
    pub version: String,
    /// Seconds since the process started, one decimal.
    pub uptime_seconds: f64,
    /// The answering process (it changes with every binary upgrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every pool.
    pub pools: Vec<PoolStatus>,
}

/// One listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// Address actually bound.
    pub bind: String,
    /// Client connections open now.
    pub active_connections: u64,
    /// Client connections accepted since start.
    pub total_connections: u64,
}

/// One pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolStatus {
    /// Pool name.
    pub name: String,
    /// Balancing algorithm (`round_robin`, ...).
    pub balance: String,
    /// Whether the pool is failing open (no enabled backend up, `fail_open` on).
    pub fail_open: bool,
    /// Result of the last cluster-wide health probe; `None` when not configured or not yet run.
    pub cluster_health: Option<ClusterHealthStatus>,
    /// Shared services in outage across the pool.
    pub shared_outage: Vec<String>,
    /// Every backend.
    pub backends: Vec<BackendStatus>,
}

/// The last cluster-wide health probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterHealthStatus {
    /// Whether the answer was accepted.
    pub ok: bool,
    /// HTTP status, when one arrived.
    pub status: Option<u16>,
    /// RFC 3339 UTC time it finished.
    pub checked_at: String,
    /// The backend that was asked.
    pub backend: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStatus {
    /// `ip:port` (IPv6 as `[::1]:443`).
    pub address: String,
    /// `up`, `down`, `draining` or `disabled`.
    pub state: String,
    /// Balancing weight.
    pub weight: u32,
    /// Connections open now.
    pub active_connections: u64,
    /// Connections since start.
    pub total_connections: u64,
    /// Failed connect attempts since start.
    pub connect_failures: u64,
    /// Bytes relayed client → backend since start.
    pub bytes_to_backend: u64,
    /// Bytes relayed backend → client since start.
    pub bytes_to_client: u64,
    /// The last health check; `None` before the first or when checks are off.
    pub last_check: Option<CheckStatus>,
    /// Why passive marking holds it down (only while it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
}

/// One health check's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckStatus {
    /// Whether it passed.
    pub ok: bool,
    /// HTTP status, when one arrived.
    pub status: Option<u16>,
    /// Time it took, milliseconds with one decimal.
    pub latency_ms: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// RFC 3339 UTC time it finished.
    pub at: String,
    /// Quay services the body reported, when it was a Quay health document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<BTreeMap<String, bool>>,
}

impl BackendStatus {
    /// Whether the operator took it out of rotation (draining or disabled): such a backend
    /// being down is intent, not a fault.
    pub fn is_operator_held(&self) -> bool {
        matches!(self.state.as_str(), "draining" | "disabled")
    }

    /// The services its last check reported false.
    pub fn failing_services(&self) -> Vec<&str> {
        self.last_check
            .as_ref()
            .and_then(|c| c.services.as_ref())
            .map(|s| {
                s.iter()
                    .filter(|(_, ok)| !**ok)
                    .map(|(name, _)| name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sparse_document() {
        let doc: Status = serde_json::from_str(
            r#"{"version":"0.0.9","pools":[{"name":"quay","backends":[{"address":"127.0.0.1:1","state":"up","new_field":1}]}]}"#,
        )
        .unwrap();
        assert_eq!(doc.pools[0].backends[0].state, "up");
        assert_eq!(doc.pools[0].backends[0].last_check, None);
        assert_eq!(doc.pid, None);
    }

    #[test]
    fn writes_every_field() {
        let doc = Status {
            pools: vec![PoolStatus {
                backends: vec![BackendStatus::default()],
                ..PoolStatus::default()
            }],
            ..Status::default()
        };
        let v = serde_json::to_value(&doc).unwrap();
        let b = &v["pools"][0]["backends"][0];
        for key in [
            "address",
            "state",
            "weight",
            "last_check",
            "bytes_to_client",
        ] {
            assert!(b.get(key).is_some(), "{key} missing: {b}");
        }
        assert!(v["pools"][0].get("cluster_health").is_some());
        assert!(b.get("down_reason").is_none());
    }
}
