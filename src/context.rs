//! What one worker's requests share: the per-worker context every connection task holds an
//! `Rc` of.
//!
//! Owns: the [`Worker`] value (config and routing table handles, buffer pool, timing wheel,
//! upstream side, idle registry, admission shares, counters) and how it is built for a worker.
//! Must not: be shared across threads — everything here lives on its worker's thread, and the
//! only cross-thread parts are the read-only config and router and the monitor's counters.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::AccessLog;
use crate::bufpool::{BufPool, BUF_SIZE};
use crate::config::{Config, Layer};
use crate::idle::IdleConnections;
use crate::limits::Limits;
use crate::monitor::{self, Monitor};
use crate::route::{RouteState, Router};
use crate::upstream::{TlsConnectors, Upstreams};
use crate::wheel::Wheel;

/// Wheel tick: timeouts are coarse (hundreds of ms and up), so 5 ms is ample precision.
const WHEEL_TICK: Duration = Duration::from_millis(5);
/// Free buffers a worker keeps for reuse. Enough for the hot path at high concurrency; more
/// would keep a burst's memory resident after it is over.
const MAX_FREE_BUFFERS: usize = 256;

/// Everything one worker's requests share. Lives in an `Rc` on its own thread.
pub struct Worker {
    pub id: usize,
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    pub monitor: &'static Monitor,
    pub route_state: RouteState,
    pub bufs: BufPool,
    pub wheel: Rc<Wheel>,
    /// The upstream side: idle pool, name cache, each channel's runtime.
    pub upstreams: Upstreams,
    /// The process-wide limits (`max_inflight`).
    pub limits: &'static Limits,
    /// This worker's end of the access log, when it is on.
    pub access_log: Option<AccessLog>,
    /// Rate-limited WARN lines for upstream failures.
    pub upstream_warnings: UpstreamWarnings,
    /// This worker's share of `max_connections`.
    pub max_connections: usize,
    /// Client connections this worker holds now: counted at accept, before the connection's
    /// task first runs, so a burst of accepts cannot overshoot the bound.
    pub connections: Cell<usize>,
    /// Client connections waiting idle for their next request, oldest first.
    pub idle: IdleConnections,
    pub next_request: Cell<u64>,
    pub started_nanos: u64,
    /// Request events, for the busy-poll spinner (see [`crate::busy`]).
    pub activity: crate::busy::Activity,
    /// Shutdown as this worker's requests see it (see [`crate::lifecycle`]).
    pub drain: crate::lifecycle::WorkerDrain,
}

impl Worker {
    #[inline]
    pub fn stats(&self) -> &monitor::WorkerStats {
        &self.monitor.workers[self.id]
    }
}

impl AsRef<crate::busy::Activity> for Worker {
    fn as_ref(&self) -> &crate::busy::Activity {
        &self.activity
    }
}

impl Worker {
    /// Worker `id` of `workers`, for `config`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        workers: usize,
        config: Arc<Config>,
        router: Arc<Router>,
        monitor: &'static Monitor,
        limits: &'static Limits,
        tls: TlsConnectors,
        access_log: Option<AccessLog>,
    ) -> Worker {
        let seed = (Instant::now().elapsed().as_nanos() as u64)
            ^ ((id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ std::process::id() as u64;
        let started_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Worker {
            id,
            route_state: RouteState::new(seed ^ started_nanos),
            bufs: BufPool::new(BUF_SIZE, MAX_FREE_BUFFERS),
            wheel: Wheel::new(WHEEL_TICK),
            upstreams: Upstreams::new(
                &router,
                tls,
                config.timeouts[Layer::PoolIdle],
                monitor,
                id,
                seed,
            ),
            limits,
            access_log,
            upstream_warnings: UpstreamWarnings::default(),
            max_connections: config.server.max_connections.div_ceil(workers).max(1),
            connections: Cell::new(0),
            idle: IdleConnections::counting(&monitor.workers[id].idle_shed),
            next_request: Cell::new(0),
            started_nanos,
            activity: Default::default(),
            drain: Default::default(),
            config,
            router,
            monitor,
        }
    }
}

/// One WARN line per upstream failure class and worker per second at most, so a failing
/// upstream leaves a trace in the log without flooding it.
#[derive(Default)]
pub struct UpstreamWarnings {
    last: [Cell<Option<Instant>>; 5],
    suppressed: [Cell<u64>; 5],
}

/// The classes of upstream failure the log tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    BadResponse,
    KeyRefused,
    Status,
}

impl UpstreamWarnings {
    const EVERY: Duration = Duration::from_secs(1);

    /// Log `what` for `channel` unless this class was logged less than a second ago (then it
    /// is counted and mentioned in the next line of its class).
    pub fn warn(&self, class: UpstreamFailure, channel: &str, what: &str) {
        let i = class as usize;
        let now = Instant::now();
        if self.last[i].get().is_some_and(|t| now - t < Self::EVERY) {
            self.suppressed[i].set(self.suppressed[i].get() + 1);
            return;
        }
        self.last[i].set(Some(now));
        let more = self.suppressed[i].replace(0);
        let tail = if more > 0 {
            format!(" ({more} more like it in this worker since the last line)")
        } else {
            String::new()
        };
        crate::log::warn(&format!("upstream channel '{channel}': {what}{tail}"));
    }
}
