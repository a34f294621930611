//! The `/status` document as plain-text tables: a pure function of the typed document and a
//! clock. Values come from another process (perhaps another version), so text is cleaned of
//! control characters and an empty name, an unparsable time or an impossible number shows as
//! `?` instead of breaking a column.

use std::time::SystemTime;

use crate::status_doc::{BackendStatus, CheckStatus, ClusterHealthStatus, PoolStatus, Status};

/// Renders a `/status` document as plain-text tables, ages measured against the system clock.
pub fn render(status: &Status) -> String {
    render_at(status, SystemTime::now())
}

/// Renders a `/status` document as plain-text tables, ages measured against `now`.
pub fn render_at(status: &Status, now: SystemTime) -> String {
    let mut heading = format!(
        "splicer {}, up {}",
        text(&status.version),
        uptime(status.uptime_seconds)
    );
    // The pid tells an operator watching through a binary upgrade which process answers.
    if let Some(pid) = status.pid {
        heading.push_str(&format!(", pid {pid}"));
    }
    let mut lines = vec![heading, String::new()];

    if status.listeners.is_empty() {
        lines.push("no listeners".into());
    } else {
        let rows: Vec<Vec<String>> = status
            .listeners
            .iter()
            .map(|l| {
                vec![
                    text(&l.name),
                    text(&l.bind),
                    l.active_connections.to_string(),
                    l.total_connections.to_string(),
                ]
            })
            .collect();
        lines.extend(table(LISTENER_COLUMNS, &rows, ""));
    }

    if status.pools.is_empty() {
        lines.push(String::new());
        lines.push("no pools".into());
    }
    for pool in &status.pools {
        lines.push(String::new());
        lines.push(pool_heading(pool));
        if pool.backends.is_empty() {
            lines.push("  (no backends)".into());
        } else {
            let rows: Vec<Vec<String>> =
                pool.backends.iter().map(|b| backend_row(b, now)).collect();
            lines.extend(table(BACKEND_COLUMNS, &rows, "  "));
        }
    }

    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// How a column's cells line up: names left, numbers right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

const LISTENER_COLUMNS: &[(&str, Align)] = &[
    ("LISTENER", Align::Left),
    ("BIND", Align::Left),
    ("ACTIVE", Align::Right),
    ("TOTAL", Align::Right),
];

const BACKEND_COLUMNS: &[(&str, Align)] = &[
    ("BACKEND", Align::Left),
    ("STATE", Align::Left),
    ("WEIGHT", Align::Right),
    ("ACTIVE", Align::Right),
    ("TOTAL", Align::Right),
    ("FAILS", Align::Right),
    ("LAST CHECK", Align::Left),
    ("LATENCY", Align::Right),
    ("AGE", Align::Left),
];

/// Column gap: two spaces, so single-space values (`ok 200`) still read as one cell.
const GAP: &str = "  ";

/// Header and rows with each column as wide as its widest cell (counted in chars, as `format!`
/// pads), each line prefixed by `indent` and without trailing blanks.
fn table(columns: &[(&str, Align)], rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .fold(name.chars().count(), usize::max)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(columns.iter().zip(&widths))
            .map(|(cell, ((_, align), &width))| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        format!("{indent}{}", padded.join(GAP))
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|(name, _)| *name).collect())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// The pool's line: name and algorithm, then only the conditions worth a look.
fn pool_heading(pool: &PoolStatus) -> String {
    let mut parts = vec![format!(
        "pool {} ({})",
        text(&pool.name),
        text(&pool.balance)
    )];
    if pool.fail_open {
        parts.push("FAIL-OPEN".into());
    }
    if !pool.shared_outage.is_empty() {
        let names: Vec<String> = pool.shared_outage.iter().map(|s| text(s)).collect();
        parts.push(format!("shared outage: {}", names.join(", ")));
    }
    if let Some(health) = &pool.cluster_health {
        parts.push(format!("cluster: {}", cluster_verdict(health)));
    }
    parts.join(GAP)
}

/// `ok (200)`, `FAILING (503)`, `FAILING (timeout)`.
pub(super) fn cluster_verdict(health: &ClusterHealthStatus) -> String {
    let detail = match (health.status, &health.error) {
        (Some(status), _) => format!(" ({status})"),
        (None, Some(error)) => format!(" ({})", clean(error)),
        (None, None) => String::new(),
    };
    if health.ok {
        format!("ok{detail}")
    } else {
        format!("FAILING{detail}")
    }
}

fn backend_row(backend: &BackendStatus, now: SystemTime) -> Vec<String> {
    let check = backend.last_check.as_ref();
    let services = backend.failing_services();
    let mut verdict = check.map_or_else(|| "-".into(), check_verdict);
    // Why a machine fails is the first thing an operator asks (docs/architecture.md §10).
    if !services.is_empty() {
        let names: Vec<String> = services.iter().map(|s| clean(s)).collect();
        verdict.push_str(&format!(" ({})", names.join(", ")));
    }
    vec![
        text(&backend.address),
        text(&backend.state),
        backend.weight.to_string(),
        backend.active_connections.to_string(),
        backend.total_connections.to_string(),
        backend.connect_failures.to_string(),
        verdict,
        check.map_or_else(|| "-".into(), |c| latency(c.latency_ms)),
        check.map_or_else(|| "-".into(), |c| age(&c.at, now)),
    ]
}

/// `ok 200`, `ok` (a TCP check), `fail: status 503`, `fail: timeout`.
pub(super) fn check_verdict(check: &CheckStatus) -> String {
    match (check.ok, check.status, &check.error) {
        (true, Some(status), _) => format!("ok {status}"),
        (true, None, _) => "ok".into(),
        (false, _, Some(error)) => format!("fail: {}", clean(error)),
        (false, Some(status), None) => format!("fail: status {status}"),
        (false, None, None) => "fail".into(),
    }
}

/// A check latency past this is garbage, not a measurement: checks time out within their
/// `interval`, which is minutes at most.
const LATENCY_MAX_MS: f64 = 86_400_000.0;

/// `3.2ms`, `1.25s`; `?` for a value no check could have taken (negative, or over a day), which
/// would otherwise print as a 300-digit column.
fn latency(ms: f64) -> String {
    if (0.0..1000.0).contains(&ms) {
        format!("{ms:.1}ms")
    } else if (1000.0..LATENCY_MAX_MS).contains(&ms) {
        format!("{:.2}s", ms / 1000.0)
    } else {
        "?".into()
    }
}

/// Time since an RFC 3339 instant: `1s ago`, `2m 5s ago`; a timestamp ahead of `now` (clock
/// skew) shows as `0s ago`.
fn age(at: &str, now: SystemTime) -> String {
    match parse_time(at) {
        Some(at) => {
            let age = now.duration_since(at).unwrap_or_default();
            format!("{} ago", span(age.as_secs()))
        }
        None => "?".into(),
    }
}

/// An RFC 3339 time as `/status` writes it (or without the `Z`, as older builds might).
fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s)
        .or_else(|_| humantime::parse_rfc3339_weak(s))
        .ok()
}

fn uptime(secs: f64) -> String {
    if secs.is_finite() && secs >= 0.0 {
        // `as` saturates; a float of seconds past u64::MAX is garbage anyway.
        span(secs as u64)
    } else {
        "?".into()
    }
}

/// A duration in its two largest units: `45s`, `2m 5s`, `3h 12m`, `4d 2h`.
pub(super) fn span(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// A name as shown: cleaned, or `?` when empty (the lenient reader's default for a field the
/// sender left out).
fn text(s: &str) -> String {
    if s.is_empty() {
        "?".into()
    } else {
        clean(s)
    }
}

/// Control characters replaced, so a hostile or broken value cannot break a line or a column.
pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
