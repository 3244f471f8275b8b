//! One test per timeout layer of the contract (`[timeouts]`), each with a short configured
//! value against the mock's stall modes (or a local socket that never answers), plus the
//! client-gone paths. Every test checks the status or stream ending, the error code, the time
//! it took (generous bounds), the health counter of that layer (and that no other layer moved),
//! and that the upstream connection was closed (the mock's exact `open_connections`, or a local
//! holder socket seeing EOF). Every test runs on io_uring and on epoll.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    response_header_timeout_is_504,
    stream_idle_timeout_ends_stream_with_error_event,
    total_timeout_ends_stream_with_error_event,
    total_timeout_before_head_is_504,
    relay_timeout_env_overrides_total,
    channel_override_of_response_header,
    connect_timeout_is_504,
    tls_handshake_timeout_is_504,
    client_header_timeout_is_408_and_closes,
    client_body_timeout_is_408_and_closes,
    client_idle_closes_idle_connections,
    pool_idle_closes_idle_upstream_connections,
    client_gone_while_waiting_for_head,
    client_gone_mid_stream,
}

/// Upper bound on how long any timeout of a few hundred ms may take to be answered.
const ANSWER_BOUND: Duration = Duration::from_secs(3);
/// How long the upstream side (mock or holder) may take to see its connection closed.
const CLOSE_BOUND: Duration = Duration::from_secs(3);

fn timeouts(toml_lines: &str) -> String {
    format!("[timeouts]\n{toml_lines}\n")
}

/// Reads the next response on `c`; a connection closed (or a stream cut) before a complete
/// response fails the test with what did arrive.
fn answer(c: &mut Client) -> Response {
    c.read_response_eof_aware().unwrap_or_else(|e| match e {
        ReadError::Eof(rest) => panic!(
            "the relay closed the connection without a complete response (unparsed tail: {:?})",
            String::from_utf8_lossy(&rest)
        ),
        other => panic!("reading the response failed: {other:?}"),
    })
}

/// `request` on a fresh connection, read with [`answer`].
fn exchange(relay: &Relay, request: &[u8]) -> Response {
    let mut c = relay.client();
    c.send(request);
    answer(&mut c)
}

fn assert_took(what: &str, took: Duration, min: Duration, max: Duration) {
    assert!(
        took >= min && took <= max,
        "{what} took {took:?}, expected between {min:?} and {max:?}"
    );
}

/// Waits (bounded) until health `timeouts.<layer>` is `n` above `before`, then asserts every
/// other layer is unchanged. Returns the final health.
fn assert_timeout_counted(
    relay: &Relay,
    before: &serde_json::Value,
    layer: &str,
    n: u64,
) -> serde_json::Value {
    let key = format!("timeouts.{layer}");
    let want = json_u64(before, &key) + n;
    let mut after = relay.health();
    let reached = wait_for(Duration::from_secs(2), || {
        after = relay.health();
        json_u64(&after, &key) >= want
    });
    assert!(
        reached.is_some(),
        "health {key} did not reach {want}: before {before}, after {after}"
    );
    assert_eq!(json_u64(&after, &key), want, "{key}: {after}");
    for other in TIMEOUT_LAYERS.iter().filter(|l| **l != layer) {
        let k = format!("timeouts.{other}");
        assert_eq!(
            json_u64(before, &k),
            json_u64(&after, &k),
            "{k} moved although only {layer} should have: before {before}, after {after}"
        );
    }
    after
}

/// Waits (bounded) until no relay request is in flight and no upstream connection is in use.
fn assert_quiescent(relay: &Relay) -> serde_json::Value {
    let mut h = relay.health();
    let ok = wait_for(Duration::from_secs(3), || {
        h = relay.health();
        json_u64(&h, "inflight_requests") == 0 && json_u64(&h, "upstream_connections_active") == 0
    });
    assert!(
        ok.is_some(),
        "relay did not settle (inflight / upstream active): {h}"
    );
    h
}

fn assert_mock_closed(mock: &Mock, what: &str) -> Duration {
    mock.wait_open_at_most(0, CLOSE_BOUND).unwrap_or_else(|| {
        panic!(
            "{what}: the mock still has {:?} after {CLOSE_BOUND:?}; the relay did not close its upstream connection",
            mock.stats()
        )
    })
}

