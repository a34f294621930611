//! What a reload changes: a pure comparison of the running config with the new one. The app
//! applies it; this module only names the differences.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{Config, ListenerConfig, PoolConfig};

/// Differences between two valid configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Listeners (by name) that are new, or whose bind address changed.
    pub listeners_added: Vec<String>,
    /// Listeners (by name) that are gone, or whose bind address changed.
    pub listeners_removed: Vec<String>,
    /// Listeners kept with their socket whose other settings changed.
    pub listeners_changed: Vec<String>,
    /// New pools.
    pub pools_added: Vec<String>,
    /// Pools that are gone.
    pub pools_removed: Vec<String>,
    /// Pools kept whose settings or members changed.
    pub pools_changed: Vec<String>,
    /// `pool/address` of backends new in kept or new pools.
    pub backends_added: Vec<String>,
    /// `pool/address` of backends gone from kept or removed pools.
    pub backends_removed: Vec<String>,
    /// Settings that only take effect at the next start (named for the log).
    pub needs_restart: Vec<&'static str>,
    /// Every changed setting of a kept listener or pool and of the process, as
    /// `"pool quay: health.interval"`, `"listener https: idle_timeout"`, `"runtime: drain_timeout"`:
    /// what a reload that added and removed nothing did.
    pub settings_changed: Vec<String>,
}

impl ConfigDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

fn backend_key(pool: &str, addr: SocketAddr) -> String {
    format!("{pool}/{addr}")
}

/// A pool's addresses as a set: pools of tens of thousands of backends are compared in linear
/// time, not quadratic.
fn addresses(p: &PoolConfig) -> Vec<SocketAddr> {
    p.backends.iter().map(|b| b.address).collect()
}

fn address_set(p: &PoolConfig) -> HashSet<SocketAddr> {
    p.backends.iter().map(|b| b.address).collect()
}

fn find_listener<'a>(c: &'a Config, name: &str) -> Option<&'a ListenerConfig> {
    c.listeners.iter().find(|l| l.name == name)
}

/// Compares `old` (running) with `new` (just validated).
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    for l in &new.listeners {
        match find_listener(old, &l.name) {
            None => d.listeners_added.push(l.name.clone()),
            Some(o) if o.bind != l.bind => {
                // A new address needs a new socket (a new backlog is applied to the kept one).
                d.listeners_removed.push(l.name.clone());
                d.listeners_added.push(l.name.clone());
            }
            Some(o) if o != l => {
                d.listeners_changed.push(l.name.clone());
                d.settings_changed.extend(
                    listener_settings(o, l)
                        .into_iter()
                        .map(|s| format!("listener {}: {s}", l.name)),
                );
            }
            Some(_) => {}
        }
    }
    for l in &old.listeners {
        if find_listener(new, &l.name).is_none() {
            d.listeners_removed.push(l.name.clone());
        }
    }
    for p in &new.pools {
        match old.pool(&p.name) {
            None => {
                d.pools_added.push(p.name.clone());
                d.backends_added
                    .extend(addresses(p).into_iter().map(|a| backend_key(&p.name, a)));
            }
            Some(o) => {
                let (oa, na) = (addresses(o), addresses(p));
                let (os, ns) = (address_set(o), address_set(p));
                d.backends_added.extend(
                    na.iter()
                        .filter(|a| !os.contains(a))
                        .map(|a| backend_key(&p.name, *a)),
                );
                d.backends_removed.extend(
                    oa.iter()
                        .filter(|a| !ns.contains(a))
                        .map(|a| backend_key(&p.name, *a)),
                );
                if o != p {
                    d.pools_changed.push(p.name.clone());
                    d.settings_changed.extend(
                        pool_settings(o, p)
                            .into_iter()
                            .map(|s| format!("pool {}: {s}", p.name)),
                    );
                }
            }
        }
    }
    for p in &old.pools {
        if new.pool(&p.name).is_none() {
            d.pools_removed.push(p.name.clone());
            d.backends_removed
                .extend(addresses(p).into_iter().map(|a| backend_key(&p.name, a)));
        }
    }
    let (or, nr) = (&old.runtime, &new.runtime);
    let runtime = [
        ("workers", or.workers != nr.workers),
        ("drain_timeout", or.drain_timeout != nr.drain_timeout),
        ("log_format", or.log_format != nr.log_format),
        ("access_log", or.access_log != nr.access_log),
    ];
    d.settings_changed
        .extend(named(&runtime, or != nr).map(|s| format!("runtime: {s}")));
    let (oa, na) = (old.admin.as_ref(), new.admin.as_ref());
    let admin = [
        ("bind", oa.map(|a| a.bind) != na.map(|a| a.bind)),
        ("token_file", oa.map(|a| &a.token) != na.map(|a| &a.token)),
    ];
    d.settings_changed
        .extend(named(&admin, oa != na).map(|s| format!("admin: {s}")));
    if old.admin.as_ref().map(|a| a.bind) != new.admin.as_ref().map(|a| a.bind) {
        d.needs_restart.push("admin.bind");
    }
    let reuse_port_changed = new.listeners.iter().any(|l| {
        find_listener(old, &l.name)
            .is_some_and(|o| o.bind == l.bind && o.reuse_port != l.reuse_port)
    });
    if reuse_port_changed {
        // The kept socket was bound with the old setting; only a new socket takes the new one.
        d.needs_restart.push("listener.reuse_port");
    }
    if old.runtime.client_table_size != new.runtime.client_table_size {
        // Each listener's table keeps its size: it holds the open connections' places.
        d.needs_restart.push("runtime.client_table_size");
    }
    if old.runtime.workers != new.runtime.workers {
        d.needs_restart.push("runtime.workers");
    }
    if old.runtime.log_format != new.runtime.log_format {
        d.needs_restart.push("runtime.log_format");
    }
    d
}

