//! The Responses API's id map: for each response id a relayed `POST /v1/responses` created,
//! which channel, which of its keys and which client token created it, so the id routes
//! (`GET` / `DELETE /v1/responses/{id}`, `POST …/cancel`, `GET …/input_items`) reach the
//! upstream account that holds the response, and only the token that created it may.
//!
//! Owns: [`ResponseIds`], one per process (shared by every worker and kept across reloads),
//! bounded by `[server] responses_ids` and expiring entries after `responses_ttl`. Entries hold
//! fingerprints, never the secrets: a channel is known by its name and `base_url`, a key and a
//! token by a hash of their value, so a reload that changes a channel's key or a token's value
//! makes its old responses unreachable rather than routed to another account.
//!
//! Concurrency: the map is split into shards, each a `Mutex` held only for a hash-map
//! operation (never across an await or IO), so workers rarely meet. Within a shard the oldest
//! entry is forgotten first when it is full; a map of fewer than [`SHARD_MIN`] ids per shard
//! uses fewer shards, so a small map forgets exactly the oldest. Memory is fixed by the
//! capacity: an id is kept as a 128-bit hash, not as text.
//!
//! Must not: grow past its capacity, guess a channel for an unknown id, or hold a lock across
//! an await. The map lives in memory: a restart forgets every id (the README says so).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ChannelConfig;

/// Shards at most; fewer for small maps (see [`SHARD_MIN`]).
const MAX_SHARDS: usize = 64;
/// A shard holds at least this many ids before the map is split further.
const SHARD_MIN: usize = 1024;

/// Who created a response: fingerprints of the channel, its key and the client token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub channel: u64,
    pub key: u64,
    pub token: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    origin: Origin,
    /// Milliseconds since the map was made.
    created: u64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u128, Entry>,
    /// Insertion order, oldest first: (id hash, created). An entry removed early (a deleted
    /// response) leaves its place here until it reaches the front.
    order: VecDeque<(u128, u64)>,
}

pub struct ResponseIds {
    shards: Box<[Mutex<Shard>]>,
    /// Ids each shard keeps at most (the shards' sum is the capacity).
    per_shard: Box<[usize]>,
    /// Two independent keyed hashes make an id's 128-bit hash; keyed per process so nobody
    /// can make two ids collide on purpose.
    hash_hi: std::hash::RandomState,
    hash_lo: std::hash::RandomState,
    started: Instant,
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Created by this token, through this channel and key (indexes into the router's
    /// channels and that channel's keys).
    Found { channel: usize, key: usize },
    /// Unknown, expired, forgotten, created by another token, or its channel or key is no
    /// longer configured: the caller answers 404 without a guess.
    NotFound,
}

impl ResponseIds {
    pub fn new(capacity: usize) -> ResponseIds {
        let capacity = capacity.max(1);
        let shards = (capacity / SHARD_MIN).clamp(1, MAX_SHARDS);
        let per_shard: Box<[usize]> = (0..shards)
            .map(|i| capacity / shards + usize::from(i < capacity % shards))
            .collect();
        ResponseIds {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard,
            hash_hi: std::hash::RandomState::new(),
            hash_lo: std::hash::RandomState::new(),
            started: Instant::now(),
        }
    }

    /// The capacity it was made with.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.per_shard.iter().sum()
    }

