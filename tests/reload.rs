//! Reloading the config (docs/architecture.md §4 "Reload", admin-api.md "Reload"): every case of the diff
//! (backends added, removed idle, removed while in use, kept; listeners added, removed, kept;
//! pools added and removed; weights), the `/reload` answers and the reload counters, 50
//! reloads under a continuous client load without one failed connection, and SIGHUP on the
//! binary.
//!
//! splicer runs in-process from a config file in a temp dir (a reload re-reads that file), in
//! front of plain TCP backends that greet every connection with their own address and then
//! echo, so each exchange tells which backend served it.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use common::process::{Proc, Stdout};
use common::{
    backends_toml, dead_addr, free_addr, http, metric_value, metrics_text, start_splicer_file,
    status, wait_until, ConfigFile, Splicer, TestServer, WAIT,
};

/// Bound on one client exchange.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Backends and clients.

/// A TCP backend that writes `<its address>\n` on every connection, then echoes until EOF.
async fn greeting_backend() -> TestServer {
    TestServer::start(|stream, addr| async move {
        let (mut r, mut w) = stream.into_split();
        if w.write_all(format!("{addr}\n").as_bytes()).await.is_err() {
            return;
        }
        // Health checks connect and leave; their errors are of no interest.
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

async fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        if s.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("EOF after {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// A connection through splicer with the backend's greeting read.
struct Held {
    stream: TcpStream,
    backend: SocketAddr,
}

impl Held {
    async fn open(addr: SocketAddr) -> std::io::Result<Held> {
        let fut = async {
            let mut stream = TcpStream::connect(addr).await?;
            let greeting = read_line(&mut stream).await?;
            let backend = greeting
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad greeting {greeting:?}")))?;
            Ok(Held { stream, backend })
        };
        tokio::time::timeout(EXCHANGE_LIMIT, fut)
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "open timed out"))?
    }

    /// Sends `msg` and expects it echoed.
    async fn echo(&mut self, msg: &str) -> std::io::Result<()> {
        let fut = async {
            self.stream.write_all(format!("{msg}\n").as_bytes()).await?;
            let back = read_line(&mut self.stream).await?;
            if back != msg {
                return Err(std::io::Error::other(format!(
                    "echo {back:?} instead of {msg:?}"
                )));
            }
            Ok(())
        };
        tokio::time::timeout(EXCHANGE_LIMIT, fut)
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "echo timed out"))?
    }

    /// Half-closes and expects a clean EOF with nothing more.
    async fn finish(mut self) -> std::io::Result<()> {
        let fut = async {
            self.stream.shutdown().await?;
            let mut rest = Vec::new();
            self.stream.read_to_end(&mut rest).await?;
            if !rest.is_empty() {
                return Err(std::io::Error::other(format!(
                    "unexpected bytes at the end: {rest:?}"
                )));
            }
            Ok(())
        };
        tokio::time::timeout(EXCHANGE_LIMIT, fut)
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "finish timed out"))?
    }
}

/// One whole exchange through `addr` (greeting, one echo, clean close): the backend it reached.
async fn exchange(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let mut held = Held::open(addr).await?;
    let backend = held.backend;
    held.echo("ping").await?;
    held.finish().await?;
    Ok(backend)
}

/// `n` sequential exchanges: which backend served each.
async fn exchanges(addr: SocketAddr, n: usize) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(
            exchange(addr)
                .await
                .unwrap_or_else(|e| panic!("exchange {i} through {addr} failed: {e}")),
        );
    }
    out
}

fn tally(served: &[SocketAddr]) -> BTreeMap<SocketAddr, usize> {
    let mut m = BTreeMap::new();
    for a in served {
        *m.entry(*a).or_default() += 1;
    }
    m
}

/// A connection opened to `backend` specifically (round robin: try until it is the one).
async fn hold_to(addr: SocketAddr, backend: SocketAddr) -> Held {
    for _ in 0..20 {
        let held = Held::open(addr).await.expect("open a connection");
        if held.backend == backend {
            return held;
        }
        held.finish().await.expect("close a connection");
    }
    panic!("20 connections through {addr} and none reached {backend}");
}

