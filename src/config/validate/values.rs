//! Pure parsers for the string values whose syntax is ours: socket addresses, status lists,
//! host names and request paths. Each returns the message of the problem, not a `Problem`, so
//! it can be table-tested without a file.

use std::net::{IpAddr, SocketAddr};

use crate::config::StatusMatcher;

/// A backend's address: [`socket_addr`], and not port 0, where nothing can listen.
pub fn backend_addr(s: &str) -> Result<SocketAddr, String> {
    match socket_addr(s)? {
        a if a.port() == 0 => Err(format!("backend address \"{s}\" has port 0")),
        a => Ok(a),
    }
}

/// Parses `ip:port` (IPv6 in brackets); hostnames are refused with a hint, since this version
/// resolves nothing here (names belong in `pool.discover`, which re-resolves them).
/// The port must be written canonically: std accepts `10.0.0.1:0443`, which would make two
/// spellings of one backend (and one of them looks octal).
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        let port = s.rsplit_once(':').map_or("", |(_, p)| p);
        if port != addr.port().to_string() {
            return Err(format!(
                "address \"{s}\" has a leading zero in its port; write \"{addr}\""
            ));
        }
        return Ok(addr);
    }
    if s.trim() != s || s.is_empty() {
        return Err(format!(
            "address \"{s}\" must be ip:port with no spaces, e.g. \"10.0.0.11:443\""
        ));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err(if s.contains(':') {
            format!(
                "address \"{s}\" has no port; IPv6 addresses go in brackets before the port, \
                 e.g. \"[{s}]:443\""
            )
        } else {
            format!("address \"{s}\" has no port; write ip:port, e.g. \"{s}:443\"")
        });
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!(
                "address \"{s}\" is not valid; write IPv6 addresses in brackets, e.g. \"[::1]:443\""
            ));
        }
        if port.parse::<u16>().is_err() {
            return Err(format!(
                "address \"{s}\" has a bad port \"{port}\"; use a number from 0 to 65535"
            ));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_err() && looks_like_hostname(bare) {
            return Err(format!(
                "address \"{s}\" is a hostname; write ip:port (e.g. \"10.0.0.11:443\"), or use \
                 discover = {{ dns = \"...\", port = ... }} for members found through DNS"
            ));
        }
    }
    Err(format!(
        "address \"{s}\" is not valid; write ip:port, e.g. \"10.0.0.11:443\" or \"[::1]:443\""
    ))
}

fn looks_like_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        && s.chars().any(|c| c.is_ascii_alphabetic())
}

/// Parses `"200"`, `"200-299"`, `"200,204"` (or a mix, `"200-299,304"`).
pub fn expect_status(s: &str) -> Result<StatusMatcher, String> {
    let usage = "use codes from 100 to 599, e.g. \"200\", \"200-299\" or \"200,204\"";
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let code = |t: &str| -> Result<u16, String> {
            let n: u16 = t
                .parse()
                .map_err(|_| format!("expect_status \"{s}\" is not a status list; {usage}"))?;
            if (100..=599).contains(&n) {
                Ok(n)
            } else {
                Err(format!(
                    "expect_status \"{s}\" has code {n} outside 100 to 599"
                ))
            }
        };
        let (lo, hi) = (code(lo)?, code(hi)?);
        if lo > hi {
            return Err(format!(
                "expect_status \"{s}\" has range {lo}-{hi} whose start is above its end"
            ));
        }
        ranges.push((lo, hi));
    }
    Ok(StatusMatcher { ranges })
}

/// Checks a health-check `path`: it goes verbatim into the request line, so it must be
/// absolute and free of spaces and control characters.
pub fn request_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!(
            "path \"{s}\" must start with \"/\", e.g. \"/health/instance\""
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "path \"{s}\" must not contain spaces or control characters (encode them as %20 etc.)"
        ));
    }
    Ok(())
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, 1..=63 bytes each,
/// 253 in all.
pub fn dns_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{s}\" is not a DNS name (e.g. \"quay-nodes.internal\")"
        ))
    }
}

/// An SNI route pattern: a DNS name, or `*.` followed by one.
pub fn sni_pattern(s: &str) -> Result<(), String> {
    let name = s.strip_prefix("*.").unwrap_or(s);
    dns_name(name).map_err(|_| {
        format!(
            "sni \"{s}\" is neither a host name nor a one-label wildcard like \"*.example.com\""
        )
    })
}

/// Checks a health-check `host`: it becomes the Host header and the TLS SNI, so it is a bare
/// name (or IP), without scheme, path or spaces.
pub fn host(s: &str) -> Result<(), String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("host \"{s}\" must not contain spaces"));
    }
    if s.contains('/') {
        return Err(format!(
            "host \"{s}\" must be a bare name such as \"quay.example.com\", without scheme or path"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addrs() {
        assert_eq!(
            socket_addr("10.0.0.11:443"),
            Ok("10.0.0.11:443".parse().unwrap())
        );
        assert_eq!(socket_addr("[::1]:443"), Ok("[::1]:443".parse().unwrap()));
        let cases = [
            ("quay.internal:443", "hostname"),
            ("localhost:443", "hostname"),
            ("10.0.0.11", "no port"),
            ("::1", "no port"),
            ("::1:443", "brackets"),
            ("fe80::1:99999", "brackets"),
            ("10.0.0.11:99999", "bad port"),
            ("10.0.0.11:", "bad port"),
            (" 10.0.0.11:443", "no spaces"),
            ("", "ip:port"),
            ("1.2.3.4.5:80", "not valid"),
            ("10.0.0.300:443", "not valid"),
            ("10.0.0.1:0443", "leading zero"),
            ("[::1]:00443", "leading zero"),
            ("10.0.0.1:00", "leading zero"),
        ];
        for (input, phrase) in cases {
            let err = socket_addr(input).unwrap_err();
            assert!(err.contains(phrase), "{input:?}: {err}");
        }
    }

    #[test]
    fn status_lists() {
        let m = expect_status("200-299, 304").unwrap();
        assert_eq!(m.ranges, vec![(200, 299), (304, 304)]);
        assert_eq!(expect_status("200").unwrap().ranges, vec![(200, 200)]);
        for (input, phrase) in [
            ("", "not a status list"),
            ("ok", "not a status list"),
            ("200,", "not a status list"),
            ("99", "outside"),
            ("200-600", "outside"),
            ("299-200", "above its end"),
            ("-200", "not a status list"),
            ("70000", "not a status list"),
        ] {
            let err = expect_status(input).unwrap_err();
            assert!(err.contains(phrase), "{input:?}: {err}");
        }
    }

    #[test]
    fn paths_and_hosts() {
        assert!(request_path("/health/instance").is_ok());
        assert!(request_path("health").is_err());
        assert!(request_path("/a b").is_err());
        assert!(host("quay.example.com").is_ok());
        assert!(host("quay example").is_err());
        assert!(host("https://quay").is_err());
    }
}
