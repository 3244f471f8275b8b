//! Per-worker hierarchical timing wheel for request deadlines.
//!
//! Each monoio worker owns exactly one [`Wheel`] (behind an `Rc`) and runs
//! [`Wheel::drive`] as a task on that worker. Every request or connection owns
//! one [`Timer`] slot and re-arms it as it moves through its phases (connect,
//! first byte, stream idle, ...). The stream-idle deadline is re-armed on every
//! relayed SSE chunk, so arm / re-arm / cancel are O(1) and allocation-free
//! once the slab has grown to the worker's peak concurrency.
//!
//! What this module owns: the deadline bookkeeping of one worker — which
//! timers are armed, when each is due, and waking whoever waits on it.
//!
//! What it must not do:
//! - cross threads: everything is `Rc`/`RefCell`, no atomics, no locks; the
//!   types are `!Send` on purpose;
//! - allocate on arm, re-arm or cancel (only [`Wheel::timer`] may grow the
//!   slab);
//! - fire early: deadlines are rounded *up* to the tick, so a timer fires at
//!   or after its deadline, late by at most one tick plus scheduling delay.
//!
//! Layout: six levels of 64 slots (like the Linux and tokio wheels). Level
//! `L` slot spans `64^L` ticks; entries live in intrusive doubly-linked lists
//! threaded through the slab by `u32` index, so unlinking is O(1). When a
//! higher-level slot comes up its entries cascade to lower levels; entries
//! whose tick has been reached move to a FIFO "due" list and are fired from
//! there, which keeps firing re-entrancy-safe (no wheel borrow is held while
//! a waker runs or is dropped).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 6;
const WHEEL_LISTS: usize = LEVELS * SLOTS;
/// Ticks representable by the levels; farther deadlines park in the top level
/// and are re-placed each time its slot comes up again.
const MAX_SPAN: u64 = (1 << (SLOT_BITS as usize * LEVELS)) - 1;

/// List id of the due list (entries whose tick has been reached, not yet fired).
const DUE: u16 = WHEEL_LISTS as u16;
/// List id of an entry that is in a Timer's hands but not armed.
const UNLINKED: u16 = u16::MAX;
/// List id of an entry sitting in the free list.
const FREE: u16 = u16::MAX - 1;
const NIL: u32 = u32::MAX;

struct Entry {
    prev: u32,
    next: u32,
    /// Which list the entry is on: a wheel slot (`level * 64 + slot`), `DUE`,
    /// `UNLINKED` or `FREE`.
    list: u16,
    expired: bool,
    /// Bumped on every free so a handle that somehow outlived its slot cannot
    /// touch the slot's next owner.
    gen: u32,
    /// Deadline in ticks since the wheel's origin, rounded up.
    when: u64,
    /// Deadline as the caller gave it, reported back by `Timer::deadline`.
    at: Instant,
    waker: Option<Waker>,
}

struct Inner {
    entries: Vec<Entry>,
    /// Heads of the 384 wheel-slot lists, then the due list.
    heads: [u32; WHEEL_LISTS + 1],
    /// The due list is FIFO so entries fire in deadline order.
    due_tail: u32,
    due_len: usize,
    /// One bit per non-empty slot, so finding the next expiry is a
    /// rotate + trailing_zeros per level instead of a scan.
    occupied: [u64; LEVELS],
    free_head: u32,
    /// Every tick `<= elapsed` has been processed.
    elapsed: u64,
    armed: usize,
    /// Tick the driver is sleeping until (`u64::MAX` when parked or absent);
    /// an arm before it must wake the driver, an arm at or after it need not.
    driver_target: u64,
}

/// While anything is armed the driver wakes at least this often (in ticks). Without the cap,
/// every arm earlier than the driver's planned wake-up (a 250 ms checkpoint while the next
/// deadline is minutes away, say) would wake the driver task to re-plan; with it, arms more
/// than `MAX_SLEEP_TICKS` ahead never wake anything, at the price of a few idle wake-ups a
/// second.
const MAX_SLEEP_TICKS: u64 = 10;

/// Per-worker timing wheel. Create with [`Wheel::new`], run [`Wheel::drive`]
/// as a task on the same worker, hand out [`Timer`]s with [`Wheel::timer`].
pub struct Wheel {
    inner: RefCell<Inner>,
    origin: Instant,
    tick: Duration,
    tick_ns: u64,
    driver_waker: Cell<Option<Waker>>,
    /// Set when an arm moved the earliest deadline before the driver's sleep
    /// target; survives until the driver observes it, so a wake-up between
    /// the driver's planning and its poll is not lost.
    notified: Cell<bool>,
    /// Shutdown's drain deadline, once set ([`Wheel::set_cutoff`]): no request deadline of
    /// this worker may lie past it.
    cutoff: Cell<Option<Instant>>,
}

