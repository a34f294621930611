//! The immutable snapshot connections pick from. The pool supervisor builds a new one on every
//! state change and publishes it with a single `ArcSwap::store`; a connection does one `load()`.

use std::sync::atomic::AtomicUsize;
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
    /// Smooth weighted round-robin order: indexes into `members`, one full weight cycle.
    pub(crate) rr_order: Vec<u32>,
    /// Weight of each member in this snapshot.
    pub(crate) weights: Vec<u32>,
    /// Cursor into `rr_order` (and tie-breaker for least_connections).
    pub(crate) cursor: AtomicUsize,
    /// Running sum of weights, for weighted random picks.
    pub(crate) cumulative_weight: Vec<u64>,
}

impl LiveSet {
    /// A snapshot over `members` with their configured weights, under `config`.
    pub fn new(config: Arc<PoolConfig>, members: Vec<Arc<Backend>>, fail_open: bool) -> Self {
        let weights: Vec<u32> = members.iter().map(|b| b.weight().max(1)).collect();
        LiveSet::with_weights(config, members, weights, fail_open)
    }

    /// A snapshot over `members` with the given weights (one per member; e.g. during slow start).
    pub fn with_weights(
        config: Arc<PoolConfig>,
        members: Vec<Arc<Backend>>,
        weights: Vec<u32>,
        fail_open: bool,
    ) -> Self {
        let weights: Vec<u32> = if weights.len() == members.len() {
            weights.into_iter().map(|w| w.max(1)).collect()
        } else {
            members.iter().map(|b| b.weight().max(1)).collect()
        };
        let rr_order = smooth_weighted_order(&weights);
        let mut sum = 0u64;
        let cumulative_weight: Vec<u64> = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        LiveSet {
            config,
            members,
            fail_open,
            weights,
            rr_order,
            cursor: AtomicUsize::new(0),
            cumulative_weight,
        }
    }

    /// A snapshot with no member.
    pub fn empty(config: Arc<PoolConfig>) -> Self {
        LiveSet::new(config, Vec::new(), false)
    }

    /// Starts this snapshot's cursor where `previous` left off, so frequent republishing (slow
    /// start steps, health changes) does not restart round robin at the first member each time.
    pub(crate) fn continue_from(&self, previous: &LiveSet) {
        let at = previous.cursor.load(std::sync::atomic::Ordering::Relaxed);
        self.cursor.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether no backend can take a connection.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// One cycle of nginx-style smooth weighted round robin, computed once per snapshot so that
/// picking is a single atomic increment instead of a locked update of per-peer weights.
pub(crate) fn smooth_weighted_order(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let divisor = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_order_interleaves() {
        // nginx's classic example: weights 5,1,1 give a,a,b,a,c,a,a.
        assert_eq!(smooth_weighted_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_order(&[2, 2, 2]), vec![0, 1, 2]);
        assert_eq!(smooth_weighted_order(&[1]), vec![0]);
        assert!(smooth_weighted_order(&[]).is_empty());
    }
}
