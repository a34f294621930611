//! `https` checks resume each backend's TLS session, and still pass against backends that
//! refuse resumption.

use rustls::HandshakeKind::{Full, Resumed};

use super::backend::{no_resumption_tls, ok, self_signed_tls, Backend, TestCa, WAIT};
use super::{health, Prober};
use crate::config::CheckKind;

async fn check(prober: &Prober, backend: &mut Backend) -> rustls::HandshakeKind {
    let out = tokio::time::timeout(WAIT, prober.probe(backend.addr))
        .await
        .expect("probe ends");
    assert_eq!(out.result, Ok(()));
    backend.next_handshake().await
}

#[tokio::test]
async fn the_second_check_of_a_backend_is_resumed() {
    let mut backend = Backend::start(Some(self_signed_tls()), ok()).await;
    let prober = Prober::new(&health(CheckKind::Https)).unwrap();
    assert_eq!(check(&prober, &mut backend).await, Full);
    assert_eq!(check(&prober, &mut backend).await, Resumed);
    assert_eq!(check(&prober, &mut backend).await, Resumed);
}

#[tokio::test]
async fn backends_sharing_a_server_name_resume_their_own_sessions() {
    // With `host` set every backend is checked under one name; rustls's own cache, keyed by
    // name, would offer a's ticket to b (which refuses it) on every alternation.
    let mut a = Backend::start(Some(self_signed_tls()), ok()).await;
    let mut b = Backend::start(Some(self_signed_tls()), ok()).await;
    let mut h = health(CheckKind::Https);
    h.host = Some("self.test".to_owned());
    let prober = Prober::new(&h).unwrap();
    assert_eq!(check(&prober, &mut a).await, Full);
    assert_eq!(check(&prober, &mut b).await, Full);
    for _ in 0..2 {
        assert_eq!(check(&prober, &mut a).await, Resumed);
        assert_eq!(check(&prober, &mut b).await, Resumed);
    }
}

#[tokio::test]
async fn a_backend_without_resumption_still_passes() {
    let mut backend = Backend::start(Some(no_resumption_tls()), ok()).await;
    let prober = Prober::new(&health(CheckKind::Https)).unwrap();
    for _ in 0..3 {
        assert_eq!(check(&prober, &mut backend).await, Full);
    }
}

#[tokio::test]
async fn a_restarted_backend_that_forgot_the_session_gets_a_full_handshake() {
    let mut first = Backend::start(Some(self_signed_tls()), ok()).await;
    let prober = Prober::new(&health(CheckKind::Https)).unwrap();
    assert_eq!(check(&prober, &mut first).await, Full);
    let addr = first.addr;
    drop(first);
    // Same address, new process: new keys, no memory of the ticket the prober holds.
    let mut second = Backend::start_at(addr, Some(self_signed_tls()), ok()).await;
    assert_eq!(check(&prober, &mut second).await, Full);
    assert_eq!(check(&prober, &mut second).await, Resumed);
}

#[tokio::test]
async fn verified_checks_resume_too() {
    let ca = TestCa::new();
    let mut backend = Backend::start(Some(ca.leaf_tls()), ok()).await;
    let mut h = health(CheckKind::Https);
    h.tls_verify = true;
    h.ca_file = Some(ca.file.path().to_owned());
    let prober = Prober::new(&h).unwrap();
    assert_eq!(check(&prober, &mut backend).await, Full);
    assert_eq!(check(&prober, &mut backend).await, Resumed);
}

#[test]
fn one_config_per_backend_address() {
    let base = super::super::tls::client_config(&health(CheckKind::Https)).unwrap();
    let sessions = super::super::sessions::Sessions::new(base);
    let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
    let first = sessions.config_for(a);
    assert!(std::sync::Arc::ptr_eq(&first, &sessions.config_for(a)));
    assert!(!std::sync::Arc::ptr_eq(&first, &sessions.config_for(b)));
    assert_eq!(sessions.backends(), 2);
}
