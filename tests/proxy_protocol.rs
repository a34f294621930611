//! The PROXY protocol on both sides of splicer.
//!
//! `send_proxy = "v1" | "v2"`: the backend learns the client's address from a header written
//! before the client's bytes (and health checks send `UNKNOWN` / `LOCAL`). `accept_proxy`:
//! splicer reads such a header from an upstream balancer and uses the original client from it
//! (for `client_hash`, the access log and its own `send_proxy` header), closing connections
//! whose header is malformed or late. Real peers: nginx with `listen ... proxy_protocol` behind
//! splicer, HAProxy (`send-proxy-v2`) in front of it. Both come from Debian packages that
//! `scripts/test` installs.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use splicer::net::proxy_protocol::{self, Parsed, ProxyHeader, V2_SIGNATURE};

use common::peer::{find_program, Daemon};
use common::process::{Proc, Stdout};
use common::{backends_toml, free_addr, free_port, start_splicer, Splicer, WAIT};

// ---------------------------------------------------------------------------------------------
// A backend that parses the PROXY header.

/// One connection as a header-parsing backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// Every byte received, up to EOF.
    raw: Vec<u8>,
    /// The parsed header (`None`: the bytes do not start with a valid complete header).
    header: Option<ProxyHeader>,
    /// The bytes after the header.
    payload: Vec<u8>,
}

/// A plain TCP backend: reads each connection to EOF, parses the PROXY header at its start with
/// splicer's own parser and reports what it saw on `tx`; then closes.
async fn pp_backend(tx: mpsc::UnboundedSender<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                // Health checks may reset rather than close: keep what arrived.
                let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await;
                let (header, payload) = match proxy_protocol::parse(&raw) {
                    Ok(Parsed::Done { header, consumed }) => {
                        (Some(header), raw[consumed..].to_vec())
                    }
                    _ => (None, Vec::new()),
                };
                let _ = tx.send(Seen {
                    raw,
                    header,
                    payload,
                });
            });
        }
    });
    addr
}

/// Waits (bounded) for the next client connection a backend saw, skipping health checks (whose
/// header is `Local`) and connections that carried no bytes (a "does it listen yet" probe
/// relayed by HAProxy); every client of these tests sends something.
async fn next_data(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = tokio::time::timeout(left, rx.recv())
            .await
            .expect("the backend saw no client connection in time")
            .expect("backend alive");
        let probe = seen.header.is_some() && seen.payload.is_empty();
        if seen.header != Some(ProxyHeader::Local) && !probe {
            return seen;
        }
    }
}

/// Connects to `to` (from `from`'s address, any port), writes `payload`, half-closes and waits
/// for splicer to close. Returns the client's own address.
async fn send_from(from: IpAddr, to: SocketAddr, payload: &[u8]) -> SocketAddr {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind client address");
    let mut s = tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect");
    let me = s.local_addr().expect("client addr");
    s.write_all(payload).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    me
}

