//! The one immutable picture of a pool that everybody reads: the live set connections pick
//! from, every member's state, fail-open, the shared outage and the cluster health. The
//! supervisor alone builds it and publishes it with a single `ArcSwap::store`, so `/status`,
//! `/metrics` and the data path can never disagree about who is up.

use std::sync::Arc;

use super::backend::{Backend, BackendState};
use super::live_set::LiveSet;
use crate::config::PoolConfig;
use crate::health::cluster::ClusterHealth;

/// One member of the pool as of a snapshot.
#[derive(Debug, Clone)]
pub struct Member {
    /// Identity and counters (the counters keep moving; the rest of this struct does not).
    pub backend: Arc<Backend>,
    /// Its state.
    pub state: BackendState,
    /// Its configured weight.
    pub weight: u32,
    /// Why passive marking took it down, while that is why it is down.
    pub down_reason: Option<String>,
}

/// Everything published about a pool, consistent with itself.
#[derive(Debug)]
pub struct PoolSnapshot {
    /// The backends new connections go to, and the settings in force.
    pub live: LiveSet,
    /// Every member in config order, then removed ones still draining.
    pub members: Vec<Member>,
    /// Whether the live set is the down backends because none is up.
    pub fail_open: bool,
    /// Shared services in outage across the pool.
    pub shared_outage: Vec<String>,
    /// The latest `[pool.cluster_health]` result.
    pub cluster_health: Option<ClusterHealth>,
    /// Whether a reload removed the pool (it drains, then stops).
    pub retired: bool,
    /// Whether the retired pool has drained and stopped.
    pub finished: bool,
}

impl PoolSnapshot {
    /// A pool with no member yet, under `config`.
    pub fn empty(config: Arc<PoolConfig>) -> Self {
        PoolSnapshot {
            live: LiveSet::empty(config),
            members: Vec::new(),
            fail_open: false,
            shared_outage: Vec::new(),
            cluster_health: None,
            retired: false,
            finished: false,
        }
    }

    /// The settings this snapshot was built under.
    pub fn config(&self) -> &Arc<PoolConfig> {
        &self.live.config
    }

    /// Backends in state `up`.
    pub fn up_count(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.state == BackendState::Up)
            .count()
    }
}
