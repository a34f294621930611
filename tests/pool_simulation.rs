//! Seeded simulation of a pool's control plane (sozu / FoundationDB style): thousands of random
//! event sequences (check results, passive failures, admin actions, membership changes,
//! reloads, DNS answers, cluster-probe results, time) go through the pure `PoolMachine` under
//! virtual time — no sockets, no runtime — and invariants are checked after every step against
//! a reference model kept here. A failure prints the seed and the event trace.
//!
//! `SPLICER_SIM_SEEDS=N` runs N sequences (default 300), `SPLICER_SIM_EVENTS=M` makes them M
//! events long (default 200), `SPLICER_SIM_SEED=S` replays the one sequence of seed S;
//! `scripts/simulate [SEEDS]` runs many in release mode.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use splicer::config::{
    BackendConfig, BalanceKind, ClusterHealthConfig, DiscoverConfig, HealthConfig, PoolConfig,
};
use splicer::health::cluster::ClusterHealth;
use splicer::health::quay::{self, Services};
use splicer::pool::machine::{CheckResult, Effect, Event, PoolMachine, WEIGHT_SCALE};
use splicer::pool::{AdminAction, BackendState, PoolSnapshot};

/// SplitMix64: tiny, seedable, and good enough to shuffle events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Addresses are drawn from a small universe so that events often hit the same backends.
const UNIVERSE: u16 = 8;
const SHARED: &str = "database";

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 9000 + i))
}

/// The reference model of one backend's rise/fall counters.
#[derive(Debug, Clone, Default)]
struct Health {
    up: bool,
    passes: u32,
    fails: u32,
}

/// What the test knows independently of the machine.
struct Model {
    rise: u32,
    fall: u32,
    slow_start: Option<Duration>,
    shared: Vec<String>,
    discovered: bool,
    health: HashMap<SocketAddr, Health>,
    /// Backends whose check task runs (from the Start/StopChecks effects).
    checking: HashSet<SocketAddr>,
    /// Backends whose check task flags its next report as the start-up check.
    initial: HashSet<SocketAddr>,
    /// Backends whose start-up check the round still waits for.
    pending: HashSet<SocketAddr>,
    /// Latest services reported by each backend (delivered reports only).
    services: HashMap<SocketAddr, Option<Services>>,
    /// Members that stay, in their expected order.
    kept: Vec<SocketAddr>,
    weights: HashMap<SocketAddr, u32>,
    /// When each backend last came up outside the start-up round (its ramp's start).
    ramp_from: HashMap<SocketAddr, Instant>,
    /// Last live weight seen per backend, while it stays live.
    last_weight: HashMap<SocketAddr, u32>,
    open: HashMap<SocketAddr, u64>,
    in_startup: bool,
    retired: bool,
    last: Option<Arc<PoolSnapshot>>,
}

fn base_config(rng: &mut Rng, discovered: bool) -> PoolConfig {
    let health = HealthConfig {
        rise: 1 + rng.below(3) as u32,
        fall: 1 + rng.below(3) as u32,
        shared_dependencies: if rng.chance(50) {
            vec![SHARED.to_string(), "auth".to_string()]
        } else {
            Vec::new()
        },
        ..HealthConfig::default()
    };
    PoolConfig {
        name: "sim".into(),
        balance: BalanceKind::RoundRobin,
        backends: if discovered {
            Vec::new()
        } else {
            random_members(rng)
        },
        discover: discovered.then(|| DiscoverConfig {
            dns: "sim.internal".into(),
            port: 443,
            every: Duration::from_secs(1),
            server: None,
        }),
        send_proxy: Default::default(),
        slow_start: rng
            .chance(50)
            .then(|| Duration::from_millis(500 + rng.below(5000))),
        cluster_health: rng.chance(30).then(|| ClusterHealthConfig {
            path: "/health/endtoend".into(),
            interval: Duration::from_secs(10),
        }),
        connect_timeout: Duration::from_secs(1),
        retries: 0,
        fail_open: rng.chance(50),
        passive_fall: 3,
        health,
    }
}

