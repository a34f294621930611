//! Binary upgrade, both halves. The old process starts its successor from the executable path
//! it was started from, with the same arguments and environment, and hands it every listening
//! socket by inheritance (the fds stay open across exec; their names travel in
//! `SPLICER_UPGRADE_FDS`). The successor reports ready on a pipe (`SPLICER_UPGRADE_READY_FD`)
//! once its listeners accept; only then does the old process close its copies and drain.
//! The same sockets, never re-bound: nothing queued in a backlog is lost (docs/operations.md
//! says why this and not SO_REUSEPORT or SCM_RIGHTS).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::inherited::{upgrade_spec, UPGRADE_FDS_ENV};

/// Environment variable naming the pipe a successor reports readiness on.
pub const READY_FD_ENV: &str = "SPLICER_UPGRADE_READY_FD";

/// How this process was started, recorded at start so an upgrade runs what is installed at the
/// same path later (`/proc/self/exe` would be the old, replaced inode).
#[derive(Debug, Clone)]
pub struct Executable {
    /// The executable's path as resolved at start.
    pub path: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
}

impl Executable {
    /// This process's executable and arguments, as they are now.
    pub fn current() -> std::io::Result<Executable> {
        Ok(Executable {
            path: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Why an upgrade did not take place (the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is under way.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// The process is stopping.
    #[error("the process is shutting down")]
    ShuttingDown,
    /// No executable path was recorded (splicer embedded in another program, e.g. tests).
    #[error("this process cannot upgrade itself (no executable recorded)")]
    Unsupported,
    /// The readiness pipe could not be made.
    #[error("cannot create the readiness pipe")]
    Pipe(#[source] std::io::Error),
    /// The new process could not be started.
    #[error("cannot start {path}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The new process exited before it was ready.
    #[error("the new process (pid {pid}) exited before it was ready ({status}); see its log lines above")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// The new process closed its readiness pipe without reporting ready.
    #[error("the new process (pid {pid}) closed its readiness pipe without reporting ready")]
    Closed {
        /// Its pid.
        pid: u32,
    },
    /// The new process was not ready in time; it was killed.
    #[error("the new process (pid {pid}) was not ready within upgrade_timeout ({timeout:?}); it was stopped")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// `runtime.upgrade_timeout`.
        timeout: Duration,
    },
}

/// A successor that reported ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    /// The old process (this one).
    pub old_pid: u32,
    /// The new process.
    pub new_pid: u32,
}

/// Starts `exe` with `sockets` (name, fd) inherited and waits up to `timeout` for it to report
/// ready. On any failure the child is stopped and reaped, and this process is unchanged.
pub async fn start_successor(
    exe: &Executable,
    sockets: &[(String, RawFd)],
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| UpgradeError::Pipe(e.into()))?;
    let write_fd = write_end.as_raw_fd();
    let mut inherit: Vec<RawFd> = sockets.iter().map(|(_, fd)| *fd).collect();
    inherit.push(write_fd);

    let mut cmd = tokio::process::Command::new(&exe.path);
    cmd.args(&exe.args)
        .env(UPGRADE_FDS_ENV, upgrade_spec(sockets))
        .env(READY_FD_ENV, write_fd.to_string())
        // Sockets from systemd were this process's; the successor gets them by name above.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        // The manager set it to this process; the successor, as the new main process, feeds
        // the watchdog from now on (WATCHDOG_USEC stays).
        .env_remove("WATCHDOG_PID");
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; clearing
    // FD_CLOEXEC in the child leaves the parent's flags as they were.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = spawn_retrying_busy(&mut cmd)
        .await
        .map_err(|source| UpgradeError::Spawn {
            path: exe.path.clone(),
            source,
        })?;
    // Only the child holds the write end now: its exit closes the pipe.
    drop(write_end);
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, path = %exe.path.display(), "upgrade: new process started; waiting for it to be ready");

    let outcome = tokio::select! {
        r = read_ready(read_end) => match r {
            Some(new_pid) => Ok(new_pid),
            None => {
                // EOF first: it usually means the process is exiting; say how it ended.
                match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                    Ok(Ok(status)) => Err(UpgradeError::Exited { pid, status }),
                    _ => Err(UpgradeError::Closed { pid }),
                }
            }
        },
        status = child.wait() => match status {
            Ok(status) => Err(UpgradeError::Exited { pid, status }),
            Err(_) => Err(UpgradeError::Closed { pid }),
        },
        _ = tokio::time::sleep(timeout) => Err(UpgradeError::Timeout { pid, timeout }),
    };
    match outcome {
        Ok(new_pid) => {
            // The successor outlives this process; tokio reaps it if it ends first.
            drop(child);
            Ok(Upgraded {
                old_pid: std::process::id(),
                new_pid,
            })
        }
        Err(e) => {
            stop_child(&mut child).await;
            Err(e)
        }
    }
}

