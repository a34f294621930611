//! DNS discovery of a pool's members (`discover = { dns, port, every }`): the A and AAAA records
//! of a name, re-resolved every `every`, become the pool's member list.
//!
//! This module owns only the resolving and the decision of *what to publish*; it never touches a
//! pool. [`run`] sends each changed list on a channel, and the pool's supervisor (the one writer of
//! membership) turns it into additions (which start down) and removals (which drain).
//!
//! A discovery outage must never empty a pool: a failed resolution of any kind (error, timeout,
//! SERVFAIL, NXDOMAIN, an answer with no addresses) keeps the last list published, so the
//! backends' own health checks stay the only thing that takes a member out of service.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::DiscoverConfig;

/// Upper bound of one resolution (A and AAAA together). It is also cut to `every` in [`run`], so
/// a slow server can never make resolutions pile up behind each other.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest re-resolution period [`run`] accepts: the config requires a positive `every`, but a
/// tiny one would flood the DNS server (and a zero period would make the interval panic).
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Per-query timeout of [`Discovery::with_server`]'s resolver: two attempts of this fit inside
/// [`RESOLVE_TIMEOUT`], so one lost UDP datagram is retried instead of failing the resolution.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a resolution, or building a resolver, failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `/etc/resolv.conf` could not be read or parsed.
    #[error("cannot read the system resolver configuration (/etc/resolv.conf)")]
    SystemConfig {
        /// What hickory reported.
        #[source]
        source: ResolveError,
    },
    /// The server answered a query with an error code (SERVFAIL, REFUSED...).
    #[error("{record} lookup of {name} failed: the server answered {answer} (rcode {rcode})")]
    Rejected {
        /// The name resolved.
        name: String,
        /// `A` or `AAAA`.
        record: &'static str,
        /// The response code's meaning, e.g. "Server Failure".
        answer: &'static str,
        /// The response code's number, e.g. 2 for SERVFAIL.
        rcode: u16,
    },
    /// A query failed without an answer (I/O, an unparseable answer...).
    #[error("{record} lookup of {name} failed")]
    Lookup {
        /// The name resolved.
        name: String,
        /// `A` or `AAAA`.
        record: &'static str,
        /// What the resolver reported.
        #[source]
        source: ResolveError,
    },
    /// A and AAAA together did not answer within the bound.
    #[error("resolving {name} took longer than {after:?}")]
    Timeout {
        /// The name resolved.
        name: String,
        /// The bound that passed.
        after: Duration,
    },
    /// The name has neither A nor AAAA records.
    #[error("{name} has no A or AAAA records{}", if *.does_not_exist { " (NXDOMAIN)" } else { "" })]
    NoAddresses {
        /// The name resolved.
        name: String,
        /// Both queries answered NXDOMAIN (rather than an empty NOERROR answer).
        does_not_exist: bool,
    },
}

/// A resolver for discovery names, with caching off.
///
/// The cache is off (size 0) because [`run`] asks once per `every` anyway: a cache could not save
/// meaningful traffic, only show a changed record later than the next resolution.
#[derive(Debug)]
pub struct Discovery {
    resolver: TokioResolver,
    timeout: Duration,
}

