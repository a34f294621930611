//! The admin API (docs/architecture.md §5) against splicer running in-process in front of the rig:
//! `/health`, `/ready` following pool health, the exact shape of `/status` and its counters,
//! and JSON errors for wrong methods and unknown paths.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::net::TcpStream;

use common::{
    backend_state, backends_toml, control, http, https_get, rig, start_splicer, status, tls_client,
    wait_until, WAIT,
};

/// A pool checked over HTTPS quickly enough that a health flip shows within about a second.
fn config(backends: &[SocketAddr], fail_open: bool) -> String {
    format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
backends = {}
fail_open = {fail_open}

[pool.health]
check = "https"
path = "/health/instance"
interval = "200ms"
timeout = "150ms"
rise = 1
fall = 1
"#,
        backends_toml(backends)
    )
}

/// One HTTP/1.1 exchange returning the status, the `Content-Type` header and the body.
async fn exchange(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let a = common::admin::request(addr, method, path, &[], "").await;
    let content_type = a.header("content-type").unwrap_or_default().to_string();
    (a.code, content_type, a.body)
}

async fn ready(admin: SocketAddr) -> u16 {
    http(admin, "GET", "/ready", "").await.0
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn pool<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("pool {name} not on /status: {s}"))
}

fn backend<'a>(s: &'a Value, pool_name: &str, addr: SocketAddr) -> &'a Value {
    pool(s, pool_name)["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("backend {addr} not in pool {pool_name} on /status: {s}"))
}

