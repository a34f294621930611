//! One case per validation rule, each asserting the exact place (`PATH:LINE:COL: `) and a key
//! phrase of the message, plus tests that all problems are reported and defaults are right.

use std::path::{Path, PathBuf};
use std::time::Duration;

use splicer::config::{self, BalanceKind, CheckKind, LogFormat};

/// A listener (lines 1-4 when first) naming pool "p".
const L: &str = "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:443\"\npool = \"p\"\n";
/// Pool "p" with one backend (3 lines).
const P: &str = "[[pool]]\nname = \"p\"\nbackends = [\"10.0.0.1:443\"]\n";

/// Extra lines inside the last `[[pool]]`, starting at line 8.
fn in_pool(extra: &str) -> String {
    format!("{L}{P}{extra}")
}

/// Extra lines inside the last `[[listener]]`, starting at line 8.
fn in_listener(extra: &str) -> String {
    format!("{P}{L}{extra}")
}

/// Extra lines inside `[pool.health]`, starting at line 9.
fn in_health(extra: &str) -> String {
    format!("{L}{P}[pool.health]\n{extra}")
}

/// Extra lines inside `[runtime]`, starting at line 2.
fn in_runtime(extra: &str) -> String {
    format!("[runtime]\n{extra}{L}{P}")
}

/// Extra lines inside `[admin]`, starting at line 2.
fn in_admin(extra: &str) -> String {
    format!("[admin]\n{extra}{L}{P}")
}

/// A pool whose `backends` line (line 7) is `backends = {list}`.
fn backends(list: &str) -> String {
    format!("{L}[[pool]]\nname = \"p\"\nbackends = {list}\n")
}

struct Case {
    rule: &'static str,
    text: String,
    /// `Some((line, col))`, or `None` for a whole-file problem.
    at: Option<(usize, usize)>,
    phrase: &'static str,
}

