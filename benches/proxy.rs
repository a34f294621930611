//! splicer against direct connections and HAProxy (`mode tcp`, one thread), on loopback, in one
//! run, alternating the targets run by run. See docs/benchmarks.md for the method and figures.
//!
//! ```text
//! cargo bench --bench proxy                         # every case: throughput connections latency idle health
//! cargo bench --bench proxy -- latency health       # just these cases
//! cargo bench --bench proxy -- hold 9000            # N idle connections through each proxy
//! cargo bench --bench proxy -- quick                # small sizes and 1 run: checks the harness
//! ```
//! Options: `runs N` (alternating runs, default 3), `idle N` (connections of the idle case,
//! default 5000), `flips N` (health flips, default 20), `no-haproxy`, `out PATH` (also write
//! the summary table there, Markdown). HAProxy is looked up in $SPLICER_BENCH_HAPROXY, PATH,
//! /usr/sbin, /usr/local/sbin.
//!
//! The load generator uses blocking std sockets on plain threads so its own cost stays small and
//! predictable. Each proxy runs as its own process (splicer's release binary with `workers = 1`,
//! `access_log = false`; HAProxy with `nbthread 1`), pinned to CPU 0 while the bench's threads,
//! its backends and its sink process run on CPU 1, so the proxy's CPU time and RSS can be read
//! from /proc and it never competes with the load for a CPU (except where a case says so).

#[path = "proxy/backends.rs"]
mod backends;
#[path = "proxy/cases.rs"]
mod cases;
#[path = "proxy/health.rs"]
mod health;
#[path = "proxy/idle.rs"]
mod idle;
#[path = "proxy/report.rs"]
mod report;
#[path = "proxy/sys.rs"]
mod sys;
#[path = "proxy/targets.rs"]
mod targets;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;

use report::Report;
use targets::Setup;

const USAGE: &str = "usage: cargo bench --bench proxy -- [throughput] [connections] [latency] \
[idle [N]] [health] [hold N] [runs N] [flips N] [quick] [no-haproxy] [out PATH]";

/// Everything the cases need to know.
pub struct Opts {
    pub setup: Setup,
    /// Alternating runs per case (medians with min–max over them).
    pub runs: usize,
    /// Bytes per throughput measurement (1 GiB; split over the connections).
    pub bytes: u64,
    /// Seconds per connection-rate measurement.
    pub conn_secs: f64,
    /// Timed round trips per latency measurement.
    pub rounds: usize,
    /// Connections of the idle case.
    pub idle_n: usize,
    /// Down-and-up flips per proxy in the health case.
    pub flips: usize,
    /// This process's fd limit (the proxies and the sink inherit it).
    pub nofile: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Throughput,
    Connections,
    Latency,
    Idle,
    Health,
    Hold(usize),
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Throughput => "throughput",
            Case::Connections => "connections",
            Case::Latency => "latency",
            Case::Idle => "idle",
            Case::Health => "health",
            Case::Hold(_) => "hold",
        }
    }
}

