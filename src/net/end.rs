//! How a client connection ended: one enum for every way out, spelled once for the access
//! log's `end` (docs/architecture.md §5 lists the documented values; the rest extend them).

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed; the client closed first (or left before sending what was needed).
    ClientClosed,
    /// Both sides closed; the backend closed first.
    BackendClosed,
    /// The client reset the connection.
    ClientReset,
    /// The backend reset the connection (or refused the bytes read ahead for it).
    BackendReset,
    /// No byte moved for `idle_timeout`.
    IdleTimeout,
    /// Every connect attempt failed.
    ConnectFailed,
    /// The pool had no backend to try.
    NoBackend,
    /// Cut short because its backend's drain reached `drain_timeout`.
    Drained,
    /// Cut short by shutdown (or the process stopped before it ended).
    Shutdown,
    /// The PROXY header or ClientHello did not arrive within `client_hello_timeout`.
    ClientTimeout,
    /// The PROXY header was malformed.
    BadProxyHeader,
    /// Refused by `allow`/`deny`.
    Denied,
    /// Refused by `per_client_max_connections`.
    ClientLimit,
    /// Refused by `per_client_rate`.
    ClientRate,
    /// This machine ran out of descriptors or memory connecting to a backend (none is blamed).
    LocalResources,
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
            End::ConnectFailed => "connect_failed",
            End::NoBackend => "no_backend",
            End::Drained => "drained",
            End::Shutdown => "shutdown",
            End::ClientTimeout => "client_timeout",
            End::BadProxyHeader => "bad_proxy_header",
            End::Denied => "denied",
            End::ClientLimit => "client_limit",
            End::ClientRate => "client_rate",
            End::LocalResources => "local_resources",
        }
    }
}
