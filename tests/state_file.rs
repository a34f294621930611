//! docs/architecture.md §8 "State that outlives the process": admin decisions written to `runtime.state_file`
//! come back after a restart and an upgrade, a kill -9 at any moment leaves the old file or the
//! new one (never a partial one), and a bad file never stops a start. `splicer run` as a process
//! on loopback in front of the rig.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    backends_toml, free_addr, metric_value, metrics_text, status, try_http, wait_until, which_node,
    WAIT,
};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::process::{is_alive, signal, KillOnDrop, Proc};

/// A config with a state file, in a temp dir of its own.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn new(backends: &[SocketAddr]) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("splicer.toml");
        let state = dir.path().join("state.json");
        let (listen, admin) = (free_addr(), free_addr());
        let text = format!(
            r#"[admin]
bind = "{admin}"
[runtime]
drain_timeout = "2s"
state_file = "{}"
[[listener]]
name = "https"
bind = "{listen}"
pool = "quay"
[[pool]]
name = "quay"
backends = {}
[pool.health]
check = "https"
interval = "1s"
timeout = "500ms"
"#,
            state.display(),
            backends_toml(backends)
        );
        std::fs::write(&config, text).expect("write config");
        Setup {
            dir,
            config,
            state,
            listen,
            admin,
        }
    }

    async fn start(&self) -> Proc {
        let mut p = Proc::run(&self.config);
        p.until_ready(self.admin).await;
        p
    }

    /// The state file parsed, `None` when absent; panics when it is not JSON.
    fn read(&self) -> Option<Value> {
        match std::fs::read(&self.state) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let parsed = serde_json::from_str(&text);
                Some(parsed.unwrap_or_else(|e| panic!("state file is not JSON ({e}): {text:?}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read the state file: {e}"),
        }
    }
}

async fn action(admin: SocketAddr, what: &str, backend: SocketAddr) -> Value {
    let path = format!("/pools/quay/backends/{backend}/{what}");
    let (code, body) = try_http(admin, "POST", &path).await.expect("admin answers");
    assert_eq!(code, 200, "POST {path}: {body}");
    serde_json::from_str(&body).expect("JSON answer")
}

/// Each backend's state on a `/status`, in config order.
fn states(s: &Value) -> Vec<&str> {
    let backends = s["pools"][0]["backends"].as_array().expect("backends");
    backends
        .iter()
        .map(|b| b["state"].as_str().unwrap_or(""))
        .collect()
}

fn doc(entries: &[(SocketAddr, &str)]) -> Value {
    let backends: Vec<Value> = entries
        .iter()
        .map(|(a, s)| json!({"pool": "quay", "address": a.to_string(), "state": s}))
        .collect();
    json!({"version": 1, "backends": backends})
}

/// Drain and disable go to the file, come back after a restart before the first client, keep
/// every client off those backends, and `enable` removes them from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_survive_a_restart_and_enable_removes_them() {
    let rig = common::rig(3).await;
    let nodes = rig.node_addrs();
    let (a1, a2) = (nodes[0], nodes[1]);
    let setup = Setup::new(&nodes);
    let mut p = setup.start().await;
    assert_eq!(setup.read(), None, "a state file before any decision");
    assert_eq!(action(setup.admin, "drain", a1).await["state"], "draining");
    assert_eq!(
        action(setup.admin, "disable", a2).await["state"],
        "disabled"
    );
    assert_eq!(
        setup.read(),
        Some(doc(&[(a1, "draining"), (a2, "disabled")]))
    );
    p.stop_cleanly().await;

    let mut p = setup.start().await;
    // Right after /ready turns 200: the decisions applied before the listener opened.
    let s = status(setup.admin).await;
    assert_eq!(
        states(&s),
        ["draining", "disabled", "up"],
        "{s}\n{}",
        p.log()
    );
    let log = p.log();
    assert!(log.contains("restored an admin decision"), "{log}");
    for _ in 0..30 {
        let node = which_node(setup.listen).await;
        assert_eq!(node.as_deref().ok(), Some("node-3"), "{node:?}");
    }
    let s = status(setup.admin).await;
    for b in &s["pools"][0]["backends"].as_array().expect("backends")[..2] {
        assert_eq!(b["total_connections"], 0, "a client reached {b}");
    }

    assert_eq!(
        action(setup.admin, "enable", a1).await["address"],
        a1.to_string()
    );
    assert_eq!(setup.read(), Some(doc(&[(a2, "disabled")])));
    action(setup.admin, "enable", a2).await;
    assert_eq!(setup.read(), Some(doc(&[])));
    p.stop_cleanly().await;
    let mut p = setup.start().await;
    let s = status(setup.admin).await;
    assert!(states(&s).iter().all(|st| *st == "up"), "{s}");
    p.stop_cleanly().await;
}

