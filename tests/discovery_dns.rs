//! DNS discovery against a fake DNS server on a loopback UDP port whose records and behaviour
//! the test changes at run time. The answers are encoded with hickory's own message types
//! (re-exported by hickory-resolver), so no other DNS crate or daemon is needed. No TCP server:
//! the answers are far below the UDP size limit, and the resolver uses TCP only after truncation.
//!
//! The first tests drive `splicer::discovery` alone; the end-to-end ones at the bottom run
//! splicer in-process with a `discover` pool asking the fake server (`discover.server`), in front
//! of plain TCP backends on 127.0.0.2, .3 and .4 that share one port.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use splicer::config::DiscoverConfig;
use splicer::discovery::{self, Discovery, DiscoveryError};

/// Every wait in this file is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// The one name the fake server knows.
const NAME: &str = "quay-nodes.test";

/// How the fake server treats a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The current records (an empty NOERROR answer for a family that has none).
    Answer,
    /// SERVFAIL.
    ServFail,
    /// NXDOMAIN for the name.
    NxDomain,
    /// Reads queries and never answers.
    Silent,
}

/// State shared between the test and the server task.
#[derive(Debug)]
struct Zone {
    records: Mutex<Vec<IpAddr>>,
    mode: Mutex<Mode>,
    /// Queries answered with the records (mode `Answer`).
    answered: AtomicU64,
    /// Queries that arrived, answered or not.
    received: AtomicU64,
}

/// A fake DNS server on 127.0.0.1:<ephemeral>; `close` drops its socket, `reopen` binds the same
/// port again.
struct FakeDns {
    addr: SocketAddr,
    zone: Arc<Zone>,
    task: Option<JoinHandle<()>>,
}

impl FakeDns {
    async fn start(records: &[&str]) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Zone {
            records: Mutex::new(ips(records)),
            mode: Mutex::new(Mode::Answer),
            answered: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let task = Some(tokio::spawn(serve(socket, zone.clone())));
        FakeDns { addr, zone, task }
    }

    fn set_records(&self, records: &[&str]) {
        *self.zone.records.lock().unwrap() = ips(records);
    }

    fn set_mode(&self, mode: Mode) {
        *self.zone.mode.lock().unwrap() = mode;
    }

    fn answered(&self) -> u64 {
        self.zone.answered.load(Ordering::SeqCst)
    }

    fn received(&self) -> u64 {
        self.zone.received.load(Ordering::SeqCst)
    }

    /// Stops the server and drops its socket, so the port refuses (ICMP) rather than ignores.
    async fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn reopen(&mut self) {
        let socket = UdpSocket::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(serve(socket, self.zone.clone())));
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        zone.received.fetch_add(1, Ordering::SeqCst);
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if let Some(response) = respond(&request, &zone) {
            let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
        }
    }
}

/// The answer to `request`, or `None` to stay silent.
fn respond(request: &Message, zone: &Zone) -> Option<Message> {
    let mode = *zone.mode.lock().unwrap();
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_queries(request.queries().to_vec());
    let query = request.queries().first()?;
    let code = match mode {
        Mode::Silent => return None,
        Mode::ServFail => ResponseCode::ServFail,
        Mode::NxDomain => ResponseCode::NXDomain,
        Mode::Answer if !is_ours(query.name()) => ResponseCode::NXDomain,
        Mode::Answer => {
            zone.answered.fetch_add(1, Ordering::SeqCst);
            for ip in zone.records.lock().unwrap().iter() {
                // TTL 1: a caching resolver would hide a change for up to a second.
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(query.name().clone(), 1, rdata));
            }
            ResponseCode::NoError
        }
    };
    response.set_response_code(code);
    Some(response)
}

