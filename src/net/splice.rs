//! Zero-copy moving of bytes between two sockets with splice(2) through a pipe (Linux).
//!
//! A pipe is needed only while bytes move: a direction takes one from a small per-thread pool
//! when a bulk burst starts and gives it back, empty, once the socket would block. An idle
//! connection therefore holds no pipe (no fds, no kernel buffer), and a busy one costs no
//! pipe2/close per burst. Bytes always pass fully through the pipe before it is returned, so a
//! pooled pipe is always empty.
//!
//! The alternatives the design was measured against (`benches/pipes.rs`, docs/benchmarks.md)
//! stay selectable for that benchmark: a pipe created at a direction's first bulk burst and
//! kept for the connection's life, and the same shrunk to a few pages.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Capacity asked for each pipe (F_SETPIPE_SZ), and so the most bytes one splice call moves.
/// Four times the kernel's default: one call then carries up to 64 segments instead of 16,
/// which halved splicer's CPU per GiB on loopback (docs/benchmarks.md). Best effort: past the
/// per-user pipe budget (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB of capacity by default)
/// an unprivileged process gets smaller pipes, which work the same, only slower.
pub const PIPE_CHUNK: usize = 256 * 1024;

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

/// Where a direction's pipe comes from, and where it goes when a burst ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeStrategy {
    /// From the per-thread pool for each bulk burst, back to it when drained (what splicer uses).
    Pooled,
    /// Created at a direction's first bulk burst and kept until the connection ends.
    Kept,
    /// As `Kept`, shrunk to `SIZED_PIPE` bytes with F_SETPIPE_SZ.
    Sized,
}

/// Capacity of a `Sized` pipe: four pages.
pub const SIZED_PIPE: usize = 16 * 1024;

static STRATEGY: AtomicU8 = AtomicU8::new(0);

/// Selects the pipe strategy for the whole process. Only benchmarks call this; the proxy runs
/// with `Pooled`.
pub fn set_strategy(strategy: PipeStrategy) {
    let v = match strategy {
        PipeStrategy::Pooled => 0,
        PipeStrategy::Kept => 1,
        PipeStrategy::Sized => 2,
    };
    STRATEGY.store(v, Ordering::Relaxed);
}

fn strategy() -> PipeStrategy {
    match STRATEGY.load(Ordering::Relaxed) {
        1 => PipeStrategy::Kept,
        2 => PipeStrategy::Sized,
        _ => PipeStrategy::Pooled,
    }
}

/// A new pipe of (at best) `size` bytes.
fn new_pipe(size: usize) -> io::Result<Pipe> {
    let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    if let Err(e) = fcntl_setpipe_size(&write, size) {
        tracing::trace!(error = %e, size, "pipe keeps its default size");
    }
    Ok(Pipe { read, write })
}

/// An empty pipe for a bulk burst: the direction's own (`held`, under `Kept` and `Sized`), one
/// from this thread's pool, or a new one.
pub fn take(held: &mut Option<Pipe>) -> io::Result<Pipe> {
    if let Some(p) = held.take() {
        return Ok(p);
    }
    match strategy() {
        PipeStrategy::Pooled => match POOL.with(|pool| pool.borrow_mut().pop()) {
            Some(p) => Ok(p),
            None => new_pipe(PIPE_CHUNK),
        },
        PipeStrategy::Kept => new_pipe(PIPE_CHUNK),
        PipeStrategy::Sized => new_pipe(SIZED_PIPE),
    }
}

/// Puts away an EMPTY pipe after a burst (callers drop a pipe that may hold bytes): back to
/// this thread's pool, or kept by the direction in `held`.
pub fn give_back(pipe: Pipe, held: &mut Option<Pipe>) {
    if strategy() != PipeStrategy::Pooled {
        *held = Some(pipe);
        return;
    }
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
