//! splicer's own life under client load (docs/architecture.md §8): binary upgrades hand the same listening
//! sockets to a new process (20 in a row: no client refused, reset or failed, every long
//! download byte-exact on the process that started it, one process and no leaked fd left);
//! failed upgrades leave the old process serving and say why; SIGTERM with `shutdown_delay`
//! keeps accepting while an outer checker moves the load away.
//!
//! splicer runs as real processes from a copy of the binary in a temp dir, so the test can
//! install a "new" binary over that path as a package manager does (write, then rename).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::installed::{open_fds, Installed, Running};
use common::load::{self, Load, Pace, Target};
use common::process::{output_within, printed, signal, splicer_cli};
use common::{try_http, wait_until, WAIT};

fn config(admin: SocketAddr, listen: SocketAddr, nodes: &[SocketAddr], extra: &str) -> String {
    format!(
        r#"
[admin]
bind = "{admin}"

[runtime]
drain_timeout = "60s"
access_log = false
{extra}

[[listener]]
name = "https"
bind = "{listen}"
pool = "quay"

[[pool]]
name = "quay"
backends = {backends}

[pool.health]
check = "https"
interval = "1s"
timeout = "500ms"
"#,
        backends = common::backends_toml(nodes)
    )
}

/// The binary installed afresh and started from there in front of `nodes`, `runtime` added to
/// its `[runtime]` section.
async fn start_installed(nodes: &[SocketAddr], runtime: &str) -> (Installed, Running) {
    let installed = Installed::new();
    let splicer = Running::start(&installed.bin, |admin, listen| {
        config(admin, listen, nodes, runtime)
    })
    .await;
    (installed, splicer)
}

