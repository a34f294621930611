//! Moves bytes both ways between client and backend until both directions end or one side
//! resets. A buffer exists only while a socket is readable: an idle connection holds none.
//! EOF on one side becomes a write-shutdown toward the other (half-close); a reset on one side
//! is passed on as a reset (SO_LINGER 0) to the other.

use std::future::pending;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::listener::set_reset_on_close;

/// Bytes read per syscall; big enough for bulk transfers, small enough to be cheap per burst.
const CHUNK: usize = 32 * 1024;

/// How a proxied connection ended (the access log's `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed; the client closed first.
    ClientClosed,
    /// Both sides closed; the backend closed first.
    BackendClosed,
    /// The client reset the connection.
    ClientReset,
    /// The backend reset the connection.
    BackendReset,
    /// No byte moved for `idle_timeout`.
    IdleTimeout,
    /// Cut short because its backend's drain reached `drain_timeout`.
    Drained,
    /// Cut short by shutdown after its grace period.
    Shutdown,
}

impl End {
    /// The access log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
            End::ClientReset => "client_reset",
            End::BackendReset => "backend_reset",
            End::IdleTimeout => "idle_timeout",
            End::Drained => "drained",
            End::Shutdown => "shutdown",
        }
    }
}

/// Byte counters of one connection; the pump adds to them as bytes move.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client → backend.
    pub to_backend: AtomicU64,
    /// Backend → client.
    pub to_client: AtomicU64,
}

enum DirEnd {
    /// The source sent EOF; the write side of the destination was shut down.
    Eof,
    /// Reading from the source failed (reset).
    SourceReset,
    /// Writing to the destination failed (reset).
    DestReset,
}

struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`. Bytes the kernel still holds for a peer
    /// count too: a slow reader drains our send queue while our write waits for room (which
    /// comes only once about half the queue, megabytes, has gone), so reads and writes alone
    /// would call a steady slow download idle. The queues are sampled every quarter of `limit`
    /// while they hold bytes; any change counts as movement, so the close is never early and
    /// at most a quarter of `limit` late.
    async fn idle_for(&self, limit: Duration, sockets: [&TcpStream; 2]) {
        let mut queued = sockets.map(unacked_bytes);
        loop {
            let now_queued = sockets.map(unacked_bytes);
            if now_queued != queued {
                queued = now_queued;
                self.touch();
            }
            let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let in_flight = queued.iter().any(|q| q.is_some_and(|n| n > 0));
            let wake = if in_flight {
                deadline.min(now + limit / 4)
            } else {
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// Bytes written to `stream` and not yet acknowledged by its peer (Linux `SIOCOUTQ`), or
/// `None` where that cannot be known.
#[cfg(target_os = "linux")]
fn unacked_bytes(stream: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: the descriptor stays open while `stream` is borrowed, and TIOCOUTQ (SIOCOUTQ on
    // a TCP socket) writes exactly one c_int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then(|| u32::try_from(queued).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn unacked_bytes(_: &TcpStream) -> Option<u32> {
    None
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies one direction through a userspace buffer: on platforms without splice(2), and when no
/// pipe can be had (out of file descriptors).
async fn copy_direction_userspace(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    on_bytes: &(dyn Fn(u64) + Sync),
    activity: Option<&Activity>,
) -> DirEnd {
    loop {
        if from.readable().await.is_err() {
            return DirEnd::SourceReset;
        }
        // Allocated only now that there is something to read; dropped when the socket drains.
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => {
                    let _ = SockRef::from(to).shutdown(Shutdown::Write);
                    return DirEnd::Eof;
                }
                Ok(n) => {
                    if let Some(a) = activity {
                        a.touch();
                    }
                    if write_all(to, &buf[..n]).await.is_err() {
                        return DirEnd::DestReset;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    on_bytes(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return DirEnd::SourceReset,
            }
        }
    }
}

/// Copies one direction with splice(2): bytes go socket → pipe → socket inside the kernel.
#[cfg(target_os = "linux")]
async fn copy_direction(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    on_bytes: &(dyn Fn(u64) + Sync),
    activity: Option<&Activity>,
) -> DirEnd {
    use super::splice::{self, PIPE_CHUNK};
    loop {
        if from.readable().await.is_err() {
            return DirEnd::SourceReset;
        }
        let pipe = match splice::take() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through userspace");
                return copy_direction_userspace(from, to, counter, on_bytes, activity).await;
            }
        };
        loop {
            match splice::fill(from, &pipe, PIPE_CHUNK) {
                Ok(0) => {
                    splice::give_back(pipe);
                    let _ = SockRef::from(to).shutdown(Shutdown::Write);
                    return DirEnd::Eof;
                }
                Ok(n) => {
                    if let Some(a) = activity {
                        a.touch();
                    }
                    let mut left = n;
                    while left > 0 {
                        // On an error the pipe (still holding bytes) is dropped, not pooled.
                        if to.writable().await.is_err() {
                            return DirEnd::DestReset;
                        }
                        match splice::drain(&pipe, to, left) {
                            Ok(0) => return DirEnd::DestReset,
                            Ok(m) => {
                                left -= m;
                                counter.fetch_add(m as u64, Ordering::Relaxed);
                                on_bytes(m as u64);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => return DirEnd::DestReset,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    splice::give_back(pipe);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return DirEnd::SourceReset,
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
async fn copy_direction(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    on_bytes: &(dyn Fn(u64) + Sync),
    activity: Option<&Activity>,
) -> DirEnd {
    copy_direction_userspace(from, to, counter, on_bytes, activity).await
}

/// What ends a connection early besides its own peers.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Close after this long without a byte either way.
    pub idle_timeout: Option<Duration>,
    /// Shutdown's grace period is over.
    pub stop: &'a CancellationToken,
    /// The backend's drain reached its deadline.
    pub cut: &'a CancellationToken,
}

/// Splices `client` and `backend` until the connection ends or one of `limits` cuts it short.
/// `on_to_backend` / `on_to_client` see every chunk as it moves (for live byte counters).
pub async fn run(
    client: &TcpStream,
    backend: &TcpStream,
    limits: Limits<'_>,
    traffic: &Traffic,
    on_to_backend: &(dyn Fn(u64) + Sync),
    on_to_client: &(dyn Fn(u64) + Sync),
) -> End {
    let Limits {
        idle_timeout,
        stop,
        cut,
    } = limits;
    let activity = idle_timeout.map(|_| Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let activity = activity.as_ref();
    let upstream = copy_direction(
        client,
        backend,
        &traffic.to_backend,
        on_to_backend,
        activity,
    );
    let downstream = copy_direction(backend, client, &traffic.to_client, on_to_client, activity);
    let idle = async {
        match (idle_timeout, activity) {
            (Some(limit), Some(a)) => a.idle_for(limit, [client, backend]).await,
            _ => pending().await,
        }
    };
    tokio::pin!(upstream, downstream, idle);
    let (mut up_done, mut down_done) = (false, false);
    let mut client_closed_first = None;
    loop {
        tokio::select! {
            end = &mut upstream, if !up_done => match end {
                DirEnd::Eof => {
                    up_done = true;
                    client_closed_first.get_or_insert(true);
                }
                DirEnd::SourceReset => {
                    set_reset_on_close(backend);
                    return End::ClientReset;
                }
                DirEnd::DestReset => {
                    set_reset_on_close(client);
                    return End::BackendReset;
                }
            },
            end = &mut downstream, if !down_done => match end {
                DirEnd::Eof => {
                    down_done = true;
                    client_closed_first.get_or_insert(false);
                }
                DirEnd::SourceReset => {
                    set_reset_on_close(client);
                    return End::BackendReset;
                }
                DirEnd::DestReset => {
                    set_reset_on_close(backend);
                    return End::ClientReset;
                }
            },
            _ = &mut idle => return End::IdleTimeout,
            _ = stop.cancelled() => return End::Shutdown,
            _ = cut.cancelled() => return End::Drained,
        }
        if up_done && down_done {
            return if client_closed_first == Some(true) {
                End::ClientClosed
            } else {
                End::BackendClosed
            };
        }
    }
}
