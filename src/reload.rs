//! Config generations and reload: SIGHUP re-reads the config file, and what it builds serves
//! every request whose head arrives after it; requests already in flight finish under the
//! config they started with.
//!
//! Key components:
//! - [`Generation`]: what one config decides for the whole process — the config, the routing
//!   table, the limits, the TLS connectors — numbered from 1. Built off the request path, then
//!   published at once.
//! - [`newest_number`]: one atomic load; each worker compares it with the generation of its
//!   `Worker` view when a request head arrives and adopts the newest when they differ
//!   (`context::Worker::newer`).
//! - [`reload`]: read, check, build and publish; on any error nothing changes.
//!
//! What a reload keeps: in-flight requests and streams (they hold their generation), parked
//! upstream connections to upstreams that are still configured (the pool is the worker's, keyed
//! by endpoint), the counters (rows are kept by token and channel name), the process's
//! `max_inflight` count and each unchanged token's limit state (`Limits::renewed`), the quota
//! usage of every token name, and the health of every unchanged channel (`Health::renewed`). What needs a
//! restart, and is reported as such when it changed: `server.listen`, `server.workers`,
//! `server.busy_poll`, `[log] access`, `timeouts.pool_idle`, `server.responses_ids` and the `[monitor]` thresholds.
//!
//! `[server.tls]`: the certificate and key files are read again by every reload, so a renewed
//! certificate (same paths, new files, or new paths) serves the connections accepted after
//! it; connections already open keep the one they were accepted with.
//!
//! Error handling: a config that does not load, changes `listen`, `workers` or `state_dir`,
//! turns `[server.tls]` on or off,
//! adds more new token names than the usage book has room for, or names a
//! `ca_file` that no longer reads is refused with one ERROR line; the old config keeps
//! serving. Must not: block a worker — the file is read and the tables built on the thread
//! that asked for the reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Layer};
use crate::limits::{Limits, UsageBook};
use crate::monitor::{Monitor, Serving};
use crate::route::Router;
use crate::upstream::TlsConnectors;

/// What one config decides for the whole process.
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    pub limits: Arc<Limits>,
    pub tls: TlsConnectors,
    /// The Responses API's id map: made once, carried by every later generation.
    pub response_ids: Arc<crate::responses_ids::ResponseIds>,
}

/// The newest generation's number; 0 until the first is published.
static NEWEST_NUMBER: AtomicU64 = AtomicU64::new(0);
/// The newest generation. Locked only to publish and to adopt one, never on a request's path
/// (a worker takes it when [`NEWEST_NUMBER`] moved) and never across an await.
static NEWEST: Mutex<Option<Arc<Generation>>> = Mutex::new(None);
/// The monitor whose counter rows a reload maps names to.
static MONITOR: std::sync::OnceLock<&'static Monitor> = std::sync::OnceLock::new();

/// The number of the newest generation.
#[inline]
pub fn newest_number() -> u64 {
    NEWEST_NUMBER.load(Ordering::Acquire)
}

impl Generation {
    /// What health and `/metrics` read of this generation.
    pub fn serving(&self) -> Serving<'_> {
        Serving {
            config: &self.config,
            health: &self.router.health,
            limits: &self.limits,
            channel_rows: self.router.channel_rows(),
        }
    }
}

