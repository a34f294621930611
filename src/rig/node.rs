//! One simulated node: its run-time state, its listener's life (`/stop`, `/start`) and its
//! connections, which `/hang` freezes and `/stop` kills.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::cert::NodeIdentity;
use super::{listen, routes};

/// Longest a `/stop` (or rig shutdown) waits for a node's tasks before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the control API can change about a node; its connections watch it for `hang`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeState {
    pub(crate) running: bool,
    /// Status `/health/instance` answers when no service fails (200 by default).
    pub(crate) health: u16,
    /// Services this node alone reports false, in the order they were given.
    pub(crate) failing: Vec<String>,
    pub(crate) hang: bool,
    pub(crate) delay: Duration,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            running: true,
            health: 200,
            failing: Vec::new(),
            hang: false,
            delay: Duration::ZERO,
        }
    }
}

/// Services down for the whole cluster (`/shared/{service}/down`), read by every node.
#[derive(Debug, Default)]
pub(crate) struct SharedOutages {
    down: Mutex<BTreeSet<String>>,
}

impl SharedOutages {
    /// Marks `service` down (`is_down`) or up; returns the set now down.
    pub(crate) fn set(&self, service: &str, is_down: bool) -> BTreeSet<String> {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if is_down {
            down.insert(service.to_owned());
        } else {
            down.remove(service);
        }
        down.clone()
    }

    /// The services down right now.
    pub(crate) fn snapshot(&self) -> BTreeSet<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A node as the control API shows it; field order is the contract's.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeView {
    pub(crate) node: usize,
    pub(crate) address: String,
    pub(crate) running: bool,
    pub(crate) health: u16,
    pub(crate) failing: Vec<String>,
    pub(crate) hang: bool,
    pub(crate) delay_ms: u64,
}

/// What a node's connections and request handler need: shared by all of its tasks.
pub(crate) struct NodeContext {
    /// `node-i`: the answer to `GET /` and the `X-Node` header.
    pub(crate) name: String,
    pub(crate) x_node: HeaderValue,
    acceptor: TlsAcceptor,
    /// The one copy of the node's state; a watch so connections wake when `hang` flips.
    pub(crate) state: watch::Sender<NodeState>,
    pub(crate) shared: Arc<SharedOutages>,
}

/// A listener and its connections, running until `stop` fires.
struct Serving {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// One simulated cluster node.
pub(crate) struct Node {
    pub(crate) index: usize,
    /// Fixed at the first bind (an ephemeral port stays the node's port across restarts).
    pub(crate) addr: SocketAddr,
    pub(crate) cert_pem: String,
    pub(crate) cert_der: CertificateDer<'static>,
    context: Arc<NodeContext>,
    /// Serialises `/stop` and `/start`; `None` while stopped.
    serving: tokio::sync::Mutex<Option<Serving>>,
    /// The rig's token: every listener stops when the rig is dropped.
    rig_stop: CancellationToken,
}

impl Node {
    /// Binds node `index` at `addr` (port 0 picks one) and starts serving.
    pub(crate) fn start_first(
        index: usize,
        addr: SocketAddr,
        identity: NodeIdentity,
        shared: Arc<SharedOutages>,
        rig_stop: &CancellationToken,
    ) -> io::Result<Node> {
        let listener = listen::bind(addr)?;
        let addr = listener.local_addr()?;
        let name = format!("node-{index}");
        let context = Arc::new(NodeContext {
            x_node: HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("node")),
            name,
            acceptor: TlsAcceptor::from(identity.tls),
            state: watch::Sender::new(NodeState::default()),
            shared,
        });
        let serving = spawn_serving(listener, context.clone(), rig_stop.child_token());
        Ok(Node {
            index,
            addr,
            cert_pem: identity.cert_pem,
            cert_der: identity.cert_der,
            context,
            serving: tokio::sync::Mutex::new(Some(serving)),
            rig_stop: rig_stop.clone(),
        })
    }

    /// The node as the control API reports it.
    pub(crate) fn view(&self) -> NodeView {
        let state = self.context.state.borrow();
        NodeView {
            node: self.index,
            address: self.addr.to_string(),
            running: state.running,
            health: state.health,
            failing: state.failing.clone(),
            hang: state.hang,
            delay_ms: u64::try_from(state.delay.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Closes the listener and drops every connection at once, like a machine dying;
    /// returns once the sockets are closed (or after `STOP_GRACE`).
    pub(crate) async fn stop(&self) {
        let mut serving = self.serving.lock().await;
        let Some(Serving { stop, mut task }) = serving.take() else {
            return;
        };
        self.context.state.send_modify(|s| s.running = false);
        stop.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }

    /// Rebinds the node's address and ends any hang; a running node only stops hanging.
    pub(crate) async fn start(&self) -> io::Result<()> {
        let mut serving = self.serving.lock().await;
        if serving.is_none() {
            let listener = listen::bind(self.addr)?;
            let token = self.rig_stop.child_token();
            *serving = Some(spawn_serving(listener, self.context.clone(), token));
        }
        self.context.state.send_modify(|s| {
            s.running = true;
            s.hang = false;
        });
        Ok(())
    }

    /// Freezes the node: connections, new and open, are held but never read or answered.
    pub(crate) fn hang(&self) {
        self.context.state.send_modify(|s| s.hang = true);
    }

    /// Sets the pause before every answer.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.context.state.send_modify(|s| s.delay = delay);
    }

    /// Sets the configured health status and/or the failing list. A new status without a
    /// list clears the list when the status is 200, so `{"status":200}` heals a node.
    pub(crate) fn set_health(&self, status: Option<u16>, failing: Option<Vec<String>>) {
        self.context.state.send_modify(|s| {
            if let Some(status) = status {
                s.health = status;
                if failing.is_none() && status == 200 {
                    s.failing.clear();
                }
            }
            if let Some(failing) = failing {
                let mut seen = BTreeSet::new();
                s.failing = failing
                    .into_iter()
                    .filter(|name| seen.insert(name.clone()))
                    .collect();
            }
        });
    }
}

fn spawn_serving(
    listener: tokio::net::TcpListener,
    context: Arc<NodeContext>,
    stop: CancellationToken,
) -> Serving {
    let task = tokio::spawn(listen::accept_until(
        listener,
        stop.clone(),
        move |stream| serve_connection(stream, context.clone()),
    ));
    Serving { stop, task }
}

/// One client connection: TLS, then HTTP/1.1 with keep-alive, paused whenever the node hangs.
async fn serve_connection(stream: TcpStream, context: Arc<NodeContext>) {
    // Small answers (health, `GET /`) should leave at once, as from a real server.
    let _ = stream.set_nodelay(true);
    let mut state = context.state.subscribe();
    let session = async move {
        let Ok(tls) = context.acceptor.accept(stream).await else {
            return;
        };
        let service = service_fn(move |request| routes::answer(request, context.clone()));
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    };
    run_unless_hung(session, &mut state).await;
}

/// Drives `session` only while the node is not hung. A hung session keeps its socket but is
/// not polled, so nothing is read or written (a TLS handshake stalls too); `/start` resumes it.
async fn run_unless_hung(
    session: impl Future<Output = ()>,
    state: &mut watch::Receiver<NodeState>,
) {
    let mut session = pin!(session);
    loop {
        if state.wait_for(|s| !s.hang).await.is_err() {
            return;
        }
        tokio::select! {
            () = &mut session => return,
            hung = state.wait_for(|s| s.hang) => {
                if hung.is_err() {
                    return;
                }
            }
        }
    }
}
