//! Passthrough over real loopback sockets (docs/architecture.md §4 "Passthrough" and "Connect"): bytes
//! arrive unchanged both ways at once, a half-close crosses splicer as a half-close, a reset as a
//! reset, and a failed connect is retried on another backend and counted against the dead one.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{backend_state, backends_toml, start_splicer, status, wait_until, Splicer, WAIT};

/// Bound on the 256 MiB transfer; it normally takes a few seconds in the dev profile.
const BULK_WAIT: Duration = Duration::from_secs(120);

/// Bytes per generated and written block; the transfer sizes are multiples of it.
const BLOCK: usize = 64 * 1024;

/// Splicer in front of `backends` with no health checks (every backend counts as up).
fn unchecked_config(backends: &[SocketAddr], pool_extra: &str) -> String {
    format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "p"

[[pool]]
name = "p"
backends = {}
{pool_extra}

[pool.health]
check = "none"
"#,
        backends_toml(backends)
    )
}

/// A plain TCP test backend: a bound listener whose connections the test takes one by one.
async fn test_backend() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    (listener, addr)
}

/// The next connection splicer opens to `listener`.
async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("splicer never connected to the backend")
        .expect("accept")
        .0
}

/// A loopback address with nothing listening on it.
async fn dead_addr() -> SocketAddr {
    let (listener, addr) = test_backend().await;
    drop(listener);
    addr
}

/// xorshift64 bytes: seeded, so each direction carries its own stream, and fast enough to make
/// 256 MiB block by block while it is written, never holding it all.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
    }
}

/// What one side sent or received: its length and SHA-256.
#[derive(Debug, PartialEq, Eq)]
struct Digested {
    len: u64,
    sha256: [u8; 32],
}

/// Writes `len` bytes of seeded noise to `to`, hashing them on the way, then shuts its write
/// side down.
async fn send_noise(mut to: impl AsyncWrite + Unpin, seed: u64, len: u64) -> Digested {
    let mut noise = Noise(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        noise.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).await.expect("send noise");
        left -= n as u64;
    }
    to.shutdown().await.expect("shutdown after sending");
    Digested {
        len,
        sha256: hasher.finalize().into(),
    }
}

/// Reads `from` to EOF, hashing what arrives.
async fn receive_all(mut from: impl AsyncRead + Unpin) -> Digested {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0u64;
    loop {
        let n = from.read(&mut buf).await.expect("receive");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Digested {
        len,
        sha256: hasher.finalize().into(),
    }
}

/// Sends `len` bytes each way through splicer at the same time and checks each side received
/// exactly what the other sent.
async fn transfer_both_ways(len: u64) {
    let (backend, backend_addr) = test_backend().await;
    let splicer = start_splicer(&unchecked_config(&[backend_addr], "")).await;
    let client = TcpStream::connect(splicer.addr).await.expect("connect");
    let server = accept(&backend).await;

    let started = Instant::now();
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let up_sent = tokio::spawn(send_noise(client_tx, 0x9E37_79B9_7F4A_7C15, len));
    let down_sent = tokio::spawn(send_noise(server_tx, 0xD1B5_4A32_D192_ED03, len));
    let up_received = tokio::spawn(receive_all(server_rx));
    let down_received = tokio::spawn(receive_all(client_rx));
    let all = async {
        (
            up_sent.await.expect("client sender"),
            down_sent.await.expect("backend sender"),
            up_received.await.expect("backend receiver"),
            down_received.await.expect("client receiver"),
        )
    };
    let (up_sent, down_sent, up_received, down_received) = tokio::time::timeout(BULK_WAIT, all)
        .await
        .unwrap_or_else(|_| panic!("{len} bytes each way did not cross within {BULK_WAIT:?}"));
    eprintln!("{len} bytes each way in {:?}", started.elapsed());

    assert_eq!(up_sent.len, len);
    assert_eq!(down_sent.len, len);
    assert_ne!(
        up_sent.sha256, down_sent.sha256,
        "the two directions must differ"
    );
    assert_eq!(up_received, up_sent, "client → backend bytes changed");
    assert_eq!(down_received, down_sent, "backend → client bytes changed");
    expect_all_closed(&splicer, 1).await;
}

/// `/status` shows `total` connections accepted and, soon, none open (listener and backends).
async fn expect_all_closed(splicer: &Splicer, total: u64) {
    wait_until(WAIT, "every proxied connection to end", || async {
        let s = status(splicer.admin).await;
        let backends_idle = s["pools"][0]["backends"]
            .as_array()
            .is_some_and(|bs| bs.iter().all(|b| b["active_connections"] == 0));
        s["listeners"][0]["active_connections"] == 0 && backends_idle
    })
    .await;
    let s = status(splicer.admin).await;
    assert_eq!(s["listeners"][0]["total_connections"], total, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_each_way_arrives_intact() {
    transfer_both_ways(1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_mebibytes_each_way_arrive_intact() {
    transfer_both_ways(256 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_reaches_backend_and_the_answer_still_flows() {
    let (backend, backend_addr) = test_backend().await;
    let splicer = start_splicer(&unchecked_config(&[backend_addr], "")).await;
    let mut client = TcpStream::connect(splicer.addr).await.expect("connect");
    let mut server = accept(&backend).await;
    let answer: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();

    let backend_side = {
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            server
                .read_to_end(&mut request)
                .await
                .expect("backend reads the request");
            // EOF seen: the client's half-close crossed splicer. Answer on the open half.
            server.write_all(&answer).await.expect("backend answers");
            drop(server);
            request
        })
    };
    client.write_all(b"REQUEST body").await.expect("write");
    client.shutdown().await.expect("shutdown(Write)");
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut got))
        .await
        .expect("client never saw the end of the answer")
        .expect("client reads the answer");
    let request = tokio::time::timeout(WAIT, backend_side)
        .await
        .expect("backend never saw EOF")
        .expect("backend task");
    assert_eq!(request, b"REQUEST body");
    assert!(got == answer, "answer changed ({} bytes)", got.len());
    expect_all_closed(&splicer, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_half_close_reaches_client_and_the_client_can_still_send() {
    let (backend, backend_addr) = test_backend().await;
    let splicer = start_splicer(&unchecked_config(&[backend_addr], "")).await;
    let mut client = TcpStream::connect(splicer.addr).await.expect("connect");
    let mut server = accept(&backend).await;

    server.write_all(b"GREETING").await.expect("greet");
    server.shutdown().await.expect("backend shutdown(Write)");
    let mut greeting = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut greeting))
        .await
        .expect("client never saw the backend's EOF")
        .expect("client reads");
    assert_eq!(greeting, b"GREETING");

    // The backend's half-close must not have closed the other direction.
    let upload: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 253) as u8).collect();
    client
        .write_all(&upload)
        .await
        .expect("client sends after EOF");
    client.shutdown().await.expect("client shutdown(Write)");
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, server.read_to_end(&mut received))
        .await
        .expect("backend never saw the client's EOF")
        .expect("backend reads");
    assert!(
        received == upload,
        "upload changed ({} bytes)",
        received.len()
    );
    drop(server);
    expect_all_closed(&splicer, 1).await;
}