fn listener(s: &Splicer, name: &str) -> SocketAddr {
    s.running
        .as_ref()
        .and_then(|r| r.listener_addr(name))
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

// ---------------------------------------------------------------------------------------------
// send_proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v1_and_v2_tell_the_backend_who_the_client_is() {
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let b1 = pp_backend(tx1).await;
    let b2 = pp_backend(tx2).await;
    let v6 = ipv6_loopback_available();
    let mut text = String::new();
    for (version, backend) in [("v1", b1), ("v2", b2)] {
        text.push_str(&format!(
            r#"
[[listener]]
name = "{version}"
bind = "127.0.0.1:0"
pool = "{version}"

[[listener]]
name = "{version}_any"
bind = "0.0.0.0:0"
pool = "{version}"
"#
        ));
        if v6 {
            text.push_str(&format!(
                r#"
[[listener]]
name = "{version}_v6"
bind = "[::1]:0"
pool = "{version}"
"#
            ));
        }
        text.push_str(&format!(
            r#"
[[pool]]
name = "{version}"
send_proxy = "{version}"
backends = {}

[pool.health]
check = "tcp"
interval = "200ms"
timeout = "150ms"
"#,
            backends_toml(&[backend])
        ));
    }
    let splicer = start_splicer(&text).await;

    for (version, rx) in [("v1", &mut rx1), ("v2", &mut rx2)] {
        let mut names = vec![version.to_string(), format!("{version}_any")];
        if v6 {
            names.push(format!("{version}_v6"));
        }
        for name in names {
            let bound = listener(&splicer, &name);
            // What the client dials: the listener's address, or loopback for 0.0.0.0.
            let dialed = if bound.ip().is_unspecified() {
                SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()))
            } else {
                bound
            };
            let payload = format!("hello {name}\r\n\x00\x01\r\n\r\nbinary-safe").into_bytes();
            let me = send_from(dialed.ip(), dialed, &payload).await;
            let seen = next_data(rx).await;
            assert_eq!(
                seen.header,
                Some(ProxyHeader::Tcp {
                    src: me,
                    dst: dialed
                }),
                "{name}: header {:?}",
                String::from_utf8_lossy(&seen.raw)
            );
            assert_eq!(
                seen.payload, payload,
                "{name}: the client's bytes after the header"
            );
            // The wire format is the one asked for, in the client's address family.
            let six = dialed.is_ipv6();
            match version {
                "v1" => {
                    let line = String::from_utf8_lossy(&seen.raw);
                    let expected = format!(
                        "PROXY {} {} {} {} {}\r\n",
                        if six { "TCP6" } else { "TCP4" },
                        me.ip(),
                        dialed.ip(),
                        me.port(),
                        dialed.port()
                    );
                    assert!(line.starts_with(&expected), "{name}: {line:?}");
                }
                _ => {
                    assert_eq!(&seen.raw[..12], &V2_SIGNATURE, "{name}: v2 signature");
                    assert_eq!(seen.raw[12], 0x21, "{name}: v2 PROXY command");
                    assert_eq!(
                        seen.raw[13],
                        if six { 0x21 } else { 0x11 },
                        "{name}: TCP over AF_INET6 / AF_INET"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_send_proxy_pool_send_unknown_or_local_first() {
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let b1 = pp_backend(tx1).await;
    let b2 = pp_backend(tx2).await;
    // A pool whose checks go to another port: that is another listener of the backend, which
    // gets no header (docs/configuration.md, send_proxy).
    let (tx3, mut rx3) = mpsc::unbounded_channel();
    let data_port = pp_backend(mpsc::unbounded_channel().0).await;
    let check_port = pp_backend(tx3).await;
    let _splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "l"
bind = "127.0.0.1:0"
pool = "v1"

[[pool]]
name = "other_port"
send_proxy = "v2"
backends = {}

[pool.health]
check = "tcp"
port = {}
interval = "200ms"
timeout = "150ms"

[[pool]]
name = "v1"
send_proxy = "v1"
backends = {}

[pool.health]
check = "tcp"
interval = "200ms"
timeout = "150ms"

[[pool]]
name = "v2"
send_proxy = "v2"
backends = {}

[pool.health]
check = "tcp"
interval = "200ms"
timeout = "150ms"
"#,
        backends_toml(&[data_port]),
        check_port.port(),
        backends_toml(&[b1]),
        backends_toml(&[b2])
    ))
    .await;
    let mut local_v2 = V2_SIGNATURE.to_vec();
    local_v2.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    for (rx, expected) in [
        (&mut rx1, b"PROXY UNKNOWN\r\n".to_vec()),
        (&mut rx2, local_v2),
    ] {
        // The start-up check and at least two periodic ones.
        for _ in 0..3 {
            let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("no health check reached the backend")
                .expect("backend alive");
            assert_eq!(
                seen.raw, expected,
                "a tcp check must send exactly the LOCAL header: got {:?}",
                seen.raw
            );
            assert_eq!(seen.header, Some(ProxyHeader::Local));
        }
    }
    for _ in 0..3 {
        let seen = tokio::time::timeout(Duration::from_secs(5), rx3.recv())
            .await
            .expect("no health check reached the separate check port")
            .expect("backend alive");
        assert!(
            seen.raw.is_empty(),
            "a check on a separate port must carry no PROXY header: got {:?}",
            seen.raw
        );
    }
}

// ---------------------------------------------------------------------------------------------
// accept_proxy

/// Listeners `strict_pp` (accept_proxy, 2 s to send the header) → pool `sink` (no checks, so
/// any connection there is a client's).
async fn strict_setup() -> (Splicer, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = pp_backend(tx).await;
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "strict_pp"
bind = "127.0.0.1:0"
pool = "sink"
accept_proxy = true
client_hello_timeout = "2s"

[[pool]]
name = "sink"
send_proxy = "v2"
backends = {}

[pool.health]
check = "none"
"#,
        backends_toml(&[sink])
    ))
    .await;
    (splicer, rx)
}

