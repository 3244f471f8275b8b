//! What one worker's requests share: the per-worker context every connection task holds an
//! `Rc` of.
//!
//! Owns: the [`Worker`] value (config and routing table handles, buffer pool, timing wheel,
//! upstream side, idle registry, admission shares, counters), how it is built for a worker,
//! and how it follows a reload: a `Worker` is one config generation's view. The parts that
//! outlive a generation (buffers, wheel, pool, idle registry, counters, access log) are `Rc`
//! handles the next generation's `Worker` shares; the parts a config decides (config, router,
//! limits, channel runtimes) are its own. A connection takes the newest `Worker` when a request
//! head arrives ([`Worker::newer`]), so a request runs whole under one config, and an old
//! generation goes when its last request does.
//!
//! Must not: be shared across threads — everything here lives on its worker's thread, and the
//! only cross-thread parts are the read-only config and router, the limits' atomics and the
//! monitor's counters.

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
use crate::upstream::Upstreams;
use crate::wheel::Wheel;

/// Wheel tick: timeouts are coarse (hundreds of ms and up), so 5 ms is ample precision.
const WHEEL_TICK: Duration = Duration::from_millis(5);
/// Free buffers a worker keeps for reuse. Enough for the hot path at high concurrency; more
/// would keep a burst's memory resident after it is over.
const MAX_FREE_BUFFERS: usize = 256;

/// Everything one worker's requests share, for one config generation. Lives in an `Rc` on its
/// own thread.
pub struct Worker {
    pub id: usize,
    /// The config generation this view belongs to (see [`crate::reload`]).
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    pub monitor: &'static Monitor,
    pub route_state: RouteState,
    pub bufs: Rc<BufPool>,
    pub wheel: Rc<Wheel>,
    /// The upstream side: idle pool, name cache, each channel's runtime.
    pub upstreams: Upstreams,
    /// The process-wide limits (`max_inflight`, the tokens').
    pub limits: Arc<Limits>,
    /// Which channel, key and token created each Responses API id (process-wide).
    pub response_ids: Arc<crate::responses_ids::ResponseIds>,
    /// This worker's end of the access log, when it is on.
    pub access_log: Option<Rc<AccessLog>>,
    /// Rate-limited WARN lines for upstream failures.
    pub upstream_warnings: Rc<UpstreamWarnings>,
    /// This worker's share of `max_connections`.
    pub max_connections: usize,
    /// Client connections this worker holds now: counted at accept, before the connection's
    /// task first runs, so a burst of accepts cannot overshoot the bound.
    pub connections: Rc<Cell<usize>>,
    /// Client connections waiting idle for their next request, oldest first.
    pub idle: Rc<IdleConnections>,
    pub next_request: Rc<Cell<u64>>,
    pub started_nanos: u64,
    /// Request events, for the busy-poll spinner (see [`crate::busy`]).
    pub activity: Rc<crate::busy::Activity>,
    /// Shutdown as this worker's requests see it (see [`crate::lifecycle`]).
    pub drain: Rc<crate::lifecycle::WorkerDrain>,
}

thread_local! {
    /// This worker thread's newest generation, once a reload made one.
    static NEWEST: std::cell::RefCell<Option<Rc<Worker>>> = const { std::cell::RefCell::new(None) };
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
    /// The newest generation's view of this worker when a reload published one since this
    /// view was made; `None` (one atomic load) otherwise.
    #[inline]
    pub fn newer(self: &Rc<Self>) -> Option<Rc<Worker>> {
        if crate::reload::newest_number() == self.generation {
            return None;
        }
        Some(self.adopt_newest())
    }

    #[cold]
    fn adopt_newest(self: &Rc<Self>) -> Rc<Worker> {
        let generation = crate::reload::newest();
        NEWEST.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some(w) = cell.as_ref().filter(|w| w.generation == generation.number) {
                return w.clone();
            }
            let w = Rc::new(self.next_generation(&generation));
            *cell = Some(w.clone());
            w
        })
    }

    /// This worker under `g`: shares everything that outlives a config, takes the rest from
    /// `g`.
    fn next_generation(&self, g: &crate::reload::Generation) -> Worker {
        let seed = self.route_state.next_random();
        Worker {
            id: self.id,
            generation: g.number,
            config: g.config.clone(),
            router: g.router.clone(),
            monitor: self.monitor,
            route_state: RouteState::new(seed),
            bufs: self.bufs.clone(),
            wheel: self.wheel.clone(),
            upstreams: self.upstreams.renewed(&g.router, g.tls.clone(), seed),
            limits: g.limits.clone(),
            response_ids: g.response_ids.clone(),
            access_log: self.access_log.clone(),
            upstream_warnings: self.upstream_warnings.clone(),
            max_connections: connection_share(&g.config),
            connections: self.connections.clone(),
            idle: self.idle.clone(),
            next_request: self.next_request.clone(),
            started_nanos: self.started_nanos,
            activity: self.activity.clone(),
            drain: self.drain.clone(),
        }
    }
}

/// One worker's share of `max_connections`.
fn connection_share(config: &Config) -> usize {
    let workers = config.effective_workers();
    config.server.max_connections.div_ceil(workers).max(1)
}

impl Worker {
    /// Worker `id`, for the first config generation `g`.
    pub fn new(
        id: usize,
        g: &crate::reload::Generation,
        monitor: &'static Monitor,
        access_log: Option<AccessLog>,
    ) -> Worker {
        let (config, router) = (g.config.clone(), g.router.clone());
        let seed = (Instant::now().elapsed().as_nanos() as u64)
            ^ ((id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ std::process::id() as u64;
        let started_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Worker {
            id,
            generation: g.number,
            route_state: RouteState::new(seed ^ started_nanos),
            bufs: Rc::new(BufPool::new(BUF_SIZE, MAX_FREE_BUFFERS)),
            wheel: Wheel::new(WHEEL_TICK),
            upstreams: Upstreams::new(
                &router,
                g.tls.clone(),
                config.timeouts[Layer::PoolIdle],
                monitor,
                id,
                seed,
            ),
            limits: g.limits.clone(),
            response_ids: g.response_ids.clone(),
            access_log: access_log.map(Rc::new),
            upstream_warnings: Rc::default(),
            max_connections: connection_share(&config),
            connections: Rc::default(),
            idle: Rc::new(IdleConnections::counting(&monitor.workers[id].idle_shed)),
            next_request: Rc::default(),
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
