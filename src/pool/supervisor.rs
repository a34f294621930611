//! The pool supervisor: one task per pool that turns what happens (check reports, commands,
//! DNS answers, cluster-probe results, time) into [`Event`]s, lets the pure [`PoolMachine`]
//! decide, and performs the [`Effect`]s: spawning and cancelling tasks, logging, and storing
//! the pool's snapshot. It is the only writer of pool state, so it needs no lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::machine::{self, CheckResult, Effect, Event, Level, LogLine, PoolMachine, Reply};
use super::snapshot::{Member, PoolSnapshot};
use super::{AdminError, BackendState, CheckRecord, Command, Pool, Reconfigured};
use crate::config::{CheckKind, PoolConfig, SendProxy};
use crate::discovery::Discovery;
use crate::health::cluster::ClusterHealth;
use crate::health::probe::{ProbeSetupError, Prober};
use crate::health::quay;
use crate::health::{run_checks, CheckReport};

/// How often draining backends are looked at (last connection gone?). Short enough that a
/// removed backend leaves `/status` promptly; the tick runs only while something drains.
const DRAIN_TICK: Duration = Duration::from_millis(200);

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next member list from a discovery task, or never when the pool has none.
async fn next_members(rx: &mut Option<mpsc::Receiver<Vec<SocketAddr>>>) -> Option<Vec<SocketAddr>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The machine's clock is `std`'s; tokio's (pausable in tests) is the source.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// A started pool.
pub struct Started {
    /// The pool, shared with listeners and the admin API.
    pub pool: Arc<Pool>,
    /// Fires once the start-up round of checks has finished (or timed out).
    pub initial_round: oneshot::Receiver<()>,
}

/// The PROXY header checks send: checks on the data port get the pool's; checks on another
/// `port` reach another listener of the backend (Quay: 8443 plain TLS while traffic goes to
/// 7443 with the PROXY protocol), which does not expect one.
fn check_send_proxy(config: &PoolConfig) -> SendProxy {
    if config.health.port == 0 {
        config.send_proxy
    } else {
        SendProxy::Off
    }
}

/// A pool's health-check client, built ahead of time. Building one reads `ca_file` and the
/// system's root certificates: a reload does that on the blocking pool, not on a thread that
/// serves connections (a `ca_file` on a hung mount must stall only the reload).
pub struct PreparedProber(Result<Option<Arc<Prober>>, ProbeSetupError>);

impl PreparedProber {
    /// Builds what `config`'s checks need (nothing for `check = "none"`). Blocking file I/O.
    pub fn build(config: &PoolConfig) -> PreparedProber {
        PreparedProber(new_prober(config))
    }
}

impl std::fmt::Debug for PreparedProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(Some(_)) => f.write_str("PreparedProber(checks)"),
            Ok(None) => f.write_str("PreparedProber(no checks)"),
            Err(e) => write!(f, "PreparedProber({e})"),
        }
    }
}

fn new_prober(config: &PoolConfig) -> Result<Option<Arc<Prober>>, ProbeSetupError> {
    if config.health.check == CheckKind::None {
        return Ok(None);
    }
    Ok(Some(Arc::new(Prober::with_send_proxy(
        &config.health,
        check_send_proxy(config),
    )?)))
}

