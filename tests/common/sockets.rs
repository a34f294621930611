//! The TCP sockets a process holds, read from /proc: which addresses it listens on and which
//! connections it left in CLOSE_WAIT, without connecting (a connect could reach whoever else
//! took a freed port meanwhile).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP state numbers of include/net/tcp_states.h.
pub const CLOSE_WAIT: u8 = 0x08;
/// Listening.
pub const LISTEN: u8 = 0x0A;

/// One TCP socket of a process: where it is bound and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local address.
    pub local: SocketAddr,
    /// State (`LISTEN`, `CLOSE_WAIT`, ...).
    pub state: u8,
}

/// The TCP sockets `pid` has open (IPv4 and IPv6); empty once it exited.
pub fn tcp_sockets(pid: i32) -> Vec<TcpSocket> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Fields: sl, local, remote, st, ..., field 9 the inode.
            if !f.get(9).is_some_and(|i| inodes.contains(*i)) {
                continue;
            }
            let local = f.get(1).and_then(|a| parse_address(a));
            let state = f.get(3).and_then(|s| u8::from_str_radix(s, 16).ok());
            if let (Some(local), Some(state)) = (local, state) {
                found.push(TcpSocket { local, state });
            }
        }
    }
    found
}

/// Addresses `pid` listens on.
pub fn listening(pid: i32) -> Vec<SocketAddr> {
    tcp_sockets(pid)
        .into_iter()
        .filter(|s| s.state == LISTEN)
        .map(|s| s.local)
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel prints
/// it, each 32-bit word in host (little-endian) order.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.swap_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}
