//! A request's layered deadlines on top of the worker's timing wheel.
//!
//! Owns: the mapping from the contract's timeout layers (`[timeouts]`) to one wheel timer per
//! client connection. At any moment the timer is armed at the earliest deadline that applies
//! to the current phase — the phase's own layer, or the request's `total` if that comes first —
//! and remembers which layer that was, so an expiry can be reported as `<layer>_timeout`.
//!
//! Shutdown: once the worker's wheel has a drain deadline ([`crate::wheel::Wheel::set_cutoff`]),
//! no deadline here is armed past it, so every request wakes by then and
//! [`DeadlineSet::drain_ended`] tells its expiry apart from a timeout.
//!
//! Must not: allocate or spawn; re-arming happens on every relayed chunk.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub use crate::config::Layer;
use crate::wheel::{Expired, Timer};

/// One connection's deadline: a single wheel slot re-armed as phases change.
pub struct DeadlineSet {
    timer: Timer,
    /// When the armed layer really expires; the timer may be set earlier (a checkpoint).
    due: Cell<Option<Instant>>,
    total_at: Cell<Option<Instant>>,
    total_layer: Cell<Layer>,
    layer: Cell<Layer>,
    /// The last clock reading ([`DeadlineSet::now`] or an [`DeadlineSet::arm`]). Reading the
    /// clock costs tens of ns in a VM and a request met a dozen readings; code that has just
    /// read it and done no IO since uses [`DeadlineSet::recent`] instead.
    clock: Cell<Instant>,
}

impl DeadlineSet {
    pub fn new(timer: Timer) -> DeadlineSet {
        DeadlineSet {
            timer,
            due: Cell::new(None),
            total_at: Cell::new(None),
            total_layer: Cell::new(Layer::Total),
            layer: Cell::new(Layer::ClientIdle),
            clock: Cell::new(Instant::now()),
        }
    }

    /// Reads the clock and remembers the reading.
    #[inline]
    pub fn now(&self) -> Instant {
        let now = Instant::now();
        self.clock.set(now);
        now
    }

    /// The last reading: only for callers that did no IO since it was taken, or for whom a
    /// reading that old errs on the safe side (a pool expiry check, a grace checkpoint).
    #[inline]
    pub fn recent(&self) -> Instant {
        self.clock.get()
    }

    /// A request begins: every later phase is also bounded by `now + total`.
    /// `layer` is `Total` for relay requests and `Quick` for quick endpoints.
    pub fn begin_request(&self, now: Instant, total: Duration, layer: Layer) {
        self.total_at.set(Some(now + total));
        self.total_layer.set(layer);
    }

    /// The request is over; connection-level layers apply again.
    pub fn end_request(&self) {
        self.total_at.set(None);
    }

    /// Arm for `layer`, `after` from now, clamped by the request's total deadline.
    #[inline]
    pub fn arm(&self, layer: Layer, after: Duration) {
        self.arm_at(layer, self.now() + after);
    }

    /// [`DeadlineSet::arm`] from the last clock reading (see [`DeadlineSet::recent`]).
    #[inline]
    pub fn arm_recent(&self, layer: Layer, after: Duration) {
        self.arm_at(layer, self.recent() + after);
    }

    #[inline]
    pub fn arm_at(&self, layer: Layer, at: Instant) {
        let at = self.clamp(at);
        match self.total_at.get() {
            Some(total) if total <= at => {
                self.layer.set(self.total_layer.get());
                self.due.set(Some(total));
                self.timer.arm_at(total);
            }
            _ => {
                self.layer.set(layer);
                self.due.set(Some(at));
                self.timer.arm_at(at);
            }
        }
    }

    /// Fire early at `at` (if that is before the real deadline) without changing the layer:
    /// the relay uses it to start watching the client only for slow upstreams, and to end an
    /// SSE coalescing hold. Returns whether it was armed (false: the deadline comes first).
    pub fn checkpoint(&self, at: Instant) -> bool {
        let before_due = self.due.get().is_some_and(|due| at < self.clamp(due));
        if before_due {
            self.timer.arm_at(at);
        }
        before_due
    }

    /// After an expiry: was it the real deadline, or only a checkpoint?
    pub fn is_due(&self) -> bool {
        let now = Instant::now();
        self.due.get().is_none_or(|due| now >= due)
            || self.timer.cutoff().is_some_and(|cut| now >= cut)
    }

    /// Re-arm at the real deadline after a checkpoint fired.
    pub fn resume(&self) {
        if let Some(due) = self.due.get() {
            self.timer.arm_at(self.clamp(due));
        }
    }

    /// Shutdown's drain deadline has passed: an expiry now ends the request with
    /// `shutting_down`, whatever layer was armed (not counted as that layer's timeout).
    pub fn drain_ended(&self) -> bool {
        self.timer.cutoff().is_some_and(|cut| Instant::now() >= cut)
    }

    /// `at`, or the drain deadline if shutdown has begun and that comes first. A `Cell` read
    /// and a compare on the hot path.
    #[inline]
    fn clamp(&self, at: Instant) -> Instant {
        match self.timer.cutoff() {
            Some(cut) if cut < at => cut,
            _ => at,
        }
    }

    /// Arm for `layer` without the request's total: for writing the answer to a request whose
    /// total already expired (the answer itself must still get a bounded chance to go out).
    pub fn arm_unclamped(&self, layer: Layer, after: Duration) {
        let at = Instant::now() + after;
        self.layer.set(layer);
        self.due.set(Some(at));
        self.timer.arm_at(at);
    }

    /// Resolves once the armed deadline passes; then [`DeadlineSet::layer`] says which it was.
    #[inline]
    pub fn expired(&self) -> Expired<'_> {
        self.timer.expired()
    }

    /// Race `io` against the armed deadline, `io` polled first: an op that completed is never
    /// thrown away because its deadline fired in the same tick (that once cut SSE streams
    /// mid-chunk instead of ending them with the error event). `Err(layer)` when the deadline
    /// won; `io` is dropped right there (io_uring ops cancelled, their buffers released when
    /// the kernel lets go). A checkpoint counts as the deadline here: callers that arm one
    /// race by hand.
    #[inline]
    pub async fn race<F: std::future::Future>(&self, io: F) -> Result<F::Output, Layer> {
        monoio::select! {
            biased;
            r = io => Ok(r),
            _ = self.expired() => Err(self.layer()),
        }
    }

    pub fn layer(&self) -> Layer {
        self.layer.get()
    }
}
