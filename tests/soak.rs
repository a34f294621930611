//! The adversarial pass, kept: for a bounded time, client churn, health flapping, reloads,
//! binary upgrades and slowloris clients all at once against splicer in front of the rig. It
//! fails on any failed client request, on fd or memory growth, on a socket left in CLOSE_WAIT,
//! and on a panic line. CI runs a short version (`SPLICER_SOAK_SECS`, default 20);
//! `scripts/soak [SECONDS]` runs a long one.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::installed::{open_fds, Installed, Running};
use common::load::{Load, Target};
use common::{control, wait_until, WAIT};

fn soak_duration() -> Duration {
    let secs = std::env::var("SPLICER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20)
        .clamp(5, 24 * 3600);
    Duration::from_secs(secs)
}

fn config(admin: SocketAddr, listen: SocketAddr, nodes: &[SocketAddr], weight: u32) -> String {
    let backends: Vec<String> = nodes
        .iter()
        .map(|a| format!("{{ address = \"{a}\", weight = {weight} }}"))
        .collect();
    format!(
        r#"
[admin]
bind = "{admin}"

[runtime]
drain_timeout = "30s"
access_log = false

[[listener]]
name = "https"
bind = "{listen}"
pool = "quay"
idle_timeout = "60s"

[[pool]]
name = "quay"
backends = [{}]
connect_timeout = "1s"
retries = 2

[pool.health]
check = "https"
interval = "500ms"
timeout = "400ms"
rise = 2
fall = 2
"#,
        backends.join(", ")
    )
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Sockets of `pid` in CLOSE_WAIT: the peer closed and splicer never did.
fn close_wait(pid: i32) -> usize {
    common::sockets::tcp_sockets(pid)
        .iter()
        .filter(|s| s.state == common::sockets::CLOSE_WAIT)
        .count()
}

/// Clients that connect and then send one byte every few seconds, never a whole ClientHello.
fn slowloris(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..n {
            if let Ok(s) = TcpStream::connect(addr).await {
                conns.push(s);
            }
        }
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(24 * 3600) {
            for s in &mut conns {
                let _ = s.write_all(&[0x16]).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_flapping_reloads_upgrades_and_slowloris_fail_no_client() {
    common::init_logs();
    let duration = soak_duration();
    let rig = common::rig(3).await;
    let nodes = rig.node_addrs();
    let installed = Installed::new();
    let splicer = Running::start(&installed.bin, |admin, listen| {
        config(admin, listen, &nodes, 1)
    })
    .await;
    let first = splicer.serving_pid().await.expect("pid");
    // Baselines of a quiet process, which the last process must be back to at the end.
    let (fds_before, rss_before) = (open_fds(first), rss(first));

    let load = Load::start(
        Target::new(splicer.listen),
        4,
        Duration::from_millis(5),
        duration + WAIT,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let slow = slowloris(splicer.listen, 50, stop.clone());
    wait_until(WAIT, "load flowing", || async { load.tally.ok() > 100 }).await;

    let started = Instant::now();
    let (mut flips, mut reloads, mut upgrades) = (0u32, 0u32, 0u32);
    let mut pid = first;
    let mut tick = 0u64;
    while started.elapsed() < duration {
        tick += 1;
        // Node 2 flaps every 700 ms: checks eject it and bring it back again and again.
        let health = if tick % 2 == 0 { "503" } else { "200" };
        let (code, _) = control(&rig, "/nodes/2/health", health).await;
        assert_eq!(code, 200);
        flips += 1;
        if tick % 3 == 0 {
            // A reload that changes weights (a real diff), by SIGHUP.
            std::fs::write(
                &splicer.config,
                config(splicer.admin, splicer.listen, &nodes, 1 + (tick % 2) as u32),
            )
            .expect("rewrite config");
            common::process::signal(pid, libc::SIGHUP);
            reloads += 1;
        }
        if tick % 7 == 0 {
            installed.reinstall();
            pid = splicer.upgrade_by_signal(pid).await;
            upgrades += 1;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    control(&rig, "/nodes/2/health", "200").await;
    stop.store(true, Ordering::Relaxed);
    let tally = load.stop().await;
    let _ = tokio::time::timeout(WAIT, slow).await;
    let log = splicer.log();
    eprintln!(
        "soak {duration:?}: {flips} flips, {reloads} reloads, {upgrades} upgrades; requests {}",
        tally.summary()
    );
    assert!(
        tally.is_clean() && tally.ok() > 0,
        "client requests failed: {}\nlog:\n{log}",
        tally.summary()
    );
    assert!(!log.contains("panicked"), "a panic:\n{log}");

    // Old processes drain and exit; what remains holds no more than the first did.
    wait_until(
        Duration::from_secs(60),
        "one splicer process left",
        || async { installed.processes() == [pid] },
    )
    .await;
    wait_until(WAIT, "no socket left in CLOSE_WAIT", || async {
        close_wait(pid) == 0
    })
    .await;
    wait_until(WAIT, "no fd growth", || async {
        open_fds(pid) <= fds_before + 2
    })
    .await;
    // The allocator keeps some of what the load used; a leak grows with the run instead.
    let rss_after = rss(pid);
    assert!(
        rss_after <= rss_before * 2 + (16 << 20),
        "memory grew from {rss_before} to {rss_after} bytes"
    );
}
