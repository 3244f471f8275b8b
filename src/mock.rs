//! `ringway mock`: a fault-injecting, OpenAI-compatible upstream for the relay's integration
//! tests, the demo and the benchmarks.
//!
//! What it owns: a real HTTP/1.1 server (keep-alive, pipelining, Content-Length and chunked
//! request bodies) whose behaviour is picked by the request's JSON `model` — canned replies,
//! SSE streams with controlled pacing, error statuses, stalls, resets, broken framing and an
//! echo of exactly what arrived (see [`MODELS_DOC`]). It also keeps exact connection counters
//! ([`MockHandle::stats`], `GET /mock/stats`) so tests can prove the relay closed its upstream
//! sockets.
//!
//! What it must not do: it is never on the relay's request path, and it deliberately shares no
//! code with the relay's own wire framing or async runtime. It uses blocking std sockets, one
//! thread per connection, and httparse for heads, so a framing bug in the relay cannot be
//! mirrored (and thereby hidden) by the same bug here.
//!
//! [`spawn_tls`] / `ringway mock --tls-cert --tls-key` serve the same behaviours over TLS
//! (blocking rustls over the same sockets), for the relay's https upstream tests.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The model table printed by `--help` and copied into the README.
pub const MODELS_DOC: &str = "\
Mock upstream models (chosen by the request body's JSON \"model\"):
  mock-fixed             200 JSON, Content-Length framed: chat.completion on /v1/chat/completions,
                         text_completion on /v1/completions, one 8-float embedding on
                         /v1/embeddings, an Anthropic-style message on /v1/messages.
                         \"stream\": true streams like mock-stream-5-0 (except on /v1/embeddings).
                         Any model name not listed here behaves like mock-fixed.
  mock-stream-N-D        200 text/event-stream, chunked: N chat.completion.chunk events
                         (content tok0, tok1, ...), one HTTP chunk each, D ms apart (the first at
                         once), then data: [DONE] and the terminating chunk. Ignores \"stream\".
  mock-status-CODE       status CODE (200-599) with an OpenAI error body \"mock error CODE\";
                         429 and 503 also send Retry-After: 7.
  mock-huge-error        500 with a 10 MiB (10485760-byte) JSON error body, Content-Length framed.
  mock-reset-body        200 with Content-Length: 100000, 1000 body bytes, then a TCP reset.
  mock-reset-stream      200 SSE head and 2 events, then a TCP reset.
  mock-stall-head-MS     reads the request, waits MS ms, then answers like mock-fixed.
  mock-stall-stream-MS   200 SSE: one event at once, MS ms of silence, one more event, [DONE].
  mock-broken-chunked    200 SSE: one valid chunk, then the non-hex chunk-size line \"zz\", then close.
  mock-echo              200 JSON {\"method\", \"path\", \"headers\": [[name, value], ...] in received
                         order, \"body\": the request body as lossy UTF-8}.
  mock-close             like mock-fixed, plus Connection: close; the mock then closes.
  mock-slow-body-MS      the mock-fixed reply, Content-Length framed, written in 3 pieces MS ms apart.
Hostile upstreams (bytes written raw; for the relay's hostile-peer tests):
  mock-no-reason         200 with no reason phrase (\"HTTP/1.1 200\\r\\n\"); -stream: the same as SSE.
  mock-binary-reason     200 with a reason phrase of bytes 0x80-0xFF.
  mock-bare-lf           a whole response with bare LF line ends.
  mock-extra-response    a whole response, then a second (\"INJECTED\") in the same write;
                         mock-extra-later: the second one 50 ms after the first.
  mock-extra-after-stream  a whole SSE stream, then a stray response after its last chunk.
  mock-unasked-101       101 Switching Protocols and websocket bytes.
  mock-length-and-chunked  Content-Length: 5 and chunked framing at once.
  mock-duplicate-length  two different Content-Length values.
  mock-bad-status-NNN    status NNN, any three digits (e.g. 600, 099).
  mock-interim-N         N interim responses (100 / 103 alternating) and the final one, one write.
  mock-endless-interim   103 Early Hints every 10 ms until the peer leaves.
  mock-echo-key-STATUS   STATUS, echoing the received Authorization in the error body and in an
                         x-debug-auth header (STATUS 200: a chat completion with that header).
  mock-bulk-MIB          an SSE stream of MIB MiB: 1 KiB events back to back, 16 per chunk.
  mock-broken-chunked-one-write  one valid SSE chunk and a \"zz\" chunk-size line in one write.
Other routes: GET /v1/models lists these names (parameterised ones with sample values);
GET /mock/stats returns {\"open_connections\",\"total_connections\",\"requests\"}, where the stats
request itself is counted in requests and its own connection in open_connections.
Every response carries x-mock-request: <n>, the request's sequence number (from 1).
Waits end early when the peer hangs up or the mock is stopped.";

/// Names served by `GET /v1/models`; parameterised families appear with sample parameters.
const MODEL_NAMES: &[&str] = &[
    "mock-fixed",
    "mock-stream-5-0",
    "mock-stream-5-100",
    "mock-status-400",
    "mock-status-401",
    "mock-status-429",
    "mock-status-500",
    "mock-status-503",
    "mock-status-504",
    "mock-huge-error",
    "mock-reset-body",
    "mock-reset-stream",
    "mock-stall-head-2000",
    "mock-stall-stream-2000",
    "mock-broken-chunked",
    "mock-echo",
    "mock-close",
    "mock-slow-body-100",
];

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64;
const MAX_BODY: u64 = 64 * 1024 * 1024;
/// Caps every scripted wait so a silly model name cannot overflow `Instant` arithmetic.
const MAX_WAIT_MS: u64 = 3_600_000;
/// How often blocked reads and writes wake up to notice `stop`.
const IO_TICK: Duration = Duration::from_millis(250);
/// Accept latency is set by poll readiness, not this; it only bounds how late `stop` is seen.
const ACCEPT_TICK: Duration = Duration::from_millis(100);
/// Granularity of scripted waits, which is how quickly a hang-up or `stop` cuts one short.
const PAUSE_TICK: Duration = Duration::from_millis(50);
const CONN_STACK: usize = 256 * 1024;
const HUGE_ERROR_LEN: usize = 10_485_760;
const HUGE_WRITE: usize = 64 * 1024;

/// Counters as seen at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockStats {
    /// Accepted connections whose socket is not yet closed.
    pub open_connections: u64,
    /// Connections accepted since the mock started.
    pub total_connections: u64,
    /// Requests answered or rejected (every response's `x-mock-request` value is drawn from this).
    pub requests: u64,
}

/// A mock started by [`spawn`]. Dropping it leaves the mock running until the process exits;
/// call [`MockHandle::stop`] to shut it down.
#[derive(Debug)]
pub struct MockHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: thread::JoinHandle<()>,
}

impl MockHandle {
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Stops accepting and closes the listener before returning. Live connections end on their
    /// own: idle ones within about 250 ms, scripted waits within about 50 ms.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.acceptor.join();
    }
}

/// Binds `listen` (port 0 allowed) and serves on background threads.
pub fn spawn(listen: &str) -> io::Result<MockHandle> {
    spawn_with(listen, None)
}

/// Like [`spawn`], but every connection speaks TLS (rustls, TLS 1.2 and 1.3) with the given
/// PEM certificate chain (leaf first) and PEM private key (PKCS#8, SEC1 or PKCS#1). The models
/// behave the same; the reset and stall faults act on the TCP socket under the TLS session.
pub fn spawn_tls(listen: &str, cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<MockHandle> {
    spawn_with(listen, Some(tls_server_config(cert_chain_pem, key_pem)?))
}

fn spawn_with(listen: &str, tls: Option<Arc<ServerConfig>>) -> io::Result<MockHandle> {
    let (listener, addr) = bind(listen)?;
    let shared = Arc::new(Shared::default());
    let acceptor = {
        let shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || accept_loop(&listener, &shared, tls.as_ref()))?
    };
    Ok(MockHandle {
        addr,
        shared,
        acceptor,
    })
}

/// Binds `listen` and serves forever on the calling thread.
pub fn run(listen: &str) -> io::Result<()> {
    let (listener, addr) = bind(listen)?;
    eprintln!("mock upstream listening on {addr}");
    accept_loop(&listener, &Arc::new(Shared::default()), None);
    Ok(())
}

/// Like [`run`], serving TLS with the PEM files at `cert_path` (chain, leaf first) and
/// `key_path`.
pub fn run_tls(listen: &str, cert_path: &str, key_path: &str) -> io::Result<()> {
    let read = |path: &str| {
        std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))
    };
    let tls = tls_server_config(&read(cert_path)?, &read(key_path)?)?;
    let (listener, addr) = bind(listen)?;
    eprintln!("mock upstream listening on {addr} (TLS)");
    accept_loop(&listener, &Arc::new(Shared::default()), Some(&tls));
    Ok(())
}

