//! Moves bytes both ways between client and backend until both directions end or one side
//! resets. Small bursts are copied through a per-thread buffer, bulk is spliced through a pooled
//! pipe (Linux): an idle connection holds neither buffer nor pipe.
//! EOF on one side becomes a write-shutdown toward the other (half-close); a reset on one side
//! is passed on as a reset (SO_LINGER 0) to the other.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::listener::set_reset_on_close;

/// Bytes per read on the copy path: a burst up to this size is copied through a per-thread
/// buffer, a larger one is spliced.
const COPY_CHUNK: usize = 16 * 1024;

pub use super::end::End;

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

/// A direction's source sent EOF: passes it on as a write-shutdown of `to` (half-close), unless
/// the other direction has already ended too, in which case both sockets are about to be closed
/// and close(2) sends the FIN: one syscall less per connection.
fn eof(to: &TcpStream, eof_seen: &AtomicBool) -> DirEnd {
    if !eof_seen.swap(true, Ordering::Relaxed) {
        let _ = SockRef::from(to).shutdown(Shutdown::Write);
    }
    DirEnd::Eof
}

/// Waits until `stream` may be readable. Through the socket's own reader slot rather than
/// `readable()`, whose waiter node (150 bytes) would sit in every idle connection's future;
/// each socket has one reader (its direction) and one writer (the other), as that slot needs.
async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    poll_fn(|cx| stream.poll_read_ready(cx)).await
}

/// Waits until `stream` may be writable (its writer slot; see `read_ready`).
async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    poll_fn(|cx| stream.poll_write_ready(cx)).await
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        write_ready(to).await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One read-and-write on the copy path.
enum Copied {
    /// The source sent EOF.
    Eof,
    /// Nothing to read now (the source's read readiness is cleared).
    Empty,
    /// `n` bytes read and written; `full` when the read filled the buffer (more may be waiting).
    Moved { n: usize, full: bool },
    /// `to` took only `written` bytes; `rest` waits for room.
    Stalled { written: usize, rest: Vec<u8> },
    /// Reading failed.
    SourceReset,
    /// Writing failed.
    DestReset,
}

thread_local! {
    /// The copy path's buffer, one per worker thread: zeroed once, not per read, and never part
    /// of a connection's future, so idle connections hold no buffer.
    static COPY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_CHUNK].into_boxed_slice());
}

/// Reads once from `from` into this thread's buffer and writes it straight to `to`. Only bytes
/// `to` cannot take at once (its send buffer is full) go to the heap.
fn copy_once(from: &TcpStream, to: &TcpStream) -> Copied {
    COPY_BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => copy_through(from, to, &mut buf),
        // Unreachable (nothing here re-enters), but a fresh buffer is cheaper than a panic.
        Err(_) => copy_through(from, to, &mut vec![0; COPY_CHUNK]),
    })
}

