//! The control plane at scale: health checks of a pool of 1,000 backends and of 100 pools of 10,
//! splicer next to HAProxy on the same targets in one run; the time from a check's result to
//! new connections seeing it; reload time with 1,000 and 20,000 backends and the data path's
//! stall meanwhile; new connections/s with and without 1,000 https checks running. See
//! docs/benchmarks.md ("Control plane at scale") for what each figure is and the figures.
//!
//! ```text
//! cargo bench --bench control_plane                 # every scenario (about 5 minutes)
//! cargo bench --bench control_plane -- quick        # short windows, few repetitions (~2 min)
//! cargo bench --bench control_plane -- checks flips # only these (also: scale, reload20k)
//! cargo bench --bench control_plane -- no-haproxy
//! ```
//!
//! The targets (benches/control_plane/target.rs) run in this process: 1,001 loopback addresses
//! serving HTTPS `GET /health/instance` with TLS session resumption, and a TCP port for
//! `check = "tcp"`. Each balancer is its own process with one thread, pinned to the first CPU
//! when there are two; the targets and the clients run on the other. CPU per check is the
//! balancer's utime+stime (/proc) over a window divided by the checks the targets served in it
//! (the same count for both balancers). Loopback only; every loop is bounded.
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it returns at once.

#[path = "control_plane/balancer.rs"]
mod balancer;
#[allow(dead_code)]
#[path = "proxy/sys.rs"]
mod sys;
#[path = "control_plane/target.rs"]
mod target;

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::{free_addr, Balancer, Check, Pool};
use target::Targets;

const USAGE: &str = "usage: cargo bench --bench control_plane -- [quick] [no-haproxy] \
[checks] [flips] [scale] [reload20k]";

/// Targets for the checked pools; one more serves the flip pool's checks.
const BACKENDS: usize = 1000;
const FLIP: usize = BACKENDS;
const INTERVAL_MS: u64 = 2000;
/// The flip pool's check interval: short, so flips are quick to come by.
const FLIP_INTERVAL_MS: u64 = 200;
const CLIENT_THREADS: usize = 2;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Width of one new-connections/s sample during reloads.
const BUCKET: Duration = Duration::from_millis(100);

