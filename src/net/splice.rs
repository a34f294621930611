//! Zero-copy moving of bytes between two sockets with splice(2) through a pipe (Linux).
//!
//! A pipe is needed only while bytes move: a direction takes one from a small per-thread pool
//! when its socket turns readable and gives it back, empty, once the socket would block. An
//! idle connection therefore holds no pipe (no fds, no kernel buffer), and a busy one costs no
//! pipe2/close per burst. Bytes always pass fully through the pipe before it is returned, so a
//! pooled pipe is always empty.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most bytes moved per splice call: the default pipe capacity (16 pages), so one fill never
/// blocks on the pipe itself.
pub const PIPE_CHUNK: usize = 64 * 1024;

/// Pipes kept per worker thread: enough for the bursts in flight on one thread at a time;
/// beyond it, pipes are closed rather than hoarded.
const POOL_PER_THREAD: usize = 64;

/// A pipe's two ends.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe from this thread's pool, or a new one.
pub fn take() -> io::Result<Pipe> {
    if let Some(p) = POOL.with(|pool| pool.borrow_mut().pop()) {
        return Ok(p);
    }
    let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    Ok(Pipe { read, write })
}

/// Returns an EMPTY pipe to this thread's pool (callers drop a pipe that may hold bytes).
pub fn give_back(pipe: Pipe) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_PER_THREAD {
            pool.push(pipe);
        }
    });
}

/// Moves up to `len` bytes from `from` into `pipe`. `Ok(0)` is EOF; `WouldBlock` means the
/// socket has nothing now (its readiness is cleared, so the caller can await it again).
pub fn fill(from: &TcpStream, pipe: &Pipe, len: usize) -> io::Result<usize> {
    from.try_io(Interest::READABLE, || {
        splice(
            from,
            None,
            &pipe.write,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )
        .map_err(io::Error::from)
    })
}

/// Moves up to `len` bytes from `pipe` to `to`; `WouldBlock` when the socket's buffer is full.
pub fn drain(pipe: &Pipe, to: &TcpStream, len: usize) -> io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        splice(
            &pipe.read,
            None,
            to,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )
        .map_err(io::Error::from)
    })
}
