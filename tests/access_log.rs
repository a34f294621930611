//! The access log of `splicer run` (docs/architecture.md §5 "Access log line"): one line per finished
//! connection on stdout, in the exact text layout or as JSON with the same fields, with the
//! bytes each way; nothing with `access_log = false`; and a sink that never drains (stdout
//! piped, never read) costs lines, counted in `splicer_access_log_dropped_total`, never
//! connections.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use common::process::{Proc, Stdout};
use common::{collect_lines, dead_addr, metric_value, metrics_text, wait_until, TestServer, WAIT};

/// What the echo backend adds after the client's EOF, so the two directions differ.
const TRAILER: &[u8] = b"-- end of echo --";

/// A TCP backend that echoes what it reads and, at the client's EOF, sends [`TRAILER`].
async fn echo_backend() -> TestServer {
    TestServer::start(|stream, _| async move {
        let (mut r, mut w) = stream.into_split();
        // Health checks connect and leave: their errors are of no interest.
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.write_all(TRAILER).await;
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// `n` deterministic bytes.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// Sends `n` bytes through `addr`, half-closes, and checks the echo and trailer. Returns the
/// client's own address (the access log's `client=`).
async fn echo_exchange(addr: SocketAddr, n: usize) -> std::io::Result<SocketAddr> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let me = s.local_addr()?;
        let data = payload(n);
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&data).await?;
            w.shutdown().await
        };
        let mut back = Vec::with_capacity(n + TRAILER.len());
        let (sent, received) = tokio::join!(send, r.read_to_end(&mut back));
        sent?;
        received?;
        let mut expected = data.clone();
        expected.extend_from_slice(TRAILER);
        if back != expected {
            return Err(std::io::Error::other(format!(
                "got {} bytes back, expected {}",
                back.len(),
                expected.len()
            )));
        }
        Ok(me)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "exchange timed out"))?
}

fn config(admin: SocketAddr, listen: SocketAddr, backend: SocketAddr, runtime: &str) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n\n[runtime]\nworkers = 2\n{runtime}\n\
         [[listener]]\nname = \"front\"\nbind = \"{listen}\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [\"{backend}\"]\n\n\
         [pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n"
    )
}

/// Collects the child's stdout, line by line as it appears.
fn collect_stdout(proc: &mut Proc) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let reader = collect_lines(proc.child.stdout.take().expect("stdout"), out.clone());
    (out, reader)
}

fn snapshot(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    lines.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Stops the child (SIGTERM, exit 0) and waits until its stdout has ended.
async fn stop(proc: &mut Proc, reader: JoinHandle<()>) {
    let status = proc.stop().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", proc.log());
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("stdout ends with the process")
        .expect("stdout reader");
}

/// The timestamp must be RFC 3339 UTC with milliseconds and recent.
fn assert_timestamp(ts: &str, line: &str) {
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "timestamp not like 2026-11-27T12:00:00.123Z: {line}"
    );
    let at = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("bad timestamp ({e}): {line}"));
    let age = SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO);
    assert!(
        age < Duration::from_secs(60),
        "timestamp not recent: {line}"
    );
}

/// Connections made for a case: client address → bytes sent.
async fn make_connections(listen: SocketAddr, sizes: &[usize]) -> BTreeMap<SocketAddr, usize> {
    let mut made = BTreeMap::new();
    for &n in sizes {
        let client = echo_exchange(listen, n)
            .await
            .unwrap_or_else(|e| panic!("exchange of {n} bytes failed: {e}"));
        made.insert(client, n);
    }
    made
}

