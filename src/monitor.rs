//! Counters, the health endpoint, Prometheus metrics and the periodic health log line.
//!
//! Owns: one [`WorkerStats`] block per worker. Each block is written only by its own worker
//! (relaxed atomic stores on a line no other core writes), and read by whichever worker answers
//! `/api/monitor/health` or `/metrics`, which sums them. That keeps the request path free of
//! shared writes while any worker can report the whole process.
//!
//! Also owns the text formats: names in the health JSON and `/metrics`, and escaping every
//! label value (token and channel names come from the config and may hold any character).
//!
//! Must not: lock, or do anything on the request path beyond relaxed counter updates.

use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::deadline::Layer;
use crate::health::Health;
use crate::limits::Limits;

/// Latency histogram bounds in seconds (Prometheus `le` labels).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// How many observations each bucket holds (the last: over the largest bound), and their
    /// sum in microseconds, summed over `parts` (one histogram per worker).
    pub fn merged<'a>(
        parts: impl Iterator<Item = &'a Histogram>,
    ) -> ([u64; LATENCY_BOUNDS.len() + 1], u64) {
        let mut buckets = [0u64; LATENCY_BOUNDS.len() + 1];
        let mut sum = 0u64;
        for h in parts {
            for (total, b) in buckets.iter_mut().zip(&h.buckets) {
                *total += b.load(Relaxed);
            }
            sum += h.sum_micros.load(Relaxed);
        }
        (buckets, sum)
    }

    #[inline]
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        bump(&self.buckets[i]);
        add(&self.sum_micros, d.as_micros() as u64);
    }
}

/// One channel's upstream latency, per worker: from the moment the request was sent upstream
/// (the connection ready) to the response head (`head`), and to the end of the response as
/// relayed (`total`; for a stream, its whole length). Only the channel whose answer went to
/// the client is counted; failed-over attempts are in `channel_attempts`.
#[derive(Default)]
pub struct ChannelLatency {
    pub head: Histogram,
    pub total: Histogram,
}

/// The `q` quantile (0..1) of a histogram's observations, in seconds, estimated as Prometheus'
/// `histogram_quantile` does: linear within the bucket it falls in (observations over the
/// largest bound count as that bound). None without observations.
pub fn quantile(buckets: &[u64; LATENCY_BOUNDS.len() + 1], q: f64) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                return LATENCY_BOUNDS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    LATENCY_BOUNDS.last().copied()
}

/// Upstream error statuses are counted per exact status in this range; others go to `other`.
const UPSTREAM_STATUS_MIN: u16 = 400;
const UPSTREAM_STATUS_SLOTS: usize = 200;

#[repr(align(128))]
pub struct WorkerStats {
    pub io_driver: AtomicU8,
    pub inflight: AtomicU64,
    pub client_connections: AtomicU64,
    pub upstream_active: AtomicU64,
    pub upstream_idle: AtomicU64,
    /// Free IO buffers the worker keeps for reuse (at most 256 of 16 KiB), as of the janitor's
    /// last pass (once a second).
    pub io_buffers_idle: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub upstream_reused: AtomicU64,
    /// Parked connections closed instead of lent: bytes or a close were waiting on them.
    pub upstream_unclean: AtomicU64,
    /// Upstream responses refused as malformed or ambiguous (connection closed, 502).
    pub upstream_bad_response: AtomicU64,
    /// Upstream 401/403: the channel's key was refused (answered 502 upstream_auth_failed).
    pub upstream_auth_failed: AtomicU64,
    pub requests_total: AtomicU64,
    pub status_class: [AtomicU64; 6],
    pub timeouts: [AtomicU64; Layer::COUNT],
    pub client_gone: AtomicU64,
    pub overloaded: AtomicU64,
    /// Requests refused 429 `rate_limited` by a token's rpm, tpm or max_inflight.
    pub rate_limited: AtomicU64,
    /// Client connections accepted and closed at once: over `max_connections` with no idle
    /// connection to close, or at the fd limit (see `worker`).
    pub connections_rejected: AtomicU64,
    /// Idle keep-alive client connections closed to make room for new ones.
    pub idle_shed: AtomicU64,
    /// Failed `accept` calls (the fd limit, mostly).
    pub accept_errors: AtomicU64,
    pub upstream_connect_failed: AtomicU64,
    pub upstream_status: [AtomicU64; UPSTREAM_STATUS_SLOTS],
    pub upstream_status_other: AtomicU64,
    pub latency_total: Histogram,
    pub latency_ttfb: Histogram,
    /// Per token: [requests, prompt tokens, completion tokens].
    pub token_usage: Vec<[AtomicU64; 3]>,
    /// Per channel: [requests, prompt tokens, completion tokens].
    pub channel_usage: Vec<[AtomicU64; 3]>,
    /// Per channel: [upstream attempts, of them failed over or failed].
    pub channel_attempts: Vec<[AtomicU64; 2]>,
    /// Per channel: upstream latency of the requests it answered (see [`ChannelLatency`]).
    pub channel_latency: Vec<ChannelLatency>,
    /// Requests refused 429 `quota_exhausted` by a token's `quota_tokens`.
    pub quota_exhausted: AtomicU64,
    /// `[server.tls]` handshakes: completed, failed (an error or alert, a plain-HTTP client,
    /// a close), and cut by `client_header`.
    pub client_tls_handshakes: AtomicU64,
    pub client_tls_failed: AtomicU64,
    pub client_tls_timeouts: AtomicU64,
}

