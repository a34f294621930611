//! Wires a validated config into running parts: pools (with their supervisors and checks) and
//! listeners, hands the admin API's socket to whoever serves it (`server`), and applies
//! reloads as a diff. Owns the cancellation tokens and task trackers, and so the order of
//! start-up, reload and shutdown. Knows nothing of the admin API but its socket: the API reads
//! [`AppState`], not the other way round.

mod membership;
mod reload;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::{AdminToken, Config, ListenerConfig};
use crate::error_chain::error_chain;
use crate::health::probe::ProbeSetupError;
use crate::lifecycle::state_file::{self, Decision};
use crate::lifecycle::upgrade::{self, UpgradeError, Upgraded};
use crate::lifecycle::{Executable, Inherited, Notifier, ReadyPipe};
use crate::net::listener::{self, ListenerError};
use crate::pool::{self, AdminAction, AdminError, BackendState, Pool};
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

/// Sockets bound (or taken over) before anything starts, so "address in use" is found before
/// health checks run and tests can bind port 0 and learn the port.
pub struct Bound {
    listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
    admin: Option<std::net::TcpListener>,
}

/// The admin API's name among passed sockets (`FileDescriptorName=admin` in a systemd socket unit).
pub const ADMIN_SOCKET_NAME: &str = "admin";

impl Bound {
    /// Binds every listener and the admin API of `config`.
    pub fn bind(config: &Config) -> Result<Bound, AppError> {
        Bound::acquire(config, &mut Inherited::default())
    }

    /// Takes each listener's socket (and the admin API's) from `inherited` when one matches by
    /// name or address, else binds it; sockets nothing took are closed.
    pub fn acquire(config: &Config, inherited: &mut Inherited) -> Result<Bound, AppError> {
        let origin = inherited.origin().map_or("", |o| o.as_str());
        let mut take = |what: String, name: &str, addr: SocketAddr, backlog: u32, reuse_port| {
            match inherited.take(name, addr) {
                Some(Ok(socket)) => {
                    let local = socket.local_addr().map_or(addr, |a| a);
                    tracing::info!(socket = %what, address = %local, from = origin, "using a passed socket");
                    if let Err(e) = listener::set_backlog(&socket, backlog) {
                        tracing::warn!(socket = %what, error = %e, "cannot set the backlog of a passed socket");
                    }
                    Ok(socket)
                }
                Some(Err(source)) => Err(ListenerError::Inherited { what, source }),
                None => listener::bind(&what, addr, backlog, reuse_port),
            }
        };
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let what = format!("listener '{}'", l.name);
            let socket = take(what, &l.name, l.bind, l.backlog, l.reuse_port)?;
            listeners.push((l.clone(), socket));
        }
        let admin = match &config.admin {
            // Never SO_REUSEPORT: two processes answering /status and drain would each see half.
            Some(a) => Some(take(
                "admin API".to_string(),
                ADMIN_SOCKET_NAME,
                a.bind,
                ADMIN_BACKLOG,
                false,
            )?),
            None => None,
        };
        inherited.close_rest();
        Ok(Bound { listeners, admin })
    }
}

/// listen(2) queue of the admin API: operators and scrapers, not clients.
const ADMIN_BACKLOG: u32 = 128;

/// What the process brings to the app from outside the config: its service manager, how to
/// start a successor, and the pipe to tell a predecessor it is ready. The default (used by tests
/// and embedders) has none of them.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// systemd notifications (a no-op without `NOTIFY_SOCKET`).
    pub notifier: Option<Notifier>,
    /// This process's executable, for binary upgrades; `None` refuses upgrades.
    pub executable: Option<Executable>,
    /// Set when this process was started by an upgrade: where to report ready.
    pub ready_pipe: Option<ReadyPipe>,
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
    task: tokio::task::JoinHandle<()>,
}

impl AcceptLoop {
    /// Stops accepting and returns once the loop has ended (bounded by [`STOP_GRACE`]): by
    /// then every client it accepted is a tracked connection, so a drain that starts after
    /// this waits for it (a client accepted during a drain's count was lost at exit), and the
    /// loop's copy of the socket is closed.
    async fn end(self) {
        let AcceptLoop {
            name, stop, task, ..
        } = self;
        stop.cancel();
        if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
            tracing::warn!(listener = %name, "the accept loop did not stop in time");
        }
    }
}

