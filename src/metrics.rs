//! `GET /metrics`: every metric family splicer exports, named in one place, and the collector
//! that reads them from the live pools, backends and listeners at scrape time.
//!
//! Nothing here touches the data path: the values are the atomics that connections and pool
//! supervisors already keep, and a scrape only loads them. The registry is built per scrape
//! around one [`Collector`], so there is no global and nothing to keep in step with reloads: a
//! pool or backend removed by a reload simply stops appearing.
//!
//! Durations come from [`crate::histogram`], the fixed-bucket atomics that connections and
//! health checks record into (a few relaxed adds each); [`process`] reads the standard
//! `process_*` figures from `/proc/self` when scraped. What to read comes in a [`Scrape`] that
//! the app fills, so this module depends on the pools and listeners, never on the app.
//!
//! Adding a family is a constant below (name, help, label names — the label count is part of its
//! type, so a sample with the wrong number of labels does not compile) and one `encode` call in
//! `Scrape::encode`.

pub mod process;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::net::connect::ConnectFailure;
use crate::pool::{Backend, BackendState, Pool, PoolSnapshot};
use crate::proxy::{ListenerCtx, RefusedReason};

use self::process::ProcessStats;

/// The commit splicer was built from (`git rev-parse --short HEAD` in `build.rs`), or
/// `unknown` when it was built outside a git checkout.
pub const GIT_COMMIT: &str = match option_env!("SPLICER_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Content type of [`render`]'s output: prometheus-client's text encoder writes OpenMetrics 1.0.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text for `GET /metrics`, from what `scrape` read.
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail and every family below is well-formed by construction, so
    // an error here is a bug; the truncated text (no `# EOF`) makes the scrape fail loudly.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The families. Counter names omit `_total`: the encoder appends it to every counter sample.

const BACKEND_UP: Gauges<2> = Gauges {
    name: "splicer_backend_up",
    help: "1 if the backend is up (passing health checks and taking new connections), else 0.",
    labels: ["pool", "backend"],
};

const BACKEND_STATE: Gauges<3> = Gauges {
    name: "splicer_backend_state",
    help: "1 for the backend's current state (up, down, draining or disabled), 0 for the others.",
    labels: ["pool", "backend", "state"],
};

const BACKEND_ACTIVE_CONNECTIONS: Gauges<2> = Gauges {
    name: "splicer_backend_active_connections",
    help: "Proxied connections to the backend open now.",
    labels: ["pool", "backend"],
};

const BACKEND_CONNECTIONS: Counters<2> = Counters {
    name: "splicer_backend_connections",
    help: "Proxied connections to the backend ever established.",
    labels: ["pool", "backend"],
};

const BACKEND_CONNECT_FAILURES: Counters<3> = Counters {
    name: "splicer_backend_connect_failures",
    help: "Failed connects to the backend for client connections (health checks not counted), by reason.",
    labels: ["pool", "backend", "reason"],
};

const BACKEND_BYTES: Counters<3> = Counters {
    name: "splicer_backend_bytes",
    help: "Bytes proxied through the backend's connections, by direction.",
    labels: ["pool", "backend", "direction"],
};

const BACKEND_SERVICE_UP: Gauges<3> = Gauges {
    name: "splicer_backend_service_up",
    help: "1 if the backend's last health check reported the service healthy, else 0.",
    labels: ["pool", "backend", "service"],
};

const HEALTH_CHECKS: Counters<3> = Counters {
    name: "splicer_health_checks",
    help: "Health checks of the backend, by result.",
    labels: ["pool", "backend", "result"],
};

const HEALTH_CHECK_DURATION: Histograms<2> = Histograms {
    name: "splicer_health_check_duration_seconds",
    unit: Unit::Seconds,
    help: "Time health checks of the backend took, passed or failed.",
    labels: ["pool", "backend"],
};

const BACKEND_CONNECT_DURATION: Histograms<2> = Histograms {
    name: "splicer_backend_connect_duration_seconds",
    unit: Unit::Seconds,
    help: "Time successful TCP connects to the backend took, for client connections.",
    labels: ["pool", "backend"],
};

const LISTENER_CONNECTIONS: Counters<1> = Counters {
    name: "splicer_listener_connections",
    help: "Client connections the listener ever accepted.",
    labels: ["listener"],
};

const LISTENER_ACTIVE_CONNECTIONS: Gauges<1> = Gauges {
    name: "splicer_listener_active_connections",
    help: "Client connections of the listener open now.",
    labels: ["listener"],
};

const LISTENER_MAX_CONNECTIONS: Gauges<1> = Gauges {
    name: "splicer_listener_max_connections",
    help: "The listener's max_connections: at this many open connections it stops accepting (0 = unlimited).",
    labels: ["listener"],
};

const LISTENER_CONNECTION_DURATION: Histograms<1> = Histograms {
    name: "splicer_listener_connection_duration_seconds",
    unit: Unit::Seconds,
    help: "How long the listener's client connections lasted, from accept to close, however they ended.",
    labels: ["listener"],
};

const LISTENER_REFUSED: Counters<2> = Counters {
    name: "splicer_listener_refused",
    help: "Client connections refused by the listener's edge protection: denied (allow/deny), client_limit (per_client_max_connections), client_rate (per_client_rate).",
    labels: ["listener", "reason"],
};

const LISTENER_LOCAL_ERRORS: Counters<1> = Counters {
    name: "splicer_listener_local_errors",
    help: "Client connections closed because this machine was out of file descriptors or memory when connecting to a backend (end=local_resources); no backend is blamed for them.",
    labels: ["listener"],
};

const LISTENER_CLIENT_TABLE: Gauges<1> = Gauges {
    name: "splicer_listener_client_table_entries",
    help:
        "Clients the listener's per-client table remembers now (at most runtime.client_table_size).",
    labels: ["listener"],
};

const POOL_FAIL_OPEN: Gauges<1> = Gauges {
    name: "splicer_pool_fail_open",
    help: "1 while the pool has no up backend and spreads connections over its down ones (fail_open), else 0.",
    labels: ["pool"],
};

const CLUSTER_HEALTH_UP: Gauges<1> = Gauges {
    name: "splicer_cluster_health_up",
    help: "1 if the pool's last cluster-wide health check (cluster_health) passed, else 0.",
    labels: ["pool"],
};

const POOL_SHARED_OUTAGE: Gauges<2> = Gauges {
    name: "splicer_pool_shared_outage",
    help: "1 while the shared dependency fails across the pool, so backends failing only on it stay up, else 0.",
    labels: ["pool", "service"],
};

const CONFIG_RELOADS: Counters<1> = Counters {
    name: "splicer_config_reloads",
    help: "Configuration reloads, by result.",
    labels: ["result"],
};

const DISCOVERY_FAILURES: Counters<1> = Counters {
    name: "splicer_discovery_failures",
    help: "DNS resolutions of a pool's discover name that failed; the last known members stayed.",
    labels: ["pool"],
};

const ACCESS_LOG_DROPPED: Counters<0> = Counters {
    name: "splicer_access_log_dropped",
    help: "Access-log lines dropped because the log sink could not keep up (connections never wait for the log).",
    labels: [],
};

const STATE_FILE_ERRORS: Counters<0> = Counters {
    name: "splicer_state_file_errors",
    help: "Reads and writes of runtime.state_file that failed (each logged with the path and the reason).",
    labels: [],
};

const UPGRADES: Counters<1> = Counters {
    name: "splicer_upgrades",
    help:
        "Binary upgrades started by this process, by result (ok: a new process took the sockets).",
    labels: ["result"],
};

const BUILD_INFO: Gauges<2> = Gauges {
    name: "splicer_build_info",
    help: "Always 1; the labels say which version and commit this process runs.",
    labels: ["version", "commit"],
};

// The standard process families, named as every Prometheus client library names them so that
// existing dashboards and alerts work unchanged.

const PROCESS_OPEN_FDS: Gauges<0> = Gauges {
    name: "process_open_fds",
    help: "Number of open file descriptors.",
    labels: [],
};

const PROCESS_MAX_FDS: Gauges<0> = Gauges {
    name: "process_max_fds",
    help: "Maximum number of open file descriptors (the soft RLIMIT_NOFILE).",
    labels: [],
};

const PROCESS_RESIDENT_MEMORY: Gauges<0> = Gauges {
    name: "process_resident_memory_bytes",
    help: "Resident memory size in bytes.",
    labels: [],
};

const PROCESS_CPU: Counters<0> = Counters {
    name: "process_cpu_seconds",
    help: "Total user and system CPU time spent in seconds.",
    labels: [],
};

const PROCESS_START_TIME: Gauges<0> = Gauges {
    name: "process_start_time_seconds",
    help: "Start time of the process since unix epoch in seconds.",
    labels: [],
};

/// Every backend state, in the order `splicer_backend_state` lists them.
const BACKEND_STATES: [BackendState; 4] = [
    BackendState::Up,
    BackendState::Down,
    BackendState::Draining,
    BackendState::Disabled,
];

/// Fails to compile when `BackendState` gains a variant, so [`BACKEND_STATES`] gets updated.
const _: fn(BackendState) = |s| match s {
    BackendState::Up | BackendState::Down | BackendState::Draining | BackendState::Disabled => {}
};

// ---------------------------------------------------------------------------------------------
// The collector.

/// What one scrape reads: the pools and listeners serving now, and the process-wide counts.
/// Filled by the app (`AppState::scrape`), so this module needs nothing of the app's.
#[derive(Debug)]
pub struct Scrape {
    /// Pools serving now (and retired ones still draining).
    pub pools: Vec<Arc<Pool>>,
    /// Listeners serving now.
    pub listeners: Vec<Arc<ListenerCtx>>,
    /// Config reloads: (ok, failed).
    pub reloads: (u64, u64),
    /// Access-log lines dropped.
    pub access_log_dropped: u64,
    /// State-file read or write errors.
    pub state_file_errors: u64,
    /// Binary upgrades: (ok, failed).
    pub upgrades: (u64, u64),
    /// This process's own figures (`process_*`), read from /proc now.
    pub process: ProcessStats,
}

/// One backend with its label values worked out once per scrape.
struct BackendRow {
    pool: Arc<str>,
    /// `ip:port`, IPv6 in brackets (`SocketAddr`'s `Display`).
    address: String,
    backend: Arc<Backend>,
    /// From the same snapshot as the pool's other rows.
    state: BackendState,
}

impl BackendRow {
    fn labels(&self) -> [&str; 2] {
        [&self.pool, &self.address]
    }

    fn labels_and<'a>(&'a self, extra: &'a str) -> [&'a str; 3] {
        [&self.pool, &self.address, extra]
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // One snapshot per pool for the whole scrape: states, fail-open and outage agree.
        let snapshots: Vec<(&Arc<Pool>, Arc<PoolSnapshot>)> =
            self.pools.iter().map(|p| (p, p.snapshot())).collect();
        let backends: Vec<BackendRow> = snapshots
            .iter()
            .flat_map(|(pool, s)| {
                s.members
                    .iter()
                    .map(|m| BackendRow {
                        pool: Arc::clone(&pool.name),
                        address: m.backend.address.to_string(),
                        backend: Arc::clone(&m.backend),
                        state: m.state,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();

        BACKEND_UP.encode(
            &mut enc,
            backends.iter().map(|r| {
                let up = r.state == BackendState::Up;
                (r.labels(), u64::from(up))
            }),
        )?;
        BACKEND_STATE.encode(
            &mut enc,
            backends.iter().flat_map(|r| {
                let now = r.state;
                BACKEND_STATES
                    .iter()
                    .map(move |&s| (r.labels_and(s.as_str()), u64::from(s == now)))
            }),
        )?;
        BACKEND_ACTIVE_CONNECTIONS.encode(
            &mut enc,
            backends
                .iter()
                .map(|r| (r.labels(), r.backend.active_connections())),
        )?;
        BACKEND_CONNECTIONS.encode(
            &mut enc,
            backends
                .iter()
                .map(|r| (r.labels(), r.backend.total_connections())),
        )?;
        BACKEND_CONNECT_FAILURES.encode(
            &mut enc,
            backends.iter().flat_map(|r| {
                ConnectFailure::ALL.iter().map(move |&reason| {
                    let n = r.backend.connect_failures_for(reason);
                    (r.labels_and(reason.as_str()), n)
                })
            }),
        )?;
        BACKEND_BYTES.encode(
            &mut enc,
            backends.iter().flat_map(|r| {
                [
                    (r.labels_and("to_backend"), r.backend.bytes_to_backend()),
                    (r.labels_and("to_client"), r.backend.bytes_to_client()),
                ]
            }),
        )?;
        BACKEND_CONNECT_DURATION.encode(
            &mut enc,
            backends.iter().map(|r| {
                let (sum, count, cumulative) = r.backend.connect_durations().snapshot();
                (r.labels(), sum, count, cumulative)
            }),
        )?;
        // Per-service results of every check whose body was a Quay health document.
        let services: Vec<(&BackendRow, String, bool)> = backends
            .iter()
            .flat_map(|r| {
                let services = r
                    .backend
                    .last_check()
                    .and_then(|c| c.services)
                    .unwrap_or_default();
                services.into_iter().map(move |(name, up)| (r, name, up))
            })
            .collect();
        BACKEND_SERVICE_UP.encode(
            &mut enc,
            services
                .iter()
                .map(|(r, name, up)| (r.labels_and(name), u64::from(*up))),
        )?;
        HEALTH_CHECKS.encode(
            &mut enc,
            backends.iter().flat_map(|r| {
                let (passed, failed) = r.backend.checks();
                [
                    (r.labels_and("pass"), passed),
                    (r.labels_and("fail"), failed),
                ]
            }),
        )?;
        HEALTH_CHECK_DURATION.encode(
            &mut enc,
            backends.iter().map(|r| {
                let (sum, count, cumulative) = r.backend.check_durations().snapshot();
                (r.labels(), sum, count, cumulative)
            }),
        )?;
        LISTENER_CONNECTIONS.encode(
            &mut enc,
            self.listeners
                .iter()
                .map(|l| ([l.config.name.as_str()], l.total_connections())),
        )?;
        LISTENER_ACTIVE_CONNECTIONS.encode(
            &mut enc,
            self.listeners
                .iter()
                .map(|l| ([l.config.name.as_str()], l.active_connections())),
        )?;
        LISTENER_MAX_CONNECTIONS.encode(
            &mut enc,
            self.listeners
                .iter()
                .map(|l| ([l.config.name.as_str()], l.config.max_connections as u64)),
        )?;
        LISTENER_CONNECTION_DURATION.encode(
            &mut enc,
            self.listeners.iter().map(|l| {
                let (sum, count, cumulative) = l.connection_durations().snapshot();
                ([l.config.name.as_str()], sum, count, cumulative)
            }),
        )?;
        LISTENER_REFUSED.encode(
            &mut enc,
            self.listeners.iter().flat_map(|l| {
                RefusedReason::ALL
                    .iter()
                    .map(move |r| ([l.config.name.as_str(), r.as_str()], l.refused(*r)))
            }),
        )?;
        LISTENER_LOCAL_ERRORS.encode(
            &mut enc,
            self.listeners
                .iter()
                .map(|l| ([l.config.name.as_str()], l.local_errors())),
        )?;
        LISTENER_CLIENT_TABLE.encode(
            &mut enc,
            self.listeners
                .iter()
                .map(|l| ([l.config.name.as_str()], l.client_table_len() as u64)),
        )?;
        POOL_FAIL_OPEN.encode(
            &mut enc,
            snapshots
                .iter()
                .map(|(p, s)| ([&*p.name], u64::from(s.fail_open))),
        )?;
        let cluster: Vec<(&Arc<Pool>, bool)> = snapshots
            .iter()
            .filter_map(|(p, s)| s.cluster_health.as_ref().map(|c| (*p, c.ok)))
            .collect();
        CLUSTER_HEALTH_UP.encode(
            &mut enc,
            cluster.iter().map(|(p, ok)| ([&*p.name], u64::from(*ok))),
        )?;
        // 0 or 1 for every service in shared_dependencies.
        let outages: Vec<(&Arc<Pool>, String, bool)> = snapshots
            .iter()
            .flat_map(|(p, s)| {
                let now = &s.shared_outage;
                s.config()
                    .health
                    .shared_dependencies
                    .iter()
                    .map(|s| (*p, s.clone(), now.contains(s)))
                    .collect::<Vec<_>>()
            })
            .collect();
        POOL_SHARED_OUTAGE.encode(
            &mut enc,
            outages
                .iter()
                .map(|(p, s, on)| ([&*p.name, s.as_str()], u64::from(*on))),
        )?;
        let (ok, failed) = self.reloads;
        CONFIG_RELOADS.encode(&mut enc, [(["ok"], ok), (["error"], failed)])?;
        DISCOVERY_FAILURES.encode(
            &mut enc,
            self.pools
                .iter()
                .filter(|p| p.config().discover.is_some())
                .map(|p| ([&*p.name], p.discovery_failures())),
        )?;
        ACCESS_LOG_DROPPED.encode(&mut enc, [([], self.access_log_dropped)])?;
        STATE_FILE_ERRORS.encode(&mut enc, [([], self.state_file_errors)])?;
        let (ok, failed) = self.upgrades;
        UPGRADES.encode(&mut enc, [(["ok"], ok), (["error"], failed)])?;
        BUILD_INFO.encode(&mut enc, [([env!("CARGO_PKG_VERSION"), GIT_COMMIT], 1u64)])?;
        // A figure /proc could not give is left out; its HELP and TYPE still print.
        let p = &self.process;
        PROCESS_OPEN_FDS.encode(&mut enc, p.open_fds.map(|v| ([], v)))?;
        PROCESS_MAX_FDS.encode(&mut enc, p.max_fds.map(|v| ([], v)))?;
        PROCESS_RESIDENT_MEMORY.encode(&mut enc, p.resident_memory_bytes.map(|v| ([], v)))?;
        PROCESS_CPU.encode(&mut enc, p.cpu_seconds.map(|v| ([], v)))?;
        PROCESS_START_TIME.encode(&mut enc, p.start_time_seconds.map(|v| ([], v)))?;
        Ok(())
    }
}

#[cfg(test)]
/// Samples for a family that has no source yet: its HELP and TYPE lines still print.
fn no_samples<'a, const N: usize, V>() -> std::iter::Empty<([&'a str; N], V)> {
    std::iter::empty()
}

// ---------------------------------------------------------------------------------------------
// Family descriptions and their encoding.

/// A gauge family with `N` labels.
struct Gauges<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
}

impl<const N: usize> Gauges<N> {
    /// Writes HELP, TYPE and one sample per (label values, value).
    fn encode<'a, V: EncodeGaugeValue + fmt::Debug>(
        &self,
        enc: &mut DescriptorEncoder,
        samples: impl IntoIterator<Item = ([&'a str; N], V)>,
    ) -> fmt::Result {
        let mut family = enc.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (values, v) in samples {
            let labels = label_set(&self.labels, values);
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A counter family with `N` labels; `name` lacks the `_total` the encoder appends.
struct Counters<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
}

impl<const N: usize> Counters<N> {
    /// Writes HELP, TYPE and one `_total` sample per (label values, value).
    fn encode<'a, V: EncodeCounterValue + fmt::Debug>(
        &self,
        enc: &mut DescriptorEncoder,
        samples: impl IntoIterator<Item = ([&'a str; N], V)>,
    ) -> fmt::Result {
        let mut family = enc.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (values, v) in samples {
            let labels = label_set(&self.labels, values);
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A histogram family with `N` labels whose name ends in `_` + `unit`.
struct Histograms<const N: usize> {
    name: &'static str,
    unit: Unit,
    help: &'static str,
    labels: [&'static str; N],
}

impl<const N: usize> Histograms<N> {
    /// Writes HELP, TYPE, UNIT and per (label values, sum, count, cumulative buckets) the
    /// `_sum`, `_count` and `_bucket` samples, `+Inf` included.
    fn encode<'a>(
        &self,
        enc: &mut DescriptorEncoder,
        samples: impl IntoIterator<Item = ([&'a str; N], f64, u64, Vec<(f64, u64)>)>,
    ) -> fmt::Result {
        // The encoder appends the unit to the name itself (and checks nothing), so hand it the
        // stem; the full name stays above where a grep for it finds it.
        let suffix = self.unit.as_str();
        let stem = self
            .name
            .strip_suffix(suffix)
            .and_then(|s| s.strip_suffix('_'))
            .ok_or(fmt::Error)?;
        let mut family =
            enc.encode_descriptor(stem, self.help, Some(&self.unit), MetricType::Histogram)?;
        for (values, sum, count, cumulative) in samples {
            let labels = label_set(&self.labels, values);
            let buckets = per_bucket(count, &cumulative);
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Pairs label names with values, in the order the family declares them.
fn label_set<'a, const N: usize>(
    names: &[&'static str; N],
    values: [&'a str; N],
) -> [(&'static str, &'a str); N] {
    let mut i = 0;
    values.map(|v| {
        let pair = (names[i], v);
        i += 1;
        pair
    })
}

/// Turns cumulative counts per upper bound (as `Histogram::snapshot` gives them) into the
/// per-bucket counts prometheus-client's encoder sums up again, with a final `+Inf` bucket
/// holding what lies above the last bound so the `+Inf` sample equals `count`.
fn per_bucket(count: u64, cumulative: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut out = Vec::with_capacity(cumulative.len() + 1);
    for &(bound, upto) in cumulative {
        // Saturating: a snapshot racing an observation must not wrap into a huge bucket.
        out.push((bound, upto.saturating_sub(below)));
        below = below.max(upto);
    }
    out.push((f64::INFINITY, count.saturating_sub(below)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_bucket_undoes_cumulation_and_adds_inf() {
        let got = per_bucket(7, &[(0.1, 1), (0.5, 1), (1.0, 4)]);
        assert_eq!(got, vec![(0.1, 1), (0.5, 0), (1.0, 3), (f64::INFINITY, 3)]);
    }

    #[test]
    fn per_bucket_with_no_bounds_is_just_inf() {
        assert_eq!(per_bucket(2, &[]), vec![(f64::INFINITY, 2)]);
    }

    #[test]
    fn per_bucket_never_wraps_on_inconsistent_input() {
        let got = per_bucket(1, &[(0.1, 3), (0.5, 2)]);
        assert_eq!(got, vec![(0.1, 3), (0.5, 0), (f64::INFINITY, 0)]);
    }

    #[test]
    fn label_set_pairs_names_with_values_in_order() {
        let got = label_set(&["pool", "backend"], ["quay", "[::1]:443"]);
        assert_eq!(got, [("pool", "quay"), ("backend", "[::1]:443")]);
    }

    /// Encodes one family through a registry, the way `render` does.
    fn encode_one(
        f: impl Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
    ) -> String {
        struct One<F>(F);
        impl<F> fmt::Debug for One<F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("One")
            }
        }
        impl<F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static> Collector for One<F> {
            fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
                (self.0)(&mut enc)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(f)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        out
    }

    #[test]
    fn counters_get_total_and_escaped_labels() {
        let out = encode_one(|enc| {
            BACKEND_CONNECTIONS.encode(enc, [(["a\"b\\c\nd", "[::1]:443"], 3u64)])
        });
        assert_eq!(
            out,
            "# HELP splicer_backend_connections Proxied connections to the backend ever established.\n\
             # TYPE splicer_backend_connections counter\n\
             splicer_backend_connections_total{pool=\"a\\\"b\\\\c\\nd\",backend=\"[::1]:443\"} 3\n\
             # EOF\n"
        );
    }

    #[test]
    fn empty_families_still_print_help_and_type() {
        let out = encode_one(|enc| POOL_SHARED_OUTAGE.encode(enc, no_samples::<2, u64>()));
        assert_eq!(
            out,
            format!(
                "# HELP splicer_pool_shared_outage {}\n# TYPE splicer_pool_shared_outage gauge\n# EOF\n",
                POOL_SHARED_OUTAGE.help
            )
        );
    }

    #[test]
    fn histograms_keep_their_full_name_and_end_in_inf() {
        let out = encode_one(|enc| {
            HEALTH_CHECK_DURATION.encode(
                enc,
                [(["p", "10.0.0.1:443"], 0.5, 3, vec![(0.1, 1), (1.0, 2)])],
            )
        });
        let name = "splicer_health_check_duration_seconds";
        assert!(out.contains(&format!("# TYPE {name} histogram\n")), "{out}");
        assert!(out.contains(&format!("# UNIT {name} seconds\n")), "{out}");
        assert!(
            out.contains(&format!(
                "{name}_count{{pool=\"p\",backend=\"10.0.0.1:443\"}} 3\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "{name}_bucket{{le=\"1.0\",pool=\"p\",backend=\"10.0.0.1:443\"}} 2\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "{name}_bucket{{le=\"+Inf\",pool=\"p\",backend=\"10.0.0.1:443\"}} 3\n"
            )),
            "{out}"
        );
    }

    #[test]
    fn histogram_names_end_in_their_unit() {
        for (name, unit) in [
            (HEALTH_CHECK_DURATION.name, &HEALTH_CHECK_DURATION.unit),
            (
                BACKEND_CONNECT_DURATION.name,
                &BACKEND_CONNECT_DURATION.unit,
            ),
            (
                LISTENER_CONNECTION_DURATION.name,
                &LISTENER_CONNECTION_DURATION.unit,
            ),
        ] {
            assert!(name.ends_with(&format!("_{}", unit.as_str())), "{name}");
        }
    }

    #[test]
    fn process_figures_that_cannot_be_read_are_left_out() {
        let out = encode_one(|enc| {
            let p = ProcessStats::default();
            PROCESS_OPEN_FDS.encode(enc, p.open_fds.map(|v| ([], v)))?;
            PROCESS_CPU.encode(enc, Some(([], 1.5f64)))
        });
        assert!(
            !out.lines().any(|l| l.starts_with("process_open_fds ")),
            "{out}"
        );
        assert!(out.contains("# TYPE process_open_fds gauge\n"), "{out}");
        assert!(out.contains("process_cpu_seconds_total 1.5\n"), "{out}");
    }
}
