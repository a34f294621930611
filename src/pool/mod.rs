//! A pool: its backends, the one snapshot everybody reads, and the supervisor task that alone
//! writes it. The data path calls [`Pool::pick`] (one `ArcSwap::load`) and reports connect
//! failures through a non-blocking channel; the admin API and reloads send the supervisor
//! commands and await its answer. The decisions themselves are the pure [`machine`].

mod backend;
pub mod balance;
mod live_set;
pub mod machine;
mod snapshot;
mod supervisor;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::config::PoolConfig;
use crate::health::cluster::ClusterHealth;
use crate::net::connect::ConnectFailure;

pub use backend::{Backend, BackendState, CheckRecord, Lease};
pub use live_set::LiveSet;
pub use snapshot::{Member, PoolSnapshot};
pub use supervisor::{start, start_prepared, PreparedProber, Started};

/// An operator's action on one backend (admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// No new connections; open ones continue up to `drain_timeout`; checks go on.
    Drain,
    /// No new connections and no checks until enabled.
    Disable,
    /// Back to what the checks say (from draining) or down needing `rise` passes (from disabled).
    Enable,
}

impl AdminAction {
    /// The spelling in the admin API path.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::Drain => "drain",
            AdminAction::Disable => "disable",
            AdminAction::Enable => "enable",
        }
    }
}

/// Why an admin action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No pool has that name.
    #[error("no pool named {0}")]
    UnknownPool(String),
    /// The pool has no backend with that address.
    #[error("pool {pool} has no backend {address}")]
    UnknownBackend {
        /// Pool name.
        pool: String,
        /// The address asked for.
        address: SocketAddr,
    },
    /// The backend was removed by a reload and is only draining its last connections.
    #[error("backend {address} of pool {pool} was removed by a reload and is draining")]
    Removed {
        /// Pool name.
        pool: String,
        /// The address.
        address: SocketAddr,
    },
    /// The pool is shutting down (removed by reload, or the process is stopping).
    #[error("pool {0} is shutting down")]
    Stopped(String),
    /// The pool already has a backend at that address (membership change).
    #[error("pool {pool} already has backend {address}")]
    Exists {
        /// Pool name.
        pool: String,
        /// The address.
        address: SocketAddr,
    },
    /// The pool's members come from DNS (`discover`), so they are not changed by hand.
    #[error("pool {0} takes its members from DNS (discover); change the DNS records instead")]
    Discovered(String),
}

/// What a reconfiguration changed in one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Backends that joined (they start down and need `rise` passes).
    pub added: Vec<SocketAddr>,
    /// Backends that left (they drain).
    pub removed: Vec<SocketAddr>,
}