fn is_ours(name: &Name) -> bool {
    name.to_ascii()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(NAME)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn shown(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(ToString::to_string).collect()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next update, within [`WAIT`].
async fn next_update(rx: &mut mpsc::Receiver<Vec<SocketAddr>>) -> Vec<String> {
    let update = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a member update")
        .expect("discovery stopped");
    shown(&update)
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

#[tokio::test]
async fn resolve_returns_both_families_sorted_and_deduplicated() {
    let dns = FakeDns::start(&["10.0.0.2", "2001:db8::1", "10.0.0.1", "::1"]).await;
    let d = Discovery::with_server(dns.addr);
    let got = d.resolve(NAME, 443).await.unwrap();
    assert_eq!(
        shown(&got),
        [
            "10.0.0.1:443",
            "10.0.0.2:443",
            "[::1]:443",
            "[2001:db8::1]:443"
        ]
    );

    // A name with one family only: the other's empty answer is not a failure.
    dns.set_records(&["::1"]);
    assert_eq!(shown(&d.resolve(NAME, 443).await.unwrap()), ["[::1]:443"]);
    dns.set_records(&["10.0.0.9"]);
    assert_eq!(
        shown(&d.resolve(NAME, 8443).await.unwrap()),
        ["10.0.0.9:8443"]
    );
}

#[tokio::test]
async fn resolve_sees_a_change_at_once_despite_the_ttl() {
    let dns = FakeDns::start(&["10.0.0.1"]).await;
    let d = Discovery::with_server(dns.addr);
    assert_eq!(
        shown(&d.resolve(NAME, 443).await.unwrap()),
        ["10.0.0.1:443"]
    );
    let before = dns.answered();
    dns.set_records(&["10.0.0.2"]);
    // Within the record's 1s TTL: only an uncached resolver asks again.
    assert_eq!(
        shown(&d.resolve(NAME, 443).await.unwrap()),
        ["10.0.0.2:443"]
    );
    assert_eq!(dns.answered(), before + 2, "one A and one AAAA query");
}

#[tokio::test]
async fn resolve_reports_failures_by_kind() {
    let dns = FakeDns::start(&[]).await;
    let d = Discovery::with_server(dns.addr);

    let empty = d.resolve(NAME, 443).await.unwrap_err();
    assert!(
        matches!(
            empty,
            DiscoveryError::NoAddresses {
                does_not_exist: false,
                ..
            }
        ),
        "{empty:?}"
    );

    dns.set_mode(Mode::NxDomain);
    let nx = d.resolve(NAME, 443).await.unwrap_err();
    assert!(
        matches!(
            nx,
            DiscoveryError::NoAddresses {
                does_not_exist: true,
                ..
            }
        ),
        "{nx:?}"
    );
    assert_eq!(
        nx.to_string(),
        "quay-nodes.test has no A or AAAA records (NXDOMAIN)"
    );

    dns.set_records(&["10.0.0.1"]);
    dns.set_mode(Mode::ServFail);
    let servfail = d.resolve(NAME, 443).await.unwrap_err();
    assert_eq!(
        servfail.to_string(),
        "A lookup of quay-nodes.test failed: the server answered Server Failure (rcode 2)"
    );
}

#[tokio::test]
async fn run_follows_the_records_and_keeps_the_last_set_through_failures() {
    init_logs();
    let mut dns = FakeDns::start(&["10.0.0.2", "10.0.0.1"]).await;
    let (tx, mut rx) = mpsc::channel(8);
    let failures = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let config = DiscoverConfig {
        dns: NAME.to_owned(),
        port: 443,
        every: Duration::from_millis(200),
        server: None,
    };
    let task = tokio::spawn(discovery::run(
        Arc::new(Discovery::with_server(dns.addr)),
        Arc::from("quay"),
        config,
        tx,
        failures.clone(),
        stop.clone(),
    ));

    assert_eq!(next_update(&mut rx).await, ["10.0.0.1:443", "10.0.0.2:443"]);
    dns.set_records(&["10.0.0.2", "10.0.0.1", "::1"]);
    assert_eq!(
        next_update(&mut rx).await,
        ["10.0.0.1:443", "10.0.0.2:443", "[::1]:443"]
    );
    dns.set_records(&["10.0.0.2", "::1"]);
    assert_eq!(next_update(&mut rx).await, ["10.0.0.2:443", "[::1]:443"]);

    // Every kind of failure: counted, and the last set stands (no update, never an empty one).
    // The order matters: each mode fails whatever the previous one answered to a resolution
    // caught across the switch.
    for mode in [Mode::ServFail, Mode::NxDomain, Mode::Silent] {
        let seen = failures.load(Ordering::SeqCst);
        dns.set_mode(mode);
        wait_until(&format!("failures to grow under {mode:?}"), || {
            failures.load(Ordering::SeqCst) >= seen + 2
        })
        .await;
    }
    // An empty answer (the name exists, with no addresses).
    dns.set_records(&[]);
    let seen = failures.load(Ordering::SeqCst);
    dns.set_mode(Mode::Answer);
    wait_until("failures to grow on an empty answer", || {
        failures.load(Ordering::SeqCst) >= seen + 2
    })
    .await;
    // The server gone altogether.
    let seen = failures.load(Ordering::SeqCst);
    dns.close().await;
    wait_until("failures to grow with the server gone", || {
        failures.load(Ordering::SeqCst) >= seen + 2
    })
    .await;
    assert!(rx.try_recv().is_err(), "no update while resolution fails");

    // Back with the same set: resolutions succeed again (failures stop growing), no update.
    dns.set_records(&["::1", "10.0.0.2"]);
    dns.reopen().await;
    let answered = dns.answered();
    wait_until("two resolutions answered", || {
        dns.answered() >= answered + 4
    })
    .await;
    let settled = failures.load(Ordering::SeqCst);
    let answered = dns.answered();
    wait_until("two more resolutions answered", || {
        dns.answered() >= answered + 4
    })
    .await;
    assert_eq!(
        failures.load(Ordering::SeqCst),
        settled,
        "resolutions succeed again"
    );
    assert!(rx.try_recv().is_err(), "the same set is no update");

    // A changed set is.
    dns.set_records(&["10.0.0.3", "10.0.0.2", "::1"]);
    assert_eq!(
        next_update(&mut rx).await,
        ["10.0.0.2:443", "10.0.0.3:443", "[::1]:443"]
    );

    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("run stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn run_stops_while_the_server_is_silent() {
    let dns = FakeDns::start(&["10.0.0.1"]).await;
    dns.set_mode(Mode::Silent);
    let (tx, _rx) = mpsc::channel(1);
    let stop = CancellationToken::new();
    let config = DiscoverConfig {
        dns: NAME.to_owned(),
        port: 443,
        every: Duration::from_secs(30),
        server: None,
    };
    let task = tokio::spawn(discovery::run(
        Arc::new(Discovery::with_server(dns.addr)),
        Arc::from("quay"),
        config,
        tx,
        Arc::new(AtomicU64::new(0)),
        stop.clone(),
    ));
    // Mid-resolution (the query arrived and will never be answered; the resolver would wait up
    // to 5 s): cancellation does not wait for it.
    wait_until("the query reaches the silent server", || dns.received() > 0).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run stops at once when cancelled")
        .unwrap();
}

#[test]
fn system_resolver_builds() {
    Discovery::system().unwrap();
}

// ---------------------------------------------------------------------------------------------
// End to end: splicer with a `discover` pool asking the fake server.

/// The pool's name in the end-to-end configs.
const POOL: &str = "quay";

/// Plain TCP backends on 127.0.0.2, 127.0.0.3 and 127.0.0.4, all on one port (the pool's
/// `discover.port`). Each accepted connection gets the backend's own address on a line and is
/// then held open until the peer closes, so a client can keep a connection on a backend.
struct Backends {
    port: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Backends {
    async fn start() -> Backends {
        for _ in 0..10 {
            let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            // The same port on .3 and .4 may be taken by someone else: try another one.
            let Ok(third) = tokio::net::TcpListener::bind(("127.0.0.3", port)).await else {
                continue;
            };
            let Ok(fourth) = tokio::net::TcpListener::bind(("127.0.0.4", port)).await else {
                continue;
            };
            let tasks = [first, third, fourth]
                .into_iter()
                .map(serve_backend)
                .collect();
            return Backends { port, tasks };
        }
        panic!("no port free on 127.0.0.2, .3 and .4 in 10 tries");
    }

    fn addr(&self, ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), self.port)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn serve_backend(listener: tokio::net::TcpListener) -> JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let me = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Health checks connect and close at once: a failed write is theirs.
                if stream
                    .write_all(format!("{me}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    })
}

/// A connection through splicer with the backend that took it (its address line read), or why
/// there is none (refused, closed before the line, or no line within [`WAIT`]).
async fn connect_via(addr: SocketAddr) -> Result<(SocketAddr, tokio::net::TcpStream), String> {
    use tokio::io::AsyncReadExt;
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            match stream.read(&mut byte).await {
                Ok(1) => line.push(byte[0]),
                Ok(_) => return Err(format!("closed after {line:?}")),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let backend = String::from_utf8_lossy(&line)
            .trim()
            .parse()
            .map_err(|e| format!("not an address line {line:?}: {e}"))?;
        Ok((backend, stream))
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| Err("no address line in time".to_owned()))
}

/// The backend one connection through splicer reaches (the connection is then closed).
async fn reach(addr: SocketAddr) -> SocketAddr {
    match connect_via(addr).await {
        Ok((backend, _)) => backend,
        Err(e) => panic!("a connection through splicer failed: {e}"),
    }
}

/// The backends `n` connections in a row reach; every one must succeed.
async fn reach_n(addr: SocketAddr, n: usize) -> BTreeSet<SocketAddr> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(reach(addr).await);
    }
    seen
}

/// Connects until one reaches `backend` (all must succeed); returns that connection, open.
async fn connection_to(addr: SocketAddr, backend: SocketAddr) -> tokio::net::TcpStream {
    for _ in 0..50 {
        match connect_via(addr).await {
            Ok((b, stream)) if b == backend => return stream,
            Ok(_) => {}
            Err(e) => panic!("a connection through splicer failed: {e}"),
        }
    }
    panic!("50 connections in a row missed {backend}");
}

/// The pool's members on `/status` as (address, state), in the order shown.
async fn members(admin: SocketAddr) -> Vec<(String, String)> {
    let s = common::status(admin).await;
    let pool = s["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == POOL))
        .unwrap_or_else(|| panic!("pool {POOL} not on /status: {s}"))
        .clone();
    pool["backends"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap_or("").to_owned(),
                        b["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `members` sorted by address, for comparisons with an expected set.
async fn member_set(admin: SocketAddr) -> Vec<(String, String)> {
    let mut m = members(admin).await;
    m.sort();
    m
}

/// `(address, state)` pairs, sorted, for comparisons with [`member_set`].
fn expect(list: &[(SocketAddr, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, s)| (a.to_string(), (*s).to_owned()))
        .collect();
    v.sort();
    v
}

/// Waits until the pool's members and their states are exactly `want`.
async fn wait_members(admin: SocketAddr, want: &[(SocketAddr, &str)]) {
    let want = expect(want);
    let what = format!("members {want:?} on /status");
    common::wait_until(WAIT, &what, || {
        let want = want.clone();
        async move { member_set(admin).await == want }
    })
    .await;
}

/// `splicer_discovery_failures_total{pool="quay"}` on `/metrics`.
async fn discovery_failures(admin: SocketAddr) -> f64 {
    let text = common::metrics_text(admin).await;
    let series = format!("splicer_discovery_failures_total{{pool=\"{POOL}\"}}");
    common::metric_value(&text, &series)
        .unwrap_or_else(|| panic!("{series} not on /metrics:\n{text}"))
}

/// A config with one listener in front of a pool discovered from `dns`.
fn discover_config(dns: SocketAddr, port: u16, every: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [runtime]\naccess_log = false\ndrain_timeout = \"30s\"\n\n\
         [[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"{POOL}\"\n\n\
         [[pool]]\nname = \"{POOL}\"\n\
         discover = {{ dns = \"{NAME}\", port = {port}, every = \"{every}\", server = \"{dns}\" }}\n\n\
         [pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n"
    )
}

/// Connections through `addr` one after another until `stop`: (backends reached, failures).
fn steady_traffic(
    addr: SocketAddr,
    stop: CancellationToken,
) -> JoinHandle<(BTreeSet<SocketAddr>, Vec<String>)> {
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut failures = Vec::new();
        while !stop.is_cancelled() {
            match connect_via(addr).await {
                Ok((b, _)) => {
                    seen.insert(b);
                }
                Err(e) => failures.push(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (seen, failures)
    })
}

#[tokio::test]
async fn splicer_follows_dns_members_through_changes_and_failures() {
    let mut dns = FakeDns::start(&["127.0.0.2", "127.0.0.3"]).await;
    let backends = Backends::start().await;
    let (a2, a3, a4) = (
        backends.addr("127.0.0.2"),
        backends.addr("127.0.0.3"),
        backends.addr("127.0.0.4"),
    );
    let mut splicer =
        common::start_splicer(&discover_config(dns.addr, backends.port, "200ms")).await;
    let (front, admin) = (splicer.addr, splicer.admin);

    // Start-up: both answered members are listed and come up; traffic reaches both.
    wait_members(admin, &[(a2, "up"), (a3, "up")]).await;
    assert_eq!(reach_n(front, 10).await, BTreeSet::from([a2, a3]));

    // A new address starts down, comes up after `rise` passes, then takes connections.
    dns.set_records(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let start = Instant::now();
    let first_seen = loop {
        let m = members(admin).await;
        if let Some((_, state)) = m.iter().find(|(a, _)| *a == a4.to_string()) {
            break state.clone();
        }
        assert!(start.elapsed() < WAIT, "127.0.0.4 not on /status: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first_seen, "down", "a discovered member starts down");
    wait_members(admin, &[(a2, "up"), (a3, "up"), (a4, "up")]).await;
    connection_to(front, a4).await;

    // A vanished address with a connection open drains: listed as draining, no new connections.
    let held = connection_to(front, a2).await;
    dns.set_records(&["127.0.0.3", "127.0.0.4"]);
    wait_members(admin, &[(a2, "draining"), (a3, "up"), (a4, "up")]).await;
    assert_eq!(reach_n(front, 12).await, BTreeSet::from([a3, a4]));
    // Its last connection gone, it leaves the pool.
    drop(held);
    wait_members(admin, &[(a3, "up"), (a4, "up")]).await;

    // Failing resolutions (SERVFAIL, then no answer at all, then the port closed): counted,
    // and the members stay as they were while traffic continues without a failure.
    let stop_traffic = CancellationToken::new();
    let traffic = steady_traffic(front, stop_traffic.clone());
    for failure in ["servfail", "silent", "closed"] {
        let before = discovery_failures(admin).await;
        match failure {
            "servfail" => dns.set_mode(Mode::ServFail),
            "silent" => dns.set_mode(Mode::Silent),
            _ => dns.close().await,
        }
        common::wait_until(
            WAIT,
            &format!("discovery failures to grow ({failure})"),
            || async move { discovery_failures(admin).await >= before + 2.0 },
        )
        .await;
        assert_eq!(
            member_set(admin).await,
            expect(&[(a3, "up"), (a4, "up")]),
            "members changed while resolutions failed ({failure})"
        );
    }
    stop_traffic.cancel();
    let (seen, failed) = tokio::time::timeout(WAIT, traffic)
        .await
        .expect("traffic stops")
        .unwrap();
    assert!(
        failed.is_empty(),
        "connections failed while DNS failed: {failed:?}"
    );
    assert_eq!(seen, BTreeSet::from([a3, a4]));

    // Answers again, with a changed set: .2 is back (down, then up after `rise` passes) and .4,
    // with no connection open, leaves.
    dns.set_records(&["127.0.0.3", "127.0.0.2"]);
    dns.set_mode(Mode::Answer);
    dns.reopen().await;
    wait_members(admin, &[(a2, "up"), (a3, "up")]).await;
    assert_eq!(reach_n(front, 10).await, BTreeSet::from([a2, a3]));
    let settled = discovery_failures(admin).await;
    let answered = dns.answered();
    // Two more resolutions (an A and an AAAA query each) without a failure.
    common::wait_until(WAIT, "two more resolutions answered", || async {
        dns.answered() >= answered + 4
    })
    .await;
    assert_eq!(discovery_failures(admin).await, settled);

    assert!(splicer.shutdown().await, "every connection drained");
}

#[tokio::test]
async fn listener_opens_once_the_first_dns_answer_was_checked() {
    let dns = FakeDns::start(&["127.0.0.2", "127.0.0.3"]).await;
    let backends = Backends::start().await;
    let (a2, a3) = (backends.addr("127.0.0.2"), backends.addr("127.0.0.3"));
    // A long `every`: only the start-up resolution matters here.
    let mut splicer = common::start_splicer(&discover_config(dns.addr, backends.port, "5s")).await;

    // The very first connection succeeds: the members were resolved and checked before the
    // listener opened, so no wait is needed.
    let first = reach(splicer.addr).await;
    assert!(first == a2 || first == a3, "reached {first}");
    assert!(dns.answered() >= 1, "splicer asked the fake server");
    assert_eq!(
        member_set(splicer.admin).await,
        expect(&[(a2, "up"), (a3, "up")]),
        "both members checked at start-up (one pass is enough then)"
    );
    assert_eq!(reach_n(splicer.addr, 6).await, BTreeSet::from([a2, a3]));
    assert!(splicer.shutdown().await, "every connection drained");
}

#[tokio::test]
async fn a_silent_dns_at_start_up_delays_members_not_the_listener() {
    let dns = FakeDns::start(&["127.0.0.2"]).await;
    dns.set_mode(Mode::Silent);
    let backends = Backends::start().await;
    let a2 = backends.addr("127.0.0.2");
    let mut splicer = tokio::time::timeout(
        WAIT,
        common::start_splicer(&discover_config(dns.addr, backends.port, "300ms")),
    )
    .await
    .expect("splicer starts although DNS does not answer");
    // Until the first answer the pool has no members.
    assert_eq!(member_set(splicer.admin).await, expect(&[]));

    dns.set_mode(Mode::Answer);
    wait_members(splicer.admin, &[(a2, "up")]).await;
    assert_eq!(reach_n(splicer.addr, 3).await, BTreeSet::from([a2]));
    assert!(splicer.shutdown().await, "every connection drained");
}