/// [`AcceptLoop::end`] for each of `loops`.
async fn end_loops(loops: Vec<AcceptLoop>) {
    for l in loops {
        l.end().await;
    }
}

/// Everything a reload or an upgrade reads and replaces; behind one async mutex, so reloads and
/// upgrades run one at a time.
struct Control {
    config: Config,
    loops: Vec<AcceptLoop>,
    /// The admin API's listening socket (handed to a successor by an upgrade).
    admin: Option<Arc<TcpListener>>,
}

/// The admin decisions and runtime members kept in `runtime.state_file` (in memory too when
/// there is no file: runtime members then still survive reloads), and the path they go to.
struct Persisted {
    path: Option<std::path::PathBuf>,
    state: state_file::State,
    /// The config file's pools as last loaded: which members are the file's own (membership
    /// changes cannot take the `control` lock, which a reload holds while it waits for this one).
    file_pools: Vec<crate::config::PoolConfig>,
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
    /// Cancelled when a successor took the sockets: the admin API stops accepting too.
    handed_over: CancellationToken,
    notifier: Notifier,
    executable: Option<Executable>,
    upgrading: AtomicBool,
    upgrades_ok: AtomicU64,
    upgrades_failed: AtomicU64,
    /// In an `Arc` so start-up can hold the lock (owned) from before the admin API accepts
    /// until the state file is restored.
    persisted: Arc<tokio::sync::Mutex<Persisted>>,
    state_file_errors: AtomicU64,
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

    /// State-file reads and writes that failed (each logged).
    pub fn state_file_errors(&self) -> u64 {
        self.state_file_errors.load(Ordering::Relaxed)
    }

    /// Binary upgrades so far: (succeeded, failed).
    pub fn upgrades(&self) -> (u64, u64) {
        (
            self.upgrades_ok.load(Ordering::Relaxed),
            self.upgrades_failed.load(Ordering::Relaxed),
        )
    }

    /// What `/metrics` reads now.
    pub fn scrape(&self) -> crate::metrics::Scrape {
        crate::metrics::Scrape {
            pools: self.pools(),
            listeners: self.listeners(),
            reloads: self.reloads(),
            access_log_dropped: self.access_log_dropped(),
            state_file_errors: self.state_file_errors(),
            upgrades: self.upgrades(),
            process: crate::metrics::process::ProcessStats::read(),
        }
    }

