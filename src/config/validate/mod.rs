//! From the serde mirror (`file`) to the typed [`Config`]: every rule of the config file lives
//! here. Every semantic rule runs on everything, so one `splicer check` shows all the problems
//! of a file. toml stops at its first syntax or type error, so after one the offending line is
//! set aside (commented out, keeping every offset and line number) and the file read again,
//! until it parses; what the set-aside lines would have said is then not judged again.
//!
//! Submodules: `syntax` (toml's errors as plain sentences), `values` (pure parsers for
//! addresses, status lists, paths, hosts), `pool` (`[[pool]]`, its backends and health).

mod pool;
mod syntax;
mod values;

pub(super) use values::{backend_addr, socket_addr};

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::error::{line_col, Location};
use super::file::{AdminFile, FileConfig, ListenerFile, RouteFile, RuntimeFile};
use super::{
    parse_duration, AdminConfig, AdminToken, Config, ConfigError, ListenerConfig, LogFormat,
    Problem, RouteConfig, RuntimeConfig,
};

/// Address of the admin API when `[admin]` is present without `bind`.
const DEFAULT_ADMIN_BIND: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9090));
/// More threads than this is a typo, not a machine.
const MAX_WORKERS: i64 = 1024;
/// Largest per-client table: 16 Mi entries is a few GiB, beyond any one machine's clients.
const MAX_CLIENT_TABLE: i64 = 16 * 1024 * 1024;

/// Parses and checks `text` (the contents of `path`) into a [`Config`], or every problem found.
pub fn validate(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut text = text.to_string();
    let mut early = Vec::new();
    let mut set_aside: Vec<(usize, Vec<String>)> = Vec::new();
    let file = loop {
        match toml::from_str::<FileConfig>(&text) {
            Ok(file) => break Some(file),
            Err(e) => {
                early.push(syntax::problem(path, &text, &e));
                let offset = e.span().map_or(0, |s| s.start);
                let line = line_col(&text, offset).0;
                if early.len() >= MAX_EARLY_PROBLEMS || set_aside.iter().any(|(l, _)| *l == line) {
                    break None;
                }
                match set_aside_line(&mut text, line) {
                    Some(key) => set_aside.push((line, key)),
                    None => break None,
                }
            }
        }
    };
    let Some(file) = file else {
        return Err(ConfigError { problems: early });
    };
    let mut checker = Checker {
        path,
        text: &text,
        problems: Vec::new(),
    };
    let admin = file.admin.as_ref().map(|a| checker.admin(a));
    let runtime = checker.runtime(file.runtime.as_ref().map(Spanned::get_ref));
    let pools = checker.pools(&file.pools);
    let listeners = checker.listeners(&file.listeners, &pools);
    if file.listeners.is_empty() {
        checker.problems.push(Problem::whole_file(
            path,
            "the file has no [[listener]]; at least one is required",
        ));
    }
    // A set-aside key now looks absent: problems about that are echoes of the first one.
    checker.problems.retain(|p| {
        let on_set_aside_line = matches!(&p.location,
            Location::At { line, .. } if set_aside.iter().any(|(l, _)| l == line));
        let names_set_aside_key = set_aside.iter().flat_map(|(_, words)| words).any(|key| {
            !key.is_empty()
                && p.message
                    .split(|c: char| !(c.is_ascii_alphanumeric() || "_-.:".contains(c)))
                    .any(|word| word == key)
        });
        !on_set_aside_line && !names_set_aside_key
    });
    if !checker.problems.is_empty() || !early.is_empty() {
        let mut problems = early;
        problems.append(&mut checker.problems);
        // File order first; problems without a place after them, in the order found.
        problems.sort_by_key(|p| match &p.location {
            Location::At { line, col, .. } => (0, *line, *col),
            Location::Key { .. } => (1, 0, 0),
            Location::File { .. } => (2, 0, 0),
        });
        return Err(ConfigError { problems });
    }
    Ok(Config {
        source: path.to_path_buf(),
        admin,
        runtime,
        listeners,
        pools,
    })
}

/// Syntax and type errors reported from one file at most (each costs a parse of the file).
const MAX_EARLY_PROBLEMS: usize = 20;

