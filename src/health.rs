//! Channel and key health, shared by all workers: which channels may be tried now, and which of
//! a channel's keys may be sent.
//!
//! Owns: one [`ChannelHealth`] block per configured channel (with one [`KeyHealth`] per key),
//! shared by reference count, and the rules that move them. A reload builds the next
//! generation's [`Health`] with [`Health::renewed`]: a channel whose name, upstream and keys are
//! unchanged keeps its block (its cooldown, probe and keys out of rotation go on); a changed or
//! new channel starts healthy; a removed channel's block goes with the last request using it.
//! The rules:
//! - **Key out of rotation.** An upstream 401/403, or an error body naming `invalid_api_key`,
//!   `insufficient_quota` or `account_deactivated`, takes that key out ([`Health::disable_key`]).
//!   After `key_recheck` one request may send it again (claimed by a compare-and-swap in
//!   [`Health::pick_key`]); an answer that is not a refusal puts it back. With `key_recheck =
//!   "0s"` it stays out until the process restarts. A channel with no key left is `disabled`.
//! - **Channel cooldown.** `failures` consecutive failures (connect or TLS failure, a timeout
//!   before the head, a malformed head, a status in `retry.on_status`) put the channel in
//!   cooldown for max(backoff, the upstream's `Retry-After`), capped at `max_cooldown`; the
//!   backoff starts at `cooldown`. When the cooldown is over, exactly one real request is let
//!   through as a half-open probe ([`Health::enter`]: a compare-and-swap from cooling to
//!   probing, so two workers cannot both probe). Its outcome re-enables the channel (backoff
//!   reset) or cools it again with the backoff doubled. A probe that ends without a verdict
//!   (the client left) hands the probe to the next request ([`ProbeTicket`]'s drop).
//!
//! The request path pays a few atomic loads: routing reads each candidate's gate word (and the
//! clock only when one is cooling), key choice reads the count of active keys, and a success
//! writes nothing unless a failure count or a rechecked key has to be cleared.
//!
//! Memory: a fixed block per channel and per key, whatever happens. State changes are rare
//! (failures, refusals) and are the only writes that other workers' caches see.
//!
//! Must not: lock, allocate on the request path, or show a key: the monitor sees a key's
//! position and its last 4 characters only.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{format_rfc3339, ChannelConfig, HealthConfig, Layer};

const NS_PER_SEC: u64 = 1_000_000_000;
/// How much of a key `/api/monitor/health` and `/metrics` show.
const KEY_TAIL_SHOWN: usize = 4;

/// The gate word of a channel: its mode in the top two bits, and in the others the moment (ns
/// since the epoch) its cooldown ends. One word, so a transition is one compare-and-swap.
const MODE_SHIFT: u32 = 62;
const UNTIL_MASK: u64 = (1 << MODE_SHIFT) - 1;
const HEALTHY: u64 = 0;
const COOLING: u64 = 1;
const PROBING: u64 = 2;

fn gate(mode: u64, until: u64) -> u64 {
    (mode << MODE_SHIFT) | (until & UNTIL_MASK)
}

fn mode_of(g: u64) -> u64 {
    g >> MODE_SHIFT
}

fn until_of(g: u64) -> u64 {
    g & UNTIL_MASK
}

/// A key's `out_until` when it is in rotation.
const KEY_ACTIVE: u64 = 0;
/// A key's `out_until` when it stays out until restart.
const KEY_NEVER: u64 = u64::MAX;

/// Why a channel or key changed state, for the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A successful answer (a probe that passed, a rechecked key that worked).
    Recovered,
    ConnectFailed,
    Timeout(Layer),
    BadResponse,
    /// An upstream status: in `on_status` for a channel, 401/403 for a key.
    Status(u16),
    /// An upstream error code naming the key's account, with the status it came with.
    KeyCode(KeyCode, u16),
}

/// The upstream error codes that take a key out of rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCode {
    InvalidApiKey,
    InsufficientQuota,
    AccountDeactivated,
}

impl KeyCode {
    pub const ALL: [KeyCode; 3] = [
        KeyCode::InvalidApiKey,
        KeyCode::InsufficientQuota,
        KeyCode::AccountDeactivated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyCode::InvalidApiKey => "invalid_api_key",
            KeyCode::InsufficientQuota => "insufficient_quota",
            KeyCode::AccountDeactivated => "account_deactivated",
        }
    }

    /// The first of these codes that `body` (the start of an upstream error body) names as a
    /// JSON string. A plain substring search: it needs no JSON parse, and a body quoting one
    /// of these names in its message is refusing the key anyway.
    pub fn find(body: &[u8]) -> Option<KeyCode> {
        KeyCode::ALL.into_iter().find(|c| {
            let name = c.name().as_bytes();
            body.windows(name.len() + 2)
                .any(|w| w[0] == b'"' && w[w.len() - 1] == b'"' && &w[1..w.len() - 1] == name)
        })
    }
}