/// Closes `stream` with RST instead of FIN.
fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

/// The next read on `stream` must fail with a reset (not EOF, not data).
async fn expect_reset(stream: &mut TcpStream, who: &str) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{who} saw neither reset nor data"));
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{who}: {e}"),
        Ok(n) => panic!("{who} read {n} bytes (0 = FIN) instead of a reset"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_resets_the_backend() {
    let (backend, backend_addr) = test_backend().await;
    let splicer = start_splicer(&unchecked_config(&[backend_addr], "")).await;
    let mut client = TcpStream::connect(splicer.addr).await.expect("connect");
    let mut server = accept(&backend).await;
    client.write_all(b"ping").await.expect("write");
    let mut ping = [0u8; 4];
    tokio::time::timeout(WAIT, server.read_exact(&mut ping))
        .await
        .expect("ping never arrived")
        .expect("read ping");
    assert_eq!(&ping, b"ping");

    reset(client);
    expect_reset(&mut server, "backend").await;
    expect_all_closed(&splicer, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_resets_the_client() {
    let (backend, backend_addr) = test_backend().await;
    let splicer = start_splicer(&unchecked_config(&[backend_addr], "")).await;
    let mut client = TcpStream::connect(splicer.addr).await.expect("connect");
    let mut server = accept(&backend).await;
    server.write_all(b"pong").await.expect("write");
    let mut pong = [0u8; 4];
    tokio::time::timeout(WAIT, client.read_exact(&mut pong))
        .await
        .expect("pong never arrived")
        .expect("read pong");
    assert_eq!(&pong, b"pong");

    reset(server);
    expect_reset(&mut client, "client").await;
    expect_all_closed(&splicer, 1).await;
}

/// Accepts forever, answering every connection with `live` and closing it.
fn serve_live(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.write_all(b"live").await;
            });
        }
    })
}

/// One connection through splicer must reach the live backend.
async fn expect_live(addr: SocketAddr, i: usize) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        got
    };
    let got = tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("connection {i} got no answer"));
    assert_eq!(
        got, b"live",
        "connection {i} did not reach the live backend"
    );
}

