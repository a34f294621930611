//! The two balancers under test as processes of their own, configured from one [`Spec`]:
//! splicer (the built binary) and HAProxy (`mode tcp`, checks as splicer's). Both run one
//! thread (`workers = 1`, `nbthread 1`) pinned to one CPU when the machine has two.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::{self, ChildGuard};

/// What a pool checks with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Check {
    Https,
    Tcp,
    None,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Https => "https",
            Check::Tcp => "tcp",
            Check::None => "none",
        }
    }
}

/// One checked pool.
#[derive(Clone)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<SocketAddr>,
    pub check: Check,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Checked on this port instead of the backend's own (the flip pool's data goes to a byte
    /// server, its checks to the target).
    pub check_port: Option<u16>,
    pub rise_fall: (u32, u32),
    /// With a listener of its own: (listen address, fail_open).
    pub listen: Option<(SocketAddr, bool)>,
}

impl Pool {
    pub fn checked(
        name: String,
        backends: Vec<SocketAddr>,
        check: Check,
        interval_ms: u64,
    ) -> Pool {
        Pool {
            name,
            backends,
            check,
            interval_ms,
            timeout_ms: (interval_ms / 2).min(1000),
            check_port: None,
            rise_fall: (2, 3),
            listen: None,
        }
    }
}

pub use crate::support::{free_addr, http};

/// A running balancer.
pub struct Balancer {
    pub label: &'static str,
    child: ChildGuard,
    /// splicer's admin API.
    pub admin: Option<SocketAddr>,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Balancer {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn splicer(pools: &[Pool], core: Option<usize>) -> Balancer {
        let dir = tempdir();
        let admin = free_addr();
        let config = dir.path().join("splicer.toml");
        std::fs::write(&config, splicer_toml(admin, pools)).expect("write splicer.toml");
        let log = dir.path().join("splicer.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_splicer"));
        cmd.args(["run", "-c"])
            .arg(&config)
            .env_remove("SPLICER_CONFIG")
            .env("RUST_LOG", "warn");
        let b = Balancer::spawn("splicer", cmd, config, log, Some(admin), dir, core);
        let up = sys::wait_until(Duration::from_secs(60), || {
            http(admin, "GET", "/health").is_some_and(|(s, _)| s == 200)
        });
        assert!(up, "splicer did not serve: {}", b.log_tail());
        b
    }

    pub fn haproxy(bin: &Path, pools: &[Pool], core: Option<usize>) -> Balancer {
        let dir = tempdir();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_cfg(pools)).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&config);
        let mut b = Balancer::spawn("haproxy", cmd, config, log, None, dir, core);
        // It binds before it forks nothing (-db): serving once its listeners accept, or, with
        // none, once it has been up a moment without exiting.
        let listens: Vec<SocketAddr> = pools.iter().filter_map(|p| p.listen.map(|l| l.0)).collect();
        let up = sys::wait_until(Duration::from_secs(30), || {
            listens.iter().all(|a| TcpStream::connect(a).is_ok())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            up && b.child.exited().is_none(),
            "haproxy did not serve: {}",
            b.log_tail()
        );
        b
    }

    fn spawn(
        label: &'static str,
        mut cmd: Command,
        config: PathBuf,
        log: PathBuf,
        admin: Option<SocketAddr>,
        dir: tempfile::TempDir,
        core: Option<usize>,
    ) -> Balancer {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        sys::child_setup(&mut cmd, core);
        let child = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}")));
        Balancer {
            label,
            child,
            admin,
            config,
            log,
            _dir: dir,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Rewrites splicer's config with `pools` and `POST /reload`s it: the wall time of the
    /// request, which returns once the new configuration is applied.
    pub fn reload(&self, pools: &[Pool]) -> Duration {
        let admin = self.admin.expect("reload is splicer's");
        std::fs::write(&self.config, splicer_toml(admin, pools)).expect("rewrite config");
        let started = Instant::now();
        let answer = http(admin, "POST", "/reload");
        let took = started.elapsed();
        assert!(
            answer.as_ref().is_some_and(|(s, _)| *s == 200),
            "reload failed: {answer:?}"
        );
        took
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("splicer-bench-cp-")
        .tempdir()
        .expect("tempdir")
}

fn splicer_toml(admin: SocketAddr, pools: &[Pool]) -> String {
    let mut t =
        format!("[admin]\nbind = \"{admin}\"\n\n[runtime]\nworkers = 1\naccess_log = false\n\n");
    for p in pools {
        if let Some((listen, _)) = p.listen {
            t += &format!(
                "[[listener]]\nname = \"{n}\"\nbind = \"{listen}\"\npool = \"{n}\"\n\n",
                n = p.name
            );
        }
    }
    for p in pools {
        let list: Vec<String> = p.backends.iter().map(|b| format!("\"{b}\"")).collect();
        t += &format!("[[pool]]\nname = \"{}\"\n", p.name);
        if let Some((_, fail_open)) = p.listen {
            t += &format!("fail_open = {fail_open}\n");
        }
        t += &format!("backends = [{}]\n", list.join(", "));
        t += &format!(
            "[pool.health]\ncheck = \"{}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\n\
             rise = {}\nfall = {}\n",
            p.check.name(),
            p.interval_ms,
            p.timeout_ms,
            p.rise_fall.0,
            p.rise_fall.1
        );
        if let Some(port) = p.check_port {
            t += &format!("port = {port}\n");
        }
        t += "\n";
    }
    t
}

/// `mode tcp`, checks as splicer's: `option httpchk GET /health/instance` with `check-ssl
/// verify none` for https (HAProxy reuses the TLS session of each server for its checks), a
/// bare connect for tcp.
fn haproxy_cfg(pools: &[Pool]) -> String {
    let mut t = "global\n    nbthread 1\n    maxconn 4096\n\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n\
                 \x20   timeout server 30s\n\n"
        .to_owned();
    for p in pools {
        if let Some((listen, _)) = p.listen {
            t += &format!(
                "frontend {n}\n    bind {listen}\n    default_backend {n}\n\n",
                n = p.name
            );
        }
        t += &format!("backend {}\n    timeout check {}ms\n", p.name, p.timeout_ms);
        if p.check == Check::Https {
            t += "    option httpchk GET /health/instance\n";
        }
        let (rise, fall) = p.rise_fall;
        let port = p
            .check_port
            .map(|port| format!(" port {port}"))
            .unwrap_or_default();
        let check = match p.check {
            Check::Https => format!(
                " check{port} check-ssl verify none inter {}ms rise {rise} fall {fall}",
                p.interval_ms
            ),
            Check::Tcp => format!(
                " check{port} inter {}ms rise {rise} fall {fall}",
                p.interval_ms
            ),
            Check::None => String::new(),
        };
        for (i, b) in p.backends.iter().enumerate() {
            t += &format!("    server s{i} {b}{check}\n");
        }
        t += "\n";
    }
    t
}