/// One timer slot of a [`Wheel`]. Dropping it cancels it and returns the slot
/// to the wheel's free list.
pub struct Timer {
    wheel: Rc<Wheel>,
    idx: u32,
    gen: u32,
}

/// Future returned by [`Timer::expired`]: ready once the timer has fired.
#[must_use = "futures do nothing unless polled"]
pub struct Expired<'a> {
    timer: &'a Timer,
    registered: bool,
}

/// Smallest level whose slot still separates `when` from `elapsed`
/// (`when > elapsed`): the highest 6-bit digit in which they differ.
fn level_for(elapsed: u64, when: u64) -> usize {
    // The low digit is forced on so level 0 is the floor, and the result is
    // capped so out-of-range deadlines land in the top level.
    let masked = ((elapsed ^ when) | (SLOTS as u64 - 1)).min(MAX_SPAN);
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

fn list_for(elapsed: u64, when: u64) -> u16 {
    if when <= elapsed {
        return DUE;
    }
    let level = level_for(elapsed, when);
    let slot = (when >> (level as u32 * SLOT_BITS)) as usize & (SLOTS - 1);
    (level * SLOTS + slot) as u16
}

fn duration_ns(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl Inner {
    fn new() -> Self {
        Inner {
            entries: Vec::new(),
            heads: [NIL; WHEEL_LISTS + 1],
            due_tail: NIL,
            due_len: 0,
            occupied: [0; LEVELS],
            free_head: NIL,
            elapsed: 0,
            armed: 0,
            driver_target: u64::MAX,
        }
    }

    /// The entry behind a handle, or `None` if the handle is stale.
    fn live(&mut self, idx: u32, gen: u32) -> Option<&mut Entry> {
        self.entries
            .get_mut(idx as usize)
            .filter(|e| e.gen == gen && e.list != FREE)
    }

    fn link(&mut self, list: u16, idx: u32) {
        if list == DUE {
            let tail = self.due_tail;
            let e = &mut self.entries[idx as usize];
            e.prev = tail;
            e.next = NIL;
            e.list = DUE;
            if tail == NIL {
                self.heads[DUE as usize] = idx;
            } else {
                self.entries[tail as usize].next = idx;
            }
            self.due_tail = idx;
            self.due_len += 1;
        } else {
            let head = self.heads[list as usize];
            let e = &mut self.entries[idx as usize];
            e.prev = NIL;
            e.next = head;
            e.list = list;
            if head != NIL {
                self.entries[head as usize].prev = idx;
            }
            self.heads[list as usize] = idx;
            let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
            self.occupied[level] |= 1 << slot;
        }
    }

    /// Caller guarantees the entry is on a wheel slot or the due list.
    fn unlink(&mut self, idx: u32) {
        let e = &mut self.entries[idx as usize];
        let (prev, next, list) = (e.prev, e.next, e.list);
        e.prev = NIL;
        e.next = NIL;
        e.list = UNLINKED;
        if prev == NIL {
            self.heads[list as usize] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            if list == DUE {
                self.due_tail = prev;
            }
        } else {
            self.entries[next as usize].prev = prev;
        }
        if list == DUE {
            self.due_len -= 1;
        } else if self.heads[list as usize] == NIL {
            let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
            self.occupied[level] &= !(1 << slot);
        }
    }

    /// (Re)arms; returns whether the driver must be woken.
    fn arm(&mut self, idx: u32, gen: u32, when: u64, at: Instant) -> bool {
        let elapsed = self.elapsed;
        let Some(e) = self.live(idx, gen) else {
            return false;
        };
        e.expired = false;
        e.when = when;
        e.at = at;
        let current = e.list;
        let target = list_for(elapsed, when);
        // Cheap path for the per-chunk idle re-arm: a deadline that lands in
        // the slot the entry already occupies needs no relinking, because
        // slot membership is all the wheel knows about an entry's position.
        // Measured: ~12 ns instead of ~17 ns per re-arm.
        if current != target {
            if current == UNLINKED {
                self.armed += 1;
            } else {
                self.unlink(idx);
            }
            self.link(target, idx);
        }
        // Even on the cheap path: the driver may be sleeping until a tick
        // past the new deadline (planned before this slot was populated).
        if when < self.driver_target {
            self.driver_target = when;
            true
        } else {
            false
        }
    }

    fn disarm(&mut self, idx: u32) {
        if self.entries[idx as usize].list != UNLINKED {
            self.unlink(idx);
            self.armed -= 1;
        }
    }

    /// Next wheel slot to process: (level, slot, tick at which it comes up).
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << SLOT_BITS;
            let now_slot = (self.elapsed >> shift) as u32 & (SLOTS as u32 - 1);
            // Only top-level entries beyond MAX_SPAN can sit in the current
            // slot or behind it; they come up on the next revolution, so the
            // current slot is looked at last, not first.
            let rotated = occupied.rotate_right(now_slot);
            let ahead = rotated & !1;
            let offset = if ahead != 0 {
                ahead.trailing_zeros()
            } else {
                0
            };
            let slot = ((offset + now_slot) as usize) % SLOTS;
            let level_start = self.elapsed & !(level_range - 1);
            let mut deadline = level_start + slot as u64 * slot_range;
            if deadline <= self.elapsed {
                deadline = deadline.saturating_add(level_range);
            }
            // Lower levels always expire before higher ones, so the first
            // occupied level holds the earliest slot.
            return Some((level, slot, deadline));
        }
        None
    }

    /// Processes every slot that comes up by `now_tick`, moving reached
    /// entries to the due list and cascading the rest down.
    fn collect(&mut self, now_tick: u64) {
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > now_tick {
                break;
            }
            self.elapsed = deadline;
            let list = level * SLOTS + slot;
            let mut idx = self.heads[list];
            self.heads[list] = NIL;
            self.occupied[level] &= !(1 << slot);
            while idx != NIL {
                let e = &mut self.entries[idx as usize];
                let next = e.next;
                let when = e.when;
                e.list = UNLINKED;
                self.link(list_for(deadline, when), idx);
                idx = next;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
    }

    /// Fires due entries until one has a waker or `budget` is spent; returns
    /// how many fired and the waker to wake once the borrow is released.
    fn fire_some(&mut self, budget: usize) -> (usize, Option<Waker>) {
        let mut fired = 0;
        while fired < budget {
            let idx = self.heads[DUE as usize];
            if idx == NIL {
                break;
            }
            self.unlink(idx);
            self.armed -= 1;
            fired += 1;
            let e = &mut self.entries[idx as usize];
            e.expired = true;
            if let Some(waker) = e.waker.take() {
                return (fired, Some(waker));
            }
        }
        (fired, None)
    }
}

impl Wheel {
    /// A wheel with the given tick (resolution). A zero tick is treated as
    /// 1 ns.
    pub fn new(tick: Duration) -> Rc<Wheel> {
        let tick_ns = duration_ns(tick).max(1);
        Rc::new(Wheel {
            inner: RefCell::new(Inner::new()),
            origin: Instant::now(),
            tick: Duration::from_nanos(tick_ns),
            tick_ns,
            driver_waker: Cell::new(None),
            notified: Cell::new(false),
            cutoff: Cell::new(None),
        })
    }

    /// Shutdown: every timer armed past `at` is moved to `at`, so whatever waits on it wakes by
    /// then. The wheel does not clamp later arms itself (its own periodic users keep their
    /// cadence); [`crate::deadline::DeadlineSet`] clamps request deadlines to [`Wheel::cutoff`].
    /// One pass over the slab, once per process lifetime.
    pub fn set_cutoff(&self, at: Instant) {
        self.cutoff.set(Some(at));
        let when = self.ceil_tick(at);
        let wake_driver = {
            let mut inner = self.inner.borrow_mut();
            let mut wake = false;
            for idx in 0..inner.entries.len() as u32 {
                let e = &inner.entries[idx as usize];
                let on_wheel = e.list != UNLINKED && e.list != FREE && e.list != DUE;
                if on_wheel && e.at > at {
                    let gen = e.gen;
                    wake |= inner.arm(idx, gen, when, at);
                }
            }
            wake
        };
        if wake_driver {
            self.notify_driver();
        }
    }

    /// The drain deadline set by [`Wheel::set_cutoff`], if shutdown has begun.
    #[inline]
    pub fn cutoff(&self) -> Option<Instant> {
        self.cutoff.get()
    }

    /// The wheel's resolution.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// A new, disarmed timer. Reuses a freed slot; allocates only when the
    /// slab has to grow.
    pub fn timer(self: &Rc<Self>) -> Timer {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let (idx, gen) = if inner.free_head != NIL {
            let idx = inner.free_head;
            let e = &mut inner.entries[idx as usize];
            let gen = e.gen;
            inner.free_head = e.next;
            e.next = NIL;
            e.list = UNLINKED;
            e.expired = false;
            (idx, gen)
        } else if inner.entries.len() < NIL as usize {
            let idx = inner.entries.len() as u32;
            inner.entries.push(Entry {
                prev: NIL,
                next: NIL,
                list: UNLINKED,
                expired: false,
                gen: 0,
                when: 0,
                at: self.origin,
                waker: None,
            });
            (idx, 0)
        } else {
            // 4 billion live timers cannot happen on one worker; an inert
            // handle (every operation a no-op) beats a panic if it ever did.
            (NIL, 0)
        };
        drop(guard);
        Timer {
            wheel: Rc::clone(self),
            idx,
            gen,
        }
    }

    /// Number of armed timers (including ones due but not yet fired).
    pub fn armed(&self) -> usize {
        self.inner.borrow().armed
    }

    /// Fires everything due at `now` (sets `expired`, wakes the waiter) and
    /// returns how many fired. `now` earlier than a previous call only fires
    /// what is already due.
    pub fn advance_to(&self, now: Instant) -> usize {
        let now_tick = duration_ns(now.saturating_duration_since(self.origin)) / self.tick_ns;
        let budget = {
            let mut inner = self.inner.borrow_mut();
            inner.collect(now_tick);
            // Bounded by what is due now, so a waker that synchronously arms
            // a past deadline cannot keep this loop going forever.
            inner.due_len
        };
        let mut fired = 0;
        while fired < budget {
            let (n, waker) = self.inner.borrow_mut().fire_some(budget - fired);
            fired += n;
            match waker {
                // Woken (and dropped) with no borrow held: waking or dropping
                // a waker may run arbitrary code, including timer operations.
                Some(waker) => waker.wake(),
                None => break,
            }
        }
        fired
    }

    /// Runs the wheel on the current monoio worker; never returns. The
    /// runtime must have its timer enabled.
    ///
    /// Sleeps until the next tick that has work (a fire or a cascade), parks
    /// when nothing is armed, and is woken early by any arm whose deadline
    /// precedes the tick it is sleeping until.
    pub async fn drive(self: Rc<Self>) {
        let sleep = monoio::time::sleep(Duration::ZERO);
        let mut sleep = std::pin::pin!(sleep);
        loop {
            self.advance_to(Instant::now());
            let wake_at = self.plan_sleep();
            if let Some(at) = wake_at {
                sleep.as_mut().reset(monoio::time::Instant::from_std(at));
            }
            std::future::poll_fn(|cx| {
                if self.notified.replace(false) {
                    return Poll::Ready(());
                }
                self.register_driver(cx.waker());
                if wake_at.is_some() && sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                Poll::Pending
            })
            .await;
        }
    }

    /// Records (and returns as an instant) the tick the driver will sleep
    /// until; `None` means park until an arm notifies.
    fn plan_sleep(&self) -> Option<Instant> {
        let mut inner = self.inner.borrow_mut();
        let next = if inner.due_len > 0 {
            Some(inner.elapsed)
        } else {
            inner
                .next_expiration()
                .map(|(_, _, tick)| tick.min(inner.elapsed + MAX_SLEEP_TICKS))
        };
        inner.driver_target = next.unwrap_or(u64::MAX);
        let ns = next?.checked_mul(self.tick_ns)?;
        self.origin.checked_add(Duration::from_nanos(ns))
    }

    fn register_driver(&self, waker: &Waker) {
        let current = self.driver_waker.take();
        let keep = match current {
            Some(w) if w.will_wake(waker) => w,
            _ => waker.clone(),
        };
        self.driver_waker.set(Some(keep));
    }

    fn notify_driver(&self) {
        self.notified.set(true);
        if let Some(waker) = self.driver_waker.take() {
            waker.wake();
        }
    }

    fn ceil_tick(&self, at: Instant) -> u64 {
        duration_ns(at.saturating_duration_since(self.origin)).div_ceil(self.tick_ns)
    }
}

impl fmt::Debug for Wheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (armed, slots) = match self.inner.try_borrow() {
            Ok(inner) => (inner.armed, inner.entries.len()),
            Err(_) => (0, 0),
        };
        f.debug_struct("Wheel")
            .field("tick", &self.tick)
            .field("armed", &armed)
            .field("slots", &slots)
            .finish()
    }
}