/// An admin action that arrives while splicer starts (the admin API answers during the
/// start-up health round) must not erase the decisions of the previous process from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_during_start_up_keeps_the_restored_decisions() {
    let rig = common::rig(3).await;
    let nodes = rig.node_addrs();
    // Health answers take 300 ms: the start-up round keeps /ready at 503 that long.
    for i in 1..=3 {
        let (code, body) = common::control(&rig, &format!("/nodes/{i}/delay"), "300ms").await;
        assert_eq!(code, 200, "{body}");
    }
    let setup = Setup::new(&nodes);
    std::fs::write(&setup.state, doc(&[(nodes[0], "disabled")]).to_string()).expect("write");
    let mut p = Proc::run(&setup.config);
    wait_until(WAIT, "the admin API answers", || async {
        try_http(setup.admin, "GET", "/health").await.is_some()
    })
    .await;
    let ready = try_http(setup.admin, "GET", "/ready").await.map(|r| r.0);
    assert_eq!(
        ready,
        Some(503),
        "the start-up window was missed\n{}",
        p.log()
    );
    action(setup.admin, "drain", nodes[1]).await;
    p.until_ready(setup.admin).await;
    let s = status(setup.admin).await;
    assert_eq!(
        states(&s),
        ["disabled", "draining", "up"],
        "{s}\n{}",
        p.log()
    );
    assert_eq!(
        setup.read(),
        Some(doc(&[(nodes[0], "disabled"), (nodes[1], "draining")]))
    );
    p.stop_cleanly().await;
}

/// What a backend's entry in the state file may be: `None` (no entry), draining or disabled.
type Decision = Option<&'static str>;

/// Per backend, the decisions the file may hold: the last acknowledged one, plus the one whose
/// request was under way (applied or not) when the process died.
#[derive(Clone, Debug)]
struct Allowed(Vec<Vec<Decision>>);

/// Checks the file's syntax and format and that every backend's entry is allowed; returns the
/// decisions it holds.
fn check_file(
    setup: &Setup,
    nodes: &[SocketAddr],
    allowed: &Allowed,
    seed: u64,
    round: usize,
) -> Vec<Decision> {
    let ctx = format!("seed {seed} round {round}");
    let mut held = vec![None; nodes.len()];
    let Some(v) = setup.read() else {
        assert!(
            allowed.0.iter().all(|a| a.contains(&None)),
            "{ctx}: state file missing, allowed {allowed:?}"
        );
        return held;
    };
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: not an object: {v}"));
    assert_eq!(obj.len(), 2, "{ctx}: {v}");
    assert_eq!(v["version"], 1, "{ctx}: {v}");
    for e in v["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: {v}"))
    {
        assert_eq!(e.as_object().map(|o| o.len()), Some(3), "{ctx}: {e}");
        assert_eq!(e["pool"], "quay", "{ctx}: {e}");
        let i = nodes
            .iter()
            .position(|n| e["address"] == n.to_string())
            .unwrap_or_else(|| panic!("{ctx}: unknown address in {e}"));
        let d = match e["state"].as_str() {
            Some("draining") => "draining",
            Some("disabled") => "disabled",
            _ => panic!("{ctx}: bad state in {e}"),
        };
        assert_eq!(held[i], None, "{ctx}: two entries for one backend: {v}");
        held[i] = Some(d);
    }
    for (i, d) in held.iter().enumerate() {
        assert!(
            allowed.0[i].contains(d),
            "{ctx}: backend {i} is {d:?} in the file, allowed {:?}: {v}",
            allowed.0[i]
        );
    }
    held
}

