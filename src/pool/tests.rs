//! The supervisor task's timers under paused (virtual) time: no socket is involved (checks are
//! `none`), so tokio's clock advances only when every task waits, and the deadlines are exact.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::config;

fn pool_config(backends: &[SocketAddr], extra: &str) -> PoolConfig {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let text = format!(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\nbackends = [{}]\n{extra}\n[pool.health]\ncheck = \"none\"\n",
        list.join(", ")
    );
    let parsed = config::parse(std::path::Path::new("test.toml"), &text);
    parsed.expect("valid test config").pools.remove(0)
}

const A: &str = "127.0.0.1:1";
const B: &str = "127.0.0.1:2";

/// A started pool of `A` and `B` (checks `none`), its tasks and stop token, and `which`'s
/// backend with one open connection (its lease) and its cut token.
struct Fixture {
    pool: Arc<Pool>,
    tasks: TaskTracker,
    stop: CancellationToken,
    lease: Lease,
    cut: CancellationToken,
}

fn two_backends(drain_timeout: Duration, which: &str) -> Fixture {
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let pool = start(
        pool_config(&[a, b], ""),
        drain_timeout,
        true,
        &tasks,
        stop.clone(),
    )
    .expect("pool starts")
    .pool;
    let address: SocketAddr = which.parse().unwrap();
    let backend = pool
        .members()
        .into_iter()
        .find(|m| m.address == address)
        .expect("the member");
    let (lease, cut) = (backend.connected(), backend.cut_token());
    Fixture {
        pool,
        tasks,
        stop,
        lease,
        cut,
    }
}

impl Fixture {
    async fn stop(self) {
        drop(self.lease);
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_drain_cuts_what_is_left_exactly_at_drain_timeout() {
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let drain_timeout = Duration::from_secs(30);
    let f = two_backends(drain_timeout, A);
    let (pool, cut) = (&f.pool, &f.cut);

    let drained_at = tokio::time::Instant::now();
    assert_eq!(
        pool.admin(a, AdminAction::Drain).await.expect("drain"),
        BackendState::Draining
    );
    // Not one virtual millisecond early...
    let early = tokio::time::timeout(drain_timeout - Duration::from_millis(1), cut.cancelled());
    assert!(early.await.is_err(), "cut before drain_timeout");
    // ...and at the deadline itself, not at the next drain tick.
    tokio::time::timeout(Duration::from_millis(2), cut.cancelled())
        .await
        .expect("cut at drain_timeout");
    let took = drained_at.elapsed();
    assert!(
        took >= drain_timeout && took <= drain_timeout + Duration::from_millis(2),
        "{took:?}"
    );
    // Never in the live set meanwhile, and the other backend takes every pick.
    for _ in 0..4 {
        let picked = pool
            .pick("127.0.0.9".parse().unwrap(), &[])
            .expect("a pick");
        assert_eq!(picked.address, b);
    }
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_backend_leaves_once_its_last_connection_ends() {
    let b: SocketAddr = B.parse().unwrap();
    let drain_timeout = Duration::from_secs(30);
    let Fixture {
        pool,
        tasks,
        stop,
        lease,
        cut,
    } = two_backends(drain_timeout, B);
    pool.remove_backend(b).await.expect("remove b");
    let listed = |pool: &Pool| pool.members().iter().any(|m| m.address == b);
    // Its connection keeps it listed (draining) up to drain_timeout...
    tokio::time::sleep(drain_timeout - Duration::from_secs(1)).await;
    assert!(listed(&pool), "gone while a connection was open");
    tokio::time::timeout(Duration::from_secs(2), cut.cancelled())
        .await
        .expect("cut at drain_timeout");
    // ...and once that connection ends, it leaves within a drain tick.
    drop(lease);
    let ended = tokio::time::Instant::now();
    while listed(&pool) {
        assert!(
            ended.elapsed() < Duration::from_secs(1),
            "still listed after its last connection ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}
