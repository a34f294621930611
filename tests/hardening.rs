//! Findings of the adversarial review, each reproduced against real sockets on loopback: a
//! reload never stalls the data path (a `ca_file` on a FIFO, an oversized file, a large file
//! measured under an echo load), and the admin API's edge bounds (Host, Origin, strict paths,
//! methods, sizes, connection count).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{http, start_splicer_file, ConfigFile, TestServer, WAIT};

/// A backend that echoes every byte until EOF.
async fn echo_backend() -> TestServer {
    TestServer::start(|stream, _| async move {
        let (mut r, mut w) = stream.into_split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

fn base_config(backend: SocketAddr, extra_pool: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[runtime]\naccess_log = false\n\
         [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\nbackends = [\"{backend}\"]\n[pool.health]\ncheck = \"none\"\n\
         {extra_pool}"
    )
}

/// One 16-byte round trip on an open proxied connection, bounded.
async fn echo_once(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let fut = async {
        s.write_all(b"0123456789abcdef").await.expect("write");
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).await.expect("read echo");
        assert_eq!(&buf, b"0123456789abcdef");
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("echo within the bound");
    started.elapsed()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// A `ca_file` on a FIFO (a hung mount behaves alike) used to block the reload on a runtime
/// worker forever, and with it `/health` and every connection. Now the reload answers an error
/// naming the FIFO, and the data path and `/health` answer meanwhile. One worker thread: a
/// blocking read on it would stall everything, so the answers below prove it ran elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_reload_with_a_fifo_ca_file_is_refused_without_stalling_anything() {
    let backend = echo_backend().await;
    let file = ConfigFile::new(&base_config(backend.addr, ""));
    let s = start_splicer_file(&file.path).await;
    let fifo = file.path.with_file_name("ca.pem");
    mkfifo(&fifo);
    file.write(&format!(
        "{}[pool.health]\ncheck = \"https\"\ntls_verify = true\nca_file = \"ca.pem\"\n",
        base_config(backend.addr, "").replace("[pool.health]\ncheck = \"none\"\n", "")
    ));
    let mut conn = tokio::time::timeout(WAIT, TcpStream::connect(s.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let reload = tokio::spawn(async move { http(s.admin, "POST", "/reload", "").await });
    // Meanwhile: the proxied connection echoes and /health answers.
    echo_once(&mut conn).await;
    assert_eq!(http(s.admin, "GET", "/health", "").await.0, 200);
    let (code, body) = tokio::time::timeout(WAIT, reload)
        .await
        .expect("the reload answers in time")
        .expect("reload task");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("FIFO") && body.contains("ca.pem"),
        "the error names the file and why: {body}"
    );
    echo_once(&mut conn).await;
}

/// A config past the size cap is refused with a message naming the limit, before parsing.
#[tokio::test]
async fn an_oversized_config_is_refused_with_the_size_error() {
    let backend = echo_backend().await;
    let file = ConfigFile::new(&base_config(backend.addr, ""));
    let s = start_splicer_file(&file.path).await;
    let padding = "# padding padding padding padding padding padding padding padding\n"
        .repeat(5 * 1024 * 1024 / 64);
    file.write(&format!("{}{padding}", base_config(backend.addr, "")));
    let (code, body) = http(s.admin, "POST", "/reload", "").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("the limit is 4194304 bytes (4 MiB)"),
        "names the limit: {body}"
    );
    // And `check`/`run` go through the same reader.
    let e = splicer::config::load(&file.path).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
}

/// Measures (prints, does not assert a time) how long a proxied echo waits while a large
/// config (20,000 backends) is reloaded. Before, parsing ran on the only worker and the echo
/// stalled for the whole parse (0.8 s for 360 KB on the reviewer's machine); the test asserts
/// only that every echo completes and the reload succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn echo_keeps_flowing_during_a_large_reload() {
    let backend = echo_backend().await;
    let mut big = String::from("[[pool]]\nname = \"big\"\nbackends = [\n");
    for i in 0..20_000u32 {
        let [_, _, b, c] = i.to_be_bytes();
        big.push_str(&format!(
            "  {{ address = \"10.0.{b}.{c}:443\", weight = 2 }},\n"
        ));
    }
    big.push_str("]\n[pool.health]\ncheck = \"none\"\n");
    let file = ConfigFile::new(&base_config(backend.addr, &big));
    println!(
        "config: {} bytes",
        std::fs::metadata(&file.path).map_or(0, |m| m.len())
    );
    let s = start_splicer_file(&file.path).await;
    let mut conn = TcpStream::connect(s.addr).await.expect("connect");
    echo_once(&mut conn).await;

    let done = Arc::new(AtomicBool::new(false));
    let admin = s.admin;
    let flag = done.clone();
    let reload = tokio::spawn(async move {
        let started = Instant::now();
        let answer = http(admin, "POST", "/reload", "").await;
        flag.store(true, Ordering::Release);
        (answer, started.elapsed())
    });
    let mut worst = Duration::ZERO;
    let mut echoes = 0u32;
    while !done.load(Ordering::Acquire) {
        worst = worst.max(echo_once(&mut conn).await);
        echoes += 1;
    }
    let ((code, body), took) = reload.await.expect("reload task");
    assert_eq!(code, 200, "{body}");
    println!("reload took {took:?}; {echoes} echoes meanwhile, the slowest {worst:?}");
    echo_once(&mut conn).await;
}

/// `splicer check` with stdout on a full disk and on a pipe nobody reads: before, `println!`
/// panicked (exit 101, "panicked" on stderr). Now a full disk is exit 1 with a message, and a
/// closed pipe is quiet (the reader left; the check itself passed).
#[test]
fn check_survives_a_failing_stdout() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let run = |stdout: std::process::Stdio| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_splicer"))
            .args(["check", "-c", "config/minimal.toml"])
            .env_remove("SPLICER_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run splicer check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let (code, stderr) = run(full.into());
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("cannot write to stdout"), "{stderr}");

    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end); // the reader is gone before splicer writes a byte
    let (code, stderr) = run(write_end.into());
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The admin API's edge (docs/architecture.md §9).

/// Sends `head` (request line and headers, without the blank line) plus `body` and returns the
/// status, the head of the answer and its body; status 0 when the connection closed without one.
async fn raw(admin: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let fut = async {
        let mut s = TcpStream::connect(admin).await.expect("connect");
        let mut req = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
        req.extend_from_slice(body);
        // The server may answer (413) and close before the whole body is written.
        let _ = s.write_all(&req).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, head.to_string(), body.to_string())
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("admin answers in time")
}

async fn admin_splicer() -> (common::Splicer, TestServer, ConfigFile) {
    let backend = echo_backend().await;
    let file = ConfigFile::new(&base_config(backend.addr, ""));
    let s = start_splicer_file(&file.path).await;
    (s, backend, file)
}

#[tokio::test]
async fn admin_refuses_cross_origin_posts_and_foreign_hosts() {
    let (s, backend, _file) = admin_splicer().await;
    let a = s.admin;
    let drain = format!("/pools/p/backends/{}/enable", backend.addr);
    // A form on another site, posted by the operator's browser.
    let (code, _, body) = raw(
        a,
        &format!("POST {drain} HTTP/1.1\r\nHost: {a}\r\nOrigin: http://evil.example\r\nContent-Length: 0"),
        b"",
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"error\""), "JSON error: {body}");
    for origin in ["null", &format!("https://{a}"), "http://localhost:1"] {
        let (code, _, _) = raw(
            a,
            &format!("POST /reload HTTP/1.1\r\nHost: {a}\r\nOrigin: {origin}\r\nContent-Length: 0"),
            b"",
        )
        .await;
        assert_eq!(code, 403, "Origin {origin}");
    }
    // Its own origin, and no origin (curl), are served.
    let (code, _, body) = raw(
        a,
        &format!("POST {drain} HTTP/1.1\r\nHost: {a}\r\nOrigin: http://{a}\r\nContent-Length: 0"),
        b"",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let port = a.port();
    let (code, _, _) = raw(
        a,
        &format!("POST /reload HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:{port}\r\nContent-Length: 0"),
        b"",
    )
    .await;
    assert_eq!(code, 200);
    // DNS rebinding: the page's own name reaches 127.0.0.1.
    for host in [
        format!("evil.example:{port}"),
        format!("{a}.evil.example"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let (code, _, body) = raw(a, &format!("GET /status HTTP/1.1\r\nHost: {host}"), b"").await;
        assert_eq!(code, 421, "Host {host}: {body}");
    }
    let (code, _, _) = raw(
        a,
        &format!("GET /status HTTP/1.1\r\nHost: localhost:{port}"),
        b"",
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn admin_paths_and_methods_are_strict() {
    let (s, backend, _file) = admin_splicer().await;
    let a = s.admin;
    for path in [
        "//reload",
        "/reload/",
        "/status/",
        "//status",
        "/pools//backends",
    ] {
        let (code, _, _) = raw(
            a,
            &format!("POST {path} HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0"),
            b"",
        )
        .await;
        assert_eq!(code, 404, "POST {path}");
        let (code, _, _) = raw(a, &format!("GET {path} HTTP/1.1\r\nHost: {a}"), b"").await;
        assert_eq!(code, 404, "GET {path}");
    }
    let (code, head, _) = raw(a, &format!("FOO / HTTP/1.1\r\nHost: {a}"), b"").await;
    assert_eq!(code, 501, "{head}");
    let (code, head, _) = raw(a, &format!("OPTIONS /reload HTTP/1.1\r\nHost: {a}\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST"), b"").await;
    assert_eq!(code, 405, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("allow: post"), "{head}");
    assert!(!lower.contains("access-control-allow"), "{head}");
    let (code, head, _) = raw(a, &format!("DELETE /status HTTP/1.1\r\nHost: {a}"), b"").await;
    assert_eq!(code, 405, "{head}");
    // A leading zero in the port is not another spelling of the backend.
    let zero = format!("{}:0{}", backend.addr.ip(), backend.addr.port());
    let (code, _, body) = raw(
        a,
        &format!("POST /pools/p/backends/{zero}/drain HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0"),
        b"",
    )
    .await;
    assert_eq!(code, 404, "{body}");
    let e = splicer::config::parse(
        Path::new("t.toml"),
        &base_config(backend.addr, "").replace(&backend.addr.to_string(), &zero),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("leading zero"), "{e}");
}

#[tokio::test]
async fn admin_bounds_sizes_and_connections() {
    let (s, _backend, _file) = admin_splicer().await;
    let a = s.admin;
    // Body past 64 KiB: declared, and chunked (no length up front).
    let big = vec![b'x'; 65 * 1024];
    let (code, _, _) = raw(
        a,
        &format!(
            "POST /reload HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}",
            big.len()
        ),
        &big,
    )
    .await;
    assert_eq!(code, 413);
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (code, _, _) = raw(
        a,
        &format!("POST /reload HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked"),
        &chunked,
    )
    .await;
    assert_eq!(code, 413);
    // A head past 16 KiB.
    let filler = "x".repeat(20 * 1024);
    let (code, _, _) = raw(
        a,
        &format!("GET /health HTTP/1.1\r\nHost: {a}\r\nX-Filler: {filler}"),
        b"",
    )
    .await;
    assert!(
        code == 431 || code == 0,
        "a huge head is refused, got {code}"
    );

    // 64 idle connections fill every slot; the 65th is closed at once, unanswered.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(a).await.expect("connect"));
    }
    // Each held one is surely accepted once it answers (sequential, so the count is exact).
    for s in held.iter_mut().take(1) {
        s.write_all(format!("GET /health HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(n > 0);
    }
    let mut extra = TcpStream::connect(a)
        .await
        .expect("the kernel still completes the handshake");
    let _ = extra
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(WAIT, extra.read_to_end(&mut buf))
        .await
        .expect("closed at once, not left waiting")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "the 65th connection got an answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // Freeing a slot serves the next one.
    held.clear();
    common::wait_until(WAIT, "a freed slot serves a request", || async {
        common::try_http(a, "GET", "/health")
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
}