/// A stream body ending in an SSE error event with `code`; returns the error object.
fn assert_stream_error(r: &Response, code: &str) -> serde_json::Value {
    assert_eq!(r.status, 200, "status; body {:?}", r.text());
    assert!(
        r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
        "stream must be chunked: {:?}",
        r.headers
    );
    let (json, last) = sse_error_event(&r.body)
        .unwrap_or_else(|| panic!("no SSE error event in the stream: {:?}", r.text()));
    assert!(
        last,
        "the error event must be the last event: {:?}",
        r.text()
    );
    let e = json
        .get("error")
        .unwrap_or_else(|| panic!("error event without error object: {json}"))
        .clone();
    assert_eq!(e["code"], code, "error event: {json}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error event message: {json}"
    );
    assert!(
        !r.text().contains("[DONE]"),
        "a timed-out stream must not claim [DONE]: {:?}",
        r.text()
    );
    e
}

// ---------------------------------------------------------------------------------------------
// response_header

fn response_header_timeout_is_504(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("response_header = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let mut c = relay.client();
    let sent = Instant::now();
    c.send(&chat("mock-stall-head-5000", false));
    let r = answer(&mut c);
    let took = sent.elapsed();
    assert_error_shape(&r, 504, Some("response_header_timeout"));
    r.request_id();
    assert_took(
        "response_header timeout",
        took,
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "response_header", 1);
    assert_mock_closed(&mock, "after a response_header timeout");
    assert_quiescent(&relay);

    // The client connection stays usable after a 504 the relay made itself.
    assert!(!r.closes(), "a 504 need not close the client connection");
    c.send(&chat("mock-fixed", false));
    let r = answer(&mut c);
    assert_eq!(r.status, 200, "follow-up request: {:?}", r.text());
}

// ---------------------------------------------------------------------------------------------
// stream_idle

fn stream_idle_timeout_ends_stream_with_error_event(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("stream_idle = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let mut c = relay.client();
    let sent = Instant::now();
    c.send(&chat("mock-stall-stream-5000", true));
    // A parsed chunked response means the terminating 0-chunk arrived.
    let r = answer(&mut c);
    let took = sent.elapsed();
    assert!(
        r.text().contains("tok0"),
        "first event missing: {:?}",
        r.text()
    );
    assert_stream_error(&r, "stream_idle_timeout");
    assert_took(
        "stream_idle timeout",
        took,
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "stream_idle", 1);
    assert_mock_closed(&mock, "after a stream_idle timeout");
    assert_quiescent(&relay);

    // The client connection is still usable.
    assert!(!r.closes(), "stream ended with connection: close");
    c.send(&chat("mock-fixed", false));
    let r2 = c.read_final_response();
    assert_eq!(r2.status, 200, "follow-up request: {:?}", r2.text());
    assert!(r2.text().contains("chat.completion"));
}

// ---------------------------------------------------------------------------------------------
// total

/// How many timed-out requests each `total` test sends, one after another on one client
/// connection: the answer must arrive every time, be counted once, and leave the connection
/// usable (the relay's answer did not say `connection: close`).
const TOTAL_ROUNDS: u64 = 3;

fn total_timeout_ends_stream_with_error_event(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("total = \"500ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let mut c = relay.client();
    for round in 0..TOTAL_ROUNDS {
        let sent = Instant::now();
        // 20 events 100 ms apart: a 2 s stream, cut by the 500 ms total.
        c.send(&chat("mock-stream-20-100", true));
        // A parsed chunked response means the terminating 0-chunk arrived.
        let r = answer(&mut c);
        let took = sent.elapsed();
        assert!(
            r.text().contains("tok0"),
            "round {round}: no events: {:?}",
            r.text()
        );
        assert!(
            !r.text().contains("tok19"),
            "round {round}: the whole stream came through: {:?}",
            r.text()
        );
        assert_stream_error(&r, "total_timeout");
        assert_took(
            "total timeout (stream)",
            took,
            Duration::from_millis(450),
            ANSWER_BOUND,
        );
        assert!(!r.closes(), "round {round}: stream said connection: close");
        assert_timeout_counted(&relay, &before, "total", round + 1);
    }
    assert_mock_closed(&mock, "after total timeouts mid-stream");
    assert_quiescent(&relay);
}

fn total_timeout_before_head_is_504(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .section(&timeouts("response_header = \"10s\"\ntotal = \"500ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let mut c = relay.client();
    for round in 0..TOTAL_ROUNDS {
        let sent = Instant::now();
        c.send(&chat("mock-stall-head-5000", false));
        let r = answer(&mut c);
        let took = sent.elapsed();
        assert_error_shape(&r, 504, Some("total_timeout"));
        assert_took(
            "total timeout (head)",
            took,
            Duration::from_millis(450),
            ANSWER_BOUND,
        );
        assert!(!r.closes(), "round {round}: 504 said connection: close");
        assert_timeout_counted(&relay, &before, "total", round + 1);
    }
    assert_mock_closed(&mock, "after total timeouts before the head");
    assert_quiescent(&relay);
}

fn relay_timeout_env_overrides_total(driver: Driver) {
    let mock = Mock::start();
    // The file says 10 minutes; RELAY_TIMEOUT=1 must win.
    let cfg = ConfigBuilder::new(mock.addr)
        .section(&timeouts("response_header = \"10s\"\ntotal = \"10m\""));
    let relay = start_env(driver, &cfg, &[("RELAY_TIMEOUT", "1")]);
    let before = relay.health();

    let mut c = relay.client();
    for round in 0..2 {
        let sent = Instant::now();
        c.send(&chat("mock-stall-head-5000", false));
        let r = answer(&mut c);
        let took = sent.elapsed();
        assert_error_shape(&r, 504, Some("total_timeout"));
        assert_took(
            "RELAY_TIMEOUT=1 total timeout",
            took,
            Duration::from_millis(900),
            Duration::from_millis(3500),
        );
        assert!(!r.closes(), "round {round}: 504 said connection: close");
        assert_timeout_counted(&relay, &before, "total", round + 1);
    }
    assert_mock_closed(&mock, "after RELAY_TIMEOUT total timeouts");
}

/// Channels may override the upstream layers: only the channel with the short
/// `response_header` times out.
fn channel_override_of_response_header(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(mock.addr, &["slow-ok-*"], "")
        .channel(
            "impatient",
            &mock.base_url(),
            UPSTREAM_KEY,
            &["mock-*"],
            "timeouts = { response_header = \"300ms\" }",
        )
        .section(&timeouts("response_header = \"10s\""));
    let relay = start(driver, &cfg);
    let before = relay.health();
    let sent = Instant::now();
    let r = exchange(&relay, &chat("mock-stall-head-5000", false));
    assert_error_shape(&r, 504, Some("response_header_timeout"));
    assert_took(
        "per-channel response_header timeout",
        sent.elapsed(),
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "response_header", 1);
    assert_mock_closed(&mock, "after a per-channel response_header timeout");
}

// ---------------------------------------------------------------------------------------------
// connect

/// A loopback address whose SYNs are dropped: a listener with backlog 0 whose one-slot accept
/// queue is filled by a connection nobody accepts. Linux drops SYNs to a listener with a full
/// accept queue (`tcp_abort_on_overflow = 0`), so connects to it hang in SYN_SENT.
struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _filler: Vec<TcpStream>,
}

impl Blackhole {
    fn new() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind blackhole");
        let addr = listener.local_addr().expect("blackhole addr");
        // SAFETY: a valid listening socket fd owned by `listener`; listen() on a listening
        // socket only changes its backlog.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(rc, 0, "listen(fd, 0): {}", std::io::Error::last_os_error());
        let mut filler = Vec::new();
        // Fill the accept queue; stop at the first connect that no longer completes.
        for _ in 0..4 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => filler.push(s),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _filler: filler,
                    };
                }
                Err(e) => panic!("unexpected error probing the blackhole: {e}"),
            }
        }
        panic!(
            "could not make loopback connects hang (accept queue never filled after {} \
             connects); this kernel does not drop SYNs on a full accept queue",
            filler.len()
        );
    }
}

