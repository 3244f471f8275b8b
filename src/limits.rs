//! Limits that hold for the whole process, across workers: `server.max_inflight`, and each
//! token's `expires_at`, `rpm`, `tpm`, `max_inflight` and `quota_tokens`.
//!
//! Owns: the process-wide inflight count (allocated once at start), one [`TokenLimits`] block
//! per configured token, the [`UsageBook`] of settled usage and reservations by token name
//! (allocated once at start, with room for the names reloads add), and the rules that admit a
//! request or refuse it ([`Refusal`]). An admitted request holds an [`Admission`] to its end;
//! dropping it gives back its process slot, its token slot and its reservation, on every path.
//!
//! A reload builds the next generation's limits with [`Limits::renewed`]: the process's count
//! and the usage book are shared by every generation, and a token whose limits are unchanged
//! keeps its block, so limits and quotas hold across the change.
//!
//! How each limit holds across workers. The state is atomics the workers share; there is no
//! lock, so nothing can be held across an await.
//! - `max_inflight`, the process's and a token's: one atomic add; over the limit the add is
//!   taken back, so a burst is refused early, never admitted past the limit. Exact.
//! - `rpm`: a token bucket kept as one `AtomicU64`, the moment (ns since start) at which the
//!   bucket is full again (GCRA's "theoretical arrival time"). The bucket holds `rpm` requests
//!   and refills continuously at `rpm` a minute. Taking a request moves that moment 60 s / rpm
//!   later; it is allowed while the moment stays at most one minute ahead of now. Check and
//!   take are one compare-and-swap, so two workers can never both take the last request.
//!   Exact: a burst of at most `rpm` requests, then one every 60/rpm s; over any T seconds at
//!   most rpm × (1 + T/60), so at most 2 × rpm in any one minute (a burst right after a full
//!   refill), and `rpm` a minute on average.
//! - `tpm`: the same bucket, counted in tokens. A request's cost is known only when it ends, so
//!   admission only *reads* the bucket, and refuses while it is empty: the tokens reported
//!   over the last minute's refill are at or over `tpm`. The prompt + completion tokens of the
//!   upstream's `usage` are taken out when the request finishes ([`Limits::spend`]). The bucket
//!   may go below empty, and that debt is paid back at `tpm` a minute before the token is
//!   admitted again. So `tpm` is exceeded by at most the usage of the requests that were
//!   already in flight when it was crossed. A response without `usage` costs nothing.
//! - `expires_at`: the wall clock (UTC, to the millisecond), read only for tokens that have one.
//! - `quota_tokens`: two counters, `used` (settled prompt + completion tokens over the token's
//!   life, loaded from the ledger at start) and `reserved` (what the requests in flight may
//!   still cost). Admission adds the request's estimate to `reserved` and refuses when
//!   `used + reserved` then passes the quota (taking the add back); the end of the request
//!   adds its real usage to `used` *before* it drops its reservation ([`Limits::settle`]), so
//!   no moment exists at which a request counts in neither. The quota is exceeded by at most
//!   what the requests in flight use beyond their reservations; a refused request took nothing.
//!   `used` is counted for every token (one atomic add per request), so the ledger records
//!   usage from the first request even for a token that gets a quota later. The ledger thread
//!   (`state`) only reads `used`.
//!
//! Order in `relay/admit.rs`: the expiry at authentication, before any body byte; after the
//! body, the token's `max_inflight`, `tpm` (read only), the quota reservation, `rpm` (the one
//! take), then the process's `max_inflight`. A refusal gives back what the earlier checks
//! took: the token slot and the reservation by their guards, the rpm take by
//! [`Bucket::give_back_one`].
//!
//! Memory is bounded by the token count, never by the limits' values: one fixed-size block
//! of two cache lines per token (two buckets of one word each, one inflight count, the quota's
//! two counters). A token
//! without limits costs one branch per check and never reads the clock.
//!
//! The rate arithmetic takes "now" as a parameter (`*_at`), so the tests drive the clock
//! without sleeping.
//!
//! Must not: lock, allocate for an admitted request, or read the clock for a token without
//! `rpm`, `tpm` or `expires_at`.

use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{format_rfc3339, TokenConfig};
use crate::error::RelayError;
use crate::provider::Usage;

/// The span `rpm` and `tpm` count over, in nanoseconds.
const WINDOW_NS: u64 = 60_000_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// The limits of one config generation.
pub struct Limits {
    /// The process's inflight count: allocated once at start, shared by every generation.
    inflight: &'static AtomicU64,
    max_inflight: u64,
    /// Zero on the buckets' clock (shared by every generation).
    epoch: Instant,
    /// One block per token, in config order (the router's token index).
    tokens: Box<[Arc<TokenLimits>]>,
    /// Settled usage and reservations by token name (shared by every generation).
    book: &'static UsageBook,
}

/// Settled usage and quota reservations, one row per token name for the life of the process:
/// a reload that changes a token's limits, removes it or adds it back keeps its figures, and
/// the ledger thread reads the rows without knowing about generations. Allocated once at start
/// with room for the names the ledger and the config hold and as many again (at least 256);
/// a reload that would need more rows is refused.
pub struct UsageBook {
    rows: Box<[UsageRow]>,
    /// Rows handed out; a handed-out row's name never changes.
    len: AtomicUsize,
    /// Held only while a row is handed out (at start and at a reload), never on a request's path.
    assign: Mutex<()>,
}

