//! State that survives restarts: the quota ledger.
//!
//! Owns: the state-layer interface [`QuotaStore`] (load every token's settled total by name;
//! record new totals durably) and the [`Ledger`], a background thread — not a worker — that
//! every `server.state_flush` reads each token's settled usage from `limits` (atomics the
//! workers add to when requests finish) and hands the totals that changed to the store. The
//! file-backed store is [`file::FileStore`] (design: docs/quota-ledger.md).
//!
//! Must not: be on the request path. The relay never calls into this module: workers only add
//! to `limits`' counters, so a store that is slow, failing or remote (a shared store for several
//! instances implements the same trait) cannot slow a request. Must not allocate per flush once
//! warm (the alloc-budget test counts every thread's allocations).
//!
//! Key components:
//! - [`QuotaStore`]: `load` at start, `record` per flush. Records carry absolute totals (replay
//!   keeps the last one per token, so nothing is counted twice) and the increment since the
//!   previous record (what a store shared by several instances would add to its own total).
//! - [`Ledger`]: the flush thread; [`Ledger::stop`] makes the last flush (clean shutdown).
//!
//! Error handling: a store that cannot open, read or lock its state refuses the start with an
//! error naming the path. A failed flush at run time keeps the totals in memory (the next flush
//! writes them), counts `ledger_write_errors` and logs an ERROR at most once a minute.
//!
//! What a crash may lose: usage settled since the last completed flush — at most one
//! `state_flush` interval (plus the time the flush takes). Nothing is counted twice.

pub mod file;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::limits::UsageBook;
use crate::monitor::Monitor;

/// One token's settled usage as a record: its absolute total and what it grew by since the
/// previous record this process made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled<'a> {
    pub name: &'a str,
    pub total: u64,
    pub delta: u64,
}

/// Where settled quota usage is kept. Implementations: [`file::FileStore`].
pub trait QuotaStore: Send {
    /// Every token's settled total as last recorded, by name — tokens no longer in the config
    /// included (a store keeps their records untouched).
    fn load(&mut self) -> io::Result<HashMap<String, u64>>;

    /// Records `settled` and returns once it is on stable storage.
    fn record(&mut self, settled: &[Settled<'_>]) -> io::Result<()>;
}

/// The flush thread; stopped by [`Ledger::stop`] (a last flush) or with the process.
pub struct Ledger {
    wake: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Starts flushing the settled usage in `book` (which starts from what `store` holds) into
    /// `store` every `every`.
    pub fn start(
        store: Box<dyn QuotaStore>,
        book: &'static UsageBook,
        every: Duration,
        monitor: &'static Monitor,
    ) -> io::Result<Ledger> {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        // Sized for every row the book can ever hold, so no flush allocates.
        let mut written = Vec::with_capacity(book.room());
        written.extend(book.rows().iter().map(|r| r.used()));
        let mut flusher = Flusher {
            store,
            book,
            settled: Vec::with_capacity(book.room()),
            indexes: Vec::with_capacity(book.room()),
            written,
            monitor,
            last_error_log: None,
        };
        let signal = wake.clone();
        let thread = std::thread::Builder::new()
            .name("ringway-ledger".into())
            .spawn(move || {
                let (lock, cvar) = &*signal;
                loop {
                    let stop = {
                        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                        let (guard, _) = cvar
                            .wait_timeout_while(guard, every, |stop| !*stop)
                            .unwrap_or_else(|e| e.into_inner());
                        *guard
                    };
                    flusher.flush();
                    if stop {
                        break;
                    }
                }
            })?;
        Ok(Ledger {
            wake,
            thread: Some(thread),
        })
    }

    /// The last flush: wakes the thread, which writes what settled since its previous flush
    /// and ends; returns when it has.
    pub fn stop(mut self) {
        let (lock, cvar) = &*self.wake;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the flush thread owns.
struct Flusher {
    store: Box<dyn QuotaStore>,
    /// Settled usage by token name (rows are added by reloads, never removed).
    book: &'static UsageBook,
    /// What the store holds for each row of the book (0 for rows it has never recorded).
    written: Vec<u64>,
    /// This flush's records and their tokens' indexes; reused, so a flush allocates nothing.
    settled: Vec<Settled<'static>>,
    indexes: Vec<usize>,
    monitor: &'static Monitor,
    last_error_log: Option<Instant>,
}

impl Flusher {
    fn flush(&mut self) {
        self.settled.clear();
        self.indexes.clear();
        let rows = self.book.rows();
        // New rows (a reload added a token) start at nothing recorded; within capacity.
        self.written.resize(rows.len().max(self.written.len()), 0);
        for (i, row) in rows.iter().enumerate() {
            let name = row.name();
            let total = row.used();
            let before = self.written[i];
            if total != before {
                self.settled.push(Settled {
                    name,
                    total,
                    delta: total.saturating_sub(before),
                });
                self.indexes.push(i);
            }
        }
        if self.settled.is_empty() {
            return;
        }
        match self.store.record(&self.settled) {
            Ok(()) => {
                for (s, &i) in self.settled.iter().zip(&self.indexes) {
                    self.written[i] = s.total;
                }
            }
            Err(e) => {
                self.monitor.ledger_write_errors.fetch_add(1, Relaxed);
                let now = Instant::now();
                if self
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                {
                    self.last_error_log = Some(now);
                    crate::log::error(&format!(
                        "quota ledger: flush failed; the usage stays in memory and the next flush retries: {e}"
                    ));
                }
            }
        }
    }
}
