//! The whole relay: arbitrary upstream bytes through the real response path.
//!
//! One process-wide setup starts an in-process ringway (1 worker, short timeouts) whose
//! channels (an OpenAI-compatible one, and an Anthropic one for [`relay_converted`]) point at a
//! scripted upstream thread in this process; inputs run one at a time. Per input, the upstream answers
//! the next request it gets with the input's bytes (optionally in two writes with a pause) and
//! closes; a client sends one chat request with `Connection: close` and reads until the relay
//! closes. What the client got is checked against what the upstream sent, read with the relay's
//! own head parser and chunked decoder (which the other targets check on their own):
//!
//! - the relay answers every request with a well-formed head, in time, and never hangs on an
//!   upstream that has closed (no relay timeout may fire: the upstream never stalls);
//! - a malformed or incomplete upstream head, an unasked 101, more than 8 interim heads, or an
//!   upstream 401/403 (the channel's key refused) give 502; otherwise the client gets the
//!   upstream's final status (interim 1xx heads skipped);
//! - 2xx/3xx bodies arrive byte for byte (fixed length), or re-framed as chunks whose data is the
//!   upstream's data, ending with the last chunk only if the upstream's body ended; an SSE
//!   stream cut short ends with an `error` event instead; a non-SSE one is cut;
//! - status >= 400 bodies are the relay's JSON error shape;
//! - every request reached the upstream (no answer was taken from a stale pooled connection);
//! - every 64 inputs: the health endpoint answers 200 and the worker's gauges (inflight, client
//!   connections, upstream connections in use) return to zero.
//!
//! A panic in a worker thread aborts the process (the hook below), so libFuzzer records it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ringway::internals::provider;
use ringway::internals::wire::{self, BodyKind, ResponseHead};
use ringway::internals::Monitor;

use super::chunked::decode_pieces;

const CLIENT_TOKEN: &str = "sk-fuzz-client";
/// No relay answer may take longer than this (its `total` is 5 s).
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the gauges may take to settle after the last response.
const SETTLE: Duration = Duration::from_secs(3);

/// What the upstream thread sends next: the bytes, and where to pause between two writes.
struct Script {
    bytes: Vec<u8>,
    pause_at: Option<usize>,
}

pub struct Relay {
    port: u16,
    monitor: &'static Monitor,
    script: &'static Mutex<Script>,
    /// Requests the upstream has read and answered.
    served: &'static AtomicU64,
    /// Connections the upstream has finished writing and closed (its write side).
    closed: &'static AtomicU64,
    iterations: AtomicU64,
    /// One input at a time: the upstream has one script (the corpus replay test runs the
    /// relay targets on parallel threads).
    serial: Mutex<()>,
}

static RELAY: OnceLock<Relay> = OnceLock::new();

pub fn relay() -> &'static Relay {
    RELAY.get_or_init(start)
}

fn start() -> Relay {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        let worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("ringway-") || n == "fuzz-upstream");
        if worker {
            // Nobody would see it otherwise: the worker just dies and requests stall.
            std::process::abort();
        }
    }));

    let script: &'static Mutex<Script> = Box::leak(Box::new(Mutex::new(Script {
        bytes: Vec::new(),
        pause_at: None,
    })));
    let served: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let closed: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fuzz upstream");
    let upstream = listener.local_addr().unwrap();
    std::thread::Builder::new()
        .name("fuzz-upstream".into())
        .spawn(move || upstream_loop(listener, script, served, closed))
        .unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
workers = 1
sse_coalesce = "0ms"
[timeouts]
connect = "2s"
response_header = "2s"
stream_idle = "2s"
total = "5s"
[monitor]
log_interval = "1h"
# Every input is sent to the one upstream: channel health would take it out of rotation
# after a few malformed answers, and the upstream would no longer see the bytes under test.
[health]
enabled = false
# One attempt: `claude-fuzz` is served by both channels, and a failover would send the next
# request to an upstream whose script is spent.
[retry]
attempts = 0
[[channels]]
name = "fuzz"
provider = "openai"
base_url = "http://{upstream}"
keys = ["sk-fuzz-upstream"]
models = ["*"]
# `relay_converted`: chat completions for `claude-fuzz` are converted for this channel.
[[channels]]
name = "fuzz-anthropic"
provider = "anthropic"
base_url = "http://{upstream}"
keys = ["sk-fuzz-upstream"]
models = ["claude-fuzz"]
priority = 1
[[tokens]]
name = "fuzz"
key = "{CLIENT_TOKEN}"
models = ["*"]
"#
    );
    let config = ringway::parse(&toml, Path::new("<fuzz>")).expect("fuzz relay config");
    let running = ringway::start(config).expect("start the relay");
    let monitor = running.monitor;
    // The workers run until the process ends.
    std::mem::forget(running);
    let relay = Relay {
        port,
        monitor,
        script,
        served,
        closed,
        iterations: AtomicU64::new(0),
        serial: Mutex::new(()),
    };
    relay.check_health();
    relay
}

