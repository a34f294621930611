//! `runtime.state_file`: the operator's decisions (drain, disable) and the members added or
//! removed through the admin API, which must outlive the process, so a restart or an upgrade
//! does not put a drained or removed machine back into rotation, nor forget an added one.
//! Written whole on every change (temp file, fsync, rename, fsync of the directory), so a crash
//! at any moment leaves either the old file or the new one; read at start, where anything
//! wrong with it is reported and ignored, never fatal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Format version written in the file; a newer one is refused rather than misread. The
/// membership lists (`added`, `removed`) came later as optional fields: files without them are
/// still version 1 and read as before, and they are written only when not empty, so a file of
/// decisions alone is byte for byte what an older splicer writes and reads.
const VERSION: u32 = 1;

/// Longest state file read: far beyond any real one, small enough that a wrong path (a log
/// file, a device) cannot exhaust memory.
const MAX_SIZE: u64 = 16 * 1024 * 1024;

/// An admin decision about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// No new connections; checks go on.
    Draining,
    /// No new connections and no checks.
    Disabled,
}

/// One persisted decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDecision {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub address: SocketAddr,
    /// What the operator decided.
    pub state: Decision,
}

/// A backend added through the admin API to a pool whose file does not list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedBackend {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub address: SocketAddr,
    /// Its weight.
    pub weight: u32,
}

/// A backend of the config file removed through the admin API: it stays out across reloads
/// and restarts until it is added back through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedBackend {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub address: SocketAddr,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version.
    #[serde(default)]
    pub version: u32,
    /// Decisions in force, one per backend.
    #[serde(default)]
    pub backends: Vec<BackendDecision>,
    /// Members added through the admin API (not in the file), in the order they were added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedBackend>,
    /// Members of the file removed through the admin API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedBackend>,
}

impl State {
    /// Records `decision` for `pool/address` (`None`: the backend is back to what its checks
    /// say). Returns whether anything changed.
    pub fn set(&mut self, pool: &str, address: SocketAddr, decision: Option<Decision>) -> bool {
        let pos = self
            .backends
            .iter()
            .position(|b| b.pool == pool && b.address == address);
        match (pos, decision) {
            (Some(i), Some(d)) if self.backends[i].state == d => false,
            (Some(i), Some(d)) => {
                self.backends[i].state = d;
                true
            }
            (Some(i), None) => {
                self.backends.remove(i);
                true
            }
            (None, Some(d)) => {
                self.backends.push(BackendDecision {
                    pool: pool.to_string(),
                    address,
                    state: d,
                });
                true
            }
            (None, None) => false,
        }
    }

    /// Records that `pool/address` joined through the admin API: a backend of the file
    /// (`in_file`) is no longer removed; any other is added with `weight`. Its old decision
    /// goes: a machine that joins starts from its checks. Returns whether anything changed.
    pub fn record_added(
        &mut self,
        pool: &str,
        address: SocketAddr,
        weight: u32,
        in_file: bool,
    ) -> bool {
        let mut changed = self.set(pool, address, None);
        if in_file {
            let before = self.removed.len();
            self.removed
                .retain(|r| !(r.pool == pool && r.address == address));
            changed |= before != self.removed.len();
        } else {
            match self
                .added
                .iter_mut()
                .find(|a| a.pool == pool && a.address == address)
            {
                Some(a) if a.weight == weight => {}
                Some(a) => {
                    a.weight = weight;
                    changed = true;
                }
                None => {
                    self.added.push(AddedBackend {
                        pool: pool.to_string(),
                        address,
                        weight,
                    });
                    changed = true;
                }
            }
        }
        changed
    }

    /// Records that `pool/address` left through the admin API: a backend of the file
    /// (`in_file`) is remembered as removed; one added through the API is forgotten. Its
    /// decision goes with it. Returns whether anything changed.
    pub fn record_removed(&mut self, pool: &str, address: SocketAddr, in_file: bool) -> bool {
        let mut changed = self.set(pool, address, None);
        let before = self.added.len();
        self.added
            .retain(|a| !(a.pool == pool && a.address == address));
        changed |= before != self.added.len();
        let listed = self
            .removed
            .iter()
            .any(|r| r.pool == pool && r.address == address);
        if in_file && !listed {
            self.removed.push(RemovedBackend {
                pool: pool.to_string(),
                address,
            });
            changed = true;
        }
        changed
    }