fn tls_server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate chain", &e))?;
    if chain.is_empty() {
        return Err(invalid("certificate chain", &"no PEM certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("private key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    Ok(Arc::new(config))
}

fn bind(listen: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)?;
    // Non-blocking so a poll that raced with a vanished connection cannot wedge the acceptor.
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    open: AtomicU64,
    total: AtomicU64,
    requests: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn stats(&self) -> MockStats {
        MockStats {
            open_connections: self.open.load(Ordering::SeqCst),
            total_connections: self.total.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, tls: Option<&Arc<ServerConfig>>) {
    while !shared.stopping() {
        if poll_fd(listener.as_raw_fd(), libc::POLLIN, ACCEPT_TICK) == 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => serve_in_thread(stream, shared, tls),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            // EMFILE and friends persist while poll keeps reporting readiness: back off
            // instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_in_thread(stream: TcpStream, shared: &Arc<Shared>, tls: Option<&Arc<ServerConfig>>) {
    shared.total.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let mut conn = OpenConn {
        stream: Some(Wire {
            tcp: stream,
            tls: None,
        }),
        shared: Arc::clone(shared),
    };
    // Only the TLS session is set up here; its handshake runs on the connection's own thread,
    // inside the first read.
    if let (Some(config), Some(wire)) = (tls, conn.stream.as_mut()) {
        match ServerConnection::new(Arc::clone(config)) {
            Ok(session) => wire.tls = Some(RefCell::new(session)),
            // Dropping `conn` closes the socket and keeps the count exact.
            Err(_) => return,
        }
    }
    // If the thread cannot be spawned the closure is dropped, and `conn` with it, which closes
    // the socket and keeps the count exact.
    let _ = thread::Builder::new()
        .name("mock-conn".into())
        .stack_size(CONN_STACK)
        .spawn(move || conn.serve());
}

/// Owns an accepted socket so that `open_connections` drops only after the fd is closed, on
/// every exit path.
struct OpenConn {
    stream: Option<Wire>,
    shared: Arc<Shared>,
}

/// An accepted connection: the socket, and the TLS session over it in TLS mode. Reads and
/// writes go through the session when there is one (rustls' blocking `Stream` over `&TcpStream`,
/// so the same handler serves both); socket-level faults (reset, hang-up polling, half-close)
/// act on `tcp` directly. Used by one thread only, hence the `RefCell`.
struct Wire {
    tcp: TcpStream,
    tls: Option<RefCell<ServerConnection>>,
}

impl Wire {
    /// Plaintext read; `Ok(0)` at end of stream. Timeouts surface as `WouldBlock`/`TimedOut`
    /// with any partial TLS record kept in the session, so callers simply retry.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tcp = &self.tcp;
        match &self.tls {
            None => tcp.read(buf),
            Some(tls) => rustls::Stream::new(&mut *tls.borrow_mut(), &mut tcp).read(buf),
        }
    }

    /// Plaintext write. Over TLS the bytes are accepted into the session and sent as far as
    /// the socket takes them; [`Wire::flush`] pushes out the rest.
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tcp = &self.tcp;
        match &self.tls {
            None => tcp.write(buf),
            Some(tls) => rustls::Stream::new(&mut *tls.borrow_mut(), &mut tcp).write(buf),
        }
    }

    fn flush(&self) -> io::Result<()> {
        let mut tcp = &self.tcp;
        match &self.tls {
            None => Ok(()),
            Some(tls) => rustls::Stream::new(&mut *tls.borrow_mut(), &mut tcp).flush(),
        }
    }

    /// Over TLS, a best-effort close_notify before an orderly close, so the peer sees a clean
    /// end of the session rather than a truncation. A no-op on plain TCP.
    fn close_notify(&self) {
        if let Some(tls) = &self.tls {
            tls.borrow_mut().send_close_notify();
            let _ = self.flush();
        }
    }
}

impl OpenConn {
    fn serve(self) {
        if let Some(stream) = &self.stream {
            serve_connection(stream, &self.shared);
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        drop(self.stream.take());
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the connection does once a response has been handled.
enum Outcome {
    KeepAlive,
    Close,
    /// Close with SO_LINGER 0 so the peer gets a RST instead of a FIN.
    Reset,
}

fn serve_connection(stream: &Wire, shared: &Shared) {
    let tcp = &stream.tcp;
    // Accepted sockets must block: the timeouts below exist only to notice `stop`.
    if tcp.set_nonblocking(false).is_err()
        || tcp.set_read_timeout(Some(IO_TICK)).is_err()
        || tcp.set_write_timeout(Some(IO_TICK)).is_err()
    {
        return;
    }
    // Streaming tests measure per-event arrival, which Nagle would batch.
    let _ = tcp.set_nodelay(true);
    let mut inbox = Inbox {
        stream,
        shared,
        buf: Vec::new(),
    };
    loop {
        let request = match read_request(&mut inbox) {
            Err(Fail::Gone) => return,
            other => other,
        };
        let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let request = match request {
            Ok(request) => request,
            Err(Fail::Gone) => return,
            Err(Fail::Reject(status, message)) => {
                let reply = Reply {
                    stream,
                    shared,
                    n,
                    close: true,
                };
                let (kind, code) = error_kind(status);
                if reply.error(status, message, kind, code, &[]).is_ok() {
                    close_gently(stream);
                }
                return;
            }
        };
        let reply = Reply {
            stream,
            shared,
            n,
            close: !request.keep_alive,
        };
        match respond(reply, &request) {
            Ok(Outcome::KeepAlive) => {}
            Ok(Outcome::Close) => {
                stream.close_notify();
                return;
            }
            Err(_) => return,
            Ok(Outcome::Reset) => {
                let _ = set_linger_zero(tcp);
                return;
            }
        }
    }
}

/// Closing with unread request bytes still queued makes the kernel send RST, which can destroy
/// the error response before the peer reads it; half-close and drain for a moment first.
fn close_gently(wire: &Wire) {
    wire.close_notify();
    // Draining the raw socket is fine over TLS too: nothing more is answered.
    let mut stream = &wire.tcp;
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 1 << 20 {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`; option value is a properly sized `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for `events` on `fd` and returns what was reported; 0 on timeout or
/// interruption, so callers simply loop against their own deadline.
fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> libc::c_short {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd and a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc > 0 {
        return pfd.revents;
    }
    if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
        // A persistent poll failure must not turn callers' loops into spins.
        thread::sleep(timeout);
    }
    0
}

/// POLLRDHUP fires on the peer's FIN without being confused by pipelined bytes still unread.
#[cfg(any(target_os = "linux", target_os = "android"))]
const PEER_HANGUP: libc::c_short = libc::POLLRDHUP;
/// Elsewhere only a full hang-up (POLLHUP/POLLERR, always reported) is noticed.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const PEER_HANGUP: libc::c_short = 0;

// ---------------------------------------------------------------------------------------------
// Request reading

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    keep_alive: bool,
}

enum Fail {
    /// The peer went away (or the mock is stopping): nobody to answer.
    Gone,
    /// Unframeable input: answer with this status and close.
    Reject(u16, &'static str),
}

impl From<io::Error> for Fail {
    fn from(_: io::Error) -> Self {
        Fail::Gone
    }
}

struct Head {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

enum BodyLen {
    Fixed(u64),
    Chunked,
}

/// Received bytes not yet consumed, plus the socket they come from.
struct Inbox<'a> {
    stream: &'a Wire,
    shared: &'a Shared,
    buf: Vec<u8>,
}

impl Inbox<'_> {
    /// Appends whatever the socket has; `Ok(0)` means the peer closed.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if self.shared.stopping() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, len: usize) -> Result<Vec<u8>, Fail> {
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(Fail::Gone);
            }
        }
        let rest = self.buf.split_off(len);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// One CRLF-terminated line, without the CRLF. Bare LF is not accepted: the relay must
    /// produce correct chunk framing, and leniency here would hide it if it did not.
    fn line(&mut self) -> Result<Vec<u8>, Fail> {
        loop {
            let window = &self.buf[..self.buf.len().min(MAX_LINE + 2)];
            if let Some(pos) = window.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(pos + 2)?;
                return Ok(line[..pos].to_vec());
            }
            if self.buf.len() > MAX_LINE {
                return Err(Fail::Reject(400, "chunk framing line too long"));
            }
            if self.fill()? == 0 {
                return Err(Fail::Gone);
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn read_request(inbox: &mut Inbox<'_>) -> Result<Request, Fail> {
    let head = loop {
        if let Some((head, len)) = parse_head(&inbox.buf)? {
            inbox.take(len)?;
            break head;
        }
        if inbox.fill()? == 0 {
            return Err(Fail::Gone);
        }
    };
    let framing = body_framing(&head.headers)?;
    let expects_continue = head.version == 1
        && has_token(&head.headers, "expect", "100-continue")
        && !matches!(framing, BodyLen::Fixed(0));
    if expects_continue {
        let interim = Reply {
            stream: inbox.stream,
            shared: inbox.shared,
            n: 0,
            close: false,
        };
        interim.send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = match framing {
        BodyLen::Fixed(len) => inbox.take(len as usize)?,
        BodyLen::Chunked => read_chunked(inbox)?,
    };
    let keep_alive = if head.version == 1 {
        !has_token(&head.headers, "connection", "close")
    } else {
        has_token(&head.headers, "connection", "keep-alive")
    };
    Ok(Request {
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
        keep_alive,
    })
}

fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Fail> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: parsed.method.unwrap_or_default().to_owned(),
                target: parsed.path.unwrap_or_default().to_owned(),
                version: parsed.version.unwrap_or(1),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(Fail::Reject(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Fail::Reject(431, "too many request headers")),
        Err(_) => Err(Fail::Reject(400, "malformed request head")),
    }
}

fn body_framing(headers: &[(String, Vec<u8>)]) -> Result<BodyLen, Fail> {
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the final coding decides the framing (RFC 9112 section 6.3).
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = value.trim_ascii();
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Fail::Reject(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Fail::Reject(400, "conflicting Content-Length headers"));
            }
            length = Some(parsed);
        }
    }
    match (chunked, length) {
        // Both at once is the classic smuggling shape; a relay must never emit it.
        (Some(_), Some(_)) => Err(Fail::Reject(
            400,
            "both Transfer-Encoding and Content-Length",
        )),
        (Some(true), None) => Ok(BodyLen::Chunked),
        (Some(false), None) => Err(Fail::Reject(400, "unsupported Transfer-Encoding")),
        (None, Some(len)) if len > MAX_BODY => Err(Fail::Reject(413, "request body too large")),
        (None, Some(len)) => Ok(BodyLen::Fixed(len)),
        (None, None) => Ok(BodyLen::Fixed(0)),
    }
}

fn read_chunked(inbox: &mut Inbox<'_>) -> Result<Vec<u8>, Fail> {
    let mut body = Vec::new();
    loop {
        let line = inbox.line()?;
        let size = parse_chunk_size(&line).ok_or(Fail::Reject(400, "invalid chunk size"))?;
        if size == 0 {
            break;
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(Fail::Reject(413, "request body too large"));
        }
        body.extend_from_slice(&inbox.take(size as usize)?);
        if inbox.take(2)? != b"\r\n" {
            return Err(Fail::Reject(400, "chunk data not followed by CRLF"));
        }
    }
    for _ in 0..MAX_TRAILERS {
        if inbox.line()?.is_empty() {
            return Ok(body);
        }
    }
    Err(Fail::Reject(400, "too many trailer fields"))
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    // Chunk extensions are legal and meaningless here.
    let size = line.split(|&b| b == b';').next()?.trim_ascii();
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

fn has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Responses

enum Framing {
    Length(usize),
    Chunked,
    /// For statuses that never carry a body (204, 304).
    Bodiless,
}

#[derive(Clone, Copy)]
struct Reply<'a> {
    stream: &'a Wire,
    shared: &'a Shared,
    n: u64,
    close: bool,
}

impl Reply<'_> {
    fn head(&self, status: u16, extra: &[(&str, &str)], framing: Framing) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nserver: ringway-mock\r\nx-mock-request: {}\r\n",
            reason(status),
            self.n
        );
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match framing {
            Framing::Length(len) => head.push_str(&format!("content-length: {len}\r\n")),
            Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
            Framing::Bodiless => {}
        }
        if self.close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// `write_all` that wakes every [`IO_TICK`] so a peer that stops reading cannot pin the
    /// thread past `stop`.
    fn send(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !self.shared.stopping() => {}
                Err(e) => return Err(e),
            }
        }
        // Over TLS, records the socket did not take yet must leave before a pause or a reset.
        loop {
            match self.stream.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !self.shared.stopping() => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn finished(&self) -> Outcome {
        if self.close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }

    fn full(&self, status: u16, extra: &[(&str, &str)], body: &[u8]) -> io::Result<Outcome> {
        // 204 and 304 are bodiless by definition; a length there would desync the peer.
        let bodiless = status == 204 || status == 304;
        let framing = if bodiless {
            Framing::Bodiless
        } else {
            Framing::Length(body.len())
        };
        let mut bytes = self.head(status, extra, framing);
        if !bodiless {
            bytes.extend_from_slice(body);
        }
        self.send(&bytes)?;
        Ok(self.finished())
    }

    fn json(&self, status: u16, body: &str) -> io::Result<Outcome> {
        self.full(
            status,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    fn error(
        &self,
        status: u16,
        message: &str,
        kind: &str,
        code: &str,
        extra: &[(&str, &str)],
    ) -> io::Result<Outcome> {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.full(status, &headers, error_body(message, kind, code).as_bytes())
    }

    fn sse_head(&self) -> io::Result<()> {
        self.send(&self.head(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            Framing::Chunked,
        ))
    }

    /// One HTTP chunk in one write, so each event leaves as its own segment.
    fn chunk(&self, data: &[u8]) -> io::Result<()> {
        let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes)
    }

    fn end_stream(&self) -> io::Result<Outcome> {
        self.send(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")?;
        Ok(self.finished())
    }

    /// Sleeps `wait`; false if cut short because the peer hung up or the mock is stopping.
    fn pause(&self, wait: Duration) -> bool {
        if wait.is_zero() {
            return true;
        }
        let deadline = Instant::now().checked_add(wait);
        loop {
            if self.shared.stopping() {
                return false;
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => PAUSE_TICK,
            };
            if left.is_zero() {
                return true;
            }
            let hangup = PEER_HANGUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            if poll_fd(
                self.stream.tcp.as_raw_fd(),
                PEER_HANGUP,
                left.min(PAUSE_TICK),
            ) & hangup
                != 0
            {
                return false;
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    crate::wire::known_reason_phrase(status).unwrap_or("Mock Status")
}

/// OpenAI-style `(type, code)` for an error status.
fn error_kind(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "invalid_request"),
        401 => ("authentication_error", "invalid_api_key"),
        403 => ("permission_error", "permission_denied"),
        404 => ("not_found_error", "not_found"),
        408 => ("timeout_error", "request_timeout"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        431 => ("invalid_request_error", "request_header_too_large"),
        500 => ("server_error", "internal_error"),
        502 => ("server_error", "bad_gateway"),
        503 => ("server_error", "service_unavailable"),
        504 => ("server_error", "gateway_timeout"),
        s if (400..500).contains(&s) => ("invalid_request_error", "mock_error"),
        s if (500..600).contains(&s) => ("server_error", "mock_error"),
        _ => ("api_error", "mock_error"),
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn error_body(message: &str, kind: &str, code: &str) -> String {
    format!(
        "{{\"error\":{{\"message\":{},\"type\":{},\"param\":null,\"code\":{}}}}}",
        json_str(message),
        json_str(kind),
        json_str(code)
    )
}

fn chat_completion(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1700000000,",
            "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",",
            "\"content\":\"Hello from the ringway mock upstream.\"}},\"finish_reason\":\"stop\"}}],",
            "\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}}}"
        ),
        json_str(model)
    )
}

fn text_completion(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"cmpl-mock\",\"object\":\"text_completion\",\"created\":1700000000,",
            "\"model\":{},\"choices\":[{{\"text\":\"Hello from the ringway mock upstream.\",",
            "\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}}],",
            "\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}}}"
        ),
        json_str(model)
    )
}

fn embeddings(model: &str) -> String {
    format!(
        concat!(
            "{{\"object\":\"list\",\"data\":[{{\"object\":\"embedding\",\"index\":0,",
            "\"embedding\":[0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0]}}],",
            "\"model\":{},\"usage\":{{\"prompt_tokens\":9,\"total_tokens\":9}}}}"
        ),
        json_str(model)
    )
}

fn anthropic_message(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},",
            "\"content\":[{{\"type\":\"text\",\"text\":\"Hello from the ringway mock upstream.\"}}],",
            "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,",
            "\"usage\":{{\"input_tokens\":9,\"output_tokens\":7}}}}"
        ),
        json_str(model)
    )
}

