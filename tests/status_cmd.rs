//! `splicer status` over real loopback sockets: splicer in-process in front of the rig (every
//! backend in the table, `up`), nothing listening (a `Connect` error an operator can act on), a
//! peer that accepts and never answers (a `Timeout` within the bound), and peers that answer
//! wrongly (an error status, not JSON, not HTTP, too much). Then the command itself, as a
//! child process: its exit codes (docs/architecture.md §10) and `--json`, and `--watch` both into a pipe
//! and under a real pseudo-terminal (tmux), where it must redraw in place and give the
//! terminal back.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use common::process::{output_within, printed, signal, splicer_cli};
use common::{backend_state, backends_toml, control, http, rig, start_splicer, wait_until, WAIT};
use splicer::status_cmd::{fetch, render, StatusCmdError, MAX_BODY};
use splicer::status_doc::Status;

/// A pool checked over HTTPS often enough that the rig's nodes are up within about a second.
fn config(backends: &[SocketAddr]) -> String {
    format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
backends = {}

[pool.health]
check = "https"
path = "/health/instance"
interval = "200ms"
timeout = "100ms"
"#,
        backends_toml(backends)
    )
}

/// A one-shot server: reads one request head, sends `response` verbatim, closes; the request
/// head arrives on the returned channel.
async fn answer_once(response: Vec<u8>) -> (SocketAddr, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    });
    (addr, rx)
}

fn http_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn shows_every_backend_of_a_running_instance_up() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&config(&nodes)).await;
    let admin = splicer.admin;
    for &node in &nodes {
        wait_until(WAIT, &format!("{node} up"), || async move {
            backend_state(admin, "quay", node).await == "up"
        })
        .await;
    }

    // Every accepted spelling of the same admin API.
    for url in [
        admin.to_string(),
        format!("http://{admin}"),
        format!("http://{admin}/status"),
    ] {
        let status = fetch(&url, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("fetch {url}: {e}"));
        let table = render(&status);
        println!("{table}");
        assert!(table.starts_with("splicer 0.1.0, up "), "{table}");
        assert!(table.contains("\npool quay (round_robin)\n"), "{table}");

        let listener = table
            .lines()
            .find(|l| l.starts_with("front "))
            .unwrap_or_else(|| panic!("no listener row in\n{table}"));
        let cells: Vec<&str> = listener.split_whitespace().collect();
        assert_eq!(cells[1], splicer.addr.to_string(), "{table}");

        for node in &nodes {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("  {node} ")))
                .unwrap_or_else(|| panic!("no row for {node} in\n{table}"));
            let cells: Vec<&str> = row.split_whitespace().collect();
            // BACKEND STATE WEIGHT ACTIVE TOTAL FAILS LAST CHECK (two words) LATENCY AGE (two)
            assert_eq!(cells.len(), 11, "{row}");
            assert_eq!(cells[1], "up", "{row}");
            assert_eq!(cells[5], "0", "{row}");
            assert_eq!(&cells[6..8], ["ok", "200"], "{row}");
            assert!(cells[8].ends_with("ms") || cells[8].ends_with('s'), "{row}");
            assert_eq!(cells[10], "ago", "{row}");
        }
    }

    assert!(splicer.shutdown().await);
    rig.shutdown().await;
}

#[tokio::test]
async fn nothing_listening_is_a_clear_connect_error() {
    let addr = common::dead_addr().await;
    let err = fetch(&addr.to_string(), Duration::from_secs(5))
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(err, StatusCmdError::Connect { .. }),
        "expected Connect, got {err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the admin API at http://{addr}: connection refused \
             (is splicer running, and is [admin] enabled?)"
        )
    );
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out_within_the_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    // Accepts and holds every connection, reading nothing and writing nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });

    let bound = Duration::from_millis(300);
    let start = Instant::now();
    let err = fetch(&format!("http://{addr}"), bound)
        .await
        .expect_err("the peer never answers");
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            StatusCmdError::Timeout {
                connected: true,
                ..
            }
        ),
        "expected Timeout after connecting, got {err:?}"
    );
    assert!(took >= bound, "gave up early, after {took:?}");
    assert!(took < bound + Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the admin API at http://{addr} accepted the connection but did not answer \
             GET /status within 300ms"
        )
    );
    holder.abort();
}

