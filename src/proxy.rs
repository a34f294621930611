//! One client connection's life: [read the PROXY header] → [peek the ClientHello's SNI and
//! pick the route's pool] → pick a backend from the live set → connect (retrying other
//! backends) → [write our PROXY header] → replay what was read → pump bytes both ways → one
//! access-log line. Runs as its own task.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::access_log::{AccessLog, AccessRecord};
use crate::config::{ListenerConfig, PoolConfig, SendProxy};
use crate::edge::{ClientGuard, ClientTable, Refusal};
use crate::histogram::ConnectionDurations;
use crate::net::connect::{connect, ConnectError, ConnectFailure};
use crate::net::listener::Accepted;
use crate::net::pump::{self, End, Traffic};
use crate::net::{client_hello, proxy_protocol};
use crate::pool::{Backend, Lease, Pool};

/// What a listener's connections share: its settings, its pool and its counters.
#[derive(Debug)]
pub struct ListenerCtx {
    /// Listener settings.
    pub config: ListenerConfig,
    /// Actual bound address (differs from the config with port 0).
    pub local_addr: SocketAddr,
    /// The default pool.
    pub pool: Arc<Pool>,
    /// SNI routes: (lowercased exact name or `*.suffix`, pool), in config order.
    pub routes: Vec<(String, Arc<Pool>)>,
    /// Where the one line per finished connection goes (possibly disabled).
    pub access_log: AccessLog,
    /// The listener's name, shared by every access-log record.
    name: Arc<str>,
    counters: Arc<ListenerCounters>,
    /// `runtime.client_table_size`, for the table made on first need.
    client_table_size: usize,
}

/// A listener's connection counters and per-client table; they outlive reloads that change its
/// settings (open connections keep their places in the table).
#[derive(Debug, Default)]
pub struct ListenerCounters {
    active: AtomicU64,
    total: AtomicU64,
    refused_denied: AtomicU64,
    refused_limit: AtomicU64,
    refused_rate: AtomicU64,
    /// Connections closed because this machine was out of descriptors or memory.
    local_errors: AtomicU64,
    /// How long connections lasted, recorded as each one ends.
    connection_duration: ConnectionDurations,
    /// Made on the first connection that needs it (most listeners set no per-client limit).
    clients: std::sync::OnceLock<Arc<ClientTable>>,
}

/// Why the edge protection refused a connection (`splicer_listener_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReason {
    /// `allow`/`deny`.
    Denied,
    /// `per_client_max_connections`.
    ClientLimit,
    /// `per_client_rate`.
    ClientRate,
}

impl RefusedReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RefusedReason; 3] = [
        RefusedReason::Denied,
        RefusedReason::ClientLimit,
        RefusedReason::ClientRate,
    ];

    /// The metric label (the access log's `end` spells it the same).
    pub fn as_str(self) -> &'static str {
        self.end().as_str()
    }

    /// How a connection refused for this reason ended.
    pub fn end(self) -> End {
        match self {
            RefusedReason::Denied => End::Denied,
            RefusedReason::ClientLimit => End::ClientLimit,
            RefusedReason::ClientRate => End::ClientRate,
        }
    }
}

impl ListenerCtx {
    /// A listener context counting into `counters`.
    pub fn new(
        config: ListenerConfig,
        local_addr: SocketAddr,
        pool: Arc<Pool>,
        routes: Vec<(String, Arc<Pool>)>,
        access_log: AccessLog,
        counters: Arc<ListenerCounters>,
        client_table_size: usize,
    ) -> Self {
        ListenerCtx {
            name: Arc::from(config.name.as_str()),
            config,
            local_addr,
            pool,
            routes,
            access_log,
            counters,
            client_table_size,
        }
    }

