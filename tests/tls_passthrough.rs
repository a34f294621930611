//! TLS crosses splicer untouched: the client completes its handshake with the backend itself
//! (the backend's certificate, the backend's ALPN choice), and with the rig the certificate seen
//! is the one of the node that answered.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use common::{backend_state, backends_toml, parse_response, rig, start_splicer, tls_client, WAIT};

/// A TLS test backend offering `h2` before `http/1.1`, so a client offering both gets `h2`.
/// Each connection reads one line and answers `pong: <line>` over TLS, then closes.
async fn tls_backend() -> (SocketAddr, CertificateDer<'static>) {
    let mut params = CertificateParams::new(vec!["backend.test".to_owned()]).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "splicer-tls-test-backend");
    params.distinguished_name = dn;
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed cert");
    let cert_der = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while tls.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                let mut answer = b"pong: ".to_vec();
                answer.extend_from_slice(&line);
                answer.push(b'\n');
                let _ = tls.write_all(&answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, cert_der)
}

/// Completes a TLS handshake through `addr` offering `alpn`, naming `server_name`.
async fn tls_connect(addr: SocketAddr, server_name: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        TlsConnector::from(tls_client(alpn))
            .connect(name, tcp)
            .await
            .expect("TLS handshake through splicer")
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("TLS handshake timed out")
}

/// The leaf certificate the client was shown.
fn peer_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a peer certificate")
        .clone()
        .into_owned()
}

/// Reads to EOF, accepting a peer that closes without close_notify once bytes arrived.
async fn read_to_end(tls: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut buf = Vec::new();
    match tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
        .await
        .expect("answer timed out")
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => panic!("reading the answer: {e}"),
    }
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sees_the_backends_certificate_and_alpn_choice() {
    let (backend, cert) = tls_backend().await;
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "p"

[[pool]]
name = "p"
backends = {}

[pool.health]
check = "tcp"
"#,
        backends_toml(&[backend])
    ))
    .await;

    let mut tls = tls_connect(splicer.addr, "backend.test", &[b"h2", b"http/1.1"]).await;
    assert!(
        peer_leaf(&tls) == cert,
        "the certificate seen through splicer is not the backend's"
    );
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the backend's ALPN choice did not reach the client"
    );

    tls.write_all(b"ping through splicer\n")
        .await
        .expect("write");
    assert_eq!(read_to_end(&mut tls).await, b"pong: ping through splicer\n");

    // Offering only http/1.1 gets http/1.1: ALPN is negotiated end to end, not fixed.
    let mut tls = tls_connect(splicer.addr, "backend.test", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"second\n").await.expect("write");
    assert_eq!(read_to_end(&mut tls).await, b"pong: second\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_rig_the_certificate_is_that_of_the_node_that_answered() {
    let rig = rig(3).await;
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "rig"

[[pool]]
name = "rig"
balance = "round_robin"
backends = {}

[pool.health]
check = "https"
interval = "1s"
timeout = "500ms"
"#,
        backends_toml(&rig.node_addrs())
    ))
    .await;
    for addr in rig.node_addrs() {
        assert_eq!(backend_state(splicer.admin, "rig", addr).await, "up");
    }

    let mut seen = BTreeSet::new();
    for _ in 0..9 {
        let mut tls = tls_connect(splicer.addr, "node", &[b"http/1.1"]).await;
        let cert = peer_leaf(&tls);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await
            .expect("write request");
        let (code, body) = parse_response(&read_to_end(&mut tls).await);
        assert_eq!(code, 200, "{body}");
        let node: usize = body
            .trim()
            .strip_prefix("node-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected body {body:?}"));
        let expected = rig.node_cert_der(node).expect("node cert");
        assert!(
            cert == expected,
            "node-{node} answered but the certificate seen was another node's"
        );
        seen.insert(node);
    }
    assert_eq!(
        seen,
        BTreeSet::from([1, 2, 3]),
        "round robin over three up nodes should reach each"
    );
}
