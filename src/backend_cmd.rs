//! `splicer backend add|remove|drain|disable|enable POOL ADDRESS`: membership changes and admin
//! actions on a running instance through its admin API (docs/architecture.md §10), for operators and
//! autoscaling hooks. The HTTP exchange is [`crate::status_cmd`]'s; `--wait` polls `/status`
//! until the change has taken effect, judged by a pure function of the document
//! ([`progress`]) so the waiting rules are tested without sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config;
use crate::status_cmd::{self, StatusCmdError};
use crate::status_doc::{BackendStatus, Status};

/// Exit code of a refused action, an unreachable admin API or a `--wait` that ran out of time.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code of a usage error: bad arguments, an unreadable token file, a missing token.
pub const EXIT_USAGE: u8 = 2;

/// How often `--wait` reads `/status`: a health check runs every `interval` (2 s by default),
/// so four reads a second notice a change promptly at no cost to the instance.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Bound of one `/status` read while waiting; a slower answer is retried until `--timeout`.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Characters of a pool name or an address sent as they are in a path segment; everything else
/// is percent-encoded (`:` and IPv6 brackets included), which the admin API decodes.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What to do to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Add it to the pool (it starts down and needs `rise` passing checks).
    Add,
    /// Remove it from the pool: it drains, then leaves.
    Remove,
    /// No new connections; open ones continue up to `drain_timeout`.
    Drain,
    /// No new connections and no checks until enabled.
    Disable,
    /// Undo drain or disable.
    Enable,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Drain => "drain",
            Action::Disable => "disable",
            Action::Enable => "enable",
        }
    }
}

/// `splicer backend`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: Action,
    /// Pool name.
    pub pool: String,
    /// The backend, `ip:port` (IPv6 as `[2001:db8::7]:443`).
    pub address: String,
    /// Weight of a backend being added (1 to 256; default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(config::MAX_BACKEND_WEIGHT)))]
    pub weight: Option<u32>,
    /// Wait until it took effect: added or enabled backend up; removed one drained and gone;
    /// drained or disabled one without open connections.
    #[arg(long)]
    pub wait: bool,
    /// Longest the whole command may take, waiting included.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The instance's admin API: http://host:port or host:port.
    #[arg(long, value_name = "URL", env = "SPLICER_ADMIN", default_value = status_cmd::DEFAULT_ADMIN)]
    pub admin: String,
    /// File holding the admin bearer token (admin.token_file), when one is set.
    #[arg(long, value_name = "PATH", env = "SPLICER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Why the command did not succeed, with the exit code it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// [`EXIT_REFUSED`] or [`EXIT_USAGE`].
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl Failure {
    fn usage(message: String) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message,
        }
    }

    fn refused(message: String) -> Failure {
        Failure {
            code: EXIT_REFUSED,
            message,
        }
    }

    fn from_request(e: StatusCmdError) -> Failure {
        match e {
            e @ StatusCmdError::BadUrl { .. } => Failure::usage(e.to_string()),
            e => Failure::refused(e.to_string()),
        }
    }
}

/// Runs the command: the line for stdout (`POOL ADDRESS STATE`) on success; `say` receives
/// the progress lines of `--wait` (for stderr).
pub async fn run(args: &BackendArgs, say: &mut dyn FnMut(&str)) -> Result<String, Failure> {
    let deadline = Instant::now() + args.timeout;
    let address = config::parse_backend_address(&args.address).map_err(Failure::usage)?;
    if args.weight.is_some() && args.action != Action::Add {
        return Err(Failure::usage(format!(
            "--weight applies to `backend add` only, not `backend {}`",
            args.action.as_str()
        )));
    }
    let token = read_token(args)?;
    let (method, path, body) = request_for(args.action, &args.pool, address, args.weight);
    let remaining = deadline.saturating_duration_since(Instant::now());
    let (code, answer) = status_cmd::request_with(
        &args.admin,
        method.clone(),
        &path,
        token.as_deref(),
        body,
        remaining,
    )
    .await
    .map_err(Failure::from_request)?;
    if !(200..300).contains(&code) {
        return Err(refusal(args, address, code, &answer));
    }
    let state = json_field(&answer, "state").unwrap_or_else(|| "?".to_string());
    if !args.wait {
        return Ok(format!("{} {address} {state}\n", args.pool));
    }
    say(&format!(
        "{} {address}: {state}; waiting until it {}",
        args.pool,
        goal(args.action)
    ));
    wait(args, address, deadline, say).await
}

