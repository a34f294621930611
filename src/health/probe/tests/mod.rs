//! Real sockets on 127.0.0.1 port 0 and real TLS against the test backend in `backend`.

mod backend;
mod resumption;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

use super::*;
use crate::config::{CheckKind, HealthConfig, StatusMatcher};
use backend::{ok, response, self_signed_tls, Backend, Event, Reply, TestCa, WAIT};

fn health(check: CheckKind) -> HealthConfig {
    HealthConfig {
        check,
        timeout: Duration::from_secs(2),
        ..HealthConfig::default()
    }
}

async fn probe(health: &HealthConfig, addr: SocketAddr) -> ProbeOutcome {
    let prober = Prober::new(health).unwrap();
    timeout(WAIT, prober.probe(addr)).await.expect("probe ends")
}

#[tokio::test]
async fn https_200_passes() {
    let backend = Backend::start(Some(self_signed_tls()), ok()).await;
    let out = probe(&health(CheckKind::Https), backend.addr).await;
    assert_eq!(out.result, Ok(()));
    assert!(out.is_pass());
    assert_eq!(out.status, Some(200));
    assert_eq!(&out.body[..], b"ok");
}

#[tokio::test]
async fn https_503_fails_and_keeps_the_body() {
    let body = br#"{"data":{"services":{"database":false}},"status_code":503}"#;
    let backend = Backend::start(
        Some(self_signed_tls()),
        response("503 Service Unavailable", body),
    )
    .await;
    let out = probe(&health(CheckKind::Https), backend.addr).await;
    assert_eq!(out.result, Err(ProbeError::Status(503)));
    assert_eq!(out.status, Some(503));
    assert_eq!(&out.body[..], body);
    assert!(!out.is_pass());
    assert_eq!(ProbeError::Status(503).to_string(), "status 503");
}

#[tokio::test]
async fn expect_status_range_accepts_204() {
    let backend = Backend::start(
        Some(self_signed_tls()),
        Reply::Canned(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec()),
    )
    .await;
    let mut h = health(CheckKind::Https);
    h.expect_status = StatusMatcher {
        ranges: vec![(200, 299)],
    };
    let out = probe(&h, backend.addr).await;
    assert_eq!(out.result, Ok(()));
    assert_eq!(out.status, Some(204));
}

#[tokio::test]
async fn plain_http_passes_and_sends_the_expected_request() {
    let mut backend = Backend::start(None, ok()).await;
    let out = probe(&health(CheckKind::Http), backend.addr).await;
    assert_eq!(out.result, Ok(()));
    let head = backend.next_request().await.to_ascii_lowercase();
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "get /health/instance http/1.1");
    assert!(
        lines.contains(&format!("host: {}", backend.addr).as_str()),
        "{head}"
    );
    let agent = format!("user-agent: splicer/{}", env!("CARGO_PKG_VERSION"));
    assert!(lines.contains(&agent.as_str()), "{head}");
    assert!(lines.contains(&"connection: close"), "{head}");
}

#[tokio::test]
async fn configured_host_is_the_host_header_and_sni() {
    let mut backend = Backend::start(Some(self_signed_tls()), ok()).await;
    let mut h = health(CheckKind::Https);
    h.host = Some("quay.example.com".to_owned());
    h.path = "/health/endtoend?x=1".to_owned();
    let out = probe(&h, backend.addr).await;
    assert_eq!(out.result, Ok(()));
    let (sni, alpn) = backend.next_hello().await;
    assert_eq!(sni.as_deref(), Some("quay.example.com"));
    assert_eq!(alpn, vec![b"http/1.1".to_vec()]);
    let head = backend.next_request().await.to_ascii_lowercase();
    assert!(
        head.starts_with("get /health/endtoend?x=1 http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nhost: quay.example.com\r\n"), "{head}");
}

#[tokio::test]
async fn no_host_means_no_sni() {
    let mut backend = Backend::start(Some(self_signed_tls()), ok()).await;
    let out = probe(&health(CheckKind::Https), backend.addr).await;
    assert_eq!(out.result, Ok(()));
    let (sni, _) = backend.next_hello().await;
    assert_eq!(sni, None);
}

#[tokio::test]
async fn tcp_connect_passes_with_no_status_or_body() {
    let backend = Backend::start(None, Reply::Silent).await;
    let out = probe(&health(CheckKind::Tcp), backend.addr).await;
    assert_eq!(out.result, Ok(()));
    assert_eq!(out.status, None);
    assert!(out.body.is_empty());
}

#[tokio::test]
async fn none_passes_without_connecting() {
    let out = probe(&health(CheckKind::None), closed_port().await).await;
    assert!(out.is_pass());
}

/// A port nothing listens on: bound, read, released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn refused() {
    let addr = closed_port().await;
    for check in [CheckKind::Tcp, CheckKind::Http, CheckKind::Https] {
        let out = probe(&health(check), addr).await;
        assert_eq!(out.result, Err(ProbeError::Refused), "{check:?}");
        assert_eq!(out.status, None);
    }
    assert_eq!(ProbeError::Refused.to_string(), "connection refused");
}

