//! A pool's decisions as a pure state machine: `apply(event, now) -> effects`. It folds check
//! results, passive failures, admin actions, membership changes, reloads, DNS answers, time and
//! cluster-probe results into each backend's state and says what to do about it (start or stop
//! checks, cut connections, log, publish a [`PoolSnapshot`](crate::pool::PoolSnapshot)). No
//! I/O, no clock: time is the `now` passed in, so a test can drive it through thousands of
//! seeded sequences.

mod event;
mod membership;
mod publish;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use event::{CheckResult, Effect, Event, Level, LogLine, Reply};

use super::{AdminAction, AdminError, Backend, BackendState};
use crate::config::PoolConfig;
use crate::health::cluster::ClusterHealth;
use crate::health::quay::{self, Services};
use crate::health::state::{HealthState, Transition};

/// Weights in a live set are scaled by this, so slow start can give a backend about a tenth of
/// its share even at weight 1.
pub const WEIGHT_SCALE: u32 = 10;

/// Extra time the start-up round waits past the check `timeout`, for the report to arrive.
const STARTUP_SLACK: Duration = Duration::from_millis(250);

/// Longest the start-up round waits for a discovered pool's first DNS answer.
const DNS_STARTUP_WAIT: Duration = Duration::from_secs(5);

/// How often a ramping backend's weight is republished: twenty steps per ramp, but never more
/// often than every 50 ms nor less than every second.
pub fn ramp_step(ramp: Duration) -> Duration {
    (ramp / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Whether a reload's `new` settings change how backends are checked (a new prober is needed).
pub fn checks_changed(old: &PoolConfig, new: &PoolConfig) -> bool {
    new.health != old.health || new.send_proxy != old.send_proxy
}

/// What an operator or a reload set, on top of what the checks say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdminState {
    Active,
    Draining { deadline: Instant, cut: bool },
    Disabled,
}

/// One member and everything the machine knows about it.
#[derive(Debug)]
struct Slot {
    backend: Arc<Backend>,
    weight: u32,
    health: HealthState,
    admin: AdminState,
    /// Removed by a reload, DNS or the admin API: drains, then leaves the pool.
    removed: bool,
    /// Whether its check task runs (reports from a stopped one are stale).
    checking: bool,
    initial_pending: bool,
    /// Services its latest check reported, when its body was a Quay health document.
    services: Option<Services>,
    /// When it last came up, while its slow start lasts.
    ramp_from: Option<Instant>,
    /// Why passive marking took it down, until it is up again.
    passive_down: Option<String>,
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

    /// Its weight in the live set: full, or during slow start a share growing linearly from a
    /// tenth to all of it.
    fn effective_weight(&self, slow_start: Option<Duration>, now: Instant) -> u32 {
        let full = self.weight.max(1) * WEIGHT_SCALE;
        match (self.ramp_from, slow_start) {
            (Some(from), Some(ramp)) if !ramp.is_zero() => {
                let progress = (now.saturating_duration_since(from).as_secs_f64()
                    / ramp.as_secs_f64())
                .min(1.0);
                let share = 0.1 + 0.9 * progress;
                ((f64::from(full) * share).round() as u32).clamp(1, full)
            }
            _ => full,
        }
    }
}

/// The state of one pool, changed only by [`PoolMachine::apply`].
#[derive(Debug)]
pub struct PoolMachine {
    name: Arc<str>,
    config: Arc<PoolConfig>,
    drain_timeout: Duration,
    /// Whether something probes the backends (`check` is not `none`).
    checked: bool,
    /// Config order, then removed members still draining.
    slots: Vec<Slot>,
    /// Address → index into `slots`: a check report costs O(1), not a scan.
    index: HashMap<SocketAddr, usize>,
    /// Deadline of the start-up round while it lasts.
    startup: Option<Instant>,
    /// Members whose start-up check has not answered yet.
    pending_initial: usize,
    outage: Vec<String>,
    cluster_health: Option<ClusterHealth>,
    retired: bool,
    finished: bool,
    /// As last published, to log changes.
    failing_open: bool,
    refusing: bool,
    last_publish: Instant,
    /// Set by a change that readers must see; one publish at the end of `apply`.
    dirty: bool,
    effects: Vec<Effect>,
    reply: Option<Reply>,
}

impl PoolMachine {
    /// A pool under `config`. `checked`: something probes its backends. `initial`: this is the
    /// process's start-up round (one pass is enough to be up; listeners wait for it); a pool
    /// added by a reload has none, and its backends need `rise` passes. Returns the effects of
    /// starting: discovery, checks, the first snapshot.
    pub fn new(
        config: Arc<PoolConfig>,
        drain_timeout: Duration,
        checked: bool,
        initial: bool,
        now: Instant,
    ) -> (PoolMachine, Vec<Effect>) {
        let mut deadline = now + config.health.timeout + STARTUP_SLACK;
        if let Some(d) = &config.discover {
            deadline += d.every.min(DNS_STARTUP_WAIT);
        }
        let mut m = PoolMachine {
            name: Arc::from(config.name.as_str()),
            config: config.clone(),
            drain_timeout,
            checked,
            slots: Vec::new(),
            index: HashMap::new(),
            startup: Some(deadline),
            pending_initial: 0,
            outage: Vec::new(),
            cluster_health: None,
            retired: false,
            finished: false,
            failing_open: false,
            refusing: false,
            last_publish: now,
            dirty: true,
            effects: Vec::new(),
            reply: None,
        };
        if config.discover.is_some() {
            m.effects.push(Effect::StartDiscovery);
        }
        for b in &config.backends {
            m.add_slot(b.address, b.weight, initial);
        }
        // A discovered pool's start-up round ends once its first members were checked.
        if !initial || (!checked && config.discover.is_none()) {
            m.finish_initial_round(now);
        }
        let effects = m.finish(now);
        (m, effects)
    }

    /// Folds `event`, which happened at `now`, into the state; returns what to do, in order
    /// (a publish always precedes the reply, so a caller sees its change on `/status`).
    pub fn apply(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        if self.finished {
            return Vec::new();
        }
        let eligibility_may_change = !matches!(
            event,
            Event::Check(_)
                | Event::PassiveFailure { .. }
                | Event::Tick { .. }
                | Event::ClusterHealth(_)
        );
        match event {
            Event::Check(result) => self.on_check(result, now),
            Event::PassiveFailure {
                backend,
                consecutive,
            } => self.on_passive_failure(backend, consecutive),
            Event::Admin { backend, action } => {
                let r = self.on_admin(backend, action, now);
                self.reply = Some(Reply::Admin(r));
            }
            Event::AddBackend { address, weight } => {
                let r = self.on_add(address, weight, now);
                self.reply = Some(Reply::Added(r));
            }
            Event::RemoveBackend { address } => {
                let r = self.on_remove(address, now);
                self.reply = Some(Reply::Removed(r));
            }
            Event::Reconfigure {
                config,
                drain_timeout,
                checks,
            } => {
                let r = self.on_reconfigure(config, drain_timeout, checks, now);
                self.reply = Some(Reply::Reconfigured(r));
            }
            Event::Discovered(list) => self.on_discovered(list, now),
            Event::Retire { drain_timeout } => self.on_retire(drain_timeout, now),
            Event::Tick { open_connections } => self.on_tick(&open_connections, now),
            Event::ClusterHealth(result) => self.on_cluster_health(result),
        }
        if eligibility_may_change && self.tracks_outage() {
            // Who counts toward the outage (enabled members) or which services are shared
            // may have changed: the outage follows at once, not at the next changed answer.
            self.update_shared_outage();
        }
        self.finish(now)
    }

    /// The soonest moment a [`Event::Tick`] has something to do: the start-up round's end, a
    /// drain deadline, the next slow-start step.
    pub fn next_wake(&self) -> Option<Instant> {
        let mut at = self.startup;
        let mut earliest = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for s in &self.slots {
            if let AdminState::Draining {
                deadline,
                cut: false,
            } = s.admin
            {
                earliest(deadline);
            }
        }
        if self.is_ramping() {
            if let Some(ramp) = self.config.slow_start {
                earliest(self.last_publish + ramp_step(ramp));
            }
        }
        at
    }

    /// Whether a member is draining (its last connection must be watched for).
    pub fn is_draining(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.admin, AdminState::Draining { .. }))
    }

    /// Draining members, whose open connections a [`Event::Tick`] should carry.
    pub fn draining(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.slots
            .iter()
            .filter(|s| matches!(s.admin, AdminState::Draining { .. }))
            .map(|s| &s.backend)
    }

    /// The member at `address` whose check reports count now (its checks run).
    pub fn checked_backend(&self, address: SocketAddr) -> Option<&Arc<Backend>> {
        let s = &self.slots[*self.index.get(&address)?];
        s.checking.then_some(&s.backend)
    }

    /// The member at `address`, removed ones included.
    pub fn backend(&self, address: SocketAddr) -> Option<&Arc<Backend>> {
        Some(&self.slots[*self.index.get(&address)?].backend)
    }

    /// The settings in force.
    pub fn config(&self) -> &Arc<PoolConfig> {
        &self.config
    }

    /// Whether the start-up round is still on.
    pub fn in_startup(&self) -> bool {
        self.startup.is_some()
    }

    /// Whether the retired pool has drained and stopped.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The pool's rise/fall state of `address`: whether its checks say up (for tests).
    pub fn health_is_up(&self, address: SocketAddr) -> Option<bool> {
        Some(self.slots[*self.index.get(&address)?].health.is_up())
    }

    fn is_ramping(&self) -> bool {
        self.slots.iter().any(|s| s.ramp_from.is_some())
    }

    fn log(&mut self, line: LogLine) {
        self.effects.push(Effect::Log(line));
    }

    /// Ends an `apply`: the retired pool's stop, one publish, then the reply.
    fn finish(&mut self, now: Instant) -> Vec<Effect> {
        if self.retired && self.slots.is_empty() && !self.finished {
            self.log(LogLine::new(Level::Info, "removed pool drained: stopped"));
            self.finished = true;
            self.dirty = true;
        }
        self.flush(now);
        if let Some(reply) = self.reply.take() {
            self.effects.push(Effect::Reply(reply));
        }
        if self.finished {
            self.effects.push(Effect::Stop);
        }
        std::mem::take(&mut self.effects)
    }

    fn flush(&mut self, now: Instant) {
        if std::mem::take(&mut self.dirty) {
            let snapshot = self.snapshot(now);
            self.effects.push(Effect::Publish(Arc::new(snapshot)));
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.backend.address, i))
            .collect();
    }

    fn add_slot(&mut self, address: SocketAddr, weight: u32, initial: bool) {
        let health = &self.config.health;
        // Unchecked backends are simply up; checked ones start down until checks say otherwise.
        let pending = self.checked && initial;
        self.slots.push(Slot {
            backend: Arc::new(Backend::new(self.name.clone(), address)),
            weight,
            health: HealthState::new(!self.checked, health.rise, health.fall),
            admin: AdminState::Active,
            removed: false,
            checking: false,
            initial_pending: pending,
            services: None,
            ramp_from: None,
            passive_down: None,
        });
        self.pending_initial += usize::from(pending);
        let i = self.slots.len() - 1;
        self.index.insert(address, i);
        self.start_checks(i, initial);
        self.dirty = true;
    }

    fn start_checks(&mut self, i: usize, initial: bool) {
        let slot = &mut self.slots[i];
        if self.checked && !slot.checking {
            slot.checking = true;
            self.effects.push(Effect::StartChecks {
                backend: slot.backend.address,
                initial,
            });
        }
    }

    fn stop_checks(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if std::mem::take(&mut slot.checking) {
            self.effects.push(Effect::StopChecks {
                backend: slot.backend.address,
            });
        }
    }

    fn clear_initial(&mut self, i: usize) {
        if std::mem::take(&mut self.slots[i].initial_pending) {
            self.pending_initial -= 1;
        }
    }

    /// Down, needing `rise` passes (or up at once when nothing checks it).
    fn reset_health(&mut self, i: usize) {
        let h = &self.config.health;
        self.slots[i].health = HealthState::new(!self.checked, h.rise, h.fall);
    }

    fn finish_initial_round(&mut self, now: Instant) {
        for s in &mut self.slots {
            s.initial_pending = false;
        }
        self.pending_initial = 0;
        if self.startup.take().is_some() {
            let up = self.slots.iter().filter(|s| s.health.is_up()).count();
            let mut line = LogLine::new(Level::Info, "start-up health round finished");
            line.up = Some(up);
            line.total = Some(self.slots.len());
            self.log(line);
            self.dirty = true;
            // Listeners open on this: the snapshot they will read must already be out.
            self.flush(now);
            self.effects.push(Effect::StartupRoundDone);
            self.restart_cluster_probe();
        }
    }

    /// (Re)starts the cluster-wide probe when the pool has `[pool.cluster_health]`. Not during
    /// the start-up round: no backend is up to ask yet, and the first result would be a false
    /// "cluster health failing" on every start.
    fn restart_cluster_probe(&mut self) {
        if self.startup.is_none() && self.config.cluster_health.is_some() && !self.retired {
            self.effects.push(Effect::StartClusterProbe);
        } else {
            self.effects.push(Effect::StopClusterProbe);
        }
    }

    fn log_transition(&mut self, i: usize, t: Transition, reason: &str) {
        let mut line = match t {
            Transition::Up => LogLine::new(Level::Info, "backend up"),
            Transition::Down => LogLine::new(Level::Warn, "backend down"),
        }
        .backend(self.slots[i].backend.address);
        line.state = Some(match t {
            Transition::Up => "up",
            Transition::Down => "down",
        });
        line.reason = Some(reason.to_string());
        self.log(line);
    }

    fn on_check(&mut self, result: CheckResult, now: Instant) {
        let Some(&i) = self.index.get(&result.backend) else {
            return;
        };
        // A report that was in flight when checks stopped (disable) says nothing now.
        if !self.slots[i].checking {
            return;
        }
        let pass = result.pass;
        // O(1) in the steady state: the outage can only move when a backend's answer does.
        let changed = self.slots[i].services != result.services;
        self.slots[i].services = result.services;
        if changed && !self.config.health.shared_dependencies.is_empty() {
            self.update_shared_outage();
        }
        // A failure that is only a shared outage neither ejects an up backend nor counts
        // toward bringing back a down one.
        let forgiven = !pass && quay::shared_failure(self.slots[i].services.as_ref(), &self.outage);
        let initial = result.initial && self.slots[i].initial_pending;
        if result.initial {
            self.clear_initial(i);
        }
        let transition = if forgiven {
            let mut line = LogLine::new(
                Level::Debug,
                "check failed only on shared services in outage: kept in rotation",
            )
            .backend(result.backend);
            line.services = Some(self.outage.join(","));
            self.log(line);
            None
        } else if initial {
            self.slots[i].health.observe_initial(pass)
        } else {
            self.slots[i].health.observe(pass)
        };
        if let Some(t) = transition {
            self.log_transition(i, t, &result.reason);
            if t == Transition::Up {
                self.slots[i].passive_down = None;
                self.effects.push(Effect::ResetConnectFailures {
                    backend: result.backend,
                });
                // The start-up round brings everyone up together: nothing to ramp against.
                if self.config.slow_start.is_some() && !result.initial {
                    self.slots[i].ramp_from = Some(now);
                }
            }
            self.dirty = true;
        } else if result.initial && !pass {
            let mut line = LogLine::new(Level::Info, "backend starts down: start-up check failed")
                .backend(result.backend);
            line.reason = Some(result.reason);
            self.log(line);
        }
        if self.startup.is_some() && self.pending_initial == 0 {
            self.finish_initial_round(now);
        }
    }

    /// Whether there is an outage to keep: shared services configured, or one still recorded
    /// from settings a reload just removed.
    fn tracks_outage(&self) -> bool {
        !self.config.health.shared_dependencies.is_empty() || !self.outage.is_empty()
    }

    /// Recomputes which shared services are in outage (over enabled backends' latest
    /// reports); logs changes.
    fn update_shared_outage(&mut self) {
        let latest: Vec<Option<&Services>> = self
            .slots
            .iter()
            .filter(|s| s.is_eligible())
            .map(|s| s.services.as_ref())
            .collect();
        let outage = quay::outages(&self.config.health.shared_dependencies, &latest);
        if outage == self.outage {
            return;
        }
        let before = std::mem::replace(&mut self.outage, outage);
        for s in self
            .outage
            .iter()
            .filter(|s| !before.contains(s))
            .cloned()
            .collect::<Vec<_>>()
        {
            let mut line = LogLine::new(
                Level::Warn,
                "shared outage: most backends report this shared service down; backends failing only on it stay in rotation",
            );
            line.service = Some(s);
            self.log(line);
        }
        let ended: Vec<String> = before
            .into_iter()
            .filter(|s| !self.outage.contains(s))
            .collect();
        for s in ended {
            let mut line = LogLine::new(Level::Info, "shared outage ended");
            line.service = Some(s);
            self.log(line);
        }
        self.dirty = true;
    }

    fn on_passive_failure(&mut self, backend: SocketAddr, consecutive: u32) {
        let Some(&i) = self.index.get(&backend) else {
            return;
        };
        // With no active check nothing could bring it back, so passive marking is off.
        if !self.checked {
            return;
        }
        if let Some(t) = self.slots[i].health.force_down() {
            let reason = format!("{consecutive} consecutive connect failures");
            self.slots[i].passive_down = Some(format!(
                "{reason} (passive_fall); back after {} passing checks",
                self.config.health.rise
            ));
            self.log_transition(i, t, &reason);
            self.dirty = true;
        }
    }

    fn on_admin(
        &mut self,
        address: SocketAddr,
        action: AdminAction,
        now: Instant,
    ) -> Result<BackendState, AdminError> {
        let pool = self.name.to_string();
        let Some(&i) = self.index.get(&address) else {
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
                    deadline: now + self.drain_timeout,
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
                self.effects.push(Effect::RearmCut { backend: address });
            }
            (AdminAction::Enable, AdminState::Disabled) => {
                self.slots[i].admin = AdminState::Active;
                self.effects.push(Effect::RearmCut { backend: address });
                self.reset_health(i);
                self.start_checks(i, false);
            }
        }
        let after = self.slots[i].state();
        let mut line = LogLine::new(Level::Info, "admin action").backend(address);
        line.action = Some(action.as_str());
        line.from = Some(before.as_str());
        line.state = Some(after.as_str());
        self.log(line);
        self.dirty = true;
        Ok(after)
    }

    fn on_tick(&mut self, open: &HashMap<SocketAddr, u64>, now: Instant) {
        if self.startup.is_some_and(|deadline| now >= deadline) {
            self.finish_initial_round(now);
        }
        let mut cut = Vec::new();
        for slot in &mut self.slots {
            let AdminState::Draining {
                deadline,
                cut: done,
            } = &mut slot.admin
            else {
                continue;
            };
            let active = open.get(&slot.backend.address).copied().unwrap_or(0);
            if !*done && now >= *deadline && active > 0 {
                *done = true;
                cut.push((slot.backend.address, active));
            }
        }
        for (backend, active) in cut {
            let mut line = LogLine::new(
                Level::Warn,
                "drain timeout reached: closing the remaining connections",
            )
            .backend(backend);
            line.open_connections = Some(active);
            self.log(line);
            self.effects.push(Effect::CutConnections { backend });
        }
        let gone: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.removed && open.get(&s.backend.address).copied().unwrap_or(0) == 0
            })
            .collect();
        if !gone.is_empty() {
            for &i in &gone {
                self.stop_checks(i);
                self.clear_initial(i);
                let address = self.slots[i].backend.address;
                self.log(
                    LogLine::new(Level::Info, "removed backend drained: gone").backend(address),
                );
            }
            let mut k = 0;
            self.slots.retain(|_| {
                k += 1;
                gone.binary_search(&(k - 1)).is_err()
            });
            self.reindex();
            self.dirty = true;
        }
        if let Some(ramp) = self.config.slow_start {
            if self.is_ramping() && now >= self.last_publish + ramp_step(ramp) {
                self.dirty = true;
            }
        }
    }

    fn on_cluster_health(&mut self, result: ClusterHealth) {
        if self.cluster_health.as_ref().map(|c| c.ok) != Some(result.ok) {
            let line = if result.ok {
                LogLine::new(Level::Info, "cluster health ok")
            } else {
                let mut line = LogLine::new(Level::Warn, "cluster health failing");
                line.status = result.status;
                line.error = Some(result.error.clone().unwrap_or_default());
                line
            };
            self.log(line);
        }
        self.cluster_health = Some(result);
        self.dirty = true;
    }
}
