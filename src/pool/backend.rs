//! One backend: its identity, its state as last published by the pool supervisor, and the
//! counters the data path bumps. The data path only touches atomics here; the one mutex
//! (`last_check`) is written by the supervisor and read by the admin API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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

    fn to_u8(self) -> u8 {
        match self {
            BackendState::Up => 0,
            BackendState::Down => 1,
            BackendState::Draining => 2,
            BackendState::Disabled => 3,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => BackendState::Up,
            2 => BackendState::Draining,
            3 => BackendState::Disabled,
            _ => BackendState::Down,
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
}

/// One member of a pool.
#[derive(Debug)]
pub struct Backend {
    /// Name of the pool it belongs to.
    pub pool: Arc<str>,
    /// Where connections go.
    pub address: SocketAddr,
    /// Relative share of new connections.
    pub weight: u32,
    state: AtomicU8,
    active: AtomicU64,
    total: AtomicU64,
    connect_failures: AtomicU64,
    consecutive_connect_failures: AtomicU32,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    last_check: Mutex<Option<CheckRecord>>,
}

impl Backend {
    /// A backend in state `state` with zeroed counters.
    pub fn new(pool: Arc<str>, address: SocketAddr, weight: u32, state: BackendState) -> Self {
        Backend {
            pool,
            address,
            weight,
            state: AtomicU8::new(state.to_u8()),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            last_check: Mutex::new(None),
        }
    }

    /// Current state (as last published by the pool supervisor).
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Only the pool supervisor calls this, right before it publishes a new live set.
    pub(crate) fn set_state(&self, state: BackendState) {
        self.state.store(state.to_u8(), Ordering::Release);
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

    /// Records a failed data-path connect; returns the consecutive-failure count.
    pub fn record_connect_failure(&self) -> u32 {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
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