/// Accept, read one request (head and Content-Length body), answer with the script, close.
fn upstream_loop(
    listener: TcpListener,
    script: &Mutex<Script>,
    served: &AtomicU64,
    closed: &AtomicU64,
) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_nodelay(true);
        if !read_request(&mut conn) {
            continue;
        }
        let (bytes, pause_at) = {
            let s = script.lock().unwrap();
            (s.bytes.clone(), s.pause_at)
        };
        served.fetch_add(1, SeqCst);
        let _ = match pause_at {
            Some(k) => conn.write_all(&bytes[..k]).and_then(|_| {
                std::thread::sleep(Duration::from_micros(100));
                conn.write_all(&bytes[k..])
            }),
            None => conn.write_all(&bytes),
        };
        // Everything the relay sent was read, so this is a FIN, not a reset.
        let _ = conn.shutdown(Shutdown::Write);
        closed.fetch_add(1, SeqCst);
    }
}

fn read_request(conn: &mut TcpStream) -> bool {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            while buf.len() < n + len {
                match conn.read(&mut tmp) {
                    Ok(0) | Err(_) => return false,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
            return true;
        }
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
}

impl Relay {
    fn get(&self, path: &str) -> Vec<u8> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the relay");
        c.set_read_timeout(Some(CLIENT_DEADLINE)).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).expect("read from the relay");
        out
    }

    /// The health endpoint answers 200.
    pub fn check_health(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let r = self.get("/api/monitor/health");
            if r.starts_with(b"HTTP/1.1 200 ") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health: {:?}",
                String::from_utf8_lossy(&r)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Health answers, then nothing is left in flight: no request, no client connection, no
    /// upstream connection in use.
    pub fn check_idle(&self) {
        self.check_health();
        let w = &self.monitor.workers[0];
        let deadline = Instant::now() + SETTLE;
        loop {
            let gauges = [
                w.inflight.load(SeqCst),
                w.client_connections.load(SeqCst),
                w.upstream_active.load(SeqCst),
            ];
            if gauges == [0, 0, 0] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left over after the response: inflight, client connections, upstream active = {gauges:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn timeouts(&self) -> u64 {
        let w = &self.monitor.workers[0];
        w.timeouts.iter().map(|t| t.load(SeqCst)).sum()
    }
}

/// What the relay must answer, from the upstream bytes as the relay's head parser reads them.
enum Expect<'a> {
    /// Malformed or incomplete head: 502.
    BadGateway,
    Final {
        head: ResponseHead,
        rest: &'a [u8],
    },
}

/// Interim responses the relay skips before it takes an upstream for broken.
const MAX_INTERIM: usize = 8;

fn expect(mut up: &[u8]) -> Expect<'_> {
    let mut interim = 0;
    loop {
        let mut head = ResponseHead::default();
        match wire::parse_response(up, &mut head, false) {
            // Nothing asked for an upgrade.
            Ok(true) if head.status == 101 => return Expect::BadGateway,
            Ok(true) if head.status < 200 => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Expect::BadGateway;
                }
                up = &up[head.len..];
            }
            // The channel's key refused: never the client's problem.
            Ok(true) if head.status == 401 || head.status == 403 => return Expect::BadGateway,
            Ok(true) => {
                let rest = &up[head.len..];
                return Expect::Final { head, rest };
            }
            Ok(false) | Err(_) => return Expect::BadGateway,
        }
    }
}

/// A client response: status, headers (lower-case name, value), body bytes.
struct ClientResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl ClientResponse {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn parse_client(raw: &[u8]) -> ClientResponse {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "the relay's answer has no well-formed head ({other:?}): {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(600)])
        ),
    };
    assert_eq!(resp.version, Some(1), "the relay answers HTTP/1.1");
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    for name in ["content-length", "transfer-encoding", "x-request-id"] {
        let count = headers.iter().filter(|(n, _)| n == name).count();
        assert!(count <= 1, "{count} {name} headers from the relay");
    }
    let r = ClientResponse {
        status: resp.code.unwrap(),
        headers,
        body: raw[n..].to_vec(),
    };
    assert!(
        r.header("content-length").is_none() || r.header("transfer-encoding").is_none(),
        "both content-length and transfer-encoding from the relay"
    );
    r
}