struct Cli {
    cases: Vec<Case>,
    runs: Option<usize>,
    idle_n: Option<usize>,
    flips: Option<usize>,
    quick: bool,
    no_haproxy: bool,
    out: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli {
        cases: Vec::new(),
        runs: None,
        idle_n: None,
        flips: None,
        quick: false,
        no_haproxy: false,
        out: None,
    };
    let mut it = args.iter().peekable();
    let number = |name: &str, v: Option<&String>| -> Result<usize, String> {
        v.and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .ok_or_else(|| format!("`{name}` needs a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            // cargo passes `--bench` to every bench binary.
            "--bench" => {}
            "throughput" => cli.cases.push(Case::Throughput),
            "connections" | "conns" | "connrate" => cli.cases.push(Case::Connections),
            "latency" => cli.cases.push(Case::Latency),
            "health" => cli.cases.push(Case::Health),
            "idle" => {
                cli.cases.push(Case::Idle);
                if it.peek().is_some_and(|v| v.parse::<usize>().is_ok()) {
                    cli.idle_n = Some(number("idle", it.next())?);
                }
            }
            "hold" => cli.cases.push(Case::Hold(number("hold", it.next())?)),
            "runs" => cli.runs = Some(number("runs", it.next())?),
            "flips" => cli.flips = Some(number("flips", it.next())?),
            "quick" => cli.quick = true,
            "no-haproxy" => cli.no_haproxy = true,
            "out" => cli.out = Some(it.next().ok_or("`out` needs a path")?.into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if cli.cases.is_empty() {
        cli.cases = vec![
            Case::Throughput,
            Case::Connections,
            Case::Latency,
            Case::Idle,
            Case::Health,
        ];
    }
    Ok(cli)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--sink") {
        let addr: SocketAddr = args
            .get(pos + 1)
            .and_then(|a| a.parse().ok())
            .expect("--sink ADDR");
        return backends::sink_main(addr);
    }
    let cli = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };

    // Pin first, before any thread exists: every thread of the bench inherits the load CPU.
    let cpus = sys::allowed_cpus();
    let (proxy_core, load_core) = match cpus.as_slice() {
        [p, l, ..] => match sys::pin_current_thread(*l) {
            Ok(()) => (Some(*p), Some(*l)),
            Err(e) => {
                eprintln!("cannot pin the bench to CPU {l} ({e}); running unpinned");
                (None, None)
            }
        },
        _ => (None, None),
    };
    let haproxy = if cli.no_haproxy {
        None
    } else {
        targets::find_haproxy()
    };
    let nofile = sys::raise_nofile();
    let (runs, bytes, conn_secs, rounds, idle_n, flips) = if cli.quick {
        (1, 256 << 20, 0.5, 5_000, 1_000, 5)
    } else {
        (3, cases::GIB, 2.0, 20_000, 5_000, 20)
    };
    let o = Opts {
        setup: Setup {
            haproxy,
            proxy_core,
            load_core,
            haproxy_maxconn: targets::haproxy_maxconn(nofile),
        },
        runs: cli.runs.unwrap_or(runs),
        bytes,
        conn_secs,
        rounds,
        idle_n: cli.idle_n.unwrap_or(idle_n),
        flips: cli.flips.unwrap_or(flips),
        nofile,
    };

    let header = header(&o);
    println!("{header}\n");
    let mut report = Report::default();
    for case in &cli.cases {
        let r = catch_unwind(AssertUnwindSafe(|| match *case {
            Case::Throughput => cases::throughput(&o, &mut report),
            Case::Connections => cases::connrate(&o, &mut report),
            Case::Latency => cases::latency(&o, &mut report),
            Case::Idle => idle::idle(&o, &mut report),
            Case::Health => health::health(&o, &mut report),
            Case::Hold(n) => idle::hold_mode(&o, n, &mut report),
        }));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            report.note(format!(
                "case {} failed: {}",
                case.name(),
                msg.lines().next().unwrap_or("")
            ));
        }
        println!();
    }
    report.note(format!("load average at the end: {}", sys::loadavg()));
    let table = report.markdown();
    println!("{table}");
    if let Some(path) = &cli.out {
        let text = format!("{header}\n\n{table}");
        match std::fs::write(path, text) {
            Ok(()) => println!("(summary written to {})", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

/// What was measured, where, with what: the lines to paste above a table of figures.
fn header(o: &Opts) -> String {
    let splicer = Command::new(env!("CARGO_BIN_EXE_splicer"))
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let rev = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    // Only changes to what the splicer binary is built from matter here.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .is_some_and(|s| !s.is_empty());
    let haproxy = match &o.setup.haproxy {
        Some(bin) => format!(
            "{} ({}, maxconn {})",
            targets::haproxy_version(bin),
            bin.display(),
            o.setup.haproxy_maxconn
        ),
        None => "HAProxy not found (or no-haproxy): splicer vs direct only".to_owned(),
    };
    let pinning = match (o.setup.proxy_core, o.setup.load_core) {
        (Some(p), Some(l)) => {
            format!("proxy under test on CPU {p}; load generator, backends and sink on CPU {l}")
        }
        _ => "no pinning (fewer than 2 CPUs allowed)".to_owned(),
    };
    format!(
        "splicer proxy bench, {}\n\
         machine: {}\n\
         load average at the start: {}\n\
         {splicer} (git {rev}{}), release build; {haproxy}\n\
         pinning: {pinning}\n\
         {} alternating run(s) per figure, medians (min–max); fd limit {}",
        sys::utc_now(),
        sys::machine(),
        sys::loadavg(),
        if dirty {
            " with uncommitted changes in src/"
        } else {
            ""
        },
        o.runs,
        o.nofile
    )
}