fn chunk_event(model: &str, index: u64, last: bool) -> String {
    format!(
        concat!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",",
            "\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,",
            "\"delta\":{{\"content\":\"tok{}\"}},\"finish_reason\":{}}}]}}\n\n"
        ),
        json_str(model),
        index,
        if last { "\"stop\"" } else { "null" }
    )
}

fn huge_error_body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let head = br#"{"error":{"message":"mock huge error "#;
        let tail = br#"","type":"server_error","param":null,"code":"mock_huge_error"}}"#;
        let mut body = Vec::with_capacity(HUGE_ERROR_LEN);
        body.extend_from_slice(head);
        body.resize(HUGE_ERROR_LEN - tail.len(), b'x');
        body.extend_from_slice(tail);
        body
    })
}

// ---------------------------------------------------------------------------------------------
// Routing and behaviours

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Messages,
}

#[derive(Debug, PartialEq, Eq)]
enum Behaviour {
    Fixed,
    Stream { events: u64, gap_ms: u64 },
    Status(u16),
    HugeError,
    ResetBody,
    ResetStream,
    StallHead(u64),
    StallStream(u64),
    BrokenChunked,
    Echo,
    Close,
    SlowBody(u64),
    Hostile(Hostile),
}

/// Upstreams that break HTTP on purpose, for the relay's hostile-peer tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// `HTTP/1.1 200\r\n`: no reason phrase (JSON, or an SSE stream).
    NoReason { stream: bool },
    /// A reason phrase with bytes 0x80-0xFF.
    BinaryReason,
    /// A whole response with bare LF line ends.
    BareLf,
    /// A whole response, then a second one ("INJECTED") in the same write, kept alive.
    ExtraResponse,
    /// A whole response, then 50 ms later a second one ("INJECTED"), kept alive.
    ExtraLater,
    /// A whole SSE stream, then stray bytes after its last chunk, kept alive.
    ExtraAfterStream,
    /// `101 Switching Protocols` although nothing asked for an upgrade.
    UnaskedSwitch,
    /// Content-Length and chunked framing at once, disagreeing.
    LengthAndChunked,
    /// Two different Content-Length values.
    DuplicateLength,
    /// A status outside 100-599.
    BadStatus(u16),
    /// N interim responses (100, 103, ...) and the final one, all in one write.
    Interim(u64),
    /// 103 Early Hints every 10 ms, forever.
    EndlessInterim,
    /// STATUS with the received Authorization header echoed in the body and in an
    /// `x-debug-auth` header.
    EchoKey(u16),
    /// An SSE stream of N MiB: 1 KiB events written back to back, 16 per chunk.
    Bulk(u64),
    /// One valid SSE chunk and a non-hex chunk-size line in the same write.
    BrokenChunkedOneWrite,
}

