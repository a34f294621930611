//! Failover through real sockets and real TLS on loopback: while a client keeps opening HTTPS
//! connections through splicer, one machine of a three-node rig dies, hangs, fails its health
//! check or silently drops packets. Each test measures how long the machine takes to leave
//! (and come back) on `/status` against the contract's bound, `fall × interval + timeout`
//! (docs/architecture.md §4, "Health"), and checks what the clients saw meanwhile.
//!
//! Passive marking (`passive_fall`) is off in these pools: it would take a refusing or
//! silent backend out before its checks do and so hide a regression of the active checks,
//! whose timing is what these tests pin down.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::RwLock;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};

use common::{backend_state, backends_toml, control, rig, start_splicer, wait_until, which_node};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;

/// Longest a backend may take to leave: `fall × interval + timeout`.
const LEAVE_BOUND: Duration = Duration::from_millis(FALL as u64 * 200 + 100);
/// Longest a healed backend may take to return: `rise × interval + timeout`.
const RETURN_BOUND: Duration = Duration::from_millis(RISE as u64 * 200 + 100);
/// Added to both bounds: check jitter (up to interval/10 per check), the 20 ms `/status` poll
/// and scheduling on a loaded 2-core machine. Generous, but finite: a backend that needs
/// one more check than it should still fails the test.
const MARGIN: Duration = Duration::from_secs(1);
/// Subtracted from the lower bounds (`(fall - 1) × interval`, `(rise - 1) × interval`): a
/// check already under way when the fault starts or ends (for at most `timeout`) may observe
/// the change, e.g. a check stalled by `/hang` that `/start` resumes.
const EARLY_SLACK: Duration = TIMEOUT;

/// Each client request gives up after this; nothing waits forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A new client request starts this often.
const PERIOD: Duration = Duration::from_millis(10);
/// Upper bound on requests one load run starts (about 30 s at `PERIOD`).
const MAX_REQUESTS: usize = 3000;
/// Bound on each wait for requests to reach a node.
const TRAFFIC_WAIT: Duration = Duration::from_secs(10);

/// The pool every test runs: round robin over `backends`, checked over HTTPS.
fn config(backends: &[SocketAddr]) -> String {
    format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
backends = {backends}
connect_timeout = "{connect_timeout}ms"
retries = 2
passive_fall = 0

[pool.health]
check = "https"
interval = "{interval}ms"
timeout = "{timeout}ms"
rise = {RISE}
fall = {FALL}
"#,
        backends = backends_toml(backends),
        connect_timeout = CONNECT_TIMEOUT.as_millis(),
        interval = INTERVAL.as_millis(),
        timeout = TIMEOUT.as_millis(),
    )
}

/// One client request through splicer: when it started, how long it took, and which node
/// answered (or why it failed).
#[derive(Debug, Clone)]
struct Sample {
    started: Instant,
    took: Duration,
    answer: Result<String, String>,
}

impl Sample {
    fn is_from(&self, node: &str) -> bool {
        self.answer.as_deref() == Ok(node)
    }
}

