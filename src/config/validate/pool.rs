//! `[[pool]]`: name, balancing, the static backend list and `[pool.health]`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use toml::Spanned;

use super::{values, Checker};
use crate::config::file::{BackendEntry, ClusterHealthFile, DiscoverFile, HealthFile, PoolFile};
use crate::config::{
    BackendConfig, BalanceKind, CheckKind, ClusterHealthConfig, DiscoverConfig, HealthConfig,
    PoolConfig, SendProxy,
};

/// Largest backend weight ([`crate::config::MAX_BACKEND_WEIGHT`]), as the integer reader takes it.
const MAX_WEIGHT: i64 = crate::config::MAX_BACKEND_WEIGHT as i64;

impl Checker<'_> {
    /// Every pool, with names unique across the file.
    pub(super) fn pools(&mut self, pools: &[Spanned<PoolFile>]) -> Vec<PoolConfig> {
        let mut names = HashMap::new();
        let mut out = Vec::with_capacity(pools.len());
        for table in pools {
            let pool = self.pool(table);
            if let Some(n) = table
                .get_ref()
                .name
                .as_ref()
                .filter(|_| !pool.name.is_empty())
            {
                let what = format!("pool name \"{}\"", pool.name);
                self.unique(&mut names, pool.name.clone(), n.span().start, &what);
            }
            out.push(pool);
        }
        out
    }

    fn pool(&mut self, table: &Spanned<PoolFile>) -> PoolConfig {
        let start = table.span().start;
        let p = table.get_ref();
        let name = self.name(p.name.as_ref(), start, "[[pool]]");
        let label = if name.is_empty() {
            "[[pool]]".to_string()
        } else {
            format!("[[pool]] \"{name}\"")
        };
        let (backends, discover) = match (p.backends.as_ref(), p.discover.as_ref()) {
            (Some(list), None) => (self.backends(list, &name), None),
            (None, Some(d)) => (Vec::new(), self.discover(d)),
            (Some(_), Some(d)) => {
                self.report_at(
                    d,
                    format!("{label} sets both backends and discover; use one of them"),
                );
                (Vec::new(), None)
            }
            (None, None) => {
                self.report(
                    start,
                    format!(
                        "{label} needs backends (a list of \"ip:port\") or discover (DNS names)"
                    ),
                );
                (Vec::new(), None)
            }
        };
        let send_proxy = self.choice(
            p.send_proxy.as_ref(),
            "send_proxy",
            &[
                ("off", SendProxy::Off),
                ("v1", SendProxy::V1),
                ("v2", SendProxy::V2),
            ],
            SendProxy::Off,
        );
        let slow_start = self.duration(p.slow_start.as_ref(), "slow_start", Duration::ZERO);
        let cluster_health = p
            .cluster_health
            .as_ref()
            .map(|c| self.cluster_health(c.get_ref()));
        let balance = self.choice(
            p.balance.as_ref(),
            "balance",
            &[
                ("round_robin", BalanceKind::RoundRobin),
                ("least_connections", BalanceKind::LeastConnections),
                ("random_two", BalanceKind::RandomTwo),
                ("client_hash", BalanceKind::ClientHash),
            ],
            BalanceKind::RoundRobin,
        );
        let connect_timeout = self.positive_duration(
            p.connect_timeout.as_ref(),
            "connect_timeout",
            Duration::from_secs(3),
        );
        let retries = self.int(p.retries.as_ref(), "retries", (0, 1000), 2, "");
        let passive_fall = self.int(
            p.passive_fall.as_ref(),
            "passive_fall",
            (0, i64::from(u32::MAX)),
            3,
            "0 turns passive marking off",
        );
        PoolConfig {
            name,
            balance,
            backends,
            discover,
            send_proxy,
            slow_start: (!slow_start.is_zero()).then_some(slow_start),
            cluster_health,
            connect_timeout,
            retries: u32::try_from(retries).unwrap_or(2),
            fail_open: p.fail_open.as_ref().is_none_or(|b| *b.get_ref()),
            passive_fall: u32::try_from(passive_fall).unwrap_or(3),
            health: self.health(p.health.as_ref().map(Spanned::get_ref)),
        }
    }

    fn backends(
        &mut self,
        list: &Spanned<Vec<Spanned<BackendEntry>>>,
        pool: &str,
    ) -> Vec<BackendConfig> {
        if list.get_ref().is_empty() {
            self.report_at(
                list,
                "backends is empty; list at least one \"ip:port\", or use discover for DNS",
            );
        }
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for entry in list.get_ref() {
            let (address, weight) = match entry.get_ref() {
                BackendEntry::Address(s) => (self.backend_addr(s, entry.span().start), 1),
                BackendEntry::Table(t) => {
                    let address = match &t.address {
                        Some(a) => self.backend_addr(a.get_ref(), a.span().start),
                        None => {
                            self.report_at(
                                entry,
                                "backend entry is missing required key \"address\"",
                            );
                            None
                        }
                    };
                    let weight = self.int(
                        t.weight.as_ref(),
                        "weight",
                        (1, MAX_WEIGHT),
                        1,
                        "it is a relative share of new connections",
                    );
                    (address, weight)
                }
            };
            let Some(address) = address else { continue };
            let what = format!("backend {address} in pool \"{pool}\"");
            self.unique(&mut seen, address, entry.span().start, &what);
            out.push(BackendConfig {
                address,
                weight: u32::try_from(weight).unwrap_or(1),
            });
        }
        out
    }

    fn discover(&mut self, table: &Spanned<DiscoverFile>) -> Option<DiscoverConfig> {
        let d = table.get_ref();
        let start = table.span().start;
        let dns = self.required(d.dns.as_ref(), "dns", start, "discover")?;
        let name = dns.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if let Err(e) = values::dns_name(&name) {
            self.report_at(dns, e);
        }
        let port = match self.required(d.port.as_ref(), "port", start, "discover") {
            Some(_) => self.int(d.port.as_ref(), "port", (1, 65535), 443, ""),
            None => 443,
        };
        let every = self.positive_duration(d.every.as_ref(), "every", Duration::from_secs(10));
        let server = d.server.as_ref().and_then(|s| self.addr(s));
        Some(DiscoverConfig {
            dns: name,
            port: u16::try_from(port).unwrap_or(443),
            every,
            server,
        })
    }

    fn cluster_health(&mut self, c: &ClusterHealthFile) -> ClusterHealthConfig {
        if let Some(path) = &c.path {
            if let Err(e) = values::request_path(path.get_ref()) {
                self.report_at(path, e);
            }
        }
        ClusterHealthConfig {
            path: c
                .path
                .as_ref()
                .map_or_else(|| "/health/endtoend".to_string(), |p| p.get_ref().clone()),
            interval: self.positive_duration(
                c.interval.as_ref(),
                "interval",
                Duration::from_secs(10),
            ),
        }
    }

    fn shared_dependencies(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for item in list.get_ref() {
            let name = item.get_ref();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                self.report_at(
                    item,
                    format!(
                        "shared dependency \"{name}\" is not a service name (letters, digits, \
                         _ and -, as in the health body's \"services\")"
                    ),
                );
                continue;
            }
            let what = format!("shared dependency \"{name}\"");
            self.unique(&mut seen, name.clone(), item.span().start, &what);
            out.push(name.clone());
        }
        out
    }

    fn backend_addr(&mut self, s: &str, offset: usize) -> Option<std::net::SocketAddr> {
        match values::backend_addr(s) {
            Ok(a) => Some(a),
            Err(e) => {
                self.report(offset, e);
                None
            }
        }
    }

    fn health(&mut self, health: Option<&HealthFile>) -> HealthConfig {
        let d = HealthConfig::default();
        let Some(h) = health else { return d };
        let check = self.choice(
            h.check.as_ref(),
            "check",
            &[
                ("https", CheckKind::Https),
                ("http", CheckKind::Http),
                ("tcp", CheckKind::Tcp),
                ("none", CheckKind::None),
            ],
            d.check,
        );
        if let Some(path) = &h.path {
            if let Err(e) = values::request_path(path.get_ref()) {
                self.report_at(path, e);
            }
        }
        let port = self.int(
            h.port.as_ref(),
            "port",
            (0, 65535),
            0,
            "0 means the backend's port",
        );
        let interval = self.positive_duration(h.interval.as_ref(), "interval", d.interval);
        let timeout = self.positive_duration(h.timeout.as_ref(), "timeout", d.timeout);
        if timeout >= interval {
            let (fmt_t, fmt_i) = (
                super::super::format_duration(timeout),
                super::super::format_duration(interval),
            );
            let message = format!(
                "timeout ({fmt_t}) must be below interval ({fmt_i}), so one check ends before \
                 the next begins"
            );
            // Point at what the user wrote; with only one of them set, that one is the culprit.
            let span = h.timeout.as_ref().or(h.interval.as_ref());
            if let Some(span) = span {
                self.report_at(span, message);
            }
        }
        let why = "0 would never change a backend's state";
        let rise = self.int(h.rise.as_ref(), "rise", (1, i64::from(u32::MAX)), 2, why);
        let fall = self.int(h.fall.as_ref(), "fall", (1, i64::from(u32::MAX)), 3, why);
        let expect_status = match &h.expect_status {
            Some(s) => values::expect_status(s.get_ref()).unwrap_or_else(|e| {
                self.report_at(s, e);
                d.expect_status.clone()
            }),
            None => d.expect_status.clone(),
        };
        let host = h.host.as_ref().filter(|s| !s.get_ref().is_empty());
        if let Some(host) = host {
            if let Err(e) = values::host(host.get_ref()) {
                self.report_at(host, e);
            }
        }
        HealthConfig {
            check,
            path: h.path.as_ref().map_or(d.path, |p| p.get_ref().clone()),
            port: u16::try_from(port).unwrap_or(0),
            interval,
            timeout,
            rise: u32::try_from(rise).unwrap_or(2),
            fall: u32::try_from(fall).unwrap_or(3),
            expect_status,
            host: host.map(|h| h.get_ref().clone()),
            tls_verify: h.tls_verify.as_ref().map_or(d.tls_verify, |b| *b.get_ref()),
            ca_file: h
                .ca_file
                .as_ref()
                .filter(|s| !s.get_ref().is_empty())
                .and_then(|s| self.ca_file(s)),
            shared_dependencies: h
                .shared_dependencies
                .as_ref()
                .map(|l| self.shared_dependencies(l))
                .unwrap_or_default(),
        }
    }

    /// Resolves `ca_file` against the config file's directory (so the file works from any
    /// working directory) and checks now that it holds a certificate, rather than at the first
    /// health check.
    fn ca_file(&mut self, value: &Spanned<String>) -> Option<PathBuf> {
        let given = PathBuf::from(value.get_ref());
        let resolved = match self.path.parent() {
            Some(dir) if given.is_relative() => dir.join(&given),
            _ => given,
        };
        // Relative to the working directory when the config's own path is: say which file.
        let absolute = std::path::absolute(&resolved).unwrap_or_else(|_| resolved.clone());
        let shown = absolute.display();
        let bytes = match super::super::read::read_regular_file(
            &resolved,
            super::super::read::MAX_CA_FILE_BYTES,
        ) {
            Ok(b) => b,
            Err(e) => {
                self.report_at(value, format!("cannot read ca_file {shown}: {e}"));
                return None;
            }
        };
        let mut certs = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            match cert {
                Ok(_) => certs += 1,
                Err(e) => {
                    self.report_at(value, format!("ca_file {shown} is not valid PEM: {e}"));
                    return None;
                }
            }
        }
        if certs == 0 {
            self.report_at(
                value,
                format!(
                    "ca_file {shown} contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
                ),
            );
            return None;
        }
        Some(resolved)
    }
}
