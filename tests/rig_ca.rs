//! The rig with its own CA (`--ca-name`): every node's certificate is signed by one CA the rig
//! writes out, and names the service (`quay.example.com`) as well as `node-i` and its address,
//! so docs/quay-ha.md's verified steps work against it. Every client here trusts the written
//! CA file and nothing else: real certificate verification, never the accept-any verifier.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::{backend_state, backends_toml, start_splicer, wait_until, WAIT};
use splicer::rig::{CaOptions, Rig, RigOptions};

const SERVICE: &str = "quay.example.com";

/// A rig of `n` nodes on ephemeral ports whose CA certificate is written to `out`.
async fn rig_with_ca(n: usize, out: &Path) -> Rig {
    Rig::start(RigOptions {
        nodes: n,
        port: 0,
        control: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca: Some(CaOptions {
            name: SERVICE.to_owned(),
            out: out.to_owned(),
        }),
        ..RigOptions::default()
    })
    .await
    .expect("rig with a CA starts")
}

/// A client whose only trust anchor is the CA certificate in `ca_file`.
fn client_trusting(ca_file: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .expect("CA file readable")
        .collect::<Result<_, _>>()
        .expect("CA file is PEM");
    assert_eq!(certs.len(), 1, "the CA file holds one certificate");
    let (added, ignored) = roots.add_parsable_certificates(certs);
    assert_eq!((added, ignored), (1, 0));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// `GET /` over TLS to `addr`, verifying the certificate for `name`: the body, or the error.
async fn get_root(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
        let mut tls = connector.connect(server_name, tcp).await?;
        let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        match tls.read_to_end(&mut answer).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
            Err(e) => return Err(e),
        }
        let (status, body) = common::parse_response(&answer);
        assert_eq!(status, 200, "GET / via {addr}: {body}");
        Ok(body.trim_end().to_owned())
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET / via {addr} for {name}: no answer within {WAIT:?}"))
}

#[tokio::test]
async fn every_node_certificate_validates_for_the_ca_name_against_the_written_ca_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    let rig = rig_with_ca(2, &ca_file).await;
    let written = std::fs::read_to_string(&ca_file).expect("the rig wrote its CA certificate");
    assert_eq!(Some(written.as_str()), rig.ca_cert_pem());

    let client = client_trusting(&ca_file);
    for (i, addr) in rig.node_addrs().into_iter().enumerate() {
        let node = format!("node-{}", i + 1);
        // The service name, and the names the rig always gave (node-i and the node's IP).
        assert_eq!(get_root(&client, addr, SERVICE).await.expect(SERVICE), node);
        assert_eq!(get_root(&client, addr, &node).await.expect("node-i"), node);
        let ip = addr.ip().to_string();
        assert_eq!(get_root(&client, addr, &ip).await.expect("the IP"), node);
        // A name the certificate does not carry is refused: the verification is real.
        let other = get_root(&client, addr, "registry.example.com").await;
        let error = other.expect_err("a name not on the certificate must fail");
        assert!(
            error.to_string().contains("not valid for name"),
            "{node}: {error}"
        );
    }

    // The CA file trusts this rig's nodes only: a rig without a CA (self-signed, as before)
    // is refused by the same client, and writes no CA of its own.
    let plain = common::rig(1).await;
    assert_eq!(plain.ca_cert_pem(), None);
    let refused = get_root(&client, plain.node_addrs()[0], "node-1").await;
    assert!(refused.is_err(), "a self-signed node must not verify");
    plain.shutdown().await;
    rig.shutdown().await;
}

#[tokio::test]
async fn verified_health_checks_pass_and_curl_with_the_ca_gets_through_splicer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    let rig = rig_with_ca(3, &ca_file).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
backends = {}

[pool.health]
check = "https"
path = "/health/instance"
interval = "1s"
timeout = "900ms"
rise = 1
fall = 1
expect_status = "200"
host = "{SERVICE}"
tls_verify = true
ca_file = {:?}
"#,
        backends_toml(&nodes),
        ca_file.display().to_string(),
    ))
    .await;
    let admin = splicer.admin;
    for &node in &nodes {
        wait_until(
            WAIT,
            &format!("{node} up under a verified check"),
            || async move { backend_state(admin, "quay", node).await == "up" },
        )
        .await;
    }

    // Through splicer, a client verifying `quay.example.com` against the CA alone.
    let client = client_trusting(&ca_file);
    let body = get_root(&client, splicer.addr, SERVICE)
        .await
        .expect("through splicer");
    assert!(body.starts_with("node-"), "{body}");

    // docs/quay-ha.md's step, with splicer's port in place of 8443.
    let port = splicer.addr.port();
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .arg("--silent")
            .arg("--show-error")
            .arg("--max-time")
            .arg("10")
            .arg("--cacert")
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!("{SERVICE}:{port}:127.0.0.1"))
            .arg(format!("https://{SERVICE}:{port}/"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl finishes")
    .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl {:?}: {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.trim().starts_with("node-"), "{stdout}");

    assert!(splicer.shutdown().await);
    rig.shutdown().await;
}

#[tokio::test]
async fn splicer_rig_ca_name_writes_the_ca_to_ca_out_and_prints_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("rig-ca.pem");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_splicer"))
        .args([
            "rig",
            "--nodes",
            "1",
            "--port",
            "0",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--ca-name", SERVICE, "--ca-out"])
        .arg(&ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn splicer rig");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the rig prints within WAIT")
        .expect("read stdout")
        .expect("a first line");
    assert!(
        first.contains(&ca_file.display().to_string()) && first.contains(SERVICE),
        "{first}"
    );
    let node_line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("node line")
        .expect("read stdout")
        .expect("a node line");
    let addr: SocketAddr = node_line
        .trim_start_matches("node-1 https://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{node_line}: {e}"));

    // The file is there once the rig has printed, and verifies the node for the name.
    let client = client_trusting(&ca_file);
    assert_eq!(
        get_root(&client, addr, SERVICE).await.expect("node 1"),
        "node-1"
    );
    child.kill().await.expect("stop the rig");
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}
