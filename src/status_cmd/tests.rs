//! Tests of `splicer status` without sockets: the DESIGN example read and rendered, the table,
//! the verdict behind the exit code, the frames of `--watch`, admin URLs and error messages.

use std::time::SystemTime;

use super::render::span;
use super::*;
use serde_json::json;

/// The docs/architecture.md §5 example, verbatim.
const DESIGN_EXAMPLE: &str = r#"{"version":"0.1.0","uptime_seconds":12.5,
 "listeners":[{"name":"https","bind":"0.0.0.0:443","active_connections":3,"total_connections":120}],
 "pools":[{"name":"quay","balance":"round_robin","fail_open":false,
   "cluster_health":{"ok":true,"status":200,"checked_at":"2026-11-27T12:00:00Z"},"shared_outage":[],
   "backends":[{"address":"10.0.0.11:443","state":"up","weight":1,
     "active_connections":1,"total_connections":40,"connect_failures":0,
     "last_check":{"ok":true,"status":200,"latency_ms":3.2,"error":null,"at":"2026-11-27T12:00:01Z",
                   "services":{"database":true,"disk_space":true}}}]}]}"#;

fn at(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).expect("test timestamp")
}

fn now() -> SystemTime {
    at("2026-11-27T12:00:02Z")
}

/// A document from JSON, as `fetch` reads it.
fn typed(doc: Value) -> Status {
    Status::deserialize(&doc).expect("a status document")
}

fn backend(address: &str, state: &str, last_check: Value) -> Value {
    json!({"address": address, "state": state, "weight": 1, "active_connections": 0,
               "total_connections": 0, "connect_failures": 0, "last_check": last_check})
}

fn doc_with_backends(pool_extra: Value, backends: Vec<Value>) -> Status {
    let mut pool = json!({"name": "quay", "balance": "round_robin", "fail_open": false,
                              "cluster_health": null, "shared_outage": [], "backends": backends});
    if let (Some(p), Value::Object(extra)) = (pool.as_object_mut(), pool_extra) {
        p.extend(extra);
    }
    typed(json!({"version": "0.1.0", "uptime_seconds": 1.0, "listeners": [], "pools": [pool]}))
}

#[test]
fn design_example_renders_exactly() {
    let status: Status = serde_json::from_str(DESIGN_EXAMPLE).expect("example is a document");
    let expected = "\
splicer 0.1.0, up 12s

LISTENER  BIND         ACTIVE  TOTAL
https     0.0.0.0:443       3    120

pool quay (round_robin)  cluster: ok (200)
  BACKEND        STATE  WEIGHT  ACTIVE  TOTAL  FAILS  LAST CHECK  LATENCY  AGE
  10.0.0.11:443  up          1       1     40      0  ok 200        3.2ms  1s ago
";
    assert_eq!(render_at(&status, now()), expected);
}

#[test]
fn fail_open_pool_with_outage_and_failing_checks() {
    let doc = doc_with_backends(
        json!({"fail_open": true, "shared_outage": ["database", "redis"],
                   "cluster_health": {"ok": false, "status": 503, "checked_at": "2026-11-27T12:00:00Z"}}),
        vec![
            backend(
                "10.0.0.11:443",
                "down",
                json!({"ok": false, "status": 503, "latency_ms": 12.25,
                        "error": "status 503", "at": "2026-11-27T11:57:55Z"}),
            ),
            backend(
                "10.0.0.12:443",
                "down",
                json!({"ok": false, "status": null, "latency_ms": 100.0,
                        "error": "timeout", "at": "2026-11-27T12:00:02Z"}),
            ),
            backend(
                "10.0.0.13:443",
                "down",
                json!({"ok": false, "status": 500, "latency_ms": 1500.0,
                        "error": null, "at": "2026-11-27T09:00:00Z"}),
            ),
        ],
    );
    let out = render_at(&doc, now());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
            lines[4],
            "pool quay (round_robin)  FAIL-OPEN  shared outage: database, redis  cluster: FAILING (503)"
        );
    assert_eq!(
            &lines[5..],
            &[
                "  BACKEND        STATE  WEIGHT  ACTIVE  TOTAL  FAILS  LAST CHECK        LATENCY  AGE",
                "  10.0.0.11:443  down        1       0      0      0  fail: status 503   12.2ms  2m 7s ago",
                "  10.0.0.12:443  down        1       0      0      0  fail: timeout     100.0ms  0s ago",
                "  10.0.0.13:443  down        1       0      0      0  fail: status 500    1.50s  3h 0m ago",
            ]
        );
}

