//! splicer as real processes started from a copy of the binary in a temp dir, so a test can
//! install a "new" binary over that path as a package manager does (write, then rename) and
//! upgrade to it; successors are found through /proc (they are not the test's children).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::process::{is_alive, kill_if_alive, signal, Proc};
use super::{free_addr, try_http, WAIT};

/// A splicer binary installed in a temp dir, replaceable in place.
pub struct Installed {
    dir: tempfile::TempDir,
    /// The installed executable.
    pub bin: PathBuf,
}

impl Installed {
    /// Installs the binary under test.
    pub fn new() -> Installed {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("splicer");
        let installed = Installed { dir, bin };
        installed.reinstall();
        installed
    }

    /// Installs the binary under test over the path: a new file renamed over the old one, so
    /// running processes keep their (now unlinked) inode.
    pub fn reinstall(&self) {
        let tmp = self.dir.path().join(".splicer.new");
        copy_by_child(Path::new(env!("CARGO_BIN_EXE_splicer")), &tmp);
        std::fs::rename(&tmp, &self.bin).expect("install over the path");
    }

    /// Installs a shell script over the path (a "binary" that misbehaves).
    pub fn install_script(&self, text: &str) {
        let tmp = self.dir.path().join(".splicer.new");
        write_executable(&tmp, text);
        std::fs::rename(&tmp, &self.bin).expect("install over the path");
    }

    /// Live (not zombie) processes whose executable is, or was, this path.
    pub fn processes(&self) -> Vec<i32> {
        let want = self.bin.to_string_lossy().into_owned();
        let deleted = format!("{want} (deleted)");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
                continue;
            };
            let exe = exe.to_string_lossy();
            if (exe == want || exe == deleted) && is_alive(pid) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Successors are not our children: kill_on_drop cannot reach them.
        for pid in self.processes() {
            kill_if_alive(pid);
        }
    }
}

/// Open descriptors of `pid`.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Writes an executable file at `path` that a test then runs. The file that will be executed
/// is written by `cp`, never by the test process: a child another test forks meanwhile would
/// inherit a descriptor open for writing, and an exec before that child's own exec fails with
/// ETXTBSY ("Text file busy"; CI saw it once).
pub fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let source = path.with_extension("source");
    std::fs::write(&source, text).expect("write the script");
    copy_by_child(&source, path);
    // chmod by path opens nothing for writing.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `cp source dest` (the mode follows the source's, as for a new file).
fn copy_by_child(source: &Path, dest: &Path) {
    let copied = std::process::Command::new("cp")
        .arg(source)
        .arg(dest)
        .status()
        .expect("run cp");
    assert!(
        copied.success(),
        "cp {} {}: {copied}",
        source.display(),
        dest.display()
    );
}

/// `splicer run` started from an installed path; its successors write to the same pipes.
pub struct Running {
    /// The first process (killed on drop; successors by [`Installed`]'s drop).
    pub process: Proc,
    /// Admin API address.
    pub admin: SocketAddr,
    /// The listener's address.
    pub listen: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl Running {
    /// Starts `bin run` with `config_text(admin, listen)`; waits until `/ready` answers 200.
    pub async fn start(
        bin: &Path,
        config_text: impl Fn(SocketAddr, SocketAddr) -> String,
    ) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("splicer.toml");
        let (admin, listen) = (free_addr(), free_addr());
        std::fs::write(&config, config_text(admin, listen)).expect("write config");
        let mut process = Proc::spawn(Proc::command_for(bin, &config));
        process.until_ready(admin).await;
        Running {
            process,
            admin,
            listen,
            config,
            _config_dir: dir,
        }
    }

    /// stdout and stderr of every generation so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The pid that answers on the admin API now.
    pub async fn serving_pid(&self) -> Option<i32> {
        let (code, body) = try_http(self.admin, "GET", "/status").await?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["pid"].as_i64().and_then(|p| i32::try_from(p).ok())
    }

    /// SIGUSR2 to `pid`, then waits until another process answers.
    pub async fn upgrade_by_signal(&self, pid: i32) -> i32 {
        signal(pid, libc::SIGUSR2);
        let started = Instant::now();
        loop {
            if let Some(new) = self.serving_pid().await.filter(|p| *p != pid) {
                return new;
            }
            assert!(
                started.elapsed() < WAIT,
                "no new process within {WAIT:?} after SIGUSR2; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /upgrade`: (status, body).
    pub async fn upgrade_by_api(&self) -> (u16, serde_json::Value) {
        let (code, body) = try_http(self.admin, "POST", "/upgrade")
            .await
            .expect("the admin API answers POST /upgrade");
        let doc = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (code, doc)
    }
}
