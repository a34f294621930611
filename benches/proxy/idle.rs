//! (d) Memory and fds per idle proxied connection, and `hold N`: open N connections through a
//! proxy to a sink process that holds them, and read the proxy's RSS and fd table from /proc.
//!
//! Every measurement gets a fresh proxy and sink: an allocator keeps freed memory, so a second
//! round on the same process would measure reuse, not growth.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Better, Report, Samples};
use crate::sys::{self, ChildGuard};
use crate::targets::{free_port, Check, Kind, Proxy};
use crate::Opts;

/// Connections opened and closed first, so the runtime and allocator are warm.
const WARM_CONNS: usize = 200;
/// Most time to open all connections, and then for all to reach the sink.
const OPEN_LIMIT: Duration = Duration::from_secs(60);
const REACH_LIMIT: Duration = Duration::from_secs(30);
/// fds a proxy needs besides its connections (listener, epoll, eventfds, logs, ...).
const FD_HEADROOM: u64 = 200;

/// What holding `n` idle connections cost one proxy.
pub struct Held {
    pub n: usize,
    /// Until the last client connect() returned (the kernel's handshake with the listener).
    pub client_side: Duration,
    /// Until the sink held all `n` backend connections (the proxy accepted and connected each).
    pub backend_side: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub fds_before: sys::Fds,
    pub fds_after: sys::Fds,
    /// Proxy CPU seconds spent while opening them.
    pub cpu_s: f64,
}

impl Held {
    pub fn bytes_per_conn(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) * 1024.0 / self.n as f64
    }
    pub fn fds_per_conn(&self) -> f64 {
        (self.fds_after.total as f64 - self.fds_before.total as f64) / self.n as f64
    }
    pub fn pipes_per_conn(&self) -> f64 {
        (self.fds_after.pipes as f64 - self.fds_before.pipes as f64) / self.n as f64
    }

    fn describe(&self) -> String {
        format!(
            "{} conns: client connects {:.0} ms, all at the backend {:.0} ms; RSS {} → {} KiB = {:.0} B/conn; \
             fds {:.2}/conn (pipes {:.2}); proxy CPU {:.1} µs/conn",
            self.n,
            self.client_side.as_secs_f64() * 1e3,
            self.backend_side.as_secs_f64() * 1e3,
            self.rss_before_kib,
            self.rss_after_kib,
            self.bytes_per_conn(),
            self.fds_per_conn(),
            self.pipes_per_conn(),
            self.cpu_s * 1e6 / self.n as f64
        )
    }
}

/// Most connections one proxy can hold here: 2 fds each within the fd limit.
pub fn max_conns(o: &Opts) -> usize {
    (o.nofile.saturating_sub(FD_HEADROOM) / 2) as usize
}