impl Timer {
    /// Arms the timer for `at`, replacing any previous deadline and clearing
    /// `expired`. A deadline already past fires on the next advance.
    pub fn arm_at(&self, at: Instant) {
        let when = self.wheel.ceil_tick(at);
        let wake_driver = self
            .wheel
            .inner
            .borrow_mut()
            .arm(self.idx, self.gen, when, at);
        if wake_driver {
            self.wheel.notify_driver();
        }
    }

    /// The wheel's drain deadline ([`Wheel::set_cutoff`]), if shutdown has begun.
    #[inline]
    pub fn cutoff(&self) -> Option<Instant> {
        self.wheel.cutoff.get()
    }

    /// Arms the timer for `d` from now.
    pub fn arm_after(&self, d: Duration) {
        let now = Instant::now();
        // An unrepresentable deadline is "never" in practice; the farthest
        // instant the wheel can express is the honest stand-in.
        let at = now
            .checked_add(d)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.arm_at(at);
    }

    /// Disarms the timer and clears `expired`. A pending [`Expired`] stays
    /// pending until the timer is armed again.
    pub fn cancel(&self) {
        let mut inner = self.wheel.inner.borrow_mut();
        if inner.live(self.idx, self.gen).is_some() {
            inner.disarm(self.idx);
            inner.entries[self.idx as usize].expired = false;
        }
    }

