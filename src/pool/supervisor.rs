//! The pool supervisor: one task per pool that folds health reports, passive failures, admin
//! actions and reloads into each backend's state, then rebuilds and publishes the live set.
//! Being the only writer, it needs no lock, and every published snapshot is consistent.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    AdminAction, AdminError, Backend, BackendState, CheckRecord, Command, LiveSet, Pool,
    Reconfigured,
};
use crate::config::{CheckKind, PoolConfig, SendProxy};
use crate::discovery::Discovery;
use crate::health::probe::{ProbeSetupError, Prober};
use crate::health::quay::{self, Services};
use crate::health::state::{HealthState, Transition};
use crate::health::{run_checks, CheckReport};

/// How often draining backends are looked at (deadline passed? last connection gone?). Short
/// enough that a removed backend leaves `/status` promptly; the tick runs only while draining.
const DRAIN_TICK: Duration = Duration::from_millis(200);

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A started pool.
pub struct Started {
    /// The pool, shared with listeners and the admin API.
    pub pool: Arc<Pool>,
    /// Fires once the start-up round of checks has finished (or timed out).
    pub initial_round: oneshot::Receiver<()>,
}

/// What an operator or a reload set, on top of what the checks say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdminState {
    Active,
    Draining { deadline: Instant, cut: bool },
    Disabled,
}

struct Slot {
    backend: Arc<Backend>,
    health: HealthState,
    admin: AdminState,
    /// Removed by a reload: drains, then leaves the pool.
    removed: bool,
    /// Stops this backend's check task.
    checks: Option<CancellationToken>,
    initial_pending: bool,
    /// Services its latest check reported, when its body was a Quay health document.
    services: Option<Services>,
    /// When it last came up, while its slow start lasts.
    ramp_from: Option<Instant>,
}

impl Slot {
    fn is_eligible(&self) -> bool {
        self.admin == AdminState::Active && !self.removed
    }

    fn state(&self) -> BackendState {
        match self.admin {
            AdminState::Disabled => BackendState::Disabled,
            AdminState::Draining { .. } => BackendState::Draining,
            AdminState::Active if self.health.is_up() => BackendState::Up,
            AdminState::Active => BackendState::Down,
        }
    }
}

/// The next member list from a discovery task, or never when the pool has none.
async fn next_members(rx: &mut Option<mpsc::Receiver<Vec<SocketAddr>>>) -> Option<Vec<SocketAddr>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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

/// Weights in a live set are scaled by this, so slow start can give a backend about a tenth of
/// its share even at weight 1.
const WEIGHT_SCALE: u32 = 10;

/// A backend's weight in the live set: full, or during slow start a share growing linearly from
/// a tenth to all of it.
fn effective_weight(slot: &Slot, slow_start: Option<Duration>, now: Instant) -> u32 {
    let full = slot.backend.weight().max(1) * WEIGHT_SCALE;
    match (slot.ramp_from, slow_start) {
        (Some(from), Some(ramp)) if !ramp.is_zero() => {
            let progress = (now.duration_since(from).as_secs_f64() / ramp.as_secs_f64()).min(1.0);
            let share = 0.1 + 0.9 * progress;
            ((f64::from(full) * share).round() as u32).clamp(1, full)
        }
        _ => full,
    }
}

