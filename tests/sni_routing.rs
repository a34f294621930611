//! SNI routing: `[[listener.route]]` picks the pool by the server name in the client's TLS
//! ClientHello (exact names case-insensitively, `*.suffix` for exactly one label), everything
//! else (no SNI, an IP address, bytes that are not TLS) goes to the listener's default pool,
//! and every byte read to decide is replayed to the backend. TLS is never terminated: the
//! handshakes below complete with the rig's nodes themselves.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::{backends_toml, parse_response, rig, start_splicer, tls_client, Splicer, WAIT};

/// What a recording backend got on one connection: its name and every byte up to EOF.
type Received = (&'static str, Vec<u8>);

/// A plain TCP backend that reads each connection to EOF and reports the bytes, tagged with
/// `name`, on `tx`. It answers nothing; closing its side after EOF tells the client it is done.
async fn recorder(name: &'static str, tx: mpsc::UnboundedSender<Received>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind recorder");
    let addr = listener.local_addr().expect("recorder addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
                let _ = tx.send((name, buf));
            });
        }
    });
    addr
}

/// A backend of a server-speaks-first protocol (SMTP, FTP, MySQL...): it greets first.
async fn banner_backend(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind banner");
    let addr = listener.local_addr().expect("banner addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(banner).await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut sink)).await;
            });
        }
    });
    addr
}

/// The TLS records rustls sends first (its ClientHello) for `name`: what a real client writes.
fn client_hello(name: ServerName<'static>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(tls_client(&[b"http/1.1"]), name)
        .expect("rustls client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("rustls writes its hello");
    }
    assert!(
        out.len() > 50 && out[0] == 22,
        "not a TLS handshake record: {out:?}"
    );
    out
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("valid DNS name")
}

/// Sends `bytes` through `addr` (in one write, or one byte at a time `delay` apart), half-closes,
/// and returns which recorder got the connection and what it received.
async fn send_raw(
    addr: SocketAddr,
    bytes: &[u8],
    byte_by_byte: Option<Duration>,
    rx: &mut mpsc::UnboundedReceiver<Received>,
) -> Received {
    let mut s = TcpStream::connect(addr).await.expect("connect to splicer");
    s.set_nodelay(true).expect("nodelay");
    match byte_by_byte {
        None => s.write_all(bytes).await.expect("write"),
        Some(delay) => {
            for b in bytes {
                s.write_all(std::slice::from_ref(b))
                    .await
                    .expect("write a byte");
                tokio::time::sleep(delay).await;
            }
        }
    }
    s.shutdown().await.expect("half-close");
    // splicer closes our side once the recorder has closed its own.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no backend received the connection in time")
        .expect("recorders are alive")
}

/// A full TLS exchange through `addr` naming `name`; returns the body of `GET /` (`node-i`).
async fn tls_get(addr: SocketAddr, name: ServerName<'static>) -> String {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.expect("connect to splicer");
        let connector = tokio_rustls::TlsConnector::from(tls_client(&[b"http/1.1"]));
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake through splicer for {name:?}: {e}"));
        tls.write_all(b"GET / HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await
            .expect("write request");
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => panic!("reading the answer for {name:?}: {e}"),
        }
        let (code, body) = parse_response(&buf);
        assert_eq!(code, 200, "{name:?}: {body}");
        body.trim().to_string()
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("TLS exchange timed out")
}

fn listener(s: &Splicer, name: &str) -> SocketAddr {
    s.running
        .as_ref()
        .and_then(|r| r.listener_addr(name))
        .unwrap_or_else(|| panic!("no listener {name}"))
}

/// Three listeners with the same routes (`a.test` → A, `*.wild.test` → B, default C): one
/// over three rig nodes, one over recorders with a generous hello timeout and one with a
/// 300 ms timeout; plus a listener without routes over a banner backend.
fn config(rig: &[SocketAddr], recorders: &[SocketAddr; 3], banner: SocketAddr) -> String {
    let routes = |suffix: &str| {
        format!(
            r#"
[[listener.route]]
sni = "a.test"
pool = "a{suffix}"

[[listener.route]]
sni = "*.wild.test"
pool = "b{suffix}"
"#
        )
    };
    let pool = |name: &str, addr: SocketAddr| {
        format!(
            r#"
[[pool]]
name = "{name}"
backends = {}

[pool.health]
check = "none"
"#,
            backends_toml(&[addr])
        )
    };
    let mut text = format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "c_rig"
client_hello_timeout = "5s"
{}
[[listener]]
name = "raw"
bind = "127.0.0.1:0"
pool = "c_raw"
client_hello_timeout = "5s"
{}
[[listener]]
name = "fast"
bind = "127.0.0.1:0"
pool = "c_raw"
client_hello_timeout = "300ms"
{}
[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "banner"
client_hello_timeout = "5s"
"#,
        routes("_rig"),
        routes("_raw"),
        routes("_raw"),
    );
    for (name, addr) in [("a_rig", rig[0]), ("b_rig", rig[1]), ("c_rig", rig[2])] {
        text.push_str(&pool(name, addr));
    }
    for (name, addr) in [
        ("a_raw", recorders[0]),
        ("b_raw", recorders[1]),
        ("c_raw", recorders[2]),
    ] {
        text.push_str(&pool(name, addr));
    }
    text.push_str(&pool("banner", banner));
    text
}

struct Setup {
    splicer: Splicer,
    _rig: splicer::rig::Rig,
    rx: mpsc::UnboundedReceiver<Received>,
}

