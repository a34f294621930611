//! Wires a validated config into running parts: pools (with their supervisors and checks),
//! listeners and the admin API, and applies reloads as a diff. Owns the cancellation tokens and
//! task trackers, and so the order of start-up, reload and shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::admin;
use crate::config::{self, diff, AdminToken, Config, ListenerConfig};
use crate::health::probe::ProbeSetupError;
use crate::net::listener::{self, ListenerError};
use crate::pool::{self, Pool};
use crate::proxy::{self, ListenerCounters, ListenerCtx};

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
    /// The access log's writer thread could not start.
    #[error("cannot start the access log")]
    AccessLog(#[source] std::io::Error),
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

/// What a successful reload changed (the `/reload` answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Listeners opened (by name).
    pub listeners_added: Vec<String>,
    /// Listeners closed (by name).
    pub listeners_removed: Vec<String>,
    /// `pool/address` of backends added.
    pub backends_added: Vec<String>,
    /// `pool/address` of backends removed (now draining).
    pub backends_removed: Vec<String>,
    /// Settings changed on kept listeners and pools and of the process (`ConfigDiff`).
    pub settings_changed: Vec<String>,
}

/// A listener's accept loop and what it needs to be stopped or restarted.
struct AcceptLoop {
    name: String,
    socket: Arc<TcpListener>,
    stop: CancellationToken,
}

/// Everything a reload reads and replaces; behind one async mutex, so reloads run one at a time.
struct Control {
    config: Config,
    loops: Vec<AcceptLoop>,
}

/// What the admin API reads and drives: the running parts and the process's readiness.
pub struct AppState {
    /// When the process started serving.
    pub started: Instant,
    pools: ArcSwap<Vec<Arc<Pool>>>,
    listeners: ArcSwap<Vec<Arc<ListenerCtx>>>,
    admin_token: ArcSwap<Option<AdminToken>>,
    drain_timeout: ArcSwap<Duration>,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    control: tokio::sync::Mutex<Control>,
    access_log: std::sync::OnceLock<AccessLog>,
    background: TaskTracker,
    connections: TaskTracker,
    stop_background: CancellationToken,
    stop_accepting: CancellationToken,
    stop_connections: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("pools", &self.pools.load().len())
            .field("listeners", &self.listeners.load().len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// 200 on `/ready`: listeners accept and every pool can place a connection.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
            && self
                .pools
                .load()
                .iter()
                .filter(|p| !p.is_retired())
                .all(|p| p.has_live_backend())
    }