#[tokio::test]
async fn the_bound_covers_a_body_that_never_ends() {
    // The head arrives at once, the promised body never does.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let staller = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
                .await;
            tokio::time::sleep(WAIT).await;
        }
    });
    let bound = Duration::from_millis(300);
    let start = Instant::now();
    let err = fetch(&addr.to_string(), bound)
        .await
        .expect_err("the body stalls");
    assert!(
        matches!(
            err,
            StatusCmdError::Timeout {
                connected: true,
                ..
            }
        ),
        "expected Timeout, got {err:?}"
    );
    assert!(start.elapsed() < bound + Duration::from_secs(2));
    staller.abort();
}

#[tokio::test]
async fn an_error_status_shows_the_admin_api_error() {
    let (addr, request) = answer_once(http_response(
        "401 Unauthorized",
        r#"{"error":"missing bearer token"}"#,
    ))
    .await;
    let err = fetch(&format!("http://{addr}/"), Duration::from_secs(5))
        .await
        .expect_err("401");
    assert!(
        matches!(err, StatusCmdError::Http { status: 401, .. }),
        "expected Http 401, got {err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the admin API at http://{addr} answered GET /status with 401 Unauthorized: \
             missing bearer token"
        )
    );
    let head = request.await.expect("request head").to_ascii_lowercase();
    assert!(head.starts_with("get /status http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_json_error() {
    let (addr, _request) = answer_once(http_response("200 OK", "<html>hello</html>")).await;
    let err = fetch(&addr.to_string(), Duration::from_secs(5))
        .await
        .expect_err("not JSON");
    assert!(
        matches!(err, StatusCmdError::Json { .. }),
        "expected Json, got {err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the admin API at http://{addr} answered /status with invalid JSON (line 1, column 1)"
        )
    );
}

#[tokio::test]
async fn a_peer_that_is_not_http_is_a_protocol_error() {
    // A TLS alert, as a TLS listener might send on seeing plain text.
    let (addr, _request) = answer_once(vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]).await;
    let err = fetch(&addr.to_string(), Duration::from_secs(5))
        .await
        .expect_err("not HTTP");
    assert!(
        matches!(err, StatusCmdError::Protocol { .. }),
        "expected Protocol, got {err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("(is that the admin port, not a listener?)"),
        "{err}"
    );

    // A body cut short by the peer closing.
    let (addr, _request) =
        answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"version\":".to_vec()).await;
    let err = fetch(&addr.to_string(), Duration::from_secs(5))
        .await
        .expect_err("truncated body");
    assert!(
        matches!(err, StatusCmdError::Protocol { .. }),
        "expected Protocol, got {err:?}"
    );

    let (addr, _request) = answer_once(Vec::new()).await;
    let err = fetch(&addr.to_string(), Duration::from_secs(5))
        .await
        .expect_err("closed without answering");
    assert_eq!(
        err.to_string(),
        format!(
            "the admin API at http://{addr} closed the connection before answering \
             (is that the admin port, not a listener?)"
        )
    );
}

#[tokio::test]
async fn a_body_past_the_cap_is_refused() {
    let len = MAX_BODY + 1;
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    response.resize(response.len() + len, b' ');
    let (addr, _request) = answer_once(response).await;
    let err = fetch(&addr.to_string(), Duration::from_secs(10))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, StatusCmdError::TooLarge { .. }),
        "expected TooLarge, got {err:?}"
    );
}