#[tokio::test]
async fn silent_backend_times_out_and_is_hung_up_on() {
    for (check, tls) in [
        (CheckKind::Http, None),
        (CheckKind::Https, Some(self_signed_tls())),
    ] {
        let mut backend = Backend::start(tls, Reply::Silent).await;
        let mut h = health(check);
        h.timeout = Duration::from_millis(300);
        let out = probe(&h, backend.addr).await;
        assert_eq!(out.result, Err(ProbeError::Timeout), "{check:?}");
        assert!(
            out.latency >= Duration::from_millis(290),
            "{:?}",
            out.latency
        );
        assert!(
            out.latency < Duration::from_millis(1300),
            "{:?}",
            out.latency
        );
        // The connection driver was aborted with the check, so the socket is closed.
        loop {
            if let Event::ProbeClosed = backend.next_event().await {
                break;
            }
        }
    }
}

#[tokio::test]
async fn stalled_tls_handshake_times_out() {
    // Accepts TCP but never answers the ClientHello.
    let backend = Backend::start(None, Reply::Silent).await;
    let mut h = health(CheckKind::Https);
    h.timeout = Duration::from_millis(200);
    let out = probe(&h, backend.addr).await;
    assert_eq!(out.result, Err(ProbeError::Timeout));
}

#[tokio::test]
async fn garbage_instead_of_http_is_an_http_error() {
    let garbage = b"\x00\xffSSH-2.0-OpenSSH\r\n\r\nnot http at all".to_vec();
    for (check, tls) in [
        (CheckKind::Http, None),
        (CheckKind::Https, Some(self_signed_tls())),
    ] {
        let backend = Backend::start(tls, Reply::Canned(garbage.clone())).await;
        let out = probe(&health(check), backend.addr).await;
        assert!(
            matches!(out.result, Err(ProbeError::Http(_))),
            "{check:?}: {:?}",
            out.result
        );
        assert_eq!(out.status, None);
    }
}

