//! The rig: simulated Quay cluster nodes and the control API that breaks them on purpose.
//!
//! Used by `splicer rig`, `splicer demo` and the integration tests (docs/architecture.md §6 is the
//! contract). Each node is an HTTPS server with its own certificate (`cert.rs`; self-signed,
//! or signed by one CA of the rig's when [`RigOptions::ca`] asks for a service name) answering
//! Quay-style health (`body.rs`) and a few data routes (`routes.rs`); its listener,
//! connections and state live in `node.rs`, sockets and the accept loop in `listen.rs`. The
//! control API (`control.rs`) is the only writer of node state; nodes read it per request, so
//! a change applies to the next answer.

mod body;
mod cert;
mod control;
mod listen;
mod node;
mod routes;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use body::{BYTE_PATTERN_PERIOD, ENDTOEND_SERVICES, INSTANCE_SERVICES};
pub use cert::CertError;
pub use routes::MAX_BYTES;

use node::{Node, SharedOutages};

/// Longest `shutdown` waits for the control API's tasks before aborting them.
const CONTROL_STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the rig's nodes and control API listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RigOptions {
    /// How many nodes, numbered from 1.
    pub nodes: usize,
    /// Node 1's address; node i listens on `first_ip + (i - 1)`.
    pub first_ip: Ipv4Addr,
    /// Every node's port; 0 gives each node an ephemeral port it keeps across restarts.
    pub port: u16,
    /// The control API's address; port 0 picks an ephemeral one.
    pub control: SocketAddr,
    /// A CA that signs every node's certificate for one service name; `None` (the default)
    /// gives each node a self-signed certificate for `node-i` alone.
    pub ca: Option<CaOptions>,
}

/// One service name served by every node under a certificate the rig's own CA signs, so a
/// client can verify the nodes as it verifies real machines (`curl --cacert`, `ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// The DNS name on every node's certificate, next to `node-i` and the node's IP.
    pub name: String,
    /// Where the CA certificate is written as PEM once the rig is up (overwritten if present).
    pub out: PathBuf,
}

impl Default for RigOptions {
    /// Three nodes on 127.0.0.2-4:8443 (a loopback address each, so node i is told apart by
    /// address alone, as real machines are) and control on 127.0.0.1:9101.
    fn default() -> Self {
        RigOptions {
            nodes: 3,
            first_ip: Ipv4Addr::new(127, 0, 0, 2),
            port: 8443,
            control: SocketAddr::from(([127, 0, 0, 1], 9101)),
            ca: None,
        }
    }
}

/// Why the rig could not start.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// A node's or the control API's address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's refusal.
        #[source]
        source: std::io::Error,
    },
    /// Node `node`'s certificate or TLS settings could not be made.
    #[error("making the certificate of node {node}")]
    Cert {
        /// The node's 1-based number.
        node: usize,
        /// What went wrong.
        #[source]
        source: CertError,
    },
    /// The rig's CA could not be made (or `name` is not a valid DNS name).
    #[error("making the rig's CA for {name:?}")]
    Ca {
        /// The service name asked for.
        name: String,
        /// What went wrong.
        #[source]
        source: CertError,
    },
    /// The CA certificate could not be written.
    #[error("writing the CA certificate to {}", path.display())]
    CaFile {
        /// The `out` path asked for.
        path: PathBuf,
        /// The operating system's refusal.
        #[source]
        source: std::io::Error,
    },
    /// `nodes` was 0: a cluster needs at least one machine.
    #[error("the rig needs at least one node")]
    NoNodes,
    /// `first_ip + nodes - 1` is past 255.255.255.255.
    #[error("{nodes} nodes starting at {first_ip} run past the end of the IPv4 space")]
    AddressRange {
        /// Node 1's address, as given.
        first_ip: Ipv4Addr,
        /// The node count, as given.
        nodes: usize,
    },
}

/// Everything the control API acts on.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    pub(crate) shared: Arc<SharedOutages>,
}

/// A running rig: its nodes and control API. Dropping it stops them (without waiting);
/// [`Rig::shutdown`] stops them and waits.
pub struct Rig {
    cluster: Arc<Cluster>,
    control_addr: SocketAddr,
    control_stop: CancellationToken,
    control_task: JoinHandle<()>,
    /// PEM of the CA that signed the nodes' certificates, when the rig has one.
    ca_pem: Option<String>,
    /// Cancels every listener of the rig when the rig goes away, even on a panic in a test.
    _stop_all: DropGuard,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig")
            .field("nodes", &self.node_addrs())
            .field("control", &self.control_addr)
            .finish()
    }
}

