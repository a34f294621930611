//! Configuration: the TOML file's serde mirror (`file`), turned by `validate` into the typed
//! [`Config`] below, which cannot hold an invalid value. `run`, `check` and (later) reload all go
//! through [`load`], so they accept and reject exactly the same files.

pub mod diff;
mod error;
mod file;
pub mod read;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{line_col, ConfigError, Location, Problem};

/// Reads and validates the config file at `path`. It blocks (file I/O, parsing): async callers
/// run it with `spawn_blocking`, never on a thread that serves connections.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read::read_regular_text(path, read::MAX_CONFIG_BYTES).map_err(|e| {
        let message = match e {
            read::ReadFileError::TooLarge { size, limit } => format!(
                "the config file is {size} bytes; the limit is {limit} bytes ({} MiB)",
                limit / (1024 * 1024)
            ),
            e => format!("cannot read the config file: {e}"),
        };
        ConfigError::single(Problem::whole_file(path, message))
    })?;
    parse(path, &text)
}

/// Parses a backend or bind address exactly as the config file does: `ip:port`, IPv6 in
/// brackets, the port without leading zeros. The admin API uses it for `{address}` in paths.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    validate::socket_addr(s)
}

/// Parses a backend address as a `backends` entry of the config file is read: [`parse_address`]
/// and not port 0. The admin API validates backends added at run time with it.
pub fn parse_backend_address(s: &str) -> Result<SocketAddr, String> {
    validate::backend_addr(s)
}

/// Largest backend weight: enough for "ten times that machine", small enough that smooth
/// weighted round robin's counters stay tiny.
pub const MAX_BACKEND_WEIGHT: u32 = 256;

/// Checks a backend weight against the bounds the config file applies (1 to
/// [`MAX_BACKEND_WEIGHT`]).
pub fn check_backend_weight(weight: i64) -> Result<u32, String> {
    let why = "it is a relative share of new connections";
    match u32::try_from(weight) {
        Ok(w) if (1..=MAX_BACKEND_WEIGHT).contains(&w) => Ok(w),
        _ if weight < 1 => Err(format!("weight must be at least 1, not {weight}; {why}")),
        _ => Err(format!(
            "weight must be at most {MAX_BACKEND_WEIGHT}, not {weight}; {why}"
        )),
    }
}

/// Validates `text` as a config file; `path` names it in messages and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::validate(path, text)
}

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (for messages and reload).
    pub source: PathBuf,
    /// The admin HTTP API; `None` when the `[admin]` table is absent.
    pub admin: Option<AdminConfig>,
    /// Process-wide settings.
    pub runtime: RuntimeConfig,
    /// Listeners in file order; names are unique.
    pub listeners: Vec<ListenerConfig>,
    /// Pools in file order; names are unique and every listener's pool exists.
    pub pools: Vec<PoolConfig>,
}

