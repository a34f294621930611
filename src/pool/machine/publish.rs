//! What the pool machine publishes: the snapshot of now, with the live set (up members at
//! their slow-start weights, or the down ones when failing open) and the log lines that say
//! when the pool starts or stops failing open or refusing connections.

use std::sync::Arc;
use std::time::Instant;

use super::{Level, LogLine, PoolMachine, WEIGHT_SCALE};
use crate::pool::snapshot::PoolSnapshot;
use crate::pool::{Backend, LiveSet};

impl PoolMachine {
    /// Builds the snapshot of now: ends finished ramps, picks the live set, logs fail-open and
    /// refusal changes.
    pub(super) fn snapshot(&mut self, now: Instant) -> PoolSnapshot {
        self.last_publish = now;
        let slow_start = self.config.slow_start;
        for s in &mut self.slots {
            if let (Some(from), Some(ramp)) = (s.ramp_from, slow_start) {
                if now.saturating_duration_since(from) >= ramp || !s.health.is_up() {
                    s.ramp_from = None;
                }
            }
            if s.ramp_from.is_some() && slow_start.is_none() {
                s.ramp_from = None;
            }
        }
        let up: Vec<(Arc<Backend>, u32)> = self
            .slots
            .iter()
            .filter(|s| s.is_eligible() && s.health.is_up())
            .map(|s| (s.backend.clone(), s.effective_weight(slow_start, now)))
            .collect();
        let in_startup = self.startup.is_some();
        let live = if !up.is_empty() {
            LiveSet::new(self.config.clone(), up, false)
        } else {
            let down: Vec<(Arc<Backend>, u32)> = self
                .slots
                .iter()
                .filter(|s| s.is_eligible() && !s.health.is_up())
                .map(|s| (s.backend.clone(), s.weight.max(1) * WEIGHT_SCALE))
                .collect();
            // Before the start-up round ends nobody is up yet by construction: no outage.
            if !down.is_empty() && self.config.fail_open && !in_startup {
                LiveSet::new(self.config.clone(), down, true)
            } else {
                LiveSet::empty(self.config.clone())
            }
        };
        let failing_open = live.fail_open;
        if failing_open && !self.failing_open {
            self.log(LogLine::new(
                Level::Warn,
                "no backend is up: failing open over the down backends",
            ));
        } else if !failing_open && self.failing_open {
            self.log(LogLine::new(Level::Info, "fail-open ended"));
        }
        self.failing_open = failing_open;
        let refusing = live.is_empty() && !in_startup && !self.retired;
        if refusing && !self.refusing {
            self.log(LogLine::new(
                Level::Warn,
                "no backend can take connections: new connections are closed",
            ));
        } else if !refusing && self.refusing {
            self.log(LogLine::new(
                Level::Info,
                "a backend can take connections again",
            ));
        }
        self.refusing = refusing;
        PoolSnapshot {
            live,
            members: (0..self.slots.len()).map(|i| self.member(i)).collect(),
            fail_open: failing_open,
            shared_outage: self.outage.clone(),
            cluster_health: self.cluster_health.clone(),
            retired: self.retired,
            finished: self.finished,
        }
    }
}