fn copy_through(from: &TcpStream, to: &TcpStream, buf: &mut [u8]) -> Copied {
    let n = match read_once(from, buf, || {}) {
        Ok(0) => return Copied::Eof,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Copied::Empty,
        Err(_) => return Copied::SourceReset,
    };
    let mut written = 0;
    while written < n {
        match to.try_write(&buf[written..n]) {
            Ok(m) => written += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Copied::Stalled {
                    written,
                    rest: buf[written..n].to_vec(),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Copied::DestReset,
        }
    }
    Copied::Moved {
        n,
        full: n == buf.len(),
    }
}

/// Reads once from `from` into `buf`: `Ok(0)` is EOF, `WouldBlock` means nothing was queued.
///
/// A read that returns less than `buf` holds also marks `from` not readable, without the
/// syscall that would only fail with EAGAIN: a TCP read takes everything queued, so the queue
/// was empty at that moment, and edge-triggered epoll reports the next arrival. What may be
/// cleared is only the readiness tokio had recorded *before* the read (its tick is taken
/// first, inside `try_io`); readiness from an arrival while or after the read ran is newer and
/// stays set. Clearing "whatever is recorded now" after the read instead loses the wake-up of
/// bytes that arrive between the two (another worker thread's driver records them), and the
/// direction then sleeps with bytes queued until its peer sends more: a request or response
/// stalled for good. That happened under CPU contention, where a thread can be preempted
/// between the read and the clear. `after_read` runs in exactly that window (a no-op, except
/// in the test that lands an arrival there).
fn read_once(from: &TcpStream, buf: &mut [u8], after_read: impl FnOnce()) -> io::Result<usize> {
    use std::io::Read as _;
    let mut short = None;
    let result = from.try_io(Interest::READABLE, || {
        let socket = SockRef::from(from);
        let n = loop {
            match (&*socket).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        after_read();
        if n > 0 && n < buf.len() {
            // Reported to try_io as WouldBlock, which clears the readiness as of its tick.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

/// One direction of a connection: where bytes come from and go, and who hears about them.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    counter: &'a AtomicU64,
    on_bytes: &'a (dyn Fn(u64) + Sync),
    activity: Option<&'a Activity>,
    /// Shared by both directions: set by the first to see EOF.
    eof_seen: &'a AtomicBool,
}

impl Direction<'_> {
    fn moved(&self, n: usize) {
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        (self.on_bytes)(n as u64);
    }

    fn touch(&self) {
        if let Some(a) = self.activity {
            a.touch();
        }
    }

    /// Moves bytes until the source sends EOF or either side fails.
    ///
    /// Small bursts (TLS handshakes, requests, acknowledgements) are copied through a per-thread
    /// buffer: two cheap syscalls, and a short read proves the socket drained. A burst that
    /// fills the buffer marks the direction as bulk, and bulk moves with splice(2) (Linux)
    /// through a pooled pipe, never through userspace, until a burst is small again; this is
    /// HAProxy's `splice-auto` rule.
    async fn run(&self) -> DirEnd {
        let mut bulk = false;
        // Cleared for good when no pipe can be had (out of file descriptors).
        let mut can_splice = cfg!(target_os = "linux");
        // A pipe this direction keeps between bursts (never, with the default pooled pipes).
        let mut held = None;
        loop {
            if read_ready(self.from).await.is_err() {
                return DirEnd::SourceReset;
            }
            if bulk && can_splice {
                match self.splice_burst(&mut held).await {
                    Burst::Drained(moved) => bulk = moved >= COPY_CHUNK,
                    Burst::NoPipe => can_splice = false,
                    Burst::End(end) => return end,
                }
                continue;
            }
            match copy_once(self.from, self.to) {
                Copied::Eof => return eof(self.to, self.eof_seen),
                Copied::Empty => {}
                Copied::Moved { n, full } => {
                    self.touch();
                    self.moved(n);
                    bulk = full;
                }
                Copied::Stalled { written, rest } => {
                    self.touch();
                    self.moved(written);
                    if write_all(self.to, &rest).await.is_err() {
                        return DirEnd::DestReset;
                    }
                    self.moved(rest.len());
                    bulk = true;
                }
                Copied::SourceReset => return DirEnd::SourceReset,
                Copied::DestReset => return DirEnd::DestReset,
            }
        }
    }
}

/// How a splice burst ended.
enum Burst {
    /// The source would block; this many bytes moved.
    Drained(usize),
    /// No pipe could be had; nothing moved.
    NoPipe,
    /// The direction ended.
    End(DirEnd),
}

#[cfg(target_os = "linux")]
impl Direction<'_> {
    /// Splices socket → pipe → socket until the source would block.
    async fn splice_burst(&self, held: &mut Option<super::splice::Pipe>) -> Burst {
        use super::splice::{self, PIPE_CHUNK};
        let pipe = match splice::take(held) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through userspace");
                return Burst::NoPipe;
            }
        };
        let mut moved = 0;
        loop {
            match splice::fill(self.from, &pipe, PIPE_CHUNK) {
                Ok(0) => {
                    splice::give_back(pipe, held);
                    return Burst::End(eof(self.to, self.eof_seen));
                }
                Ok(n) => {
                    self.touch();
                    let mut left = n;
                    while left > 0 {
                        // On an error the pipe (still holding bytes) is dropped, not pooled.
                        if write_ready(self.to).await.is_err() {
                            return Burst::End(DirEnd::DestReset);
                        }
                        match splice::drain(&pipe, self.to, left) {
                            Ok(0) => return Burst::End(DirEnd::DestReset),
                            Ok(m) => {
                                left -= m;
                                moved += m;
                                self.moved(m);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => return Burst::End(DirEnd::DestReset),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    splice::give_back(pipe, held);
                    return Burst::Drained(moved);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Burst::End(DirEnd::SourceReset),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Direction<'_> {
    /// Never called: `can_splice` is false off Linux.
    async fn splice_burst(&self, _held: &mut Option<()>) -> Burst {
        Burst::NoPipe
    }
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
    // Set by the first direction to see EOF; the second then skips its (redundant) shutdown.
    let one_eof = AtomicBool::new(false);
    let (up, down) = (
        Direction {
            from: client,
            to: backend,
            counter: &traffic.to_backend,
            on_bytes: on_to_backend,
            activity,
            eof_seen: &one_eof,
        },
        Direction {
            from: backend,
            to: client,
            counter: &traffic.to_client,
            on_bytes: on_to_client,
            activity,
            eof_seen: &one_eof,
        },
    );
    let mut upstream = pin!(up.run());
    let mut downstream = pin!(down.run());
    // Boxed, and only with an idle timeout: its timer would otherwise be part of every
    // connection's future (and so of its idle memory) whether used or not.
    let mut idle_timer = match (idle_timeout, activity) {
        (Some(limit), Some(a)) => Some(Box::pin(a.idle_for(limit, [client, backend]))),
        _ => None,
    };
    let mut idle = pin!(poll_fn(|cx| match idle_timer.as_mut() {
        Some(f) => f.as_mut().poll(cx),
        None => Poll::Pending,
    }));
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
                    // After the backend has finished (its EOF passed on), a client's reset is
                    // how TCP closes a socket that still holds unread bytes: a TLS client that
                    // sends close_notify and closes without reading the backend's close_notify
                    // resets whenever that reply arrives before its close(2), which is a
                    // race. Nothing the backend sent was cut short by us: a close, not an
                    // abort (the reset still goes on to the backend).
                    return if down_done {
                        End::ClientClosed
                    } else {
                        End::ClientReset
                    };
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

#[cfg(test)]
mod tests;
