//! HAProxy under seamless reloads, the classic way its management guide describes: the stats
//! socket has `expose-fd listeners`, and each reload starts a new `haproxy -f CFG -x SOCK -sf
//! OLD` that takes the listening sockets from the old process over that socket, then tells it
//! (SIGUSR1) to stop accepting and finish its connections. "Serving" is the stats socket
//! answering `show info` with the new process's pid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::free_addr;
use crate::scenario::{last_lines, Balancer};
use crate::sys::{self, ChildGuard};

/// Longest a reload may take before it counts as failed.
const RELOAD_LIMIT: Duration = Duration::from_secs(40);

/// HAProxy processes started by the bench (every generation is our child).
pub struct HaproxyUnderReload {
    bin: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    listen: SocketAddr,
    log: PathBuf,
    core: Option<usize>,
    children: Vec<ChildGuard>,
}

impl HaproxyUnderReload {
    /// Starts `bin` in front of `nodes`, on `core`, and waits until its stats socket answers.
    pub async fn start(
        bin: &Path,
        nodes: &[SocketAddr],
        core: Option<usize>,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("splicer-bench-haproxy-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let socket = dir.path().join("admin.sock");
        let listen = free_addr();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, config_text(&socket, listen, nodes))
            .map_err(|e| format!("write config: {e}"))?;
        let log = dir.path().join("haproxy.log");
        let mut h = HaproxyUnderReload {
            bin: bin.to_owned(),
            config,
            socket,
            listen,
            log,
            core,
            children: Vec::new(),
            dir,
        };
        let pid = h.spawn(None)?;
        h.wait_serving(pid, Duration::from_secs(30)).await?;
        Ok(h)
    }

    /// Starts a generation: the first one binds, the next ones take the sockets of `old`.
    fn spawn(&mut self, old: Option<i32>) -> Result<i32, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-db").arg("-f").arg(&self.config);
        if let Some(old) = old {
            // `-sf` must come last (haproxy(1)).
            cmd.arg("-x")
                .arg(&self.socket)
                .arg("-sf")
                .arg(old.to_string());
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        sys::child_setup(&mut cmd, self.core);
        let child = cmd.spawn().map_err(|e| format!("spawn haproxy: {e}"))?;
        let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
        self.children.push(ChildGuard(child));
        Ok(pid)
    }

    /// Waits until the stats socket answers with `pid` (or the process exits).
    async fn wait_serving(&mut self, pid: i32, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.serving_pid().await == Some(pid) {
                return Ok(());
            }
            if !self.processes().contains(&pid) {
                return Err(format!(
                    "haproxy {pid} exited before it served: {}",
                    self.log_tail(5)
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!(
            "haproxy {pid} not serving within {limit:?}: {}",
            self.log_tail(5)
        ))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log_text(), n)
    }
}

/// `mode tcp` in front of the rig's nodes, checked as splicer checks them (HTTPS
/// `GET /health/instance` every second), one thread as splicer's `workers = 1`.
fn config_text(socket: &Path, listen: SocketAddr, nodes: &[SocketAddr]) -> String {
    let servers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server n{i} {a} check check-ssl verify none inter 1s\n"))
        .collect();
    format!(
        "global\n    nbthread 1\n    maxconn 4096\n\
         \x20   stats socket {socket} mode 600 expose-fd listeners level admin\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n\
         \x20   timeout client 5m\n    timeout server 5m\n\n\
         frontend fe\n    bind {listen}\n    default_backend be\n\n\
         backend be\n    option httpchk GET /health/instance\n    timeout check 500ms\n{servers}",
        socket = socket.display()
    )
}

/// `show info` on the stats socket: the `Pid:` line.
async fn stats_pid(socket: &Path) -> Option<i32> {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"show info\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

impl Balancer for HaproxyUnderReload {
    fn label(&self) -> &'static str {
        "haproxy -x -sf"
    }

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    async fn serving_pid(&self) -> Option<i32> {
        stats_pid(&self.socket).await
    }

    async fn upgrade(&mut self, old: i32) -> Result<i32, String> {
        let new = self.spawn(Some(old))?;
        self.wait_serving(new, RELOAD_LIMIT).await?;
        Ok(new)
    }

    /// Generations still running (exited ones are reaped here).
    fn processes(&mut self) -> Vec<i32> {
        self.children
            .iter_mut()
            .filter_map(|c| match c.exited() {
                None => i32::try_from(c.pid()).ok(),
                Some(_) => None,
            })
            .collect()
    }

    fn notable_log_lines(&self, max: usize) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("[ALERT]") || l.contains("[WARNING]"))
            // Every soft-stopped generation says this of each of its proxies: not news.
            .filter(|l| !l.contains("stopped (cumulated conns"))
            .take(max)
            .map(|l| format!("haproxy log: {}", l.trim()))
            .collect()
    }
}
