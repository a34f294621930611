//! Connecting to a backend within `connect_timeout`, with the failure classified for logs and
//! metrics.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why a backend connect failed; `as_str` is the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// RST in answer to SYN.
    Refused,
    /// No answer within `connect_timeout`.
    Timeout,
    /// Reset during the handshake.
    Reset,
    /// No route to the host or network.
    Unreachable,
    /// Anything else.
    Other,
}

impl ConnectFailure {
    /// Every reason, in metric order.
    pub const ALL: [ConnectFailure; 5] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Reset,
        ConnectFailure::Unreachable,
        ConnectFailure::Other,
    ];

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        match self {
            ConnectFailure::Refused => 0,
            ConnectFailure::Timeout => 1,
            ConnectFailure::Reset => 2,
            ConnectFailure::Unreachable => 3,
            ConnectFailure::Other => 4,
        }
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Reset => "reset",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Other => "other",
        }
    }

    fn classify(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                ConnectFailure::Reset
            }
            io::ErrorKind::TimedOut => ConnectFailure::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ConnectFailure::Unreachable
            }
            _ => ConnectFailure::Other,
        }
    }
}

/// Connects to `addr` within `timeout`, with TCP_NODELAY set.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectFailure> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectFailure::Timeout),
        Ok(Err(e)) => Err(ConnectFailure::classify(&e)),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}
