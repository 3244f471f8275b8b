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