/// The newest generation, if one was published (health and metrics, also in unit tests).
pub fn newest_published() -> Option<Arc<Generation>> {
    NEWEST.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The newest generation. Panics before [`first`] ran: no worker exists then.
pub fn newest() -> Arc<Generation> {
    NEWEST
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("the first generation is published before any worker starts")
}

fn publish(generation: Generation) -> Arc<Generation> {
    let generation = Arc::new(generation);
    let number = generation.number;
    *NEWEST.lock().unwrap_or_else(|e| e.into_inner()) = Some(generation.clone());
    NEWEST_NUMBER.store(number, Ordering::Release);
    generation
}

/// Build and publish generation 1 from the config the process started with.
pub fn first(
    config: Config,
    monitor: &'static Monitor,
    book: &'static UsageBook,
) -> std::io::Result<Arc<Generation>> {
    let _ = MONITOR.set(monitor);
    let router = Arc::new(Router::new(&config).with_counter_rows(monitor));
    let tls = TlsConnectors::for_channels(&config.channels)?;
    let limits = Limits::new(config.server.max_inflight, &config.tokens, book)
        .map_err(std::io::Error::other)?;
    let limits = Arc::new(limits);
    crate::model_list::spawn(&router, config.server.models_refresh)?;
    let response_ids = Arc::new(crate::responses_ids::ResponseIds::new(
        config.server.responses_ids,
    ));
    Ok(publish(Generation {
        number: 1,
        config: Arc::new(config),
        router,
        limits,
        tls,
        response_ids,
    }))
}

/// Re-read the config file the process started with and publish what it builds. Returns a
/// line for the log; on error the old generation stays and the error says why.
pub fn reload() -> Result<String, String> {
    let old = newest();
    let path = old.config.path.clone();
    let config = crate::config::load(&path).map_err(|e| e.to_string())?;
    refuse_unreloadable(&old.config, &config)?;
    let restart = needs_restart(&old.config, &config);
    let monitor = *MONITOR.get().ok_or("the relay has not started")?;
    let tls = TlsConnectors::for_channels(&config.channels).map_err(|e| e.to_string())?;
    let router = Arc::new(
        Router::new(&config)
            .with_counter_rows(monitor)
            .with_health_from(&old.router, &old.config, &config),
    );
    let limits = Arc::new(old.limits.renewed(
        config.server.max_inflight,
        &old.config.tokens,
        &config.tokens,
    )?);
    crate::model_list::spawn(&router, config.server.models_refresh).map_err(|e| e.to_string())?;
    crate::log::set_format(config.log.format);
    let (channels, tokens) = (config.channels.len(), config.tokens.len());
    let number = old.number + 1;
    let response_ids = old.response_ids.clone();
    drop(old);
    publish(Generation {
        number,
        config: Arc::new(config),
        router,
        limits,
        tls,
        response_ids,
    });
    let mut line = format!(
        "config reloaded from {}: {channels} channel(s), {tokens} token(s) (generation {number})",
        path.display()
    );
    if !restart.is_empty() {
        line.push_str(&format!(
            "; changed but kept until a restart: {}",
            restart.join(", ")
        ));
    }
    Ok(line)
}

/// What a running process cannot change: the listeners and the worker threads.
fn refuse_unreloadable(old: &Config, new: &Config) -> Result<(), String> {
    if old.server.listen != new.server.listen {
        return Err(format!(
            "server.listen changed ({} to {}): that needs a restart",
            old.server.listen_text, new.server.listen_text
        ));
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        let (from, to) = if new.server.tls.is_some() {
            ("plain HTTP", "TLS")
        } else {
            ("TLS", "plain HTTP")
        };
        return Err(format!(
            "[server.tls] changed the listener from {from} to {to}: that needs a restart \
             (a renewed certificate or key under [server.tls] is picked up by a reload)"
        ));
    }
    if old.server.state_dir != new.server.state_dir {
        return Err("server.state_dir changed: the quota ledger moves only with a restart".into());
    }
    if old.effective_workers() != new.effective_workers() {
        return Err(format!(
            "server.workers changed ({} to {}): that needs a restart",
            old.effective_workers(),
            new.effective_workers()
        ));
    }
    Ok(())
}

/// Keys a reload leaves as they were (set up once per worker or process).
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.server.busy_poll != new.server.busy_poll {
        out.push("server.busy_poll");
    }
    if old.log.access != new.log.access {
        out.push("log.access");
    }
    if old.server.state_flush != new.server.state_flush {
        out.push("server.state_flush");
    }
    if old.server.responses_ids != new.server.responses_ids {
        out.push("server.responses_ids");
    }
    if old.timeouts[Layer::PoolIdle] != new.timeouts[Layer::PoolIdle] {
        out.push("timeouts.pool_idle");
    }
    if (
        old.monitor.warn_inflight,
        old.monitor.alert_inflight,
        old.monitor.log_interval,
    ) != (
        new.monitor.warn_inflight,
        new.monitor.alert_inflight,
        new.monitor.log_interval,
    ) {
        out.push("monitor");
    }
    out
}

/// What SIGHUP does (on the signal thread, see `signals`): reload the config, with systemd
/// told `RELOADING=1` before and `READY=1` after, and reopen the access log file (logrotate).
pub fn on_hangup() {
    let notify = crate::notify::Notifier::from_env();
    notify.reloading();
    match reload() {
        Ok(line) => crate::log::info(&format!("SIGHUP: {line}")),
        Err(e) => crate::log::error(&format!(
            "SIGHUP: config reload refused, the running config stays: {e}"
        )),
    }
    crate::access_log::reopen();
    notify.ready();
}
