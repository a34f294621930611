//! Whether watching splicer slows it: new connections per second through one splicer process,
//! alternately *quiet* and *watched* — the admin dashboard open in headless Chromium (it reads
//! `/status` every second) and a Prometheus server scraping `/metrics` every second — in one
//! run. The watchers run all along and are frozen (SIGSTOP to their process groups) during the
//! quiet phases, so both phases see the same processes and memory. See docs/benchmarks.md.
//!
//! ```text
//! cargo bench --bench observed                  # 5 runs of each, 3 s each
//! cargo bench --bench observed -- runs 3 secs 2
//! ```
//!
//! splicer runs as its own process (`workers = 1`, no access log, tcp checks every second on
//! its three backends); the load is two threads: connect, send a byte, read the backend's byte,
//! close. Besides connections/s, splicer's own CPU time per connection (from /proc) shows the
//! cost to splicer itself, apart from the CPU the watchers take from a 2-core machine. Needs
//! `chromium` and `prometheus` (Debian packages; scripts/test installs them). Loopback only;
//! every loop is bounded by its phase's time.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT_THREADS: usize = 2;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const START_WAIT: Duration = Duration::from_secs(30);

fn main() {
    let Some((runs, secs)) =
        support::runs_and_secs("usage: cargo bench --bench observed -- [runs N] [secs S]")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let backends: Vec<SocketAddr> = (0..3).map(|_| support::byte_backend("127.0.0.1")).collect();
    let splicer = Splicer::start(dir.path(), &backends);
    let dashboard = format!("http://{}/", splicer.admin);
    let chromium = Watcher::chromium(dir.path(), &dashboard);
    let prometheus = Watcher::prometheus(dir.path(), splicer.admin);
    prometheus.wait_scraping();
    println!(
        "new connections/s, {CLIENT_THREADS} client threads, {runs} alternating runs of {secs} s; \
         watched = {dashboard} open in headless Chromium + Prometheus scraping /metrics every 1 s"
    );
    let (mut quiet, mut watched) = (Vec::new(), Vec::new());
    let (mut quiet_cpu, mut watched_cpu) = (Vec::new(), Vec::new());
    for run in 0..runs {
        chromium.freeze(true);
        prometheus.freeze(true);
        let (rate, cpu) = measure(&splicer, secs);
        quiet.push(rate);
        quiet_cpu.push(cpu);
        chromium.freeze(false);
        prometheus.freeze(false);
        let (rate, cpu) = measure(&splicer, secs);
        watched.push(rate);
        watched_cpu.push(cpu);
        println!(
            "run {}: quiet {:.0}/s ({:.1} µs splicer CPU per connection), watched {:.0}/s ({:.1} µs)",
            run + 1,
            quiet[run],
            quiet_cpu[run],
            watched[run],
            watched_cpu[run]
        );
    }
    assert!(chromium.is_alive(), "chromium exited during the run");
    assert!(prometheus.is_alive(), "prometheus exited during the run");
    let (a, b) = (support::median(&mut quiet), support::median(&mut watched));
    let (ca, cb) = (
        support::median(&mut quiet_cpu),
        support::median(&mut watched_cpu),
    );
    println!("| | new connections/s (median) | splicer CPU per connection (median) |");
    println!("| --- | ---: | ---: |");
    println!("| quiet | {a:.0} | {ca:.1} µs |");
    println!(
        "| dashboard open + Prometheus scraping every 1 s | {b:.0} ({:+.1}%) | {cb:.1} µs ({:+.1}%) |",
        (b / a - 1.0) * 100.0,
        (cb / ca - 1.0) * 100.0
    );
}

/// Connections/s through splicer for `secs`, and splicer's CPU µs per connection meanwhile.
fn measure(splicer: &Splicer, secs: f64) -> (f64, f64) {
    let cpu_before = cpu_seconds(splicer.child.id());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (done, stop, addr) = (done.clone(), stop.clone(), splicer.addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if one_connection(addr) {
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
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    let cpu = cpu_seconds(splicer.child.id()) - cpu_before;
    (n / elapsed, cpu * 1e6 / n.max(1.0))
}

/// utime + stime of `pid`, in seconds (0 when /proc cannot tell).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn one_connection(to: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to, IO_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut b = [7u8; 1];
    s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok()
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr")
}

/// Polls `cond` every 50 ms until it holds, panicking with `what` after `START_WAIT`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < START_WAIT,
            "{what} within {START_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One plain HTTP/1.1 GET; the whole answer, or `None`.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The splicer process under test.
struct Splicer {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Splicer {
    fn start(dir: &Path, backends: &[SocketAddr]) -> Splicer {
        let (addr, admin) = (free_addr(), free_addr());
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        let config = dir.join("splicer.toml");
        std::fs::write(
            &config,
            format!(
                "[admin]\nbind = \"{admin}\"\n[runtime]\nworkers = 1\naccess_log = false\n\
                 [[listener]]\nname = \"l\"\nbind = \"{addr}\"\npool = \"p\"\n\
                 [[pool]]\nname = \"p\"\nbackends = [{}]\n\
                 [pool.health]\ncheck = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
                list.join(", ")
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
        let s = Splicer { child, addr, admin };
        wait_for("splicer ready", || {
            http_get(admin, "/ready").is_some_and(|a| a.starts_with("HTTP/1.1 200"))
        });
        s
    }
}

impl Drop for Splicer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A watcher program in its own process group, so all its processes freeze and thaw together.
struct Watcher {
    child: Child,
    name: &'static str,
    /// Prometheus's own address, for asking whether it scrapes.
    api: Option<SocketAddr>,
}

impl Watcher {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path, api: Option<SocketAddr>) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name} (scripts/test installs it): {e}"));
        Watcher { child, name, api }
    }

    /// Headless Chromium with the dashboard open (it stays open: a DevTools port keeps the
    /// browser running).
    fn chromium(dir: &Path, url: &str) -> Watcher {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(url);
        Watcher::spawn("chromium", cmd, &dir.join("chromium.log"), None)
    }

    /// Prometheus scraping splicer's `/metrics` every second.
    fn prometheus(dir: &Path, target: SocketAddr) -> Watcher {
        let api = free_addr();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: splicer\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={api}"));
        Watcher::spawn("prometheus", cmd, &dir.join("prometheus.log"), Some(api))
    }

    /// Waits until Prometheus has scraped splicer successfully.
    fn wait_scraping(&self) {
        let Some(api) = self.api else { return };
        wait_for("prometheus scraping splicer", || {
            http_get(api, "/api/v1/query?query=up%7Bjob%3D%22splicer%22%7D")
                .is_some_and(|a| a.contains("\"value\":[") && a.contains(",\"1\"]"))
        });
    }

    /// SIGSTOP (`true`) or SIGCONT to the whole process group.
    fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let group = self.child.id() as i32;
        // SAFETY: kill(2) has no memory-safety preconditions; the group is our child's own.
        let rc = unsafe { libc::kill(-group, signal) };
        assert_eq!(rc, 0, "cannot signal {}", self.name);
    }

    fn is_alive(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.child.id())).is_ok()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: as in `freeze`. Thaw first so the processes can act on SIGKILL at once.
        unsafe {
            libc::kill(-group, libc::SIGCONT);
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