/// A client that starts one full HTTPS `GET /` through splicer every `PERIOD` (each on a new
/// connection, each bounded by `REQUEST_TIMEOUT`) until stopped, recording every outcome.
///
/// Every request holds a read guard of `gate` while it runs, so a test can take the write
/// guard to act on the rig between requests (see `stopped_node_leaves_and_returns`).
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Start time of every request launched, finished or not.
    launched: Arc<Mutex<Vec<Instant>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, gate: Arc<RwLock<()>>) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let launched = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_load(
            addr,
            gate,
            samples.clone(),
            launched.clone(),
            stop.clone(),
        ));
        Load {
            samples,
            launched,
            stop,
            task,
        }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples lock").clone()
    }

    /// Waits until at least `n` requests started after `since` were answered by `node`.
    async fn wait_for_answers(&self, node: &str, since: Instant, n: usize) {
        let what = format!("{n} requests answered by {node}");
        wait_until(TRAFFIC_WAIT, &what, || async {
            self.snapshot()
                .iter()
                .filter(|s| s.started >= since && s.is_from(node))
                .count()
                >= n
        })
        .await;
    }

    /// Waits until at least `n` requests started after `since` have finished.
    async fn wait_for_finished(&self, since: Instant, n: usize) {
        let what = format!("{n} requests finished");
        wait_until(TRAFFIC_WAIT, &what, || async {
            self.snapshot()
                .iter()
                .filter(|s| s.started >= since)
                .count()
                >= n
        })
        .await;
    }

    /// Waits until every request launched before `t` has finished (bounded by their timeout).
    async fn wait_for_all_before(&self, t: Instant) {
        let launched = self
            .launched
            .lock()
            .expect("launched lock")
            .iter()
            .filter(|&&s| s < t)
            .count();
        let limit = REQUEST_TIMEOUT + Duration::from_secs(3);
        wait_until(limit, "requests in flight to finish", || async {
            self.snapshot().iter().filter(|s| s.started < t).count() >= launched
        })
        .await;
    }

    /// Stops starting requests, waits for those in flight, returns every sample by start time.
    async fn finish(self) -> Vec<Sample> {
        self.stop.cancel();
        tokio::time::timeout(REQUEST_TIMEOUT * 3, self.task)
            .await
            .expect("in-flight client requests end within their timeout")
            .expect("load task");
        let mut samples = self.samples.lock().expect("samples lock").clone();
        samples.sort_by_key(|s| s.started);
        samples
    }
}

async fn run_load(
    addr: SocketAddr,
    gate: Arc<RwLock<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    launched: Arc<Mutex<Vec<Instant>>>,
    stop: CancellationToken,
) {
    let mut in_flight = JoinSet::new();
    for _ in 0..MAX_REQUESTS {
        let guard = tokio::select! {
            _ = stop.cancelled() => break,
            g = gate.clone().read_owned() => g,
        };
        let samples = samples.clone();
        let started = Instant::now();
        launched.lock().expect("launched lock").push(started);
        in_flight.spawn(async move {
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, which_node(addr)).await {
                Ok(Ok(node)) => Ok(node),
                Ok(Err(e)) => Err(format!("{:?}: {e}", e.kind())),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            drop(guard);
            let took = started.elapsed();
            samples.lock().expect("samples lock").push(Sample {
                started,
                took,
                answer,
            });
        });
        while in_flight.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Polls `/status` until `backend` is in `state`; returns the time since `since`.
async fn time_until_state(
    admin: SocketAddr,
    backend: SocketAddr,
    state: &str,
    since: Instant,
) -> Duration {
    let what = format!("{backend} to be {state}");
    wait_until(common::WAIT, &what, || async {
        backend_state(admin, "quay", backend).await == state
    })
    .await;
    since.elapsed()
}

async fn assert_all_up(admin: SocketAddr, backends: &[SocketAddr]) {
    for &b in backends {
        let what = format!("{b} up after the start-up round");
        wait_until(common::WAIT, &what, || async {
            backend_state(admin, "quay", b).await == "up"
        })
        .await;
    }
}

fn assert_leave_time(what: &str, took: Duration) {
    println!("{what}: down after {took:?} (bound {LEAVE_BOUND:?} + margin {MARGIN:?})");
    assert!(
        took <= LEAVE_BOUND + MARGIN,
        "{what}: took {took:?} to go down, bound is {LEAVE_BOUND:?} + {MARGIN:?}"
    );
}

fn assert_return_time(what: &str, took: Duration) {
    println!("{what}: up again after {took:?} (bound {RETURN_BOUND:?} + margin {MARGIN:?})");
    assert!(
        took <= RETURN_BOUND + MARGIN,
        "{what}: took {took:?} to come back, bound is {RETURN_BOUND:?} + {MARGIN:?}"
    );
    // `rise` passes are `interval` apart: coming back sooner means one pass was enough.
    let earliest = INTERVAL * (RISE - 1) - EARLY_SLACK;
    assert!(
        took >= earliest,
        "{what}: back after {took:?}, before {RISE} passes could have run"
    );
}

fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.answer.is_err()).collect()
}

fn summary(samples: &[Sample]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in samples {
        let key = match &s.answer {
            Ok(node) => node.clone(),
            Err(_) => "failed".to_string(),
        };
        *m.entry(key).or_default() += 1;
    }
    m
}

