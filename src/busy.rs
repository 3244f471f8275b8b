//! Busy polling (`[server] busy_poll`): after the worker's last request event, keep reaping
//! completions for a window instead of going to sleep in the kernel.
//!
//! Owns: the per-worker spinner task, the worker's activity counter, and finding the worker's
//! own io_uring fd at start-up.
//!
//! Must not: spin without a bound. The spinner stops one window after the last activity and
//! then waits, holding nothing, until the next request event wakes it; with `busy_poll = "0s"`
//! (the default) it is never spawned.
//!
//! Why it exists: on a VM an idle vCPU halts, and waking it costs an exit to the host and back
//! on every event that arrives while the worker sleeps. A relay pays that twice per request
//! (the request, then the upstream's answer) where talking to the upstream directly pays it
//! zero times on the relay's core. Spinning through the gap trades CPU for that latency.
//!
//! Why the raw `io_uring_enter`: with `DEFER_TASKRUN` the kernel posts completions only when
//! the ring's own thread enters with `IORING_ENTER_GETEVENTS`, and monoio enters that way only
//! when it parks. A task that merely yields would spin without ever seeing a completion. The
//! epoll driver needs no help: monoio polls it with a zero timeout whenever a task is ready.

use std::cell::Cell;
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Mutex;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// What the relay tells the spinner: a counter bumped at request events, and the spinner's
/// waker while it waits for one.
#[derive(Default)]
pub struct Activity {
    events: Cell<u64>,
    spinner: Cell<Option<Waker>>,
}

impl AsRef<Activity> for Activity {
    fn as_ref(&self) -> &Activity {
        self
    }
}

impl Activity {
    /// A request event happened (a head arrived, a response finished). One increment when busy
    /// polling is off or already spinning; one wake when the spinner was waiting.
    #[inline]
    pub fn note(&self) {
        self.events.set(self.events.get().wrapping_add(1));
        if let Some(w) = self.spinner.take() {
            w.wake();
        }
    }

    fn events(&self) -> u64 {
        self.events.get()
    }
}

/// How the spinner makes the kernel post completions for this worker's driver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reaper {
    /// epoll, or a ring without `DEFER_TASKRUN`: monoio's own zero-timeout poll suffices.
    Driver,
    /// A `DEFER_TASKRUN` ring: enter it with `GETEVENTS` on every turn.
    Ring(RawFd),
    /// A `DEFER_TASKRUN` ring whose fd could not be told apart: busy polling stays off.
    Unknown,
}

/// Serialises ring construction with the fd scan that identifies the new ring, so two workers
/// starting at once cannot take each other's ring.
static RING_SETUP: Mutex<()> = Mutex::new(());

/// Build something that creates one io_uring instance on this thread and, when `find` is set
/// (busy polling is on), return it with the new ring's fd if exactly one new ring fd appeared
/// (otherwise `None`: busy polling is then left off for this worker rather than entering a ring
/// that may belong to someone else). Without `find` nothing is scanned or locked.
pub fn build_and_find_ring<T>(find: bool, build: impl FnOnce() -> T) -> (T, Option<RawFd>) {
    if !find {
        return (build(), None);
    }
    let _guard = RING_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let before = io_uring_fds();
    let built = build();
    let after = io_uring_fds();
    let mut new = after.difference(&before);
    let fd = match (new.next(), new.next()) {
        (Some(&fd), None) => Some(fd),
        _ => None,
    };
    (built, fd)
}

fn io_uring_fds() -> HashSet<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target.as_os_str() == "anon_inode:[io_uring]").then_some(fd)
        })
        .collect()
}

/// Run deferred completions of this thread's ring without waiting (returns at once).
fn reap(ring: RawFd) {
    const IORING_ENTER_GETEVENTS: libc::c_uint = 1;
    // SAFETY: io_uring_enter with nothing to submit and min_complete 0 only runs the ring's
    // pending task work and posts completions to the CQ that monoio reads; it touches no
    // memory of ours. The fd is this thread's own ring (found at its construction).
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ring,
            0 as libc::c_uint,
            0 as libc::c_uint,
            IORING_ENTER_GETEVENTS,
            std::ptr::null::<libc::c_void>(),
            0 as libc::size_t,
        );
    }
}

