//! Sockets shared by the nodes and the control API: binding (so a stopped node can take its
//! port back) and one accept loop whose end takes every connection down with it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Deep enough that a burst of test or benchmark connects never sees a refusal.
const BACKLOG: i32 = 1024;

/// Pause after a failed accept (out of descriptors, usually) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listening socket with SO_REUSEADDR, so a node restarted after `/stop` gets its
/// port back although the connections it dropped sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until `stop` fires, running `serve` for each connection in its own task. On
/// stop the listener closes and every connection task is aborted and awaited before this
/// returns, so callers know the sockets are gone — a node "dies" all at once.
pub(crate) async fn accept_until<F, Fut>(listener: TcpListener, stop: CancellationToken, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve(stream));
                }
                Err(_) => tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                },
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}
