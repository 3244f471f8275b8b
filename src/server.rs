//! Starting the relay: a validated config into running workers.
//!
//! Owns: the process-wide pieces built once (the monitor, the routing table, the TLS
//! connectors, the file-descriptor limit, the quota ledger: opened and replayed before the
//! limits are built, its flush thread started) and the workers' start, returning once every
//! listener is bound and health may pass; and the end: on SIGTERM / SIGINT the ledger's last
//! flush before the process exits 0. Must not: parse arguments or print usage (`cli`).

use std::collections::HashMap;
use std::path::Path;

use crate::config::Config;
use crate::limits::UsageBook;
use crate::monitor::Monitor;
use crate::state::file::FileStore;
use crate::state::{Ledger, QuotaStore};
use crate::worker;

/// A started relay: its workers run until the process ends.
pub struct Running {
    pub monitor: &'static Monitor,
    pub workers: Vec<std::thread::JoinHandle<()>>,
    /// The quota ledger's flush thread, when `server.state_dir` is set.
    ledger: Option<Ledger>,
}

/// How long a shutdown waits for the requests in flight to settle before the ledger's last
/// flush (there is no drain yet: requests still running after it end with the process).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Running {
    pub fn wait(self) {
        for h in self.workers {
            let _ = h.join();
        }
    }

    /// Serves until SIGTERM or SIGINT (which [`block_shutdown_signals`] must have blocked
    /// before [`start`], so no other thread takes them), then makes the ledger's last flush.
    /// The caller exits 0. In-flight requests are not drained: they end with the process.
    pub fn serve_until_signal(self) {
        let signal = wait_for_shutdown_signal();
        crate::log::info(&format!("{signal}: shutting down"));
        if let Some(ledger) = self.ledger {
            // A response can reach its client a moment before its request settles: give the
            // requests in flight a bounded moment to settle, so the last flush has them.
            let deadline = std::time::Instant::now() + SETTLE_WAIT;
            let limits = crate::reload::newest().limits.clone();
            while limits.unsettled() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if limits.unsettled() {
                crate::log::warn(
                    "quota ledger: requests still in flight at shutdown; their usage is not recorded",
                );
            }
            ledger.stop();
            crate::log::info("quota ledger flushed");
        }
    }
}

/// The signal set a clean shutdown waits for.
fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set this function owns.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards, so
/// [`Running::serve_until_signal`] receives them. Call before [`start`].
pub fn block_shutdown_signals() {
    let set = shutdown_signals();
    // SAFETY: changes only this thread's signal mask; the set is initialised.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_for_shutdown_signal() -> &'static str {
    let set = shutdown_signals();
    let mut signal: libc::c_int = 0;
    // SAFETY: sigwait reads the initialised set and writes one int; retried if interrupted.
    while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
    if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
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
    let listen = config.server.listen;
    // The ledger first: the usage book starts from what it recorded.
    let (store, settled) = match &config.server.state_dir {
        Some(dir) => {
            let (store, settled) = open_ledger(dir)?;
            (Some(store), settled)
        }
        None => (None, HashMap::new()),
    };
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
    let workers = worker::start(&generation, monitor, n, &mut access_log)?;
    crate::reload::watch_hangups()?;
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
        ledger,
    })
}