    /// Connections refused by the edge protection for `reason`.
    pub fn refused(&self, reason: RefusedReason) -> u64 {
        let c = &self.counters;
        match reason {
            RefusedReason::Denied => &c.refused_denied,
            RefusedReason::ClientLimit => &c.refused_limit,
            RefusedReason::ClientRate => &c.refused_rate,
        }
        .load(Ordering::Relaxed)
    }

    /// Connections closed because this machine was out of descriptors or memory when
    /// connecting to a backend (`end=local_resources`; no backend was blamed).
    pub fn local_errors(&self) -> u64 {
        self.counters.local_errors.load(Ordering::Relaxed)
    }

    /// Clients in the per-client table now (0 when the listener sets no per-client limit).
    pub fn client_table_len(&self) -> usize {
        self.counters.clients.get().map_or(0, |t| t.len())
    }

    /// Applies `allow`/`deny` and the per-client limits to a new connection from `client`.
    /// `Ok(None)`: nothing to track.
    fn admit(&self, client: IpAddr) -> Result<Option<ClientGuard>, RefusedReason> {
        let c = &self.counters;
        if !self.config.access.admits(client) {
            c.refused_denied.fetch_add(1, Ordering::Relaxed);
            return Err(RefusedReason::Denied);
        }
        let limits = &self.config.client_limits;
        if !limits.is_set() {
            return Ok(None);
        }
        let table = c
            .clients
            .get_or_init(|| ClientTable::new(self.client_table_size));
        match table.admit(client, limits, Instant::now()) {
            Ok(guard) => Ok(Some(guard)),
            Err(Refusal::Limit) => {
                c.refused_limit.fetch_add(1, Ordering::Relaxed);
                Err(RefusedReason::ClientLimit)
            }
            Err(Refusal::Rate) => {
                c.refused_rate.fetch_add(1, Ordering::Relaxed);
                Err(RefusedReason::ClientRate)
            }
        }
    }

    /// The counters (carried over to the context that replaces this one on reload).
    pub fn counters(&self) -> &Arc<ListenerCounters> {
        &self.counters
    }

    /// Connections open now.
    pub fn active_connections(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Connections ever accepted.
    pub fn total_connections(&self) -> u64 {
        self.counters.total.load(Ordering::Relaxed)
    }

    /// Distribution of how long finished connections lasted.
    pub fn connection_durations(&self) -> &ConnectionDurations {
        &self.counters.connection_duration
    }
}

/// One connection's record, from accept to its task's end: counts it as active on its
/// listener, and when dropped — on every way out of [`serve`], a panic or an aborted task
/// included — writes its one access-log line and records its duration. No path can forget the
/// line or write it twice. An end never set means the task stopped before the connection
/// ended: logged as `shutdown`.
struct ConnectionRecord<'a> {
    ctx: &'a ListenerCtx,
    started: Instant,
    client: SocketAddr,
    sni: Option<Arc<str>>,
    pool: Arc<Pool>,
    backend: Option<SocketAddr>,
    traffic: Traffic,
    end: Option<End>,
}

impl<'a> ConnectionRecord<'a> {
    /// Starts the record of a connection `ctx` accepted from `peer`.
    fn open(ctx: &'a ListenerCtx, peer: SocketAddr) -> Self {
        ctx.counters.total.fetch_add(1, Ordering::Relaxed);
        ctx.counters.active.fetch_add(1, Ordering::Relaxed);
        ConnectionRecord {
            ctx,
            started: Instant::now(),
            client: peer,
            sni: None,
            pool: ctx.pool.clone(),
            backend: None,
            traffic: Traffic::default(),
            end: None,
        }
    }

    /// Says how the connection ended (the last call wins; the line is written on drop).
    fn ended(&mut self, end: End) {
        self.end = Some(end);
    }
}