/// Comments out 1-based `line` of `text` in place (a `#` over its first non-blank character,
/// so offsets and line numbers stay) and returns the words a later problem would echo it by:
/// the key it set (`""` for a line with no `key =`) and a quoted value, if any. `None` when setting it aside could not help, or would make up problems: a table
/// header (its keys would land in the table before) or a value that goes on to other lines.
fn set_aside_line(text: &mut String, line: usize) -> Option<Vec<String>> {
    let start = match line {
        1 => 0,
        n => text.match_indices('\n').nth(n - 2)?.0 + 1,
    };
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let content = &text[start..end];
    let trimmed = content.trim_start();
    let opens = |open: char, close: char| {
        trimmed.chars().filter(|c| *c == open).count()
            != trimmed.chars().filter(|c| *c == close).count()
    };
    if trimmed.is_empty()
        || trimmed.starts_with('[')
        || opens('[', ']')
        || opens('{', '}')
        || trimmed.contains("\"\"\"")
        || trimmed.contains("'''")
    {
        return None;
    }
    let key = trimmed
        .split_once('=')
        .map_or("", |(k, _)| k.trim().trim_matches('"'))
        .to_string();
    // A quoted value (a name) counts too: other tables may refer to it.
    let value = trimmed
        .rsplit('"')
        .nth(1)
        .filter(|v| !v.is_empty() && !v.contains('='));
    let at = start + (content.len() - trimmed.len());
    let width = trimmed.chars().next().map_or(1, char::len_utf8);
    let words = std::iter::once(key)
        .chain(value.map(str::to_string))
        .collect();
    text.replace_range(at..at + width, &"#".repeat(width));
    Some(words)
}

