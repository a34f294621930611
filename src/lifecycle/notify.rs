//! The systemd notification protocol (sd_notify(3)): one datagram of `KEY=value` lines to the
//! socket named by `NOTIFY_SOCKET`. Without that variable every call is a no-op, so the rest of
//! splicer calls it unconditionally.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// A connection to the service manager, or nothing when splicer does not run under one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: Address,
}

#[derive(Debug, Clone)]
enum Address {
    Path(PathBuf),
    /// Linux abstract namespace (`@name` in `NOTIFY_SOCKET`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (which must be this process,
    /// when set). The variables stay in the environment: a process started by an upgrade
    /// talks to the same manager.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let bytes = v.as_encoded_bytes();
            let address = match bytes.first() {
                Some(b'@') => Address::Abstract(bytes[1..].to_vec()),
                Some(b'/') => Address::Path(PathBuf::from(v)),
                _ => {
                    tracing::warn!(value = ?v, "NOTIFY_SOCKET is neither a path nor @abstract; not notifying");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(socket) => Some(Target { socket, address }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the notification socket; not notifying");
                    None
                }
            }
        });
        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && watchdog_for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, as sd_watchdog_enabled(3)
    /// advises. `None`: no watchdog is configured.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `state` (newline-separated assignments). Failures are logged at debug level: the
    /// manager going away must never stop the data path.
    pub fn send(&self, state: &str) {
        let Some(t) = &self.target else { return };
        let sent = match &t.address {
            Address::Path(p) => t.socket.send_to(state.as_bytes(), p),
            Address::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| t.socket.send_to_addr(state.as_bytes(), &a))
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, state, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `READY=1` from a process that replaces the main one: tells the manager its PID first
    /// (the manager needs `NotifyAccess=all` to hear it).
    pub fn ready_as_main(&self, status: &str) {
        self.send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS={}",
            std::process::id(),
            one_line(status)
        ));
    }

    /// `RELOADING=1` with the CLOCK_MONOTONIC time systemd 253+ asks for.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=` alone.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// A status must be one line: the protocol is newline-separated.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            target: Some(Target {
                socket: UnixDatagram::unbound().expect("socket"),
                address: Address::Path(path),
            }),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("3/3 backends\nup");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(
            std::str::from_utf8(&buf[..len]).expect("utf8"),
            "READY=1\nSTATUS=3/3 backends up"
        );
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        n.reloading();
        let len = server.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..len]).expect("utf8");
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
    }

    #[test]
    fn disabled_sends_nothing() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready("x");
        assert_eq!(n.watchdog_every(), None);
    }
}
