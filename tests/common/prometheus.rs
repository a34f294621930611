//! A real Prometheus server and `promtool` for the monitoring tests (Debian package
//! `prometheus`, which scripts/test installs). Missing programs fail the test: monitoring that
//! is never checked against Prometheus is not checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_addr, try_http};

/// Prometheus starts in a second or two; a loaded CI machine may take much longer.
pub const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// The path of `program`, searched in `PATH` and then in /usr/bin, /usr/sbin and /usr/local/bin;
/// panics (the test fails, it is not skipped) when it is nowhere.
pub fn required_program(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed: these tests need it (Debian package `prometheus`; \
         scripts/test installs it, or: apt-get install prometheus)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `promtool`.
pub fn promtool() -> PathBuf {
    required_program("promtool")
}

/// Runs `promtool args...` in `dir`: (success, stdout and stderr together).
pub fn run_promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A Prometheus server on a loopback port, scraping one target every second, its data in a
/// temp dir. Dropping it kills the process and waits for it (on every exit path of a test,
/// panics included); should the test process itself be killed, the kernel kills it too.
pub struct Prometheus {
    child: Child,
    /// Its HTTP API.
    pub addr: SocketAddr,
    log: PathBuf,
    // Removed after the process is gone (fields drop in order, after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `GET /metrics` of `target` as job `job`, every second, and
    /// waits (bounded) until its API is ready. A port taken before it bound it is retried.
    pub async fn start(job: &str, target: SocketAddr) -> Prometheus {
        let binary = required_program("prometheus");
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                     scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
                     static_configs:\n      - targets: [\"{target}\"]\n"
                ),
            )
            .expect("write prometheus.yml");
            let addr = free_addr();
            let log = dir.path().join("prometheus.log");
            let log_file = std::fs::File::create(&log).expect("create the log");
            let mut cmd = Command::new(&binary);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file);
            die_with_parent(&mut cmd);
            let child = cmd.spawn().expect("prometheus starts");
            let mut p = Prometheus {
                child,
                addr,
                log,
                _dir: dir,
            };
            match p.until_ready().await {
                Ok(()) => return p,
                // A parallel test took the port between finding and binding it.
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("prometheus did not start; its log:\n{log}"),
            }
        }
        panic!("no free loopback port for prometheus in 5 tries");
    }

    /// Polls `/-/ready` until 200; `Err(log)` if the process exits first, a panic after
    /// [`PROMETHEUS_WAIT`].
    async fn until_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll prometheus") {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if let Some((200, _)) = try_http(self.addr, "GET", "/-/ready").await {
                return Ok(());
            }
            assert!(
                started.elapsed() < PROMETHEUS_WAIT,
                "prometheus not ready within {PROMETHEUS_WAIT:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: the `data.result` array of `GET /api/v1/query`, or the error Prometheus
    /// answered.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let q = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        let Some((code, body)) =
            try_http(self.addr, "GET", &format!("/api/v1/query?query={q}")).await
        else {
            return Err(format!("no answer to {promql}"));
        };
        let doc: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("{promql}: {code} not JSON ({e}): {body}"))?;
        if code != 200 || doc["status"] != "success" {
            return Err(format!("{promql}: {code} {body}"));
        }
        Ok(doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls `promql` every 200 ms until `accept` takes its result (returned), for at most
    /// [`PROMETHEUS_WAIT`]; the panic shows the last result and the server's log.
    pub async fn until<T>(
        &self,
        what: &str,
        promql: &str,
        accept: impl Fn(&[serde_json::Value]) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            let last = self.query(promql).await;
            if let Ok(result) = &last {
                if let Some(v) = accept(result) {
                    return v;
                }
            }
            assert!(
                started.elapsed() < PROMETHEUS_WAIT,
                "timed out after {PROMETHEUS_WAIT:?} waiting for {what}: {promql} gave {last:?}\n\
                 prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGKILL: nothing of its state is wanted, and it cannot ignore it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample of a query result (`"value": [time, "1.5"]`).
pub fn sample_value(sample: &serde_json::Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// Has the kernel SIGKILL the child when the thread that started it ends, so a test process
/// killed outright (a CI timeout) leaves no Prometheus behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
