//! What one look at `/status` means for a monitor (docs/architecture.md §10): healthy when every backend
//! the operator has not taken out (draining, disabled) is up and every configured cluster
//! check passes; degraded otherwise; unknown when the admin API gave no usable answer. Pure,
//! so the exit-code rule is tested without sockets.

use crate::status_doc::{BackendStatus, PoolStatus, Status};

use super::render::clean;
use super::StatusCmdError;

/// Exit code of a healthy look.
pub const EXIT_HEALTHY: u8 = 0;
/// Exit code of a degraded look or of no usable answer: never 2, which Docker reserves and
/// `status` keeps for usage errors.
pub const EXIT_UNHEALTHY: u8 = 1;

/// The outcome of one look at a running splicer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every backend not held out by the operator is up; every cluster check passes.
    Healthy,
    /// What is wrong, one phrase per problem (`quay/10.0.0.12:443 down (status 503)`).
    Degraded(Vec<String>),
    /// No usable `/status`: the message says why (`admin API unreachable: ...`).
    Unknown(String),
}

impl Verdict {
    /// The verdict on a document.
    pub fn of(status: &Status) -> Verdict {
        let problems = problems(status);
        if problems.is_empty() {
            Verdict::Healthy
        } else {
            Verdict::Degraded(problems)
        }
    }

    /// The verdict when `/status` could not be had.
    pub fn failed(error: &StatusCmdError) -> Verdict {
        Verdict::Unknown(failure_message(error))
    }

    /// 0 when healthy, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Healthy => EXIT_HEALTHY,
            Verdict::Degraded(_) | Verdict::Unknown(_) => EXIT_UNHEALTHY,
        }
    }

    /// One line for stderr or a status line: `healthy`, `degraded: a; b`, or the failure.
    pub fn summary(&self) -> String {
        match self {
            Verdict::Healthy => "healthy".into(),
            Verdict::Degraded(problems) => format!("degraded: {}", problems.join("; ")),
            Verdict::Unknown(message) => message.clone(),
        }
    }
}

/// A failure to get `/status` in one line: connection-level failures say `admin API
/// unreachable` first, so a monitor's message tells "splicer is down" from "a backend is".
pub fn failure_message(error: &StatusCmdError) -> String {
    if error.is_unreachable() {
        format!("admin API unreachable: {error}")
    } else {
        error.to_string()
    }
}

/// Every reason the document is not healthy, pool by pool, in document order.
pub fn problems(status: &Status) -> Vec<String> {
    let mut problems = Vec::new();
    for pool in &status.pools {
        for backend in &pool.backends {
            if !backend.is_operator_held() && backend.state != "up" {
                problems.push(backend_problem(pool, backend));
            }
        }
        if let Some(health) = pool.cluster_health.as_ref().filter(|h| !h.ok) {
            let detail = match (health.status, &health.error) {
                (_, Some(error)) => format!(" ({})", clean(error)),
                (Some(status), None) => format!(" (status {status})"),
                (None, None) => String::new(),
            };
            problems.push(format!(
                "cluster health failing for pool {}{detail}",
                clean(&pool.name)
            ));
        }
    }
    problems
}

/// `quay/10.0.0.12:443 down (status 503)`: where, what state, and the best reason known.
fn backend_problem(pool: &PoolStatus, backend: &BackendStatus) -> String {
    let state = if backend.state.is_empty() {
        "?".to_owned()
    } else {
        clean(&backend.state)
    };
    let check = backend.last_check.as_ref();
    let reason = backend
        .down_reason
        .clone()
        .or_else(|| check.and_then(|c| c.error.clone()))
        .or_else(|| check.and_then(|c| c.status).map(|s| format!("status {s}")))
        .or_else(|| check.is_none().then(|| "not checked yet".to_owned()));
    let mut text = format!("{}/{} {state}", clean(&pool.name), clean(&backend.address));
    if let Some(reason) = reason {
        text.push_str(&format!(" ({})", clean(&reason)));
    }
    let services = backend.failing_services();
    if !services.is_empty() {
        text.push_str(&format!(" failing: {}", clean(&services.join(", "))));
    }
    text
}
