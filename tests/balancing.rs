//! The four balancing algorithms, observed end to end: real client connections through
//! splicer to rig nodes, counting which node answered (`GET /` → `node-i`) and, for
//! `least_connections`, reading `active_connections` on `/status`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use common::{
    backend_state, control, parse_response, rig, start_splicer, status, tls_client, wait_until,
    which_node, WAIT,
};

/// One pool balancing over `backends` (address, weight), checked over HTTPS every `interval`.
fn config(balance: &str, backends: &[(SocketAddr, u32)], interval: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
balance = "{balance}"
backends = [{list}]
connect_timeout = "500ms"

[pool.health]
check = "https"
interval = "{interval}"
timeout = "100ms"
rise = 2
fall = 2
"#,
        list = list.join(", "),
    )
}

async fn wait_all_up(admin: SocketAddr, backends: &[SocketAddr]) {
    for &b in backends {
        let what = format!("{b} up");
        wait_until(WAIT, &what, || async {
            backend_state(admin, "quay", b).await == "up"
        })
        .await;
    }
}

/// `n` sequential requests (each a new connection), every one required to succeed.
async fn count_answers(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let node = which_node(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i} of {n} failed: {e}"));
        *counts.entry(node).or_default() += 1;
    }
    counts
}

fn count(counts: &BTreeMap<String, usize>, node: &str) -> usize {
    counts.get(node).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights_exactly() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let weighted = [(nodes[0], 1), (nodes[1], 2), (nodes[2], 1)];
    let splicer = start_splicer(&config("round_robin", &weighted, "1s")).await;
    wait_all_up(splicer.admin, &nodes).await;

    // 400 picks are 100 whole weight cycles, wherever the cursor starts.
    let counts = count_answers(splicer.addr, 400).await;
    println!("round_robin 1,2,1: {counts:?}");
    let got: Vec<usize> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| count(&counts, n))
        .collect();
    assert_eq!(got, [100, 200, 100], "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_spreads_evenly() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let even: Vec<_> = nodes.iter().map(|&a| (a, 1)).collect();
    let splicer = start_splicer(&config("random_two", &even, "1s")).await;
    wait_all_up(splicer.admin, &nodes).await;

    let counts = count_answers(splicer.addr, 600).await;
    println!("random_two: {counts:?}");
    // 200 each on average; a uniform draw stays within ±60 (about 5 standard deviations).
    for node in ["node-1", "node-2", "node-3"] {
        let n = count(&counts, node);
        assert!((140..=260).contains(&n), "uneven: {counts:?}");
    }
}

/// An HTTPS connection through splicer kept open after one keep-alive `GET /`.
struct Held {
    _tls: TlsStream<TcpStream>,
    node: String,
}

/// Opens a connection through `addr`, asks `GET /` without closing, and keeps it open.
async fn hold(addr: SocketAddr) -> Held {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let connector = TlsConnector::from(tls_client(&[b"http/1.1"]));
        let name = ServerName::try_from("node").map_err(std::io::Error::other)?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !response_complete(&buf) {
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the answer ended"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let (code, body) = parse_response(&buf);
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&buf));
        Ok::<_, std::io::Error>(Held {
            _tls: tls,
            node: body.trim().to_string(),
        })
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("held connection answered in time")
        .expect("held connection")
}

/// Whether `buf` holds a whole response with a `Content-Length` body.
fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| body.len() >= n)
}

