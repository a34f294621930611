//! Binary upgrades under client load: splicer's SIGUSR2 upgrade next to HAProxy's seamless
//! reload (`expose-fd listeners`, `-x`, `-sf`), one after the other in one run, against the same
//! rig and the same load. See docs/benchmarks.md ("Upgrades under load") for the figures.
//!
//! ```text
//! cargo bench --bench upgrade                           # 20 upgrades over 30 s, each balancer
//! cargo bench --bench upgrade -- upgrades 50 seconds 40
//! cargo bench --bench upgrade -- quick                  # 2 upgrades over 4 s: checks the harness
//! ```
//! Options: `upgrades N` (1–200, default 20), `seconds S` (the upgrades are spread over S
//! seconds, 1–60, default 30; more would outlast the downloads' own time limit), `loops N`
//! (short-request loops, 1–64, default 4: ~250 requests/s; more load the bench's own CPU),
//! `quick`, `no-haproxy`, `out PATH` (also write the header and table there, Markdown). HAProxy
//! is looked up as in the proxy bench ($SPLICER_BENCH_HAPROXY, PATH, /usr/sbin, /usr/local/sbin).
//!
//! The load is tests/common/load.rs (the client of tests/upgrade.rs): 4 loops of short TLS
//! requests (connect, handshake, `GET /`, read, close; ~250/s) and 4 long `GET /bytes/N`
//! downloads read slowly until the last upgrade is done, checked byte for byte. The balancers
//! run as their own processes pinned to CPU 0 (old and new generations alike); the rig and the
//! load run in this process on CPU 1.
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it returns at once: the upgrade
//! itself is tested by tests/upgrade.rs, and this needs HAProxy and half a minute or more.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "upgrade/haproxy.rs"]
mod haproxy;
#[path = "upgrade/scenario.rs"]
mod scenario;
#[path = "upgrade/splicer.rs"]
mod splicer_proc;
#[allow(dead_code)]
#[path = "proxy/sys.rs"]
mod sys;
#[allow(dead_code)]
#[path = "proxy/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scenario::{Figures, Plan};

const USAGE: &str = "usage: cargo bench --bench upgrade -- [upgrades N] [seconds S] [loops N] \
[quick] [no-haproxy] [out PATH]";