/// One token name's settled usage and reservations, on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
pub struct UsageRow {
    name: OnceLock<Box<str>>,
    /// Settled prompt + completion tokens over the token's life (the ledger's total at start,
    /// plus every request finished since). Only ever grows.
    used: AtomicU64,
    /// The reservations of this token's admitted requests that have not settled yet.
    reserved: AtomicU64,
}

impl UsageRow {
    pub fn name(&self) -> &str {
        self.name.get().map_or("", |n| n)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Acquire)
    }
}

impl UsageBook {
    /// The book at start: a row for every name the ledger recorded (with its total) and every
    /// configured token.
    pub fn new(
        settled: &std::collections::HashMap<String, u64>,
        tokens: &[TokenConfig],
    ) -> &'static UsageBook {
        let mut names: Vec<&str> = settled.keys().map(String::as_str).collect();
        names.sort_unstable();
        for t in tokens {
            if !settled.contains_key(&t.name) {
                names.push(&t.name);
            }
        }
        let book = UsageBook::with_room(names.len() + names.len().max(256));
        for name in names {
            let row = book.row(name).expect("room for every name at start");
            row.used
                .store(settled.get(name).copied().unwrap_or(0), Relaxed);
        }
        book
    }

    fn with_room(room: usize) -> &'static UsageBook {
        Box::leak(Box::new(UsageBook {
            rows: (0..room).map(|_| UsageRow::default()).collect(),
            len: AtomicUsize::new(0),
            assign: Mutex::new(()),
        }))
    }

    /// The row of `name`, handed out if it has none; `None` when the book is full.
    pub fn row(&'static self, name: &str) -> Option<&'static UsageRow> {
        let _held = self.assign.lock().unwrap_or_else(|e| e.into_inner());
        let len = self.len.load(Acquire);
        if let Some(row) = self.rows[..len].iter().find(|r| r.name() == name) {
            return Some(row);
        }
        let row = self.rows.get(len)?;
        let _ = row.name.set(name.into());
        self.len.store(len + 1, Release);
        Some(row)
    }

    /// Every row handed out so far, in the order they were.
    pub fn rows(&'static self) -> &'static [UsageRow] {
        &self.rows[..self.len.load(Acquire)]
    }

    /// How many rows the book can ever hold (what the ledger thread sizes its buffers by).
    pub fn room(&self) -> usize {
        self.rows.len()
    }
}

/// One token's limits and their state, on a cache line of its own.
#[repr(align(64))]
struct TokenLimits {
    /// Unix milliseconds from which the token is refused; `i64::MAX`: never.
    expires_at: i64,
    /// `u64::MAX`: no limit.
    max_inflight: u64,
    inflight: AtomicU64,
    rpm: Bucket,
    tpm: Bucket,
    /// `quota_tokens`; `u64::MAX`: no quota.
    quota: u64,
    /// The token name's settled usage and reservations.
    usage: &'static UsageRow,
}

/// A token bucket of `per_minute` units refilled continuously, as the one moment at which it
/// is full again.
struct Bucket {
    /// 0: no limit.
    per_minute: u64,
    /// Nanoseconds since the epoch at which the bucket is full again; at or before now it is
    /// full. `full_at - now` is what is taken out, in refill time: one unit is 60 s / per_minute.
    full_at: AtomicU64,
}

impl Bucket {
    fn new(per_minute: Option<u64>) -> Bucket {
        Bucket {
            per_minute: per_minute.unwrap_or(0),
            full_at: AtomicU64::new(0),
        }
    }

    #[inline]
    fn is_set(&self) -> bool {
        self.per_minute != 0
    }

    /// The refill time of `units`, in nanoseconds (saturating, never overflowing).
    fn span(&self, units: u64) -> u64 {
        let ns = units as u128 * WINDOW_NS as u128 / self.per_minute.max(1) as u128;
        ns.min(u64::MAX as u128) as u64
    }

    /// Takes one unit if the bucket holds one; else the nanoseconds until it will.
    fn take_one_at(&self, now: u64) -> Result<(), u64> {
        let step = self.span(1);
        let limit = now.saturating_add(WINDOW_NS);
        let mut seen = self.full_at.load(Acquire);
        loop {
            let next = seen.max(now).saturating_add(step);
            if next > limit {
                return Err(next - limit);
            }
            match self
                .full_at
                .compare_exchange_weak(seen, next, AcqRel, Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => seen = actual,
            }
        }
    }

    /// Undoes one [`Bucket::take_one_at`] (the request was refused by a later check).
    fn give_back_one(&self) {
        let step = self.span(1);
        let _ = self
            .full_at
            .fetch_update(AcqRel, Acquire, |v| Some(v.saturating_sub(step)));
    }

    /// Ok while anything is left; else the nanoseconds until something is.
    fn check_at(&self, now: u64) -> Result<(), u64> {
        let limit = now.saturating_add(WINDOW_NS);
        let full_at = self.full_at.load(Acquire);
        if full_at >= limit {
            // Under again one nanosecond later: as whole seconds, the same.
            Err(full_at - limit)
        } else {
            Ok(())
        }
    }

    /// Takes out `units` whatever is left: the bucket may go below empty (a debt).
    fn spend_at(&self, units: u64, now: u64) {
        let span = self.span(units);
        let _ = self
            .full_at
            .fetch_update(AcqRel, Acquire, |v| Some(v.max(now).saturating_add(span)));
    }
}

/// Which of a token's limits refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLimit {
    Rpm,
    Tpm,
    MaxInflight,
}

