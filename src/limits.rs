//! Limits that hold for the whole process, across workers: `server.max_inflight`, and each
//! token's `expires_at`, `rpm`, `tpm` and `max_inflight`.
//!
//! Owns: the process-wide inflight count and one [`TokenLimits`] block per configured token,
//! both created once at start from the config and leaked (`&'static`, so no request touches a
//! shared reference count), and the rules that admit a request or refuse it ([`Refusal`]). An
//! admitted request holds an [`Admission`] to its end; dropping it gives back its process slot
//! and its token slot, on every path.
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
//!
//! Order in `relay/admit.rs`: the expiry at authentication, before any body byte; after the
//! body, the token's `max_inflight`, `tpm` (read only), `rpm` (the one take), then the
//! process's `max_inflight`. A refusal gives back what the earlier checks took: the token
//! slot by its guard, the rpm take by [`Bucket::give_back_one`].
//!
//! Memory is bounded by the token count, never by the limits' values: one fixed-size,
//! cache-line block per token (two buckets of one word each, one inflight count). A token
//! without limits costs one branch per check and never reads the clock.
//!
//! The rate arithmetic takes "now" as a parameter (`*_at`), so the tests drive the clock
//! without sleeping.
//!
//! Must not: lock, allocate for an admitted request, or read the clock for a token without
//! `rpm`, `tpm` or `expires_at`.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire},
};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{format_rfc3339, TokenConfig};
use crate::error::RelayError;
use crate::provider::Usage;

/// The span `rpm` and `tpm` count over, in nanoseconds.
const WINDOW_NS: u64 = 60_000_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// The process-wide state behind the limits; created once at start and leaked (`&'static`).
#[repr(align(64))]
pub struct Limits {
    inflight: AtomicU64,
    max_inflight: u64,
    /// Zero on the buckets' clock.
    epoch: Instant,
    /// One block per token, in config order (the router's token index).
    tokens: Box<[TokenLimits]>,
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
}

impl Refusal {
    fn rate_limited(limit: TokenLimit, value: u64, wait_ns: u64) -> Refusal {
        Refusal::RateLimited {
            limit,
            value,
            retry_after_secs: wait_ns.div_ceil(NS_PER_SEC).max(1),
        }
    }

    pub fn is_overloaded(&self) -> bool {
        matches!(self, Refusal::Overloaded)
    }

