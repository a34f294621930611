//! The pool supervisor: one task per pool that folds health reports and passive failures into
//! each backend's state, then rebuilds and publishes the live set. Being the only writer, it
//! needs no lock, and every published snapshot is consistent.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Backend, BackendState, CheckRecord, LiveSet, Pool, PoolEvent};
use crate::config::{CheckKind, PoolConfig};
use crate::health::probe::{ProbeSetupError, Prober};
use crate::health::state::{HealthState, Transition};
use crate::health::{run_checks, CheckReport};

/// A started pool.
pub struct Started {
    /// The pool, shared with listeners and the admin API.
    pub pool: Arc<Pool>,
    /// Fires once the start-up round of checks has finished (or timed out).
    pub initial_round: oneshot::Receiver<()>,
}

struct Slot {
    backend: Arc<Backend>,
    health: HealthState,
    initial_pending: bool,
}

/// Builds the pool, spawns one check task per backend and the supervisor on `tasks`; all stop
/// when `stop` is cancelled.
pub fn start(
    config: PoolConfig,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Started, ProbeSetupError> {
    let name: Arc<str> = Arc::from(config.name.as_str());
    let checked = config.health.check != CheckKind::None;
    // Unchecked backends are simply up; checked ones start down until their first check.
    let initial_state = if checked {
        BackendState::Down
    } else {
        BackendState::Up
    };
    let members: Vec<Arc<Backend>> = config
        .backends
        .iter()
        .map(|b| {
            Arc::new(Backend::new(
                name.clone(),
                b.address,
                b.weight,
                initial_state,
            ))
        })
        .collect();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let pool = Arc::new(Pool {
        name,
        members: ArcSwap::from_pointee(members.clone()),
        live: ArcSwap::from_pointee(LiveSet::empty()),
        fail_open: Default::default(),
        events: events_tx,
        config,
    });
    let slots = members
        .iter()
        .map(|b| Slot {
            backend: b.clone(),
            health: HealthState::new(!checked, pool.config.health.rise, pool.config.health.fall),
            initial_pending: checked,
        })
        .collect();

    let (reports_tx, reports_rx) = mpsc::channel(members.len().max(1) * 2);
    let (initial_tx, initial_rx) = oneshot::channel();
    if checked {
        let prober = Arc::new(Prober::new(&pool.config.health)?);
        for b in &members {
            let target = match pool.config.health.port {
                0 => b.address,
                port => SocketAddr::new(b.address.ip(), port),
            };
            tasks.spawn(run_checks(
                b.address,
                target,
                prober.clone(),
                pool.config.health.interval,
                true,
                reports_tx.clone(),
                stop.clone(),
            ));
        }
    }
    drop(reports_tx);
    let mut supervisor = Supervisor {
        pool: pool.clone(),
        slots,
        initial_done: Some(initial_tx),
        refusing: false,
    };
    supervisor.publish();
    if !checked {
        supervisor.finish_initial_round();
    }
    let deadline = pool.config.health.timeout + Duration::from_millis(250);
    tasks.spawn(supervisor.run(reports_rx, events_rx, stop, deadline));
    Ok(Started {
        pool,
        initial_round: initial_rx,
    })
}

struct Supervisor {
    pool: Arc<Pool>,
    slots: Vec<Slot>,
    initial_done: Option<oneshot::Sender<()>>,
    /// Whether the pool is closing new connections for want of a backend (logged on change).
    refusing: bool,
}

impl Supervisor {
    async fn run(
        mut self,
        mut reports: mpsc::Receiver<CheckReport>,
        mut events: mpsc::UnboundedReceiver<PoolEvent>,
        stop: CancellationToken,
        initial_deadline: Duration,
    ) {
        let initial_timer = tokio::time::sleep(initial_deadline);
        tokio::pin!(initial_timer);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut initial_timer, if self.initial_done.is_some() => {
                    self.finish_initial_round();
                }
                Some(report) = reports.recv() => self.on_report(report),
                Some(event) = events.recv() => self.on_event(event),
            }
        }
    }

    fn slot_index(&self, addr: SocketAddr) -> Option<usize> {
        self.slots.iter().position(|s| s.backend.address == addr)
    }

    fn on_report(&mut self, report: CheckReport) {
        let Some(i) = self.slot_index(report.backend) else {
            return;
        };
        let outcome = &report.outcome;
        let pass = outcome.is_pass();
        let reason = match &outcome.result {
            Ok(()) => outcome
                .status
                .map_or_else(|| "connected".to_string(), |s| format!("status {s}")),
            Err(e) => e.to_string(),
        };
        let slot = &mut self.slots[i];
        slot.backend.record_check(pass, outcome.latency);
        slot.backend.set_last_check(CheckRecord {
            ok: pass,
            status: outcome.status,
            latency: outcome.latency,
            error: outcome.result.as_ref().err().map(|e| e.to_string()),
            at: SystemTime::now(),
        });
        let transition = if report.initial && slot.initial_pending {
            slot.initial_pending = false;
            slot.health.observe_initial(pass)
        } else {
            slot.health.observe(pass)
        };
        if let Some(t) = transition {
            self.log_transition(i, t, &reason);
            if t == Transition::Up {
                self.slots[i].backend.reset_consecutive_failures();
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

    fn on_event(&mut self, event: PoolEvent) {
        match event {
            PoolEvent::PassiveFailure {
                backend,
                consecutive,
            } => {
                let Some(i) = self.slot_index(backend) else {
                    return;
                };
                // With no active check nothing could bring it back, so passive marking is off.
                if self.pool.config.health.check == CheckKind::None {
                    return;
                }
                if let Some(t) = self.slots[i].health.force_down() {
                    let reason = format!("{consecutive} consecutive connect failures");
                    self.log_transition(i, t, &reason);
                    self.publish();
                }
            }
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
        }
    }

    /// Rebuilds the live set from the slots and publishes it with one store.
    fn publish(&mut self) {
        for s in &self.slots {
            let state = if s.health.is_up() {
                BackendState::Up
            } else {
                BackendState::Down
            };
            s.backend.set_state(state);
        }
        let up: Vec<Arc<Backend>> = self
            .slots
            .iter()
            .filter(|s| s.health.is_up())
            .map(|s| s.backend.clone())
            .collect();
        let config: &PoolConfig = &self.pool.config;
        // Before the start-up round ends nobody is up yet by construction: that is no outage.
        let in_startup = self.initial_done.is_some();
        let failing_open = up.is_empty() && config.fail_open && !in_startup;
        let set = if !up.is_empty() {
            LiveSet::new(up, false)
        } else if failing_open {
            let down = self.slots.iter().map(|s| s.backend.clone()).collect();
            LiveSet::new(down, true)
        } else {
            LiveSet::empty()
        };
        let was_failing_open = self.pool.fail_open.swap(failing_open, Ordering::Relaxed);
        let is_empty = set.is_empty();
        self.pool.live.store(Arc::new(set));
        if failing_open && !was_failing_open {
            tracing::warn!(pool = %self.pool.name, "no backend is up: failing open over the down backends");
        } else if !failing_open && was_failing_open {
            tracing::info!(pool = %self.pool.name, "a backend is up again: fail-open ended");
        }
        let refusing = is_empty && !failing_open && !in_startup;
        if refusing && !self.refusing {
            tracing::warn!(pool = %self.pool.name, "no backend is up: new connections are closed (fail_open = false)");
        } else if !refusing && self.refusing {
            tracing::info!(pool = %self.pool.name, "a backend is up again: accepting connections for this pool");
        }
        self.refusing = refusing;
    }
}