/// The names of `fields` that changed; "other settings" when the values differ (`differ`) in
/// a field not listed.
fn named<'a>(
    fields: &'a [(&'static str, bool)],
    differ: bool,
) -> impl Iterator<Item = &'static str> + 'a {
    let listed = fields.iter().any(|(_, changed)| *changed);
    let other = (differ && !listed).then_some("other settings");
    fields
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| *name)
        .chain(other)
}

fn listener_settings(o: &ListenerConfig, n: &ListenerConfig) -> Vec<&'static str> {
    let fields = [
        ("pool", o.pool != n.pool),
        ("max_connections", o.max_connections != n.max_connections),
        ("idle_timeout", o.idle_timeout != n.idle_timeout),
        (
            "client_hello_timeout",
            o.client_hello_timeout != n.client_hello_timeout,
        ),
        ("accept_proxy", o.accept_proxy != n.accept_proxy),
        ("route", o.routes != n.routes),
    ];
    named(&fields, o != n).collect()
}

fn pool_settings(o: &PoolConfig, n: &PoolConfig) -> Vec<&'static str> {
    // A map, not a search per backend: a pool may list tens of thousands.
    let new_weights: std::collections::HashMap<SocketAddr, u32> =
        n.backends.iter().map(|b| (b.address, b.weight)).collect();
    let weights = o
        .backends
        .iter()
        .any(|b| new_weights.get(&b.address).is_some_and(|w| *w != b.weight));
    let membership = addresses(o) != addresses(n);
    let (oh, nh) = (&o.health, &n.health);
    let fields = [
        ("balance", o.balance != n.balance),
        ("backends weight", weights),
        ("discover", o.discover != n.discover),
        ("send_proxy", o.send_proxy != n.send_proxy),
        ("slow_start", o.slow_start != n.slow_start),
        ("connect_timeout", o.connect_timeout != n.connect_timeout),
        ("retries", o.retries != n.retries),
        ("fail_open", o.fail_open != n.fail_open),
        ("passive_fall", o.passive_fall != n.passive_fall),
        ("health.check", oh.check != nh.check),
        ("health.path", oh.path != nh.path),
        ("health.port", oh.port != nh.port),
        ("health.interval", oh.interval != nh.interval),
        ("health.timeout", oh.timeout != nh.timeout),
        ("health.rise", oh.rise != nh.rise),
        ("health.fall", oh.fall != nh.fall),
        ("health.expect_status", oh.expect_status != nh.expect_status),
        ("health.host", oh.host != nh.host),
        ("health.tls_verify", oh.tls_verify != nh.tls_verify),
        ("health.ca_file", oh.ca_file != nh.ca_file),
        (
            "health.shared_dependencies",
            oh.shared_dependencies != nh.shared_dependencies,
        ),
        ("cluster_health", o.cluster_health != n.cluster_health),
    ];
    // Members added or removed are reported as backends, not as a setting; the order of the
    // list alone is no change either.
    let differ =
        fields.iter().any(|(_, c)| *c) || (o != n && !membership && o.backends == n.backends);
    named(&fields, differ).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        super::super::parse(Path::new("t.toml"), text).expect("valid")
    }

    const BASE: &str = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:7001"