fn case(rule: &'static str, text: String, line: usize, col: usize, phrase: &'static str) -> Case {
    Case {
        rule,
        text,
        at: Some((line, col)),
        phrase,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn each_rule_reports_one_problem_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "empty.pem", "no certificate here\n");
    write(dir.path(), "empty.token", "  \n");
    let cases = vec![
        case("unknown key", in_pool("discovery = { dns = \"x\" }\n"), 8, 1,
             "unknown key \"discovery\" in [[pool]] (did you mean \"discover\"?); expected one of: name, balance"),
        case("both backends and discover", in_pool("discover = { dns = \"q.internal\", port = 443 }\n"), 8, 12,
             "sets both backends and discover"),
        case("neither backends nor discover", format!("{L}[[pool]]\nname = \"p\"\n"), 5, 1,
             "needs backends (a list of \"ip:port\") or discover"),
        case("discover without port", format!("{L}[[pool]]\nname = \"p\"\ndiscover = {{ dns = \"q.internal\" }}\n"), 7, 12,
             "discover is missing required key \"port\""),
        case("discover bad name", format!("{L}[[pool]]\nname = \"p\"\ndiscover = {{ dns = \"bad name\", port = 443 }}\n"), 7, 20,
             "is not a DNS name"),
        case("route to a missing pool", in_listener("[[listener.route]]\nsni = \"a.example.com\"\npool = \"nope\"\n"), 10, 8,
             "route names pool \"nope\", which is not defined"),
        case("bad sni pattern", in_listener("[[listener.route]]\nsni = \"*.*.example.com\"\npool = \"p\"\n"), 9, 7,
             "one-label wildcard"),
        case("duplicate route", in_listener("[[listener.route]]\nsni = \"A.example.com\"\npool = \"p\"\n[[listener.route]]\nsni = \"a.example.com\"\npool = \"p\"\n"), 12, 7,
             "route for sni \"a.example.com\""),
        case("send_proxy value", in_pool("send_proxy = \"v3\"\n"), 8, 14, "send_proxy"),
        case("shared dependency name", in_health("shared_dependencies = [\"data base\"]\n"), 9, 24,
             "is not a service name"),
        case("cluster_health path", in_pool("[pool.cluster_health]\npath = \"health\"\n"), 9, 8,
             "must start with \"/\""),
        case("unknown key in health", in_health("chek = \"https\"\n"), 9, 1,
             "unknown key \"chek\" in [pool.health] (did you mean \"check\"?); expected one of: check, path"),
        case("token_file unreadable", in_admin("token_file = \"missing-token\"\n"), 2, 14, "cannot read token_file"),
        case("token_file empty", in_admin("token_file = \"empty.token\"\n"), 2, 14, "token_file"),
        case("unknown key in backend", backends("[{ address = \"10.0.0.1:443\", port = 1 }]"), 7, 41,
             "unknown key \"port\" in a backend entry"),
        case("wrong type", in_listener("max_connections = \"10\"\n"), 8, 19,
             "wrong type for \"max_connections\": expected an integer, found string \"10\""),
        case("wrong type bool", in_health("tls_verify = \"yes\"\n"), 9, 14,
             "expected a boolean (true or false)"),
        case("wrong type backend", backends("[443]"), 7, 13,
             "wrong type: expected an \"ip:port\" string or a table"),
        case("single table for array", format!("[listener]\nname = \"l\"\n{P}"), 1, 1,
             "[listener] must be written [[listener]]"),
        case("syntax", format!("{L}[[pool]]\nname = = \"p\"\nbackends = [\"10.0.0.1:443\"]\n"), 6, 8, "invalid TOML"),
        case("missing listener name", format!("[[listener]]\nbind = \"0.0.0.0:443\"\npool = \"p\"\n{P}"), 1, 1,
             "[[listener]] is missing required key \"name\""),
        case("missing listener bind", format!("[[listener]]\nname = \"l\"\npool = \"p\"\n{P}"), 1, 1,
             "[[listener]] \"l\" is missing required key \"bind\""),
        case("missing listener pool", format!("[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:443\"\n{P}"), 1, 1,
             "[[listener]] \"l\" is missing required key \"pool\""),
        case("missing pool name", format!("{P}{L}[[pool]]\nbackends = [\"10.0.0.2:443\"]\n"), 8, 1,
             "[[pool]] is missing required key \"name\""),
        case("missing backend address", backends("[{ weight = 2 }]"), 7, 13,
             "backend entry is missing required key \"address\""),
        case("bad duration", in_pool("connect_timeout = \"3\"\n"), 8, 19,
             "invalid connect_timeout: duration \"3\" has no unit"),
        case("bad duration unit", in_listener("idle_timeout = \"5 days\"\n"), 8, 16, "unknown unit"),
        case("bad balance", in_pool("balance = \"fastest\"\n"), 8, 11,
             "balance \"fastest\" is not one of: round_robin, least_connections, random_two, client_hash"),
        case("bad check", in_health("check = \"icmp\"\n"), 9, 9,
             "check \"icmp\" is not one of: https, http, tcp, none"),
        case("bad log_format", in_runtime("log_format = \"xml\"\n"), 2, 14,
             "log_format \"xml\" is not one of: text, json"),
        case("duplicate listener name",
             in_listener("[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:8443\"\npool = \"p\"\n"), 9, 8,
             "duplicate listener name \"l\"; the first is at line 5"),
        case("duplicate pool name", format!("{L}{P}{P}"), 9, 8,
             "duplicate pool name \"p\"; the first is at line 6"),
        case("duplicate bind",
             in_listener("[[listener]]\nname = \"m\"\nbind = \"0.0.0.0:443\"\npool = \"p\"\n"), 10, 8,
             "duplicate listener bind address 0.0.0.0:443; the first is at line 6"),
        case("missing pool", format!("[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:443\"\npool = \"nope\"\n{P}"), 4, 8,
             "listener names pool \"nope\", which is not defined; defined pools: p"),
        case("hostname", format!("{P}[[listener]]\nname = \"l\"\nbind = \"quay.internal:443\"\npool = \"p\"\n"), 6, 8,
             "is a hostname; write ip:port"),
        case("no port", backends("[\"10.0.0.1\"]"), 7, 13, "address \"10.0.0.1\" has no port"),
        case("IPv6 without brackets", backends("[\"fe80::1:99999\"]"), 7, 13, "in brackets"),
        case("backend port 0", backends("[\"10.0.0.1:0\"]"), 7, 13, "has port 0"),
        case("duplicate backend", backends("[\"10.0.0.1:443\", { address = \"10.0.0.1:443\", weight = 2 }]"), 7, 29,
             "duplicate backend 10.0.0.1:443 in pool \"p\"; the first is at line 7"),
        case("empty backends", backends("[]"), 7, 12, "backends is empty"),
        case("weight 0", backends("[{ address = \"10.0.0.1:443\", weight = 0 }]"), 7, 50,
             "weight must be at least 1, not 0"),
        case("weight 300", backends("[{ address = \"10.0.0.1:443\", weight = 300 }]"), 7, 50,
             "weight must be at most 256, not 300"),
        case("rise 0", in_health("rise = 0\n"), 9, 8, "rise must be at least 1, not 0"),
        case("fall 0", in_health("fall = 0\n"), 9, 8, "fall must be at least 1, not 0"),
        case("timeout not below interval", in_health("interval = \"1s\"\ntimeout = \"1s\"\n"), 10, 11,
             "timeout (1s) must be below interval (1s)"),
        case("default timeout not below interval", in_health("interval = \"500ms\"\n"), 9, 12,
             "timeout (1s) must be below interval (500ms)"),
        case("zero interval", in_health("interval = \"0s\"\n"), 9, 12, "interval must be longer than 0s"),
        case("zero timeout", in_health("timeout = \"0s\"\n"), 9, 11, "timeout must be longer than 0s"),
        case("zero connect_timeout", in_pool("connect_timeout = \"0ms\"\n"), 8, 19,
             "connect_timeout must be longer than 0s"),
        case("expect_status garbage", in_health("expect_status = \"ok\"\n"), 9, 17, "is not a status list"),
        case("expect_status range", in_health("expect_status = \"200-600\"\n"), 9, 17, "code 600 outside 100 to 599"),
        case("expect_status reversed", in_health("expect_status = \"299-200\"\n"), 9, 17, "start is above its end"),
        case("path", in_health("path = \"health\"\n"), 9, 8, "path \"health\" must start with \"/\""),
        case("backlog 0", in_listener("backlog = 0\n"), 8, 11, "backlog must be at least 1, not 0"),
        case("workers", in_runtime("workers = 2000\n"), 2, 11, "workers must be at most 1024, not 2000"),
        case("negative retries", in_pool("retries = -1\n"), 8, 11, "retries must be at least 0"),
        case("port range", in_health("port = 70000\n"), 9, 8, "port must be at most 65535"),
        case("ca_file unreadable", in_health("ca_file = \"missing.pem\"\n"), 9, 11, "cannot read ca_file"),
        case("ca_file without cert", in_health("ca_file = \"empty.pem\"\n"), 9, 11,
             "contains no PEM certificate"),
        case("admin not loopback", in_admin("bind = \"0.0.0.0:9090\"\n"), 2, 8,
             "not a loopback address, and without token_file"),
        case("host with space", in_health("host = \"quay example.com\"\n"), 9, 8, "must not contain spaces"),
        case("host with slash", in_health("host = \"https://quay.example.com\"\n"), 9, 8,
             "without scheme or path"),
        Case { rule: "no listener", text: P.to_string(), at: None,
               phrase: "the file has no [[listener]]; at least one is required" },
    ];
    for (i, c) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("case{i}.toml"), &c.text);
        let err = match config::load(&path) {
            Ok(_) => panic!("{}: accepted:\n{}", c.rule, c.text),
            Err(e) => e,
        };
        let lines = err.lines();
        assert_eq!(
            lines.len(),
            1,
            "{}: expected one problem, got:\n{err}",
            c.rule
        );
        let prefix = match c.at {
            Some((line, col)) => format!("{}:{line}:{col}: ", path.display()),
            None => format!("{}: ", path.display()),
        };
        assert!(
            lines[0].starts_with(&prefix),
            "{}: {:?} does not start with {prefix:?}",
            c.rule,
            lines[0]
        );
        assert!(
            lines[0].contains(c.phrase),
            "{}: {:?} lacks {:?}",
            c.rule,
            lines[0],
            c.phrase
        );
    }
}

