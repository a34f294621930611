//! `/metrics` (docs/architecture.md §5 "Metrics"): the text splicer renders passes a strict OpenMetrics
//! parser written here (no crate, so the check does not share the encoder's assumptions), every
//! family of the contract is present with exactly its labels, and the counters agree with
//! traffic the test moved itself through real loopback sockets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{backends_toml, start_splicer, wait_until, Splicer, WAIT};
use exposition::{parse, Exposition};

/// A strict reader of the OpenMetrics 1.0 text format, limited to what splicer may emit: no
/// timestamps, no exemplars, every family introduced by HELP then TYPE (then UNIT).
mod exposition {
    use std::collections::{BTreeMap, BTreeSet};

    /// One sample line.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        /// Sample name (family name plus any suffix).
        pub name: String,
        /// Labels in the order written.
        pub labels: Vec<(String, String)>,
        /// Value.
        pub value: f64,
    }

    impl Sample {
        /// Value of label `name`.
        pub fn label(&self, name: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }

        /// Label names other than `le`, sorted.
        pub fn label_names(&self) -> Vec<&str> {
            let mut names: Vec<&str> = self
                .labels
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| *k != "le")
                .collect();
            names.sort_unstable();
            names
        }
    }

    /// One metric family with its descriptor lines and samples.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Family {
        /// Family name.
        pub name: String,
        /// `# TYPE` value.
        pub kind: String,
        /// `# HELP` text (unescaped).
        pub help: String,
        /// `# UNIT` value, if any.
        pub unit: Option<String>,
        /// Samples in order.
        pub samples: Vec<Sample>,
    }

    /// A whole exposition, families in order.
    #[derive(Debug)]
    pub struct Exposition {
        /// Families in the order written.
        pub families: Vec<Family>,
    }

    impl Exposition {
        /// The family called `name`.
        pub fn family(&self, name: &str) -> Option<&Family> {
            self.families.iter().find(|f| f.name == name)
        }

        /// Value of the sample `name` whose label set is exactly `labels` (any order).
        pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let want: BTreeSet<(&str, &str)> = labels.iter().copied().collect();
            self.families
                .iter()
                .flat_map(|f| &f.samples)
                .find(|s| {
                    s.name == name
                        && s.labels
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect::<BTreeSet<_>>()
                            == want
                })
                .map(|s| s.value)
        }
    }

    const TYPES: [&str; 8] = [
        "counter",
        "gauge",
        "histogram",
        "gaugehistogram",
        "stateset",
        "info",
        "summary",
        "unknown",
    ];

    /// Parses `text`, or says which line breaks which rule.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let body = text
            .strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .ok_or("the exposition does not end with `# EOF`")?;
        let mut families: Vec<Family> = Vec::new();
        let mut series = BTreeSet::new();
        for (i, line) in body.split_terminator('\n').enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
            if line == "# EOF" {
                return Err(at("`# EOF` before the end".into()));
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_metric_name(name).map_err(at)?;
                if families.iter().any(|f| f.name == name) {
                    return Err(at(format!("family {name} appears twice")));
                }
                let help = unescape(help, false).map_err(at)?;
                if help.trim().is_empty() {
                    return Err(at("empty HELP".into()));
                }
                families.push(Family {
                    name: name.to_string(),
                    kind: String::new(),
                    help,
                    unit: None,
                    samples: Vec::new(),
                });
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let family = families
                    .last_mut()
                    .filter(|f| f.kind.is_empty())
                    .ok_or_else(|| at("TYPE without a HELP right before it".into()))?;
                let (name, kind) = rest.split_once(' ').ok_or_else(|| at("no type".into()))?;
                if name != family.name {
                    return Err(at(format!(
                        "TYPE for {name} after HELP for {}",
                        family.name
                    )));
                }
                if !TYPES.contains(&kind) {
                    return Err(at(format!("unknown type {kind}")));
                }
                family.kind = kind.to_string();
            } else if let Some(rest) = line.strip_prefix("# UNIT ") {
                let family = families
                    .last_mut()
                    .filter(|f| !f.kind.is_empty() && f.unit.is_none() && f.samples.is_empty())
                    .ok_or_else(|| at("UNIT not right after its TYPE".into()))?;
                let (name, unit) = rest.split_once(' ').ok_or_else(|| at("no unit".into()))?;
                if name != family.name {
                    return Err(at(format!("UNIT for {name} in family {}", family.name)));
                }
                if unit.is_empty() || !name.ends_with(&format!("_{unit}")) {
                    return Err(at(format!("family name {name} does not end in _{unit}")));
                }
                family.unit = Some(unit.to_string());
            } else if line.starts_with('#') {
                return Err(at("unknown comment line".into()));
            } else {
                let sample = parse_sample(line).map_err(at)?;
                let family = families
                    .last_mut()
                    .filter(|f| !f.kind.is_empty())
                    .ok_or_else(|| at("sample before any TYPE".into()))?;
                check_sample_belongs(family, &sample).map_err(at)?;
                let mut key: Vec<(String, String)> = sample.labels.clone();
                key.sort();
                if !series.insert((sample.name.clone(), key)) {
                    return Err(at("duplicate series".into()));
                }
                family.samples.push(sample);
            }
        }
        for f in &families {
            if f.kind.is_empty() {
                return Err(format!("family {} has HELP but no TYPE", f.name));
            }
            if f.kind == "histogram" {
                check_histogram(f)?;
            }
        }
        Ok(Exposition { families })
    }

    fn is_name(s: &str, colons: bool) -> bool {
        let ok = |c: char, first: bool| {
            c.is_ascii_alphabetic()
                || c == '_'
                || (colons && c == ':')
                || (!first && c.is_ascii_digit())
        };
        let mut chars = s.chars();
        chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
    }

    fn check_metric_name(name: &str) -> Result<(), String> {
        if is_name(name, true) {
            Ok(())
        } else {
            Err(format!("invalid metric name {name:?}"))
        }
    }

    /// Undoes `\\`, `\n` and (in label values) `\"`; any other escape, or a bare `"` in a
    /// label value, is an error.
    fn unescape(s: &str, label_value: bool) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('"') => out.push('"'),
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                '"' if label_value => return Err("unescaped quote in a label value".into()),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    /// `[+-]?(digits[.digits][e[+-]digits] | .digits... | Inf | NaN)`.
    pub fn parse_float(s: &str) -> Result<f64, String> {
        let bad = || format!("invalid number {s:?}");
        let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
        let negative = s.starts_with('-');
        match unsigned {
            "Inf" => {
                return Ok(if negative {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                })
            }
            "NaN" if unsigned.len() == s.len() => return Ok(f64::NAN),
            _ => {}
        }
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e)),
            None => (unsigned, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |d: &str| d.chars().all(|c| c.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
            return Err(bad());
        }
        if let Some(e) = exponent {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            if e.is_empty() || !digits(e) {
                return Err(bad());
            }
        }
        s.parse().map_err(|_| bad())
    }

    /// `name{label="value",...} value` or `name value`, nothing else.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or("a sample needs a value after a space")?;
        let name = &line[..name_end];
        check_metric_name(name)?;
        let mut rest = &line[name_end..];
        let mut labels: Vec<(String, String)> = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                if !labels.is_empty() {
                    rest = rest
                        .strip_prefix(',')
                        .ok_or("labels must be separated by `,`")?;
                }
                let (key, after) = rest.split_once("=\"").ok_or("a label needs =\"value\"")?;
                if !is_name(key, false) || key.starts_with("__") {
                    return Err(format!("invalid label name {key:?}"));
                }
                if labels.iter().any(|(k, _)| k == key) {
                    return Err(format!("label {key} twice"));
                }
                // The value ends at the first quote not preceded by an escaping backslash.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or("unterminated label value")?;
                labels.push((key.to_string(), unescape(&after[..end], true)?));
                rest = &after[end + 1..];
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or("the value must follow one space")?;
        if value.contains(' ') {
            return Err("timestamps and exemplars are not expected".into());
        }
        Ok(Sample {
            name: name.to_string(),
            labels,
            value: parse_float(value)?,
        })
    }

    /// The sample's name is its family's name plus a suffix its type allows; `le` only on
    /// buckets; counters are not negative.
    fn check_sample_belongs(family: &Family, sample: &Sample) -> Result<(), String> {
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => {
                &["_bucket", "_sum", "_count", "_created", "_gsum", "_gcount"]
            }
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        let suffix = sample
            .name
            .strip_prefix(family.name.as_str())
            .filter(|s| allowed.contains(s))
            .ok_or_else(|| {
                format!(
                    "sample {} does not belong to {} family {}",
                    sample.name, family.kind, family.name
                )
            })?;
        let has_le = sample.label("le").is_some();
        if (suffix == "_bucket") != has_le {
            return Err("`le` must be on buckets and only there".into());
        }
        if let Some(le) = sample.label("le") {
            parse_float(le)?;
        }
        if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err("negative or NaN counter".into());
        }
        Ok(())
    }

    /// One histogram series: its samples, gathered across lines.
    #[derive(Default)]
    struct Series {
        /// (le, value) in the order written.
        buckets: Vec<(f64, f64)>,
        count: Option<f64>,
        has_sum: bool,
    }

    /// Per label set: bounds increase, counts are cumulative, the last bucket is `+Inf` and
    /// equals `_count`, and `_sum` is there.
    fn check_histogram(f: &Family) -> Result<(), String> {
        let mut groups: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
        for s in &f.samples {
            let mut key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            key.sort();
            let group = groups.entry(key).or_default();
            match s.name.strip_prefix(f.name.as_str()) {
                Some("_bucket") => {
                    let le = parse_float(s.label("le").unwrap_or_default())?;
                    group.buckets.push((le, s.value));
                }
                Some("_count") => group.count = Some(s.value),
                Some("_sum") => group.has_sum = true,
                _ => {}
            }
        }
        for (
            labels,
            Series {
                buckets,
                count,
                has_sum,
            },
        ) in groups
        {
            let at = |e: &str| format!("histogram {} {labels:?}: {e}", f.name);
            if !has_sum {
                return Err(at("no _sum"));
            }
            let count = count.ok_or_else(|| at("no _count"))?;
            for pair in buckets.windows(2) {
                if pair[1].0 <= pair[0].0 {
                    return Err(at("bucket bounds do not increase"));
                }
                if pair[1].1 < pair[0].1 {
                    return Err(at("bucket counts are not cumulative"));
                }
            }
            match buckets.last() {
                Some(&(le, n)) if le == f64::INFINITY && n == count => {}
                Some(&(le, _)) if le == f64::INFINITY => return Err(at("+Inf bucket != _count")),
                _ => return Err(at("no +Inf bucket last")),
            }
        }
        Ok(())
    }
}