/// The relay's own error shape: `{"error":{"message":"..",...}}`.
fn assert_error_json(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(
        v["error"]["message"].is_string() && v["error"]["code"].is_string(),
        "error body: {v}"
    );
}

fn content_length(r: &ClientResponse) -> Option<u64> {
    let v = r.header("content-length")?;
    Some(wire::parse_decimal(v).expect("numeric content-length"))
}

/// A fixed-length client body: all of it arrived.
fn fixed_body(r: &ClientResponse) -> &[u8] {
    let n = content_length(r).expect("content-length on a fixed answer") as usize;
    assert_eq!(r.body.len(), n, "body length vs content-length");
    &r.body
}

/// The client's chunked body, decoded: (data, ended with the last chunk).
fn client_chunks(r: &ClientResponse) -> (Vec<u8>, bool) {
    assert_eq!(
        r.header("transfer-encoding"),
        Some(&b"chunked"[..]),
        "a streamed body is chunked to an HTTP/1.1 client"
    );
    let d = decode_pieces(&[&r.body]);
    assert!(
        !d.error,
        "the relay's chunked framing does not decode: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    if d.done {
        assert_eq!(
            d.consumed,
            r.body.len(),
            "bytes after the relay's last chunk"
        );
    }
    (d.data, d.done)
}

/// Splits off the relay's SSE `error` event; returns the data before it.
fn strip_error_event(data: &[u8]) -> &[u8] {
    const EVENT: &[u8] = b"event: error\ndata: ";
    let at = data
        .windows(EVENT.len())
        .rposition(|w| w == EVENT)
        .unwrap_or_else(|| {
            panic!(
                "a cut SSE stream ends without an error event: {:?}",
                String::from_utf8_lossy(data)
            )
        });
    let json = &data[at + EVENT.len()..];
    assert!(json.ends_with(b"\n\n"), "error event not terminated");
    assert_error_json(&json[..json.len() - 2]);
    &data[..at]
}

/// Known crash, reported and skipped until it is fixed (flip this to `false` then): a streamed
/// (chunked or close-delimited) 2xx/3xx whose final head is shorter than `CHUNK_HEADROOM`
/// (18 bytes, e.g. `HTTP/1.1 200\r\n\r\n`) panics the worker in `relay_stream` at
/// `ubuf.copy_within(hl.., CHUNK_HEADROOM)` ("dest is out of bounds").
pub const SKIP_SHORT_HEAD_STREAM_CRASH: bool = false;

fn short_head_stream(up: &[u8]) -> bool {
    match expect(up) {
        Expect::Final { head, .. } => {
            head.len < wire::CHUNK_HEADROOM
                && head.status < 400
                && matches!(head.body, BodyKind::Chunked | BodyKind::UntilClose)
        }
        Expect::BadGateway => false,
    }
}

/// Input: one flag byte (bit 0: `"stream": true`; bit 1: the upstream pauses once, at the
/// fraction of its bytes given by bits 2..8), then the upstream's bytes.
pub fn relay_response(data: &[u8]) {
    let Some((&flags, up)) = data.split_first() else {
        return;
    };
    if SKIP_SHORT_HEAD_STREAM_CRASH && short_head_stream(up) {
        return;
    }
    let _one_at_a_time = relay().serial.lock().unwrap_or_else(|e| e.into_inner());
    let stream = flags & 1 == 1;
    let body = format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = exchange(flags, up, &req);
    let r = parse_client(&raw);
    match expect(up) {
        Expect::BadGateway => {
            assert_eq!(r.status, 502, "a bad upstream head must give 502");
            assert_error_json(fixed_body(&r));
        }
        Expect::Final { head, rest } => {
            assert_eq!(
                r.status, head.status,
                "the upstream's status must pass through"
            );
            if head.status >= 400 {
                assert_error_json(fixed_body(&r));
            } else {
                check_body(&r, &head, rest, stream);
            }
        }
    }
    relay().settle();
}