/// A machine dies (`/stop`: listener and connections closed, new connects refused). Retries
/// hide it from clients from the first moment; checks take it out within the bound and bring it
/// back after `rise` passes once it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_leaves_and_returns() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let splicer = start_splicer(&config(&nodes)).await;
    assert_all_up(splicer.admin, &nodes).await;
    let gate = Arc::new(RwLock::new(()));
    let load = Load::start(splicer.addr, gate.clone());
    load.wait_for_answers("node-2", Instant::now(), 3).await;

    // A request that is mid-exchange with node 2 when it dies is cut off: no layer-4 balancer
    // can save bytes already sent to a dead machine. The write guard stops node 2 between two
    // requests, so every failure counted below is one splicer could have avoided.
    let stopped_at = {
        let _between_requests = gate.write().await;
        let stopped_at = Instant::now();
        let (code, body) = control(&rig, "/nodes/2/stop", "").await;
        assert_eq!(code, 200, "{body}");
        stopped_at
    };
    let took = time_until_state(splicer.admin, nodes[1], "down", stopped_at).await;
    assert_leave_time("stopped node", took);
    // `fall` failures are `interval` apart: leaving sooner means one failure was enough.
    assert!(
        took >= INTERVAL * (FALL - 1) - EARLY_SLACK,
        "down after {took:?}, before {FALL} failed checks could have run"
    );
    let down_seen = Instant::now();
    load.wait_for_finished(down_seen, 20).await;

    let started_at = Instant::now();
    let (code, body) = control(&rig, "/nodes/2/start", "").await;
    assert_eq!(code, 200, "{body}");
    let took = time_until_state(splicer.admin, nodes[1], "up", started_at).await;
    assert_return_time("restarted node", took);
    let up_seen = Instant::now();
    load.wait_for_answers("node-2", up_seen, 3).await;

    let samples = load.finish().await;
    println!("stop: {} requests {:?}", samples.len(), summary(&samples));
    let failed = failures(&samples);
    assert!(
        failed.is_empty(),
        "{} of {} client requests failed: {failed:#?}",
        failed.len(),
        samples.len()
    );
    let while_down: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= down_seen && s.started < started_at)
        .collect();
    assert!(while_down.iter().all(|s| !s.is_from("node-2")));
    assert!(
        while_down.len() >= 20,
        "only {} requests while down",
        while_down.len()
    );
}

/// A machine hangs (`/hang`: its listener still accepts TCP, the server never answers).
///
/// What a client sees: its TCP connect to splicer succeeds, and so does splicer's connect to
/// the hung node, so there is no failure a retry could react to; the client's ClientHello is
/// passed on and no ServerHello ever comes back. The client waits until its own timeout (here
/// `REQUEST_TIMEOUT`; splicer's `idle_timeout` is off by default). This hits the requests sent
/// to the node between the hang and its removal, and those in flight on it when it hung; every
/// request started after the node is `down` succeeds. (A check stalled by the hang fails at
/// `timeout`, so detection takes as long as for a silent machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_leaves_and_only_its_window_fails() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let splicer = start_splicer(&config(&nodes)).await;
    assert_all_up(splicer.admin, &nodes).await;
    let load = Load::start(splicer.addr, Arc::new(RwLock::new(())));
    load.wait_for_answers("node-2", Instant::now(), 3).await;

    let hung_at = Instant::now();
    let (code, body) = control(&rig, "/nodes/2/hang", "").await;
    assert_eq!(code, 200, "{body}");
    let took = time_until_state(splicer.admin, nodes[1], "down", hung_at).await;
    assert_leave_time("hung node", took);
    let down_seen = Instant::now();
    load.wait_for_finished(down_seen, 20).await;
    // `/start` resumes hung sessions: let every client sent there give up first.
    load.wait_for_all_before(down_seen).await;

    let started_at = Instant::now();
    let (code, body) = control(&rig, "/nodes/2/start", "").await;
    assert_eq!(code, 200, "{body}");
    let took = time_until_state(splicer.admin, nodes[1], "up", started_at).await;
    assert_return_time("unhung node", took);
    load.wait_for_answers("node-2", Instant::now(), 3).await;

    let samples = load.finish().await;
    let failed = failures(&samples);
    println!(
        "hang: {} requests {:?}; {} failed, all started in the {:?} before removal",
        samples.len(),
        summary(&samples),
        failed.len(),
        down_seen - hung_at
    );
    // The hang took effect: requests round robin sent to node 2 meanwhile got no answer.
    assert!(!failed.is_empty(), "no request noticed the hang");
    for s in &failed {
        assert!(
            s.started < down_seen,
            "a request started {:?} after node 2 was down failed: {s:?}",
            s.started - down_seen
        );
        assert!(
            s.took >= REQUEST_TIMEOUT,
            "a hung request should time out, not fail: {s:?}"
        );
    }
    let after: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= down_seen && s.started < started_at)
        .collect();
    assert!(
        after.len() >= 20,
        "only {} requests while down",
        after.len()
    );
    assert!(after
        .iter()
        .all(|s| s.answer.is_ok() && !s.is_from("node-2")));
}