#[test]
fn parser_accepts_a_well_formed_exposition() {
    let text = "# HELP a_b Things, with a \\\\ and a \\n.\n\
                # TYPE a_b counter\n\
                a_b_total{x=\"q\\\"uote\\\\\\n\",y=\"[::1]:443\"} 3\n\
                a_b_total{x=\"other\",y=\"\"} 0\n\
                # HELP h Durations.\n\
                # TYPE h_seconds histogram\n";
    // The family name must match between HELP and TYPE: this one does not.
    assert!(parse(&format!("{text}# EOF\n")).is_err());

    let text = "# HELP a_b Things.\n\
                # TYPE a_b counter\n\
                a_b_total{x=\"q\\\"uote\\\\\\n\",y=\"[::1]:443\"} 3\n\
                # HELP h_seconds Durations.\n\
                # TYPE h_seconds histogram\n\
                # UNIT h_seconds seconds\n\
                h_seconds_sum{p=\"1\"} 0.5\n\
                h_seconds_count{p=\"1\"} 2\n\
                h_seconds_bucket{le=\"0.1\",p=\"1\"} 1\n\
                h_seconds_bucket{le=\"+Inf\",p=\"1\"} 2\n\
                # HELP g Empty.\n\
                # TYPE g gauge\n\
                # EOF\n";
    let e = parse(text).expect("well-formed");
    assert_eq!(e.families.len(), 3);
    assert_eq!(
        e.value("a_b_total", &[("y", "[::1]:443"), ("x", "q\"uote\\\n")]),
        Some(3.0)
    );
    assert_eq!(
        e.family("h_seconds").and_then(|f| f.unit.as_deref()),
        Some("seconds")
    );
    assert!(e.family("g").is_some_and(|f| f.samples.is_empty()));
}

