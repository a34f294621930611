//! One backend: its identity and the counters the data path and the checks bump. Its state
//! (up, down, weight, why) is not here but in the pool's published
//! [`PoolSnapshot`](super::PoolSnapshot). The data path only touches atomics here; the one
//! mutex (`last_check`, the latest observation) is written by the supervisor and read by the
//! admin API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::histogram::{CheckDurations, ConnectDurations};
use crate::net::connect::ConnectFailure;

/// Administrative and health state of a backend, as shown on `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Passing checks; receives new connections.
    Up,
    /// Failing checks (or passive failures); receives new connections only when failing open.
    Down,
    /// No new connections; open ones continue.
    Draining,
    /// No new connections and no checks.
    Disabled,
}

impl BackendState {
    /// The spelling on `/status` and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
        }
    }
}

/// The latest health-check result of a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRecord {
    /// Whether the check passed.
    pub ok: bool,
    /// HTTP status, when one arrived.
    pub status: Option<u16>,
    /// Time the check took.
    pub latency: Duration,
    /// Why it failed.
    pub error: Option<String>,
    /// When it finished.
    pub at: SystemTime,
    /// Services the health body reported, when it was a Quay health document.
    pub services: Option<crate::health::quay::Services>,
}

/// One member of a pool.
#[derive(Debug)]
pub struct Backend {
    /// Name of the pool it belongs to.
    pub pool: Arc<str>,
    /// Where connections go.
    pub address: SocketAddr,
    /// Cancelled when a drain's deadline passes: cuts this backend's open connections.
    cut: ArcSwap<CancellationToken>,
    active: AtomicU64,
    total: AtomicU64,
    connect_failures: AtomicU64,
    connect_failures_by_reason: [AtomicU64; ConnectFailure::ALL.len()],
    consecutive_connect_failures: AtomicU32,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    check_duration: CheckDurations,
    connect_duration: ConnectDurations,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    last_check: Mutex<Option<CheckRecord>>,
}

impl Backend {
    /// A backend of `pool` at `address` with zeroed counters.
    pub fn new(pool: Arc<str>, address: SocketAddr) -> Self {
        Backend {
            pool,
            address,
            cut: ArcSwap::from_pointee(CancellationToken::new()),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            connect_failures_by_reason: Default::default(),
            consecutive_connect_failures: AtomicU32::new(0),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            check_duration: CheckDurations::default(),
            connect_duration: ConnectDurations::default(),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            last_check: Mutex::new(None),
        }
    }

    /// The token a new connection watches: cancelled when a drain of this backend times out.
    pub fn cut_token(&self) -> CancellationToken {
        CancellationToken::clone(&self.cut.load())
    }

    /// Cuts every open connection (drain deadline passed).
    pub(crate) fn cut_connections(&self) {
        self.cut.load().cancel();
    }

    /// Makes sure connections made from now on are not born cut (after a drain ended in a cut
    /// and the backend was enabled again).
    pub(crate) fn rearm_cut(&self) {
        if self.cut.load().is_cancelled() {
            self.cut.store(Arc::new(CancellationToken::new()));
        }
    }

    /// Proxied connections open now.
    pub fn active_connections(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Proxied connections ever established.
    pub fn total_connections(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Data-path connect failures (health checks are not counted).
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Bytes moved client → backend so far.
    pub fn bytes_to_backend(&self) -> u64 {
        self.bytes_to_backend.load(Ordering::Relaxed)
    }

    /// Bytes moved backend → client so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.bytes_to_client.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes toward the backend.
    pub fn add_bytes_to_backend(&self, n: u64) {
        self.bytes_to_backend.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes toward the client.
    pub fn add_bytes_to_client(&self, n: u64) {
        self.bytes_to_client.fetch_add(n, Ordering::Relaxed);
    }

    /// Data-path connect failures for one reason.
    pub fn connect_failures_for(&self, reason: ConnectFailure) -> u64 {
        self.connect_failures_by_reason[reason.index()].load(Ordering::Relaxed)
    }

    /// Health checks that passed and failed so far.
    pub fn checks(&self) -> (u64, u64) {
        (
            self.checks_passed.load(Ordering::Relaxed),
            self.checks_failed.load(Ordering::Relaxed),
        )
    }

    /// Distribution of health-check durations.
    pub fn check_durations(&self) -> &CheckDurations {
        &self.check_duration
    }

    /// Distribution of successful data-path connect times.
    pub fn connect_durations(&self) -> &ConnectDurations {
        &self.connect_duration
    }

    /// Records how long a successful data-path connect took.
    pub fn record_connect_duration(&self, took: Duration) {
        self.connect_duration.observe(took);
    }

    /// Only the pool supervisor counts checks.
    pub(crate) fn record_check(&self, pass: bool, took: Duration) {
        let counter = if pass {
            &self.checks_passed
        } else {
            &self.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.check_duration.observe(took);
    }

    /// Records a failed data-path connect; returns the consecutive-failure count.
    pub fn record_connect_failure(&self, reason: ConnectFailure) -> u32 {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.connect_failures_by_reason[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.consecutive_connect_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Records a successful connect and hands out the lease that counts the connection.
    pub fn connected(self: &Arc<Self>) -> Lease {
        // Skip the store when already zero: keeps the hot path free of needless cache-line writes.
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Lease {
            backend: Arc::clone(self),
        }
    }

    /// Forgets past connect failures once the backend is back up, so passive marking re-arms.
    pub(crate) fn reset_consecutive_failures(&self) {
        self.consecutive_connect_failures
            .store(0, Ordering::Relaxed);
    }

    /// Latest health-check result.
    pub fn last_check(&self) -> Option<CheckRecord> {
        self.last_check.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// Only the pool supervisor records checks.
    pub(crate) fn set_last_check(&self, record: CheckRecord) {
        if let Ok(mut g) = self.last_check.lock() {
            *g = Some(record);
        }
    }
}

/// One open proxied connection to a backend; dropping it decrements the active count.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
}

impl Lease {
    /// The backend this connection goes to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}
