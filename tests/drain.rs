//! Backend actions (docs/architecture.md §4 "States", admin-api.md "Backend actions"): `drain` lets
//! transfers in flight finish while new connections go elsewhere, and cuts what is left at
//! `drain_timeout` (`end=drained` in the access log); `enable` brings a draining backend back at
//! once; `disable` stops checks and rotation, and `enable` then needs `rise` passes.
//!
//! The backends are plain TCP servers that, asked `GO <n>\n`, answer their own address on a
//! line and then `n` chunks 50 ms apart, so a transfer stays in flight as long as a case needs
//! and the client knows exactly what a complete one looks like.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::{Proc, Stdout};
use common::{
    backends_toml, collect_lines, http, read_go, start_splicer, start_splicer_file, status,
    wait_until, write_chunks, ConfigFile, Splicer, TestServer, WAIT,
};

/// Bytes per chunk.
const CHUNK: usize = 4096;
/// Pause between chunks.
const CHUNK_EVERY: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// The streaming backend and its client.

/// A backend that answers `GO <n>\n` with `<addr>\n` and `n` chunks (chunk `i` all bytes
/// `i % 256`), then a clean close. Health checks send nothing and are simply closed.
async fn stream_backend() -> TestServer {
    TestServer::start(|mut stream, me| async move {
        let Some(chunks) = read_go(&mut stream).await else {
            return;
        };
        if stream
            .write_all(format!("{me}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        write_chunks(&mut stream, chunks, CHUNK, CHUNK_EVERY).await;
    })
    .await
}

/// A transfer through splicer with the backend's address line read.
struct Transfer {
    stream: TcpStream,
    backend: SocketAddr,
}

/// How a transfer ended.
#[derive(Debug)]
struct Received {
    /// Payload bytes after the address line, all checked against the pattern.
    bytes: usize,
    /// Whether the stream ended by a clean EOF (else an error, e.g. a reset).
    clean: bool,
}

impl Received {
    fn complete(&self, chunks: usize) -> bool {
        self.clean && self.bytes == chunks * CHUNK
    }
}

impl Transfer {
    async fn start(addr: SocketAddr, chunks: usize) -> Transfer {
        let fut = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(format!("GO {chunks}\n").as_bytes())
                .await
                .expect("send GO");
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\n") {
                let n = stream.read(&mut byte).await.expect("read address line");
                assert_eq!(n, 1, "EOF before the address line");
                line.push(byte[0]);
            }
            let backend = String::from_utf8_lossy(&line)
                .trim()
                .parse()
                .expect("an address line");
            Transfer { stream, backend }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("transfer start timed out")
    }

    /// Reads to the end (bounded), checking every byte.
    async fn receive(mut self) -> Received {
        let fut = async {
            let mut bytes = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) => return Received { bytes, clean: true },
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            let expected = (((bytes + k) / CHUNK) % 256) as u8;
                            assert_eq!(*b, expected, "byte {} is wrong", bytes + k);
                        }
                        bytes += n;
                    }
                    Err(_) => {
                        return Received {
                            bytes,
                            clean: false,
                        }
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("transfer did not end in time")
    }
}

/// Which backend a one-chunk transfer reaches (and that it completes).
async fn short(addr: SocketAddr) -> SocketAddr {
    let t = Transfer::start(addr, 1).await;
    let backend = t.backend;
    let r = t.receive().await;
    assert!(r.complete(1), "a short transfer was cut: {r:?}");
    backend
}

async fn shorts(addr: SocketAddr, n: usize) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(short(addr).await);
    }
    out
}

/// A transfer of `chunks` reaching `backend` (round robin: retry until it does).
async fn transfer_to(addr: SocketAddr, backend: SocketAddr, chunks: usize) -> Transfer {
    for _ in 0..20 {
        let t = Transfer::start(addr, chunks).await;
        if t.backend == backend {
            return t;
        }
        drop(t);
    }
    panic!("no transfer reached {backend}");
}

// ---------------------------------------------------------------------------------------------
// Config and admin helpers.

fn config(backends: &[SocketAddr], drain_timeout: &str, rise: u32) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [runtime]\naccess_log = false\ndrain_timeout = \"{drain_timeout}\"\n\n\
         [[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbalance = \"round_robin\"\nbackends = {}\n\n\
         [pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\n\
         rise = {rise}\nfall = 1\n",
        backends_toml(backends)
    )
}

