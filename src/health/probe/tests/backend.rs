//! The test backend: a canned-answer HTTP(S) server on 127.0.0.1 port 0 that reports what it
//! saw (SNI, ALPN, request head, the probe hanging up), and rcgen certificates for it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::Acceptor;
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;

/// Bound on every wait in these tests, so a bug fails a test instead of hanging it.
pub(super) const WAIT: Duration = Duration::from_secs(5);

/// What the test backend does once it has read the request head.
#[derive(Clone)]
pub(super) enum Reply {
    /// Write these bytes, then close.
    Canned(Vec<u8>),
    /// Say nothing; report when the probe hangs up.
    Silent,
    /// Close without a word.
    Close,
}

/// What the test backend observed on one connection.
#[derive(Debug)]
pub(super) enum Event {
    Hello {
        sni: Option<String>,
        alpn: Vec<Vec<u8>>,
    },
    /// The TLS handshake completed, in full or by resuming a session.
    Handshake(HandshakeKind),
    Request(String),
    ProbeClosed,
}

pub(super) struct Backend {
    pub(super) addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub(super) async fn start(tls: Option<Arc<ServerConfig>>, reply: Reply) -> Backend {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Backend::start_at(any, tls, reply).await
    }

    /// Like [`Backend::start`] on a given address, e.g. one a dropped backend just released
    /// (its listener closes once the runtime drops the aborted task, hence the retries).
    pub(super) async fn start_at(
        at: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        reply: Reply,
    ) -> Backend {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(at).await {
                Ok(l) => break l,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {at}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tls, reply, tx) = (tls.clone(), reply.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, tls, reply, tx).await;
                });
            }
        });
        Backend { addr, events, task }
    }

    pub(super) async fn next_event(&mut self) -> Event {
        timeout(WAIT, self.events.recv())
            .await
            .expect("backend event in time")
            .expect("backend alive")
    }

    /// The request head of the next connection that got that far.
    pub(super) async fn next_request(&mut self) -> String {
        loop {
            if let Event::Request(head) = self.next_event().await {
                return head;
            }
        }
    }

    pub(super) async fn next_handshake(&mut self) -> HandshakeKind {
        loop {
            if let Event::Handshake(kind) = self.next_event().await {
                return kind;
            }
        }
    }

    pub(super) async fn next_hello(&mut self) -> (Option<String>, Vec<Vec<u8>>) {
        loop {
            if let Event::Hello { sni, alpn } = self.next_event().await {
                return (sni, alpn);
            }
        }
    }
}

async fn serve(
    tcp: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    reply: Reply,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    match tls {
        None => answer(tcp, reply, tx).await,
        Some(config) => {
            let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
            let hello = start.client_hello();
            let sni = hello.server_name().map(str::to_owned);
            let alpn = hello
                .alpn()
                .map(|protos| protos.map(<[u8]>::to_vec).collect())
                .unwrap_or_default();
            let _ = tx.send(Event::Hello { sni, alpn });
            let stream = start.into_stream(config).await?;
            if let Some(kind) = stream.get_ref().1.handshake_kind() {
                let _ = tx.send(Event::Handshake(kind));
            }
            answer(stream, reply, tx).await
        }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    reply: Reply,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let _ = tx.send(Event::Request(String::from_utf8_lossy(&head).into_owned()));
    match reply {
        Reply::Canned(bytes) => {
            stream.write_all(&bytes).await?;
            stream.shutdown().await?;
        }
        Reply::Silent => {
            // Returns when the probe hangs up (EOF or reset).
            while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
            let _ = tx.send(Event::ProbeClosed);
        }
        Reply::Close => {}
    }
    Ok(())
}

pub(super) fn response(status: &str, body: &[u8]) -> Reply {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    Reply::Canned(bytes)
}

pub(super) fn ok() -> Reply {
    response("200 OK", b"ok")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    Arc::new(config)
}

pub(super) fn self_signed_tls() -> Arc<ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["self.test".to_owned()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
    server_config(ck.cert.der().clone(), key.into())
}

/// Like [`self_signed_tls`], for a backend that neither keeps sessions nor issues tickets, so
/// every handshake is a full one.
pub(super) fn no_resumption_tls() -> Arc<ServerConfig> {
    let mut config = Arc::unwrap_or_clone(self_signed_tls());
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A CA, as PEM in a temporary file the prober can read.
pub(super) struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub(super) file: tempfile::NamedTempFile,
}

impl TestCa {
    pub(super) fn new() -> TestCa {
        // Distinct names, or webpki would take another CA's leaf as signed by this one and
        // report a bad signature instead of an unknown issuer.
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("splicer test CA {n}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(cert.pem().as_bytes()).unwrap();
        TestCa { cert, key, file }
    }

    /// A server config presenting a leaf for `backend.test` and 127.0.0.1 signed by this CA.
    pub(super) fn leaf_tls(&self) -> Arc<ServerConfig> {
        let params =
            CertificateParams::new(vec!["backend.test".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        server_config(cert.der().clone(), key.into())
    }
}
