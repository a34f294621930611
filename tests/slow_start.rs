//! `slow_start`: a backend that comes back up gets a share of new connections that grows from
//! about a tenth of its weight to all of it over the configured time, instead of its full share
//! at once (which would flood a cold cache or JIT).

mod common;

use std::time::{Duration, Instant};

use common::{backend_state, backends_toml, control, rig, start_splicer, wait_until, which_node};

/// Clients sampling in parallel, so every window holds enough picks for a share to mean something.
const SAMPLERS: usize = 4;

/// Node 2's share of the picks that finished in `[from, to)` seconds after it came up, and how
/// many picks that was.
fn share(samples: &[(f64, bool)], from: f64, to: f64) -> (f64, usize) {
    let window: Vec<bool> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, node2)| *node2)
        .collect();
    let n = window.len();
    let hits = window.iter().filter(|b| **b).count();
    (if n == 0 { 0.0 } else { hits as f64 / n as f64 }, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_that_comes_back_ramps_up_its_share() {
    let rig = rig(2).await;
    let nodes = rig.node_addrs();
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "quay"

[[pool]]
name = "quay"
balance = "round_robin"
slow_start = "3s"
backends = {}

[pool.health]
check = "https"
interval = "100ms"
timeout = "80ms"
rise = 1
fall = 1
"#,
        backends_toml(&nodes)
    ))
    .await;
    let admin = splicer.admin;
    for &n in &nodes {
        assert_eq!(backend_state(admin, "quay", n).await, "up");
    }
    // Everyone came up together at start-up: no ramp, an even split.
    let mut first = [0usize; 2];
    for _ in 0..20 {
        let node = which_node(splicer.addr).await.expect("request");
        first[usize::from(node == "node-2")] += 1;
    }
    assert!(
        (8..=12).contains(&first[1]),
        "start-up round robin should split evenly: {first:?}"
    );

    let (code, body) = control(&rig, "/nodes/2/health", "503").await;
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(10), "node 2 down", || async {
        backend_state(admin, "quay", nodes[1]).await == "down"
    })
    .await;
    let (code, body) = control(&rig, "/nodes/2/health", "200").await;
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(10), "node 2 up again", || async {
        backend_state(admin, "quay", nodes[1]).await == "up"
    })
    .await;
    let up_at = Instant::now();

    // Sample until 4.5 s after it came up.
    let end = Duration::from_millis(4500);
    let mut tasks = Vec::new();
    for _ in 0..SAMPLERS {
        let addr = splicer.addr;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while up_at.elapsed() < end {
                let node = which_node(addr).await.expect("request during slow start");
                samples.push((up_at.elapsed().as_secs_f64(), node == "node-2"));
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("sampler"));
    }

    let windows = [(0.0, 0.5), (1.0, 1.5), (2.5, 3.0), (3.5, 4.5)];
    let shares: Vec<(f64, usize)> = windows
        .iter()
        .map(|&(a, b)| share(&samples, a, b))
        .collect();
    let report = format!(
        "node 2's share per window after it came up: {:?}",
        windows
            .iter()
            .zip(&shares)
            .map(|((a, b), (s, n))| format!("{a}-{b}s: {:.0}% of {n}", s * 100.0))
            .collect::<Vec<_>>()
    );
    for (_, n) in &shares {
        assert!(*n >= 20, "too few samples to judge: {report}");
    }
    let [w0, w1, w2, w3] = [shares[0].0, shares[1].0, shares[2].0, shares[3].0];
    // Linear from 1/10 of its weight: ~9% → ~20% of picks in the first half second,
    // ~30-35% around 1.25 s, ~45-50% near 3 s, then an even split.
    assert!(w0 <= 0.25, "no ramp: {report}");
    assert!(
        w0 > 0.0,
        "the ramp starts from a tenth, not from nothing: {report}"
    );
    assert!(
        (0.15..=0.45).contains(&w1),
        "mid-ramp share out of bounds: {report}"
    );
    assert!(w2 >= 0.35, "the ramp did not progress: {report}");
    assert!(
        (0.40..=0.60).contains(&w3),
        "after slow_start the split should be even: {report}"
    );
    assert!(
        w0 < w1 && w1 < w3 && w0 + 0.15 < w2,
        "the share should grow: {report}"
    );
    eprintln!("{report}");
}