fn connect_timeout_is_504(driver: Driver) {
    let hole = Blackhole::new();
    let cfg = ConfigBuilder::new(hole.addr)
        .without_default_channel()
        .channel(
            "blackhole",
            &format!("http://{}", hole.addr),
            UPSTREAM_KEY,
            &["*"],
            "",
        )
        .section(&timeouts("connect = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let sent = Instant::now();
    let r = exchange(&relay, &chat("mock-fixed", false));
    let took = sent.elapsed();
    assert_error_shape(&r, 504, Some("connect_timeout"));
    assert_took(
        "connect timeout",
        took,
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "connect", 1);
    let after = assert_quiescent(&relay);
    // The half-open socket was closed: no descriptor left behind.
    let mut h = after;
    let settled = wait_for(Duration::from_secs(2), || {
        h = relay.health();
        json_u64(&h, "open_fds") <= json_u64(&before, "open_fds")
    });
    assert!(
        settled.is_some(),
        "open_fds grew after a connect timeout: before {before}, after {h}"
    );
}

// ---------------------------------------------------------------------------------------------
// tls_handshake

/// A plain TCP listener that accepts, swallows whatever arrives and never answers; counts
/// accepted connections and those the peer closed.
struct Holder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Holder {
    fn start() -> Holder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind holder");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("holder addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, accepted, closed) = (stop.clone(), accepted.clone(), closed.clone());
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    if let Ok((s, _)) = listener.accept() {
                        let _ = s.set_nonblocking(true);
                        accepted.fetch_add(1, Ordering::SeqCst);
                        held.push(s);
                    }
                    held.retain_mut(|s| {
                        let mut buf = [0u8; 4096];
                        match s.read(&mut buf) {
                            Ok(0) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                false
                            }
                            Ok(_) => true,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                            Err(e) if e.kind() == ErrorKind::Interrupted => true,
                            Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                false
                            }
                        }
                    });
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Holder {
            addr,
            stop,
            accepted,
            closed,
            thread: Some(thread),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tls_handshake_timeout_is_504(driver: Driver) {
    let holder = Holder::start();
    let cfg = ConfigBuilder::new(holder.addr)
        .without_default_channel()
        .channel(
            "mute-tls",
            &format!("https://{}", holder.addr),
            UPSTREAM_KEY,
            &["*"],
            "",
        )
        .section(&timeouts("tls_handshake = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let sent = Instant::now();
    let r = exchange(&relay, &chat("mock-fixed", false));
    let took = sent.elapsed();
    assert_error_shape(&r, 504, Some("tls_handshake_timeout"));
    assert_took(
        "tls_handshake timeout",
        took,
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "tls_handshake", 1);
    assert_eq!(holder.accepted.load(Ordering::SeqCst), 1, "TCP connects");
    let closed = wait_for(CLOSE_BOUND, || holder.closed.load(Ordering::SeqCst) == 1);
    assert!(
        closed.is_some(),
        "the relay did not close the TCP connection of the timed-out TLS handshake"
    );
    assert_quiescent(&relay);
}

// ---------------------------------------------------------------------------------------------
// client_header, client_body, client_idle

fn client_header_timeout_is_408_and_closes(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("client_header = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let mut c = relay.client();
    let sent = Instant::now();
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n"
        )
        .as_bytes(),
    );
    let r = answer(&mut c);
    let took = sent.elapsed();
    assert_error_shape(&r, 408, Some("client_header_timeout"));
    r.request_id();
    assert!(
        r.closes(),
        "408 must say connection: close: {:?}",
        r.headers
    );
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "the relay did not close the connection after its 408"
    );
    assert_took(
        "client_header timeout",
        took,
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "client_header", 1);
    assert_eq!(mock.stats().total_connections, 0, "nothing went upstream");
    let mut h = relay.health();
    let ok = wait_for(Duration::from_secs(2), || {
        h = relay.health();
        // The health request's own connection is the only one.
        json_u64(&h, "client_connections") <= 1
    });
    assert!(ok.is_some(), "client connection not released: {h}");
}

fn client_body_timeout_is_408_and_closes(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("client_body = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    let mut c = relay.client();
    let sent = Instant::now();
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":"
        )
        .as_bytes(),
    );
    let r = answer(&mut c);
    let took = sent.elapsed();
    assert_error_shape(&r, 408, Some("client_body_timeout"));
    r.request_id();
    assert!(
        r.closes(),
        "408 must say connection: close: {:?}",
        r.headers
    );
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "the relay did not close the connection after its 408"
    );
    assert_took(
        "client_body timeout",
        took,
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "client_body", 1);
    assert_eq!(mock.stats().total_connections, 0, "nothing went upstream");
    assert_quiescent(&relay);
}