#[tokio::test]
async fn https_is_refused_before_any_connection() {
    let addr = common::dead_addr().await;
    let err = fetch(&format!("https://{addr}"), Duration::from_secs(5))
        .await
        .expect_err("https");
    assert!(
        matches!(err, StatusCmdError::BadUrl { .. }),
        "expected BadUrl, got {err:?}"
    );
    assert!(
        err.to_string().contains("the admin API speaks plain HTTP"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The command: exit codes, --json, --watch.

/// `splicer status ARGS` as a child (see [`splicer_cli`]).
fn status_command(args: &[&str]) -> tokio::process::Command {
    splicer_cli(&[&["status"], args].concat())
}

/// Runs `splicer status ARGS` to its end (bounded): exit code, stdout, stderr.
async fn status_cli(args: &[&str]) -> (Option<i32>, String, String) {
    printed(&output_within(status_command(args), WAIT).await)
}

/// Waits (bounded) until every node in `nodes` is up on splicer's `/status`.
async fn until_all_up(admin: SocketAddr, nodes: &[SocketAddr]) {
    for &node in nodes {
        wait_until(WAIT, &format!("{node} up"), || async move {
            backend_state(admin, "quay", node).await == "up"
        })
        .await;
    }
}

#[tokio::test]
async fn exit_codes_follow_backends_operator_intent_and_reachability() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&config(&nodes)).await;
    let admin = splicer.admin;
    let url = format!("http://{admin}");
    until_all_up(admin, &nodes).await;

    let (code, out, err) = status_cli(&["--admin", &url]).await;
    assert_eq!(code, Some(0), "healthy: {err}\n{out}");
    assert!(out.starts_with("splicer 0.1.0, up "), "{out}");
    assert_eq!(err, "", "nothing on stderr when healthy");

    let (code, out, err) = status_cli(&["--admin", &url, "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let doc: Status = serde_json::from_str(&out).expect("--json prints a status document");
    assert_eq!(doc.pools[0].backends.len(), 3, "{out}");
    assert!(
        doc.pools[0].backends.iter().all(|b| b.state == "up"),
        "{out}"
    );
    assert!(out.starts_with("{\n  \""), "pretty-printed: {out}");

    // Node 2 fails its checks: degraded, and the message names it with the reason.
    let down = nodes[1];
    assert_eq!(control(&rig, "/nodes/2/health", "503").await.0, 200);
    wait_until(WAIT, "node 2 down", || async move {
        backend_state(admin, "quay", down).await == "down"
    })
    .await;
    let (code, out, err) = status_cli(&["--admin", &url]).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!("splicer: degraded: quay/{down} down (status 503)")
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("  {down}  down "))),
        "the table is still printed:\n{out}"
    );
    let (code, out, err) = status_cli(&["--admin", &url, "--json"]).await;
    assert_eq!(code, Some(1), "--json still exits 1 when degraded: {err}");
    let doc: Status = serde_json::from_str(&out).expect("--json prints a status document");
    let states: Vec<&str> = doc.pools[0]
        .backends
        .iter()
        .map(|b| b.state.as_str())
        .collect();
    assert_eq!(states, ["up", "down", "up"], "{out}");
    assert!(err.contains("degraded: "), "{err}");

    // The operator drains it: intent, not a fault.
    let path = format!("/pools/quay/backends/{down}/drain");
    let (code, body) = http(admin, "POST", &path, "").await;
    assert_eq!(code, 200, "{body}");
    let (code, out, err) = status_cli(&["--admin", &url]).await;
    assert_eq!(
        code,
        Some(0),
        "a drained down node is not degraded: {err}\n{out}"
    );
    assert!(out.contains(&format!("  {down}  draining ")), "{out}");

    // Nothing answers: 1, and the message says the API is unreachable, not that a backend is.
    assert!(splicer.shutdown().await);
    let (code, out, err) = status_cli(&["--admin", &url]).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err.trim_end(),
        format!(
            "splicer: admin API unreachable: cannot reach the admin API at {url}: connection \
             refused (is splicer running, and is [admin] enabled?)"
        )
    );
    let (code, out, err) = status_cli(&["--admin", &url, "--json"]).await;
    assert_eq!(code, Some(1), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("admin API unreachable: "), "{out}");
    assert_eq!(doc["admin"], url.as_str(), "{out}");
    rig.shutdown().await;
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &["--frobnicate"],
        &["--watch", "0"],
        &["--watch", "soon"],
        &["--json", "--watch"],
        &["--ready", "--json"],
        &["--admin", "https://127.0.0.1:9090"],
        &["--admin", "http://127.0.0.1:9090/metrics"],
    ];
    for args in cases {
        let (code, out, err) = status_cli(args).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert!(!err.is_empty(), "{args:?}: a usage error says why");
    }
}

/// Collects a child's stdout into a string, for polling.
fn collect(output: tokio::process::ChildStdout) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut output = output;
        let mut buf = [0u8; 4096];
        while let Ok(n) = output.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = sink.lock() {
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    text
}