pool = "p"
[[listener]]
name = "b"
bind = "127.0.0.1:7002"
pool = "p"
[[pool]]
name = "p"
backends = ["127.0.0.2:443", "127.0.0.3:443"]
"#;

    #[test]
    fn identical_configs_differ_in_nothing() {
        assert!(diff(&cfg(BASE), &cfg(BASE)).is_empty());
    }

    #[test]
    fn changed_settings_are_named() {
        let new = BASE.replace(
            "backends = [\"127.0.0.2:443\", \"127.0.0.3:443\"]",
            "backends = [\"127.0.0.2:443\", \"127.0.0.3:443\"]\nretries = 5\n\
             [pool.health]\ninterval = \"5s\"\n[runtime]\ndrain_timeout = \"1s\"",
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            d.settings_changed,
            vec![
                "pool p: retries",
                "pool p: health.interval",
                "runtime: drain_timeout"
            ]
        );
        assert!(d.backends_added.is_empty() && d.backends_removed.is_empty());
    }

    #[test]
    fn backends_added_and_removed() {
        let new = BASE.replace(
            r#"["127.0.0.2:443", "127.0.0.3:443"]"#,
            r#"["127.0.0.3:443", "127.0.0.4:443"]"#,
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(d.backends_added, vec!["p/127.0.0.4:443"]);
        assert_eq!(d.backends_removed, vec!["p/127.0.0.2:443"]);
        assert_eq!(d.pools_changed, vec!["p"]);
        assert!(d.listeners_added.is_empty() && d.listeners_removed.is_empty());
    }

    #[test]
    fn listener_rebinds_are_remove_plus_add_and_settings_are_changes() {
        let new = BASE.replace("127.0.0.1:7002", "127.0.0.1:7003").replace(
            "name = \"a\"\nbind = \"127.0.0.1:7001\"\npool = \"p\"",
            "name = \"a\"\nbind = \"127.0.0.1:7001\"\npool = \"p\"\nmax_connections = 5",
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(d.listeners_added, vec!["b"]);
        assert_eq!(d.listeners_removed, vec!["b"]);
        assert_eq!(d.listeners_changed, vec!["a"]);
    }

    #[test]
    fn pools_added_and_removed_carry_their_backends() {
        let new = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:7001"
pool = "q"
[[pool]]
name = "q"
backends = ["127.0.0.9:443"]
"#;
        let d = diff(&cfg(BASE), &cfg(new));
        assert_eq!(d.pools_added, vec!["q"]);
        assert_eq!(d.pools_removed, vec!["p"]);
        assert_eq!(d.backends_added, vec!["q/127.0.0.9:443"]);
        assert_eq!(
            d.backends_removed,
            vec!["p/127.0.0.2:443", "p/127.0.0.3:443"]
        );
        assert_eq!(d.listeners_removed, vec!["b"]);
        assert_eq!(d.listeners_changed, vec!["a"]);
    }
}
