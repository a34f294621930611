//! Membership at run time (docs/architecture.md §10, docs/admin-api.md "Membership"): `POST
//! /pools/{pool}/backends` and `DELETE /pools/{pool}/backends/{address}` with every status code;
//! an added node starts down and takes traffic once healthy; a removed node finishes its
//! in-flight downloads byte for byte, takes no new connection, then leaves `/status`, with no
//! failed client request meanwhile; runtime members in the state file across a reload and a
//! restart of the binary; `splicer backend ...` exit codes and `--wait`; and the shipped
//! autoscaling lifecycle hook driving all of it against the rig.
//!
//! splicer runs in-process (or as `splicer run` for restarts) in front of the rig's HTTPS
//! nodes on 127.0.0.2.., checked over real TLS. Loopback only; every wait bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::admin::Answer;
use common::load::{Load, Pace, Target};
use common::process::{Proc, Stdout};
use common::{
    backends_toml, metric_value, metrics_text, start_splicer_file, status, wait_until, which_node,
    ConfigFile, Splicer, WAIT,
};

/// The admin token of the tests that set one.
const TOKEN: &str = "membership-test-token";

// ---------------------------------------------------------------------------------------------
// Config and admin requests.

/// A config for pool `quay` over `backends`, checked over HTTPS quickly (`rise` 2 every
/// 200 ms), with `extra` appended to `[runtime]` and an `[admin]` token when `token` is given.
fn config_text(backends: &[SocketAddr], token: Option<&Path>, runtime: &str) -> String {
    let token = token
        .map(|p| format!("token_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"[admin]
bind = "127.0.0.1:0"
{token}
[runtime]
access_log = false
{runtime}

[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
backends = {}
connect_timeout = "1s"

[pool.health]
check = "https"
interval = "200ms"
timeout = "150ms"
rise = 2
fall = 2
"#,
        backends_toml(backends)
    )
}

/// One admin request with `body`, carrying the bearer token when `token` is set.
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Answer {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    common::admin::request(addr, method, path, &headers, body).await
}

async fn add(addr: SocketAddr, backend: SocketAddr, weight: u32, token: Option<&str>) -> Answer {
    let body = json!({"address": backend.to_string(), "weight": weight}).to_string();
    admin(addr, "POST", "/pools/quay/backends", &body, token).await
}

async fn delete(addr: SocketAddr, backend: SocketAddr, token: Option<&str>) -> Answer {
    let path = format!("/pools/quay/backends/{backend}");
    admin(addr, "DELETE", &path, "", token).await
}

/// Pool `quay`'s backends on `/status`: address → entry.
async fn members(admin: SocketAddr) -> Vec<Value> {
    let s = status(admin).await;
    s["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "quay"))
        .and_then(|p| p["backends"].as_array())
        .cloned()
        .unwrap_or_default()
}

async fn entry(admin: SocketAddr, backend: SocketAddr) -> Option<Value> {
    members(admin)
        .await
        .into_iter()
        .find(|b| b["address"] == backend.to_string())
}

async fn state_of(admin: SocketAddr, backend: SocketAddr) -> Option<String> {
    entry(admin, backend)
        .await
        .and_then(|b| b["state"].as_str().map(str::to_string))
}

async fn wait_state(admin: SocketAddr, backend: SocketAddr, want: &str) {
    wait_until(WAIT, &format!("{backend} {want}"), || async {
        state_of(admin, backend).await.as_deref() == Some(want)
    })
    .await;
}

async fn wait_gone(admin: SocketAddr, backend: SocketAddr) {
    wait_until(WAIT, &format!("{backend} gone from /status"), || async {
        entry(admin, backend).await.is_none()
    })
    .await;
}

/// A token file in `dir`.
fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
    path
}

/// splicer in-process from a config file (kept alive with it) over `backends`.
async fn start(backends: &[SocketAddr], token: bool, runtime: &str) -> (Splicer, ConfigFile) {
    let file = ConfigFile::new("");
    let dir = file.path.parent().expect("config dir").to_path_buf();
    let token = token.then(|| token_file(&dir));
    file.write(&config_text(backends, token.as_deref(), runtime));
    let splicer = start_splicer_file(&file.path).await;
    (splicer, file)
}

// ---------------------------------------------------------------------------------------------
// The API.

/// Every status code of the two endpoints, and that a refused request changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_and_refusals_change_nothing() {
    let rig = common::rig(3).await;
    let n = rig.node_addrs();
    let dns_server = common::dead_addr().await;
    let dns_pool = format!(
        "\n[[pool]]\nname = \"dns\"\ndiscover = {{ dns = \"quay-nodes.test\", port = 443, \
         every = \"1s\", server = \"{dns_server}\" }}\n[pool.health]\ncheck = \"tcp\"\n"
    );
    let file = ConfigFile::new("");
    let dir = file.path.parent().expect("dir").to_path_buf();
    let token = token_file(&dir);
    file.write(&format!(
        "{}{dns_pool}",
        config_text(&n[..2], Some(&token), "")
    ));
    let mut s = start_splicer_file(&file.path).await;
    let t = Some(TOKEN);
    wait_state(s.admin, n[0], "up").await;

    // 201: the backend as /status shows it, down until `rise` passes.
    let a = add(s.admin, n[2], 3, t).await;
    assert_eq!(a.code, 201, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.header("location"),
        Some(format!("/pools/quay/backends/{}", n[2]).as_str())
    );
    let v = a.json();
    assert_eq!(v["address"], n[2].to_string(), "{v}");
    assert_eq!(v["state"], "down", "{v}");
    assert_eq!(v["weight"], 3, "{v}");
    assert_eq!(v["active_connections"], 0, "{v}");
    let before = members(s.admin).await.len();
    assert_eq!(before, 3);

    // 409: an existing member (added or of the file), and a pool fed by DNS.
    add(s.admin, n[2], 1, t)
        .await
        .assert_error(409, "already has", "add twice");
    add(s.admin, n[0], 1, t)
        .await
        .assert_error(409, "already has", "add a file member");
    let body = json!({"address": "127.0.0.9:443"}).to_string();
    admin(s.admin, "POST", "/pools/dns/backends", &body, t)
        .await
        .assert_error(409, "DNS", "add to a discover pool");
    admin(
        s.admin,
        "DELETE",
        "/pools/dns/backends/127.0.0.9:443",
        "",
        t,
    )
    .await
    .assert_error(409, "DNS", "remove from a discover pool");

    // 404: unknown pool or backend.
    admin(s.admin, "POST", "/pools/nope/backends", &body, t)
        .await
        .assert_error(404, "no pool named nope", "add to an unknown pool");
    admin(
        s.admin,
        "DELETE",
        "/pools/nope/backends/127.0.0.9:443",
        "",
        t,
    )
    .await
    .assert_error(404, "no pool named nope", "remove from an unknown pool");
    for unknown in ["127.0.0.9:443", "not-an-address", "127.0.0.2:0443"] {
        let path = format!("/pools/quay/backends/{unknown}");
        admin(s.admin, "DELETE", &path, "", t).await.assert_error(
            404,
            "has no backend",
            &format!("DELETE {unknown}"),
        );
    }

    // 400: the body, the address, the weight.
    let bad = [
        ("", "not JSON"),
        ("{", "not JSON"),
        ("[]", "JSON object"),
        ("{}", "no address"),
        (r#"{"address":"127.0.0.9"}"#, "no port"),
        (r#"{"address":"127.0.0.9:0"}"#, "port 0"),
        (r#"{"address":"127.0.0.9:0443"}"#, "leading zero"),
        (r#"{"address":"quay-4.internal:443"}"#, "hostname"),
        (r#"{"address":"127.0.0.9:443","weight":0}"#, "at least 1"),
        (r#"{"address":"127.0.0.9:443","weight":257}"#, "at most 256"),
        (
            r#"{"address":"127.0.0.9:443","weight":"2"}"#,
            "whole number",
        ),
        (r#"{"address":"127.0.0.9:443","port":443}"#, "unknown field"),
    ];
    for (body, phrase) in bad {
        admin(s.admin, "POST", "/pools/quay/backends", body, t)
            .await
            .assert_error(400, phrase, &format!("body {body:?}"));
    }
    // (A body over 64 KiB is 413 before it is read, as for every endpoint: tests/hardening.rs.)

    // 401 without the token, for both.
    add(s.admin, "127.0.0.9:443".parse().unwrap(), 1, None)
        .await
        .assert_error(401, "Bearer", "add without token");
    let a = admin(
        s.admin,
        "POST",
        "/pools/quay/backends",
        &body,
        Some("wrong-token"),
    )
    .await;
    assert_eq!(a.code, 401, "{a:?}");
    delete(s.admin, n[2], None)
        .await
        .assert_error(401, "Bearer", "remove without token");

    // 405 with Allow.
    let member = format!("/pools/quay/backends/{}", n[2]);
    for (method, path, allow) in [
        ("GET", "/pools/quay/backends", "POST"),
        ("PUT", "/pools/quay/backends", "POST"),
        ("DELETE", "/pools/quay/backends", "POST"),
        ("GET", member.as_str(), "DELETE"),
        ("POST", member.as_str(), "DELETE"),
        ("PUT", member.as_str(), "DELETE"),
    ] {
        let a = admin(s.admin, method, path, "", t).await;
        a.assert_error(405, "not allowed", &format!("{method} {path}"));
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
    }

    // Nothing refused changed anything.
    let now = members(s.admin).await;
    assert_eq!(now.len(), before, "{now:?}");
    assert!(entry(s.admin, "127.0.0.9:443".parse().unwrap())
        .await
        .is_none());
    assert_eq!(state_of(s.admin, n[0]).await.as_deref(), Some("up"));

    // 202, then gone; a second DELETE while it is already leaving is 202 again, then 404.
    let a = delete(s.admin, n[2], t).await;
    assert_eq!(a.code, 202, "{a:?}");
    assert_eq!(
        a.json(),
        json!({"pool": "quay", "address": n[2].to_string(), "state": "draining"})
    );
    wait_gone(s.admin, n[2]).await;
    delete(s.admin, n[2], t)
        .await
        .assert_error(404, "has no backend", "remove a removed backend");
    // A file member removed and added back; IPv6-style percent-encoding of the path works too.
    let encoded = n[1].to_string().replace(':', "%3A");
    let a = admin(
        s.admin,
        "DELETE",
        &format!("/pools/quay/backends/{encoded}"),
        "",
        t,
    )
    .await;
    assert_eq!(a.code, 202, "{a:?}");
    wait_gone(s.admin, n[1]).await;
    let a = add(s.admin, n[1], 7, t).await;
    assert_eq!(a.code, 201, "{a:?}");
    assert_eq!(
        a.json()["weight"],
        1,
        "a backend of the file comes back with the file's weight"
    );
    wait_state(s.admin, n[1], "up").await;
    assert!(s.shutdown().await);
}

/// A download of `size` bytes of `/bytes/{size}` through `addr`, read slowly (`pace` per
/// read); `placed` fires once its first bytes arrived. `Ok` only when the body is whole and in
/// the rig's pattern.
async fn slow_download(
    addr: SocketAddr,
    size: usize,
    pace: Pace,
    placed: tokio::sync::oneshot::Sender<()>,
) -> Result<(), String> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(common::tls_client(&[b"http/1.1"]));
        let name = rustls::pki_types::ServerName::try_from("node").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET /bytes/{size} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut placed = Some(placed);
        let mut buf = Vec::with_capacity(size + 512);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
                Err(e) => return Err(format!("after {} bytes: {e}", buf.len())),
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(tx) = placed.take() {
                let _ = tx.send(());
            }
            let pause = pace.get();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let head_end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP header")?;
        let body = &buf[head_end + 4..];
        if body.len() != size {
            return Err(format!("{} of {size} bytes", body.len()));
        }
        let period = splicer::rig::BYTE_PATTERN_PERIOD;
        match body
            .iter()
            .enumerate()
            .position(|(k, b)| u64::from(*b) != k as u64 % period)
        {
            Some(k) => Err(format!("corrupt at byte {k}")),
            None => Ok(()),
        }
    };
    tokio::time::timeout(common::load::DOWNLOAD_LIMIT, fut)
        .await
        .unwrap_or_else(|_| Err("download timed out".to_string()))
}

async fn action(addr: SocketAddr, backend: SocketAddr, what: &str) {
    let path = format!("/pools/quay/backends/{backend}/{what}");
    let a = admin(addr, "POST", &path, "", None).await;
    assert_eq!(a.code, 200, "{what} {backend}: {a:?}");
}

/// An added node starts down, takes traffic once healthy; a removed one finishes its slow
/// downloads byte for byte, takes no new connection meanwhile, then leaves `/status`; a client
/// loop over the whole test sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_node_takes_traffic_and_removed_node_drains_without_a_failed_request() {
    let rig = common::rig(3).await;
    let n = rig.node_addrs();
    let (mut s, _file) = start(&n[..2], false, "drain_timeout = \"60s\"").await;
    wait_state(s.admin, n[0], "up").await;
    wait_state(s.admin, n[1], "up").await;
    let load = Load::start(
        Target::new(s.addr),
        2,
        Duration::from_millis(20),
        Duration::from_secs(120),
    );

    let a = add(s.admin, n[2], 1, None).await;
    assert_eq!(a.code, 201, "{a:?}");
    assert_eq!(a.json()["state"], "down");
    wait_state(s.admin, n[2], "up").await;
    wait_until(WAIT, "a client reaches node-3", || async {
        which_node(s.addr).await.ok().as_deref() == Some("node-3")
    })
    .await;

    // Two slow downloads placed on node 3 for sure: the others drain meanwhile.
    action(s.admin, n[0], "drain").await;
    action(s.admin, n[1], "drain").await;
    const SIZE: usize = 8 * 1024 * 1024;
    let pace = Pace::new(Duration::from_millis(50));
    let mut running = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        running.push(tokio::spawn(slow_download(s.addr, SIZE, pace.clone(), tx)));
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("the download starts in time")
            .expect("the download starts");
    }
    action(s.admin, n[0], "enable").await;
    action(s.admin, n[1], "enable").await;
    wait_state(s.admin, n[0], "up").await;
    wait_state(s.admin, n[1], "up").await;
    let open = entry(s.admin, n[2]).await.expect("node 3 listed")["active_connections"]
        .as_u64()
        .unwrap_or(0);
    assert!(open >= 2, "the downloads run through node 3: {open}");

    let a = delete(s.admin, n[2], None).await;
    assert_eq!(a.code, 202, "{a:?}");
    let total_before = entry(s.admin, n[2]).await.expect("still listed")["total_connections"]
        .as_u64()
        .unwrap_or(0);
    for _ in 0..20 {
        let node = which_node(s.addr).await.expect("a request through splicer");
        assert_ne!(node, "node-3", "a new connection went to the removed node");
    }
    let draining = entry(s.admin, n[2])
        .await
        .expect("listed while its downloads run");
    assert_eq!(draining["state"], "draining", "{draining}");
    assert_eq!(
        draining["total_connections"].as_u64(),
        Some(total_before),
        "{draining}"
    );
    assert!(
        draining["active_connections"].as_u64().unwrap_or(0) >= 2,
        "{draining}"
    );

    // Let the downloads finish: each whole and in pattern; then node 3 leaves.
    pace.set(Duration::ZERO);
    for task in running {
        let outcome = tokio::time::timeout(common::load::DOWNLOAD_LIMIT, task)
            .await
            .expect("download ends")
            .expect("download task");
        assert_eq!(outcome, Ok(()));
    }
    wait_gone(s.admin, n[2]).await;
    let tally = load.stop().await;
    assert!(tally.is_clean(), "{}", tally.summary());
    assert!(tally.ok() > 20, "{}", tally.summary());
    assert!(s.shutdown().await);
}

// ---------------------------------------------------------------------------------------------
// Persistence.

/// The state file's contents.
fn read_state(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("state file written");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("state file not JSON ({e}): {text}"))
}

/// `splicer run` over `backends` with `state_file`, `connect_timeout` as given.
async fn process(backends: Vec<SocketAddr>, state: PathBuf, connect: &'static str) -> Proc {
    Proc::start(Stdout::Log, 1, move |admin, listeners| {
        process_config(admin, listeners[0], &backends, &state, connect)
    })
    .await
}

fn process_config(
    admin: SocketAddr,
    listen: SocketAddr,
    backends: &[SocketAddr],
    state: &Path,
    connect: &str,
) -> String {
    format!(
        r#"[admin]
bind = "{admin}"
[runtime]
access_log = false
drain_timeout = "5s"
state_file = "{}"
[[listener]]
name = "https"
bind = "{listen}"
pool = "quay"
[[pool]]
name = "quay"
backends = {}
connect_timeout = "{connect}"
[pool.health]
check = "https"
interval = "200ms"
timeout = "150ms"
rise = 2
fall = 2
"#,
        state.display(),
        backends_toml(backends)
    )
}

/// Reloads `p` by SIGHUP with `text` and waits for the reload to be counted.
async fn sighup(p: &Proc, text: &str, reloads_before: f64) {
    std::fs::write(p.config(), text).expect("rewrite config");
    p.signal(libc::SIGHUP);
    let series = r#"splicer_config_reloads_total{result="ok"}"#;
    wait_until(WAIT, "the reload is counted", || async {
        metric_value(&metrics_text(p.admin()).await, series).unwrap_or(0.0) > reloads_before
    })
    .await;
}

/// API-added and API-removed members, and a drain of an added one, are in the state file and
/// survive a reload that changes another setting of the same pool, then a restart of the
/// binary; a file that starts listing an added member takes it over (its weight), and a
/// removed file member stays out until added back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_members_survive_reloads_and_restarts() {
    let rig = common::rig(4).await;
    let n = rig.node_addrs();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let file_members = n[..3].to_vec();
    let mut p = process(file_members.clone(), state.clone(), "1s").await;
    for b in &n[..3] {
        wait_state(p.admin(), *b, "up").await;
    }

    assert_eq!(add(p.admin(), n[3], 2, None).await.code, 201);
    assert_eq!(delete(p.admin(), n[0], None).await.code, 202);
    let path = format!("/pools/quay/backends/{}/drain", n[3]);
    assert_eq!(admin(p.admin(), "POST", &path, "", None).await.code, 200);
    let expected = json!({
        "version": 1,
        "backends": [{"pool": "quay", "address": n[3].to_string(), "state": "draining"}],
        "added": [{"pool": "quay", "address": n[3].to_string(), "weight": 2}],
        "removed": [{"pool": "quay", "address": n[0].to_string()}],
    });
    assert_eq!(read_state(&state), expected);
    wait_gone(p.admin(), n[0]).await;

    // A reload that changes another setting of the pool (so the pool is reconfigured).
    let listen = p.listeners()[0];
    let text = process_config(p.admin(), listen, &file_members, &state, "2s");
    sighup(&p, &text, 0.0).await;
    let after: Vec<String> = members(p.admin())
        .await
        .iter()
        .map(|b| format!("{} {} {}", b["address"], b["state"], b["weight"]))
        .collect();
    assert_eq!(
        after,
        [
            format!("\"{}\" \"up\" 1", n[1]),
            format!("\"{}\" \"up\" 1", n[2]),
            format!("\"{}\" \"draining\" 2", n[3]),
        ],
        "{}",
        p.log()
    );
    assert_eq!(read_state(&state), expected);
    assert_eq!(p.stop().await.code(), Some(0), "{}", p.log());

    // A restart with the same state file: the same members, the drain restored.
    let mut p = process(file_members.clone(), state.clone(), "2s").await;
    let restored: Vec<(String, String)> = members(p.admin())
        .await
        .iter()
        .map(|b| (b["address"].to_string(), b["state"].to_string()))
        .collect();
    assert_eq!(restored.len(), 3, "{restored:?}\n{}", p.log());
    assert!(entry(p.admin(), n[0]).await.is_none(), "{restored:?}");
    assert_eq!(state_of(p.admin(), n[3]).await.as_deref(), Some("draining"));
    let log = p.log();
    assert!(
        log.contains("restored a backend added through the admin API"),
        "{log}"
    );
    // No client reaches the drained or the removed node.
    for _ in 0..10 {
        let node = which_node(p.listeners()[0]).await.expect("a request");
        assert!(node == "node-2" || node == "node-3", "{node}");
    }

    // The file takes over the added member, with its own weight; the removed one stays out.
    let path = format!("/pools/quay/backends/{}/enable", n[3]);
    assert_eq!(admin(p.admin(), "POST", &path, "", None).await.code, 200);
    let text = process_config(p.admin(), p.listeners()[0], &n, &state, "2s");
    std::fs::write(p.config(), text).expect("rewrite config");
    let a = admin(p.admin(), "POST", "/reload", "", None).await;
    assert_eq!(a.code, 200, "{a:?}");
    let report = a.json();
    assert_eq!(
        report["backends"],
        json!({"added": [], "removed": []}),
        "neither the member the API added nor the one it removed joined: {report}"
    );
    wait_state(p.admin(), n[3], "up").await;
    assert_eq!(entry(p.admin(), n[3]).await.expect("listed")["weight"], 1);
    assert!(entry(p.admin(), n[0]).await.is_none(), "{}", p.log());
    assert_eq!(
        read_state(&state),
        json!({"version": 1, "backends": [],
               "removed": [{"pool": "quay", "address": n[0].to_string()}]})
    );
    // Added back through the API: in again, and the file holds nothing more.
    let a = add(p.admin(), n[0], 1, None).await;
    assert_eq!(a.code, 201, "{a:?}");
    wait_state(p.admin(), n[0], "up").await;
    assert_eq!(read_state(&state), json!({"version": 1, "backends": []}));
    assert_eq!(p.stop().await.code(), Some(0), "{}", p.log());
}

// ---------------------------------------------------------------------------------------------
// The CLI.

/// `splicer backend ARGS...` with the admin API and the token file; its output.
async fn cli(args: &[&str], admin: SocketAddr, token: Option<&Path>) -> Output {
    let mut cmd = common::process::splicer_cli(&[&["backend"], args].concat());
    cmd.arg("--admin").arg(admin.to_string());
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    common::process::output_within(cmd, Duration::from_secs(60)).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the exit code, and that stdout is `want_stdout` when given; returns stderr.
fn expect(out: &Output, code: i32, want_stdout: Option<&str>, what: &str) -> String {
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {o:?} stderr {e:?}"
    );
    if let Some(want) = want_stdout {
        assert_eq!(o, want, "{what}: stderr {e:?}");
    }
    e
}

/// Exit codes 0/1/2 of every action, and `--wait` until up, until drained, until gone, and
/// until the `--timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_and_wait() {
    let rig = common::rig(3).await;
    let n = rig.node_addrs();
    let (mut s, file) = start(&n[..2], true, "drain_timeout = \"10s\"").await;
    let token = file.path.parent().expect("dir").join("admin.token");
    let tk = Some(token.as_path());
    let a = s.admin;
    let n3 = n[2].to_string();
    wait_state(a, n[0], "up").await;

    // Add, waiting until up: progress on stderr, the final state on stdout.
    let out = cli(&["add", "quay", &n3, "--wait", "--weight", "2"], a, tk).await;
    let err = expect(&out, 0, Some(&format!("quay {n3} up\n")), "add --wait");
    assert!(err.contains("waiting until it is up"), "{err}");
    assert_eq!(entry(a, n[2]).await.expect("added")["weight"], 2);
    // Refused: an existing member, an unknown pool or backend.
    let err = expect(
        &cli(&["add", "quay", &n3], a, tk).await,
        1,
        None,
        "add twice",
    );
    assert!(err.contains("409") && err.contains("already has"), "{err}");
    expect(
        &cli(&["drain", "nope", &n3], a, tk).await,
        1,
        None,
        "unknown pool",
    );
    expect(
        &cli(&["remove", "quay", "127.0.0.9:443"], a, tk).await,
        1,
        None,
        "unknown backend",
    );
    // Usage: bad address, weight, action, a weight on another action, no token, bad URL.
    for (args, what) in [
        (vec!["add", "quay", "127.0.0.9"], "no port"),
        (vec!["add", "quay", "127.0.0.9:0"], "port 0"),
        (
            vec!["add", "quay", "127.0.0.9:443", "--weight", "0"],
            "weight 0",
        ),
        (
            vec!["add", "quay", "127.0.0.9:443", "--weight", "300"],
            "weight 300",
        ),
        (
            vec!["frobnicate", "quay", "127.0.0.9:443"],
            "unknown action",
        ),
        (
            vec!["drain", "quay", &n3, "--weight", "2"],
            "weight on drain",
        ),
        (vec!["add", "quay"], "no address"),
    ] {
        expect(&cli(&args, a, tk).await, 2, None, what);
    }
    let err = expect(
        &cli(&["drain", "quay", &n3], a, None).await,
        2,
        None,
        "no token",
    );
    assert!(err.contains("--token-file"), "{err}");
    let missing = file.path.with_file_name("no-such-token");
    expect(
        &cli(&["drain", "quay", &n3], a, Some(&missing)).await,
        2,
        None,
        "unreadable token file",
    );
    assert_eq!(
        state_of(a, n[2]).await.as_deref(),
        Some("up"),
        "refusals changed nothing"
    );

    // Drain waits until no connection is open; disable; enable waits until up again.
    let out = cli(&["drain", "quay", &n3, "--wait"], a, tk).await;
    expect(
        &out,
        0,
        Some(&format!("quay {n3} draining\n")),
        "drain --wait",
    );
    let out = cli(&["disable", "quay", &n3], a, tk).await;
    expect(&out, 0, Some(&format!("quay {n3} disabled\n")), "disable");
    let out = cli(&["enable", "quay", &n3, "--wait"], a, tk).await;
    expect(&out, 0, Some(&format!("quay {n3} up\n")), "enable --wait");
    // Remove waits until drained and gone.
    let out = cli(&["remove", "quay", &n3, "--wait"], a, tk).await;
    expect(&out, 0, Some(&format!("quay {n3} gone\n")), "remove --wait");
    assert!(entry(a, n[2]).await.is_none());
    expect(
        &cli(&["remove", "quay", &n3], a, tk).await,
        1,
        None,
        "remove again",
    );

    // --wait bounded by --timeout: a machine that never comes up.
    let dead = common::dead_addr().await.to_string();
    let out = cli(
        &["add", "quay", &dead, "--wait", "--timeout", "1500ms"],
        a,
        tk,
    )
    .await;
    let err = expect(&out, 1, None, "add --wait of a dead machine");
    assert!(err.contains("gave up after 1s 500ms"), "{err}");
    assert!(err.contains("down"), "{err}");
    // An unreachable admin API is a runtime failure.
    let nobody = common::dead_addr().await;
    let err = expect(
        &cli(&["drain", "quay", &n3], nobody, tk).await,
        1,
        None,
        "no admin API",
    );
    assert!(err.contains("cannot reach"), "{err}");
    assert!(s.shutdown().await);
}

// ---------------------------------------------------------------------------------------------
// The shipped lifecycle hook.

fn hook_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/autoscaling/lifecycle-hook.sh")
}

