//! DNS discovery against a fake DNS server on a loopback UDP port whose records and behaviour
//! the test changes at run time. The answers are encoded with hickory's own message types
//! (re-exported by hickory-resolver), so no other DNS crate or daemon is needed. No TCP server:
//! the answers are far below the UDP size limit, and the resolver uses TCP only after truncation.

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
    // Mid-resolution (it would take up to 5s): cancellation does not wait for it.
    tokio::time::sleep(Duration::from_millis(100)).await;
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