impl Discovery {
    /// Resolver from /etc/resolv.conf (servers, search list, timeout, attempts) and /etc/hosts.
    ///
    /// Both files are read once, here: a change to them needs a new `Discovery`.
    pub fn system() -> Result<Discovery, DiscoveryError> {
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|source| DiscoveryError::SystemConfig { source })?;
        let options = builder.options_mut();
        options.cache_size = 0;
        // `Auto` would also read the hosts file today; `Always` says that we rely on it.
        options.use_hosts_file = ResolveHosts::Always;
        Ok(Discovery {
            resolver: builder.build(),
            timeout: RESOLVE_TIMEOUT,
        })
    }

    /// A resolver that asks exactly `server` (UDP, and TCP for truncated answers); no hosts file,
    /// no search list (names are taken as fully qualified).
    pub fn with_server(server: SocketAddr) -> Discovery {
        // "Trusted" negative answers are final rather than retried on another server: with a
        // single server there is nowhere else to ask.
        let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        let options = builder.options_mut();
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = QUERY_TIMEOUT;
        options.attempts = 2;
        Discovery {
            resolver: builder.build(),
            timeout: RESOLVE_TIMEOUT,
        }
    }

    /// Resolves A and AAAA of `name` once: sorted, deduplicated SocketAddrs with `port`.
    ///
    /// Never returns an empty list (that is [`DiscoveryError::NoAddresses`]); takes at most 5s.
    pub async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, DiscoveryError> {
        self.resolve_members(name, port, self.timeout)
            .await
            .map(Members::into_vec)
    }

    /// [`Discovery::resolve`] bounded by `bound`.
    async fn resolve_members(
        &self,
        name: &str,
        port: u16,
        bound: Duration,
    ) -> Result<Members, DiscoveryError> {
        // An address literal is its own answer, as in `getaddrinfo`; asking DNS for "10.0.0.1."
        // would only fail with a confusing NXDOMAIN.
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Members::new([ip], port).ok_or_else(|| no_addresses(name, false));
        }
        // Both families in parallel: a name with only one family answers the other with
        // NXDOMAIN or NOERROR-empty, which `family` turns into an empty list.
        let both = async {
            tokio::join!(
                self.resolver.ipv4_lookup(name),
                self.resolver.ipv6_lookup(name)
            )
        };
        let (v4, v6) =
            tokio::time::timeout(bound, both)
                .await
                .map_err(|_| DiscoveryError::Timeout {
                    name: name.to_owned(),
                    after: bound,
                })?;
        let v4 = family(
            name,
            "A",
            v4.map(|l| l.iter().map(|a| IpAddr::V4(a.0)).collect()),
        )?;
        let v6 = family(
            name,
            "AAAA",
            v6.map(|l| l.iter().map(|a| IpAddr::V6(a.0)).collect()),
        )?;
        let does_not_exist = v4.nxdomain && v6.nxdomain;
        Members::new(v4.ips.into_iter().chain(v6.ips), port)
            .ok_or_else(|| no_addresses(name, does_not_exist))
    }
}

fn no_addresses(name: &str, does_not_exist: bool) -> DiscoveryError {
    DiscoveryError::NoAddresses {
        name: name.to_owned(),
        does_not_exist,
    }
}

/// One record type's answer.
struct Family {
    ips: Vec<IpAddr>,
    /// The answer was NXDOMAIN (as opposed to records or an empty NOERROR).
    nxdomain: bool,
}

/// Sorts one query's outcome: "no such records" is an empty family, since a name may well have
/// only A or only AAAA records; any other failure fails the whole resolution, because publishing
/// the other family alone would drain healthy members over a transient fault.
fn family(
    name: &str,
    record: &'static str,
    result: Result<Vec<IpAddr>, ResolveError>,
) -> Result<Family, DiscoveryError> {
    let source = match result {
        Ok(ips) => {
            return Ok(Family {
                ips,
                nxdomain: false,
            })
        }
        Err(source) => source,
    };
    match classify(&source) {
        Negative::NoRecords { nxdomain } => Ok(Family {
            ips: Vec::new(),
            nxdomain,
        }),
        Negative::Rejected(code) => Err(DiscoveryError::Rejected {
            name: name.to_owned(),
            record,
            answer: code.to_str(),
            rcode: code.into(),
        }),
        Negative::Failed => Err(DiscoveryError::Lookup {
            name: name.to_owned(),
            record,
            source,
        }),
    }
}

/// What a failed query means.
#[derive(Debug, PartialEq, Eq)]
enum Negative {
    /// The records do not exist: NXDOMAIN, or an empty NOERROR answer.
    NoRecords { nxdomain: bool },
    /// The server answered with another error code.
    Rejected(ResponseCode),
    /// No usable answer at all.
    Failed,
}

/// hickory reports SERVFAIL and REFUSED as "no records found" too, so the response code is what
/// tells a real negative answer from a server in trouble.
fn classify(error: &ResolveError) -> Negative {
    match error.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
            ResponseCode::NXDomain => Negative::NoRecords { nxdomain: true },
            ResponseCode::NoError => Negative::NoRecords { nxdomain: false },
            code => Negative::Rejected(code),
        },
        _ => Negative::Failed,
    }
}

