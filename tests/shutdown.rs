//! Graceful shutdown of the `splicer run` process (docs/architecture.md §2 "Signals"): the first
//! SIGTERM/SIGINT turns `/ready` to 503 and closes the listeners, open transfers finish (up to
//! `drain_timeout`, then they are cut), and the process exits 0; a second signal exits at once
//! with code 1.
//!
//! The backend is a plain TCP server in this test that, asked with `GO <n>\n`, sends `n`
//! chunks 50 ms apart, so a transfer is in flight for as long as a case needs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use common::process::{Proc, Stdout};
use common::{free_addr, parse_response, read_go, wait_until, write_chunks, TestServer, WAIT};

/// Bytes per chunk the backend sends.
const CHUNK: usize = 4096;
/// Pause between chunks.
const CHUNK_EVERY: Duration = Duration::from_millis(50);

/// The test backend: accepts until dropped; a connection that says `GO <n>\n` gets `n` chunks,
/// chunk `i` filled with byte `i % 256`, then a clean close. Health-check connections (which
/// send nothing) are simply closed.
async fn slow_backend() -> TestServer {
    TestServer::start(|mut stream, _| async move {
        if let Some(chunks) = read_go(&mut stream).await {
            write_chunks(&mut stream, chunks, CHUNK, CHUNK_EVERY).await;
        }
    })
    .await
}

/// Starts `splicer run` in front of `backend` on free ports, its logs (stderr) and access log
/// (stdout) collected into one log shown when a case fails, and waits until `/ready` is 200.
/// `workers = 1` runs everything on the main thread (tokio's single-threaded scheduler), more
/// than one on a thread pool: both must drain and stop the same way.
async fn start_splicer(backend: SocketAddr, drain_timeout: &str, workers: usize) -> Proc {
    let mut splicer = Proc::start(Stdout::Log, 1, |admin, listen| {
        format!(
            r#"[admin]
bind = "{admin}"

[runtime]
drain_timeout = "{drain_timeout}"
workers = {workers}

[[listener]]
name = "front"
bind = "{}"
pool = "slow"

[[pool]]
name = "slow"
backends = ["{backend}"]
fail_open = false

[pool.health]
check = "tcp"
interval = "500ms"
timeout = "200ms"
"#,
            listen[0]
        )
    })
    .await;
    splicer.until_ready(splicer.admin()).await;
    splicer
}

/// `GET /ready` status, or `None` when the admin API does not answer.
async fn ready(admin: SocketAddr) -> Option<u16> {
    admin_request(admin, "GET", "/ready")
        .await
        .map(|(code, _)| code)
}

/// One admin exchange: (status, body), or `None` when the admin API does not answer.
async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(parse_response(&buf))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

async fn is_refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// How a client's read side ended.
struct Received {
    bytes: Vec<u8>,
    /// `Ok` for a clean EOF, else the read error.
    end: std::io::Result<()>,
    at: Instant,
}

/// Asks for `chunks` chunks through `listen` and returns once the first chunk has arrived
/// (so the transfer is established end to end), with a task reading the rest.
async fn start_transfer(listen: SocketAddr, chunks: usize) -> JoinHandle<Received> {
    let mut stream = TcpStream::connect(listen)
        .await
        .expect("connect to splicer");
    stream
        .write_all(format!("GO {chunks}\n").as_bytes())
        .await
        .expect("send request");
    let mut first = vec![0u8; CHUNK];
    tokio::time::timeout(WAIT, stream.read_exact(&mut first))
        .await
        .expect("first chunk in time")
        .expect("first chunk");
    tokio::spawn(async move {
        let mut bytes = first;
        let mut buf = vec![0u8; 64 * 1024];
        let read_all = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(e),
                }
            }
        };
        let end = tokio::time::timeout(WAIT, read_all)
            .await
            .expect("transfer ends in time");
        let at = Instant::now();
        // Dropping the stream closes our side too, which ends the connection in splicer.
        drop(stream);
        Received { bytes, end, at }
    })
}