async fn wait_lines(lines: &Arc<Mutex<Vec<String>>>, n: usize) {
    wait_until(WAIT, &format!("{n} access-log lines"), || async {
        snapshot(lines).len() >= n
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_have_the_documented_layout_and_byte_counts() {
    let echo = echo_backend().await;
    let mut proc = Proc::start(Stdout::Piped, 1, |admin, l| {
        config(
            admin,
            l[0],
            echo.addr,
            "access_log = true\nlog_format = \"text\"\n",
        )
    })
    .await;
    let (lines, reader) = collect_stdout(&mut proc);
    let sizes = [0, 1, 17, 1000, 65_536, 300_001];
    let made = make_connections(proc.listeners()[0], &sizes).await;
    wait_lines(&lines, sizes.len()).await;
    stop(&mut proc, reader).await;

    let lines = snapshot(&lines);
    assert_eq!(
        lines.len(),
        sizes.len(),
        "one line per connection:\n{lines:#?}"
    );
    let mut seen = BTreeSet::new();
    for line in &lines {
        let (ts, rest) = line.split_once(' ').expect("a timestamp first");
        assert_timestamp(ts, line);
        let fields: Vec<(&str, &str)> = rest
            .split(' ')
            .map(|f| {
                f.split_once('=')
                    .unwrap_or_else(|| panic!("not key=value: {f}"))
            })
            .collect();
        let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "listener",
                "client",
                "sni",
                "pool",
                "backend",
                "to_backend",
                "to_client",
                "duration_ms",
                "end"
            ],
            "field order: {line}"
        );
        let value = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let client: SocketAddr = value("client")
            .and_then(|c| c.parse().ok())
            .expect("client");
        let sent = *made
            .get(&client)
            .unwrap_or_else(|| panic!("a line for an unknown client: {line}"));
        assert!(seen.insert(client), "two lines for one connection: {line}");
        let duration: u64 = value("duration_ms")
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("duration_ms not an integer: {line}"));
        assert!(duration < 10_000, "{line}");
        let expected = format!(
            "listener=front client={client} sni=- pool=p backend={} to_backend={sent} \
             to_client={} duration_ms={duration} end=client_closed",
            echo.addr,
            sent + TRAILER.len()
        );
        assert_eq!(rest, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_the_same_fields() {
    let echo = echo_backend().await;
    let mut proc = Proc::start(Stdout::Piped, 1, |admin, l| {
        config(
            admin,
            l[0],
            echo.addr,
            "access_log = true\nlog_format = \"json\"\n",
        )
    })
    .await;
    let (lines, reader) = collect_stdout(&mut proc);
    let sizes = [5, 4096, 100_000];
    let made = make_connections(proc.listeners()[0], &sizes).await;
    wait_lines(&lines, sizes.len()).await;
    stop(&mut proc, reader).await;

    let lines = snapshot(&lines);
    assert_eq!(
        lines.len(),
        sizes.len(),
        "one line per connection:\n{lines:#?}"
    );
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let keys: BTreeSet<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let expected_keys: BTreeSet<&str> = [
            "ts",
            "listener",
            "client",
            "sni",
            "pool",
            "backend",
            "to_backend",
            "to_client",
            "duration_ms",
            "end",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected_keys, "{line}");
        assert_timestamp(v["ts"].as_str().expect("ts is a string"), line);
        let client: SocketAddr = v["client"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("client: {line}"));
        let sent = *made.get(&client).expect("a known client") as u64;
        assert_eq!(v["listener"], "front", "{line}");
        assert_eq!(v["sni"], Value::Null, "{line}");
        assert_eq!(v["pool"], "p", "{line}");
        assert_eq!(v["backend"], echo.addr.to_string(), "{line}");
        assert_eq!(v["to_backend"], sent, "{line}");
        assert_eq!(v["to_client"], sent + TRAILER.len() as u64, "{line}");
        assert!(v["duration_ms"].is_u64(), "{line}");
        assert_eq!(v["end"], "client_closed", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_false_writes_nothing() {
    let echo = echo_backend().await;
    let mut proc = Proc::start(Stdout::Piped, 1, |admin, l| {
        config(admin, l[0], echo.addr, "access_log = false\n")
    })
    .await;
    let (lines, reader) = collect_stdout(&mut proc);
    make_connections(proc.listeners()[0], &[10, 20, 30, 40, 50]).await;
    // Shutdown flushes whatever was queued, so after the exit stdout is complete.
    stop(&mut proc, reader).await;
    assert_eq!(snapshot(&lines), Vec::<String>::new());
}

async fn dropped(admin: SocketAddr) -> u64 {
    let text = metrics_text(admin).await;
    metric_value(&text, "splicer_access_log_dropped_total")
        .unwrap_or_else(|| panic!("no splicer_access_log_dropped_total:\n{text}")) as u64
}

/// Connects to `addr` (a listener whose pool has no backend, so splicer closes at once) until
/// `stop`, resetting each connection so no TIME_WAIT piles up. Returns how many it made.
fn flood(addr: SocketAddr, stop: Arc<AtomicBool>, made: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
            else {
                continue;
            };
            let mut buf = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            made.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_drops_lines_but_never_delays_connections() {
    const FLOODERS: usize = 32;
    const EXCHANGES: usize = 5_000;
    const CLIENTS: usize = 16;
    let echo = echo_backend().await;
    let dead = dead_addr().await;
    // stdout is piped and never read: once the pipe and the queue are full, the writer is
    // stuck for good. "flood" refuses every connection at once (its only backend is down and
    // it does not fail open), the cheapest way to produce access-log lines.
    let proc = Proc::start(Stdout::Piped, 2, |admin, l| {
        format!(
            "{}\n[[listener]]\nname = \"flood\"\nbind = \"{}\"\npool = \"empty\"\n\n\
             [[pool]]\nname = \"empty\"\nbackends = [\"{dead}\"]\nfail_open = false\n\n\
             [pool.health]\ncheck = \"tcp\"\ninterval = \"1s\"\ntimeout = \"200ms\"\n",
            config(admin, l[0], echo.addr, "access_log = true\n"),
            l[1]
        )
    })
    .await;
    let (admin, front, flood_addr) = (proc.admin(), proc.listeners()[0], proc.listeners()[1]);

    // Fill the pipe and the queue (65,536 lines) until lines are dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| flood(flood_addr, stop.clone(), made.clone()))
        .collect();
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let d = dropped(admin).await;
        last = Some(d);
        if d > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.expect("flooder");
    }
    let made = made.load(Ordering::Relaxed);
    println!(
        "{made} refused connections in {:?} filled the log queue",
        started.elapsed()
    );
    assert!(
        last.is_some_and(|d| d > 0),
        "no line dropped after {made} connections in {:?}; log:\n{}",
        started.elapsed(),
        proc.log()
    );

    // With the sink stuck, real exchanges are as quick as ever, and every line is dropped.
    let before = dropped(admin).await;
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let clients: Vec<JoinHandle<(Vec<String>, Duration)>> = (0..CLIENTS)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let (mut failures, mut slowest) = (Vec::new(), Duration::ZERO);
                while next.fetch_add(1, Ordering::Relaxed) < EXCHANGES as u64 {
                    let t = Instant::now();
                    if let Err(e) = echo_exchange(front, 64).await {
                        failures.push(e.to_string());
                    }
                    slowest = slowest.max(t.elapsed());
                }
                (failures, slowest)
            })
        })
        .collect();
    let (mut failures, mut slowest) = (Vec::new(), Duration::ZERO);
    for c in clients {
        let (f, s) = c.await.expect("client");
        failures.extend(f);
        slowest = slowest.max(s);
    }
    let took = began.elapsed();
    println!("{EXCHANGES} exchanges in {took:?}, slowest {slowest:?}");
    assert!(
        failures.is_empty(),
        "{} of {EXCHANGES} exchanges failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        took < Duration::from_secs(30) && slowest < Duration::from_secs(5),
        "{EXCHANGES} exchanges took {took:?} (slowest {slowest:?}) behind a stuck log"
    );
    // A connection's line is recorded just after the client saw its end: wait for the last.
    wait_until(
        WAIT,
        "every line of the exchanges counted as dropped",
        || async { dropped(admin).await >= before + EXCHANGES as u64 },
    )
    .await;
}

/// A connection still waiting for its PROXY header when splicer's drain_timeout cuts what is
/// left at a stop ends as `shutdown`, not as the client's doing (the record writes the line
/// whatever path ends the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_opening_read_is_logged_as_shutdown() {
    let echo = echo_backend().await;
    let mut proc = Proc::start(Stdout::Piped, 1, |admin, l| {
        config(admin, l[0], echo.addr, "drain_timeout = \"1s\"").replace(
            "pool = \"p\"\n\n[[pool]]",
            "pool = \"p\"\naccept_proxy = true\nclient_hello_timeout = \"30s\"\n\n[[pool]]",
        )
    })
    .await;
    let (lines, reader) = collect_stdout(&mut proc);
    let waiting = TcpStream::connect(proc.listeners()[0])
        .await
        .expect("connect");
    let me = waiting.local_addr().expect("local addr");
    let admin = proc.admin();
    wait_until(WAIT, "the connection is open on the listener", || async {
        metric_value(
            &metrics_text(admin).await,
            "splicer_listener_active_connections{listener=\"front\"}",
        ) == Some(1.0)
    })
    .await;
    stop(&mut proc, reader).await;
    let lines = snapshot(&lines);
    let line = lines
        .iter()
        .find(|l| l.contains(&format!("client={me} ")))
        .unwrap_or_else(|| panic!("no line for {me}: {lines:?}"));
    assert!(line.ends_with("end=shutdown"), "{line}");
    drop(waiting);
}