    /// Pools now serving, then pools removed by reload that are still draining (a removed
    /// pool whose last connection ended is left out at once, not only at the next reload).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .load()
            .iter()
            .filter(|p| !p.is_finished())
            .cloned()
            .collect()
    }

    /// The pool named `name` (not a removed one).
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools
            .load()
            .iter()
            .find(|p| &*p.name == name && !p.is_retired())
            .cloned()
    }

    /// Listeners now accepting (config order).
    pub fn listeners(&self) -> Vec<Arc<ListenerCtx>> {
        self.listeners.load().iter().cloned().collect()
    }

    /// Config reloads so far: (succeeded, failed).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// The bearer token POST requests need, if one is configured.
    pub fn admin_token(&self) -> Arc<Option<AdminToken>> {
        self.admin_token.load_full()
    }

    /// Access-log lines dropped because the sink could not keep up.
    pub fn access_log_dropped(&self) -> u64 {
        self.access_log.get().map_or(0, |l| l.dropped())
    }

    /// The access log listeners should use under `config`. The writer thread starts the first
    /// time one is needed and is kept (a reload that turns logging off and on reuses it).
    fn access_log_for(&self, config: &Config) -> std::io::Result<AccessLog> {
        if !config.runtime.access_log {
            return Ok(AccessLog::disabled());
        }
        if let Some(log) = self.access_log.get() {
            return Ok(log.clone());
        }
        let log = AccessLog::stdout(config.runtime.log_format)?;
        Ok(self.access_log.get_or_init(|| log).clone())
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Re-reads the config file and applies it as a diff. An invalid file (or a new listener
    /// that cannot bind) changes nothing and returns every problem, one line each.
    pub async fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let mut control = self.control.lock().await;
        let path = control.config.source.clone();
        let result = match config::load(&path) {
            // During shutdown a reload could bind listeners that nothing would accept on.
            _ if self.is_shutting_down() => Err(vec![format!(
                "{}: not applied: shutting down",
                path.display()
            )]),
            Err(e) => Err(e.lines()),
            Ok(new) => self.apply(&mut control, new).await,
        };
        match &result {
            Ok(r) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    path = %path.display(),
                    listeners_added = ?r.listeners_added,
                    listeners_removed = ?r.listeners_removed,
                    backends_added = ?r.backends_added,
                    backends_removed = ?r.backends_removed,
                    "config reloaded"
                );
            }
            Err(lines) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), errors = ?lines, "config reload failed: nothing changed");
            }
        }
        result
    }

    async fn apply(&self, control: &mut Control, new: Config) -> Result<ReloadReport, Vec<String>> {
        let d = diff::diff(&control.config, &new);
        for setting in &d.needs_restart {
            tracing::warn!(setting, "this setting changes only at the next start");
        }
        let drain_timeout = new.runtime.drain_timeout;
        let drain_timeout_changed = drain_timeout != control.config.runtime.drain_timeout;

        // Everything that can fail comes first, so a failure leaves the running config as it was.
        let mut fresh_sockets = Vec::new();
        for name in &d.listeners_added {
            let Some(lc) = new.listeners.iter().find(|l| &l.name == name) else {
                continue;
            };
            let bound = listener::bind(lc.bind, lc.backlog).map_err(|e| {
                vec![format!(
                    "{}: listener {name}: {}",
                    new.source.display(),
                    error_chain(&e)
                )]
            })?;
            let socket = TcpListener::from_std(bound).map_err(|e| {
                vec![format!(
                    "{}: listener {name}: cannot register socket: {e}",
                    new.source.display()
                )]
            })?;
            fresh_sockets.push((name.clone(), Arc::new(socket)));
        }
        let mut started = Vec::new();
        for name in &d.pools_added {
            let Some(pc) = new.pool(name) else { continue };
            match pool::start(
                pc.clone(),
                drain_timeout,
                false,
                &self.background,
                self.stop_background.clone(),
            ) {
                Ok(s) => started.push(s.pool),
                Err(e) => {
                    for p in &started {
                        p.retire(Duration::ZERO);
                    }
                    return Err(vec![format!(
                        "{}: pool {name}: cannot set up health checks: {}",
                        new.source.display(),
                        error_chain(&e)
                    )]);
                }
            }
        }

        // Pools: reconfigure kept ones, retire removed ones.
        let old_pools = self.pools.load_full();
        let mut pools: Vec<Arc<Pool>> = Vec::with_capacity(new.pools.len());
        for pc in &new.pools {
            if let Some(p) = started.iter().find(|p| *p.name == *pc.name) {
                pools.push(p.clone());
            } else if let Some(p) = old_pools
                .iter()
                .find(|p| *p.name == *pc.name && !p.is_retired())
            {
                // A new drain_timeout alone changes no pool setting, but the supervisor uses
                // it for the next drain, so it must hear of it too.
                if d.pools_changed.contains(&pc.name) || drain_timeout_changed {
                    p.reconfigure(pc.clone(), drain_timeout).await;
                }
                pools.push(p.clone());
            }
        }
        for name in &d.pools_removed {
            if let Some(p) = old_pools
                .iter()
                .find(|p| *p.name == **name && !p.is_retired())
            {
                p.retire(drain_timeout);
            }
        }
        // Removed pools stay listed (as draining) until their last connection ends.
        pools.extend(
            old_pools
                .iter()
                .filter(|p| p.is_retired() && !p.is_finished())
                .cloned(),
        );

        // Listeners: stop removed and changed loops; start added and changed ones.
        let access_log_changed = new.runtime.access_log != control.config.runtime.access_log;
        let access_log = match self.access_log_for(&new) {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log; connections are not logged");
                AccessLog::disabled()
            }
        };
        let old_ctxs = self.listeners.load_full();
        for name in &d.listeners_removed {
            if let Some(pos) = control.loops.iter().position(|l| &l.name == name) {
                let gone = control.loops.remove(pos);
                gone.stop.cancel();
            }
        }
        let mut ctxs = Vec::with_capacity(new.listeners.len());
        for lc in &new.listeners {
            let Some(pool) = pools
                .iter()
                .find(|p| *p.name == *lc.pool && !p.is_retired())
                .cloned()
            else {
                continue;
            };
            let routes = route_pools(lc, &pools);
            let old_ctx = old_ctxs.iter().find(|c| c.config.name == lc.name);
            let fresh = fresh_sockets.iter().find(|(n, _)| n == &lc.name);
            let pools_moved = old_ctx.is_some_and(|c| {
                !Arc::ptr_eq(&c.pool, &pool)
                    || c.routes.len() != routes.len()
                    || c.routes
                        .iter()
                        .zip(&routes)
                        .any(|((_, a), (_, b))| !Arc::ptr_eq(a, b))
            });
            let restart = fresh.is_none()
                && (d.listeners_changed.contains(&lc.name) || access_log_changed || pools_moved);
            let socket = match fresh {
                Some((_, s)) => s.clone(),
                None => {
                    let Some(l) = control.loops.iter().find(|l| l.name == lc.name) else {
                        continue;
                    };
                    if !restart {
                        if let Some(c) = old_ctx {
                            ctxs.push(c.clone());
                        }
                        continue;
                    }
                    l.socket.clone()
                }
            };
            if restart {
                if let Some(pos) = control.loops.iter().position(|l| l.name == lc.name) {
                    control.loops.remove(pos).stop.cancel();
                }
            }
            let counters = match (fresh, old_ctx) {
                (None, Some(c)) => c.counters().clone(),
                _ => Arc::new(ListenerCounters::default()),
            };
            let local = socket.local_addr().unwrap_or(lc.bind);
            let ctx = Arc::new(ListenerCtx::new(
                lc.clone(),
                local,
                pool,
                routes,
                access_log.clone(),
                counters,
            ));
            control
                .loops
                .push(self.spawn_accept_loop(ctx.clone(), socket));
            ctxs.push(ctx);
        }

        self.pools.store(Arc::new(pools));
        self.listeners.store(Arc::new(ctxs));
        self.admin_token
            .store(Arc::new(new.admin.as_ref().and_then(|a| a.token.clone())));
        self.drain_timeout.store(Arc::new(drain_timeout));
        let report = ReloadReport {
            listeners_added: d.listeners_added.clone(),
            listeners_removed: d.listeners_removed.clone(),
            backends_added: d.backends_added.clone(),
            backends_removed: d.backends_removed.clone(),
            settings_changed: d.settings_changed.clone(),
        };
        control.config = new;
        Ok(report)
    }

    fn spawn_accept_loop(&self, ctx: Arc<ListenerCtx>, socket: Arc<TcpListener>) -> AcceptLoop {
        let limit = match ctx.config.max_connections {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))),
        };
        let stop = self.stop_accepting.child_token();
        let conns = self.connections.clone();
        let stop_conn = self.stop_connections.clone();
        let name = ctx.config.name.clone();
        tracing::info!(listener = %name, bind = %ctx.local_addr, pool = %ctx.pool.name, "listening");
        let loop_stop = stop.clone();
        let loop_socket = socket.clone();
        self.background.spawn(async move {
            let name = ctx.config.name.clone();
            listener::accept_loop(&name, &loop_socket, limit, loop_stop, |accepted| {
                conns.spawn(proxy::serve(ctx.clone(), accepted, stop_conn.clone()));
            })
            .await;
            tracing::info!(listener = %name, "stopped accepting");
        });
        AcceptLoop { name, socket, stop }
    }
}

