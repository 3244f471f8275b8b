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
mod tests;