/// The admin API request for `action`: method, path, JSON body.
fn request_for(
    action: Action,
    pool: &str,
    address: SocketAddr,
    weight: Option<u32>,
) -> (Method, String, Option<Bytes>) {
    let pool_seg = utf8_percent_encode(pool, SEGMENT).to_string();
    let addr_seg = utf8_percent_encode(&address.to_string(), SEGMENT).to_string();
    let member = format!("/pools/{pool_seg}/backends/{addr_seg}");
    match action {
        Action::Add => {
            let mut doc = json!({ "address": address.to_string() });
            if let Some(w) = weight {
                doc["weight"] = json!(w);
            }
            (
                Method::POST,
                format!("/pools/{pool_seg}/backends"),
                Some(Bytes::from(doc.to_string())),
            )
        }
        Action::Remove => (Method::DELETE, member, None),
        Action::Drain | Action::Disable | Action::Enable => {
            (Method::POST, format!("{member}/{}", action.as_str()), None)
        }
    }
}

fn read_token(args: &BackendArgs) -> Result<Option<String>, Failure> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) => Err(Failure::usage(format!(
            "cannot read token file {}: {e}",
            path.display()
        ))),
    }
}

/// A string field of a JSON answer.
fn json_field(body: &[u8], key: &str) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    doc.get(key)?.as_str().map(str::to_string)
}

/// The failure for a non-2xx answer: a missing token or a request the API could not read is a
/// usage error; everything else (unknown pool or backend, an existing member, a pool fed by
/// DNS, a backend a reload removed) is a refused action.
fn refusal(args: &BackendArgs, address: SocketAddr, code: u16, body: &[u8]) -> Failure {
    let why = json_field(body, "error").unwrap_or_else(|| {
        String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect()
    });
    let message = format!(
        "backend {} {} {address} refused ({code}): {why}",
        args.action.as_str(),
        args.pool
    );
    match code {
        401 => Failure::usage(format!(
            "{message} (give the admin token with --token-file)"
        )),
        400 => Failure::usage(message),
        _ => Failure::refused(message),
    }
}

/// What `--wait` waits for, in words.
fn goal(action: Action) -> &'static str {
    match action {
        Action::Add | Action::Enable => "is up",
        Action::Remove => "has drained and is gone",
        Action::Drain | Action::Disable => "has no open connections",
    }
}

/// Where a change stands on a `/status` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Done: the final state (`up`, `gone`, `draining`, ...).
    Done(String),
    /// Not yet: a line saying where it stands.
    Pending(String),
    /// It cannot happen any more (the backend went away, or an operator undid the action).
    Lost(String),
}

/// Judges `doc` for `action` on `pool/address`.
pub fn progress(action: Action, doc: &Status, pool: &str, address: SocketAddr) -> Progress {
    let name = address.to_string();
    let backend: Option<&BackendStatus> = doc
        .pools
        .iter()
        .find(|p| p.name == pool)
        .and_then(|p| p.backends.iter().find(|b| b.address == name));
    let Some(b) = backend else {
        return match action {
            Action::Remove => Progress::Done("gone".to_string()),
            _ => Progress::Lost(format!("{pool} {address} is no longer on /status")),
        };
    };
    let open = b.active_connections;
    let why = b
        .last_check
        .as_ref()
        .and_then(|c| c.error.clone())
        .map(|e| format!(" (last check: {e})"))
        .unwrap_or_default();
    let state = b.state.as_str();
    match action {
        Action::Add | Action::Enable => match state {
            "up" => Progress::Done(state.to_string()),
            "down" => Progress::Pending(format!("{pool} {address}: down{why}")),
            other => Progress::Lost(format!(
                "{pool} {address} is {other}: it will not come up by itself"
            )),
        },
        Action::Remove => Progress::Pending(format!(
            "{pool} {address}: {state}, {open} open connection{}",
            if open == 1 { "" } else { "s" }
        )),
        Action::Drain | Action::Disable => {
            let wanted = if action == Action::Drain {
                "draining"
            } else {
                "disabled"
            };
            if state != wanted {
                Progress::Lost(format!("{pool} {address} is {state} again, not {wanted}"))
            } else if open == 0 {
                Progress::Done(state.to_string())
            } else {
                Progress::Pending(format!(
                    "{pool} {address}: {state}, {open} open connection{}",
                    if open == 1 { "" } else { "s" }
                ))
            }
        }
    }
}

