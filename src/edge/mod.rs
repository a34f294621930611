//! Edge protection (docs/architecture.md §9): which clients a listener admits at all (`allow`/`deny`
//! CIDR lists) and how much one client may take (`per_client_max_connections`,
//! `per_client_rate`). Pure values and verdicts here; [`clients`] keeps the bounded per-client
//! table. The data path asks once per connection, after the PROXY header names the client.

pub mod clients;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use clients::{ClientGuard, ClientTable, Limits, Refusal};

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`/32`, `/128` implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ip/prefix` or a bare `ip`. Host bits must be zero (`10.0.0.1/8` is refused:
    /// it is usually a typo for a host or for another block).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!("{s:?} is not an address block (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")")
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') && (p == "0" || !p.starts_with('0')) => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let network = mask(ip, prefix);
        if network != ip {
            return Err(format!(
                "{s:?} has host bits set; the block is {}/{prefix}",
                network
            ));
        }
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` (a dual-stack listener reports it so).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A listener's `allow` and `deny` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// Admitted blocks; empty = everyone.
    pub allow: Vec<Cidr>,
    /// Refused blocks; wins over `allow`.
    pub deny: Vec<Cidr>,
}

impl AccessList {
    /// Whether the list admits everyone (nothing to check per connection).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` may connect: not in `deny`, and in `allow` when `allow` is not empty.
    pub fn admits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// New connections per client: a token bucket refilled at `per_second`, holding at most
/// `burst` tokens (the per-second figure, at least 1) and starting full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
    /// As written (`"50/s"`), for messages and the summary.
    spelled: (u32, char),
}

impl Eq for Rate {}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` with N ≥ 1.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || {
            format!("{s:?} is not a rate: write new connections per second, minute or hour, e.g. \"50/s\", \"600/m\"")
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!(
                "{s:?}: the rate must be at least 1 (leave it \"\" for no limit)"
            ));
        }
        let (period, unit) = match unit.trim() {
            "s" => (Duration::from_secs(1), 's'),
            "m" => (Duration::from_secs(60), 'm'),
            "h" => (Duration::from_secs(3600), 'h'),
            _ => return Err(bad()),
        };
        let per_second = f64::from(n) / period.as_secs_f64();
        Ok(Rate {
            per_second,
            burst: per_second.max(1.0),
            spelled: (n, unit),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.spelled.0, self.spelled.1)
    }
}

/// What counts as one client: an IPv4 address, or an IPv6 /64 (one subscriber's network: an
/// attacker has 2^64 addresses in it, not 2^64 clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl ClientKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> ClientKey {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").expect("v4");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "mapped v4 is v4");
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("127.0.0.66").expect("host");
        assert_eq!(one.to_string(), "127.0.0.66/32");
        assert!(one.contains(ip("127.0.0.66")) && !one.contains(ip("127.0.0.67")));
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains(ip("1.2.3.4")));
        assert!(Cidr::parse("::/0").expect("all v6").contains(ip("::1")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/08",
            "x/8",
            "",
            "::/129",
            "10.0.0.0/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Cidr::parse("10.0.0.1/8")
            .expect_err("host bits")
            .contains("10.0.0.0/8"));
    }

    #[test]
    fn deny_wins_and_empty_allow_admits_everyone() {
        let list = AccessList {
            allow: vec![Cidr::parse("127.0.0.0/8").expect("cidr")],
            deny: vec![Cidr::parse("127.0.0.66/32").expect("cidr")],
        };
        assert!(list.admits(ip("127.0.0.5")));
        assert!(!list.admits(ip("127.0.0.66")));
        assert!(!list.admits(ip("10.0.0.1")));
        let open = AccessList::default();
        assert!(open.is_open() && open.admits(ip("203.0.113.9")));
        let deny_only = AccessList {
            allow: vec![],
            deny: vec![Cidr::parse("::1").expect("cidr")],
        };
        assert!(!deny_only.admits(ip("::1")) && deny_only.admits(ip("127.0.0.1")));
    }

    #[test]
    fn rates_parse_with_a_burst_of_the_per_second_figure() {
        let r = Rate::parse("50/s").expect("rate");
        assert_eq!((r.per_second, r.burst), (50.0, 50.0));
        let r = Rate::parse("600/m").expect("rate");
        assert_eq!((r.per_second, r.burst), (10.0, 10.0));
        assert_eq!(r.to_string(), "600/m");
        let r = Rate::parse("30/h").expect("rate");
        assert_eq!(r.burst, 1.0, "at least one connection gets through");
        for bad in ["", "50", "0/s", "50/d", "-1/s", "x/s", "1.5/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:127.0.0.1")),
            ClientKey::of(ip("127.0.0.1"))
        );
    }
}