/// `/status` entry of backend `addr` in the first pool.
async fn backend_json(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let s = status(admin).await;
    s["pools"][0]["backends"]
        .as_array()
        .and_then(|bs| {
            bs.iter()
                .find(|b| b["address"] == addr.to_string())
                .cloned()
        })
        .unwrap_or_else(|| panic!("backend {addr} not on /status: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_on_the_live_one_and_counted() {
    let dead = dead_addr().await;
    let (live, live_addr) = test_backend().await;
    let server = serve_live(live);
    let splicer = start_splicer(&unchecked_config(
        &[dead, live_addr],
        "balance = \"round_robin\"\nretries = 2\nconnect_timeout = \"1s\"",
    ))
    .await;

    for i in 0..20 {
        expect_live(splicer.addr, i).await;
    }
    let dead_json = backend_json(splicer.admin, dead).await;
    let failures = dead_json["connect_failures"].as_u64().expect("counter");
    assert!(failures > 0, "no connect failure counted: {dead_json}");
    assert_eq!(dead_json["total_connections"], 0, "{dead_json}");
    let live_json = backend_json(splicer.admin, live_addr).await;
    assert_eq!(live_json["total_connections"], 20, "{live_json}");
    assert_eq!(live_json["connect_failures"], 0, "{live_json}");
    // With no active check, passive marking is off: nothing could bring the backend back.
    assert_eq!(dead_json["state"], "up", "{dead_json}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_failures_mark_a_backend_down_between_checks() {
    // It accepts (in the kernel backlog) during the start-up check, then stops listening; the
    // next active check is a minute away, so only data-path failures can take it down.
    let (doomed, doomed_addr) = test_backend().await;
    let (live, live_addr) = test_backend().await;
    let server = serve_live(live);
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "p"

[[pool]]
name = "p"
backends = {}
balance = "round_robin"
retries = 2
passive_fall = 3
connect_timeout = "1s"

[pool.health]
check = "tcp"
interval = "60s"
timeout = "1s"
"#,
        backends_toml(&[doomed_addr, live_addr])
    ))
    .await;
    assert_eq!(backend_state(splicer.admin, "p", doomed_addr).await, "up");
    assert_eq!(backend_state(splicer.admin, "p", live_addr).await, "up");
    drop(doomed);

    let mut sent = 0;
    while backend_state(splicer.admin, "p", doomed_addr).await == "up" {
        assert!(
            sent < 20,
            "{sent} connections and the dead backend is still up: {}",
            backend_json(splicer.admin, doomed_addr).await
        );
        expect_live(splicer.addr, sent).await;
        sent += 1;
    }
    let failures = backend_json(splicer.admin, doomed_addr).await["connect_failures"]
        .as_u64()
        .expect("counter");
    assert!(
        (3..=sent as u64).contains(&failures),
        "down after {failures} failures over {sent} connections; passive_fall is 3"
    );

    // Down means out of the live set: no more attempts, so no more failures.
    for i in 0..10 {
        expect_live(splicer.addr, sent + i).await;
    }
    let doomed_json = backend_json(splicer.admin, doomed_addr).await;
    assert_eq!(doomed_json["state"], "down", "{doomed_json}");
    // /status says why: its last check (at start-up) still passed.
    assert_eq!(doomed_json["last_check"]["ok"], true, "{doomed_json}");
    let reason = doomed_json["down_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("consecutive connect failures"),
        "{doomed_json}"
    );
    assert_eq!(doomed_json["connect_failures"], failures, "{doomed_json}");
    let live_json = backend_json(splicer.admin, live_addr).await;
    assert_eq!(live_json["total_connections"], sent as u64 + 10);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passively_downed_backend_comes_back_through_its_active_check() {
    // `fall = 1000`: the active check alone would take minutes to eject it, so a quick `down`
    // is the passive path; `rise = 1` brings it back at the first passing check.
    let (flaky, flaky_addr) = test_backend().await;
    let (live, live_addr) = test_backend().await;
    let server = serve_live(live);
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "p"

[[pool]]
name = "p"
backends = {}
balance = "round_robin"
retries = 2
passive_fall = 3

[pool.health]
check = "tcp"
interval = "300ms"
timeout = "200ms"
rise = 1
fall = 1000
"#,
        backends_toml(&[flaky_addr, live_addr])
    ))
    .await;
    assert_eq!(backend_state(splicer.admin, "p", flaky_addr).await, "up");
    drop(flaky);

    let mut sent = 0;
    while backend_state(splicer.admin, "p", flaky_addr).await == "up" {
        assert!(sent < 20, "{sent} connections and it is still up");
        expect_live(splicer.addr, sent).await;
        sent += 1;
    }

    // Listening again on the same address: the next check passes and it takes traffic again.
    let back = TcpListener::bind(flaky_addr)
        .await
        .expect("rebind the backend's address");
    wait_until(WAIT, "the active check to bring it back up", || async {
        backend_state(splicer.admin, "p", flaky_addr).await == "up"
    })
    .await;
    let flaky_json = backend_json(splicer.admin, flaky_addr).await;
    assert!(flaky_json["down_reason"].is_null(), "{flaky_json}");
    let mut reached = false;
    for i in 0..4 {
        let client = TcpStream::connect(splicer.addr).await.expect("connect");
        let got = tokio::time::timeout(WAIT, async {
            tokio::select! {
                accepted = back.accept() => accepted.map(|_| true),
                // The live backend answers and closes when it got the connection instead.
                _ = async {
                    let mut c = client;
                    let mut sink = Vec::new();
                    let _ = c.read_to_end(&mut sink).await;
                } => Ok(false),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("connection {i} went nowhere"))
        .expect("accept");
        if got {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "the recovered backend got none of 4 round-robin connections"
    );
    server.abort();
}