#[test]
fn all_problems_of_a_file_are_reported_in_file_order() {
    let text = r#"[admin]
bind = "10.1.2.3:9090"

[[listener]]
name = "https"
bind = "0.0.0.0:443"
pool = "quai"
backlog = 0

[[pool]]
name = "quay"
balance = "fastest"
backends = ["10.0.0.11:443", "10.0.0.11:443", "quay-3:443"]

[pool.health]
interval = "1s"
timeout = "2s"
rise = 0
expect_status = "200-"
"#;
    let path = Path::new("quay.toml");
    let err = config::parse(path, text).unwrap_err();
    let got = err.lines();
    let want = [
        "quay.toml:2:8: admin bind 10.1.2.3:9090 is not a loopback address",
        "quay.toml:7:8: listener names pool \"quai\", which is not defined; defined pools: quay",
        "quay.toml:8:11: backlog must be at least 1, not 0",
        "quay.toml:12:11: balance \"fastest\" is not one of",
        "quay.toml:13:30: duplicate backend 10.0.0.11:443 in pool \"quay\"",
        "quay.toml:13:47: address \"quay-3:443\" is a hostname",
        "quay.toml:17:11: timeout (2s) must be below interval (1s)",
        "quay.toml:18:8: rise must be at least 1, not 0",
        "quay.toml:19:17: expect_status \"200-\" is not a status list",
    ];
    assert_eq!(got.len(), want.len(), "{err}");
    for (line, start) in got.iter().zip(want) {
        assert!(
            line.starts_with(start),
            "{line:?} does not start with {start:?}"
        );
    }
}

