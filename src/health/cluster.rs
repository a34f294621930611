//! The cluster-wide probe of `[pool.cluster_health]`: every interval, one up backend (taking
//! turns) is asked for the cluster's end-to-end health (Quay's `/health/endtoend`). The result
//! goes to the pool's supervisor, which publishes it on `/status` and in metrics; it never
//! changes who gets connections, since a failing shared service is not something another
//! backend could fix.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::probe::Prober;

/// The latest cluster-wide probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    /// Whether the status was accepted.
    pub ok: bool,
    /// HTTP status, when one arrived.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// The backend that was asked.
    pub backend: Option<SocketAddr>,
    /// When it finished.
    pub checked_at: SystemTime,
}

/// Probes the cluster every `interval` until `stop`, asking the backend `next_target` names
/// (the pool's up backends, taking turns; `None` when none is up), and sends each result to
/// `results` (the pool's supervisor).
pub async fn run(
    mut next_target: impl FnMut() -> Option<SocketAddr> + Send,
    prober: Prober,
    port: u16,
    interval: Duration,
    results: mpsc::Sender<ClusterHealth>,
    stop: CancellationToken,
) {
    loop {
        let target = next_target();
        let result = match target {
            None => ClusterHealth {
                ok: false,
                status: None,
                error: Some("no backend is up to ask".to_string()),
                backend: None,
                checked_at: SystemTime::now(),
            },
            Some(addr) => {
                let probe_at = match port {
                    0 => addr,
                    p => SocketAddr::new(addr.ip(), p),
                };
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    o = prober.probe(probe_at) => o,
                };
                ClusterHealth {
                    ok: outcome.is_pass(),
                    status: outcome.status,
                    error: outcome.result.as_ref().err().map(|e| e.to_string()),
                    backend: Some(addr),
                    checked_at: SystemTime::now(),
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = results.send(result) => if sent.is_err() { return },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