impl Config {
    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// A readable multi-line summary, printed by `splicer check` on success.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        // Writing to a String cannot fail; the results are ignored for that reason.
        let mut out = String::new();
        let _ = writeln!(out, "config {}", self.source.display());
        let _ = writeln!(out, "listeners:");
        for l in &self.listeners {
            let limit = match l.max_connections {
                0 => "unlimited".to_string(),
                n => n.to_string(),
            };
            let idle = l.idle_timeout.map_or("never".to_string(), format_duration);
            let _ = writeln!(
                out,
                "  {}: bind {} -> pool {} (max_connections {limit}, idle_timeout {idle}, backlog {})",
                l.name, l.bind, l.pool, l.backlog
            );
            if l.accept_proxy {
                let _ = writeln!(
                    out,
                    "    reads a PROXY header from an upstream balancer first"
                );
            }
            if !l.routes.is_empty() {
                let _ = writeln!(
                    out,
                    "    SNI routes (ClientHello within {}; others -> pool {}):",
                    format_duration(l.client_hello_timeout),
                    l.pool
                );
                for r in &l.routes {
                    let _ = writeln!(out, "      {} -> pool {}", r.sni, r.pool);
                }
            }
        }
        let _ = writeln!(out, "pools:");
        for p in &self.pools {
            let _ = writeln!(
                out,
                "  {}: balance {}, connect_timeout {}, retries {}, fail_open {}, passive_fall {}",
                p.name,
                p.balance.as_str(),
                format_duration(p.connect_timeout),
                p.retries,
                p.fail_open,
                p.passive_fall
            );
            let h = &p.health;
            let what = match h.check {
                CheckKind::Https | CheckKind::Http => {
                    format!(
                        "{} GET {} expecting {}",
                        h.check.as_str(),
                        h.path,
                        h.expect_status
                    )
                }
                CheckKind::Tcp | CheckKind::None => h.check.as_str().to_string(),
            };
            let port = match h.port {
                0 => String::new(),
                n => format!(" on port {n}"),
            };
            let _ = writeln!(
                out,
                "    check: {what}{port} every {}, timeout {}, rise {}, fall {}",
                format_duration(h.interval),
                format_duration(h.timeout),
                h.rise,
                h.fall
            );
            if h.check == CheckKind::Https {
                let host = h
                    .host
                    .as_deref()
                    .map_or("no SNI, Host = the backend's address".to_string(), |host| {
                        format!("SNI and Host {host}")
                    });
                let verify = match (h.tls_verify, &h.ca_file) {
                    (false, _) => "certificate not verified".to_string(),
                    (true, Some(ca)) => format!("certificate verified against {}", ca.display()),
                    (true, None) => "certificate verified against the system roots".to_string(),
                };
                let _ = writeln!(out, "    check TLS: {verify}; {host}");
            }
            if !h.shared_dependencies.is_empty() {
                let _ = writeln!(
                    out,
                    "    shared dependencies (an outage of these on most backends ejects none): {}",
                    h.shared_dependencies.join(", ")
                );
            }
            if let Some(c) = &p.cluster_health {
                let _ = writeln!(
                    out,
                    "    cluster health: GET {} every {} (reported only)",
                    c.path,
                    format_duration(c.interval)
                );
            }
            match p.slow_start {
                Some(d) => {
                    let _ = writeln!(
                        out,
                        "    slow start: {} from a tenth of the weight",
                        format_duration(d)
                    );
                }
                None => {
                    let _ = writeln!(out, "    slow start: off");
                }
            }
            if p.send_proxy != SendProxy::Off {
                let _ = writeln!(
                    out,
                    "    sends a PROXY {} header to backends",
                    p.send_proxy.as_str()
                );
            }
            if let Some(d) = &p.discover {
                let _ = writeln!(
                    out,
                    "    backends: DNS {} port {}, every {}",
                    d.dns,
                    d.port,
                    format_duration(d.every)
                );
            }
            for b in &p.backends {
                let _ = writeln!(out, "    backend {} weight {}", b.address, b.weight);
            }
        }
        match &self.admin {
            Some(a) => {
                let token = match a.token {
                    Some(_) => "POST needs the token_file's bearer token",
                    None => "no token: POST is open to whoever can reach it",
                };
                let _ = writeln!(out, "admin: {} ({token})", a.bind);
            }
            None => {
                let _ = writeln!(out, "admin: off");
            }
        }
        let r = &self.runtime;
        let workers = match r.workers {
            0 => "one per CPU".to_string(),
            n => n.to_string(),
        };
        let _ = writeln!(
            out,
            "runtime: workers {workers}, drain_timeout {}, log_format {}, access_log {}",
            format_duration(r.drain_timeout),
            r.log_format.as_str(),
            r.access_log
        );
        out
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin HTTP API (non-loopback only with a token).
    pub bind: SocketAddr,
    /// Bearer token required on POST requests, read from `token_file`.
    pub token: Option<AdminToken>,
}

