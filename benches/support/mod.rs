//! Pieces several benches share (each bench includes this file with `#[path]`): a trivial
//! backend, a closed-loop client load, a tiny HTTP client, the median, and the `runs N secs S`
//! arguments. Process plumbing (children, CPU from /proc) is proxy/sys.rs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a bench's socket read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A backend on `ip` (port chosen by the kernel) that answers each connection's byte with one
/// byte, then closes.
pub fn byte_backend(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind a byte backend");
    let addr = listener.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    addr
}

/// A loopback address with a port free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr")
}

/// Sends one byte on `s` and reads one back (what [`byte_backend`] does): whether it worked.
pub fn byte_exchange(mut s: TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut b = [7u8; 1];
    s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok()
}

/// Runs `threads` client threads for `secs`, each calling `one(thread, attempt)` back to back
/// (a closed loop: the next connection starts when the last ended); returns how many calls
/// returned true, and over how many seconds.
pub fn closed_loop<F>(threads: u32, secs: f64, one: F) -> (u64, f64)
where
    F: Fn(u32, u64) -> bool + Send + Sync + 'static,
{
    let one = Arc::new(one);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (one, done, stop) = (one.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut attempt = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if one(t, attempt) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    attempt += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    (
        done.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    )
}

/// How long an HTTP answer may take: a reload of 20,000 backends answers only once applied.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request without a body: (status, body), or `None`.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The median of `v` (sorted in place); `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `[runs N] [secs S]` after `--bench` (defaults 5 and 3 s); `None` when cargo did not ask for
/// a bench (`cargo test --all-targets` runs bench binaries without `--bench`: nothing to
/// measure then). Exits 2 with `usage` on anything else.
pub fn runs_and_secs(usage: &str) -> Option<(usize, f64)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return None;
    }
    let (mut runs, mut secs) = (5usize, 3.0f64);
    let mut it = args.iter().filter(|a| *a != "--bench");
    while let Some(a) = it.next() {
        let value = it.next().and_then(|v| v.parse::<f64>().ok());
        match (a.as_str(), value) {
            ("runs", Some(n)) if (1.0..=50.0).contains(&n) => runs = n as usize,
            ("secs", Some(s)) if (0.5..=60.0).contains(&s) => secs = s,
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    Some((runs, secs))
}