/// A stub `aws` that answers `ec2 describe-instances` from `ips/<instance-id>` files and
/// records every `autoscaling` call in `calls.log`, both in `dir`.
fn stub_aws(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(dir.join("ips")).expect("ips dir");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let script = format!(
        r#"#!/bin/sh
# Stub of the AWS CLI for tests/membership.rs.
dir='{}'
case "$1 $2" in
  "ec2 describe-instances")
    shift 2
    while [ $# -gt 0 ]; do
      if [ "$1" = "--instance-ids" ]; then cat "$dir/ips/$2"; exit $?; fi
      shift
    done
    echo "no --instance-ids" >&2; exit 255 ;;
  "autoscaling complete-lifecycle-action")
    echo "$*" >> "$dir/calls.log"; exit 0 ;;
  *) echo "unexpected aws call: $*" >&2; exit 255 ;;
esac
"#,
        dir.display()
    );
    let path = bin.join("aws");
    common::installed::write_executable(&path, &script);
    bin
}

/// Runs the hook with `args`, the environment of a splicer machine, and `extra` variables.
async fn run_hook(
    args: &[&str],
    admin: SocketAddr,
    token: &Path,
    port: u16,
    path_dir: &Path,
    extra: &[(&str, &str)],
) -> Output {
    let path = format!(
        "{}:{}",
        path_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(hook_script())
        .args(args)
        .env("PATH", path)
        .env("SPLICER", env!("CARGO_BIN_EXE_splicer"))
        .env("SPLICER_ADMIN", format!("http://{admin}"))
        .env("SPLICER_TOKEN_FILE", token)
        .env("SPLICER_POOL", "quay")
        .env("BACKEND_PORT", port.to_string())
        .env("WAIT_TIMEOUT", "30s")
        .env("ASG_NAME", "quay-asg")
        .env("HOOK_NAME", "splicer-hook")
        .env_remove("SKIP_AWS")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the hook ends")
        .expect("bash runs")
}

/// The hook adds a launched machine (found through a stub `aws`) and completes the lifecycle
/// action once it takes traffic; it drains and removes a terminating one (with `SKIP_AWS=1`:
/// the splicer part alone); clients see no failure throughout. The script is shellcheck-clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hook_adds_and_drains_machines_without_a_failed_request() {
    if let Ok(out) = std::process::Command::new("shellcheck")
        .arg(hook_script())
        .output()
    {
        assert!(
            out.status.success(),
            "shellcheck lifecycle-hook.sh:\n{}",
            text(&out.stdout)
        );
    }
    let rig = common::rig(3).await;
    let n = rig.node_addrs();
    let (mut s, file) = start(&n[..2], true, "drain_timeout = \"10s\"").await;
    let dir = file.path.parent().expect("dir").to_path_buf();
    let token = dir.join("admin.token");
    let bin = stub_aws(&dir);
    std::fs::write(dir.join("ips/i-0node3"), format!("{}\n", n[2].ip())).expect("ip");
    wait_state(s.admin, n[0], "up").await;
    wait_state(s.admin, n[1], "up").await;
    let load = Load::start(
        Target::new(s.addr),
        2,
        Duration::from_millis(20),
        Duration::from_secs(120),
    );

    let out = run_hook(
        &["launch", "i-0node3"],
        s.admin,
        &token,
        n[2].port(),
        &bin,
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "launch: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(state_of(s.admin, n[2]).await.as_deref(), Some("up"));
    let calls = std::fs::read_to_string(dir.join("calls.log")).expect("the action completed");
    for part in [
        "--auto-scaling-group-name quay-asg",
        "--lifecycle-hook-name splicer-hook",
        "--instance-id i-0node3",
        "--lifecycle-action-result CONTINUE",
    ] {
        assert!(calls.contains(part), "{part} missing: {calls}");
    }
    wait_until(WAIT, "a client reaches node-3", || async {
        which_node(s.addr).await.ok().as_deref() == Some("node-3")
    })
    .await;

    let ip = n[2].ip().to_string();
    let out = run_hook(
        &["terminate", &ip],
        s.admin,
        &token,
        n[2].port(),
        &bin,
        &[("SKIP_AWS", "1")],
    )
    .await;
    assert!(
        out.status.success(),
        "terminate: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(entry(s.admin, n[2]).await.is_none(), "drained and gone");
    let calls_after = std::fs::read_to_string(dir.join("calls.log")).expect("calls");
    assert_eq!(calls_after, calls, "SKIP_AWS=1 makes no AWS call");
    for _ in 0..10 {
        let node = which_node(s.addr).await.expect("a request");
        assert_ne!(node, "node-3");
    }
    let tally: Arc<_> = load.stop().await;
    assert!(tally.is_clean(), "{}", tally.summary());
    assert!(tally.ok() > 10, "{}", tally.summary());
    assert!(s.shutdown().await);
}
