//! Running out of file descriptors is this machine's problem, not the backends': with
//! splicer's descriptor limit lowered under it (prlimit on the running process), client
//! connections fail and health checks cannot open sockets, yet no backend is marked down, no
//! connect failure is counted against one, and once descriptors are back everything serves.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::{Proc, Stdout};
use common::{try_http, wait_until, TestServer, WAIT};

/// The lowest descriptor number `pid` does not hold: the next fd it would get.
fn lowest_free_fd(pid: i32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's fds")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap_or(0)
}

/// A soft limit of `n` under the process's current hard limit (lowering the hard limit could
/// not be undone without privileges; EMFILE follows the soft one).
fn limit(pid: i32, n: u64) -> libc::rlimit {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) with no new limit only writes `now`, valid for the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut now) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    libc::rlimit {
        rlim_cur: n,
        rlim_max: now.rlim_max,
    }
}

/// Sets `pid`'s RLIMIT_NOFILE to `limit`; returns the old one.
fn set_nofile(pid: i32, limit: libc::rlimit) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reads `limit` and writes `old`, both valid for the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// Sends a line and reads its echo within a short bound: whether this connection was served.
async fn served(stream: &mut TcpStream) -> bool {
    let exchange = async {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"ping")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), exchange).await,
        Ok(Some(true))
    )
}

#[tokio::test]
async fn running_out_of_descriptors_blames_no_backend() {
    let backend = TestServer::start(|mut stream, _| async move {
        let mut buf = [0u8; 64];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await;
    let proc = Proc::start(Stdout::Null, 1, |admin, listeners| {
        let listen = listeners[0];
        format!(
            r#"
[admin]
bind = "{admin}"
[runtime]
workers = 1
[[listener]]
name = "l"
bind = "{listen}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}"]
retries = 0
passive_fall = 2
[pool.health]
check = "tcp"
interval = "100ms"
timeout = "50ms"
rise = 1
fall = 2
"#,
            backend.addr
        )
    })
    .await;
    let (admin, listen, pid) = (proc.admin(), proc.listeners()[0], proc.pid);
    let log_text = || proc.log();
    let mut warm = TcpStream::connect(listen).await.expect("connect");
    assert!(served(&mut warm).await, "served before the limit");

    // Room for exactly one more descriptor: a client is accepted into it, and the backend
    // connect that follows fails with EMFILE.
    let old = set_nofile(pid, limit(pid, lowest_free_fd(pid) + 1));
    let mut refused = 0;
    for _ in 0..6 {
        let Ok(mut s) = TcpStream::connect(listen).await else {
            continue;
        };
        if !served(&mut s).await {
            refused += 1;
        }
    }
    assert!(refused > 0, "the limit took no effect");
    // No room at all: health checks cannot open a socket. Counted as failures, two of them
    // would take the backend down.
    set_nofile(pid, limit(pid, lowest_free_fd(pid)));
    // Not a fixed wait: until more checks went unrun than `fall` (2) would need to eject.
    let skipped_before = log_text().matches("health check not run").count();
    wait_until(WAIT, "five health checks not run", || async {
        log_text().matches("health check not run").count() >= skipped_before + 5
    })
    .await;
    set_nofile(pid, old);

    let started = std::time::Instant::now();
    let status: serde_json::Value = loop {
        if let Some((200, body)) = try_http(admin, "GET", "/status").await {
            if let Ok(v) = serde_json::from_str(&body) {
                break v;
            }
        }
        assert!(
            started.elapsed() < WAIT,
            "the admin API does not answer again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let b = &status["pools"][0]["backends"][0];
    let said = log_text();
    assert_eq!(b["state"], "up", "{b}\n{said}");
    assert_eq!(b["connect_failures"], 0, "{b}\n{said}");
    assert!(
        !said.contains("backend down"),
        "a backend was blamed:\n{said}"
    );
    for line in [
        "cannot open a backend connection: this machine is out of file descriptors",
        "health check not run: this machine is out of file descriptors",
    ] {
        assert!(said.contains(line), "not said: {line}\n{said}");
    }
    let mut again = TcpStream::connect(listen).await.expect("connect");
    assert!(served(&mut again).await, "served once descriptors are back");
    drop(warm);
}