/// `POST /pools/p/backends/{addr}/{action}`: (status, JSON body).
async fn action(admin: SocketAddr, addr: SocketAddr, what: &str) -> (u16, Value) {
    let (code, body) = http(
        admin,
        "POST",
        &format!("/pools/p/backends/{addr}/{what}"),
        "",
    )
    .await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("non-JSON answer ({e}): {body}"));
    (code, v)
}

/// The action must answer 200 with the backend's new `state`.
async fn act(admin: SocketAddr, addr: SocketAddr, what: &str, state: &str) {
    let (code, v) = action(admin, addr, what).await;
    assert_eq!(code, 200, "{what} {addr}: {v}");
    assert_eq!(
        v,
        json!({"pool": "p", "address": addr.to_string(), "state": state}),
        "{what} {addr}"
    );
}

async fn backend_json(admin: SocketAddr, addr: SocketAddr) -> Value {
    let s = status(admin).await;
    s["pools"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not on /status: {s}"))
}

async fn wait_state(admin: SocketAddr, addr: SocketAddr, want: &str) {
    wait_until(WAIT, &format!("{addr} {want}"), || async {
        backend_json(admin, addr).await["state"] == want
    })
    .await;
}

async fn two_up(drain_timeout: &str, rise: u32) -> (Splicer, TestServer, TestServer) {
    let (s1, s2) = (stream_backend().await, stream_backend().await);
    let splicer = start_splicer(&config(&[s1.addr, s2.addr], drain_timeout, rise)).await;
    wait_state(splicer.admin, s1.addr, "up").await;
    wait_state(splicer.admin, s2.addr, "up").await;
    (splicer, s1, s2)
}

/// Health checks run so far on `addr` (passed + failed), read in-process.
fn checks_run(splicer: &Splicer, addr: SocketAddr) -> u64 {
    let running = splicer.running.as_ref().expect("running");
    let pool = running.state().pool("p").expect("pool p");
    let members = pool.members();
    let b = members
        .iter()
        .find(|b| b.address == addr)
        .expect("backend listed");
    let (pass, fail) = b.checks();
    pass + fail
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_a_transfer_finish_while_new_connections_avoid_it() {
    let (mut splicer, s1, s2) = two_up("30s", 1).await;
    // 30 chunks, 50 ms apart: about 1.5 s in flight.
    let long = Transfer::start(splicer.addr, 30).await;
    let (drained, other) = if long.backend == s1.addr {
        (s1.addr, s2.addr)
    } else {
        (s2.addr, s1.addr)
    };
    let started = Instant::now();
    let receiving = tokio::spawn(long.receive());

    act(splicer.admin, drained, "drain", "draining").await;
    let b = backend_json(splicer.admin, drained).await;
    assert_eq!(b["state"], "draining", "{b}");
    assert_eq!(b["active_connections"], 1, "{b}");
    let served = shorts(splicer.addr, 6).await;
    assert!(
        served.iter().all(|s| *s == other),
        "new connections reached a draining backend: {served:?}"
    );
    // Draining again is harmless.
    act(splicer.admin, drained, "drain", "draining").await;

    let r = receiving.await.expect("receiver");
    assert!(r.complete(30), "the transfer in flight must finish: {r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the transfer took {:?}: it cannot have been whole",
        started.elapsed()
    );
    wait_until(WAIT, "its connection count drops to 0", || async {
        backend_json(splicer.admin, drained).await["active_connections"] == 0
    })
    .await;
    // A drain is an operator's decision: it stays until `enable`.
    assert_eq!(
        backend_json(splicer.admin, drained).await["state"],
        "draining"
    );
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_returns_a_draining_backend_at_once() {
    let (mut splicer, s1, s2) = two_up("30s", 3).await;
    act(splicer.admin, s1.addr, "drain", "draining").await;
    assert!(shorts(splicer.addr, 4).await.iter().all(|s| *s == s2.addr));
    // Its checks went on while draining, so it is up at once (rise = 3 would take 200 ms).
    act(splicer.admin, s1.addr, "enable", "up").await;
    let served = shorts(splicer.addr, 4).await;
    assert_eq!(
        served.iter().filter(|s| **s == s1.addr).count(),
        2,
        "round robin includes it again at once: {served:?}"
    );
    // Enabling an active backend is harmless.
    act(splicer.admin, s1.addr, "enable", "up").await;
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_what_is_left_and_enable_rearms() {
    let (mut splicer, s1, s2) = two_up("300ms", 1).await;
    // 40 chunks: 2 s, far beyond the 300 ms drain timeout.
    let long = transfer_to(splicer.addr, s1.addr, 40).await;
    let receiving = tokio::spawn(long.receive());
    act(splicer.admin, s1.addr, "drain", "draining").await;
    let drained_at = Instant::now();
    let r = receiving.await.expect("receiver");
    let took = drained_at.elapsed();
    assert!(
        r.bytes < 40 * CHUNK,
        "the transfer should have been cut: {r:?}"
    );
    // Not before drain_timeout (300 ms; the check above proves it came before the transfer's
    // 2 s end, an upper bound that holds on a machine of any speed).
    assert!(
        took >= Duration::from_millis(280),
        "cut {took:?} after the drain; drain_timeout is 300ms"
    );
    wait_until(WAIT, "no connection left", || async {
        backend_json(splicer.admin, s1.addr).await["active_connections"] == 0
    })
    .await;
    assert_eq!(
        backend_json(splicer.admin, s1.addr).await["state"],
        "draining"
    );

    // Enabled again, its new connections are not born cut.
    act(splicer.admin, s1.addr, "enable", "up").await;
    let t = transfer_to(splicer.addr, s1.addr, 12).await;
    let r = t.receive().await;
    assert!(r.complete(12), "a connection after enable was cut: {r:?}");
    assert!(shorts(splicer.addr, 2).await.contains(&s2.addr));
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_stops_checks_and_rotation_and_enable_needs_rise() {
    let (mut splicer, s1, s2) = two_up("30s", 3).await;
    // 10 chunks: 0.5 s in flight across the disable.
    let held = transfer_to(splicer.addr, s1.addr, 10).await;
    let receiving = tokio::spawn(held.receive());

    act(splicer.admin, s1.addr, "disable", "disabled").await;
    let frozen = checks_run(&splicer, s1.addr);
    let last_check = backend_json(splicer.admin, s1.addr).await["last_check"].clone();
    assert!(
        last_check.is_object(),
        "it was checked before: {last_check}"
    );
    let served = shorts(splicer.addr, 6).await;
    assert!(
        served.iter().all(|s| *s == s2.addr),
        "a disabled backend got a new connection: {served:?}"
    );
    let r = receiving.await.expect("receiver");
    assert!(
        r.complete(10),
        "open connections continue when disabled: {r:?}"
    );

    // Five more checks of the other backend (100 ms apart), and none of this one.
    let other_from = checks_run(&splicer, s2.addr);
    wait_until(
        WAIT,
        "the other backend is checked 5 more times",
        || async { checks_run(&splicer, s2.addr) >= other_from + 5 },
    )
    .await;
    assert_eq!(
        checks_run(&splicer, s1.addr),
        frozen,
        "a disabled backend must not be checked"
    );
    let b = backend_json(splicer.admin, s1.addr).await;
    assert_eq!(b["state"], "disabled", "{b}");
    assert_eq!(
        b["last_check"], last_check,
        "last_check must not advance: {b}"
    );
    // Disabling again is harmless.
    act(splicer.admin, s1.addr, "disable", "disabled").await;

    // Enable: down at once (its last check is stale), up after rise = 3 passes.
    act(splicer.admin, s1.addr, "enable", "down").await;
    let enabled_at = Instant::now();
    assert!(
        shorts(splicer.addr, 2).await.iter().all(|s| *s == s2.addr) || {
            // Only acceptable if it already came up meanwhile.
            backend_json(splicer.admin, s1.addr).await["state"] == "up"
        }
    );
    wait_state(splicer.admin, s1.addr, "up").await;
    let took = enabled_at.elapsed();
    // Enabling starts the checks afresh: one at once, the next 10-100 ms later (`first_gap`),
    // the third 100 ms after that, so rise = 3 takes at least 110 ms.
    assert!(
        took >= Duration::from_millis(100),
        "up {took:?} after enable: one check is not rise = 3"
    );
    assert!(
        checks_run(&splicer, s1.addr) >= frozen + 3,
        "checks resumed"
    );
    let served = shorts(splicer.addr, 4).await;
    assert_eq!(
        served.iter().filter(|s| **s == s1.addr).count(),
        2,
        "back in rotation: {served:?}"
    );
    splicer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_changed_by_reload_applies_to_the_next_drain() {
    let (s1, s2) = (stream_backend().await, stream_backend().await);
    let file = ConfigFile::new(&config(&[s1.addr, s2.addr], "30s", 1));
    let mut splicer = start_splicer_file(&file.path).await;
    wait_state(splicer.admin, s1.addr, "up").await;
    wait_state(splicer.admin, s2.addr, "up").await;

    // Only runtime.drain_timeout changes; it applies at once (admin-api.md "Reload").
    file.write(&config(&[s1.addr, s2.addr], "300ms", 1));
    let (code, body) = http(splicer.admin, "POST", "/reload", "").await;
    assert_eq!(code, 200, "{body}");

    let long = transfer_to(splicer.addr, s1.addr, 40).await;
    let receiving = tokio::spawn(long.receive());
    act(splicer.admin, s1.addr, "drain", "draining").await;
    let drained_at = Instant::now();
    let r = receiving.await.expect("receiver");
    let took = drained_at.elapsed();
    // Cut before the transfer's 2 s end: the old 30 s drain_timeout would have let it finish.
    assert!(
        r.bytes < 40 * CHUNK,
        "cut after {took:?} ({r:?}); the reloaded drain_timeout is 300ms"
    );
    splicer.shutdown().await;
}

/// The access log of a `splicer run` child, line by line as it appears.
fn collect_stdout(proc: &mut Proc) -> Arc<Mutex<Vec<String>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    collect_lines(proc.child.stdout.take().expect("stdout"), out.clone());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_logged_as_drained() {
    let (s1, s2) = (stream_backend().await, stream_backend().await);
    let mut proc = Proc::start(Stdout::Piped, 1, |admin, l| {
        format!(
            "[admin]\nbind = \"{admin}\"\n\n\
             [runtime]\nworkers = 2\ndrain_timeout = \"300ms\"\naccess_log = true\n\n\
             [[listener]]\nname = \"front\"\nbind = \"{}\"\npool = \"p\"\n\n\
             [[pool]]\nname = \"p\"\nbackends = [\"{}\", \"{}\"]\n\n\
             [pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\n",
            l[0], s1.addr, s2.addr
        )
    })
    .await;
    let stdout = collect_stdout(&mut proc);
    let (admin, listen) = (proc.admin(), proc.listeners()[0]);
    wait_state(admin, s1.addr, "up").await;
    wait_state(admin, s2.addr, "up").await;

    let long = transfer_to(listen, s1.addr, 40).await;
    let client = long.stream.local_addr().expect("client addr");
    let receiving = tokio::spawn(long.receive());
    act(admin, s1.addr, "drain", "draining").await;
    let r = receiving.await.expect("receiver");
    assert!(
        r.bytes < 40 * CHUNK,
        "the transfer should have been cut: {r:?}"
    );

    let wanted = format!("client={client} ");
    wait_until(WAIT, "the cut connection's access-log line", || async {
        stdout
            .lock()
            .map(|l| l.iter().any(|line| line.contains(&wanted)))
            .unwrap_or(false)
    })
    .await;
    let line = stdout
        .lock()
        .expect("lines")
        .iter()
        .find(|line| line.contains(&wanted))
        .cloned()
        .expect("the line");
    let address_line = s1.addr.to_string().len() + 1;
    for field in [
        format!("backend={}", s1.addr),
        format!("to_backend={}", "GO 40\n".len()),
        format!("to_client={}", address_line + r.bytes),
    ] {
        assert!(
            line.split(' ').any(|f| f == field),
            "`{field}` missing from: {line}"
        );
    }
    assert!(line.ends_with(" end=drained"), "not end=drained: {line}");
    drop(proc);
}