/// A non-empty, sorted, deduplicated member list: the only shape [`run`] ever publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Members(Vec<SocketAddr>);

impl Members {
    /// `ips` with `port`, sorted (IPv4 before IPv6) and deduplicated; `None` when empty.
    fn new(ips: impl IntoIterator<Item = IpAddr>, port: u16) -> Option<Members> {
        let mut list: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        // Sorted so that a server rotating its answer order (round-robin DNS) is no change.
        list.sort_unstable();
        list.dedup();
        (!list.is_empty()).then_some(Members(list))
    }

    fn into_vec(self) -> Vec<SocketAddr> {
        self.0
    }
}

/// What [`run`] does with one resolution's outcome.
#[derive(Debug)]
enum Step {
    /// A list different from the last one published (or the first success): send it.
    Publish {
        members: Vec<SocketAddr>,
        /// Failures just before this success (0 when none): worth one "resolving again" line.
        recovered_after: u64,
    },
    /// The same list as last published: send nothing.
    Keep { recovered_after: u64 },
    /// The resolution failed: the last list stands.
    Failed {
        error: DiscoveryError,
        /// The first failure since the last success: the one to log at warn.
        first_of_streak: bool,
    },
}

/// The pure part of [`run`]: what was last published, and how many failures in a row since.
#[derive(Debug, Default)]
struct Membership {
    published: Option<Members>,
    failure_streak: u64,
}

impl Membership {
    /// Folds one resolution in and says what to do about it.
    fn observe(&mut self, outcome: Result<Members, DiscoveryError>) -> Step {
        match outcome {
            Ok(members) => {
                let recovered_after = std::mem::take(&mut self.failure_streak);
                if self.published.as_ref() == Some(&members) {
                    Step::Keep { recovered_after }
                } else {
                    self.published = Some(members.clone());
                    Step::Publish {
                        members: members.into_vec(),
                        recovered_after,
                    }
                }
            }
            Err(error) => {
                self.failure_streak += 1;
                Step::Failed {
                    error,
                    first_of_streak: self.failure_streak == 1,
                }
            }
        }
    }
}

/// Re-resolves `config.dns` every `config.every` (the first at once) until `stop`, sending the
/// member list on `updates` when it changed (and once at the first success).
///
/// A failed resolution keeps the last list: it adds one to `failures`, is logged at warn once per
/// failure streak, and never sends an empty list. Returns at `stop`, or when `updates` is closed.
pub async fn run(
    discovery: Arc<Discovery>,
    pool: Arc<str>,
    config: DiscoverConfig,
    updates: mpsc::Sender<Vec<SocketAddr>>,
    failures: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let period = config.every.max(MIN_PERIOD);
    let bound = period.min(discovery.timeout);
    let mut ticks = tokio::time::interval(period);
    // After a slow resolution, keep a full period before the next one instead of catching up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut membership = Membership::default();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            outcome = discovery.resolve_members(&config.dns, config.port, bound) => outcome,
        };
        match membership.observe(outcome) {
            Step::Publish {
                members,
                recovered_after,
            } => {
                log_recovery(&pool, &config.dns, recovered_after);
                tracing::info!(pool = %pool, dns = %config.dns, count = members.len(),
                    members = ?members, "discovered members changed");
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    sent = updates.send(members) => if sent.is_err() {
                        tracing::debug!(pool = %pool, "discovery updates closed: stopping");
                        return;
                    },
                }
            }
            Step::Keep { recovered_after } => log_recovery(&pool, &config.dns, recovered_after),
            Step::Failed {
                error,
                first_of_streak,
            } => {
                failures.fetch_add(1, Ordering::Relaxed);
                let error = crate::error_chain::error_chain(&error);
                if first_of_streak {
                    tracing::warn!(pool = %pool, dns = %config.dns, error,
                        "DNS discovery failed: keeping the last known members");
                } else {
                    tracing::debug!(pool = %pool, dns = %config.dns, error,
                        "DNS discovery still failing");
                }
            }
        }
    }
}

