//! The fault storm shared by `fault_storm` (descriptors, connections and RSS of the real
//! binary) and `heap_storm` (live heap bytes of in-process workers): a fixed mix of normal,
//! streamed and faulty requests, each answer checked, from std threads on 127.0.0.1 with read
//! timeouts and a hard stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// What one storm request asks for, and what its client must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Fixed,
    Stream,
    Status429,
    Status503,
    Status504,
    ResetBody,
    ResetStream,
    StallHead,
    StallStream,
    HugeError,
    BrokenChunked,
    Vanish,
}

pub const KINDS: [Kind; 12] = [
    Kind::Fixed,
    Kind::Stream,
    Kind::Status429,
    Kind::Status503,
    Kind::Status504,
    Kind::ResetBody,
    Kind::ResetStream,
    Kind::StallHead,
    Kind::StallStream,
    Kind::HugeError,
    Kind::BrokenChunked,
    Kind::Vanish,
];

impl Kind {
    /// Share of requests, in percent (sums to 100).
    fn weight(self) -> u64 {
        match self {
            Kind::Fixed => 36,
            Kind::Stream => 25,
            Kind::Status429 => 5,
            Kind::Status503 => 5,
            Kind::Status504 => 4,
            Kind::ResetBody => 4,
            Kind::ResetStream => 4,
            Kind::StallHead => 2,
            Kind::StallStream => 2,
            Kind::HugeError => 1,
            Kind::BrokenChunked => 6,
            Kind::Vanish => 6,
        }
    }

    /// Request number `i`'s kind: a fixed permutation of 0..100 spread over the weights.
    fn of(i: u64) -> Kind {
        let mut x = (i.wrapping_mul(37) + i / 100) % 100;
        for k in KINDS {
            if x < k.weight() {
                return k;
            }
            x -= k.weight();
        }
        Kind::Fixed
    }

    fn request(self) -> Vec<u8> {
        match self {
            Kind::Fixed => chat("mock-fixed", false),
            Kind::Stream => chat("mock-stream-5-0", true),
            Kind::Status429 => chat("mock-status-429", false),
            Kind::Status503 => chat("mock-status-503", false),
            Kind::Status504 => chat("mock-status-504", false),
            Kind::ResetBody => chat("mock-reset-body", false),
            Kind::ResetStream => chat("mock-reset-stream", true),
            Kind::StallHead => chat("mock-stall-head-5000", false),
            Kind::StallStream => chat("mock-stall-stream-5000", true),
            Kind::HugeError => chat("mock-huge-error", false),
            Kind::BrokenChunked => chat("mock-broken-chunked", true),
            Kind::Vanish => chat("mock-stream-20-50", true),
        }
    }
}

/// Checks one answer; `Err` says what was wrong.
fn check(kind: Kind, r: &Response) -> Result<(), String> {
    let want_status = |s: u16| {
        if r.status == s {
            Ok(())
        } else {
            Err(format!(
                "status {} (want {s}); body {:?}",
                r.status,
                truncate(&r.text())
            ))
        }
    };
    let error_json = |code: Option<&str>| -> Result<(), String> {
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("error body not JSON ({e}): {:?}", truncate(&r.text())))?;
        let e = &v["error"];
        let ok = e["message"].as_str().is_some_and(|m| !m.is_empty())
            && e["type"].is_string()
            && e.get("param").is_some_and(|p| p.is_null())
            && e["code"].is_string()
            && code.is_none_or(|c| e["code"] == c);
        if ok {
            Ok(())
        } else {
            Err(format!("error body {v} (want code {code:?})"))
        }
    };
    let stream_error = |code: Option<&str>| -> Result<(), String> {
        let (v, last) = sse_error_event(&r.body)
            .ok_or_else(|| format!("no SSE error event: {:?}", truncate(&r.text())))?;
        if !last {
            return Err(format!("error event not last: {:?}", truncate(&r.text())));
        }
        if let Some(c) = code {
            if v["error"]["code"] != c {
                return Err(format!("error event {v}, want code {c}"));
            }
        }
        Ok(())
    };
    if r.header("x-request-id").is_none_or(str::is_empty) {
        return Err(format!("no x-request-id: {:?}", r.headers));
    }
    match kind {
        Kind::Fixed => {
            want_status(200)?;
            if !r.text().contains("\"chat.completion\"") {
                return Err(format!("body {:?}", truncate(&r.text())));
            }
            Ok(())
        }
        Kind::Stream => {
            want_status(200)?;
            let t = r.text();
            if !t.ends_with("data: [DONE]\n\n") || t.matches("chat.completion.chunk").count() != 5 {
                return Err(format!("stream {:?}", truncate(&t)));
            }
            Ok(())
        }
        Kind::Status429 | Kind::Status503 => {
            want_status(if kind == Kind::Status429 { 429 } else { 503 })?;
            error_json(None)?;
            if r.header("retry-after") != Some("7") {
                return Err(format!("retry-after {:?}", r.header("retry-after")));
            }
            Ok(())
        }
        Kind::Status504 => {
            want_status(504)?;
            error_json(Some("gateway_timeout"))
        }
        Kind::HugeError => {
            want_status(500)?;
            error_json(Some("upstream_500"))
        }
        Kind::StallHead => {
            want_status(504)?;
            error_json(Some("response_header_timeout"))
        }
        Kind::ResetStream => {
            want_status(200)?;
            stream_error(None)
        }
        Kind::BrokenChunked => {
            want_status(200)?;
            stream_error(None)
        }
        Kind::StallStream => {
            want_status(200)?;
            stream_error(Some("stream_idle_timeout"))
        }
        Kind::ResetBody | Kind::Vanish => Err("checked elsewhere".into()),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

/// mock-reset-body: a 200 head with Content-Length 100000, fewer body bytes, then a close.
fn check_reset_body(raw: &[u8]) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => {
            return Err(format!(
                "no complete head ({other:?}): {:?}",
                truncate(&String::from_utf8_lossy(raw))
            ))
        }
    };
    if parsed.code != Some(200) {
        return Err(format!("status {:?}", parsed.code));
    }
    let cl = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    if cl.as_deref() != Some("100000") {
        return Err(format!("content-length {cl:?}"));
    }
    let body = raw.len() - len;
    if body >= 100_000 {
        return Err(format!(
            "got a whole body ({body} bytes) from a reset upstream"
        ));
    }
    Ok(())
}

