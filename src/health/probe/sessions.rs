//! TLS session resumption for `https` checks, remembered per backend address as HAProxy remembers
//! it per server. A resumed check skips the certificate exchange and the server's signature,
//! which is most of a check's CPU on both ends.
//!
//! rustls's own cache cannot do this for a pool: it keys sessions by server name, and every
//! backend of a pool shares one name when `host` is set (and one IP when backends differ only
//! by port), so one backend's ticket would be offered to another and refused; and its default
//! size remembers 32 servers, far fewer than a large pool has. So each backend gets its own
//! small store, behind its own copy of the pool's client config (the store lives in the config).
//! The copies share the pool's verifier, so a session is only ever resumed under the same
//! `tls_verify`/`ca_file` settings that verified it; a reload that changes them builds a new
//! prober and starts with no sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, NamedGroup};

/// A backend not checked for this long has left the pool (or is checked so rarely that its
/// session would have expired anyway, servers issuing tickets for hours at most), so its entry
/// may go. Far longer than any sensible check interval.
const IDLE: Duration = Duration::from_secs(600);

/// Entries held before the first sweep; a sweep then waits for twice what it kept, so the
/// bookkeeping stays O(1) per check while memory follows the number of backends checked.
const FIRST_SWEEP: usize = 64;

/// One pool's `https` check configs, one per backend address, each with its own session store.
pub(super) struct Sessions {
    /// The pool's config; only ever copied, never used for a handshake itself.
    base: ClientConfig,
    backends: Mutex<Backends>,
}

struct Backends {
    by_addr: HashMap<SocketAddr, Entry>,
    sweep_at: usize,
}

struct Entry {
    config: Arc<ClientConfig>,
    used: Instant,
}

impl Sessions {
    /// Wraps the pool's client config; no backend has a session yet.
    pub(super) fn new(base: ClientConfig) -> Sessions {
        Sessions {
            base,
            backends: Mutex::new(Backends {
                by_addr: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    /// The config to check `addr` with: the pool's, resuming that backend's last session.
    pub(super) fn config_for(&self, addr: SocketAddr) -> Arc<ClientConfig> {
        let now = Instant::now();
        let mut backends = lock(&self.backends);
        if let Some(entry) = backends.by_addr.get_mut(&addr) {
            entry.used = now;
            return entry.config.clone();
        }
        if backends.by_addr.len() >= backends.sweep_at {
            backends
                .by_addr
                .retain(|_, e| now.saturating_duration_since(e.used) < IDLE);
            backends.sweep_at = (backends.by_addr.len() * 2).max(FIRST_SWEEP);
        }
        let mut config = self.base.clone();
        config.resumption = Resumption::store(Arc::new(BackendStore::default()));
        let config = Arc::new(config);
        backends.by_addr.insert(
            addr,
            Entry {
                config: config.clone(),
                used: now,
            },
        );
        config
    }

    /// How many backends have a config (and so possibly a session); for tests.
    #[cfg(test)]
    pub(super) fn backends(&self) -> usize {
        lock(&self.backends).by_addr.len()
    }
}

/// A store that never panics on a poisoned lock: what it guards stays consistent (each update is
/// a single assignment), and a lost session only costs a full handshake.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One backend's session: the newest of each kind only. A TLS 1.3 ticket is single-use and the
/// server sends fresh ones on every handshake, so older tickets would never be needed; keeping
/// one bounds memory at about one certificate chain per backend.
#[derive(Debug, Default)]
struct BackendStore(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    /// The name the values below were made for; a check under another name starts afresh.
    name: Option<ServerName<'static>>,
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: Option<Tls13ClientSessionValue>,
}

impl Remembered {
    fn for_name(&mut self, name: &ServerName<'_>) -> Option<&mut Remembered> {
        (self.name.as_ref() == Some(name)).then_some(self)
    }

    fn renamed(&mut self, name: ServerName<'static>) -> &mut Remembered {
        if self.name.as_ref() != Some(&name) {
            *self = Remembered {
                name: Some(name),
                ..Remembered::default()
            };
        }
        self
    }
}

impl ClientSessionStore for BackendStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        lock(&self.0).renamed(server_name).kx_hint = Some(group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        lock(&self.0).for_name(server_name)?.kx_hint
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        lock(&self.0).renamed(server_name).tls12 = Some(value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        lock(&self.0).for_name(server_name)?.tls12.clone()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(r) = lock(&self.0).for_name(server_name) {
            r.tls12 = None;
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        lock(&self.0).renamed(server_name).tls13 = Some(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        lock(&self.0).for_name(server_name)?.tls13.take()
    }
}
