//! The per-client table behind `per_client_max_connections` and `per_client_rate`: one entry
//! per client (an IPv4 address or an IPv6 /64) with its open connections and its token bucket.
//! Memory is bounded by `runtime.client_table_size` entries: when full, the least recently seen
//! client without open connections is forgotten (HAProxy's stick tables do the same; an entry
//! in use is never evicted, so a limit cannot be escaped by flooding the table). The table is
//! split in shards, each behind its own short-held lock, so connections of different clients
//! on different cores rarely meet.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;

use super::{ClientKey, Rate};

/// Shards at most: enough that two cores rarely want the same lock.
const SHARDS: usize = 16;

/// How many in-use entries an insert may skip looking for one to evict, before it gives up and
/// admits the client untracked (the table is then full of clients with open connections).
const EVICTION_TRIES: usize = 8;

/// A listener's per-client limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per client; 0 = no limit.
    pub max_connections: u32,
    /// New connections per client; `None` = no limit.
    pub rate: Option<Rate>,
}

impl Limits {
    /// Whether any limit applies (otherwise the table is not consulted at all).
    pub fn is_set(&self) -> bool {
        self.max_connections > 0 || self.rate.is_some()
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It already has `per_client_max_connections` open.
    Limit,
    /// Its bucket is empty (`per_client_rate`).
    Rate,
}

#[derive(Debug)]
struct Entry {
    active: u32,
    tokens: f64,
    refilled: Instant,
}

/// The bounded per-client table of one listener.
#[derive(Debug)]
pub struct ClientTable {
    shards: Box<[Mutex<LruCache<ClientKey, Entry>>]>,
    per_shard: usize,
    untracked: AtomicU64,
    /// Seeded per table, so no client can choose addresses that all land in one shard.
    hasher: RandomState,
}

/// One admitted connection's place in its client's count; released on drop.
#[derive(Debug)]
pub struct ClientGuard {
    table: Option<Arc<ClientTable>>,
    key: ClientKey,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let Some(table) = self.table.take() else {
            return;
        };
        let mut shard = table.lock_shard(&self.key);
        // peek: a closing connection does not make its client "recently seen".
        if let Some(e) = shard.peek_mut(&self.key) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

impl ClientTable {
    /// A table of at most `capacity` clients (at least 1).
    pub fn new(capacity: usize) -> Arc<ClientTable> {
        let capacity = capacity.max(1);
        let shards = SHARDS.min(capacity);
        Arc::new(ClientTable {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::unbounded()))
                .collect(),
            per_shard: capacity / shards,
            untracked: AtomicU64::new(0),
            hasher: RandomState::new(),
        })
    }

    fn lock_shard(&self, key: &ClientKey) -> std::sync::MutexGuard<'_, LruCache<ClientKey, Entry>> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A poisoned shard only means a panic elsewhere while it was held; its data is counts.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clients remembered now (at most the capacity).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or_else(|p| p.into_inner().len(), |s| s.len()))
            .sum()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections admitted without an entry because the table was full of clients with open
    /// connections.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Admits a new connection from `ip` under `limits` at `now`, or says why not. A refused
    /// connection takes no token and no slot.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<ClientGuard, Refusal> {
        let key = ClientKey::of(ip);
        let mut shard = self.lock_shard(&key);
        if shard.get(&key).is_none() {
            if !make_room(&mut shard, self.per_shard) {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return Ok(ClientGuard { table: None, key });
            }
            let tokens = limits.rate.map_or(0.0, |r| r.burst);
            shard.put(
                key,
                Entry {
                    active: 0,
                    tokens,
                    refilled: now,
                },
            );
        }
        let Some(entry) = shard.get_mut(&key) else {
            return Ok(ClientGuard { table: None, key });
        };
        if limits.max_connections > 0 && entry.active >= limits.max_connections {
            return Err(Refusal::Limit);
        }
        if let Some(rate) = limits.rate {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * rate.per_second).min(rate.burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            entry.tokens -= 1.0;
        }
        entry.active += 1;
        Ok(ClientGuard {
            table: Some(self.clone()),
            key,
        })
    }
}