#[test]
fn null_last_check_shows_dashes() {
    let doc = doc_with_backends(
        json!({}),
        vec![backend("10.0.0.11:443", "down", Value::Null)],
    );
    let out = render_at(&doc, now());
    let row = out
        .lines()
        .find(|l| l.contains("10.0.0.11:443"))
        .expect("row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        ["10.0.0.11:443", "down", "1", "0", "0", "0", "-", "-", "-"]
    );
}

#[test]
fn ipv6_and_wide_values_keep_columns_aligned() {
    let mut wide = backend(
        "[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:443",
        "draining",
        json!({"ok": true,
            "status": 200, "latency_ms": 0.4, "error": null, "at": "2026-11-27T12:00:01Z"}),
    );
    wide["total_connections"] = json!(12_345_678_901u64);
    let doc = doc_with_backends(
        json!({}),
        vec![
            backend(
                "[::1]:443",
                "up",
                json!({"ok": true, "status": 204, "latency_ms": 3.2,
                     "error": null, "at": "2026-11-27T12:00:01Z"}),
            ),
            wide,
        ],
    );
    let expected = "\
splicer 0.1.0, up 1s

no listeners

pool quay (round_robin)
  BACKEND                                    STATE     WEIGHT  ACTIVE        TOTAL  FAILS  LAST CHECK  LATENCY  AGE
  [::1]:443                                  up             1       0            0      0  ok 204        3.2ms  1s ago
  [2001:db8:ffff:ffff:ffff:ffff:ffff:1]:443  draining       1       0  12345678901      0  ok 200        0.4ms  1s ago
";
    assert_eq!(render_at(&doc, now()), expected);
}

#[test]
fn tcp_check_without_status_shows_plain_ok() {
    let doc = doc_with_backends(
        json!({}),
        vec![backend(
            "10.0.0.11:443",
            "up",
            json!({"ok": true, "status": null,
                     "latency_ms": 0.2, "error": null, "at": "2026-11-27T12:00:01Z"}),
        )],
    );
    let out = render_at(&doc, now());
    assert!(
        out.contains("  up          1       0      0      0  ok    "),
        "{out}"
    );
}

#[test]
fn empty_instance() {
    let doc = typed(
        json!({"version": "0.1.0", "uptime_seconds": 11_520.0, "listeners": [], "pools": []}),
    );
    assert_eq!(
        render_at(&doc, now()),
        "splicer 0.1.0, up 3h 12m\n\nno listeners\n\nno pools\n"
    );
    let doc = doc_with_backends(json!({}), vec![]);
    assert!(render_at(&doc, now()).ends_with("pool quay (round_robin)\n  (no backends)\n"));
}