impl Reason {
    /// Packed into a word for an atomic store: kind, status, detail.
    fn pack(self) -> u64 {
        let (kind, status, detail): (u64, u16, u64) = match self {
            Reason::Recovered => (1, 0, 0),
            Reason::ConnectFailed => (2, 0, 0),
            Reason::Timeout(l) => (3, 0, l as u64),
            Reason::BadResponse => (4, 0, 0),
            Reason::Status(s) => (5, s, 0),
            Reason::KeyCode(c, s) => (6, s, c as u64),
        };
        kind << 40 | (status as u64) << 8 | detail
    }

    fn unpack(v: u64) -> Option<Reason> {
        let status = (v >> 8) as u16;
        let detail = (v & 0xff) as usize;
        Some(match v >> 40 {
            1 => Reason::Recovered,
            2 => Reason::ConnectFailed,
            3 => Reason::Timeout(*Layer::ALL.get(detail)?),
            4 => Reason::BadResponse,
            5 => Reason::Status(status),
            6 => Reason::KeyCode(*KeyCode::ALL.get(detail)?, status),
            _ => return None,
        })
    }

    /// The monitor's words for it: an error code, or `status NNN`.
    pub fn describe(self) -> String {
        match self {
            Reason::Recovered => "recovered".into(),
            Reason::ConnectFailed => "upstream_connect_failed".into(),
            Reason::Timeout(l) => l.code().into(),
            Reason::BadResponse => "bad_upstream_response".into(),
            Reason::Status(s) => format!("status {s}"),
            Reason::KeyCode(c, s) => format!("{} ({s})", c.name()),
        }
    }
}

/// The process-wide health state; created once at start and leaked.
pub struct Health {
    enabled: bool,
    failures: u32,
    cooldown_ns: u64,
    max_cooldown_ns: u64,
    key_recheck_ns: u64,
    /// Zero on the health clock, and the wall clock at that moment (Unix ms), so a state's
    /// "since" is shown in RFC 3339 without reading the wall clock on the request path.
    epoch: Instant,
    epoch_unix_ms: i64,
    channels: Box<[Arc<ChannelHealth>]>,
    /// Channel names, for the log lines of state changes.
    names: Box<[String]>,
}

/// One channel's health, on a cache line of its own.
#[repr(align(64))]
pub struct ChannelHealth {
    /// Mode and cooldown end, see [`gate`].
    gate: AtomicU64,
    /// Consecutive failures since the last success or cooldown.
    failures: AtomicU32,
    /// Keys in rotation now.
    active_keys: AtomicU32,
    /// The cooldown applied last (ns): `cooldown` after a success, doubled by a failed probe.
    backoff_ns: AtomicU64,
    /// Why it last changed state ([`Reason::pack`]; 0: never changed).
    reason: AtomicU64,
    /// When it last changed state, ns since the epoch.
    since_ns: AtomicU64,
    keys: Box<[KeyHealth]>,
    /// The last characters of each key, for the monitor.
    key_tails: Box<[String]>,
}

/// One key's health.
pub struct KeyHealth {
    /// [`KEY_ACTIVE`], [`KEY_NEVER`], or the moment (ns since the epoch, at least 1) from which
    /// one request may send it again.
    out_until: AtomicU64,
    reason: AtomicU64,
    since_ns: AtomicU64,
}

/// What [`Health::enter`] lets a request do with a channel.
pub enum Pass {
    /// Healthy: go.
    Open,
    /// The channel's cooldown is over and this request is its one probe.
    Probe(ProbeTicket),
    /// Cooling, being probed by another request, or out of keys: try the next candidate.
    Skip,
}

/// The right to be a channel's half-open probe. A verdict ([`Health::success`] or
/// [`Health::failure`]) consumes it; dropped without one (the client left, the request moved
/// on for a reason that says nothing about the channel), it hands the probe on to the next
/// request at once.
pub struct ProbeTicket {
    channel: Arc<ChannelHealth>,
    settled: bool,
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.settled {
            let g = self.channel.gate.load(Acquire);
            if mode_of(g) == PROBING {
                let _ = self.channel.gate.compare_exchange(
                    g,
                    gate(COOLING, until_of(g)),
                    AcqRel,
                    Acquire,
                );
            }
        }
    }
}