impl WorkerStats {
    fn new(tokens: usize, channels: usize) -> WorkerStats {
        WorkerStats {
            token_usage: (0..tokens).map(|_| Default::default()).collect(),
            channel_usage: (0..channels).map(|_| Default::default()).collect(),
            channel_attempts: (0..channels).map(|_| Default::default()).collect(),
            channel_latency: (0..channels).map(|_| Default::default()).collect(),
            ..WorkerStats::default()
        }
    }

    /// One upstream attempt on `channel`; `failed` when it ended before a usable answer.
    pub fn count_attempt(&self, channel: usize, failed: bool) {
        if let Some(row) = self.channel_attempts.get(channel) {
            bump(&row[0]);
            if failed {
                bump(&row[1]);
            }
        }
    }

    /// The upstream latency of a request `channel` answered: `head` from sending to the
    /// response head, `total` to the end of the response.
    #[inline]
    pub fn observe_channel(&self, channel: usize, head: Duration, total: Duration) {
        if let Some(l) = self.channel_latency.get(channel) {
            l.head.observe(head);
            l.total.observe(total);
        }
    }

    /// Account one relayed request and whatever usage its response reported.
    pub fn count_usage(&self, token: usize, channel: usize, usage: Option<crate::provider::Usage>) {
        for row in [self.token_usage.get(token), self.channel_usage.get(channel)]
            .into_iter()
            .flatten()
        {
            bump(&row[0]);
            if let Some(u) = usage {
                add(&row[1], u.prompt);
                add(&row[2], u.completion);
            }
        }
    }
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            token_usage: Vec::new(),
            channel_usage: Vec::new(),
            channel_attempts: Vec::new(),
            channel_latency: Vec::new(),
            io_driver: AtomicU8::new(0),
            inflight: AtomicU64::new(0),
            client_connections: AtomicU64::new(0),
            upstream_active: AtomicU64::new(0),
            upstream_idle: AtomicU64::new(0),
            io_buffers_idle: AtomicU64::new(0),
            upstream_connects: AtomicU64::new(0),
            upstream_reused: AtomicU64::new(0),
            upstream_unclean: AtomicU64::new(0),
            upstream_bad_response: AtomicU64::new(0),
            upstream_auth_failed: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            status_class: Default::default(),
            timeouts: Default::default(),
            client_gone: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            idle_shed: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            upstream_connect_failed: AtomicU64::new(0),
            upstream_status: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_status_other: AtomicU64::new(0),
            latency_total: Histogram::default(),
            latency_ttfb: Histogram::default(),
            quota_exhausted: AtomicU64::new(0),
            client_tls_handshakes: AtomicU64::new(0),
            client_tls_failed: AtomicU64::new(0),
            client_tls_timeouts: AtomicU64::new(0),
        }
    }
}

/// Single-writer increment: a load and a store, no locked read-modify-write on the hot path.
#[inline]
pub fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
pub fn drop_one(c: &AtomicU64) {
    c.store(c.load(Relaxed).saturating_sub(1), Relaxed);
}

impl WorkerStats {
    /// A finished request. Status 0 means no response was sent (the client left first): it
    /// counts as a request but in no status class.
    pub fn count_status(&self, status: u16) {
        if status != 0 {
            bump(&self.status_class[(status / 100).min(5) as usize]);
        }
        bump(&self.requests_total);
    }

    pub fn count_upstream_error(&self, status: u16) {
        match status.checked_sub(UPSTREAM_STATUS_MIN) {
            Some(i) if (i as usize) < UPSTREAM_STATUS_SLOTS => {
                bump(&self.upstream_status[i as usize])
            }
            _ => bump(&self.upstream_status_other),
        }
    }

    pub fn count_timeout(&self, layer: Layer) {
        bump(&self.timeouts[layer as usize]);
    }
}

