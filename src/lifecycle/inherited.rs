//! Listening sockets this process did not bind: passed by systemd (socket activation,
//! `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`) or handed over by the splicer process this one
//! replaces (`SPLICER_UPGRADE_FDS`). Read once at start, before any thread exists, and taken by
//! name or by address as the listeners are set up; whatever nothing takes is logged and closed.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Environment variable an upgrading process sets for its successor: `name=fd,name=fd`.
pub const UPGRADE_FDS_ENV: &str = "SPLICER_UPGRADE_FDS";

/// Where an inherited socket came from (for log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// systemd socket activation.
    Systemd,
    /// The splicer process this one replaces.
    Upgrade,
}

impl Origin {
    /// Spelling in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Systemd => "systemd",
            Origin::Upgrade => "upgrade",
        }
    }
}

/// One passed listening socket.
#[derive(Debug)]
struct Passed {
    name: Option<String>,
    local: Option<SocketAddr>,
    fd: OwnedFd,
}

/// The sockets passed to this process, not yet taken.
#[derive(Debug, Default)]
pub struct Inherited {
    origin: Option<Origin>,
    sockets: Vec<Passed>,
}

/// A passed socket that cannot serve as a TCP listener.
#[derive(Debug, thiserror::Error)]
#[error("passed fd {fd} ({name}) is not a listening TCP socket")]
pub struct NotAListener {
    /// The descriptor.
    pub fd: RawFd,
    /// Its name, or `unnamed`.
    pub name: String,
}

impl Inherited {
    /// Reads (and removes from the environment, so children do not see them) the variables of
    /// both protocols. Must run before any other thread exists: it changes the environment.
    /// Problems (a malformed variable, an fd that is not open) are logged by the caller from
    /// the returned warnings, since logging is not set up yet at this point.
    pub fn from_env() -> (Inherited, Vec<String>) {
        let mut warnings = Vec::new();
        let upgrade = std::env::var(UPGRADE_FDS_ENV).ok();
        let listen_fds = std::env::var("LISTEN_FDS").ok();
        let listen_pid = std::env::var("LISTEN_PID").ok();
        let listen_names = std::env::var("LISTEN_FDNAMES").ok();
        for var in [
            UPGRADE_FDS_ENV,
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
        ] {
            // SAFETY-free in edition 2021; called before the runtime starts any thread.
            std::env::remove_var(var);
        }
        let mut inherited = Inherited::default();
        if let Some(spec) = upgrade {
            inherited.origin = Some(Origin::Upgrade);
            for (name, fd) in parse_upgrade_spec(&spec, &mut warnings) {
                inherited.push(Some(name), fd, &mut warnings);
            }
        } else if let Some(count) = listen_fds {
            let pid_matches = listen_pid
                .as_deref()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .is_some_and(|p| p == std::process::id());
            if !pid_matches {
                warnings.push(format!(
                    "LISTEN_FDS is set but LISTEN_PID ({}) is not this process; ignored",
                    listen_pid.as_deref().unwrap_or("unset")
                ));
                return (inherited, warnings);
            }
            let Ok(count) = count.trim().parse::<i32>() else {
                warnings.push(format!("LISTEN_FDS={count} is not a number; ignored"));
                return (inherited, warnings);
            };
            inherited.origin = Some(Origin::Systemd);
            let names: Vec<String> = listen_names
                .map(|n| n.split(':').map(str::to_string).collect())
                .unwrap_or_default();
            // sd_listen_fds(3): the passed fds start at 3 and are consecutive.
            for i in 0..count.clamp(0, 1024) {
                let name = names.get(i as usize).filter(|n| !n.is_empty()).cloned();
                inherited.push(name, 3 + i, &mut warnings);
            }
        }
        (inherited, warnings)
    }