fn client_idle_closes_idle_connections(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("client_idle = \"300ms\""));
    let relay = start(driver, &cfg);
    let before = relay.health();

    // A connection that never sends a byte.
    let mut silent = relay.client();
    let opened = Instant::now();
    assert!(
        silent.closed_within(ANSWER_BOUND),
        "a silent connection was not closed within {ANSWER_BOUND:?}"
    );
    assert_took(
        "client_idle close (silent connection)",
        opened.elapsed(),
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert!(
        silent.pending().is_empty(),
        "an idle close sends nothing: {:?}",
        String::from_utf8_lossy(silent.pending())
    );

    // A keep-alive connection idle after a request.
    let mut c = relay.client();
    c.send(&chat("mock-fixed", false));
    let r = answer(&mut c);
    assert_eq!(r.status, 200, "{:?}", r.text());
    assert!(!r.closes());
    let done = Instant::now();
    assert!(
        c.closed_within(ANSWER_BOUND),
        "an idle keep-alive connection was not closed within {ANSWER_BOUND:?}"
    );
    assert_took(
        "client_idle close (after a request)",
        done.elapsed(),
        Duration::from_millis(250),
        ANSWER_BOUND,
    );
    assert_timeout_counted(&relay, &before, "client_idle", 2);
}

// ---------------------------------------------------------------------------------------------
// pool_idle