/// Builds the pool and spawns its supervisor (and one check task per backend) on `tasks`; all
/// stop when `stop` is cancelled. With `initial`, one passing check is enough to be up (the
/// start-up round); otherwise (a pool added by reload) backends need `rise` passes.
pub fn start(
    config: PoolConfig,
    drain_timeout: Duration,
    initial: bool,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Started, ProbeSetupError> {
    let prober = PreparedProber::build(&config);
    start_prepared(config, prober, drain_timeout, initial, tasks, stop)
}

/// [`start`] with the health-check client already built (see [`PreparedProber`]).
pub fn start_prepared(
    config: PoolConfig,
    prober: PreparedProber,
    drain_timeout: Duration,
    initial: bool,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Started, ProbeSetupError> {
    let prober = prober.0?;
    let config = Arc::new(config);
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let pool = Arc::new(Pool {
        name: Arc::from(config.name.as_str()),
        snapshot: ArcSwap::from_pointee(PoolSnapshot::empty(config.clone())),
        discovery_failures: Default::default(),
        commands: commands_tx,
    });
    let (reports_tx, reports_rx) = mpsc::channel(config.backends.len().max(1) * 2);
    let (cluster_tx, cluster_rx) = mpsc::channel(4);
    let (initial_tx, initial_rx) = oneshot::channel();
    let (machine, effects) =
        PoolMachine::new(config, drain_timeout, prober.is_some(), initial, now());
    let mut supervisor = Supervisor {
        pool: pool.clone(),
        machine,
        prober,
        reports_tx,
        cluster_tx,
        tasks: tasks.clone(),
        stop: stop.clone(),
        initial_done: Some(initial_tx),
        checks: HashMap::new(),
        cluster: None,
        discovery: None,
        new_members: None,
        drop_members: false,
        pending: None,
    };
    supervisor.perform(effects);
    tasks.spawn(supervisor.run(reports_rx, commands_rx, cluster_rx, stop));
    Ok(Started {
        pool,
        initial_round: initial_rx,
    })
}

/// The caller waiting for the command being applied.
enum Pending {
    Admin(oneshot::Sender<Result<BackendState, AdminError>>),
    Add(oneshot::Sender<Result<Member, AdminError>>),
    Remove(oneshot::Sender<Result<(), AdminError>>),
    Reconfigure(oneshot::Sender<Reconfigured>),
}

struct Supervisor {
    pool: Arc<Pool>,
    machine: PoolMachine,
    prober: Option<Arc<Prober>>,
    reports_tx: mpsc::Sender<CheckReport>,
    cluster_tx: mpsc::Sender<ClusterHealth>,
    tasks: TaskTracker,
    stop: CancellationToken,
    initial_done: Option<oneshot::Sender<()>>,
    /// Stops each backend's check task.
    checks: HashMap<SocketAddr, CancellationToken>,
    /// Stops the `[pool.cluster_health]` task.
    cluster: Option<CancellationToken>,
    /// Stops the DNS discovery task.
    discovery: Option<CancellationToken>,
    /// A new discovery task's member lists, picked up by the run loop.
    new_members: Option<mpsc::Receiver<Vec<SocketAddr>>>,
    /// Discovery stopped: the run loop drops its receiver.
    drop_members: bool,
    pending: Option<Pending>,
}

impl Supervisor {
    async fn run(
        mut self,
        mut reports: mpsc::Receiver<CheckReport>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut cluster: mpsc::Receiver<ClusterHealth>,
        stop: CancellationToken,
    ) {
        let mut members: Option<mpsc::Receiver<Vec<SocketAddr>>> = None;
        let mut tick = tokio::time::interval(DRAIN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.machine.is_finished() {
            if let Some(rx) = self.new_members.take() {
                members = Some(rx);
            }
            if std::mem::take(&mut self.drop_members) {
                members = None;
            }
            let draining = self.machine.is_draining();
            let wake = self.machine.next_wake().map(Instant::from_std);
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(report) = reports.recv() => self.on_report(report),
                Some(command) = commands.recv() => self.on_command(command),
                Some(list) = next_members(&mut members) => self.apply(Event::Discovered(list)),
                Some(result) = cluster.recv() => self.apply(Event::ClusterHealth(result)),
                _ = tick.tick(), if draining => self.tick(),
                _ = sleep_until_some(wake), if wake.is_some() => self.tick(),
            }
        }
    }

    fn apply(&mut self, event: Event) {
        let effects = self.machine.apply(event, now());
        self.perform(effects);
    }

    fn tick(&mut self) {
        let open_connections = self
            .machine
            .draining()
            .map(|b| (b.address, b.active_connections()))
            .collect();
        self.apply(Event::Tick { open_connections });
    }

    fn on_report(&mut self, report: CheckReport) {
        let outcome = &report.outcome;
        let pass = outcome.is_pass();
        // Read whenever the body is a Quay health document, shared_dependencies or not: the
        // services are how an operator sees why a machine is down (/status, /metrics).
        let services = quay::parse_services(&outcome.body);
        if let Some(b) = self.machine.checked_backend(report.backend) {
            b.record_check(pass, outcome.latency);
            b.set_last_check(CheckRecord {
                ok: pass,
                status: outcome.status,
                latency: outcome.latency,
                error: outcome.result.as_ref().err().map(|e| e.to_string()),
                at: SystemTime::now(),
                services: services.clone(),
            });
        }
        let reason = match &outcome.result {
            Ok(()) => outcome
                .status
                .map_or_else(|| "connected".to_string(), |s| format!("status {s}")),
            Err(e) => e.to_string(),
        };
        self.apply(Event::Check(CheckResult {
            backend: report.backend,
            pass,
            reason,
            services,
            initial: report.initial,
        }));
    }

    fn on_command(&mut self, command: Command) {
        let event = match command {
            Command::PassiveFailure {
                backend,
                consecutive,
            } => Event::PassiveFailure {
                backend,
                consecutive,
            },
            Command::Admin {
                backend,
                action,
                reply,
            } => {
                self.pending = Some(Pending::Admin(reply));
                Event::Admin { backend, action }
            }
            Command::Reconfigure {
                config,
                drain_timeout,
                prober,
                reply,
            } => {
                self.pending = Some(Pending::Reconfigure(reply));
                let checks = self.new_checks(&config, prober);
                Event::Reconfigure {
                    config: Arc::new(*config),
                    drain_timeout,
                    checks,
                }
            }
            Command::Retire {
                drain_timeout,
                reply,
            } => {
                self.apply(Event::Retire { drain_timeout });
                let _ = reply.send(());
                return;
            }
            Command::AddBackend {
                address,
                weight,
                reply,
            } => {
                self.pending = Some(Pending::Add(reply));
                Event::AddBackend { address, weight }
            }
            Command::RemoveBackend { address, reply } => {
                self.pending = Some(Pending::Remove(reply));
                Event::RemoveBackend { address }
            }
        };
        self.apply(event);
        // A command the machine did not answer (it always does) must not leave a caller hanging.
        self.pending = None;
    }

    /// The check client for a reload's `config`, when its checks changed: `Some(checked)` once
    /// installed, `None` when the checks stay as they are (unchanged, or not buildable).
    fn new_checks(&mut self, config: &PoolConfig, prober: Option<PreparedProber>) -> Option<bool> {
        if !machine::checks_changed(self.machine.config(), config) {
            return None;
        }
        // Built by the reload off the runtime; built here only for a caller that did not.
        let prober = match prober {
            Some(p) => p.0,
            None => new_prober(config),
        };
        match prober {
            Ok(prober) => {
                self.prober = prober;
                Some(self.prober.is_some())
            }
            Err(e) => {
                // Validation read the same files a moment ago; keep checking the old way.
                tracing::error!(pool = %self.pool.name, error = %e,
                    "new health-check settings could not be applied; keeping the old ones");
                None
            }
        }
    }

    fn perform(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::StartChecks { backend, initial } => self.start_checks(backend, initial),
                Effect::StopChecks { backend } => {
                    if let Some(token) = self.checks.remove(&backend) {
                        token.cancel();
                    }
                }
                Effect::StartClusterProbe => self.start_cluster_probe(),
                Effect::StopClusterProbe => {
                    if let Some(token) = self.cluster.take() {
                        token.cancel();
                    }
                }
                Effect::StartDiscovery => self.start_discovery(),
                Effect::StopDiscovery => {
                    if let Some(token) = self.discovery.take() {
                        token.cancel();
                    }
                    self.new_members = None;
                    self.drop_members = true;
                }
                Effect::CutConnections { backend } => {
                    if let Some(b) = self.machine.backend(backend) {
                        b.cut_connections();
                    }
                }
                Effect::RearmCut { backend } => {
                    if let Some(b) = self.machine.backend(backend) {
                        b.rearm_cut();
                    }
                }
                Effect::ResetConnectFailures { backend } => {
                    if let Some(b) = self.machine.backend(backend) {
                        b.reset_consecutive_failures();
                    }
                }
                Effect::Log(line) => log(&self.pool.name, &line),
                Effect::Publish(snapshot) => {
                    snapshot.live.continue_from(&self.pool.snapshot.load().live);
                    self.pool.snapshot.store(snapshot);
                }
                Effect::StartupRoundDone => {
                    if let Some(tx) = self.initial_done.take() {
                        let _ = tx.send(());
                    }
                }
                Effect::Reply(reply) => self.reply(reply),
                Effect::Stop => {
                    for (_, token) in self.checks.drain() {
                        token.cancel();
                    }
                }
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        match (self.pending.take(), reply) {
            (Some(Pending::Admin(tx)), Reply::Admin(r)) => {
                let _ = tx.send(r);
            }
            (Some(Pending::Add(tx)), Reply::Added(r)) => {
                let _ = tx.send(r);
            }
            (Some(Pending::Remove(tx)), Reply::Removed(r)) => {
                let _ = tx.send(r);
            }
            (Some(Pending::Reconfigure(tx)), Reply::Reconfigured(r)) => {
                let _ = tx.send(r);
            }
            (pending, _) => self.pending = pending,
        }
    }

    fn start_checks(&mut self, address: SocketAddr, initial: bool) {
        let Some(prober) = self.prober.clone() else {
            return;
        };
        let token = self.stop.child_token();
        let health = &self.machine.config().health;
        let target = match health.port {
            0 => address,
            port => SocketAddr::new(address.ip(), port),
        };
        self.tasks.spawn(run_checks(
            address,
            target,
            prober,
            health.interval,
            initial,
            self.reports_tx.clone(),
            token.clone(),
        ));
        if let Some(old) = self.checks.insert(address, token) {
            old.cancel();
        }
    }

    /// (Re)starts the cluster-wide probe with the settings in force.
    fn start_cluster_probe(&mut self) {
        if let Some(token) = self.cluster.take() {
            token.cancel();
        }
        let config = self.machine.config().clone();
        let Some(cluster) = config.cluster_health.clone() else {
            return;
        };
        let mut health = config.health.clone();
        health.path = cluster.path.clone();
        // The cluster probe speaks HTTP even when backends are checked with a bare connect.
        if matches!(health.check, CheckKind::Tcp | CheckKind::None) {
            health.check = CheckKind::Https;
        }
        // One probe must end before the next begins.
        health.timeout = health.timeout.min(cluster.interval);
        match Prober::with_send_proxy(&health, check_send_proxy(&config)) {
            Ok(prober) => {
                let token = self.stop.child_token();
                let pool = self.pool.clone();
                let mut turn = 0usize;
                let next_target = move || {
                    let snapshot = pool.snapshot();
                    let set = &snapshot.live;
                    if set.fail_open || set.members.is_empty() {
                        return None;
                    }
                    turn = turn.wrapping_add(1);
                    Some(set.members[turn % set.members.len()].address)
                };
                self.tasks.spawn(crate::health::cluster::run(
                    next_target,
                    prober,
                    health.port,
                    cluster.interval,
                    self.cluster_tx.clone(),
                    token.clone(),
                ));
                self.cluster = Some(token);
            }
            Err(e) => {
                tracing::error!(pool = %self.pool.name, error = %e, "cannot set up the cluster health probe");
            }
        }
    }

    /// (Re)starts DNS discovery with the settings in force.
    fn start_discovery(&mut self) {
        if let Some(token) = self.discovery.take() {
            token.cancel();
        }
        let Some(d) = self.machine.config().discover.clone() else {
            return;
        };
        let discovery = match d.server {
            Some(server) => Discovery::with_server(server),
            None => match Discovery::system() {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(pool = %self.pool.name, error = %e,
                        "cannot set up DNS discovery: the pool has no members");
                    return;
                }
            },
        };
        let (tx, rx) = mpsc::channel(4);
        let token = self.stop.child_token();
        self.tasks.spawn(crate::discovery::run(
            Arc::new(discovery),
            self.pool.name.clone(),
            d,
            tx,
            self.pool.discovery_failures.clone(),
            token.clone(),
        ));
        self.discovery = Some(token);
        self.new_members = Some(rx);
    }
}

/// Writes one of the machine's log lines through `tracing`, its fields as structured fields.
fn log(pool: &str, line: &LogLine) {
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                $level,
                pool = %pool,
                backend = line.backend.as_ref().map(tracing::field::display),
                action = line.action,
                from = line.from,
                state = line.state,
                reason = line.reason.as_deref(),
                service = line.service.as_deref(),
                services = line.services.as_deref(),
                up = line.up,
                total = line.total,
                open_connections = line.open_connections,
                weight = line.weight,
                status = line.status,
                error = line.error.as_deref(),
                "{}",
                line.message
            )
        };
    }
    match line.level {
        Level::Debug => emit!(tracing::Level::DEBUG),
        Level::Info => emit!(tracing::Level::INFO),
        Level::Warn => emit!(tracing::Level::WARN),
        Level::Error => emit!(tracing::Level::ERROR),
    }
}