// ---------------------------------------------------------------------------------------------
// Config files.

/// A pool for the config text: `(address, weight)` backends, TCP checks.
struct PoolSpec<'a> {
    name: &'a str,
    backends: Vec<(SocketAddr, u32)>,
    /// Extra lines in `[pool.health]` (after `check`, `interval`, `timeout`).
    health: &'a str,
}

fn pool<'a>(name: &'a str, backends: &[(SocketAddr, u32)]) -> PoolSpec<'a> {
    PoolSpec {
        name,
        backends: backends.to_vec(),
        health: "rise = 1\nfall = 1\n",
    }
}

/// Any free loopback port (for the one listener of a config; two listeners need two ports).
const ANY: &str = "127.0.0.1:0";

/// `(name, bind, pool, extra lines)` listeners and `pools`.
fn config_text(listeners: &[(&str, &str, &str, &str)], pools: &[PoolSpec<'_>]) -> String {
    let mut t =
        String::from("[admin]\nbind = \"127.0.0.1:0\"\n\n[runtime]\naccess_log = false\n\n");
    for (name, bind, pool, extra) in listeners {
        t.push_str(&format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\npool = \"{pool}\"\n{extra}\n"
        ));
    }
    for p in pools {
        let list: Vec<String> = p
            .backends
            .iter()
            .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
            .collect();
        t.push_str(&format!(
            "[[pool]]\nname = \"{}\"\nbalance = \"round_robin\"\nbackends = [{}]\n\n\
             [pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\n{}\n",
            p.name,
            list.join(", "),
            p.health
        ));
    }
    t
}

async fn start(file: &ConfigFile) -> Splicer {
    start_splicer_file(&file.path).await
}

/// Two greeting backends, weight 1, in pool "p" behind listener "front", both seen up; the
/// config file is returned for the test to rewrite and reload.
async fn two_up() -> (TestServer, TestServer, ConfigFile, Splicer) {
    let (a, b) = (greeting_backend().await, greeting_backend().await);
    let file = ConfigFile::new(&config_text(
        &[("front", ANY, "p", "")],
        &[pool("p", &[(a.addr, 1), (b.addr, 1)])],
    ));
    let splicer = start(&file).await;
    wait_state(splicer.admin, "p", a.addr, "up").await;
    wait_state(splicer.admin, "p", b.addr, "up").await;
    (a, b, file, splicer)
}

/// `POST /reload`: (status code, JSON body).
async fn reload(admin: SocketAddr) -> (u16, Value) {
    let (code, body) = http(admin, "POST", "/reload", "").await;
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/reload answered non-JSON ({e}): {body}"));
    (code, v)
}

/// `POST /reload`, expecting 200 with exactly `expected` listeners and backends; returns the
/// answer (which also names the changed settings).
async fn reload_ok(admin: SocketAddr, expected: Value) -> Value {
    let (code, v) = reload(admin).await;
    assert_eq!(code, 200, "/reload failed: {v}");
    let contract = json!({"listeners": v["listeners"], "backends": v["backends"]});
    assert_eq!(contract, expected, "/reload answer: {v}");
    assert!(v["settings_changed"].is_array(), "/reload answer: {v}");
    v
}

fn report(
    listeners_added: &[&str],
    listeners_removed: &[&str],
    backends_added: &[String],
    backends_removed: &[String],
) -> Value {
    json!({
        "listeners": {"added": listeners_added, "removed": listeners_removed},
        "backends": {"added": backends_added, "removed": backends_removed},
    })
}

fn key(pool: &str, addr: SocketAddr) -> String {
    format!("{pool}/{addr}")
}

// ---------------------------------------------------------------------------------------------
// /status readers.

fn find_pool<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["pools"].as_array()?.iter().find(|p| p["name"] == name)
}

fn find_backend<'a>(s: &'a Value, pool: &str, addr: SocketAddr) -> Option<&'a Value> {
    find_pool(s, pool)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == addr.to_string())
}

/// The backend on `/status`, which must be listed.
async fn backend_json(admin: SocketAddr, pool: &str, addr: SocketAddr) -> Value {
    let s = status(admin).await;
    find_backend(&s, pool, addr)
        .cloned()
        .unwrap_or_else(|| panic!("{pool}/{addr} not on /status: {s}"))
}

