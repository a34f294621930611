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

#[tokio::test(start_paused = true)]
async fn a_drain_cuts_what_is_left_exactly_at_drain_timeout() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let drain_timeout = Duration::from_secs(30);
    let started = start(
        pool_config(&[a, b], ""),
        drain_timeout,
        true,
        &tasks,
        stop.clone(),
    )
    .expect("pool starts");
    let pool = started.pool;
    let backend = pool
        .members()
        .into_iter()
        .find(|m| m.address == a)
        .expect("member a");
    let lease = backend.connected();
    let cut = backend.cut_token();

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
    drop(lease);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_backend_leaves_once_its_last_connection_ends() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let drain_timeout = Duration::from_secs(30);
    let started = start(
        pool_config(&[a, b], ""),
        drain_timeout,
        true,
        &tasks,
        stop.clone(),
    )
    .expect("pool starts");
    let pool = started.pool;
    let backend = pool
        .members()
        .into_iter()
        .find(|m| m.address == b)
        .expect("member b");
    let lease = backend.connected();
    let cut = backend.cut_token();
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
