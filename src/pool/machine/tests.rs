//! One test per transition rule of the pool machine, under virtual time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::config::{BackendConfig, PoolConfig};
use crate::pool::{AdminError, PoolSnapshot};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7000 + i))
}

fn config(n: u16) -> PoolConfig {
    let health = crate::config::HealthConfig {
        rise: 2,
        fall: 3,
        ..Default::default()
    };
    PoolConfig {
        backends: (0..n)
            .map(|i| BackendConfig {
                address: addr(i),
                weight: 1,
            })
            .collect(),
        fail_open: false,
        passive_fall: 3,
        health,
        ..PoolConfig::for_tests()
    }
}

/// A machine, the clock it runs on, and what it last published.
struct Rig {
    m: PoolMachine,
    now: Instant,
    last: Option<Arc<PoolSnapshot>>,
    effects: Vec<Effect>,
}

impl Rig {
    fn new(config: PoolConfig, initial: bool) -> Rig {
        let now = Instant::now();
        let (m, effects) = PoolMachine::new(
            Arc::new(config),
            Duration::from_secs(10),
            true,
            initial,
            now,
        );
        let mut rig = Rig {
            m,
            now,
            last: None,
            effects: Vec::new(),
        };
        rig.take(effects);
        rig
    }

    fn take(&mut self, effects: Vec<Effect>) {
        for e in &effects {
            if let Effect::Publish(s) = e {
                self.last = Some(s.clone());
            }
        }
        self.effects = effects;
    }

    fn apply(&mut self, event: Event) -> &[Effect] {
        let effects = self.m.apply(event, self.now);
        self.take(effects);
        &self.effects
    }

    fn check(&mut self, i: u16, pass: bool) {
        self.check_with(i, pass, false, None);
    }

    fn check_with(&mut self, i: u16, pass: bool, initial: bool, services: Option<Services>) {
        self.apply(Event::Check(CheckResult {
            backend: addr(i),
            pass,
            reason: "test".into(),
            services,
            initial,
        }));
    }

    fn tick(&mut self, after: Duration, open: &[(u16, u64)]) {
        self.now += after;
        let open_connections: HashMap<SocketAddr, u64> =
            open.iter().map(|&(i, n)| (addr(i), n)).collect();
        self.apply(Event::Tick { open_connections });
    }

    fn snap(&self) -> &PoolSnapshot {
        self.last.as_ref().expect("published")
    }

    fn state(&self, i: u16) -> BackendState {
        self.snap()
            .members
            .iter()
            .find(|m| m.backend.address == addr(i))
            .map(|m| m.state)
            .expect("member")
    }

    fn live(&self) -> Vec<SocketAddr> {
        self.snap().live.members.iter().map(|b| b.address).collect()
    }

    fn has(&self, f: impl Fn(&Effect) -> bool) -> bool {
        self.effects.iter().any(f)
    }

    fn logged(&self, message: &str) -> bool {
        self.has(|e| matches!(e, Effect::Log(l) if l.message == message))
    }
}

fn services(pairs: &[(&str, bool)]) -> Option<Services> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

#[test]
fn start_up_round_one_pass_is_enough_and_ends_when_all_answered() {
    let mut r = Rig::new(config(2), true);
    assert_eq!(
        r.effects
            .iter()
            .filter(|e| matches!(e, Effect::StartChecks { initial: true, .. }))
            .count(),
        2
    );
    assert!(r.m.in_startup());
    r.check_with(0, true, true, None);
    assert_eq!(r.state(0), BackendState::Up);
    assert!(r.m.in_startup());
    r.check_with(1, false, true, None);
    assert!(r.logged("backend starts down: start-up check failed"));
    assert!(r.has(|e| matches!(e, Effect::StartupRoundDone)));
    assert!(!r.m.in_startup());
    assert_eq!(r.live(), vec![addr(0)]);
}

#[test]
fn start_up_round_ends_at_its_deadline() {
    let mut r = Rig::new(config(1), true);
    assert!(r.m.next_wake().is_some());
    r.tick(Duration::from_millis(100), &[]);
    assert!(r.m.in_startup());
    r.tick(Duration::from_secs(2), &[]);
    assert!(!r.m.in_startup());
    assert!(r.has(|e| matches!(e, Effect::StartupRoundDone)));
    // No one up and fail_open off: refusing, said once.
    assert!(r.logged("no backend can take connections: new connections are closed"));
}

