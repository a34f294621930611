//! The admin API's edge checks as pure functions (table-tested below): which `Host` may address
//! it (no DNS rebinding), which `Origin` may POST to it (no cross-site forms from the operator's
//! browser), and the strict reading of request paths.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::http::uri::Authority;
use hyper::Uri;
use percent_encoding::percent_decode_str;

/// Where a request arrived: the admin socket's own address (its bind) and the local address of
/// the connection (the concrete address the client dialled, even under a 0.0.0.0 bind).
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// The listening socket's address.
    pub bind: SocketAddr,
    /// The accepted connection's local address.
    pub local: SocketAddr,
}

/// Whether `host` (the `Host` header, if any) may address this admin API. Accepted: the
/// address the request arrived on; `localhost` when that address is loopback; and, when the
/// API binds an unspecified address (behind a cloud balancer), any IP literal — always with
/// the right port. A DNS name other than localhost is refused: a page whose name was rebound
/// to 127.0.0.1 sends its own name. No `Host` at all (HTTP/1.0 tools) is no such page.
pub(super) fn host_allowed(host: Option<&str>, at: Arrival) -> Result<(), String> {
    let Some(host) = host else { return Ok(()) };
    let authority =
        Authority::from_str(host).map_err(|_| format!("Host {host:?} is not host[:port]"))?;
    if authority.as_str().contains('@') {
        return Err(format!("Host {host:?} is not host[:port]"));
    }
    let port = authority.port_u16().unwrap_or(80);
    if port != at.local.port() {
        return Err(format!(
            "Host {host:?} names port {port}, not this admin API's {}",
            at.local.port()
        ));
    }
    let name = authority.host();
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    let allowed = match literal.parse::<IpAddr>() {
        Ok(ip) => ip == at.local.ip() || at.bind.ip().is_unspecified(),
        Err(_) => name.eq_ignore_ascii_case("localhost") && at.local.ip().is_loopback(),
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "Host {host:?} does not name this admin API (it listens on {}); use its address",
            at.bind
        ))
    }
}

/// Whether a POST carrying `origin` (the `Origin` header, if any) comes from the admin API's
/// own origin: scheme `http`, and host and port equal to those the request addressed (`host`,
/// already checked by [`host_allowed`], else the arrival address). No `Origin` is a tool such
/// as curl, not a browser page; `null` (sandboxed or file pages) is refused.
pub(super) fn origin_allowed(origin: Option<&str>, host: Option<&str>, at: Arrival) -> bool {
    let Some(origin) = origin else { return true };
    let Ok(uri) = origin.parse::<Uri>() else {
        return false;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") || !matches!(uri.path(), "" | "/") {
        return false;
    }
    let addressed = match host.map(Authority::from_str) {
        Some(Ok(a)) => a,
        Some(Err(_)) => return false,
        None => match Authority::from_str(&at.local.to_string()) {
            Ok(a) => a,
            Err(_) => return false,
        },
    };
    authority.host().eq_ignore_ascii_case(addressed.host())
        && authority.port_u16().unwrap_or(80) == addressed.port_u16().unwrap_or(80)
}

/// The percent-decoded segments of an absolute path; `None` for anything that is not one
/// canonical spelling: no empty segment (`//reload`), no trailing slash (`/reload/`), valid
/// UTF-8 after decoding. `/` alone is the empty list.
pub(super) fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('/')
        .map(|s| {
            if s.is_empty() {
                return None;
            }
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bind: &str, local: &str) -> Arrival {
        Arrival {
            bind: bind.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn host_table() {
        let lo = at("127.0.0.1:9090", "127.0.0.1:9090");
        let v6 = at("[::1]:9090", "[::1]:9090");
        let any = at("0.0.0.0:9090", "10.1.2.3:9090");
        let private = at("10.1.2.3:9090", "10.1.2.3:9090");
        let cases: &[(Arrival, Option<&str>, bool)] = &[
            (lo, None, true),
            (lo, Some("127.0.0.1:9090"), true),
            (lo, Some("localhost:9090"), true),
            (lo, Some("LocalHost:9090"), true),
            (lo, Some("127.0.0.1:9091"), false),
            (lo, Some("127.0.0.1"), false),
            (lo, Some("127.0.0.2:9090"), false),
            (lo, Some("evil.example:9090"), false),
            (lo, Some("localhost.evil.example:9090"), false),
            (lo, Some("user@127.0.0.1:9090"), false),
            (lo, Some("127.0.0.1:9090/x"), false),
            (lo, Some(""), false),
            (v6, Some("[::1]:9090"), true),
            (v6, Some("localhost:9090"), true),
            (v6, Some("[::2]:9090"), false),
            (any, Some("10.1.2.3:9090"), true),
            (any, Some("203.0.113.9:9090"), true),
            (any, Some("[2001:db8::1]:9090"), true),
            (any, Some("203.0.113.9:80"), false),
            (any, Some("localhost:9090"), false),
            (any, Some("admin.example:9090"), false),
            (private, Some("10.1.2.3:9090"), true),
            (private, Some("203.0.113.9:9090"), false),
        ];
        for (arrival, host, want) in cases {
            assert_eq!(
                host_allowed(*host, *arrival).is_ok(),
                *want,
                "host {host:?} at {arrival:?}"
            );
        }
    }

    #[test]
    fn origin_table() {
        let lo = at("127.0.0.1:9090", "127.0.0.1:9090");
        let h = Some("127.0.0.1:9090");
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, h, true),
            (Some("http://127.0.0.1:9090"), h, true),
            (Some("HTTP://127.0.0.1:9090"), h, true),
            (Some("http://localhost:9090"), Some("localhost:9090"), true),
            (Some("http://127.0.0.1:9090"), None, true),
            (Some("http://localhost:9090"), h, false),
            (Some("https://127.0.0.1:9090"), h, false),
            (Some("http://127.0.0.1:8080"), h, false),
            (Some("http://127.0.0.1"), h, false),
            (Some("http://evil.example"), h, false),
            (Some("http://evil.example:9090"), h, false),
            (Some("null"), h, false),
            (Some(""), h, false),
            (Some("127.0.0.1:9090"), h, false),
        ];
        for (origin, host, want) in cases {
            assert_eq!(
                origin_allowed(*origin, *host, lo),
                *want,
                "origin {origin:?} host {host:?}"
            );
        }
    }

    #[test]
    fn strict_paths() {
        let s = |p: &str| segments(p);
        assert_eq!(s("/"), Some(vec![]));
        assert_eq!(s("/reload"), Some(vec!["reload".to_string()]));
        assert_eq!(
            s("/pools/q/backends/%5B%3A%3A1%5D%3A443/drain"),
            Some(
                ["pools", "q", "backends", "[::1]:443", "drain"]
                    .map(String::from)
                    .to_vec()
            )
        );
        for bad in ["", "reload", "//reload", "/reload/", "/a//b", "/%ff", "//"] {
            assert_eq!(s(bad), None, "{bad:?}");
        }
        // Malformed escapes stay literal (percent-encoding's rule); no address contains one.
        assert_eq!(s("/%zz"), Some(vec!["%zz".to_string()]));
    }
}