/// A machine whose health check answers 503 still accepts TCP and serves data: it leaves
/// within the bound (clients never notice) and returns after `rise` passes once healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_node_leaves_and_returns() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let splicer = start_splicer(&config(&nodes)).await;
    assert_all_up(splicer.admin, &nodes).await;
    let load = Load::start(splicer.addr, Arc::new(RwLock::new(())));
    load.wait_for_answers("node-2", Instant::now(), 3).await;

    let failing_at = Instant::now();
    let (code, body) = control(&rig, "/nodes/2/health", "503").await;
    assert_eq!(code, 200, "{body}");
    let took = time_until_state(splicer.admin, nodes[1], "down", failing_at).await;
    assert_leave_time("node answering 503", took);
    assert!(
        took >= INTERVAL * (FALL - 1) - EARLY_SLACK,
        "down after {took:?}, before {FALL} failed checks could have run"
    );
    let down_seen = Instant::now();
    load.wait_for_finished(down_seen, 20).await;

    let healed_at = Instant::now();
    let (code, body) = control(&rig, "/nodes/2/health", "200").await;
    assert_eq!(code, 200, "{body}");
    let took = time_until_state(splicer.admin, nodes[1], "up", healed_at).await;
    assert_return_time("node answering 200 again", took);
    load.wait_for_answers("node-2", Instant::now(), 3).await;

    let samples = load.finish().await;
    println!("503: {} requests {:?}", samples.len(), summary(&samples));
    let failed = failures(&samples);
    assert!(failed.is_empty(), "client requests failed: {failed:#?}");
    let while_down: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= down_seen && s.started < healed_at)
        .collect();
    assert!(
        while_down.len() >= 20,
        "only {} requests while down",
        while_down.len()
    );
    // It still served data, so only the live set can have kept clients away from it.
    assert!(
        while_down.iter().all(|s| !s.is_from("node-2")),
        "a backend marked down still received new connections"
    );
}