/// The admin bearer token; never printed (Debug shows it redacted).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        AdminToken(token)
    }

    /// Compares `candidate` with the token in time independent of where they differ, so the
    /// token can't be guessed byte by byte from response times. Both sides are hashed first so
    /// that the comparison (subtle's, not a hand-written loop the optimiser might shortcut)
    /// runs over equal lengths and the token's length does not leak either.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let want = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate);
        want.as_slice().ct_eq(given.as_slice()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Log line encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Worker threads; 0 = one per CPU.
    pub workers: usize,
    /// Time open connections get on shutdown.
    pub drain_timeout: Duration,
    /// Log encoding.
    pub log_format: LogFormat,
    /// One log line per finished connection.
    pub access_log: bool,
    /// After SIGTERM, how long listeners keep accepting while `/ready` says 503.
    pub shutdown_delay: Duration,
    /// How long a new process started by an upgrade may take to report ready.
    pub upgrade_timeout: Duration,
    /// Where admin decisions persist; `None` = nowhere.
    pub state_file: Option<PathBuf>,
    /// Entries of each listener's per-client table (its memory bound).
    pub client_table_size: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            drain_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            access_log: true,
            shutdown_delay: Duration::ZERO,
            upgrade_timeout: Duration::from_secs(30),
            state_file: None,
            client_table_size: 65536,
        }
    }
}

/// `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Default pool's name (exists in `Config::pools`).
    pub pool: String,
    /// 0 = unlimited; at the limit the listener stops accepting until a connection closes.
    pub max_connections: usize,
    /// Close a connection after this long without a byte either way; `None` = never (`"0s"`).
    pub idle_timeout: Option<Duration>,
    /// Time to receive a ClientHello, used only when routes exist.
    pub client_hello_timeout: Duration,
    /// listen(2) backlog.
    pub backlog: u32,
    /// Expect a PROXY v1/v2 header first; its source address is then the client.
    pub accept_proxy: bool,
    /// SO_REUSEPORT: only on request, since it lets a second process share the address.
    pub reuse_port: bool,
    /// `allow`/`deny`: who may connect at all.
    pub access: crate::edge::AccessList,
    /// `per_client_max_connections`/`per_client_rate`.
    pub client_limits: crate::edge::Limits,
    /// SNI routes, in file order (exact names win over wildcards at match time).
    pub routes: Vec<RouteConfig>,
}

/// One `[[listener.route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lowercased exact name, or `*.suffix` for one label.
    pub sni: String,
    /// Pool for matching connections (exists in `Config::pools`).
    pub pool: String,
}

/// PROXY protocol header written to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendProxy {
    /// None.
    #[default]
    Off,
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

impl SendProxy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SendProxy::Off => "off",
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }
}

/// `discover = { dns, port, every }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// Name whose A/AAAA records are the members.
    pub dns: String,
    /// Port of every member.
    pub port: u16,
    /// Re-resolution period.
    pub every: Duration,
    /// DNS server to ask; `None` = the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub server: Option<SocketAddr>,
}

/// `[pool.cluster_health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealthConfig {
    /// Request path (default `/health/endtoend`).
    pub path: String,
    /// Probe period (default 10s).
    pub interval: Duration,
}

/// Balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceKind {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConnections,
    /// Power of two random choices on active connections.
    RandomTwo,
    /// Consistent hashing of the client IP.
    ClientHash,
}

impl BalanceKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceKind::RoundRobin => "round_robin",
            BalanceKind::LeastConnections => "least_connections",
            BalanceKind::RandomTwo => "random_two",
            BalanceKind::ClientHash => "client_hash",
        }
    }
}

/// One static backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// `ip:port`.
    pub address: SocketAddr,
    /// Relative share of new connections, 1..=256.
    pub weight: u32,
}

