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
#[allow(dead_code)]
#[path = "proxy/sys.rs"]
mod sys;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::IO_TIMEOUT;
use sys::ChildGuard;

const CLIENT_THREADS: u32 = 2;
const SOURCES: u64 = 190;

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

/// Connections completed per second against `addr` for `secs`, each from one of `SOURCES`
/// loopback source addresses in turn.
fn rate(addr: SocketAddr, secs: f64) -> f64 {
    let (done, elapsed) = support::closed_loop(CLIENT_THREADS, secs, move |t, i| {
        let source = 10 + ((i * u64::from(CLIENT_THREADS) + u64::from(t)) % SOURCES) as u8;
        one_connection(IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)), addr)
    });
    done as f64 / elapsed
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
    support::byte_exchange(socket.into())
}

/// One splicer process with `listener_extra` in its listener table.
struct Splicer {
    _child: ChildGuard,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Splicer {
    fn start(backend: SocketAddr, listener_extra: &str) -> Splicer {
        let addr = support::free_addr();
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
        let child = ChildGuard(child);
        let listening =
            sys::wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
        assert!(listening, "splicer did not listen");
        Splicer {
            _child: child,
            addr,
            _dir: dir,
        }
    }
}
