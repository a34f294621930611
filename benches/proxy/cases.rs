//! The data-path cases: (a) bulk throughput, (b) new connections per second, (c) added latency.
//! Each starts every proxy once, then alternates the targets run by run, so slow drifts of a
//! busy machine hit all of them alike.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::backends;
use crate::report::{num, Better, Report, Samples};
use crate::sys;
use crate::targets::{Check, Kind, Proxy};
use crate::Opts;

pub const GIB: u64 = 1 << 30;
/// Bytes per write(2) of the bulk senders.
const CHUNK: usize = 256 * 1024;
/// Socket timeouts of the load generator: a stuck proxy fails a run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent client threads of the connection-rate case.
pub const CONN_THREADS: usize = 4;
/// Request and response size of the connection-rate case and the ping-pong.
pub const MSG: usize = 64;
/// Upper bound on connections per client thread per run, whatever the time limit.
const MAX_CONNS_PER_THREAD: u64 = 2_000_000;
/// Round trips before the measured ones of each ping-pong run.
const WARMUP_ROUNDS: usize = 1_000;

/// One column of a case: a direct connection, or a proxy process.
pub struct Target<'a> {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub proxy: Option<&'a Proxy>,
}

impl Target<'_> {
    pub fn cpu(&self) -> Option<f64> {
        self.proxy.map(Proxy::cpu)
    }
}

/// Starts every available proxy in front of `backend`, pinned to `core`.
pub fn start_proxies(o: &Opts, backend: SocketAddr, core: Option<usize>) -> Vec<Proxy> {
    o.setup
        .proxy_kinds()
        .into_iter()
        .map(|k| Proxy::start(&o.setup, k, backend, Check::None, core))
        .collect()
}

/// Direct first, then the proxies in their start order.
pub fn targets(direct: SocketAddr, proxies: &[Proxy]) -> Vec<Target<'_>> {
    std::iter::once(Target {
        kind: Kind::Direct,
        addr: direct,
        proxy: None,
    })
    .chain(proxies.iter().map(|p| Target {
        kind: p.kind,
        addr: p.addr,
        proxy: Some(p),
    }))
    .collect()
}

/// CPU seconds of the bench process itself: the load generator and the in-process backends.
fn load_cpu() -> f64 {
    sys::cpu_seconds(std::process::id())
}

