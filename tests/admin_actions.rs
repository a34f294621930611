//! The admin API's actions and errors (docs/admin-api.md, docs/architecture.md §5): the 200 bodies of
//! `drain`/`disable`/`enable`, 404 for unknown pools, backends, addresses, actions and paths,
//! 405 with `Allow` for wrong methods, 409 for a backend a reload removed while it drains, IPv6
//! backends named percent-encoded, and bearer-token authentication of every POST (GETs stay
//! open), including a token changed by reload.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use common::admin::Answer;
use common::{start_splicer_file, status, wait_until, Splicer, WAIT};

// ---------------------------------------------------------------------------------------------
// Backends, config, requests.

/// A TCP backend that writes `<its address>\n` on every connection, then echoes until EOF.
struct Backend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start_on(bind: &str) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    if w.write_all(format!("{addr}\n").as_bytes()).await.is_ok()
                        && tokio::io::copy(&mut r, &mut w).await.is_ok()
                    {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
        Ok(Backend { addr, task })
    }

    async fn start() -> Backend {
        Backend::start_on("127.0.0.1:0")
            .await
            .expect("bind backend")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(admin_extra: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{admin_extra}\n\
         [runtime]\naccess_log = false\n\n\
         [[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbalance = \"round_robin\"\nbackends = [{}]\n\n\
         [pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\n\
         rise = 2\nfall = 1\n",
        list.join(", ")
    )
}

/// A config file in its own temp dir (with room for a token file next to it).
struct Files {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("splicer.toml");
        Files { dir, config }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

async fn start(files: &Files, text: &str) -> Splicer {
    std::fs::write(&files.config, text).expect("write config");
    start_splicer_file(&files.config).await
}

/// One HTTP/1.1 request with extra header lines.
async fn request(admin: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Answer {
    common::admin::request(admin, method, path, headers, "").await
}

async fn post(admin: SocketAddr, path: &str) -> Answer {
    request(admin, "POST", path, &[]).await
}

fn action_path(pool: &str, addr: &str, action: &str) -> String {
    format!("/pools/{pool}/backends/{addr}/{action}")
}

async fn state_of(admin: SocketAddr, addr: SocketAddr) -> Option<String> {
    let s = status(admin).await;
    s["pools"][0]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .map(|b| b["state"].as_str().unwrap_or("").to_string())
}

async fn wait_state(admin: SocketAddr, addr: SocketAddr, want: &str) {
    wait_until(WAIT, &format!("{addr} {want}"), || async {
        state_of(admin, addr).await.as_deref() == Some(want)
    })
    .await;
}

/// `POST` an action expecting 200 and exactly `{"pool","address","state"}`.
async fn act(admin: SocketAddr, path_addr: &str, addr: &str, action: &str, state: &str) {
    let a = post(admin, &action_path("p", path_addr, action)).await;
    assert_eq!(a.code, 200, "{action} {path_addr}: {a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"), "{a:?}");
    assert_eq!(
        a.json(),
        json!({"pool": "p", "address": addr, "state": state}),
        "{action} {path_addr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_answer_the_new_state() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let files = Files::new();
    let mut splicer = start(&files, &config("", &[a.addr, b.addr])).await;
    wait_state(splicer.admin, a.addr, "up").await;
    let name = a.addr.to_string();

    act(splicer.admin, &name, &name, "drain", "draining").await;
    assert_eq!(
        state_of(splicer.admin, a.addr).await.as_deref(),
        Some("draining")
    );
    act(splicer.admin, &name, &name, "enable", "up").await;
    act(splicer.admin, &name, &name, "disable", "disabled").await;
    assert_eq!(
        state_of(splicer.admin, a.addr).await.as_deref(),
        Some("disabled")
    );
    // From disabled, both enable and drain start from fresh checks (rise = 2).
    act(splicer.admin, &name, &name, "drain", "draining").await;
    act(splicer.admin, &name, &name, "disable", "disabled").await;
    act(splicer.admin, &name, &name, "enable", "down").await;
    wait_state(splicer.admin, a.addr, "up").await;
    // The other backend never moved.
    assert_eq!(state_of(splicer.admin, b.addr).await.as_deref(), Some("up"));
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pools_backends_addresses_actions_and_paths_are_404() {
    let a = Backend::start().await;
    let files = Files::new();
    let mut splicer = start(&files, &config("", &[a.addr])).await;
    wait_state(splicer.admin, a.addr, "up").await;
    let name = a.addr.to_string();
    let cases = [
        ("POST", action_path("nope", &name, "drain"), "unknown pool"),
        (
            "POST",
            action_path("p", "127.0.0.1:1", "drain"),
            "unknown backend",
        ),
        (
            "POST",
            action_path("p", "10.9.8.7:443", "disable"),
            "unknown backend",
        ),
        (
            "POST",
            action_path("p", "not-an-address", "drain"),
            "bad address",
        ),
        (
            "POST",
            action_path("p", "127.0.0.1", "drain"),
            "address without port",
        ),
        ("POST", action_path("p", &name, "reboot"), "unknown action"),
        ("GET", action_path("p", &name, "reboot"), "unknown action"),
        (
            "POST",
            format!("{}/now", action_path("p", &name, "drain")),
            "too long",
        ),
        ("GET", "/pools/p".to_string(), "unknown path"),
        ("GET", "/pools".to_string(), "unknown path"),
        ("GET", "/nope".to_string(), "unknown path"),
        ("POST", "/nope".to_string(), "unknown path"),
        ("GET", "/index.html".to_string(), "unknown path"),
    ];
    for (method, path, what) in &cases {
        let answer = request(splicer.admin, method, path, &[]).await;
        answer.assert_error(404, "", &format!("{what}: {method} {path}"));
    }
    assert_eq!(
        state_of(splicer.admin, a.addr).await.as_deref(),
        Some("up"),
        "no failed request may change a backend"
    );
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_are_405_with_allow() {
    let a = Backend::start().await;
    let files = Files::new();
    let mut splicer = start(&files, &config("", &[a.addr])).await;
    wait_state(splicer.admin, a.addr, "up").await;
    let name = a.addr.to_string();
    let mut cases = Vec::new();
    for action in ["drain", "disable", "enable"] {
        for method in ["GET", "PUT", "DELETE"] {
            cases.push((method, action_path("p", &name, action), "POST"));
        }
    }
    for method in ["GET", "PUT", "DELETE"] {
        cases.push((method, "/reload".to_string(), "POST"));
    }
    // A backend itself is removed by DELETE (membership, tests/membership.rs); it has no POST.
    for method in ["GET", "POST", "PUT"] {
        cases.push((method, format!("/pools/p/backends/{name}"), "DELETE"));
    }
    for path in ["/health", "/ready", "/status", "/metrics"] {
        for method in ["POST", "PUT", "DELETE"] {
            cases.push((method, path.to_string(), "GET"));
        }
    }
    for (method, path, allow) in &cases {
        let answer = request(splicer.admin, method, path, &[]).await;
        answer.assert_error(405, "", &format!("{method} {path}"));
        let allowed = answer
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: a 405 needs an Allow header: {answer:?}"));
        assert!(
            allowed.split(',').any(|m| m.trim() == *allow),
            "{method} {path}: Allow: {allowed}, expected {allow}"
        );
    }
    assert_eq!(
        state_of(splicer.admin, a.addr).await.as_deref(),
        Some("up"),
        "GET .../disable must not disable"
    );
    let (ok, _) = reloads(splicer.admin).await;
    assert_eq!(ok, 0.0, "GET /reload must not reload");
    splicer.shutdown().await;
}

async fn reloads(admin: SocketAddr) -> (f64, f64) {
    let text = common::metrics_text(admin).await;
    let get = |r: &str| {
        common::metric_value(
            &text,
            &format!("splicer_config_reloads_total{{result=\"{r}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {r} reload counter:\n{text}"))
    };
    (get("ok"), get("error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_removed_by_reload_is_409_while_it_drains() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let files = Files::new();
    let mut splicer = start(&files, &config("", &[a.addr, b.addr])).await;
    wait_state(splicer.admin, a.addr, "up").await;
    wait_state(splicer.admin, b.addr, "up").await;
    // Hold a connection to b, so it drains (rather than disappears) when removed.
    let mut held = None;
    for _ in 0..10 {
        let mut s = TcpStream::connect(splicer.addr).await.expect("connect");
        let mut line = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut line))
            .await
            .expect("greeting in time")
            .expect("greeting");
        if String::from_utf8_lossy(&line[..n]).trim() == b.addr.to_string() {
            held = Some(s);
            break;
        }
    }
    let held = held.expect("a connection to b");

    std::fs::write(&files.config, config("", &[a.addr])).expect("rewrite config");
    let r = post(splicer.admin, "/reload").await;
    assert_eq!(r.code, 200, "{r:?}");
    assert_eq!(
        state_of(splicer.admin, b.addr).await.as_deref(),
        Some("draining")
    );
    let name = b.addr.to_string();
    for action in ["drain", "disable", "enable"] {
        post(splicer.admin, &action_path("p", &name, action))
            .await
            .assert_error(409, "", &format!("{action} on a removed backend"));
    }
    assert_eq!(
        state_of(splicer.admin, b.addr).await.as_deref(),
        Some("draining"),
        "`enable` must not bring a removed backend back"
    );
    drop(held);
    wait_until(WAIT, "the removed backend leaves /status", || async {
        state_of(splicer.admin, b.addr).await.is_none()
    })
    .await;
    post(splicer.admin, &action_path("p", &name, "drain"))
        .await
        .assert_error(404, "", "drain on a backend that is gone");
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_backend_is_named_percent_encoded() {
    let v6 = match Backend::start_on("[::1]:0").await {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: no IPv6 loopback on this machine ({e})");
            return;
        }
    };
    let files = Files::new();
    let mut splicer = start(&files, &config("", &[v6.addr])).await;
    let name = v6.addr.to_string();
    assert!(name.starts_with("[::1]:"), "{name}");
    wait_state(splicer.admin, v6.addr, "up").await;

    let encoded = name
        .replace('[', "%5B")
        .replace(']', "%5D")
        .replace(':', "%3A");
    act(splicer.admin, &encoded, &name, "drain", "draining").await;
    act(
        splicer.admin,
        &encoded.to_lowercase(),
        &name,
        "enable",
        "up",
    )
    .await;
    // Only the brackets encoded works too.
    let brackets = name.replace('[', "%5B").replace(']', "%5D");
    act(splicer.admin, &brackets, &name, "disable", "disabled").await;
    act(splicer.admin, &encoded, &name, "enable", "down").await;
    // An IPv6 address the pool does not have is a 404 like any other.
    post(
        splicer.admin,
        &action_path("p", "%5B%3A%3A1%5D%3A1", "drain"),
    )
    .await
    .assert_error(404, "", "unknown IPv6 backend");
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_post_and_no_get() {
    let a = Backend::start().await;
    let files = Files::new();
    files.write("admin.token", "s3cret-token\n");
    // A relative token_file is read next to the config.
    let text = config("token_file = \"admin.token\"\n", &[a.addr]);
    let mut splicer = start(&files, &text).await;
    let admin = splicer.admin;
    wait_state(admin, a.addr, "up").await;
    let drain = action_path("p", &a.addr.to_string(), "drain");

    let refused = [
        vec![],
        vec!["Authorization: Bearer wrong-token"],
        vec!["Authorization: Bearer s3cret-tokenX"],
        vec!["Authorization: Bearer s3cret-toke"],
        vec!["Authorization: Bearer "],
        vec!["Authorization: s3cret-token"],
        vec!["Authorization: Basic s3cret-token"],
    ];
    for headers in &refused {
        for path in [drain.as_str(), "/reload"] {
            let answer = request(admin, "POST", path, headers).await;
            answer.assert_error(401, "", &format!("POST {path} with {headers:?}"));
            assert_eq!(
                answer.header("www-authenticate"),
                Some("Bearer"),
                "{answer:?}"
            );
        }
    }
    assert_eq!(
        state_of(admin, a.addr).await.as_deref(),
        Some("up"),
        "no 401 acts"
    );
    assert_eq!(reloads(admin).await, (0.0, 0.0), "no 401 reloads");

    // GETs need no token.
    for path in ["/health", "/ready", "/status", "/metrics"] {
        let answer = request(admin, "GET", path, &[]).await;
        assert_eq!(answer.code, 200, "GET {path} without a token: {answer:?}");
    }

    let right = ["Authorization: Bearer s3cret-token"];
    let answer = request(admin, "POST", &drain, &right).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    assert_eq!(answer.json()["state"], "draining");
    let answer = request(admin, "POST", "/reload", &right).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let lower = ["Authorization: bearer s3cret-token"];
    let answer = request(admin, "POST", "/reload", &lower).await;
    assert_eq!(answer.code, 200, "{answer:?}");

    // A new token takes effect with the reload that reads it.
    files.write("admin.token", "n3w-token");
    let answer = request(admin, "POST", "/reload", &right).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    let enable = action_path("p", &a.addr.to_string(), "enable");
    request(admin, "POST", &enable, &right).await.assert_error(
        401,
        "",
        "the old token after the reload",
    );
    let answer = request(admin, "POST", &enable, &["Authorization: Bearer n3w-token"]).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    assert_eq!(answer.json()["state"], "up");
    splicer.shutdown().await;
}

fn parse(path: &Path, text: &str) -> Result<splicer::config::Config, String> {
    splicer::config::parse(path, text).map_err(|e| e.to_string())
}

#[test]
fn a_non_loopback_admin_bind_is_valid_only_with_a_token_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret-token\n").expect("write token");
    let path = dir.path().join("splicer.toml");
    let body = "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n\
                [[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:9\"]\n";
    for bind in ["0.0.0.0:0", "[::]:0", "192.0.2.10:9090"] {
        let with_token = format!(
            "[admin]\nbind = \"{bind}\"\ntoken_file = \"{}\"\n\n{body}",
            token.display()
        );
        let config =
            parse(&path, &with_token).unwrap_or_else(|e| panic!("{bind} with a token: {e}"));
        let admin = config.admin.expect("an admin section");
        assert_eq!(admin.bind, bind.parse::<SocketAddr>().expect("addr"));
        assert!(admin.token.is_some(), "the token was read");

        let without = format!("[admin]\nbind = \"{bind}\"\n\n{body}");
        let err = parse(&path, &without).expect_err("a non-loopback bind without a token");
        assert!(err.contains("token_file"), "{bind}: {err}");
    }
    // Loopback needs no token.
    parse(&path, &format!("[admin]\nbind = \"127.0.0.1:0\"\n\n{body}")).expect("loopback");
}