#[test]
fn sparse_and_hostile_documents_render() {
    // Missing fields take the reader's defaults and show as `?` (names) or 0 (counters).
    let out = render_at(&Status::default(), now());
    assert_eq!(out, "splicer ?, up 0s\n\nno listeners\n\nno pools\n");
    let sparse = typed(json!({"pools": [{"backends": [{}, {"last_check": {}}]}]}));
    let out = render_at(&sparse, now());
    assert!(out.contains("\npool ? (?)\n"), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.contains("BACKEND"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["?", "?", "0", "0", "0", "0", "-", "-", "-"]);
    assert_eq!(
        rows[1],
        ["?", "?", "0", "0", "0", "0", "fail", "0.0ms", "?"]
    );

    // Control characters cannot break a line or a column; impossible numbers show as `?`.
    let hostile = typed(json!({"uptime_seconds": -5.0, "pools": [{
        "name": "q\u{1b}[2J", "shared_outage": ["db\n"],
        "cluster_health": {"ok": false, "error": "bad\tthing"},
        "backends": [{"address": "a\nb\tc", "state": "up", "last_check": {
            "ok": false, "error": "x\ry", "latency_ms": f64::MAX, "at": "2999-01-01T00:00:00Z",
            "services": {"disk\nspace": false}}}]}]}));
    let out = render_at(&hostile, now());
    assert!(out.starts_with("splicer ?, up ?\n"), "{out}");
    assert!(!out.contains(['\t', '\r', '\x1b']), "{out:?}");
    assert!(
        out.contains("pool q?[2J (?)  shared outage: db?  cluster: FAILING (bad?thing)"),
        "{out}"
    );
    let row = out.lines().find(|l| l.contains("a?b?c")).expect("row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "a?b?c",
            "up",
            "0",
            "0",
            "0",
            "0",
            "fail:",
            "x?y",
            "(disk?space)",
            "?",
            "0s",
            "ago"
        ]
    );
}

#[test]
fn a_document_of_the_wrong_shape_is_refused_not_guessed() {
    for wrong in [
        json!(null),
        json!(42),
        json!([1, 2, 3]),
        json!({"uptime_seconds": "long"}),
        json!({"pools": "none"}),
        json!({"pools": [{"backends": [{"weight": -1}]}]}),
        json!({"pools": [{"backends": [{"last_check": {"ok": "yes"}}]}]}),
    ] {
        assert!(Status::deserialize(&wrong).is_err(), "{wrong} was read");
    }
    // Unknown fields are a newer splicer talking, not an error.
    let newer = typed(
        json!({"version": "9.0.0", "shiny": true, "pools": [{"name": "quay",
        "backends": [{"address": "10.0.0.11:443", "state": "up", "shiny": [1]}]}]}),
    );
    assert_eq!(newer.pools[0].backends[0].state, "up");
}

#[test]
fn verdict_follows_operator_intent_and_cluster_health() {
    let check = |ok: bool, status: u16, error: Value| {
        json!({"ok": ok, "status": status, "latency_ms": 1.0, "error": error,
               "at": "2026-11-27T12:00:01Z"})
    };
    let up = || backend("10.0.0.11:443", "up", check(true, 200, Value::Null));
    let healthy = doc_with_backends(json!({}), vec![up()]);
    assert_eq!(Verdict::of(&healthy), Verdict::Healthy);
    assert_eq!(Verdict::of(&healthy).exit_code(), 0);
    assert_eq!(Verdict::of(&Status::default()), Verdict::Healthy);

    let down = doc_with_backends(
        json!({}),
        vec![
            up(),
            backend(
                "10.0.0.12:443",
                "down",
                check(false, 503, json!("status 503")),
            ),
        ],
    );
    let verdict = Verdict::of(&down);
    assert_eq!(verdict.exit_code(), 1);
    assert_eq!(
        verdict.summary(),
        "degraded: quay/10.0.0.12:443 down (status 503)"
    );

    // Draining and disabled backends are the operator's intent, whatever their checks say.
    let held = doc_with_backends(
        json!({}),
        vec![
            up(),
            backend("10.0.0.12:443", "draining", check(false, 503, Value::Null)),
            backend("10.0.0.13:443", "disabled", Value::Null),
        ],
    );
    assert_eq!(Verdict::of(&held), Verdict::Healthy);

    // Cluster health failing, a backend never checked, and passive marking's reason.
    let mut passive = backend("10.0.0.13:443", "down", check(true, 200, Value::Null));
    passive["down_reason"] = json!("3 connect failures in a row");
    let mut quay = backend("10.0.0.14:443", "down", check(false, 503, Value::Null));
    quay["last_check"]["services"] = json!({"database": true, "disk_space": false});
    let doc = doc_with_backends(
        json!({"cluster_health": {"ok": false, "status": 503, "checked_at": "2026-11-27T12:00:00Z"}}),
        vec![backend("10.0.0.12:443", "down", Value::Null), passive, quay],
    );
    assert_eq!(
        problems(&doc),
        [
            "quay/10.0.0.12:443 down (not checked yet)",
            "quay/10.0.0.13:443 down (3 connect failures in a row)",
            "quay/10.0.0.14:443 down (status 503) failing: disk_space",
            "cluster health failing for pool quay (status 503)",
        ]
    );
    let ok_cluster = doc_with_backends(
        json!({"cluster_health": {"ok": true, "status": 200, "checked_at": "2026-11-27T12:00:00Z"}}),
        vec![up()],
    );
    assert_eq!(Verdict::of(&ok_cluster), Verdict::Healthy);
}