fn random_members(rng: &mut Rng) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = Vec::new();
    for _ in 0..rng.below(u64::from(UNIVERSE) + 1) {
        let address = addr(rng.below(u64::from(UNIVERSE)) as u16);
        if out.iter().all(|b| b.address != address) {
            out.push(BackendConfig {
                address,
                weight: 1 + rng.below(5) as u32,
            });
        }
    }
    out
}

fn random_services(rng: &mut Rng) -> Option<Services> {
    if rng.chance(30) {
        return None;
    }
    let mut s = Services::new();
    s.insert(SHARED.to_string(), !rng.chance(40));
    s.insert("auth".to_string(), !rng.chance(10));
    s.insert("disk_space".to_string(), !rng.chance(15));
    Some(s)
}

fn random_event(rng: &mut Rng, m: &Model, config: &PoolConfig, now: &mut Instant) -> Event {
    *now += Duration::from_millis(rng.below(300));
    let any = addr(rng.below(u64::from(UNIVERSE)) as u16);
    // Mostly events about current members, sometimes about strangers.
    let member = match m.last.as_ref().map(|s| &s.members) {
        Some(members) if !members.is_empty() && rng.chance(85) => {
            members[rng.below(members.len() as u64) as usize]
                .backend
                .address
        }
        _ => any,
    };
    match rng.below(100) {
        0..=54 => {
            let pass = rng.chance(55);
            let services = if config.health.shared_dependencies.is_empty() {
                None
            } else if pass {
                Some(Services::from([(SHARED.to_string(), true)]))
            } else {
                random_services(rng)
            };
            Event::Check(CheckResult {
                backend: member,
                pass,
                reason: "sim".into(),
                services,
                initial: m.initial.contains(&member),
            })
        }
        55..=59 => Event::PassiveFailure {
            backend: member,
            consecutive: 3,
        },
        60..=67 => Event::Admin {
            backend: member,
            action: [
                AdminAction::Drain,
                AdminAction::Disable,
                AdminAction::Enable,
            ][rng.below(3) as usize],
        },
        68..=71 => Event::AddBackend {
            address: any,
            weight: 1 + rng.below(4) as u32,
        },
        72..=74 => Event::RemoveBackend { address: member },
        75..=78 => {
            let mut new = config.clone();
            if !m.discovered {
                new.backends = random_members(rng);
            }
            new.fail_open = rng.chance(50);
            Event::Reconfigure {
                config: Arc::new(new),
                drain_timeout: Duration::from_millis(rng.below(3000)),
                checks: None,
            }
        }
        79..=82 if m.discovered => {
            let list = (0..rng.below(6))
                .map(|_| addr(rng.below(u64::from(UNIVERSE)) as u16))
                .collect();
            Event::Discovered(list)
        }
        83..=85 => Event::ClusterHealth(ClusterHealth {
            ok: rng.chance(70),
            status: Some(200),
            error: None,
            backend: Some(member),
            checked_at: SystemTime::UNIX_EPOCH,
        }),
        86 if rng.chance(20) => Event::Retire {
            drain_timeout: Duration::from_millis(rng.below(2000)),
        },
        _ => {
            *now += Duration::from_millis(rng.below(2500));
            Event::Tick {
                open_connections: HashMap::new(),
            }
        }
    }
}

