//! The access log (`[log] access`): one JSON line per request, to a file (reopened on SIGHUP,
//! for logrotate) or to stderr.
//!
//! Key components:
//! - [`AccessLog`], one per worker: `finish` appends a line to the worker's buffer — no IO, no
//!   lock, no allocation once the buffers are warm. A flusher task hands a full buffer to the
//!   writer every 100 ms (or sooner when it passes a threshold) and takes back an empty one.
//! - [`Writer`], one thread per process: it writes the buffers it is handed and returns them to
//!   their worker, and reopens a file on SIGHUP.
//!
//! Error handling: a writer that falls behind never blocks a worker. The hand-over queue is
//! bounded; a buffer that cannot be handed over is dropped, and a line that finds its worker's
//! buffer full is dropped: both are counted (`access_log_dropped` in health and metrics) and
//! reported by the writer in the process log once a second at most. A file that cannot be
//! written is reported the same way.
//!
//! Must not: block the relay, or grow without bound (each worker holds at most two buffers of
//! [`BUFFER_CAP`]).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use crate::config::AccessLogTo as Destination;
use crate::error::json_string;

/// Most bytes a worker buffers between hand-overs; a line that would pass it is dropped.
pub const BUFFER_CAP: usize = 1 << 20;
/// A buffer this full is handed over at the next flush tick without waiting for the period.
const FLUSH_AT: usize = 64 << 10;
/// How often each worker hands its buffer over.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffers in the hand-over queue at most (all workers together).
const QUEUE: usize = 64;

/// Set on SIGHUP (by `signals`); the writer reopens its file when it sees it.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Buffers handed to the writer and not yet written (so shutdown can wait for them).
static HANDED_OVER: AtomicU64 = AtomicU64::new(0);