    fn push(&mut self, name: Option<String>, fd: RawFd, warnings: &mut Vec<String>) {
        // fcntl(F_GETFD) tells whether the fd is open without touching it.
        // SAFETY: F_GETFD only reads the descriptor flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            warnings.push(format!("passed fd {fd} is not open; ignored"));
            return;
        }
        // SAFETY: the fd is open and was passed to this process to own; nothing else in the
        // process refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The passed fds must not leak into processes started later (an upgrade passes the
        // ones in use explicitly).
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        let local = socket2::SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        self.sockets.push(Passed { name, local, fd });
    }

    /// Where the sockets came from, if any were passed.
    pub fn origin(&self) -> Option<Origin> {
        self.origin
    }

    /// Whether any socket is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes the socket named `name`, else the one bound to `addr`, as a non-blocking
    /// listener. `None`: nothing matches (the caller binds). An fd that matches but is not a
    /// listening TCP socket is an error, since binding instead would fail or split the port.
    pub fn take(
        &mut self,
        name: &str,
        addr: SocketAddr,
    ) -> Option<Result<std::net::TcpListener, NotAListener>> {
        let pos = self
            .sockets
            .iter()
            .position(|s| s.name.as_deref() == Some(name))
            .or_else(|| self.sockets.iter().position(|s| s.local == Some(addr)))?;
        let passed = self.sockets.remove(pos);
        Some(into_listener(passed))
    }

    /// Logs and closes every socket nothing took.
    pub fn close_rest(&mut self) {
        for s in self.sockets.drain(..) {
            tracing::warn!(
                fd = s.fd.as_raw_fd(),
                name = s.name.as_deref().unwrap_or("unnamed"),
                address = %s.local.map_or_else(|| "unknown".to_string(), |a| a.to_string()),
                "a passed socket matches no listener and no admin API; closed"
            );
        }
    }
}

fn into_listener(passed: Passed) -> Result<std::net::TcpListener, NotAListener> {
    let err = |p: &Passed| NotAListener {
        fd: p.fd.as_raw_fd(),
        name: p.name.clone().unwrap_or_else(|| "unnamed".to_string()),
    };
    let sock = socket2::SockRef::from(&passed.fd);
    let is_tcp_listener = sock.r#type().ok() == Some(socket2::Type::STREAM)
        && passed.local.is_some()
        && sock.is_listener().unwrap_or(false);
    if !is_tcp_listener {
        return Err(err(&passed));
    }
    if sock.set_nonblocking(true).is_err() {
        return Err(err(&passed));
    }
    Ok(std::net::TcpListener::from(passed.fd))
}

/// `https=5,admin=6` → pairs; malformed entries become warnings.
fn parse_upgrade_spec(spec: &str, warnings: &mut Vec<String>) -> Vec<(String, RawFd)> {
    let mut out = Vec::new();
    for entry in spec.split(',').filter(|e| !e.is_empty()) {
        match entry.rsplit_once('=') {
            Some((name, fd)) if !name.is_empty() => match fd.parse::<RawFd>() {
                Ok(fd) if fd > 2 => out.push((name.to_string(), fd)),
                _ => warnings.push(format!("{UPGRADE_FDS_ENV}: bad fd in {entry:?}; ignored")),
            },
            _ => warnings.push(format!("{UPGRADE_FDS_ENV}: bad entry {entry:?}; ignored")),
        }
    }
    out
}

/// The `SPLICER_UPGRADE_FDS` value for `sockets` (names must not hold `,`; listener names
/// come from the config, where they are plain identifiers, and `admin`).
pub fn upgrade_spec(sockets: &[(String, RawFd)]) -> String {
    sockets
        .iter()
        .map(|(name, fd)| format!("{name}={fd}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_spec_round_trips_and_rejects_garbage() {
        let spec = upgrade_spec(&[("https".into(), 7), ("admin".into(), 9)]);
        assert_eq!(spec, "https=7,admin=9");
        let mut w = Vec::new();
        assert_eq!(
            parse_upgrade_spec(&spec, &mut w),
            vec![("https".to_string(), 7), ("admin".to_string(), 9)]
        );
        assert!(w.is_empty());
        let parsed = parse_upgrade_spec("x=1,=5,y=abc,z,ok=12", &mut w);
        assert_eq!(parsed, vec![("ok".to_string(), 12)]);
        assert_eq!(w.len(), 4, "{w:?}");
    }

    #[test]
    fn takes_by_name_then_by_address_and_refuses_non_listeners() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind b");
        let b_addr = b.local_addr().expect("addr");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let udp_addr = udp.local_addr().expect("addr");
        let mut inh = Inherited::default();
        let mut w = Vec::new();
        for (name, fd) in [
            (Some("https".to_string()), OwnedFd::from(a)),
            (None, OwnedFd::from(b)),
            (Some("dgram".to_string()), OwnedFd::from(udp)),
        ] {
            use std::os::fd::IntoRawFd;
            inh.push(name, fd.into_raw_fd(), &mut w);
        }
        assert!(w.is_empty(), "{w:?}");
        let unrelated: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(inh.take("https", unrelated).is_some_and(|r| r.is_ok()));
        let by_addr = inh
            .take("other", b_addr)
            .expect("matched")
            .expect("listener");
        assert_eq!(by_addr.local_addr().expect("addr"), b_addr);
        assert!(inh.take("dgram", udp_addr).expect("matched").is_err());
        assert!(inh.take("nothing", unrelated).is_none());
        assert!(inh.is_empty());
    }
}