    /// The answer: 503 `overloaded`, or 429 `rate_limited` naming the limit.
    pub fn error(&self) -> RelayError {
        let Refusal::RateLimited {
            limit,
            value,
            retry_after_secs: secs,
        } = *self
        else {
            return RelayError::overloaded();
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

impl Limits {
    /// The limits for `max_inflight` and `tokens` (in config order).
    pub fn new(max_inflight: usize, tokens: &[TokenConfig]) -> &'static Limits {
        Box::leak(Box::new(Limits {
            inflight: AtomicU64::new(0),
            max_inflight: max_inflight as u64,
            epoch: Instant::now(),
            tokens: tokens
                .iter()
                .map(|t| TokenLimits {
                    expires_at: t.expires_at.unwrap_or(i64::MAX),
                    max_inflight: t.max_inflight.unwrap_or(u64::MAX),
                    inflight: AtomicU64::new(0),
                    rpm: Bucket::new(t.rpm),
                    tpm: Bucket::new(t.tpm),
                })
                .collect(),
        }))
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

    /// Admits a request of `token` under its limits and the process's `max_inflight`.
    #[inline]
    pub fn admit(&'static self, token: usize) -> Result<Admission, Refusal> {
        self.admit_at(token, || self.now_ns())
    }

    /// [`Limits::admit`] with the clock as a parameter; `now` is asked at most once, and only
    /// for a token with `rpm` or `tpm`.
    fn admit_at(
        &'static self,
        token: usize,
        now: impl FnOnce() -> u64,
    ) -> Result<Admission, Refusal> {
        let Some(t) = self.tokens.get(token) else {
            let process = self.admit_process().ok_or(Refusal::Overloaded)?;
            return Ok(Admission {
                _process: process,
                _token: None,
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
            Some(TokenSlot(t))
        } else {
            None
        };
        // From here on, an early return drops `token_slot`: the token's slot goes back.
        let mut took_rpm = false;
        if t.rpm.is_set() || t.tpm.is_set() {
            let now = now();
            if t.tpm.is_set() {
                if let Err(wait) = t.tpm.check_at(now) {
                    return Err(Refusal::rate_limited(
                        TokenLimit::Tpm,
                        t.tpm.per_minute,
                        wait,
                    ));
                }
            }
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
        })
    }

    /// A slot under the process's `max_inflight`, or `None` when the whole process is at it.
    #[inline]
    fn admit_process(&'static self) -> Option<InflightSlot> {
        if self.inflight.fetch_add(1, AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, AcqRel);
            return None;
        }
        Some(InflightSlot(self))
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

/// One admitted request's share of the limits; dropping it gives them back.
pub struct Admission {
    _process: InflightSlot,
    _token: Option<TokenSlot>,
}

/// One admitted request's share of `server.max_inflight`.
struct InflightSlot(&'static Limits);

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, AcqRel);
    }
}

/// One admitted request's share of its token's `max_inflight`.
struct TokenSlot(&'static TokenLimits);

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
            Err(Refusal::Overloaded) => panic!("overloaded, not rate limited"),
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
        let limits = Limits::new(5, &[token(None, None, None)]);
        let held: Vec<Admission> = (0..5).map(|_| limits.admit(0).unwrap()).collect();
        assert_eq!(limits.admit(0).err(), Some(Refusal::Overloaded));
        // Many threads hammering a full limit never get through, and leave the count as it was.
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..10_000).all(|_| limits.admit(0).is_err())))
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(limits.inflight(), 5);
        drop(held);
        assert_eq!(limits.inflight(), 0);
        assert!(limits.admit(0).is_ok());
    }

    #[test]
    fn rpm_is_a_burst_of_rpm_then_one_every_sixty_over_rpm_seconds() {
        let limits = Limits::new(100, &[token(Some(5), None, None)]);
        let t0 = 1_000 * SEC;
        for i in 0..5 {
            assert!(limits.admit_at(0, || t0 + i).is_ok(), "request {i}");
        }
        // The sixth: a request's worth (12 s) refills 12 s after the first was taken.
        assert_eq!(
            retry_after(limits.admit_at(0, || t0)),
            (TokenLimit::Rpm, 12)
        );
        assert_eq!(
            retry_after(limits.admit_at(0, || t0 + 3 * SEC)),
            (TokenLimit::Rpm, 9)
        );
        // Refused requests took nothing: at 12 s exactly one more fits, then none.
        assert!(limits.admit_at(0, || t0 + 12 * SEC + 4).is_ok());
        assert_eq!(
            retry_after(limits.admit_at(0, || t0 + 12 * SEC + 5)),
            (TokenLimit::Rpm, 12)
        );
        // After a quiet minute the whole burst is back, and never more than it.
        let t1 = t0 + 200 * SEC;
        for i in 0..5 {
            assert!(limits.admit_at(0, || t1).is_ok(), "request {i}");
        }
        assert!(limits.admit_at(0, || t1).is_err());
        // Steady state: one every 12 s, never a second one early.
        for k in 1..=10 {
            let at = t1 + k * 12 * SEC;
            assert!(limits.admit_at(0, || at - SEC).is_err(), "step {k} early");
            assert!(limits.admit_at(0, || at).is_ok(), "step {k}");
        }
    }

    #[test]
    fn rpm_retry_after_is_whole_seconds_at_least_one() {
        let limits = Limits::new(100, &[token(Some(7), None, None)]);
        let t0 = 50 * SEC;
        for _ in 0..7 {
            assert!(limits.admit_at(0, || t0).is_ok());
        }
        // 60 s / 7 = 8.57 s: rounded up.
        assert_eq!(retry_after(limits.admit_at(0, || t0)), (TokenLimit::Rpm, 9));
        // Just before the refill: still at least 1.
        assert_eq!(
            retry_after(limits.admit_at(0, || t0 + 60 * SEC / 7 - 10)),
            (TokenLimit::Rpm, 1)
        );
        let one = Limits::new(100, &[token(Some(1), None, None)]);
        assert!(one.admit_at(0, || t0).is_ok());
        assert_eq!(retry_after(one.admit_at(0, || t0)), (TokenLimit::Rpm, 60));
    }

    #[test]
    fn rpm_holds_exactly_across_threads() {
        let limits = Limits::new(1_000_000, &[token(Some(1000), None, None)]);
        let now = 10 * SEC;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Ok(a) = limits.admit_at(0, || now) {
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
        let limits = Limits::new(100, &[token(None, Some(40), None)]);
        let t0 = 5 * SEC;
        // 16 tokens a request: 0, 16 and 32 are under 40, so three are admitted.
        let mut passed = 0;
        for i in 0..6 {
            let now = t0 + i * 10_000_000;
            if limits.admit_at(0, || now).is_ok() {
                passed += 1;
                limits.spend_at(0, 16, now);
            }
        }
        assert_eq!(passed, 3);
        // 48 taken out of 40: 8 over, paid back at 40 a minute in 12 s.
        let now = t0 + 60_000_000;
        assert_eq!(
            retry_after(limits.admit_at(0, || now)),
            (TokenLimit::Tpm, 12)
        );
        assert!(limits.admit_at(0, || now + 11 * SEC).is_err());
        assert!(limits.admit_at(0, || now + 12 * SEC).is_ok());
        // A large report is a debt: 400 tokens at 40/min keep the token out for ~9 minutes.
        let t1 = t0 + 3600 * SEC;
        assert!(limits.admit_at(0, || t1).is_ok());
        limits.spend_at(0, 400, t1);
        assert_eq!(
            retry_after(limits.admit_at(0, || t1)),
            (TokenLimit::Tpm, 540)
        );
        assert!(limits.admit_at(0, || t1 + 539 * SEC).is_err());
        assert!(limits.admit_at(0, || t1 + 541 * SEC).is_ok());
    }

    #[test]
    fn spend_counts_prompt_and_completion_and_ignores_tokens_without_tpm() {
        let limits = Limits::new(
            100,
            &[token(None, Some(100), None), token(None, None, None)],
        );
        limits.spend(Some(0), usage(99));
        assert!(limits.admit(0).is_ok());
        limits.spend(Some(0), usage(51));
        assert!(matches!(
            limits.admit(0),
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
        assert!(limits.admit(1).is_ok());
    }

    #[test]
    fn token_max_inflight_is_exact_and_released_on_drop() {
        let limits = Limits::new(100, &[token(None, None, Some(2)), token(None, None, None)]);
        let a = limits.admit(0).unwrap();
        let b = limits.admit(0).unwrap();
        assert_eq!(
            limits.admit(0).err(),
            Some(Refusal::RateLimited {
                limit: TokenLimit::MaxInflight,
                value: 2,
                retry_after_secs: 1
            })
        );
        // Another token is not affected.
        let other = limits.admit(1).unwrap();
        assert_eq!(limits.token_inflight(0), 2);
        assert_eq!(limits.inflight(), 3);
        drop(a);
        let c = limits.admit(0).unwrap();
        drop((b, c, other));
        assert_eq!((limits.token_inflight(0), limits.inflight()), (0, 0));
        // Threads racing for two slots never hold more than two.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..5000 {
                        let held = limits.admit(0);
                        assert!(limits.token_inflight(0) <= 2);
                        drop(held);
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
        let limits = Limits::new(1, &[token(Some(2), Some(1000), Some(5))]);
        let now = 7 * SEC;
        let first = limits.admit_at(0, || now).unwrap();
        // Refused by the process's max_inflight: its rpm take and its token slot come back.
        assert_eq!(limits.admit_at(0, || now).err(), Some(Refusal::Overloaded));
        assert_eq!(limits.admit_at(0, || now).err(), Some(Refusal::Overloaded));
        assert_eq!(limits.token_inflight(0), 1);
        drop(first);
        // The second of rpm 2 is still there (without the give-back it would be gone).
        let second = limits.admit_at(0, || now).unwrap();
        drop(second);
        assert!(matches!(
            limits.admit_at(0, || now),
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
                limits.admit_at(0, || later),
                Err(Refusal::RateLimited {
                    limit: TokenLimit::Tpm,
                    ..
                })
            ));
        }
        let paid = later + SEC;
        assert!(limits.admit_at(0, || paid).is_ok());
        assert!(limits.admit_at(0, || paid).is_ok());
        assert_eq!((limits.token_inflight(0), limits.inflight()), (0, 0));
    }

    #[test]
    fn a_token_without_rate_limits_never_reads_the_clock() {
        let limits = Limits::new(10, &[token(None, None, Some(3))]);
        let a = limits.admit_at(0, || panic!("clock read")).unwrap();
        drop(a);
        let limits = Limits::new(10, &[token(None, None, None)]);
        assert!(limits.admit_at(0, || panic!("clock read")).is_ok());
    }

    #[test]
    fn expiry_is_checked_against_the_wall_clock_to_the_millisecond() {
        let mut t = token(None, None, None);
        t.expires_at = Some(1_800_000_000_000);
        let limits = Limits::new(10, &[t, token(None, None, None)]);
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
        // One cache line per token, whatever the values: the state is three words.
        assert_eq!(std::mem::size_of::<TokenLimits>(), 64);
        let huge = Limits::new(
            1_000_000_000,
            &[token(
                Some(1_000_000_000),
                Some(1_000_000_000),
                Some(1_000_000_000),
            )],
        );
        let tiny = Limits::new(1, &[token(Some(1), Some(1), Some(1))]);
        assert_eq!(huge.tokens.len(), tiny.tokens.len());
        // Saturating arithmetic: an absurd report cannot wrap the bucket round to "full".
        huge.spend_at(0, u64::MAX, 0);
        tiny.spend_at(0, u64::MAX, 0);
        tiny.spend_at(0, u64::MAX, 0);
        assert!(tiny.admit_at(0, || u64::MAX / 2).is_err());
        assert!(huge.admit_at(0, || 0).is_err());
    }
}
