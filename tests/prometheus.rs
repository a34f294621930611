//! splicer scraped by a real Prometheus: the server parses `/metrics` (OpenMetrics, histograms
//! included) and PromQL over it gives what the traffic and the rig's state say it should —
//! the backends up and down, the connection counts, and histogram quantiles in the range the
//! clients themselves measured. Fails when `prometheus` is not installed.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::prometheus::{sample_value, Prometheus};
use common::{backend_state, backends_toml, control, rig, start_splicer, wait_until, WAIT};
use splicer::histogram::CONNECTION_DURATION_BUCKETS;

/// Client connections the test makes through splicer.
const CONNECTIONS: usize = 30;

/// `splicer_backend_up` by backend address, from a query result.
fn by_backend(result: &[serde_json::Value]) -> BTreeMap<String, f64> {
    result
        .iter()
        .filter_map(|s| {
            Some((
                s["metric"]["backend"].as_str()?.to_string(),
                sample_value(s)?,
            ))
        })
        .collect()
}

/// The one finite value of a query that should give a single sample.
fn single_finite(result: &[serde_json::Value]) -> Option<f64> {
    match result {
        [one] => sample_value(one).filter(|v| v.is_finite()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_splicer_and_promql_sees_the_truth() {
    let rig = rig(3).await;
    let nodes = rig.node_addrs();
    let mut splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "quay"
max_connections = 64

[[pool]]
name = "quay"
balance = "round_robin"
backends = {}

[pool.health]
interval = "200ms"
timeout = "150ms"
rise = 1
fall = 1
"#,
        backends_toml(&nodes)
    ))
    .await;
    let prometheus = Prometheus::start("splicer", splicer.admin).await;

    // The first successful scrape. Everything the test does from here on happens after it, so
    // rate() over the window sees the counters rise.
    prometheus
        .until("splicer to be scraped", r#"up{job="splicer"}"#, |r| {
            (single_finite(r) == Some(1.0)).then_some(())
        })
        .await;

    // Traffic: every client connection measured from the client's side.
    let mut slowest = 0f64;
    for i in 0..CONNECTIONS {
        let started = Instant::now();
        let (code, body) = common::https_get(splicer.addr, "/")
            .await
            .unwrap_or_else(|e| panic!("request {i} through splicer: {e}"));
        slowest = slowest.max(started.elapsed().as_secs_f64());
        assert_eq!(code, 200, "request {i}: {body}");
    }

    // One machine dies.
    let (code, answer) = control(&rig, "/nodes/2/stop", "").await;
    assert_eq!(code, 200, "{answer}");
    wait_until(WAIT, "splicer to take node 2 down", || async {
        backend_state(splicer.admin, "quay", nodes[1]).await == "down"
    })
    .await;

    let want: BTreeMap<String, f64> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), if i == 1 { 0.0 } else { 1.0 }))
        .collect();
    let got = prometheus
        .until(
            "Prometheus to see node 2 down and the others up",
            r#"splicer_backend_up{job="splicer",pool="quay"}"#,
            |r| Some(by_backend(r)).filter(|m| *m == want),
        )
        .await;
    assert_eq!(got.len(), 3, "{got:?}");

    // Every connection counted once in both histograms, as Prometheus parsed them.
    let total = CONNECTIONS as f64;
    for series in [
        "splicer_listener_connection_duration_seconds_count",
        "splicer_backend_connect_duration_seconds_count",
        "splicer_listener_connection_duration_seconds_bucket{le=\"+Inf\"}",
    ] {
        let q = if series.contains('{') {
            series.replacen('{', "{job=\"splicer\",", 1)
        } else {
            format!("{series}{{job=\"splicer\"}}")
        };
        prometheus
            .until(
                "the histogram to count every connection",
                &format!("sum({q})"),
                |r| (single_finite(r) == Some(total)).then_some(()),
            )
            .await;
    }
    let max_connections = prometheus
        .query(r#"splicer_listener_max_connections{job="splicer",listener="https"}"#)
        .await
        .expect("query max_connections");
    assert_eq!(single_finite(&max_connections), Some(64.0));

    // Quantiles over the window that holds all of the traffic. The median connection lasted
    // no longer than the slowest one the client saw, so it lies in or below the first bucket
    // above that (plus slack for splicer's side closing after the client's read).
    let median_connection = prometheus
        .until(
            "a finite median connection duration",
            r#"histogram_quantile(0.5, sum by (le) (rate(splicer_listener_connection_duration_seconds_bucket{job="splicer"}[5m])))"#,
            single_finite,
        )
        .await;
    let ceiling = CONNECTION_DURATION_BUCKETS
        .iter()
        .copied()
        .find(|&b| b >= slowest + 0.1)
        .unwrap_or(f64::INFINITY);
    assert!(
        median_connection > 0.0 && median_connection <= ceiling,
        "median connection duration {median_connection} s; the slowest the client saw took \
         {slowest} s (ceiling {ceiling} s)"
    );

    let p99_connect = prometheus
        .until(
            "a finite 99th percentile connect time",
            r#"histogram_quantile(0.99, sum by (le) (rate(splicer_backend_connect_duration_seconds_bucket{job="splicer",pool="quay"}[5m])))"#,
            single_finite,
        )
        .await;
    // A loopback connect is a few tens of microseconds; a connect is part of a connection.
    assert!(
        p99_connect > 0.0 && p99_connect <= ceiling,
        "p99 connect time {p99_connect} s (ceiling {ceiling} s)"
    );

    // Families without samples of their own reach Prometheus too.
    let build = prometheus
        .query(r#"splicer_build_info{job="splicer"}"#)
        .await
        .expect("query build_info");
    assert_eq!(single_finite(&build), Some(1.0), "{build:?}");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    let fds = prometheus
        .query(r#"process_open_fds{job="splicer"} / process_max_fds{job="splicer"}"#)
        .await
        .expect("query fds");
    assert!(
        single_finite(&fds).is_some_and(|r| r > 0.0 && r < 1.0),
        "{fds:?}"
    );

    drop(prometheus);
    assert!(splicer.shutdown().await);
}
