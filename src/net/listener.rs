//! Binding listening sockets (socket2, so backlog and SO_REUSEPORT are ours to set) and the
//! accept loop, which applies `max_connections` as backpressure and survives fd exhaustion.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Another socket (most likely another splicer) owns the address.
    #[error("{what}: {addr} is already in use (is another splicer running?)")]
    InUse {
        /// `listener 'https'` or `admin API`.
        what: String,
        /// The address.
        addr: SocketAddr,
    },
    /// bind/listen failed otherwise (permission, an address not on this machine...).
    #[error("{what}: cannot listen on {addr}")]
    Bind {
        /// `listener 'https'` or `admin API`.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A socket passed by systemd or the previous process cannot be used.
    #[error("{what}: the passed socket cannot be used")]
    Inherited {
        /// `listener 'https'` or `admin API`.
        what: String,
        /// What is wrong with it.
        #[source]
        source: crate::lifecycle::inherited::NotAListener,
    },
}

/// Binds `addr` with SO_REUSEADDR (a restart must not wait for TIME_WAIT) and the given backlog;
/// SO_REUSEPORT only when `reuse_port` asks for it, since it lets a second process bind the same
/// address and silently take half the clients. IPv6 sockets are v6-only so `[::]` and `0.0.0.0`
/// can coexist. TCP_NODELAY is set here once: Linux copies it to every accepted socket, which
/// saves a setsockopt per connection. `what` names the socket in errors (`listener 'https'`).
pub fn bind(
    what: &str,
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> Result<std::net::TcpListener, ListenerError> {
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            ListenerError::InUse {
                what: what.to_string(),
                addr,
            }
        } else {
            ListenerError::Bind {
                what: what.to_string(),
                addr,
                source,
            }
        }
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(err)?;
    Ok(socket.into())
}

/// Pause after running out of descriptors: long enough for connections to close, short enough
/// that clients queued in the backlog barely notice.
const EXHAUSTION_BACKOFF: Duration = Duration::from_millis(100);

/// An accepted client, with its connection slot (released when dropped).
pub struct Accepted {
    /// The client socket (TCP_NODELAY set, inherited from the listener on Linux).
    pub stream: TcpStream,
    /// Client address.
    pub peer: SocketAddr,
    /// The `max_connections` slot, if the listener has a limit.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Accepts until `stop` is cancelled, handing each client to `handle`. With a limit, a slot is
/// taken before accepting, so at the limit clients wait in the kernel backlog.
pub async fn accept_loop(
    name: &str,
    listener: &TcpListener,
    limit: Option<Arc<Semaphore>>,
    stop: CancellationToken,
    mut handle: impl FnMut(Accepted),
) {
    let mut exhausted_logged = false;
    loop {
        let permit = match &limit {
            Some(sem) => tokio::select! {
                _ = stop.cancelled() => return,
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            },
            None => None,
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                exhausted_logged = false;
                // Elsewhere accepted sockets may not inherit the listener's TCP_NODELAY.
                #[cfg(not(target_os = "linux"))]
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(listener = name, client = %peer, error = %e, "cannot set TCP_NODELAY");
                }
                handle(Accepted {
                    stream,
                    peer,
                    permit,
                });
            }
            Err(e) if super::is_local_exhaustion(&e) => {
                if !exhausted_logged {
                    tracing::error!(listener = name, error = %e, "accept failed: out of file descriptors or memory; backing off");
                    exhausted_logged = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(EXHAUSTION_BACKOFF) => {}
                }
            }
            Err(e) => {
                // ECONNABORTED and friends concern one client only.
                tracing::debug!(listener = name, error = %e, "accept failed");
            }
        }
    }
}

/// Sets the listen(2) backlog of a socket that is already listening (one passed by systemd or
/// by the previous process, or kept across a reload): Linux applies a repeated listen(2) to the
/// queue length without touching queued connections.
pub fn set_backlog(socket: &std::net::TcpListener, backlog: u32) -> io::Result<()> {
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    SockRef::from(socket).listen(backlog)
}

/// Makes the kernel send RST instead of FIN when `stream` is closed.
pub fn set_reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `reuse_port` a second bind of the same address fails with a message that says
    /// what to suspect; with it on both sockets, both bind (the operator asked for that).
    #[test]
    fn a_taken_address_is_an_error_unless_reuse_port_is_asked_for() {
        let first = bind(
            "listener 'a'",
            "127.0.0.1:0".parse().expect("addr"),
            16,
            false,
        )
        .expect("bind");
        let addr = first.local_addr().expect("addr");
        let e = bind("listener 'https'", addr, 16, false).expect_err("taken");
        assert_eq!(
            e.to_string(),
            format!("listener 'https': {addr} is already in use (is another splicer running?)")
        );
        let shared = bind(
            "listener 'a'",
            "127.0.0.1:0".parse().expect("addr"),
            16,
            true,
        )
        .expect("bind");
        let shared_addr = shared.local_addr().expect("addr");
        assert!(bind("listener 'b'", shared_addr, 16, true).is_ok());
    }

    /// Accepted sockets carry TCP_NODELAY (inherited from the listener on Linux, set per
    /// connection elsewhere), so small TLS records are not held back by Nagle.
    #[tokio::test]
    async fn accepted_clients_have_nodelay() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listener =
            TcpListener::from_std(bind("test", addr, 16, false).expect("bind")).expect("listener");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let accepting = {
            let stop = stop.clone();
            tokio::spawn(async move {
                accept_loop("test", &listener, None, stop, |a| {
                    let _ = tx.send(a);
                })
                .await
            })
        };
        let _client = TcpStream::connect(addr).await.expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("accepted in time")
            .expect("accept loop alive");
        assert!(accepted.stream.nodelay().expect("nodelay"));
        stop.cancel();
        accepting.await.expect("accept loop ends");
    }
}
