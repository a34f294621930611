//! Membership rules of the pool machine: who joins (down, `rise` passes to come up), who
//! leaves (draining, then gone), from reloads, DNS and the admin API, in O(n) per change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{checks_changed, AdminState, Effect, Level, LogLine, PoolMachine};
use crate::config::PoolConfig;
use crate::health::state::HealthState;
use crate::pool::snapshot::Member;
use crate::pool::{AdminError, Reconfigured};

impl PoolMachine {
    /// The members that stay (not removed), with their weights, in order.
    pub(super) fn kept_members(&self) -> Vec<(SocketAddr, u32)> {
        self.slots
            .iter()
            .filter(|s| !s.removed)
            .map(|s| (s.backend.address, s.weight))
            .collect()
    }

    pub(super) fn member(&self, i: usize) -> Member {
        let s = &self.slots[i];
        Member {
            backend: s.backend.clone(),
            state: s.state(),
            weight: s.weight,
            down_reason: s.passive_down.clone(),
        }
    }

    /// A member added through the admin API: the same path as a reload's new member (down,
    /// `rise` passes to come up); one still draining after its removal comes back with its
    /// health, as it would from a reload.
    pub(super) fn on_add(
        &mut self,
        address: SocketAddr,
        weight: u32,
        now: Instant,
    ) -> Result<Member, AdminError> {
        let pool = self.name.to_string();
        if self.retired {
            return Err(AdminError::Stopped(pool));
        }
        if self.config.discover.is_some() {
            return Err(AdminError::Discovered(pool));
        }
        if self
            .index
            .get(&address)
            .is_some_and(|&i| !self.slots[i].removed)
        {
            return Err(AdminError::Exists { pool, address });
        }
        let mut wanted = self.kept_members();
        wanted.push((address, weight));
        self.set_members(wanted, false, now);
        let Some(&i) = self.index.get(&address) else {
            // set_members keeps every wanted address; this is a broken invariant, not input.
            return Err(AdminError::UnknownBackend { pool, address });
        };
        let member = self.member(i);
        let mut line =
            LogLine::new(Level::Info, "backend added through the admin API").backend(address);
        line.weight = Some(weight);
        line.state = Some(member.state.as_str());
        self.log(line);
        Ok(member)
    }

