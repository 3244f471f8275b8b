//! The leak-proofing evidence of issue #3, on io_uring: a bounded fault storm (normal, streamed,
//! upstream 429/503/504, resets, stalls cut by short timeouts, huge error bodies, broken chunked
//! framing and clients vanishing mid-stream) after which nothing is left in flight and file
//! descriptors and memory are back where a warm-up storm left them; a slowloris attack closed
//! at `client_header` while normal requests keep their latency; and 10 MB upstream error bodies
//! that cost at most the error-body cap.
//!
//! Clients are std threads on 127.0.0.1, every socket with read timeouts; every loop is bounded.

mod common;
mod storm;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use storm::*;

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

/// [`health_settled`], then the health once each worker's janitor has run again (once a second):
/// it is the janitor that gives the pages freed after a burst back to the OS, so RSS read
/// before it would count what the allocator is about to return.
fn health_settled_and_collected(relay: &Relay, within: Duration) -> serde_json::Value {
    health_settled(relay, within);
    std::thread::sleep(Duration::from_millis(1200));
    relay.health()
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

/// Storm size (bounded): the issue asks for 20,000 requests at concurrency 200.
const STORM_REQUESTS: u64 = 20_000;
/// The warm-up storm is twice the measured one: the relay's RSS rises for the first storms
/// (buffer pools and allocator pages reaching the storm's peak concurrency) and then flattens
/// (measured in a debug build, read after the janitor's collection: 20.9, 22.9, 23.9, 24.6,
/// 24.9, 25.3, 25.5, 25.6 MB after each of eight 20k storms). RSS is the allocator's view and
/// drifts with fragmentation; `heap_storm` checks the live heap bytes exactly.
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
    let warm = health_settled_and_collected(&relay, Duration::from_secs(10));
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
    let after = health_settled_and_collected(&relay, Duration::from_secs(10));
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