async fn state_of(admin: SocketAddr, pool: &str, addr: SocketAddr) -> Option<String> {
    let s = status(admin).await;
    find_backend(&s, pool, addr).map(|b| b["state"].as_str().unwrap_or("").to_string())
}

async fn wait_state(admin: SocketAddr, pool: &str, addr: SocketAddr, want: &str) {
    wait_until(WAIT, &format!("{pool}/{addr} {want}"), || async {
        state_of(admin, pool, addr).await.as_deref() == Some(want)
    })
    .await;
}

async fn wait_gone(admin: SocketAddr, pool: &str, addr: SocketAddr) {
    wait_until(
        WAIT,
        &format!("{pool}/{addr} gone from /status"),
        || async { state_of(admin, pool, addr).await.is_none() },
    )
    .await;
}

/// What a reload may change, without the fields that move on their own (times, latencies).
fn shape(s: &Value) -> Value {
    let listeners: Vec<Value> = s["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| json!([l["name"], l["bind"]]))
        .collect();
    let pools: Vec<Value> = s["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let backends: Vec<Value> = p["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| json!([b["address"], b["state"], b["weight"]]))
                .collect();
            json!([p["name"], p["balance"], backends])
        })
        .collect();
    json!({"listeners": listeners, "pools": pools})
}

async fn reload_counts(admin: SocketAddr) -> (f64, f64) {
    let text = metrics_text(admin).await;
    let ok = metric_value(&text, "splicer_config_reloads_total{result=\"ok\"}")
        .unwrap_or_else(|| panic!("no ok reload counter in /metrics:\n{text}"));
    let err = metric_value(&text, "splicer_config_reloads_total{result=\"error\"}")
        .unwrap_or_else(|| panic!("no error reload counter in /metrics:\n{text}"));
    (ok, err)
}

fn listener_addr(splicer: &Splicer, name: &str) -> Option<SocketAddr> {
    splicer.running.as_ref()?.listener_addr(name)
}

