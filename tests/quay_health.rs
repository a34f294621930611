//! Quay-aware health: splicer reads the services in a node's `/health/instance` body. When a
//! service every node shares (`shared_dependencies`, e.g. the database during a failover) fails
//! on most of the pool at once, nodes failing only on it stay in rotation (a *shared outage*,
//! shown on `/status` and `/metrics`); a node whose own services fail, or that alone reports
//! the database down, is ejected as usual. `[pool.cluster_health]` reports `/health/endtoend`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    backend_state, backends_toml, control, http, metric_value, metrics_text, rig, start_splicer,
    status, try_http, wait_until, which_node, Splicer,
};

/// Long enough for any state change these checks make (rise/fall 2 × 200 ms, plus slack).
const CHANGE: Duration = Duration::from_secs(10);

fn config(nodes: &[SocketAddr], shared: &str) -> String {
    format!(
        r#"
[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
balance = "round_robin"
fail_open = false
backends = {}

[pool.health]
check = "https"
interval = "200ms"
timeout = "150ms"
rise = 2
fall = 2
{shared}

[pool.cluster_health]
interval = "300ms"
"#,
        backends_toml(nodes)
    )
}

const SHARED: &str = r#"shared_dependencies = ["database", "auth"]"#;

async fn pool_status(admin: SocketAddr) -> Value {
    let s = status(admin).await;
    s["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "quay").cloned())
        .unwrap_or_else(|| panic!("no pool quay on /status: {s}"))
}

fn backend(pool: &Value, addr: SocketAddr) -> &Value {
    pool["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no backend {addr} on /status: {pool}"))
}

async fn states(admin: SocketAddr, nodes: &[SocketAddr]) -> Vec<String> {
    let pool = pool_status(admin).await;
    nodes
        .iter()
        .map(|&n| {
            backend(&pool, n)["state"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

async fn wait_states(admin: SocketAddr, nodes: &[SocketAddr], want: &[&str], what: &str) {
    wait_until(CHANGE, what, || async {
        states(admin, nodes).await == want
    })
    .await;
}

/// Checks (pass and fail) splicer has run on each node so far.
async fn checks_run(admin: SocketAddr, nodes: &[SocketAddr]) -> Vec<f64> {
    let m = metrics_text(admin).await;
    nodes
        .iter()
        .map(|n| {
            ["pass", "fail"]
                .iter()
                .filter_map(|r| {
                    let series = format!(
                        "splicer_health_checks_total{{pool=\"quay\",backend=\"{n}\",result=\"{r}\"}}"
                    );
                    metric_value(&m, &series)
                })
                .sum()
        })
        .collect()
}

/// Waits until splicer has run `n` more checks on every node: proof that a state change those
/// checks would cause (`fall` = `rise` = 2 here) had every chance to happen, on a machine of any
/// speed, where a fixed sleep proves nothing.
async fn wait_checks(admin: SocketAddr, nodes: &[SocketAddr], n: f64) {
    let before = checks_run(admin, nodes).await;
    wait_until(
        CHANGE,
        &format!("{n} more checks on every node"),
        || async {
            let now = checks_run(admin, nodes).await;
            now.iter()
                .zip(&before)
                .all(|(now, before)| *now >= before + n)
        },
    )
    .await;
}

async fn set_node(rig: &splicer::rig::Rig, i: usize, body: &str) {
    let (code, answer) = control(rig, &format!("/nodes/{i}/health"), body).await;
    assert_eq!(code, 200, "control /nodes/{i}/health {body}: {answer}");
}

async fn set_shared(rig: &splicer::rig::Rig, service: &str, direction: &str) {
    let (code, answer) = control(rig, &format!("/shared/{service}/{direction}"), "").await;
    assert_eq!(code, 200, "control /shared/{service}/{direction}: {answer}");
}

async fn start(nodes: usize, shared: &str) -> (splicer::rig::Rig, Splicer, Vec<SocketAddr>) {
    let rig = rig(nodes).await;
    let addrs = rig.node_addrs();
    let splicer = start_splicer(&config(&addrs, shared)).await;
    let all_up = vec!["up"; nodes];
    wait_states(splicer.admin, &addrs, &all_up, "every node up at start").await;
    (rig, splicer, addrs)
}

/// Clients and a `/status` watcher running in the background: counts failed requests and any
/// sample in which a node listed in `watch` was not `up`.
struct Watch {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    not_up: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    fn start(splicer: &Splicer, nodes: Vec<SocketAddr>, watch: Vec<usize>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let not_up = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), splicer.addr);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match which_node(addr).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().expect("lock").push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        let (stop2, not_up2, admin) = (stop.clone(), not_up.clone(), splicer.admin);
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let s = states(admin, &nodes).await;
                for &i in &watch {
                    if s[i - 1] != "up" {
                        not_up2
                            .lock()
                            .expect("lock")
                            .push(format!("node {i} was {}", s[i - 1]));
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
        Watch {
            stop,
            ok,
            failed,
            not_up,
            tasks,
        }
    }

    /// Stops the background tasks; panics if a request failed or a watched node left.
    async fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("watch task");
        }
        let failed = self.failed.lock().expect("lock").clone();
        let not_up = self.not_up.lock().expect("lock").clone();
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed: {failed:?}",
            failed.len(),
            failed.len() + ok
        );
        assert!(ok >= 20, "{what}: only {ok} requests made");
        assert!(not_up.is_empty(), "{what}: {not_up:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_database_outage_keeps_every_node_in_rotation() {
    let (rig, splicer, nodes) = start(3, SHARED).await;
    let admin = splicer.admin;
    wait_until(CHANGE, "cluster health ok", || async {
        pool_status(admin).await["cluster_health"]["ok"] == json!(true)
    })
    .await;
    let p = pool_status(admin).await;
    assert_eq!(p["shared_outage"], json!([]));
    assert_eq!(p["cluster_health"]["status"], json!(200));

    let watch = Watch::start(&splicer, nodes.clone(), vec![1, 2, 3]);
    set_shared(&rig, "database", "down").await;
    // Three times fall: enough to eject everyone if the outage were not seen.
    wait_checks(admin, &nodes, 6.0).await;
    watch.finish("during the shared database outage").await;

    let p = pool_status(admin).await;
    assert_eq!(p["shared_outage"], json!(["database"]), "{p}");
    assert_eq!(p["fail_open"], json!(false));
    for &n in &nodes {
        let b = backend(&p, n);
        assert_eq!(b["state"], "up", "{b}");
        let check = &b["last_check"];
        assert_eq!(check["ok"], json!(false), "{b}");
        assert_eq!(check["status"], json!(503), "{b}");
        assert_eq!(check["services"]["database"], json!(false), "{b}");
        assert_eq!(check["services"]["disk_space"], json!(true), "{b}");
    }
    let m = metrics_text(admin).await;
    let series = |name: &str, labels: &str| metric_value(&m, &format!("{name}{{{labels}}}"));
    assert_eq!(
        series(
            "splicer_pool_shared_outage",
            r#"pool="quay",service="database""#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(
            "splicer_pool_shared_outage",
            r#"pool="quay",service="auth""#
        ),
        Some(0.0),
        "{m}"
    );
    for &n in &nodes {
        let labels = |service: &str| format!(r#"pool="quay",backend="{n}",service="{service}""#);
        assert_eq!(
            series("splicer_backend_service_up", &labels("database")),
            Some(0.0),
            "{m}"
        );
        assert_eq!(
            series("splicer_backend_service_up", &labels("disk_space")),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            series(
                "splicer_backend_up",
                &format!(r#"pool="quay",backend="{n}""#)
            ),
            Some(1.0),
            "{m}"
        );
    }
    // The cluster-wide probe (/health/endtoend) sees the database down.
    wait_until(CHANGE, "cluster health failing with 503", || async {
        let c = &pool_status(admin).await["cluster_health"];
        c["ok"] == json!(false) && c["status"] == json!(503)
    })
    .await;
    let m = metrics_text(admin).await;
    assert_eq!(
        metric_value(&m, r#"splicer_cluster_health_up{pool="quay"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(http(admin, "GET", "/ready", "").await.0, 200);

    // The database is back: the outage ends, the cluster is healthy again, nobody moved.
    let watch = Watch::start(&splicer, nodes.clone(), vec![1, 2, 3]);
    set_shared(&rig, "database", "up").await;
    wait_until(CHANGE, "shared outage over, cluster ok", || async {
        let p = pool_status(admin).await;
        p["shared_outage"] == json!([])
            && p["cluster_health"]["ok"] == json!(true)
            && p["cluster_health"]["status"] == json!(200)
            && nodes
                .iter()
                .all(|&n| backend(&p, n)["last_check"]["ok"] == json!(true))
    })
    .await;
    watch.finish("while the database came back").await;
    let m = metrics_text(admin).await;
    assert_eq!(
        metric_value(&m, r#"splicer_cluster_health_up{pool="quay"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"splicer_pool_shared_outage{pool="quay",service="database"}"#
        ),
        Some(0.0),
        "{m}"
    );
    for &n in &nodes {
        let series = format!(
            r#"splicer_backend_service_up{{pool="quay",backend="{n}",service="database"}}"#
        );
        assert_eq!(metric_value(&m, &series), Some(1.0), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_reporting_the_database_down_is_ejected_alone() {
    let (rig, splicer, nodes) = start(3, SHARED).await;
    let admin = splicer.admin;
    set_node(&rig, 2, r#"{"status":503,"failing":["database"]}"#).await;
    wait_states(
        admin,
        &nodes,
        &["up", "down", "up"],
        "node 2 down, 1 and 3 up",
    )
    .await;
    let p = pool_status(admin).await;
    assert_eq!(
        p["shared_outage"],
        json!([]),
        "one node of three is no shared outage"
    );
    assert_eq!(
        backend(&p, nodes[1])["last_check"]["services"]["database"],
        json!(false),
        "{p}"
    );
    // Traffic avoids it meanwhile, and nodes 1 and 3 stay.
    let watch = Watch::start(&splicer, nodes.clone(), vec![1, 3]);
    let mut seen = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        seen.insert(which_node(splicer.addr).await.expect("request"));
    }
    watch.finish("with node 2 alone failing").await;
    assert!(
        !seen.contains("node-2"),
        "node 2 still got traffic: {seen:?}"
    );
    assert_eq!(backend_state(admin, "quay", nodes[1]).await, "down");

    // Recovery.
    set_node(&rig, 2, r#"{"status":200}"#).await;
    wait_states(admin, &nodes, &["up", "up", "up"], "node 2 back up").await;
    assert_eq!(pool_status(admin).await["shared_outage"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_failure_during_a_shared_outage_still_ejects_it() {
    let (rig, splicer, nodes) = start(3, SHARED).await;
    let admin = splicer.admin;
    set_shared(&rig, "database", "down").await;
    wait_until(CHANGE, "shared database outage", || async {
        pool_status(admin).await["shared_outage"] == json!(["database"])
    })
    .await;

    let watch = Watch::start(&splicer, nodes.clone(), vec![1, 3]);
    set_node(&rig, 2, r#"{"status":503,"failing":["disk_space"]}"#).await;
    wait_states(
        admin,
        &nodes,
        &["up", "down", "up"],
        "node 2 down (disk_space), 1 and 3 up",
    )
    .await;
    let p = pool_status(admin).await;
    let services = &backend(&p, nodes[1])["last_check"]["services"];
    assert_eq!(services["disk_space"], json!(false), "{p}");
    assert_eq!(services["database"], json!(false), "{p}");
    assert_eq!(p["shared_outage"], json!(["database"]), "{p}");
    wait_checks(admin, &nodes, 4.0).await;
    watch
        .finish("node 2 failing on its own during the outage")
        .await;

    // Its disk is fixed, but the database is still down: a node already down for its own
    // reasons stays down while the shared outage lasts (its checks still fail).
    set_node(&rig, 2, r#"{"status":200}"#).await;
    wait_until(CHANGE, "node 2's disk reported fixed", || async {
        let p = pool_status(admin).await;
        backend(&p, nodes[1])["last_check"]["services"]["disk_space"] == json!(true)
    })
    .await;
    // Twice rise: it would be back by now if those checks counted.
    wait_checks(admin, &nodes, 4.0).await;
    assert_eq!(
        states(admin, &nodes).await,
        ["up", "down", "up"],
        "node 2 must not come back on checks that fail on the shared database"
    );

    // The database is back: everyone is up and the outage is over.
    set_shared(&rig, "database", "up").await;
    wait_states(admin, &nodes, &["up", "up", "up"], "everyone up").await;
    assert_eq!(pool_status(admin).await["shared_outage"], json!([]));
}

/// docs/architecture.md §10: the services a Quay health body reports are shown whether or not the pool
/// names `shared_dependencies` — they are how an operator sees why a machine is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_dependencies_services_are_still_reported() {
    let (rig, splicer, nodes) = start(2, "").await;
    let admin = splicer.admin;
    set_node(&rig, 1, r#"{"status":503,"failing":["disk_space"]}"#).await;
    wait_states(admin, &nodes, &["down", "up"], "node 1 ejected").await;

    let p = pool_status(admin).await;
    let sick = &backend(&p, nodes[0])["last_check"]["services"];
    assert_eq!(sick["disk_space"], json!(false), "{p}");
    assert_eq!(sick["database"], json!(true), "{p}");
    let fine = &backend(&p, nodes[1])["last_check"]["services"];
    assert_eq!(fine["disk_space"], json!(true), "{p}");

    let m = metrics_text(admin).await;
    let service_up = |node: SocketAddr, service: &str| {
        metric_value(
            &m,
            &format!(
                r#"splicer_backend_service_up{{pool="quay",backend="{node}",service="{service}"}}"#
            ),
        )
    };
    assert_eq!(service_up(nodes[0], "disk_space"), Some(0.0), "{m}");
    assert_eq!(service_up(nodes[0], "database"), Some(1.0), "{m}");
    assert_eq!(service_up(nodes[1], "disk_space"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_dependencies_an_all_503_cluster_is_ejected() {
    let (rig, splicer, nodes) = start(3, "").await;
    let admin = splicer.admin;
    assert_eq!(http(admin, "GET", "/ready", "").await.0, 200);
    set_shared(&rig, "database", "down").await;
    wait_states(
        admin,
        &nodes,
        &["down", "down", "down"],
        "every node ejected",
    )
    .await;
    let p = pool_status(admin).await;
    assert_eq!(p["shared_outage"], json!([]), "{p}");
    assert_eq!(p["fail_open"], json!(false), "{p}");
    assert_eq!(
        http(admin, "GET", "/ready", "").await.0,
        503,
        "no backend up and fail_open = false: not ready"
    );
    assert!(
        which_node(splicer.addr).await.is_err(),
        "a client got through with every backend down and fail_open = false"
    );
    let m = metrics_text(admin).await;
    assert_eq!(
        metric_value(
            &m,
            r#"splicer_pool_shared_outage{pool="quay",service="database"}"#
        ),
        None,
        "no shared_dependencies, no shared-outage series: {m}"
    );

    set_shared(&rig, "database", "up").await;
    wait_states(admin, &nodes, &["up", "up", "up"], "everyone back").await;
    assert_eq!(
        try_http(admin, "GET", "/ready").await.map(|r| r.0),
        Some(200)
    );
    which_node(splicer.addr).await.expect("served again");
}
