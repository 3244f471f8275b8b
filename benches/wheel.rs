//! Per-worker timing wheel vs monoio's own timer.
//!
//! Every figure is per operation (per timer for the 10k groups, via
//! `Throughput::Elements`). The wheel runs without a runtime on synthetic
//! instants; monoio's timer runs inside one monoio runtime with the timer
//! enabled. monoio's arm+expire has to wait for real time to pass, so its
//! figure includes that wait: subtract `expire_10k/monoio_wait_only`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monoio::time::{sleep_until, timeout, Sleep, TimeDriver};
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver};
use ringway::internals::{Timer, Wheel};

type Rt = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

const N: usize = 10_000;
const TICK: Duration = Duration::from_millis(5);

fn runtime() -> Rt {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("build monoio runtime")
}

/// Deadlines spread over 30 s so arms land on several wheel levels.
fn spread(base: Instant, i: usize) -> Instant {
    base + Duration::from_micros((i as u64 * 7_919) % 30_000_000)
}

/// Pins an element of a `Vec<Sleep>` in place.
fn pin_at(v: &mut [Sleep], i: usize) -> Pin<&mut Sleep> {
    // SAFETY: the Vecs passed here are created with capacity N and never
    // pushed past it, so elements never move; they are only removed by
    // `clear()`, which drops them in place. That is the pinning contract.
    unsafe { Pin::new_unchecked(&mut v[i]) }
}

fn poll_once(s: Pin<&mut Sleep>) -> Poll<()> {
    s.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs `op` over batches of at most N items, timing only `op`; `reset`
/// restores the starting state untimed.
fn batched(
    iters: u64,
    mut op: impl FnMut(usize) -> Duration,
    mut reset: impl FnMut(usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let n = (iters - done).min(N as u64) as usize;
        total += op(n);
        reset(n);
        done += n as u64;
    }
    total
}

fn bench_arm(c: &mut Criterion, rt: &mut Rt) {
    let mut g = c.benchmark_group("arm");
    g.bench_function("wheel", |b| {
        let w = Wheel::new(TICK);
        let base = Instant::now();
        let timers: Vec<Timer> = (0..N).map(|_| w.timer()).collect();
        let at: Vec<Instant> = (0..N).map(|i| spread(base, i)).collect();
        b.iter_custom(|iters| {
            batched(
                iters,
                |n| {
                    let start = Instant::now();
                    for (t, &at) in timers[..n].iter().zip(&at) {
                        t.arm_at(at);
                    }
                    start.elapsed()
                },
                |n| timers[..n].iter().for_each(Timer::cancel),
            )
        });
    });
    g.bench_function("monoio_sleep_first_poll", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let base = Instant::now();
                let mut v: Vec<Sleep> = Vec::with_capacity(N);
                let v = &mut v;
                batched(
                    iters,
                    |n| {
                        v.extend((0..n).map(|i| sleep_until(spread(base, i).into())));
                        let start = Instant::now();
                        for i in 0..n {
                            let _ = poll_once(pin_at(v, i));
                        }
                        let took = start.elapsed();
                        v.clear();
                        took
                    },
                    |_| {},
                )
            })
        });
    });
    g.finish();
}

fn bench_rearm(c: &mut Criterion, rt: &mut Rt) {
    let base = Instant::now();
    // same_slot: within one 5 ms tick; diff_slot: alternates between two
    // level-2 slots; sliding: the relay's idle re-arm, 30 s ahead of a clock
    // that moves 100 µs per chunk.
    let patterns: [(&str, Vec<Instant>); 3] = [
        (
            "same_slot",
            (0..1024)
                .map(|i| base + Duration::from_secs(30) + Duration::from_micros(i % 1000))
                .collect(),
        ),
        (
            "diff_slot",
            (0..1024)
                .map(|i| base + Duration::from_secs(if i % 2 == 0 { 30 } else { 60 }))
                .collect(),
        ),
        (
            "sliding",
            (0..1024)
                .map(|i| base + Duration::from_secs(30) + Duration::from_micros(100 * i))
                .collect(),
        ),
    ];
    let mut g = c.benchmark_group("rearm");
    for (name, at) in &patterns {
        g.bench_with_input(BenchmarkId::new("wheel", name), at, |b, at| {
            let w = Wheel::new(TICK);
            let t = w.timer();
            t.arm_at(at[0]);
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters as usize {
                    t.arm_at(at[i & 1023]);
                }
                start.elapsed()
            });
        });
        g.bench_with_input(BenchmarkId::new("monoio_reset", name), at, |b, at| {
            let at: Vec<monoio::time::Instant> = at.iter().map(|&i| i.into()).collect();
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut s = std::pin::pin!(sleep_until(at[0]));
                    let _ = poll_once(s.as_mut());
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        s.as_mut().reset(at[i & 1023]);
                    }
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
}