impl Drop for ConnectionRecord<'_> {
    fn drop(&mut self) {
        let counters = &self.ctx.counters;
        counters.active.fetch_sub(1, Ordering::Relaxed);
        let duration = self.started.elapsed();
        counters.connection_duration.observe(duration);
        if !self.ctx.access_log.is_enabled() {
            return;
        }
        self.ctx.access_log.record(AccessRecord {
            listener: self.ctx.name.clone(),
            client: self.client,
            sni: self.sni.take(),
            pool: self.pool.name.clone(),
            backend: self.backend,
            to_backend: self.traffic.to_backend.load(Ordering::Relaxed),
            to_client: self.traffic.to_client.load(Ordering::Relaxed),
            duration,
            end: self.end.unwrap_or(End::Shutdown),
        });
    }
}

/// How the connect phase ended without a backend.
enum NoConnection {
    /// The live set was empty (or every member excluded before any attempt).
    NoBackend,
    /// Every attempt failed.
    ConnectFailed(ConnectFailure),
    /// This machine ran out of descriptors or memory: no backend was at fault.
    Local(std::io::Error),
}

/// Tries the picked backend, then up to `retries` other ones, never the same one twice.
async fn connect_with_retries(
    pool: &Pool,
    config: &PoolConfig,
    client: SocketAddr,
) -> Result<(TcpStream, Lease), NoConnection> {
    let attempts = config.retries as usize + 1;
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(attempts.min(8));
    let mut last_failure = None;
    for _ in 0..attempts {
        let Some(backend) = pool.pick(client.ip(), &tried) else {
            break;
        };
        tried.push(backend.address);
        let attempt = Instant::now();
        match connect(backend.address, config.connect_timeout).await {
            Ok(stream) => {
                backend.record_connect_duration(attempt.elapsed());
                return Ok((stream, backend.connected()));
            }
            // Not the backend's fault, and every other backend would fail the same way.
            Err(ConnectError::Local(e)) => return Err(NoConnection::Local(e)),
            Err(ConnectError::Backend(failure)) => {
                pool.report_connect_failure(&backend, failure);
                tracing::debug!(pool = %pool.name, backend = %backend.address, client = %client,
                    reason = failure.as_str(), "backend connect failed");
                last_failure = Some(failure);
            }
        }
    }
    Err(match last_failure {
        Some(f) => NoConnection::ConnectFailed(f),
        None => NoConnection::NoBackend,
    })
}

/// Why the client's opening bytes were refused before any backend was involved.
enum Refused {
    /// Nothing (or not enough) arrived within `client_hello_timeout`.
    Timeout,
    /// The PROXY header was malformed.
    BadProxyHeader,
    /// The client closed or reset before sending what was needed.
    Gone,
}

impl Refused {
    /// How the connection ended.
    fn end(&self) -> End {
        match self {
            Refused::Timeout => End::ClientTimeout,
            Refused::BadProxyHeader => End::BadProxyHeader,
            Refused::Gone => End::ClientClosed,
        }
    }
}

/// What was learned from the client before connecting anywhere.
struct Opening {
    /// The client as the access log, `client_hash` and our PROXY header see it.
    client: SocketAddr,
    /// The address the client connected to, when a PROXY header named it; otherwise it is our
    /// socket's own address (looked up only when a PROXY header is sent).
    destination: Option<SocketAddr>,
    /// SNI from the ClientHello, when routes exist and one was sent.
    sni: Option<Arc<str>>,
    /// Bytes read from the client that the backend must still receive.
    replay: Vec<u8>,
}