/// One POST to the admin API. `Err(true)`: the request may have reached splicer (its outcome
/// is unknown); `Err(false)`: it certainly did not.
async fn post(admin: SocketAddr, path: &str) -> Result<u16, bool> {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    else {
        return Err(false);
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let exchange = async {
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(common::parse_response(&buf).0)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Some(code)) if code != 0 => Ok(code),
        _ => Err(true),
    }
}

/// Fires drain/disable/enable at random backends, one at a time, until `stop` (at most 5,000
/// requests); records what the file may hold in `allowed`. Returns the requests answered.
async fn fire_actions(
    admin: SocketAddr,
    nodes: Vec<SocketAddr>,
    allowed: Arc<Mutex<Allowed>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut answered = 0;
    for _ in 0..5000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let i = rng.gen_range(0..nodes.len());
        let (verb, d): (&str, Decision) = match rng.gen_range(0..3) {
            0 => ("drain", Some("draining")),
            1 => ("disable", Some("disabled")),
            _ => ("enable", None),
        };
        // Before the request leaves, the file may already hold its outcome.
        allowed.lock().expect("allowed").0[i].push(d);
        match post(admin, &format!("/pools/quay/backends/{}/{verb}", nodes[i])).await {
            Ok(200) => {
                answered += 1;
                allowed.lock().expect("allowed").0[i] = vec![d];
            }
            Ok(code) => panic!("POST {verb} answered {code}"),
            Err(maybe_applied) => {
                // Not up yet, or killed: the admin API does not answer.
                if !maybe_applied {
                    allowed.lock().expect("allowed").0[i].pop();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    answered
}

/// kill -9 at random moments while decisions are being written: the file is always absent or
/// whole and holds only decisions that were made, and the next start always succeeds with
/// exactly those decisions in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_leaves_a_partial_state_file() {
    let seed: u64 = std::env::var("SPLICER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (SPLICER_TEST_SEED={seed} replays its choices, not its timing)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rig = common::rig(3).await;
    let nodes = rig.node_addrs();
    let setup = Setup::new(&nodes);
    let mut held: Vec<Decision> = vec![None; nodes.len()];
    let mut total_answered = 0;
    for round in 0..20 {
        // Every third round also kills a process during its start-up, before it is ready.
        let kills: &[bool] = if round % 3 == 2 {
            &[true, false]
        } else {
            &[false]
        };
        for &during_start in kills {
            let mut p = Proc::run(&setup.config);
            if !during_start {
                p.until_listening(setup.admin).await;
                // The decisions of the killed process are in force before any new one.
                let s = status(setup.admin).await;
                let want: Vec<&str> = held.iter().map(|d| d.unwrap_or("up")).collect();
                let ctx = format!("seed {seed} round {round}: after restart: {s}");
                assert_eq!(states(&s), want, "{ctx}\n{}", p.log());
            }
            let allowed = Arc::new(Mutex::new(Allowed(held.iter().map(|&d| vec![d]).collect())));
            let stop = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(fire_actions(
                setup.admin,
                nodes.clone(),
                allowed.clone(),
                stop.clone(),
                rng.gen(),
            ));
            let delay = Duration::from_millis(rng.gen_range(0..=200));
            tokio::time::sleep(delay).await;
            p.signal(libc::SIGKILL);
            let exit = p.exit().await;
            stop.store(true, Ordering::Relaxed);
            assert_eq!(
                exit.code(),
                None,
                "seed {seed} round {round}: it exited by itself\n{}",
                p.log()
            );
            let answered = tokio::time::timeout(WAIT, task)
                .await
                .expect("action task ends")
                .expect("action task");
            total_answered += answered;
            let allowed = allowed.lock().expect("allowed").clone();
            held = check_file(&setup, &nodes, &allowed, seed, round);
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(setup.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp."))
        .collect();
    println!(
        "seed {seed}: {total_answered} actions answered; temp files left by kills: {leftovers:?}"
    );
    assert!(
        total_answered > 20,
        "seed {seed}: too few actions reached splicer to test anything"
    );
    // The last kill's file starts a process too, with its decisions in force (every backend
    // may be drained: /ready may stay 503, so wait for the listener).
    let mut p = Proc::run(&setup.config);
    p.until_listening(setup.admin).await;
    let s = status(setup.admin).await;
    let want: Vec<&str> = held.iter().map(|d| d.unwrap_or("up")).collect();
    assert_eq!(states(&s), want, "seed {seed}: after the last kill: {s}");
    p.stop_cleanly().await;
}

/// Garbage, truncated JSON, a directory and a future version: each is logged with the path and
/// the reason, counted once, and splicer serves anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_state_file_never_stops_a_start() {
    let rig = common::rig(2).await;
    let cases: [(&str, &str); 4] = [
        ("garbage", "valid UTF-8"),
        ("truncated", "EOF while parsing"),
        ("directory", "not a regular file"),
        ("version", "format version 99"),
    ];
    for (case, reason) in cases {
        let setup = Setup::new(&rig.node_addrs());
        match case {
            "garbage" => {
                std::fs::write(&setup.state, b"\x00\xff\xfe\x80garbage\n\x01").expect("write")
            }
            "truncated" => {
                let whole = doc(&[(rig.node_addrs()[0], "draining")]).to_string();
                std::fs::write(&setup.state, &whole[..whole.len() / 2]).expect("write")
            }
            "directory" => std::fs::create_dir(&setup.state).expect("mkdir"),
            _ => std::fs::write(&setup.state, r#"{"version":99,"backends":[]}"#).expect("write"),
        }
        let mut p = setup.start().await;
        let node = which_node(setup.listen).await;
        assert!(node.is_ok(), "{case}: {node:?}\n{}", p.log());
        let path = setup.state.display().to_string();
        let log = p.log();
        assert!(
            log.lines().any(|l| l.contains(&path) && l.contains(reason)),
            "{case}: no log line with {path} and {reason:?}\n{log}"
        );
        let metrics = metrics_text(setup.admin).await;
        assert_eq!(
            metric_value(&metrics, "splicer_state_file_errors_total"),
            Some(1.0),
            "{case}\n{metrics}"
        );
        let s = status(setup.admin).await;
        assert!(states(&s).iter().all(|st| *st == "up"), "{case}: {s}");
        p.signal(libc::SIGTERM);
        assert_eq!(p.exit().await.code(), Some(0), "{case}\n{}", p.log());
    }
}

/// A binary upgrade keeps the drain: the successor reads the state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_drain_decisions() {
    let rig = common::rig(2).await;
    let nodes = rig.node_addrs();
    let setup = Setup::new(&nodes);
    let mut p = setup.start().await;
    action(setup.admin, "drain", nodes[0]).await;
    p.signal(libc::SIGUSR2);
    // The successor's admin API answers on the shared socket during its start-up too: wait
    // for a /status from it with the listener open.
    let started = Instant::now();
    let s = loop {
        let doc = try_http(setup.admin, "GET", "/status")
            .await
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok());
        if let Some(doc) = doc.filter(|d| {
            d["pid"].as_i64() != Some(i64::from(p.pid))
                && d["listeners"].as_array().is_some_and(|l| !l.is_empty())
        }) {
            break doc;
        }
        assert!(started.elapsed() < WAIT, "no ready successor\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let successor = s["pid"].as_i64().expect("pid") as i32;
    let _guard = KillOnDrop(successor);
    assert_eq!(
        states(&s),
        ["draining", "up"],
        "after the upgrade: {s}\n{}",
        p.log()
    );
    // Only the successor can have restored it: the file did not exist when the first started.
    let log = p.log();
    assert!(log.contains("restored an admin decision"), "{log}");
    for _ in 0..10 {
        let node = which_node(setup.listen).await;
        assert_eq!(node.as_deref().ok(), Some("node-2"), "{node:?}");
    }
    let old_exit = p.exit_handing_over().await.code();
    assert_eq!(old_exit, Some(0), "old process\n{}", p.log());
    assert!(is_alive(successor), "the successor died\n{}", p.log());
    signal(successor, libc::SIGTERM);
    wait_until(WAIT, "the successor exits", || async move {
        !is_alive(successor)
    })
    .await;
    assert_eq!(setup.read(), Some(doc(&[(nodes[0], "draining")])));
}
