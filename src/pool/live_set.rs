//! The backends a new connection may go to, with what the balancers precompute over them in
//! O(n) per publish: cumulative weights and the round-robin stride. Part of the pool's
//! [`PoolSnapshot`](super::PoolSnapshot); a connection does one `load()` and picks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::backend::Backend;
use crate::config::PoolConfig;

/// Backends eligible for new connections, plus what the balancers precompute over them.
#[derive(Debug)]
pub struct LiveSet {
    /// The pool's settings this snapshot was built under (published together, so a connection
    /// never mixes old settings with new members).
    pub config: Arc<PoolConfig>,
    /// Eligible backends: the up ones, or, when failing open, the down ones.
    pub members: Vec<Arc<Backend>>,
    /// True when `members` are down backends picked because none is up.
    pub fail_open: bool,
    /// Weight of each member in this snapshot (slow start lowers it for a while).
    pub(crate) weights: Vec<u32>,
    /// Running sum of the weights divided by their greatest common divisor: member `i` owns
    /// the positions `[cumulative[i-1], cumulative[i])` of one round-robin cycle.
    pub(crate) cumulative_weight: Vec<u64>,
    /// Round robin visits cycle position `k × stride mod total` at pick `k`: a stride coprime
    /// with the total makes every cycle a permutation (exact proportions), and one near
    /// total / φ spreads each member's picks evenly through the cycle (no long runs).
    stride: u64,
    /// Picks so far (round robin's `k`; the rotating start of least_connections).
    pub(crate) cursor: AtomicUsize,
}

/// 1/φ, the golden ratio's inverse: multiples of it mod 1 are the most evenly spread sequence.
const INVERSE_GOLDEN: f64 = 0.618_033_988_749_895;

impl LiveSet {
    /// A snapshot over `members` (each with its weight in this snapshot), under `config`.
    pub fn new(
        config: Arc<PoolConfig>,
        members: Vec<(Arc<Backend>, u32)>,
        fail_open: bool,
    ) -> Self {
        let (members, weights): (Vec<Arc<Backend>>, Vec<u32>) =
            members.into_iter().map(|(b, w)| (b, w.max(1))).unzip();
        let divisor = u64::from(weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1));
        let mut sum = 0u64;
        let cumulative_weight: Vec<u64> = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w) / divisor;
                sum
            })
            .collect();
        LiveSet {
            config,
            members,
            fail_open,
            weights,
            cumulative_weight,
            stride: stride_for(sum),
            cursor: AtomicUsize::new(0),
        }
    }

    /// A snapshot with no member.
    pub fn empty(config: Arc<PoolConfig>) -> Self {
        LiveSet::new(config, Vec::new(), false)
    }

    /// Starts this snapshot's cursor where `previous` left off, so frequent republishing (slow
    /// start steps, health changes) does not restart round robin at the same place each time.
    pub(crate) fn continue_from(&self, previous: &LiveSet) {
        let at = previous.cursor.load(Ordering::Relaxed);
        self.cursor.store(at, Ordering::Relaxed);
    }

    /// Whether no backend can take a connection.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's weight in this snapshot, in `members` order.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Length of one round-robin cycle (the sum of the reduced weights).
    pub(crate) fn cycle(&self) -> u64 {
        self.cumulative_weight.last().copied().unwrap_or(0)
    }

    /// The member round robin gives pick number `k`: O(log n), no table of the cycle.
    pub(crate) fn round_robin_at(&self, k: u64) -> Option<usize> {
        let total = self.cycle();
        if total == 0 {
            return None;
        }
        let position = (u128::from(k % total) * u128::from(self.stride) % u128::from(total)) as u64;
        let i = self.cumulative_weight.partition_point(|&c| c <= position);
        (i < self.members.len()).then_some(i)
    }
}

/// The round-robin stride for a cycle of `total`: the integer nearest total / φ that shares
/// no factor with it.
fn stride_for(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let mut stride = ((total as f64 * INVERSE_GOLDEN).round() as u64).clamp(1, total - 1);
    while gcd64(stride, total) != 1 {
        stride += 1;
    }
    stride
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn gcd64(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd64(b, a % b)
    }
}

#[cfg(test)]
impl LiveSet {
    /// A set of one backend per weight, at 127.0.0.2:443, 127.0.0.3:443, ... in order.
    pub(crate) fn for_tests(weights: &[u32]) -> LiveSet {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let host = u8::try_from(i + 2).unwrap_or(u8::MAX);
                let addr = std::net::SocketAddr::from(([127, 0, 0, host], 443));
                (Arc::new(Backend::new("p".into(), addr)), w)
            })
            .collect();
        LiveSet::new(
            Arc::new(crate::config::PoolConfig::for_tests()),
            members,
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32]) -> LiveSet {
        LiveSet::for_tests(weights)
    }

    fn order(s: &LiveSet, from: u64, n: u64) -> Vec<usize> {
        (from..from + n)
            .map(|k| s.round_robin_at(k).unwrap())
            .collect()
    }

    #[test]
    fn every_cycle_follows_the_weights_exactly_wherever_it_starts() {
        for weights in [
            &[1, 2, 1][..],
            &[5, 1, 1],
            &[3, 7, 2, 9, 1],
            &[10, 10, 10],
            &[1],
            &[256, 1],
            &[13, 29, 100, 7],
        ] {
            let s = set(weights);
            let cycle = s.cycle();
            for start in [0, 1, 5, cycle / 2 + 3, 1_000_003] {
                let mut counts = vec![0u64; weights.len()];
                for i in order(&s, start, cycle) {
                    counts[i] += 1;
                }
                let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)) as u64;
                let want: Vec<u64> = weights.iter().map(|&w| w as u64 / divisor).collect();
                assert_eq!(counts, want, "weights {weights:?} from {start}");
            }
        }
    }

    #[test]
    fn picks_interleave_instead_of_running() {
        // Longest run of one member is bounded by its share of the cycle, rounded up, plus one:
        // the stride spreads a member's positions instead of handing them out back to back.
        for weights in [&[5, 1, 1][..], &[1, 1, 1, 1], &[3, 7, 2, 9, 1], &[2, 2, 1]] {
            let s = set(weights);
            let total: u32 = weights.iter().sum();
            let picks = order(&s, 0, 3 * s.cycle());
            for (i, &w) in weights.iter().enumerate() {
                let longest = picks
                    .split(|&p| p != i)
                    .map(<[usize]>::len)
                    .max()
                    .unwrap_or(0) as u32;
                let bound = w.div_ceil(total - w).max(1) + 1;
                assert!(
                    longest <= bound,
                    "{weights:?}: member {i} ran {longest} > {bound}"
                );
            }
        }
        let s = set(&[1, 1]);
        assert_eq!(order(&s, 0, 4), vec![0, 1, 0, 1]);
    }

    #[test]
    fn a_ramping_weight_gets_its_share_without_a_table() {
        // Slow start: one member at 10 of 100 next to two at full weight; a cycle of 210.
        let s = set(&[10, 100, 100]);
        let picks = order(&s, 7, s.cycle());
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 1);
        assert!(set(&[]).round_robin_at(3).is_none());
    }
}