/// Where a token's quota stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaState {
    /// `quota_tokens`, if the token has one.
    pub quota: Option<u64>,
    pub used: u64,
    pub reserved: u64,
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The process is at `server.max_inflight`: 503 `overloaded`.
    Overloaded,
    /// The token is over one of its limits (`value`): 429 `rate_limited`.
    RateLimited {
        limit: TokenLimit,
        value: u64,
        retry_after_secs: u64,
    },
    /// The token's `quota_tokens` cannot cover this request's reservation: 429
    /// `quota_exhausted`.
    QuotaExhausted {
        quota: u64,
        used: u64,
        /// Reserved by the token's other requests in flight.
        reserved: u64,
        /// This request's reservation.
        need: u64,
    },
}

impl Refusal {
    fn rate_limited(limit: TokenLimit, value: u64, wait_ns: u64) -> Refusal {
        Refusal::RateLimited {
            limit,
            value,
            retry_after_secs: wait_ns.div_ceil(NS_PER_SEC).max(1),
        }
    }

    /// The answer: 503 `overloaded`, 429 `rate_limited` naming the limit, or 429
    /// `quota_exhausted`.
    pub fn error(&self) -> RelayError {
        let (limit, value, secs) = match *self {
            Refusal::Overloaded => return RelayError::overloaded(),
            Refusal::QuotaExhausted {
                quota,
                used,
                reserved,
                need,
            } => return quota_error(quota, used, reserved, need),
            Refusal::RateLimited {
                limit,
                value,
                retry_after_secs,
            } => (limit, value, retry_after_secs),
        };
        let message = match limit {
            TokenLimit::Rpm => format!(
                "this API key is over its rpm limit ({value} requests per minute); retry in {secs}s"
            ),
            TokenLimit::Tpm => format!(
                "this API key is over its tpm limit ({value} tokens per minute, counted from the usage upstreams reported); retry in {secs}s"
            ),
            TokenLimit::MaxInflight => format!(
                "this API key is over its max_inflight limit ({value} requests at once); retry in {secs}s"
            ),
        };
        RelayError::rate_limited(message, secs)
    }
}

/// The 429 for a quota that cannot cover a request. A quota never refills: `Retry-After` (1 s)
/// only when the spent part alone would still leave room, i.e. other requests' reservations are
/// what stands in the way, and they may settle lower than they reserved.
fn quota_error(quota: u64, used: u64, reserved: u64, need: u64) -> RelayError {
    let left = quota.saturating_sub(used);
    if used.saturating_add(need) <= quota {
        RelayError::quota_exhausted(
            format!(
                "this API key's quota_tokens ({quota}) has {left} tokens left, but {reserved} of them \
                 are reserved by its requests in flight and this request reserves {need}; retry in 1s"
            ),
            Some(1),
        )
    } else {
        RelayError::quota_exhausted(
            format!(
                "this API key's quota_tokens ({quota}) is spent: {left} tokens left, and this \
                 request reserves {need} (its max_tokens, or the default reservation, plus its \
                 prompt)"
            ),
            None,
        )
    }
}

impl Limits {
    /// The limits at start for `max_inflight` and `tokens` (in config order), their usage in
    /// `book`. The process's inflight count is allocated here once and lives as long as the
    /// process.
    pub fn new(
        max_inflight: usize,
        tokens: &[TokenConfig],
        book: &'static UsageBook,
    ) -> Result<Limits, String> {
        Limits {
            inflight: Box::leak(Box::new(AtomicU64::new(0))),
            max_inflight: max_inflight as u64,
            epoch: Instant::now(),
            tokens: Box::new([]),
            book,
        }
        .renewed(max_inflight, &[], tokens)
    }

    /// The limits of a reloaded config. The process's inflight count and the usage book are
    /// shared, so `max_inflight` and quotas hold across the change. A token whose name and
    /// limits are unchanged keeps its block (its in-flight count and rate buckets go on). A
    /// token whose limits changed gets a new block that takes over its rate buckets' state,
    /// while its in-flight count starts from the requests admitted after the reload. A removed
    /// token's block goes when its last request ends. Fails when the usage book has no room
    /// for a new name.
    pub fn renewed(
        &self,
        max_inflight: usize,
        old: &[TokenConfig],
        tokens: &[TokenConfig],
    ) -> Result<Limits, String> {
        let mut blocks = Vec::with_capacity(tokens.len());
        for t in tokens {
            let before = old
                .iter()
                .position(|o| o.name == t.name)
                .and_then(|i| Some((&old[i], self.tokens.get(i)?)));
            let block = match before {
                Some((o, block)) if same_limits(o, t) => block.clone(),
                Some((_, block)) => {
                    let fresh = TokenLimits::new(t, block.usage);
                    for (to, from) in [(&fresh.rpm, &block.rpm), (&fresh.tpm, &block.tpm)] {
                        to.full_at.store(from.full_at.load(Acquire), Relaxed);
                    }
                    Arc::new(fresh)
                }
                None => {
                    let row = self.book.row(&t.name).ok_or_else(|| {
                        format!(
                            "no room to count token '{}': more new token names than this process can track since it started; restart to add them",
                            t.name
                        )
                    })?;
                    Arc::new(TokenLimits::new(t, row))
                }
            };
            blocks.push(block);
        }
        Ok(Limits {
            inflight: self.inflight,
            max_inflight: max_inflight as u64,
            epoch: self.epoch,
            tokens: blocks.into(),
            book: self.book,
        })
    }