#[derive(Default)]
pub struct StormReport {
    ok: [AtomicU64; 12],
    failed: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl StormReport {
    fn fail(&self, i: u64, kind: Kind, msg: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < 20 {
            s.push(format!("request {i} {kind:?}: {msg}"));
        }
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<Client> {
    let c = Client::try_connect(addr)?;
    c.set_read_timeout(Duration::from_secs(10));
    Ok(c)
}

/// Runs `total` requests from `concurrency` threads; returns the per-kind counts and failures.
pub fn storm(addr: SocketAddr, total: u64, concurrency: usize) -> (Arc<StormReport>, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let report = Arc::new(StormReport::default());
    let started = Instant::now();
    let hard_stop = started + Duration::from_secs(120);
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, report) = (next.clone(), report.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut conn: Option<Client> = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total || Instant::now() > hard_stop {
                            break;
                        }
                        let kind = Kind::of(i);
                        let mut c = match conn.take() {
                            Some(c) => c,
                            None => match connect(addr) {
                                Ok(c) => c,
                                Err(e) => {
                                    report.fail(i, kind, format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        if let Err(e) = c.try_send(&kind.request()) {
                            report.fail(i, kind, format!("send: {e}"));
                            continue;
                        }
                        let outcome = match kind {
                            Kind::ResetBody => match c.read_to_close() {
                                Ok(raw) => check_reset_body(&raw),
                                Err(e) => Err(format!("read: {e:?}")),
                            },
                            Kind::Vanish => {
                                let (got, seen) =
                                    read_until(&mut c.stream, b"tok0", Duration::from_secs(10));
                                if seen && got.starts_with(b"HTTP/1.1 200") {
                                    Ok(())
                                } else {
                                    Err(format!(
                                        "no first event before vanishing: {:?}",
                                        truncate(&String::from_utf8_lossy(&got))
                                    ))
                                }
                                // `c` is dropped: the client vanishes mid-stream.
                            }
                            _ => match c.read_response_eof_aware() {
                                Ok(r) => {
                                    let res = check(kind, &r);
                                    if res.is_ok() && !r.closes() {
                                        c.set_read_timeout(Duration::from_secs(10));
                                        conn = Some(c);
                                    }
                                    res
                                }
                                Err(e) => Err(format!("read: {e:?}")),
                            },
                        };
                        match outcome {
                            Ok(()) => {
                                report.ok[kind as usize].fetch_add(1, Ordering::SeqCst);
                            }
                            Err(msg) => report.fail(i, kind, msg),
                        }
                    }
                })
                .expect("spawn storm client")
        })
        .collect();
    for t in threads {
        t.join().expect("storm client panicked");
    }
    (report, started.elapsed())
}

pub fn summary(report: &StormReport) -> String {
    KINDS
        .iter()
        .map(|k| format!("{k:?}={}", report.ok[*k as usize].load(Ordering::SeqCst)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn assert_storm_clean(name: &str, report: &StormReport, total: u64) {
    let failed = report.failed.load(Ordering::SeqCst);
    let ok: u64 = report.ok.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    let samples = report
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .join("\n  ");
    assert_eq!(
        failed,
        0,
        "{name}: {failed} of {total} requests saw a wrong answer ({}); samples:\n  {samples}",
        summary(report)
    );
    assert_eq!(
        ok,
        total,
        "{name}: not every request ran: {}",
        summary(report)
    );
}