    fn id_hash(&self, id: &[u8]) -> u128 {
        let hi = self.hash_hi.hash_one(id) as u128;
        let lo = self.hash_lo.hash_one(id) as u128;
        (hi << 64) | lo
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    fn shard(&self, h: u128) -> (usize, std::sync::MutexGuard<'_, Shard>) {
        let i = (h as usize) % self.shards.len();
        let guard = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        (i, guard)
    }

    /// Remember that `origin` created `id` (now). The oldest ids of its shard are forgotten
    /// when the shard is full, and expired ones whenever they reach the front. An id already
    /// known keeps its age and takes the new origin.
    pub fn insert(&self, id: &[u8], origin: Origin, now: Instant, ttl: Duration) {
        let h = self.id_hash(id);
        let now = self.millis(now);
        let ttl = ttl.as_millis() as u64;
        let (i, mut shard) = self.shard(h);
        let cap = self.per_shard[i];
        if let Some(e) = shard.entries.get_mut(&h) {
            e.origin = origin;
            return;
        }
        while let Some(&(old, created)) = shard.order.front() {
            let expired = now.saturating_sub(created) >= ttl;
            if shard.order.len() < cap && !expired {
                break;
            }
            shard.order.pop_front();
            if shard
                .entries
                .get(&old)
                .is_some_and(|e| e.created == created)
            {
                shard.entries.remove(&old);
            }
        }
        shard.entries.insert(
            h,
            Entry {
                origin,
                created: now,
            },
        );
        shard.order.push_back((h, now));
    }

    /// The origin of `id` when it is known and younger than `ttl`.
    pub fn get(&self, id: &[u8], now: Instant, ttl: Duration) -> Option<Origin> {
        let h = self.id_hash(id);
        let now = self.millis(now);
        let (_, mut shard) = self.shard(h);
        let e = *shard.entries.get(&h)?;
        if now.saturating_sub(e.created) >= ttl.as_millis() as u64 {
            shard.entries.remove(&h);
            return None;
        }
        Some(e.origin)
    }

    /// Forget `id` (its response was deleted upstream).
    pub fn remove(&self, id: &[u8]) {
        let h = self.id_hash(id);
        let (_, mut shard) = self.shard(h);
        shard.entries.remove(&h);
    }

    /// Ids known now (expired ones not yet dropped included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    /// Where `id` may go for the token whose key is `token_key`, among `channels`.
    pub fn find<'c>(
        &self,
        id: &[u8],
        token_key: &str,
        channels: impl IntoIterator<Item = &'c ChannelConfig>,
        now: Instant,
        ttl: Duration,
    ) -> Lookup {
        let Some(origin) = self.get(id, now, ttl) else {
            return Lookup::NotFound;
        };
        if origin.token != fingerprint(token_key.as_bytes()) {
            return Lookup::NotFound;
        }
        for (channel, c) in channels.into_iter().enumerate() {
            if channel_fingerprint(c) != origin.channel {
                continue;
            }
            return match c
                .keys
                .iter()
                .position(|k| fingerprint(k.as_bytes()) == origin.key)
            {
                Some(key) => Lookup::Found { channel, key },
                None => Lookup::NotFound,
            };
        }
        Lookup::NotFound
    }
}

/// A stable 64-bit fingerprint (SipHash with fixed keys: the same in every worker and across
/// reloads). Used for equality only, never shown.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A channel is the same channel when its name and `base_url` are.
pub fn channel_fingerprint(c: &ChannelConfig) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    c.name.hash(&mut h);
    c.base_url.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(n: u64) -> Origin {
        Origin {
            channel: n,
            key: n + 1,
            token: n + 2,
        }
    }

    #[test]
    fn remembers_forgets_the_oldest_and_expires() {
        let ids = ResponseIds::new(3);
        let ttl = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 0..3u64 {
            ids.insert(format!("resp_{i}").as_bytes(), origin(i), t0, ttl);
        }
        assert_eq!(ids.get(b"resp_0", t0, ttl), Some(origin(0)));
        ids.insert(b"resp_3", origin(3), t0, ttl);
        assert_eq!(ids.get(b"resp_0", t0, ttl), None, "the oldest went");
        assert_eq!(ids.get(b"resp_1", t0, ttl), Some(origin(1)));
        assert_eq!(ids.get(b"resp_3", t0, ttl), Some(origin(3)));
        assert_eq!(ids.len(), 3);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(ids.get(b"resp_3", later, ttl), None, "expired");
        ids.remove(b"resp_1");
        assert_eq!(ids.get(b"resp_1", t0, ttl), None);
        // Many more than the capacity: never more than it kept.
        for i in 0..10_000u64 {
            ids.insert(format!("x{i}").as_bytes(), origin(i), t0, ttl);
        }
        assert!(ids.len() <= 3, "{}", ids.len());
        assert_eq!(ids.get(b"x9999", t0, ttl), Some(origin(9999)));
    }

    #[test]
    fn large_maps_are_sharded_to_their_exact_capacity() {
        for cap in [1, 1023, 1024, 2048, 100_000, 100_001] {
            let ids = ResponseIds::new(cap);
            assert_eq!(ids.capacity(), cap);
            assert!(ids.shards.len() <= MAX_SHARDS);
        }
        let ids = ResponseIds::new(4096);
        let ttl = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 0..50_000u64 {
            ids.insert(format!("resp_{i}").as_bytes(), origin(i), t0, ttl);
        }
        assert!(ids.len() <= 4096, "{}", ids.len());
        for s in ids.shards.iter() {
            let s = s.lock().unwrap();
            assert!(s.order.len() <= 4096 / ids.shards.len() + 1);
        }
    }
}