/// A machine whose packets silently vanish: connects to it neither succeed nor get refused
/// (the SYN goes unanswered), so the checks time out and data-path connects hit
/// `connect_timeout`, after which splicer retries another backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_leaves_and_retries_hide_it() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    // The silent machine: a relay in front of node 2 that can stop answering SYNs.
    let mut machine = Machine::start(nodes[1]).await;
    let backends = [nodes[0], machine.addr, nodes[2]];
    let splicer = start_splicer(&config(&backends)).await;
    assert_all_up(splicer.admin, &backends).await;
    let load = Load::start(splicer.addr, Arc::new(RwLock::new(())));
    load.wait_for_answers("node-2", Instant::now(), 3).await;

    let unplugged_at = Instant::now();
    machine.unplug().await;
    // Checked while splicer notices, so the check does not delay the measurement.
    let probe = tokio::spawn(connect_is_silent(machine.addr));
    let took = time_until_state(splicer.admin, machine.addr, "down", unplugged_at).await;
    assert!(
        probe.await.expect("probe task"),
        "a connect to the unplugged machine was answered: SYNs are not dropped on this host"
    );
    assert_leave_time("silent node", took);
    let down_seen = Instant::now();
    load.wait_for_finished(down_seen, 20).await;

    let samples = load.finish().await;
    let failed = failures(&samples);
    println!(
        "silent: {} requests {:?}; {} failed, all in flight or sent during the {:?} window",
        samples.len(),
        summary(&samples),
        failed.len(),
        down_seen - unplugged_at
    );
    for s in &failed {
        assert!(
            s.started < down_seen,
            "a request started {:?} after the machine was down failed: {s:?}",
            s.started - down_seen
        );
    }
    let window: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= unplugged_at && s.started < down_seen)
        .collect();
    // Requests round robin sent to the silent machine waited out `connect_timeout` and were
    // answered by another node: the retry, not luck, kept them alive.
    assert!(
        window
            .iter()
            .any(|s| s.answer.is_ok() && s.took >= CONNECT_TIMEOUT),
        "no request was rescued by a retry after a connect timeout: {window:#?}"
    );
    let after: Vec<_> = samples.iter().filter(|s| s.started >= down_seen).collect();
    assert!(
        after.len() >= 20,
        "only {} requests while down",
        after.len()
    );
    assert!(after
        .iter()
        .all(|s| s.answer.is_ok() && !s.is_from("node-2")));
}

/// Whether a connect to `addr` gets no answer at all within 300 ms (no accept, no refusal).
async fn connect_is_silent(addr: SocketAddr) -> bool {
    tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr))
        .await
        .is_err()
}

/// A machine in front of `target` that can be unplugged: until then it relays each connection
/// to `target`; afterwards it drops every SYN and freezes its open connections.
///
/// Dropping SYNs without a firewall: once its listening socket's accept queue is full, Linux
/// drops new SYNs (unless `tcp_abort_on_overflow` is set), whatever the SYN-cookie setting. So
/// `unplug` stops accepting, shrinks the backlog to 0 with a second `listen`, and parks one
/// connection in the queue; the test then checks that a connect really goes unanswered.
struct Machine {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    unplugged: CancellationToken,
    accepting: Option<JoinHandle<()>>,
    /// Keeps the accept queue full.
    parked: Vec<TcpStream>,
    /// Ends the frozen connections when the test ends.
    _gone: DropGuard,
}

impl Machine {
    async fn start(target: SocketAddr) -> Machine {
        // Its own loopback address, apart from the rig's 127.0.0.2.. nodes.
        let listener = Arc::new(TcpListener::bind("127.0.0.9:0").await.expect("bind"));
        let addr = listener.local_addr().expect("local addr");
        let unplugged = CancellationToken::new();
        let gone = CancellationToken::new();
        let accepting = tokio::spawn(relay_until_unplugged(
            listener.clone(),
            target,
            unplugged.clone(),
            gone.clone(),
        ));
        Machine {
            addr,
            listener,
            unplugged,
            accepting: Some(accepting),
            parked: Vec::new(),
            _gone: gone.drop_guard(),
        }
    }

    async fn unplug(&mut self) {
        self.unplugged.cancel();
        if let Some(task) = self.accepting.take() {
            task.await.expect("accept task");
        }
        socket2::SockRef::from(&*self.listener)
            .listen(0)
            .expect("shrink backlog");
        // If connects raced in before the shrink the queue is already full and this one
        // simply goes unanswered.
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(50), TcpStream::connect(self.addr)).await
        {
            self.parked.push(s);
        }
    }
}

async fn relay_until_unplugged(
    listener: Arc<TcpListener>,
    target: SocketAddr,
    unplugged: CancellationToken,
    gone: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = unplugged.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((inbound, _)) = accepted else { continue };
        tokio::spawn(relay(inbound, target, unplugged.clone(), gone.clone()));
    }
}

/// Relays one connection until either side ends it, or until unplugged: then it holds both
/// sockets without reading or writing, like a machine whose cable was pulled.
async fn relay(
    mut inbound: TcpStream,
    target: SocketAddr,
    unplugged: CancellationToken,
    gone: CancellationToken,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let frozen = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = unplugged.cancelled() => true,
    };
    if frozen {
        gone.cancelled().await;
    }
}
