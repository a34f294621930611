//! Wires a validated config into running parts: pools (with their supervisors and checks),
//! listeners and the admin API. Owns the cancellation tokens and task trackers, and so the
//! order of start-up and shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, ListenerConfig};
use crate::health::probe::ProbeSetupError;
use crate::net::listener::{self, ListenerError};
use crate::pool::{self, Pool};
use crate::proxy::{self, ListenerCtx};

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener (or the admin API) could not bind.
    #[error(transparent)]
    Listen(#[from] ListenerError),
    /// A pool's health-check setup failed (TLS settings).
    #[error("pool {pool}: cannot set up health checks")]
    Health {
        /// Pool name.
        pool: String,
        /// Cause.
        #[source]
        source: ProbeSetupError,
    },
    /// Registering a socket with the runtime failed.
    #[error("cannot register the socket for {addr} with the runtime")]
    Register {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Sockets bound before anything starts, so "address in use" is found before health checks run
/// and tests can bind port 0 and learn the port.
pub struct Bound {
    listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
    admin: Option<std::net::TcpListener>,
}

impl Bound {
    /// Binds every listener and the admin API of `config`.
    pub fn bind(config: &Config) -> Result<Bound, AppError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            listeners.push((l.clone(), listener::bind(l.bind, l.backlog)?));
        }
        let admin = match &config.admin {
            Some(a) => Some(listener::bind(a.bind, 128)?),
            None => None,
        };
        Ok(Bound { listeners, admin })
    }
}

/// What the admin API reads: the running parts and the process's readiness.
#[derive(Debug)]
pub struct AppState {
    /// When the process started serving.
    pub started: Instant,
    /// Pools in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Listeners in config order.
    pub listeners: Vec<Arc<ListenerCtx>>,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl AppState {
    /// 200 on `/ready`: listeners accept and every pool can place a connection.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
            && self.pools.iter().all(|p| p.has_live_backend())
    }

    /// Pools now serving (config order).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.clone()
    }

    /// Listeners now accepting (config order).
    pub fn listeners(&self) -> Vec<Arc<ListenerCtx>> {
        self.listeners.clone()
    }

    /// Config reloads so far: (succeeded, failed).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// A running splicer.
pub struct Running {
    state: Arc<AppState>,
    admin_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    stop_accepting: CancellationToken,
    stop_connections: CancellationToken,
    stop_background: CancellationToken,
    connections: TaskTracker,
    background: TaskTracker,
}

/// Longest wait for the start-up health round beyond the largest check timeout.
const STARTUP_SLACK: Duration = Duration::from_millis(500);
/// Time tasks get to finish once told to stop, before shutdown gives up on them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Starts pools, runs the start-up health round, then opens the listeners.
pub async fn start(config: Config, bound: Bound) -> Result<Running, AppError> {
    let background = TaskTracker::new();
    let connections = TaskTracker::new();
    let stop_background = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let stop_connections = CancellationToken::new();

    let mut pools = Vec::with_capacity(config.pools.len());
    let mut initial_rounds = Vec::new();
    for p in &config.pools {
        let started =
            pool::start(p.clone(), &background, stop_background.clone()).map_err(|source| {
                AppError::Health {
                    pool: p.name.clone(),
                    source,
                }
            })?;
        pools.push(started.pool);
        initial_rounds.push(started.initial_round);
    }

    let mut listeners = Vec::with_capacity(bound.listeners.len());
    let mut sockets = Vec::with_capacity(bound.listeners.len());
    for (lc, socket) in bound.listeners {
        let local = socket.local_addr().unwrap_or(lc.bind);
        let Some(pool) = pools.iter().find(|p| *p.name == *lc.pool).cloned() else {
            // Validation guarantees the pool exists; an unknown one is skipped, not a panic.
            tracing::error!(listener = %lc.name, pool = %lc.pool, "listener names an unknown pool");
            continue;
        };
        let tokio_listener =
            TcpListener::from_std(socket).map_err(|source| AppError::Register {
                addr: local,
                source,
            })?;
        listeners.push(Arc::new(ListenerCtx::new(
            lc,
            local,
            pool,
            config.runtime.access_log,
        )));
        sockets.push(tokio_listener);
    }

    let state = Arc::new(AppState {
        started: Instant::now(),
        pools,
        listeners,
        listening: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
    });

    let mut admin_addr = None;
    if let Some(socket) = bound.admin {
        let addr = socket.local_addr().ok();
        let listener = TcpListener::from_std(socket).map_err(|source| AppError::Register {
            addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            source,
        })?;
        admin_addr = addr;
        background.spawn(admin::serve(
            listener,
            state.clone(),
            stop_background.clone(),
        ));
    }

    // Listeners open once every backend had its first check (each pool bounds its own round).
    let longest = config
        .pools
        .iter()
        .map(|p| p.health.timeout)
        .max()
        .unwrap_or_default();
    let _ = tokio::time::timeout(longest + STARTUP_SLACK, async {
        for round in initial_rounds {
            let _ = round.await;
        }
    })
    .await;

    for (ctx, socket) in state.listeners.iter().cloned().zip(sockets) {
        let limit = match ctx.config.max_connections {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))),
        };
        let conns = connections.clone();
        let stop_conn = stop_connections.clone();
        let accept_stop = stop_accepting.clone();
        tracing::info!(listener = %ctx.config.name, bind = %ctx.local_addr, pool = %ctx.pool.name, "listening");
        background.spawn(async move {
            let name = ctx.config.name.clone();
            listener::accept_loop(&name, socket, limit, accept_stop, |accepted| {
                conns.spawn(proxy::serve(ctx.clone(), accepted, stop_conn.clone()));
            })
            .await;
            tracing::info!(listener = %name, "stopped accepting");
        });
    }
    state.listening.store(true, Ordering::Release);

    Ok(Running {
        state,
        admin_addr,
        drain_timeout: config.runtime.drain_timeout,
        stop_accepting,
        stop_connections,
        stop_background,
        connections,
        background,
    })
}

impl Running {
    /// Shared state (what the admin API reads).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Actual address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state
            .listeners
            .iter()
            .find(|l| l.config.name == name)
            .map(|l| l.local_addr)
    }

    /// Actual address of the admin API.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Graceful stop: stop accepting (and answer 503 on `/ready`), let open connections finish
    /// for up to `drain_timeout`, cut the rest, stop checks and the admin API. Returns whether
    /// every connection finished by itself.
    pub async fn shutdown(self) -> bool {
        self.state.shutting_down.store(true, Ordering::Release);
        self.stop_accepting.cancel();
        self.connections.close();
        let open = self.connections.len();
        tracing::info!(open_connections = open, drain_timeout = ?self.drain_timeout, "shutting down: draining connections");
        let drained = tokio::time::timeout(self.drain_timeout, self.connections.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                open_connections = self.connections.len(),
                "drain timeout reached: closing the remaining connections"
            );
            self.stop_connections.cancel();
            let _ = tokio::time::timeout(STOP_GRACE, self.connections.wait()).await;
        }
        self.stop_background.cancel();
        self.background.close();
        let _ = tokio::time::timeout(STOP_GRACE, self.background.wait()).await;
        tracing::info!(drained, "stopped");
        drained
    }
}