#[tokio::test]
async fn watch_into_a_pipe_prints_frames_and_exits_with_the_last_sample() {
    let rig = rig(2).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&config(&nodes)).await;
    let admin = splicer.admin;
    let url = format!("http://{admin}");
    until_all_up(admin, &nodes).await;

    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let mut child = status_command(&["--watch", "0.2", "--admin", &url])
            .spawn()
            .expect("splicer starts");
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("pid");
        let text = collect(child.stdout.take().expect("stdout"));
        let frames = || {
            let t = text.lock().map(|t| t.clone()).unwrap_or_default();
            t.matches("splicer status --watch  ").count()
        };
        wait_until(WAIT, "three frames", || {
            let enough = frames() >= 3;
            async move { enough }
        })
        .await;
        signal(pid, sig);
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("the watch ends on the signal")
            .expect("wait");
        assert_eq!(status.code(), Some(0), "{name}: healthy last sample");
        let out = text.lock().map(|t| t.clone()).unwrap_or_default();
        assert!(
            !out.contains('\x1b'),
            "no escape codes into a pipe: {out:?}"
        );
        // Frames follow one another, a blank line between them.
        assert!(
            out.contains(&format!("\n\nsplicer status --watch  {url}  every 200ms  ")),
            "{out}"
        );
        for node in &nodes {
            assert!(out.contains(&format!("  {node}  up ")), "{out}");
        }
    }

    // Unreachable: each frame says since when; the exit code is 1.
    assert!(splicer.shutdown().await);
    let mut child = status_command(&["--watch", "0.2", "--admin", &url])
        .spawn()
        .expect("splicer starts");
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("pid");
    let mut stderr = child.stderr.take().expect("stderr");
    let text = collect(child.stdout.take().expect("stdout"));
    wait_until(WAIT, "two unreachable frames", || {
        let t = text.lock().map(|t| t.clone()).unwrap_or_default();
        let enough = t.matches("\nadmin API unreachable since ").count() >= 2;
        async move { enough }
    })
    .await;
    signal(pid, libc::SIGINT);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the watch ends on SIGINT")
        .expect("wait");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    let _ = tokio::time::timeout(WAIT, stderr.read_to_string(&mut err)).await;
    assert!(
        err.starts_with("splicer: admin API unreachable: cannot reach the admin API"),
        "{err}"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn watch_stops_quietly_when_the_reader_leaves() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let rig = rig(1).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&config(&nodes)).await;
    until_all_up(splicer.admin, &nodes).await;
    let url = format!("http://{}", splicer.admin);

    let mut fds = [0; 2];
    // Close-on-exec: a child another test spawns meanwhile must not inherit the read end and
    // keep the pipe open. (The child's stdout is a dup2 copy, which does not keep the flag.)
    // SAFETY: `fds` has room for the two descriptors pipe2(2) writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end); // `splicer status --watch | head -0`
    let mut cmd = status_command(&["--watch", "0.2", "--admin", &url]);
    cmd.stdout(Stdio::from(write_end));
    // `spawn`, not `output`, which would replace that stdout with a pipe of its own.
    let child = cmd.spawn().expect("splicer starts");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the watch ends when its reader is gone")
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut cmd = status_command(&["--watch", "0.2", "--admin", &url]);
    cmd.stdout(Stdio::from(full));
    // `spawn`, not `output`, which would replace that stdout with a pipe of its own.
    let child = cmd.spawn().expect("splicer starts");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the watch ends when stdout fails")
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to stdout"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    assert!(splicer.shutdown().await);
    rig.shutdown().await;
}

/// A tmux server of its own (`tmux -L NAME`), killed with everything in it when dropped, so
/// no test path leaves a server or a watch behind.
struct Tmux {
    socket: String,
    /// The server's socket file, once it runs: `kill-server` leaves it behind.
    socket_path: Mutex<Option<std::path::PathBuf>>,
}

