//! A pool: its backends, the live set connections pick from, and the supervisor task that is
//! the only writer of health state. The data path calls [`Pool::pick`] (one `ArcSwap::load`)
//! and reports connect failures through a non-blocking channel.

mod backend;
mod live_set;
mod supervisor;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::balance;
use crate::config::PoolConfig;
use crate::net::connect::ConnectFailure;

pub use backend::{Backend, BackendState, CheckDurations, CheckRecord, Lease, CHECK_DURATION_BUCKETS};
pub use live_set::LiveSet;
pub use supervisor::{start, Started};

/// Messages from the data path to the supervisor.
#[derive(Debug)]
pub(crate) enum PoolEvent {
    /// `passive_fall` consecutive connects to this backend failed.
    PassiveFailure {
        backend: SocketAddr,
        consecutive: u32,
    },
}

/// One pool of backends.
#[derive(Debug)]
pub struct Pool {
    /// Pool name.
    pub name: Arc<str>,
    /// Its settings.
    pub config: PoolConfig,
    members: ArcSwap<Vec<Arc<Backend>>>,
    live: ArcSwap<LiveSet>,
    fail_open: AtomicBool,
    events: mpsc::UnboundedSender<PoolEvent>,
}

impl Pool {
    /// Every backend, in config order (for `/status`).
    pub fn members(&self) -> Arc<Vec<Arc<Backend>>> {
        self.members.load_full()
    }

    /// The current live set.
    pub fn live(&self) -> arc_swap::Guard<Arc<LiveSet>> {
        self.live.load()
    }

    /// Whether the pool is failing open (no backend up, spreading over down ones).
    pub fn is_failing_open(&self) -> bool {
        self.fail_open.load(Ordering::Relaxed)
    }

    /// Whether a new connection could be placed now.
    pub fn has_live_backend(&self) -> bool {
        !self.live.load().is_empty()
    }

    /// Picks a backend for a new connection from `client`, skipping `exclude`.
    pub fn pick(&self, client: IpAddr, exclude: &[SocketAddr]) -> Option<Arc<Backend>> {
        balance::pick(self.config.balance, &self.live.load(), client, exclude)
    }

    /// Records a failed data-path connect; tells the supervisor once the passive threshold is hit.
    pub fn report_connect_failure(&self, backend: &Backend, reason: ConnectFailure) {
        let consecutive = backend.record_connect_failure(reason);
        let fall = self.config.passive_fall;
        // Exactly one failure sees the count equal to the threshold, so one message per episode.
        if fall > 0 && consecutive == fall {
            let _ = self.events.send(PoolEvent::PassiveFailure {
                backend: backend.address,
                consecutive,
            });
        }
    }
}