    /// Limits for unit tests: a book row per token (by position, whatever the names), each
    /// starting at `settled[i]`.
    #[cfg(test)]
    fn for_test(max_inflight: usize, tokens: &[TokenConfig], settled: &[u64]) -> &'static Limits {
        let book = UsageBook::with_room(tokens.len());
        let mut limits = Limits::new(max_inflight, &[], book).expect("no tokens");
        limits.tokens = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let row = book.row(&i.to_string()).expect("room");
                row.used
                    .store(settled.get(i).copied().unwrap_or(0), Relaxed);
                Arc::new(TokenLimits::new(t, row))
            })
            .collect();
        Box::leak(Box::new(limits))
    }

    /// Nanoseconds since the epoch, on the monotonic clock.
    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u64::MAX as u128) as u64
    }

    /// 401 `token_expired` once the token's `expires_at` has passed.
    #[inline]
    pub fn check_expiry(&self, token: usize) -> Result<(), RelayError> {
        let Some(t) = self.tokens.get(token) else {
            return Ok(());
        };
        if t.expires_at == i64::MAX {
            return Ok(());
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.check_expiry_at(token, now_ms)
    }

    fn check_expiry_at(&self, token: usize, now_ms: i64) -> Result<(), RelayError> {
        match self.tokens.get(token) {
            Some(t) if now_ms >= t.expires_at => {
                Err(RelayError::token_expired(&format_rfc3339(t.expires_at)))
            }
            _ => Ok(()),
        }
    }

    /// Does `token` have `quota_tokens` (so admission needs its reservation estimate)?
    #[inline]
    pub fn has_quota(&self, token: usize) -> bool {
        self.tokens.get(token).is_some_and(|t| t.quota != u64::MAX)
    }

    /// Admits a request of `token` under its limits and the process's `max_inflight`;
    /// `reserve` is what the request may cost against the token's quota (ignored without one).
    #[inline]
    pub fn admit(&self, token: usize, reserve: u64) -> Result<Admission, Refusal> {
        self.admit_at(token, reserve, || self.now_ns())
    }

    /// [`Limits::admit`] with the clock as a parameter; `now` is asked at most once, and only
    /// for a token with `rpm` or `tpm`.
    fn admit_at(
        &self,
        token: usize,
        reserve: u64,
        now: impl FnOnce() -> u64,
    ) -> Result<Admission, Refusal> {
        let Some(t) = self.tokens.get(token) else {
            let process = self.admit_process().ok_or(Refusal::Overloaded)?;
            return Ok(Admission {
                _process: process,
                _token: None,
                quota: None,
            });
        };
        let token_slot = if t.max_inflight != u64::MAX {
            if t.inflight.fetch_add(1, AcqRel) >= t.max_inflight {
                t.inflight.fetch_sub(1, AcqRel);
                return Err(Refusal::rate_limited(
                    TokenLimit::MaxInflight,
                    t.max_inflight,
                    NS_PER_SEC,
                ));
            }
            Some(TokenSlot(t.clone()))
        } else {
            None
        };
        // From here on, an early return drops `token_slot`: the token's slot goes back.
        let now = if t.rpm.is_set() || t.tpm.is_set() {
            now()
        } else {
            0
        };
        if t.tpm.is_set() {
            if let Err(wait) = t.tpm.check_at(now) {
                return Err(Refusal::rate_limited(
                    TokenLimit::Tpm,
                    t.tpm.per_minute,
                    wait,
                ));
            }
        }
        // Before rpm, so a request the quota refuses takes no rpm; from here on an early
        // return drops `quota` too: the reservation goes back.
        let quota = t.reserve(reserve)?;
        let mut took_rpm = false;
        if t.rpm.is_set() {
            if let Err(wait) = t.rpm.take_one_at(now) {
                return Err(Refusal::rate_limited(
                    TokenLimit::Rpm,
                    t.rpm.per_minute,
                    wait,
                ));
            }
            took_rpm = true;
        }
        let Some(process) = self.admit_process() else {
            if took_rpm {
                t.rpm.give_back_one();
            }
            return Err(Refusal::Overloaded);
        };
        Ok(Admission {
            _process: process,
            _token: token_slot,
            quota,
        })
    }

    /// A slot under the process's `max_inflight`, or `None` when the whole process is at it.
    #[inline]
    fn admit_process(&self) -> Option<InflightSlot> {
        if self.inflight.fetch_add(1, AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, AcqRel);
            return None;
        }
        Some(InflightSlot(self.inflight))
    }

    /// A finished request of `token` cost `tokens` (prompt + completion, as reported or
    /// estimated): they are added to the token's settled usage, and only then is the
    /// request's reservation (`hold`) given back, so the request is never counted in neither.
    #[inline]
    pub fn settle(&self, token: Option<usize>, hold: Option<QuotaHold>, tokens: u64) {
        if let Some(t) = token.and_then(|i| self.tokens.get(i)) {
            if tokens > 0 {
                t.usage.used.fetch_add(tokens, AcqRel);
            }
        }
        drop(hold);
    }

    /// Token `token`'s quota, settled usage and reservations, for health and metrics.
    pub fn quota_state(&self, token: usize) -> Option<QuotaState> {
        let t = self.tokens.get(token)?;
        Some(QuotaState {
            quota: (t.quota != u64::MAX).then_some(t.quota),
            used: t.usage.used.load(Acquire),
            reserved: t.usage.reserved.load(Acquire),
        })
    }

    /// Token `token`'s settled usage (what the ledger records).
    #[cfg(test)]
    pub fn used(&self, token: usize) -> u64 {
        self.tokens
            .get(token)
            .map_or(0, |t| t.usage.used.load(Acquire))
    }

    /// Are requests still admitted, or reservations not yet settled? (A request's reservation
    /// goes only after its usage was added, so once this is false every admitted request has
    /// settled.)
    pub fn unsettled(&self) -> bool {
        self.inflight.load(Acquire) > 0
            || self
                .book
                .rows()
                .iter()
                .any(|r| r.reserved.load(Acquire) > 0)
    }

    /// A finished request of `token` reported `usage`: its prompt + completion tokens are
    /// taken out of the token's `tpm` bucket (nothing happens without `tpm` or `usage`).
    #[inline]
    pub fn spend(&self, token: Option<usize>, usage: Option<Usage>) {
        let (Some(t), Some(u)) = (token.and_then(|i| self.tokens.get(i)), usage) else {
            return;
        };
        if t.tpm.is_set() {
            t.tpm
                .spend_at(u.prompt.saturating_add(u.completion), self.now_ns());
        }
    }
}