/// At exit: wait (at most `within`) until the writer wrote every buffer it was handed.
/// True when nothing is left.
pub fn wait_written(within: Duration) -> bool {
    let give_up = Instant::now() + within;
    while HANDED_OVER.load(Ordering::Acquire) > 0 {
        if Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Have the writer reopen its file (SIGHUP, for logrotate); nothing when the log is not a file.
pub fn reopen() {
    REOPEN.store(true, Ordering::Relaxed);
}

/// The process-wide writer thread and the per-worker ends it serves.
pub struct Writer {
    /// Each worker's end, taken once by that worker.
    ends: Vec<Option<AccessLog>>,
}

impl Writer {
    /// Start the writer for `workers` workers (no thread when the log is off). `dropped` is the
    /// process-wide count of dropped lines.
    pub fn start(
        dest: &Destination,
        workers: usize,
        dropped: &'static AtomicU64,
    ) -> std::io::Result<Writer> {
        if *dest == Destination::Off {
            return Ok(Writer {
                ends: (0..workers).map(|_| None).collect(),
            });
        }
        let mut sink = Sink::open(dest)?;
        let (to_writer, from_workers) = sync_channel::<(usize, Vec<u8>)>(QUEUE);
        let mut returns = Vec::with_capacity(workers);
        let mut ends = Vec::with_capacity(workers);
        for id in 0..workers {
            let (back, from_writer) = sync_channel::<Vec<u8>>(2);
            returns.push(back);
            ends.push(Some(AccessLog {
                id,
                buf: RefCell::new(Vec::with_capacity(FLUSH_AT * 2)),
                spare: RefCell::new(Some(Vec::with_capacity(FLUSH_AT * 2))),
                to_writer: to_writer.clone(),
                from_writer,
                dropped,
            }));
        }
        std::thread::Builder::new()
            .name("ringway-accesslog".into())
            .spawn(move || sink.run(from_workers, returns, dropped))?;
        Ok(Writer { ends })
    }

    /// Worker `id`'s end of the log (`None` when the log is off).
    pub fn take(&mut self, id: usize) -> Option<AccessLog> {
        self.ends.get_mut(id).and_then(Option::take)
    }
}

/// One worker's end of the access log.
pub struct AccessLog {
    id: usize,
    buf: RefCell<Vec<u8>>,
    spare: RefCell<Option<Vec<u8>>>,
    to_writer: SyncSender<(usize, Vec<u8>)>,
    from_writer: Receiver<Vec<u8>>,
    dropped: &'static AtomicU64,
}

impl AccessLog {
    /// Append one line written by `line` (which must not write a newline), or drop it when the
    /// buffer is full.
    pub fn append(&self, line: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.borrow_mut();
        if buf.len() >= BUFFER_CAP {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line(&mut buf);
        buf.push(b'\n');
    }

    /// Nothing buffered that the writer has not been handed.
    pub fn is_empty(&self) -> bool {
        self.buf.borrow().is_empty()
    }

    /// Hand the buffer to the writer if it holds anything (called every [`FLUSH_EVERY`]).
    pub fn flush(&self) {
        if let Ok(back) = self.from_writer.try_recv() {
            self.spare.borrow_mut().get_or_insert(back);
        }
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let Some(empty) = self.spare.borrow_mut().take() else {
            // The writer still has both buffers: keep filling this one (bounded by the cap).
            return;
        };
        let full = std::mem::replace(&mut *buf, empty);
        HANDED_OVER.fetch_add(1, Ordering::AcqRel);
        if let Err(TrySendError::Full((_, mut full)) | TrySendError::Disconnected((_, mut full))) =
            self.to_writer.try_send((self.id, full))
        {
            HANDED_OVER.fetch_sub(1, Ordering::AcqRel);
            let lines = full.iter().filter(|&&b| b == b'\n').count() as u64;
            self.dropped.fetch_add(lines, Ordering::Relaxed);
            full.clear();
            *self.spare.borrow_mut() = Some(full);
        }
    }
}

/// Where the writer thread writes.
enum Sink {
    Stderr,
    File { path: PathBuf, file: File },
}

impl Sink {
    fn open(dest: &Destination) -> std::io::Result<Sink> {
        match dest {
            Destination::Off => unreachable!("no sink when the log is off"),
            Destination::Stderr => Ok(Sink::Stderr),
            Destination::File(path) => Ok(Sink::File {
                file: open_append(path)?,
                path: path.clone(),
            }),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stderr => std::io::stderr().lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    fn run(
        &mut self,
        from_workers: Receiver<(usize, Vec<u8>)>,
        returns: Vec<SyncSender<Vec<u8>>>,
        dropped: &'static AtomicU64,
    ) {
        let mut reported = 0;
        let mut last_report = Instant::now();
        loop {
            if REOPEN.swap(false, Ordering::Relaxed) {
                if let Sink::File { path, file } = self {
                    match open_append(path) {
                        Ok(f) => *file = f,
                        Err(e) => crate::log::warn(&format!(
                            "access log: cannot reopen {}: {e}",
                            path.display()
                        )),
                    }
                }
            }
            match from_workers.recv_timeout(FLUSH_EVERY) {
                Ok((worker, mut buf)) => {
                    if let Err(e) = self.write(&buf) {
                        let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                        dropped.fetch_add(lines, Ordering::Relaxed);
                        if last_report.elapsed() >= Duration::from_secs(1) {
                            crate::log::warn(&format!("access log: write failed: {e}"));
                            last_report = Instant::now();
                        }
                    }
                    buf.clear();
                    HANDED_OVER.fetch_sub(1, Ordering::AcqRel);
                    let _ = returns[worker].try_send(buf);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now_dropped = dropped.load(Ordering::Relaxed);
            if now_dropped > reported && last_report.elapsed() >= Duration::from_secs(1) {
                crate::log::warn(&format!(
                    "access log: {} line(s) dropped (the writer fell behind)",
                    now_dropped - reported
                ));
                reported = now_dropped;
                last_report = Instant::now();
            }
        }
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// What one access line says about a request.
pub struct Line<'a> {
    pub at: SystemTime,
    pub request_id: &'a [u8],
    pub method: &'a str,
    pub path: &'a [u8],
    pub token: Option<&'a str>,
    pub channel: Option<&'a str>,
    pub model: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
    pub status: u16,
    pub outcome: &'a str,
    pub attempts: u32,
    pub ttfb: Option<Duration>,
    pub total: Duration,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    /// The token counts are an estimate (no usage report arrived).
    pub tokens_estimated: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Line<'_> {
    /// The JSON object, without a newline. Allocation-free into a warm buffer.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        crate::log::write_timestamp(out, self.at);
        out.extend_from_slice(b"\",\"request_id\":");
        json_bytes(out, self.request_id);
        out.extend_from_slice(b",\"method\":\"");
        out.extend_from_slice(self.method.as_bytes());
        out.extend_from_slice(b"\",\"path\":");
        json_bytes(out, self.path);
        for (key, value) in [
            (&b",\"token\":"[..], self.token),
            (b",\"channel\":", self.channel),
            (b",\"model\":", self.model),
            (b",\"upstream_model\":", self.upstream_model),
        ] {
            out.extend_from_slice(key);
            match value {
                Some(v) => json_string(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"status\":");
        push_u64(out, self.status as u64);
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome.as_bytes());
        out.extend_from_slice(b"\",\"attempts\":");
        push_u64(out, self.attempts as u64);
        out.extend_from_slice(b",\"ttfb_ms\":");
        match self.ttfb {
            Some(d) => push_millis(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"total_ms\":");
        push_millis(out, self.total);
        let total_tokens = self.prompt_tokens.zip(self.completion_tokens);
        for (key, value) in [
            (&b",\"prompt_tokens\":"[..], self.prompt_tokens),
            (b",\"completion_tokens\":", self.completion_tokens),
            (b",\"cached_tokens\":", self.cached_tokens),
            (
                b",\"total_tokens\":",
                total_tokens.map(|(p, c)| p.saturating_add(c)),
            ),
        ] {
            out.extend_from_slice(key);
            match value {
                Some(v) => push_u64(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"tokens_estimated\":");
        out.extend_from_slice(if self.tokens_estimated {
            b"true"
        } else {
            b"false"
        });
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.push(b'}');
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    crate::wire::push_u64(out, n);
}

/// Milliseconds with three decimals.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros() as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// Bytes as a JSON string (invalid UTF-8 replaced; ids and paths are ASCII in practice).
fn json_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => json_string(out, s),
        Err(_) => json_string(out, &String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object() {
        let line = Line {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: b"rw-1",
            method: "POST",
            path: b"/v1/chat/completions",
            token: Some("team \"a\""),
            channel: Some("main"),
            model: Some("gpt-4o"),
            upstream_model: Some("gpt-4o-2024"),
            status: 200,
            outcome: "ok",
            attempts: 2,
            ttfb: Some(Duration::from_micros(12_345)),
            total: Duration::from_micros(1_002_003),
            prompt_tokens: Some(9),
            completion_tokens: None,
            cached_tokens: Some(3),
            tokens_estimated: true,
            bytes_in: 120,
            bytes_out: 640,
        };
        let mut out = Vec::new();
        line.write(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["token"], "team \"a\"");
        assert_eq!(v["ttfb_ms"], 12.345);
        assert_eq!(v["total_ms"], 1002.003);
        assert!(v["completion_tokens"].is_null() && v["total_tokens"].is_null());
        assert_eq!(
            (v["cached_tokens"].as_u64(), v["tokens_estimated"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(v["attempts"], 2);
    }

    #[test]
    fn a_full_buffer_drops_lines_and_counts_them() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let (to_writer, _rx) = sync_channel(1);
        let (_back, from_writer) = sync_channel(1);
        let log = AccessLog {
            id: 0,
            buf: RefCell::new(Vec::new()),
            spare: RefCell::new(None),
            to_writer,
            from_writer,
            dropped: &DROPPED,
        };
        let big = vec![b'x'; BUFFER_CAP];
        log.append(|out| out.extend_from_slice(&big));
        log.append(|out| out.extend_from_slice(b"lost"));
        assert_eq!(DROPPED.load(Ordering::Relaxed), 1);
        // No spare buffer: flush keeps the full one rather than lose it.
        log.flush();
        assert_eq!(log.buf.borrow().len(), BUFFER_CAP + 1);
    }
}
