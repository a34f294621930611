//! Tests of the pump on real loopback sockets: bursts that switch between the copy and splice
//! paths, a receiver too slow for the copy path's writes, data and FIN arriving together, and
//! the shutdown that is skipped once both directions ended.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

/// Every wait in these tests ends by then.
const LIMIT: Duration = Duration::from_secs(10);

async fn pair(tune_listener: impl FnOnce(&TcpListener)) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    tune_listener(&listener);
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.expect("connect"), accepted.expect("accept").0)
}

/// A client and a backend with the pump between them (on the two sockets in the middle).
async fn pumped() -> (TcpStream, TcpStream, JoinHandle<(End, u64, u64)>) {
    let (client, near_client) = pair(|_| {}).await;
    let (near_backend, backend) = pair(|_| {}).await;
    (client, backend, pump(near_client, near_backend))
}

/// Waits for the pump to end: how the connection ended and the bytes each way.
async fn finished(pumping: JoinHandle<(End, u64, u64)>) -> (End, u64, u64) {
    tokio::time::timeout(LIMIT, pumping)
        .await
        .expect("pump ends")
        .expect("pump task")
}

/// Runs the pump over the middle two sockets; its result is the connection's end and traffic.
fn pump(near_client: TcpStream, near_backend: TcpStream) -> JoinHandle<(End, u64, u64)> {
    tokio::spawn(async move {
        let stop = CancellationToken::new();
        let cut = CancellationToken::new();
        let traffic = Traffic::default();
        let limits = Limits {
            idle_timeout: None,
            stop: &stop,
            cut: &cut,
        };
        let end = run(
            &near_client,
            &near_backend,
            limits,
            &traffic,
            &|_| {},
            &|_| {},
        )
        .await;
        (
            end,
            traffic.to_backend.load(Ordering::Relaxed),
            traffic.to_client.load(Ordering::Relaxed),
        )
    })
}

