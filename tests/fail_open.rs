//! Fail-open (docs/architecture.md §4): when every backend of a pool fails its checks, `fail_open = true`
//! spreads connections over the down backends and says so on `/status`; `fail_open = false`
//! closes clients at once and makes `/ready` answer 503. Real sockets and TLS on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{
    backend_state, backends_toml, control, http, rig, start_splicer, status, tls_client,
    wait_until, which_node, WAIT,
};

/// A pool of `backends` checked every 200 ms (rise and fall 2), failing open or not.
fn config(backends: &[SocketAddr], fail_open: bool) -> String {
    format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
backends = {backends}
connect_timeout = "200ms"
fail_open = {fail_open}

[pool.health]
check = "https"
interval = "200ms"
timeout = "100ms"
rise = 2
fall = 2
"#,
        backends = backends_toml(backends),
    )
}

async fn set_all_health(rig: &splicer::rig::Rig, code: &str) {
    for i in 1..=rig.node_addrs().len() {
        let (status, body) = control(rig, &format!("/nodes/{i}/health"), code).await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn wait_for_states(admin: SocketAddr, backends: &[SocketAddr], state: &str) {
    for &b in backends {
        let what = format!("{b} to be {state}");
        wait_until(WAIT, &what, || async {
            backend_state(admin, "quay", b).await == state
        })
        .await;
    }
}

async fn is_failing_open(admin: SocketAddr) -> bool {
    let s = status(admin).await;
    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "quay", "{s}");
    pool["fail_open"]
        .as_bool()
        .unwrap_or_else(|| panic!("pool has no boolean fail_open: {s}"))
}

async fn ready(admin: SocketAddr) -> u16 {
    http(admin, "GET", "/ready", "").await.0
}

/// `n` sequential requests through `addr`, every one required to succeed; answers per node.
async fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let node = which_node(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i} of {n} failed: {e}"));
        *counts.entry(node).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_fails_open_over_the_down_backends() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let splicer = start_splicer(&config(&nodes, true)).await;
    wait_for_states(splicer.admin, &nodes, "up").await;
    assert!(!is_failing_open(splicer.admin).await);

    // Every node's health check answers 503, but the nodes still serve data.
    set_all_health(&rig, "503").await;
    wait_for_states(splicer.admin, &nodes, "down").await;
    wait_until(WAIT, "pool to report fail_open", || async {
        is_failing_open(splicer.admin).await
    })
    .await;
    assert_eq!(
        ready(splicer.admin).await,
        200,
        "failing open counts as ready"
    );

    let counts = spread(splicer.addr, 30).await;
    println!("failing open: {counts:?}");
    assert_eq!(
        counts.len(),
        3,
        "not spread over every down backend: {counts:?}"
    );
    let (min, max) = (counts.values().min(), counts.values().max());
    assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{counts:?}");
    // Still down: serving them did not bring them back.
    wait_for_states(splicer.admin, &nodes, "down").await;
    assert!(is_failing_open(splicer.admin).await);

    set_all_health(&rig, "200").await;
    wait_until(WAIT, "fail_open to end", || async {
        !is_failing_open(splicer.admin).await
    })
    .await;
    let s = status(splicer.admin).await;
    let up = s["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["state"] == "up")
        .count();
    assert!(up >= 1, "fail_open ended with no backend up: {s}");
    assert_eq!(ready(splicer.admin).await, 200);
    wait_for_states(splicer.admin, &nodes, "up").await;
    assert_eq!(spread(splicer.addr, 6).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_without_fail_open_closes_clients_at_once() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let splicer = start_splicer(&config(&nodes, false)).await;
    wait_for_states(splicer.admin, &nodes, "up").await;
    assert_eq!(ready(splicer.admin).await, 200);

    set_all_health(&rig, "503").await;
    wait_for_states(splicer.admin, &nodes, "down").await;
    assert!(!is_failing_open(splicer.admin).await);
    assert_eq!(
        ready(splicer.admin).await,
        503,
        "no backend up and not failing open"
    );

    for _ in 0..5 {
        let started = Instant::now();
        let answer = hello_answer(splicer.addr).await;
        let took = started.elapsed();
        match &answer {
            Ok(bytes) => assert!(bytes.is_empty(), "got {} bytes back", bytes.len()),
            Err(kind) => assert!(
                matches!(
                    kind,
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ),
                "unexpected error {kind:?}"
            ),
        }
        // At once: not after waiting for a backend, nor after trying the down ones (whose
        // ServerHello would have come back).
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
    }

    set_all_health(&rig, "200").await;
    wait_until(WAIT, "/ready to answer 200 again", || async {
        ready(splicer.admin).await == 200
    })
    .await;
    which_node(splicer.addr)
        .await
        .expect("served again once a backend is up");
}

/// Connects to `addr`, sends a real TLS ClientHello and reads until the connection ends:
/// the bytes that came back, or the error kind that ended it.
async fn hello_answer(addr: SocketAddr) -> Result<Vec<u8>, ErrorKind> {
    let name = ServerName::try_from("node").expect("server name");
    let mut tls =
        rustls::ClientConnection::new(tls_client(&[b"http/1.1"]), name).expect("client connection");
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("ClientHello");
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.kind())?;
        // The write may already meet the close; what the read sees is what counts.
        let _ = tcp.write_all(&hello).await;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.map_err(|e| e.kind())?;
        Ok(answer)
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("splicer neither answered nor closed")
}
