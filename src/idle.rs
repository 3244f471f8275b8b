//! The idle client connections of one worker, oldest first, so the worker can close the
//! longest-idle keep-alive connections when it needs room (at `max_connections`, or at the
//! file-descriptor limit — see docs/connections.md).
//!
//! Owns: the registry ([`IdleConnections`]) and the guard a connection holds while it waits
//! ([`IdleGuard`]). Must not: lock, or allocate after warm-up (freed slots are reused).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::monitor::bump;

const NIL: u32 = u32::MAX;

/// The client connections of one worker that wait idle for their next request, in the order
/// they began waiting, so the worker can close the longest-idle ones first when it needs room.
///
/// A connection enters with [`IdleConnections::enter`] when its idle wait begins and leaves when
/// the returned [`IdleGuard`] drops; it selects on [`IdleGuard::shed`], which completes once
/// [`IdleConnections::shed_oldest`] picked it, and then closes. A doubly linked list threaded
/// through a slab: enter, leave and shedding one are O(1), and freed slots are reused, so after
/// warm-up none of it allocates. Single-threaded, no locks: one per worker.
pub struct IdleConnections {
    list: RefCell<IdleList>,
    /// Counts the connections that did close because they were shed (one whose request
    /// arrived in the same instant is served instead, and not counted).
    closed: Option<&'static std::sync::atomic::AtomicU64>,
}

struct IdleList {
    slots: Vec<IdleSlot>,
    /// Longest waiting.
    head: u32,
    /// Most recent.
    tail: u32,
    /// First free slot; free slots chain through `next`.
    free: u32,
    /// Connections waiting (linked).
    len: usize,
}

struct IdleSlot {
    prev: u32,
    next: u32,
    state: SlotState,
    /// The waiting connection's task, woken when it is shed.
    waker: Option<Waker>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Linked, waiting.
    Waiting,
    /// Picked by `shed_oldest`: unlinked; the guard still owns the slot.
    Shed,
    /// Its `shed` future completed (and was counted): the connection is closing.
    Closing,
}

impl Default for IdleConnections {
    fn default() -> Self {
        IdleConnections::new()
    }
}

impl IdleConnections {
    pub fn new() -> IdleConnections {
        IdleConnections {
            list: RefCell::new(IdleList {
                slots: Vec::new(),
                head: NIL,
                tail: NIL,
                free: NIL,
                len: 0,
            }),
            closed: None,
        }
    }

    /// Like [`IdleConnections::new`], counting each connection that closes because it was
    /// shed in `closed` (the worker's monitor counter).
    pub fn counting(closed: &'static std::sync::atomic::AtomicU64) -> IdleConnections {
        IdleConnections {
            closed: Some(closed),
            ..IdleConnections::new()
        }
    }

    /// Connections waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.borrow().len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A connection begins its idle wait: it becomes the most recent entry.
    pub fn enter(&self) -> IdleGuard<'_> {
        let mut l = self.list.borrow_mut();
        let slot = if l.free != NIL {
            let i = l.free;
            l.free = l.slots[i as usize].next;
            i
        } else {
            l.slots.push(IdleSlot {
                prev: NIL,
                next: NIL,
                state: SlotState::Free,
                waker: None,
            });
            (l.slots.len() - 1) as u32
        };
        let tail = l.tail;
        let s = &mut l.slots[slot as usize];
        s.prev = tail;
        s.next = NIL;
        s.state = SlotState::Waiting;
        if tail == NIL {
            l.head = slot;
        } else {
            l.slots[tail as usize].next = slot;
        }
        l.tail = slot;
        l.len += 1;
        IdleGuard { idle: self, slot }
    }

    /// Asks the `n` longest-waiting connections to close; returns how many there were.
    pub fn shed_oldest(&self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let waker = {
                let mut l = self.list.borrow_mut();
                let i = l.head;
                if i == NIL {
                    break;
                }
                l.unlink(i);
                let s = &mut l.slots[i as usize];
                s.state = SlotState::Shed;
                s.waker.take()
            };
            // Woken outside the borrow: waking only schedules the task, but nothing here may
            // depend on that.
            if let Some(w) = waker {
                w.wake();
            }
            done += 1;
        }
        done
    }
}

impl IdleList {
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        self.len -= 1;
    }
}

/// A connection's place among the idle ones; dropping it leaves the list.
pub struct IdleGuard<'a> {
    idle: &'a IdleConnections,
    slot: u32,
}