fn log_recovery(pool: &str, dns: &str, failures: u64) {
    if failures > 0 {
        tracing::info!(pool, dns, failures, "DNS discovery resolving again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::ProtoError;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn members(list: &[&str]) -> Members {
        Members::new(ips(list), 443).unwrap()
    }

    fn failure() -> DiscoveryError {
        DiscoveryError::Timeout {
            name: "quay-nodes.test".into(),
            after: Duration::from_secs(1),
        }
    }

    #[test]
    fn members_are_sorted_deduplicated_and_carry_the_port() {
        let m = members(&["10.0.0.2", "::1", "10.0.0.1", "10.0.0.2", "::1"]);
        let shown: Vec<String> = m.0.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.1:443", "10.0.0.2:443", "[::1]:443"]);
        assert_eq!(Members::new([], 443), None);
    }

    #[test]
    fn order_of_the_answer_is_no_change() {
        assert_eq!(
            members(&["10.0.0.1", "10.0.0.2"]),
            members(&["10.0.0.2", "10.0.0.1"])
        );
    }

    #[test]
    fn membership_publishes_only_changes_and_never_on_failure() {
        let mut m = Membership::default();
        // Failures before any success publish nothing.
        assert!(matches!(
            m.observe(Err(failure())),
            Step::Failed {
                first_of_streak: true,
                ..
            }
        ));
        match m.observe(Ok(members(&["10.0.0.1"]))) {
            Step::Publish {
                members,
                recovered_after: 1,
            } => assert_eq!(members, [SocketAddr::from(([10, 0, 0, 1], 443))]),
            other => panic!("expected the first list, got {other:?}"),
        }
        assert!(matches!(
            m.observe(Ok(members(&["10.0.0.1"]))),
            Step::Keep { recovered_after: 0 }
        ));
        // A streak warns once.
        assert!(matches!(
            m.observe(Err(failure())),
            Step::Failed {
                first_of_streak: true,
                ..
            }
        ));
        assert!(matches!(
            m.observe(Err(failure())),
            Step::Failed {
                first_of_streak: false,
                ..
            }
        ));
        // Back with the same set: nothing to send, the streak ends.
        assert!(matches!(
            m.observe(Ok(members(&["10.0.0.1"]))),
            Step::Keep { recovered_after: 2 }
        ));
        assert!(matches!(
            m.observe(Err(failure())),
            Step::Failed {
                first_of_streak: true,
                ..
            }
        ));
        // Back with a changed set: published.
        assert!(matches!(
            m.observe(Ok(members(&["10.0.0.1", "::1"]))),
            Step::Publish {
                recovered_after: 1,
                ..
            }
        ));
    }

    fn negative(code: ResponseCode) -> ResolveError {
        ResolveError::from(ProtoError::nx_error(
            Box::new(Query::new()),
            None,
            None,
            None,
            code,
            false,
            None,
        ))
    }

    #[test]
    fn only_real_negative_answers_count_as_no_records() {
        use Negative::*;
        let cases = [
            (
                negative(ResponseCode::NXDomain),
                NoRecords { nxdomain: true },
            ),
            (
                negative(ResponseCode::NoError),
                NoRecords { nxdomain: false },
            ),
            (
                negative(ResponseCode::ServFail),
                Rejected(ResponseCode::ServFail),
            ),
            (
                negative(ResponseCode::Refused),
                Rejected(ResponseCode::Refused),
            ),
            (ProtoError::from(ProtoErrorKind::Timeout).into(), Failed),
        ];
        for (error, want) in cases {
            assert_eq!(classify(&error), want, "{error}");
        }
    }

    #[test]
    fn one_family_failing_fails_the_resolution() {
        let err = family(
            "quay-nodes.test",
            "AAAA",
            Err(negative(ResponseCode::ServFail)),
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("AAAA lookup of quay-nodes.test failed: the server answered Server Failure (rcode 2)")
        );
        let empty = family(
            "quay-nodes.test",
            "AAAA",
            Err(negative(ResponseCode::NoError)),
        );
        assert!(matches!(empty, Ok(Family { ref ips, nxdomain: false }) if ips.is_empty()));
    }

    #[tokio::test]
    async fn an_address_literal_is_its_own_answer() {
        let d = Discovery::with_server(SocketAddr::from(([127, 0, 0, 1], 9)));
        let got = d.resolve("::1", 443).await.unwrap();
        assert_eq!(
            got,
            [SocketAddr::from((
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                443
            ))]
        );
    }
}