#[test]
fn failures_say_whether_the_api_was_reached() {
    let refused = StatusCmdError::Connect {
        url: "http://127.0.0.1:9090".into(),
        reason: "connection refused".into(),
        source: io::Error::from(io::ErrorKind::ConnectionRefused),
    };
    let verdict = Verdict::failed(&refused);
    assert_eq!(verdict.exit_code(), 1);
    assert_eq!(
        verdict.summary(),
        "admin API unreachable: cannot reach the admin API at http://127.0.0.1:9090: \
         connection refused (is splicer running, and is [admin] enabled?)"
    );
    let denied = StatusCmdError::Http {
        url: "http://127.0.0.1:9090".into(),
        status: 401,
        body: String::new(),
    };
    assert!(!denied.is_unreachable());
    assert_eq!(
        Verdict::failed(&denied).summary(),
        "the admin API at http://127.0.0.1:9090 answered GET /status with 401 Unauthorized"
    );
}

#[test]
fn watch_frames_show_the_outage_and_the_recovery() {
    let t0 = at("2026-11-27T12:00:00Z");
    let later = |s: u64| t0 + Duration::from_secs(s);
    let mut watch = Watch::new("http://127.0.0.1:9090".into(), Duration::from_secs(1));
    assert!(watch.verdict().is_none());
    assert!(watch
        .frame(t0)
        .ends_with("\nwaiting for the first answer\n"));

    let doc = doc_with_backends(
        json!({}),
        vec![backend(
            "10.0.0.11:443",
            "up",
            json!({"ok": true, "status": 200, "latency_ms": 1.0, "error": null,
                   "at": "2026-11-27T12:00:00Z"}),
        )],
    );
    watch.observe(Ok(doc.clone()), t0);
    let frame = watch.frame(t0);
    assert!(
        frame.starts_with(
            "splicer status --watch  http://127.0.0.1:9090  every 1s  2026-11-27T12:00:00Z\n\
             healthy\n\nsplicer 0.1.0, up 1s\n"
        ),
        "{frame}"
    );
    assert!(frame.contains("  10.0.0.11:443  up "), "{frame}");

    let refused = || StatusCmdError::Connect {
        url: "http://127.0.0.1:9090".into(),
        reason: "connection refused".into(),
        source: io::Error::from(io::ErrorKind::ConnectionRefused),
    };
    watch.observe(Err(refused()), later(2));
    watch.observe(Err(refused()), later(7));
    assert_eq!(watch.verdict().map(Verdict::exit_code), Some(1));
    let frame = watch.frame(later(7));
    let lines: Vec<&str> = frame.lines().collect();
    assert_eq!(
        lines[1],
        "admin API unreachable since 2026-11-27T12:00:02Z (5s): cannot reach the admin API at \
         http://127.0.0.1:9090: connection refused (is splicer running, and is [admin] enabled?)"
    );
    assert_eq!(lines[3], "last status, from 2026-11-27T12:00:00Z:");
    assert!(frame.contains("  10.0.0.11:443  up "), "{frame}");

    watch.observe(Ok(doc), later(8));
    assert_eq!(watch.verdict(), Some(&Verdict::Healthy));
    let frame = watch.frame(later(8));
    assert!(!frame.contains("unreachable"), "{frame}");
    assert_eq!(frame.lines().nth(1), Some("healthy"));
}

