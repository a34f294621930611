//! The splice path's pipe strategies measured against each other, in one run, alternating:
//! `pooled` (a per-thread pool lends a pipe for each bulk burst; what splicer ships), `kept`
//! (a direction creates its pipe at its first bulk burst and keeps it for the connection's
//! life) and `sized` (as kept, shrunk to 16 KiB with F_SETPIPE_SZ). See docs/benchmarks.md.
//!
//! ```text
//! cargo bench --bench pipes                 # runs 3, 1 GiB bulk, 2,000 idle connections
//! cargo bench --bench pipes -- quick        # 1 run, small sizes: checks the harness
//! cargo bench --bench pipes -- runs 5
//! ```
//!
//! The proxy is splicer's own pump (`splicer::net::pump::run`) on a single-threaded tokio
//! runtime in a thread of this process pinned to CPU 0; the load and the backends are threads
//! pinned to CPU 1. CPU figures are that one thread's utime + stime (/proc/self/task/TID/stat),
//! so they are the proxy's own cost, kernel work for its syscalls included.

#[allow(dead_code)]
#[path = "proxy/backends.rs"]
mod backends;
#[allow(dead_code)]
#[path = "proxy/sys.rs"]
mod sys;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use splicer::net::pump::{self, Limits, Traffic};
use splicer::net::splice::{self, PipeStrategy};
use tokio_util::sync::CancellationToken;

const STRATEGIES: [(PipeStrategy, &str); 3] = [
    (PipeStrategy::Pooled, "pooled"),
    (PipeStrategy::Kept, "kept"),
    (PipeStrategy::Sized, "sized"),
];
const GIB: u64 = 1 << 30;
/// Bytes of each answer in the responses and idle cases: a bulk burst, so it is spliced.
const ANSWER: usize = 256 * 1024;
const REQUEST: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_THREADS: usize = 4;
/// Upper bound on connections per client thread in the responses case.
const MAX_CONNS_PER_THREAD: u64 = 1_000_000;

struct Opts {
    runs: usize,
    bytes: u64,
    secs: f64,
    idle: usize,
}