fn behaviour(model: &str) -> Behaviour {
    fn number(s: &str) -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    fn millis(s: &str) -> Option<u64> {
        number(s).map(|ms| ms.min(MAX_WAIT_MS))
    }
    let parsed = match model {
        "mock-huge-error" => Some(Behaviour::HugeError),
        "mock-reset-body" => Some(Behaviour::ResetBody),
        "mock-reset-stream" => Some(Behaviour::ResetStream),
        "mock-broken-chunked" => Some(Behaviour::BrokenChunked),
        "mock-echo" => Some(Behaviour::Echo),
        "mock-close" => Some(Behaviour::Close),
        "mock-no-reason" => Some(Behaviour::Hostile(Hostile::NoReason { stream: false })),
        "mock-no-reason-stream" => Some(Behaviour::Hostile(Hostile::NoReason { stream: true })),
        "mock-binary-reason" => Some(Behaviour::Hostile(Hostile::BinaryReason)),
        "mock-bare-lf" => Some(Behaviour::Hostile(Hostile::BareLf)),
        "mock-extra-response" => Some(Behaviour::Hostile(Hostile::ExtraResponse)),
        "mock-extra-later" => Some(Behaviour::Hostile(Hostile::ExtraLater)),
        "mock-extra-after-stream" => Some(Behaviour::Hostile(Hostile::ExtraAfterStream)),
        "mock-unasked-101" => Some(Behaviour::Hostile(Hostile::UnaskedSwitch)),
        "mock-length-and-chunked" => Some(Behaviour::Hostile(Hostile::LengthAndChunked)),
        "mock-duplicate-length" => Some(Behaviour::Hostile(Hostile::DuplicateLength)),
        "mock-endless-interim" => Some(Behaviour::Hostile(Hostile::EndlessInterim)),
        "mock-broken-chunked-one-write" => Some(Behaviour::Hostile(Hostile::BrokenChunkedOneWrite)),
        _ => {
            if let Some(rest) = model.strip_prefix("mock-stream-") {
                let (events, gap) = rest.split_once('-').unwrap_or((rest, "0"));
                number(events)
                    .zip(millis(gap))
                    .map(|(events, gap_ms)| Behaviour::Stream { events, gap_ms })
            } else if let Some(code) = model.strip_prefix("mock-status-") {
                number(code)
                    .filter(|c| (200..=599).contains(c))
                    .map(|c| Behaviour::Status(c as u16))
            } else if let Some(ms) = model.strip_prefix("mock-stall-head-") {
                millis(ms).map(Behaviour::StallHead)
            } else if let Some(ms) = model.strip_prefix("mock-stall-stream-") {
                millis(ms).map(Behaviour::StallStream)
            } else if let Some(ms) = model.strip_prefix("mock-slow-body-") {
                millis(ms).map(Behaviour::SlowBody)
            } else if let Some(code) = model.strip_prefix("mock-bad-status-") {
                // Any three digits: 000-099 and 600-999 are what this is for.
                (code.len() == 3)
                    .then(|| number(code))
                    .flatten()
                    .map(|c| Behaviour::Hostile(Hostile::BadStatus(c as u16)))
            } else if let Some(n) = model.strip_prefix("mock-interim-") {
                number(n).map(|n| Behaviour::Hostile(Hostile::Interim(n.min(1000))))
            } else if let Some(code) = model.strip_prefix("mock-echo-key-") {
                number(code)
                    .filter(|c| (200..=599).contains(c))
                    .map(|c| Behaviour::Hostile(Hostile::EchoKey(c as u16)))
            } else if let Some(mib) = model.strip_prefix("mock-bulk-") {
                number(mib).map(|m| Behaviour::Hostile(Hostile::Bulk(m.min(1024))))
            } else {
                None
            }
        }
    };
    parsed.unwrap_or(Behaviour::Fixed)
}