/// Input: the flag byte of [`relay_response`], a direction byte (bit 0 set: an Anthropic
/// Messages request for the OpenAI-compatible channel; clear: an OpenAI chat request for the
/// Anthropic channel), then the upstream's bytes — which the relay must convert or refuse:
///
/// - a bad upstream head is a 502, an upstream error its status, each with an error body in
///   the client's dialect;
/// - a 2xx/3xx whole answer is the converted JSON (a `chat.completion` or an Anthropic
///   `message`) with the upstream's status and a Content-Length, or a 502 in the client's
///   dialect when it cannot be converted;
/// - a stream keeps the upstream's status, is chunked, always ends with the last chunk, and is
///   whole events of the client's dialect ending with `[DONE]` / `message_stop`, or with the
///   relay's `error` event as its last event.
pub fn relay_converted(data: &[u8]) {
    let [flags, direction, up @ ..] = data else {
        return;
    };
    if SKIP_SHORT_HEAD_STREAM_CRASH && short_head_stream(up) {
        return;
    }
    let _one_at_a_time = relay().serial.lock().unwrap_or_else(|e| e.into_inner());
    let stream = flags & 1 == 1;
    let anthropic_client = direction & 1 == 1;
    let req = if anthropic_client {
        let body = format!(
            r#"{{"model":"gpt-fuzz","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: fuzz\r\nx-api-key: {CLIENT_TOKEN}\r\nanthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = format!(
            r#"{{"model":"claude-fuzz","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let raw = exchange(*flags, up, &req);
    let r = parse_client(&raw);
    let error_json = |body: &[u8]| {
        if anthropic_client {
            assert_anthropic_error_json(body)
        } else {
            assert_error_json(body)
        }
    };
    match expect(up) {
        Expect::BadGateway => {
            assert_eq!(r.status, 502, "a bad upstream head must give 502");
            error_json(fixed_body(&r));
        }
        Expect::Final { head, .. } if head.status >= 400 => {
            assert_eq!(r.status, head.status, "the upstream's error status is kept");
            error_json(fixed_body(&r));
        }
        Expect::Final { .. } if r.status == 502 => error_json(fixed_body(&r)),
        Expect::Final { head, .. } => {
            assert_eq!(r.status, head.status, "the upstream's status is kept");
            if r.header("content-type") == Some(&b"text/event-stream"[..]) {
                let (data, ended) = client_chunks(&r);
                assert!(ended, "a converted stream always ends with the last chunk");
                check_converted_events(&data, anthropic_client);
            } else {
                let v: serde_json::Value = serde_json::from_slice(fixed_body(&r))
                    .unwrap_or_else(|e| panic!("converted body is not JSON ({e})"));
                if anthropic_client {
                    assert_eq!(v["type"], "message", "{v}");
                } else {
                    assert_eq!(v["object"], "chat.completion", "{v}");
                }
            }
        }
    }
    relay().settle();
}

/// Anthropic's error shape: `{"type":"error","error":{"type":..,"message":..}}`.
fn assert_anthropic_error_json(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(
        v["type"] == "error" && v["error"]["type"].is_string() && v["error"]["message"].is_string(),
        "Anthropic error body: {v}"
    );
}

/// A converted stream's events: whole events of the client's dialect (each Anthropic event's
/// data `type` equals its name), ending with `[DONE]` / `message_stop`, or with the relay's
/// error event as the very last event.
fn check_converted_events(data: &[u8], anthropic_client: bool) {
    let text = String::from_utf8_lossy(data);
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "a converted stream ends at an event boundary: {text:?}"
    );
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    for (i, event) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        if let Some(json) = event.strip_prefix("event: error\ndata: ") {
            assert!(last, "the error event is the last: {text:?}");
            if anthropic_client {
                assert_anthropic_error_json(json.as_bytes());
            } else {
                assert_error_json(json.as_bytes());
            }
            return;
        }
        if anthropic_client {
            let (name, json) = event
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an Anthropic event: {event:?}"));
            let v: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {json:?}"));
            assert_eq!(v["type"], name, "{event:?}");
            if last {
                assert_eq!(name, "message_stop", "a complete stream: {text:?}");
            }
        } else {
            let json = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an OpenAI data event: {event:?}"));
            if last {
                assert_eq!(json, "[DONE]", "a complete stream: {text:?}");
            } else {
                let v: serde_json::Value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {json:?}"));
                assert_eq!(v["object"], "chat.completion.chunk", "{v}");
            }
        }
    }
    assert!(!events.is_empty(), "a converted stream has events");
}

