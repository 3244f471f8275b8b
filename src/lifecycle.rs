//! The process's run state across its threads: serving, then draining once SIGTERM or SIGINT
//! arrived, and each worker's heartbeat.
//!
//! Owns:
//! - [`Lifecycle`], one per process (leaked at start, `&'static`): whether a drain was asked
//!   for and when it ends, one heartbeat per worker (bumped from the worker's own event loop;
//!   the systemd watchdog pings only while every heartbeat moves), which workers have finished,
//!   and the count of requests the drain deadline ended, for the shutdown log line.
//! - [`WorkerDrain`], one per worker (a field of `Worker`): shutdown as that worker's
//!   connection tasks see it. The worker sets it when it observes the drain request, on its own
//!   thread, so a connection task never reads shared state to learn it.
//!
//! How a drain runs (`worker` does the per-worker part): the worker stops accepting and closes
//! its listener (after a takeover the new process holds the same socket, so it stays open),
//! closes its idle keep-alive connections (a new connection still gets its first request
//! answered), gives every request deadline of its
//! wheel the drain deadline as an upper bound (`Wheel::set_cutoff`), and finishes once its last
//! client connection ended. A request still running at the deadline is ended by its own timer
//! with `shutting_down` (an SSE `error` event for a stream).
//!
//! Must not: lock, or put anything on the request path beyond a `Cell` read.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often each worker bumps its heartbeat (and looks for a drain request).
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// One worker's cross-thread state, on a cache line of its own (written by that worker only).
#[repr(align(128))]
#[derive(Default)]
struct WorkerState {
    beats: AtomicU64,
    finished: AtomicBool,
    /// Requests of this worker the drain deadline ended (published when the worker finishes).
    ended: AtomicU64,
}

/// Why and until when the process drains.
struct Drain {
    signal: &'static str,
    until: Instant,
}

/// The process-wide run state. See the module doc.
pub struct Lifecycle {
    drain_for: Duration,
    drain: OnceLock<Drain>,
    workers: Box<[WorkerState]>,
}

impl Lifecycle {
    /// For `workers` workers and `[server] drain`; lives for the rest of the process.
    pub fn new(workers: usize, drain_for: Duration) -> &'static Lifecycle {
        Box::leak(Box::new(Lifecycle {
            drain_for,
            drain: OnceLock::new(),
            workers: (0..workers).map(|_| WorkerState::default()).collect(),
        }))
    }

    /// Ask every worker to drain (a signal named `signal` arrived). True for the first request;
    /// a later one changes nothing.
    pub fn request_drain(&self, signal: &'static str) -> bool {
        let mut first = false;
        self.drain.get_or_init(|| {
            first = true;
            Drain {
                signal,
                until: Instant::now() + self.drain_for,
            }
        });
        first
    }

    /// When the drain ends, once one was asked for.
    #[inline]
    pub fn drain_until(&self) -> Option<Instant> {
        self.drain.get().map(|d| d.until)
    }

    /// The signal that began the drain.
    pub fn drain_signal(&self) -> Option<&'static str> {
        self.drain.get().map(|d| d.signal)
    }

    pub fn drain_for(&self) -> Duration {
        self.drain_for
    }

    /// Worker `id`'s event loop turned (called from its own periodic task).
    #[inline]
    pub fn beat(&self, id: usize) {
        let b = &self.workers[id].beats;
        b.store(b.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Worker `id` is done (drained, or its thread ended): `ended` of its requests were cut by
    /// the drain deadline.
    pub fn finish(&self, id: usize, ended: u64) {
        self.workers[id].ended.store(ended, Relaxed);
        self.workers[id].finished.store(true, Relaxed);
    }

    pub fn all_finished(&self) -> bool {
        self.workers.iter().all(|w| w.finished.load(Relaxed))
    }

    /// Workers still running.
    pub fn running(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| !w.finished.load(Relaxed))
            .count()
    }

    /// Requests the drain deadline ended, over the finished workers.
    pub fn ended(&self) -> u64 {
        self.workers.iter().map(|w| w.ended.load(Relaxed)).sum()
    }

    /// Did every worker that is still running bump its heartbeat since the previous call?
    /// `seen` holds the readings of that call (sized on first use). A finished worker counts
    /// as turning: it has nothing left to stall.
    pub fn all_turning(&self, seen: &mut Vec<u64>) -> bool {
        seen.resize(self.workers.len(), u64::MAX);
        let mut all = true;
        for (w, last) in self.workers.iter().zip(seen.iter_mut()) {
            let now = w.beats.load(Relaxed);
            if now == *last && !w.finished.load(Relaxed) {
                all = false;
            }
            *last = now;
        }
        all
    }
}

/// Shutdown as one worker's requests see it. Lives on the worker's thread.
#[derive(Default)]
pub struct WorkerDrain {
    draining: Cell<bool>,
    ended: Cell<u64>,
}

impl WorkerDrain {
    /// The worker has begun draining: answers say `Connection: close`, idle connections end.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn begin(&self) {
        self.draining.set(true);
    }

    /// A request was ended with `shutting_down` at the drain deadline.
    pub fn note_ended(&self) {
        self.ended.set(self.ended.get() + 1);
    }

    pub fn ended(&self) -> u64 {
        self.ended.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_drain_request_wins() {
        let l = Lifecycle::new(2, Duration::from_secs(30));
        assert_eq!(l.drain_until(), None);
        assert!(l.request_drain("SIGTERM"));
        let until = l.drain_until().unwrap();
        assert!(!l.request_drain("SIGINT"));
        assert_eq!(l.drain_until(), Some(until));
        assert_eq!(l.drain_signal(), Some("SIGTERM"));
    }

    #[test]
    fn a_worker_whose_heartbeat_stands_still_stops_the_watchdog() {
        let l = Lifecycle::new(2, Duration::ZERO);
        let mut seen = Vec::new();
        l.beat(0);
        l.beat(1);
        assert!(l.all_turning(&mut seen));
        l.beat(0);
        assert!(!l.all_turning(&mut seen), "worker 1 did not turn");
        l.beat(0);
        l.beat(1);
        assert!(l.all_turning(&mut seen));
        // A finished worker no longer holds the pings back.
        l.finish(1, 3);
        l.beat(0);
        assert!(l.all_turning(&mut seen));
        assert_eq!((l.running(), l.ended()), (1, 3));
        assert!(!l.all_finished());
    }
}