/// Writes `bytes`, then reads until splicer closes: (closed, elapsed since connect).
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> (bool, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !bytes.is_empty() {
        s.write_all(bytes).await.expect("write");
    }
    let mut buf = [0u8; 256];
    let closed = match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Err(_) => false,
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "splicer answered {:?} to a refused connection",
            String::from_utf8_lossy(&buf[..n])
        ),
    };
    (closed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_takes_the_client_from_the_header_and_refuses_bad_or_late_ones() {
    let (splicer, mut rx) = strict_setup().await;
    let addr = splicer.addr;

    // A good v1 and v2 header: the sink sees the header's client, and the bytes after it.
    let v1 = b"PROXY TCP4 198.51.100.7 203.0.113.9 51234 443\r\nafter-v1".to_vec();
    let mut v2 = proxy_protocol::encode(
        proxy_protocol::Version::V2,
        &ProxyHeader::Tcp {
            src: "[2001:db8::7]:40000".parse().expect("addr"),
            dst: "[2001:db8::1]:443".parse().expect("addr"),
        },
    );
    v2.extend_from_slice(b"after-v2");
    for (sent, src, dst, payload) in [
        (
            &v1,
            "198.51.100.7:51234",
            "203.0.113.9:443",
            &b"after-v1"[..],
        ),
        (
            &v2,
            "[2001:db8::7]:40000",
            "[2001:db8::1]:443",
            &b"after-v2"[..],
        ),
    ] {
        send_from(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, sent).await;
        let seen = next_data(&mut rx).await;
        assert_eq!(
            seen.header,
            Some(ProxyHeader::Tcp {
                src: src.parse().expect("src"),
                dst: dst.parse().expect("dst"),
            }),
            "splicer's own header must carry the upstream's client and destination"
        );
        assert_eq!(seen.payload, payload);
    }

    // Malformed headers: closed at once, nothing reaches the backend.
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 198.51.100.7 nonsense 1 2\r\nhello",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\nhello",
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0chello-world!",
    ] {
        let (closed, elapsed) = closed_after(addr, bad).await;
        assert!(
            closed,
            "a malformed header was not closed: {:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "a malformed header should be refused at once, not after the 2 s timeout ({elapsed:?})"
        );
    }
    // No header at all within client_hello_timeout: closed after it.
    let (closed, elapsed) = closed_after(addr, b"").await;
    assert!(
        closed,
        "a client sending no header was not closed within 10 s"
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed after {elapsed:?}; client_hello_timeout is 2s"
    );
    // Half a header, then silence: also closed after the timeout.
    let (closed, elapsed) = closed_after(addr, b"PROXY TCP4 198.51.100.7 ").await;
    assert!(closed);
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed after {elapsed:?}; client_hello_timeout is 2s"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a refused connection reached the backend"
    );
}