/// Evicts the least recently seen client without open connections until there is room for one
/// more; false if only clients with open connections were found.
fn make_room(shard: &mut LruCache<ClientKey, Entry>, limit: usize) -> bool {
    let mut tries = 0;
    while shard.len() >= limit {
        if tries == EVICTION_TRIES {
            return false;
        }
        tries += 1;
        let Some((key, entry)) = shard.pop_lru() else {
            return true;
        };
        if entry.active > 0 {
            // In use: keep it (as most recent, so the next try looks at another one).
            shard.put(key, entry);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_connection_limit_holds_exactly_per_client() {
        let table = ClientTable::new(64);
        let limits = Limits {
            max_connections: 2,
            rate: None,
        };
        let now = Instant::now();
        let a1 = table.admit(ip("127.0.0.7"), &limits, now).expect("first");
        let _a2 = table.admit(ip("127.0.0.7"), &limits, now).expect("second");
        assert_eq!(
            table.admit(ip("127.0.0.7"), &limits, now).err(),
            Some(Refusal::Limit)
        );
        // Another client is not affected.
        let _b = table
            .admit(ip("127.0.0.8"), &limits, now)
            .expect("other client");
        drop(a1);
        let _a3 = table
            .admit(ip("127.0.0.7"), &limits, now)
            .expect("a slot came back");
        assert_eq!(
            table.admit(ip("127.0.0.7"), &limits, now).err(),
            Some(Refusal::Limit)
        );
    }

    #[test]
    fn the_bucket_starts_full_and_refills_at_the_rate() {
        let table = ClientTable::new(64);
        let limits = Limits {
            max_connections: 0,
            rate: Some(Rate::parse("5/s").expect("rate")),
        };
        let t0 = Instant::now();
        let mut admitted = 0;
        for _ in 0..20 {
            if table.admit(ip("::1"), &limits, t0).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5, "a full bucket of 5");
        // 200 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(200);
        assert!(table.admit(ip("::1"), &limits, t1).is_ok());
        assert_eq!(
            table.admit(ip("::1"), &limits, t1).err(),
            Some(Refusal::Rate)
        );
        // Another /64 has its own bucket; the same /64 shares it.
        assert!(table.admit(ip("2001:db8:0:1::1"), &limits, t1).is_ok());
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        let burst = (0..20)
            .filter(|_| table.admit(ip("::1"), &limits, t2).is_ok())
            .count();
        assert_eq!(burst, 5);
    }

    #[test]
    fn the_table_is_bounded_and_never_forgets_a_client_with_open_connections() {
        let table = ClientTable::new(32);
        let limits = Limits {
            max_connections: 1,
            rate: None,
        };
        let now = Instant::now();
        let held = table.admit(ip("10.0.0.1"), &limits, now).expect("held");
        for i in 0..5000u32 {
            let a = std::net::Ipv4Addr::from(0x0b00_0000 + i);
            drop(table.admit(IpAddr::V4(a), &limits, now).expect("churn"));
            assert!(table.len() <= 32, "table grew to {}", table.len());
        }
        // The client with an open connection is still counted: its limit holds.
        assert_eq!(
            table.admit(ip("10.0.0.1"), &limits, now).err(),
            Some(Refusal::Limit)
        );
        drop(held);
        assert!(table.admit(ip("10.0.0.1"), &limits, now).is_ok());
    }

    #[test]
    fn a_table_full_of_busy_clients_admits_untracked_rather_than_refusing() {
        let table = ClientTable::new(2);
        let limits = Limits {
            max_connections: 1,
            rate: None,
        };
        let now = Instant::now();
        let held: Vec<ClientGuard> = (1..=10u8)
            .map(|i| {
                let a = IpAddr::from([10, 0, 0, i]);
                table
                    .admit(a, &limits, now)
                    .expect("admitted, tracked or not")
            })
            .collect();
        assert!(table.len() <= 2);
        assert_eq!(table.untracked(), 10 - table.len() as u64);
        drop(held);
    }
}
