//! The one child-process helper of the integration tests: a `splicer run` (or any command)
//! with its output collected and shown on failure, started on free ports or from a file,
//! bounded waits for readiness and exit, and a log that is complete once the exit was awaited.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{collect_lines, free_addr, try_http, WAIT};

/// Where a child's stdout goes (splicer writes its access log there, its logs to stderr).
#[derive(Debug)]
pub enum Stdout {
    /// Into the log, interleaved with stderr line by line.
    Log,
    /// Left piped in `child.stdout`, for the test to read (or to leave unread: a stalled sink).
    Piped,
    /// Discarded.
    Null,
    /// Into this file (`/dev/full`: a sink that fails every write).
    File(std::fs::File),
}

impl Stdout {
    /// The same choice again, for a retried start.
    fn again(&self) -> Stdout {
        match self {
            Stdout::Log => Stdout::Log,
            Stdout::Piped => Stdout::Piped,
            Stdout::Null => Stdout::Null,
            Stdout::File(f) => f.try_clone().map_or(Stdout::Null, Stdout::File),
        }
    }
}

/// A child process (usually `splicer run`): stdin closed, output collected into one log,
/// killed on drop.
pub struct Proc {
    /// The child (its stdout is here to take with [`Stdout::Piped`]).
    pub child: Child,
    /// Its pid, for signals and `/status`'s `pid`.
    pub pid: i32,
    log: Arc<Mutex<Vec<String>>>,
    /// Read stderr (and stdout with [`Stdout::Log`]) until EOF; awaited after the exit.
    readers: Vec<JoinHandle<()>>,
    /// Admin API and listener addresses, for a process from [`Proc::start`].
    admin: Option<SocketAddr>,
    listeners: Vec<SocketAddr>,
    /// The temp dir holding [`Proc::start`]'s config file (removed on drop).
    dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr collected into the log.
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_with(cmd, Stdout::Log)
    }

    /// Starts `cmd` (stdin closed, killed on drop) with stderr collected and stdout as asked.
    pub fn spawn_with(mut cmd: Command, stdout: Stdout) -> Proc {
        let (out, collect_stdout) = match stdout {
            Stdout::Log => (Stdio::piped(), true),
            Stdout::Piped => (Stdio::piped(), false),
            Stdout::Null => (Stdio::null(), false),
            Stdout::File(f) => (Stdio::from(f), false),
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("process starts");
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("pid");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![collect_lines(
            child.stderr.take().expect("stderr"),
            log.clone(),
        )];
        if collect_stdout {
            let out = child.stdout.take().expect("stdout");
            readers.push(collect_lines(out, log.clone()));
        }
        Proc {
            child,
            pid,
            log,
            readers,
            admin: None,
            listeners: Vec::new(),
            dir: None,
        }
    }

    /// `splicer run -c config` with no variable of the environment that would change how it
    /// starts (a config path, a service manager, passed sockets), info logs.
    pub fn command(config: &Path) -> Command {
        Proc::command_for(Path::new(env!("CARGO_BIN_EXE_splicer")), config)
    }

    /// [`Proc::command`] with the executable at `bin` (an installed copy).
    pub fn command_for(bin: &Path, config: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(config);
        let vars = "SPLICER_CONFIG NOTIFY_SOCKET WATCHDOG_USEC WATCHDOG_PID LISTEN_FDS LISTEN_PID";
        for var in vars.split(' ') {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info");
        cmd
    }

    /// [`Proc::command`] started with its output collected.
    pub fn run(config: &Path) -> Proc {
        Proc::spawn(Proc::command(config))
    }

    /// Starts `splicer run` on free loopback ports: `make_config(admin, listeners)` returns
    /// the config file's text for an admin address and `listeners` listener addresses. Returns
    /// once `/status` lists every listener (they open after the start-up health round); fails
    /// fast with the log if the process exits. A port taken between finding and binding it
    /// (exit 1, "in use") is retried with other ones.
    pub async fn start(
        stdout: Stdout,
        listeners: usize,
        make_config: impl Fn(SocketAddr, &[SocketAddr]) -> String,
    ) -> Proc {
        for _ in 0..5 {
            let admin = free_addr();
            let addrs: Vec<SocketAddr> = (0..listeners).map(|_| free_addr()).collect();
            if addrs.contains(&admin) {
                continue;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("splicer.toml");
            std::fs::write(&path, make_config(admin, &addrs)).expect("write config");
            let mut p = Proc::spawn_with(Proc::command(&path), stdout.again());
            p.admin = Some(admin);
            p.listeners = addrs;
            p.dir = Some(dir);
            let all_listed = |body: &str| {
                serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|s| s["listeners"].as_array().map(Vec::len))
                    == Some(listeners)
            };
            match p.poll(admin, "/status", all_listed).await {
                Ok(()) => return p,
                Err(status) if status.code() == Some(1) && p.log().contains("in use") => {
                    continue; // a port was taken meanwhile: try other ones
                }
                Err(status) => {
                    panic!(
                        "splicer exited during start-up ({status}); log:\n{}",
                        p.log()
                    )
                }
            }
        }
        panic!("could not find free ports for splicer in 5 tries");
    }

    /// The admin API address of a process from [`Proc::start`].
    pub fn admin(&self) -> SocketAddr {
        self.admin
            .expect("admin address: only known for Proc::start")
    }

    /// The listener addresses of a process from [`Proc::start`], in the config builder's order.
    pub fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// The config file of a process from [`Proc::start`] (rewrite it, then SIGHUP, to reload).
    pub fn config(&self) -> PathBuf {
        let dir = self
            .dir
            .as_ref()
            .expect("config file: only known for Proc::start");
        dir.path().join("splicer.toml")
    }

    /// Everything it wrote so far, one line per line (complete once the exit was awaited).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Waits (bounded by [`WAIT`]) for the exit; returns its status once the log is complete.
    pub async fn exit(&mut self) -> ExitStatus {
        self.exit_within(WAIT).await.0
    }

    /// Waits (bounded by `limit`) for the exit; returns the status and when it was seen, once
    /// every line the process wrote is in the log.
    pub async fn exit_within(&mut self, limit: Duration) -> (ExitStatus, Instant) {
        let status = self.wait_child(limit).await;
        let exited_at = Instant::now();
        self.finish_log().await;
        (status, exited_at)
    }

    /// Waits (bounded by [`WAIT`]) for the exit of a process that handed over to an upgrade's
    /// successor: the successor holds the output open, and its lines keep coming into the log.
    pub async fn exit_handing_over(&mut self) -> ExitStatus {
        self.wait_child(WAIT).await
    }

    /// SIGTERM, then [`Proc::exit`].
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.exit().await
    }

    /// SIGTERM; the exit must be 0.
    pub async fn stop_cleanly(&mut self) {
        let code = self.stop().await.code();
        assert_eq!(code, Some(0), "pid {}\n{}", self.pid, self.log());
    }

    /// Polls the admin API until `path` answers 200 with a body `ok` accepts (bounded),
    /// failing fast with the log if the process exits.
    pub async fn until(&mut self, admin: SocketAddr, path: &str, ok: impl Fn(&str) -> bool) {
        if let Err(status) = self.poll(admin, path, ok).await {
            panic!(
                "exited ({status}) before {path} answered; log:\n{}",
                self.log()
            );
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

    /// Waits (bounded) until a log line contains `needle`; returns the log's lines up to and
    /// including the first such line, in the order written. Fails fast if the process exits.
    pub async fn until_logged(&mut self, needle: &str) -> Vec<String> {
        let started = Instant::now();
        loop {
            if let Some(lines) = self.lines_through(needle) {
                return lines;
            }
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                self.finish_log().await;
                // The line may have come between the look and the exit.
                if let Some(lines) = self.lines_through(needle) {
                    return lines;
                }
                panic!(
                    "exited ({status}) without logging {needle:?}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < WAIT,
                "{needle:?} not logged within {WAIT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The log's lines up to and including the first one containing `needle`, if any does.
    fn lines_through(&self, needle: &str) -> Option<Vec<String>> {
        let lines = self.log.lock().ok()?;
        let i = lines.iter().position(|l| l.contains(needle))?;
        Some(lines[..=i].to_vec())
    }

    /// Polls `path` on `admin` until it answers 200 with a body `ok` accepts (`Ok`), or the
    /// process exits (`Err`, with the log complete); panics after [`WAIT`].
    async fn poll(
        &mut self,
        admin: SocketAddr,
        path: &str,
        ok: impl Fn(&str) -> bool,
    ) -> Result<(), ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                self.finish_log().await;
                return Err(status);
            }
            if let Some((200, body)) = try_http(admin, "GET", path).await {
                if ok(&body) {
                    return Ok(());
                }
            }
            assert!(
                started.elapsed() < WAIT,
                "no {path} within {WAIT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded by `limit`) for the child's exit, panicking with the log after it.
    async fn wait_child(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!(
                "pid {} did not exit within {limit:?}; log:\n{}",
                self.pid,
                self.log()
            ),
        }
    }

    /// Waits (bounded by [`WAIT`]) for the readers to see the end of an exited child's output.
    async fn finish_log(&mut self) {
        for reader in std::mem::take(&mut self.readers) {
            let ended = tokio::time::timeout(WAIT, reader).await;
            assert!(
                ended.is_ok(),
                "pid {}: output still open {WAIT:?} after the exit (an upgrade's successor \
                 holds it? see exit_handing_over); log:\n{}",
                self.pid,
                self.log()
            );
        }
    }
}

/// `splicer ARGS...` as a one-shot command: none of the CLI's `SPLICER_*` settings inherited
/// from the caller's environment, stdin closed, stdout and stderr piped, killed on drop.
pub fn splicer_cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_splicer"));
    cmd.args(args)
        .env_remove("SPLICER_CONFIG")
        .env_remove("SPLICER_ADMIN")
        .env_remove("SPLICER_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end; panics if it has not ended within `limit` (it is killed then).
pub async fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd.spawn().expect("the command starts");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not end within {limit:?}"))
        .expect("collect output")
}

/// A finished command's exit code, stdout and stderr as text.
pub fn printed(out: &std::process::Output) -> (Option<i32>, String, String) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// kill(2), asserting it worked.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions. A pid from a `Proc` names our child,
    // which is not reaped before its exit is awaited, so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// SIGKILLs a process the test did not start itself (an upgrade's successor: `kill_on_drop`
/// cannot reach it) when dropped, if it still runs.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_if_alive(self.0);
    }
}

/// SIGKILL to `pid` if it still runs; a process already gone is no error.
pub fn kill_if_alive(pid: i32) {
    if is_alive(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Whether `pid` runs (a zombie counts as gone: an upgrade's successor is not our child).
pub fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}
