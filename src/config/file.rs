//! The config file exactly as written: a serde mirror of the TOML that rejects unknown keys and
//! keeps every value's span, so that `validate` can point problems at `file:line:col`.
//!
//! Values whose checks give better messages than serde's (durations, addresses, enum spellings,
//! integer ranges, required keys) are kept loose here — strings, `i64`, `Option` — and judged in
//! `validate`, which collects every problem instead of stopping at serde's first.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[admin]`; absent = no admin API.
    pub admin: Option<Spanned<AdminFile>>,
    /// `[runtime]`.
    pub runtime: Option<Spanned<RuntimeFile>>,
    /// `[[listener]]` tables in file order.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<ListenerFile>>,
    /// `[[pool]]` tables in file order.
    #[serde(default, rename = "pool")]
    pub pools: Vec<Spanned<PoolFile>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `ip:port` of the admin API.
    pub bind: Option<Spanned<String>>,
    /// File holding the bearer token POST requests must carry.
    pub token_file: Option<Spanned<String>>,
}

/// `[runtime]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    /// Worker threads; 0 = one per CPU.
    pub workers: Option<Spanned<i64>>,
    /// Duration string.
    pub drain_timeout: Option<Spanned<String>>,
    /// `text` or `json`.
    pub log_format: Option<Spanned<String>>,
    /// One line per finished connection.
    pub access_log: Option<Spanned<bool>>,
    /// Duration string; `"0s"` = stop accepting at once on SIGTERM.
    pub shutdown_delay: Option<Spanned<String>>,
    /// Duration string: how long an upgraded process may take to report ready.
    pub upgrade_timeout: Option<Spanned<String>>,
    /// Path of the file that keeps admin decisions across restarts; `""` = off.
    pub state_file: Option<Spanned<String>>,
    /// Entries of each listener's per-client table.
    pub client_table_size: Option<Spanned<i64>>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Required, unique.
    pub name: Option<Spanned<String>>,
    /// Required `ip:port`.
    pub bind: Option<Spanned<String>>,
    /// Required default pool.
    pub pool: Option<Spanned<String>>,
    /// 0 = unlimited.
    pub max_connections: Option<Spanned<i64>>,
    /// Duration string; `"0s"` = never.
    pub idle_timeout: Option<Spanned<String>>,
    /// Duration string.
    pub client_hello_timeout: Option<Spanned<String>>,
    /// listen(2) backlog.
    pub backlog: Option<Spanned<i64>>,
    /// Expect a PROXY v1/v2 header from an upstream balancer.
    pub accept_proxy: Option<Spanned<bool>>,
    /// Bind with SO_REUSEPORT (several processes on one address, on purpose).
    pub reuse_port: Option<Spanned<bool>>,
    /// CIDRs admitted (empty = everyone).
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// CIDRs refused (wins over allow).
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// Open connections per client; 0 = no limit.
    pub per_client_max_connections: Option<Spanned<i64>>,
    /// New connections per client, `"50/s"`; `""` = no limit.
    pub per_client_rate: Option<Spanned<String>>,
    /// `[[listener.route]]` tables.
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteFile>>,
}

/// One `[[listener.route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Exact name or `*.example.com`.
    pub sni: Option<Spanned<String>>,
    /// Pool for connections whose SNI matches.
    pub pool: Option<Spanned<String>>,
}

/// One `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Required, unique.
    pub name: Option<Spanned<String>>,
    /// Balancing algorithm spelling.
    pub balance: Option<Spanned<String>>,
    /// Static members (or `discover`).
    pub backends: Option<Spanned<Vec<Spanned<BackendEntry>>>>,
    /// DNS discovery of members (or `backends`).
    pub discover: Option<Spanned<DiscoverFile>>,
    /// `off`, `v1` or `v2`.
    pub send_proxy: Option<Spanned<String>>,
    /// Duration string; `"0s"` = off.
    pub slow_start: Option<Spanned<String>>,
    /// Duration string.
    pub connect_timeout: Option<Spanned<String>>,
    /// Further backends tried after a failed connect.
    pub retries: Option<Spanned<i64>>,
    /// Spread over down backends when none is up.
    pub fail_open: Option<Spanned<bool>>,
    /// Consecutive connect failures that mark a backend down; 0 = off.
    pub passive_fall: Option<Spanned<i64>>,
    /// `[pool.health]`.
    pub health: Option<Spanned<HealthFile>>,
    /// `[pool.cluster_health]`.
    pub cluster_health: Option<Spanned<ClusterHealthFile>>,
}

