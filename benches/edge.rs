//! The hot-path cost of the edge protection (DESIGN.md §9): new connections per second through
//! splicer without any edge setting and with `allow`/`deny` lists and both per-client limits
//! (set high enough never to refuse), in one run, alternating. See docs/benchmarks.md.
//!
//! ```text
//! cargo bench --bench edge                  # runs 5, 3 s each
//! cargo bench --bench edge -- runs 3 secs 2
//! ```
//!
//! Each splicer is its own process (the binary under test, `workers = 1`, no access log, no
//! health checks); the load is two threads, each connection from one of 190 loopback source
//! addresses (so the per-client table sees many clients): connect, send a byte, read the
//! backend's byte, close. Loopback only; every loop is bounded by its run's time.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT_THREADS: u8 = 2;
const SOURCES: u8 = 190;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let Some((runs, secs)) =
        support::runs_and_secs("usage: cargo bench --bench edge -- [runs N] [secs S]")
    else {
        return;
    };
    let backend = support::byte_backend("127.0.0.1");
    let plain = Splicer::start(backend, "");
    let deny: Vec<String> = (0..64).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    let edge = Splicer::start(
        backend,
        &format!(
            "allow = [\"127.0.0.0/8\"]\ndeny = [{}]\nper_client_max_connections = 1000\nper_client_rate = \"1000000/s\"",
            deny.join(", ")
        ),
    );
    println!(
        "new connections/s, {CLIENT_THREADS} client threads, {runs} alternating runs of {secs} s"
    );
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for run in 0..runs {
        without.push(rate(plain.addr, secs));
        with.push(rate(edge.addr, secs));
        println!(
            "run {}: without {:.0}/s, with {:.0}/s",
            run + 1,
            without[run],
            with[run]
        );
    }
    let (a, b) = (support::median(&mut without), support::median(&mut with));
    println!("| | new connections/s (median) |");
    println!("| --- | ---: |");
    println!("| no edge settings | {a:.0} |");
    println!(
        "| allow + 64 deny CIDRs + per-client limit and rate | {b:.0} ({:+.1}%) |",
        (b / a - 1.0) * 100.0
    );
}

/// Connections completed per second against `addr` for `secs`.
fn rate(addr: SocketAddr, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let source = 10
                        + ((i * u64::from(CLIENT_THREADS) + u64::from(t)) % u64::from(SOURCES))
                            as u8;
                    i += 1;
                    if one_connection(IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)), addr) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn one_connection(source: IpAddr, to: SocketAddr) -> bool {
    let socket = match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) {
        Ok(s) => s,
        Err(_) => return false,
    };
    if socket.bind(&SocketAddr::new(source, 0).into()).is_err() {
        return false;
    }
    if socket.connect_timeout(&to.into(), IO_TIMEOUT).is_err() {
        return false;
    }
    let mut s: TcpStream = socket.into();
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut b = [7u8; 1];
    s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok()
}

/// One splicer process with `listener_extra` in its listener table.
struct Splicer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Splicer {
    fn start(backend: SocketAddr, listener_extra: &str) -> Splicer {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\nworkers = 1\naccess_log = false\n[[listener]]\nname = \"l\"\nbind = \"{addr}\"\npool = \"p\"\n{listener_extra}\n[[pool]]\nname = \"p\"\nbackends = [\"{backend}\"]\n[pool.health]\ncheck = \"none\"\n"
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_splicer"))
            .args(["run", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("splicer starts");
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "splicer did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Splicer {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Splicer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