/// Asserts `at` is RFC 3339 UTC with seconds precision (`2026-11-27T12:00:00Z`) and recent.
fn assert_recent_timestamp(at: &Value) {
    let text = at
        .as_str()
        .unwrap_or_else(|| panic!("`at` is not a string: {at}"));
    let shape_ok = text.len() == 20
        && text.ends_with('Z')
        && text.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "`at` is not YYYY-MM-DDTHH:MM:SSZ: {text}");
    let when = humantime::parse_rfc3339(text).expect("`at` parses as RFC 3339");
    let age = SystemTime::now()
        .duration_since(when)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(60), "`at` {text} is not recent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_ok_while_serving() {
    let rig = rig(1).await;
    let mut s = start_splicer(&config(&rig.node_addrs(), true)).await;
    let (code, content_type, body) = exchange(s.admin, "GET", "/health").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim_end(), "ok");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    // /health reports the process, not the pool: a failing backend does not change it.
    control(&rig, "/nodes/1/health", "503").await;
    let node = rig.node_addrs()[0];
    wait_until(WAIT, "node 1 down", || async {
        backend_state(s.admin, "quay", node).await == "down"
    })
    .await;
    let (code, body) = http(s.admin, "GET", "/health", "").await;
    assert_eq!((code, body.trim_end()), (200, "ok"));
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_pool_health_without_fail_open() {
    let rig = rig(2).await;
    let nodes = rig.node_addrs();
    let mut s = start_splicer(&config(&nodes, false)).await;
    // start() returns once the start-up round is done and listeners are open.
    assert_eq!(ready(s.admin).await, 200);

    // One node failing leaves the pool placeable: still ready.
    control(&rig, "/nodes/1/health", "503").await;
    wait_until(WAIT, "node 1 down", || async {
        backend_state(s.admin, "quay", nodes[0]).await == "down"
    })
    .await;
    assert_eq!(ready(s.admin).await, 200);

    // Every node failing: the pool cannot place a connection and does not fail open.
    control(&rig, "/nodes/2/health", "503").await;
    wait_until(WAIT, "/ready answers 503", || async {
        ready(s.admin).await == 503
    })
    .await;
    let doc = status(s.admin).await;
    assert_eq!(pool(&doc, "quay")["fail_open"], false, "{doc}");
    for addr in &nodes {
        let b = backend(&doc, "quay", *addr);
        assert_eq!(b["state"], "down", "{b}");
        let check = &b["last_check"];
        assert_eq!(check["ok"], false, "{b}");
        assert_eq!(check["status"], 503, "{b}");
        assert_eq!(check["error"], "status 503", "{b}");
    }
    // And the listener closes clients instead of sending them to a down node.
    let refused = https_get(s.addr, "/").await;
    assert!(
        refused.is_err(),
        "a client got through with no backend up: {refused:?}"
    );

    // Recovery of one node is enough.
    control(&rig, "/nodes/2/health", "200").await;
    wait_until(WAIT, "/ready answers 200 again", || async {
        ready(s.admin).await == 200
    })
    .await;
    let doc = status(s.admin).await;
    let b = backend(&doc, "quay", nodes[1]);
    assert_eq!(b["state"], "up", "{b}");
    assert_eq!(b["last_check"]["ok"], true, "{b}");
    assert_eq!(b["last_check"]["status"], 200, "{b}");
    assert_eq!(b["last_check"]["error"], Value::Null, "{b}");
    assert_eq!(backend(&doc, "quay", nodes[0])["state"], "down");
    assert_eq!(https_get(s.addr, "/").await.expect("served").1, "node-2\n");

    control(&rig, "/nodes/1/health", "200").await;
    wait_until(WAIT, "node 1 up", || async {
        backend_state(s.admin, "quay", nodes[0]).await == "up"
    })
    .await;
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_stays_200_while_failing_open() {
    let rig = rig(1).await;
    let node = rig.node_addrs()[0];
    let mut s = start_splicer(&config(&[node], true)).await;
    assert_eq!(ready(s.admin).await, 200);
    assert_eq!(pool(&status(s.admin).await, "quay")["fail_open"], false);

    control(&rig, "/nodes/1/health", "503").await;
    wait_until(WAIT, "pool fails open", || async {
        pool(&status(s.admin).await, "quay")["fail_open"] == true
    })
    .await;
    assert_eq!(backend_state(s.admin, "quay", node).await, "down");
    // Failing open still places connections, so the instance is ready.
    assert_eq!(ready(s.admin).await, 200);
    assert_eq!(https_get(s.addr, "/").await.expect("served").1, "node-1\n");

    control(&rig, "/nodes/1/health", "200").await;
    wait_until(WAIT, "fail-open ends", || async {
        pool(&status(s.admin).await, "quay")["fail_open"] == false
    })
    .await;
    assert_eq!(backend_state(s.admin, "quay", node).await, "up");
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_document_has_the_exact_shape() {
    let rig = rig(2).await;
    let nodes = rig.node_addrs();
    let text = format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"quay\"\n\
         [[listener]]\nname = \"side\"\nbind = \"127.0.1.1:0\"\npool = \"quay\"\n\
         [[pool]]\nname = \"quay\"\nbalance = \"least_connections\"\nfail_open = false\n\
         backends = [\"{}\", {{ address = \"{}\", weight = 3 }}]\n\
         [pool.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 1\n",
        nodes[0], nodes[1]
    );
    let mut s = start_splicer(&text).await;
    let doc = status(s.admin).await;

    assert_eq!(
        keys(&doc),
        // `pid` came with the lifecycle work (which process answered, across upgrades).
        set(&["version", "uptime_seconds", "pid", "listeners", "pools"]),
        "{doc}"
    );
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let uptime = doc["uptime_seconds"]
        .as_f64()
        .expect("uptime_seconds is a number");
    assert!((0.0..60.0).contains(&uptime), "uptime_seconds = {uptime}");

    let listeners = doc["listeners"].as_array().expect("listeners is an array");
    let names: Vec<&str> = listeners
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["front", "side"], "config order: {doc}");
    for l in listeners {
        assert_eq!(
            keys(l),
            set(&["name", "bind", "active_connections", "total_connections"]),
            "{l}"
        );
        assert_eq!(l["active_connections"], 0, "{l}");
        assert_eq!(l["total_connections"], 0, "{l}");
    }
    // `bind` is the bound address, not the configured port 0.
    assert_eq!(listeners[0]["bind"], s.addr.to_string());
    let side: SocketAddr = listeners[1]["bind"]
        .as_str()
        .and_then(|b| b.parse().ok())
        .expect("bind is ip:port");
    assert_ne!(side.port(), 0);

    let pools = doc["pools"].as_array().expect("pools is an array");
    assert_eq!(pools.len(), 1);
    let p = &pools[0];
    assert_eq!(
        keys(p),
        set(&[
            "name",
            "balance",
            "fail_open",
            "cluster_health",
            "shared_outage",
            "backends"
        ]),
        "{p}"
    );
    assert_eq!(p["name"], "quay");
    assert_eq!(p["balance"], "least_connections");
    assert_eq!(p["fail_open"], false);
    assert_eq!(p["cluster_health"], Value::Null);
    assert_eq!(p["shared_outage"], serde_json::json!([]));

    let backends = p["backends"].as_array().expect("backends is an array");
    let addresses: Vec<&str> = backends
        .iter()
        .filter_map(|b| b["address"].as_str())
        .collect();
    let expected: Vec<String> = nodes.iter().map(|a| a.to_string()).collect();
    assert_eq!(addresses, expected, "config order");
    for (b, weight) in backends.iter().zip([1, 3]) {
        assert_eq!(
            keys(b),
            set(&[
                "address",
                "state",
                "weight",
                "active_connections",
                "total_connections",
                "connect_failures",
                "bytes_to_backend",
                "bytes_to_client",
                "last_check"
            ]),
            "{b}"
        );
        assert_eq!(b["state"], "up", "{b}");
        assert_eq!(b["weight"], weight, "{b}");
        assert_eq!(b["active_connections"], 0, "{b}");
        assert_eq!(b["total_connections"], 0, "{b}");
        assert_eq!(b["connect_failures"], 0, "{b}");
        let check = &b["last_check"];
        // The rig answers with a Quay health document, so its services are shown (docs/architecture.md
        // §10), shared_dependencies or not.
        assert_eq!(
            keys(check),
            set(&["ok", "status", "latency_ms", "error", "at", "services"]),
            "{b}"
        );
        assert!(
            check["services"]
                .as_object()
                .is_some_and(|s| !s.is_empty() && s.values().all(|v| v == true)),
            "{b}"
        );
        assert_eq!(check["ok"], true, "{b}");
        assert_eq!(check["status"], 200, "{b}");
        assert_eq!(check["error"], Value::Null, "{b}");
        let latency = check["latency_ms"]
            .as_f64()
            .expect("latency_ms is a number");
        assert!((0.0..150.0).contains(&latency), "latency_ms = {latency}");
        assert_recent_timestamp(&check["at"]);
    }

    // Uptime grows; the document is rendered per request (not cached from the first one).
    let admin = s.admin;
    wait_until(WAIT, "uptime_seconds grows", || async move {
        status(admin).await["uptime_seconds"]
            .as_f64()
            .is_some_and(|later| later > uptime)
    })
    .await;
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_connections() {
    let rig = rig(2).await;
    let nodes = rig.node_addrs();
    let mut s = start_splicer(&config(&nodes, false)).await;

    const REQUESTS: u64 = 6;
    for _ in 0..REQUESTS {
        let (code, _) = https_get(s.addr, "/")
            .await
            .expect("request through splicer");
        assert_eq!(code, 200);
    }
    let listener_settled = |want_total: u64, want_active: u64| {
        let admin = s.admin;
        move || async move {
            let doc = status(admin).await;
            let l = &doc["listeners"][0];
            l["total_connections"] == want_total && l["active_connections"] == want_active
        }
    };
    wait_until(
        WAIT,
        "listener counts the requests and none stays active",
        listener_settled(REQUESTS, 0),
    )
    .await;
    let doc = status(s.admin).await;
    let per_backend: Vec<u64> = nodes
        .iter()
        .map(|a| {
            let b = backend(&doc, "quay", *a);
            assert_eq!(b["active_connections"], 0, "{b}");
            assert_eq!(b["connect_failures"], 0, "{b}");
            b["total_connections"].as_u64().expect("a count")
        })
        .collect();
    assert_eq!(per_backend.iter().sum::<u64>(), REQUESTS, "{doc}");
    // Round robin over two equal backends.
    assert_eq!(per_backend, [REQUESTS / 2, REQUESTS / 2], "{doc}");

    // A connection held open is active on its listener and on exactly one backend.
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(tls_client(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("node").expect("name");
    let held = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake through splicer");
    wait_until(
        WAIT,
        "held connection is active",
        listener_settled(REQUESTS + 1, 1),
    )
    .await;
    let doc = status(s.admin).await;
    let active: Vec<u64> = nodes
        .iter()
        .map(|a| {
            backend(&doc, "quay", *a)["active_connections"]
                .as_u64()
                .expect("a count")
        })
        .collect();
    assert_eq!(active.iter().sum::<u64>(), 1, "{doc}");
    drop(held);
    wait_until(
        WAIT,
        "closed connection is no longer active",
        listener_settled(REQUESTS + 1, 0),
    )
    .await;
    let doc = status(s.admin).await;
    for a in &nodes {
        assert_eq!(backend(&doc, "quay", *a)["active_connections"], 0, "{doc}");
    }
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_count_data_path_connects_only() {
    let rig = rig(1).await;
    let live = rig.node_addrs()[0];
    let dead = common::dead_addr().await;
    let text = format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"quay\"\n\
         [[pool]]\nname = \"quay\"\nbackends = [\"{dead}\", \"{live}\"]\nretries = 1\n\
         [pool.health]\ncheck = \"none\"\n"
    );
    let mut s = start_splicer(&text).await;
    const REQUESTS: u64 = 4;
    for _ in 0..REQUESTS {
        let (code, body) = https_get(s.addr, "/")
            .await
            .expect("retried onto the live node");
        assert_eq!((code, body.as_str()), (200, "node-1\n"));
    }
    wait_until(WAIT, "no connection stays active", || async {
        status(s.admin).await["listeners"][0]["active_connections"] == 0
    })
    .await;
    let doc = status(s.admin).await;
    let d = backend(&doc, "quay", dead);
    let l = backend(&doc, "quay", live);
    let failures = d["connect_failures"].as_u64().expect("a count");
    assert!((1..=REQUESTS).contains(&failures), "{doc}");
    assert_eq!(d["total_connections"], 0, "{doc}");
    assert_eq!(l["connect_failures"], 0, "{doc}");
    assert_eq!(l["total_connections"], REQUESTS, "{doc}");
    // With check = "none" nothing is probed: no last check, and everything counts as up.
    assert_eq!(d["last_check"], Value::Null, "{doc}");
    assert_eq!(d["state"], "up", "{doc}");
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_failures_are_not_connect_failures() {
    let rig = rig(1).await;
    let node = rig.node_addrs()[0];
    let mut s = start_splicer(&config(&[node], true)).await;
    control(&rig, "/nodes/1/stop", "").await;
    wait_until(WAIT, "stopped node is down", || async {
        backend_state(s.admin, "quay", node).await == "down"
    })
    .await;
    let doc = status(s.admin).await;
    let b = backend(&doc, "quay", node);
    assert_eq!(b["connect_failures"], 0, "{b}");
    assert_eq!(b["last_check"]["ok"], false, "{b}");
    assert_eq!(b["last_check"]["status"], Value::Null, "{b}");
    let error = b["last_check"]["error"].as_str().expect("an error text");
    assert!(!error.is_empty(), "{b}");
    control(&rig, "/nodes/1/start", "").await;
    wait_until(WAIT, "restarted node is up", || async {
        backend_state(s.admin, "quay", node).await == "up"
    })
    .await;
    assert!(s.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_and_unknown_path_is_404_both_json() {
    let rig = rig(1).await;
    let mut s = start_splicer(&config(&rig.node_addrs(), true)).await;
    for (method, path) in [
        ("POST", "/health"),
        ("POST", "/ready"),
        ("POST", "/status"),
        ("PUT", "/status"),
        ("DELETE", "/ready"),
        ("POST", "/"),
    ] {
        let (code, content_type, body) = exchange(s.admin, method, path).await;
        assert_eq!(code, 405, "{method} {path}: {body}");
        assert_eq!(content_type, "application/json", "{method} {path}");
        let v: Value = serde_json::from_str(&body).expect("405 body is JSON");
        assert_eq!(keys(&v), set(&["error"]), "{body}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/index.html"),
        ("GET", "/status/extra"),
        ("POST", "/nope"),
    ] {
        let (code, content_type, body) = exchange(s.admin, method, path).await;
        assert_eq!(code, 404, "{method} {path}: {body}");
        assert_eq!(content_type, "application/json", "{method} {path}");
        let v: Value = serde_json::from_str(&body).expect("404 body is JSON");
        assert_eq!(keys(&v), set(&["error"]), "{body}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    // A bad request did not disturb the API.
    assert_eq!(exchange(s.admin, "GET", "/health").await.0, 200);
    assert!(s.shutdown().await);
}