pub const IO_URING: u8 = 1;
pub const EPOLL: u8 = 2;

fn driver_name(d: u8) -> &'static str {
    match d {
        IO_URING => "io_uring",
        EPOLL => "epoll",
        _ => "starting",
    }
}

/// Shared by all workers: read-only except each worker's own stats block.
/// The config generation now serving, as health and `/metrics` read it: its channel and token
/// names, its channels' health and its tokens' quota states. The caller picks the generation
/// (the newest published), so this module never reaches into `reload`.
pub struct Serving<'a> {
    pub config: &'a Config,
    pub health: &'a Health,
    pub limits: &'a Limits,
    /// Each configured channel's row in the per-channel counters (by position in `config`).
    pub channel_rows: &'a [usize],
}

pub struct Monitor {
    pub started: Instant,
    pub workers: Vec<WorkerStats>,
    pub warn_inflight: u64,
    pub alert_inflight: u64,
    /// Idle upstream connections are not counted as leaks in `open_fds`; this is what a fresh
    /// process holds (listeners, rings, stdio), read once when all workers are up.
    pub baseline_fds: AtomicU64,
    /// Access-log lines dropped because a worker's buffer was full or the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Set once every worker is listening and `baseline_fds` is taken. Until then a worker that
    /// is already up answers health with 503 `"starting"`: with SO_REUSEPORT it can be reached
    /// while its siblings are still building their runtimes.
    ready: AtomicBool,
    /// The names whose counters the per-worker token rows hold, by row.
    pub token_names: Names,
    /// The names whose counters the per-worker channel rows hold, by row.
    pub channel_names: Names,
    /// Ledger flushes that failed (the usage stays in memory and is written by the next one).
    pub ledger_write_errors: AtomicU64,
}

/// The names behind a set of per-worker counter rows. A name keeps its row for the life of the
/// process, so a reload that removes a token or channel and adds it back keeps its counters,
/// and a renumbering config never mixes two names' figures. Rows are allocated once, with
/// room for names a reload adds; a name past that room is not counted (and said so).
pub struct Names {
    list: std::sync::RwLock<Vec<String>>,
    room: usize,
}

impl Names {
    /// Rows for `names`, with room for as many again (at least 256 more).
    fn new(names: Vec<String>) -> Names {
        let room = names.len() + names.len().max(256);
        Names {
            list: std::sync::RwLock::new(names),
            room,
        }
    }

    /// How many rows each worker allocates.
    pub fn room(&self) -> usize {
        self.room
    }

    /// The row of `name`, given one if it has none and there is room. Called when a config is
    /// loaded, never on a request's path.
    pub fn row_of(&self, name: &str) -> Option<usize> {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = list.iter().position(|n| n == name) {
            return Some(i);
        }
        (list.len() < self.room).then(|| {
            list.push(name.to_string());
            list.len() - 1
        })
    }

    /// Every name that has a row, by row.
    pub fn snapshot(&self) -> Vec<String> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

const HEALTH_TIMEOUT_LAYERS: [Layer; 9] = [
    Layer::Connect,
    Layer::TlsHandshake,
    Layer::ResponseHeader,
    Layer::StreamIdle,
    Layer::Total,
    Layer::Quick,
    Layer::ClientHeader,
    Layer::ClientBody,
    Layer::ClientIdle,
];

/// One of a token's quota figures, for a metrics series.
type QuotaFigure = fn(&crate::limits::QuotaState) -> Option<u64>;

impl Monitor {
    pub fn new(
        workers: usize,
        warn_inflight: u64,
        alert_inflight: u64,
        token_names: Vec<String>,
        channel_names: Vec<String>,
    ) -> &'static Monitor {
        // Leaked on purpose: it lives as long as the process, and a plain `&'static` lets every
        // worker and upstream connection reach its stats block without touching a shared
        // reference count (an `Arc` clone per pooled connection was a cross-core cache-line
        // bounce on every request).
        let token_names = Names::new(token_names);
        let channel_names = Names::new(channel_names);
        Box::leak(Box::new(Monitor {
            started: Instant::now(),
            workers: (0..workers)
                .map(|_| WorkerStats::new(token_names.room(), channel_names.room()))
                .collect(),
            warn_inflight,
            alert_inflight,
            baseline_fds: AtomicU64::new(0),
            access_log_dropped: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            token_names,
            channel_names,
            ledger_write_errors: AtomicU64::new(0),
        }))
    }

