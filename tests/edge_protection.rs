//! Edge protection (docs/architecture.md §9) with real client addresses: each client binds its own
//! loopback source address (127.0.0.0/8 is all local), or a PROXY header carries an IPv6
//! source. Denied clients are reset and never reach a backend; per-client limits hold exactly;
//! the per-client table stays within its bound under thousands of distinct clients; a refused
//! client never affects another.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{metric_value, metrics_text, start_splicer, TestServer, WAIT};

/// An echo backend that counts the connections it accepted (health checks are `tcp`: they
/// connect and close, counted too, so tests compare counts around their own clients only).
async fn echo_backend() -> (TestServer, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let server = TestServer::start(move |mut stream, _| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    })
    .await;
    (server, accepted)
}

fn config(backend: SocketAddr, listener_extra: &str, runtime_extra: &str) -> String {
    format!(
        r#"
[runtime]
access_log = false
{runtime_extra}

[[listener]]
name = "edge"
bind = "127.0.0.1:0"
pool = "p"
{listener_extra}

[[pool]]
name = "p"
backends = ["{backend}"]

[pool.health]
check = "none"
"#
    )
}

/// A connection from `source` (a loopback address of the test's choosing).
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// What became of a connection: served (the echo came back), closed, or reset. A connection
/// refused by a limit is closed at once; if the client's first bytes got there first, the
/// kernel answers them with a reset instead, so limit tests accept both (`is_refused`), and
/// check the clean close with a client that sends nothing (`closes_cleanly`).
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Served,
    Closed,
    Reset,
}

impl Fate {
    fn is_refused(&self) -> bool {
        *self != Fate::Served
    }
}

/// A client that sends nothing sees a plain close (EOF), not a reset: limits close, only
/// `deny` resets.
async fn closes_cleanly(source: IpAddr, to: SocketAddr) -> bool {
    let mut s = connect_from(source, to).await.expect("connect");
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut buf)).await,
        Ok(Ok(0))
    )
}