/// How often a ramping backend's weight is republished: twenty steps per ramp, but never more
/// often than every 50 ms nor less than every second.
fn ramp_step(ramp: Duration) -> Duration {
    (ramp / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Longest the start-up round waits for a discovered pool's first DNS answer.
const DNS_STARTUP_WAIT: Duration = Duration::from_secs(5);

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
    let name: Arc<str> = Arc::from(config.name.as_str());
    let config = Arc::new(config);
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let pool = Arc::new(Pool {
        name: name.clone(),
        members: ArcSwap::from_pointee(Vec::new()),
        live: ArcSwap::from_pointee(LiveSet::empty(config.clone())),
        fail_open: Default::default(),
        retired: Default::default(),
        finished: Default::default(),
        shared_outage: Default::default(),
        cluster_health: Default::default(),
        discovery_failures: Default::default(),
        commands: commands_tx,
    });
    let (reports_tx, reports_rx) = mpsc::channel(config.backends.len().max(1) * 2);
    let (initial_tx, initial_rx) = oneshot::channel();
    let mut supervisor = Supervisor {
        pool: pool.clone(),
        config: config.clone(),
        drain_timeout,
        slots: Vec::new(),
        prober,
        reports_tx,
        tasks: tasks.clone(),
        stop: stop.clone(),
        initial_done: Some(initial_tx),
        refusing: false,
        last_publish: Instant::now(),
        retired: false,
        cluster: None,
        discovery: None,
        new_members: None,
    };
    supervisor.start_discovery();
    for b in &config.backends {
        supervisor.add_slot(b.address, b.weight, initial);
    }
    supervisor.publish();
    let discovered = config.discover.is_some();
    // A discovered pool's start-up round ends once its first members were checked.
    if !initial || (supervisor.prober.is_none() && !discovered) {
        supervisor.finish_initial_round();
    }
    let mut deadline = config.health.timeout + Duration::from_millis(250);
    if let Some(d) = &config.discover {
        deadline += d.every.min(DNS_STARTUP_WAIT);
    }
    tasks.spawn(supervisor.run(reports_rx, commands_rx, stop, deadline));
    Ok(Started {
        pool,
        initial_round: initial_rx,
    })
}

struct Supervisor {
    pool: Arc<Pool>,
    config: Arc<PoolConfig>,
    drain_timeout: Duration,
    slots: Vec<Slot>,
    prober: Option<Arc<Prober>>,
    reports_tx: mpsc::Sender<CheckReport>,
    tasks: TaskTracker,
    stop: CancellationToken,
    initial_done: Option<oneshot::Sender<()>>,
    /// Whether the pool is closing new connections for want of a backend (logged on change).
    refusing: bool,
    /// When the live set was last published: a ramping backend's weight is republished one
    /// ramp step after it, however many other events arrive in between.
    last_publish: Instant,
    retired: bool,
    /// Stops the `[pool.cluster_health]` task.
    cluster: Option<CancellationToken>,
    /// Stops the DNS discovery task.
    discovery: Option<CancellationToken>,
    /// A new discovery task's member lists, picked up by the run loop.
    new_members: Option<mpsc::Receiver<Vec<SocketAddr>>>,
}

impl Supervisor {
    async fn run(
        mut self,
        mut reports: mpsc::Receiver<CheckReport>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
        initial_deadline: Duration,
    ) {
        let initial_timer = tokio::time::sleep(initial_deadline);
        tokio::pin!(initial_timer);
        let mut members: Option<mpsc::Receiver<Vec<SocketAddr>>> = None;
        let mut tick = tokio::time::interval(DRAIN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let draining = self
                .slots
                .iter()
                .any(|s| matches!(s.admin, AdminState::Draining { .. }));
            // The tick alone would cut up to DRAIN_TICK late; wake at the deadline itself.
            let cut_due = self.next_cut_deadline();
            let ramping = self.slots.iter().any(|s| s.ramp_from.is_some());
            if let Some(rx) = self.new_members.take() {
                members = Some(rx);
            }
            let ramp_tick = ramp_step(self.config.slow_start.unwrap_or_default());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut initial_timer, if self.initial_done.is_some() => {
                    self.finish_initial_round();
                }
                Some(report) = reports.recv() => self.on_report(report),
                Some(command) = commands.recv() => self.on_command(command),
                Some(list) = next_members(&mut members) => self.on_discovered(list),
                _ = tick.tick(), if draining => self.on_drain_tick(),
                _ = sleep_until_some(cut_due), if cut_due.is_some() => self.on_drain_tick(),
                _ = tokio::time::sleep_until(self.last_publish + ramp_tick), if ramping => self.publish(),
            }
            if self.retired && self.slots.is_empty() {
                tracing::info!(pool = %self.pool.name, "removed pool drained: stopped");
                self.pool.finished.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// (Re)starts DNS discovery when the pool has `discover`.
    fn start_discovery(&mut self) {
        if let Some(token) = self.discovery.take() {
            token.cancel();
        }
        let Some(d) = self.config.discover.clone() else {
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

    /// A new member list from DNS: new addresses start down (needing `rise` passes, or one
    /// pass during the start-up round), vanished ones drain.
    fn on_discovered(&mut self, list: Vec<SocketAddr>) {
        let initial = self.initial_done.is_some();
        let wanted = list.into_iter().map(|a| (a, 1)).collect();
        let changes = self.set_members(wanted, initial);
        for a in &changes.added {
            tracing::info!(pool = %self.pool.name, backend = %a, "backend discovered: starts down");
        }
        for a in &changes.removed {
            tracing::info!(pool = %self.pool.name, backend = %a, "backend gone from DNS: draining");
        }
        if initial && (self.prober.is_none() || self.slots.iter().all(|s| !s.initial_pending)) {
            self.finish_initial_round();
        }
    }

    fn slot_index(&self, addr: SocketAddr) -> Option<usize> {
        self.slots.iter().position(|s| s.backend.address == addr)
    }

    fn add_slot(&mut self, address: SocketAddr, weight: u32, initial: bool) {
        let checked = self.prober.is_some();
        // Unchecked backends are simply up; checked ones start down until checks say otherwise.
        let state = if checked {
            BackendState::Down
        } else {
            BackendState::Up
        };
        let backend = Arc::new(Backend::new(self.pool.name.clone(), address, weight, state));
        let health = &self.config.health;
        self.slots.push(Slot {
            backend,
            health: HealthState::new(!checked, health.rise, health.fall),
            admin: AdminState::Active,
            removed: false,
            checks: None,
            initial_pending: checked && initial,
            services: None,
            ramp_from: None,
        });
        let i = self.slots.len() - 1;
        self.start_checks(i, initial);
    }

    fn start_checks(&mut self, i: usize, initial: bool) {
        let Some(prober) = self.prober.clone() else {
            return;
        };
        let slot = &mut self.slots[i];
        if slot.checks.is_some() {
            return;
        }
        let token = self.stop.child_token();
        let address = slot.backend.address;
        let target = match self.config.health.port {
            0 => address,
            port => SocketAddr::new(address.ip(), port),
        };
        self.tasks.spawn(run_checks(
            address,
            target,
            prober,
            self.config.health.interval,
            initial,
            self.reports_tx.clone(),
            token.clone(),
        ));
        slot.checks = Some(token);
    }

    /// (Re)starts the cluster-wide probe when the pool has `[pool.cluster_health]`. Not before
    /// the start-up health round has finished: until then no backend is up to ask, and the
    /// first result would be a false "cluster health failing" on every start.
    fn start_cluster_health(&mut self) {
        if let Some(token) = self.cluster.take() {
            token.cancel();
        }
        if self.initial_done.is_some() {
            return; // finish_initial_round starts it
        }
        let Some(cluster) = self.config.cluster_health.clone() else {
            return;
        };
        let mut health = self.config.health.clone();
        health.path = cluster.path.clone();
        // The cluster probe speaks HTTP even when backends are checked with a bare connect.
        if matches!(health.check, CheckKind::Tcp | CheckKind::None) {
            health.check = CheckKind::Https;
        }
        // One probe must end before the next begins.
        health.timeout = health.timeout.min(cluster.interval);
        match Prober::with_send_proxy(&health, check_send_proxy(&self.config)) {
            Ok(prober) => {
                let token = self.stop.child_token();
                self.tasks.spawn(crate::health::cluster::run(
                    self.pool.clone(),
                    prober,
                    health.port,
                    cluster.interval,
                    token.clone(),
                ));
                self.cluster = Some(token);
            }
            Err(e) => {
                tracing::error!(pool = %self.pool.name, error = %e, "cannot set up the cluster health probe");
            }
        }
    }

    fn stop_checks(&mut self, i: usize) {
        if let Some(token) = self.slots[i].checks.take() {
            token.cancel();
        }
    }

    fn on_report(&mut self, report: CheckReport) {
        let Some(i) = self.slot_index(report.backend) else {
            return;
        };
        // A report that was in flight when checks stopped (disable) says nothing now.
        if self.slots[i].checks.is_none() {
            return;
        }
        let outcome = &report.outcome;
        let pass = outcome.is_pass();
        let reason = match &outcome.result {
            Ok(()) => outcome
                .status
                .map_or_else(|| "connected".to_string(), |s| format!("status {s}")),
            Err(e) => e.to_string(),
        };
        // Read whenever the body is a Quay health document, shared_dependencies or not: the
        // services are how an operator sees why a machine is down (/status, /metrics).
        let services = quay::parse_services(&outcome.body);
        let shared = !self.config.health.shared_dependencies.is_empty();
        let slot = &mut self.slots[i];
        slot.backend.record_check(pass, outcome.latency);
        slot.backend.set_last_check(CheckRecord {
            ok: pass,
            status: outcome.status,
            latency: outcome.latency,
            error: outcome.result.as_ref().err().map(|e| e.to_string()),
            at: SystemTime::now(),
            services: services.clone(),
        });
        slot.services = services;
        let outage = if shared {
            self.update_shared_outage()
        } else {
            Vec::new()
        };
        let slot = &mut self.slots[i];
        // A failure that is only a shared outage neither ejects an up backend nor counts
        // toward bringing back a down one.
        let forgiven = !pass && quay::shared_failure(slot.services.as_ref(), &outage);
        let transition = if forgiven {
            if report.initial && slot.initial_pending {
                slot.initial_pending = false;
            }
            tracing::debug!(pool = %self.pool.name, backend = %report.backend, services = ?outage,
                "check failed only on shared services in outage: kept in rotation");
            None
        } else if report.initial && slot.initial_pending {
            slot.initial_pending = false;
            slot.health.observe_initial(pass)
        } else {
            slot.health.observe(pass)
        };
        if let Some(t) = transition {
            self.log_transition(i, t, &reason);
            if t == Transition::Up {
                self.slots[i].backend.reset_consecutive_failures();
                // The start-up round brings everyone up together: nothing to ramp against.
                if self.config.slow_start.is_some() && !report.initial {
                    self.slots[i].ramp_from = Some(Instant::now());
                }
            }
            self.publish();
        } else if report.initial && !pass {
            tracing::info!(pool = %self.pool.name, backend = %report.backend, reason = %reason,
                "backend starts down: start-up check failed");
        }
        if self.initial_done.is_some() && self.slots.iter().all(|s| !s.initial_pending) {
            self.finish_initial_round();
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::PassiveFailure {
                backend,
                consecutive,
            } => self.on_passive_failure(backend, consecutive),
            Command::Admin {
                backend,
                action,
                reply,
            } => {
                let _ = reply.send(self.on_admin(backend, action));
            }
            Command::Reconfigure {
                config,
                drain_timeout,
                prober,
                reply,
            } => {
                let _ = reply.send(self.reconfigure(*config, drain_timeout, prober));
            }
            Command::Retire { drain_timeout } => self.retire(drain_timeout),
            Command::AddBackend {
                address,
                weight,
                reply,
            } => {
                let _ = reply.send(self.on_add(address, weight));
            }
            Command::RemoveBackend { address, reply } => {
                let _ = reply.send(self.on_remove(address));
            }
        }
    }

    /// The members that stay (not removed), with their weights, in order.
    fn kept_members(&self) -> Vec<(SocketAddr, u32)> {
        self.slots
            .iter()
            .filter(|s| !s.removed)
            .map(|s| (s.backend.address, s.backend.weight()))
            .collect()
    }

    /// A member added through the admin API: the same path as a reload's new member (down,
    /// `rise` passes to come up); one still draining after its removal comes back with its
    /// health, as it would from a reload.
    fn on_add(&mut self, address: SocketAddr, weight: u32) -> Result<Arc<Backend>, AdminError> {
        let pool = self.pool.name.to_string();
        if self.retired {
            return Err(AdminError::Stopped(pool));
        }
        if self.config.discover.is_some() {
            return Err(AdminError::Discovered(pool));
        }
        if self
            .slot_index(address)
            .is_some_and(|i| !self.slots[i].removed)
        {
            return Err(AdminError::Exists { pool, address });
        }
        let mut wanted = self.kept_members();
        wanted.push((address, weight));
        self.set_members(wanted, false);
        let Some(i) = self.slot_index(address) else {
            // set_members keeps every wanted address; this is a broken invariant, not input.
            return Err(AdminError::UnknownBackend { pool, address });
        };
        let backend = self.slots[i].backend.clone();
        tracing::info!(pool = %self.pool.name, backend = %address, weight,
            state = backend.state().as_str(), "backend added through the admin API");
        Ok(backend)
    }

    /// A member removed through the admin API: the same path as a reload's removal (draining,
    /// gone after its last connection or `drain_timeout`).
    fn on_remove(&mut self, address: SocketAddr) -> Result<(), AdminError> {
        let pool = self.pool.name.to_string();
        if self.config.discover.is_some() {
            return Err(AdminError::Discovered(pool));
        }
        let Some(i) = self.slot_index(address) else {
            return Err(AdminError::UnknownBackend { pool, address });
        };
        if self.slots[i].removed {
            return Ok(());
        }
        let wanted = self
            .kept_members()
            .into_iter()
            .filter(|(a, _)| *a != address)
            .collect();
        self.set_members(wanted, false);
        tracing::info!(pool = %self.pool.name, backend = %address,
            open_connections = self.slots.iter().find(|s| s.backend.address == address)
                .map_or(0, |s| s.backend.active_connections()),
            "backend removed through the admin API: draining");
        if self.slots.iter().all(|s| s.removed) {
            tracing::warn!(pool = %self.pool.name, "the pool has no members left");
        }
        Ok(())
    }

    /// Recomputes which shared services are in outage (over enabled backends' latest
    /// reports); logs and publishes changes.
    fn update_shared_outage(&mut self) -> Vec<String> {
        let latest: Vec<Option<&Services>> = self
            .slots
            .iter()
            .filter(|s| s.is_eligible())
            .map(|s| s.services.as_ref())
            .collect();
        let outage = quay::outages(&self.config.health.shared_dependencies, &latest);
        let before = self.pool.shared_outage.load_full();
        if *before != outage {
            for s in outage.iter().filter(|s| !before.contains(s)) {
                tracing::warn!(pool = %self.pool.name, service = %s,
                    "shared outage: most backends report this shared service down; backends failing only on it stay in rotation");
            }
            for s in before.iter().filter(|s| !outage.contains(s)) {
                tracing::info!(pool = %self.pool.name, service = %s, "shared outage ended");
            }
            self.pool.shared_outage.store(Arc::new(outage.clone()));
        }
        outage
    }

    fn on_passive_failure(&mut self, backend: SocketAddr, consecutive: u32) {
        let Some(i) = self.slot_index(backend) else {
            return;
        };
        // With no active check nothing could bring it back, so passive marking is off.
        if self.prober.is_none() {
            return;
        }
        if let Some(t) = self.slots[i].health.force_down() {
            let reason = format!("{consecutive} consecutive connect failures");
            self.slots[i].backend.set_passive_down(Some(format!(
                "{reason} (passive_fall); back after {} passing checks",
                self.config.health.rise
            )));
            self.log_transition(i, t, &reason);
            self.publish();
        }
    }

    fn on_admin(
        &mut self,
        address: SocketAddr,
        action: AdminAction,
    ) -> Result<BackendState, AdminError> {
        let pool = self.pool.name.to_string();
        let Some(i) = self.slot_index(address) else {
            return Err(AdminError::UnknownBackend { pool, address });
        };
        if self.slots[i].removed {
            return Err(AdminError::Removed { pool, address });
        }
        let before = self.slots[i].state();
        match (action, self.slots[i].admin) {
            (AdminAction::Drain, AdminState::Draining { .. }) => {}
            (AdminAction::Drain, previous) => {
                self.slots[i].admin = AdminState::Draining {
                    deadline: Instant::now() + self.drain_timeout,
                    cut: false,
                };
                if previous == AdminState::Disabled {
                    // Its health is stale after a time without checks: earn `rise` passes again.
                    self.reset_health(i);
                    self.start_checks(i, false);
                }
            }
            (AdminAction::Disable, AdminState::Disabled) => {}
            (AdminAction::Disable, _) => {
                self.slots[i].admin = AdminState::Disabled;
                self.stop_checks(i);
            }
            (AdminAction::Enable, AdminState::Active) => {}
            (AdminAction::Enable, AdminState::Draining { .. }) => {
                self.slots[i].admin = AdminState::Active;
                self.slots[i].backend.rearm_cut();
            }
            (AdminAction::Enable, AdminState::Disabled) => {
                self.slots[i].admin = AdminState::Active;
                self.slots[i].backend.rearm_cut();
                self.reset_health(i);
                self.start_checks(i, false);
            }
        }
        let after = self.slots[i].state();
        tracing::info!(pool = %self.pool.name, backend = %address, action = action.as_str(),
            from = before.as_str(), state = after.as_str(), "admin action");
        self.publish();
        Ok(after)
    }

    /// Down, needing `rise` passes (or up at once when nothing checks it).
    fn reset_health(&mut self, i: usize) {
        let h = &self.config.health;
        self.slots[i].health = HealthState::new(self.prober.is_none(), h.rise, h.fall);
    }

    fn reconfigure(
        &mut self,
        new: PoolConfig,
        drain_timeout: Duration,
        prober: Option<PreparedProber>,
    ) -> Reconfigured {
        self.drain_timeout = drain_timeout;
        let old_discover = self.config.discover.clone();
        let health_changed =
            new.health != self.config.health || new.send_proxy != self.config.send_proxy;
        let cluster_changed = new.cluster_health != self.config.cluster_health;
        self.config = Arc::new(new);
        if health_changed || cluster_changed {
            self.start_cluster_health();
        }
        if health_changed {
            // Built by the reload off the runtime; built here only for a caller that did not.
            let prober = match prober {
                Some(p) => p.0,
                None => new_prober(&self.config),
            };
            match prober {
                Ok(prober) => {
                    let was_checked = self.prober.is_some();
                    self.prober = prober;
                    let (rise, fall) = (self.config.health.rise, self.config.health.fall);
                    for i in 0..self.slots.len() {
                        self.stop_checks(i);
                        // Unchecked backends are up; backends checked for the first time start
                        // from up too (they were serving), so checks only take them out.
                        if self.prober.is_none() || !was_checked {
                            self.slots[i].health = HealthState::new(true, rise, fall);
                        } else {
                            self.slots[i].health.set_thresholds(rise, fall);
                        }
                        if self.slots[i].admin != AdminState::Disabled {
                            self.start_checks(i, false);
                        }
                    }
                }
                Err(e) => {
                    // Validation read the same files a moment ago; keep checking the old way.
                    tracing::error!(pool = %self.pool.name, error = %e,
                        "new health-check settings could not be applied; keeping the old ones");
                }
            }
        }
        let discover_changed = self.config.discover != old_discover;
        let changes = if self.config.discover.is_some() {
            // Members come from DNS; a changed `discover` restarts the lookups, and the current
            // members stay until the first new answer.
            if discover_changed {
                self.start_discovery();
            }
            Reconfigured::default()
        } else {
            if discover_changed {
                self.start_discovery();
            }
            let wanted = self
                .config
                .backends
                .iter()
                .map(|b| (b.address, b.weight))
                .collect();
            self.set_members(wanted, false)
        };
        for a in &changes.added {
            tracing::info!(pool = %self.pool.name, backend = %a, "backend added by reload: starts down");
        }
        for a in &changes.removed {
            tracing::info!(pool = %self.pool.name, backend = %a, "backend removed by reload: draining");
        }
        self.publish();
        changes
    }

    /// Makes the members exactly `wanted` (address, weight): kept ones keep their state, new
    /// ones start down, missing ones drain. Publishes.
    fn set_members(&mut self, wanted: Vec<(SocketAddr, u32)>, initial: bool) -> Reconfigured {
        let mut changes = Reconfigured::default();
        for &(address, weight) in &wanted {
            match self.slot_index(address) {
                Some(i) => {
                    let slot = &mut self.slots[i];
                    slot.backend.set_weight(weight);
                    if slot.removed {
                        // Back before its drain finished: it keeps its health, like a kept one.
                        slot.removed = false;
                        slot.admin = AdminState::Active;
                        slot.backend.rearm_cut();
                        changes.added.push(address);
                    }
                }
                None => {
                    self.add_slot(address, weight, initial);
                    changes.added.push(address);
                }
            }
        }
        let deadline = Instant::now() + self.drain_timeout;
        for slot in &mut self.slots {
            let address = slot.backend.address;
            if !slot.removed && !wanted.iter().any(|(a, _)| *a == address) {
                slot.removed = true;
                slot.admin = AdminState::Draining {
                    deadline,
                    cut: false,
                };
                changes.removed.push(address);
            }
        }
        // Config order first, removed (draining) ones after.
        let order = |s: &Slot| {
            wanted
                .iter()
                .position(|(a, _)| *a == s.backend.address)
                .unwrap_or(usize::MAX)
        };
        self.slots.sort_by_key(order);
        self.publish();
        changes
    }

    fn retire(&mut self, drain_timeout: Duration) {
        self.retired = true;
        if let Some(token) = self.cluster.take() {
            token.cancel();
        }
        if let Some(token) = self.discovery.take() {
            token.cancel();
        }
        let deadline = Instant::now() + drain_timeout;
        for slot in &mut self.slots {
            slot.removed = true;
            if !matches!(slot.admin, AdminState::Draining { .. }) {
                slot.admin = AdminState::Draining {
                    deadline,
                    cut: false,
                };
            }
        }
        tracing::info!(pool = %self.pool.name, "pool removed by reload: draining");
        self.publish();
    }

    /// The earliest drain deadline still ahead of a backend with open connections.
    fn next_cut_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter_map(|s| match s.admin {
                AdminState::Draining {
                    deadline,
                    cut: false,
                } if deadline > now && s.backend.active_connections() > 0 => Some(deadline),
                _ => None,
            })
            .min()
    }

    fn on_drain_tick(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for slot in &mut self.slots {
            let AdminState::Draining { deadline, cut } = &mut slot.admin else {
                continue;
            };
            let active = slot.backend.active_connections();
            if !*cut && now >= *deadline && active > 0 {
                tracing::warn!(pool = %self.pool.name, backend = %slot.backend.address,
                    open_connections = active, "drain timeout reached: closing the remaining connections");
                slot.backend.cut_connections();
                *cut = true;
            }
        }
        let before = self.slots.len();
        let mut i = 0;
        while i < self.slots.len() {
            let s = &self.slots[i];
            if s.removed && s.backend.active_connections() == 0 {
                self.stop_checks(i);
                let gone = self.slots.remove(i);
                tracing::info!(pool = %self.pool.name, backend = %gone.backend.address,
                    "removed backend drained: gone");
            } else {
                i += 1;
            }
        }
        changed |= before != self.slots.len();
        if changed {
            self.publish();
        }
    }

    fn log_transition(&self, i: usize, t: Transition, reason: &str) {
        let b = &self.slots[i].backend;
        match t {
            Transition::Up => {
                tracing::info!(pool = %self.pool.name, backend = %b.address, state = "up", reason = %reason, "backend up")
            }
            Transition::Down => {
                tracing::warn!(pool = %self.pool.name, backend = %b.address, state = "down", reason = %reason, "backend down")
            }
        }
    }

    fn finish_initial_round(&mut self) {
        for s in &mut self.slots {
            s.initial_pending = false;
        }
        if let Some(tx) = self.initial_done.take() {
            let up = self.slots.iter().filter(|s| s.health.is_up()).count();
            tracing::info!(pool = %self.pool.name, up, total = self.slots.len(), "start-up health round finished");
            self.publish();
            let _ = tx.send(());
            self.start_cluster_health();
        }
    }

    /// Rebuilds the live set from the slots and publishes it with one store.
    fn publish(&mut self) {
        self.last_publish = Instant::now();
        for s in &self.slots {
            s.backend.set_state(s.state());
        }
        let now = Instant::now();
        let slow_start = self.config.slow_start;
        for s in &mut self.slots {
            if let (Some(from), Some(ramp)) = (s.ramp_from, slow_start) {
                if now.duration_since(from) >= ramp || !s.health.is_up() {
                    s.ramp_from = None;
                }
            }
        }
        let (up, up_weights): (Vec<Arc<Backend>>, Vec<u32>) = self
            .slots
            .iter()
            .filter(|s| s.is_eligible() && s.health.is_up())
            .map(|s| (s.backend.clone(), effective_weight(s, slow_start, now)))
            .unzip();
        let down: Vec<Arc<Backend>> = self
            .slots
            .iter()
            .filter(|s| s.is_eligible() && !s.health.is_up())
            .map(|s| s.backend.clone())
            .collect();
        // Before the start-up round ends nobody is up yet by construction: that is no outage.
        let in_startup = self.initial_done.is_some();
        let failing_open =
            up.is_empty() && !down.is_empty() && self.config.fail_open && !in_startup;
        let set = if !up.is_empty() {
            LiveSet::with_weights(self.config.clone(), up, up_weights, false)
        } else if failing_open {
            LiveSet::new(self.config.clone(), down, true)
        } else {
            LiveSet::empty(self.config.clone())
        };
        let was_failing_open = self.pool.fail_open.swap(failing_open, Ordering::Relaxed);
        let is_empty = set.is_empty();
        set.continue_from(&self.pool.live.load());
        self.pool.live.store(Arc::new(set));
        self.pool.members.store(Arc::new(
            self.slots.iter().map(|s| s.backend.clone()).collect(),
        ));
        if failing_open && !was_failing_open {
            tracing::warn!(pool = %self.pool.name, "no backend is up: failing open over the down backends");
        } else if !failing_open && was_failing_open {
            tracing::info!(pool = %self.pool.name, "fail-open ended");
        }
        let refusing = is_empty && !in_startup && !self.retired;
        if refusing && !self.refusing {
            tracing::warn!(pool = %self.pool.name, "no backend can take connections: new connections are closed");
        } else if !refusing && self.refusing {
            tracing::info!(pool = %self.pool.name, "a backend can take connections again");
        }
        self.refusing = refusing;
    }
}