/// `[[pool]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// Balancing algorithm.
    pub balance: BalanceKind,
    /// Static members, in file order, addresses unique within the pool (empty with `discover`).
    pub backends: Vec<BackendConfig>,
    /// DNS discovery instead of static members.
    pub discover: Option<DiscoverConfig>,
    /// PROXY header written to backends (and to health checks).
    pub send_proxy: SendProxy,
    /// Ramp-up time of a backend that comes up; `None` = off.
    pub slow_start: Option<Duration>,
    /// Time allowed for one backend connect.
    pub connect_timeout: Duration,
    /// Further backends tried after a failed connect.
    pub retries: u32,
    /// With no backend up, spread over the down ones.
    pub fail_open: bool,
    /// Consecutive data-path connect failures that mark a backend down; 0 = off.
    pub passive_fall: u32,
    /// Active health checking.
    pub health: HealthConfig,
    /// Cluster-wide probe, reported only.
    pub cluster_health: Option<ClusterHealthConfig>,
}

#[cfg(test)]
impl PoolConfig {
    /// A round-robin pool named `p` with no backends and default checks, for unit tests.
    pub(crate) fn for_tests() -> PoolConfig {
        PoolConfig {
            name: "p".into(),
            balance: BalanceKind::RoundRobin,
            backends: Vec::new(),
            discover: None,
            send_proxy: Default::default(),
            slow_start: None,
            cluster_health: None,
            connect_timeout: Duration::from_secs(1),
            retries: 0,
            fail_open: true,
            passive_fall: 0,
            health: Default::default(),
        }
    }
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckKind {
    /// HTTP GET over TLS.
    #[default]
    Https,
    /// HTTP GET over plain TCP.
    Http,
    /// TCP connect only.
    Tcp,
    /// No checks: every backend is up.
    None,
}

impl CheckKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Https => "https",
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::None => "none",
        }
    }
}

/// Set of accepted HTTP status codes (`"200"`, `"200-299"`, `"200,204"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatcher {
    /// Inclusive ranges.
    pub ranges: Vec<(u16, u16)>,
}

impl StatusMatcher {
    /// Whether `status` is accepted.
    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| lo <= status && status <= hi)
    }
}

impl std::fmt::Display for StatusMatcher {
    /// The config spelling, e.g. `200-299,304`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl Default for StatusMatcher {
    fn default() -> Self {
        StatusMatcher {
            ranges: vec![(200, 200)],
        }
    }
}

/// `[pool.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Kind of check.
    pub check: CheckKind,
    /// Request path (http/https).
    pub path: String,
    /// Port to probe; 0 = the backend's own.
    pub port: u16,
    /// Time between checks (plus up to a tenth of jitter).
    pub interval: Duration,
    /// Time one check may take; below `interval`.
    pub timeout: Duration,
    /// Consecutive passes to come up (>= 1).
    pub rise: u32,
    /// Consecutive failures to go down (>= 1).
    pub fall: u32,
    /// Accepted statuses.
    pub expect_status: StatusMatcher,
    /// Host header and SNI; `None` = the backend's address and no SNI.
    pub host: Option<String>,
    /// Verify the backend certificate.
    pub tls_verify: bool,
    /// CA bundle for verification (PEM); `None` = system roots. Resolved relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// Services every backend shares: their failure alone, across the pool, ejects no one.
    pub shared_dependencies: Vec<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::Https,
            path: "/health/instance".to_string(),
            port: 0,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect_status: StatusMatcher::default(),
            host: None,
            tls_verify: false,
            ca_file: None,
            shared_dependencies: Vec::new(),
        }
    }
}

/// Longest duration the config accepts: a year is a typo, not a timeout.
const MAX_DURATION_MS: u128 = 365 * 86_400_000;