/// How often the interesting paths were taken, to show the sequences reach them.
#[derive(Default, Debug)]
struct Coverage(BTreeMap<&'static str, u64>);

impl Coverage {
    fn count(&mut self, effects: &[Effect]) {
        for e in effects {
            let key = match e {
                Effect::Log(line) => line.message,
                Effect::Publish(_) => "(publish)",
                Effect::CutConnections { .. } => "(cut)",
                Effect::Stop => "(stopped)",
                _ => continue,
            };
            *self.0.entry(key).or_default() += 1;
        }
    }
}

/// Runs one sequence; `Err` carries what broke.
fn run(
    seed: u64,
    events: usize,
    trace: &mut Vec<String>,
    coverage: &mut Coverage,
) -> Result<(), String> {
    let mut rng = Rng(seed);
    let discovered = rng.chance(25);
    let config = base_config(&mut rng, discovered);
    let initial = rng.chance(70);
    let mut now = Instant::now();
    trace.push(format!(
        "config: rise={} fall={} fail_open={} slow_start={:?} shared={:?} discover={} initial={initial} members={:?}",
        config.health.rise,
        config.health.fall,
        config.fail_open,
        config.slow_start,
        config.health.shared_dependencies,
        discovered,
        config.backends.iter().map(|b| (b.address, b.weight)).collect::<Vec<_>>()
    ));
    let mut model = Model {
        rise: config.health.rise,
        fall: config.health.fall,
        slow_start: config.slow_start,
        shared: config.health.shared_dependencies.clone(),
        discovered,
        health: HashMap::new(),
        checking: HashSet::new(),
        initial: HashSet::new(),
        pending: HashSet::new(),
        services: HashMap::new(),
        kept: config.backends.iter().map(|b| b.address).collect(),
        weights: config
            .backends
            .iter()
            .map(|b| (b.address, b.weight))
            .collect(),
        ramp_from: HashMap::new(),
        last_weight: HashMap::new(),
        open: HashMap::new(),
        in_startup: true,
        retired: false,
        last: None,
    };
    for b in &config.backends {
        model.health.insert(b.address, Health::default());
    }
    let (mut machine, effects) = PoolMachine::new(
        Arc::new(config.clone()),
        Duration::from_secs(1),
        true,
        initial,
        now,
    );
    let mut config = config;
    coverage.count(&effects);
    observe(&mut model, &machine, &effects, None, now)?;
    for step in 0..events {
        let mut event = random_event(&mut rng, &model, &config, &mut now);
        if let Event::Tick { open_connections } = &mut event {
            // Connections come and go on draining members; the tick reports them.
            for b in machine.draining() {
                let n = model.open.entry(b.address).or_insert(0);
                *n = if rng.chance(40) { 0 } else { *n + rng.below(3) };
                open_connections.insert(b.address, *n);
            }
        }
        trace.push(format!("{step} @{:?}: {event:?}", now.elapsed()));
        let before = model.last.clone();
        expect_before(&mut model, &event, before.as_deref());
        if let Event::Reconfigure { config: c, .. } = &event {
            config = (**c).clone();
        }
        let effects = machine.apply(event.clone(), now);
        coverage.count(&effects);
        observe(&mut model, &machine, &effects, Some(&event), now)?;
        if machine.is_finished() {
            break;
        }
    }
    Ok(())
}

/// Updates the model for what `event` must do to health, from the state before it.
fn expect_before(m: &mut Model, event: &Event, before: Option<&PoolSnapshot>) {
    let state = |a: SocketAddr| {
        before.and_then(|s| {
            s.members
                .iter()
                .find(|x| x.backend.address == a)
                .map(|x| x.state)
        })
    };
    match event {
        Event::PassiveFailure { backend, .. } => {
            if let Some(h) = m.health.get_mut(backend) {
                if h.up {
                    m.ramp_from.remove(backend);
                }
                *h = Health::default();
            }
        }
        Event::Admin { backend, action } => {
            let from_disabled = state(*backend) == Some(BackendState::Disabled);
            let removed = !m.kept.contains(backend);
            if from_disabled
                && !removed
                && matches!(action, AdminAction::Drain | AdminAction::Enable)
            {
                m.health.insert(*backend, Health::default());
            }
        }
        _ => {}
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// Folds the effects into the model and checks every invariant.
fn observe(
    m: &mut Model,
    machine: &PoolMachine,
    effects: &[Effect],
    event: Option<&Event>,
    now: Instant,
) -> Result<(), String> {
    let before_members: Vec<SocketAddr> = m
        .last
        .as_ref()
        .map(|s| s.members.iter().map(|x| x.backend.address).collect())
        .unwrap_or_default();
    let publishes: Vec<&Arc<PoolSnapshot>> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(s) => Some(s),
            _ => None,
        })
        .collect();
    ensure(publishes.len() <= 2, || {
        format!("{} publishes in one step", publishes.len())
    })?;
    // Rise/fall against the model, with the flags as they were before the event.
    if let Some(Event::Check(c)) = event {
        // A check event never starts or stops checks, so `checking` is as before it.
        if m.checking.contains(&c.backend) {
            m.initial.remove(&c.backend);
            m.services.insert(c.backend, c.services.clone());
            let snapshot = publishes
                .last()
                .map(|s| (*s).clone())
                .or_else(|| m.last.clone());
            let outage = snapshot
                .as_ref()
                .map(|s| s.shared_outage.clone())
                .unwrap_or_default();
            let forgiven = !c.pass && quay::shared_failure(c.services.as_ref(), &outage);
            let initial = c.initial && m.pending.remove(&c.backend);
            let h = m.health.entry(c.backend).or_default();
            let was_up = h.up;
            if forgiven {
                // Neither ejects nor counts.
            } else if initial {
                *h = Health {
                    up: c.pass,
                    passes: 0,
                    fails: 0,
                };
            } else if c.pass {
                h.fails = 0;
                h.passes += 1;
                if !h.up && h.passes >= m.rise {
                    h.up = true;
                }
            } else {
                h.passes = 0;
                h.fails += 1;
                if h.up && h.fails >= m.fall {
                    h.up = false;
                }
            }
            let up = h.up;
            if up && !was_up && !c.initial {
                m.ramp_from.insert(c.backend, now);
            } else if !up {
                m.ramp_from.remove(&c.backend);
            }
        }
    }
    let now_retired = publishes.last().is_some_and(|s| s.retired) || m.retired;

    // Membership: what the test asked for.
    match event {
        Some(Event::AddBackend { address, weight })
            if !m.discovered && !m.retired && !m.kept.contains(address) =>
        {
            m.kept.push(*address);
            m.weights.insert(*address, *weight);
            m.health.entry(*address).or_default();
        }
        Some(Event::RemoveBackend { address }) if !m.discovered => {
            m.kept.retain(|a| a != address);
        }
        Some(Event::Reconfigure { config, .. }) if !m.discovered && !m.retired => {
            m.kept = config.backends.iter().map(|b| b.address).collect();
            for b in &config.backends {
                if m.weights.insert(b.address, b.weight) != Some(b.weight) {
                    // A new weight is a new full share: no ramp to compare with.
                    m.last_weight.remove(&b.address);
                }
                m.health.entry(b.address).or_default();
            }
        }
        Some(Event::Discovered(list)) if !m.retired => {
            m.kept.clear();
            for a in list {
                if !m.kept.contains(a) {
                    m.kept.push(*a);
                    m.weights.insert(*a, 1);
                    m.health.entry(*a).or_default();
                }
            }
        }
        Some(Event::Retire { .. }) => m.kept.clear(),
        _ => {}
    }
    m.retired = now_retired;

    for (j, e) in effects.iter().enumerate() {
        match e {
            Effect::StartChecks { backend, initial } => {
                ensure(m.checking.insert(*backend), || {
                    format!("checks of {backend} started twice")
                })?;
                if *initial {
                    m.initial.insert(*backend);
                    m.pending.insert(*backend);
                } else {
                    m.initial.remove(backend);
                }
            }
            Effect::StopChecks { backend } => {
                ensure(m.checking.remove(backend), || {
                    format!("checks of {backend} stopped but not running")
                })?;
                m.initial.remove(backend);
            }
            Effect::StartupRoundDone => {
                ensure(m.in_startup, || "start-up round ended twice".into())?;
                m.in_startup = false;
                m.pending.clear();
            }
            Effect::CutConnections { backend } => {
                let Some(Event::Tick { open_connections }) = event else {
                    return Err(format!("{backend} cut outside a tick"));
                };
                ensure(
                    open_connections.get(backend).is_some_and(|&n| n > 0),
                    || format!("{backend} cut with no open connection"),
                )?;
            }
            Effect::Publish(snapshot) => {
                // The snapshot that ends the start-up round is published just before saying so.
                let ends_round = matches!(effects.get(j + 1), Some(Effect::StartupRoundDone));
                let in_startup = m.in_startup;
                m.in_startup = in_startup && !ends_round;
                let checked = check_snapshot(m, snapshot, now);
                m.in_startup = in_startup;
                checked?;
                m.last = Some(snapshot.clone());
            }
            _ => {}
        }
    }
    // Replies: exactly one for a command, after the publish.
    let replies = effects
        .iter()
        .filter(|e| matches!(e, Effect::Reply(_)))
        .count();
    let command = matches!(
        event,
        Some(
            Event::Admin { .. }
                | Event::AddBackend { .. }
                | Event::RemoveBackend { .. }
                | Event::Reconfigure { .. }
        )
    );
    ensure(replies == usize::from(command), || {
        format!("{replies} replies")
    })?;
    if let Some(reply) = effects.iter().position(|e| matches!(e, Effect::Reply(_))) {
        ensure(
            !effects[reply..]
                .iter()
                .any(|e| matches!(e, Effect::Publish(_))),
            || "a publish after the reply".into(),
        )?;
    }
    for (a, h) in &m.health {
        if let Some(up) = machine.health_is_up(*a) {
            ensure(up == h.up, || {
                format!(
                    "{a}: machine says up={up}, the model (rise {}, fall {}) {h:?}",
                    m.rise, m.fall
                )
            })?;
        }
    }

    // After every event, not only checks: the shared outage is computed over the enabled
    // members' latest answers (a disable or a removal moves it at once).
    if let Some(s) = m.last.as_ref().filter(|_| !m.shared.is_empty()) {
        let latest: Vec<Option<&Services>> = s
            .members
            .iter()
            .filter(|x| matches!(x.state, BackendState::Up | BackendState::Down))
            .map(|x| m.services.get(&x.backend.address).and_then(|s| s.as_ref()))
            .collect();
        let want = quay::outages(&m.shared, &latest);
        ensure(s.shared_outage == want, || {
            format!("outage {:?}, want {want:?}", s.shared_outage)
        })?;
    }

    // Members that left are forgotten: a later add is a new backend.
    if let Some(s) = &m.last {
        let present: HashSet<SocketAddr> = s.members.iter().map(|x| x.backend.address).collect();
        m.health
            .retain(|a, _| present.contains(a) || m.kept.contains(a));
        m.services.retain(|a, _| present.contains(a));
        m.open.retain(|a, _| present.contains(a));
        m.pending.retain(|a| present.contains(a));
        if let Some(Event::Tick { open_connections }) = event {
            for a in before_members.iter().filter(|a| !present.contains(a)) {
                ensure(open_connections.get(a).copied().unwrap_or(0) == 0, || {
                    format!("{a} left with open connections")
                })?;
            }
        }
        for a in &present {
            m.health.entry(*a).or_default();
        }
    }
    Ok(())
}

fn check_snapshot(m: &mut Model, s: &PoolSnapshot, now: Instant) -> Result<(), String> {
    let addresses: Vec<SocketAddr> = s.members.iter().map(|x| x.backend.address).collect();
    let unique: HashSet<_> = addresses.iter().collect();
    ensure(unique.len() == addresses.len(), || {
        format!("duplicate member: {addresses:?}")
    })?;
    // Kept members first, in order; every other member is draining its removal.
    ensure(
        addresses.len() >= m.kept.len() && addresses[..m.kept.len()] == m.kept[..],
        || format!("members {addresses:?}, want {:?} first", m.kept),
    )?;
    for x in &s.members[m.kept.len()..] {
        ensure(x.state == BackendState::Draining, || {
            format!("removed {} is {:?}", x.backend.address, x.state)
        })?;
        ensure(
            !s.live
                .members
                .iter()
                .any(|b| b.address == x.backend.address),
            || format!("removed {} is live", x.backend.address),
        )?;
    }
    for x in &s.members[..m.kept.len()] {
        ensure(Some(&x.weight) == m.weights.get(&x.backend.address), || {
            format!("{} weight {}", x.backend.address, x.weight)
        })?;
    }
    // The live set agrees with the states.
    let state_of: BTreeMap<SocketAddr, BackendState> = s
        .members
        .iter()
        .map(|x| (x.backend.address, x.state))
        .collect();
    let any_up = state_of.values().any(|&st| st == BackendState::Up);
    let down: Vec<SocketAddr> = s
        .members
        .iter()
        .filter(|x| x.state == BackendState::Down)
        .map(|x| x.backend.address)
        .collect();
    let up: Vec<SocketAddr> = s
        .members
        .iter()
        .filter(|x| x.state == BackendState::Up)
        .map(|x| x.backend.address)
        .collect();
    let live: Vec<SocketAddr> = s.live.members.iter().map(|b| b.address).collect();
    let want_fail_open = !any_up && !down.is_empty() && s.config().fail_open && !m.in_startup;
    ensure(
        s.fail_open == want_fail_open && s.live.fail_open == s.fail_open,
        || {
            format!(
                "fail_open {} (live {}), want {want_fail_open}",
                s.fail_open, s.live.fail_open
            )
        },
    )?;
    let want_live = if s.fail_open { &down } else { &up };
    ensure(&live == want_live, || {
        format!("live {live:?}, want {want_live:?} (states {state_of:?})")
    })?;
    for a in &live {
        let st = state_of[a];
        ensure(matches!(st, BackendState::Up | BackendState::Down), || {
            format!("{a} is {st:?} and live")
        })?;
    }
    ensure(
        s.live.weights().len() == live.len() && s.live.weights().iter().all(|&w| w >= 1),
        || format!("weights {:?}", s.live.weights()),
    )?;
    ensure(s.shared_outage.iter().all(|o| m.shared.contains(o)), || {
        format!("outage {:?} outside {:?}", s.shared_outage, m.shared)
    })?;
    ensure(!s.retired || live.is_empty(), || {
        "a retired pool has live members".into()
    })?;
    // Slow start: from a tenth up to full, never backwards while it stays live.
    if !s.fail_open {
        let mut seen = HashMap::new();
        for (b, &w) in s.live.members.iter().zip(s.live.weights()) {
            let full = m.weights.get(&b.address).copied().unwrap_or(1) * WEIGHT_SCALE;
            ensure(w <= full, || {
                format!("{} weight {w} over full {full}", b.address)
            })?;
            let ramp_over = match (m.ramp_from.get(&b.address), m.slow_start) {
                (Some(from), Some(ramp)) => now.duration_since(*from) >= ramp,
                _ => true,
            };
            ensure(!ramp_over || w == full, || {
                format!("{} at {w} of {full} after its ramp", b.address)
            })?;
            if let Some(&last) = m.last_weight.get(&b.address) {
                ensure(w >= last || w == full, || {
                    format!("{} ramp went back from {last} to {w}", b.address)
                })?;
            }
            seen.insert(b.address, w);
        }
        m.last_weight = seen;
    } else {
        m.last_weight.clear();
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SPLICER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("SPLICER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    // Fixed seeds: CI runs the same sequences every time.
    (0..n).map(|i| 0x5eed_0000 + i).collect()
}

#[test]
fn random_event_sequences_keep_every_invariant() {
    let events: usize = std::env::var("SPLICER_SIM_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let started = Instant::now();
    let seeds = seeds();
    let mut coverage = Coverage::default();
    for &seed in &seeds {
        let mut trace = Vec::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(seed, events, &mut trace, &mut coverage)
        }));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => "the machine panicked".to_string(),
        };
        let tail = trace.len().saturating_sub(60);
        panic!(
            "seed {seed} broke an invariant: {failure}\nreplay: SPLICER_SIM_SEED={seed} cargo test --test pool_simulation\ntrace (last {} events):\n{}",
            trace.len() - tail,
            trace[tail..].join("\n")
        );
    }
    println!(
        "{} sequences x {events} events in {:?}",
        seeds.len(),
        started.elapsed()
    );
    for (what, n) in &coverage.0 {
        println!("{n:>8}  {what}");
    }
    // The generator must reach the rules it claims to test.
    for what in [
        "backend up",
        "backend down",
        "no backend is up: failing open over the down backends",
        "check failed only on shared services in outage: kept in rotation",
        "removed backend drained: gone",
        "(cut)",
    ] {
        if seeds.len() >= 100 {
            assert!(
                coverage.0.get(what).copied().unwrap_or(0) > 0,
                "never reached: {what}"
            );
        }
    }
}
