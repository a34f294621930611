//! One client connection's life: pick a backend from the live set → connect (retrying other
//! backends) → pump bytes both ways → one access-log line. Runs as its own task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::access_log::{AccessLog, AccessRecord};
use crate::config::ListenerConfig;
use crate::net::connect::{connect, ConnectFailure};
use crate::net::listener::Accepted;
use crate::net::pump::{self, End, Traffic};
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
    /// Where the one line per finished connection goes (possibly disabled).
    pub access_log: AccessLog,
    /// The listener's name, shared by every access-log record.
    name: Arc<str>,
    counters: Arc<ListenerCounters>,
}

/// A listener's connection counters; they outlive reloads that change its settings.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    active: AtomicU64,
    total: AtomicU64,
}

impl ListenerCtx {
    /// A listener context counting into `counters`.
    pub fn new(
        config: ListenerConfig,
        local_addr: SocketAddr,
        pool: Arc<Pool>,
        access_log: AccessLog,
        counters: Arc<ListenerCounters>,
    ) -> Self {
        ListenerCtx {
            name: Arc::from(config.name.as_str()),
            config,
            local_addr,
            pool,
            access_log,
            counters,
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
}

/// Counts a connection as active on its listener for as long as it lives.
struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the connect phase ended without a backend.
enum NoConnection {
    /// The live set was empty (or every member excluded before any attempt).
    NoBackend,
    /// Every attempt failed.
    ConnectFailed(ConnectFailure),
}

/// Tries the picked backend, then up to `retries` other ones, never the same one twice.
async fn connect_with_retries(
    pool: &Pool,
    client: SocketAddr,
) -> Result<(TcpStream, Lease), NoConnection> {
    let config = pool.config();
    let attempts = config.retries as usize + 1;
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(attempts.min(8));
    let mut last_failure = None;
    for _ in 0..attempts {
        let Some(backend) = pool.pick(client.ip(), &tried) else {
            break;
        };
        tried.push(backend.address);
        match connect(backend.address, config.connect_timeout).await {
            Ok(stream) => return Ok((stream, backend.connected())),
            Err(failure) => {
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

/// Serves one accepted client to completion. `stop` cuts the transfer short (end=shutdown).
pub async fn serve(ctx: Arc<ListenerCtx>, accepted: Accepted, stop: CancellationToken) {
    let Accepted {
        stream: client,
        peer,
        permit: _permit,
    } = accepted;
    ctx.counters.total.fetch_add(1, Ordering::Relaxed);
    ctx.counters.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&ctx.counters.active);
    let started = Instant::now();
    let pool = &ctx.pool;

    let connected = tokio::select! {
        r = connect_with_retries(pool, peer) => r,
        _ = stop.cancelled() => {
            log_end(&ctx, peer, None, &Traffic::default(), started, End::Shutdown.as_str());
            return;
        }
    };
    let (backend_stream, lease) = match connected {
        Ok(c) => c,
        Err(NoConnection::NoBackend) => {
            log_end(&ctx, peer, None, &Traffic::default(), started, "no_backend");
            return;
        }
        Err(NoConnection::ConnectFailed(f)) => {
            tracing::debug!(listener = %ctx.config.name, client = %peer, reason = f.as_str(), "every connect attempt failed");
            log_end(
                &ctx,
                peer,
                None,
                &Traffic::default(),
                started,
                "connect_failed",
            );
            return;
        }
    };

    let backend: &Backend = lease.backend();
    let cut = backend.cut_token();
    let traffic = Traffic::default();
    let end = pump::run(
        &client,
        &backend_stream,
        pump::Limits {
            idle_timeout: ctx.config.idle_timeout,
            stop: &stop,
            cut: &cut,
        },
        &traffic,
        &|n| backend.add_bytes_to_backend(n),
        &|n| backend.add_bytes_to_client(n),
    )
    .await;
    log_end(
        &ctx,
        peer,
        Some(backend.address),
        &traffic,
        started,
        end.as_str(),
    );
}

fn log_end(
    ctx: &ListenerCtx,
    client: SocketAddr,
    backend: Option<SocketAddr>,
    traffic: &Traffic,
    started: Instant,
    end: &'static str,
) {
    if !ctx.access_log.is_enabled() {
        return;
    }
    ctx.access_log.record(AccessRecord {
        listener: ctx.name.clone(),
        client,
        sni: None,
        pool: ctx.pool.name.clone(),
        backend,
        to_backend: traffic.to_backend.load(Ordering::Relaxed),
        to_client: traffic.to_client.load(Ordering::Relaxed),
        duration: started.elapsed(),
        end,
    });
}