#[test]
fn watch_intervals() {
    assert_eq!(parse_every("1"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_every("0.5"), Ok(Duration::from_millis(500)));
    assert!(parse_every("0.1").is_ok_and(|d| d >= MIN_EVERY - Duration::from_nanos(1)));
    for bad in ["0", "0.05", "-1", "soon", "NaN", "inf", ""] {
        assert!(parse_every(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn spans_use_two_largest_units() {
    assert_eq!(span(0), "0s");
    assert_eq!(span(59), "59s");
    assert_eq!(span(125), "2m 5s");
    assert_eq!(span(3 * 3600 + 12 * 60 + 9), "3h 12m");
    assert_eq!(span(2 * 86_400 + 5 * 3600), "2d 5h");
}

#[test]
fn admin_urls() {
    let ok = |s: &str| {
        AdminUrl::parse(s)
            .map(|u| u.url())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        ok("http://127.0.0.1:9090").as_deref(),
        Ok("http://127.0.0.1:9090")
    );
    assert_eq!(ok("127.0.0.1:9191").as_deref(), Ok("http://127.0.0.1:9191"));
    assert_eq!(
        ok("HTTP://localhost:9090/").as_deref(),
        Ok("http://localhost:9090")
    );
    assert_eq!(
        ok(" http://10.0.0.5:9090/status ").as_deref(),
        Ok("http://10.0.0.5:9090")
    );
    assert_eq!(ok("10.0.0.5").as_deref(), Ok("http://10.0.0.5:9090"));
    assert_eq!(ok("[::1]:9090").as_deref(), Ok("http://[::1]:9090"));
    assert_eq!(ok("http://[::1]").as_deref(), Ok("http://[::1]:9090"));
    assert_eq!(
        AdminUrl::parse("[::1]:9090")
            .map(|u| u.host)
            .ok()
            .as_deref(),
        Some("::1")
    );

    assert_eq!(
        ok("https://127.0.0.1:9090").unwrap_err(),
        "invalid admin URL \"https://127.0.0.1:9090\": the admin API speaks plain HTTP, \
             not HTTPS; use http://127.0.0.1:9090"
    );
    for bad in [
        "ftp://x:1",
        "http://",
        ":9090",
        "::1:9090",
        "[::1",
        "[nope]:1",
        "[::1]x",
        "host:0",
        "host:99999",
        "host:port",
        "http://host:9090/metrics",
        "http://user@host:9090",
        "ho st:9090",
    ] {
        assert!(
            matches!(AdminUrl::parse(bad), Err(StatusCmdError::BadUrl { .. })),
            "{bad:?} should be a bad URL"
        );
    }
}

#[test]
fn error_messages_read_for_an_operator() {
    let refused = StatusCmdError::Connect {
        url: "http://127.0.0.1:9090".into(),
        reason: connect_reason(&io::Error::from(io::ErrorKind::ConnectionRefused)),
        source: io::Error::from(io::ErrorKind::ConnectionRefused),
    };
    assert_eq!(
        refused.to_string(),
        "cannot reach the admin API at http://127.0.0.1:9090: connection refused \
             (is splicer running, and is [admin] enabled?)"
    );
    let http = StatusCmdError::Http {
        url: "http://127.0.0.1:9090".into(),
        status: 401,
        body: r#"{"error":"missing bearer token"}"#.into(),
    };
    assert_eq!(
        http.to_string(),
        "the admin API at http://127.0.0.1:9090 answered GET /status with 401 Unauthorized: \
             missing bearer token"
    );
    let long = StatusCmdError::Http {
        url: "u".into(),
        status: 599,
        body: format!("{}\nsecond line", "x".repeat(500)),
    };
    let text = long.to_string();
    assert!(text.starts_with("the admin API at u answered GET /status with 599: xxx"));
    assert!(text.ends_with("x..."), "{text}");
    let timeout = StatusCmdError::Timeout {
        url: "http://127.0.0.1:9090".into(),
        after: Duration::from_millis(300),
        connected: true,
    };
    assert_eq!(
        timeout.to_string(),
        "the admin API at http://127.0.0.1:9090 accepted the connection but did not answer \
             GET /status within 300ms"
    );
}