#[test]
fn rise_and_fall_after_start_up() {
    let mut r = Rig::new(config(1), false);
    assert_eq!(r.state(0), BackendState::Down);
    r.check(0, true);
    assert_eq!(r.state(0), BackendState::Down);
    r.check(0, true);
    assert_eq!(r.state(0), BackendState::Up);
    assert_eq!(r.live(), vec![addr(0)]);
    r.check(0, false);
    r.check(0, false);
    assert_eq!(r.state(0), BackendState::Up);
    r.check(0, false);
    assert_eq!(r.state(0), BackendState::Down);
    assert!(r.live().is_empty());
}

#[test]
fn passive_failures_take_it_down_until_rise_passes() {
    let mut r = Rig::new(config(2), true);
    r.check_with(0, true, true, None);
    r.check_with(1, true, true, None);
    r.apply(Event::PassiveFailure {
        backend: addr(0),
        consecutive: 3,
    });
    assert_eq!(r.state(0), BackendState::Down);
    let reason = r.snap().members[0].down_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("3 consecutive connect failures"),
        "{reason}"
    );
    r.check(0, true);
    r.check(0, true);
    assert_eq!(r.state(0), BackendState::Up);
    assert!(r.snap().members[0].down_reason.is_none());
    assert!(r.has(|e| matches!(e, Effect::ResetConnectFailures { .. })));
}

#[test]
fn admin_drain_disable_enable() {
    let mut r = Rig::new(config(2), true);
    r.check_with(0, true, true, None);
    r.check_with(1, true, true, None);
    r.apply(Event::Admin {
        backend: addr(0),
        action: AdminAction::Drain,
    });
    assert!(matches!(
        r.effects.last(),
        Some(Effect::Reply(Reply::Admin(Ok(BackendState::Draining))))
    ));
    assert_eq!(r.live(), vec![addr(1)]);
    r.apply(Event::Admin {
        backend: addr(0),
        action: AdminAction::Disable,
    });
    assert!(r.has(|e| matches!(e, Effect::StopChecks { .. })));
    // A report in flight when the checks stopped says nothing.
    r.check(0, false);
    assert!(r.effects.is_empty());
    r.apply(Event::Admin {
        backend: addr(0),
        action: AdminAction::Enable,
    });
    assert_eq!(r.state(0), BackendState::Down);
    assert!(r.has(|e| matches!(e, Effect::StartChecks { initial: false, .. })));
    r.check(0, true);
    r.check(0, true);
    assert_eq!(r.state(0), BackendState::Up);
    let unknown = r.apply(Event::Admin {
        backend: addr(9),
        action: AdminAction::Drain,
    });
    assert!(matches!(
        unknown.last(),
        Some(Effect::Reply(Reply::Admin(Err(
            AdminError::UnknownBackend { .. }
        ))))
    ));
}

#[test]
fn enable_from_draining_keeps_health() {
    let mut r = Rig::new(config(1), true);
    r.check_with(0, true, true, None);
    r.apply(Event::Admin {
        backend: addr(0),
        action: AdminAction::Drain,
    });
    r.apply(Event::Admin {
        backend: addr(0),
        action: AdminAction::Enable,
    });
    assert_eq!(r.state(0), BackendState::Up);
    assert!(r.has(|e| matches!(e, Effect::RearmCut { .. })));
}

/// Three backends, all up, whose checks name `database` a shared dependency.
fn three_up_sharing_the_database() -> Rig {
    let mut c = config(3);
    c.health.shared_dependencies = vec!["database".into()];
    let mut r = Rig::new(c, true);
    for i in 0..3 {
        r.check_with(i, true, true, None);
    }
    r
}

#[test]
fn only_failures_on_shared_services_in_outage_are_forgiven() {
    let mut r = three_up_sharing_the_database();
    let db_down = || services(&[("database", false), ("disk", true)]);
    // Two of three report the database down: an outage; their failures are forgiven.
    for _ in 0..3 {
        r.check_with(0, false, false, db_down());
        r.check_with(1, false, false, db_down());
    }
    assert_eq!(r.snap().shared_outage, vec!["database".to_string()]);
    assert_eq!(r.state(0), BackendState::Up);
    assert_eq!(r.state(1), BackendState::Up);
    // A node whose own service fails is ejected as usual.
    for _ in 0..3 {
        r.check_with(
            2,
            false,
            false,
            services(&[("database", false), ("disk", false)]),
        );
    }
    assert_eq!(r.state(2), BackendState::Down);
    // The database is back on two nodes: the outage ends.
    r.check_with(0, true, false, services(&[("database", true)]));
    r.check_with(1, true, false, services(&[("database", true)]));
    assert!(r.snap().shared_outage.is_empty());
}