// ---------------------------------------------------------------------------------------------
// Backends.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_backend_starts_down_comes_up_after_rise_then_takes_traffic() {
    let (a, b) = (greeting_backend().await, greeting_backend().await);
    let slow_rise = |bs: &[(SocketAddr, u32)]| PoolSpec {
        name: "p",
        backends: bs.to_vec(),
        health: "rise = 3\nfall = 1\n",
    };
    let file = ConfigFile::new(&config_text(
        &[("front", ANY, "p", "")],
        &[slow_rise(&[(a.addr, 1)])],
    ));
    let mut splicer = start(&file).await;
    wait_state(splicer.admin, "p", a.addr, "up").await;

    file.write(&config_text(
        &[("front", ANY, "p", "")],
        &[slow_rise(&[(a.addr, 1), (b.addr, 1)])],
    ));
    reload_ok(splicer.admin, report(&[], &[], &[key("p", b.addr)], &[])).await;
    let reloaded = Instant::now();
    // The first check runs at once, the second 10-100 ms later (src/health/mod.rs `first_gap`),
    // the third 100 ms after that: rise = 3 takes at least 110 ms, one check takes none.
    let fresh = backend_json(splicer.admin, "p", b.addr).await;
    assert_eq!(fresh["state"], "down", "a new backend starts down: {fresh}");
    assert_eq!(fresh["total_connections"], 0);
    let served = exchanges(splicer.addr, 4).await;
    if state_of(splicer.admin, "p", b.addr).await.as_deref() == Some("down") {
        assert!(
            served.iter().all(|s| *s == a.addr),
            "a down backend got traffic: {served:?}"
        );
    }

    wait_state(splicer.admin, "p", b.addr, "up").await;
    let took = reloaded.elapsed();
    assert!(
        took >= Duration::from_millis(100),
        "up after {took:?}: one check cannot be enough with rise = 3"
    );
    let counts = tally(&exchanges(splicer.addr, 10).await);
    assert_eq!(
        counts.get(&b.addr),
        Some(&5),
        "round robin after it came up: {counts:?}"
    );
    assert_eq!(
        counts.get(&a.addr),
        Some(&5),
        "round robin after it came up: {counts:?}"
    );
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_idle_backend_leaves_status_and_rotation() {
    let (a, b, file, mut splicer) = two_up().await;
    let before = tally(&exchanges(splicer.addr, 4).await);
    assert_eq!(before.get(&b.addr), Some(&2), "{before:?}");

    file.write(&config_text(
        &[("front", ANY, "p", "")],
        &[pool("p", &[(a.addr, 1)])],
    ));
    reload_ok(splicer.admin, report(&[], &[], &[], &[key("p", b.addr)])).await;
    let served = exchanges(splicer.addr, 6).await;
    assert!(
        served.iter().all(|s| *s == a.addr),
        "a removed backend got a new connection: {served:?}"
    );
    wait_gone(splicer.admin, "p", b.addr).await;
    let s = status(splicer.admin).await;
    let listed: Vec<&Value> = find_pool(&s, "p").expect("pool p")["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| &b["address"])
        .collect();
    assert_eq!(listed, vec![&json!(a.addr.to_string())], "{s}");
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_in_use_drains_until_its_last_connection_ends() {
    let (a, b, file, mut splicer) = two_up().await;
    let mut held = hold_to(splicer.addr, b.addr).await;

    file.write(&config_text(
        &[("front", ANY, "p", "")],
        &[pool("p", &[(a.addr, 1)])],
    ));
    reload_ok(splicer.admin, report(&[], &[], &[], &[key("p", b.addr)])).await;
    let draining = backend_json(splicer.admin, "p", b.addr).await;
    assert_eq!(draining["state"], "draining", "{draining}");
    assert_eq!(draining["active_connections"], 1, "{draining}");

    // New connections avoid it, and it stays listed (past several drain ticks) while in use.
    let served = exchanges(splicer.addr, 6).await;
    assert!(
        served.iter().all(|s| *s == a.addr),
        "a removed backend got a new connection: {served:?}"
    );
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        assert_eq!(
            state_of(splicer.admin, "p", b.addr).await.as_deref(),
            Some("draining"),
            "a removed backend with an open connection must stay listed as draining"
        );
        held.echo("still here")
            .await
            .expect("the open connection keeps working");
    }

    held.echo("last words")
        .await
        .expect("the open connection keeps working");
    held.finish()
        .await
        .expect("the open connection ends cleanly");
    wait_gone(splicer.admin, "p", b.addr).await;
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_backends_keep_state_and_counters() {
    let (a, b, c) = (
        greeting_backend().await,
        greeting_backend().await,
        greeting_backend().await,
    );
    let dead = dead_addr().await;
    let spec = |bs: &[(SocketAddr, u32)], health| PoolSpec {
        name: "p",
        backends: bs.to_vec(),
        health,
    };
    let file = ConfigFile::new(&config_text(
        &[("front", ANY, "p", "")],
        &[spec(
            &[(a.addr, 1), (b.addr, 1), (dead, 1)],
            "rise = 2\nfall = 1\n",
        )],
    ));
    let mut splicer = start(&file).await;
    wait_state(splicer.admin, "p", a.addr, "up").await;
    wait_state(splicer.admin, "p", b.addr, "up").await;
    wait_state(splicer.admin, "p", dead, "down").await;
    let counts = tally(&exchanges(splicer.addr, 6).await);
    assert_eq!(counts.get(&a.addr), Some(&3), "{counts:?}");
    assert_eq!(counts.get(&b.addr), Some(&3), "{counts:?}");

    // Add a backend and change the health settings too: the kept ones must not start over.
    file.write(&config_text(
        &[("front", ANY, "p", "")],
        &[spec(
            &[(a.addr, 1), (b.addr, 1), (dead, 1), (c.addr, 1)],
            "rise = 4\nfall = 2\n",
        )],
    ));
    let answer = reload_ok(splicer.admin, report(&[], &[], &[key("p", c.addr)], &[])).await;
    assert_eq!(
        answer["settings_changed"],
        json!(["pool p: health.rise", "pool p: health.fall"]),
        "{answer}"
    );
    let s = status(splicer.admin).await;
    for (addr, state) in [
        (a.addr, "up"),
        (b.addr, "up"),
        (dead, "down"),
        (c.addr, "down"),
    ] {
        let be = find_backend(&s, "p", addr).unwrap_or_else(|| panic!("{addr} listed: {s}"));
        assert_eq!(be["state"], state, "{addr} right after the reload: {s}");
    }
    for addr in [a.addr, b.addr] {
        let be = find_backend(&s, "p", addr).expect("listed");
        assert_eq!(be["total_connections"], 3, "{addr} kept its counter: {s}");
        assert_eq!(
            be["last_check"]["ok"], true,
            "{addr} kept its last check: {s}"
        );
    }
    let dead_json = find_backend(&s, "p", dead).expect("listed");
    assert_eq!(dead_json["last_check"]["ok"], false, "{s}");
    // Still in rotation without waiting for any check.
    let next = exchange(splicer.addr)
        .await
        .expect("exchange right after the reload");
    assert!(next == a.addr || next == b.addr, "went to {next}");
    let s = status(splicer.admin).await;
    let total = |addr| find_backend(&s, "p", addr).expect("listed")["total_connections"].clone();
    assert_eq!(
        total(a.addr).as_u64().unwrap_or(0) + total(b.addr).as_u64().unwrap_or(0),
        7,
        "{s}"
    );
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_applies_to_round_robin() {
    let (a, b, file, mut splicer) = two_up().await;
    let counts = tally(&exchanges(splicer.addr, 10).await);
    assert_eq!(counts.get(&a.addr), Some(&5), "{counts:?}");
    assert_eq!(counts.get(&b.addr), Some(&5), "{counts:?}");

    file.write(&config_text(
        &[("front", ANY, "p", "")],
        &[pool("p", &[(a.addr, 3), (b.addr, 1)])],
    ));
    reload_ok(splicer.admin, report(&[], &[], &[], &[])).await;
    assert_eq!(backend_json(splicer.admin, "p", a.addr).await["weight"], 3);
    assert_eq!(backend_json(splicer.admin, "p", b.addr).await["weight"], 1);
    let counts = tally(&exchanges(splicer.addr, 16).await);
    assert_eq!(
        counts.get(&a.addr),
        Some(&12),
        "weights 3:1 over 16: {counts:?}"
    );
    assert_eq!(
        counts.get(&b.addr),
        Some(&4),
        "weights 3:1 over 16: {counts:?}"
    );
    splicer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Listeners and pools.

/// Connects to `addr` in a loop until `stop`: (connections made, refused or failed ones).
fn connect_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let deadline = Instant::now() + WAIT;
        let (mut made, mut failed) = (0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match exchange(addr).await {
                Ok(_) => made += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
        (made, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_added_removed_and_kept() {
    let a = greeting_backend().await;
    let pools = || [pool("p", &[(a.addr, 1)])];
    // Two listeners cannot both say port 0: fixed ports that were free a moment ago.
    let port = || free_addr().to_string();
    let (p1, p2, p3) = (port(), port(), port());
    let file = ConfigFile::new(&config_text(
        &[("one", &p1, "p", ""), ("two", &p2, "p", "")],
        &pools(),
    ));
    let mut splicer = start(&file).await;
    wait_state(splicer.admin, "p", a.addr, "up").await;
    let one = listener_addr(&splicer, "one").expect("one");
    let two = listener_addr(&splicer, "two").expect("two");
    let mut via_one = Held::open(one).await.expect("connect through one");
    let mut via_two = Held::open(two).await.expect("connect through two");

    // A client keeps connecting to "one" while the reload changes one of its settings (its
    // accept loop restarts on the same socket), removes "two" and adds "three".
    let stop = Arc::new(AtomicBool::new(false));
    let load = connect_loop(one, stop.clone());
    wait_until(WAIT, "the client loop is running", || async {
        status(splicer.admin).await["listeners"][0]["total_connections"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    })
    .await;
    file.write(&config_text(
        &[
            ("one", &p1, "p", "max_connections = 1000\n"),
            ("three", &p3, "p", ""),
        ],
        &pools(),
    ));
    reload_ok(splicer.admin, report(&["three"], &["two"], &[], &[])).await;
    let total_at_reload = status(splicer.admin).await["listeners"][0]["total_connections"]
        .as_u64()
        .unwrap_or(0);
    wait_until(WAIT, "the client loop goes on after the reload", || async {
        status(splicer.admin).await["listeners"][0]["total_connections"]
            .as_u64()
            .unwrap_or(0)
            >= total_at_reload + 5
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (made, failed) = load.await.expect("client loop");
    assert!(
        failed.is_empty(),
        "connections to a kept listener failed: {failed:?}"
    );
    assert!(made >= 10, "only {made} connections made");

    // Kept: same port, the open connection lives on.
    assert_eq!(
        listener_addr(&splicer, "one"),
        Some(one),
        "a kept listener keeps its port"
    );
    via_one
        .echo("across the reload")
        .await
        .expect("open connection via one");
    assert_eq!(exchange(one).await.expect("new connection via one"), a.addr);
    // Added: accepts.
    let three = listener_addr(&splicer, "three").expect("three is listening");
    assert_eq!(exchange(three).await.expect("connection via three"), a.addr);
    // Removed: refuses, while its open connection continues.
    assert_eq!(listener_addr(&splicer, "two"), None);
    let refused = TcpStream::connect(two).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "a removed listener must stop accepting: {refused:?}"
    );
    via_two
        .echo("after removal")
        .await
        .expect("open connection via two");
    via_two.finish().await.expect("close via two");
    via_one.finish().await.expect("close via one");

    let s = status(splicer.admin).await;
    let names: Vec<&Value> = s["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| &l["name"])
        .collect();
    assert_eq!(names, vec![&json!("one"), &json!("three")], "{s}");
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_added_and_removed() {
    let (a, b) = (greeting_backend().await, greeting_backend().await);
    let file = ConfigFile::new(&config_text(
        &[("front", ANY, "old", "")],
        &[pool("old", &[(a.addr, 1)])],
    ));
    let mut splicer = start(&file).await;
    wait_state(splicer.admin, "old", a.addr, "up").await;
    let mut held = Held::open(splicer.addr).await.expect("connect");
    assert_eq!(held.backend, a.addr);

    file.write(&config_text(
        &[("front", ANY, "new", "")],
        &[pool("new", &[(b.addr, 1)])],
    ));
    reload_ok(
        splicer.admin,
        report(&[], &[], &[key("new", b.addr)], &[key("old", a.addr)]),
    )
    .await;
    assert_eq!(
        state_of(splicer.admin, "old", a.addr).await.as_deref(),
        Some("draining"),
        "the removed pool's backend drains while a connection is open"
    );
    wait_state(splicer.admin, "new", b.addr, "up").await;
    let served = exchanges(splicer.addr, 4).await;
    assert!(
        served.iter().all(|s| *s == b.addr),
        "the listener now uses the new pool: {served:?}"
    );
    held.echo("old pool")
        .await
        .expect("the open connection keeps working");
    held.finish().await.expect("close");

    wait_until(WAIT, "the removed pool leaves /status", || async {
        find_pool(&status(splicer.admin).await, "old").is_none()
    })
    .await;
    let s = status(splicer.admin).await;
    let names: Vec<&Value> = s["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(names, vec![&json!("new")], "{s}");
    let text = metrics_text(splicer.admin).await;
    assert!(
        !text.contains("pool=\"old\""),
        "the removed pool is gone from /metrics too:\n{text}"
    );
    splicer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Answers and counters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_changes_nothing_and_valid_one_answers_the_diff() {
    let (a, b) = (greeting_backend().await, greeting_backend().await);
    let valid = config_text(&[("front", ANY, "p", "")], &[pool("p", &[(a.addr, 1)])]);
    let file = ConfigFile::new(&valid);
    let mut splicer = start(&file).await;
    wait_state(splicer.admin, "p", a.addr, "up").await;
    assert_eq!(reload_counts(splicer.admin).await, (0.0, 0.0));
    let before = shape(&status(splicer.admin).await);

    // Adds a backend and a listener, but `rise = 0` makes the file invalid.
    let extra_bind = free_addr().to_string();
    let invalid = config_text(
        &[("front", ANY, "p", ""), ("extra", &extra_bind, "p", "")],
        &[pool("p", &[(a.addr, 1), (b.addr, 1)])],
    )
    .replace("rise = 1", "rise = 0");
    let line = invalid
        .lines()
        .position(|l| l == "rise = 0")
        .expect("the bad line")
        + 1;
    file.write(&invalid);
    let (code, v) = reload(splicer.admin).await;
    assert_eq!(code, 400, "{v}");
    let path = file.path.display().to_string();
    let errors = v["errors"].as_array().expect("an errors list");
    assert_eq!(errors.len(), 1, "one line per problem: {v}");
    let expected = format!("{path}:{line}:8: rise must be at least 1, not 0");
    assert!(
        errors[0].as_str().is_some_and(|e| e.starts_with(&expected)),
        "expected `{expected}...`, got {v}"
    );
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "only `errors`: {v}"
    );
    assert_eq!(
        shape(&status(splicer.admin).await),
        before,
        "nothing changed"
    );
    assert_eq!(exchange(splicer.addr).await.expect("still serving"), a.addr);
    assert_eq!(reload_counts(splicer.admin).await, (0.0, 1.0));

    // A TOML syntax error is located too.
    file.write("[[listener]\nname = \"front\"\n");
    let (code, v) = reload(splicer.admin).await;
    assert_eq!(code, 400, "{v}");
    let errors = v["errors"].as_array().expect("errors list");
    assert!(!errors.is_empty(), "{v}");
    for e in errors {
        let e = e.as_str().expect("string");
        let rest = e
            .strip_prefix(&format!("{path}:"))
            .unwrap_or_else(|| panic!("error not prefixed by the path: {e}"));
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next(), parts.next());
        assert!(
            l.is_some_and(|l| l.parse::<usize>().is_ok())
                && c.is_some_and(|c| c.parse::<usize>().is_ok())
                && parts.next().is_some_and(|m| m.starts_with(' ')),
            "not PATH:LINE:COL: message: {e}"
        );
    }
    // An unreadable file is an error too.
    std::fs::remove_file(&file.path).expect("remove");
    let (code, v) = reload(splicer.admin).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with(&path)),
        "{v}"
    );
    assert_eq!(
        shape(&status(splicer.admin).await),
        before,
        "nothing changed"
    );
    assert_eq!(reload_counts(splicer.admin).await, (0.0, 3.0));

    // A valid file: the diff, and the ok counter.
    file.write(&config_text(
        &[("front", ANY, "p", "")],
        &[pool("p", &[(a.addr, 1), (b.addr, 1)])],
    ));
    let (code, v) = reload(splicer.admin).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v,
        json!({"listeners":{"added":[],"removed":[]},
               "backends":{"added":[format!("p/{}", b.addr)],"removed":[]},
               "settings_changed":[]})
    );
    assert_eq!(reload_counts(splicer.admin).await, (1.0, 3.0));
    // Reloading the same file again changes nothing and still counts.
    reload_ok(splicer.admin, report(&[], &[], &[], &[])).await;
    assert_eq!(reload_counts(splicer.admin).await, (2.0, 3.0));
    splicer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_connection() {
    const RELOADS: usize = 50;
    const CLIENTS: usize = 4;
    const PER_RELOAD: u64 = 4;
    let (a, b, c) = (
        greeting_backend().await,
        greeting_backend().await,
        greeting_backend().await,
    );
    // A: two backends; B: a third one, another weight, and a listener setting that restarts
    // the accept loop on its socket.
    let config_a = config_text(
        &[("front", ANY, "p", "")],
        &[pool("p", &[(a.addr, 1), (b.addr, 1)])],
    );
    let config_b = config_text(
        &[("front", ANY, "p", "max_connections = 10000\n")],
        &[pool("p", &[(a.addr, 2), (b.addr, 1), (c.addr, 1)])],
    );
    let file = ConfigFile::new(&config_a);
    let mut splicer = start(&file).await;
    wait_state(splicer.admin, "p", a.addr, "up").await;
    wait_state(splicer.admin, "p", b.addr, "up").await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, done, addr) = (stop.clone(), done.clone(), splicer.addr);
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut served = BTreeMap::<SocketAddr, u64>::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match exchange(addr).await {
                    Ok(backend) => {
                        *served.entry(backend).or_default() += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (failures, served)
        }));
    }

    let wait_progress = |from: u64| {
        let done = done.clone();
        async move {
            wait_until(WAIT, "client exchanges go on", || {
                let done = done.clone();
                async move { done.load(Ordering::Relaxed) >= from + PER_RELOAD }
            })
            .await;
        }
    };
    wait_progress(0).await;
    for i in 0..RELOADS {
        let to_b = i % 2 == 0;
        file.write(if to_b { &config_b } else { &config_a });
        let expected = if to_b {
            report(&[], &[], &[key("p", c.addr)], &[])
        } else {
            report(&[], &[], &[], &[key("p", c.addr)])
        };
        let from = done.load(Ordering::Relaxed);
        reload_ok(splicer.admin, expected).await;
        // Let traffic flow under each config before the next reload.
        wait_progress(from).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut served = BTreeMap::<SocketAddr, u64>::new();
    for c in clients {
        let (f, s) = c.await.expect("client task");
        failures.extend(f);
        for (k, v) in s {
            *served.entry(k).or_default() += v;
        }
    }
    let total: u64 = served.values().sum();
    println!("{total} exchanges over {RELOADS} reloads: {served:?}");
    assert!(
        failures.is_empty(),
        "{} of {} client connections failed during reloads: {:?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(
        total >= RELOADS as u64 * PER_RELOAD,
        "only {total} exchanges ran"
    );
    assert!(Instant::now() < deadline, "the load ran out of time");
    assert_eq!(reload_counts(splicer.admin).await, (RELOADS as f64, 0.0));
    splicer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// SIGHUP on the binary.

fn binary_config(admin: SocketAddr, listen: SocketAddr, backends: &[SocketAddr]) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n\n[runtime]\naccess_log = false\nworkers = 2\n\n\
         [[listener]]\nname = \"front\"\nbind = \"{listen}\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = {}\n\n\
         [pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\n",
        backends_toml(backends)
    )
}

/// Whether process `pid` has a handler for SIGHUP (bit 0 of `SigCgt` in /proc/PID/status).
fn catches_sighup(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?.trim();
            u64::from_str_radix(mask, 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0)
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("rewrite config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let (a, b) = (greeting_backend().await, greeting_backend().await);
    let proc = Proc::start(Stdout::Log, 1, |admin, l| {
        binary_config(admin, l[0], &[a.addr])
    })
    .await;
    let (admin, listen, config) = (proc.admin(), proc.listeners()[0], proc.config());
    wait_state(admin, "p", a.addr, "up").await;
    assert_eq!(state_of(admin, "p", b.addr).await, None);
    // The handler is installed just after start-up; before it, SIGHUP would end the process.
    wait_until(WAIT, "splicer handles SIGHUP", || async {
        catches_sighup(proc.pid)
    })
    .await;

    // An invalid file: logged and counted, nothing changes.
    write_file(&config, "[[listener]]\nname = 1\n");
    proc.signal(libc::SIGHUP);
    wait_until(WAIT, "the failed reload is counted", || async {
        reload_counts(admin).await == (0.0, 1.0)
    })
    .await;
    assert_eq!(state_of(admin, "p", a.addr).await.as_deref(), Some("up"));
    wait_until(WAIT, "the failed reload is logged", || async {
        proc.log().contains("config reload failed")
    })
    .await;

    // A valid one adds b, which comes up and takes traffic.
    write_file(&config, &binary_config(admin, listen, &[a.addr, b.addr]));
    proc.signal(libc::SIGHUP);
    wait_until(WAIT, "the reload is counted", || async {
        reload_counts(admin).await == (1.0, 1.0)
    })
    .await;
    wait_state(admin, "p", b.addr, "up").await;
    let counts = tally(&exchanges(listen, 4).await);
    assert_eq!(
        counts.get(&b.addr),
        Some(&2),
        "{counts:?}; log:\n{}",
        proc.log()
    );
}