#[test]
fn parser_rejects_what_openmetrics_forbids() {
    let head = "# HELP c Things.\n# TYPE c counter\n";
    let hist = "# HELP h Durations.\n# TYPE h histogram\n";
    let cases: &[(&str, String)] = &[
        ("no EOF", format!("{head}c_total 1\n")),
        ("EOF twice", format!("{head}# EOF\nc_total 1\n# EOF\n")),
        ("blank line", format!("{head}\nc_total 1\n# EOF\n")),
        ("sample before TYPE", "c_total 1\n# EOF\n".to_string()),
        ("TYPE without HELP", "# TYPE c counter\nc_total 1\n# EOF\n".to_string()),
        ("counter without _total", format!("{head}c 1\n# EOF\n")),
        ("sample of another family", format!("{head}d_total 1\n# EOF\n")),
        ("bad metric name", "# HELP 1c x\n# TYPE 1c gauge\n# EOF\n".to_string()),
        ("bad label name", format!("{head}c_total{{a-b=\"1\"}} 1\n# EOF\n")),
        ("bad escape", format!("{head}c_total{{a=\"\\t\"}} 1\n# EOF\n")),
        ("unterminated value", format!("{head}c_total{{a=\"1}} 1\n# EOF\n")),
        ("trailing comma", format!("{head}c_total{{a=\"1\",}} 1\n# EOF\n")),
        ("two spaces", format!("{head}c_total  1\n# EOF\n")),
        ("timestamp", format!("{head}c_total 1 123\n# EOF\n")),
        ("not a number", format!("{head}c_total one\n# EOF\n")),
        ("rust-only float", format!("{head}c_total inf\n# EOF\n")),
        ("negative counter", format!("{head}c_total -1\n# EOF\n")),
        ("duplicate series", format!("{head}c_total{{a=\"1\",b=\"2\"}} 1\nc_total{{b=\"2\",a=\"1\"}} 1\n# EOF\n")),
        ("duplicate label", format!("{head}c_total{{a=\"1\",a=\"2\"}} 1\n# EOF\n")),
        ("family twice", format!("{head}{head}# EOF\n")),
        ("unknown type", "# HELP c x\n# TYPE c thing\n# EOF\n".to_string()),
        ("unit not a suffix", "# HELP c x\n# TYPE c gauge\n# UNIT c seconds\n# EOF\n".to_string()),
        ("no +Inf", format!("{hist}h_sum 1\nh_count 1\nh_bucket{{le=\"1.0\"}} 1\n# EOF\n")),
        ("+Inf != count", format!("{hist}h_sum 1\nh_count 2\nh_bucket{{le=\"+Inf\"}} 1\n# EOF\n")),
        (
            "not cumulative",
            format!("{hist}h_sum 1\nh_count 1\nh_bucket{{le=\"1.0\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\n# EOF\n"),
        ),
        ("le off a bucket", format!("{hist}h_sum{{le=\"1\"}} 1\nh_count 0\nh_bucket{{le=\"+Inf\"}} 0\n# EOF\n")),
    ];
    for (what, text) in cases {
        assert!(parse(text).is_err(), "accepted ({what}):\n{text}");
    }
}

