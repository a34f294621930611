//! `splicer status` over real loopback sockets: splicer in-process in front of the rig (every
//! backend in the table, `up`), nothing listening (a `Connect` error an operator can act on), a
//! peer that accepts and never answers (a `Timeout` within the bound), and peers that answer
//! wrongly (an error status, not JSON, not HTTP, too much).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use common::{backend_state, backends_toml, rig, start_splicer, wait_until, WAIT};
use splicer::status_cmd::{fetch, render, StatusCmdError, MAX_BODY};

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

/// A port that was free a moment ago: bound, then released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
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
    let addr = closed_port().await;
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
    let addr = closed_port().await;
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
