//! What a case measures: a direct connection to the backend, or a proxy in front of it run as
//! its own process (splicer's release binary, or HAProxy in `mode tcp`), pinned to one CPU.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys::{self, ChildGuard};

/// The four columns of every table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Splicer,
    /// HAProxy with `option splice-auto` (splices when its heuristics say it pays).
    HaproxyAuto,
    /// HAProxy with `option splice-request` + `option splice-response` (always splices).
    HaproxySplice,
}

pub const KINDS: [Kind; 4] = [
    Kind::Direct,
    Kind::Splicer,
    Kind::HaproxyAuto,
    Kind::HaproxySplice,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Splicer => "splicer",
            Kind::HaproxyAuto => "haproxy splice-auto",
            Kind::HaproxySplice => "haproxy splice forced",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn is_haproxy(self) -> bool {
        matches!(self, Kind::HaproxyAuto | Kind::HaproxySplice)
    }
}

/// What the whole run found out about the machine and was asked for.
pub struct Setup {
    /// The HAProxy binary, when one was found (and not switched off).
    pub haproxy: Option<PathBuf>,
    /// The CPU the proxy under test runs on; `None` on a one-CPU machine (no pinning).
    pub proxy_core: Option<usize>,
    /// The CPU of the bench's own threads (load generator, backends) and its sink process.
    pub load_core: Option<usize>,
    /// HAProxy's `maxconn`: 100,000 where the fd limit allows, else the most it allows.
    pub haproxy_maxconn: u64,
}

/// `maxconn` for HAProxy under the fd limit `nofile`: HAProxy 2.6 refuses to start unless it
/// can get `2 × maxconn + 2 × tune.maxpipes (maxconn / 4 by default) + ~14` fds, and an
/// unprivileged (or sandboxed) process cannot raise its hard limit.
pub fn haproxy_maxconn(nofile: u64) -> u64 {
    (nofile.saturating_sub(100) * 2 / 5).clamp(1, 100_000)
}

impl Setup {
    /// The proxies available in this run (splicer always; HAProxy's two modes when installed).
    pub fn proxy_kinds(&self) -> Vec<Kind> {
        let mut k = vec![Kind::Splicer];
        if self.haproxy.is_some() {
            k.extend([Kind::HaproxyAuto, Kind::HaproxySplice]);
        }
        k
    }
}

/// `haproxy` from $SPLICER_BENCH_HAPROXY, else on PATH, else in the sbin directories that a
/// non-root PATH often lacks.
pub fn find_haproxy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPLICER_BENCH_HAPROXY") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// The first line of `haproxy -v`.
pub fn haproxy_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "haproxy (version unknown)".to_owned())
}

/// How the proxy checks its one backend.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// No checks: the backend is always up.
    None,
    /// Plain-HTTP `GET /health` on `port` every 100 ms, rise 1, fall 1; with no backend up, new
    /// connections are closed at once (splicer `fail_open = false`; HAProxy has no server).
    Http { port: u16 },
}

