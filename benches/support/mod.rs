//! Pieces several benches share (each bench includes this file with `#[path]`): a trivial
//! backend, the median, and the `runs N secs S` arguments.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

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
