//! Starting the relay: a validated config into running workers.
//!
//! Owns: the process-wide pieces built once (the monitor, the routing table, the TLS
//! connectors, the file-descriptor limit, the lifecycle, the quota ledger: opened and
//! replayed before the limits are built, its flush thread started) and the workers' start,
//! returning once every listener is bound and health may pass; then, on the starting thread,
//! the supervision of the running relay ([`Running::wait`]): the systemd notifications
//! (`READY`, a `STATUS` line, `WATCHDOG` pings only while every worker's loop turns,
//! `STOPPING`), the shutdown's log lines, the ledger's last flush, and the end of the process
//! once the workers drained.
//! Must not: parse arguments or print usage (`cli`), or touch a worker's state.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::limits::UsageBook;
use crate::monitor::Monitor;
use crate::notify::Notifier;
use crate::state::file::FileStore;
use crate::state::{Ledger, QuotaStore};
use crate::worker;

/// How often the supervisor looks at the workers.
const SUPERVISE_EVERY: Duration = Duration::from_millis(50);
/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// After the drain deadline, how long requests ended by it get to write their last bytes
/// (the `shutting_down` answer or SSE event) before the process exits regardless.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// At exit, how long the access-log writer gets to write the last lines.
const ACCESS_LOG_AT_EXIT: Duration = Duration::from_secs(2);

/// A started relay: its workers run until they have drained (SIGTERM / SIGINT, see
/// `signals`), or until the process ends.
pub struct Running {
    pub monitor: &'static Monitor,
    pub workers: Vec<std::thread::JoinHandle<()>>,
    pub lifecycle: &'static Lifecycle,
    /// The quota ledger's flush thread, when `server.state_dir` is set.
    ledger: Option<Ledger>,
}

/// After the drain, how long the requests still settling get before the ledger's last flush.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