// ---------------------------------------------------------------------------------------------
// Real peers: nginx behind splicer, HAProxy in front of it.

/// nginx answering every request with the address and port its PROXY header named.
async fn start_nginx(dir: &Path) -> (Daemon, SocketAddr) {
    let binary = find_program("nginx", "nginx-light");
    let addr = free_addr();
    let d = dir.display();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "$proxy_protocol_addr:$proxy_protocol_port\n";
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut nginx = Daemon::spawn(
        "nginx",
        &binary,
        &[
            "-p".as_ref(),
            dir.as_os_str(),
            "-e".as_ref(),
            dir.join("error.log").as_os_str(),
            "-c".as_ref(),
            conf_path.as_os_str(),
        ],
        dir.join("nginx.out"),
    );
    nginx.log = dir.join("error.log");
    nginx.wait_listening(addr).await;
    (nginx, addr)
}

/// One HTTP/1.1 GET through `addr` from a known local address: (local address, status, body).
async fn get_from_rust_client(addr: SocketAddr) -> (SocketAddr, u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let me = s.local_addr().expect("local addr");
    s.write_all(b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answer timed out")
        .expect("read");
    let (code, body) = common::parse_response(&buf);
    (me, code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_behind_splicer_sees_the_clients_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nginx, nginx_addr) = start_nginx(dir.path()).await;
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "v1"
bind = "127.0.0.1:0"
pool = "v1"

[[listener]]
name = "v2"
bind = "127.0.0.1:0"
pool = "v2"

[[pool]]
name = "v1"
send_proxy = "v1"
backends = {b}

[pool.health]
check = "http"
path = "/"
interval = "300ms"
timeout = "250ms"

[[pool]]
name = "v2"
send_proxy = "v2"
backends = {b}

[pool.health]
check = "http"
path = "/"
interval = "300ms"
timeout = "250ms"
"#,
        b = backends_toml(&[nginx_addr])
    ))
    .await;
    // splicer's checks (PROXY UNKNOWN / LOCAL first) pass against a proxy_protocol listener.
    for pool in ["v1", "v2"] {
        assert_eq!(
            common::backend_state(splicer.admin, pool, nginx_addr).await,
            "up",
            "pool {pool}: nginx's log:\n{}",
            nginx.log()
        );
    }
    for name in ["v1", "v2"] {
        for _ in 0..3 {
            let (me, code, body) = get_from_rust_client(listener(&splicer, name)).await;
            assert_eq!(code, 200, "{name}: {body}\nnginx's log:\n{}", nginx.log());
            assert_eq!(
                body,
                format!("{}:{}\n", me.ip(), me.port()),
                "{name}: nginx must see the client's own address and port"
            );
        }
    }

    // curl, from a local port we choose.
    let curl = find_program("curl", "curl");
    let port = free_port();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(&curl)
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args([
                "--local-port",
                &format!("{port}-{}", port.saturating_add(20)),
            ])
            .arg("--write-out")
            .arg("%{local_port}")
            .arg(format!("http://{}/", listener(&splicer, "v2")))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl ran too long")
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, local_port) = stdout.rsplit_once('\n').expect("curl's --write-out");
    assert_eq!(
        body,
        format!("127.0.0.1:{local_port}"),
        "curl through splicer: nginx must see curl's address and port"
    );
    drop(nginx);
}