    /// Whether a successor has taken the listening sockets (this process only drains now).
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.is_cancelled()
    }

    /// `3/3 backends up`: the one-line summary for the service manager.
    pub fn status_line(&self) -> String {
        let (mut up, mut total) = (0usize, 0usize);
        let mut failing_open = Vec::new();
        for p in self.pools() {
            let s = p.snapshot();
            total += s.members.len();
            up += s.up_count();
            if s.fail_open {
                failing_open.push(p.name.to_string());
            }
        }
        let mut line = format!("{up}/{total} backends up");
        if !failing_open.is_empty() {
            line.push_str(&format!("; failing open: {}", failing_open.join(", ")));
        }
        if self.is_shutting_down() {
            line.push_str("; shutting down");
        }
        line
    }

    /// Applies an operator's action to one backend and, with `runtime.state_file`, records it
    /// there before answering, so the decision outlives the process.
    pub async fn backend_action(
        &self,
        pool_name: &str,
        address: SocketAddr,
        action: AdminAction,
    ) -> Result<BackendState, AdminError> {
        let Some(pool) = self.pool(pool_name) else {
            return Err(AdminError::UnknownPool(pool_name.to_string()));
        };
        // Held across the action so concurrent actions are written in the order they applied.
        let mut persisted = self.persisted.lock().await;
        let new_state = pool.admin(address, action).await?;
        let decision = match action {
            AdminAction::Drain => Some(Decision::Draining),
            AdminAction::Disable => Some(Decision::Disabled),
            AdminAction::Enable => None,
        };
        if persisted.state.set(pool_name, address, decision) {
            self.write_state_file(&persisted).await;
        }
        Ok(new_state)
    }

    /// Writes the state file off the runtime's threads (it fsyncs); failures are logged and
    /// counted, never returned: the decision already applied.
    async fn write_state_file(&self, persisted: &Persisted) {
        let Some(path) = persisted.path.clone() else {
            return;
        };
        let state = persisted.state.clone();
        let result = tokio::task::spawn_blocking(move || state_file::save(&path, &state)).await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => error_chain(&e),
            Err(e) => format!("state file writer failed: {e}"),
        };
        self.state_file_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %error, "cannot record the admin decision in the state file; it applies until the next start only");
    }

    /// Applies the decisions of the state file read at start (before listeners open; its
    /// runtime members were already part of the pools' start-up round). `persisted` is held
    /// from before the admin API accepts: an action arriving during start-up waits, and then
    /// applies over the restored state instead of writing a file without it.
    async fn restore_state_file(&self, persisted: tokio::sync::OwnedMutexGuard<Persisted>) {
        let Some(path) = persisted.path.clone() else {
            return;
        };
        for d in &persisted.state.backends {
            let action = match d.state {
                Decision::Draining => AdminAction::Drain,
                Decision::Disabled => AdminAction::Disable,
            };
            let applied = match self.pool(&d.pool) {
                Some(p) => p.admin(d.address, action).await,
                None => Err(AdminError::UnknownPool(d.pool.clone())),
            };
            match applied {
                Ok(s) => tracing::info!(pool = %d.pool, backend = %d.address, state = s.as_str(),
                    path = %path.display(), "restored an admin decision from the state file"),
                // Kept in the file: the backend may come back with a later config.
                Err(e) => tracing::warn!(pool = %d.pool, backend = %d.address, error = %e,
                    "the state file names a backend the config does not have; kept for later"),
            }
        }
    }

    /// Starts a new splicer from the executable path recorded at start, hands it every
    /// listening socket, and waits for it to report ready; then this process stops accepting
    /// (closing its copies of the sockets) and only drains. On failure nothing changes here.
    pub async fn upgrade(&self) -> Result<Upgraded, UpgradeError> {
        if self.is_shutting_down() || self.is_handed_over() {
            return Err(UpgradeError::ShuttingDown);
        }
        if self.upgrading.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::InProgress);
        }
        let result = self.upgrade_locked().await;
        self.upgrading.store(false, Ordering::Release);
        match &result {
            Ok(u) => {
                self.upgrades_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(old_pid = u.old_pid, new_pid = u.new_pid,
                    "upgrade: the new process serves; this one stopped accepting and drains its open connections");
            }
            Err(e) => {
                self.upgrades_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %error_chain(e), "upgrade failed: this process keeps serving");
            }
        }
        result
    }

    async fn upgrade_locked(&self) -> Result<Upgraded, UpgradeError> {
        let Some(exe) = self.executable.clone() else {
            return Err(UpgradeError::Unsupported);
        };
        // Held throughout: a reload must not change the sockets being handed over.
        let mut control = self.control.lock().await;
        if self.is_shutting_down() {
            return Err(UpgradeError::ShuttingDown);
        }
        let mut sockets: Vec<(String, std::os::fd::RawFd)> = control
            .loops
            .iter()
            .map(|l| (l.name.clone(), l.socket.as_raw_fd()))
            .collect();
        if let Some(admin) = &control.admin {
            sockets.push((ADMIN_SOCKET_NAME.to_string(), admin.as_raw_fd()));
        }
        let timeout = control.config.runtime.upgrade_timeout;
        let upgraded = upgrade::start_successor(&exe, &sockets, timeout).await?;
        // Close (never shutdown(2)) this process's copies: the sockets live on in the successor.
        self.handed_over.cancel();
        self.stop_accepting.cancel();
        end_loops(std::mem::take(&mut control.loops)).await;
        control.admin = None;
        Ok(upgraded)
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
        let task = self.background.spawn(async move {
            let name = ctx.config.name.clone();
            listener::accept_loop(&name, &loop_socket, limit, loop_stop, |accepted| {
                conns.spawn(proxy::serve(ctx.clone(), accepted, stop_conn.clone()));
            })
            .await;
            tracing::info!(listener = %name, "stopped accepting");
        });
        AcceptLoop {
            name,
            socket,
            stop,
            task,
        }
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

/// A running splicer.
pub struct Running {
    state: Arc<AppState>,
    admin_addr: Option<SocketAddr>,
}

/// Longest wait for the start-up health round beyond the largest check timeout.
const STARTUP_SLACK: Duration = Duration::from_millis(500);
/// Time tasks get to finish once told to stop, before shutdown gives up on them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A splicer part-way through its start: pools run their start-up round and the admin API's
/// socket waits to be served; listeners are not open yet. `server::start_with` is the
/// one caller: `begin`, serve the admin API, `finish`.
pub struct Starting {
    state: Arc<AppState>,
    config: Config,
    initial_rounds: Vec<tokio::sync::oneshot::Receiver<()>>,
    sockets: Vec<(ListenerConfig, Arc<TcpListener>)>,
    admin: Option<AdminSocket>,
    admin_addr: Option<SocketAddr>,
    /// Taken before the admin API accepts, released once the state file is restored: an admin
    /// action arriving during start-up waits, then applies over the restored state.
    restoring: tokio::sync::OwnedMutexGuard<Persisted>,
    ready_pipe: Option<ReadyPipe>,
}

/// The admin API's listening socket and when to stop serving it.
pub struct AdminSocket {
    /// The socket (shared with the app, which hands it to a successor at an upgrade).
    pub listener: Arc<TcpListener>,
    /// Cancelled at a hand-over (the successor answers from then on) or a stop.
    pub stop_accepting: CancellationToken,
    /// Cancelled at the stop: open admin connections end.
    pub stop: CancellationToken,
}

impl Starting {
    /// Starts the pools (each begins its start-up health round) and registers the sockets.
    pub async fn begin(
        config: Config,
        bound: Bound,
        lifecycle: Lifecycle,
    ) -> Result<Starting, AppError> {
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();

        // Read before the pools start: members added or removed through the admin API take
        // part in the start-up round like the file's own, and a removed one never sees a client.
        let (restored, state_file_errors) =
            membership::read_state_file(config.runtime.state_file.as_deref()).await;
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut initial_rounds = Vec::new();
        for p in &config.pools {
            let started = pool::start(
                membership::effective_pool(p, &restored),
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

        let persisted = Arc::new(tokio::sync::Mutex::new(Persisted {
            path: config.runtime.state_file.clone(),
            state: restored,
            file_pools: config.pools.clone(),
        }));
        let restoring = persisted.clone().lock_owned().await;
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
                admin: None,
            }),
            access_log: std::sync::OnceLock::new(),
            background: background.clone(),
            connections: TaskTracker::new(),
            stop_background: stop_background.clone(),
            stop_accepting: CancellationToken::new(),
            stop_connections: CancellationToken::new(),
            handed_over: CancellationToken::new(),
            notifier: lifecycle.notifier.unwrap_or_else(Notifier::disabled),
            executable: lifecycle.executable,
            upgrading: AtomicBool::new(false),
            upgrades_ok: AtomicU64::new(0),
            upgrades_failed: AtomicU64::new(0),
            persisted,
            state_file_errors: AtomicU64::new(state_file_errors),
        });

        let mut admin = None;
        let mut admin_addr = None;
        if let Some(socket) = bound.admin {
            let addr = socket.local_addr().ok();
            let listener = TcpListener::from_std(socket).map_err(|source| AppError::Register {
                addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                source,
            })?;
            let listener = Arc::new(listener);
            admin_addr = addr;
            state.control.lock().await.admin = Some(listener.clone());
            // Accepting stops at a hand-over; requests already accepted, such as the
            // `POST /upgrade` that asked for it, still get their answer.
            let stop_accepting = stop_background.child_token();
            let handed_over = state.handed_over.clone();
            let stop_on_handover = stop_accepting.clone();
            // Ends with the admin API too: a task left waiting for a hand-over that never comes
            // would hold every shutdown for STOP_GRACE.
            background.spawn(async move {
                tokio::select! {
                    _ = handed_over.cancelled() => stop_on_handover.cancel(),
                    _ = stop_on_handover.cancelled() => {}
                }
            });
            admin = Some(AdminSocket {
                listener,
                stop_accepting,
                stop: stop_background.clone(),
            });
        }

        Ok(Starting {
            state,
            config,
            initial_rounds,
            sockets,
            admin,
            admin_addr,
            restoring,
            ready_pipe: lifecycle.ready_pipe,
        })
    }

    /// Hands the admin API's socket (when there is one) to `serve`, whose future runs as a
    /// background task: it answers from now on, through the start-up round, and the shutdown
    /// waits for it.
    pub fn serve_admin<F>(&mut self, serve: impl FnOnce(AdminSocket, Arc<AppState>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(socket) = self.admin.take() {
            self.state
                .background
                .spawn(serve(socket, self.state.clone()));
        }
    }

    /// Waits for the start-up round (bounded by the longest check timeout), restores the state
    /// file's decisions, opens the listeners and reports ready.
    pub async fn finish(self) -> Result<Running, AppError> {
        let Starting {
            state,
            config,
            initial_rounds,
            sockets,
            admin: _,
            admin_addr,
            restoring,
            ready_pipe,
        } = self;
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
        // Operator decisions from before the restart or upgrade apply before the first client.
        state.restore_state_file(restoring).await;

        {
            let mut control = state.control.lock().await;
            let access_log = state.access_log_for(&config).map_err(AppError::AccessLog)?;
            let pools = state.pools.load_full();
            let mut ctxs = Vec::with_capacity(sockets.len());
            let mut opening = Vec::with_capacity(sockets.len());
            for (lc, socket) in sockets {
                let Some(pool) = pools.iter().find(|p| *p.name == *lc.pool).cloned() else {
                    // Validation guarantees the pool exists; an unknown one is skipped.
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
                    config.runtime.client_table_size,
                ));
                opening.push((ctx.clone(), socket));
                ctxs.push(ctx);
            }
            // Published before the first accept: a client served must find its listener in
            // `/status` and `/metrics` (CI once saw a connection through before the store).
            state.listeners.store(Arc::new(ctxs));
            for (ctx, socket) in opening {
                control.loops.push(state.spawn_accept_loop(ctx, socket));
            }
        }
        state.listening.store(true, Ordering::Release);

        let status = state.status_line();
        match ready_pipe {
            Some(pipe) => {
                // The manager must learn the new main PID before the old process exits.
                state.notifier.ready_as_main(&status);
                pipe.report_ready();
            }
            None => state.notifier.ready(&status),
        }
        if state.notifier.is_enabled() {
            state.background.spawn(keep_manager_informed(state.clone()));
        }

        Ok(Running { state, admin_addr })
    }
}

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Feeds the systemd watchdog and refreshes `STATUS=` from a runtime task, so a wedged
/// runtime stops the pings. Ends when the process stops or hands its sockets over (the
/// successor speaks to the manager from then on).
async fn keep_manager_informed(state: Arc<AppState>) {
    let watchdog = state.notifier.watchdog_every();
    let every = watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY));
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = state.stop_background.cancelled() => return,
            _ = state.handed_over.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if watchdog.is_some() {
            state.notifier.watchdog();
        }
        let status = state.status_line();
        if status != last_status {
            state.notifier.status(&status);
            last_status = status;
        }
    }
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

    /// Resolves once a successor has taken the sockets (a binary upgrade succeeded): then the
    /// caller should [`Running::drain`] and exit.
    pub async fn handed_over(&self) {
        self.state.handed_over.cancelled().await
    }

    /// Starts a binary upgrade (SIGUSR2); the outcome is logged by the upgrade itself.
    pub async fn upgrade(&self) -> Result<Upgraded, UpgradeError> {
        self.state.upgrade().await
    }

    /// Graceful stop (SIGTERM): `/ready` answers 503 at once and the service manager hears
    /// `STOPPING=1`, listeners keep accepting for `shutdown_delay` (time for an outer balancer to
    /// move away), then stop; open connections finish for up to `drain_timeout`, the rest are
    /// cut, checks and the admin API stop. Returns whether every connection finished by itself.
    pub async fn shutdown(self) -> bool {
        let s = &self.state;
        s.shutting_down.store(true, Ordering::Release);
        let delay = s.control.lock().await.config.runtime.shutdown_delay;
        s.notifier.stopping(&s.status_line());
        if !delay.is_zero() {
            tracing::info!(shutdown_delay = ?delay, "/ready answers 503; still accepting until the shutdown delay ends");
            tokio::time::sleep(delay).await;
        }
        self.drain().await
    }

    /// Stops accepting (closing this process's copies of the listening sockets), lets open
    /// connections finish for up to `drain_timeout`, cuts the rest, and stops checks and the
    /// admin API. After a hand-over this is all that is left to do.
    pub async fn drain(self) -> bool {
        let s = &self.state;
        s.shutting_down.store(true, Ordering::Release);
        s.stop_accepting.cancel();
        // Close the listening sockets (each ends with the last of these and its loop's clone),
        // so new clients are refused instead of queueing in a backlog nobody accepts from.
        {
            let mut control = s.control.lock().await;
            end_loops(std::mem::take(&mut control.loops)).await;
            control.admin = None;
        }
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
