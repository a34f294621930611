//! splicer under binary upgrades: `splicer run` from a copy of the binary in a temp dir; each
//! upgrade installs the same binary over that path (a new file renamed over it, as a package
//! manager does), sends SIGUSR2, and waits until `GET /status` names another pid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{backends_toml, free_addr, try_http};
use crate::scenario::{last_lines, poll, Balancer};
use crate::sys;

/// Longest an upgrade may take: splicer's own `upgrade_timeout` (30 s) and a margin.
const UPGRADE_LIMIT: Duration = Duration::from_secs(40);

/// A running splicer and the processes it becomes.
pub struct SplicerUnderUpgrade {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    source: PathBuf,
    admin: SocketAddr,
    listen: SocketAddr,
    log: PathBuf,
    first: sys::ChildGuard,
}

impl SplicerUnderUpgrade {
    /// Installs `source` in a temp dir and starts it in front of `nodes`, on `core`; waits until
    /// it answers (after its start-up health round).
    pub async fn start(
        source: &Path,
        nodes: &[SocketAddr],
        core: Option<usize>,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("splicer-bench-upgrade-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let bin = dir.path().join("splicer");
        install(source, &bin)?;
        let (admin, listen) = (free_addr(), free_addr());
        let config = dir.path().join("splicer.toml");
        std::fs::write(&config, config_text(admin, listen, nodes))
            .map_err(|e| format!("write config: {e}"))?;
        let log = dir.path().join("splicer.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "-c"])
            .arg(&config)
            .env_remove("SPLICER_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Pinned to the balancer's CPU; its successors inherit the affinity.
        sys::child_setup(&mut cmd, core);
        let first = sys::ChildGuard(cmd.spawn().map_err(|e| format!("spawn splicer: {e}"))?);
        let mut s = SplicerUnderUpgrade {
            _dir: dir,
            bin,
            source: source.to_owned(),
            admin,
            listen,
            log,
            first,
        };
        let answered = poll(Duration::from_secs(30), || async {
            matches!(try_http(admin, "GET", "/ready").await, Some((200, _)))
        })
        .await;
        if !answered {
            let status = s.first.exited();
            return Err(format!(
                "splicer not ready within 30 s ({status:?}): {}",
                s.log_tail(5)
            ));
        }
        Ok(s)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log_text(), n)
    }

    /// Lines of its log that say an upgrade went through.
    pub fn upgrades_logged(&self) -> usize {
        self.log_text()
            .matches("upgrade: the new process serves")
            .count()
    }
}

/// Copies `source` next to `bin`, then renames it over `bin`: running processes keep their
/// (now unlinked) inode, the next exec of the path runs the new file.
fn install(source: &Path, bin: &Path) -> Result<(), String> {
    let tmp = bin.with_extension("new");
    std::fs::copy(source, &tmp).map_err(|e| format!("copy {}: {e}", source.display()))?;
    std::fs::rename(&tmp, bin).map_err(|e| format!("install over {}: {e}", bin.display()))
}

/// As tests/upgrade.rs, with one worker thread (HAProxy runs `nbthread 1`) and a drain long
/// enough for the slow downloads.
fn config_text(admin: SocketAddr, listen: SocketAddr, nodes: &[SocketAddr]) -> String {
    format!(
        r#"[admin]
bind = "{admin}"

[runtime]
workers = 1
drain_timeout = "300s"
access_log = false

[[listener]]
name = "https"
bind = "{listen}"
pool = "quay"

[[pool]]
name = "quay"
backends = {backends}

[pool.health]
check = "https"
interval = "1s"
timeout = "500ms"
"#,
        backends = backends_toml(nodes)
    )
}

fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

impl Balancer for SplicerUnderUpgrade {
    fn label(&self) -> &'static str {
        "splicer"
    }

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    async fn serving_pid(&self) -> Option<i32> {
        let (code, body) = try_http(self.admin, "GET", "/status").await?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["pid"].as_i64().and_then(|p| i32::try_from(p).ok())
    }

    async fn upgrade(&mut self, old: i32) -> Result<i32, String> {
        install(&self.source, &self.bin)?;
        if !signal(old, libc::SIGUSR2) {
            return Err(format!("kill({old}, SIGUSR2) failed"));
        }
        let started = Instant::now();
        while started.elapsed() < UPGRADE_LIMIT {
            if let Some(new) = self.serving_pid().await.filter(|p| *p != old) {
                return Ok(new);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!(
            "no new process within {UPGRADE_LIMIT:?} after SIGUSR2; log: {}",
            self.log_tail(5)
        ))
    }

    /// Live (not zombie) processes whose executable is, or was, the installed path.
    fn processes(&mut self) -> Vec<i32> {
        let _ = self.first.exited(); // reaps the first process once it has exited
        let want = self.bin.to_string_lossy().into_owned();
        let deleted = format!("{want} (deleted)");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<i32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                    let exe = exe.to_string_lossy();
                    exe == want || exe == deleted
                })
            })
            .filter(|pid| !is_zombie(*pid))
            .collect();
        pids.sort_unstable();
        pids
    }

    fn notable_log_lines(&self, max: usize) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .take(max)
            .map(|l| format!("splicer log: {}", l.trim()))
            .collect()
    }
}

impl Drop for SplicerUnderUpgrade {
    fn drop(&mut self) {
        // Successors are not our children: the first one's guard cannot reach them.
        for pid in self.processes() {
            signal(pid, libc::SIGKILL);
        }
    }
}