#[tokio::test]
async fn plain_http_on_an_https_check_is_a_tls_error() {
    // Like a plain-HTTP server answering a ClientHello: an error page, then close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 512];
        let _ = tcp.read(&mut hello).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let out = probe(&health(CheckKind::Https), addr).await;
    server.abort();
    assert!(
        matches!(out.result, Err(ProbeError::Tls(_))),
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn huge_headers_are_an_http_error() {
    let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..20_000 {
        bytes.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    let backend = Backend::start(None, Reply::Canned(bytes)).await;
    let out = probe(&health(CheckKind::Http), backend.addr).await;
    assert!(
        matches!(out.result, Err(ProbeError::Http(_))),
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn early_close_is_a_reset() {
    for (check, tls) in [
        (CheckKind::Http, None),
        (CheckKind::Https, Some(self_signed_tls())),
    ] {
        let backend = Backend::start(tls, Reply::Close).await;
        let out = probe(&health(check), backend.addr).await;
        assert_eq!(out.result, Err(ProbeError::Reset), "{check:?}");
        assert_eq!(out.status, None);
    }
}

#[tokio::test]
async fn truncated_body_fails_but_keeps_status_and_bytes() {
    let reply = Reply::Canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\npartial".to_vec(),
    );
    let backend = Backend::start(None, reply).await;
    let out = probe(&health(CheckKind::Http), backend.addr).await;
    assert!(
        matches!(out.result, Err(ProbeError::Http(_))),
        "{:?}",
        out.result
    );
    assert_eq!(out.status, Some(200));
    assert_eq!(&out.body[..], b"partial");
}

#[tokio::test]
async fn body_is_capped_at_64_kib() {
    let body = vec![b'a'; 1 << 20];
    for (check, tls) in [
        (CheckKind::Http, None),
        (CheckKind::Https, Some(self_signed_tls())),
    ] {
        let backend = Backend::start(tls, response("200 OK", &body)).await;
        let out = probe(&health(check), backend.addr).await;
        assert_eq!(out.result, Ok(()), "{check:?}");
        assert_eq!(out.body.len(), 65536);
    }
}

#[tokio::test]
async fn verified_tls_with_the_right_ca_passes() {
    let ca = TestCa::new();
    let backend = Backend::start(Some(ca.leaf_tls()), ok()).await;
    let mut h = health(CheckKind::Https);
    h.tls_verify = true;
    h.ca_file = Some(ca.file.path().to_owned());
    h.host = Some("backend.test".to_owned());
    assert_eq!(probe(&h, backend.addr).await.result, Ok(()));
    // Without a host the IP is verified against the certificate's IP SAN.
    h.host = None;
    assert_eq!(probe(&h, backend.addr).await.result, Ok(()));
}

#[tokio::test]
async fn verified_tls_with_another_ca_fails() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let backend = Backend::start(Some(ca.leaf_tls()), ok()).await;
    let mut h = health(CheckKind::Https);
    h.tls_verify = true;
    h.ca_file = Some(other.file.path().to_owned());
    h.host = Some("backend.test".to_owned());
    let out = probe(&h, backend.addr).await;
    match &out.result {
        Err(e @ ProbeError::Tls(reason)) => {
            assert!(reason.contains("certificate"), "{reason}");
            assert_eq!(
                e.to_string(),
                "tls: invalid peer certificate: UnknownIssuer"
            );
        }
        other => panic!("expected a tls error, got {other:?}"),
    }
}

#[tokio::test]
async fn verified_tls_with_the_wrong_name_fails() {
    let ca = TestCa::new();
    let backend = Backend::start(Some(ca.leaf_tls()), ok()).await;
    let mut h = health(CheckKind::Https);
    h.tls_verify = true;
    h.ca_file = Some(ca.file.path().to_owned());
    h.host = Some("elsewhere.test".to_owned());
    let out = probe(&h, backend.addr).await;
    assert!(
        matches!(&out.result, Err(ProbeError::Tls(r)) if r.contains("certificate")),
        "{:?}",
        out.result
    );
}

#[test]
fn setup_errors() {
    let mut h = health(CheckKind::Https);
    h.tls_verify = true;
    h.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(matches!(
        Prober::new(&h),
        Err(ProbeSetupError::CaFile { .. })
    ));

    let empty = tempfile::NamedTempFile::new().unwrap();
    h.ca_file = Some(empty.path().to_owned());
    assert!(matches!(
        Prober::new(&h),
        Err(ProbeSetupError::CaFileEmpty { .. })
    ));

    // A ca_file is only read when verification needs it.
    h.tls_verify = false;
    h.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(Prober::new(&h).is_ok());

    let mut h = health(CheckKind::Http);
    h.host = Some("bad\nhost".to_owned());
    assert!(matches!(
        Prober::new(&h),
        Err(ProbeSetupError::HostHeader(_))
    ));
    let mut h = health(CheckKind::Http);
    h.path = "not a path".to_owned();
    assert!(matches!(Prober::new(&h), Err(ProbeSetupError::Path { .. })));
}

#[test]
fn io_errors_are_classified_by_kind() {
    use std::io::{Error, ErrorKind};
    let cases = [
        (ErrorKind::ConnectionRefused, ProbeError::Refused),
        (ErrorKind::ConnectionReset, ProbeError::Reset),
        (ErrorKind::ConnectionAborted, ProbeError::Reset),
        (ErrorKind::BrokenPipe, ProbeError::Reset),
        (ErrorKind::UnexpectedEof, ProbeError::Reset),
        (ErrorKind::TimedOut, ProbeError::Timeout),
        (ErrorKind::HostUnreachable, ProbeError::Unreachable),
        (ErrorKind::NetworkUnreachable, ProbeError::Unreachable),
    ];
    for (kind, want) in cases {
        let e = Error::new(kind, "x");
        assert_eq!(classify_io(&e, Stage::BeforeResponse), want, "{kind:?}");
    }
    let eof = Error::new(ErrorKind::UnexpectedEof, "x");
    assert!(matches!(
        classify_io(&eof, Stage::Body),
        ProbeError::Http(_)
    ));
    let other = Error::new(ErrorKind::AddrNotAvailable, "no address");
    assert_eq!(
        classify_io(&other, Stage::BeforeResponse).to_string(),
        "io: no address"
    );
    let tls = Error::new(
        ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    );
    assert_eq!(
        classify_io(&tls, Stage::BeforeResponse).to_string(),
        "tls: invalid peer certificate: UnknownIssuer"
    );
}

#[test]
fn verdict_follows_expect_status() {
    let m = StatusMatcher {
        ranges: vec![(200, 299), (304, 304)],
    };
    assert_eq!(verdict(200, &m), Ok(()));
    assert_eq!(verdict(304, &m), Ok(()));
    assert_eq!(verdict(503, &m), Err(ProbeError::Status(503)));
}

#[test]
fn default_host_header_is_the_address() {
    let v4: SocketAddr = "10.0.0.11:443".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:8443".parse().unwrap();
    assert_eq!(address_host(v4).unwrap(), "10.0.0.11:443");
    assert_eq!(address_host(v6).unwrap(), "[2001:db8::1]:8443");
}

#[test]
fn certificate_names_are_shown_plainly() {
    assert_eq!(
        plain_names(
            "invalid peer certificate: certificate not valid for name \"quay\"; certificate is \
             only valid for DnsName(\"node-1\") or IpAddress(127.0.0.2)"
        ),
        "invalid peer certificate: certificate not valid for name \"quay\"; certificate is \
         only valid for node-1 or 127.0.0.2"
    );
    assert_eq!(plain_names("unknown issuer"), "unknown issuer");
    assert_eq!(plain_names("cut DnsName(\"x"), "cut DnsName(\"x");
}