impl IdleGuard<'_> {
    /// Completes once the worker asked this connection to close to make room. Its completion
    /// is counted as a closed connection: a caller that sees it must close.
    pub fn shed(&self) -> Shed<'_> {
        Shed { guard: self }
    }

    /// Whether the worker asked this connection to close.
    #[cfg(test)]
    pub fn is_shed(&self) -> bool {
        matches!(
            self.idle.list.borrow().slots[self.slot as usize].state,
            SlotState::Shed | SlotState::Closing
        )
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        let waker = {
            let mut l = self.idle.list.borrow_mut();
            if l.slots[self.slot as usize].state == SlotState::Waiting {
                l.unlink(self.slot);
            }
            let free = l.free;
            let s = &mut l.slots[self.slot as usize];
            s.state = SlotState::Free;
            s.next = free;
            s.prev = NIL;
            l.free = self.slot;
            l.slots[self.slot as usize].waker.take()
        };
        drop(waker);
    }
}

/// The future of [`IdleGuard::shed`].
pub struct Shed<'a> {
    guard: &'a IdleGuard<'a>,
}

impl Future for Shed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let idle = self.guard.idle;
        let mut l = idle.list.borrow_mut();
        let s = &mut l.slots[self.guard.slot as usize];
        match s.state {
            SlotState::Shed => {
                s.state = SlotState::Closing;
                if let Some(c) = idle.closed {
                    bump(c);
                }
                return Poll::Ready(());
            }
            SlotState::Closing => return Poll::Ready(()),
            SlotState::Waiting | SlotState::Free => {}
        }
        let old = match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => s.waker.replace(cx.waker().clone()),
        };
        drop(l);
        drop(old);
        Poll::Pending
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWake(AtomicUsize);

    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn poll_shed(g: &IdleGuard<'_>, waker: &Waker) -> bool {
        let mut cx = Context::from_waker(waker);
        let mut f = g.shed();
        Pin::new(&mut f).poll(&mut cx).is_ready()
    }

    #[test]
    fn idle_connections_are_shed_oldest_first_and_woken() {
        let closed: &'static std::sync::atomic::AtomicU64 =
            Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0)));
        let idle = IdleConnections::counting(closed);
        let counters: Vec<Arc<CountWake>> = (0..4)
            .map(|_| Arc::new(CountWake(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<Waker> = counters.iter().map(|c| Waker::from(c.clone())).collect();
        let guards: Vec<IdleGuard<'_>> = (0..4).map(|_| idle.enter()).collect();
        assert_eq!(idle.len(), 4);
        for (g, w) in guards.iter().zip(&wakers) {
            assert!(!poll_shed(g, w));
        }
        assert_eq!(idle.shed_oldest(2), 2);
        assert_eq!(idle.len(), 2);
        let woken: Vec<usize> = counters.iter().map(|c| c.0.load(Relaxed)).collect();
        assert_eq!(woken, [1, 1, 0, 0]);
        let ready: Vec<bool> = guards
            .iter()
            .zip(&wakers)
            .map(|(g, w)| poll_shed(g, w))
            .collect();
        assert_eq!(ready, [true, true, false, false]);
        assert!(guards[0].is_shed() && !guards[2].is_shed());
        // Counted once each, when the future completes (the connection closes), not when asked.
        assert_eq!(closed.load(Relaxed), 2);
        assert!(poll_shed(&guards[0], &wakers[0]));
        assert_eq!(closed.load(Relaxed), 2);
        // Asking for more than there are sheds what is left.
        assert_eq!(idle.shed_oldest(10), 2);
        assert_eq!(idle.shed_oldest(1), 0);
        assert!(idle.is_empty());
        // Asked but never completed (its request arrived first): not counted.
        assert_eq!(closed.load(Relaxed), 2);
        drop(guards);
        assert!(idle.is_empty());
    }

    #[test]
    fn leaving_unlinks_from_any_position_and_slots_are_reused() {
        let idle = IdleConnections::new();
        let noop = Waker::noop();
        let a = idle.enter();
        let b = idle.enter();
        let c = idle.enter();
        drop(b); // middle
        assert_eq!(idle.len(), 2);
        let d = idle.enter(); // reuses b's slot, but is the most recent
        assert_eq!(idle.list.borrow().slots.len(), 3);
        drop(a); // head
        assert_eq!(idle.shed_oldest(1), 1);
        assert!(poll_shed(&c, noop) && !poll_shed(&d, noop));
        drop(d); // tail
        assert!(idle.is_empty());
        drop(c);
        // Enter and leave many times: no growth past the peak.
        for _ in 0..100 {
            let g1 = idle.enter();
            let g2 = idle.enter();
            drop(g1);
            drop(g2);
        }
        assert_eq!(idle.list.borrow().slots.len(), 3);
        let l = idle.list.borrow();
        assert_eq!((l.head, l.tail, l.len), (NIL, NIL, 0));
    }
}