/// True when `a` and `b` set the same limits (a block built for one serves the other).
fn same_limits(a: &TokenConfig, b: &TokenConfig) -> bool {
    (a.expires_at, a.max_inflight, a.rpm, a.tpm, a.quota_tokens)
        == (b.expires_at, b.max_inflight, b.rpm, b.tpm, b.quota_tokens)
}

impl TokenLimits {
    fn new(t: &TokenConfig, usage: &'static UsageRow) -> TokenLimits {
        TokenLimits {
            expires_at: t.expires_at.unwrap_or(i64::MAX),
            max_inflight: t.max_inflight.unwrap_or(u64::MAX),
            inflight: AtomicU64::new(0),
            rpm: Bucket::new(t.rpm),
            tpm: Bucket::new(t.tpm),
            quota: t.quota_tokens.unwrap_or(u64::MAX),
            usage,
        }
    }

    /// Reserves `need` tokens of the quota (nothing without a quota). One atomic add; over
    /// the quota the add is taken back, so concurrent reservations may refuse each other
    /// early but never admit past the quota together.
    #[inline]
    fn reserve(&self, need: u64) -> Result<Option<QuotaHold>, Refusal> {
        if self.quota == u64::MAX {
            return Ok(None);
        }
        let row = self.usage;
        let reserved = row.reserved.fetch_add(need, AcqRel).saturating_add(need);
        let used = row.used.load(Acquire);
        if used.saturating_add(reserved) > self.quota {
            row.reserved.fetch_sub(need, AcqRel);
            return Err(Refusal::QuotaExhausted {
                quota: self.quota,
                used,
                reserved: reserved - need,
                need,
            });
        }
        Ok(Some(QuotaHold {
            row,
            reserved: need,
        }))
    }
}

/// One admitted request's share of the limits; dropping it gives them back.
pub struct Admission {
    _process: InflightSlot,
    _token: Option<TokenSlot>,
    quota: Option<QuotaHold>,
}

impl Admission {
    /// The request's quota reservation, to be held until the request settles (see
    /// [`Limits::settle`]); the other slots stay with the admission.
    pub fn take_quota(&mut self) -> Option<QuotaHold> {
        self.quota.take()
    }
}

/// One admitted request's reservation against its token's quota; dropping it gives the
/// reservation back (after [`Limits::settle`] counted the real usage, or on any other path).
pub struct QuotaHold {
    row: &'static UsageRow,
    reserved: u64,
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        self.row.reserved.fetch_sub(self.reserved, AcqRel);
    }
}

/// One admitted request's share of `server.max_inflight`.
struct InflightSlot(&'static AtomicU64);

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AcqRel);
    }
}

/// One admitted request's share of its token's `max_inflight`.
struct TokenSlot(Arc<TokenLimits>);

