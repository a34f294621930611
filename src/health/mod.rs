//! Active health checking: one task per backend runs [`probe::Prober`] every interval (with
//! jitter) and reports each outcome to its pool's supervisor, which alone decides state.

pub mod cluster;
pub mod probe;
pub mod quay;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::probe::{ProbeOutcome, Prober};

/// A check result on its way to the pool supervisor.
#[derive(Debug)]
pub struct CheckReport {
    /// Backend that was checked.
    pub backend: SocketAddr,
    /// What the probe saw.
    pub outcome: ProbeOutcome,
    /// True for the start-up check.
    pub initial: bool,
}

/// Jitter is up to a tenth of the interval, so checks of many backends drift apart.
fn jittered(interval: Duration) -> Duration {
    let max = interval / 10;
    if max.is_zero() {
        return interval;
    }
    interval + rand::thread_rng().gen_range(Duration::ZERO..=max)
}

/// The wait between a backend's first check and its second: anywhere from a tenth of the
/// interval to all of it. Every backend's first check runs at once (the start-up round, or a
/// reload), so without this a pool's checks would stay bunched in bursts — 1,000 backends every
/// 2 s gave 3,000+ checks/s in the busiest 100 ms against a mean of 500/s (docs/benchmarks.md)
/// — and drift apart only by the jitter. Never longer than `interval`, so detection stays
/// within `fall × interval`.
fn first_gap(interval: Duration) -> Duration {
    let low = interval / 10;
    if low.is_zero() {
        return interval;
    }
    rand::thread_rng().gen_range(low..=interval)
}

/// Checks `backend` (probing `target`) until `stop` is cancelled or the supervisor goes away.
/// The first check runs at once and is flagged `initial` when `initial` is true; the second
/// starts after `first_gap` (which spreads a pool's checks over the interval), the next ones
/// every `interval` (plus jitter), start to start.
pub async fn run_checks(
    backend: SocketAddr,
    target: SocketAddr,
    prober: Arc<Prober>,
    interval: Duration,
    initial: bool,
    reports: mpsc::Sender<CheckReport>,
    stop: CancellationToken,
) {
    let mut first = true;
    // Checks start `interval` (plus jitter) apart, measured start to start: a check that runs
    // into its `timeout` must not stretch the period, or detecting a hung backend would take
    // `fall × (interval + timeout)` instead of `fall × interval + timeout`.
    let mut next_start = tokio::time::Instant::now();
    loop {
        if !first {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next_start) => {}
            }
        }
        let gap = if first {
            first_gap(interval)
        } else {
            jittered(interval)
        };
        next_start = tokio::time::Instant::now() + gap;
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            o = prober.probe(target) => o,
        };
        if let Err(e @ probe::ProbeError::LocalResources(_)) = &outcome.result {
            // The check could not even open a socket here: it did not run, and says nothing
            // about the backend (counting it would eject healthy backends when this process
            // runs out of descriptors). The next one is tried at the usual time.
            tracing::warn!(backend = %backend, error = %e, "health check not run: this machine is out of file descriptors or memory");
            first = false;
            continue;
        }
        let report = CheckReport {
            backend,
            outcome,
            initial: first && initial,
        };
        first = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = reports.send(report) => if sent.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_gap_spreads_over_the_interval_and_never_exceeds_it() {
        let interval = Duration::from_secs(2);
        let gaps: Vec<Duration> = (0..2000).map(|_| first_gap(interval)).collect();
        assert!(gaps.iter().all(|g| *g >= interval / 10 && *g <= interval));
        // Spread, not bunched: every tenth of the range gets some of them.
        for decile in 1..10u32 {
            let (from, to) = (interval * decile / 10, interval * (decile + 1) / 10);
            assert!(
                gaps.iter().any(|g| *g >= from && *g < to),
                "no first gap in {from:?}..{to:?}"
            );
        }
        assert_eq!(first_gap(Duration::from_nanos(5)), Duration::from_nanos(5));
    }
}