/// The spinner: one per worker when `busy_poll` is set. While events keep coming less than
/// `busy_poll` (the window) apart it stays runnable, so the runtime never sleeps; one window
/// after the last event it waits for the next one with nothing armed.
///
/// Two rules keep it from starving anything:
/// - it never wakes itself from inside its own poll (monoio puts such a task back at the front
///   of the run queue, ahead of every connection task); a second task bounces the wake, so
///   the spinner goes to the back of the queue like any woken task;
/// - at least once a millisecond it lets the runtime park with a zero timeout (a monoio timer
///   that is already due), because monoio's timers and cross-thread wakes (DNS answers from
///   the blocking pool) are only processed when the runtime parks.
///
/// `ring` is the worker's own `DEFER_TASKRUN` ring to enter on every turn, or `None` where
/// monoio's own zero-timeout poll posts completions ([`Reaper::Driver`]).
pub async fn spin<W: AsRef<Activity>>(worker: Rc<W>, window: Duration, ring: Option<RawFd>) {
    let activity: &Activity = (*worker).as_ref();
    let bounce = Rc::new(Bounce::default());
    // The bouncer lives exactly as long as the spinner: it is dropped with this future's task
    // only if the worker shuts down, which ends both.
    monoio::spawn(bouncer(bounce.clone()));
    let zero_park = monoio::time::sleep(Duration::ZERO);
    let mut zero_park = std::pin::pin!(zero_park);
    let mut seen = activity.events();
    loop {
        std::future::poll_fn(|cx| {
            if activity.events() != seen {
                return Poll::Ready(());
            }
            activity.spinner.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        seen = activity.events();
        let mut last = Instant::now();
        let mut parked = last;
        loop {
            // While this task is runnable monoio never sleeps in the ring, and (with
            // DEFER_TASKRUN) only such an enter lets the kernel post completions.
            if let Some(ring) = ring {
                reap(ring);
            }
            let now = Instant::now();
            let events = activity.events();
            if events != seen {
                seen = events;
                last = now;
            } else if now.duration_since(last) >= window {
                break;
            } else {
                // Kernel threads of this CPU (ksoftirqd running loopback and NIC receive work,
                // kworkers) would otherwise wait for the spinner's whole time slice, which
                // showed as a 1-3 ms step at p95 under load. A quiet turn offers them the CPU.
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            if now.duration_since(parked) >= PARK_EVERY {
                // A timer in the current millisecond tick but past the last one processed:
                // the runtime's next park has a zero timeout and processes timers and foreign
                // wakes, then fires this.
                let due = now.checked_sub(PARK_EVERY).unwrap_or(now);
                zero_park
                    .as_mut()
                    .reset(monoio::time::Instant::from_std(due));
                zero_park.as_mut().await;
                parked = Instant::now();
            } else {
                bounce.yield_now().await;
            }
        }
    }
}

/// monoio's timer resolution: one zero-timeout park per tick keeps timers on time.
const PARK_EVERY: Duration = Duration::from_millis(1);

/// Hands the spinner's wake to a second task, so that it is scheduled behind every task that
/// is already ready.
#[derive(Default)]
struct Bounce {
    spinner: Cell<Option<Waker>>,
    bouncer: Cell<Option<Waker>>,
}

impl Bounce {
    async fn yield_now(&self) {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            self.spinner.set(Some(cx.waker().clone()));
            if let Some(w) = self.bouncer.take() {
                w.wake();
            }
            Poll::Pending
        })
        .await
    }
}

async fn bouncer(bounce: Rc<Bounce>) {
    std::future::poll_fn(|cx| {
        if let Some(w) = bounce.spinner.take() {
            w.wake();
        }
        bounce.bouncer.set(Some(cx.waker().clone()));
        Poll::<()>::Pending
    })
    .await
}
