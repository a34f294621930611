//! Connecting to a backend within `connect_timeout`, with the failure classified for logs and
//! metrics.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::Poll;
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

/// Why no connection to a backend was made.
#[derive(Debug)]
pub enum ConnectError {
    /// The backend (or the way to it) failed: counts toward `passive_fall` and the metrics.
    Backend(ConnectFailure),
    /// This machine is out of descriptors or memory: no backend is to blame, and another
    /// backend would fare no better.
    Local(io::Error),
}

impl From<ConnectFailure> for ConnectError {
    fn from(f: ConnectFailure) -> Self {
        ConnectError::Backend(f)
    }
}

/// Connects to `addr` within `timeout`, with TCP_NODELAY set.
///
/// The timer is armed only when the handshake has not completed by the reactor's next turn:
/// arming one that is the runtime's earliest wakes the reactor thread (an eventfd write and an
/// extra epoll round), a cost every connection would pay on a LAN or loopback where the
/// handshake is already done when connect(2) returns. The deadline still counts from the call.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut connecting = pin!(TcpStream::connect(addr));
    let mut done = poll_now(&mut connecting).await;
    if done.is_none() {
        // Lets the reactor collect the socket's writability before the next look.
        tokio::task::yield_now().await;
        done = poll_now(&mut connecting).await;
    }
    let result = match done {
        Some(r) => r,
        None => match tokio::time::timeout_at(deadline, connecting).await {
            Ok(r) => r,
            Err(_) => return Err(ConnectFailure::Timeout.into()),
        },
    };
    match result {
        Err(e) if super::is_local_exhaustion(&e) => Err(ConnectError::Local(e)),
        Err(e) => Err(ConnectFailure::classify(&e).into()),
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Polls `fut` once: its output if it is ready now (its waker stays registered either way).
async fn poll_now<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    poll_fn(|cx| match Pin::new(&mut *fut).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn connects_to_a_listening_backend_with_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = connect(addr, LIMIT).await.expect("connects");
        assert_eq!(stream.peer_addr().expect("peer"), addr);
        assert!(stream.nodelay().expect("nodelay"));
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(matches!(
            connect(addr, LIMIT).await.err(),
            Some(ConnectError::Backend(ConnectFailure::Refused))
        ));
    }

    /// A backend whose accept queue is full drops SYNs: the connect must give up at the
    /// deadline (the timer is armed only after the first look found the handshake pending).
    #[tokio::test]
    async fn an_unanswered_handshake_times_out_at_the_deadline() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&any.into()).expect("bind");
        socket.listen(0).expect("listen");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        // Fill the queue (backlog 0 holds one) and keep it full: nothing accepts.
        let mut parked = Vec::new();
        for _ in 0..2 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
            {
                parked.push(s);
            }
        }
        assert!(!parked.is_empty(), "no connection could be parked");
        let timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(LIMIT, connect(addr, timeout))
            .await
            .expect("connect gives up by itself");
        let took = started.elapsed();
        assert!(matches!(
            result.err(),
            Some(ConnectError::Backend(ConnectFailure::Timeout))
        ));
        assert!(took >= timeout, "gave up early: {took:?}");
    }
}
