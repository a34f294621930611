//! (e) From a health-check result to new connections seeing the changed live set.
//!
//! The proxy has one backend (an echo server) checked over plain HTTP on a separate port every
//! 100 ms with rise 1 / fall 1; with that backend down it must close new connections at once
//! (splicer `fail_open = false`; HAProxy has no other server). A flip makes the bench's health
//! server answer the other status; the bench notes when the first check with the new status
//! arrives and when its answer has been written, and from the arrival on opens new connections
//! back to back (write 1 byte, expect its echo) until one is refused (down) or served again (up).
//! The figure is from the answer to the end of that first changed connection: an upper bound,
//! whose resolution is the duration of one probe connection (printed).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::backends::{self, HealthEvent, HealthServer};
use crate::report::{num, quantile, Better, Report, Samples};
use crate::targets::{Check, Kind, Proxy, CHECK_INTERVAL_MS};
use crate::Opts;

/// Most time to wait for each step of a flip.
const STEP_LIMIT: Duration = Duration::from_secs(2);

/// One probe connection: true when the proxy routed it (the byte came back).
fn routed(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"?").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1))
}

struct Flip {
    /// From the check's answer to the end of the first probe that saw the change (µs; negative
    /// would mean the change was seen before the answer was written).
    seen_us: f64,
    /// Duration of that probe: the resolution of `seen_us` (µs).
    probe_us: f64,
    /// Probe connections it took.
    probes: u32,
}

/// `a - b` in µs, signed.
fn signed_us(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64() * 1e6,
        None => -(b.duration_since(a).as_secs_f64() * 1e6),
    }
}

fn flip(
    hs: &HealthServer,
    addr: SocketAddr,
    status: u16,
    want_routed: bool,
) -> Result<Flip, String> {
    hs.flip(status);
    match hs.next_event(STEP_LIMIT + Duration::from_millis(2 * CHECK_INTERVAL_MS)) {
        Some(HealthEvent::Arrived) => {}
        other => {
            return Err(format!(
                "no check arrived after the flip to {status} ({other:?})"
            ))
        }
    }
    let deadline = Instant::now() + STEP_LIMIT;
    let mut probes = 0u32;
    let (t0, t1) = loop {
        let t0 = Instant::now();
        let r = routed(addr);
        let t1 = Instant::now();
        probes += 1;
        if r == want_routed {
            break (t0, t1);
        }
        if t1 > deadline {
            return Err(format!(
                "no new connection was {} within {STEP_LIMIT:?} of the check answering {status}",
                if want_routed { "served" } else { "refused" }
            ));
        }
    };
    let answered = match hs.next_event(STEP_LIMIT) {
        Some(HealthEvent::Answered(t)) => t,
        other => return Err(format!("the check was not answered ({other:?})")),
    };
    Ok(Flip {
        seen_us: signed_us(t1, answered),
        probe_us: signed_us(t1, t0),
        probes,
    })
}

/// Runs `o.flips` down-and-up flips per proxy, the proxies taking turns flip by flip.
pub fn health(o: &Opts, report: &mut Report) {
    println!(
        "(e) health flips: HTTP check every {CHECK_INTERVAL_MS} ms, rise 1, fall 1; {} flips down \
         and up per proxy; from the check's answer to the first new connection refused / served",
        o.flips
    );
    let data = backends::echo_stream();
    let mut kinds = vec![Kind::Splicer];
    if o.setup.haproxy.is_some() {
        // Splicing plays no part here: one HAProxy mode is enough.
        kinds.push(Kind::HaproxyAuto);
    }
    let mut subjects = Vec::new();
    for kind in kinds {
        let hs = HealthServer::start(200);
        let proxy = Proxy::start(
            &o.setup,
            kind,
            data.addr,
            Check::Http { port: hs.port() },
            o.setup.proxy_core,
        );
        let start = Instant::now();
        while !routed(proxy.addr) {
            if start.elapsed() > Duration::from_secs(5) {
                report.note(format!(
                    "health: {} never routed to its healthy backend",
                    kind.label()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        subjects.push((kind, hs, proxy));
    }
    let (mut down, mut up) = (Samples::default(), Samples::default());
    let mut probe_us: Vec<Vec<f64>> = subjects.iter().map(|_| Vec::new()).collect();
    let mut probes: Vec<u32> = subjects.iter().map(|_| 0).collect();
    let mut early: Vec<u32> = subjects.iter().map(|_| 0).collect();
    for _ in 0..o.flips {
        for (si, (kind, hs, proxy)) in subjects.iter().enumerate() {
            for (status, want_routed) in [(503u16, false), (200u16, true)] {
                match flip(hs, proxy.addr, status, want_routed) {
                    Ok(f) => {
                        if f.seen_us < 0.0 {
                            early[si] += 1;
                        }
                        let s = if want_routed { &mut up } else { &mut down };
                        s.push(*kind, f.seen_us);
                        probe_us[si].push(f.probe_us);
                        probes[si] += f.probes;
                    }
                    Err(e) => {
                        report.note(format!("health, {}: {e}", kind.label()));
                        // Get back to a healthy backend before the next flip.
                        hs.flip(200);
                        std::thread::sleep(Duration::from_millis(3 * CHECK_INTERVAL_MS));
                        break;
                    }
                }
            }
        }
    }
    for (si, (kind, _, _)) in subjects.iter().enumerate() {
        for (what, s) in [("refused", &down), ("served again", &up)] {
            let v = s.get(*kind);
            if v.is_empty() {
                continue;
            }
            println!(
                "    {:<22} → {what:<13} p50 {} µs  p90 {} µs  max {} µs over {} flips",
                kind.label(),
                num(quantile(v, 0.5)),
                num(quantile(v, 0.9)),
                num(quantile(v, 1.0)),
                v.len()
            );
        }
        let p = &probe_us[si];
        if !p.is_empty() {
            println!(
                "    {:<22}   probe connection (the resolution) p50 {} µs, max {} µs; {:.1} probes per flip",
                kind.label(),
                num(quantile(p, 0.5)),
                num(quantile(p, 1.0)),
                probes[si] as f64 / p.len() as f64
            );
        }
        if early[si] > 0 {
            report.note(format!(
                "health, {}: {} flip(s) changed before the check was answered",
                kind.label(),
                early[si]
            ));
        }
    }
    report.add(
        "check answered → new connections refused [µs]",
        Better::Lower,
        false,
        o.flips,
        &down,
    );
    report.add(
        "check answered → new connections served again [µs]",
        Better::Lower,
        false,
        o.flips,
        &up,
    );
}