/// `discover = { dns = "...", port = 443, every = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverFile {
    /// Name whose A/AAAA records are the members.
    pub dns: Option<Spanned<String>>,
    /// Port of every discovered member.
    pub port: Option<Spanned<i64>>,
    /// Duration string: how often to re-resolve.
    pub every: Option<Spanned<String>>,
    /// `ip:port` of the DNS server to ask instead of the system's resolvers.
    pub server: Option<Spanned<String>>,
}

/// `[pool.cluster_health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterHealthFile {
    /// Request path.
    pub path: Option<Spanned<String>>,
    /// Duration string.
    pub interval: Option<Spanned<String>>,
}

/// `[pool.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Check kind spelling.
    pub check: Option<Spanned<String>>,
    /// Request path.
    pub path: Option<Spanned<String>>,
    /// 0 = the backend's own port.
    pub port: Option<Spanned<i64>>,
    /// Duration string.
    pub interval: Option<Spanned<String>>,
    /// Duration string.
    pub timeout: Option<Spanned<String>>,
    /// Passes to come up.
    pub rise: Option<Spanned<i64>>,
    /// Failures to go down.
    pub fall: Option<Spanned<i64>>,
    /// `"200"`, `"200-299"`, `"200,204"`.
    pub expect_status: Option<Spanned<String>>,
    /// Host header and SNI; empty = none.
    pub host: Option<Spanned<String>>,
    /// Verify the backend certificate.
    pub tls_verify: Option<Spanned<bool>>,
    /// PEM bundle path; empty = system roots.
    pub ca_file: Option<Spanned<String>>,
    /// Services every backend shares (Quay: database, auth...).
    pub shared_dependencies: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `backends` entry: `"ip:port"` or `{ address = "ip:port", weight = N }`.
#[derive(Debug)]
pub enum BackendEntry {
    /// The short form; weight 1.
    Address(String),
    /// The inline-table form.
    Table(BackendTable),
}

/// The inline-table form of a backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    /// Required `ip:port`.
    pub address: Option<Spanned<String>>,
    /// 1..=256; default 1.
    pub weight: Option<Spanned<i64>>,
}

/// Expected keys of each table, for the unknown-key message's "in [table]" (serde reports only
/// the expected field list, not which table it was reading). Kept beside the structs so the two
/// change together; a test in `validate` checks they still match.
pub const TABLES: &[(&str, &[&str])] = &[
    ("the top level", &["admin", "runtime", "listener", "pool"]),
    ("[admin]", &["bind", "token_file"]),
    (
        "[runtime]",
        &[
            "workers",
            "drain_timeout",
            "log_format",
            "access_log",
            "shutdown_delay",
            "upgrade_timeout",
            "state_file",
            "client_table_size",
        ],
    ),
    (
        "[[listener]]",
        &[
            "name",
            "bind",
            "pool",
            "max_connections",
            "idle_timeout",
            "client_hello_timeout",
            "backlog",
            "accept_proxy",
            "reuse_port",
            "allow",
            "deny",
            "per_client_max_connections",
            "per_client_rate",
            "route",
        ],
    ),
    ("[[listener.route]]", &["sni", "pool"]),
    (
        "[[pool]]",
        &[
            "name",
            "balance",
            "backends",
            "discover",
            "send_proxy",
            "slow_start",
            "connect_timeout",
            "retries",
            "fail_open",
            "passive_fall",
            "health",
            "cluster_health",
        ],
    ),
    ("discover", &["dns", "port", "every", "server"]),
    ("[pool.cluster_health]", &["path", "interval"]),
    (
        "[pool.health]",
        &[
            "check",
            "path",
            "port",
            "interval",
            "timeout",
            "rise",
            "fall",
            "expect_status",
            "host",
            "tls_verify",
            "ca_file",
            "shared_dependencies",
        ],
    ),
    ("a backend entry", &["address", "weight"]),
];

impl<'de> Deserialize<'de> for BackendEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Hand-written rather than `#[serde(untagged)]`, whose "did not match any variant"
        // hides the real problem (an unknown key in the table, a number instead of a string).
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = BackendEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an \"ip:port\" string or a table { address = \"ip:port\", weight = N }",
                )
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<BackendEntry, E> {
                Ok(BackendEntry::Address(s.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BackendEntry, A::Error> {
                BackendTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(BackendEntry::Table)
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}