    /// Forgets the members added through the API that `pool`'s file now lists itself (the
    /// file's entry wins, with its weight). Returns the addresses forgotten.
    pub fn forget_added_in_file(&mut self, pool: &str, file: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut forgotten = Vec::new();
        self.added.retain(|a| {
            let owned = a.pool == pool && file.contains(&a.address);
            if owned {
                forgotten.push(a.address);
            }
            !owned
        });
        forgotten
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading failed (other than "does not exist").
    #[error("cannot read state file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any state file splicer writes.
    #[error("state file {path} is {size} bytes, more than the {MAX_SIZE} a state file may be")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The contents are not a state document.
    #[error("state file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed; the previous file is intact.
    #[error("cannot write state file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Reads the state at `path`. A missing file is an empty state (the first start).
pub fn load(path: &Path) -> Result<State, StateFileError> {
    let read_err = |source| StateFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(StateFileError::Invalid {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    if meta.len() > MAX_SIZE {
        return Err(StateFileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SIZE + 1), &mut text)
        .map_err(read_err)?;
    let state: State = serde_json::from_str(&text).map_err(|e| StateFileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if state.version != VERSION {
        return Err(StateFileError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "format version {} (this splicer reads version {VERSION})",
                state.version
            ),
        });
    }
    Ok(state)
}

/// Writes `state` to `path` atomically: a crash leaves the old file or the new one, whole.
pub fn save(path: &Path, state: &State) -> Result<(), StateFileError> {
    let write_err = |source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let doc = State {
        version: VERSION,
        ..state.clone()
    };
    let mut text =
        serde_json::to_vec_pretty(&doc).map_err(|e| write_err(std::io::Error::other(e)))?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    // One temp name per process: an old and a new process (during an upgrade) never share one.
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Removes temp files that a process killed mid-write left beside `path` (`.NAME.tmp.PID` of
/// a PID that no longer runs); the state file itself is never touched. Returns how many.
pub fn remove_stale_temps(path: &Path) -> usize {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn set_records_changes_once() {
        let mut s = State::default();
        assert!(s.set("q", addr("127.0.0.2:443"), Some(Decision::Draining)));
        assert!(!s.set("q", addr("127.0.0.2:443"), Some(Decision::Draining)));
        assert!(s.set("q", addr("127.0.0.2:443"), Some(Decision::Disabled)));
        assert!(s.set("q", addr("127.0.0.3:443"), Some(Decision::Draining)));
        assert!(s.set("q", addr("127.0.0.2:443"), None));
        assert!(!s.set("q", addr("127.0.0.2:443"), None));
        assert_eq!(s.backends.len(), 1);
    }

    #[test]
    fn membership_is_recorded_once_and_clears_decisions() {
        let (a, b) = (addr("10.0.0.14:443"), addr("10.0.0.11:443"));
        let mut s = State::default();
        assert!(s.record_added("q", a, 2, false));
        assert!(!s.record_added("q", a, 2, false));
        assert!(s.record_added("q", a, 3, false), "a new weight is a change");
        assert_eq!(s.added.len(), 1);
        assert_eq!(s.added[0].weight, 3);
        // A drained API member that leaves takes its decision along.
        assert!(s.set("q", a, Some(Decision::Draining)));
        assert!(s.record_removed("q", a, false));
        assert!(s.added.is_empty() && s.backends.is_empty() && s.removed.is_empty());
        assert!(!s.record_removed("q", a, false));
        // A file member: removed until added back.
        assert!(s.record_removed("q", b, true));
        assert!(!s.record_removed("q", b, true));
        assert_eq!(s.removed.len(), 1);
        assert!(s.record_added("q", b, 1, true));
        assert!(s.removed.is_empty() && s.added.is_empty());
        // The file taking over an added member.
        s.record_added("q", a, 1, false);
        s.record_added("other", a, 1, false);
        assert_eq!(s.forget_added_in_file("q", &[a, b]), vec![a]);
        assert_eq!(s.added.len(), 1);
        assert_eq!(s.added[0].pool, "other");
    }

    #[test]
    fn membership_lists_are_optional_in_both_directions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        // A file of decisions alone is written without the new lists...
        let mut s = State::default();
        s.set("q", addr("10.0.0.11:443"), Some(Decision::Draining));
        save(&path, &s).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains("added") && !text.contains("removed"),
            "{text}"
        );
        // ...a file written before they existed reads as before...
        std::fs::write(
            &path,
            r#"{"version":1,"backends":[{"pool":"q","address":"10.0.0.11:443","state":"disabled"}]}"#,
        )
        .expect("write");
        let old = load(&path).expect("an old file loads");
        assert_eq!(old.backends.len(), 1);
        assert!(old.added.is_empty() && old.removed.is_empty());
        // ...and the lists round-trip.
        s.record_added("q", addr("10.0.0.14:443"), 2, false);
        s.record_removed("q", addr("10.0.0.12:443"), true);
        save(&path, &s).expect("save");
        let back = load(&path).expect("load");
        assert_eq!((back.added, back.removed), (s.added, s.removed));
        std::fs::write(
            &path,
            r#"{"version":1,"added":[{"pool":"q","address":"10.0.0.14:443"}]}"#,
        )
        .expect("write");
        let e = load(&path).expect_err("an added member needs its weight");
        assert!(e.to_string().contains("weight"), "{e}");
    }

    #[test]
    fn saves_and_loads_and_reports_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).expect("missing is empty"), State::default());
        let mut s = State::default();
        s.set("quay", addr("[::1]:8443"), Some(Decision::Disabled));
        save(&path, &s).expect("save");
        let back = load(&path).expect("load");
        assert_eq!(back.backends, s.backends);
        assert_eq!(back.version, VERSION);
        // Nothing but the file itself is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        std::fs::write(&path, "{\"version\":1,\"backends\":[{\"pool\":").expect("write");
        let e = load(&path).expect_err("truncated");
        assert!(e.to_string().contains("not valid"), "{e}");
        std::fs::write(&path, "{\"version\":99}").expect("write");
        let e = load(&path).expect_err("future version");
        assert!(e.to_string().contains("version 99"), "{e}");
        // A temp file of a process that no longer runs is removed; the state file stays.
        let stale = dir.path().join(format!(".state.json.tmp.{}", u32::MAX - 1));
        std::fs::write(&stale, "{").expect("stale temp");
        assert_eq!(remove_stale_temps(&path), 1);
        assert!(!stale.exists() && path.exists());
        let e = load(dir.path()).expect_err("a directory");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }
}
