//! What goes into the pool's state machine ([`Event`]) and what comes out ([`Effect`]), as
//! plain data: the supervisor turns effects into tasks, cancellations, log lines and stores,
//! and a test can read them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::PoolConfig;
use crate::health::cluster::ClusterHealth;
use crate::health::quay::Services;
use crate::pool::snapshot::{Member, PoolSnapshot};
use crate::pool::{AdminAction, AdminError, BackendState, Reconfigured};

/// One health-check result, as the machine needs it (the counters and the `/status` record
/// are written by the supervisor before the event).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// Backend that was checked.
    pub backend: SocketAddr,
    /// Whether the check passed.
    pub pass: bool,
    /// Why, in words: `status 200`, `connected`, or the error.
    pub reason: String,
    /// Services the body reported, when it was a Quay health document.
    pub services: Option<Services>,
    /// True for the start-up check.
    pub initial: bool,
}

/// Something that happened to the pool.
#[derive(Debug, Clone)]
pub enum Event {
    /// A health check finished.
    Check(CheckResult),
    /// `passive_fall` consecutive data-path connects to `backend` failed.
    PassiveFailure {
        /// The backend.
        backend: SocketAddr,
        /// How many failed in a row.
        consecutive: u32,
    },
    /// An operator's action on one backend.
    Admin {
        /// The backend.
        backend: SocketAddr,
        /// What to do.
        action: AdminAction,
    },
    /// A member added through the admin API.
    AddBackend {
        /// Its address.
        address: SocketAddr,
        /// Its weight.
        weight: u32,
    },
    /// A member removed through the admin API.
    RemoveBackend {
        /// Its address.
        address: SocketAddr,
    },
    /// A reload's settings for this pool.
    Reconfigure {
        /// The new settings.
        config: Arc<PoolConfig>,
        /// Drain deadline for what leaves from now on.
        drain_timeout: Duration,
        /// `Some(checked)` when new check settings take effect (`checked`: something probes
        /// the backends now); `None` when the checks stay as they were.
        checks: Option<bool>,
    },
    /// DNS answered with this member list.
    Discovered(Vec<SocketAddr>),
    /// The pool was removed by a reload: drain everything, then stop.
    Retire {
        /// How long open connections may last.
        drain_timeout: Duration,
    },
    /// Time passed: start-up round deadline, drain deadlines, slow-start steps. Carries the
    /// open connections of draining members (missing ones have none).
    Tick {
        /// Open connections per draining member.
        open_connections: HashMap<SocketAddr, u64>,
    },
    /// The cluster-wide probe answered.
    ClusterHealth(ClusterHealth),
}

/// Severity of a [`LogLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Something an operator should look at.
    Warn,
    /// Something failed.
    Error,
}

/// One log line, as data. The fields are a fixed set so that the supervisor can hand them to
/// `tracing` as structured fields (absent ones are not written).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogLine {
    /// Severity.
    pub level: Level,
    /// The message.
    pub message: &'static str,
    /// The backend concerned.
    pub backend: Option<SocketAddr>,
    /// A state name (`up`, `down`, ...).
    pub state: Option<&'static str>,
    /// The state before an admin action.
    pub from: Option<&'static str>,
    /// An admin action's name.
    pub action: Option<&'static str>,
    /// Why.
    pub reason: Option<String>,
    /// A shared service's name.
    pub service: Option<String>,
    /// Services in outage, spelled out.
    pub services: Option<String>,
    /// Backends up (start-up round).
    pub up: Option<usize>,
    /// Backends in all (start-up round).
    pub total: Option<usize>,
    /// Open connections of a backend.
    pub open_connections: Option<u64>,
    /// A backend's weight.
    pub weight: Option<u32>,
    /// An HTTP status.
    pub status: Option<u16>,
    /// An error's text.
    pub error: Option<String>,
}

impl LogLine {
    /// A line at `level` saying `message`, with no fields yet.
    pub fn new(level: Level, message: &'static str) -> Self {
        LogLine {
            level,
            message,
            ..LogLine::default()
        }
    }

    /// The same line about `backend`.
    pub fn backend(mut self, backend: SocketAddr) -> Self {
        self.backend = Some(backend);
        self
    }
}

/// The answer to a command that has a caller waiting.
#[derive(Debug, Clone)]
pub enum Reply {
    /// To [`Event::Admin`]: the backend's new state.
    Admin(Result<BackendState, AdminError>),
    /// To [`Event::AddBackend`]: the member as published.
    Added(Result<Member, AdminError>),
    /// To [`Event::RemoveBackend`].
    Removed(Result<(), AdminError>),
    /// To [`Event::Reconfigure`]: who joined and left.
    Reconfigured(Reconfigured),
}

/// Something the supervisor must do, in the order given.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Start the check task of `backend` (its first check flagged `initial` when so).
    StartChecks {
        /// The backend.
        backend: SocketAddr,
        /// Whether its first check is part of the start-up round.
        initial: bool,
    },
    /// Stop the check task of `backend`.
    StopChecks {
        /// The backend.
        backend: SocketAddr,
    },
    /// (Re)start the `[pool.cluster_health]` probe with the settings now in force.
    StartClusterProbe,
    /// Stop the cluster probe.
    StopClusterProbe,
    /// (Re)start DNS discovery with the settings now in force.
    StartDiscovery,
    /// Stop DNS discovery.
    StopDiscovery,
    /// Close every open connection of `backend` (its drain deadline passed).
    CutConnections {
        /// The backend.
        backend: SocketAddr,
    },
    /// Connections made to `backend` from now on must not be born cut (it was enabled again).
    RearmCut {
        /// The backend.
        backend: SocketAddr,
    },
    /// Forget `backend`'s consecutive connect failures: it came up, so passive marking re-arms.
    ResetConnectFailures {
        /// The backend.
        backend: SocketAddr,
    },
    /// Write a log line.
    Log(LogLine),
    /// Store this snapshot (the one store readers see).
    Publish(Arc<PoolSnapshot>),
    /// The start-up round of checks is over (listeners may open).
    StartupRoundDone,
    /// Answer the waiting caller.
    Reply(Reply),
    /// The retired pool has drained: the supervisor ends.
    Stop,
}
