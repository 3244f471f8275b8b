//! The wheel against a brute-force model, and its timers and wakers.

use super::*;
use std::sync::{Arc, Mutex};
use std::task::Wake;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Log-uniform in [1, 2^bits), so every wheel level gets entries.
    fn log_uniform(&mut self, bits: u64) -> u64 {
        let b = self.below(bits);
        (1u64 << b) + self.below(1u64 << b)
    }
}

struct Recorder {
    id: usize,
    log: Arc<Mutex<Vec<usize>>>,
}
impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.log.lock().unwrap().push(self.id);
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn fires_at_its_tick_not_before() {
    let w = Wheel::new(ms(10));
    let o = w.origin;
    let t = w.timer();
    t.arm_at(o + ms(25));
    assert_eq!(w.armed(), 1);
    assert_eq!(t.deadline(), Some(o + ms(25)));
    assert_eq!(w.advance_to(o + ms(24)), 0);
    assert!(!t.is_expired());
    // 25 ms rounds up to tick 3 (30 ms): not fired at 29.9 ms.
    assert_eq!(w.advance_to(o + Duration::from_micros(29_999)), 0);
    assert!(!t.is_expired());
    assert_eq!(w.advance_to(o + ms(30)), 1);
    assert!(t.is_expired());
    assert!(!t.is_armed());
    assert_eq!(t.deadline(), Some(o + ms(25)));
    assert_eq!(w.armed(), 0);
    assert_eq!(w.advance_to(o + ms(1000)), 0);
}

#[test]
fn past_deadline_fires_on_next_advance() {
    let w = Wheel::new(ms(5));
    let o = w.origin;
    w.advance_to(o + ms(100));
    let t = w.timer();
    t.arm_at(o + ms(50));
    assert!(!t.is_expired());
    assert_eq!(w.advance_to(o + ms(100)), 1);
    assert!(t.is_expired());
    // Before the origin too.
    t.arm_at(o.checked_sub(ms(1)).unwrap_or(o));
    assert_eq!(w.advance_to(o), 1);
}

#[test]
fn rearm_moves_deadline_both_ways() {
    let w = Wheel::new(ms(1));
    let o = w.origin;
    let t = w.timer();
    t.arm_at(o + ms(100));
    t.arm_at(o + ms(300));
    assert_eq!(w.armed(), 1);
    assert_eq!(w.advance_to(o + ms(299)), 0);
    assert_eq!(w.advance_to(o + ms(300)), 1);
    t.arm_at(o + ms(5_000));
    t.arm_at(o + ms(400));
    assert_eq!(w.advance_to(o + ms(400)), 1);
    // Same-slot re-arm (cheap path) still takes the new tick.
    t.arm_at(o + ms(70_000));
    t.arm_at(o + ms(70_001));
    assert_eq!(w.advance_to(o + ms(70_000)), 0);
    assert_eq!(w.advance_to(o + ms(70_001)), 1);
    // Re-arm clears expired.
    t.arm_at(o + ms(80_000));
    assert!(!t.is_expired());
}

#[test]
fn cancel_stops_it() {
    let w = Wheel::new(ms(5));
    let o = w.origin;
    let t = w.timer();
    t.arm_at(o + ms(20));
    t.cancel();
    assert_eq!(w.armed(), 0);
    assert_eq!(t.deadline(), None);
    assert_eq!(w.advance_to(o + ms(1_000)), 0);
    assert!(!t.is_expired());
    t.arm_at(o + ms(1_005));
    assert_eq!(w.advance_to(o + ms(2_000)), 1);
    assert!(t.is_expired());
    t.cancel();
    assert!(!t.is_expired());
    // Cancel while due (reached but not fired).
    t.arm_at(o);
    t.cancel();
    assert_eq!(w.advance_to(o + ms(3_000)), 0);
}