impl Drop for TokenSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NS_PER_SEC;

    fn token(rpm: Option<u64>, tpm: Option<u64>, max_inflight: Option<u64>) -> TokenConfig {
        TokenConfig {
            name: "t".into(),
            key: "k".into(),
            models: vec!["*".into()],
            expires_at: None,
            rpm,
            tpm,
            max_inflight,
            quota_tokens: None,
        }
    }

    fn usage(total: u64) -> Option<Usage> {
        Some(Usage {
            prompt: total / 2,
            completion: total - total / 2,
            ..Usage::default()
        })
    }

    fn retry_after(r: Result<Admission, Refusal>) -> (TokenLimit, u64) {
        match r {
            Err(Refusal::RateLimited {
                limit,
                retry_after_secs,
                ..
            }) => (limit, retry_after_secs),
            Err(other) => panic!("{other:?}, not rate limited"),
            Ok(_) => panic!("admitted"),
        }
    }

    impl Limits {
        fn inflight(&self) -> u64 {
            self.inflight.load(Acquire)
        }
        fn token_inflight(&self, token: usize) -> u64 {
            self.tokens[token].inflight.load(Acquire)
        }
        fn spend_at(&self, token: usize, tokens: u64, now: u64) {
            self.tokens[token].tpm.spend_at(tokens, now);
        }
    }

    #[test]
    fn admits_up_to_the_limit_across_threads_and_never_past_it() {
        let limits = Limits::for_test(5, &[token(None, None, None)], &[]);
        let held: Vec<Admission> = (0..5).map(|_| limits.admit(0, 0).unwrap()).collect();
        assert_eq!(limits.admit(0, 0).err(), Some(Refusal::Overloaded));
        // Many threads hammering a full limit never get through, and leave the count as it was.
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..10_000).all(|_| limits.admit(0, 0).is_err())))
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(limits.inflight(), 5);
        drop(held);
        assert_eq!(limits.inflight(), 0);
        assert!(limits.admit(0, 0).is_ok());
    }

    #[test]
    fn rpm_is_a_burst_of_rpm_then_one_every_sixty_over_rpm_seconds() {
        let limits = Limits::for_test(100, &[token(Some(5), None, None)], &[]);
        let t0 = 1_000 * SEC;
        for i in 0..5 {
            assert!(limits.admit_at(0, 0, || t0 + i).is_ok(), "request {i}");
        }
        // The sixth: a request's worth (12 s) refills 12 s after the first was taken.
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || t0)),
            (TokenLimit::Rpm, 12)
        );
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || t0 + 3 * SEC)),
            (TokenLimit::Rpm, 9)
        );
        // Refused requests took nothing: at 12 s exactly one more fits, then none.
        assert!(limits.admit_at(0, 0, || t0 + 12 * SEC + 4).is_ok());
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || t0 + 12 * SEC + 5)),
            (TokenLimit::Rpm, 12)
        );
        // After a quiet minute the whole burst is back, and never more than it.
        let t1 = t0 + 200 * SEC;
        for i in 0..5 {
            assert!(limits.admit_at(0, 0, || t1).is_ok(), "request {i}");
        }
        assert!(limits.admit_at(0, 0, || t1).is_err());
        // Steady state: one every 12 s, never a second one early.
        for k in 1..=10 {
            let at = t1 + k * 12 * SEC;
            assert!(
                limits.admit_at(0, 0, || at - SEC).is_err(),
                "step {k} early"
            );
            assert!(limits.admit_at(0, 0, || at).is_ok(), "step {k}");
        }
    }

    #[test]
    fn rpm_retry_after_is_whole_seconds_at_least_one() {
        let limits = Limits::for_test(100, &[token(Some(7), None, None)], &[]);
        let t0 = 50 * SEC;
        for _ in 0..7 {
            assert!(limits.admit_at(0, 0, || t0).is_ok());
        }
        // 60 s / 7 = 8.57 s: rounded up.
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || t0)),
            (TokenLimit::Rpm, 9)
        );
        // Just before the refill: still at least 1.
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || t0 + 60 * SEC / 7 - 10)),
            (TokenLimit::Rpm, 1)
        );
        let one = Limits::for_test(100, &[token(Some(1), None, None)], &[]);
        assert!(one.admit_at(0, 0, || t0).is_ok());
        assert_eq!(
            retry_after(one.admit_at(0, 0, || t0)),
            (TokenLimit::Rpm, 60)
        );
    }

    #[test]
    fn rpm_holds_exactly_across_threads() {
        let limits = Limits::for_test(1_000_000, &[token(Some(1000), None, None)], &[]);
        let now = 10 * SEC;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Ok(a) = limits.admit_at(0, 0, || now) {
                            held.push(a);
                        }
                    }
                    held.len()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 1000);
        assert_eq!(limits.inflight(), 0);
    }

    #[test]
    fn tpm_refuses_once_reported_usage_reaches_it_and_pays_a_debt_back() {
        let limits = Limits::for_test(100, &[token(None, Some(40), None)], &[]);
        let t0 = 5 * SEC;
        // 16 tokens a request: 0, 16 and 32 are under 40, so three are admitted.
        let mut passed = 0;
        for i in 0..6 {
            let now = t0 + i * 10_000_000;
            if limits.admit_at(0, 0, || now).is_ok() {
                passed += 1;
                limits.spend_at(0, 16, now);
            }
        }
        assert_eq!(passed, 3);
        // 48 taken out of 40: 8 over, paid back at 40 a minute in 12 s.
        let now = t0 + 60_000_000;
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || now)),
            (TokenLimit::Tpm, 12)
        );
        assert!(limits.admit_at(0, 0, || now + 11 * SEC).is_err());
        assert!(limits.admit_at(0, 0, || now + 12 * SEC).is_ok());
        // A large report is a debt: 400 tokens at 40/min keep the token out for ~9 minutes.
        let t1 = t0 + 3600 * SEC;
        assert!(limits.admit_at(0, 0, || t1).is_ok());
        limits.spend_at(0, 400, t1);
        assert_eq!(
            retry_after(limits.admit_at(0, 0, || t1)),
            (TokenLimit::Tpm, 540)
        );
        assert!(limits.admit_at(0, 0, || t1 + 539 * SEC).is_err());
        assert!(limits.admit_at(0, 0, || t1 + 541 * SEC).is_ok());
    }

    #[test]
    fn spend_counts_prompt_and_completion_and_ignores_tokens_without_tpm() {
        let limits = Limits::for_test(
            100,
            &[token(None, Some(100), None), token(None, None, None)],
            &[],
        );
        limits.spend(Some(0), usage(99));
        assert!(limits.admit(0, 0).is_ok());
        limits.spend(Some(0), usage(51));
        assert!(matches!(
            limits.admit(0, 0),
            Err(Refusal::RateLimited {
                limit: TokenLimit::Tpm,
                value: 100,
                ..
            })
        ));
        // No usage, no token, an unknown token, a token without tpm: nothing happens.
        limits.spend(Some(0), None);
        limits.spend(None, usage(10));
        limits.spend(Some(7), usage(10));
        limits.spend(Some(1), usage(1_000_000));
        assert!(limits.admit(1, 0).is_ok());
    }

    #[test]
    fn token_max_inflight_is_exact_and_released_on_drop() {
        let limits = Limits::for_test(
            100,
            &[token(None, None, Some(2)), token(None, None, None)],
            &[],
        );
        let a = limits.admit(0, 0).unwrap();
        let b = limits.admit(0, 0).unwrap();
        assert_eq!(
            limits.admit(0, 0).err(),
            Some(Refusal::RateLimited {
                limit: TokenLimit::MaxInflight,
                value: 2,
                retry_after_secs: 1
            })
        );
        // Another token is not affected.
        let other = limits.admit(1, 0).unwrap();
        assert_eq!(limits.token_inflight(0), 2);
        assert_eq!(limits.inflight(), 3);
        drop(a);
        let c = limits.admit(0, 0).unwrap();
        drop((b, c, other));
        assert_eq!((limits.token_inflight(0), limits.inflight()), (0, 0));
        // Threads racing for two slots never hold more than two. (The raw count may read one
        // over for an instant: a refused add is taken back right after it.)
        let holding: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..5000 {
                        if let Ok(held) = limits.admit(0, 0) {
                            assert!(holding.fetch_add(1, AcqRel) < 2, "three admitted at once");
                            holding.fetch_sub(1, AcqRel);
                            drop(held);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((limits.token_inflight(0), limits.inflight()), (0, 0));
    }

    #[test]
    fn a_later_refusal_gives_back_what_earlier_checks_took() {
        // max_inflight = 1 for the process; the token has rpm 2 and max_inflight 5.
        let limits = Limits::for_test(1, &[token(Some(2), Some(1000), Some(5))], &[]);
        let now = 7 * SEC;
        let first = limits.admit_at(0, 0, || now).unwrap();
        // Refused by the process's max_inflight: its rpm take and its token slot come back.
        assert_eq!(
            limits.admit_at(0, 0, || now).err(),
            Some(Refusal::Overloaded)
        );
        assert_eq!(
            limits.admit_at(0, 0, || now).err(),
            Some(Refusal::Overloaded)
        );
        assert_eq!(limits.token_inflight(0), 1);
        drop(first);
        // The second of rpm 2 is still there (without the give-back it would be gone).
        let second = limits.admit_at(0, 0, || now).unwrap();
        drop(second);
        assert!(matches!(
            limits.admit_at(0, 0, || now),
            Err(Refusal::RateLimited {
                limit: TokenLimit::Rpm,
                ..
            })
        ));
        // An rpm refusal gives the token slot back.
        assert_eq!((limits.token_inflight(0), limits.inflight()), (0, 0));
        // A tpm refusal takes no rpm: three refusals, then both of rpm 2 are still there.
        let later = now + 120 * SEC;
        limits.spend_at(0, 1000, later);
        for _ in 0..3 {
            assert!(matches!(
                limits.admit_at(0, 0, || later),
                Err(Refusal::RateLimited {
                    limit: TokenLimit::Tpm,
                    ..
                })
            ));
        }
        let paid = later + SEC;
        assert!(limits.admit_at(0, 0, || paid).is_ok());
        assert!(limits.admit_at(0, 0, || paid).is_ok());
        assert_eq!((limits.token_inflight(0), limits.inflight()), (0, 0));
    }

    #[test]
    fn a_token_without_rate_limits_never_reads_the_clock() {
        let limits = Limits::for_test(10, &[token(None, None, Some(3))], &[]);
        let a = limits.admit_at(0, 0, || panic!("clock read")).unwrap();
        drop(a);
        let limits = Limits::for_test(10, &[token(None, None, None)], &[]);
        assert!(limits.admit_at(0, 0, || panic!("clock read")).is_ok());
    }

    #[test]
    fn expiry_is_checked_against_the_wall_clock_to_the_millisecond() {
        let mut t = token(None, None, None);
        t.expires_at = Some(1_800_000_000_000);
        let limits = Limits::for_test(10, &[t, token(None, None, None)], &[]);
        assert!(limits.check_expiry_at(0, 1_799_999_999_999).is_ok());
        let e = limits.check_expiry_at(0, 1_800_000_000_000).unwrap_err();
        assert_eq!((e.status, &*e.code), (401, "token_expired"));
        assert!(e.message.contains("2027-01-15T08:00:00Z"), "{}", e.message);
        assert!(limits.check_expiry_at(1, i64::MAX - 1).is_ok());
        // With the real clock: refused exactly when the wall clock says it is past.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(limits.check_expiry(0).is_err(), now_ms >= 1_800_000_000_000);
        assert!(limits.check_expiry(1).is_ok());
    }

    #[test]
    fn refusals_render_as_the_contract_says() {
        let e = Refusal::rate_limited(TokenLimit::Rpm, 5, 11 * SEC + 1).error();
        assert_eq!((e.status, &*e.code), (429, "rate_limited"));
        assert_eq!(e.retry_after.as_deref(), Some(&b"12"[..]));
        assert!(
            e.message.contains("rpm limit (5 requests per minute)"),
            "{}",
            e.message
        );
        let e = Refusal::rate_limited(TokenLimit::Tpm, 40, 1).error();
        assert_eq!(e.retry_after.as_deref(), Some(&b"1"[..]));
        assert!(
            e.message.contains("tpm limit (40 tokens per minute"),
            "{}",
            e.message
        );
        let e = Refusal::rate_limited(TokenLimit::MaxInflight, 2, SEC).error();
        assert!(e
            .message
            .contains("max_inflight limit (2 requests at once)"));
        let e = Refusal::Overloaded.error();
        assert_eq!((e.status, &*e.code), (503, "overloaded"));
    }

    #[test]
    fn memory_per_token_does_not_depend_on_the_limits() {
        // Two cache lines per token, whatever the values.
        assert_eq!(std::mem::size_of::<TokenLimits>(), 128);
        let huge = Limits::for_test(
            1_000_000_000,
            &[token(
                Some(1_000_000_000),
                Some(1_000_000_000),
                Some(1_000_000_000),
            )],
            &[],
        );
        let tiny = Limits::for_test(1, &[token(Some(1), Some(1), Some(1))], &[]);
        assert_eq!(huge.tokens.len(), tiny.tokens.len());
        // Saturating arithmetic: an absurd report cannot wrap the bucket round to "full".
        huge.spend_at(0, u64::MAX, 0);
        tiny.spend_at(0, u64::MAX, 0);
        tiny.spend_at(0, u64::MAX, 0);
        assert!(tiny.admit_at(0, 0, || u64::MAX / 2).is_err());
        assert!(huge.admit_at(0, 0, || 0).is_err());
    }

    fn quota(q: u64) -> TokenConfig {
        let mut t = token(None, None, None);
        t.quota_tokens = Some(q);
        t
    }

    fn exhausted(r: Result<Admission, Refusal>) -> (u64, u64, u64, u64) {
        match r {
            Err(Refusal::QuotaExhausted {
                quota,
                used,
                reserved,
                need,
            }) => (quota, used, reserved, need),
            Err(other) => panic!("refused otherwise: {other:?}"),
            Ok(_) => panic!("admitted"),
        }
    }

    #[test]
    fn quota_reserves_at_admission_and_settles_the_real_usage() {
        // 100 tokens, 40 already settled (the ledger's figure at start).
        let limits = Limits::for_test(100, &[quota(100), token(None, None, None)], &[40, 7]);
        assert!(limits.has_quota(0) && !limits.has_quota(1));
        let mut a = limits.admit(0, 30).unwrap();
        let hold_a = a.take_quota();
        assert!(hold_a.is_some());
        let state = |i| limits.quota_state(i).unwrap();
        assert_eq!((state(0).used, state(0).reserved), (40, 30));
        // 40 + 30 + 31 > 100: refused, and the refusal reserved nothing.
        assert_eq!(exhausted(limits.admit(0, 31)), (100, 40, 30, 31));
        assert_eq!(state(0).reserved, 30);
        // Exactly up to the quota fits.
        let mut b = limits.admit(0, 30).unwrap();
        let hold_b = b.take_quota();
        // The first settles at 16: counted before its reservation goes.
        limits.settle(Some(0), hold_a, 16);
        assert_eq!(
            state(0),
            QuotaState {
                quota: Some(100),
                used: 56,
                reserved: 30
            }
        );
        drop(a);
        // A request that settles over its reservation passes the quota by the difference.
        limits.settle(Some(0), hold_b, 50);
        drop(b);
        assert_eq!(
            state(0),
            QuotaState {
                quota: Some(100),
                used: 106,
                reserved: 0
            }
        );
        assert_eq!(exhausted(limits.admit(0, 0)), (100, 106, 0, 0));
        // A token without a quota is never refused by it, and its usage is still counted.
        let c = limits.admit(1, u64::MAX).unwrap();
        limits.settle(Some(1), None, 9);
        drop(c);
        assert_eq!(
            state(1),
            QuotaState {
                quota: None,
                used: 16,
                reserved: 0
            }
        );
        assert_eq!(limits.used(1), 16);
    }

    #[test]
    fn a_reservation_is_given_back_on_every_path() {
        // Process max_inflight 1: the second request's reservation is taken back on refusal.
        let limits = Limits::for_test(1, &[quota(1000)], &[]);
        let first = limits.admit(0, 100).unwrap();
        assert_eq!(limits.admit(0, 100).err(), Some(Refusal::Overloaded));
        assert_eq!(limits.quota_state(0).unwrap().reserved, 100);
        // Dropped without settling (the connection ended): the reservation goes, nothing used.
        drop(first);
        assert_eq!(limits.quota_state(0).unwrap().reserved, 0);
        assert_eq!(limits.quota_state(0).unwrap().used, 0);
        // A quota refusal takes no rpm.
        let mut t = quota(10);
        t.rpm = Some(1);
        let limits = Limits::for_test(10, &[t], &[]);
        assert!(limits.admit_at(0, 11, || SEC).is_err());
        assert!(limits.admit_at(0, 5, || SEC).is_ok());
    }

    #[test]
    fn quota_never_admits_past_it_across_threads() {
        // 4 threads race for a 1000-token quota with 10-token reservations, never settling:
        // exactly 100 are admitted.
        let limits = Limits::for_test(1_000_000, &[quota(1000)], &[]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Ok(a) = limits.admit(0, 10) {
                            held.push(a);
                        }
                    }
                    held
                })
            })
            .collect();
        let held: Vec<Admission> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(held.len(), 100);
        assert_eq!(limits.quota_state(0).unwrap().reserved, 1000);
        drop(held);
        assert_eq!(limits.quota_state(0).unwrap().reserved, 0);
    }

    #[test]
    fn quota_refusals_say_whether_a_retry_can_help() {
        // Spent: no Retry-After (a quota never refills).
        let e = Refusal::QuotaExhausted {
            quota: 100,
            used: 90,
            reserved: 0,
            need: 20,
        }
        .error();
        assert_eq!((e.status, &*e.code), (429, "quota_exhausted"));
        assert_eq!(e.retry_after, None);
        assert!(
            e.message
                .contains("quota_tokens (100) is spent: 10 tokens left"),
            "{}",
            e.message
        );
        // Blocked by other requests' reservations: they may settle lower, retry in 1 s.
        let e = Refusal::QuotaExhausted {
            quota: 100,
            used: 50,
            reserved: 40,
            need: 20,
        }
        .error();
        assert_eq!(e.retry_after.as_deref(), Some(&b"1"[..]));
        assert!(
            e.message.contains("40 of them are reserved"),
            "{}",
            e.message
        );
    }
}