/// The health clock read at most once per routing decision, and only when needed.
pub struct LazyNow<'a> {
    health: &'a Health,
    ns: std::cell::Cell<Option<u64>>,
}

impl LazyNow<'_> {
    pub fn get(&self) -> u64 {
        match self.ns.get() {
            Some(n) => n,
            None => {
                let n = self.health.now_ns();
                self.ns.set(Some(n));
                n
            }
        }
    }
}

impl Health {
    /// The health state for `channels` (in config order) under `cfg`.
    pub fn new(cfg: &HealthConfig, channels: &[ChannelConfig]) -> Health {
        let ns = |d: std::time::Duration| d.as_nanos().min(UNTIL_MASK as u128 / 2) as u64;
        Health {
            enabled: cfg.enabled,
            failures: cfg.failures,
            cooldown_ns: ns(cfg.cooldown),
            max_cooldown_ns: ns(cfg.max_cooldown),
            key_recheck_ns: ns(cfg.key_recheck),
            epoch: Instant::now(),
            epoch_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            channels: channels
                .iter()
                .map(|c| {
                    Arc::new(ChannelHealth {
                        gate: AtomicU64::new(gate(HEALTHY, 0)),
                        failures: AtomicU32::new(0),
                        active_keys: AtomicU32::new(c.keys.len() as u32),
                        backoff_ns: AtomicU64::new(ns(cfg.cooldown)),
                        reason: AtomicU64::new(0),
                        since_ns: AtomicU64::new(0),
                        keys: c
                            .keys
                            .iter()
                            .map(|_| KeyHealth {
                                out_until: AtomicU64::new(KEY_ACTIVE),
                                reason: AtomicU64::new(0),
                                since_ns: AtomicU64::new(0),
                            })
                            .collect(),
                        key_tails: c.keys.iter().map(|k| key_tail(k)).collect(),
                    })
                })
                .collect(),
            names: channels.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// The health of a reloaded config: the new `[health]` settings, the same clock, and the
    /// block of every channel whose name, `base_url` and keys are unchanged (its state goes on);
    /// other channels start healthy.
    pub fn renewed(
        &self,
        cfg: &HealthConfig,
        old: &[ChannelConfig],
        channels: &[ChannelConfig],
    ) -> Health {
        let mut next = Health::new(cfg, channels);
        next.epoch = self.epoch;
        next.epoch_unix_ms = self.epoch_unix_ms;
        for (i, c) in channels.iter().enumerate() {
            let same = old
                .iter()
                .position(|o| o.name == c.name && o.base_url == c.base_url && o.keys == c.keys);
            if let Some(block) = same.and_then(|j| self.channels.get(j)) {
                next.channels[i] = block.clone();
            }
        }
        next
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Nanoseconds since the epoch, on the monotonic clock (at least 1, so it never reads as
    /// [`KEY_ACTIVE`]).
    fn now_ns(&self) -> u64 {
        (Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .min(UNTIL_MASK as u128) as u64)
            .max(1)
    }

    pub fn lazy_now(&self) -> LazyNow<'_> {
        LazyNow {
            health: self,
            ns: std::cell::Cell::new(None),
        }
    }

    fn channel(&self, channel: usize) -> Option<&ChannelHealth> {
        self.channels.get(channel).map(|c| &**c)
    }

    /// Routing: may `channel` be lined up now? Healthy, or cooled down long enough to be
    /// probed, and with a key to send. Reads the clock only for a cooling channel.
    #[inline]
    pub fn routable(&self, channel: usize, now: &LazyNow<'_>) -> bool {
        let Some(c) = self.channel(channel).filter(|_| self.enabled) else {
            return true;
        };
        let g = c.gate.load(Acquire);
        let open = match mode_of(g) {
            HEALTHY => true,
            COOLING => until_of(g) <= now.get(),
            _ => false,
        };
        open && (c.active_keys.load(Acquire) > 0 || c.key_due(now.get()))
    }

    /// How long until one of `channels` may be tried again, in whole seconds (at least 1);
    /// `None` when each is out until restart (every key refused, `key_recheck = "0s"`).
    pub fn wait_secs(&self, channels: impl Iterator<Item = usize>) -> Option<u64> {
        let now = self.now_ns();
        let mut best: Option<u64> = None;
        for c in channels.filter_map(|i| self.channel(i)) {
            let g = c.gate.load(Acquire);
            let gate_wait = match mode_of(g) {
                HEALTHY => 0,
                COOLING => until_of(g).saturating_sub(now),
                // A probe is under way: its verdict comes within the request's deadline.
                _ => NS_PER_SEC,
            };
            let key_wait = if c.active_keys.load(Acquire) > 0 {
                Some(0)
            } else {
                c.keys
                    .iter()
                    .map(|k| k.out_until.load(Acquire))
                    .filter(|&u| u != KEY_NEVER)
                    .map(|u| u.saturating_sub(now))
                    .min()
            };
            if let Some(k) = key_wait {
                let wait = gate_wait.max(k);
                best = Some(best.map_or(wait, |b| b.min(wait)));
            }
        }
        best.map(|ns| ns.div_ceil(NS_PER_SEC).max(1))
    }

    /// Forward: may this request try `channel` now, and is it the channel's probe?
    pub fn enter(&self, channel: usize) -> Pass {
        let Some(c) = self.channels.get(channel).filter(|_| self.enabled) else {
            return Pass::Open;
        };
        let g = c.gate.load(Acquire);
        let pass = match mode_of(g) {
            HEALTHY => Pass::Open,
            COOLING if until_of(g) <= self.now_ns() => {
                match c
                    .gate
                    .compare_exchange(g, gate(PROBING, until_of(g)), AcqRel, Acquire)
                {
                    Ok(_) => Pass::Probe(ProbeTicket {
                        channel: c.clone(),
                        settled: false,
                    }),
                    Err(_) => Pass::Skip,
                }
            }
            _ => Pass::Skip,
        };
        if !matches!(pass, Pass::Skip)
            && c.active_keys.load(Acquire) == 0
            && !c.key_due(self.now_ns())
        {
            return Pass::Skip;
        }
        pass
    }

    /// The attempt on `channel` got an answer that says it works (not a failure or a key
    /// refusal). Ends a probe with the channel re-enabled and its backoff reset.
    #[inline]
    pub fn success(&self, channel: usize, pass: &mut Pass) {
        let Some(c) = self.channel(channel) else {
            return;
        };
        if let Pass::Probe(ticket) = pass {
            ticket.settled = true;
            c.backoff_ns.store(self.cooldown_ns, Relaxed);
            c.failures.store(0, Relaxed);
            c.note(Reason::Recovered, self.now_ns());
            c.gate.store(gate(HEALTHY, 0), Release);
            crate::log::info(&format!(
                "channel '{}': probe succeeded, back in rotation",
                self.channel_label(channel)
            ));
            return;
        }
        // Only a write when there is something to clear: a healthy channel's line stays shared.
        if c.failures.load(Relaxed) != 0 {
            c.failures.store(0, Relaxed);
        }
    }

    /// The attempt on `channel` failed on the channel's side. Counts towards a cooldown, or
    /// ends a probe by cooling the channel again for twice as long. `retry_after_secs` is the
    /// upstream's `Retry-After`: the cooldown is at least that, never over `max_cooldown`.
    pub fn failure(
        &self,
        channel: usize,
        reason: Reason,
        retry_after_secs: Option<u64>,
        pass: &mut Pass,
    ) {
        let Some(c) = self.channel(channel).filter(|_| self.enabled) else {
            return;
        };
        let now = self.now_ns();
        let honour = |backoff: u64| {
            let asked = retry_after_secs.map_or(0, |s| s.saturating_mul(NS_PER_SEC));
            backoff.max(asked).min(self.max_cooldown_ns)
        };
        if let Pass::Probe(ticket) = pass {
            ticket.settled = true;
            let backoff = c
                .backoff_ns
                .load(Relaxed)
                .saturating_mul(2)
                .min(self.max_cooldown_ns);
            c.backoff_ns.store(backoff, Relaxed);
            let cooldown = honour(backoff);
            c.note(reason, now);
            c.gate
                .store(gate(COOLING, now.saturating_add(cooldown)), Release);
            crate::log::warn(&format!(
                "channel '{}': probe failed ({}), cooling down for {} ms",
                self.channel_label(channel),
                reason.describe(),
                cooldown / 1_000_000
            ));
            return;
        }
        if self.failures == 0 {
            return;
        }
        let n = c.failures.fetch_add(1, AcqRel).saturating_add(1);
        if n < self.failures {
            return;
        }
        let g = c.gate.load(Acquire);
        if mode_of(g) != HEALTHY {
            return;
        }
        let cooldown = honour(c.backoff_ns.load(Relaxed));
        let cooled = gate(COOLING, now.saturating_add(cooldown));
        if c.gate.compare_exchange(g, cooled, AcqRel, Acquire).is_ok() {
            c.failures.store(0, Relaxed);
            c.note(reason, now);
            crate::log::warn(&format!(
                "channel '{}': {n} consecutive failures (last: {}), cooling down for {} ms",
                self.channel_label(channel),
                reason.describe(),
                cooldown / 1_000_000
            ));
        }
    }

    /// Takes `key` of `channel` out of rotation (the upstream refused it). Returns whether
    /// the channel still has a key to send.
    pub fn disable_key(&self, channel: usize, key: usize, reason: Reason) -> bool {
        let Some(c) = self.channel(channel).filter(|_| self.enabled) else {
            return false;
        };
        let Some(k) = c.keys.get(key) else {
            return c.active_keys.load(Acquire) > 0;
        };
        let now = self.now_ns();
        let until = if self.key_recheck_ns == 0 {
            KEY_NEVER
        } else {
            now.saturating_add(self.key_recheck_ns)
        };
        let before = k.out_until.swap(until, AcqRel);
        k.reason.store(reason.pack(), Relaxed);
        if before == KEY_ACTIVE {
            k.since_ns.store(now, Release);
            let left = c.active_keys.fetch_sub(1, AcqRel).saturating_sub(1);
            if left == 0 {
                c.note(reason, now);
            }
            crate::log::warn(&format!(
                "channel '{}': key #{} (...{}) taken out of rotation: {}; {left} key(s) left",
                self.channel_label(channel),
                key + 1,
                c.key_tails[key],
                reason.describe()
            ));
        }
        c.active_keys.load(Acquire) > 0
    }

    /// The answer with `key` of `channel` was not a refusal: a rechecked key goes back into
    /// rotation. One load when the key was in rotation anyway.
    #[inline]
    pub fn key_ok(&self, channel: usize, key: usize) {
        let Some(k) = self.channel(channel).and_then(|c| c.keys.get(key)) else {
            return;
        };
        let out = k.out_until.load(Relaxed);
        if out == KEY_ACTIVE {
            return;
        }
        if k.out_until
            .compare_exchange(out, KEY_ACTIVE, AcqRel, Acquire)
            .is_ok()
        {
            let c = &self.channels[channel];
            c.active_keys.fetch_add(1, AcqRel);
            let now = self.now_ns();
            k.reason.store(Reason::Recovered.pack(), Relaxed);
            k.since_ns.store(now, Release);
            crate::log::info(&format!(
                "channel '{}': key #{} (...{}) works again, back in rotation",
                self.channel_label(channel),
                key + 1,
                c.key_tails[key]
            ));
        }
    }

    /// Which key of `channel` (of `keys`) the next request sends, starting the search at
    /// `cursor`: the first one in rotation; else one whose recheck is due (claimed, so only
    /// one request rechecks it); else `cursor`'s own (the channel has no key to give: the
    /// attempt will be refused and counted as such).
    #[inline]
    pub fn pick_key(&self, channel: usize, keys: usize, cursor: usize) -> usize {
        let keys = keys.max(1);
        let first = cursor % keys;
        let Some(c) = self.channel(channel).filter(|_| self.enabled) else {
            return first;
        };
        if c.active_keys.load(Acquire) as usize >= keys {
            return first;
        }
        let order = (0..keys).map(|k| (first + k) % keys);
        if let Some(k) = order.clone().find(|&k| {
            c.keys
                .get(k)
                .is_some_and(|h| h.out_until.load(Acquire) == KEY_ACTIVE)
        }) {
            return k;
        }
        let now = self.now_ns();
        for k in order {
            let Some(h) = c.keys.get(k) else { continue };
            let out = h.out_until.load(Acquire);
            if out != KEY_ACTIVE && out != KEY_NEVER && out <= now {
                let next = now.saturating_add(self.key_recheck_ns);
                if h.out_until
                    .compare_exchange(out, next, AcqRel, Acquire)
                    .is_ok()
                {
                    return k;
                }
            }
        }
        first
    }

    /// Whether `channel` has a key to send now (in rotation, or due for its recheck).
    #[cfg(test)]
    pub fn has_key(&self, channel: usize) -> bool {
        match self.channel(channel).filter(|_| self.enabled) {
            Some(c) => c.active_keys.load(Acquire) > 0 || c.key_due(self.now_ns()),
            None => true,
        }
    }

    fn channel_label(&self, channel: usize) -> &str {
        self.names.get(channel).map_or("?", String::as_str)
    }

    fn unix_ms(&self, ns: u64) -> i64 {
        self.epoch_unix_ms
            .saturating_add((ns / 1_000_000).min(i64::MAX as u64) as i64)
    }

    /// Every channel's state for `/api/monitor/health`, in config order, named as given.
    pub fn snapshot(&self, names: &[String]) -> Vec<ChannelState> {
        let now = self.now_ns();
        self.channels
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let g = c.gate.load(Acquire);
                let active = c.active_keys.load(Acquire);
                let (state, remaining_ns) = if !self.enabled {
                    ("healthy", 0)
                } else if active == 0 && !c.key_due(now) {
                    ("disabled", 0)
                } else {
                    match mode_of(g) {
                        HEALTHY => ("healthy", 0),
                        COOLING if until_of(g) > now => ("cooling", until_of(g) - now),
                        COOLING => ("probe_due", 0),
                        _ => ("probing", 0),
                    }
                };
                let since = c.since_ns.load(Acquire);
                ChannelState {
                    name: names.get(i).cloned().unwrap_or_default(),
                    state,
                    reason: Reason::unpack(c.reason.load(Relaxed)).map(Reason::describe),
                    since: (since != 0).then(|| format_rfc3339(self.unix_ms(since))),
                    cooldown_remaining_ms: remaining_ns.div_ceil(1_000_000),
                    consecutive_failures: c.failures.load(Relaxed),
                    keys: c
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(k, h)| {
                            let out = h.out_until.load(Acquire);
                            let since = h.since_ns.load(Acquire);
                            KeyState {
                                position: k + 1,
                                tail: c.key_tails[k].clone(),
                                state: match out {
                                    KEY_ACTIVE => "active",
                                    KEY_NEVER => "disabled",
                                    u if u <= now => "recheck_due",
                                    _ => "disabled",
                                },
                                reason: Reason::unpack(h.reason.load(Relaxed))
                                    .map(Reason::describe),
                                since: (since != 0).then(|| format_rfc3339(self.unix_ms(since))),
                                recheck_in_ms: match out {
                                    KEY_ACTIVE | KEY_NEVER => None,
                                    u => Some(u.saturating_sub(now).div_ceil(1_000_000)),
                                },
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

impl ChannelHealth {
    /// A key out of rotation whose recheck is due.
    fn key_due(&self, now: u64) -> bool {
        self.keys.iter().any(|k| {
            let out = k.out_until.load(Acquire);
            out != KEY_ACTIVE && out != KEY_NEVER && out <= now
        })
    }

    fn note(&self, reason: Reason, now: u64) {
        self.reason.store(reason.pack(), Relaxed);
        self.since_ns.store(now, Release);
    }
}

/// The last characters of a key, as the monitor shows it (never the whole key: a key of up
/// to 8 characters shows none).
fn key_tail(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 2 * KEY_TAIL_SHOWN {
        return String::new();
    }
    chars[chars.len() - KEY_TAIL_SHOWN..].iter().collect()
}

/// One channel as the monitor shows it.
pub struct ChannelState {
    pub name: String,
    /// `healthy`, `cooling`, `probe_due` (cooldown over, no probe yet), `probing`, `disabled`.
    pub state: &'static str,
    pub reason: Option<String>,
    /// RFC 3339, UTC, of the last state change.
    pub since: Option<String>,
    pub cooldown_remaining_ms: u64,
    pub consecutive_failures: u32,
    pub keys: Vec<KeyState>,
}

/// One key as the monitor shows it: its position and masked tail, never the key.
pub struct KeyState {
    /// 1-based.
    pub position: usize,
    pub tail: String,
    /// `active`, `disabled`, `recheck_due`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub recheck_in_ms: Option<u64>,
}

impl ChannelState {
    pub const STATES: [&'static str; 5] =
        ["healthy", "cooling", "probe_due", "probing", "disabled"];

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "cooldown_remaining_ms": self.cooldown_remaining_ms,
            "consecutive_failures": self.consecutive_failures,
            "keys": self.keys.iter().map(|k| serde_json::json!({
                "key": format!("#{}", k.position),
                "tail": format!("...{}", k.tail),
                "state": k.state,
                "reason": k.reason,
                "since": k.since,
                "recheck_in_ms": k.recheck_in_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests;