/// Sends a line and waits for its echo (or the close/reset that answers instead).
async fn probe(stream: &mut TcpStream) -> Fate {
    let fut = async {
        if stream.write_all(b"ping\n").await.is_err() {
            return Fate::Reset;
        }
        let mut buf = [0u8; 5];
        match stream.read_exact(&mut buf).await {
            Ok(_) if &buf == b"ping\n" => Fate::Served,
            Ok(_) => Fate::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Fate::Reset,
            Err(_) => Fate::Closed,
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("an answer in time")
}

/// One connection from `source` that is probed and then closed.
async fn fate_of(source: IpAddr, to: SocketAddr) -> Fate {
    match connect_from(source, to).await {
        Ok(mut s) => probe(&mut s).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Fate::Reset,
        Err(e) => panic!("connect from {source}: {e}"),
    }
}

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

async fn refused(admin: SocketAddr, reason: &str) -> f64 {
    let text = metrics_text(admin).await;
    metric_value(
        &text,
        &format!("splicer_listener_refused_total{{listener=\"edge\",reason=\"{reason}\"}}"),
    )
    .unwrap_or_else(|| panic!("no refused metric for {reason}:\n{text}"))
}

#[tokio::test]
async fn deny_wins_over_allow_and_a_denied_client_is_reset_before_any_backend() {
    let (backend, accepted) = echo_backend().await;
    let extra = r#"allow = ["127.0.0.0/8"]
deny = ["127.0.0.66", "127.0.9.0/24"]"#;
    let splicer = start_splicer(&config(backend.addr, extra, "")).await;

    assert_eq!(fate_of(v4(0, 0, 5), splicer.addr).await, Fate::Served);
    let before = accepted.load(Ordering::Relaxed);
    for source in [v4(0, 0, 66), v4(0, 9, 1), v4(0, 9, 200)] {
        assert_eq!(fate_of(source, splicer.addr).await, Fate::Reset, "{source}");
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        before,
        "denied clients reached the backend"
    );
    assert_eq!(
        fate_of(v4(0, 0, 67), splicer.addr).await,
        Fate::Served,
        "a neighbour is not affected"
    );
    assert_eq!(refused(splicer.admin, "denied").await, 3.0);

    // An allow list that does not hold the client refuses it too.
    let only = r#"allow = ["127.0.1.0/24"]"#;
    let narrow = start_splicer(&config(backend.addr, only, "")).await;
    assert_eq!(fate_of(v4(0, 0, 5), narrow.addr).await, Fate::Reset);
    assert_eq!(fate_of(v4(0, 1, 5), narrow.addr).await, Fate::Served);
}

#[tokio::test]
async fn the_per_client_connection_limit_holds_exactly_and_only_for_that_client() {
    let (backend, _) = echo_backend().await;
    let splicer = start_splicer(&config(backend.addr, "per_client_max_connections = 3", "")).await;
    let (a, b) = (v4(0, 0, 7), v4(0, 0, 8));

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(a, splicer.addr).await.expect("connect");
        assert_eq!(probe(&mut s).await, Fate::Served);
        held.push(s);
    }
    for _ in 0..4 {
        assert!(
            fate_of(a, splicer.addr).await.is_refused(),
            "a 4th connection"
        );
    }
    assert!(
        closes_cleanly(a, splicer.addr).await,
        "a limit closes, it does not reset"
    );
    // Another client has its own count.
    let mut other = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(b, splicer.addr).await.expect("connect");
        assert_eq!(probe(&mut s).await, Fate::Served);
        other.push(s);
    }
    assert_eq!(refused(splicer.admin, "client_limit").await, 5.0);

    // One of A's connections ends: exactly one more is admitted.
    drop(held.pop());
    let started = Instant::now();
    let again = loop {
        // The close reaches splicer asynchronously; until it does, A is still at its limit.
        let mut s = connect_from(a, splicer.addr).await.expect("connect");
        if probe(&mut s).await == Fate::Served {
            break s;
        }
        assert!(started.elapsed() < WAIT, "no slot came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(fate_of(a, splicer.addr).await.is_refused());
    drop(again);
}

#[tokio::test]
async fn the_per_client_rate_admits_a_full_bucket_then_the_refill_rate() {
    let (backend, _) = echo_backend().await;
    let splicer = start_splicer(&config(backend.addr, r#"per_client_rate = "3/s""#, "")).await;
    let client = v4(0, 0, 9);
    let started = Instant::now();
    let mut admitted = 0u32;
    for _ in 0..20 {
        if fate_of(client, splicer.addr).await == Fate::Served {
            admitted += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The bucket starts full (3) and refills 3 a second: exactly that many, no more.
    let most = 3 + (elapsed * 3.0).floor() as u32;
    assert!(
        (3..=most).contains(&admitted),
        "{admitted} admitted in {elapsed:.3} s (at most {most})"
    );
    assert_eq!(
        refused(splicer.admin, "client_rate").await,
        f64::from(20 - admitted)
    );
    // Another client starts with its own full bucket.
    assert_eq!(fate_of(v4(0, 0, 10), splicer.addr).await, Fate::Served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_clients_stay_within_the_table_bound_and_limits_still_hold() {
    let (backend, _) = echo_backend().await;
    let splicer = start_splicer(&config(
        backend.addr,
        "per_client_max_connections = 2",
        "client_table_size = 256",
    ))
    .await;
    // A client holding its two connections throughout the churn.
    let steady = v4(0, 0, 11);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(steady, splicer.addr).await.expect("connect");
        assert_eq!(probe(&mut s).await, Fate::Served);
        held.push(s);
    }
    // 3,000 distinct clients, 30 at a time, each served once.
    let addr = splicer.addr;
    let mut tasks = Vec::new();
    for worker in 0..30u32 {
        tasks.push(tokio::spawn(async move {
            let mut served = 0;
            for i in 0..100u32 {
                let n = worker * 100 + i;
                let source = v4(1, (n >> 8) as u8, (n & 0xff) as u8);
                if fate_of(source, addr).await == Fate::Served {
                    served += 1;
                }
            }
            served
        }));
    }
    let mut served = 0;
    for t in tasks {
        served += tokio::time::timeout(WAIT, t)
            .await
            .expect("churn ends")
            .expect("task");
    }
    assert_eq!(served, 3000, "no client of the churn was refused");
    let text = metrics_text(splicer.admin).await;
    let entries = metric_value(
        &text,
        "splicer_listener_client_table_entries{listener=\"edge\"}",
    )
    .expect("table metric");
    assert!(entries <= 256.0, "the table holds {entries} clients");
    // The steady client was not forgotten: its limit still holds.
    assert!(fate_of(steady, splicer.addr).await.is_refused());
    drop(held);
}

/// PROXY v1 from an upstream balancer naming `source` as the client.
async fn via_proxy(to: SocketAddr, source: &str) -> (TcpStream, Fate) {
    let mut s = TcpStream::connect(to).await.expect("connect");
    let header = format!("PROXY TCP6 {source} ::1 40000 443\r\n");
    s.write_all(header.as_bytes()).await.expect("header");
    let fate = probe(&mut s).await;
    (s, fate)
}

#[tokio::test]
async fn ipv6_clients_named_by_a_proxy_header_are_counted_per_slash_64() {
    let (backend, accepted) = echo_backend().await;
    let extra = r#"accept_proxy = true
per_client_max_connections = 1
deny = ["2001:db8:dead::/48"]"#;
    let splicer = start_splicer(&config(backend.addr, extra, "")).await;

    let (_first, fate) = via_proxy(splicer.addr, "2001:db8:1:2::1").await;
    assert_eq!(fate, Fate::Served);
    // Same /64: the same client.
    let (_s, fate) = via_proxy(splicer.addr, "2001:db8:1:2:ffff::9").await;
    assert!(fate.is_refused());
    // Another /64: another client.
    let (_other, fate) = via_proxy(splicer.addr, "2001:db8:1:3::1").await;
    assert_eq!(fate, Fate::Served);
    // Denied by the source the header names, not by the balancer's address.
    let before = accepted.load(Ordering::Relaxed);
    let (_d, fate) = via_proxy(splicer.addr, "2001:db8:dead:1::1").await;
    assert!(fate.is_refused());
    assert_eq!(accepted.load(Ordering::Relaxed), before);
    assert_eq!(refused(splicer.admin, "client_limit").await, 1.0);
    assert_eq!(refused(splicer.admin, "denied").await, 1.0);
}

#[test]
fn check_names_bad_edge_settings() {
    let text = r#"
[runtime]
client_table_size = 0

[[listener]]
name = "edge"
bind = "127.0.0.1:0"
pool = "p"
allow = ["10.0.0.1/8", "not-a-cidr"]
deny = ["::/129"]
per_client_rate = "50/d"
per_client_max_connections = -1

[[pool]]
name = "p"
backends = ["127.0.0.2:443"]
"#;
    let e = splicer::config::parse(std::path::Path::new("edge.toml"), text)
        .expect_err("invalid")
        .to_string();
    for needle in [
        "client_table_size",
        "10.0.0.0/8",
        "not-a-cidr",
        "::/129",
        "per_client_rate",
        "per_client_max_connections",
    ] {
        assert!(e.contains(needle), "{needle} not named in:\n{e}");
    }
}
