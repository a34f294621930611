//! The four balancing algorithms, as one enum with one `pick` over a [`LiveSet`] snapshot.
//! Picks never lock: round robin strides through the weight cycle with an atomic counter
//! (O(log n) a pick, no table of the cycle), the others read the backends' atomic connection
//! counts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;

use super::{Backend, LiveSet};
use crate::config::BalanceKind;

/// Picks a member of `set` not in `exclude` (backends already tried for this connection).
pub fn pick(
    kind: BalanceKind,
    set: &LiveSet,
    client: IpAddr,
    exclude: &[SocketAddr],
) -> Option<Arc<Backend>> {
    let eligible = |b: &Backend| !exclude.contains(&b.address);
    let members = &set.members;
    if members.is_empty() {
        return None;
    }
    let index = match kind {
        BalanceKind::RoundRobin => round_robin(set, eligible),
        BalanceKind::LeastConnections => least_connections(set, eligible),
        BalanceKind::RandomTwo => random_two(set, eligible),
        BalanceKind::ClientHash => client_hash(set, client, eligible),
    }?;
    members.get(index).cloned()
}

fn round_robin(set: &LiveSet, eligible: impl Fn(&Backend) -> bool) -> Option<usize> {
    // A few strides, then a scan: exclusions (backends already tried) are few, and the scan
    // bounds an all-excluded set.
    for _ in 0..4 {
        let k = set.cursor.fetch_add(1, Ordering::Relaxed) as u64;
        let index = set.round_robin_at(k)?;
        if eligible(&set.members[index]) {
            return Some(index);
        }
    }
    let n = set.members.len();
    let start = set.cursor.load(Ordering::Relaxed) % n;
    (0..n)
        .map(|j| (start + j) % n)
        .find(|&i| eligible(&set.members[i]))
}

/// Lower is better: active connections (plus the one being placed) per unit of weight,
/// compared by cross-multiplication to stay in integers.
fn load_less(set: &LiveSet, a: usize, b: usize) -> bool {
    let (wa, wb) = (set.weights[a].max(1), set.weights[b].max(1));
    let la = u128::from(set.members[a].active_connections() + 1) * u128::from(wb);
    let lb = u128::from(set.members[b].active_connections() + 1) * u128::from(wa);
    la < lb
}

fn least_connections(set: &LiveSet, eligible: impl Fn(&Backend) -> bool) -> Option<usize> {
    let n = set.members.len();
    // Start at a rotating offset so ties spread instead of always hitting the first member.
    let start = set.cursor.fetch_add(1, Ordering::Relaxed) % n;
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let b = &set.members[i];
        if !eligible(b) {
            continue;
        }
        best = match best {
            Some(j) if !load_less(set, i, j) => Some(j),
            _ => Some(i),
        };
    }
    best
}

fn weighted_random(set: &LiveSet, eligible: &impl Fn(&Backend) -> bool) -> Option<usize> {
    let total = *set.cumulative_weight.last()?;
    let mut rng = rand::thread_rng();
    // A few tries at a weighted draw, then a scan: exclusions are rare and short.
    for _ in 0..8 {
        let x = rng.gen_range(0..total);
        let i = set.cumulative_weight.partition_point(|&c| c <= x);
        if i < set.members.len() && eligible(&set.members[i]) {
            return Some(i);
        }
    }
    let candidates: Vec<usize> = (0..set.members.len())
        .filter(|&i| eligible(&set.members[i]))
        .collect();
    if candidates.is_empty() {
        None
    } else {
        Some(candidates[rng.gen_range(0..candidates.len())])
    }
}

fn random_two(set: &LiveSet, eligible: impl Fn(&Backend) -> bool) -> Option<usize> {
    let a = weighted_random(set, &eligible)?;
    let b = weighted_random(set, &|m: &Backend| {
        eligible(m) && m.address != set.members[a].address
    });
    match b {
        Some(b) if load_less(set, b, a) => Some(b),
        _ => Some(a),
    }
}