impl Running {
    /// Supervise the relay until its workers have ended: tell systemd (when run by it) that
    /// the relay is ready, keep its status line and watchdog fed, and once a drain begins,
    /// report it and return when it is over (or [`EXIT_GRACE`] after its deadline).
    pub fn wait(self) {
        let notify = Notifier::from_env();
        supervise(self.monitor, self.lifecycle, &notify);
        if let Some(ledger) = self.ledger {
            // A response can reach its client a moment before its request settles: give the
            // requests still in flight a bounded moment to settle, so the last flush has them.
            let deadline = Instant::now() + SETTLE_WAIT;
            let limits = crate::reload::newest().limits.clone();
            while limits.unsettled() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if limits.unsettled() {
                crate::log::warn(
                    "quota ledger: requests still in flight at exit; their usage is not recorded",
                );
            }
            ledger.stop();
            crate::log::info("quota ledger flushed");
        }
        for h in self.workers {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// Opens the ledger in `dir` and reads every token name's settled usage.
fn open_ledger(dir: &Path) -> std::io::Result<(FileStore, HashMap<String, u64>)> {
    let mut store = FileStore::open(dir)?;
    let totals = store.load()?;
    if store.skipped > 0 {
        crate::log::warn(&format!(
            "quota ledger: {} damaged record(s) ignored (see above); the usage they held is lost \
             unless a later record of the same token replaced it",
            store.skipped
        ));
    }
    Ok((store, totals))
}

fn sum(
    monitor: &Monitor,
    field: fn(&crate::monitor::WorkerStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    monitor.workers.iter().map(|w| field(w).load(Relaxed)).sum()
}

/// What the drain started from, for its closing log line.
struct DrainStart {
    requests_total: u64,
    inflight: u64,
    connections: u64,
    at: Instant,
}

fn supervise(monitor: &'static Monitor, lifecycle: &'static Lifecycle, notify: &Notifier) {
    notify.ready();
    let watchdog_every = notify.watchdog_every();
    let mut next_watchdog = Instant::now();
    let mut heartbeats_seen = Vec::new();
    let mut stalled = false;
    let mut next_status = Instant::now();
    let mut rate_from = (Instant::now(), sum(monitor, |w| &w.requests_total));
    let mut drain: Option<DrainStart> = None;
    loop {
        std::thread::sleep(SUPERVISE_EVERY);
        let now = Instant::now();
        if lifecycle.all_finished() {
            break;
        }
        if drain.is_none() && lifecycle.drain_until().is_some() {
            notify.stopping();
            let start = DrainStart {
                requests_total: sum(monitor, |w| &w.requests_total),
                inflight: monitor.inflight(),
                connections: sum(monitor, |w| &w.client_connections),
                at: now,
            };
            crate::log::info(&format!(
                "drain: {} request(s) in flight, {} client connection(s) open; listeners closing",
                start.inflight, start.connections
            ));
            drain = Some(start);
            next_status = now;
        }
        if let Some(until) = lifecycle.drain_until() {
            if now >= until + EXIT_GRACE {
                crate::log::warn(&format!(
                    "drain: {} worker(s) still busy {}s after the drain deadline; exiting anyway",
                    lifecycle.running(),
                    EXIT_GRACE.as_secs()
                ));
                break;
            }
        }
        if let Some(every) = watchdog_every {
            if now >= next_watchdog {
                next_watchdog = now + every;
                if lifecycle.all_turning(&mut heartbeats_seen) {
                    notify.watchdog();
                    if stalled {
                        crate::log::info("watchdog: every worker's loop turns again");
                        stalled = false;
                    }
                } else if !stalled {
                    crate::log::error(
                        "watchdog: a worker's event loop has stopped turning; withholding the watchdog ping",
                    );
                    stalled = true;
                }
            }
        }
        if notify.is_active() && now >= next_status {
            next_status = now + STATUS_EVERY;
            let requests = sum(monitor, |w| &w.requests_total);
            let secs = now.duration_since(rate_from.0).as_secs_f64();
            let rate = if secs > 0.0 {
                requests.saturating_sub(rate_from.1) as f64 / secs
            } else {
                0.0
            };
            rate_from = (now, requests);
            let inflight = monitor.inflight();
            let line = match lifecycle.drain_until() {
                None => format!("serving: {inflight} in flight, {rate:.1} req/s"),
                Some(until) => format!(
                    "draining ({}): {inflight} in flight, {}s of drain left",
                    lifecycle.drain_signal().unwrap_or("signal"),
                    until.saturating_duration_since(now).as_secs()
                ),
            };
            notify.status(&line);
        }
    }
    if let Some(start) = drain {
        let finished = sum(monitor, |w| &w.requests_total).saturating_sub(start.requests_total);
        let ended = lifecycle.ended();
        crate::log::info(&format!(
            "drain: done in {:.1}s: {finished} request(s) finished during the drain ({} were in flight at {}), {ended} ended at the drain deadline with shutting_down",
            start.at.elapsed().as_secs_f64(),
            start.inflight,
            lifecycle.drain_signal().unwrap_or("the signal"),
        ));
        if !crate::access_log::wait_written(ACCESS_LOG_AT_EXIT) {
            crate::log::warn("access log: the writer did not finish the last lines before exit");
        }
        crate::log::info("exiting");
    }
}

/// Start workers for a validated config; returns once every listener is bound.
pub fn start(config: Config) -> std::io::Result<Running> {
    start_with(config, false)
}

/// [`start`]; with `takeover` (`--takeover`), the listeners of a ringway already on
/// `server.listen` are taken over instead of refusing the address (`takeover`).
pub fn start_with(mut config: Config, takeover: bool) -> std::io::Result<Running> {
    let listen = config.server.listen;
    // The ledger first: the usage book starts from what it recorded. Before a takeover, so
    // that a ledger this process cannot have leaves the running relay untouched.
    let (store, settled) = match &config.server.state_dir {
        Some(dir) => {
            let (store, settled) = open_ledger(dir).map_err(|e| {
                if takeover {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{e} (--takeover: the quota ledger in server.state_dir belongs to \
                             one process at a time, so a relay with state_dir is upgraded by a \
                             restart; see docs/upgrade.md)"
                        ),
                    )
                } else {
                    e
                }
            })?;
            (Some(store), settled)
        }
        None => (None, HashMap::new()),
    };
    let handoff = if takeover {
        crate::takeover::take_over(listen)?
    } else {
        None
    };
    if let Some(h) = &handoff {
        if h.listeners.len() > config.effective_workers() {
            // Each listener has its own accept queue: one nobody accepts from would hold its
            // connections until it is closed, and then reset them.
            crate::log::warn(&format!(
                "takeover: {} listeners taken over, more than server.workers asks for ({}): \
                 running {} workers, one per listener (fewer needs a restart)",
                h.listeners.len(),
                config.effective_workers(),
                h.listeners.len()
            ));
            config.server.workers = h.listeners.len();
        }
    }
    let n = config.effective_workers();
    crate::listen::prepare_fd_limit(&config);
    let monitor = Monitor::new(
        n,
        config.monitor.warn_inflight as u64,
        config.monitor.alert_inflight as u64,
        config.tokens.iter().map(|t| t.name.clone()).collect(),
        config.channels.iter().map(|c| c.name.clone()).collect(),
    );
    let lifecycle = Lifecycle::new(n, config.server.drain);
    let book = UsageBook::new(&settled, &config.tokens);
    let state_flush = config.server.state_flush;
    // Routing table, TLS connectors (one per distinct channel ca_file, plus the default) and
    // limits: generation 1, which a SIGHUP replaces.
    let generation = crate::reload::first(config, monitor, book)?;
    let ledger = match store {
        Some(store) => Some(Ledger::start(Box::new(store), book, state_flush, monitor)?),
        None => None,
    };
    let mut access_log = crate::access_log::Writer::start(
        &generation.config.log.access,
        n,
        &monitor.access_log_dropped,
    )
    .map_err(|e| std::io::Error::new(e.kind(), format!("access log: {e}")))?;
    let (handoff, inherited) = match handoff {
        Some(mut h) => {
            let listeners = std::mem::take(&mut h.listeners);
            (Some(h), listeners)
        }
        None => (None, Vec::new()),
    };
    let (workers, listeners) = worker::start(
        &generation,
        monitor,
        n,
        &mut access_log,
        lifecycle,
        inherited,
    )?;
    if let Some(h) = handoff {
        let from = h.from_pid;
        // Not an error: this process's workers listen on the sockets already, and may be
        // their only holder now (the old process gone).
        if let Err(e) = h.complete() {
            crate::log::warn(&format!(
                "takeover: ringway pid {from} did not confirm the takeover ({e}); serving anyway"
            ));
        }
    }
    crate::takeover::offer(listen, listeners, lifecycle);
    monitor.baseline_fds.store(
        crate::monitor::open_fds(),
        std::sync::atomic::Ordering::Relaxed,
    );
    monitor.mark_ready();
    crate::log::info(&format!(
        "ringway {} listening on {listen} with {n} worker(s), io driver {}",
        env!("CARGO_PKG_VERSION"),
        monitor.io_driver()
    ));
    Ok(Running {
        monitor,
        workers,
        lifecycle,
        ledger,
    })
}