/// Starts a sink process (this bench binary with `--sink`) on the load CPU.
fn start_sink(o: &Opts) -> Result<(ChildGuard, SocketAddr), String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--bench", "--sink", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    sys::child_setup(&mut cmd, o.setup.load_core);
    let mut child = ChildGuard(cmd.spawn().map_err(|e| format!("spawn sink: {e}"))?);
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(st) = child.exited() {
            return Err(format!("sink exited: {st}"));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("sink did not listen within 10 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}

/// Opens `n` connections through a fresh `kind` proxy to a fresh sink and measures them.
pub fn hold(o: &Opts, kind: Kind, n: usize) -> Result<Held, String> {
    let (sink, sink_addr) = start_sink(o)?;
    let spid = sink.pid();
    // The sink's fds with no connection: its readiness probe closes within a few ms.
    std::thread::sleep(Duration::from_millis(50));
    let sink_idle = sys::fd_count(spid);
    let proxy = Proxy::start(&o.setup, kind, sink_addr, Check::None, o.setup.proxy_core);
    let pid = proxy.pid();

    let warm: Vec<TcpStream> = (0..WARM_CONNS)
        .filter_map(|_| TcpStream::connect_timeout(&proxy.addr, Duration::from_secs(5)).ok())
        .collect();
    sys::wait_until(Duration::from_secs(10), || {
        sys::fd_count(spid) >= sink_idle + warm.len()
    });
    drop(warm);
    if !sys::wait_until(Duration::from_secs(10), || sys::fd_count(spid) <= sink_idle) {
        return Err(format!(
            "warm-up connections still open at the sink after 10 s ({} fds, {sink_idle} idle)",
            sys::fd_count(spid)
        ));
    }
    std::thread::sleep(Duration::from_millis(300));

    let sink_base = sys::fd_count(spid);
    let rss_before_kib = sys::rss_kib(pid);
    let fds_before = sys::fds(pid);
    let cpu0 = proxy.cpu();
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect_timeout(&proxy.addr, Duration::from_secs(5)) {
            Ok(s) => conns.push(s),
            Err(e) => return Err(format!("connect {i} of {n}: {e}")),
        }
        if start.elapsed() > OPEN_LIMIT {
            return Err(format!("only {i} of {n} connected in {OPEN_LIMIT:?}"));
        }
    }
    let client_side = start.elapsed();
    if !sys::wait_until(REACH_LIMIT, || sys::fd_count(spid) >= sink_base + n) {
        return Err(format!(
            "only {} of {n} connections reached the backend in {REACH_LIMIT:?}",
            sys::fd_count(spid).saturating_sub(sink_base)
        ));
    }
    let backend_side = start.elapsed();
    let cpu_s = proxy.cpu() - cpu0;
    // Whatever the proxy does lazily per connection has happened by now.
    std::thread::sleep(Duration::from_millis(500));
    let held = Held {
        n,
        client_side,
        backend_side,
        rss_before_kib,
        rss_after_kib: sys::rss_kib(pid),
        fds_before,
        fds_after: sys::fds(pid),
        cpu_s,
    };
    drop(conns);
    drop(proxy);
    drop(sink);
    Ok(held)
}

/// (d) Memory and fds per idle connection, `o.idle_n` connections per run.
pub fn idle(o: &Opts, report: &mut Report) {
    let n = o.idle_n.min(max_conns(o));
    println!(
        "(d) idle connections: {n} through a fresh proxy to a sink process, RSS and fds of the proxy"
    );
    let (mut mem, mut fds, mut open) = (Samples::default(), Samples::default(), Samples::default());
    for run in 1..=o.runs {
        for kind in o.setup.proxy_kinds() {
            match hold(o, kind, n) {
                Ok(h) => {
                    println!(
                        "    run {run}/{}  {:<22} {}",
                        o.runs,
                        kind.label(),
                        h.describe()
                    );
                    mem.push(kind, h.bytes_per_conn());
                    fds.push(kind, h.fds_per_conn());
                    open.push(kind, h.backend_side.as_secs_f64() * 1e3);
                }
                Err(e) => report.note(format!("idle, {} run {run}: {e}", kind.label())),
            }
        }
    }
    report.add(
        format!("RSS per idle connection, {n} open [bytes]"),
        Better::Lower,
        false,
        o.runs,
        &mem,
    );
    report.add(
        "fds per idle connection",
        Better::Lower,
        false,
        o.runs,
        &fds,
    );
    report.add(
        format!("time to open {n} connections, one client [ms]"),
        Better::Lower,
        false,
        o.runs,
        &open,
    );
}

/// `hold N`: N connections through each proxy once; reports the time to open them and memory.
pub fn hold_mode(o: &Opts, n: usize, report: &mut Report) {
    let max = max_conns(o);
    let n = if n > max {
        report.note(format!(
            "hold: {n} connections need {} fds in the proxy but the fd limit is {}; holding {max}",
            2 * n as u64 + FD_HEADROOM,
            o.nofile
        ));
        max
    } else {
        n
    };
    println!("hold {n}: one proxy at a time, {n} idle connections to a sink process");
    let (mut mem, mut open) = (Samples::default(), Samples::default());
    // HAProxy queues connections beyond its maxconn instead of connecting them.
    let cap = o.setup.haproxy_maxconn.saturating_sub(10) as usize;
    if o.setup.haproxy.is_some() && n > cap {
        report.note(format!(
            "hold: HAProxy's maxconn is {} under this fd limit; it holds {cap}",
            o.setup.haproxy_maxconn
        ));
    }
    for kind in o.setup.proxy_kinds() {
        let n = if kind.is_haproxy() { n.min(cap) } else { n };
        match hold(o, kind, n) {
            Ok(h) => {
                println!("    {:<22} {}", kind.label(), h.describe());
                mem.push(kind, h.bytes_per_conn());
                open.push(kind, h.backend_side.as_secs_f64() * 1e3);
            }
            Err(e) => report.note(format!("hold {n}, {}: {e}", kind.label())),
        }
    }
    report.add(
        format!("hold {n}: RSS per connection [bytes]"),
        Better::Lower,
        false,
        1,
        &mem,
    );
    report.add(
        format!("hold {n}: time to open them [ms]"),
        Better::Lower,
        false,
        1,
        &open,
    );
}
