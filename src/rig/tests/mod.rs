//! End-to-end tests of the rig over real loopback sockets.

mod client;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::*;
use client::*;

#[tokio::test]
async fn nodes_answer_with_their_name_and_certificate() {
    let rig = start_rig(3).await;
    let addrs = rig.node_addrs();
    assert_eq!(addrs.len(), 3);
    for (k, addr) in addrs.iter().enumerate() {
        let i = k + 1;
        let name = format!("node-{i}");
        assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k as u8)));
        let (status, headers, body) = node_get(*addr, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("{name}\n"));
        assert_eq!(headers["x-node"], name.as_str());

        let der = rig.node_cert_der(i).unwrap();
        let pem = rig.node_cert_pem(i).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        // CN: the commonName OID (2.5.4.3), a string tag, the length, then the name.
        let mut cn = vec![0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, name.len() as u8];
        cn.extend_from_slice(name.as_bytes());
        assert!(der.windows(cn.len()).any(|w| w == cn), "CN {name} missing");

        // SAN DNS and IP: a client trusting only this certificate accepts both names.
        let verifying = verifying_client(der.clone());
        let dns = ServerName::try_from(name.clone()).unwrap();
        let ip = ServerName::IpAddress(addr.ip().into());
        for server_name in [dns, ip] {
            let tls = within("tls", tls_connect(*addr, server_name, verifying.clone()))
                .await
                .unwrap();
            let (_, session) = tls.get_ref();
            assert_eq!(session.peer_certificates().unwrap()[0], der);
        }
        let other = ServerName::try_from("node-9").unwrap();
        assert!(within("tls", tls_connect(*addr, other, verifying))
            .await
            .is_err());

        let tls = within(
            "tls",
            tls_connect(
                *addr,
                ServerName::IpAddress(addr.ip().into()),
                any_cert_client(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
    assert!(rig.node_cert_pem(0).is_none());
    assert!(rig.node_cert_pem(4).is_none());
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn health_follows_the_node_state() {
    let rig = start_rig(1).await;
    let addr = rig.node_addrs()[0];

    let (status, services) = health(addr, "/health/instance").await;
    assert_eq!(status, StatusCode::OK);
    let expected: serde_json::Map<String, Value> = INSTANCE_SERVICES
        .iter()
        .map(|s| (s.to_string(), json!(true)))
        .collect();
    assert_eq!(services, Value::Object(expected));
    let (status, services) = health(addr, "/health/endtoend").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(services.as_object().unwrap().len(), ENDTOEND_SERVICES.len());

    // A bare status: every service true, yet 503.
    let (status, node) = control(&rig, Method::POST, "/nodes/1/health", "503").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node, node_with(&rig, 1, json!({"health": 503})));
    let (status, services) = health(addr, "/health/instance").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(services.as_object().unwrap().values().all(|v| v == true));
    assert_eq!(health(addr, "/health/endtoend").await.0, 503);

    // A failing list on a 200 node: that service false, 503; end-to-end unaffected.
    let body = r#"{"status":200,"failing":["disk_space"]}"#;
    let (_, node) = control(&rig, Method::POST, "/nodes/1/health", body).await;
    assert_eq!(
        (node["health"].clone(), node["failing"].clone()),
        (json!(200), json!(["disk_space"]))
    );
    let (status, services) = health(addr, "/health/instance").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(services["disk_space"], false);
    assert_eq!(services["database"], true);
    assert_eq!(health(addr, "/health/endtoend").await.0, StatusCode::OK);

    // `{"status":200}` heals.
    let (_, node) = control(&rig, Method::POST, "/nodes/1/health", r#"{"status":200}"#).await;
    assert_eq!(node, node_json(&rig, 1));
    assert_eq!(health(addr, "/health/instance").await.0, StatusCode::OK);
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn bytes_and_sha256() {
    let rig = start_rig(1).await;
    let addr = rig.node_addrs()[0];
    let (mut sender, _connection) = open_node(addr).await;

    let (status, headers, body) = send(&mut sender, Method::GET, "/bytes/1048576", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "1048576");
    assert_eq!(body.len(), 1 << 20);
    assert!(body
        .iter()
        .enumerate()
        .all(|(k, b)| u64::from(*b) == k as u64 % BYTE_PATTERN_PERIOD));
    assert_eq!(
        send(&mut sender, Method::GET, "/bytes/0", "").await.2.len(),
        0
    );

    let too_many = format!("/bytes/{}", MAX_BYTES + 1);
    for bad in ["/bytes/abc", "/bytes/-1", "/bytes/", too_many.as_str()] {
        let (status, headers, _) = send(&mut sender, Method::GET, bad, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(headers["x-node"], "node-1");
    }

    let (status, _, body) = send(&mut sender, Method::POST, "/sha256", "abc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    let (_, _, body) = send(&mut sender, Method::POST, "/sha256", "").await;
    assert_eq!(
        body,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
    );

    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/sha256"),
        (Method::POST, "/"),
    ] {
        let (status, headers, _) = send(&mut sender, method, path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(headers["x-node"], "node-1");
    }
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn control_api_answers_json() {
    let rig = start_rig(3).await;
    let all: Vec<Value> = (1..=3).map(|i| node_json(&rig, i)).collect();
    assert_eq!(
        control(&rig, Method::GET, "/nodes", "").await,
        (StatusCode::OK, json!(all))
    );
    assert_eq!(
        control(&rig, Method::GET, "/nodes/2", "").await,
        (StatusCode::OK, node_json(&rig, 2))
    );

    let not_found = |what: &str| (StatusCode::NOT_FOUND, json!({ "error": what }));
    assert_eq!(
        control(&rig, Method::GET, "/nodes/7", "").await,
        not_found("no node 7")
    );
    assert_eq!(
        control(&rig, Method::GET, "/nodes/0", "").await,
        not_found("no node 0")
    );
    assert_eq!(
        control(&rig, Method::POST, "/nodes/7/stop", "").await,
        not_found("no node 7")
    );
    assert_eq!(
        control(&rig, Method::GET, "/nope", "").await,
        not_found("not found")
    );
    assert_eq!(
        control(&rig, Method::POST, "/nodes/1/explode", "").await,
        not_found("not found")
    );

    let not_allowed = (
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "method not allowed"}),
    );
    for (method, path) in [
        (Method::DELETE, "/nodes"),
        (Method::POST, "/nodes/1"),
        (Method::GET, "/nodes/1/stop"),
        (Method::GET, "/shared/database/down"),
    ] {
        assert_eq!(control(&rig, method, path, "").await, not_allowed, "{path}");
    }

    for (path, body) in [
        ("/nodes/1/health", "sick"),
        ("/nodes/1/health", r#"{"status":42}"#),
        ("/nodes/1/health", r#"{"colour":"red"}"#),
        ("/nodes/1/delay", "soon"),
        ("/nodes/1/delay", ""),
    ] {
        let (status, answer) = control(&rig, Method::POST, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // Rejected bodies change nothing.
    assert_eq!(
        control(&rig, Method::GET, "/nodes/1", "").await.1,
        node_json(&rig, 1)
    );
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn stop_kills_connections_and_start_serves_again() {
    let rig = start_rig(2).await;
    let addr = rig.node_addrs()[0];
    let (mut sender, connection) = open_node(addr).await;
    assert_eq!(
        send(&mut sender, Method::GET, "/", "").await.0,
        StatusCode::OK
    );

    let (status, node) = control(&rig, Method::POST, "/nodes/1/stop", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node, node_with(&rig, 1, json!({"running": false})));
    // The open connection ends without a word, and nobody is listening any more.
    within("connection closed", connection).await.unwrap().ok();
    let refused = within("connect", TcpStream::connect(addr))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    // A second stop is harmless; the other node is untouched.
    assert_eq!(
        control(&rig, Method::POST, "/nodes/1/stop", "").await.0,
        StatusCode::OK
    );
    assert_eq!(node_get(rig.node_addrs()[1], "/").await.2, "node-2\n");

    let (status, node) = control(&rig, Method::POST, "/nodes/1/start", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node, node_json(&rig, 1));
    assert_eq!(rig.node_addrs()[0], addr, "the port survives a restart");
    assert_eq!(node_get(addr, "/").await.2, "node-1\n");
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn hang_holds_connections_until_start() {
    let rig = start_rig(1).await;
    let addr = rig.node_addrs()[0];
    let (mut sender, _connection) = open_node(addr).await;
    assert_eq!(
        send(&mut sender, Method::GET, "/", "").await.0,
        StatusCode::OK
    );

    let (_, node) = control(&rig, Method::POST, "/nodes/1/hang", "").await;
    assert_eq!(node, node_with(&rig, 1, json!({"hang": true})));

    // An open connection: the request goes out, no answer comes.
    within("ready", sender.ready()).await.unwrap();
    let mut answer = Box::pin(sender.send_request(request(Method::GET, "/health/instance", "")));
    assert!(tokio::time::timeout(SILENCE, &mut answer).await.is_err());
    // A new connection: TCP connects, the TLS handshake never finishes.
    let name = ServerName::IpAddress(addr.ip().into());
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut handshake = Box::pin(TlsConnector::from(any_cert_client()).connect(name, tcp));
    assert!(tokio::time::timeout(SILENCE, &mut handshake).await.is_err());

    // `/start` on a running node ends the hang and both carry on.
    let (_, node) = control(&rig, Method::POST, "/nodes/1/start", "").await;
    assert_eq!(node, node_json(&rig, 1));
    let response = within("held answer", answer).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    within("held handshake", handshake).await.unwrap();
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn stop_closes_hung_connections() {
    let rig = start_rig(1).await;
    let addr = rig.node_addrs()[0];
    let (mut sender, connection) = open_node(addr).await;
    assert_eq!(
        send(&mut sender, Method::GET, "/", "").await.0,
        StatusCode::OK
    );
    control(&rig, Method::POST, "/nodes/1/hang", "").await;
    let answer = sender.send_request(request(Method::GET, "/", ""));
    control(&rig, Method::POST, "/nodes/1/stop", "").await;
    assert!(within("held answer", answer).await.is_err());
    within("connection closed", connection).await.unwrap().ok();
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn delay_applies_to_every_answer() {
    let rig = start_rig(1).await;
    let addr = rig.node_addrs()[0];
    let (_, node) = control(&rig, Method::POST, "/nodes/1/delay", "\"250ms\"").await;
    assert_eq!(node, node_with(&rig, 1, json!({"delay_ms": 250})));

    let (mut sender, _connection) = open_node(addr).await;
    for path in ["/health/instance", "/", "/nope"] {
        let started = Instant::now();
        send(&mut sender, Method::GET, path, "").await;
        assert!(started.elapsed() >= Duration::from_millis(250), "{path}");
    }

    let (_, node) = control(&rig, Method::POST, "/nodes/1/delay", "0s").await;
    assert_eq!(node, node_json(&rig, 1));
    let (_, node) = control(&rig, Method::POST, "/nodes/1/delay", "2s").await;
    assert_eq!(node["delay_ms"], 2000);
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn shared_outage_fails_every_node() {
    let rig = start_rig(3).await;
    let (status, down) = control(&rig, Method::POST, "/shared/database/down", "").await;
    assert_eq!(
        (status, down),
        (StatusCode::OK, json!({"shared_down": ["database"]}))
    );
    for addr in rig.node_addrs() {
        let (status, services) = health(addr, "/health/instance").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(services["database"], false);
        assert_eq!(services["disk_space"], true);
        let (status, services) = health(addr, "/health/endtoend").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(services["database"], false);
    }
    let (_, down) = control(&rig, Method::POST, "/shared/redis/down", "").await;
    assert_eq!(down, json!({"shared_down": ["database", "redis"]}));
    let (_, down) = control(&rig, Method::POST, "/shared/database/up", "").await;
    assert_eq!(down, json!({"shared_down": ["redis"]}));
    let (_, down) = control(&rig, Method::POST, "/shared/redis/up", "").await;
    assert_eq!(down, json!({"shared_down": []}));
    for addr in rig.node_addrs() {
        assert_eq!(health(addr, "/health/instance").await.0, StatusCode::OK);
        assert_eq!(health(addr, "/health/endtoend").await.0, StatusCode::OK);
    }
    within("shutdown", rig.shutdown()).await;
}

#[tokio::test]
async fn start_reports_bad_options_and_shutdown_closes_everything() {
    let opts = |nodes, control| RigOptions {
        nodes,
        first_ip: Ipv4Addr::new(127, 0, 0, 2),
        port: 0,
        control,
        ..RigOptions::default()
    };
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    assert!(matches!(
        Rig::start(opts(0, any_port)).await,
        Err(RigError::NoNodes)
    ));
    let taken = std::net::TcpListener::bind(any_port).unwrap();
    let taken_addr = taken.local_addr().unwrap();
    match within("start", Rig::start(opts(2, taken_addr))).await {
        Err(RigError::Bind { addr, .. }) => assert_eq!(addr, taken_addr),
        other => panic!("expected a bind error, got {:?}", other.err()),
    }
    let far = RigOptions {
        first_ip: Ipv4Addr::new(255, 255, 255, 255),
        ..opts(2, any_port)
    };
    assert!(matches!(
        Rig::start(far).await,
        Err(RigError::AddressRange { .. })
    ));

    let rig = start_rig(2).await;
    let mut addrs = rig.node_addrs();
    addrs.push(rig.control_addr());
    within("shutdown", rig.shutdown()).await;
    for addr in addrs {
        let refused = within("connect", TcpStream::connect(addr))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{addr}");
    }
}

#[test]
fn defaults_match_the_contract() {
    let opts = RigOptions::default();
    assert_eq!(opts.nodes, 3);
    assert_eq!(opts.first_ip, Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(opts.port, 8443);
    assert_eq!(opts.control, SocketAddr::from(([127, 0, 0, 1], 9101)));
}

#[tokio::test]
async fn a_rig_without_a_ca_has_self_signed_nodes_and_no_ca() {
    let rig = start_rig(1).await;
    assert_eq!(rig.ca_cert_pem(), None);
    assert_eq!(RigOptions::default().ca, None);
    within("shutdown", rig.shutdown()).await;
}