impl Tmux {
    /// A server name no other test run shares.
    fn new() -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Tmux {
            socket: format!("splicer-test-{}-{nanos}", std::process::id()),
            socket_path: Mutex::new(None),
        }
    }

    /// Remembers where the running server's socket is, for `Drop` to remove it.
    fn note_socket_path(&self) {
        let path = self.run(&["display-message", "-p", "#{socket_path}"]);
        if let Ok(mut p) = self.socket_path.lock() {
            *p = Some(path.trim().into());
        }
    }

    /// Runs `tmux -L SOCKET ARGS`; its stdout, or a panic with its stderr.
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("tmux is needed for this test (scripts/test installs it): {e}")
            });
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen of the session's pane.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "watch"])
    }

    /// A pane variable, e.g. `cursor_flag` or `pane_dead_status`.
    fn pane(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "watch", format])
            .trim()
            .to_owned()
    }

    /// Polls the screen (bounded by [`WAIT`]) until `ok` holds; the screen it held on.
    async fn until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for {what}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(path) = self.socket_path.lock().ok().and_then(|mut p| p.take()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The state word of `node`'s row on a screen, if the row is there.
fn row_state(screen: &str, node: SocketAddr) -> Option<String> {
    let prefix = format!("  {node}  ");
    let row = screen.lines().find(|l| l.starts_with(&prefix))?;
    row.split_whitespace().nth(1).map(str::to_owned)
}

#[tokio::test]
async fn watch_redraws_in_place_under_a_terminal() {
    let version = std::process::Command::new("tmux").arg("-V").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "tmux is needed for this test (scripts/test installs it): {version:?}"
    );
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&config(&nodes)).await;
    let admin = splicer.admin;
    until_all_up(admin, &nodes).await;

    let tmux = Tmux::new();
    let url = format!("http://{admin}");
    // bash, run by tmux directly (several arguments: no second shell), waits for the watch
    // and prints its exit code; Ctrl-C reaches both, and bash goes on because the watch
    // exits normally on it. The pane stays (bounded) so the terminal state can be read.
    let bin = env!("CARGO_BIN_EXE_splicer");
    let script =
        format!("'{bin}' status --watch 0.2 --admin {url}; echo \"watch exited $?\"; sleep 60");
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "watch",
        "-x",
        "120",
        "-y",
        "40",
        "bash",
        "-c",
        &script,
    ]);
    tmux.note_socket_path();

    let screen = tmux
        .until("every backend up", |s| {
            nodes
                .iter()
                .all(|&n| row_state(s, n).as_deref() == Some("up"))
                && s.contains("\nhealthy\n")
        })
        .await;
    assert_eq!(
        screen.matches("splicer status --watch").count(),
        1,
        "one frame on the screen, redrawn in place:\n{screen}"
    );
    assert_eq!(tmux.pane("#{cursor_flag}"), "0", "the cursor is hidden");

    let down = nodes[1];
    assert_eq!(control(&rig, "/nodes/2/stop", "").await.0, 200);
    let screen = tmux
        .until("node 2 down", |s| {
            row_state(s, down).as_deref() == Some("down")
                && s.contains(&format!("degraded: quay/{down} down"))
        })
        .await;
    assert_eq!(
        screen.matches("splicer status --watch").count(),
        1,
        "{screen}"
    );

    // The admin API goes away, then comes back on the same address.
    assert!(splicer.shutdown().await);
    tmux.until("unreachable", |s| {
        s.contains("admin API unreachable since ")
    })
    .await;
    let again = format!("[admin]\nbind = \"{admin}\"\n{}", config(&nodes));
    let mut splicer = start_splicer(&again).await;
    tmux.until("the table again", |s| {
        !s.contains("unreachable") && row_state(s, nodes[0]).as_deref() == Some("up")
    })
    .await;

    // Ctrl-C: the last sample (node 2 still down) is the exit code; the cursor is back.
    tmux.run(&["send-keys", "-t", "watch", "C-c"]);
    let screen = tmux
        .until("the watch to exit", |s| s.contains("watch exited "))
        .await;
    assert!(screen.contains("\nwatch exited 1\n"), "{screen}");
    assert!(
        screen.contains(&format!("splicer: degraded: quay/{down} down")),
        "{screen}"
    );
    assert_eq!(
        tmux.pane("#{cursor_flag}"),
        "1",
        "the cursor is shown again"
    );
    // The last frame stays on the screen above the message.
    assert_eq!(
        screen.matches("splicer status --watch").count(),
        1,
        "{screen}"
    );

    drop(tmux);
    assert!(splicer.shutdown().await);
    rig.shutdown().await;
}