struct Cli {
    plan: Plan,
    no_haproxy: bool,
    out: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli {
        plan: Plan {
            upgrades: 20,
            span: Duration::from_secs(30),
            loops: 4,
        },
        no_haproxy: false,
        out: None,
    };
    let mut it = args.iter();
    let number = |name: &str, v: Option<&String>, max: u64| -> Result<u64, String> {
        v.and_then(|v| v.parse().ok())
            .filter(|n: &u64| (1..=max).contains(n))
            .ok_or_else(|| format!("`{name}` needs a number from 1 to {max}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            // cargo passes `--bench` to every bench binary.
            "--bench" => {}
            "upgrades" => cli.plan.upgrades = number("upgrades", it.next(), 200)? as usize,
            "seconds" => cli.plan.span = Duration::from_secs(number("seconds", it.next(), 60)?),
            "loops" => cli.plan.loops = number("loops", it.next(), 64)? as usize,
            "quick" => {
                cli.plan.upgrades = 2;
                cli.plan.span = Duration::from_secs(4);
            }
            "no-haproxy" => cli.no_haproxy = true,
            "out" => cli.out = Some(it.next().ok_or("`out` needs a path")?.into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(cli)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let cli = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // cargo builds the binary for the bench (target/release/splicer under `cargo bench`).
    let splicer_bin = Path::new(env!("CARGO_BIN_EXE_splicer"));
    if !splicer_bin.is_file() {
        eprintln!(
            "{} is missing: run `cargo build --release` (or `cargo bench`, which builds it)",
            splicer_bin.display()
        );
        std::process::exit(1);
    }
    let haproxy = if cli.no_haproxy {
        None
    } else {
        targets::find_haproxy()
    };

    // Pin first, before any thread exists: the runtime's threads inherit the load CPU, and the
    // balancers are started on the other one.
    let cpus = sys::allowed_cpus();
    let (balancer_core, load_core) = match cpus.as_slice() {
        [b, l, ..] => match sys::pin_current_thread(*l) {
            Ok(()) => (Some(*b), Some(*l)),
            Err(e) => {
                eprintln!("cannot pin the bench to CPU {l} ({e}); running unpinned");
                (None, None)
            }
        },
        _ => (None, None),
    };
    let header = header(
        &cli.plan,
        splicer_bin,
        haproxy.as_deref(),
        balancer_core,
        load_core,
    );
    println!("{header}\n");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The scenario runs in block_on, on this (main) thread: the balancers' processes are
    // spawned from it, and their PR_SET_PDEATHSIG fires only when it exits.
    let columns = rt.block_on(async {
        let rig = common::rig(3).await;
        let nodes = rig.node_addrs();
        let mut columns = Vec::new();
        match splicer_proc::SplicerUnderUpgrade::start(splicer_bin, &nodes, balancer_core).await {
            Ok(mut s) => {
                let mut f = scenario::run(&mut s, cli.plan).await;
                let logged = s.upgrades_logged();
                if logged != f.times.len() {
                    f.notes.push(format!(
                        "splicer logged {logged} successful upgrades, the bench saw {}",
                        f.times.len()
                    ));
                }
                columns.push(f);
            }
            Err(e) => columns.push(failed("splicer", &cli.plan, e)),
        }
        if let Some(bin) = &haproxy {
            match haproxy::HaproxyUnderReload::start(bin, &nodes, balancer_core).await {
                Ok(mut h) => columns.push(scenario::run(&mut h, cli.plan).await),
                Err(e) => columns.push(failed("haproxy -x -sf", &cli.plan, e)),
            }
        }
        rig.shutdown().await;
        columns
    });
    let table = table(&columns);
    println!("\n{table}");
    if let Some(path) = &cli.out {
        match std::fs::write(path, format!("{header}\n\n{table}")) {
            Ok(()) => println!("(written to {})", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

fn failed(label: &'static str, plan: &Plan, why: String) -> Figures {
    Figures {
        label,
        asked: plan.upgrades,
        notes: vec![format!("did not start: {why}")],
        ..Figures::default()
    }
}

/// What was run, where, with what: the lines to paste above the table.
fn header(
    plan: &Plan,
    splicer_bin: &Path,
    haproxy: Option<&Path>,
    balancer_core: Option<usize>,
    load_core: Option<usize>,
) -> String {
    // The first line a command prints; None when it fails or prints nothing.
    let first_line = |cmd: &mut Command| -> Option<String> {
        let out = cmd.output().ok().filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().next().map(str::to_owned)
    };
    let git = |args: &[&str]| {
        first_line(
            Command::new("git")
                .arg("-C")
                .arg(env!("CARGO_MANIFEST_DIR"))
                .args(args),
        )
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
    ])
    .is_some();
    let version = first_line(Command::new(splicer_bin).arg("--version")).unwrap_or_default();
    let haproxy = haproxy.map_or_else(
        || "HAProxy not found (or no-haproxy): splicer only".to_owned(),
        |b| format!("{} ({})", targets::haproxy_version(b), b.display()),
    );
    let pinning = match (balancer_core, load_core) {
        (Some(b), Some(l)) => format!("balancers on CPU {b}; rig and load on CPU {l}"),
        _ => "no pinning (fewer than 2 CPUs allowed)".to_owned(),
    };
    format!(
        "splicer upgrade bench, {}\nmachine: {}\nload average at the start: {}\n\
         {version} (git {rev}{}), {}; {haproxy}\n{pinning}\n\
         {} upgrades spread over {} s per balancer; {} short-request loops ({} ms pause); \
         4 downloads of {} MiB",
        sys::utc_now(),
        sys::machine(),
        sys::loadavg(),
        if dirty {
            " with uncommitted changes in src/"
        } else {
            ""
        },
        splicer_bin.display(),
        plan.upgrades,
        plan.span.as_secs(),
        plan.loops,
        scenario::SHORT_PAUSE.as_millis(),
        scenario::download_bytes(plan.span) >> 20,
    )
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "–".to_owned(),
        |d| format!("{:.0}", d.as_secs_f64() * 1e3),
    )
}

/// One row's cell for a column.
type Cell = fn(&Figures) -> String;

/// The figures side by side (Markdown), then each column's notes.
fn table(columns: &[Figures]) -> String {
    let rows: [(&str, Cell); 10] = [
        ("upgrades done / asked", |f| {
            format!("{} / {}", f.times.len(), f.asked)
        }),
        ("time for all upgrades (s)", |f| {
            format!("{:.1}", f.upgrades_took.as_secs_f64())
        }),
        (
            "per upgrade, signal → new process serving: mean / median / max (ms)",
            |f| format!("{} / {} / {}", ms(f.mean()), ms(f.median()), ms(f.max())),
        ),
        ("short requests ok", |f| f.short.ok.to_string()),
        ("short requests refused / reset / failed", |f| {
            format!(
                "{} / {} / {}",
                f.short.refused, f.short.reset, f.short.failed
            )
        }),
        ("long downloads byte-exact / failed", |f| {
            format!("{} / {}", f.downloads.ok, f.downloads.not_ok())
        }),
        ("downloads still open after the last upgrade", |f| {
            f.downloads_spanning.to_string()
        }),
        ("most processes alive at once (before an upgrade)", |f| {
            f.peak_processes.to_string()
        }),
        ("processes left after the drain (drain time)", |f| {
            let took = f.drain_took.map_or_else(
                || "not within 60 s".to_owned(),
                |d| format!("{:.2} s", d.as_secs_f64()),
            );
            format!("{} ({took})", f.processes_left)
        }),
        ("fds: first process → last process", |f| {
            format!("{} → {}", f.fds_first, f.fds_last)
        }),
    ];
    let mut out = String::from("| |");
    for f in columns {
        out.push_str(&format!(" {} |", f.label));
    }
    out.push_str("\n| --- |");
    out.push_str(&" ---: |".repeat(columns.len()));
    for (name, cell) in &rows {
        out.push_str(&format!("\n| {name} |"));
        for f in columns {
            out.push_str(&format!(" {} |", cell(f)));
        }
    }
    for f in columns {
        let errors = f.short.first_errors.iter().chain(&f.downloads.first_errors);
        for e in errors.take(5) {
            out.push_str(&format!("\n- {}: client error: {e}", f.label));
        }
        for n in &f.notes {
            out.push_str(&format!("\n- {}: {n}", f.label));
        }
    }
    out
}