/// Share of one CPU that `cpu_s` seconds of CPU over `wall_s` seconds is: a side near 100% is
/// what limits the figure.
fn busy(cpu_s: f64, wall_s: f64) -> String {
    format!("{:.0}%", cpu_s / wall_s * 100.0)
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// (a) Bulk throughput: `o.bytes` in total through 1 connection and through 16 at once, each
/// timed from the first byte to the discard backend's acknowledgement of the last.
pub fn throughput(o: &Opts, report: &mut Report) {
    println!(
        "(a) throughput: {} MiB in total through 1 and through 16 connections to a discard backend",
        o.bytes >> 20
    );
    let backend = backends::discard();
    let proxies = start_proxies(o, backend.addr, o.setup.proxy_core);
    let targets = targets(backend.addr, &proxies);
    let gib = o.bytes as f64 / GIB as f64;
    for conns in [1usize, 16] {
        let (mut rate, mut cpu) = (Samples::default(), Samples::default());
        for run in 1..=o.runs {
            for t in &targets {
                let (c0, l0) = (t.cpu(), load_cpu());
                match push(t.addr, o.bytes, conns) {
                    Ok(secs) => {
                        rate.push(t.kind, gib / secs);
                        let mut line = format!(
                            "    {conns:>2} conn  run {run}/{}  {:<22} {:>7.3} GiB/s",
                            o.runs,
                            t.kind.label(),
                            gib / secs
                        );
                        if let (Some(c0), Some(c1)) = (c0, t.cpu()) {
                            cpu.push(t.kind, (c1 - c0) / gib);
                            line += &format!(
                                "   proxy CPU {:.3} s/GiB, busy {}",
                                (c1 - c0) / gib,
                                busy(c1 - c0, secs)
                            );
                        }
                        line += &format!("   load side busy {}", busy(load_cpu() - l0, secs));
                        println!("{line}");
                    }
                    Err(e) => report.note(format!(
                        "throughput, {conns} conn, {} run {run}: {e}",
                        t.kind.label()
                    )),
                }
            }
        }
        let what = if conns == 1 { "1 conn" } else { "16 conns" };
        report.add(
            format!("throughput, {what} [GiB/s]"),
            Better::Higher,
            true,
            o.runs,
            &rate,
        );
        report.add(
            format!("proxy CPU per GiB, {what} [s]"),
            Better::Lower,
            false,
            o.runs,
            &cpu,
        );
    }
}

/// Sends `total` bytes split over `conns` connections at once; seconds from the start (all
/// connected) to the last acknowledgement.
fn push(addr: SocketAddr, total: u64, conns: usize) -> Result<f64, String> {
    let per = total / conns as u64;
    let socks = (0..conns)
        .map(|_| connect(addr))
        .collect::<Result<Vec<_>, _>>()?;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = if i + 1 == conns {
                total - per * (conns as u64 - 1)
            } else {
                per
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let buf = vec![0x5au8; CHUNK];
                barrier.wait();
                send_all(s, &buf, bytes)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().map_err(|_| "sender panicked".to_owned())??;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn send_all(mut s: TcpStream, buf: &[u8], bytes: u64) -> Result<(), String> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack)
        .map_err(|e| format!("waiting for the backend's acknowledgement: {e}"))?;
    let got = u64::from_le_bytes(ack);
    if got != bytes {
        return Err(format!("the backend received {got} bytes of {bytes}"));
    }
    Ok(())
}

/// (b) New connections per second: `CONN_THREADS` clients, each in a loop of connect, 64-byte
/// request, 64-byte echo, server closes, client closes; for `o.conn_secs`.
pub fn connrate(o: &Opts, report: &mut Report) {
    println!(
        "(b) new connections: {CONN_THREADS} client threads, each connect + {MSG} B request + {MSG} B \
         response + close, for {} s per run",
        o.conn_secs
    );
    let backend = backends::echo_once(MSG);
    let proxies = start_proxies(o, backend.addr, o.setup.proxy_core);
    let targets = targets(backend.addr, &proxies);
    let (mut rate, mut cpu) = (Samples::default(), Samples::default());
    for run in 1..=o.runs {
        for t in &targets {
            let (c0, l0) = (t.cpu(), load_cpu());
            let r = burst(t.addr, Duration::from_secs_f64(o.conn_secs));
            let (c1, l1) = (t.cpu(), load_cpu());
            if r.ok == 0 {
                report.note(format!(
                    "connections, {} run {run}: none completed ({} errors, first: {})",
                    t.kind.label(),
                    r.errors,
                    r.first_error.unwrap_or_default()
                ));
                continue;
            }
            let per_s = r.ok as f64 / r.secs;
            rate.push(t.kind, per_s);
            let mut line = format!(
                "    run {run}/{}  {:<22} {:>8.0} conn/s ({} in {:.2} s)",
                o.runs,
                t.kind.label(),
                per_s,
                r.ok,
                r.secs
            );
            if let (Some(c0), Some(c1)) = (c0, c1) {
                let us = (c1 - c0) * 1e6 / r.ok as f64;
                cpu.push(t.kind, us);
                line += &format!(
                    "   proxy CPU {us:.1} µs/conn, busy {}",
                    busy(c1 - c0, r.secs)
                );
            }
            line += &format!("   load side busy {}", busy(l1 - l0, r.secs));
            println!("{line}");
            if r.errors > 0 {
                report.note(format!(
                    "connections, {} run {run}: {} of {} failed (first: {})",
                    t.kind.label(),
                    r.errors,
                    r.ok + r.errors,
                    r.first_error.unwrap_or_default()
                ));
            }
            // Let the closing handshakes of this run finish before the next target starts.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    report.add(
        format!("new connections, {MSG} B echo each [conn/s]"),
        Better::Higher,
        true,
        o.runs,
        &rate,
    );
    report.add(
        "proxy CPU per connection [µs]",
        Better::Lower,
        false,
        o.runs,
        &cpu,
    );
}

struct Burst {
    ok: u64,
    errors: u64,
    secs: f64,
    first_error: Option<String>,
}

fn burst(addr: SocketAddr, limit: Duration) -> Burst {
    let start = Instant::now();
    let handles: Vec<_> = (0..CONN_THREADS)
        .map(|i| {
            std::thread::spawn(move || {
                let req = [b'a' + i as u8; MSG];
                let (mut ok, mut errors, mut first) = (0u64, 0u64, None);
                while start.elapsed() < limit && ok < MAX_CONNS_PER_THREAD && errors < 100 {
                    match exchange(addr, &req) {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert(e);
                        }
                    }
                }
                (ok, errors, first)
            })
        })
        .collect();
    let mut b = Burst {
        ok: 0,
        errors: 0,
        secs: 0.0,
        first_error: None,
    };
    for h in handles {
        match h.join() {
            Ok((ok, errors, first)) => {
                b.ok += ok;
                b.errors += errors;
                if b.first_error.is_none() {
                    b.first_error = first;
                }
            }
            Err(_) => b.errors += 1,
        }
    }
    b.secs = start.elapsed().as_secs_f64();
    b
}

fn exchange(addr: SocketAddr, req: &[u8; MSG]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; MSG];
    s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    if &buf != req {
        return Err("wrong echo".to_owned());
    }
    // Wait for the server's close, so the client is never the side left in TIME_WAIT.
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(_) => Err("bytes after the echo".to_owned()),
        Err(e) => Err(format!("waiting for close: {e}")),
    }
}