/// A listener's SNI routes with their pools (validation guarantees every route's pool exists).
fn route_pools(lc: &ListenerConfig, pools: &[Arc<Pool>]) -> Vec<(String, Arc<Pool>)> {
    lc.routes
        .iter()
        .filter_map(|r| {
            pools
                .iter()
                .find(|p| *p.name == *r.pool && !p.is_retired())
                .map(|p| (r.sni.clone(), p.clone()))
        })
        .collect()
}

/// An error and its causes on one line, for messages that outlive the error value.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A running splicer.
pub struct Running {
    state: Arc<AppState>,
    admin_addr: Option<SocketAddr>,
}

/// Longest wait for the start-up health round beyond the largest check timeout.
const STARTUP_SLACK: Duration = Duration::from_millis(500);
/// Time tasks get to finish once told to stop, before shutdown gives up on them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Starts pools, runs the start-up health round, then opens the listeners.
pub async fn start(config: Config, bound: Bound) -> Result<Running, AppError> {
    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();

    let mut pools = Vec::with_capacity(config.pools.len());
    let mut initial_rounds = Vec::new();
    for p in &config.pools {
        let started = pool::start(
            p.clone(),
            config.runtime.drain_timeout,
            true,
            &background,
            stop_background.clone(),
        )
        .map_err(|source| AppError::Health {
            pool: p.name.clone(),
            source,
        })?;
        pools.push(started.pool);
        initial_rounds.push(started.initial_round);
    }

    let mut sockets = Vec::with_capacity(bound.listeners.len());
    for (lc, socket) in bound.listeners {
        let local = socket.local_addr().unwrap_or(lc.bind);
        let socket = TcpListener::from_std(socket).map_err(|source| AppError::Register {
            addr: local,
            source,
        })?;
        sockets.push((lc, Arc::new(socket)));
    }

    let state = Arc::new(AppState {
        started: Instant::now(),
        pools: ArcSwap::from_pointee(pools),
        listeners: ArcSwap::from_pointee(Vec::new()),
        admin_token: ArcSwap::from_pointee(config.admin.as_ref().and_then(|a| a.token.clone())),
        drain_timeout: ArcSwap::from_pointee(config.runtime.drain_timeout),
        listening: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        control: tokio::sync::Mutex::new(Control {
            config: config.clone(),
            loops: Vec::new(),
        }),
        access_log: std::sync::OnceLock::new(),
        background: background.clone(),
        connections: TaskTracker::new(),
        stop_background: stop_background.clone(),
        stop_accepting: CancellationToken::new(),
        stop_connections: CancellationToken::new(),
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

    {
        let mut control = state.control.lock().await;
        let access_log = state.access_log_for(&config).map_err(AppError::AccessLog)?;
        let pools = state.pools.load_full();
        let mut ctxs = Vec::with_capacity(sockets.len());
        for (lc, socket) in sockets {
            let Some(pool) = pools.iter().find(|p| *p.name == *lc.pool).cloned() else {
                // Validation guarantees the pool exists; an unknown one is skipped, not a panic.
                tracing::error!(listener = %lc.name, pool = %lc.pool, "listener names an unknown pool");
                continue;
            };
            let local = socket.local_addr().unwrap_or(lc.bind);
            let routes = route_pools(&lc, &pools);
            let ctx = Arc::new(ListenerCtx::new(
                lc,
                local,
                pool,
                routes,
                access_log.clone(),
                Arc::new(ListenerCounters::default()),
            ));
            control
                .loops
                .push(state.spawn_accept_loop(ctx.clone(), socket));
            ctxs.push(ctx);
        }
        state.listeners.store(Arc::new(ctxs));
    }
    state.listening.store(true, Ordering::Release);

    Ok(Running { state, admin_addr })
}

impl Running {
    /// Shared state (what the admin API reads).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Actual address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state
            .listeners()
            .iter()
            .find(|l| l.config.name == name)
            .map(|l| l.local_addr)
    }

    /// Actual address of the admin API.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads the config file and applies it (SIGHUP).
    pub async fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        self.state.reload().await
    }

    /// Graceful stop: stop accepting (and answer 503 on `/ready`), let open connections finish
    /// for up to `drain_timeout`, cut the rest, stop checks and the admin API. Returns whether
    /// every connection finished by itself.
    pub async fn shutdown(self) -> bool {
        let s = &self.state;
        s.shutting_down.store(true, Ordering::Release);
        s.stop_accepting.cancel();
        // Close the listening sockets (each ends with the last of these and its loop's clone),
        // so new clients are refused instead of queueing in a backlog nobody accepts from.
        drop(std::mem::take(&mut s.control.lock().await.loops));
        s.connections.close();
        let drain_timeout = **s.drain_timeout.load();
        tracing::info!(open_connections = s.connections.len(), drain_timeout = ?drain_timeout,
            "shutting down: draining connections");
        let drained = tokio::time::timeout(drain_timeout, s.connections.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                open_connections = s.connections.len(),
                "drain timeout reached: closing the remaining connections"
            );
            s.stop_connections.cancel();
            let _ = tokio::time::timeout(STOP_GRACE, s.connections.wait()).await;
        }
        s.stop_background.cancel();
        s.background.close();
        let _ = tokio::time::timeout(STOP_GRACE, s.background.wait()).await;
        // Connections have ended, so their lines are queued: let the writer drain them.
        if let Some(log) = s.access_log.get().cloned() {
            let flushed = tokio::task::spawn_blocking(move || log.flush_and_stop(STOP_GRACE))
                .await
                .unwrap_or(false);
            if !flushed {
                tracing::warn!("access log sink is stuck: queued lines were lost");
            }
        }
        tracing::info!(drained, "stopped");
        drained
    }
}