fn respond(reply: Reply<'_>, request: &Request) -> io::Result<Outcome> {
    let path = request.target.split('?').next().unwrap_or_default();
    let endpoint = match (request.method.as_str(), path) {
        ("GET", "/mock/stats") => {
            let stats = reply.shared.stats();
            return reply.json(
                200,
                &format!(
                    "{{\"open_connections\":{},\"total_connections\":{},\"requests\":{}}}",
                    stats.open_connections, stats.total_connections, stats.requests
                ),
            );
        }
        ("GET", "/v1/models") => return reply.json(200, &models_list()),
        ("POST", "/v1/chat/completions") => Endpoint::Chat,
        ("POST", "/v1/completions") => Endpoint::Completions,
        ("POST", "/v1/embeddings") => Endpoint::Embeddings,
        ("POST", "/v1/messages") => Endpoint::Messages,
        (method, _) => {
            let message = format!("no route for {method} {path}");
            return reply.error(404, &message, "invalid_request_error", "not_found", &[]);
        }
    };
    let json: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(json) => json,
        Err(_) => {
            return reply.error(
                400,
                "request body is not valid JSON",
                "invalid_request_error",
                "invalid_json",
                &[],
            )
        }
    };
    let Some(model) = json.get("model").and_then(serde_json::Value::as_str) else {
        return reply.error(
            400,
            "request body has no \"model\" string",
            "invalid_request_error",
            "missing_model",
            &[],
        );
    };
    let wants_stream = json.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
    match behaviour(model) {
        Behaviour::Fixed => fixed(reply, endpoint, model, wants_stream),
        Behaviour::Stream { events, gap_ms } => stream(reply, model, events, gap_ms),
        Behaviour::Status(code) => status_error(reply, code),
        Behaviour::HugeError => huge_error(reply),
        Behaviour::ResetBody => reset_body(reply),
        Behaviour::ResetStream => reset_stream(reply, model),
        Behaviour::StallHead(ms) => {
            if reply.pause(Duration::from_millis(ms)) {
                fixed(reply, endpoint, model, wants_stream)
            } else {
                Ok(Outcome::Close)
            }
        }
        Behaviour::StallStream(ms) => stall_stream(reply, model, ms),
        Behaviour::BrokenChunked => broken_chunked(reply, model),
        Behaviour::Echo => echo(reply, request),
        Behaviour::Close => fixed(
            Reply {
                close: true,
                ..reply
            },
            endpoint,
            model,
            wants_stream,
        ),
        Behaviour::SlowBody(ms) => slow_body(reply, model, ms),
        Behaviour::Hostile(h) => hostile(reply, request, model, h),
    }
}