#[test]
fn slab_reuse_after_drop() {
    let w = Wheel::new(ms(5));
    let o = w.origin;
    let a = w.timer();
    let b = w.timer();
    a.arm_at(o + ms(50));
    b.arm_at(o + ms(50));
    let (a_idx, a_gen) = (a.idx, a.gen);
    drop(a);
    assert_eq!(w.armed(), 1);
    let c = w.timer();
    assert_eq!(c.idx, a_idx);
    assert_ne!(c.gen, a_gen);
    assert!(!c.is_armed());
    assert_eq!(c.deadline(), None);
    assert_eq!(w.inner.borrow().entries.len(), 2);
    assert_eq!(w.advance_to(o + ms(50)), 1);
    assert!(b.is_expired() && !c.is_expired());
    // Dropped while on the due list.
    c.arm_at(o);
    drop(c);
    assert_eq!(w.advance_to(o + ms(60)), 0);
    drop(b);
    assert_eq!(w.inner.borrow().entries.len(), 2);
}

#[test]
fn stale_handle_is_inert() {
    let w = Wheel::new(ms(5));
    let t = w.timer();
    let stale = Timer {
        wheel: Rc::clone(&w),
        idx: t.idx,
        gen: t.gen.wrapping_add(7),
    };
    stale.arm_at(w.origin);
    stale.cancel();
    assert!(!stale.is_expired());
    assert_eq!(stale.deadline(), None);
    drop(stale);
    assert_eq!(w.armed(), 0);
    let inert = Timer {
        wheel: Rc::clone(&w),
        idx: NIL,
        gen: 0,
    };
    inert.arm_after(ms(1));
    drop(inert);
    t.arm_at(w.origin);
    assert_eq!(w.advance_to(w.origin), 1);
}

#[test]
fn expired_future_follows_rearm_and_wakes_once() {
    let w = Wheel::new(ms(5));
    let o = w.origin;
    let t = w.timer();
    let log = Arc::new(Mutex::new(Vec::new()));
    let waker = Waker::from(Arc::new(Recorder {
        id: 1,
        log: Arc::clone(&log),
    }));
    let mut cx = Context::from_waker(&waker);
    let mut fut = t.expired();
    // Disarmed: pending, and stays so.
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    assert_eq!(w.advance_to(o + ms(100)), 0);
    t.arm_at(o + ms(200));
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    t.arm_at(o + ms(300));
    assert_eq!(w.advance_to(o + ms(250)), 0);
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(w.advance_to(o + ms(300)), 1);
    assert_eq!(*log.lock().unwrap(), vec![1]);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_ready());
    drop(fut);

    // Expired future dropped while pending, then timer dropped: no wake,
    // no waker left behind.
    let t2 = w.timer();
    t2.arm_at(o + ms(400));
    let mut fut2 = t2.expired();
    assert!(Pin::new(&mut fut2).poll(&mut cx).is_pending());
    drop(fut2);
    assert!(w.inner.borrow().entries[t2.idx as usize].waker.is_none());
    drop(t2);
    assert_eq!(w.advance_to(o + ms(500)), 0);
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// Random deadlines over all six levels and beyond MAX_SPAN (1 ns tick),
/// random re-arms, cancels, drops and advance steps, checked against a
/// brute-force model: nothing fires early, everything whose tick has
/// been reached has fired, each arm fires exactly once, and within one
/// advance timers fire in deadline order.
#[test]
fn matches_brute_force_model() {
    for seed in [0x9e37_79b9_7f4a_7c15, 1, 0xdead_beef_cafe_f00d] {
        brute_force_model(seed);
    }
}