fn main() {
    let mut opts = Opts {
        runs: 3,
        bytes: GIB,
        secs: 2.0,
        idle: 2_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut args = args.into_iter().filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        match a.as_str() {
            "quick" => {
                opts = Opts {
                    runs: 1,
                    bytes: 128 << 20,
                    secs: 0.5,
                    idle: 300,
                }
            }
            "runs" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 && n <= 50 => opts.runs = n,
                _ => fail("runs takes a number from 1 to 50"),
            },
            other => fail(&format!(
                "unknown argument {other:?}; usage: cargo bench --bench pipes -- [quick] [runs N]"
            )),
        }
    }
    sys::raise_nofile();
    let cpus = sys::allowed_cpus();
    let (proxy_core, load_core) = match cpus.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    println!("splicer pipe strategies, {}", sys::utc_now());
    println!("machine: {}", sys::machine());
    println!(
        "proxy thread on CPU {}, load and backends on CPU {}; {} alternating run(s), medians (min–max)",
        show(proxy_core),
        show(load_core),
        opts.runs
    );
    if let Some(c) = load_core {
        let _ = sys::pin_current_thread(c);
    }

    let mut rows: Vec<(String, [Vec<f64>; 3])> = Vec::new();
    let mut push = |name: &str, i: usize, v: f64| {
        if let Some(r) = rows.iter_mut().find(|r| r.0 == name) {
            r.1[i].push(v);
        } else {
            let mut r = (name.to_owned(), [Vec::new(), Vec::new(), Vec::new()]);
            r.1[i].push(v);
            rows.push(r);
        }
    };
    let pipe_bytes_each: Vec<f64> = STRATEGIES.iter().map(|&(s, _)| pipe_slab(s)).collect();
    println!(
        "kernel memory per empty pipe (slab growth over 4,000): default {:.0} B, sized to {} KiB {:.0} B",
        pipe_bytes_each[0],
        splice::SIZED_PIPE >> 10,
        pipe_bytes_each[2]
    );
    // Backend threads inherit this thread's CPU (the load side).
    let discard_server = backends::discard();
    let discard = discard_server.addr;
    let answer = answer_backend();
    for run in 1..=opts.runs {
        for (i, &(strategy, label)) in STRATEGIES.iter().enumerate() {
            splice::set_strategy(strategy);
            for conns in [1usize, 16] {
                let proxy = Proxy::start(discard, proxy_core);
                let c0 = proxy.cpu();
                let secs = push_bulk(proxy.addr, opts.bytes, conns);
                let cpu = proxy.cpu() - c0;
                let gib = opts.bytes as f64 / GIB as f64;
                println!(
                    "  run {run} {label:<6} bulk {conns:>2} conn   {:>6.3} GiB/s   proxy CPU {:.3} s/GiB",
                    gib / secs,
                    cpu / gib
                );
                push(&format!("bulk, {conns} conn [GiB/s] ↑"), i, gib / secs);
                push(
                    &format!("proxy CPU per GiB, {conns} conn [s] ↓"),
                    i,
                    cpu / gib,
                );
            }
            let proxy = Proxy::start(answer, proxy_core);
            let c0 = proxy.cpu();
            let (n, secs) = responses(proxy.addr, opts.secs);
            let us = (proxy.cpu() - c0) * 1e6 / n.max(1) as f64;
            println!(
                "  run {run} {label:<6} connections with a {} KiB answer: {:>6.0} conn/s   proxy CPU {us:.1} µs/conn",
                ANSWER >> 10,
                n as f64 / secs
            );
            push(
                "connections, 256 KiB answer each [conn/s] ↑",
                i,
                n as f64 / secs,
            );
            push("proxy CPU per connection [µs] ↓", i, us);
            drop(proxy);
            let proxy = Proxy::start(answer, proxy_core);
            let (pipes, fds) = idle_after_answer(proxy.addr, opts.idle);
            let pipe_bytes = pipes * pipe_bytes_each[i];
            println!(
                "  run {run} {label:<6} {} idle connections after an answer: {pipes:.2} pipes kept per connection \
                 ({pipe_bytes:.0} B of kernel memory), {fds:.2} fds per connection in all",
                opts.idle
            );
            push(
                "pipes kept per idle connection (after an answer) ↓",
                i,
                pipes,
            );
            push(
                "kernel memory in pipes per idle connection [B] ↓",
                i,
                pipe_bytes,
            );
            push(
                "fds per idle connection, client + proxy + backend ↓",
                i,
                fds,
            );
        }
    }
    println!();
    println!("| figure | pooled | kept | sized |");
    println!("| --- | --- | --- | --- |");
    for (name, cols) in &rows {
        let cells: Vec<String> = cols.iter().map(|v| summary(v)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

fn show(core: Option<usize>) -> String {
    core.map_or("any".to_owned(), |c| c.to_string())
}

/// "median (min–max)" with a precision that suits the magnitude.
fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let fmt = |x: f64| {
        if x.abs() >= 100.0 {
            format!("{x:.0}")
        } else if x.abs() >= 1.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.3}")
        }
    };
    match (s.first(), s.get(s.len() / 2), s.last()) {
        (Some(lo), Some(mid), Some(hi)) if s.len() > 1 => {
            format!("{} ({}–{})", fmt(*mid), fmt(*lo), fmt(*hi))
        }
        (_, Some(mid), _) => fmt(*mid),
        _ => "–".to_owned(),
    }
}