    /// A member removed through the admin API: the same path as a reload's removal (draining,
    /// gone after its last connection or `drain_timeout`).
    pub(super) fn on_remove(
        &mut self,
        address: SocketAddr,
        now: Instant,
    ) -> Result<(), AdminError> {
        let pool = self.name.to_string();
        if self.config.discover.is_some() {
            return Err(AdminError::Discovered(pool));
        }
        let Some(&i) = self.index.get(&address) else {
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
        self.set_members(wanted, false, now);
        self.log(
            LogLine::new(
                Level::Info,
                "backend removed through the admin API: draining",
            )
            .backend(address),
        );
        if self.slots.iter().all(|s| s.removed) {
            self.log(LogLine::new(Level::Warn, "the pool has no members left"));
        }
        Ok(())
    }

    pub(super) fn on_reconfigure(
        &mut self,
        new: Arc<PoolConfig>,
        drain_timeout: Duration,
        checks: Option<bool>,
        now: Instant,
    ) -> Reconfigured {
        if self.retired {
            // A removed pool only drains; a reload never reconfigures it.
            return Reconfigured::default();
        }
        self.drain_timeout = drain_timeout;
        let old = std::mem::replace(&mut self.config, new);
        let health_changed = checks_changed(&old, &self.config);
        let cluster_changed = old.cluster_health != self.config.cluster_health;
        if health_changed || cluster_changed {
            self.restart_cluster_probe();
        }
        if let Some(now_checked) = checks {
            let was_checked = self.checked;
            self.checked = now_checked;
            let (rise, fall) = (self.config.health.rise, self.config.health.fall);
            for i in 0..self.slots.len() {
                self.stop_checks(i);
                // Unchecked backends are up; backends checked for the first time start from
                // up too (they were serving), so checks only take them out.
                if !self.checked || !was_checked {
                    self.slots[i].health = HealthState::new(true, rise, fall);
                } else {
                    self.slots[i].health.set_thresholds(rise, fall);
                }
                if self.slots[i].admin != AdminState::Disabled {
                    self.start_checks(i, false);
                }
            }
        }
        if self.config.discover != old.discover {
            // A changed `discover` restarts the lookups; the current members stay until the
            // first new answer.
            self.effects.push(if self.config.discover.is_some() {
                Effect::StartDiscovery
            } else {
                Effect::StopDiscovery
            });
        }
        let changes = if self.config.discover.is_some() {
            Reconfigured::default()
        } else {
            let wanted = self
                .config
                .backends
                .iter()
                .map(|b| (b.address, b.weight))
                .collect();
            self.set_members(wanted, false, now)
        };
        for &a in &changes.added {
            self.log(LogLine::new(Level::Info, "backend added by reload: starts down").backend(a));
        }
        for &a in &changes.removed {
            self.log(LogLine::new(Level::Info, "backend removed by reload: draining").backend(a));
        }
        self.dirty = true;
        changes
    }

    /// A new member list from DNS: new addresses start down (needing `rise` passes, or one
    /// pass during the start-up round), vanished ones drain.
    pub(super) fn on_discovered(&mut self, list: Vec<SocketAddr>, now: Instant) {
        if self.retired {
            return;
        }
        let initial = self.startup.is_some();
        let wanted = list.into_iter().map(|a| (a, 1)).collect();
        let changes = self.set_members(wanted, initial, now);
        for &a in &changes.added {
            self.log(LogLine::new(Level::Info, "backend discovered: starts down").backend(a));
        }
        for &a in &changes.removed {
            self.log(LogLine::new(Level::Info, "backend gone from DNS: draining").backend(a));
        }
        if initial && (!self.checked || self.pending_initial == 0) {
            self.finish_initial_round(now);
        }
    }

    /// Makes the members exactly `wanted` (address, weight; duplicates count once): kept ones
    /// keep their state, new ones start down, missing ones drain. O(n) with the index.
    pub(super) fn set_members(
        &mut self,
        wanted: Vec<(SocketAddr, u32)>,
        initial: bool,
        now: Instant,
    ) -> Reconfigured {
        let mut changes = Reconfigured::default();
        let mut position: HashMap<SocketAddr, usize> = HashMap::with_capacity(wanted.len());
        for (address, weight) in wanted {
            if position.contains_key(&address) {
                continue;
            }
            position.insert(address, position.len());
            match self.index.get(&address).copied() {
                Some(i) => {
                    let slot = &mut self.slots[i];
                    slot.weight = weight;
                    if slot.removed {
                        // Back before its drain finished: it keeps its health, like a kept one.
                        slot.removed = false;
                        slot.admin = AdminState::Active;
                        self.effects.push(Effect::RearmCut { backend: address });
                        changes.added.push(address);
                    }
                }
                None => {
                    self.add_slot(address, weight, initial);
                    changes.added.push(address);
                }
            }
        }
        let deadline = now + self.drain_timeout;
        for slot in &mut self.slots {
            let address = slot.backend.address;
            if !slot.removed && !position.contains_key(&address) {
                slot.removed = true;
                slot.admin = AdminState::Draining {
                    deadline,
                    cut: false,
                };
                changes.removed.push(address);
            }
        }
        // Config order first, removed (draining) ones after, in their former order.
        self.slots.sort_by_key(|s| {
            position
                .get(&s.backend.address)
                .copied()
                .unwrap_or(usize::MAX)
        });
        self.reindex();
        self.dirty = true;
        changes
    }

    pub(super) fn on_retire(&mut self, drain_timeout: Duration, now: Instant) {
        if self.retired {
            return;
        }
        self.retired = true;
        self.effects.push(Effect::StopClusterProbe);
        self.effects.push(Effect::StopDiscovery);
        let deadline = now + drain_timeout;
        for slot in &mut self.slots {
            slot.removed = true;
            if !matches!(slot.admin, AdminState::Draining { .. }) {
                slot.admin = AdminState::Draining {
                    deadline,
                    cut: false,
                };
            }
        }
        self.log(LogLine::new(
            Level::Info,
            "pool removed by reload: draining",
        ));
        self.dirty = true;
    }
}
