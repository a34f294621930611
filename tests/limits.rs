//! Listener limits: `idle_timeout` closes a connection on which no byte moved, and only such a
//! one; `max_connections` holds further clients in the kernel backlog until a slot frees.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::{backends_toml, start_splicer, status, wait_until, Splicer, WAIT};

/// How long the test watches for something that must not happen (a held-back client reaching
/// the backend). Long enough that splicer would have passed it on many times over.
const QUIET: Duration = Duration::from_millis(500);

/// An echo backend that reports every connection it accepts; each echoes until EOF, then closes.
async fn echo_backend() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (accepted, accepts) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let _ = accepted.send(peer);
            tokio::spawn(async move {
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    (addr, accepts)
}

/// One listener with `listener_extra`, in front of `backend`, unchecked.
async fn splicer_with(backend: SocketAddr, listener_extra: &str) -> Splicer {
    start_splicer(&format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "p"
{listener_extra}

[[pool]]
name = "p"
backends = {}

[pool.health]
check = "none"
"#,
        backends_toml(&[backend])
    ))
    .await
}

/// The backend accepts one more connection (bounded).
async fn next_accept(accepts: &mut mpsc::UnboundedReceiver<SocketAddr>, what: &str) {
    tokio::time::timeout(WAIT, accepts.recv())
        .await
        .unwrap_or_else(|_| panic!("the backend never saw {what}"))
        .expect("backend task alive");
}

/// Sends `byte` and reads its echo.
async fn round_trip(stream: &mut TcpStream, byte: u8) {
    let fut = async {
        stream.write_all(&[byte]).await?;
        let mut echo = [0u8; 1];
        stream.read_exact(&mut echo).await?;
        Ok::<_, std::io::Error>(echo[0])
    };
    let echo = tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no echo of {byte:#x}"))
        .unwrap_or_else(|e| panic!("echo of {byte:#x}: {e}"));
    assert_eq!(echo, byte);
}

/// Waits for EOF on `stream`; returns when it came. Data or an error instead fails the test.
async fn eof_at(stream: &mut TcpStream, what: &str) -> Instant {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) => Instant::now(),
        Ok(Ok(n)) => panic!("{what}: got {n} bytes instead of EOF"),
        Ok(Err(e)) => panic!("{what}: {e} instead of EOF"),
        Err(_) => panic!("{what}: no EOF within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_connections_only() {
    let (backend, mut accepts) = echo_backend().await;
    let splicer = splicer_with(backend, "idle_timeout = \"300ms\"").await;

    let idle_started = Instant::now();
    let mut idle = TcpStream::connect(splicer.addr).await.expect("connect");
    next_accept(&mut accepts, "the idle connection").await;
    let idle_closed = tokio::spawn(async move {
        let at = eof_at(&mut idle, "the idle connection").await;
        at - idle_started
    });

    let mut busy = TcpStream::connect(splicer.addr).await.expect("connect");
    next_accept(&mut accepts, "the busy connection").await;
    // Traffic every 100 ms for a second: each byte restarts the 300 ms idle clock.
    let busy_started = Instant::now();
    let mut byte = 0u8;
    while busy_started.elapsed() < Duration::from_secs(1) {
        round_trip(&mut busy, byte).await;
        byte = byte.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    round_trip(&mut busy, 0xAA).await;

    let idle_lived = idle_closed.await.expect("idle task");
    assert!(
        idle_lived >= Duration::from_millis(290) && idle_lived <= Duration::from_secs(3),
        "the silent connection was closed after {idle_lived:?}, idle_timeout is 300ms"
    );

    // Once silent, the busy connection goes the same way.
    let quiet_from = Instant::now();
    let lived = eof_at(&mut busy, "the busy connection once silent").await - quiet_from;
    assert!(
        lived >= Duration::from_millis(250) && lived <= Duration::from_secs(3),
        "silent for {lived:?} before splicer closed it"
    );
    wait_until(WAIT, "both connections to end", || async {
        status(splicer.admin).await["listeners"][0]["active_connections"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_third_client_until_a_slot_frees() {
    let (backend, mut accepts) = echo_backend().await;
    let splicer = splicer_with(backend, "max_connections = 2").await;

    let mut first = TcpStream::connect(splicer.addr).await.expect("connect 1");
    round_trip(&mut first, 1).await;
    next_accept(&mut accepts, "connection 1").await;
    let mut second = TcpStream::connect(splicer.addr).await.expect("connect 2");
    round_trip(&mut second, 2).await;
    next_accept(&mut accepts, "connection 2").await;

    // The kernel completes the handshake (backlog), but splicer does not take the client.
    let mut third = tokio::time::timeout(WAIT, TcpStream::connect(splicer.addr))
        .await
        .expect("connect 3 timed out")
        .expect("connect 3 completes in the kernel backlog");
    third.write_all(&[3]).await.expect("write into the backlog");
    let mut echo = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(QUIET) => {}
        _ = accepts.recv() => panic!("a third connection reached the backend over max_connections = 2"),
        r = third.read(&mut echo) => panic!("the held-back client read {r:?}"),
    }
    let s = status(splicer.admin).await;
    assert_eq!(s["listeners"][0]["active_connections"], 2, "{s}");
    assert_eq!(s["listeners"][0]["total_connections"], 2, "{s}");

    // Closing one (the echo backend then closes too) frees its slot for the waiting client.
    drop(first);
    next_accept(&mut accepts, "the held-back connection once a slot freed").await;
    tokio::time::timeout(WAIT, third.read_exact(&mut echo))
        .await
        .expect("the byte sent while held back never came back")
        .expect("read echo");
    assert_eq!(echo, [3]);
    round_trip(&mut third, 4).await;
    round_trip(&mut second, 5).await;

    drop(second);
    drop(third);
    wait_until(WAIT, "every connection to end", || async {
        status(splicer.admin).await["listeners"][0]["active_connections"] == 0
    })
    .await;
    // Still serving, with both slots back.
    let mut again = [
        TcpStream::connect(splicer.addr).await.expect("connect"),
        TcpStream::connect(splicer.addr).await.expect("connect"),
    ];
    for (i, s) in again.iter_mut().enumerate() {
        round_trip(s, 10 + i as u8).await;
    }
    let s = status(splicer.admin).await;
    assert_eq!(s["listeners"][0]["total_connections"], 5, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_a_slow_but_steady_reader() {
    // The backend writes it all at once: splicer's send queue toward the client fills (MiBs)
    // and then only drains as fast as the client reads, with no read or write of splicer's for
    // longer than idle_timeout. Bytes still move, so the connection is not idle.
    const TOTAL: usize = 8 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let _ = stream.write_all(&vec![0x5A; TOTAL]).await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let splicer = splicer_with(backend, "idle_timeout = \"300ms\"").await;

    let mut client = TcpStream::connect(splicer.addr).await.expect("connect");
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    let started = Instant::now();
    while got < TOTAL {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .expect("no bytes within WAIT")
            .unwrap_or_else(|e| panic!("{e} after {got} bytes"));
        assert!(
            n > 0,
            "closed as idle after {got} of {TOTAL} bytes, {:?} into a steady read",
            started.elapsed()
        );
        got += n;
        // About 6 MB/s: slower than the loopback, steady enough never to stall.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{TOTAL} bytes read slowly in {:?}", started.elapsed());
    // Nothing left in flight: now it is idle.
    let quiet_from = Instant::now();
    let lived = eof_at(&mut client, "the drained connection").await - quiet_from;
    assert!(
        lived <= Duration::from_secs(3),
        "idle for {lived:?} before splicer closed it"
    );
}