fn brute_force_model(seed: u64) {
    let w = Wheel::new(Duration::from_nanos(1));
    let o = w.origin;
    let mut rng = Rng(seed);
    let log = Arc::new(Mutex::new(Vec::new()));
    const N: usize = 1500;
    let timers: Vec<Option<Timer>> = (0..N).map(|_| Some(w.timer())).collect();
    let mut timers = timers;
    // Model: armed deadline (ns since origin) per timer; fire count.
    let mut model: Vec<Option<u64>> = vec![None; N];
    let mut fired_count = vec![0u32; N];
    let mut arms = vec![0u32; N];
    let wakers: Vec<Waker> = (0..N)
        .map(|id| {
            Waker::from(Arc::new(Recorder {
                id,
                log: Arc::clone(&log),
            }))
        })
        .collect();
    let mut now: u64 = 0;
    let mut total_fired = 0usize;
    let at = |ns: u64| o + Duration::from_nanos(ns);

    for step in 0..4000 {
        // Mutate a few timers.
        for _ in 0..rng.below(8) {
            let i = rng.below(N as u64) as usize;
            let action = rng.below(10);
            match (&timers[i], action) {
                (None, _) => {
                    timers[i] = Some(w.timer());
                    model[i] = None;
                }
                (Some(_), 0) => {
                    timers[i] = None;
                    model[i] = None;
                }
                (Some(t), 1) => {
                    t.cancel();
                    model[i] = None;
                }
                (Some(t), _) => {
                    // Mostly future, sometimes past deadlines; up to
                    // 2^38 ns ahead, past the wheel's 2^36-tick span.
                    let d = if rng.below(20) == 0 {
                        now.saturating_sub(rng.log_uniform(20))
                    } else {
                        now + rng.log_uniform(38)
                    };
                    t.arm_at(at(d));
                    model[i] = Some(d);
                    arms[i] += 1;
                    let mut fut = t.expired();
                    let mut cx = Context::from_waker(&wakers[i]);
                    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
                    // Keep the waker registered past the future's drop.
                    std::mem::forget(fut);
                }
            }
        }
        assert_eq!(w.armed(), model.iter().filter(|m| m.is_some()).count());

        let prev_now = now;
        now += match rng.below(4) {
            0 => rng.below(64),
            1 => rng.log_uniform(20),
            2 => rng.log_uniform(32),
            _ => rng.log_uniform(37) * u64::from(step % 50 == 0),
        };
        log.lock().unwrap().clear();
        let n = w.advance_to(at(now));
        total_fired += n;
        let order = std::mem::take(&mut *log.lock().unwrap());
        assert_eq!(order.len(), n, "each fire wakes exactly one waiter");
        let mut last = 0;
        for &i in &order {
            let d = model[i].expect("fired timer was armed in the model");
            assert!(d <= now, "fired early: deadline {d} at now {now}");
            // Deadlines armed in the past go straight to the due list in
            // arm order; the ones the wheel reached fire in time order.
            if d > prev_now {
                assert!(d >= last, "fired out of order");
                last = d;
            }
            model[i] = None;
            fired_count[i] += 1;
        }
        for (i, t) in timers.iter().enumerate() {
            let Some(t) = t else { continue };
            if let Some(d) = model[i] {
                assert!(d > now, "deadline {d} reached at {now} but not fired");
                assert!(!t.is_expired());
                assert_eq!(t.deadline(), Some(at(d)));
            }
        }
    }
    assert_eq!(
        total_fired,
        fired_count.iter().map(|&c| c as usize).sum::<usize>()
    );
    assert!(fired_count.iter().zip(&arms).all(|(f, a)| f <= a));
    assert!(
        total_fired > 1000,
        "test should exercise firing: {total_fired}"
    );
    // Everything left fires once time runs far enough.
    let left = w.armed();
    assert_eq!(w.advance_to(at(now + (1 << 40))), left);
    assert_eq!(w.armed(), 0);
    // Forgotten futures left wakers in slots; dropping timers frees them.
    drop(timers);
}