fn bench_cancel(c: &mut Criterion, rt: &mut Rt) {
    let mut g = c.benchmark_group("cancel");
    g.bench_function("wheel", |b| {
        let w = Wheel::new(TICK);
        let base = Instant::now();
        let timers: Vec<Timer> = (0..N).map(|_| w.timer()).collect();
        let at: Vec<Instant> = (0..N).map(|i| spread(base, i)).collect();
        b.iter_custom(|iters| {
            batched(
                iters,
                |n| {
                    for (t, &at) in timers[..n].iter().zip(&at) {
                        t.arm_at(at);
                    }
                    let start = Instant::now();
                    timers[..n].iter().for_each(Timer::cancel);
                    start.elapsed()
                },
                |_| {},
            )
        });
    });
    g.bench_function("monoio_sleep_drop", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let base = Instant::now();
                let mut v: Vec<Sleep> = Vec::with_capacity(N);
                let v = &mut v;
                batched(
                    iters,
                    |n| {
                        v.extend((0..n).map(|i| sleep_until(spread(base, i).into())));
                        for i in 0..n {
                            let _ = poll_once(pin_at(v, i));
                        }
                        let start = Instant::now();
                        v.clear();
                        start.elapsed()
                    },
                    |_| {},
                )
            })
        });
    });
    g.finish();
}

/// One request phase: arm a deadline, finish before it, disarm.
fn bench_lifecycle(c: &mut Criterion, rt: &mut Rt) {
    let mut g = c.benchmark_group("arm_after_cancel");
    g.bench_function("wheel", |b| {
        let w = Wheel::new(TICK);
        let t = w.timer();
        b.iter(|| {
            t.arm_after(Duration::from_secs(30));
            t.cancel();
        });
    });
    g.bench_function("monoio_timeout_ready", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = timeout(Duration::from_secs(30), std::future::ready(())).await;
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn bench_expire(c: &mut Criterion, rt: &mut Rt) {
    let mut g = c.benchmark_group("expire_10k");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("wheel", |b| {
        let w = Wheel::new(TICK);
        let timers: Vec<Timer> = (0..N).map(|_| w.timer()).collect();
        // Synthetic clock: each iteration runs one second further on.
        let mut base = Instant::now();
        b.iter(|| {
            for (i, t) in timers.iter().enumerate() {
                t.arm_at(base + Duration::from_micros(i as u64 * 97));
            }
            base += Duration::from_secs(1);
            let fired = w.advance_to(base);
            assert_eq!(fired, N);
        });
    });
    g.bench_function("wheel_with_wakers", |b| {
        let w = Wheel::new(TICK);
        let timers: Vec<Timer> = (0..N).map(|_| w.timer()).collect();
        let mut base = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| {
            for (i, t) in timers.iter().enumerate() {
                t.arm_at(base + Duration::from_micros(i as u64 * 97));
                let mut fut = t.expired();
                let _ = Pin::new(&mut fut).poll(&mut cx);
                // Keep the registered waker, as a task awaiting it would.
                std::mem::forget(fut);
            }
            base += Duration::from_secs(1);
            assert_eq!(w.advance_to(base), N);
        });
    });
    g.bench_function("monoio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut v: Vec<Sleep> = Vec::with_capacity(N);
                let v = &mut v;
                let start = Instant::now();
                for _ in 0..iters {
                    let base = Instant::now() + Duration::from_millis(1);
                    v.extend((0..N).map(|i| {
                        sleep_until((base + Duration::from_nanos(i as u64 * 100)).into())
                    }));
                    let mut next = 0;
                    let mut registered = false;
                    std::future::poll_fn(|cx| {
                        // The first poll registers every sleep (the arm);
                        // after that, resume from the first pending one.
                        if !registered {
                            registered = true;
                            for i in 0..N {
                                let _ = pin_at(v, i).poll(cx);
                            }
                        }
                        while next < N {
                            if pin_at(v, next).poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            next += 1;
                        }
                        Poll::Ready(())
                    })
                    .await;
                    v.clear();
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("monoio_wait_only", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let base = Instant::now() + Duration::from_millis(1);
                    sleep_until((base + Duration::from_nanos(N as u64 * 100)).into()).await;
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let mut rt = runtime();
    bench_arm(c, &mut rt);
    bench_rearm(c, &mut rt);
    bench_cancel(c, &mut rt);
    bench_lifecycle(c, &mut rt);
    bench_expire(c, &mut rt);
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
        // Fewer bootstrap resamples: analysis time adds up over 15 benches.
        .nresamples(10_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = all
}
criterion_main!(benches);
