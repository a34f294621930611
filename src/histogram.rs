//! Fixed-bucket histograms the data path and the health checkers record into: one relaxed
//! `fetch_add` for the bucket and one for the sum, no lock and no allocation, so recording costs
//! a connection next to nothing and a scrape never waits on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of `splicer_health_check_duration_seconds`: checks take from well
/// under a millisecond on a LAN to the whole timeout, and Quay's own check can take seconds.
pub const CHECK_DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds (seconds) of `splicer_backend_connect_duration_seconds`: a TCP handshake takes
/// tens of microseconds on loopback, well under a millisecond on a LAN and tens of milliseconds
/// across regions; the top buckets catch SYN retransmits (1 s, 3 s) before `connect_timeout`.
pub const CONNECT_DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds (seconds) of `splicer_listener_connection_duration_seconds`: from refused or
/// one-request connections (milliseconds) to image pulls and idle keep-alives (minutes) and
/// long-lived streams (an hour and more lands in `+Inf`).
pub const CONNECTION_DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A histogram of durations over the `N` upper bounds in `bounds` (seconds, increasing).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Observations at or below each bound and above the previous one (not cumulative).
    buckets: [AtomicU64; N],
    /// Observations above the last bound.
    overflow: AtomicU64,
    /// Sum of observations in microseconds: u64 holds half a million years of them.
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        // At most 16 bounds: a scan over one cache line beats a binary search's branches.
        match self.bounds.iter().position(|&b| secs <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// (sum in seconds, count, cumulative counts per bound), for the encoder.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut out = Vec::with_capacity(N);
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            cumulative += bucket.load(Ordering::Relaxed);
            out.push((*bound, cumulative));
        }
        let count = cumulative + self.overflow.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, out)
    }
}

/// `splicer_health_check_duration_seconds` of one backend.
pub type CheckDurations = Histogram<{ CHECK_DURATION_BUCKETS.len() }>;

/// `splicer_backend_connect_duration_seconds` of one backend.
pub type ConnectDurations = Histogram<{ CONNECT_DURATION_BUCKETS.len() }>;

/// `splicer_listener_connection_duration_seconds` of one listener.
pub type ConnectionDurations = Histogram<{ CONNECTION_DURATION_BUCKETS.len() }>;

impl Default for CheckDurations {
    fn default() -> Self {
        Histogram::new(&CHECK_DURATION_BUCKETS)
    }
}

impl Default for ConnectDurations {
    fn default() -> Self {
        Histogram::new(&CONNECT_DURATION_BUCKETS)
    }
}

impl Default for ConnectionDurations {
    fn default() -> Self {
        Histogram::new(&CONNECTION_DURATION_BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_increase() {
        for bounds in [
            &CHECK_DURATION_BUCKETS[..],
            &CONNECT_DURATION_BUCKETS[..],
            &CONNECTION_DURATION_BUCKETS[..],
        ] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }

    #[test]
    fn observations_land_in_their_bucket_and_the_sum() {
        let h = Histogram::new(&[0.001, 0.01, 1.0]);
        for ms in [0, 1, 2, 10, 500, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, cumulative) = h.snapshot();
        // A bound is inclusive: 1 ms is in the 0.001 bucket, 10 ms in the 0.01 one.
        assert_eq!(cumulative, vec![(0.001, 2), (0.01, 4), (1.0, 5)]);
        assert_eq!(count, 6);
        assert!((sum - 2.513).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn defaults_use_their_bounds() {
        assert_eq!(ConnectDurations::default().snapshot().2.len(), 15);
        assert_eq!(ConnectionDurations::default().snapshot().2.len(), 16);
        assert_eq!(CheckDurations::default().snapshot().2.len(), 12);
    }
}