/// Health-check interval of [`Check::Http`], in milliseconds.
pub const CHECK_INTERVAL_MS: u64 = 100;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A proxy process in front of one backend; killed when dropped.
pub struct Proxy {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: ChildGuard,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `kind` (not `Direct`) in front of `backend`, pinned to `core`, and waits until its
    /// listener accepts.
    pub fn start(
        setup: &Setup,
        kind: Kind,
        backend: SocketAddr,
        check: Check,
        core: Option<usize>,
    ) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("splicer-bench-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = dir.path().join("proxy.log");
        let mut cmd = match kind {
            Kind::Direct => panic!("direct connections have no proxy"),
            Kind::Splicer => {
                let cfg = dir.path().join("bench.toml");
                std::fs::write(&cfg, splicer_config(addr, backend, check)).expect("config");
                let mut c = Command::new(env!("CARGO_BIN_EXE_splicer"));
                c.args(["run", "-c"]).arg(&cfg).env("RUST_LOG", "warn");
                c
            }
            Kind::HaproxyAuto | Kind::HaproxySplice => {
                let bin = setup.haproxy.as_ref().expect("haproxy binary");
                let cfg = dir.path().join("haproxy.cfg");
                let text = haproxy_config(kind, addr, backend, check, setup.haproxy_maxconn);
                std::fs::write(&cfg, text).expect("config");
                let mut c = Command::new(bin);
                c.arg("-db").arg("-f").arg(&cfg).current_dir(dir.path());
                c
            }
        };
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        sys::child_setup(&mut cmd, core);
        let child = ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {kind:?}: {e}")),
        );
        let mut p = Proxy {
            kind,
            addr,
            child,
            log,
            _dir: dir,
        };
        p.wait_listening();
        p
    }

    fn wait_listening(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.exited() {
                panic!(
                    "{} exited during start-up ({status}): {}",
                    self.kind.label(),
                    self.log_line()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not listen on {} within 10 s: {}",
                self.kind.label(),
                self.addr,
                self.log_line()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The proxy's CPU time so far (utime + stime), in seconds.
    pub fn cpu(&self) -> f64 {
        sys::cpu_seconds(self.pid())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log on one line, for panic messages (the summary shows their first line).
    fn log_line(&self) -> String {
        self.log_text().lines().collect::<Vec<_>>().join(" | ")
    }
}

/// Log lines already shown, so each distinct first line is reported once per bench run.
static SHOWN: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Drop for Proxy {
    fn drop(&mut self) {
        // A proxy that wrote anything (splicer logs at warn and above here; HAProxy its warnings
        // and alerts) may have misbehaved during the measurement: show it, once per message.
        let text = self.log_text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("[NOTICE]"))
            .collect();
        if let Some(first) = lines.first() {
            // Timestamps and pids differ run to run; the message tail identifies it well enough.
            let key: String = first.chars().rev().take(80).collect();
            let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
            if !shown.contains(&key) {
                shown.push(key);
                eprintln!(
                    "  note: {} wrote {} log line(s), the first: {}",
                    self.kind.label(),
                    lines.len(),
                    first.trim()
                );
            }
        }
    }
}

fn splicer_config(addr: SocketAddr, backend: SocketAddr, check: Check) -> String {
    let health = match check {
        Check::None => "check = \"none\"\n".to_owned(),
        Check::Http { port } => format!(
            "check = \"http\"\npath = \"/health\"\nport = {port}\ninterval = \"{CHECK_INTERVAL_MS}ms\"\n\
             timeout = \"{}ms\"\nrise = 1\nfall = 1\n",
            CHECK_INTERVAL_MS / 2
        ),
    };
    let pool_extra = match check {
        Check::None => "",
        // A down backend must refuse new connections, not be picked anyway (fail-open).
        Check::Http { .. } => "fail_open = false\npassive_fall = 0\nretries = 0\n",
    };
    format!(
        "[runtime]\nworkers = 1\naccess_log = false\n\n\
         [[listener]]\nname = \"bench\"\nbind = \"{addr}\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [\"{backend}\"]\n{pool_extra}\n\
         [pool.health]\n{health}"
    )
}

fn haproxy_config(
    kind: Kind,
    addr: SocketAddr,
    backend: SocketAddr,
    check: Check,
    maxconn: u64,
) -> String {
    let splice = match kind {
        Kind::HaproxySplice => "    option splice-request\n    option splice-response\n",
        _ => "    option splice-auto\n",
    };
    let (httpchk, server_check) = match check {
        Check::None => (String::new(), String::new()),
        Check::Http { port } => (
            format!(
                "    option httpchk GET /health\n    timeout check {}ms\n",
                CHECK_INTERVAL_MS / 2
            ),
            format!(
                " check port {port} inter {i}ms fastinter {i}ms downinter {i}ms rise 1 fall 1",
                i = CHECK_INTERVAL_MS
            ),
        ),
    };
    format!(
        "global\n    nbthread 1\n    maxconn {maxconn}\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n\
         {splice}\n\
         frontend fe\n    bind {addr}\n    default_backend be\n\n\
         backend be\n{httpchk}    server s1 {backend}{server_check}\n"
    )
}