    /// Whether the armed deadline has fired (and not been re-armed or
    /// cancelled since).
    pub fn is_expired(&self) -> bool {
        let mut inner = self.wheel.inner.borrow_mut();
        inner.live(self.idx, self.gen).is_some_and(|e| e.expired)
    }

    /// Whether a deadline is armed and has not fired yet.
    pub fn is_armed(&self) -> bool {
        let mut inner = self.wheel.inner.borrow_mut();
        inner
            .live(self.idx, self.gen)
            .is_some_and(|e| e.list != UNLINKED)
    }

    /// The deadline last armed, while it is pending or after it fired;
    /// `None` when never armed or cancelled.
    pub fn deadline(&self) -> Option<Instant> {
        let mut inner = self.wheel.inner.borrow_mut();
        let e = inner.live(self.idx, self.gen)?;
        (e.list != UNLINKED || e.expired).then_some(e.at)
    }

    /// Future that is ready once the timer fires. Follows re-arms; stays
    /// pending while the timer is disarmed. One waiter per timer: a second
    /// concurrent waiter replaces the first's waker.
    pub fn expired(&self) -> Expired<'_> {
        Expired {
            timer: self,
            registered: false,
        }
    }

    /// Takes the stored waker so the caller can drop it outside the borrow.
    fn take_waker(&self) -> Option<Waker> {
        let mut inner = self.wheel.inner.borrow_mut();
        inner.live(self.idx, self.gen)?.waker.take()
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.wheel.inner.borrow_mut();
            if inner.live(self.idx, self.gen).is_none() {
                return;
            }
            inner.disarm(self.idx);
            let free_head = inner.free_head;
            let e = &mut inner.entries[self.idx as usize];
            e.list = FREE;
            e.expired = false;
            e.gen = e.gen.wrapping_add(1);
            e.next = free_head;
            let waker = e.waker.take();
            inner.free_head = self.idx;
            waker
        };
        drop(waker);
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("slot", &self.idx)
            .field("deadline", &self.deadline())
            .field("expired", &self.is_expired())
            .finish()
    }
}

impl Future for Expired<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self.timer;
        let replaced = {
            let mut inner = timer.wheel.inner.borrow_mut();
            let Some(e) = inner.live(timer.idx, timer.gen) else {
                return Poll::Pending;
            };
            if e.expired {
                return Poll::Ready(());
            }
            match &e.waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => e.waker.replace(cx.waker().clone()),
            }
        };
        // Dropped with no borrow held (see `advance_to`).
        drop(replaced);
        self.registered = true;
        Poll::Pending
    }
}

impl Drop for Expired<'_> {
    fn drop(&mut self) {
        // A waker left behind would keep the waiting task alive until the
        // timer fires or is dropped, for no one to poll.
        if self.registered {
            drop(self.timer.take_waker());
        }
    }
}

impl fmt::Debug for Expired<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expired")
            .field("timer", self.timer)
            .finish()
    }
}

#[cfg(test)]
mod tests;