fn assert_pattern(bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == (i % 256) as u8),
            "chunk {i} is corrupted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_open_transfer_then_exits_0() {
    const CHUNKS: usize = 40; // ~2 s
    let backend = slow_backend().await;
    let mut splicer = start_splicer(backend.addr, "10s", 1).await;
    let (admin, listen) = (splicer.admin(), splicer.listeners()[0]);
    let transfer = start_transfer(listen, CHUNKS).await;

    let term_at = Instant::now();
    splicer.signal(libc::SIGTERM);
    wait_until(
        Duration::from_secs(1),
        "/ready answers 503 after SIGTERM",
        || async { ready(admin).await == Some(503) },
    )
    .await;
    let unready_at = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "the listener refuses connections",
        || is_refused(listen),
    )
    .await;
    for _ in 0..3 {
        assert!(is_refused(listen).await, "listener accepted again");
    }
    // The admin API keeps answering while the drain lasts, but a reload cannot open a new
    // listener behind the drain's back.
    assert_eq!(ready(admin).await, Some(503));
    let extra = free_addr();
    let text = std::fs::read_to_string(splicer.config()).expect("read config");
    let grown =
        format!("{text}\n[[listener]]\nname = \"late\"\nbind = \"{extra}\"\npool = \"slow\"\n");
    std::fs::write(splicer.config(), grown).expect("rewrite config");
    let (code, body) = admin_request(admin, "POST", "/reload")
        .await
        .expect("admin answers");
    assert_ne!(code, 200, "reload applied during shutdown: {body}");
    // Read from /proc: `extra` is a freed port another test may have taken meanwhile.
    let listening = common::sockets::listening(splicer.pid);
    assert!(
        !listening.contains(&extra),
        "a listener opened during the drain: {listening:?}"
    );

    let received = transfer.await.expect("reader task");
    if let Err(e) = &received.end {
        panic!("transfer ended with {e}; log:\n{}", splicer.log());
    }
    assert_eq!(
        received.bytes.len(),
        CHUNKS * CHUNK,
        "every byte arrives; log:\n{}",
        splicer.log()
    );
    assert_pattern(&received.bytes);
    assert!(
        received.at > unready_at,
        "the transfer was still in flight when shutdown began"
    );

    let (status, exited_at) = splicer.exit_within(WAIT).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", splicer.log());
    let after_transfer = exited_at.duration_since(received.at);
    assert!(
        after_transfer < Duration::from_secs(3),
        "exit took {after_transfer:?} after the last connection ended; log:\n{}",
        splicer.log()
    );
    assert!(
        exited_at.duration_since(term_at) < Duration::from_secs(8),
        "exit did not come well before drain_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_a_long_transfer_and_exits_0() {
    const CHUNKS: usize = 100; // ~5 s
    let backend = slow_backend().await;
    let mut splicer = start_splicer(backend.addr, "500ms", 2).await;
    let transfer = start_transfer(splicer.listeners()[0], CHUNKS).await;

    let term_at = Instant::now();
    splicer.signal(libc::SIGTERM);
    let (status, exited_at) = splicer.exit_within(WAIT).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", splicer.log());
    let took = exited_at.duration_since(term_at);
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}, before the 500ms drain; log:\n{}",
        splicer.log()
    );
    assert!(
        took < Duration::from_millis(2500),
        "exited after {took:?}, long after the 500ms drain; log:\n{}",
        splicer.log()
    );

    let received = transfer.await.expect("reader task");
    assert!(
        received.bytes.len() < CHUNKS * CHUNK,
        "the transfer was cut short"
    );
    assert_pattern(&received.bytes);
    let cut_after = received.at.duration_since(term_at);
    assert!(
        cut_after < Duration::from_millis(2500),
        "the client saw the close only after {cut_after:?}"
    );
    // The connection's access log line names the cut.
    let log = splicer.log();
    let access = log
        .lines()
        .find(|l| l.contains(" listener=front ") && l.contains(" end="))
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    assert!(access.ends_with(" end=shutdown"), "{access}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_during_the_drain_exits_1_at_once() {
    const CHUNKS: usize = 100; // ~5 s
    let backend = slow_backend().await;
    let mut splicer = start_splicer(backend.addr, "10s", 2).await;
    let admin = splicer.admin();
    let transfer = start_transfer(splicer.listeners()[0], CHUNKS).await;

    splicer.signal(libc::SIGTERM);
    // The first signal has been handled once /ready turns 503: the drain is on.
    wait_until(
        Duration::from_secs(1),
        "/ready answers 503 after SIGTERM",
        || async { ready(admin).await == Some(503) },
    )
    .await;
    let second_at = Instant::now();
    splicer.signal(libc::SIGTERM);
    let (status, exited_at) = splicer.exit_within(WAIT).await;
    assert_eq!(status.code(), Some(1), "log:\n{}", splicer.log());
    let took = exited_at.duration_since(second_at);
    assert!(
        took < Duration::from_secs(1),
        "second signal took {took:?} to end the process"
    );

    let received = transfer.await.expect("reader task");
    assert!(received.bytes.len() < CHUNKS * CHUNK, "transfer was cut");
    assert_pattern(&received.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_nothing_open_exits_0_promptly() {
    let backend = slow_backend().await;
    let mut splicer = start_splicer(backend.addr, "10s", 1).await;
    let int_at = Instant::now();
    splicer.signal(libc::SIGINT);
    let (status, exited_at) = splicer.exit_within(WAIT).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", splicer.log());
    let took = exited_at.duration_since(int_at);
    assert!(took < Duration::from_secs(2), "idle shutdown took {took:?}");
    assert!(is_refused(splicer.listeners()[0]).await);
    assert!(is_refused(splicer.admin()).await);
}