/// Script the upstream with `up` (paused as `flags` say), send `req`, and read the relay's
/// whole answer; checks that the upstream was asked, finished its script, and that no relay
/// timeout fired.
fn exchange(flags: u8, up: &[u8], req: &str) -> Vec<u8> {
    let relay = relay();
    let pause_at = (flags & 2 != 0 && up.len() > 1).then(|| {
        let k = ((flags >> 2) as usize * up.len()) / 64;
        k.clamp(1, up.len() - 1)
    });
    {
        let mut s = relay.script.lock().unwrap();
        s.bytes.clear();
        s.bytes.extend_from_slice(up);
        s.pause_at = pause_at;
    }
    let served = relay.served.load(SeqCst);
    let timeouts = relay.timeouts();
    let started = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", relay.port)).expect("connect to the relay");
    c.set_read_timeout(Some(CLIENT_DEADLINE)).unwrap();
    c.write_all(req.as_bytes()).expect("send to the relay");
    let mut raw = Vec::new();
    if let Err(e) = c.read_to_end(&mut raw) {
        panic!(
            "the relay did not finish its answer in {:?} ({e}); got {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&raw[..raw.len().min(600)])
        );
    }
    drop(c);

    assert!(
        relay.served.load(SeqCst) > served,
        "the relay answered without asking the upstream: {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(600)])
    );
    // The next input starts only once this one's upstream wrote all of its script and closed.
    // Otherwise bytes it sends after a pause, behind a whole response the relay already took
    // (and pooled the connection after), could arrive on that connection once the next input's
    // request went out on it: an upstream answering a request nobody had sent yet, which
    // HTTP/1.1 cannot tell from the answer (docs/FUZZING.md, "What the relay cannot tell").
    let written = Instant::now();
    while relay.closed.load(SeqCst) < relay.served.load(SeqCst) {
        assert!(
            written.elapsed() < CLIENT_DEADLINE,
            "the fuzz upstream did not finish writing its script"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(
        relay.timeouts(),
        timeouts,
        "a relay timeout fired though the upstream had closed (after {:?})",
        started.elapsed()
    );
    raw
}

impl Relay {
    /// Every 64 inputs: nothing is left in flight.
    fn settle(&self) {
        if self.iterations.fetch_add(1, SeqCst) % 64 == 63 {
            self.check_idle();
        }
    }
}

/// What a client that streams without asking for usage gets of an event stream: the relay asked
/// the upstream for it and removes the usage-only events (`provider::is_usage_event`), found
/// here the slow way: events end at a line that is empty or only `\r`; a trailing event without
/// its blank line is kept.
fn without_usage_events(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut event_start = 0;
    let mut line_start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &data[line_start..i];
        line_start = i + 1;
        if line.iter().all(|&c| c == b'\r') {
            let event = &data[event_start..=i];
            if !provider::is_usage_event(event) {
                out.extend_from_slice(event);
            }
            event_start = i + 1;
        }
    }
    out.extend_from_slice(&data[event_start..]);
    out
}

fn check_body(r: &ClientResponse, head: &ResponseHead, rest: &[u8], stream: bool) {
    // A streaming request did not ask for usage: its usage-only events are kept from it.
    let filtered = |data: Vec<u8>| {
        if stream && head.event_stream {
            without_usage_events(&data)
        } else {
            data
        }
    };
    match head.body {
        BodyKind::None => assert_eq!(fixed_body(r), b""),
        BodyKind::Length(n) => {
            let want = &rest[..rest.len().min(n as usize)];
            assert_eq!(content_length(r), Some(n));
            // A short upstream body gives a short client body and a close.
            assert_eq!(r.body, want, "fixed-length body differs");
        }
        BodyKind::UntilClose => {
            let (data, ended) = client_chunks(r);
            assert!(ended, "a close-delimited body ends with the last chunk");
            assert_eq!(
                data,
                filtered(rest.to_vec()),
                "close-delimited body differs"
            );
        }
        BodyKind::Chunked => {
            let (data, ended) = client_chunks(r);
            let mut up = decode_pieces(&[rest]);
            up.data = filtered(std::mem::take(&mut up.data));
            if up.done {
                assert!(ended, "a whole chunked body ends with the last chunk");
                assert_eq!(data, up.data, "chunked body differs");
            } else if head.event_stream {
                assert!(ended, "a cut SSE stream still ends properly");
                // Everything decoded before the cut or the bad framing goes out first; the
                // relay ends a half-sent event before its error event.
                let sent = strip_error_event(&data);
                let sent = match sent.strip_suffix(b"\n\n") {
                    Some(s) if sent != up.data => s,
                    _ => sent,
                };
                assert_eq!(sent, up.data, "SSE data before the cut differs");
            } else {
                assert!(!ended, "a cut body must not end with the last chunk");
                assert_eq!(data, up.data, "data before the cut differs");
            }
        }
    }
}