/// The hostile behaviours write their bytes raw: the point is that they are not valid HTTP.
fn hostile(reply: Reply<'_>, request: &Request, model: &str, h: Hostile) -> io::Result<Outcome> {
    let body = chat_completion(model);
    let json_tail = |status_line: &str, eol: &str| {
        format!(
            "{status_line}{eol}content-type: application/json{eol}content-length: {}{eol}x-mock-request: {}{eol}{eol}{body}",
            body.len(),
            reply.n
        )
    };
    match h {
        Hostile::NoReason { stream: false } => {
            reply.send(json_tail("HTTP/1.1 200", "\r\n").as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::NoReason { stream: true } => {
            reply.send(
                b"HTTP/1.1 200\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            )?;
            for index in 0..3 {
                reply.chunk(chunk_event(model, index, index == 2).as_bytes())?;
            }
            reply.end_stream()
        }
        Hostile::BinaryReason => {
            let mut bytes = b"HTTP/1.1 200 \xe9t\xe9".to_vec();
            let rest = json_tail("", "\r\n");
            bytes.extend_from_slice(rest.as_bytes());
            reply.send(&bytes)?;
            Ok(reply.finished())
        }
        Hostile::BareLf => {
            reply.send(json_tail("HTTP/1.1 200 OK", "\n").as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::ExtraResponse | Hostile::ExtraLater => {
            let injected = "{\"injected\":\"INJECTED by the upstream after its response\"}";
            let extra = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{injected}",
                injected.len()
            );
            let mut bytes = json_tail("HTTP/1.1 200 OK", "\r\n").into_bytes();
            if h == Hostile::ExtraLater {
                reply.send(&bytes)?;
                if !reply.pause(Duration::from_millis(50)) {
                    return Ok(Outcome::Close);
                }
                reply.send(extra.as_bytes())?;
            } else {
                bytes.extend_from_slice(extra.as_bytes());
                reply.send(&bytes)?;
            }
            Ok(reply.finished())
        }
        Hostile::ExtraAfterStream => {
            reply.sse_head()?;
            reply.chunk(chunk_event(model, 0, true).as_bytes())?;
            let injected = "{\"injected\":\"INJECTED\"}";
            let bytes = format!(
                "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{injected}",
                injected.len()
            );
            reply.send(bytes.as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::UnaskedSwitch => {
            reply.send(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x05hello",
            )?;
            Ok(Outcome::Close)
        }
        Hostile::LengthAndChunked => {
            let bytes = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            reply.send(bytes.as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::DuplicateLength => {
            let bytes = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncontent-length: 5\r\n\r\n{body}",
                body.len()
            );
            reply.send(bytes.as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::BadStatus(code) => {
            reply.send(json_tail(&format!("HTTP/1.1 {code:03} Odd"), "\r\n").as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::Interim(n) => {
            let mut bytes = Vec::new();
            for i in 0..n {
                let line: &[u8] = if i % 2 == 0 {
                    b"HTTP/1.1 100 Continue\r\n\r\n"
                } else {
                    b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
                };
                bytes.extend_from_slice(line);
            }
            bytes.extend_from_slice(json_tail("HTTP/1.1 200 OK", "\r\n").as_bytes());
            reply.send(&bytes)?;
            Ok(reply.finished())
        }
        Hostile::EndlessInterim => loop {
            reply.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")?;
            if !reply.pause(Duration::from_millis(10)) {
                return Ok(Outcome::Close);
            }
        },
        Hostile::EchoKey(status) => {
            let auth = request
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let (kind, code) = error_kind(status);
            let text = if status < 400 {
                body.clone()
            } else {
                error_body(
                    &format!("Incorrect API key provided: {auth}. You can find your key at https://example.invalid."),
                    kind,
                    code,
                )
            };
            reply.full(
                status,
                &[
                    ("content-type", "application/json"),
                    ("x-debug-auth", &auth),
                ],
                text.as_bytes(),
            )
        }
        Hostile::Bulk(mib) => {
            reply.sse_head()?;
            let mut event = b"data: ".to_vec();
            event.resize(1022, b'x');
            event.extend_from_slice(b"\n\n");
            let chunk = event.repeat(16);
            for _ in 0..mib * 64 {
                reply.chunk(&chunk)?;
            }
            reply.end_stream()
        }
        Hostile::BrokenChunkedOneWrite => {
            reply.sse_head()?;
            let event = chunk_event(model, 0, false);
            let bytes = format!("{:x}\r\n{event}\r\nzz\r\n", event.len());
            reply.send(bytes.as_bytes())?;
            Ok(Outcome::Close)
        }
    }
}

fn models_list() -> String {
    let data: Vec<String> = MODEL_NAMES
        .iter()
        .map(|name| {
            format!(
                "{{\"id\":{},\"object\":\"model\",\"created\":0,\"owned_by\":\"ringway-mock\"}}",
                json_str(name)
            )
        })
        .collect();
    format!("{{\"object\":\"list\",\"data\":[{}]}}", data.join(","))
}

fn fixed(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
    wants_stream: bool,
) -> io::Result<Outcome> {
    if wants_stream && endpoint != Endpoint::Embeddings {
        return stream(reply, model, 5, 0);
    }
    let body = match endpoint {
        Endpoint::Chat => chat_completion(model),
        Endpoint::Completions => text_completion(model),
        Endpoint::Embeddings => embeddings(model),
        Endpoint::Messages => anthropic_message(model),
    };
    reply.json(200, &body)
}

fn stream(reply: Reply<'_>, model: &str, events: u64, gap_ms: u64) -> io::Result<Outcome> {
    reply.sse_head()?;
    for index in 0..events {
        if index > 0 && !reply.pause(Duration::from_millis(gap_ms)) {
            return Ok(Outcome::Close);
        }
        reply.chunk(chunk_event(model, index, index + 1 == events).as_bytes())?;
    }
    reply.end_stream()
}

fn status_error(reply: Reply<'_>, code: u16) -> io::Result<Outcome> {
    let (kind, code_name) = error_kind(code);
    let retry: &[(&str, &str)] = if code == 429 || code == 503 {
        &[("retry-after", "7")]
    } else {
        &[]
    };
    reply.error(code, &format!("mock error {code}"), kind, code_name, retry)
}

fn huge_error(reply: Reply<'_>) -> io::Result<Outcome> {
    let body = huge_error_body();
    reply.send(&reply.head(
        500,
        &[("content-type", "application/json")],
        Framing::Length(body.len()),
    ))?;
    for piece in body.chunks(HUGE_WRITE) {
        reply.send(piece)?;
    }
    Ok(reply.finished())
}

/// Lets the bytes already written reach the peer before the RST, so the fault lands mid-body
/// instead of racing the head.
const RESET_GRACE: Duration = Duration::from_millis(50);

fn reset_body(reply: Reply<'_>) -> io::Result<Outcome> {
    let mut bytes = reply.head(
        200,
        &[("content-type", "application/json")],
        Framing::Length(100_000),
    );
    let body_start = bytes.len();
    bytes.extend_from_slice(br#"{"id":"chatcmpl-mock","padding":""#);
    bytes.resize(body_start + 1000, b'x');
    reply.send(&bytes)?;
    reply.pause(RESET_GRACE);
    Ok(Outcome::Reset)
}

fn reset_stream(reply: Reply<'_>, model: &str) -> io::Result<Outcome> {
    reply.sse_head()?;
    reply.chunk(chunk_event(model, 0, false).as_bytes())?;
    reply.chunk(chunk_event(model, 1, false).as_bytes())?;
    reply.pause(RESET_GRACE);
    Ok(Outcome::Reset)
}

fn stall_stream(reply: Reply<'_>, model: &str, ms: u64) -> io::Result<Outcome> {
    reply.sse_head()?;
    reply.chunk(chunk_event(model, 0, false).as_bytes())?;
    if !reply.pause(Duration::from_millis(ms)) {
        return Ok(Outcome::Close);
    }
    reply.chunk(chunk_event(model, 1, true).as_bytes())?;
    reply.end_stream()
}

fn broken_chunked(reply: Reply<'_>, model: &str) -> io::Result<Outcome> {
    reply.sse_head()?;
    reply.chunk(chunk_event(model, 0, false).as_bytes())?;
    reply.send(b"zz\r\n")?;
    Ok(Outcome::Close)
}

fn echo(reply: Reply<'_>, request: &Request) -> io::Result<Outcome> {
    let headers: Vec<String> = request
        .headers
        .iter()
        .map(|(name, value)| {
            format!(
                "[{},{}]",
                json_str(name),
                json_str(&String::from_utf8_lossy(value))
            )
        })
        .collect();
    let body = format!(
        "{{\"method\":{},\"path\":{},\"headers\":[{}],\"body\":{}}}",
        json_str(&request.method),
        json_str(&request.target),
        headers.join(","),
        json_str(&String::from_utf8_lossy(&request.body))
    );
    reply.json(200, &body)
}

fn slow_body(reply: Reply<'_>, model: &str, ms: u64) -> io::Result<Outcome> {
    let body = chat_completion(model).into_bytes();
    let third = body.len() / 3;
    let mut first = reply.head(
        200,
        &[("content-type", "application/json")],
        Framing::Length(body.len()),
    );
    first.extend_from_slice(&body[..third]);
    reply.send(&first)?;
    for piece in [&body[third..2 * third], &body[2 * third..]] {
        if !reply.pause(Duration::from_millis(ms)) {
            return Ok(Outcome::Close);
        }
        reply.send(piece)?;
    }
    Ok(reply.finished())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous, so a loaded 2-core CI box cannot turn slowness into failures.
    const READ_DEADLINE: Duration = Duration::from_secs(5);
    const FIXED_TEXT: &str = "Hello from the ringway mock upstream.";

    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Chunk payloads, for chunked responses.
        chunks: Vec<Vec<u8>>,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }

        fn text(&self) -> String {
            String::from_utf8(self.body.clone()).expect("UTF-8 body")
        }
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).expect("connect");
            stream.set_read_timeout(Some(READ_DEADLINE)).unwrap();
            Client {
                stream,
                buf: Vec::new(),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).expect("send");
        }

        fn fill(&mut self) -> io::Result<usize> {
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }

        fn fill_some(&mut self) {
            assert!(self.fill().expect("read") > 0, "unexpected EOF");
        }

        fn take(&mut self, len: usize) -> Vec<u8> {
            while self.buf.len() < len {
                self.fill_some();
            }
            let rest = self.buf.split_off(len);
            std::mem::replace(&mut self.buf, rest)
        }

        fn line(&mut self) -> Vec<u8> {
            loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    let line = self.take(pos + 2);
                    return line[..pos].to_vec();
                }
                self.fill_some();
            }
        }

        fn head(&mut self) -> (u16, Vec<(String, String)>) {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut headers);
                let status = parsed.parse(&self.buf).expect("valid response head");
                if let httparse::Status::Complete(len) = status {
                    let code = parsed.code.unwrap();
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.take(len);
                    return (code, headers);
                }
                self.fill_some();
            }
        }

        fn chunk(&mut self) -> Option<Vec<u8>> {
            let line = self.line();
            let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap(), 16)
                .expect("hex chunk size");
            if size == 0 {
                assert_eq!(self.line(), b"", "no trailers expected");
                return None;
            }
            let data = self.take(size);
            assert_eq!(self.take(2), b"\r\n");
            Some(data)
        }

        fn response(&mut self) -> Response {
            let (status, headers) = self.head();
            let mut response = Response {
                status,
                headers,
                body: Vec::new(),
                chunks: Vec::new(),
            };
            if response.header("transfer-encoding") == Some("chunked") {
                while let Some(data) = self.chunk() {
                    response.body.extend_from_slice(&data);
                    response.chunks.push(data);
                }
            } else if let Some(len) = response.header("content-length") {
                response.body = self.take(len.parse().unwrap());
            }
            response
        }

        /// Everything until EOF or an error, and the error's kind if there was one.
        fn drain(&mut self) -> (Vec<u8>, Option<io::ErrorKind>) {
            loop {
                match self.fill() {
                    Ok(0) => return (std::mem::take(&mut self.buf), None),
                    Ok(_) => {}
                    Err(e) => return (std::mem::take(&mut self.buf), Some(e.kind())),
                }
            }
        }
    }

    fn post(path: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn chat(model: &str) -> Vec<u8> {
        post(
            "/v1/chat/completions",
            &format!("{{\"model\":\"{model}\",\"messages\":[]}}"),
        )
    }

    fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if condition() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn mock() -> MockHandle {
        spawn("127.0.0.1:0").expect("spawn mock")
    }

    #[test]
    fn fixed_reply_bytes() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-fixed"));
        let response = client.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("x-mock-request"), Some("1"));
        assert_eq!(response.header("connection"), None);
        assert_eq!(
            response.text(),
            concat!(
                r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"#,
                r#""model":"mock-fixed","choices":[{"index":0,"message":{"role":"assistant","#,
                r#""content":"Hello from the ringway mock upstream."},"finish_reason":"stop"}],"#,
                r#""usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#
            )
        );

        client.send(&chat("some-real-model"));
        let response = client.response();
        assert_eq!(response.json()["model"], "some-real-model");
        assert_eq!(response.header("x-mock-request"), Some("2"));
        mock.stop();
    }

    #[test]
    fn other_endpoints_have_their_own_shapes() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let body = r#"{"model":"mock-fixed","input":"x","prompt":"x"}"#;

        client.send(&post("/v1/completions", body));
        let json = client.response().json();
        assert_eq!(json["object"], "text_completion");
        assert_eq!(json["choices"][0]["text"], FIXED_TEXT);

        client.send(&post("/v1/embeddings", body));
        let json = client.response().json();
        assert_eq!(json["object"], "list");
        assert_eq!(json["data"][0]["embedding"].as_array().unwrap().len(), 8);

        client.send(&post("/v1/messages", body));
        let json = client.response().json();
        assert_eq!(json["type"], "message");
        assert_eq!(json["content"][0]["text"], FIXED_TEXT);

        // Embeddings never stream, whatever the flag says.
        client.send(&post(
            "/v1/embeddings",
            r#"{"model":"mock-fixed","stream":true}"#,
        ));
        let response = client.response();
        assert_eq!(response.header("content-type"), Some("application/json"));
        mock.stop();
    }

    #[test]
    fn models_routes_and_request_errors() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);

        client.send(b"GET /v1/models HTTP/1.1\r\nhost: mock\r\n\r\n");
        let json = client.response().json();
        assert_eq!(json["object"], "list");
        let data = json["data"].as_array().unwrap();
        assert!(data.iter().any(|m| m["id"] == "mock-stream-5-100"));
        assert!(data
            .iter()
            .all(|m| m["object"] == "model" && m["owned_by"] == "ringway-mock"));

        client.send(b"GET /nope?x=1 HTTP/1.1\r\nhost: mock\r\n\r\n");
        let response = client.response();
        assert_eq!(response.status, 404);
        assert_eq!(response.json()["error"]["code"], "not_found");
        assert!(response.json()["error"]["param"].is_null());

        client.send(&post("/v1/chat/completions", "not json"));
        let response = client.response();
        assert_eq!(response.status, 400);
        assert_eq!(response.json()["error"]["type"], "invalid_request_error");

        client.send(&post("/v1/chat/completions", r#"{"messages":[]}"#));
        let response = client.response();
        assert_eq!(response.status, 400);
        assert_eq!(response.json()["error"]["code"], "missing_model");

        // JSON-level errors leave the framing intact, so the connection stays usable.
        client.send(&chat("mock-fixed"));
        assert_eq!(client.response().status, 200);
        mock.stop();
    }

    #[test]
    fn stream_framing_and_timing() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let sent = Instant::now();
        client.send(&chat("mock-stream-3-300"));
        let (status, headers) = client.head();
        assert_eq!(status, 200);
        assert!(headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "text/event-stream"));
        assert!(headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v == "chunked"));

        let mut chunks = vec![client.chunk().expect("first event")];
        let first_at = sent.elapsed();
        while let Some(chunk) = client.chunk() {
            chunks.push(chunk);
        }
        let end_at = sent.elapsed();
        // Two 300 ms gaps separate the first event from the end.
        assert!(
            end_at >= first_at + Duration::from_millis(450),
            "first event at {first_at:?}, end at {end_at:?}"
        );

        assert_eq!(chunks.len(), 4);
        for (i, chunk) in chunks[..3].iter().enumerate() {
            let text = std::str::from_utf8(chunk).unwrap();
            let json = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .expect("one SSE event per chunk");
            let json: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(json["object"], "chat.completion.chunk");
            assert_eq!(json["choices"][0]["delta"]["content"], format!("tok{i}"));
        }
        assert_eq!(chunks[3], b"data: [DONE]\n\n");

        // The stream ended cleanly, so keep-alive continues.
        client.send(&post(
            "/v1/chat/completions",
            r#"{"model":"mock-fixed","stream":true}"#,
        ));
        let response = client.response();
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        assert_eq!(response.chunks.len(), 6);
        mock.stop();
    }

    #[test]
    fn statuses_and_retry_after() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        for code in [400u16, 401, 429, 500, 503, 504] {
            client.send(&chat(&format!("mock-status-{code}")));
            let response = client.response();
            assert_eq!(response.status, code);
            let json = response.json();
            assert_eq!(json["error"]["message"], format!("mock error {code}"));
            assert!(json["error"]["param"].is_null());
            let expected_retry = (code == 429 || code == 503).then_some("7");
            assert_eq!(response.header("retry-after"), expected_retry, "{code}");
            if code == 429 {
                assert_eq!(json["error"]["code"], "rate_limit_exceeded");
            }
        }
        mock.stop();
    }

    #[test]
    fn reset_body_and_stream() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-reset-body"));
        let (status, headers) = client.head();
        assert_eq!(status, 200);
        assert!(headers
            .iter()
            .any(|(n, v)| n == "content-length" && v == "100000"));
        let (body, error) = client.drain();
        assert!(body.len() < 100_000);
        assert!(
            matches!(error, None | Some(io::ErrorKind::ConnectionReset)),
            "{error:?}"
        );

        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-reset-stream"));
        assert_eq!(client.head().0, 200);
        let (rest, error) = client.drain();
        assert!(!rest.ends_with(b"0\r\n\r\n"));
        assert!(
            matches!(error, None | Some(io::ErrorKind::ConnectionReset)),
            "{error:?}"
        );
        assert!(wait_until(|| mock.stats().open_connections == 0));
        mock.stop();
    }

    #[test]
    fn broken_chunked_bytes() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-broken-chunked"));
        assert_eq!(client.head().0, 200);
        let event = chunk_event("mock-broken-chunked", 0, false);
        let mut expected = format!("{:x}\r\n", event.len()).into_bytes();
        expected.extend_from_slice(event.as_bytes());
        expected.extend_from_slice(b"\r\nzz\r\n");
        let (rest, error) = client.drain();
        assert_eq!(error, None);
        assert_eq!(rest, expected);
        mock.stop();
    }

    #[test]
    fn echo_reports_what_arrived() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let body = r#"{"model":"mock-echo","x":"caf\u00e9"}"#;
        client.send(
            format!(
                "POST /v1/chat/completions?q=1 HTTP/1.1\r\nHost: up.example\r\n\
                 Authorization: Bearer sk-up\r\nX-Dup: a\r\nx-dup: b\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let json = client.response().json();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/v1/chat/completions?q=1");
        assert_eq!(json["body"], body);
        let headers: Vec<(String, String)> =
            serde_json::from_value(json["headers"].clone()).unwrap();
        let expected = [
            ("Host", "up.example"),
            ("Authorization", "Bearer sk-up"),
            ("X-Dup", "a"),
            ("x-dup", "b"),
            ("Content-Length", &body.len().to_string()),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(headers, expected);
        mock.stop();
    }

    #[test]
    fn chunked_request_body_is_dechunked() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let body = r#"{"model":"mock-echo","pad":"0123456789"}"#;
        let (a, b) = body.split_at(10);
        client.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n\
                 transfer-encoding: chunked\r\n\r\n\
                 {:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nx-trailer: t\r\n\r\n",
                a.len(),
                b.len()
            )
            .as_bytes(),
        );
        let response = client.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["body"], body);

        // Bad chunk framing is a framing error: 400 and close.
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n\
              transfer-encoding: chunked\r\n\r\nq\r\n",
        );
        let response = client.response();
        assert_eq!(response.status, 400);
        assert_eq!(response.header("connection"), Some("close"));
        assert_eq!(client.drain(), (Vec::new(), None));
        mock.stop();
    }

    #[test]
    fn stats_track_open_connections() {
        let mock = mock();
        assert_eq!(mock.stats(), MockStats::default());
        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-fixed"));
        assert_eq!(client.response().status, 200);
        assert!(wait_until(|| mock.stats().open_connections == 1));

        client.send(b"GET /mock/stats HTTP/1.1\r\nhost: mock\r\n\r\n");
        let json = client.response().json();
        assert_eq!(json["open_connections"], 1);
        assert_eq!(json["total_connections"], 1);
        assert_eq!(json["requests"], 2, "the stats request counts itself");

        let second = Client::connect(mock.addr);
        assert!(wait_until(|| mock.stats().open_connections == 2));
        drop(client);
        drop(second);
        assert!(
            wait_until(|| mock.stats().open_connections == 0),
            "{:?}",
            mock.stats()
        );
        assert_eq!(
            mock.stats(),
            MockStats {
                open_connections: 0,
                total_connections: 2,
                requests: 2
            }
        );
        mock.stop();
    }

    #[test]
    fn keep_alive_pipelining_and_close() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let mut both = chat("mock-fixed");
        both.extend_from_slice(&chat("mock-status-503"));
        client.send(&both);
        let first = client.response();
        let second = client.response();
        assert_eq!((first.status, second.status), (200, 503));
        assert_eq!(first.header("x-mock-request"), Some("1"));
        assert_eq!(second.header("x-mock-request"), Some("2"));

        client.send(&chat("mock-close"));
        let response = client.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("close"));
        assert_eq!(client.drain(), (Vec::new(), None));

        let mut client = Client::connect(mock.addr);
        client.send(b"GET /v1/models HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n");
        assert_eq!(client.response().header("connection"), Some("close"));
        assert_eq!(client.drain(), (Vec::new(), None));
        assert!(wait_until(|| mock.stats().open_connections == 0));
        mock.stop();
    }

    #[test]
    fn malformed_request_gets_400_and_close() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        client.send(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n");
        let response = client.response();
        assert_eq!(response.status, 400);
        assert!(response.json()["error"]["message"].is_string());
        assert_eq!(client.drain(), (Vec::new(), None));

        let mut client = Client::connect(mock.addr);
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\n\
              transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(client.response().status, 400);
        mock.stop();
    }

    #[test]
    fn stalls_and_slow_body() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let started = Instant::now();
        client.send(&chat("mock-stall-head-300"));
        let response = client.response();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(response.json()["model"], "mock-stall-head-300");

        let started = Instant::now();
        client.send(&chat("mock-stall-stream-300"));
        assert_eq!(client.head().0, 200);
        client.chunk().expect("first event");
        let first_at = started.elapsed();
        let mut rest = 0;
        while client.chunk().is_some() {
            rest += 1;
        }
        assert_eq!(rest, 2, "second event and [DONE]");
        assert!(started.elapsed() >= first_at + Duration::from_millis(250));

        let started = Instant::now();
        client.send(&chat("mock-slow-body-150"));
        let response = client.response();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            response.body,
            chat_completion("mock-slow-body-150").as_bytes()
        );
        mock.stop();
    }

    #[test]
    fn abandoned_stall_closes_promptly() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-stall-head-60000"));
        assert!(wait_until(|| mock.stats().requests == 1));
        drop(client);
        assert!(wait_until(|| mock.stats().open_connections == 0));

        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-stream-1000-1000"));
        assert_eq!(client.head().0, 200);
        client.chunk().expect("first event");
        drop(client);
        assert!(wait_until(|| mock.stats().open_connections == 0));
        mock.stop();
    }

    #[test]
    fn huge_error_is_exactly_ten_mib() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        client.send(&chat("mock-huge-error"));
        let response = client.response();
        assert_eq!(response.status, 500);
        assert_eq!(response.body.len(), 10_485_760);
        assert_eq!(response.json()["error"]["code"], "mock_huge_error");
        mock.stop();
    }

    #[test]
    fn expect_continue_gets_interim_response() {
        let mock = mock();
        let mut client = Client::connect(mock.addr);
        let body = r#"{"model":"mock-fixed"}"#;
        client.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nexpect: 100-continue\r\n\
                 content-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(client.head().0, 100);
        client.send(body.as_bytes());
        assert_eq!(client.response().status, 200);
        mock.stop();
    }

    #[test]
    fn stop_closes_listener_and_idle_connections() {
        let mock = mock();
        let addr = mock.addr;
        let mut idle = Client::connect(addr);
        idle.send(&chat("mock-fixed"));
        assert_eq!(idle.response().status, 200);
        let stats = mock.shared.clone();
        mock.stop();
        assert!(TcpStream::connect(addr).is_err());
        assert_eq!(idle.drain(), (Vec::new(), None));
        assert!(wait_until(|| stats.stats().open_connections == 0));
    }

    #[test]
    fn behaviour_names() {
        assert_eq!(
            behaviour("mock-stream-5-100"),
            Behaviour::Stream {
                events: 5,
                gap_ms: 100
            }
        );
        assert_eq!(behaviour("mock-status-429"), Behaviour::Status(429));
        assert_eq!(behaviour("mock-status-99"), Behaviour::Fixed);
        assert_eq!(behaviour("mock-stall-head-x"), Behaviour::Fixed);
        assert_eq!(
            behaviour("mock-stall-head-99999999999999999"),
            Behaviour::StallHead(MAX_WAIT_MS)
        );
        assert_eq!(behaviour("gpt-4o"), Behaviour::Fixed);
        assert_eq!(parse_chunk_size(b"1f;x=y"), Some(31));
        assert_eq!(parse_chunk_size(b"+1"), None);
        assert_eq!(parse_chunk_size(b"zz"), None);
    }
}