#[test]
fn covers_every_level() {
    let w = Wheel::new(Duration::from_nanos(1));
    let o = w.origin;
    let timers: Vec<Timer> = (0..=LEVELS as u32 + 1)
        .map(|l| {
            let t = w.timer();
            t.arm_at(o + Duration::from_nanos((1u64 << (l * SLOT_BITS)) + 3));
            t
        })
        .collect();
    let levels: Vec<usize> = timers
        .iter()
        .map(|t| w.inner.borrow().entries[t.idx as usize].list as usize / SLOTS)
        .collect();
    assert_eq!(levels, vec![0, 1, 2, 3, 4, 5, 5, 5]);
    for (l, t) in timers.iter().enumerate() {
        let d = (1u64 << (l as u32 * SLOT_BITS)) + 3;
        assert_eq!(w.advance_to(o + Duration::from_nanos(d - 1)), 0);
        assert_eq!(w.advance_to(o + Duration::from_nanos(d)), 1, "level {l}");
        assert!(t.is_expired());
    }
}

fn runtime() -> monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("build monoio runtime")
}

#[test]
fn drive_fires_on_monoio() {
    runtime().block_on(async {
        let w = Wheel::new(ms(5));
        monoio::spawn(Rc::clone(&w).drive());
        let t = w.timer();
        let start = Instant::now();
        t.arm_after(ms(50));
        t.expired().await;
        let took = start.elapsed();
        assert!(took >= ms(50), "fired early: {took:?}");
        assert!(took < ms(500), "fired far too late: {took:?}");
        assert!(t.is_expired());
        assert_eq!(w.armed(), 0);
    });
}

#[test]
fn drive_wakes_from_park_and_for_earlier_deadline() {
    runtime().block_on(async {
        let w = Wheel::new(ms(5));
        monoio::spawn(Rc::clone(&w).drive());
        // Let the driver park with nothing armed.
        monoio::time::sleep(ms(20)).await;
        let late = w.timer();
        late.arm_after(ms(2_000));
        monoio::time::sleep(ms(10)).await;
        // The driver now sleeps towards a far tick; an earlier arm must
        // wake it.
        let t = w.timer();
        let start = Instant::now();
        t.arm_after(ms(30));
        t.expired().await;
        let took = start.elapsed();
        assert!(took >= ms(30), "fired early: {took:?}");
        assert!(took < ms(300), "driver was not woken: {took:?}");
        assert!(!late.is_expired());
        drop(late);
        // Re-arm while the future is pending moves it.
        let start = Instant::now();
        t.arm_after(ms(500));
        let exp = t.expired();
        monoio::select! {
            _ = exp => panic!("re-armed timer fired early"),
            _ = monoio::time::sleep(ms(40)) => {}
        }
        t.arm_after(ms(10));
        t.expired().await;
        let took = start.elapsed();
        assert!(took >= ms(50) && took < ms(400), "took {took:?}");
    });
}

#[test]
fn cutoff_moves_later_timers_to_it_and_leaves_earlier_ones() {
    let w = Wheel::new(ms(10));
    let o = w.origin;
    let early = w.timer();
    let late = w.timer();
    let far = w.timer();
    let idle = w.timer();
    early.arm_at(o + ms(50));
    late.arm_at(o + ms(5_000));
    far.arm_at(o + Duration::from_secs(3_600));
    assert_eq!(w.cutoff(), None);
    w.set_cutoff(o + ms(200));
    assert_eq!(late.cutoff(), Some(o + ms(200)));
    assert_eq!(early.deadline(), Some(o + ms(50)));
    assert_eq!(late.deadline(), Some(o + ms(200)));
    assert_eq!(far.deadline(), Some(o + ms(200)));
    // A disarmed timer stays disarmed.
    assert!(!idle.is_armed());
    assert_eq!(w.advance_to(o + ms(60)), 1);
    assert!(early.is_expired() && !late.is_expired());
    assert_eq!(w.advance_to(o + ms(199)), 0);
    assert_eq!(w.advance_to(o + ms(200)), 2);
    assert!(late.is_expired() && far.is_expired());
    assert_eq!(w.armed(), 0);
    // Later arms are not clamped by the wheel itself (the deadline set does that).
    idle.arm_at(o + ms(1_000));
    assert_eq!(idle.deadline(), Some(o + ms(1_000)));
}
