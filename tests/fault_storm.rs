//! The leak-proofing evidence of issue #3, on io_uring: a bounded fault storm (normal, streamed,
//! upstream 429/503/504, resets, stalls cut by short timeouts, huge error bodies, broken chunked
//! framing and clients vanishing mid-stream) after which nothing is left in flight and file
//! descriptors and memory are back where a warm-up storm left them; a slowloris attack closed
//! at `client_header` while normal requests keep their latency; and 10 MB upstream error bodies
//! that cost at most the error-body cap.
//!
//! Clients are std threads on 127.0.0.1, every socket with read timeouts; every loop is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------------------------
// Shared bits

fn health_settled(relay: &Relay, within: Duration) -> serde_json::Value {
    let mut h = relay.health();
    let ok = wait_for(within, || {
        h = relay.health();
        json_u64(&h, "inflight_requests") == 0
            && json_u64(&h, "upstream_connections_active") == 0
            // The health request's own connection is the only client connection left.
            && json_u64(&h, "client_connections") <= 1
    });
    assert!(
        ok.is_some(),
        "relay did not settle within {within:?} (inflight / upstream active / client \
         connections): {h}"
    );
    h
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

// ---------------------------------------------------------------------------------------------
// Huge upstream error bodies

#[test]
fn huge_error_bodies_cost_at_most_the_cap() {
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr).workers(1).start(&[]);

    let huge = |i: usize| {
        let sent = Instant::now();
        let mut c = relay.client();
        c.send(&chat("mock-huge-error", false));
        let r = c
            .read_response_eof_aware()
            .unwrap_or_else(|e| panic!("huge error request {i}: no response: {e:?}"));
        let e = assert_error_shape(&r, 500, None);
        assert!(
            r.body.len() < 4096,
            "request {i}: the normalised error is {} bytes; the upstream body must not be \
             passed through",
            r.body.len()
        );
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("mock huge error")),
            "request {i}: the upstream's message should survive (truncated): {e}"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "request {i} took {:?}",
            sent.elapsed()
        );
        r.request_id();
    };

    // Warm-up: buffer pools, allocator arenas.
    huge(0);
    let closed = mock.wait_open_at_most(0, Duration::from_secs(2));
    assert!(
        closed.is_some(),
        "an undrained upstream error connection must be closed, not pooled: {:?}",
        mock.stats()
    );
    let warm = relay.health();
    let warm_rss = json_u64(&warm, "rss_bytes");

    let mut peak = warm_rss;
    for i in 1..=20 {
        huge(i);
        peak = peak.max(json_u64(&relay.health(), "rss_bytes"));
        let closed = mock.wait_open_at_most(0, Duration::from_secs(2));
        assert!(
            closed.is_some(),
            "request {i}: the upstream connection of a truncated error body was not closed: {:?}",
            mock.stats()
        );
    }
    let after = health_settled(&relay, Duration::from_secs(3));
    assert_eq!(
        json_u64(&after, "upstream_connections_idle"),
        0,
        "a truncated error connection was pooled: {after}"
    );
    let after_rss = json_u64(&after, "rss_bytes");
    eprintln!(
        "huge errors: rss after warm-up {:.1} MB, peak {:.1} MB, after 20 more {:.1} MB",
        mb(warm_rss),
        mb(peak),
        mb(after_rss)
    );
    let limit = warm_rss + 8 * 1024 * 1024;
    assert!(
        peak <= limit && after_rss <= limit,
        "RSS grew with 10 MB error bodies: warm {warm_rss}, peak {peak}, after {after_rss}"
    );
    assert_eq!(mock.stats().total_connections, 21, "{:?}", mock.stats());
}

// ---------------------------------------------------------------------------------------------
// Fault storm

/// What one storm request asks for, and what its client must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
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