/// (c) Latency of a 64-byte ping-pong on one open connection (TCP_NODELAY everywhere), direct
/// and through each proxy; the proxies once on their own CPU and once on the client's.
pub fn latency(o: &Opts, report: &mut Report) {
    println!(
        "(c) latency: {MSG} B ping-pong on one open connection, {} round trips per run after \
         {WARMUP_ROUNDS} warm-up ones",
        o.rounds
    );
    let backend = backends::echo_stream();
    // Sets of proxies: on their own CPU, then (when pinning works) on the client's CPU.
    let mut sets: Vec<(String, Vec<Proxy>)> = Vec::new();
    let own = match o.setup.proxy_core {
        Some(c) => format!("proxy on CPU {c}"),
        None => "proxy unpinned".to_owned(),
    };
    sets.push((own, start_proxies(o, backend.addr, o.setup.proxy_core)));
    if let (Some(_), Some(load)) = (o.setup.proxy_core, o.setup.load_core) {
        sets.push((
            format!("proxy on the client's CPU {load}"),
            start_proxies(o, backend.addr, Some(load)),
        ));
    }
    const QS: [(f64, &str); 3] = [(0.50, "p50"), (0.99, "p99"), (0.999, "p99.9")];
    // rtt[set][q], added[set][q], cpu[set]
    let mut rtt: Vec<[Samples; 3]> = sets.iter().map(|_| Default::default()).collect();
    let mut added: Vec<[Samples; 3]> = sets.iter().map(|_| Default::default()).collect();
    let mut cpu: Vec<Samples> = sets.iter().map(|_| Samples::default()).collect();
    let limit = Duration::from_secs(5);
    for run in 1..=o.runs {
        let direct = match ping_pong(backend.addr, None, o.rounds, limit) {
            Ok((h, _, _)) => {
                let q = QS.map(|(q, _)| h.value_at_quantile(q) as f64 / 1e3);
                print_rtt(run, o.runs, "direct", "", &q, None);
                for s in &mut rtt {
                    for (i, v) in q.iter().enumerate() {
                        s[i].push(Kind::Direct, *v);
                    }
                }
                Some(q)
            }
            Err(e) => {
                report.note(format!("latency, direct run {run}: {e}"));
                None
            }
        };
        for (si, (where_, proxies)) in sets.iter().enumerate() {
            for p in proxies {
                match ping_pong(p.addr, Some(p), o.rounds, limit) {
                    Ok((h, n, cpu_s)) => {
                        let us = cpu_s.unwrap_or(f64::NAN) * 1e6 / n as f64;
                        let q = QS.map(|(q, _)| h.value_at_quantile(q) as f64 / 1e3);
                        print_rtt(run, o.runs, p.kind.label(), where_, &q, Some(us));
                        for (i, v) in q.iter().enumerate() {
                            rtt[si][i].push(p.kind, *v);
                            if let Some(d) = direct {
                                added[si][i].push(p.kind, v - d[i]);
                            }
                        }
                        cpu[si].push(p.kind, us);
                    }
                    Err(e) => report.note(format!(
                        "latency, {} ({where_}) run {run}: {e}",
                        p.kind.label()
                    )),
                }
            }
        }
    }
    for (si, (where_, _)) in sets.iter().enumerate() {
        for (i, (_, name)) in QS.iter().enumerate() {
            report.add(
                format!("round trip {name}, {where_} [µs]"),
                Better::Lower,
                true,
                o.runs,
                &rtt[si][i],
            );
        }
        for (i, (_, name)) in QS.iter().enumerate() {
            report.add(
                format!("added {name}, {where_} [µs]"),
                Better::Lower,
                false,
                o.runs,
                &added[si][i],
            );
        }
        report.add(
            format!("proxy CPU per round trip, {where_} [µs]"),
            Better::Lower,
            false,
            o.runs,
            &cpu[si],
        );
    }
}

fn print_rtt(run: usize, runs: usize, label: &str, where_: &str, q: &[f64; 3], cpu: Option<f64>) {
    let mut line = format!(
        "    run {run}/{runs}  {label:<22} {where_:<28} p50 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs",
        num(q[0]),
        num(q[1]),
        num(q[2])
    );
    if let Some(us) = cpu {
        line += &format!("   proxy CPU {us:.1} µs/rt");
    }
    println!("{line}");
}

/// `rounds` timed round trips (fewer if `limit` passes first); their histogram in ns, and count.
/// With `proxy`, also the proxy's CPU seconds over the timed round trips.
fn ping_pong(
    addr: SocketAddr,
    proxy: Option<&Proxy>,
    rounds: usize,
    limit: Duration,
) -> Result<(Histogram<u64>, u64, Option<f64>), String> {
    let mut s = connect(addr)?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let msg = [0x42u8; MSG];
    let mut buf = [0u8; MSG];
    let mut round = |s: &mut TcpStream| -> Result<(), String> {
        s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
        s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
        if buf != msg {
            return Err("wrong echo".to_owned());
        }
        Ok(())
    };
    for _ in 0..WARMUP_ROUNDS {
        round(&mut s)?;
    }
    // 1 ns to 60 s at 3 significant digits.
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let c0 = proxy.map(Proxy::cpu);
    let start = Instant::now();
    for i in 0..rounds {
        let t = Instant::now();
        round(&mut s)?;
        h.saturating_record(t.elapsed().as_nanos() as u64);
        if i % 256 == 255 && start.elapsed() > limit {
            break;
        }
    }
    let cpu = proxy.zip(c0).map(|(p, c0)| p.cpu() - c0);
    let n = h.len();
    Ok((h, n, cpu))
}