#[test]
fn the_outage_follows_who_is_enabled_at_once_and_is_not_recounted_on_a_steady_answer() {
    let mut r = three_up_sharing_the_database();
    let db_down = || services(&[("database", false)]);
    r.check_with(0, false, false, db_down());
    r.check_with(1, false, false, db_down());
    assert_eq!(r.snap().shared_outage, vec!["database".to_string()]);
    // The same answer again changes nothing: no publish, no log line.
    r.check_with(0, false, false, db_down());
    assert!(!r.has(|e| matches!(e, Effect::Publish(_))));
    // Disabling one of the two leaves one of two enabled reporting it: still half.
    r.apply(Event::Admin {
        backend: addr(1),
        action: AdminAction::Disable,
    });
    assert_eq!(r.snap().shared_outage, vec!["database".to_string()]);
    // Disabling the other too leaves one enabled backend reporting no database failure: the
    // outage ends with the admin action, not at some later check.
    r.apply(Event::Admin {
        backend: addr(0),
        action: AdminAction::Disable,
    });
    assert!(
        r.snap().shared_outage.is_empty(),
        "{:?}",
        r.snap().shared_outage
    );
    assert!(r.logged("shared outage ended"));
}

#[test]
fn fail_open_spreads_over_enabled_down_backends_only() {
    let mut c = config(3);
    c.fail_open = true;
    let mut r = Rig::new(c, true);
    for i in 0..3 {
        r.check_with(i, false, true, None);
    }
    assert!(r.snap().fail_open);
    assert_eq!(r.live().len(), 3);
    r.apply(Event::Admin {
        backend: addr(2),
        action: AdminAction::Disable,
    });
    assert_eq!(r.live(), vec![addr(0), addr(1)]);
    r.check(0, true);
    r.check(0, true);
    assert!(!r.snap().fail_open);
    assert!(r.logged("fail-open ended"));
    assert_eq!(r.live(), vec![addr(0)]);
}

#[test]
fn no_fail_open_during_the_start_up_round() {
    let mut c = config(2);
    c.fail_open = true;
    let r = Rig::new(c, true);
    assert!(!r.snap().fail_open);
    assert!(r.live().is_empty());
}

#[test]
fn reload_adds_down_and_drains_the_removed_until_idle_or_cut() {
    let mut r = Rig::new(config(2), true);
    r.check_with(0, true, true, None);
    r.check_with(1, true, true, None);
    let mut c = config(0);
    c.backends = vec![
        BackendConfig {
            address: addr(2),
            weight: 1,
        },
        BackendConfig {
            address: addr(0),
            weight: 3,
        },
    ];
    r.apply(Event::Reconfigure {
        config: Arc::new(c),
        drain_timeout: Duration::from_secs(5),
        checks: None,
    });
    let Some(Effect::Reply(Reply::Reconfigured(changes))) = r.effects.last().cloned() else {
        panic!("no reply: {:?}", r.effects);
    };
    assert_eq!(changes.added, vec![addr(2)]);
    assert_eq!(changes.removed, vec![addr(1)]);
    let order: Vec<_> = r.snap().members.iter().map(|m| m.backend.address).collect();
    assert_eq!(order, vec![addr(2), addr(0), addr(1)]);
    assert_eq!(r.state(1), BackendState::Draining);
    assert_eq!(r.state(2), BackendState::Down);
    assert_eq!(r.snap().members[1].weight, 3);
    // Still open connections before the deadline: it stays; after it: cut, then gone.
    r.tick(Duration::from_secs(1), &[(1, 2)]);
    assert_eq!(r.snap().members.len(), 3);
    r.tick(Duration::from_secs(5), &[(1, 2)]);
    assert!(r.has(|e| matches!(e, Effect::CutConnections { backend } if *backend == addr(1))));
    r.tick(Duration::from_millis(200), &[]);
    assert_eq!(r.snap().members.len(), 2);
    assert!(r.has(|e| matches!(e, Effect::StopChecks { backend } if *backend == addr(1))));
}