/// Parses a duration such as `"500ms"`, `"2s"`, `"1.5s"`, `"15m"`, `"1h"` or `"0s"`. The value
/// must be a whole number of milliseconds (`"0.5ms"` and `"0.0000001ms"` are errors, never a
/// silent 0): the decimal is computed exactly, not through a float. Whether 0 is allowed is the
/// key's rule (see `validate`), not the parser's.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration \"{s}\" has no unit (use ms, s, m or h, e.g. \"2s\")"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("duration \"{s}\" has no number (e.g. \"2s\")"));
    }
    let unit_ms: u128 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "duration \"{s}\" has unknown unit \"{unit}\" (use ms, s, m or h)"
            ))
        }
    };
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    let bad_number = || format!("duration \"{s}\" has a bad number");
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(bad_number());
    }
    let too_long = || format!("duration \"{s}\" is too long (at most 365 days)");
    // Trailing zeros of the fraction change nothing; a long whole part is simply too long.
    let fraction = fraction.trim_end_matches('0');
    if whole.trim_start_matches('0').len() > 12 || fraction.len() > 12 {
        return Err(if fraction.len() > 12 {
            format!("duration \"{s}\" is not a whole number of milliseconds")
        } else {
            too_long()
        });
    }
    let whole_n: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad_number())?
    };
    let frac_n: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| bad_number())?
    };
    let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(12));
    let frac_ms = frac_n * unit_ms;
    if frac_ms % scale != 0 {
        return Err(format!(
            "duration \"{s}\" is not a whole number of milliseconds (the finest unit is 1ms)"
        ));
    }
    let ms = whole_n * unit_ms + frac_ms / scale;
    if ms > MAX_DURATION_MS {
        return Err(too_long());
    }
    Ok(Duration::from_millis(
        u64::try_from(ms).map_err(|_| too_long())?,
    ))
}

/// Formats a duration the way the config spells it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_and_weights_as_the_file_reads_them() {
        assert_eq!(
            parse_backend_address("10.0.0.14:443"),
            Ok("10.0.0.14:443".parse().unwrap())
        );
        for (input, phrase) in [
            ("10.0.0.14:0", "port 0"),
            ("10.0.0.14:0443", "leading zero"),
            ("quay.internal:443", "hostname"),
            ("10.0.0.14", "no port"),
        ] {
            let e = parse_backend_address(input).unwrap_err();
            assert!(e.contains(phrase), "{input}: {e}");
        }
        assert_eq!(check_backend_weight(1), Ok(1));
        assert_eq!(check_backend_weight(256), Ok(256));
        assert!(check_backend_weight(0).unwrap_err().contains("at least 1"));
        assert!(check_backend_weight(-3).unwrap_err().contains("at least 1"));
        assert!(check_backend_weight(257)
            .unwrap_err()
            .contains("at most 256"));
        assert!(check_backend_weight(i64::MAX).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("2 days").is_err());
        assert!(parse_duration("-1s").is_err());
        // Whole milliseconds only, computed exactly.
        let cases: &[(&str, Option<u64>)] = &[
            ("0ms", Some(0)),
            ("0.0s", Some(0)),
            ("1ms", Some(1)),
            ("0.001s", Some(1)),
            ("0.0015s", None),
            ("0.5ms", None),
            ("0.0000001ms", None),
            ("1.0000000000000000000000s", Some(1000)),
            ("0.1s", Some(100)),
            ("0.1m", Some(6000)),
            ("0.0001h", Some(360)),
            ("0.0000001h", None),
            ("0.001h", Some(3600)),
            (".5s", Some(500)),
            ("5.s", Some(5000)),
            (".", None),
            ("1.2.3s", None),
            ("8760h", Some(31_536_000_000)),
            ("8761h", None),
            ("99999999999999999999999s", None),
        ];
        for &(input, want) in cases {
            let got = parse_duration(input).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{input:?}");
        }
        assert!(parse_duration("0.5ms")
            .unwrap_err()
            .contains("whole number of milliseconds"));
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn status_matcher() {
        let m = StatusMatcher {
            ranges: vec![(200, 299), (304, 304)],
        };
        assert!(m.matches(204));
        assert!(m.matches(304));
        assert!(!m.matches(503));
    }
}
