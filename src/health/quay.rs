//! Quay's health body and the shared-outage verdict, as pure functions.
//!
//! A Quay node answers `/health/instance` with
//! `{"data":{"services":{"database":false,"disk_space":true,...}},"status_code":503}`. When a
//! service every node shares (the database during a failover) fails, every node fails its check
//! at once; ejecting them all helps no one. [`shared_failure`] tells such a failure apart from
//! a node's own.

use std::collections::BTreeMap;

use serde_json::Value;

/// Services a health body reports, by name: `true` = healthy.
pub type Services = BTreeMap<String, bool>;

/// Reads `data.services` from a Quay-style health body: keys in any order, extra fields
/// ignored; anything else (not JSON, no such object, a non-boolean service) is `None`, which
/// callers treat as an ordinary failure.
pub fn parse_services(body: &[u8]) -> Option<Services> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let services = doc.get("data")?.get("services")?.as_object()?;
    let mut out = Services::new();
    for (name, value) in services {
        out.insert(name.clone(), value.as_bool()?);
    }
    Some(out)
}

/// The services reported false.
pub fn failing(services: &Services) -> Vec<&str> {
    services
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(n, _)| n.as_str())
        .collect()
}

/// The shared services in outage across a pool: those in `shared` that at least half of the
/// `latest` reports (one per enabled backend; `None` = no parseable body) say are false.
pub fn outages(shared: &[String], latest: &[Option<&Services>]) -> Vec<String> {
    if latest.is_empty() {
        return Vec::new();
    }
    shared
        .iter()
        .filter(|s| {
            let down = latest
                .iter()
                .filter(|r| r.and_then(|m| m.get(s.as_str())) == Some(&false))
                .count();
            // "At least half": 2 of 3, 2 of 4, 1 of 1.
            down * 2 >= latest.len()
        })
        .cloned()
        .collect()
}

/// Whether a failed check with these `services` is only the shared outage `outage`: it names
/// at least one false service, and every false one is in outage.
pub fn shared_failure(services: Option<&Services>, outage: &[String]) -> bool {
    let Some(services) = services else {
        return false;
    };
    let bad = failing(services);
    !bad.is_empty() && bad.iter().all(|s| outage.iter().any(|o| o == s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(pairs: &[(&str, bool)]) -> Services {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_quay_bodies_strictly() {
        let ok = br#"{"status_code":503,"data":{"services":{"database":false,"disk_space":true}},"extra":1}"#;
        assert_eq!(
            parse_services(ok),
            Some(svc(&[("database", false), ("disk_space", true)]))
        );
        for bad in [
            &b"not json"[..],
            br#"{"data":{}}"#,
            br#"{"data":{"services":[]}}"#,
            br#"{"data":{"services":{"database":"false"}}}"#,
            br#"[1,2]"#,
            b"",
        ] {
            assert_eq!(
                parse_services(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn outage_needs_half_of_the_pool() {
        let shared = vec!["database".to_string(), "auth".to_string()];
        let db_down = svc(&[("database", false), ("auth", true)]);
        let fine = svc(&[("database", true), ("auth", true)]);
        assert_eq!(
            outages(&shared, &[Some(&db_down), Some(&fine), Some(&fine)]),
            Vec::<String>::new()
        );
        assert_eq!(
            outages(&shared, &[Some(&db_down), Some(&db_down), Some(&fine)]),
            vec!["database"]
        );
        assert_eq!(
            outages(&shared, &[Some(&db_down), Some(&fine)]),
            vec!["database"]
        );
        assert_eq!(
            outages(&shared, &[Some(&db_down), None, None]),
            Vec::<String>::new()
        );
        assert_eq!(outages(&shared, &[]), Vec::<String>::new());
    }

    #[test]
    fn only_shared_failures_are_forgiven() {
        let outage = vec!["database".to_string()];
        let db = svc(&[("database", false), ("disk_space", true)]);
        let disk = svc(&[("database", false), ("disk_space", false)]);
        let none_false = svc(&[("database", true)]);
        assert!(shared_failure(Some(&db), &outage));
        assert!(!shared_failure(Some(&disk), &outage));
        assert!(!shared_failure(Some(&none_false), &outage));
        assert!(!shared_failure(None, &outage));
        assert!(!shared_failure(Some(&db), &[]));
    }
}
