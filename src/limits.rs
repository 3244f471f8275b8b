//! Limits that hold for the whole process, across workers: today `server.max_inflight`.
//!
//! Owns: the one process-wide inflight counter and the rule that admits a request only while
//! the count is under the limit. A request holds an [`InflightSlot`] from admission to its end;
//! dropping it gives the slot back, on every path.
//!
//! Must not: lock. Admission is one atomic add on a cache line of its own; a refused request
//! takes its add back, so a burst can only be refused early, never admitted past the limit.

use std::sync::atomic::{AtomicU64, Ordering};

/// The process-wide counters behind the limits; created once at start and leaked (`&'static`),
/// so no request touches a shared reference count.
#[repr(align(64))]
pub struct Limits {
    inflight: AtomicU64,
    max_inflight: u64,
}

impl Limits {
    pub fn new(max_inflight: usize) -> &'static Limits {
        Box::leak(Box::new(Limits {
            inflight: AtomicU64::new(0),
            max_inflight: max_inflight as u64,
        }))
    }

    /// A slot under `max_inflight`, or `None` when the whole process is at it.
    #[inline]
    pub fn admit(&'static self) -> Option<InflightSlot> {
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InflightSlot(self))
    }

    #[cfg(test)]
    fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }
}

/// One admitted request's share of `max_inflight`.
pub struct InflightSlot(&'static Limits);

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_across_threads_and_never_past_it() {
        let limits = Limits::new(5);
        let held: Vec<InflightSlot> = (0..5).map(|_| limits.admit().unwrap()).collect();
        assert!(limits.admit().is_none());
        // Many threads hammering a full limit never get through, and leave the count as it was.
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..10_000).all(|_| limits.admit().is_none())))
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(limits.inflight(), 5);
        drop(held);
        assert_eq!(limits.inflight(), 0);
        assert!(limits.admit().is_some());
    }
}
