//! First measurements of the data path: bulk throughput through one connection (splicer vs a
//! direct connection), and memory per idle proxied connection.
//!
//! `cargo bench --bench proxy -- [throughput] [idle N]` (default: both, idle 9900). Everything
//! runs on loopback. The load generator uses blocking std sockets on plain threads so its own
//! cost stays small and predictable; splicer runs as its own process (the release binary) with
//! `workers = 1`, so its CPU time and RSS can be read from /proc.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;
/// Alternating runs per target; the median is reported with the min–max.
const RUNS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--sink") {
        let addr = args.get(pos + 1).and_then(|a| a.parse().ok()).expect("--sink ADDR");
        return hold_sink(addr);
    }
    let want = |name: &str| args.iter().any(|a| a == name);
    let all = !want("throughput") && !want("idle");
    if all || want("throughput") {
        throughput();
    }
    if all || want("idle") {
        let n = args
            .iter()
            .position(|a| a == "idle")
            .and_then(|p| args.get(p + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(9900);
        idle(n);
    }
}

/// A backend that reads and discards everything; answers one byte after the client's EOF.
fn discard_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; CHUNK];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"k");
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Splicer {
    child: Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Splicer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_splicer(backend: SocketAddr) -> Splicer {
    let port = free_port();
    let admin = free_port();
    let dir = std::env::temp_dir().join(format!("splicer-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let cfg = dir.join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nbind = \"127.0.0.1:{admin}\"\n[runtime]\nworkers = 1\naccess_log = false\n\
             [[listener]]\nname = \"bench\"\nbind = \"127.0.0.1:{port}\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\nbackends = [\"{backend}\"]\n[pool.health]\ncheck = \"none\"\n"
        ),
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_splicer"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn splicer");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "splicer did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Splicer {
        child,
        addr,
        _dir: dir,
    }
}

/// Seconds to push `bytes` through one connection to `addr` (until the backend acknowledges).
fn push(addr: SocketAddr, bytes: u64) -> f64 {
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).expect("ack");
    start.elapsed().as_secs_f64()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the ")".
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn throughput() {
    let backend = discard_server();
    let splicer = start_splicer(backend);
    let pid = splicer.child.id();
    let (mut direct, mut proxied, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        direct.push(GIB as f64 / push(backend, GIB) / GIB as f64);
        let c0 = cpu_seconds(pid);
        proxied.push(GIB as f64 / push(splicer.addr, GIB) / GIB as f64);
        cpu.push(cpu_seconds(pid) - c0);
    }
    let range = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        let max = v.iter().cloned().fold(0.0, f64::max);
        format!("{min:.2}–{max:.2}")
    };
    let (rd, rp) = (range(&direct), range(&proxied));
    let (d, p, c) = (median(&mut direct), median(&mut proxied), median(&mut cpu));
    println!("throughput, 1 GiB through one connection, median of {RUNS} alternating runs:");
    println!("  direct   {d:6.2} GiB/s  ({rd})");
    println!("  splicer  {p:6.2} GiB/s  ({rp})  = {:.0}% of direct; splicer CPU {c:.2} s per GiB", p / d * 100.0);
}

/// Child-process role: accept connections on `addr` and hold them, reading nothing.
fn hold_sink(addr: SocketAddr) {
    let l = TcpListener::bind(addr).expect("sink bind");
    let mut held = Vec::new();
    for s in l.incoming() {
        match s {
            Ok(s) => held.push(s),
            Err(e) => eprintln!("sink accept: {e}"),
        }
    }
}

fn idle(n: usize) {
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut sink = Command::new(std::env::current_exe().expect("exe"))
        .args(["--bench", "--sink", &sink_addr.to_string()])
        .spawn()
        .expect("spawn sink");
    let start = Instant::now();
    while TcpStream::connect(sink_addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let splicer = start_splicer(sink_addr);
    let pid = splicer.child.id();
    // Warm up the runtime and allocator with a few connections first.
    let warm: Vec<TcpStream> = (0..100).filter_map(|_| TcpStream::connect(splicer.addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(splicer.addr) {
            Ok(s) => conns.push(s),
            Err(e) => {
                eprintln!("connect {}: {e}", conns.len());
                break;
            }
        }
    }
    let opened = t0.elapsed();
    // Let splicer finish connecting every backend side before reading its memory.
    let fd_target = conns.len() * 2;
    let settle = Instant::now();
    loop {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        if fds >= fd_target || settle.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / conns.len().max(1) as f64;
    println!("idle connections: {} opened in {:.2} s", conns.len(), opened.as_secs_f64());
    println!("  splicer RSS {before} KiB -> {after} KiB: {per:.0} bytes per idle proxied connection; {fds} fds open");
    drop(conns);
    let _ = sink.kill();
    let _ = sink.wait();
}