/// `active_connections` of each backend on `/status`, by address.
async fn active(admin: SocketAddr) -> HashMap<SocketAddr, u64> {
    let s = status(admin).await;
    s["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let addr = b["address"].as_str().expect("address").parse().unwrap();
            (addr, b["active_connections"].as_u64().expect("active"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_places_by_load_per_weight() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let weights = [1u64, 1, 2];
    let weighted: Vec<_> = nodes
        .iter()
        .zip(weights)
        .map(|(&a, w)| (a, w as u32))
        .collect();
    let splicer = start_splicer(&config("least_connections", &weighted, "1s")).await;
    wait_all_up(splicer.admin, &nodes).await;
    let node_of = |name: &str| -> usize {
        let i: usize = name.trim_start_matches("node-").parse().expect("node-i");
        i - 1
    };

    // Open 8 idle connections one by one: each must land where (active + 1) / weight is
    // lowest, as `/status` showed it just before.
    let mut held: Vec<Held> = Vec::new();
    for step in 0..8 {
        let before = active(splicer.admin).await;
        let cost = |i: usize| (before[&nodes[i]] + 1) as f64 / weights[i] as f64;
        let best = (0..3).map(cost).fold(f64::INFINITY, f64::min);
        let conn = hold(splicer.addr).await;
        let i = node_of(&conn.node);
        assert!(
            cost(i) <= best,
            "step {step}: placed on {} with loads {before:?}, weights {weights:?}",
            conn.node
        );
        let after = active(splicer.admin).await;
        assert_eq!(after[&nodes[i]], before[&nodes[i]] + 1, "{after:?}");
        held.push(conn);
    }
    let now = active(splicer.admin).await;
    let loads: Vec<u64> = nodes.iter().map(|a| now[a]).collect();
    println!("least_connections after 8 held: {loads:?}");
    assert_eq!(loads, [2, 2, 4], "not even per weight");

    // Close node 3's connections but two: it is now the least loaded per weight (2/2 < 3/1).
    let mut on_three: Vec<usize> = (0..held.len())
        .filter(|&k| held[k].node == "node-3")
        .collect();
    on_three.truncate(2);
    for k in on_three.into_iter().rev() {
        drop(held.remove(k));
    }
    wait_until(
        WAIT,
        "node 3's closed connections to be counted",
        || async { active(splicer.admin).await[&nodes[2]] == 2 },
    )
    .await;
    let next = hold(splicer.addr).await;
    assert_eq!(
        next.node, "node-3",
        "loads were {loads:?} minus two on node 3"
    );
    held.push(next);

    // And a connection closed elsewhere pulls the next one there.
    let k = held
        .iter()
        .position(|h| h.node == "node-1")
        .expect("one on node 1");
    drop(held.remove(k));
    wait_until(WAIT, "node 1's closed connection to be counted", || async {
        active(splicer.admin).await[&nodes[0]] == 1
    })
    .await;
    // Loads now 1/1, 2/1, 3/2: node 1 (cost 2) ties node 3 (cost 2): either, never node 2.
    let next = hold(splicer.addr).await;
    assert_ne!(next.node, "node-2");
}

/// One HTTPS `GET /` through `addr` from source address `from`: which node answered.
async fn which_node_from(addr: SocketAddr, from: IpAddr) -> std::io::Result<String> {
    let exchange = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(addr).await?;
        let connector = TlsConnector::from(tls_client(&[b"http/1.1"]));
        let name = ServerName::try_from("node").map_err(std::io::Error::other)?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf).await {
            Ok(_) => {}
            // The node may close without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(e),
        }
        let (code, body) = parse_response(&buf);
        if code != 200 {
            return Err(std::io::Error::other(format!("status {code}")));
        }
        Ok(body.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
}

/// Every client's node after `rounds` requests each, asserting each client always got the same.
async fn placement(addr: SocketAddr, clients: &[IpAddr], rounds: usize) -> Vec<String> {
    let mut seen: Vec<Option<String>> = vec![None; clients.len()];
    for round in 0..rounds {
        for (k, &ip) in clients.iter().enumerate() {
            let node = which_node_from(addr, ip)
                .await
                .unwrap_or_else(|e| panic!("client {ip}, round {round}: {e}"));
            match &seen[k] {
                None => seen[k] = Some(node),
                Some(first) => assert_eq!(first, &node, "client {ip} moved in round {round}"),
            }
        }
    }
    seen.into_iter().map(|n| n.expect("placed")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hash_keeps_clients_and_moves_only_the_lost_ones() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let even: Vec<_> = nodes.iter().map(|&a| (a, 1)).collect();
    let splicer = start_splicer(&config("client_hash", &even, "200ms")).await;
    wait_all_up(splicer.admin, &nodes).await;

    // 120 clients, each its own loopback source address (all of 127/8 is local on Linux).
    let clients: Vec<IpAddr> = (1..=120u8)
        .map(|x| IpAddr::V4(Ipv4Addr::new(127, 0, 1, x)))
        .collect();
    let before = placement(splicer.addr, &clients, 3).await;
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &before {
        *spread.entry(n.as_str()).or_default() += 1;
    }
    println!("client_hash: 120 clients over {spread:?}");
    assert_eq!(spread.len(), 3, "every node should get clients: {spread:?}");

    let (code, body) = control(&rig, "/nodes/2/stop", "").await;
    assert_eq!(code, 200, "{body}");
    wait_until(WAIT, "node 2 down", || async {
        backend_state(splicer.admin, "quay", nodes[1]).await == "down"
    })
    .await;
    let after = placement(splicer.addr, &clients, 2).await;

    let mut moved_to: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, ip) in clients.iter().enumerate() {
        if before[k] == "node-2" {
            assert_ne!(after[k], "node-2", "client {ip} still on the stopped node");
            *moved_to.entry(after[k].as_str()).or_default() += 1;
        } else {
            assert_eq!(
                before[k], after[k],
                "client {ip} moved although its node stayed up"
            );
        }
    }
    let moved: usize = moved_to.values().sum();
    println!("client_hash: {moved} of 120 clients moved off node 2, to {moved_to:?}");
    // About a third: 40 expected; the bounds are about 4 standard deviations out.
    assert!((20..=60).contains(&moved), "moved {moved} of 120");
    assert_eq!(
        moved_to.len(),
        2,
        "moved clients should spread: {moved_to:?}"
    );
}