/// Reads whatever the listener needs before choosing a backend: the PROXY header
/// (`accept_proxy`) and, when routes exist, the ClientHello. Bounded by `client_hello_timeout`.
async fn read_opening(
    ctx: &ListenerCtx,
    client: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Opening, Refused> {
    let mut opening = Opening {
        client: peer,
        destination: None,
        sni: None,
        replay: Vec::new(),
    };
    let wants_sni = !ctx.routes.is_empty();
    if !ctx.config.accept_proxy && !wants_sni {
        return Ok(opening);
    }
    let deadline = tokio::time::Instant::now() + ctx.config.client_hello_timeout;
    let mut buf: Vec<u8> = Vec::new();
    if ctx.config.accept_proxy {
        loop {
            match proxy_protocol::parse(&buf) {
                Ok(proxy_protocol::Parsed::Done { header, consumed }) => {
                    if let proxy_protocol::ProxyHeader::Tcp { src, dst } = header {
                        opening.client = src;
                        opening.destination = Some(dst);
                    }
                    buf.drain(..consumed);
                    break;
                }
                Ok(proxy_protocol::Parsed::NeedMore) => {
                    read_more(client, &mut buf, deadline).await?
                }
                Err(e) => {
                    tracing::debug!(listener = %ctx.config.name, client = %peer, error = %e, "bad PROXY header");
                    return Err(Refused::BadProxyHeader);
                }
            }
        }
    }
    if wants_sni {
        loop {
            match client_hello::peek(&buf) {
                Ok(client_hello::Peek::NeedMore) => {
                    // A client that closes before finishing its hello still gets the default
                    // pool for what it did send; one that sends nothing is just closed.
                    match read_more(client, &mut buf, deadline).await {
                        Ok(()) => {}
                        Err(Refused::Gone) if !buf.is_empty() => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(client_hello::Peek::Done(info)) => {
                    opening.sni = info.sni.map(Arc::from);
                    break;
                }
                Ok(client_hello::Peek::NotTls | client_hello::Peek::NoSni) => break,
                Err(e) => {
                    // A broken hello goes to the default pool; the backend's TLS rejects it.
                    tracing::debug!(listener = %ctx.config.name, client = %peer, error = %e, "unparseable ClientHello");
                    break;
                }
            }
        }
    }
    opening.replay = buf;
    Ok(opening)
}

/// Appends what the client sends next to `buf`, by `deadline`. The bytes go straight into the
/// heap buffer: a stack array here would be part of every connection task's future (a future
/// is as large as its largest state), even on listeners that never read ahead.
async fn read_more(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<(), Refused> {
    buf.reserve(4096);
    match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
        Err(_) => Err(Refused::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(Refused::Gone),
        Ok(Ok(_)) => Ok(()),
    }
}

/// The PROXY header for the backend, describing the client's connection.
///
/// Without a destination from an upstream header, it is the address this client reached: the
/// accepted socket's own address, which for a wildcard bind (`0.0.0.0`, `[::]`) is not the
/// listener's.
fn proxy_header_for(
    version: SendProxy,
    opening: &Opening,
    client: &TcpStream,
    listener: SocketAddr,
) -> Option<Vec<u8>> {
    let version = match version {
        SendProxy::Off => return None,
        SendProxy::V1 => proxy_protocol::Version::V1,
        SendProxy::V2 => proxy_protocol::Version::V2,
    };
    let header = proxy_protocol::ProxyHeader::Tcp {
        src: opening.client,
        dst: opening
            .destination
            .unwrap_or_else(|| client.local_addr().unwrap_or(listener)),
    };
    Some(proxy_protocol::encode(version, &header))
}

/// Serves one accepted client to completion. `stop` cuts the transfer short (end=shutdown).
pub async fn serve(ctx: Arc<ListenerCtx>, accepted: Accepted, stop: CancellationToken) {
    let Accepted {
        stream: mut client,
        peer,
        permit: _permit,
    } = accepted;
    // Declared first, so dropped last: the line is written after everything else let go.
    let mut record = ConnectionRecord::open(&ctx, peer);

    // Without a PROXY header the peer is the client: decide before reading anything from it.
    let mut client_slot = None;
    if !ctx.config.accept_proxy {
        match ctx.admit(peer.ip()) {
            Ok(slot) => client_slot = slot,
            Err(reason) => return refuse(&client, &mut record, reason),
        }
    }

    let opening = tokio::select! {
        r = read_opening(&ctx, &mut client, peer) => r.map_err(|refused| refused.end()),
        _ = stop.cancelled() => Err(End::Shutdown),
    };
    let mut opening = match opening {
        Ok(o) => o,
        Err(end) => return record.ended(end),
    };
    record.client = opening.client;
    if ctx.config.accept_proxy {
        // Only now is the client known: the PROXY header named it.
        match ctx.admit(opening.client.ip()) {
            Ok(slot) => client_slot = slot,
            Err(reason) => return refuse(&client, &mut record, reason),
        }
    }
    record.sni = opening.sni.clone();
    if let Some(sni) = opening.sni.as_deref() {
        if let Some(pool) = client_hello::route(sni, &ctx.routes) {
            record.pool = pool.clone();
        }
    }
    let pool = record.pool.clone();
    // One load of the pool's settings for the whole connection: retries, timeouts and PROXY.
    let config = pool.config();

    let connected = tokio::select! {
        r = connect_with_retries(&pool, &config, opening.client) => r,
        _ = stop.cancelled() => return record.ended(End::Shutdown),
    };
    let (mut backend_stream, lease) = match connected {
        Ok(c) => c,
        Err(NoConnection::NoBackend) => return record.ended(End::NoBackend),
        Err(NoConnection::Local(e)) => {
            ctx.counters.local_errors.fetch_add(1, Ordering::Relaxed);
            log_local_exhaustion(&ctx.config.name, &e);
            return record.ended(End::LocalResources);
        }
        Err(NoConnection::ConnectFailed(f)) => {
            tracing::debug!(listener = %ctx.config.name, client = %peer, reason = f.as_str(), "every connect attempt failed");
            return record.ended(End::ConnectFailed);
        }
    };
    let backend: &Backend = lease.backend();
    record.backend = Some(backend.address);

    // Our PROXY header first, then the bytes the client already sent, then the live stream.
    // In a block of its own, so the buffers are freed before the pump: a connection's locals
    // that live across the pump are held for all of its (possibly idle) life.
    {
        let header = proxy_header_for(config.send_proxy, &opening, &client, ctx.local_addr);
        let header_len = header.as_ref().map_or(0, Vec::len);
        let replay = std::mem::take(&mut opening.replay);
        let preamble = match header {
            Some(mut h) => {
                h.extend_from_slice(&replay);
                h
            }
            None => replay,
        };
        if !preamble.is_empty() {
            if backend_stream.write_all(&preamble).await.is_err() {
                return record.ended(End::BackendReset);
            }
            let n = (preamble.len() - header_len) as u64;
            record.traffic.to_backend.fetch_add(n, Ordering::Relaxed);
            backend.add_bytes_to_backend(n);
        }
    }

    let cut = backend.cut_token();
    let end = pump::run(
        &client,
        &backend_stream,
        pump::Limits {
            idle_timeout: ctx.config.idle_timeout,
            stop: &stop,
            cut: &cut,
        },
        &record.traffic,
        &|n| backend.add_bytes_to_backend(n),
        &|n| backend.add_bytes_to_client(n),
    )
    .await;
    record.ended(end);
    // The client's place in its per-client count is held until here (every return drops it).
    drop(client_slot);
}

/// One warning a second at most while this machine is out of descriptors or memory: under
/// exhaustion every connection fails the same way, and the log must not add to the load.
fn log_local_exhaustion(listener: &str, e: &std::io::Error) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(listener, error = %e, "cannot open a backend connection: this machine is out of file descriptors or memory (no backend is blamed; raise LimitNOFILE / ulimit -n)");
    }
}

/// Ends a connection the edge protection refused: logged with the reason as its `end`; a
/// denied client gets a reset rather than a close, so it learns nothing and no TIME_WAIT stays.
fn refuse(client: &TcpStream, record: &mut ConnectionRecord<'_>, reason: RefusedReason) {
    if reason == RefusedReason::Denied {
        crate::net::listener::set_reset_on_close(client);
    }
    record.ended(reason.end());
}
