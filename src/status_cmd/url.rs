//! `--admin URL`: where the admin API listens. The URL grammar is `hyper::Uri`'s (the `http`
//! crate's RFC 3986 parser), not a hand-written one; this module only decides which of the
//! URLs it accepts name an admin API, and says why the others do not in an operator's words.

use std::net::Ipv6Addr;

use hyper::Uri;

use super::{StatusCmdError, DEFAULT_ADMIN};

/// Port assumed when the URL names none: the admin API's default, not HTTP's 80, because an
/// operator typing `--admin 10.0.0.5` means that host's admin API.
const DEFAULT_PORT: u16 = 9090;

/// Where the admin API listens, from `--admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AdminUrl {
    /// Host name or IP address; an IPv6 address without its brackets.
    pub(super) host: String,
    /// TCP port, never 0.
    pub(super) port: u16,
}

impl AdminUrl {
    /// Accepts `http://host:port` and `host:port` (IPv6 as `[::1]:9090`), either without the
    /// port (then 9090), with an optional trailing `/` or `/status` (as copied from a `curl`
    /// line). Refuses HTTPS and other schemes, user names, any other path, queries and
    /// fragments, and ports outside 1-65535.
    pub(super) fn parse(input: &str) -> Result<AdminUrl, StatusCmdError> {
        let bad = |reason: String| StatusCmdError::BadUrl {
            url: input.to_owned(),
            reason,
        };
        let s = input.trim();
        // The URI grammar drops a fragment silently; an admin URL never has one.
        if s.contains('#') {
            return Err(bad(format!(
                "unexpected fragment; give only host and port, e.g. {DEFAULT_ADMIN}"
            )));
        }
        // `host:port` is an authority, not a URI; as an absolute URI it gets the same checks.
        let absolute = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let uri: Uri = absolute
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(unparsable(s, &e)))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host; use http://host:port".into()))?;
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(format!(
                    "the admin API speaks plain HTTP, not HTTPS; use http://{authority}"
                )))
            }
            scheme => {
                return Err(bad(format!(
                    "unsupported scheme {:?}; use http://host:port",
                    scheme.unwrap_or("")
                )))
            }
        }
        if authority.as_str().contains('@') {
            return Err(bad("user names are not supported in the admin URL".into()));
        }
        if uri.query().is_some() || !matches!(uri.path(), "" | "/" | "/status") {
            let path = uri.path_and_query().map_or("", |p| p.as_str());
            return Err(bad(format!(
                "unexpected path {path:?}; give only host and port, e.g. {DEFAULT_ADMIN}"
            )));
        }

        let host = authority.host();
        let host = match host.strip_prefix('[') {
            Some(bracketed) => {
                let inner = bracketed.strip_suffix(']').unwrap_or(bracketed);
                if inner.parse::<Ipv6Addr>().is_err() {
                    return Err(bad(format!("{inner:?} is not an IPv6 address")));
                }
                inner
            }
            None => {
                let name_ok = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
                if !name_ok {
                    return Err(bad(format!("{host:?} is not a host name or IP address")));
                }
                host
            }
        };
        // `Authority::port` reads an unparsable port as no port at all, so the text after the
        // host is checked here: nothing, or `:` and a port number.
        let tail = authority
            .as_str()
            .strip_prefix(authority.host())
            .unwrap_or_default();
        let port = match tail {
            "" => DEFAULT_PORT,
            _ => match tail.strip_prefix(':') {
                Some(p) => match p.parse::<u16>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(bad(format!("{p:?} is not a port number"))),
                },
                None => return Err(bad(format!("unexpected {tail:?} after the address"))),
            },
        };
        Ok(AdminUrl {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, IPv6 in brackets: the `Host` header and the URL's middle.
    pub(super) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The normalised URL, as messages show it.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.authority())
    }
}

/// Why the URI parser refused `s`, with the likely fix: a bare IPv6 address is the usual slip.
fn unparsable(s: &str, e: &hyper::http::uri::InvalidUri) -> String {
    let after_scheme = s.split_once("://").map_or(s, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    if !authority.contains('[') && authority.matches(':').count() > 1 {
        "an IPv6 address needs brackets, e.g. http://[::1]:9090".into()
    } else {
        format!("not a URL ({e}); use http://host:port")
    }
}
