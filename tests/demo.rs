//! `splicer demo`, the README's first command, run as a user runs it: it prints what to try,
//! and what it prints works (the balancer rotates over the nodes, /status shows them up, the
//! control API fails a node and the balancer stops sending to it). It uses the fixed ports of
//! config/rig.toml (127.0.0.1:8443 and :9090; nodes on 127.0.0.2-4:8443).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::process::Proc;
use common::{http, status, wait_until, which_node, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_what_it_prints() {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_splicer"));
    cmd.arg("demo").env("RUST_LOG", "warn");
    let mut demo = Proc::spawn(cmd);
    // What it prints for the user ends with this line.
    demo.until_logged("Ctrl-C stops the demo.").await;
    let out = demo.log();
    let lb: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    assert!(out.contains(&format!("https://{lb}/")), "{out}");
    assert!(out.contains("node-3"), "{out}");

    // Every node up, and the balancer rotates over all three.
    wait_until(WAIT, "three nodes up", || async {
        let s = status(admin).await;
        let states: Vec<String> = s["pools"][0]["backends"]
            .as_array()
            .map(|b| b.iter().map(|b| b["state"].to_string()).collect())
            .unwrap_or_default();
        states == ["\"up\"", "\"up\"", "\"up\""]
    })
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        seen.insert(which_node(lb).await.expect("request through the demo"));
    }
    assert_eq!(seen.len(), 3, "round robin over three nodes: {seen:?}");

    // The printed control command fails node 2: it leaves the rotation.
    let control = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("curl -s -X POST -d 503 http://"))
        .and_then(|rest| rest.split_once('/'))
        .map(|(addr, _)| addr.parse::<SocketAddr>().expect("control address"))
        .unwrap_or_else(|| panic!("no control command printed:\n{out}"));
    let (code, body) = http(control, "POST", "/nodes/2/health", "503").await;
    assert_eq!(code, 200, "{body}");
    wait_until(WAIT, "node 2 down", || async {
        status(admin).await["pools"][0]["backends"][1]["state"] == "down"
    })
    .await;
    let node2 = "node-2".to_string();
    assert!(
        seen.contains(&node2),
        "nodes answer with their names: {seen:?}"
    );
    for _ in 0..6 {
        let node = which_node(lb).await.expect("request through the demo");
        assert_ne!(node, node2, "a down node got a request");
    }

    demo.signal(libc::SIGINT);
    let exit = demo.exit().await;
    assert!(exit.success(), "demo exit {exit}:\n{}", demo.log());
}
