//! The access log when stdout fails (a full disk, a closed pipe): connections go on, and every
//! lost line is counted in `splicer_access_log_dropped_total` and said once in the log.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::{Proc, Stdout};
use common::{metric_value, try_http, wait_until, TestServer, WAIT};

#[tokio::test]
async fn lines_lost_to_a_full_stdout_are_counted_and_serving_goes_on() {
    let backend = TestServer::start(|mut stream, _| async move {
        let mut buf = [0u8; 64];
        if let Ok(n) = stream.read(&mut buf).await {
            let _ = stream.write_all(&buf[..n]).await;
        }
    })
    .await;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let proc = Proc::start(Stdout::File(full), 1, |admin, listeners| {
        let listen = listeners[0];
        format!(
            r#"
[admin]
bind = "{admin}"
[[listener]]
name = "l"
bind = "{listen}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}"]
[pool.health]
check = "none"
"#,
            backend.addr
        )
    })
    .await;
    let (admin, listen) = (proc.admin(), proc.listeners()[0]);
    let log_text = || proc.log();
    for i in 0..5 {
        let mut s = TcpStream::connect(listen).await.expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
            .await
            .expect("served while stdout is full");
        assert_eq!(&buf, b"ping", "connection {i}");
    }
    wait_until(WAIT, "5 lost lines counted", || async {
        let Some((200, text)) = try_http(admin, "GET", "/metrics").await else {
            return false;
        };
        metric_value(&text, "splicer_access_log_dropped_total") == Some(5.0)
    })
    .await;
    let said = log_text();
    assert_eq!(
        said.matches("access log: cannot write to stdout").count(),
        1,
        "said once:\n{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}
