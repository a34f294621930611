//! A small test client: TLS and plain HTTP/1.1 over loopback, every wait bounded.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::rig::{Rig, RigOptions};

/// Bound on every wait: generous for a loaded 2-core machine, short enough to fail fast.
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// How long "no answer" must last for a hung node.
pub(super) const SILENCE: Duration = Duration::from_millis(300);

pub(super) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

pub(super) async fn start_rig(nodes: usize) -> Rig {
    let opts = RigOptions {
        nodes,
        first_ip: Ipv4Addr::new(127, 0, 0, 2),
        port: 0,
        control: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RigOptions::default()
    };
    within("rig start", Rig::start(opts)).await.unwrap()
}

pub(super) fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate but still checks handshake signatures, as a passthrough test
/// client that only cares which node answered would.
#[derive(Debug)]
pub(super) struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) fn any_cert_client() -> Arc<ClientConfig> {
    let provider = ring();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client that trusts only `root`, to check names the way real clients do.
pub(super) fn verifying_client(root: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root).unwrap();
    let config = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

pub(super) async fn tls_connect(
    addr: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// An HTTP/1.1 keep-alive connection to a node; the handle ends when the connection does.
pub(super) async fn open_node(
    addr: SocketAddr,
) -> (
    SendRequest<Full<Bytes>>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = within("tls connect", tls_connect(addr, name, any_cert_client()))
        .await
        .unwrap();
    let (sender, connection) = within("handshake", http1::handshake(TokioIo::new(tls)))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

pub(super) fn request(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "rig")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub(super) async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    within("node answer", async {
        sender.ready().await.unwrap();
        let response = sender
            .send_request(request(method, path, body))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    })
    .await
}

/// One request on a fresh node connection.
pub(super) async fn node_get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let (mut sender, _connection) = open_node(addr).await;
    send(&mut sender, Method::GET, path, "").await
}

pub(super) async fn health(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let (status, headers, body) = node_get(addr, path).await;
    assert_eq!(headers["content-type"], "application/json");
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["status_code"], status.as_u16());
    (status, value["data"]["services"].clone())
}

/// One control request on a fresh plain connection; checks the answer is JSON.
pub(super) async fn control(
    rig: &Rig,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Value) {
    within("control answer", async {
        let tcp = TcpStream::connect(rig.control_addr()).await.unwrap();
        let (mut sender, connection) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(connection);
        let response = sender
            .send_request(request(method, path, body))
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    })
    .await
}

pub(super) fn node_json(rig: &Rig, i: usize) -> Value {
    json!({"node": i, "address": rig.node_addrs()[i - 1].to_string(), "running": true,
           "health": 200, "failing": [], "hang": false, "delay_ms": 0})
}

/// Node i's default object with `changes` applied.
pub(super) fn node_with(rig: &Rig, i: usize, changes: Value) -> Value {
    let mut node = node_json(rig, i);
    if let (Some(node), Some(changes)) = (node.as_object_mut(), changes.as_object()) {
        node.extend(changes.clone());
    }
    node
}