async fn setup() -> Setup {
    let rig = rig(3).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let recorders = [
        recorder("A", tx.clone()).await,
        recorder("B", tx.clone()).await,
        recorder("C", tx).await,
    ];
    let banner = banner_backend(b"220 banner.test ESMTP ready\r\n").await;
    let splicer = start_splicer(&config(&rig.node_addrs(), &recorders, banner)).await;
    Setup {
        splicer,
        _rig: rig,
        rx,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_reach_the_pool_their_server_name_routes_to() {
    let s = setup().await;
    let tls = listener(&s.splicer, "tls");
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    for (name, expected) in [
        (dns("a.test"), "node-1"),
        (dns("A.TEST"), "node-1"),
        (dns("x.wild.test"), "node-2"),
        (dns("X.Wild.Test"), "node-2"),
        (dns("wild.test"), "node-3"),
        (dns("x.y.wild.test"), "node-3"),
        (dns("b.test"), "node-3"),
        (dns("a.test.example"), "node-3"),
        (ip, "node-3"),
    ] {
        // Twice each: routing is by name, not by turn.
        for _ in 0..2 {
            assert_eq!(
                tls_get(tls, name.clone()).await,
                expected,
                "server name {name:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_receives_exactly_the_bytes_the_client_sent() {
    let mut s = setup().await;
    let raw = listener(&s.splicer, "raw");

    let upper = client_hello(dns("A.TEST"));
    assert!(
        upper.windows(6).any(|w| w == b"A.TEST"),
        "rustls lowercased the SNI: this case would not test case-insensitive matching"
    );
    let ip_hello = client_hello(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a.test", client_hello(dns("a.test")), "A"),
        ("A.TEST", upper, "A"),
        ("x.wild.test", client_hello(dns("x.wild.test")), "B"),
        ("wild.test", client_hello(dns("wild.test")), "C"),
        ("x.y.wild.test", client_hello(dns("x.y.wild.test")), "C"),
        ("no SNI (IP)", ip_hello, "C"),
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(),
            "C",
        ),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), "C"),
    ];
    for (what, bytes, expected) in &cases {
        // The hello and a first "application" chunk after it, as a client pipelining would.
        let mut sent = bytes.clone();
        sent.extend_from_slice(b"\x17\x03\x03\x00\x05after");
        let (got, received) = send_raw(raw, &sent, None, &mut s.rx).await;
        assert_eq!(got, *expected, "{what}: routed to the wrong pool");
        assert!(
            received == sent,
            "{what}: the backend got {} bytes that differ from the {} sent",
            received.len(),
            sent.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_in_one_byte_writes_still_routes_by_name() {
    let mut s = setup().await;
    let raw = listener(&s.splicer, "raw");
    for (name, expected) in [("x.wild.test", "B"), ("a.test", "A")] {
        let hello = client_hello(dns(name));
        let (got, received) =
            send_raw(raw, &hello, Some(Duration::from_millis(1)), &mut s.rx).await;
        assert_eq!(got, expected, "{name} sent byte by byte");
        assert!(received == hello, "{name}: bytes changed on the way");
    }
    // And a hello split into many one-byte TLS records (one handshake message across records).
    let hello = client_hello(dns("a.test"));
    let body = &hello[5..];
    let mut fragmented = Vec::new();
    for b in body {
        fragmented.extend_from_slice(&[22, 3, 1, 0, 1, *b]);
    }
    let (got, received) = send_raw(raw, &fragmented, None, &mut s.rx).await;
    assert_eq!(got, "A", "a ClientHello in 1-byte records");
    assert!(received == fragmented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_client_hello_timeout() {
    let mut s = setup().await;
    let fast = listener(&s.splicer, "fast");
    let started = Instant::now();
    let mut c = TcpStream::connect(fast).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("a silent client was not closed within 5 s");
    let elapsed = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, read {read:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed after {elapsed:?}, before client_hello_timeout (300ms)"
    );
    assert!(
        elapsed <= Duration::from_secs(3),
        "closed only after {elapsed:?}"
    );
    // Nothing reached any backend.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.rx.recv())
            .await
            .is_err(),
        "a backend got a connection for a client that sent nothing"
    );
    // A client that starts in time but never finishes its hello is closed too.
    let hello = client_hello(dns("a.test"));
    let started = Instant::now();
    let mut c = TcpStream::connect(fast).await.expect("connect");
    c.write_all(&hello[..hello.len() / 2]).await.expect("write");
    let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("a client stuck mid-hello was not closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed <= Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    // The same listener still routes a prompt client.
    let (got, _) = send_raw(fast, &hello, None, &mut s.rx).await;
    assert_eq!(got, "A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_without_routes_forwards_before_the_client_speaks() {
    let s = setup().await;
    let plain = listener(&s.splicer, "plain");
    let started = Instant::now();
    let mut c = TcpStream::connect(plain).await.expect("connect");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\r\n") {
        // Well under the listener's 5 s client_hello_timeout, which a wait for client bytes
        // would have to reach.
        let n = tokio::time::timeout(Duration::from_millis(2500), c.read(&mut buf))
            .await
            .expect("no banner within 2.5 s: splicer waited for client bytes")
            .expect("read banner");
        assert!(n > 0, "closed before the banner");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"220 banner.test ESMTP ready\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the banner took {:?}, half the 5 s client_hello_timeout",
        started.elapsed()
    );
}