impl Rig {
    /// Binds every node and the control API, and writes the CA certificate when there is a
    /// CA; returns once all are accepting.
    pub async fn start(opts: RigOptions) -> Result<Rig, RigError> {
        if opts.nodes == 0 {
            return Err(RigError::NoNodes);
        }
        let ca = match &opts.ca {
            Some(ca) => Some(cert::RigCa::new(&ca.name).map_err(|source| RigError::Ca {
                name: ca.name.clone(),
                source,
            })?),
            None => None,
        };
        let stop_all = CancellationToken::new();
        // Armed before the first bind so an error part-way releases the nodes already up.
        let guard = stop_all.clone().drop_guard();
        let shared = Arc::new(SharedOutages::default());
        let mut nodes = Vec::with_capacity(opts.nodes);
        for index in 1..=opts.nodes {
            let ip = node_ip(opts.first_ip, index).ok_or(RigError::AddressRange {
                first_ip: opts.first_ip,
                nodes: opts.nodes,
            })?;
            let name = format!("node-{index}");
            let identity =
                cert::node_identity(&name, IpAddr::V4(ip), ca.as_ref()).map_err(|source| {
                    RigError::Cert {
                        node: index,
                        source,
                    }
                })?;
            let addr = SocketAddr::new(IpAddr::V4(ip), opts.port);
            let node = Node::start_first(index, addr, identity, shared.clone(), &stop_all)
                .map_err(|source| RigError::Bind { addr, source })?;
            nodes.push(node);
        }
        let cluster = Arc::new(Cluster { nodes, shared });

        let bind_error = |source| RigError::Bind {
            addr: opts.control,
            source,
        };
        let listener = listen::bind(opts.control).map_err(bind_error)?;
        let control_addr = listener.local_addr().map_err(bind_error)?;
        let control_stop = stop_all.child_token();
        let served = cluster.clone();
        let control_task = tokio::spawn(listen::accept_until(
            listener,
            control_stop.clone(),
            move |stream| control::serve_connection(stream, served.clone()),
        ));

        // Written last, so a rig that failed to start leaves no CA behind that matches nothing.
        let ca_pem = ca.as_ref().map(cert::RigCa::cert_pem);
        if let (Some(pem), Some(ca)) = (&ca_pem, &opts.ca) {
            tokio::fs::write(&ca.out, pem)
                .await
                .map_err(|source| RigError::CaFile {
                    path: ca.out.clone(),
                    source,
                })?;
        }

        Ok(Rig {
            cluster,
            control_addr,
            control_stop,
            control_task,
            ca_pem,
            _stop_all: guard,
        })
    }

    /// Node i (1-based) address, in order.
    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        self.cluster.nodes.iter().map(|n| n.addr).collect()
    }

    /// The control API's address (its real port when started with port 0).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// PEM of node i's certificate (1-based), so tests can check passthrough.
    pub fn node_cert_pem(&self, i: usize) -> Option<String> {
        self.node(i).map(|n| n.cert_pem.clone())
    }

    /// DER of node i's certificate (1-based), ready for a `RootCertStore` or a byte compare.
    pub fn node_cert_der(&self, i: usize) -> Option<CertificateDer<'static>> {
        self.node(i).map(|n| n.cert_der.clone())
    }

    /// PEM of the CA that signed every node's certificate (the contents of
    /// [`CaOptions::out`]), or `None` for a rig of self-signed nodes.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Stops every node and the control API and waits for their tasks (bounded).
    pub async fn shutdown(mut self) {
        self.control_stop.cancel();
        if tokio::time::timeout(CONTROL_STOP_GRACE, &mut self.control_task)
            .await
            .is_err()
        {
            self.control_task.abort();
        }
        for node in &self.cluster.nodes {
            node.stop().await;
        }
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.cluster.nodes.get(i.checked_sub(1)?)
    }
}

/// Node `index`'s address: `first + (index - 1)`, or `None` past the end of IPv4.
fn node_ip(first: Ipv4Addr, index: usize) -> Option<Ipv4Addr> {
    let offset = u32::try_from(index.checked_sub(1)?).ok()?;
    u32::from(first).checked_add(offset).map(Ipv4Addr::from)
}
