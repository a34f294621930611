//! Real peer programs from Debian packages (nginx, HAProxy, openssl, ...): found on PATH or in
//! the sbin directories, run in the foreground with their output in a log file, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::WAIT;

/// Path of `program`, from PATH or the sbin directories; panics naming the Debian package, so
/// a missing tool fails the test instead of skipping it.
pub fn find_program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` not found: install the Debian package `{package}` \
                 (scripts/test installs it)"
            )
        })
}

/// A program run in the foreground for a test, its stdout and stderr in `log`; killed when
/// dropped.
pub struct Daemon {
    /// The child.
    pub child: Child,
    /// Shown in failure messages.
    pub name: &'static str,
    /// Where its output goes (some programs also write their own logs there).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `program args...` with stdin closed and its output appended to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[&std::ffi::OsStr],
        log: PathBuf,
    ) -> Daemon {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        Daemon { child, name, log }
    }

    /// Everything in its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until `addr` accepts connections; panics with the log if it exits.
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        let start = Instant::now();
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("{} exited at start ({exit}):\n{}", self.name, self.log());
            }
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{} did not listen on {addr} within {WAIT:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
