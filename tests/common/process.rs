//! A child process for the tests that drive `splicer run` by signals: output collected and
//! shown on failure, bounded waits for readiness and exit.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{collect_lines, try_http, WAIT};

/// A child process (usually `splicer run`): killed on drop, stdout and stderr collected.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its pid.
    pub pid: i32,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` with its output collected (and its stdin closed); killed on drop.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("process starts");
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("pid");
        let log = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stderr.take().expect("stderr"), log.clone());
        collect_lines(child.stdout.take().expect("stdout"), log.clone());
        Proc { child, pid, log }
    }

    /// `splicer run -c config`, with no variable of the environment that would change how it
    /// starts (a config path, a service manager, passed sockets).
    pub fn run(config: &Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_splicer"));
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env_remove("SPLICER_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env("RUST_LOG", "info");
        Proc::spawn(cmd)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    pub async fn exit(&mut self) -> ExitStatus {
        let waited = tokio::time::timeout(WAIT, self.child.wait()).await;
        let log = self.log();
        waited
            .unwrap_or_else(|_| panic!("no exit within {WAIT:?}\n{log}"))
            .expect("wait")
    }

    /// SIGTERM; the exit must be 0.
    pub async fn stop_cleanly(&mut self) {
        self.signal(libc::SIGTERM);
        let code = self.exit().await.code();
        assert_eq!(code, Some(0), "pid {}\n{}", self.pid, self.log());
    }

    /// Polls the admin API until `path` answers 200 with a body `ok` accepts (bounded),
    /// failing fast if the process exits.
    pub async fn until(&mut self, admin: SocketAddr, path: &str, ok: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            if let Some((200, body)) = try_http(admin, "GET", path).await {
                if ok(&body) {
                    return;
                }
            }
            let (exited, log) = (self.child.try_wait().expect("poll"), self.log());
            assert!(
                exited.is_none() && started.elapsed() < WAIT,
                "no {path}: {exited:?}\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Until `/ready` answers 200.
    pub async fn until_ready(&mut self, admin: SocketAddr) {
        self.until(admin, "/ready", |_| true).await;
    }

    /// Until `/status` lists the listener (`/ready` stays 503 when every backend is drained).
    pub async fn until_listening(&mut self, admin: SocketAddr) {
        self.until(admin, "/status", |b| b.contains("\"listeners\":[{"))
            .await;
    }
}

/// kill(2), asserting it worked.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Whether `pid` runs (a zombie counts as gone: an upgrade's successor is not our child).
pub fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}