/// The issue's load: a few hundred short TLS requests a second.
fn short_requests(target: Target) -> Load {
    Load::start(
        target,
        4,
        Duration::from_millis(12),
        Duration::from_secs(300),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_load_cost_no_client_anything() {
    common::init_logs();
    let rig = common::rig(3).await;
    let nodes = rig.node_addrs();
    let (installed, splicer) = start_installed(&nodes, "").await;
    let first = splicer.serving_pid().await.expect("first pid");
    // The fds of a quiet process, to compare with the last one's.
    let fds_at_start = open_fds(first);

    let load = short_requests(Target::new(splicer.listen));
    // Long downloads, read slowly (~16 KiB per 10 ms, so 24 MiB would take ~15 s) until half
    // the upgrades are done, then at full speed: each is served by the first process throughout.
    let pace = Pace::new(Duration::from_millis(10));
    let (downloads, download_tasks) = load::downloads(splicer.listen, 4, 24 << 20, pace.clone());

    let started = Instant::now();
    let mut pid = first;
    let mut generations = vec![first];
    let mut half_done = None;
    for i in 0..20 {
        installed.reinstall();
        pid = splicer.upgrade_by_signal(pid).await;
        generations.push(pid);
        if i == 9 {
            half_done = Some(started.elapsed());
            pace.set(Duration::ZERO);
        }
        // Let each generation serve a few requests of its own before the next upgrade.
        let served = load.tally.ok();
        wait_until(WAIT, "requests served by the new process", || async {
            load.tally.ok() >= served + 10
        })
        .await;
    }
    let upgrades_took = started.elapsed();
    let tally = load.stop().await;
    let mut download_times = Vec::new();
    for t in download_tasks {
        let took = tokio::time::timeout(load::DOWNLOAD_LIMIT, t)
            .await
            .expect("downloads end")
            .expect("download task");
        download_times.push(took);
    }
    assert!(
        tally.is_clean() && tally.ok() > 200,
        "short requests across 20 upgrades: {}\nlog:\n{}",
        tally.summary(),
        splicer.log()
    );
    assert!(
        downloads.is_clean() && downloads.ok() == 4,
        "long downloads across upgrades: {}\nlog:\n{}",
        downloads.summary(),
        splicer.log()
    );
    eprintln!(
        "20 upgrades in {upgrades_took:?}; downloads took {download_times:?}; short requests: {}",
        tally.summary()
    );
    // Each download was still open after the 10th upgrade: it outlived ten processes' turns.
    let half_done = half_done.expect("ten upgrades");
    for took in &download_times {
        assert!(
            *took > half_done,
            "a download ({took:?}) ended before the 10th upgrade ({half_done:?})"
        );
    }
    let mut unique = generations.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        21,
        "every upgrade made a new process: {generations:?}"
    );

    // The old processes exit once drained: one process is left, and it is the last one.
    wait_until(
        Duration::from_secs(60),
        "one splicer process left",
        || async { installed.processes() == [pid] },
    )
    .await;
    assert_eq!(splicer.serving_pid().await, Some(pid));
    // Nothing leaked across 20 hand-overs (a health check may hold a socket for a moment).
    wait_until(
        WAIT,
        "the last process holds as many fds as the first",
        || async { open_fds(pid) <= fds_at_start },
    )
    .await;
    let log = splicer.log();
    assert_eq!(
        log.matches("upgrade: the new process serves").count(),
        20,
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving_and_says_why() {
    common::init_logs();
    let rig = common::rig(2).await;
    let nodes = rig.node_addrs();
    let (installed, splicer) = start_installed(&nodes, "upgrade_timeout = \"2s\"").await;
    let old = splicer.serving_pid().await.expect("pid");
    let load = short_requests(Target::new(splicer.listen));
    let good_config = std::fs::read_to_string(&splicer.config).expect("read config");

    // 1. The new process refuses the config (exit 2).
    std::fs::write(&splicer.config, "[[listener]]\nbind = 7\n").expect("break the config");
    let (code, doc) = splicer.upgrade_by_api().await;
    assert_eq!(code, 500, "{doc}");
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exited before it was ready") && error.contains("2"),
        "{error}"
    );
    std::fs::write(&splicer.config, &good_config).expect("restore the config");

    // 2. A binary that exits at once.
    installed.install_script("#!/bin/sh\nexit 3\n");
    let (code, doc) = splicer.upgrade_by_api().await;
    assert_eq!(code, 500, "{doc}");
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(error.contains("exit status: 3"), "{error}");

    // 3. A binary that never gets ready: stopped after upgrade_timeout; meanwhile a second
    // upgrade is refused.
    installed.install_script("#!/bin/sh\nexec sleep 60\n");
    let started_before = splicer.log().matches("waiting for it to be ready").count();
    let first = tokio::spawn({
        let admin = splicer.admin;
        async move { try_http(admin, "POST", "/upgrade").await }
    });
    // Once the first upgrade has started its new process, a second one is refused.
    wait_until(WAIT, "the first upgrade started", || async {
        splicer.log().matches("waiting for it to be ready").count() > started_before
    })
    .await;
    let conflict = match try_http(splicer.admin, "POST", "/upgrade").await {
        Some((409, body)) => Some(body),
        other => panic!("a second upgrade during the first: {other:?}"),
    };
    let conflict = conflict.expect("a second upgrade during the first answers 409");
    assert!(conflict.contains("already in progress"), "{conflict}");
    let (code, body) = first.await.expect("task").expect("an answer");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("not ready within upgrade_timeout"), "{body}");
    let stuck: i32 = body
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("the error names the new process's pid");
    assert!(
        !Path::new(&format!("/proc/{stuck}")).exists(),
        "the process that never got ready was stopped and reaped"
    );

    // 4. The same through SIGUSR2: logged, and the process goes on.
    installed.install_script("#!/bin/sh\nexit 4\n");
    signal(old, libc::SIGUSR2);
    wait_until(WAIT, "the failed SIGUSR2 upgrade is logged", || async {
        splicer.log().contains("exit status: 4")
    })
    .await;
    let metrics = common::metrics_text(splicer.admin).await;
    assert_eq!(
        common::metric_value(&metrics, "splicer_upgrades_total{result=\"error\"}"),
        Some(4.0),
        "{metrics}"
    );

    assert_eq!(
        splicer.serving_pid().await,
        Some(old),
        "the old process still answers"
    );
    assert_eq!(installed.processes(), [old], "no failed successor is left");
    let log = splicer.log();
    assert_eq!(
        log.matches("upgrade failed: this process keeps serving")
            .count(),
        4,
        "{log}"
    );

    // And with a good binary the upgrade goes through.
    installed.reinstall();
    let (code, doc) = splicer.upgrade_by_api().await;
    assert_eq!(code, 200, "{doc}\n{}", splicer.log());
    assert_eq!(doc["old_pid"].as_i64(), Some(i64::from(old)));
    let new = doc["new_pid"].as_i64().expect("new_pid");
    wait_until(WAIT, "the new process answers", || async {
        splicer.serving_pid().await.map(i64::from) == Some(new)
    })
    .await;
    let tally = load.stop().await;
    assert!(
        tally.is_clean() && tally.ok() > 0,
        "{}\nlog:\n{}",
        tally.summary(),
        splicer.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_accepting_for_the_shutdown_delay_while_the_outer_checker_moves_away() {
    common::init_logs();
    let rig = common::rig(2).await;
    let nodes = rig.node_addrs();
    let bin = Path::new(env!("CARGO_BIN_EXE_splicer"));
    let delay = Duration::from_secs(2);
    let extra = format!("shutdown_delay = \"{}ms\"", delay.as_millis());
    let mut leaving =
        Running::start(bin, |admin, listen| config(admin, listen, &nodes, &extra)).await;
    let staying = Running::start(bin, |admin, listen| config(admin, listen, &nodes, "")).await;

    let target = Target::new(leaving.listen);
    let load = short_requests(target.clone());
    // The outer balancer: polls /ready every 500 ms, moves the load on the first non-200.
    let checker = tokio::spawn({
        let (admin, target, to) = (leaving.admin, target.clone(), staying.listen);
        async move {
            let started = Instant::now();
            while started.elapsed() < WAIT {
                if !matches!(try_http(admin, "GET", "/ready").await, Some((200, _))) {
                    target.set(to);
                    return Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None
        }
    });
    let served = load.tally.ok();
    wait_until(WAIT, "load flows through the leaving splicer", || async {
        load.tally.ok() > served + 20
    })
    .await;

    let signalled = Instant::now();
    leaving.process.signal(libc::SIGTERM);
    // While the delay runs, the leaving splicer still accepts and serves.
    let mut served_after_signal = 0;
    while signalled.elapsed() < delay - Duration::from_millis(500) {
        let r = load::request(leaving.listen, "/", None, &Pace::default(), WAIT).await;
        assert!(
            r.is_ok(),
            "refused during shutdown_delay: {r:?}\n{}",
            leaving.log()
        );
        served_after_signal += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_after_signal >= 5);
    let moved_at = checker
        .await
        .expect("checker")
        .expect("the checker saw 503");
    assert!(
        moved_at.duration_since(signalled) < delay,
        "moved away within the delay"
    );

    let status = leaving.process.exit().await;
    assert!(status.success(), "{status}\n{}", leaving.log());
    assert!(
        signalled.elapsed() >= delay,
        "exited before shutdown_delay ended"
    );
    let tally = load.stop().await;
    assert!(
        tally.is_clean(),
        "{}\nleaving:\n{}",
        tally.summary(),
        leaving.log()
    );
    assert!(leaving
        .log()
        .contains("still accepting until the shutdown delay ends"));
    drop(staying);
}

/// `splicer upgrade` (the CLI over `POST /upgrade`): the new pid on stdout and exit 0; a
/// refused upgrade, a bad admin URL, a missing token file and an unreachable instance each say
/// why on stderr with their exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_command_reports_the_new_process_or_why_not() {
    common::init_logs();
    let rig = common::rig(1).await;
    let nodes = rig.node_addrs();
    let (_installed, splicer) = start_installed(&nodes, "").await;
    let old = splicer.serving_pid().await.expect("pid");
    let admin = splicer.admin.to_string();
    let cli = |args: &[&str]| {
        let cmd = splicer_cli(&[&["upgrade"], args].concat());
        async move { printed(&output_within(cmd, WAIT).await) }
    };

    let (code, stdout, stderr) = cli(&["--admin", &admin]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", splicer.log());
    let new = splicer
        .serving_pid()
        .await
        .expect("the new process answers");
    assert_ne!(new, old);
    assert_eq!(
        stdout,
        format!("upgraded: old pid {old} drains its connections, new pid {new} serves\n")
    );

    // Refused by the instance: the new process cannot read the config.
    let good = std::fs::read_to_string(&splicer.config).expect("read config");
    std::fs::write(&splicer.config, "[[listener]]\nbind = 7\n").expect("break the config");
    let (code, _, stderr) = cli(&["--admin", &admin, "--timeout", "20s"]).await;
    std::fs::write(&splicer.config, good).expect("restore the config");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("splicer: upgrade refused (500): ") && stderr.contains("exited"),
        "{stderr}"
    );
    assert_eq!(
        splicer.serving_pid().await,
        Some(new),
        "the refusal changed nothing"
    );

    let (code, _, stderr) = cli(&["--admin", "ftp://[::1"]).await;
    assert_eq!(code, Some(2), "a bad admin URL is a usage error: {stderr}");
    let (code, _, stderr) = cli(&["--admin", &admin, "--token-file", "/nonexistent/token"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read token file /nonexistent/token"),
        "{stderr}"
    );
    let dead = common::dead_addr().await.to_string();
    let (code, _, stderr) = cli(&["--admin", &dead]).await;
    assert_eq!(
        code,
        Some(1),
        "an unreachable instance is a runtime failure: {stderr}"
    );
}