struct Plan {
    warm: Duration,
    window: Duration,
    flips: usize,
    alternations: usize,
    phase: Duration,
    reloads: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut plan = Plan {
        warm: Duration::from_secs(5),
        window: Duration::from_secs(10),
        flips: 40,
        alternations: 3,
        phase: Duration::from_secs(3),
        reloads: 5,
    };
    let mut with_haproxy = true;
    let mut only: Vec<String> = Vec::new();
    for a in args.iter().filter(|a| *a != "--bench") {
        match a.as_str() {
            "checks" | "flips" | "scale" | "reload20k" => only.push(a.clone()),
            "quick" => {
                plan = Plan {
                    warm: Duration::from_millis(4500),
                    window: Duration::from_secs(3),
                    flips: 8,
                    alternations: 1,
                    phase: Duration::from_secs(2),
                    reloads: 2,
                }
            }
            "no-haproxy" => with_haproxy = false,
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let haproxy = with_haproxy
        .then(|| PathBuf::from("/usr/sbin/haproxy"))
        .filter(|p| p.exists());
    if with_haproxy && haproxy.is_none() {
        eprintln!("no /usr/sbin/haproxy: splicer only");
    }
    let nofile = sys::raise_nofile();
    let cpus = sys::allowed_cpus();
    let core = (cpus.len() >= 2).then(|| cpus[0]);
    if let Some(&other) = cpus.get(1) {
        let _ = sys::pin_current_thread(other);
    }
    println!(
        "{} | {} | load average {}",
        sys::utc_now(),
        sys::machine(),
        sys::loadavg()
    );
    println!(
        "balancers on CPU {core:?}, targets and clients on the others; fd limit {nofile}; \
         warm-up {:?}, window {:?}\n",
        plan.warm, plan.window
    );

    let targets = Targets::start(BACKENDS + 1);
    let data: Vec<SocketAddr> = (0..2).map(|_| support::byte_backend("127.0.0.1")).collect();

    let run = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if run("checks") {
        check_cost(&targets, &data, &plan, haproxy.as_deref(), core);
    }
    if run("flips") {
        flips(&targets, &data, &plan, haproxy.as_deref(), core);
    }
    if run("scale") {
        at_scale(&targets, &data, &plan, core);
    }
    if run("reload20k") {
        reload_20k(&targets, &data, &plan, core);
    }
    println!("load average at the end: {}", sys::loadavg());
}

/// Starts splicer, then (when there is one) HAProxy, on the same pools; one at a time.
fn starters<'a>(
    pools: &'a [Pool],
    haproxy: Option<&'a std::path::Path>,
    core: Option<usize>,
) -> Vec<Box<dyn Fn() -> Balancer + 'a>> {
    let mut out: Vec<Box<dyn Fn() -> Balancer + 'a>> =
        vec![Box::new(move || Balancer::splicer(pools, core))];
    if let Some(bin) = haproxy {
        out.push(Box::new(move || Balancer::haproxy(bin, pools, core)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// CPU and memory per check

fn check_pools(targets: &Targets, pools: usize, check: Check) -> Vec<Pool> {
    let per = BACKENDS / pools;
    (0..pools)
        .map(|p| {
            let backends = (p * per..(p + 1) * per)
                .map(|i| match check {
                    Check::Tcp => targets.tcp(i),
                    _ => targets.https(i),
                })
                .collect();
            Pool::checked(format!("p{p}"), backends, check, INTERVAL_MS)
        })
        .collect()
}

fn check_cost(
    targets: &Targets,
    data: &[SocketAddr],
    plan: &Plan,
    haproxy: Option<&std::path::Path>,
    core: Option<usize>,
) {
    println!("### CPU and memory per health check ({BACKENDS} backends, every {INTERVAL_MS} ms)\n");
    println!("| pools | check | balancer | checks/s | busiest 100 ms (checks/s) | CPU (% of a core) | CPU per check | resumed handshakes | RSS |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let cases = [
        (1, Check::Https, true),
        (1, Check::Https, false),
        (1, Check::Tcp, true),
        (100, Check::Https, true),
        (100, Check::Tcp, true),
    ];
    for (pools, check, resume) in cases {
        // `false`: the target answers every handshake in full, as a server without resumption.
        targets
            .stats
            .no_resumption
            .store(!resume, Ordering::Relaxed);
        let mut spec = check_pools(targets, pools, check);
        // splicer needs a listener; an idle one costs nothing.
        spec.push(data_pool(data).0);
        for start in starters(&spec, haproxy, core) {
            let b = start();
            std::thread::sleep(plan.warm);
            let stats = &targets.stats;
            let count = || match check {
                Check::Tcp => stats.tcp_accepts.load(Ordering::Relaxed),
                _ => stats.https_checks(),
            };
            let (c0, r0, cpu0, t0) = (
                count(),
                stats.resumed.load(Ordering::Relaxed),
                sys::cpu_seconds(b.pid()),
                Instant::now(),
            );
            std::thread::sleep(plan.window);
            // HAProxy's tcp check never completes the handshake at the target (it connects
            // with delayed ACKs and resets), so the target sees no accept: its rate is the
            // configured one, which HAProxy keeps exactly.
            let haproxy_tcp = check == Check::Tcp && b.label == "haproxy";
            let checks = if haproxy_tcp {
                (BACKENDS as f64) * plan.window.as_secs_f64() * 1000.0 / INTERVAL_MS as f64
            } else {
                (count() - c0) as f64
            };
            let resumed = (stats.resumed.load(Ordering::Relaxed) - r0) as f64;
            let cpu = sys::cpu_seconds(b.pid()) - cpu0;
            let secs = t0.elapsed().as_secs_f64();
            let peak = if haproxy_tcp {
                "–".to_owned()
            } else {
                format!("{:.0}", stats.peak_rate(t0, Instant::now()))
            };
            let resumed = if check == Check::Https && !resume {
                "none (target refuses)".to_owned()
            } else if check == Check::Https {
                format!("{:.0}%", 100.0 * resumed / checks.max(1.0))
            } else {
                "–".to_owned()
            };
            println!(
                "| {pools} × {} | {} | {} | {:.0}{} | {peak} | {:.1} | {:.0} µs | {resumed} | {:.1} MiB |",
                BACKENDS / pools,
                check.name(),
                b.label,
                checks / secs,
                if haproxy_tcp { " (configured)" } else { "" },
                100.0 * cpu / secs,
                cpu * 1e6 / checks.max(1.0),
                sys::rss_kib(b.pid()) as f64 / 1024.0
            );
        }
    }
    targets.stats.no_resumption.store(false, Ordering::Relaxed);
    println!();
}

// ---------------------------------------------------------------------------------------------
// Check result → new connections

/// The 1,000-backend https pool, the flip pool (one backend whose data goes to a byte server on
/// the flip target's address and whose checks, every 200 ms, rise 1, fall 1, to its HTTPS port;
/// `fail_open = false`, so no backend up means connections are closed) and a data pool (checks
/// `none`) with their listeners.
fn scale_pools(
    targets: &Targets,
    data: &[SocketAddr],
    big_check: Check,
) -> (Vec<Pool>, SocketAddr, SocketAddr) {
    let mut pools = check_pools(targets, 1, big_check);
    pools[0].name = "big".to_owned();
    let flip_byte = support::byte_backend(&target::ip(FLIP).to_string());
    let flip_listen = free_addr();
    let mut flip = Pool::checked(
        "flip".to_owned(),
        vec![flip_byte],
        Check::Https,
        FLIP_INTERVAL_MS,
    );
    flip.timeout_ms = FLIP_INTERVAL_MS * 3 / 4;
    flip.check_port = Some(targets.https_port);
    flip.rise_fall = (1, 1);
    flip.listen = Some((flip_listen, false));
    let (d, data_listen) = data_pool(data);
    pools.push(flip);
    pools.push(d);
    (pools, flip_listen, data_listen)
}

fn flips(
    targets: &Targets,
    data: &[SocketAddr],
    plan: &Plan,
    haproxy: Option<&std::path::Path>,
    core: Option<usize>,
) {
    println!(
        "### From a check's result to new connections ({} flips, while {BACKENDS} https checks run)\n",
        plan.flips
    );
    println!("| balancer | p50 | p90 | max | probe connection (median) | flips measured | flips spoiled (the balancer changed before the target did) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (pools, flip_listen, _) = scale_pools(targets, data, Check::Https);
    for start in starters(&pools, haproxy, core) {
        let b = start();
        std::thread::sleep(plan.warm);
        let (mut seen, mut probe, mut spoiled) = (Vec::new(), Vec::new(), 0);
        for k in 0..plan.flips {
            let down = k % 2 == 0;
            let at = Instant::now();
            targets.stats.set_failing(FLIP, down);
            let deadline = at + Duration::from_secs(3);
            while Instant::now() < deadline {
                let p0 = Instant::now();
                let routed = routed(flip_listen);
                let p1 = Instant::now();
                if routed != down {
                    // A change before the target answered differently is not this flip's (a
                    // check that failed on its own, e.g. timed out): the flip is not measured.
                    let Some(answered) = targets.stats.changed_since(FLIP, at) else {
                        spoiled += 1;
                        break;
                    };
                    seen.push(signed_us(p1, answered));
                    probe.push((p1 - p0).as_secs_f64() * 1e6);
                    break;
                }
            }
            // Let a check or two pass before flipping back (rise/fall 1).
            std::thread::sleep(Duration::from_millis(FLIP_INTERVAL_MS * 2));
        }
        targets.stats.set_failing(FLIP, false);
        let n = seen.len();
        println!(
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {n} of {} | {spoiled} |",
            b.label,
            quantile(&mut seen, 0.5),
            quantile(&mut seen, 0.9),
            quantile(&mut seen, 1.0),
            quantile(&mut probe, 0.5),
            plan.flips
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    println!();
}

/// The byte backends behind a listener of their own, unchecked.
fn data_pool(data: &[SocketAddr]) -> (Pool, SocketAddr) {
    let listen = free_addr();
    let mut d = Pool::checked("data".to_owned(), data.to_vec(), Check::None, INTERVAL_MS);
    d.listen = Some((listen, true));
    (d, listen)
}

/// One connection through `addr`: whether a byte came back (a backend served it).
fn routed(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut b = [7u8; 1];
    s.write_all(&b).is_ok() && matches!(s.read(&mut b), Ok(1))
}

fn signed_us(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64() * 1e6,
        None => -(b.duration_since(a).as_secs_f64() * 1e6),
    }
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// Connections/s with and without checks; reloads with 1,000 backends

fn at_scale(targets: &Targets, data: &[SocketAddr], plan: &Plan, core: Option<usize>) {
    let (with, _, data_listen) = scale_pools(targets, data, Check::Https);
    let mut without = with.clone();
    without[0].check = Check::None;
    let b = Balancer::splicer(&with, core);
    std::thread::sleep(plan.warm);
    let load = Load::start(data_listen);

    println!(
        "### splicer: new connections/s with {BACKENDS} https checks running and without \
         ({} alternations of {:?}; checks switched by reload)\n",
        plan.alternations, plan.phase
    );
    println!("| | new connections/s | splicer CPU per connection |");
    println!("| --- | ---: | ---: |");
    let (mut on, mut off, mut on_cpu, mut off_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.alternations {
        b.reload(&without);
        std::thread::sleep(Duration::from_secs(1));
        let (r, c) = load.measure(b.pid(), plan.phase);
        off.push(r);
        off_cpu.push(c);
        b.reload(&with);
        // One interval and its jitter: every backend checked once (in full), then resumed.
        std::thread::sleep(Duration::from_millis(INTERVAL_MS * 5 / 4));
        let (r, c) = load.measure(b.pid(), plan.phase);
        on.push(r);
        on_cpu.push(c);
    }
    let (a, ca) = (quantile(&mut off, 0.5), quantile(&mut off_cpu, 0.5));
    let (w, cw) = (quantile(&mut on, 0.5), quantile(&mut on_cpu, 0.5));
    println!("| no checks | {a:.0} | {ca:.1} µs |");
    println!(
        "| {BACKENDS} https checks every {INTERVAL_MS} ms | {w:.0} ({:+.1}%) | {cw:.1} µs (CPU incl. checks) |\n",
        (w / a - 1.0) * 100.0
    );

    println!("### Reload with one backend changed\n");
    println!("| backends | checks | reload (median) | reload (max) | new connections/s before | lowest 100 ms sample during |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    let alt = "127.0.0.1:1".parse().expect("addr");
    let (took, before, lowest) = reloads(&b, &load, &with, alt, plan.reloads);
    print_reloads(BACKENDS + 3, "https", took, before, lowest);
    drop(load);
}

/// `n` reloads, each swapping the first pool's last backend with `alt` and back: their wall
/// times, the median connections/s in the second before each, and the lowest 100 ms sample
/// from each reload's start to 200 ms after its end.
fn reloads(
    b: &Balancer,
    load: &Load,
    pools: &[Pool],
    alt: SocketAddr,
    n: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut took, mut before, mut lowest) = (Vec::new(), Vec::new(), Vec::new());
    let original = pools[0].backends.last().copied().expect("a backend");
    let mut pools = pools.to_vec();
    for k in 0..n {
        std::thread::sleep(Duration::from_secs(1));
        let last = pools[0].backends.len() - 1;
        pools[0].backends[last] = if k % 2 == 0 { alt } else { original };
        let start = Instant::now();
        let t = b.reload(&pools);
        std::thread::sleep(Duration::from_millis(300));
        took.push(t.as_secs_f64() * 1e3);
        let mut pre = load.rates(start - Duration::from_secs(1), start);
        before.push(quantile(&mut pre, 0.5));
        let during = load.rates(start, start + t + Duration::from_millis(200));
        lowest.push(during.into_iter().fold(f64::INFINITY, f64::min));
    }
    (took, before, lowest)
}

fn print_reloads(
    backends: usize,
    check: &str,
    mut took: Vec<f64>,
    mut before: Vec<f64>,
    mut lowest: Vec<f64>,
) {
    println!(
        "| {backends} | {check} | {:.1} ms | {:.1} ms | {:.0} | {:.0} (worst of {}) |",
        quantile(&mut took, 0.5),
        quantile(&mut took, 1.0),
        quantile(&mut before, 0.5),
        quantile(&mut lowest, 0.0),
        lowest.len()
    );
}

fn reload_20k(targets: &Targets, data: &[SocketAddr], plan: &Plan, core: Option<usize>) {
    const BIG: usize = 20_000;
    let backends = (0..BIG)
        .map(|i| SocketAddr::new(target::ip(i), targets.https_port))
        .collect();
    let mut big = Pool::checked("big".to_owned(), backends, Check::None, INTERVAL_MS);
    big.listen = None;
    let (d, data_listen) = data_pool(data);
    let pools = vec![big, d];
    let started = Instant::now();
    let b = Balancer::splicer(&pools, core);
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    let load = Load::start(data_listen);
    let alt = "127.0.0.1:1".parse().expect("addr");
    let (took, before, lowest) = reloads(&b, &load, &pools, alt, plan.reloads);
    print_reloads(BIG + 2, "none", took, before, lowest);
    println!(
        "\nsplicer with {BIG} backends: serving {start_ms:.0} ms after start, RSS {:.1} MiB\n",
        sys::rss_kib(b.pid()) as f64 / 1024.0
    );
}

// ---------------------------------------------------------------------------------------------
// Client load

/// Client threads opening connections back to back (connect, one byte each way, close),
/// counting completions in 100 ms buckets from `epoch`, for at most `LOAD_LIMIT`.
struct Load {
    epoch: Instant,
    buckets: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const LOAD_LIMIT: Duration = Duration::from_secs(120);

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let epoch = Instant::now();
        let n = (LOAD_LIMIT.as_millis() / BUCKET.as_millis()) as usize;
        let buckets: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENT_THREADS)
            .map(|_| {
                let (buckets, stop) = (buckets.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && epoch.elapsed() < LOAD_LIMIT {
                        if routed(addr) {
                            let i = (epoch.elapsed().as_millis() / BUCKET.as_millis()) as usize;
                            if let Some(b) = buckets.get(i) {
                                b.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            epoch,
            buckets,
            stop,
            threads,
        }
    }

    /// Connections/s in each whole bucket between `from` and `to`.
    fn rates(&self, from: Instant, to: Instant) -> Vec<f64> {
        let index = |t: Instant| {
            (t.saturating_duration_since(self.epoch).as_millis() / BUCKET.as_millis()) as usize
        };
        (index(from)..=index(to))
            .filter_map(|i| self.buckets.get(i))
            .map(|b| b.load(Ordering::Relaxed) as f64 / BUCKET.as_secs_f64())
            .collect()
    }

    /// Connections/s over `phase`, and the balancer's CPU µs per connection meanwhile.
    fn measure(&self, pid: u32, phase: Duration) -> (f64, f64) {
        let total = || {
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let (n0, cpu0, t0) = (total(), sys::cpu_seconds(pid), Instant::now());
        std::thread::sleep(phase);
        let n = (total() - n0) as f64;
        let cpu = sys::cpu_seconds(pid) - cpu0;
        (n / t0.elapsed().as_secs_f64(), cpu * 1e6 / n.max(1.0))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