/// A syntax error and type errors do not hide the problems after them.
#[test]
fn syntax_and_type_errors_are_reported_with_the_rest() {
    let text = r#"[[listener]]
name = "https"
bind = "0.0.0.0:443"
pool = "quay"
max_conections = 10

[[pool]]
name = "quay"
backends = ["10.0.0.11:443"]
retries = = 2

[pool.health]
interval = 10
rise = 0
"#;
    let err = config::parse(Path::new("quay.toml"), text).unwrap_err();
    let got = err.lines();
    let want = [
        "quay.toml:5:1: unknown key \"max_conections\" in [[listener]] (did you mean \"max_connections\"?)",
        "quay.toml:10:11: invalid TOML: ",
        "quay.toml:13:12: wrong type for \"interval\": a duration is a string with a unit: write interval = \"10s\"",
        "quay.toml:14:8: rise must be at least 1, not 0",
    ];
    assert_eq!(got.len(), want.len(), "{err}");
    for (line, start) in got.iter().zip(want) {
        assert!(
            line.starts_with(start),
            "{line:?} does not start with {start:?}"
        );
    }
}

#[test]
fn defaults_match_the_documented_ones() {
    let c = config::parse(Path::new("m.toml"), &format!("{L}{P}")).unwrap();
    assert_eq!(c.admin, None);
    assert_eq!(c.runtime.workers, 0);
    assert_eq!(c.runtime.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.runtime.log_format, LogFormat::Text);
    assert!(c.runtime.access_log);
    let l = &c.listeners[0];
    assert_eq!(
        (l.max_connections, l.idle_timeout, l.backlog),
        (0, None, 4096)
    );
    assert_eq!(l.client_hello_timeout, Duration::from_secs(5));
    let p = &c.pools[0];
    assert_eq!(p.balance, BalanceKind::RoundRobin);
    assert_eq!(p.connect_timeout, Duration::from_secs(3));
    assert_eq!((p.retries, p.fail_open, p.passive_fall), (2, true, 3));
    assert_eq!(p.backends[0].weight, 1);
    assert_eq!(p.health, config::HealthConfig::default());
    assert_eq!(p.health.check, CheckKind::Https);
    assert_eq!(p.health.path, "/health/instance");
    assert_eq!(
        (p.health.interval, p.health.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((p.health.rise, p.health.fall), (2, 3));

    let with_admin = config::parse(Path::new("m.toml"), &format!("[admin]\n{L}{P}")).unwrap();
    assert_eq!(with_admin.admin.unwrap().bind.to_string(), "127.0.0.1:9090");
}

#[test]
fn every_value_form_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["quay.example.com".to_string()]).unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    write(dir.path(), "certs/ca.pem", &cert.cert.pem());
    let text = r#"
[admin]
bind = "[::1]:9090"

[runtime]
workers = 4
drain_timeout = "1m"
log_format = "json"
access_log = false

[[listener]]
name = "v6"
bind = "[::]:443"
pool = "quay"
max_connections = 1000
idle_timeout = "15m"
client_hello_timeout = "2s"
backlog = 128

[[pool]]
name = "quay"
balance = "client_hash"
backends = ["[2001:db8::1]:443", { address = "10.0.0.2:443", weight = 256 }, { address = "10.0.0.3:443" }]
connect_timeout = "250ms"
retries = 0
fail_open = false
passive_fall = 0

[pool.health]
check = "http"
path = "/health/instance?full=1"
port = 8080
interval = "5s"
timeout = "4500ms"
rise = 1
fall = 1
expect_status = "200-299, 304"
host = "quay.example.com"
tls_verify = true
ca_file = "certs/ca.pem"
"#;
    let path = write(dir.path(), "all.toml", text);
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.as_ref().unwrap().bind.to_string(), "[::1]:9090");
    assert_eq!(c.runtime.log_format, LogFormat::Json);
    assert_eq!(c.listeners[0].idle_timeout, Some(Duration::from_secs(900)));
    let p = &c.pools[0];
    assert_eq!(p.balance, BalanceKind::ClientHash);
    let weights: Vec<(String, u32)> = p
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("[2001:db8::1]:443".to_string(), 1),
            ("10.0.0.2:443".to_string(), 256),
            ("10.0.0.3:443".to_string(), 1)
        ]
    );
    assert!(p.health.expect_status.matches(304) && !p.health.expect_status.matches(302));
    assert_eq!(p.health.host.as_deref(), Some("quay.example.com"));
    // Resolved against the config file's directory, not the working directory.
    assert_eq!(p.health.ca_file, Some(dir.path().join("certs/ca.pem")));
    let summary = c.summary();
    assert!(
        summary.contains("v6: bind [::]:443 -> pool quay"),
        "{summary}"
    );
    assert!(
        summary.contains("backend 10.0.0.2:443 weight 256"),
        "{summary}"
    );
    assert!(
        summary.contains("http GET /health/instance?full=1 expecting 200-299,304"),
        "{summary}"
    );
}

