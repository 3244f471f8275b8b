//! Starting the relay: a validated config into running workers.
//!
//! Owns: the process-wide pieces built once (the monitor, the routing table, the TLS
//! connectors, the file-descriptor limit) and the workers' start, returning once every
//! listener is bound and health may pass. Must not: parse arguments or print usage (`cli`).

use std::sync::Arc;

use crate::config::Config;
use crate::monitor::Monitor;
use crate::route::Router;
use crate::worker;

/// A started relay: its workers run until the process ends.
pub struct Running {
    pub monitor: &'static Monitor,
    pub workers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn wait(self) {
        for h in self.workers {
            let _ = h.join();
        }
    }
}

/// Start workers for a validated config; returns once every listener is bound.
pub fn start(config: Config) -> std::io::Result<Running> {
    let n = config.effective_workers();
    crate::listen::prepare_fd_limit(&config);
    let monitor = Monitor::new(
        n,
        config.monitor.warn_inflight as u64,
        config.monitor.alert_inflight as u64,
        config.tokens.iter().map(|t| t.name.clone()).collect(),
        config.channels.iter().map(|c| c.name.clone()).collect(),
    );
    let router = Arc::new(Router::new(&config));
    let _ = monitor.channel_health.set(router.health);
    // One connector per distinct channel ca_file, plus the default (webpki roots only).
    let tls = crate::upstream::TlsConnectors::for_channels(&config.channels)?;
    let listen = config.server.listen;
    let limits = crate::limits::Limits::new(config.server.max_inflight, &config.tokens);
    let shared = worker::Shared {
        config: Arc::new(config),
        router,
        monitor,
        limits,
        tls,
    };
    let mut access_log =
        crate::access_log::Writer::start(&shared.config.log.access, n, &monitor.access_log_dropped)
            .map_err(|e| std::io::Error::new(e.kind(), format!("access log: {e}")))?;
    let workers = worker::start(&shared, n, &mut access_log)?;
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
    Ok(Running { monitor, workers })
}