/// Every family of the contract: (name, type, label names of its samples).
const FAMILIES: [(&str, &str, &[&str]); 31] = [
    ("splicer_backend_up", "gauge", &["pool", "backend"]),
    (
        "splicer_backend_state",
        "gauge",
        &["pool", "backend", "state"],
    ),
    (
        "splicer_backend_active_connections",
        "gauge",
        &["pool", "backend"],
    ),
    (
        "splicer_backend_connections",
        "counter",
        &["pool", "backend"],
    ),
    (
        "splicer_backend_connect_failures",
        "counter",
        &["pool", "backend", "reason"],
    ),
    (
        "splicer_backend_bytes",
        "counter",
        &["pool", "backend", "direction"],
    ),
    (
        "splicer_health_checks",
        "counter",
        &["pool", "backend", "result"],
    ),
    (
        "splicer_health_check_duration_seconds",
        "histogram",
        &["pool", "backend"],
    ),
    ("splicer_listener_connections", "counter", &["listener"]),
    (
        "splicer_listener_active_connections",
        "gauge",
        &["listener"],
    ),
    ("splicer_pool_fail_open", "gauge", &["pool"]),
    ("splicer_cluster_health_up", "gauge", &["pool"]),
    ("splicer_pool_shared_outage", "gauge", &["pool", "service"]),
    (
        "splicer_backend_service_up",
        "gauge",
        &["pool", "backend", "service"],
    ),
    ("splicer_config_reloads", "counter", &["result"]),
    ("splicer_discovery_failures", "counter", &["pool"]),
    ("splicer_access_log_dropped", "counter", &[]),
    // docs/architecture.md §9 and §10.
    (
        "splicer_listener_refused",
        "counter",
        &["listener", "reason"],
    ),
    ("splicer_state_file_errors", "counter", &[]),
    ("splicer_upgrades", "counter", &["result"]),
    ("splicer_build_info", "gauge", &["version", "commit"]),
    ("process_open_fds", "gauge", &[]),
    ("process_max_fds", "gauge", &[]),
    ("process_resident_memory_bytes", "gauge", &[]),
    ("process_cpu_seconds", "counter", &[]),
    ("process_start_time_seconds", "gauge", &[]),
    (
        "splicer_backend_connect_duration_seconds",
        "histogram",
        &["pool", "backend"],
    ),
    (
        "splicer_listener_connection_duration_seconds",
        "histogram",
        &["listener"],
    ),
    ("splicer_listener_max_connections", "gauge", &["listener"]),
    // Extensions: connections lost to this machine's own exhaustion, and how full each
    // listener's per-client table is.
    ("splicer_listener_local_errors", "counter", &["listener"]),
    (
        "splicer_listener_client_table_entries",
        "gauge",
        &["listener"],
    ),
];