#[test]
fn hostile_input_never_panics() {
    let inputs = [
        "", "\u{0}", "[[", "a = \"\\u{ffff}\"", "[[listener]]\nname = \"é\"\nbind = \"é:1\"\npool = \"é\"\n",
        "[[pool]]\nbackends = [[], {}, 1.5, true]\n", "[[pool]]\nname = \"p\"\nbackends = [\"1.1.1.1:1\"]\n[pool.health]\ninterval = \"99999999999999999999h\"\n",
        "[runtime]\nworkers = -9223372036854775808\n", "[[listener]]\n[[listener]]\n[[pool]]\n[[pool]]\n",
    ];
    let deep = format!("x = {}", "[".repeat(100_000));
    let deep_tables = format!("x = {}", "{ a = ".repeat(50_000));
    for text in inputs
        .iter()
        .copied()
        .chain([deep.as_str(), deep_tables.as_str()])
    {
        assert!(
            config::parse(Path::new("x.toml"), text).is_err(),
            "{text:?}"
        );
    }
}

/// docs/architecture.md §3: every duration key, with `"0s"`, a sub-millisecond value and `1ms`. Keys where 0
/// means off/never accept it (and `check` shows it as such); keys that bound a wait for a peer,
/// or a period, refuse it naming the key; a finer value than 1ms is an error everywhere.
#[test]
fn each_duration_key_has_its_zero_rule() {
    struct Key {
        key: &'static str,
        /// Builds a file with `key = value` in its table.
        file: fn(&str) -> String,
        zero_ok: bool,
    }
    fn pool_key(line: &str) -> String {
        in_pool(line)
    }
    fn listener_key(line: &str) -> String {
        in_listener(line)
    }
    fn runtime_key(line: &str) -> String {
        in_runtime(line)
    }
    fn health_key(line: &str) -> String {
        in_health(line)
    }
    fn cluster_key(line: &str) -> String {
        format!("{L}{P}[pool.cluster_health]\n{line}")
    }
    fn every_key(line: &str) -> String {
        let value = line.trim_end().trim_start_matches("every = ");
        format!("{L}[[pool]]\nname = \"p\"\ndiscover = {{ dns = \"quay.internal\", port = 443, every = {value} }}\n")
    }
    let keys = [
        Key {
            key: "idle_timeout",
            file: listener_key,
            zero_ok: true,
        },
        Key {
            key: "client_hello_timeout",
            file: listener_key,
            zero_ok: false,
        },
        Key {
            key: "slow_start",
            file: pool_key,
            zero_ok: true,
        },
        Key {
            key: "connect_timeout",
            file: pool_key,
            zero_ok: false,
        },
        Key {
            key: "shutdown_delay",
            file: runtime_key,
            zero_ok: true,
        },
        Key {
            key: "drain_timeout",
            file: runtime_key,
            zero_ok: true,
        },
        Key {
            key: "upgrade_timeout",
            file: runtime_key,
            zero_ok: false,
        },
        Key {
            key: "timeout",
            file: health_key,
            zero_ok: false,
        },
        Key {
            key: "interval",
            file: cluster_key,
            zero_ok: false,
        },
        Key {
            key: "every",
            file: every_key,
            zero_ok: false,
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    for k in &keys {
        let text = |v: &str| (k.file)(&format!("{} = \"{v}\"\n", k.key));
        let load = |v: &str| config::parse(&dir.path().join("t.toml"), &text(v));
        // 1ms is the finest value and is accepted everywhere (a health timeout below interval).
        assert!(
            load("1ms").is_ok(),
            "{} = 1ms: {:?}\n{}",
            k.key,
            load("1ms").err(),
            text("1ms")
        );
        match (load("0s"), k.zero_ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("{} must be longer than 0s", k.key)),
                    "{}: {e}",
                    k.key
                );
            }
            (r, _) => panic!(
                "{} = \"0s\": zero_ok {} but got {:?}",
                k.key,
                k.zero_ok,
                r.err()
            ),
        }
        for finer in ["0.5ms", "0.0000001ms", "1.0001s"] {
            let e = load(finer).expect_err(finer).to_string();
            assert!(
                e.contains(k.key) && e.contains("whole number of milliseconds"),
                "{} = {finer}: {e}",
                k.key
            );
        }
    }
    // What 0 means where it is allowed, as `check` prints it.
    let c = config::parse(Path::new("t.toml"), &in_listener("idle_timeout = \"0s\"\n")).unwrap();
    assert_eq!(c.listeners[0].idle_timeout, None);
    assert!(c.summary().contains("idle_timeout never"));
}