/// Messages to the supervisor.
#[derive(Debug)]
pub(crate) enum Command {
    /// `passive_fall` consecutive connects to this backend failed.
    PassiveFailure {
        backend: SocketAddr,
        consecutive: u32,
    },
    /// An operator's action.
    Admin {
        backend: SocketAddr,
        action: AdminAction,
        reply: oneshot::Sender<Result<BackendState, AdminError>>,
    },
    /// A reload's new settings for this pool.
    Reconfigure {
        config: Box<PoolConfig>,
        drain_timeout: Duration,
        prober: Option<PreparedProber>,
        reply: oneshot::Sender<Reconfigured>,
    },
    /// The pool was removed by a reload: drain everything, then stop.
    Retire {
        drain_timeout: Duration,
        reply: oneshot::Sender<()>,
    },
    /// A member added at run time (admin API); it joins like one a reload adds.
    AddBackend {
        address: SocketAddr,
        weight: u32,
        reply: oneshot::Sender<Result<Member, AdminError>>,
    },
    /// A member removed at run time (admin API); it drains like one a reload removes.
    RemoveBackend {
        address: SocketAddr,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
}

/// One pool of backends.
#[derive(Debug)]
pub struct Pool {
    /// Pool name.
    pub name: Arc<str>,
    /// Written only by the supervisor, one store per change.
    snapshot: ArcSwap<PoolSnapshot>,
    discovery_failures: Arc<std::sync::atomic::AtomicU64>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Pool {
    /// The pool as last published: live set, members' states, fail-open, outage, cluster
    /// health, all from one consistent moment.
    pub fn snapshot(&self) -> Arc<PoolSnapshot> {
        self.snapshot.load_full()
    }

    /// Every backend, in config order, including removed ones still draining (for `/status`).
    pub fn members(&self) -> Vec<Arc<Backend>> {
        let snapshot = self.snapshot.load();
        snapshot.members.iter().map(|m| m.backend.clone()).collect()
    }

    /// The settings now in force.
    pub fn config(&self) -> Arc<PoolConfig> {
        Arc::clone(self.snapshot.load().config())
    }

    /// Whether the pool is failing open (no backend up, spreading over down ones).
    pub fn is_failing_open(&self) -> bool {
        self.snapshot.load().fail_open
    }

    /// Shared services now in outage across the pool (backends failing only on them stay up).
    pub fn shared_outage(&self) -> Vec<String> {
        self.snapshot.load().shared_outage.clone()
    }

    /// The latest `[pool.cluster_health]` result, if the pool has one.
    pub fn cluster_health(&self) -> Option<ClusterHealth> {
        self.snapshot.load().cluster_health.clone()
    }

    /// DNS resolutions that failed (pools with `discover`); the last known members stayed.
    pub fn discovery_failures(&self) -> u64 {
        self.discovery_failures.load(Ordering::Relaxed)
    }

    /// Whether a reload removed this pool (it drains, then disappears).
    pub fn is_retired(&self) -> bool {
        self.snapshot.load().retired
    }

    /// Whether a retired pool has drained its last connection and stopped.
    pub fn is_finished(&self) -> bool {
        self.snapshot.load().finished
    }

    /// Whether a new connection could be placed now.
    pub fn has_live_backend(&self) -> bool {
        !self.snapshot.load().live.is_empty()
    }

    /// Picks a backend for a new connection from `client`, skipping `exclude`.
    pub fn pick(&self, client: IpAddr, exclude: &[SocketAddr]) -> Option<Arc<Backend>> {
        let snapshot = self.snapshot.load();
        let set = &snapshot.live;
        balance::pick(set.config.balance, set, client, exclude)
    }

    /// Records a failed data-path connect; tells the supervisor once the passive threshold is hit.
    pub fn report_connect_failure(&self, backend: &Backend, reason: ConnectFailure) {
        let consecutive = backend.record_connect_failure(reason);
        let fall = self.snapshot.load().config().passive_fall;
        // Exactly one failure sees the count equal to the threshold, so one message per episode.
        if fall > 0 && consecutive == fall {
            let _ = self.commands.send(Command::PassiveFailure {
                backend: backend.address,
                consecutive,
            });
        }
    }

    /// Applies an operator's action to the backend at `address`; answers its new state.
    pub async fn admin(
        &self,
        address: SocketAddr,
        action: AdminAction,
    ) -> Result<BackendState, AdminError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || AdminError::Stopped(self.name.to_string());
        self.commands
            .send(Command::Admin {
                backend: address,
                action,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Adds a member at `address` (admin API): it starts down and needs `rise` passes, as a
    /// backend a reload adds. Refused for an existing member and for a pool fed by DNS.
    pub async fn add_backend(
        &self,
        address: SocketAddr,
        weight: u32,
    ) -> Result<Member, AdminError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || AdminError::Stopped(self.name.to_string());
        self.commands
            .send(Command::AddBackend {
                address,
                weight,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Removes the member at `address` (admin API): it drains, and leaves once its last
    /// connection ends or `drain_timeout` passes, as a backend a reload removes. A backend
    /// already leaving is no error.
    pub async fn remove_backend(&self, address: SocketAddr) -> Result<(), AdminError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || AdminError::Stopped(self.name.to_string());
        self.commands
            .send(Command::RemoveBackend { address, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Applies a reload's settings (members, weights, checks); answers who joined and left.
    /// `prober`: the health-check client for changed check settings, built off the runtime
    /// (without it the supervisor builds one itself, reading files on its thread).
    pub async fn reconfigure(
        &self,
        config: PoolConfig,
        drain_timeout: Duration,
        prober: Option<PreparedProber>,
    ) -> Reconfigured {
        let (reply, answer) = oneshot::channel();
        let sent = self.commands.send(Command::Reconfigure {
            config: Box::new(config),
            drain_timeout,
            prober,
            reply,
        });
        if sent.is_err() {
            return Reconfigured::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Removes the pool: every backend drains for up to `drain_timeout`, then the pool stops.
    /// Returns once the supervisor has published the pool as retired (or has stopped).
    pub async fn retire(&self, drain_timeout: Duration) {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Retire {
                drain_timeout,
                reply,
            })
            .is_ok()
        {
            let _ = answer.await;
        }
    }
}