/// How long an exec refused with ETXTBSY is retried in all.
const BUSY_FOR: Duration = Duration::from_secs(1);

/// Spawns `cmd`, retrying while the kernel refuses the exec with ETXTBSY: a file just installed
/// can still be open for writing for a moment in another process (an installer's child that
/// inherited the descriptor between fork and exec; Go's toolchain hit the same). Waits at most
/// [`BUSY_FOR`].
async fn spawn_retrying_busy(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && started.elapsed() < BUSY_FOR => {
                tracing::info!(error = %e, "upgrade: the new binary is still open for writing; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// SIGTERM, a moment to go, then SIGKILL; always reaped.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    }
}

/// Reads `READY <pid>\n` from the pipe; `None` on EOF or anything else.
async fn read_ready(fd: OwnedFd) -> Option<u32> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
    let mut buf = Vec::with_capacity(32);
    let mut chunk = [0u8; 32];
    loop {
        let n = pipe.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = std::str::from_utf8(&buf[..end]).ok()?;
            return line.strip_prefix("READY ")?.trim().parse().ok();
        }
        if buf.len() > 64 {
            return None;
        }
    }
}

/// The successor's end: the pipe to report readiness on, taken from the environment at start.
#[derive(Debug)]
pub struct ReadyPipe(OwnedFd);

impl ReadyPipe {
    /// Takes (and removes) `SPLICER_UPGRADE_READY_FD`. Must run before any thread exists.
    pub fn from_env() -> Option<ReadyPipe> {
        let value = std::env::var(READY_FD_ENV).ok();
        std::env::remove_var(READY_FD_ENV);
        let fd: RawFd = value?.trim().parse().ok().filter(|&fd| fd > 2)?;
        // SAFETY: F_GETFD only reads the descriptor flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: the fd is open and was handed to this process to own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        Some(ReadyPipe(fd))
    }

    /// Tells the old process this one serves; closes the pipe.
    pub fn report_ready(self) {
        let line = format!("READY {}\n", std::process::id());
        if let Err(e) = rustix::io::write(&self.0, line.as_bytes()) {
            tracing::warn!(error = %e, "cannot tell the old process that this one is ready");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// An executable script at a fresh path, with the writer still open (as an installer's).
    fn script_being_written(dir: &std::path::Path) -> (PathBuf, std::fs::File) {
        let path = dir.join("new-binary");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"#!/bin/sh\nexit 7\n").expect("write");
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        (path, f)
    }

    #[tokio::test]
    async fn an_exec_refused_while_the_file_is_written_is_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, writer) = script_being_written(dir.path());
        let mut cmd = tokio::process::Command::new(&path);
        // Refused while the writer is open (proves the setup reproduces ETXTBSY)...
        let busy = cmd.spawn().err().and_then(|e| e.raw_os_error());
        assert_eq!(busy, Some(libc::ETXTBSY));
        // ...and started once the writer closes within the retry window.
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(writer);
        });
        let mut child = spawn_retrying_busy(&mut cmd).await.expect("retried spawn");
        let status = child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(7));
        closer.await.expect("closer");
    }

    #[tokio::test]
    async fn a_file_that_stays_busy_fails_after_the_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _writer) = script_being_written(dir.path());
        let started = std::time::Instant::now();
        let err = spawn_retrying_busy(&mut tokio::process::Command::new(&path))
            .await
            .err()
            .and_then(|e| e.raw_os_error());
        assert_eq!(err, Some(libc::ETXTBSY));
        assert!(started.elapsed() >= BUSY_FOR, "{:?}", started.elapsed());
    }
}
