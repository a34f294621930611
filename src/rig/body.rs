//! What a node says: Quay-style health reports (pure functions of its state) and the
//! streamed byte pattern behind `GET /bytes/{n}`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Services a Quay node checks for `/health/instance`, in Quay's terms.
pub const INSTANCE_SERVICES: [&str; 8] = [
    "auth",
    "database",
    "disk_space",
    "redis",
    "storage",
    "registry_gunicorn",
    "web_gunicorn",
    "service_key",
];

/// Services a Quay node checks for `/health/endtoend`: the ones the whole cluster shares.
pub const ENDTOEND_SERVICES: [&str; 4] = ["auth", "database", "redis", "storage"];

/// A health answer: the HTTP status and the JSON body that repeats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthReport {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `/health/instance`: services in `failing` or `shared_down` are false (names outside the
/// usual list are reported too, so a test can invent one). The configured `health` wins
/// when it is not 200; a 200 node with any false service answers 503, as Quay does.
pub(crate) fn instance_report(
    health: u16,
    failing: &[String],
    shared_down: &BTreeSet<String>,
) -> HealthReport {
    let down: BTreeSet<&str> = failing
        .iter()
        .chain(shared_down)
        .map(String::as_str)
        .collect();
    let services = service_map(&INSTANCE_SERVICES, &down);
    let status = if health != 200 {
        health
    } else if services.values().any(|up| !up) {
        503
    } else {
        200
    };
    report(status, services)
}

/// `/health/endtoend`: the shared services, false when down cluster-wide (or failing on
/// this node); 503 when any is false or the node's configured health is not 200.
pub(crate) fn endtoend_report(
    health: u16,
    failing: &[String],
    shared_down: &BTreeSet<String>,
) -> HealthReport {
    let down: BTreeSet<&str> = failing
        .iter()
        .map(String::as_str)
        .filter(|s| ENDTOEND_SERVICES.contains(s))
        .chain(shared_down.iter().map(String::as_str))
        .collect();
    let services = service_map(&ENDTOEND_SERVICES, &down);
    let status = if health != 200 || services.values().any(|up| !up) {
        503
    } else {
        200
    };
    report(status, services)
}

fn service_map<'a>(known: &[&'a str], down: &BTreeSet<&'a str>) -> BTreeMap<&'a str, bool> {
    let mut services: BTreeMap<&str, bool> = known.iter().map(|s| (*s, true)).collect();
    for name in down {
        services.insert(name, false);
    }
    services
}

fn report(status: u16, services: BTreeMap<&str, bool>) -> HealthReport {
    let body = serde_json::json!({ "data": { "services": services }, "status_code": status });
    HealthReport {
        status,
        body: body.to_string(),
    }
}

/// Byte `k` of every `/bytes/{n}` answer is `k % 251`: a prime period makes a dropped,
/// repeated or reordered chunk show up in a checksum, unlike an all-zero body.
pub const BYTE_PATTERN_PERIOD: u64 = 251;

/// Largest chunk handed to hyper: a whole number of periods, so every chunk is a slice
/// of one shared buffer and the body costs no allocation per chunk.
const CHUNK: usize = 251 * 255;

fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..CHUNK + BYTE_PATTERN_PERIOD as usize)
            .map(|k| (k as u64 % BYTE_PATTERN_PERIOD) as u8)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// A body of exactly `len` pattern bytes, produced as the client reads them.
pub(crate) struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    pub(crate) fn new(len: u64) -> Self {
        PatternBody { sent: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let remaining = self.len - self.sent;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let start = (self.sent % BYTE_PATTERN_PERIOD) as usize;
        let take = remaining.min(CHUNK as u64) as usize;
        self.sent += take as u64;
        Poll::Ready(Some(Ok(Frame::data(pattern().slice(start..start + take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// (configured health, failing, shared down, expected status, expected false services)
    type Case = (
        u16,
        &'static [&'static str],
        &'static [&'static str],
        u16,
        &'static [&'static str],
    );

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn failing(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn services(r: &HealthReport) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["status_code"], r.status);
        v["data"]["services"].clone()
    }

    #[test]
    fn instance_report_table() {
        let cases: &[Case] = &[
            (200, &[], &[], 200, &[]),
            (503, &[], &[], 503, &[]),
            (200, &["disk_space"], &[], 503, &["disk_space"]),
            (200, &[], &["database"], 503, &["database"]),
            (500, &["redis"], &["database"], 500, &["database", "redis"]),
            (200, &["quota"], &[], 503, &["quota"]),
        ];
        for (health, f, shared, status, down) in cases {
            let r = instance_report(*health, &failing(f), &set(shared));
            assert_eq!(r.status, *status, "{health} {f:?} {shared:?}");
            let s = services(&r);
            for name in INSTANCE_SERVICES {
                assert_eq!(s[name], !down.contains(&name), "{name} in {s}");
            }
            for name in *down {
                assert_eq!(s[*name], false);
            }
        }
    }

    #[test]
    fn endtoend_report_table() {
        let cases: &[Case] = &[
            (200, &[], &[], 200, &[]),
            (503, &[], &[], 503, &[]),
            // A node's own disk is not an end-to-end concern.
            (200, &["disk_space"], &[], 200, &[]),
            (200, &["database"], &[], 503, &["database"]),
            (200, &[], &["storage"], 503, &["storage"]),
        ];
        for (health, f, shared, status, down) in cases {
            let r = endtoend_report(*health, &failing(f), &set(shared));
            assert_eq!(r.status, *status, "{health} {f:?} {shared:?}");
            let s = services(&r);
            assert_eq!(s.as_object().unwrap().len(), ENDTOEND_SERVICES.len());
            for name in ENDTOEND_SERVICES {
                assert_eq!(s[name], !down.contains(&name), "{name} in {s}");
            }
        }
    }

    #[tokio::test]
    async fn pattern_body_has_exact_length_and_pattern() {
        for len in [0u64, 1, 250, 251, CHUNK as u64, CHUNK as u64 * 3 + 17] {
            let body = PatternBody::new(len).collect().await.unwrap().to_bytes();
            assert_eq!(body.len() as u64, len);
            assert!(body
                .iter()
                .enumerate()
                .all(|(k, b)| *b as u64 == k as u64 % BYTE_PATTERN_PERIOD));
        }
    }
}