/// `splicer check`'s summary shows what the file turns on, not only listeners and backends.
#[test]
fn the_summary_shows_what_the_file_configures() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["quay.example.com".to_string()]).unwrap();
    write(dir.path(), "ca.pem", &cert.cert.pem());
    write(dir.path(), "admin.token", "s3cret\n");
    let text = r#"
[admin]
bind = "127.0.0.1:9090"
token_file = "admin.token"

[[listener]]
name = "https"
bind = "0.0.0.0:8443"
pool = "quay"

[[listener.route]]
sni = "clair.example.com"
pool = "quay"

[[pool]]
name = "quay"
backends = ["10.0.0.11:8443"]
slow_start = "30s"

[pool.health]
host = "quay.example.com"
tls_verify = true
ca_file = "ca.pem"
shared_dependencies = ["database", "redis"]

[pool.cluster_health]
path = "/health/endtoend"
interval = "10s"
"#;
    let path = write(dir.path(), "quay.toml", text);
    let summary = config::load(&path).expect("valid").summary();
    for phrase in [
        "clair.example.com -> pool quay",
        "slow start: 30s",
        &format!(
            "certificate verified against {}",
            dir.path().join("ca.pem").display()
        ),
        "SNI and Host quay.example.com",
        "database, redis",
        "cluster health: GET /health/endtoend every 10s",
        "POST needs the token_file's bearer token",
    ] {
        assert!(summary.contains(phrase), "no {phrase:?} in:\n{summary}");
    }
}