/// Bytes the echo backend adds after the client half-closes, so the two directions differ.
const TRAILER: &[u8] = b"-- end of echo --";

/// A plain TCP backend that echoes what it reads and, at the client's EOF, sends `TRAILER`.
async fn echo_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                // Health checks connect and leave: their errors are of no interest.
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.write_all(TRAILER).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

/// A loopback address with nothing listening on it.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// `/metrics` of the splicer under test, parsed strictly (a parse error fails the test).
fn scrape(splicer: &Splicer) -> Exposition {
    let running = splicer.running.as_ref().expect("splicer is running");
    let text = splicer::metrics::render(running.state().scrape());
    parse(&text).unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics: {e}\n---\n{text}"))
}

/// `N` deterministic bytes.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn content_type_is_openmetrics() {
    assert_eq!(
        splicer::metrics::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_one_connection_moved() {
    let (echo, echo_task) = echo_backend().await;
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "p"
max_connections = 7

[[pool]]
name = "p"
backends = {}

[pool.health]
check = "tcp"
interval = "200ms"
timeout = "100ms"
"#,
        backends_toml(&[echo])
    ))
    .await;
    let echo_label = echo.to_string();
    let p = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
        let mut l = vec![("pool", "p".to_string()), ("backend", echo_label.clone())];
        l.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
        l
    };
    let value = |e: &Exposition, name: &str, labels: &[(&'static str, String)]| -> f64 {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.value(name, &labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    };

    // One connection: N bytes up, N + TRAILER bytes back, then both sides close.
    const N: usize = 1_048_576 + 7;
    let m = N + TRAILER.len();
    let data = payload(N);
    let before_connect = std::time::Instant::now();
    let conn = async {
        let stream = TcpStream::connect(splicer.addr)
            .await
            .expect("connect to splicer");
        let (mut r, mut w) = stream.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("half-close");
        });
        let mut got = Vec::with_capacity(m);
        r.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        got
    };
    let got = tokio::time::timeout(WAIT, conn)
        .await
        .expect("echo through splicer timed out");
    assert_eq!(got.len(), m);
    assert!(
        got[..N] == data[..] && &got[N..] == TRAILER,
        "echo came back altered"
    );

    // The connection's end is counted when splicer's side of it finishes (its duration a
    // moment after its active count).
    let listener_in = [("listener", "in".to_string())];
    wait_until(
        WAIT,
        "the connection to end in splicer's counters",
        || async {
            let e = scrape(&splicer);
            value(&e, "splicer_backend_active_connections", &p(&[])) == 0.0
                && value(&e, "splicer_listener_active_connections", &listener_in) == 0.0
                && value(&e, "splicer_health_checks_total", &p(&[("result", "pass")])) > 0.0
                && value(
                    &e,
                    "splicer_listener_connection_duration_seconds_count",
                    &listener_in,
                ) == 1.0
        },
    )
    .await;
    let connection_lasted_at_most = before_connect.elapsed().as_secs_f64();

    let e = scrape(&splicer);
    for (name, kind, labels) in FAMILIES {
        let family = e
            .family(name)
            .unwrap_or_else(|| panic!("family {name} missing"));
        assert_eq!(family.kind, kind, "type of {name}");
        let mut want = labels.to_vec();
        want.sort_unstable();
        for s in &family.samples {
            assert_eq!(s.label_names(), want, "labels of {}{:?}", s.name, s.labels);
        }
    }
    let contract: BTreeSet<&str> = FAMILIES.iter().map(|f| f.0).collect();
    let extra: Vec<&str> = e
        .families
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| !contract.contains(n))
        .collect();
    assert!(
        extra.is_empty(),
        "families outside the contract (docs/architecture.md): {extra:?}"
    );

    assert_eq!(
        value(
            &e,
            "splicer_backend_bytes_total",
            &p(&[("direction", "to_backend")])
        ),
        N as f64
    );
    assert_eq!(
        value(
            &e,
            "splicer_backend_bytes_total",
            &p(&[("direction", "to_client")])
        ),
        m as f64
    );
    assert_eq!(value(&e, "splicer_backend_connections_total", &p(&[])), 1.0);
    assert_eq!(
        value(
            &e,
            "splicer_listener_connections_total",
            &[("listener", "in".into())]
        ),
        1.0
    );
    assert_eq!(value(&e, "splicer_backend_up", &p(&[])), 1.0);
    assert_eq!(
        value(&e, "splicer_listener_max_connections", &listener_in),
        7.0
    );
    assert_new_families(&e, &p(&[]), connection_lasted_at_most);
    for state in ["up", "down", "draining", "disabled"] {
        let want = if state == "up" { 1.0 } else { 0.0 };
        assert_eq!(
            value(&e, "splicer_backend_state", &p(&[("state", state)])),
            want,
            "{state}"
        );
    }
    for reason in ["refused", "timeout", "reset", "unreachable", "other"] {
        assert_eq!(
            value(
                &e,
                "splicer_backend_connect_failures_total",
                &p(&[("reason", reason)])
            ),
            0.0
        );
    }
    assert_eq!(
        value(&e, "splicer_pool_fail_open", &[("pool", "p".into())]),
        0.0
    );
    assert_eq!(
        value(
            &e,
            "splicer_config_reloads_total",
            &[("result", "ok".into())]
        ),
        0.0
    );
    assert_eq!(
        value(
            &e,
            "splicer_config_reloads_total",
            &[("result", "error".into())]
        ),
        0.0
    );

    // A check is counted as passed or failed a moment before its duration is recorded, so a
    // scrape can fall between the two; a scrape where both agree must come soon.
    wait_until(
        WAIT,
        "the check histogram's count to equal pass + fail",
        || async {
            let e = scrape(&splicer);
            let checks = value(&e, "splicer_health_checks_total", &p(&[("result", "pass")]))
                + value(&e, "splicer_health_checks_total", &p(&[("result", "fail")]));
            let count = value(&e, "splicer_health_check_duration_seconds_count", &p(&[]));
            let inf = value(
                &e,
                "splicer_health_check_duration_seconds_bucket",
                &p(&[("le", "+Inf")]),
            );
            checks > 0.0 && count == checks && inf == count
        },
    )
    .await;

    echo_task.abort();
}