#[test]
fn admin_membership_add_remove_and_back_before_gone() {
    let mut r = Rig::new(config(1), true);
    r.check_with(0, true, true, None);
    let effects = r.apply(Event::AddBackend {
        address: addr(5),
        weight: 2,
    });
    // The reply comes after the publish that holds the new member.
    let publish = effects.iter().position(|e| matches!(e, Effect::Publish(_)));
    let reply = effects.iter().position(|e| matches!(e, Effect::Reply(_)));
    assert!(publish < reply, "{effects:?}");
    assert_eq!(r.state(5), BackendState::Down);
    let again = r.apply(Event::AddBackend {
        address: addr(5),
        weight: 2,
    });
    assert!(matches!(
        again.last(),
        Some(Effect::Reply(Reply::Added(Err(AdminError::Exists { .. }))))
    ));
    r.apply(Event::RemoveBackend { address: addr(0) });
    assert_eq!(r.state(0), BackendState::Draining);
    // Added back before its drain finished: it keeps its health.
    r.apply(Event::AddBackend {
        address: addr(0),
        weight: 1,
    });
    assert_eq!(r.state(0), BackendState::Up);
}

#[test]
fn slow_start_ramps_from_a_tenth_to_full_weight() {
    let mut c = config(2);
    c.slow_start = Some(Duration::from_secs(10));
    let mut r = Rig::new(c, true);
    r.check_with(0, true, true, None);
    r.check_with(1, false, true, None);
    r.check(1, true);
    r.check(1, true);
    let weight_of_1 = |r: &Rig| {
        let live = &r.snap().live;
        let i = live
            .members
            .iter()
            .position(|b| b.address == addr(1))
            .expect("live");
        live.weights()[i]
    };
    assert_eq!(weight_of_1(&r), 1);
    let mut last = 1;
    let mut steps = 0;
    while let Some(wake) = r.m.next_wake() {
        steps += 1;
        assert!(steps <= 25, "twenty steps per ramp, not {steps}");
        let step = wake.saturating_duration_since(r.now);
        r.tick(step, &[]);
        let w = weight_of_1(&r);
        assert!(w >= last, "{w} < {last}");
        last = w;
    }
    assert_eq!(last, WEIGHT_SCALE);
    assert!(r.m.next_wake().is_none(), "the ramp ended");
}

#[test]
fn retire_drains_then_stops() {
    let mut r = Rig::new(config(1), true);
    r.check_with(0, true, true, None);
    r.apply(Event::Retire {
        drain_timeout: Duration::from_secs(1),
    });
    assert!(r.snap().retired);
    assert!(r.live().is_empty());
    assert!(!r.logged("no backend can take connections: new connections are closed"));
    r.tick(Duration::from_millis(200), &[(0, 1)]);
    assert!(!r.m.is_finished());
    r.tick(Duration::from_millis(200), &[]);
    assert!(r.m.is_finished());
    assert!(r.snap().finished);
    assert!(r.has(|e| matches!(e, Effect::Stop)));
}

#[test]
fn cluster_health_is_published_and_logged_on_change() {
    let mut r = Rig::new(config(1), false);
    let result = |ok| ClusterHealth {
        ok,
        status: Some(if ok { 200 } else { 503 }),
        error: None,
        backend: Some(addr(0)),
        checked_at: SystemTime::UNIX_EPOCH,
    };
    r.apply(Event::ClusterHealth(result(true)));
    assert!(r.logged("cluster health ok"));
    assert_eq!(r.snap().cluster_health.as_ref().map(|c| c.ok), Some(true));
    r.apply(Event::ClusterHealth(result(true)));
    assert!(!r.logged("cluster health ok"));
    r.apply(Event::ClusterHealth(result(false)));
    assert!(r.logged("cluster health failing"));
}

#[test]
fn discovery_members_join_and_leave() {
    let mut c = config(0);
    c.discover = Some(crate::config::DiscoverConfig {
        dns: "x".into(),
        port: 443,
        every: Duration::from_secs(1),
        server: None,
    });
    let mut r = Rig::new(c, true);
    assert!(r.has(|e| matches!(e, Effect::StartDiscovery)));
    r.apply(Event::Discovered(vec![addr(0), addr(1), addr(0)]));
    assert_eq!(r.snap().members.len(), 2, "a duplicate answer counts once");
    r.check_with(0, true, true, None);
    r.check_with(1, true, true, None);
    assert!(!r.m.in_startup());
    r.apply(Event::Discovered(vec![addr(1)]));
    assert_eq!(r.state(0), BackendState::Draining);
    let refused = r.apply(Event::AddBackend {
        address: addr(3),
        weight: 1,
    });
    assert!(matches!(
        refused.last(),
        Some(Effect::Reply(Reply::Added(Err(AdminError::Discovered(_)))))
    ));
}