/// Deterministic bytes: burst `i` is filled with a pattern that differs from its neighbours'.
fn burst(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

async fn read_exactly(from: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(LIMIT, from.read_exact(&mut buf))
        .await
        .expect("bytes arrive in time")
        .expect("read");
    buf
}

async fn expect_eof(from: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(LIMIT, from.read(&mut byte))
        .await
        .expect("EOF arrives in time")
        .expect("read");
    assert_eq!(n, 0, "expected EOF, got a byte");
}

/// Sizes around the copy buffer (16 KiB) and far above it, so a direction goes copy → splice
/// → copy several times; each burst is delivered before the next is sent.
#[tokio::test]
async fn bursts_of_every_size_arrive_intact_both_ways() {
    let (mut client, mut backend, pumping) = pumped().await;
    let sizes = [
        1,
        64,
        COPY_CHUNK - 1,
        COPY_CHUNK,
        COPY_CHUNK + 1,
        5,
        3 << 20,
        100,
        200_000,
        1,
    ];
    let mut total = 0u64;
    for (i, &len) in sizes.iter().enumerate() {
        let up = burst(i, len);
        let (w, got) = tokio::join!(client.write_all(&up), read_exactly(&mut backend, len));
        w.expect("client write");
        assert!(got == up, "upstream burst {i} ({len} B) arrived changed");
        let down = burst(i + 100, len);
        let (w, got) = tokio::join!(backend.write_all(&down), read_exactly(&mut client, len));
        w.expect("backend write");
        assert!(
            got == down,
            "downstream burst {i} ({len} B) arrived changed"
        );
        total += len as u64;
    }
    client.shutdown().await.expect("client shutdown");
    expect_eof(&mut backend).await;
    backend.shutdown().await.expect("backend shutdown");
    expect_eof(&mut client).await;
    let (end, to_backend, to_client) = finished(pumping).await;
    assert_eq!(end, End::ClientClosed);
    assert_eq!((to_backend, to_client), (total, total));
}

/// Small writes to a receiver that does not read yet: the copy path's writes stop fitting in
/// the (shrunk) send buffer, and what does not fit must still arrive, in order, once it reads.
#[tokio::test]
async fn small_writes_to_a_stalled_receiver_arrive_intact() {
    let (mut client, near_client) = pair(|_| {}).await;
    let (near_backend, mut backend) = pair(|l| {
        // Inherited by the accepted socket: a small window toward the receiver.
        let _ = SockRef::from(l).set_recv_buffer_size(4096);
    })
    .await;
    SockRef::from(&near_backend)
        .set_send_buffer_size(4096)
        .expect("SO_SNDBUF");
    let pumping = pump(near_client, near_backend);

    const TOTAL: usize = 48 * 1024;
    let data = burst(7, TOTAL);
    // Everything is written before the receiver reads a byte; far more than the shrunk
    // buffers between the pump and the receiver hold.
    for chunk in data.chunks(1000) {
        tokio::time::timeout(LIMIT, client.write_all(chunk))
            .await
            .expect("the sender is not blocked")
            .expect("client write");
    }
    client.shutdown().await.expect("client shutdown");
    let got = read_exactly(&mut backend, TOTAL).await;
    assert!(got == data, "bytes arrived changed or out of order");
    expect_eof(&mut backend).await;
    drop(backend);
    drop(client);
    let (end, to_backend, _) = finished(pumping).await;
    assert_eq!(to_backend, TOTAL as u64);
    assert!(
        matches!(
            end,
            End::ClientClosed | End::BackendReset | End::BackendClosed
        ),
        "unexpected end {end:?}"
    );
}

/// A request and its FIN in one go, then the answer and its FIN: the short read that carries
/// the data must not hide the EOF behind it (readiness is cleared after short reads).
#[tokio::test]
async fn data_followed_at_once_by_fin_passes_both_ways() {
    let (mut client, mut backend, pumping) = pumped().await;
    client.write_all(&[1u8; 64]).await.expect("client write");
    client.shutdown().await.expect("client shutdown");
    assert_eq!(read_exactly(&mut backend, 64).await, vec![1u8; 64]);
    expect_eof(&mut backend).await;
    backend.write_all(&[2u8; 64]).await.expect("backend write");
    backend.shutdown().await.expect("backend shutdown");
    assert_eq!(read_exactly(&mut client, 64).await, vec![2u8; 64]);
    expect_eof(&mut client).await;
    let (end, to_backend, to_client) = finished(pumping).await;
    assert_eq!(end, End::ClientClosed);
    assert_eq!((to_backend, to_client), (64, 64));
}

/// A client that closes with the backend's last bytes unread sends a reset, not a FIN (curl
/// after a TLS close_notify exchange, when the backend's reply beats its close; here forced
/// with SO_LINGER 0): once the backend has finished, that is a close by the client.
#[tokio::test]
async fn a_client_reset_after_the_backend_finished_is_a_close() {
    let (mut client, mut backend, pumping) = pumped().await;
    client.write_all(b"bye").await.expect("client write");
    assert_eq!(read_exactly(&mut backend, 3).await, b"bye".to_vec());
    backend.write_all(b"bye too").await.expect("backend write");
    backend.shutdown().await.expect("backend shutdown");
    assert_eq!(read_exactly(&mut client, 7).await, b"bye too".to_vec());
    expect_eof(&mut client).await;
    // The client then closes with a reset (as it does when bytes are left unread).
    SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(client);
    let (end, _, to_client) = finished(pumping).await;
    assert_eq!(end, End::ClientClosed);
    assert_eq!(to_client, 7);
    expect_reset_or_eof(&mut backend).await;
}

/// The backend sees the end of the connection (a reset passed on, or a FIN).
async fn expect_reset_or_eof(from: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(LIMIT, from.read(&mut byte))
        .await
        .expect("the end arrives in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// The first EOF shuts the other socket's write side (half-close); the second leaves it to
/// close(2), which follows at once.
#[tokio::test]
async fn only_the_first_eof_shuts_the_other_side_down() {
    let (mut first_peer, first) = pair(|_| {}).await;
    let (_second_peer, second) = pair(|_| {}).await;
    let seen = AtomicBool::new(false);
    assert!(matches!(eof(&first, &seen), DirEnd::Eof));
    expect_eof(&mut first_peer).await;
    assert!(matches!(eof(&second, &seen), DirEnd::Eof));
    // A shut-down socket refuses writes (EPIPE); this one still takes them.
    tokio::time::timeout(LIMIT, second.writable())
        .await
        .expect("writable in time")
        .expect("writable");
    assert_eq!(second.try_write(b"x").expect("still open for writing"), 1);
}

/// The lost wake-up behind a 20 s stall of `slow_start` under CPU contention: bytes that arrive
/// after a short read, but before the copy path marks the socket drained, must keep it
/// readable. The arrival is landed in exactly that window: the sockets' events are recorded by
/// the runtime's worker thread while this thread is inside `read_once` (as when a worker is
/// preempted there), and a witness byte sent after it shows when the driver has recorded it.
#[test]
fn bytes_arriving_right_after_a_short_read_still_wake_the_reader() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (peer, from) = rt.block_on(pair(|_| {}));
    let (witness_peer, witness) = rt.block_on(pair(|_| {}));
    assert_eq!(peer.try_write(b"a").expect("first byte"), 1);
    rt.block_on(async { tokio::time::timeout(LIMIT, read_ready(&from)).await })
        .expect("the first byte is reported")
        .expect("readiness");

    let mut buf = [0u8; 64];
    let n = read_once(&from, &mut buf, || {
        assert_eq!(peer.try_write(b"b").expect("second byte"), 1);
        // Queued at `from` (so its epoll event is raised) before the witness byte is sent.
        let queued = std::time::Instant::now();
        while SockRef::from(&from)
            .peek(&mut [std::mem::MaybeUninit::new(0u8)])
            .is_err()
        {
            assert!(queued.elapsed() < LIMIT, "the second byte never arrived");
            std::thread::yield_now();
        }
        assert_eq!(witness_peer.try_write(b"w").expect("witness byte"), 1);
        // The driver handles epoll's events in the order they were raised.
        rt.block_on(async { tokio::time::timeout(LIMIT, read_ready(&witness)).await })
            .expect("the witness byte is reported")
            .expect("readiness");
    })
    .expect("read");
    assert_eq!(&buf[..n], b"a");

    // The second byte is queued: the socket must be reported readable (at once; the bound only
    // turns a lost wake-up into a failure instead of a hang).
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), read_ready(&from)).await })
        .expect("bytes are queued but the socket is not reported readable: a lost wake-up")
        .expect("readiness");
    let n = read_once(&from, &mut buf, || {}).expect("read the second byte");
    assert_eq!(&buf[..n], b"b");
}