/// Weighted rendezvous hashing: each (client, backend) pair gets a score and the highest wins,
/// so when a backend leaves only the clients that were on it move (about 1/N of them).
fn client_hash(
    set: &LiveSet,
    client: IpAddr,
    eligible: impl Fn(&Backend) -> bool,
) -> Option<usize> {
    let client_key = match client {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, b) in set.members.iter().enumerate() {
        if !eligible(b) {
            continue;
        }
        let h = mix(client_key, backend_key(b.address));
        // Map to (0, 1): the top 53 bits, offset by half a step so ln() never sees 0.
        let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(set.weights[i].max(1)) / -unit.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

fn backend_key(addr: SocketAddr) -> u128 {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    ip ^ (u128::from(addr.port()) << 112)
}

/// A fixed, seedless mix (splitmix64 finaliser over both keys) so a client maps to the same
/// backend across restarts and across splicer instances.
fn mix(a: u128, b: u128) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for word in [a as u64, (a >> 64) as u64, b as u64, (b >> 64) as u64] {
        h ^= word;
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set(weights: &[u32]) -> LiveSet {
        LiveSet::for_tests(weights)
    }

    fn counts(kind: BalanceKind, s: &LiveSet, n: usize) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            let b = pick(kind, s, ip, &[]).unwrap();
            *m.entry(b.address).or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let s = set(&[1, 2, 1]);
        let c = counts(BalanceKind::RoundRobin, &s, 400);
        let v: Vec<usize> = s.members.iter().map(|b| c[&b.address]).collect();
        assert_eq!(v, vec![100, 200, 100]);
    }

    #[test]
    fn exclusion_is_honoured_and_bounded() {
        let s = set(&[1, 1]);
        let first = s.members[0].address;
        let second = s.members[1].address;
        for kind in [
            BalanceKind::RoundRobin,
            BalanceKind::LeastConnections,
            BalanceKind::RandomTwo,
            BalanceKind::ClientHash,
        ] {
            for _ in 0..20 {
                let b = pick(kind, &s, IpAddr::from([1, 2, 3, 4]), &[first]).unwrap();
                assert_eq!(b.address, second, "{kind:?}");
            }
            assert!(pick(kind, &s, IpAddr::from([1, 2, 3, 4]), &[first, second]).is_none());
        }
        assert!(pick(
            BalanceKind::RoundRobin,
            &LiveSet::empty(Arc::new(crate::config::PoolConfig::for_tests())),
            IpAddr::from([1, 1, 1, 1]),
            &[]
        )
        .is_none());
    }

    #[test]
    fn least_connections_prefers_idle_weighted() {
        let s = set(&[1, 1, 2]);
        let _busy: Vec<_> = (0..3).map(|_| s.members[0].connected()).collect();
        let _one = s.members[1].connected();
        let least = || {
            pick(
                BalanceKind::LeastConnections,
                &s,
                IpAddr::from([1, 1, 1, 1]),
                &[],
            )
            .unwrap()
        };
        // Loads: a=(3+1)/1, b=(1+1)/1, c=(0+1)/2 -> c.
        assert_eq!(least().address, s.members[2].address);
        // Fill c with leases and watch the pick follow the lowest load per weight.
        let _held: Vec<_> = (0..40).map(|_| least().connected()).collect();
        let a = s.members[0].active_connections() as f64;
        let c = s.members[2].active_connections() as f64;
        assert!((c / 2.0 - a).abs() <= 1.0, "a={a} c={c}");
    }

    #[test]
    fn random_two_avoids_the_loaded_backend() {
        let s = set(&[1, 1, 1]);
        let _busy: Vec<_> = (0..50).map(|_| s.members[0].connected()).collect();
        let c = counts(BalanceKind::RandomTwo, &s, 3000);
        // The loaded one is only picked when both draws land on it: never, as draws are distinct.
        assert_eq!(c.get(&s.members[0].address).copied().unwrap_or(0), 0);
        assert!(
            c[&s.members[1].address] > 1200 && c[&s.members[2].address] > 1200,
            "{c:?}"
        );
    }

    #[test]
    fn client_hash_is_stable_and_spread() {
        let s = set(&[1, 1, 1, 1]);
        let c = counts(BalanceKind::ClientHash, &s, 4000);
        for b in &s.members {
            let n = c[&b.address];
            assert!((800..1200).contains(&n), "uneven spread {c:?}");
        }
        let ip = IpAddr::from([192, 0, 2, 7]);
        let first = pick(BalanceKind::ClientHash, &s, ip, &[]).unwrap().address;
        for _ in 0..10 {
            assert_eq!(
                pick(BalanceKind::ClientHash, &s, ip, &[]).unwrap().address,
                first
            );
        }
    }

    #[test]
    fn client_hash_moves_only_the_leaving_backends_clients() {
        let full = set(&[1, 1, 1, 1, 1]);
        let gone = full.members[2].address;
        let rest: Vec<_> = full
            .members
            .iter()
            .filter(|b| b.address != gone)
            .map(|b| (b.clone(), 1))
            .collect();
        let smaller = LiveSet::new(
            Arc::new(crate::config::PoolConfig::for_tests()),
            rest,
            false,
        );
        let n = 5000;
        let mut moved = 0;
        for i in 0..n {
            let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let before = pick(BalanceKind::ClientHash, &full, ip, &[])
                .unwrap()
                .address;
            let after = pick(BalanceKind::ClientHash, &smaller, ip, &[])
                .unwrap()
                .address;
            if before != after {
                assert_eq!(before, gone, "a client of a staying backend moved");
                moved += 1;
            }
        }
        // About 1/5 of clients were on the leaving backend.
        assert!((800..1200).contains(&moved), "moved {moved}");
    }

    #[test]
    fn client_hash_honours_weights() {
        let s = set(&[1, 3]);
        let c = counts(BalanceKind::ClientHash, &s, 4000);
        let heavy = c[&s.members[1].address];
        assert!((2800..3200).contains(&heavy), "{c:?}");
    }
}