/// HAProxy in TCP mode relaying `frontend` to `splicer` with `send-proxy-v2`.
async fn start_haproxy(dir: &Path, splicer: SocketAddr) -> (Daemon, SocketAddr) {
    let binary = find_program("haproxy", "haproxy");
    let frontend = free_addr();
    let conf = format!(
        r#"
global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe
    bind {frontend}
    default_backend splicer

backend splicer
    server s {splicer} send-proxy-v2
"#
    );
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, conf).expect("write haproxy.cfg");
    let mut haproxy = Daemon::spawn(
        "haproxy",
        &binary,
        &["-db".as_ref(), "-f".as_ref(), conf_path.as_os_str()],
        dir.join("haproxy.log"),
    );
    haproxy.wait_listening(frontend).await;
    (haproxy, frontend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_splicer_uses_the_original_client() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backends = [
        pp_backend(tx.clone()).await,
        pp_backend(tx.clone()).await,
        pp_backend(tx).await,
    ];
    // splicer as a process, so its access log (stdout) can be read.
    let mut process = Proc::start(Stdout::Piped, 1, |admin, listeners| {
        format!(
            r#"
[admin]
bind = "{admin}"

[[listener]]
name = "behind_haproxy"
bind = "{}"
pool = "hashed"
accept_proxy = true
client_hello_timeout = "2s"

[[pool]]
name = "hashed"
balance = "client_hash"
send_proxy = "v1"
backends = {}

[pool.health]
check = "none"
"#,
            listeners[0],
            backends_toml(&backends)
        )
    })
    .await;
    let access_log = tokio::io::BufReader::new(process.child.stdout.take().expect("stdout"));
    let (log_tx, mut log_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = access_log.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (haproxy, frontend) = start_haproxy(dir.path(), process.listeners()[0]).await;

    // Clients from 16 loopback addresses, twice each.
    let mut clients = Vec::new();
    for round in 0..2 {
        for i in 0..16u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i));
            let payload = format!("client {ip} round {round}\n").into_bytes();
            let me = send_from(ip, frontend, &payload).await;
            let seen = next_data(&mut rx).await;
            let Some(ProxyHeader::Tcp { src, dst }) = seen.header else {
                panic!(
                    "no TCP PROXY header from splicer: {:?}\nhaproxy log:\n{}",
                    String::from_utf8_lossy(&seen.raw),
                    haproxy.log()
                );
            };
            assert_eq!(
                src, me,
                "the backend must see the client that connected to HAProxy"
            );
            assert_eq!(
                dst, frontend,
                "the destination is the address the client reached (HAProxy's)"
            );
            assert_eq!(seen.payload, payload, "the client's bytes, unchanged");
            assert!(
                String::from_utf8_lossy(&seen.raw).starts_with("PROXY TCP4 "),
                "send_proxy v1 toward the backend"
            );
            clients.push(me);
        }
    }

    // Which backend each client reached, from splicer's access log: `client=` is the original
    // client, and client_hash keeps each client IP on one backend while spreading the IPs.
    let mut by_ip: std::collections::BTreeMap<IpAddr, std::collections::BTreeSet<String>> =
        Default::default();
    let mut pending: std::collections::BTreeSet<SocketAddr> = clients.iter().copied().collect();
    let deadline = Instant::now() + WAIT;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, log_rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "access log lines missing for {pending:?}; splicer's log:\n{}",
                    process.log()
                )
            })
            .expect("splicer's stdout open");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .map(str::to_string)
        };
        // Skip HAProxy's relay of our "is it listening yet" probe, which sent nothing.
        if field("listener=").as_deref() != Some("behind_haproxy")
            || field("to_backend=").as_deref() == Some("0")
        {
            continue;
        }
        let client: SocketAddr = field("client=")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no client in access log line {line:?}"));
        assert!(
            pending.remove(&client),
            "access log names client {client}, which is not one of ours (HAProxy's own \
             address would mean the PROXY header was ignored): {line:?}"
        );
        by_ip
            .entry(client.ip())
            .or_default()
            .insert(field("backend=").expect("backend field"));
    }
    for (ip, backends) in &by_ip {
        assert_eq!(
            backends.len(),
            1,
            "client_hash sent {ip} to several backends: {backends:?}"
        );
    }
    let used: std::collections::BTreeSet<&String> = by_ip.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "16 client addresses all hashed to one backend ({used:?}): client_hash used HAProxy's \
         address, not the original client's"
    );
    drop(haproxy);
    process.stop().await;
}