    fn sum(&self, f: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| f(w).load(Relaxed)).sum()
    }

    pub fn inflight(&self) -> u64 {
        self.sum(|w| &w.inflight)
    }

    /// The process has started: every worker listens and the fd baseline is taken.
    pub fn mark_ready(&self) {
        self.ready.store(true, Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Acquire)
    }

    pub fn status(&self) -> &'static str {
        self.status_when(self.is_ready())
    }

    fn status_when(&self, ready: bool) -> &'static str {
        if !ready {
            return "starting";
        }
        let n = self.inflight();
        if n > self.alert_inflight {
            "alert"
        } else if n > self.warn_inflight {
            "warn"
        } else {
            "ok"
        }
    }

    pub fn io_driver(&self) -> &'static str {
        let d = self
            .workers
            .first()
            .map(|w| w.io_driver.load(Relaxed))
            .unwrap_or(0);
        driver_name(d)
    }

    fn counters_json(w: &[&WorkerStats]) -> serde_json::Map<String, serde_json::Value> {
        let s = |f: &dyn Fn(&WorkerStats) -> &AtomicU64| -> u64 {
            w.iter().map(|x| f(x).load(Relaxed)).sum()
        };
        let mut m = serde_json::Map::new();
        m.insert("inflight_requests".into(), s(&|x| &x.inflight).into());
        m.insert(
            "client_connections".into(),
            s(&|x| &x.client_connections).into(),
        );
        m.insert(
            "upstream_connections_active".into(),
            s(&|x| &x.upstream_active).into(),
        );
        m.insert(
            "upstream_connections_idle".into(),
            s(&|x| &x.upstream_idle).into(),
        );
        m.insert("io_buffers_idle".into(), s(&|x| &x.io_buffers_idle).into());
        m.insert(
            "upstream_connects".into(),
            s(&|x| &x.upstream_connects).into(),
        );
        m.insert("upstream_reused".into(), s(&|x| &x.upstream_reused).into());
        m.insert(
            "upstream_unclean".into(),
            s(&|x| &x.upstream_unclean).into(),
        );
        m.insert(
            "upstream_bad_response".into(),
            s(&|x| &x.upstream_bad_response).into(),
        );
        m.insert(
            "upstream_auth_failed".into(),
            s(&|x| &x.upstream_auth_failed).into(),
        );
        m.insert("requests_total".into(), s(&|x| &x.requests_total).into());
        m.insert("client_gone".into(), s(&|x| &x.client_gone).into());
        m.insert("overloaded".into(), s(&|x| &x.overloaded).into());
        m.insert("rate_limited".into(), s(&|x| &x.rate_limited).into());
        m.insert("quota_exhausted".into(), s(&|x| &x.quota_exhausted).into());
        m.insert(
            "connections_rejected".into(),
            s(&|x| &x.connections_rejected).into(),
        );
        m.insert("idle_connections_shed".into(), s(&|x| &x.idle_shed).into());
        m.insert("accept_errors".into(), s(&|x| &x.accept_errors).into());
        let mut tls = serde_json::Map::new();
        tls.insert("handshakes".into(), s(&|x| &x.client_tls_handshakes).into());
        tls.insert("failed".into(), s(&|x| &x.client_tls_failed).into());
        tls.insert("timeouts".into(), s(&|x| &x.client_tls_timeouts).into());
        m.insert("client_tls".into(), tls.into());
        m.insert("tasks_pending".into(), 0u64.into());
        let mut t = serde_json::Map::new();
        for l in HEALTH_TIMEOUT_LAYERS {
            t.insert(l.name().into(), s(&|x| &x.timeouts[l as usize]).into());
        }
        m.insert("timeouts".into(), t.into());
        // Finished requests by the class of their answer (`ringway top` shows errors by class).
        let mut c = serde_json::Map::new();
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
            c.insert(class.into(), s(&|x| &x.status_class[i + 1]).into());
        }
        m.insert("requests_by_class".into(), c.into());
        m
    }

    /// The health object, and whether the process was ready when it was taken (one reading
    /// decides both the answer's status code and its `status` field).
    pub fn health(&self, serving: Option<&Serving>) -> (bool, Vec<u8>) {
        let ready = self.is_ready();
        (ready, self.health_json_when(ready, serving))
    }

    fn health_json_when(&self, ready: bool, serving: Option<&Serving>) -> Vec<u8> {
        let all: Vec<&WorkerStats> = self.workers.iter().collect();
        let mut m = serde_json::Map::new();
        m.insert("status".into(), self.status_when(ready).into());
        m.insert(
            "uptime_seconds".into(),
            self.started.elapsed().as_secs().into(),
        );
        m.insert("workers".into(), self.workers.len().into());
        m.insert("io_driver".into(), self.io_driver().into());
        m.extend(Self::counters_json(&all));
        m.insert("open_fds".into(), open_fds().into());
        m.insert(
            "baseline_fds".into(),
            self.baseline_fds.load(Relaxed).into(),
        );
        m.insert("rss_bytes".into(), rss_bytes().into());
        m.insert(
            "access_log_dropped".into(),
            self.access_log_dropped.load(Relaxed).into(),
        );
        let per: Vec<serde_json::Value> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut o = Self::counters_json(&[w]);
                o.insert("worker".into(), i.into());
                o.insert(
                    "io_driver".into(),
                    driver_name(w.io_driver.load(Relaxed)).into(),
                );
                o.into()
            })
            .collect();
        m.insert("per_worker".into(), per.into());
        self.quota_json(&mut m, serving);
        if let Some(g) = serving {
            let names: Vec<String> = g.config.channels.iter().map(|c| c.name.clone()).collect();
            let channels: Vec<serde_json::Value> = g
                .health
                .snapshot(&names)
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut v = c.json();
                    let row = g.channel_rows.get(i).copied().unwrap_or(usize::MAX);
                    v["latency_ms"] = self.channel_latency_json(row);
                    v
                })
                .collect();
            m.insert("channels".into(), channels.into());
        }
        serde_json::to_vec(&serde_json::Value::Object(m)).unwrap_or_default()
    }

    /// A channel's `latency_ms` in health: requests answered, mean, p50 and p90 of the time
    /// to the response head and of the whole upstream response, over the life of the process,
    /// the percentiles estimated from the histogram buckets (`null` before any request).
    fn channel_latency_json(&self, row: usize) -> serde_json::Value {
        let merged = |f: fn(&ChannelLatency) -> &Histogram| {
            Histogram::merged(
                self.workers
                    .iter()
                    .filter_map(|w| w.channel_latency.get(row))
                    .map(f),
            )
        };
        let (head, head_sum) = merged(|l| &l.head);
        let (total, total_sum) = merged(|l| &l.total);
        let count: u64 = head.iter().sum();
        let ms = |v: Option<f64>| v.map(|s| (s * 1e6).round() / 1e3);
        // Microseconds summed: the mean in ms to the microsecond.
        let mean = |sum: u64| (count > 0).then(|| (sum as f64 / count as f64).round() / 1e3);
        serde_json::json!({
            "requests": count,
            "head_mean": mean(head_sum),
            "head_p50": ms(quantile(&head, 0.5)),
            "head_p90": ms(quantile(&head, 0.9)),
            "total_mean": mean(total_sum),
            "total_p50": ms(quantile(&total, 0.5)),
            "total_p90": ms(quantile(&total, 0.9)),
        })
    }

    /// Health's `tokens` array (name, `quota_tokens` or null, `quota_used`, `quota_reserved`)
    /// and `ledger_write_errors`.
    fn quota_json(
        &self,
        m: &mut serde_json::Map<String, serde_json::Value>,
        serving: Option<&Serving>,
    ) {
        m.insert(
            "ledger_write_errors".into(),
            self.ledger_write_errors.load(Relaxed).into(),
        );
        let Some(g) = serving else {
            return;
        };
        let tokens: Vec<serde_json::Value> = g
            .config
            .tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let name = &t.name;
                let q = g.limits.quota_state(i)?;
                Some(serde_json::json!({
                    "name": name,
                    "quota_tokens": q.quota,
                    "quota_used": q.used,
                    "quota_reserved": q.reserved,
                }))
            })
            .collect();
        m.insert("tokens".into(), tokens.into());
    }

    /// The periodic health line; its level follows the monitor thresholds.
    pub fn log_line(&self) {
        let inflight = self.inflight();
        let line = format!(
            "health: status={} inflight={} client_conns={} upstream_active={} upstream_idle={} requests_total={} open_fds={} rss_mb={:.1}",
            self.status(),
            inflight,
            self.sum(|w| &w.client_connections),
            self.sum(|w| &w.upstream_active),
            self.sum(|w| &w.upstream_idle),
            self.sum(|w| &w.requests_total),
            open_fds(),
            rss_bytes() as f64 / 1048576.0
        );
        if inflight > self.alert_inflight {
            crate::log::error(&line);
        } else if inflight > self.warn_inflight {
            crate::log::warn(&line);
        } else {
            crate::log::info(&line);
        }
    }
}

/// A Prometheus label value, escaped as the text format requires: `\\` for a backslash, `\"`
/// for a double quote and `\n` for a line feed; everything else as is (UTF-8 is allowed).
pub struct LabelValue<'a>(pub &'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0)
}

pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

mod metrics;

#[cfg(test)]
mod tests;