/// Collects problems while building typed values. Each helper returns a usable value (the
/// default) after reporting, so checking goes on and finds the next problem.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, offset: usize, message: impl Into<String>) {
        self.problems
            .push(Problem::at_offset(self.path, self.text, offset, message));
    }

    fn report_at<T>(&mut self, value: &Spanned<T>, message: impl Into<String>) {
        self.report(value.span().start, message);
    }

    fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// The value of a required key, or a problem at the table's header.
    fn required<'v, T>(
        &mut self,
        value: Option<&'v Spanned<T>>,
        key: &str,
        table_offset: usize,
        table: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.report(
                table_offset,
                format!("{table} is missing required key \"{key}\""),
            );
        }
        value
    }

    /// A required, non-empty name; `""` when absent or empty (already reported).
    fn name(
        &mut self,
        value: Option<&Spanned<String>>,
        table_offset: usize,
        table: &str,
    ) -> String {
        let Some(name) = self.required(value, "name", table_offset, table) else {
            return String::new();
        };
        if name.get_ref().trim().is_empty() {
            self.report_at(name, format!("{table} name must not be empty"));
        }
        name.get_ref().clone()
    }

    /// Reports `key` when it was seen before; `what` names it in the message.
    fn unique<K: Eq + Hash>(
        &mut self,
        seen: &mut HashMap<K, usize>,
        key: K,
        offset: usize,
        what: &str,
    ) {
        if let Some(&first) = seen.get(&key) {
            let line = self.line_of(first);
            self.report(
                offset,
                format!("duplicate {what}; the first is at line {line}"),
            );
        } else {
            seen.insert(key, offset);
        }
    }

    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.report_at(value, format!("invalid {key}: {e}"));
                default
            }
        }
    }

    /// A duration bounding a wait for a peer (or a period), where zero would mean "fail at
    /// once" (or "spin") rather than "off": `"0s"` is an error naming the key.
    fn positive_duration(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(value, key, default);
        match value {
            Some(v) if d.is_zero() => {
                self.report_at(v, format!("{key} must be longer than 0s"));
                default
            }
            _ => d,
        }
    }

    /// An integer in `lo..=hi`; `why` (may be empty) explains the bound to the user.
    fn int(
        &mut self,
        value: Option<&Spanned<i64>>,
        key: &str,
        (lo, hi): (i64, i64),
        default: i64,
        why: &str,
    ) -> i64 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        let bound = if n < lo {
            format!("{key} must be at least {lo}, not {n}")
        } else if n > hi {
            format!("{key} must be at most {hi}, not {n}")
        } else {
            return n;
        };
        let message = if why.is_empty() {
            bound
        } else {
            format!("{bound}; {why}")
        };
        self.report_at(value, message);
        default
    }

    /// One of the spellings in `choices`.
    fn choice<T: Copy>(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        if let Some(&(_, t)) = choices.iter().find(|(s, _)| s == value.get_ref()) {
            return t;
        }
        let allowed: Vec<&str> = choices.iter().map(|(s, _)| *s).collect();
        self.report_at(
            value,
            format!(
                "{key} \"{}\" is not one of: {}",
                value.get_ref(),
                allowed.join(", ")
            ),
        );
        default
    }

    fn addr(&mut self, value: &Spanned<String>) -> Option<SocketAddr> {
        values::socket_addr(value.get_ref())
            .map_err(|e| self.report_at(value, e))
            .ok()
    }

    fn admin(&mut self, admin: &Spanned<AdminFile>) -> AdminConfig {
        let file = admin.get_ref();
        let token = file
            .token_file
            .as_ref()
            .filter(|t| !t.get_ref().is_empty())
            .and_then(|t| self.token_file(t));
        let Some(bind) = file.bind.as_ref() else {
            return AdminConfig {
                bind: DEFAULT_ADMIN_BIND,
                token,
            };
        };
        let addr = self.addr(bind).unwrap_or(DEFAULT_ADMIN_BIND);
        let token_given = file
            .token_file
            .as_ref()
            .is_some_and(|t| !t.get_ref().is_empty());
        if !addr.ip().is_loopback() && !token_given {
            self.report_at(
                bind,
                format!(
                    "admin bind {addr} is not a loopback address, and without token_file anyone \
                     who can reach it could drain backends or reload; set token_file or bind to \
                     127.0.0.1 or [::1]"
                ),
            );
        }
        AdminConfig { bind: addr, token }
    }

    /// A list of CIDRs (`allow`, `deny`); each bad entry is reported where it stands.
    fn cidrs(&mut self, list: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<crate::edge::Cidr> {
        let Some(list) = list else { return Vec::new() };
        let mut out = Vec::with_capacity(list.get_ref().len());
        for entry in list.get_ref() {
            match crate::edge::Cidr::parse(entry.get_ref().trim()) {
                Ok(c) => out.push(c),
                Err(e) => self.report_at(entry, e),
            }
        }
        out
    }

    /// A path from the file, resolved against the config's directory when relative (so the
    /// file works from any working directory).
    fn relative_path(&self, given: &str) -> std::path::PathBuf {
        let given = std::path::PathBuf::from(given);
        match self.path.parent() {
            Some(dir) if given.is_relative() => dir.join(&given),
            _ => given,
        }
    }

    /// Reads the bearer token now, so a missing or empty file is a config error rather than a
    /// 401 on every request later. Relative paths are resolved against the config's directory.
    fn token_file(&mut self, value: &Spanned<String>) -> Option<AdminToken> {
        let given = std::path::PathBuf::from(value.get_ref());
        let resolved = match self.path.parent() {
            Some(dir) if given.is_relative() => dir.join(&given),
            _ => given,
        };
        let shown = resolved.display();
        match super::read::read_regular_text(&resolved, super::read::MAX_TOKEN_FILE_BYTES) {
            Err(e) => {
                self.report_at(value, format!("cannot read token_file {shown}: {e}"));
                None
            }
            Ok(text) => {
                let token = text.trim();
                if token.is_empty() {
                    self.report_at(value, format!("token_file {shown} is empty"));
                    None
                } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    self.report_at(
                        value,
                        format!("token_file {shown} must hold one token without spaces"),
                    );
                    None
                } else {
                    Some(AdminToken::new(token.to_string()))
                }
            }
        }
    }

    fn runtime(&mut self, runtime: Option<&RuntimeFile>) -> RuntimeConfig {
        let defaults = RuntimeConfig::default();
        let Some(r) = runtime else { return defaults };
        let workers = self.int(
            r.workers.as_ref(),
            "workers",
            (0, MAX_WORKERS),
            0,
            "0 means one per CPU",
        );
        RuntimeConfig {
            workers: usize::try_from(workers).unwrap_or(0),
            drain_timeout: self.duration(
                r.drain_timeout.as_ref(),
                "drain_timeout",
                defaults.drain_timeout,
            ),
            log_format: self.choice(
                r.log_format.as_ref(),
                "log_format",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                defaults.log_format,
            ),
            access_log: r
                .access_log
                .as_ref()
                .map_or(defaults.access_log, |b| *b.get_ref()),
            shutdown_delay: self.duration(
                r.shutdown_delay.as_ref(),
                "shutdown_delay",
                defaults.shutdown_delay,
            ),
            upgrade_timeout: self.positive_duration(
                r.upgrade_timeout.as_ref(),
                "upgrade_timeout",
                defaults.upgrade_timeout,
            ),
            client_table_size: usize::try_from(self.int(
                r.client_table_size.as_ref(),
                "client_table_size",
                (1, MAX_CLIENT_TABLE),
                65536,
                "it bounds each listener's per-client table",
            ))
            .unwrap_or(65536),
            state_file: r
                .state_file
                .as_ref()
                .filter(|p| !p.get_ref().is_empty())
                .map(|p| self.relative_path(p.get_ref())),
        }
    }

    fn routes(
        &mut self,
        routes: &[Spanned<RouteFile>],
        pools: &[super::PoolConfig],
    ) -> Vec<RouteConfig> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(routes.len());
        for table in routes {
            let start = table.span().start;
            let r = table.get_ref();
            let sni = self.required(r.sni.as_ref(), "sni", start, "[[listener.route]]");
            let pool = self.required(r.pool.as_ref(), "pool", start, "[[listener.route]]");
            let (Some(sni), Some(pool)) = (sni, pool) else {
                continue;
            };
            let pattern = sni.get_ref().trim_end_matches('.').to_ascii_lowercase();
            if let Err(e) = values::sni_pattern(&pattern) {
                self.report_at(sni, e);
                continue;
            }
            let what = format!("route for sni \"{pattern}\"");
            self.unique(&mut seen, pattern.clone(), sni.span().start, &what);
            if !pools.iter().any(|p| p.name == *pool.get_ref()) {
                self.report_at(
                    pool,
                    format!(
                        "route names pool \"{}\", which is not defined",
                        pool.get_ref()
                    ),
                );
            }
            out.push(RouteConfig {
                sni: pattern,
                pool: pool.get_ref().clone(),
            });
        }
        out
    }

    fn listeners(
        &mut self,
        listeners: &[Spanned<ListenerFile>],
        pools: &[super::PoolConfig],
    ) -> Vec<ListenerConfig> {
        let mut names = HashMap::new();
        let mut binds = HashMap::new();
        let mut out = Vec::with_capacity(listeners.len());
        for table in listeners {
            let start = table.span().start;
            let l = table.get_ref();
            let name = self.name(l.name.as_ref(), start, "[[listener]]");
            let label = if name.is_empty() {
                "[[listener]]".to_string()
            } else {
                format!("[[listener]] \"{name}\"")
            };
            if let Some(n) = l.name.as_ref().filter(|_| !name.is_empty()) {
                let what = format!("listener name \"{name}\"");
                self.unique(&mut names, name.clone(), n.span().start, &what);
            }
            let mut bind = None;
            if let Some(b) = self.required(l.bind.as_ref(), "bind", start, &label) {
                bind = self.addr(b);
                // Port 0 asks the kernel for a free port, so two of them never collide.
                if let Some(addr) = bind.filter(|a| a.port() != 0) {
                    let what = format!("listener bind address {addr}");
                    self.unique(&mut binds, addr, b.span().start, &what);
                }
            }
            let mut pool = String::new();
            if let Some(p) = self.required(l.pool.as_ref(), "pool", start, &label) {
                pool = p.get_ref().clone();
                if !pools.iter().any(|x| x.name == pool) {
                    let defined: Vec<&str> = pools.iter().map(|x| x.name.as_str()).collect();
                    let known = if defined.is_empty() {
                        "the file defines no [[pool]]".to_string()
                    } else {
                        format!("defined pools: {}", defined.join(", "))
                    };
                    self.report_at(
                        p,
                        format!("listener names pool \"{pool}\", which is not defined; {known}"),
                    );
                }
            }
            let max_connections = self.int(
                l.max_connections.as_ref(),
                "max_connections",
                (0, i64::from(u32::MAX)),
                0,
                "0 means unlimited",
            );
            let idle = self.duration(l.idle_timeout.as_ref(), "idle_timeout", Duration::ZERO);
            let backlog = self.int(
                l.backlog.as_ref(),
                "backlog",
                (1, i64::from(i32::MAX)),
                4096,
                "it is the listen(2) queue length",
            );
            let routes = self.routes(&l.routes, pools);
            out.push(ListenerConfig {
                name,
                bind: bind.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                pool,
                max_connections: usize::try_from(max_connections).unwrap_or(0),
                idle_timeout: (!idle.is_zero()).then_some(idle),
                // 0 would close every connection on a listener with routes or accept_proxy.
                client_hello_timeout: self.positive_duration(
                    l.client_hello_timeout.as_ref(),
                    "client_hello_timeout",
                    Duration::from_secs(5),
                ),
                backlog: u32::try_from(backlog).unwrap_or(4096),
                accept_proxy: l.accept_proxy.as_ref().is_some_and(|b| *b.get_ref()),
                reuse_port: l.reuse_port.as_ref().is_some_and(|b| *b.get_ref()),
                access: crate::edge::AccessList {
                    allow: self.cidrs(l.allow.as_ref()),
                    deny: self.cidrs(l.deny.as_ref()),
                },
                client_limits: crate::edge::Limits {
                    max_connections: u32::try_from(self.int(
                        l.per_client_max_connections.as_ref(),
                        "per_client_max_connections",
                        (0, i64::from(u32::MAX)),
                        0,
                        "0 means no limit",
                    ))
                    .unwrap_or(0),
                    rate: l
                        .per_client_rate
                        .as_ref()
                        .filter(|r| !r.get_ref().trim().is_empty())
                        .and_then(|r| match crate::edge::Rate::parse(r.get_ref()) {
                            Ok(rate) => Some(rate),
                            Err(e) => {
                                self.report_at(r, format!("invalid per_client_rate: {e}"));
                                None
                            }
                        }),
                },
                routes,
            });
        }
        out
    }
}