/// Polls `/status` until the change took effect or `deadline` passes; says each new
/// progress line once.
async fn wait(
    args: &BackendArgs,
    address: SocketAddr,
    deadline: Instant,
    say: &mut dyn FnMut(&str),
) -> Result<String, Failure> {
    let mut last_said = String::new();
    loop {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(POLL_TIMEOUT);
        let last = match status_cmd::fetch(&args.admin, budget).await {
            Ok(doc) => match progress(args.action, &doc, &args.pool, address) {
                Progress::Done(state) => return Ok(format!("{} {address} {state}\n", args.pool)),
                Progress::Lost(why) => return Err(Failure::refused(why)),
                Progress::Pending(line) => line,
            },
            Err(e) => format!("cannot read /status: {e}"),
        };
        if last != last_said {
            say(&last);
            last_said = last.clone();
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::refused(format!(
                "gave up after {}: {last}",
                humantime::format_duration(args.timeout)
            )));
        }
        tokio::time::sleep_until((now + POLL_EVERY).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_doc::PoolStatus;

    fn doc(backends: &[(&str, &str, u64)]) -> Status {
        Status {
            pools: vec![PoolStatus {
                name: "quay".into(),
                backends: backends
                    .iter()
                    .map(|(a, s, open)| BackendStatus {
                        address: a.to_string(),
                        state: s.to_string(),
                        active_connections: *open,
                        ..BackendStatus::default()
                    })
                    .collect(),
                ..PoolStatus::default()
            }],
            ..Status::default()
        }
    }

    #[test]
    fn waiting_rules() {
        let a: SocketAddr = "10.0.0.14:443".parse().unwrap();
        let is_done = |p: Progress| matches!(p, Progress::Done(_));
        let is_pending = |p: Progress| matches!(p, Progress::Pending(_));
        let is_lost = |p: Progress| matches!(p, Progress::Lost(_));
        let at = |s: &str, open| doc(&[("10.0.0.14:443", s, open)]);
        let gone = doc(&[("10.0.0.11:443", "up", 0)]);
        let p = |action, d: &Status| progress(action, d, "quay", a);
        assert!(is_pending(p(Action::Add, &at("down", 0))));
        assert!(is_done(p(Action::Add, &at("up", 0))));
        assert!(is_lost(p(Action::Add, &at("disabled", 0))));
        assert!(is_lost(p(Action::Add, &gone)));
        assert!(is_done(p(Action::Enable, &at("up", 3))));
        assert!(is_pending(p(Action::Remove, &at("draining", 1))));
        assert!(is_done(p(Action::Remove, &gone)));
        assert_eq!(p(Action::Remove, &gone), Progress::Done("gone".into()));
        assert!(is_done(p(Action::Remove, &Status::default())));
        assert!(is_pending(p(Action::Drain, &at("draining", 2))));
        assert!(is_done(p(Action::Drain, &at("draining", 0))));
        assert!(is_lost(p(Action::Drain, &at("up", 0))));
        assert!(is_done(p(Action::Disable, &at("disabled", 0))));
        assert!(is_pending(p(Action::Disable, &at("disabled", 1))));
    }

    #[test]
    fn requests() {
        let a: SocketAddr = "[::1]:8443".parse().unwrap();
        let (m, path, body) = request_for(Action::Add, "quay", a, Some(2));
        assert_eq!((m, path.as_str()), (Method::POST, "/pools/quay/backends"));
        let body: Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(body, json!({"address": "[::1]:8443", "weight": 2}));
        let (_, _, body) = request_for(Action::Add, "quay", a, None);
        let body: Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(body, json!({"address": "[::1]:8443"}));
        let (m, path, body) = request_for(Action::Remove, "quay-2", a, None);
        assert_eq!(
            (m, path.as_str(), body),
            (
                Method::DELETE,
                "/pools/quay-2/backends/%5B%3A%3A1%5D%3A8443",
                None
            )
        );
        let v4: SocketAddr = "10.0.0.14:443".parse().unwrap();
        let (m, path, _) = request_for(Action::Drain, "q", v4, None);
        assert_eq!(
            (m, path.as_str()),
            (Method::POST, "/pools/q/backends/10.0.0.14%3A443/drain")
        );
    }
}