fn pool_idle_closes_idle_upstream_connections(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section(&timeouts("pool_idle = \"500ms\""));
    let relay = start(driver, &cfg);

    let r = relay.roundtrip(&chat("mock-fixed", false));
    let done = Instant::now();
    assert_eq!(r.status, 200, "{:?}", r.text());
    let h = relay.health();
    assert_eq!(json_u64(&h, "upstream_connections_idle"), 1, "{h}");
    assert_eq!(mock.stats().open_connections, 1, "{:?}", mock.stats());

    // Still pooled well before pool_idle.
    std::thread::sleep(Duration::from_millis(200));
    if done.elapsed() < Duration::from_millis(450) {
        assert_eq!(
            mock.stats().open_connections,
            1,
            "closed before pool_idle passed"
        );
    }
    assert_mock_closed(&mock, "pool_idle");
    let closed_after = done.elapsed();
    assert_took(
        "pool_idle close",
        closed_after,
        Duration::from_millis(450),
        Duration::from_millis(3200),
    );
    let mut h = relay.health();
    let ok = wait_for(Duration::from_secs(1), || {
        h = relay.health();
        json_u64(&h, "upstream_connections_idle") == 0
    });
    assert!(ok.is_some(), "health still counts an idle connection: {h}");

    // The next request opens a fresh connection and works.
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "{:?}", r.text());
    assert_eq!(mock.stats().total_connections, 2, "{:?}", mock.stats());
}

// ---------------------------------------------------------------------------------------------
// client gone

fn assert_client_gone_counted(relay: &Relay, before: &serde_json::Value) {
    let want = json_u64(before, "client_gone") + 1;
    let mut h = relay.health();
    let ok = wait_for(Duration::from_secs(2), || {
        h = relay.health();
        json_u64(&h, "client_gone") >= want
            && json_u64(&h, "inflight_requests") == 0
            && json_u64(&h, "upstream_connections_active") == 0
    });
    assert!(
        ok.is_some(),
        "client_gone not counted or request still in flight: before {before}, after {h}"
    );
    assert_eq!(json_u64(&h, "client_gone"), want, "{h}");
    for layer in TIMEOUT_LAYERS {
        let k = format!("timeouts.{layer}");
        assert_eq!(
            json_u64(before, &k),
            json_u64(&h, &k),
            "a client leaving is not a timeout ({k}): {h}"
        );
    }
}

fn client_gone_while_waiting_for_head(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let before = relay.health();

    let mut c = relay.client();
    c.send(&chat("mock-stall-head-10000", false));
    mock.wait_requests(1, Duration::from_secs(3))
        .expect("the mock never saw the request");
    assert_eq!(mock.stats().open_connections, 1);
    // Past the relay's watch grace, then hang up.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        json_u64(&relay.health(), "inflight_requests"),
        1,
        "request should be in flight"
    );
    drop(c);
    let took = assert_mock_closed(&mock, "client gone while waiting for the head");
    assert!(
        took < Duration::from_millis(1500),
        "upstream closed {took:?} after the client left (want < 1.5 s)"
    );
    assert_client_gone_counted(&relay, &before);
}

fn client_gone_mid_stream(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let before = relay.health();

    let mut c = relay.client();
    c.send(&chat("mock-stall-stream-10000", true));
    let (got, seen) = read_until(&mut c.stream, b"tok0", Duration::from_secs(5));
    assert!(
        seen,
        "first event never arrived: {:?}",
        String::from_utf8_lossy(&got)
    );
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    let took = assert_mock_closed(&mock, "client gone mid-stream");
    assert!(
        took < Duration::from_millis(1500),
        "upstream closed {took:?} after the client left (want < 1.5 s)"
    );
    assert_client_gone_counted(&relay, &before);
}