/// The families docs/architecture.md §10 added, after one proxied connection that lasted at most
/// `lasted_at_most` seconds: both histograms counted it once, in the right buckets; build and
/// process figures are those of this process.
fn assert_new_families(e: &Exposition, backend: &[(&'static str, String)], lasted_at_most: f64) {
    let get = |name: &str, labels: &[(&str, String)]| -> f64 {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.value(name, &labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    };
    let listener = [("listener", "in".to_string())];

    // The connect histogram counts each proxied connection's successful connect once.
    let connects = get("splicer_backend_connections_total", backend);
    let connect_count = get("splicer_backend_connect_duration_seconds_count", backend);
    assert_eq!(
        connect_count, connects,
        "one connect per proxied connection"
    );
    let connect_sum = get("splicer_backend_connect_duration_seconds_sum", backend);
    assert!(
        connect_sum > 0.0 && connect_sum < lasted_at_most,
        "connect took {connect_sum} s of a connection that lasted at most {lasted_at_most} s"
    );
    assert_one_observation_of(
        e,
        "splicer_backend_connect_duration_seconds",
        backend,
        connect_sum,
    );

    let lasted = get(
        "splicer_listener_connection_duration_seconds_sum",
        &listener,
    );
    assert!(
        lasted > 0.0 && lasted <= lasted_at_most,
        "splicer says the connection lasted {lasted} s; the client saw at most {lasted_at_most} s"
    );
    assert!(lasted >= connect_sum, "the connection outlasts its connect");
    assert_one_observation_of(
        e,
        "splicer_listener_connection_duration_seconds",
        &listener,
        lasted,
    );

    let commit = get_build_info(e);
    assert_eq!(commit, expected_commit(), "splicer_build_info commit");

    let open = e.value("process_open_fds", &[]).expect("process_open_fds");
    let max = e.value("process_max_fds", &[]).expect("process_max_fds");
    assert!(open > 0.0 && open <= max, "open fds {open}, max {max}");
    assert!(
        e.value("process_resident_memory_bytes", &[])
            .is_some_and(|b| b > 1_000_000.0),
        "a process with tokio and rustls has more than 1 MB resident"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = e
        .value("process_start_time_seconds", &[])
        .expect("process_start_time_seconds");
    // This test process started before the test and, given the build, not a day earlier.
    assert!(
        started <= now && started > now - 86_400.0,
        "start {started}, now {now}"
    );
    // CPU time is counted in clock ticks (10 ms), so a short test may not have used one yet;
    // it cannot exceed every core busy since the start.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu = e
        .value("process_cpu_seconds_total", &[])
        .expect("process_cpu_seconds_total");
    assert!(
        cpu >= 0.0 && cpu <= (now - started + 0.02) * cores,
        "cpu {cpu} s in {} s on {cores} cores",
        now - started
    );
}

/// A histogram series holding exactly one observation of `seconds`: every bucket at or above
/// it holds 1, every one below holds 0, and `_count` is 1.
fn assert_one_observation_of(e: &Exposition, name: &str, labels: &[(&str, String)], seconds: f64) {
    let want: BTreeSet<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let family = e
        .family(name)
        .unwrap_or_else(|| panic!("family {name} missing"));
    let mut buckets = 0;
    for s in family
        .samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket"))
    {
        let others: BTreeSet<(&str, &str)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if others != want {
            continue;
        }
        let le = exposition::parse_float(s.label("le").expect("le")).expect("le is a number");
        let inside = if seconds <= le { 1.0 } else { 0.0 };
        assert_eq!(s.value, inside, "{name} bucket le={le} for one {seconds} s");
        buckets += 1;
    }
    assert!(buckets > 2, "{name}{labels:?} has {buckets} buckets");
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(e.value(&format!("{name}_count"), &labels), Some(1.0));
}

/// The `commit` label of the one `splicer_build_info` sample, which must be 1 and carry this
/// package's version.
fn get_build_info(e: &Exposition) -> String {
    let family = e.family("splicer_build_info").expect("splicer_build_info");
    assert_eq!(family.samples.len(), 1, "{family:?}");
    let s = &family.samples[0];
    assert_eq!(s.value, 1.0);
    assert_eq!(s.label("version"), Some(env!("CARGO_PKG_VERSION")));
    s.label("commit").expect("a commit label").to_string()
}

/// What `build.rs` records: the checkout's short HEAD, or `unknown` outside git.
fn expected_commit() -> String {
    // A commit given to the build (the Docker image's build argument) wins, as in build.rs.
    // build.rs takes it only when it fits a label: up to 64 of [A-Za-z0-9._+-].
    let given = option_env!("SPLICER_COMMIT").map(str::trim).filter(|c| {
        !c.is_empty()
            && c.len() <= 64
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '+'))
    });
    if let Some(given) = given {
        return given.to_string();
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    if !std::path::Path::new(dir).join(".git").exists() {
        return "unknown".to_string();
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_counted_by_reason() {
    let dead = dead_addr().await;
    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "gone"

[[pool]]
name = "gone"
backends = {}
retries = 1

[pool.health]
check = "none"
"#,
        backends_toml(&[dead])
    ))
    .await;
    let dead_label = dead.to_string();
    let failures = |e: &Exposition, reason: &str| {
        let labels = [
            ("pool", "gone"),
            ("backend", dead_label.as_str()),
            ("reason", reason),
        ];
        e.value("splicer_backend_connect_failures_total", &labels)
            .unwrap_or_else(|| panic!("no connect-failure sample for {reason}"))
    };

    let mut client = TcpStream::connect(splicer.addr)
        .await
        .expect("connect to splicer");
    let mut sink = Vec::new();
    // splicer closes (or resets) the client once it gives up on the backend.
    let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut sink))
        .await
        .expect("splicer kept a connection with no backend open");
    wait_until(WAIT, "a refused connect to be counted", || async {
        failures(&scrape(&splicer), "refused") >= 1.0
    })
    .await;

    let e = scrape(&splicer);
    let by_reason: BTreeMap<&str, f64> = ["refused", "timeout", "reset", "unreachable", "other"]
        .into_iter()
        .map(|r| (r, failures(&e, r)))
        .collect();
    assert!(by_reason["refused"] >= 1.0, "{by_reason:?}");
    let backend = [("pool", "gone"), ("backend", dead_label.as_str())];
    assert_eq!(
        e.value("splicer_backend_connections_total", &backend),
        Some(0.0)
    );
    assert_eq!(
        e.value("splicer_listener_connections_total", &[("listener", "in")]),
        Some(1.0)
    );
    // A failed connect is no connect time; the client's connection still had a duration.
    assert_eq!(
        e.value("splicer_backend_connect_duration_seconds_count", &backend),
        Some(0.0)
    );
    wait_until(
        WAIT,
        "the refused client's duration to be recorded",
        || async {
            scrape(&splicer).value(
                "splicer_listener_connection_duration_seconds_count",
                &[("listener", "in")],
            ) == Some(1.0)
        },
    )
    .await;
    // max_connections left at its default.
    assert_eq!(
        e.value("splicer_listener_max_connections", &[("listener", "in")]),
        Some(0.0)
    );
}
