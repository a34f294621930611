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
#[allow(dead_code)]
#[path = "proxy/sys.rs"]
mod sys;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{free_addr, http, IO_TIMEOUT};
use sys::ChildGuard;

const CLIENT_THREADS: u32 = 2;
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
    let pid = splicer.child.pid();
    let cpu_before = sys::cpu_seconds(pid);
    let addr = splicer.addr;
    let (done, elapsed) = support::closed_loop(CLIENT_THREADS, secs, move |_, _| {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_ok_and(support::byte_exchange)
    });
    let cpu = sys::cpu_seconds(pid) - cpu_before;
    (done as f64 / elapsed, cpu * 1e6 / (done as f64).max(1.0))
}

/// Polls `cond` until it holds, panicking with `what` after `START_WAIT`.
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        sys::wait_until(START_WAIT, cond),
        "{what} within {START_WAIT:?}"
    );
}

/// The splicer process under test.
struct Splicer {
    child: ChildGuard,
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
        let s = Splicer {
            child: ChildGuard(child),
            addr,
            admin,
        };
        wait_for("splicer ready", || {
            http(admin, "GET", "/ready").is_some_and(|(status, _)| status == 200)
        });
        s
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
            http(
                api,
                "GET",
                "/api/v1/query?query=up%7Bjob%3D%22splicer%22%7D",
            )
            .is_some_and(|(_, a)| a.contains("\"value\":[") && a.contains(",\"1\"]"))
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
