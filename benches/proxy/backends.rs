//! The backends the cases talk to: threads of the bench process (so they share the load
//! generator's CPU), except the idle-connection sink, which is a child process of its own because
//! one process may hold at most 20,000 fds here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Read/write timeout on every backend socket: no backend thread waits forever.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A listening backend; its acceptor threads stop when it is dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptors: usize,
}

impl Server {
    fn bind() -> (TcpListener, SocketAddr, Arc<AtomicBool>) {
        let l = listen("127.0.0.1:0".parse().expect("addr")).expect("bind backend");
        let addr = l.local_addr().expect("addr");
        (l, addr, Arc::new(AtomicBool::new(false)))
    }
}

/// A listener with a deep accept queue: std's 128 overflows when a proxy connects thousands of
/// backend connections at once, and every dropped SYN then costs a 1 s retransmission.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake every acceptor blocked in accept() so it sees the flag.
        for _ in 0..self.acceptors {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
        }
    }
}

/// Spawns `n` threads accepting on `l`, each handling its connections one at a time.
fn accept_threads(
    l: TcpListener,
    n: usize,
    stop: &Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    for _ in 0..n {
        let l = l.try_clone().expect("clone listener");
        let stop = stop.clone();
        let handle = handle.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(s) = s {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    handle(s);
                }
            }
        });
    }
}

/// Reads and discards everything; after the client's EOF answers the byte count (8 bytes, little
/// endian), so the client measures until the backend has everything and can check nothing was
/// lost. One thread per connection.
pub fn discard() -> Server {
    let (l, addr, stop) = Server::bind();
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if stop2.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&total.to_le_bytes());
            });
        }
    });
    Server {
        addr,
        stop,
        acceptors: 1,
    }
}

/// Echoes every byte back until the client's EOF (for the ping-pong and the health case).
pub fn echo_stream() -> Server {
    echo(|mut s| {
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Reads one request of `len` bytes, echoes it and closes: the server closes first (like an
/// HTTP/1.0 server), so TIME_WAIT lands on server-side sockets and a fast client cannot run out
/// of ephemeral ports.
pub fn echo_once(len: usize) -> Server {
    echo(move |mut s| {
        let _ = s.set_nodelay(true);
        let mut buf = vec![0u8; len];
        if s.read_exact(&mut buf).is_ok() {
            let _ = s.write_all(&buf);
        }
    })
}

/// Acceptor threads for the echo servers: more than the concurrent connections of any case, so
/// a connection never waits for a free thread.
const ECHO_THREADS: usize = 16;

fn echo(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
    let (l, addr, stop) = Server::bind();
    accept_threads(l, ECHO_THREADS, &stop, handle);
    Server {
        addr,
        stop,
        acceptors: ECHO_THREADS,
    }
}

/// What the health server tells the case about the check that carries a new status.
#[derive(Debug, Clone, Copy)]
pub enum HealthEvent {
    /// The first check request since the flip has been read.
    Arrived,
    /// ...and its response (with the new status) has been written.
    Answered(Instant),
}

struct HealthState {
    status: u16,
    /// Set by a flip; the next check reports its arrival and answer, then clears it.
    armed: bool,
}

/// A plain-HTTP health endpoint whose status the case flips; one thread, one check at a time.
pub struct HealthServer {
    server: Server,
    state: Arc<Mutex<HealthState>>,
    events: Receiver<HealthEvent>,
}

impl HealthServer {
    pub fn start(status: u16) -> HealthServer {
        let (l, addr, stop) = Server::bind();
        let state = Arc::new(Mutex::new(HealthState {
            status,
            armed: false,
        }));
        let (tx, events) = mpsc::channel();
        let st = state.clone();
        accept_threads(l, 1, &stop, move |s| answer_check(s, &st, &tx));
        HealthServer {
            server: Server {
                addr,
                stop,
                acceptors: 1,
            },
            state,
            events,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// Answers `status` from now on and reports the first check that gets it.
    pub fn flip(&self, status: u16) {
        while self.events.try_recv().is_ok() {}
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.status = status;
        st.armed = true;
    }

    pub fn next_event(&self, limit: Duration) -> Option<HealthEvent> {
        self.events.recv_timeout(limit).ok()
    }
}

fn answer_check(mut s: TcpStream, state: &Mutex<HealthState>, tx: &Sender<HealthEvent>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let (status, armed) = (st.status, st.armed);
    st.armed = false;
    drop(st);
    if armed {
        let _ = tx.send(HealthEvent::Arrived);
    }
    let reason = if status == 200 { "OK" } else { "Unavailable" };
    let body = if status == 200 { "ok" } else { "no" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let written = s.write_all(response.as_bytes());
    let answered = Instant::now();
    if armed && written.is_ok() {
        let _ = tx.send(HealthEvent::Answered(answered));
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Most time a sink process lives, whatever happens to the bench (it is also killed with it).
const SINK_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Child-process role (`--sink ADDR`): accept connections on `addr` and hold them, discarding
/// anything they send, and close each one when its peer closes. One thread, poll(2) over all of
/// them, so it holds thousands of connections at a few hundred bytes each.
pub fn sink_main(addr: SocketAddr) {
    let l = listen(addr).expect("sink bind");
    l.set_nonblocking(true).expect("nonblocking");
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + SINK_LIFETIME;
    while Instant::now() < deadline {
        let mut pfds: Vec<libc::pollfd> = std::iter::once(l.as_raw_fd())
            .chain(conns.iter().map(|c| c.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("sink poll: {}", io::Error::last_os_error());
            return;
        }
        let mut closed = Vec::new();
        for (i, p) in pfds[1..].iter().enumerate() {
            if p.revents != 0 {
                match conns[i].read(&mut buf) {
                    Ok(0) => closed.push(i),
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => closed.push(i),
                    _ => {}
                }
            }
        }
        // Highest index first: swap_remove moves the last element, which is never one still to
        // be removed.
        for i in closed.into_iter().rev() {
            conns.swap_remove(i);
        }
        if pfds[0].revents != 0 {
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(true);
                        conns.push(s);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Out of fds, most likely: say so once per round and retry later.
                        eprintln!("sink accept ({} held): {e}", conns.len());
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
    }
}