const KINDS: [Kind; 12] = [
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
struct StormReport {
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
fn storm(addr: SocketAddr, total: u64, concurrency: usize) -> (Arc<StormReport>, Duration) {
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

fn summary(report: &StormReport) -> String {
    KINDS
        .iter()
        .map(|k| format!("{k:?}={}", report.ok[*k as usize].load(Ordering::SeqCst)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_storm_clean(name: &str, report: &StormReport, total: u64) {
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

/// Storm size (bounded): the issue asks for 20,000 requests at concurrency 200.
const STORM_REQUESTS: u64 = 20_000;
/// The warm-up storm is twice the measured one: in a debug build the relay's RSS keeps rising
/// for the first ~60-100k storm requests (buffer pools and allocator pages reaching the
/// storm's peak concurrency) and then stays flat (measured: 13 storms of 20k, RSS 21.8 MB
/// after the first, 25.1-26.2 MB from the fourth on). A 4k warm-up left the 20k storm at +15%.
const WARMUP_REQUESTS: u64 = 40_000;
const STORM_CONCURRENCY: usize = 200;

#[test]
fn fault_storm_leaves_nothing_behind() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).workers(2).section(
        "[timeouts]\nresponse_header = \"1500ms\"\nstream_idle = \"1500ms\"\ntotal = \"30s\"\n",
    );
    let relay = cfg.start(&[]);
    let fresh = relay.health();
    assert_eq!(fresh["io_driver"], "io_uring", "{fresh}");

    // Warm-up storm: same mix and concurrency, so pools and allocator arenas reach their
    // working size.
    let (warm_report, warm_took) = storm(relay.addr, WARMUP_REQUESTS, STORM_CONCURRENCY);
    assert_storm_clean("warm-up storm", &warm_report, WARMUP_REQUESTS);
    let warm = health_settled(&relay, Duration::from_secs(10));
    let warm_fds = json_u64(&warm, "open_fds");
    let warm_idle = json_u64(&warm, "upstream_connections_idle");
    let warm_rss = json_u64(&warm, "rss_bytes");
    eprintln!(
        "warm-up storm: {WARMUP_REQUESTS} requests at concurrency {STORM_CONCURRENCY} in \
         {warm_took:?}; open_fds {warm_fds} (idle pool {warm_idle}), rss {:.1} MB; {}",
        mb(warm_rss),
        summary(&warm_report)
    );

    let (report, took) = storm(relay.addr, STORM_REQUESTS, STORM_CONCURRENCY);
    let after = health_settled(&relay, Duration::from_secs(10));
    let fds = json_u64(&after, "open_fds");
    let idle = json_u64(&after, "upstream_connections_idle");
    let rss = json_u64(&after, "rss_bytes");
    eprintln!(
        "storm: {STORM_REQUESTS} requests at concurrency {STORM_CONCURRENCY} in {took:?} \
         ({:.0} req/s); open_fds {warm_fds} -> {fds} (idle pool {warm_idle} -> {idle}), \
         rss {:.1} MB -> {:.1} MB; {}",
        STORM_REQUESTS as f64 / took.as_secs_f64(),
        mb(warm_rss),
        mb(rss),
        summary(&report)
    );
    eprintln!("health after the storm: {after}");
    assert_storm_clean("storm", &report, STORM_REQUESTS);
    assert!(
        took < Duration::from_secs(90),
        "storm took {took:?} (bound 90 s)"
    );

    assert_eq!(json_u64(&after, "inflight_requests"), 0, "{after}");
    assert_eq!(
        json_u64(&after, "upstream_connections_active"),
        0,
        "{after}"
    );
    // Descriptors: what the warm process held without its idle pool, plus today's idle pool.
    let slack = 4;
    assert!(
        fds <= warm_fds - warm_idle + idle + slack,
        "open_fds {fds} > warm-up {warm_fds} - idle {warm_idle} + idle {idle} + {slack}: {after}"
    );
    // The mock sees exactly the relay's idle pool: every other upstream connection was closed.
    let open = mock.wait_open_at_most(idle, Duration::from_secs(5));
    assert!(
        open.is_some(),
        "mock has {:?} open connections, relay pools {idle}",
        mock.stats()
    );
    assert!(
        rss <= warm_rss + warm_rss / 10,
        "RSS {rss} grew more than 10% over the warm-up value {warm_rss}"
    );
    // Every kind of fault was counted where it belongs.
    let t = &after["timeouts"];
    assert!(
        t["response_header"].as_u64().unwrap_or(0) > 0,
        "no response_header timeouts counted: {after}"
    );
    assert!(
        t["stream_idle"].as_u64().unwrap_or(0) > 0,
        "no stream_idle timeouts counted: {after}"
    );
    assert!(
        json_u64(&after, "client_gone") > 0,
        "vanishing clients were not counted: {after}"
    );
}

// ---------------------------------------------------------------------------------------------
// Slowloris

const ATTACKERS: usize = 300;

/// One slowloris connection (non-blocking).
struct Attacker {
    s: TcpStream,
    first_byte: Option<Instant>,
    sent: usize,
    closed: Option<Instant>,
    got: Vec<u8>,
}

impl Attacker {
    /// Reads whatever the relay sent (noting a close), then trickles one more byte.
    fn tick(&mut self, head: &[u8]) {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => {
                    self.closed = Some(Instant::now());
                    return;
                }
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = Some(Instant::now());
                    return;
                }
            }
        }
        if self.sent < head.len() {
            match self.s.write(&head[self.sent..self.sent + 1]) {
                Ok(n) => {
                    self.sent += n;
                    self.first_byte.get_or_insert_with(Instant::now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => self.closed = Some(Instant::now()),
            }
        }
    }
}

#[test]
fn slowloris_is_closed_at_client_header_while_normal_requests_flow() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .workers(2)
        .section("[timeouts]\nclient_header = \"1s\"\n");
    let relay = cfg.start(&[]);
    let before = relay.health();

    // Normal latency before the attack (warm pool).
    let normal = |n: usize, gap: Duration| -> Vec<Duration> {
        let mut c = relay.client();
        (0..n)
            .map(|i| {
                std::thread::sleep(gap);
                let t = Instant::now();
                c.send(&chat("mock-fixed", false));
                let r = c.read_final_response();
                assert_eq!(r.status, 200, "normal request {i}: {:?}", r.text());
                t.elapsed()
            })
            .collect()
    };
    let quiet = normal(20, Duration::ZERO);

    // The attack: 300 connections, each trickling one byte of a never-ending head every
    // 100 ms, from one thread with non-blocking sockets.
    let addr = relay.addr;
    let attack = std::thread::spawn(move || {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\nx-slow: {}",
            "a".repeat(200)
        )
        .into_bytes();
        let start = Instant::now();
        let mut socks: Vec<Attacker> = Vec::new();
        for _ in 0..ATTACKERS {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("attacker connect");
            s.set_nonblocking(true).expect("nonblocking");
            socks.push(Attacker {
                s,
                first_byte: None,
                sent: 0,
                closed: None,
                got: Vec::new(),
            });
        }
        let deadline = start + Duration::from_secs(10);
        while Instant::now() < deadline && socks.iter().any(|a| a.closed.is_none()) {
            for a in socks.iter_mut().filter(|a| a.closed.is_none()) {
                a.tick(&head);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        socks
            .into_iter()
            .map(|a| {
                (
                    a.closed.zip(a.first_byte).map(|(c, f)| c.duration_since(f)),
                    a.sent,
                    a.got.starts_with(b"HTTP/1.1 408"),
                )
            })
            .collect::<Vec<_>>()
    });

    // Normal requests during the attack, spread over it (including the moment the attackers
    // are cut off at client_header).
    std::thread::sleep(Duration::from_millis(300));
    let busy_h = relay.health();
    let during = normal(40, Duration::from_millis(40));
    let results = attack.join().expect("attack thread");

    let max_quiet = quiet.iter().max().copied().unwrap_or_default();
    let max_during = during.iter().max().copied().unwrap_or_default();
    let open_during = json_u64(&busy_h, "client_connections");
    let closed: Vec<Duration> = results.iter().filter_map(|r| r.0).collect();
    let got_408 = results.iter().filter(|r| r.2).count();
    let slowest = closed.iter().max().copied().unwrap_or_default();
    let min_sent = results.iter().map(|r| r.1).min().unwrap_or(0);
    eprintln!(
        "slowloris: {ATTACKERS} attackers, client connections during the attack {open_during}; \
         closed {} (slowest after {slowest:?}), {got_408} saw the 408, fewest bytes sent \
         {min_sent}; normal latency max {max_quiet:?} before, {max_during:?} during",
        closed.len()
    );
    assert!(
        open_during >= ATTACKERS as u64,
        "the attack connections were not all open at once: {busy_h}"
    );
    assert_eq!(
        closed.len(),
        ATTACKERS,
        "attack connections left open after 10 s"
    );
    assert!(
        slowest <= Duration::from_secs(3),
        "an attack connection was closed only after {slowest:?} (client_header 1 s + 2 s)"
    );
    assert!(
        closed.iter().all(|d| *d >= Duration::from_millis(900)),
        "an attack connection was closed before client_header: {closed:?}"
    );
    assert!(
        got_408 * 2 >= ATTACKERS,
        "only {got_408} of {ATTACKERS} attackers saw a 408"
    );
    for (i, d) in during.iter().enumerate() {
        assert!(
            *d < Duration::from_millis(500),
            "normal request {i} took {d:?} during the attack (before: max {max_quiet:?})"
        );
    }
    let after = health_settled(&relay, Duration::from_secs(5));
    let counted =
        json_u64(&after, "timeouts.client_header") - json_u64(&before, "timeouts.client_header");
    assert_eq!(
        counted, ATTACKERS as u64,
        "client_header timeouts counted: {after}"
    );
}