/// The proxy under test: a thread running splicer's pump on a single-threaded runtime.
struct Proxy {
    addr: SocketAddr,
    tid: i64,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(backend: SocketAddr, core: Option<usize>) -> Proxy {
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Some(c) = core {
                let _ = sys::pin_current_thread(c);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(backend, stop2, tx));
        });
        let (addr, tid) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the proxy thread starts");
        Proxy {
            addr,
            tid,
            stop,
            thread: Some(thread),
        }
    }

    /// The proxy thread's CPU time so far (utime + stime), in seconds.
    fn cpu(&self) -> f64 {
        sys::thread_cpu_seconds(self.tid)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    backend: SocketAddr,
    stop: CancellationToken,
    ready: mpsc::Sender<(SocketAddr, i64)>,
) {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let std_listener =
        splicer::net::listener::bind("proxy", any, 4096, false).expect("bind the proxy");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let addr = listener.local_addr().expect("addr");
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as i64;
    let _ = ready.send((addr, tid));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (client, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let stop = stop.clone();
        tasks.spawn(async move {
            let Ok(server) = splicer::net::connect::connect(backend, IO_TIMEOUT).await else {
                return;
            };
            let cut = CancellationToken::new();
            let traffic = Traffic::default();
            let limits = Limits {
                idle_timeout: None,
                stop: &stop,
                cut: &cut,
            };
            pump::run(&client, &server, limits, &traffic, &|_| {}, &|_| {}).await;
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    s
}

/// Reads a 64-byte request, answers `ANSWER` bytes, then waits for the client's EOF (so the
/// idle case can keep connections open) and closes.
fn answer_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
                let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                let mut req = [0u8; REQUEST];
                if s.read_exact(&mut req).is_err() {
                    return;
                }
                let answer = vec![0x5au8; ANSWER];
                if s.write_all(&answer).is_err() {
                    return;
                }
                let mut rest = [0u8; 64];
                while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Sends `total` bytes over `conns` connections to the discard backend; seconds taken.
fn push_bulk(addr: SocketAddr, total: u64, conns: usize) -> f64 {
    let per = total / conns as u64;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let mut s = connect(addr);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let buf = vec![0x5au8; 256 * 1024];
                barrier.wait();
                let mut left = per;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    s.write_all(&buf[..n]).expect("bulk write");
                    left -= n as u64;
                }
                s.shutdown(Shutdown::Write).expect("shutdown");
                let mut count = [0u8; 8];
                s.read_exact(&mut count).expect("the backend's count");
                assert_eq!(u64::from_le_bytes(count), per, "bytes lost");
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bulk sender");
    }
    start.elapsed().as_secs_f64()
}

/// `CLIENT_THREADS` clients in a loop of connect, request, whole answer, close, for `secs`;
/// returns (connections, seconds).
fn responses(addr: SocketAddr, secs: f64) -> (u64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                for _ in 0..MAX_CONNS_PER_THREAD {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    drop(ask(addr, &mut buf));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("client thread");
    }
    (done.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

/// Connects, sends a request and reads the whole answer; returns the open connection.
fn ask(addr: SocketAddr, buf: &mut [u8]) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&[1u8; REQUEST]).expect("request");
    let mut got = 0;
    while got < ANSWER {
        match s.read(buf) {
            Ok(0) => panic!("answer cut short at {got} bytes"),
            Ok(n) => got += n,
            Err(e) => panic!("answer: {e}"),
        }
    }
    s
}

/// Kernel slab memory in bytes (/proc/meminfo `Slab`).
fn slab_bytes() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

/// Kernel memory of one empty pipe as `strategy` makes it (inode, files, ring of buffers; an
/// empty pipe holds no data pages): the slab growth over `PIPES` such pipes, median of 3.
fn pipe_slab(strategy: PipeStrategy) -> f64 {
    const PIPES: usize = 4_000;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let before = slab_bytes();
        let mut fds = Vec::with_capacity(PIPES);
        for _ in 0..PIPES {
            let mut p = [0i32; 2];
            // SAFETY: pipe2 writes two fds into the array it is given.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                break;
            }
            if strategy == PipeStrategy::Sized {
                // SAFETY: F_SETPIPE_SZ on a pipe fd this function owns.
                unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, splice::SIZED_PIPE as i32) };
            }
            fds.push(p);
        }
        let per = (slab_bytes() - before) / fds.len().max(1) as f64;
        for p in fds {
            // SAFETY: closing fds this function opened, once.
            unsafe {
                libc::close(p[0]);
                libc::close(p[1]);
            }
        }
        samples.push(per);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[1]
}

/// Opens `n` connections that each get a whole answer and then stay open; returns the pipes the
/// proxy keeps per connection (pipe fds in this process, two per pipe; the proxy is the only
/// user of pipes here) and the fds per connection (client, proxy and backend sockets are all in
/// this process, so only the kept pipes differ between strategies).
fn idle_after_answer(addr: SocketAddr, n: usize) -> (f64, f64) {
    let pid = std::process::id();
    let before = sys::fds(pid);
    let mut open = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..n {
        open.push(ask(addr, &mut buf));
    }
    let after = sys::fds(pid);
    let pipes = after.pipes.saturating_sub(before.pipes) as f64 / 2.0 / n as f64;
    let fds = after.total.saturating_sub(before.total) as f64 / n as f64;
    drop(open);
    // Let the proxy and backends see the closes before the next measurement.
    sys::wait_until(Duration::from_secs(10), || {
        sys::fd_count(pid) <= before.total + 8
    });
    (pipes, fds)
}
