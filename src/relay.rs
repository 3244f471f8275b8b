//! The request lifecycle: one task per client connection, requests as phases inside it.
//!
//! Owns: the client socket (split into read and write halves), the connection's buffers, its
//! single deadline timer, and — for the length of one request — the upstream connection it
//! borrowed. The phases, in order (docs/ARCHITECTURE.md has the chart):
//!
//! 1. `read_head`     — wait for a request head (`client_idle`, then `client_header`)
//! 2. `dispatch`      — pick the endpoint; operations endpoints answer here
//! 3. `admit`         — authenticate the token, enforce `max_inflight`
//! 4. `read_body`     — read (and de-chunk) the body (`client_body`), 413 over the limit
//! 5. `route`         — peek the `model`, check the token allows it, choose a channel
//! 6. `connect`       — a pooled connection, or resolve + connect (`connect`) + TLS (`tls_handshake`)
//! 7. `send`          — write the upstream request head and the body byte-for-byte
//! 8. `await_head`    — read the upstream response head (`response_header`)
//! 9. `respond`       — relay the body: fixed length, or re-framed chunk by chunk (`stream_idle`);
//!    upstream errors are read up to a cap and normalised
//! 10. `finish`       — account, return the upstream connection to the pool only if its
//!     response was read to the end, keep or close the client connection
//!
//! Every race between IO and a deadline is a `biased` select with the IO polled first: an op
//! that already completed is never thrown away because its deadline fired in the same tick
//! (that cut SSE streams mid-chunk instead of ending them with the error event).
//!
//! Every phase is bounded by the request's `total` deadline too. Must not: spawn tasks, or
//! leave any IO future running past the phase that started it — when a phase loses a race
//! against its deadline, its futures are dropped right there (io_uring ops are cancelled and
//! their buffers released when the kernel lets go), and the upstream connection is closed.

use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::config::{Scheme, Timeouts};
use crate::deadline::{DeadlineSet, Layer};
use crate::monitor::{bump, drop_one};
use crate::provider;
use crate::route::RouteError;
use crate::upstream::{self, Stream, UpConn};
use crate::wire::{self, BodyKind, Method, RequestHead, ResponseHead, WireError, CHUNK_HEADROOM};
use crate::worker::{Worker, BUF_SIZE};

/// Bytes reserved at the end of a stream buffer for `\r\n` plus the last chunk.
const STREAM_TAILROOM: usize = 2 + wire::LAST_CHUNK.len();
/// Largest upstream response head accepted.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
/// Interim (1xx) responses skipped before an upstream is taken for broken. Real servers send
/// one or two (100 Continue, 103 Early Hints); an endless stream of them must not hold the
/// request until `response_header`.
const MAX_INTERIM_RESPONSES: usize = 8;
/// Bodies up to this size are copied behind the head so one write sends both.
const INLINE_BODY: usize = BUF_SIZE / 2;
/// How long a keep-alive connection may sit idle before its read buffer goes back to the pool.
const IDLE_BUFFER_RELEASE: Duration = Duration::from_secs(1);
/// How long an upstream may take before the relay starts watching the client for a hang-up.
/// Fast responses never pay for the watch; slow ones are checked well within a second.
const WATCH_GRACE: Duration = Duration::from_millis(250);

/// Whether the client connection can carry another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Keep,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Health,
    Metrics,
    Unknown,
}

fn endpoint_of(path: &[u8]) -> Endpoint {
    match path {
        b"/v1/chat/completions" => Endpoint::ChatCompletions,
        b"/v1/completions" => Endpoint::Completions,
        b"/v1/embeddings" => Endpoint::Embeddings,
        b"/v1/models" => Endpoint::Models,
        b"/api/monitor/health" => Endpoint::Health,
        b"/metrics" => Endpoint::Metrics,
        _ => Endpoint::Unknown,
    }
}

fn layer_timeout(t: &Timeouts, layer: Layer) -> Duration {
    match layer {
        Layer::ClientIdle => t.client_idle,
        Layer::ClientHeader => t.client_header,
        Layer::ClientBody => t.client_body,
        Layer::Connect => t.connect,
        Layer::TlsHandshake => t.tls_handshake,
        Layer::ResponseHeader => t.response_header,
        Layer::StreamIdle => t.stream_idle,
        Layer::Total => t.total,
        Layer::Quick => t.quick,
        Layer::PoolIdle => t.pool_idle,
    }
}

/// Decrements a gauge when the thing it counts goes away, on every path.
struct GaugeGuard {
    worker: Rc<Worker>,
    gauge: fn(&crate::monitor::WorkerStats) -> &std::sync::atomic::AtomicU64,
}

impl GaugeGuard {
    fn new(
        worker: &Rc<Worker>,
        gauge: fn(&crate::monitor::WorkerStats) -> &std::sync::atomic::AtomicU64,
    ) -> GaugeGuard {
        bump(gauge(worker.stats()));
        GaugeGuard {
            worker: worker.clone(),
            gauge,
        }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        drop_one((self.gauge)(self.worker.stats()));
    }
}

/// The connection task. It owns everything its requests touch; when it returns (or is
/// dropped), the client socket, buffers, timer slot and any upstream connection go with it.
pub async fn serve_connection(worker: Rc<Worker>, stream: TcpStream) {
    let _conn_gauge = GaugeGuard::new(&worker, |s| &s.client_connections);
    let mut conn = Conn {
        deadline: DeadlineSet::new(worker.wheel.timer()),
        // Taken when the first bytes are ready: a connection that never sends holds none.
        rbuf: Vec::new(),
        w: worker,
        client: stream,
        head: RequestHead::default(),
        resp: ResponseHead::default(),
        body: 0..0,
        consumed: 0,
        request_id: Vec::with_capacity(48),
        watch: ClientWatch { enabled: true },
        usage: None,
        status_sent: 0,
        ttfb_at: None,
        accounted: false,
        idle_canceller: Canceller::new(),
    };
    conn.run().await;
    conn.release();
}

struct Conn {
    w: Rc<Worker>,
    client: TcpStream,
    /// Request bytes: head, body, and whatever the client pipelined after them.
    rbuf: Vec<u8>,
    head: RequestHead,
    resp: ResponseHead,
    /// The current request's body inside `rbuf` (de-chunked in place if it was chunked).
    body: Range<usize>,
    /// Bytes of `rbuf` the current request occupies; the rest belongs to the next one.
    consumed: usize,
    request_id: Vec<u8>,
    deadline: DeadlineSet,
    watch: ClientWatch,
    /// Usage the upstream reported for the current request, if any.
    usage: Option<provider::Usage>,
    status_sent: u16,
    ttfb_at: Option<Instant>,
    /// The current request was counted in the monitor.
    accounted: bool,
    /// Cancels an idle keep-alive read so its buffer can be returned (one per connection:
    /// monoio's canceller allocates).
    idle_canceller: Canceller,
}

/// Watches the client connection while the relay waits on an upstream.
struct ClientWatch {
    /// Off once the client sent more bytes during this request (it is clearly alive, and its
    /// readiness would fire at once for the rest of the request).
    enabled: bool,
}

/// What waiting on the upstream came to.
enum Waited<T> {
    Done(T),
    Timeout(Layer),
    ClientGone,
}

/// Did the client hang up? Peeks one byte without consuming it (only called once the socket
/// reported readable, so it is one syscall per event, not per request).
fn client_state(client: &TcpStream) -> ClientState {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a valid fd and a 1-byte buffer we own; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            client.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => ClientState::Gone,
        n if n > 0 => ClientState::SentData,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => ClientState::Idle,
            _ => ClientState::Gone,
        },
    }
}

enum ClientState {
    Idle,
    SentData,
    Gone,
}

/// Wait for `fut` (an upstream read or readiness) under the deadline. If it takes longer than
/// [`WATCH_GRACE`], also wait for the client socket to become readable: EOF or an error there
/// means the client left, and the caller drops the upstream connection. The watch is a
/// readiness poll, so it holds no buffer and can be dropped at any time; the upstream future
/// is never dropped by the grace checkpoint (that could lose bytes an in-flight read took).
async fn upstream_wait<F: std::future::Future>(
    fut: F,
    deadline: &DeadlineSet,
    client: &TcpStream,
    watch: &mut ClientWatch,
) -> Waited<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if watch.enabled {
        // From the reading taken when the wait's deadline was armed: an older start only
        // begins the watch sooner.
        deadline.checkpoint(deadline.recent() + WATCH_GRACE);
        monoio::select! {
            biased;
            r = &mut fut => {
                // The checkpoint must not outlive this wait: the next phase's race would
                // mistake it for its own deadline.
                deadline.resume();
                return Waited::Done(r);
            }
            _ = deadline.expired() => {}
        }
        if deadline.is_due() {
            return Waited::Timeout(deadline.layer());
        }
        deadline.resume();
        while watch.enabled {
            monoio::select! {
                biased;
                r = &mut fut => return Waited::Done(r),
                _ = deadline.expired() => return Waited::Timeout(deadline.layer()),
                _ = client.readable(false) => match client_state(client) {
                    ClientState::Gone => return Waited::ClientGone,
                    ClientState::SentData => watch.enabled = false,
                    ClientState::Idle => {}
                },
            }
        }
    }
    monoio::select! {
        biased;
        r = fut => Waited::Done(r),
        _ = deadline.expired() => Waited::Timeout(deadline.layer()),
    }
}

/// What one wait for upstream body bytes came to.
enum StreamRead {
    Data(Vec<u8>),
    Eof(Vec<u8>),
    Failed(Vec<u8>, std::io::Error),
    Timeout,
    ClientGone,
}

fn is_cancelled(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED) || matches!(e.kind(), std::io::ErrorKind::Interrupted)
}

/// How a relay attempt ended before a response head reached the client.
enum Failure {
    Connect(String),
    Timeout(Layer),
    /// The upstream misbehaved (closed, reset).
    Upstream(String),
    /// The upstream's response head was malformed or ambiguous (counted apart).
    BadResponse(String),
    /// A reused connection died before any response byte: safe to retry once on a new one.
    StaleConnection,
    /// The client hung up while we waited; nobody is left to answer.
    ClientGone,
}

impl Conn {
    fn timeouts(&self) -> Timeouts {
        self.w.config.timeouts
    }

    async fn run(&mut self) {
        loop {
            if self.read_head().await.is_err() {
                return;
            }
            self.w.activity.note();
            self.status_sent = 0;
            self.ttfb_at = None;
            self.accounted = false;
            let flow = self.dispatch().await;
            self.w.activity.note();
            self.deadline.end_request();
            if flow == Flow::Close || !self.head.keep_alive {
                return;
            }
            self.finish_request();
        }
    }

    fn release(&mut self) {
        let rbuf = std::mem::take(&mut self.rbuf);
        self.w.bufs.give(rbuf);
    }

    /// Drop the finished request's bytes, keeping anything pipelined behind it.
    fn finish_request(&mut self) {
        self.watch.enabled = true;
        if self.rbuf.capacity() == 0 {
            self.consumed = 0;
            return;
        }
        let consumed = self.consumed.min(self.rbuf.len());
        if self.rbuf.capacity() > 4 * BUF_SIZE {
            // A large body grew this buffer; go back to a pool-sized one.
            let mut fresh = self.w.bufs.take();
            fresh.extend_from_slice(&self.rbuf[consumed..]);
            self.rbuf = fresh;
        } else {
            self.rbuf.drain(..consumed);
        }
        self.consumed = 0;
        self.watch.enabled = true;
    }

    // ---- phase 1: read_head -------------------------------------------------------------

    async fn read_head(&mut self) -> Result<(), ()> {
        let t = self.timeouts();
        let limit = self.w.config.server.max_header_bytes;
        let mut phase = if self.rbuf.is_empty() {
            Layer::ClientIdle
        } else {
            Layer::ClientHeader
        };
        self.deadline.arm(phase, layer_timeout(&t, phase));
        loop {
            if !self.rbuf.is_empty() {
                match wire::parse_request(&self.rbuf, &mut self.head) {
                    Ok(true) if self.head.len <= limit => return Ok(()),
                    Ok(true) => {
                        self.reject_head(431, "request head too large").await;
                        return Err(());
                    }
                    Ok(false) if self.rbuf.len() > limit => {
                        self.reject_head(431, "request head too large").await;
                        return Err(());
                    }
                    Ok(false) => {}
                    Err(WireError::TooManyHeaders) => {
                        self.reject_head(431, "too many request headers").await;
                        return Err(());
                    }
                    Err(e @ WireError::UnsupportedCoding) => {
                        self.reject_head(501, e.message()).await;
                        return Err(());
                    }
                    Err(e) => {
                        self.reject_head(400, e.message()).await;
                        return Err(());
                    }
                }
                if phase == Layer::ClientIdle {
                    phase = Layer::ClientHeader;
                    self.deadline.arm(phase, t.client_header);
                }
            }
            if self.rbuf.capacity() == 0 {
                // Readiness first: an idle connection holds no read buffer.
                let Conn {
                    client, deadline, ..
                } = self;
                let ready = monoio::select! {
                    biased;
                    r = client.readable(false) => Some(r.is_ok()),
                    _ = deadline.expired() => None,
                };
                match ready {
                    Some(true) => {}
                    Some(false) => return Err(()),
                    None => {
                        self.head_timeout(phase).await;
                        return Err(());
                    }
                }
                self.rbuf = self.w.bufs.take();
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(self.rbuf.capacity().max(BUF_SIZE));
            }
            let buf = std::mem::take(&mut self.rbuf);
            let (len, cap) = (buf.len(), buf.capacity());
            let Conn {
                client,
                deadline,
                idle_canceller,
                ..
            } = self;
            let r = if phase == Layer::ClientIdle && len == 0 {
                // An idle keep-alive connection: read with the buffer (the next request usually
                // comes at once), but if it stays quiet, take the buffer back and wait for
                // readiness without one, so idle connections hold no read buffer.
                deadline.checkpoint(deadline.recent() + IDLE_BUFFER_RELEASE);
                let read = client.cancelable_read(buf.slice_mut(0..cap), idle_canceller.handle());
                let mut read = std::pin::pin!(read);
                let first = monoio::select! {
                    biased;
                    r = &mut read => Some(r),
                    _ = deadline.expired() => None,
                };
                match first {
                    Some(r) => {
                        deadline.resume();
                        Some(r)
                    }
                    None if deadline.is_due() => None,
                    None => {
                        *idle_canceller = std::mem::take(idle_canceller).cancel();
                        deadline.resume();
                        match read.await {
                            (Err(e), b) if is_cancelled(&e) => {
                                self.w.bufs.give(b.into_inner());
                                continue;
                            }
                            r => Some(r),
                        }
                    }
                }
            } else {
                monoio::select! {
                    biased;
                    r = client.read(buf.slice_mut(len..cap)) => Some(r),
                    _ = deadline.expired() => None,
                }
            };
            match r {
                None => {
                    self.head_timeout(phase).await;
                    return Err(());
                }
                Some((Ok(n), b)) => {
                    self.rbuf = b.into_inner();
                    if n == 0 {
                        return Err(());
                    }
                }
                Some((Err(_), b)) => {
                    self.rbuf = b.into_inner();
                    return Err(());
                }
            }
        }
    }

    /// `client_idle` closes quietly; `client_header` (slowloris) gets a 408 first.
    async fn head_timeout(&mut self, phase: Layer) {
        self.w.stats().count_timeout(phase);
        if phase == Layer::ClientHeader {
            self.new_request_id();
            self.head.method = Method::Other;
            self.head.keep_alive = false;
            let _ = self
                .respond_error(
                    408,
                    "the request head was not received in time",
                    "invalid_request_error",
                    "client_header_timeout",
                    None,
                )
                .await;
        }
    }

    async fn reject_head(&mut self, status: u16, message: &str) {
        self.new_request_id();
        // No head was accepted: the fields still hold the previous request's.
        self.head.method = Method::Other;
        self.head.keep_alive = false;
        self.head.body = BodyKind::None;
        let code = match status {
            431 => "request_header_too_large",
            501 => "unsupported_transfer_encoding",
            _ => "bad_request",
        };
        let _ = self
            .respond_error(status, message, "invalid_request_error", code, None)
            .await;
    }

    // ---- phase 2: dispatch --------------------------------------------------------------

    async fn dispatch(&mut self) -> Flow {
        let start = self.deadline.now();
        self.set_request_id();
        self.consumed = self.head.len;
        let endpoint = endpoint_of(self.head.route_path(&self.rbuf));
        let method = self.head.method;
        // HEAD is GET without the body (RFC 9110 9.3.2); `respond` leaves the body out.
        let read_method = if method == Method::Head {
            Method::Get
        } else {
            method
        };
        let flow = match (endpoint, read_method) {
            (Endpoint::Health, Method::Get) => {
                self.begin_quick(start);
                // 503 until the whole process is up, so a health check never passes a relay
                // whose other workers are still starting.
                let (ready, body) = self.w.monitor.health();
                let status = if ready { 200 } else { 503 };
                self.respond(status, b"application/json", &body, None).await
            }
            (Endpoint::Metrics, Method::Get) => {
                self.begin_quick(start);
                let body = self.w.monitor.metrics_text();
                self.respond(200, b"text/plain; version=0.0.4", &body, None)
                    .await
            }
            (Endpoint::Models, Method::Get) => {
                self.begin_quick(start);
                let flow = match self.authenticate() {
                    Some(token) => {
                        let router = self.w.router.clone();
                        self.respond(200, b"application/json", router.models_body(token), None)
                            .await
                    }
                    None => self.unauthorized().await,
                };
                self.account(start);
                flow
            }
            (
                Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings,
                Method::Post,
            ) => {
                let flow = self.relay(start).await;
                self.account(start);
                flow
            }
            (Endpoint::Unknown, _) => {
                let msg = format!(
                    "Unknown request URL: {} {}",
                    method_name(method),
                    String::from_utf8_lossy(self.head.route_path(&self.rbuf))
                );
                self.respond_error(404, &msg, "invalid_request_error", "not_found", None)
                    .await
            }
            _ => {
                let allow: &[u8] = match endpoint {
                    Endpoint::Health | Endpoint::Metrics | Endpoint::Models => b"GET, HEAD",
                    _ => b"POST",
                };
                let mut body = Vec::with_capacity(160);
                provider::error_json(
                    &mut body,
                    "method not allowed for this endpoint",
                    "invalid_request_error",
                    "method_not_allowed",
                );
                self.respond_with(405, b"application/json", &body, (b"allow", allow))
                    .await
            }
        };
        // Unknown paths and wrong methods count like relay requests; the operations
        // endpoints (health, metrics) are not traffic and are not counted.
        let operations =
            matches!(endpoint, Endpoint::Health | Endpoint::Metrics) && read_method == Method::Get;
        if !self.accounted && !operations {
            self.account(start);
        }
        flow
    }

    fn begin_quick(&mut self, start: Instant) {
        self.deadline
            .begin_request(start, self.timeouts().quick, Layer::Quick);
    }

    fn account(&mut self, start: Instant) {
        self.accounted = true;
        let s = self.w.stats();
        s.count_status(self.status_sent);
        let now = self.deadline.now();
        s.latency_total.observe(now - start);
        if let Some(t) = self.ttfb_at {
            s.latency_ttfb.observe(t - start);
        }
    }

    fn set_request_id(&mut self) {
        match self.head.request_id {
            Some(span) => {
                self.request_id.clear();
                self.request_id.extend_from_slice(span.of(&self.rbuf));
            }
            None => self.new_request_id(),
        }
    }

    /// `rw-<process start>-<worker>-<sequence>`: unique per process run without coordination.
    fn new_request_id(&mut self) {
        self.request_id.clear();
        let seq = self.w.next_request.get();
        self.w.next_request.set(seq + 1);
        self.request_id.extend_from_slice(b"rw-");
        push_hex(
            &mut self.request_id,
            self.w.started_nanos & 0xffff_ffff_ffff,
        );
        self.request_id.push(b'-');
        push_hex(&mut self.request_id, self.w.id as u64);
        self.request_id.push(b'-');
        push_hex(&mut self.request_id, seq);
    }

    fn authenticate(&self) -> Option<usize> {
        let key = self.head.api_key?;
        self.w.router.authenticate(key.of(&self.rbuf))
    }

    async fn unauthorized(&mut self) -> Flow {
        let msg = if self.head.api_key.is_none() {
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        } else {
            "Incorrect API key provided."
        };
        self.respond_error(401, msg, "invalid_request_error", "invalid_api_key", None)
            .await
    }

    // ---- phases 3-5: admit, read_body, route ---------------------------------------------

    async fn relay(&mut self, start: Instant) -> Flow {
        let w = self.w.clone();
        let Some(token) = self.authenticate() else {
            return self.unauthorized().await;
        };
        self.deadline
            .begin_request(start, self.timeouts().total, Layer::Total);
        if let Err(flow) = self.read_body().await {
            return flow;
        }
        // Admitted only once the body is in: a client trickling its body holds a connection
        // (bounded by client_body_total), never an inflight slot.
        if w.stats()
            .inflight
            .load(std::sync::atomic::Ordering::Relaxed)
            >= w.max_inflight
        {
            bump(&w.stats().overloaded);
            return self
                .respond_error(
                    503,
                    "ringway is over its max_inflight limit; retry shortly",
                    "server_error",
                    "overloaded",
                    Some(b"1"),
                )
                .await;
        }
        let _inflight = GaugeGuard::new(&w, |s| &s.inflight);
        let body = &self.rbuf[self.body.clone()];
        let field = match provider::peek_model(body) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return self
                    .respond_error(
                        400,
                        "you must provide a model parameter",
                        "invalid_request_error",
                        "missing_model",
                        None,
                    )
                    .await
            }
            Err(msg) => {
                return self
                    .respond_error(400, msg, "invalid_request_error", "invalid_json", None)
                    .await
            }
        };
        let Some(model) = provider::model_name(body, &field) else {
            return self
                .respond_error(
                    400,
                    "model is not valid UTF-8",
                    "invalid_request_error",
                    "invalid_json",
                    None,
                )
                .await;
        };
        let channel = match w.router.choose(token, &model, &w.route_state) {
            Ok(c) => c,
            Err(RouteError::ModelNotAllowed) => {
                let msg = format!("this token may not use the model '{model}'");
                return self
                    .respond_error(
                        403,
                        &msg,
                        "invalid_request_error",
                        "model_not_allowed",
                        None,
                    )
                    .await;
            }
            Err(RouteError::ModelNotFound) => {
                let msg = format!("The model '{model}' does not exist or no channel serves it");
                return self
                    .respond_error(404, &msg, "invalid_request_error", "model_not_found", None)
                    .await;
            }
        };
        let upstream_model = w.router.channels[channel].cfg.upstream_model(&model);
        let rename = if upstream_model != model {
            Some(upstream_model.to_owned())
        } else {
            None
        };
        let span = self.body.start + field.span.start..self.body.start + field.span.end;
        self.usage = None;
        let flow = self.forward(channel, span, rename).await;
        w.stats().count_usage(token, channel, self.usage);
        flow
    }

    async fn read_body(&mut self) -> Result<(), Flow> {
        let max = self.w.config.server.max_body_bytes;
        let t = self.timeouts();
        let hl = self.head.len;
        let body_due = self.deadline.recent() + t.client_body_total;
        match self.head.body {
            BodyKind::None | BodyKind::UntilClose => {
                self.body = hl..hl;
                self.consumed = hl;
                Ok(())
            }
            BodyKind::Length(n) => {
                if n > max as u64 {
                    return Err(self.too_large().await);
                }
                let need = hl + n as usize;
                if self.rbuf.len() < need && self.head.expect_continue {
                    self.send_continue().await?;
                }
                if self.rbuf.capacity() < need {
                    self.rbuf.reserve(need - self.rbuf.len());
                }
                while self.rbuf.len() < need {
                    self.read_more_body(&t, body_due).await?;
                }
                self.body = hl..need;
                self.consumed = need;
                Ok(())
            }
            BodyKind::Chunked => {
                let mut decoder = wire::ChunkedDecoder::new();
                let mut pos = hl;
                let mut write_at = hl;
                let mut continued = false;
                loop {
                    if pos < self.rbuf.len() {
                        match wire::dechunk_in_place(
                            &mut decoder,
                            &mut self.rbuf,
                            pos,
                            &mut write_at,
                        ) {
                            Ok(d) => {
                                pos = d.consumed;
                                if write_at - hl > max {
                                    return Err(self.too_large().await);
                                }
                                if d.done {
                                    self.body = hl..write_at;
                                    self.consumed = pos;
                                    return Ok(());
                                }
                            }
                            Err(_) => {
                                self.head.keep_alive = false;
                                return Err(self
                                    .respond_error(
                                        400,
                                        "malformed chunked request body",
                                        "invalid_request_error",
                                        "bad_request",
                                        None,
                                    )
                                    .await);
                            }
                        }
                    }
                    if self.head.expect_continue && !continued {
                        continued = true;
                        self.send_continue().await?;
                    }
                    if self.rbuf.len() - hl > max + 4096 {
                        return Err(self.too_large().await);
                    }
                    if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                        self.rbuf.reserve(self.rbuf.capacity());
                    }
                    self.read_more_body(&t, body_due).await?;
                }
            }
        }
    }

    async fn send_continue(&mut self) -> Result<(), Flow> {
        let (r, _) = self
            .client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n" as &'static [u8])
            .await;
        r.map(|_| ()).map_err(|_| Flow::Close)
    }

    async fn too_large(&mut self) -> Flow {
        self.head.keep_alive = false;
        let msg = format!(
            "request body exceeds max_body_bytes ({})",
            self.w.config.server.max_body_bytes
        );
        self.respond_error(
            413,
            &msg,
            "invalid_request_error",
            "request_too_large",
            None,
        )
        .await
    }

    /// Read more of the body: silence is bounded by `client_body`, the whole body by
    /// `body_due` (`client_body_total` after the head), both answered 408.
    async fn read_more_body(&mut self, t: &Timeouts, body_due: Instant) -> Result<(), Flow> {
        let silence_due = self.deadline.now() + t.client_body;
        self.deadline
            .arm_at(Layer::ClientBody, silence_due.min(body_due));
        let buf = std::mem::take(&mut self.rbuf);
        let (len, cap) = (buf.len(), buf.capacity());
        let Conn {
            client, deadline, ..
        } = self;
        let r = monoio::select! {
            biased;
            r = client.read(buf.slice_mut(len..cap)) => Some(r),
            _ = deadline.expired() => None,
        };
        match r {
            Some((Ok(n), b)) if n > 0 => {
                self.rbuf = b.into_inner();
                Ok(())
            }
            Some((_, b)) => {
                self.rbuf = b.into_inner();
                Err(Flow::Close)
            }
            None => {
                let layer = self.deadline.layer();
                self.w.stats().count_timeout(layer);
                self.head.keep_alive = false;
                let status = if layer == Layer::ClientBody { 408 } else { 504 };
                Err(self
                    .respond_error(
                        status,
                        "the request body was not received in time",
                        "invalid_request_error",
                        layer.code(),
                        None,
                    )
                    .await)
            }
        }
    }

    // ---- phases 6-8: connect, send, await_head ---------------------------------------------

    async fn forward(
        &mut self,
        channel: usize,
        model_span: Range<usize>,
        rename: Option<String>,
    ) -> Flow {
        let w = self.w.clone();
        let ch = &w.router.channels[channel];
        let t = ch.timeouts;
        let slot = w.pool_slots[channel];

        // The upstream request head, with the body behind it when small enough for one write.
        let mut req = w.bufs.take();
        let body_len = match &rename {
            Some(m) => {
                let mut escaped = Vec::with_capacity(m.len() + 2);
                provider::json_string(&mut escaped, m);
                self.body.len() - model_span.len() + escaped.len() - 2
            }
            None => self.body.len(),
        };
        self.write_upstream_head(&mut req, channel, body_len);
        let mut separate_body = false;
        match &rename {
            Some(m) => {
                req.extend_from_slice(&self.rbuf[self.body.start..model_span.start]);
                let mut escaped = Vec::with_capacity(m.len() + 2);
                provider::json_string(&mut escaped, m);
                req.extend_from_slice(&escaped[1..escaped.len() - 1]);
                req.extend_from_slice(&self.rbuf[model_span.end..self.body.end]);
            }
            None if body_len <= INLINE_BODY => req.extend_from_slice(&self.rbuf[self.body.clone()]),
            None => separate_body = true,
        }

        let mut attempt = 0;
        let (mut conn, ubuf) = loop {
            attempt += 1;
            let conn = match w.pool.take(slot, self.deadline.recent()) {
                Some(c) => c,
                None => match self.connect(channel).await {
                    Ok(c) => c,
                    Err(f) => {
                        w.bufs.give(req);
                        return self.fail(f).await;
                    }
                },
            };
            let (result, req_back) = self.send_and_await_head(conn, req, separate_body, &t).await;
            match result {
                Ok(ok) => {
                    if let Some(b) = req_back {
                        w.bufs.give(b);
                    }
                    break ok;
                }
                Err(Failure::StaleConnection) if attempt == 1 && req_back.is_some() => {
                    req = req_back.unwrap_or_default();
                }
                Err(f) => {
                    if let Some(b) = req_back {
                        w.bufs.give(b);
                    }
                    let f = match f {
                        Failure::StaleConnection => Failure::Upstream(
                            "upstream closed the connection before responding".into(),
                        ),
                        f => f,
                    };
                    return self.fail(f).await;
                }
            }
        };

        // ---- phase 9: respond -----------------------------------------------------------------
        if self.resp.status >= 400 {
            return self.relay_upstream_error(conn, ubuf, channel, &t).await;
        }
        let flow = match self.resp.body {
            BodyKind::None => self.relay_fixed(&mut conn, ubuf, 0, channel, &t).await,
            BodyKind::Length(n) => self.relay_fixed(&mut conn, ubuf, n, channel, &t).await,
            BodyKind::Chunked | BodyKind::UntilClose => {
                self.relay_stream(&mut conn, ubuf, channel, &t).await
            }
        };
        match flow {
            Ok((flow, reusable)) => {
                if reusable {
                    w.pool.put_back(conn, self.deadline.recent());
                }
                flow
            }
            Err(flow) => flow,
        }
    }

    fn write_upstream_head(&self, out: &mut Vec<u8>, channel: usize, body_len: usize) {
        let w = &self.w;
        let ch = &w.router.channels[channel];
        let buf = &self.rbuf;
        out.extend_from_slice(b"POST ");
        let prefix = ch.cfg.path_prefix.as_bytes();
        let path = self.head.path.of(buf);
        // base_url may already end in /v1 (as SDK base URLs do); don't send /v1/v1/...
        if prefix.ends_with(b"/v1") && path.starts_with(b"/v1/") {
            out.extend_from_slice(prefix);
            out.extend_from_slice(&path[3..]);
        } else {
            out.extend_from_slice(prefix);
            out.extend_from_slice(path);
        }
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(&ch.host_header);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(w.router.auth_line(channel, &w.route_state));
        out.extend_from_slice(b"Content-Length: ");
        wire::push_u64(out, body_len as u64);
        out.extend_from_slice(b"\r\n");
        for h in &self.head.headers {
            let name = h.name.of(buf);
            if self.head.is_hop_or_replaced(buf, name) {
                continue;
            }
            wire::write_header(out, name, h.value.of(buf));
        }
        // Always exactly one: a refused client value was skipped with the other replaced
        // headers above.
        wire::write_header(out, b"x-request-id", &self.request_id);
        out.extend_from_slice(b"\r\n");
    }

    async fn connect(&mut self, channel: usize) -> Result<UpConn, Failure> {
        let w = self.w.clone();
        let ch = &w.router.channels[channel];
        let t = ch.timeouts;
        self.deadline.arm(Layer::Connect, t.connect);
        let deadline = &self.deadline;
        let addrs = monoio::select! {
            biased;
            r = w.resolver.resolve(&ch.cfg.host, ch.cfg.port) => r.map_err(|e| Failure::Connect(format!("cannot resolve {}: {e}", ch.cfg.host)))?,
            _ = deadline.expired() => return Err(Failure::Timeout(deadline.layer())),
        };
        let tcp = monoio::select! {
            biased;
            r = upstream::connect_tcp(&addrs) => r.map_err(|e| Failure::Connect(format!("cannot connect to {}:{}: {e}", ch.cfg.host, ch.cfg.port)))?,
            _ = deadline.expired() => return Err(Failure::Timeout(deadline.layer())),
        };
        let stream = match ch.cfg.scheme {
            Scheme::Http => Stream::Plain(tcp),
            Scheme::Https => {
                deadline.arm(Layer::TlsHandshake, t.tls_handshake);
                monoio::select! {
                    biased;
                    r = upstream::tls_handshake(&w.tls[channel], &ch.cfg.host, tcp) => r.map_err(|e| Failure::Connect(format!("TLS handshake with {} failed: {e}", ch.cfg.host)))?,
                    _ = deadline.expired() => return Err(Failure::Timeout(deadline.layer())),
                }
            }
        };
        bump(&w.stats().upstream_connects);
        Ok(w.pool.lend(stream, w.pool_slots[channel], false))
    }

    /// Send the request and read the response head into `self.resp`.
    /// Returns the request buffer when it came back from the kernel, so a stale pooled
    /// connection can be retried.
    async fn send_and_await_head(
        &mut self,
        mut conn: UpConn,
        req: Vec<u8>,
        separate_body: bool,
        t: &Timeouts,
    ) -> (Result<(UpConn, Vec<u8>), Failure>, Option<Vec<u8>>) {
        let reused = conn.reused;
        let stale_or = |reused: bool, msg: String| {
            if reused {
                Failure::StaleConnection
            } else {
                Failure::Upstream(msg)
            }
        };
        // Sending is bounded by the response_header layer: an upstream that does not read
        // its request is as stuck as one that does not answer.
        self.deadline.arm(Layer::ResponseHeader, t.response_header);
        let deadline = &self.deadline;
        let (r, req) = monoio::select! {
            biased;
            r = conn.stream.write_all(req) => r,
            _ = deadline.expired() => return (Err(Failure::Timeout(deadline.layer())), None),
        };
        if let Err(e) = r {
            return (
                Err(stale_or(reused, format!("sending to upstream failed: {e}"))),
                Some(req),
            );
        }
        if separate_body {
            let rbuf = std::mem::take(&mut self.rbuf);
            let body = self.body.clone();
            let deadline = &self.deadline;
            let (r, slice) = monoio::select! {
                biased;
                r = conn.stream.write_all(rbuf.slice(body)) => r,
                _ = deadline.expired() => return (Err(Failure::Timeout(deadline.layer())), Some(req)),
            };
            self.rbuf = slice.into_inner();
            if let Err(e) = r {
                return (
                    Err(stale_or(reused, format!("sending to upstream failed: {e}"))),
                    Some(req),
                );
            }
        }
        let mut ubuf = self.w.bufs.take();
        let mut received = false;
        let mut interim = 0;
        loop {
            // Parse what is already here first: a 1xx and the final head often share a read.
            if !ubuf.is_empty() {
                match wire::parse_response(&ubuf, &mut self.resp, false) {
                    Ok(true) if self.resp.status == 101 => {
                        // Nothing here asks for an upgrade: whatever follows is not HTTP.
                        return (
                            Err(Failure::BadResponse(
                                "upstream switched protocols (101) without being asked".into(),
                            )),
                            Some(req),
                        );
                    }
                    Ok(true) if self.resp.status < 200 => {
                        // An interim response (100 Continue, 103 Early Hints): skip it. An
                        // upstream that sends nothing else is cut off after a few.
                        interim += 1;
                        if interim > MAX_INTERIM_RESPONSES {
                            return (
                                Err(Failure::BadResponse(format!(
                                    "upstream sent more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
                                ))),
                                Some(req),
                            );
                        }
                        ubuf.drain(..self.resp.len);
                        continue;
                    }
                    Ok(true) => return (Ok((conn, ubuf)), Some(req)),
                    Ok(false) => {}
                    Err(e) => {
                        return (
                            Err(Failure::BadResponse(format!(
                                "malformed upstream response head: {}",
                                e.message()
                            ))),
                            Some(req),
                        )
                    }
                }
            }
            let (len, cap) = (ubuf.len(), ubuf.capacity());
            if len == cap {
                if cap >= MAX_UPSTREAM_HEAD {
                    return (
                        Err(Failure::Upstream("upstream response head too large".into())),
                        Some(req),
                    );
                }
                ubuf.reserve(cap);
            }
            let cap = ubuf.capacity();
            let read = conn.stream.read(ubuf.slice_mut(len..cap));
            let (r, b) =
                match upstream_wait(read, &self.deadline, &self.client, &mut self.watch).await {
                    Waited::Done(r) => r,
                    Waited::Timeout(layer) => return (Err(Failure::Timeout(layer)), Some(req)),
                    Waited::ClientGone => return (Err(Failure::ClientGone), Some(req)),
                };
            ubuf = b.into_inner();
            match r {
                Ok(0) if !received => {
                    return (
                        Err(stale_or(
                            reused,
                            "upstream closed the connection before responding".into(),
                        )),
                        Some(req),
                    )
                }
                Ok(0) => {
                    return (
                        Err(Failure::Upstream(
                            "upstream closed the connection mid-head".into(),
                        )),
                        Some(req),
                    )
                }
                Ok(_) => received = true,
                Err(e) if !received => {
                    return (
                        Err(stale_or(reused, format!("upstream connection failed: {e}"))),
                        Some(req),
                    )
                }
                Err(e) => {
                    return (
                        Err(Failure::Upstream(format!(
                            "upstream connection failed: {e}"
                        ))),
                        Some(req),
                    )
                }
            }
        }
    }

    async fn fail(&mut self, f: Failure) -> Flow {
        let s = self.w.stats();
        match f {
            Failure::Connect(msg) => {
                bump(&s.upstream_connect_failed);
                self.respond_error(502, &msg, "upstream_error", "upstream_connect_failed", None)
                    .await
            }
            Failure::Timeout(layer) => {
                s.count_timeout(layer);
                if matches!(layer, Layer::Connect | Layer::TlsHandshake) {
                    bump(&s.upstream_connect_failed);
                }
                let msg = format!(
                    "upstream did not answer within the {} timeout",
                    layer.name()
                );
                self.respond_error(504, &msg, "timeout_error", layer.code(), None)
                    .await
            }
            Failure::Upstream(msg) => {
                self.respond_error(502, &msg, "upstream_error", "bad_upstream_response", None)
                    .await
            }
            Failure::BadResponse(msg) => {
                bump(&s.upstream_bad_response);
                self.respond_error(502, &msg, "upstream_error", "bad_upstream_response", None)
                    .await
            }
            Failure::ClientGone => {
                bump(&s.client_gone);
                self.head.keep_alive = false;
                Flow::Close
            }
            Failure::StaleConnection => {
                self.respond_error(
                    502,
                    "upstream closed the connection before responding",
                    "upstream_error",
                    "bad_upstream_response",
                    None,
                )
                .await
            }
        }
    }

    // ---- phase 9: respond ---------------------------------------------------------------

    /// The client response head for an upstream response in `self.resp` (headers from `ubuf`).
    fn write_client_head(
        &self,
        out: &mut Vec<u8>,
        ubuf: &[u8],
        channel: usize,
        framing: ClientFraming,
        close: bool,
    ) {
        let head_start = out.len();
        let status = self.resp.status;
        out.extend_from_slice(b"HTTP/1.1 ");
        wire::push_u64(out, status as u64);
        out.push(b' ');
        let reason = self.resp.reason.of(ubuf);
        if reason.is_empty() {
            out.extend_from_slice(wire::reason_phrase(status).as_bytes());
        } else {
            out.extend_from_slice(reason);
        }
        out.extend_from_slice(b"\r\n");
        for h in &self.resp.headers {
            let name = h.name.of(ubuf);
            if wire::is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-request-id") {
                wire::write_header(out, b"x-upstream-request-id", h.value.of(ubuf));
                continue;
            }
            wire::write_header(out, name, h.value.of(ubuf));
        }
        wire::write_header(out, b"x-request-id", &self.request_id);
        match framing {
            ClientFraming::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                wire::push_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
            ClientFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            ClientFraming::UntilClose => {}
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // An upstream may echo the channel's key in a header; the client never sees it.
        self.w.router.channels[channel].mask_keys(&mut out[head_start..]);
    }

    /// Write `buf[range]` to the client under the current deadline; gives the buffer back.
    ///
    /// Only the client's own layer (`client_idle`) can cut a write. When an upstream-side
    /// deadline (`total`, `stream_idle`) fires while a write is under way, the write is allowed
    /// to finish under `client_idle` and the phase that owns the expired deadline answers it
    /// next — dropping the write instead would cut the stream mid-chunk, since the kernel may
    /// already have taken part of it, and the client would never see the error event.
    async fn write_client(&mut self, buf: Vec<u8>, range: Range<usize>) -> Result<Vec<u8>, Flow> {
        let client_idle = self.w.config.timeouts.client_idle;
        let Conn {
            client, deadline, ..
        } = self;
        let write = client.write_all(buf.slice(range));
        let mut write = std::pin::pin!(write);
        let r = loop {
            monoio::select! {
                biased;
                r = &mut write => break Some(r),
                _ = deadline.expired() => {}
            }
            if deadline.layer() == Layer::ClientIdle {
                break None;
            }
            deadline.arm_unclamped(Layer::ClientIdle, client_idle);
        };
        match r {
            Some((Ok(_), b)) => Ok(b.into_inner()),
            Some((Err(_), b)) => {
                bump(&self.w.stats().client_gone);
                self.w.bufs.give(b.into_inner());
                Err(Flow::Close)
            }
            None => {
                self.w.stats().count_timeout(self.deadline.layer());
                Err(Flow::Close)
            }
        }
    }

    #[inline]
    fn note_usage(&mut self, data: &[u8]) {
        if let Some(u) = provider::scan_usage(data) {
            self.usage = Some(u);
        }
    }

    fn mark_first_byte(&mut self, status: u16) {
        self.status_sent = status;
        // Always a fresh reading: callers arm their write deadline from it.
        let now = self.deadline.now();
        if self.ttfb_at.is_none() {
            self.ttfb_at = Some(now);
        }
    }

    /// A Content-Length (or empty) upstream body: passed through byte for byte.
    /// Ok((flow, upstream reusable)).
    async fn relay_fixed(
        &mut self,
        conn: &mut UpConn,
        mut ubuf: Vec<u8>,
        n: u64,
        channel: usize,
        t: &Timeouts,
    ) -> Result<(Flow, bool), Flow> {
        let hl = self.resp.len;
        let have = (ubuf.len() - hl) as u64;
        let first = have.min(n) as usize;
        // Bytes past the body's end are the upstream's, not the next request's answer.
        let mut extra = have > n;
        let mut last_read_filled = ubuf.len() == ubuf.capacity();
        let close = !self.head.keep_alive;
        self.note_usage(&ubuf[hl..hl + first]);
        let mut out = self.w.bufs.take();
        self.write_client_head(&mut out, &ubuf, channel, ClientFraming::Length(n), close);
        self.mark_first_byte(self.resp.status);
        let mut remaining = n - first as u64;
        self.deadline.arm_recent(Layer::ClientIdle, t.client_idle);
        if out.len() + first <= out.capacity() {
            out.extend_from_slice(&ubuf[hl..hl + first]);
            let len = out.len();
            let out = self.write_client(out, 0..len).await?;
            self.w.bufs.give(out);
        } else {
            let len = out.len();
            let out = self.write_client(out, 0..len).await?;
            self.w.bufs.give(out);
            ubuf = self.write_client(ubuf, hl..hl + first).await?;
        }
        while remaining > 0 {
            self.deadline.arm(Layer::StreamIdle, t.stream_idle);
            ubuf.clear();
            // The whole buffer, not just what is left of the body: a read that brings more
            // than the body shows the upstream sent something after it.
            let want = ubuf.capacity();
            let deadline = &self.deadline;
            let r = monoio::select! {
                biased;
                r = conn.stream.read(ubuf.slice_mut(0..want)) => Some(r),
                _ = deadline.expired() => None,
            };
            match r {
                Some((Ok(k), b)) if k > 0 => {
                    ubuf = b.into_inner();
                    last_read_filled = k == want;
                    if k as u64 > remaining {
                        extra = true;
                        ubuf.truncate(remaining as usize);
                    }
                    remaining -= ubuf.len() as u64;
                }
                Some(_) => {
                    // The upstream died mid-body; the client sees a short body and a close.
                    return Err(Flow::Close);
                }
                None => {
                    self.w.stats().count_timeout(self.deadline.layer());
                    return Err(Flow::Close);
                }
            }
            self.note_usage(&ubuf);
            self.deadline.arm(Layer::ClientIdle, t.client_idle);
            let len = ubuf.len();
            ubuf = self.write_client(ubuf, 0..len).await?;
        }
        self.w.bufs.give(ubuf);
        let flow = if close { Flow::Close } else { Flow::Keep };
        Ok((
            flow,
            self.resp.keep_alive && ended_clean(extra, last_read_filled),
        ))
    }

    /// A chunked or close-delimited upstream body, re-framed chunk by chunk as it arrives, so
    /// the relay always stands at a chunk boundary and can end the stream cleanly on error.
    async fn relay_stream(
        &mut self,
        conn: &mut UpConn,
        mut ubuf: Vec<u8>,
        channel: usize,
        t: &Timeouts,
    ) -> Result<(Flow, bool), Flow> {
        let hl = self.resp.len;
        let chunked_in = self.resp.body == BodyKind::Chunked;
        let chunked_out = self.head.minor_version >= 1;
        let close = !self.head.keep_alive || !chunked_out;
        let event_stream = self.resp.event_stream;
        let framing = if chunked_out {
            ClientFraming::Chunked
        } else {
            ClientFraming::UntilClose
        };
        let mut out = self.w.bufs.take();
        self.write_client_head(&mut out, &ubuf, channel, framing, close);
        self.mark_first_byte(self.resp.status);
        self.deadline.arm_recent(Layer::ClientIdle, t.client_idle);
        let len = out.len();
        let out = self.write_client(out, 0..len).await?;
        self.w.bufs.give(out);

        let mut last_read_filled = ubuf.len() == ubuf.capacity();
        // Body bytes that came with the head move behind the chunk-header headroom.
        let initial = ubuf.len() - hl;
        if ubuf.capacity() < CHUNK_HEADROOM + initial + STREAM_TAILROOM {
            ubuf.reserve(CHUNK_HEADROOM + initial + STREAM_TAILROOM);
        }
        ubuf.copy_within(hl.., CHUNK_HEADROOM);
        ubuf.truncate(CHUNK_HEADROOM + initial);

        // The client connection is idle while we wait on the upstream: it holds no read
        // buffer. The upstream one is borrowed only while bytes are in flight (SSE streams).
        if self.rbuf.len() <= self.consumed && event_stream {
            let rbuf = std::mem::take(&mut self.rbuf);
            self.w.bufs.give(rbuf);
            self.consumed = 0;
        }

        let mut decoder = wire::ChunkedDecoder::new();
        // One per stream: monoio's canceller allocates, so it is not made per chunk.
        let mut canceller = Canceller::new();
        let mut tail: [u8; 2] = [b'\n', b'\n'];
        let mut upstream_done = false;
        // The wait before the next read: set only after a chunk went out, so the first one is
        // never held back and time to first token is untouched by coalescing.
        let mut hold = Duration::ZERO;
        let mut coalesce = if event_stream {
            self.w.config.server.sse_coalesce
        } else {
            Duration::ZERO
        };
        loop {
            let mut write_at = ubuf.len();
            let mut extra = false;
            let mut broken = false;
            if chunked_in && ubuf.len() > CHUNK_HEADROOM {
                write_at = CHUNK_HEADROOM;
                match wire::dechunk_in_place(&mut decoder, &mut ubuf, CHUNK_HEADROOM, &mut write_at)
                {
                    Ok(d) => {
                        upstream_done = d.done;
                        extra = d.consumed < ubuf.len();
                    }
                    // The data decoded before the bad framing still goes out, then the error.
                    Err(_) => broken = true,
                }
            }
            let data_len = write_at - CHUNK_HEADROOM;
            if data_len > 0 {
                self.note_usage(&ubuf[CHUNK_HEADROOM..write_at]);
            }
            if data_len > 0 || upstream_done {
                let mut start = CHUNK_HEADROOM;
                if data_len >= 2 {
                    tail = [ubuf[write_at - 2], ubuf[write_at - 1]];
                } else if data_len == 1 {
                    tail = [tail[1], ubuf[write_at - 1]];
                }
                ubuf.truncate(write_at);
                if chunked_out {
                    if data_len > 0 {
                        start =
                            wire::write_chunk_header_before(&mut ubuf, CHUNK_HEADROOM, data_len);
                        ubuf.extend_from_slice(b"\r\n");
                    }
                    if upstream_done {
                        ubuf.extend_from_slice(wire::LAST_CHUNK);
                    }
                }
                // The write runs under the stream_idle deadline armed for the read: a client
                // that stops reading stalls the stream just like a silent upstream.
                let end = ubuf.len();
                ubuf = self.write_client(ubuf, start..end).await?;
                if upstream_done {
                    self.w.bufs.give(ubuf);
                    let flow = if close { Flow::Close } else { Flow::Keep };
                    let reusable =
                        chunked_in && self.resp.keep_alive && ended_clean(extra, last_read_filled);
                    return Ok((flow, reusable));
                }
                // Never hold after a read that filled the buffer: more is already waiting.
                if data_len > 0 && !last_read_filled {
                    hold = coalesce;
                }
            }
            if broken {
                return self
                    .end_stream_with_error(
                        ubuf,
                        tail,
                        "upstream sent malformed chunked framing",
                        "bad_upstream_response",
                        chunked_out && event_stream,
                    )
                    .await;
            }

            // Wait for more upstream bytes.
            let wait = std::mem::take(&mut hold);
            let held = !wait.is_zero();
            match self
                .read_stream(conn, ubuf, t, event_stream, wait, &mut canceller)
                .await
            {
                StreamRead::Data(b) => {
                    last_read_filled = b.len() == b.capacity() - STREAM_TAILROOM;
                    // A hold that gathered a whole buffer shows a bulk stream, not tokens:
                    // holding it again would only throttle it.
                    if held && last_read_filled {
                        coalesce = Duration::ZERO;
                    }
                    ubuf = b;
                }
                StreamRead::Eof(b) if !chunked_in => {
                    ubuf = b;
                    upstream_done = true;
                }
                StreamRead::Eof(b) => {
                    return self
                        .end_stream_with_error(
                            b,
                            tail,
                            "upstream closed the stream before its end",
                            "upstream_closed",
                            chunked_out && event_stream,
                        )
                        .await;
                }
                StreamRead::Failed(b, e) => {
                    let msg = format!("upstream connection failed mid-stream: {e}");
                    return self
                        .end_stream_with_error(
                            b,
                            tail,
                            &msg,
                            "upstream_reset",
                            chunked_out && event_stream,
                        )
                        .await;
                }
                StreamRead::Timeout => {
                    let b = self.w.bufs.take();
                    return self
                        .stream_timeout(b, tail, chunked_out && event_stream)
                        .await;
                }
                StreamRead::ClientGone => {
                    bump(&self.w.stats().client_gone);
                    return Err(Flow::Close);
                }
            }
        }
    }

    /// Read the next upstream body bytes into `ubuf[CHUNK_HEADROOM..]` under `stream_idle`.
    ///
    /// An active SSE stream reads straight into its buffer (one op per chunk). When the stream
    /// goes quiet for [`WATCH_GRACE`], the read is cancelled and awaited (keeping any bytes it
    /// got), the buffer goes back to the pool, and the stream waits for readiness with no
    /// buffer while the client is watched for a hang-up: an idle stream costs no buffer.
    ///
    /// `hold` (the `sse_coalesce` setting, right after a chunk went out) lets the next chunks
    /// gather in the socket first: a token stream then costs one read and one write per few
    /// chunks instead of per chunk, and streams whose holds end in the same wheel tick are
    /// served in one wake-up. Chunks further apart than `hold` are not delayed at all.
    async fn read_stream(
        &mut self,
        conn: &mut UpConn,
        mut ubuf: Vec<u8>,
        t: &Timeouts,
        event_stream: bool,
        hold: Duration,
        canceller: &mut Canceller,
    ) -> StreamRead {
        let now = self.deadline.now();
        self.deadline.arm_at(Layer::StreamIdle, now + t.stream_idle);
        // A hold that would reach the deadline is skipped: bytes that arrive during it must
        // still count against stream_idle and total.
        if !hold.is_zero() && self.deadline.checkpoint(now + hold) {
            self.deadline.expired().await;
            if self.deadline.is_due() {
                self.w.bufs.give(ubuf);
                return StreamRead::Timeout;
            }
            self.deadline.resume();
        }
        loop {
            ubuf.clear();
            ubuf.resize(CHUNK_HEADROOM, 0);
            let cap = ubuf.capacity() - STREAM_TAILROOM;
            let tcp = match &mut conn.stream {
                Stream::Plain(tcp) if event_stream => tcp,
                stream => {
                    // TLS keeps decrypted bytes of its own; and non-SSE bodies are never idle
                    // for long. A plain read, with the client watched after the grace period.
                    let read = stream.read(ubuf.slice_mut(CHUNK_HEADROOM..cap));
                    return match upstream_wait(read, &self.deadline, &self.client, &mut self.watch)
                        .await
                    {
                        Waited::Done((Ok(0), b)) => StreamRead::Eof(b.into_inner()),
                        Waited::Done((Ok(_), b)) => StreamRead::Data(b.into_inner()),
                        Waited::Done((Err(e), b)) => StreamRead::Failed(b.into_inner(), e),
                        Waited::Timeout(_) => StreamRead::Timeout,
                        Waited::ClientGone => StreamRead::ClientGone,
                    };
                }
            };
            self.deadline.checkpoint(Instant::now() + WATCH_GRACE);
            let (res, b) = {
                let read =
                    tcp.cancelable_read(ubuf.slice_mut(CHUNK_HEADROOM..cap), canceller.handle());
                let mut read = std::pin::pin!(read);
                let first = monoio::select! {
                    biased;
                    r = &mut read => Some(r),
                    _ = self.deadline.expired() => None,
                };
                match first {
                    Some(r) => r,
                    None if self.deadline.is_due() => return StreamRead::Timeout,
                    None => {
                        // Quiet: take the buffer back whole before letting it go.
                        *canceller = std::mem::take(canceller).cancel();
                        read.await
                    }
                }
            };
            self.deadline.resume();
            ubuf = b.into_inner();
            match res {
                Ok(0) => return StreamRead::Eof(ubuf),
                Ok(_) => return StreamRead::Data(ubuf),
                Err(e) if is_cancelled(&e) => {}
                Err(e) => return StreamRead::Failed(ubuf, e),
            }
            self.w.bufs.give(ubuf);
            let ready = tcp.readable(false);
            let waited = upstream_wait(ready, &self.deadline, &self.client, &mut self.watch).await;
            ubuf = self.w.bufs.take();
            match waited {
                Waited::Done(_) => {}
                Waited::Timeout(_) => {
                    self.w.bufs.give(ubuf);
                    return StreamRead::Timeout;
                }
                Waited::ClientGone => {
                    self.w.bufs.give(ubuf);
                    return StreamRead::ClientGone;
                }
            }
        }
    }

    async fn stream_timeout(
        &mut self,
        ubuf: Vec<u8>,
        tail: [u8; 2],
        sse: bool,
    ) -> Result<(Flow, bool), Flow> {
        let layer = self.deadline.layer();
        self.w.stats().count_timeout(layer);
        let msg = format!("upstream stream stopped: {} timeout", layer.name());
        self.end_stream_with_error(ubuf, tail, &msg, layer.code(), sse)
            .await
    }

    /// After streaming began an error can no longer change the status: an SSE stream gets an
    /// `error` event and a proper end; anything else is cut (close without the last chunk) so
    /// the client cannot mistake a truncated body for a whole one.
    async fn end_stream_with_error(
        &mut self,
        mut buf: Vec<u8>,
        tail: [u8; 2],
        message: &str,
        code: &str,
        sse: bool,
    ) -> Result<(Flow, bool), Flow> {
        if !sse {
            self.w.bufs.give(buf);
            return Err(Flow::Close);
        }
        buf.clear();
        buf.resize(CHUNK_HEADROOM, 0);
        if tail != [b'\n', b'\n'] {
            // Terminate a half-sent event so the error event parses on its own.
            buf.extend_from_slice(b"\n\n");
        }
        buf.extend_from_slice(b"event: error\ndata: ");
        let kind = if code.ends_with("_timeout") {
            "timeout_error"
        } else {
            "upstream_error"
        };
        provider::error_json(&mut buf, message, kind, code);
        buf.extend_from_slice(b"\n\n");
        let data_len = buf.len() - CHUNK_HEADROOM;
        let start = wire::write_chunk_header_before(&mut buf, CHUNK_HEADROOM, data_len);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(wire::LAST_CHUNK);
        let t = self.timeouts();
        self.deadline
            .arm_unclamped(Layer::ClientIdle, t.client_idle);
        let end = buf.len();
        let buf = self.write_client(buf, start..end).await?;
        self.w.bufs.give(buf);
        let flow = if self.head.keep_alive {
            Flow::Keep
        } else {
            Flow::Close
        };
        // The upstream is mid-response: never reusable.
        Ok((flow, false))
    }

    /// An upstream non-2xx: read its body up to the cap, answer with the contract's error
    /// shape (keeping status and Retry-After), and pool the connection only if fully drained.
    ///
    /// An upstream 401/403 is the channel's key being refused, not the client's: it becomes a
    /// 502 `upstream_auth_failed` naming the channel, and the upstream's body (which may echo
    /// the key) is never relayed. Any other body has the channel's keys masked.
    async fn relay_upstream_error(
        &mut self,
        conn: UpConn,
        mut ubuf: Vec<u8>,
        channel: usize,
        t: &Timeouts,
    ) -> Flow {
        let mut conn = conn;
        let w = self.w.clone();
        w.stats().count_upstream_error(self.resp.status);
        let cap = w.config.server.max_error_body_bytes;
        let hl = self.resp.len;
        let mut body: Vec<u8> = Vec::new();
        let mut complete = false;
        let mut extra = false;
        let mut last_read_filled = ubuf.len() == ubuf.capacity();
        let mut decoder = wire::ChunkedDecoder::new();
        let mut remaining = match self.resp.body {
            BodyKind::Length(n) => n,
            _ => u64::MAX,
        };
        let kind = self.resp.body;
        let retry_after: Option<Vec<u8>> = self.resp.retry_after.map(|s| s.of(&ubuf).to_vec());
        let status = self.resp.status;
        let mut input = hl..ubuf.len();
        loop {
            // Take what is in `ubuf[input]`.
            let chunk = &ubuf[input.clone()];
            match kind {
                BodyKind::None => {
                    complete = true;
                    extra = !chunk.is_empty();
                }
                BodyKind::Length(_) => {
                    let take = (chunk.len() as u64).min(remaining) as usize;
                    let room = cap.saturating_sub(body.len()).min(take);
                    body.extend_from_slice(&chunk[..room]);
                    remaining -= take as u64;
                    complete = remaining == 0;
                    extra = chunk.len() > take;
                }
                BodyKind::Chunked => match decoder.decode(chunk, |r| {
                    let room = cap.saturating_sub(body.len()).min(r.len());
                    body.extend_from_slice(&chunk[r.start..r.start + room]);
                }) {
                    Ok(d) => {
                        complete = d.done;
                        extra = d.done && d.consumed < chunk.len();
                    }
                    Err(_) => break,
                },
                BodyKind::UntilClose => {
                    let room = cap.saturating_sub(body.len()).min(chunk.len());
                    body.extend_from_slice(&chunk[..room]);
                }
            }
            // Stop at the cap: the rest is not worth the memory or the wait.
            if complete || body.len() >= cap {
                break;
            }
            self.deadline.arm(Layer::StreamIdle, t.stream_idle);
            ubuf.clear();
            let c = ubuf.capacity();
            let deadline = &self.deadline;
            let r = monoio::select! {
                biased;
                r = conn.stream.read(ubuf.slice_mut(0..c)) => Some(r),
                _ = deadline.expired() => None,
            };
            match r {
                Some((Ok(0), b)) => {
                    ubuf = b.into_inner();
                    complete = kind == BodyKind::UntilClose;
                    break;
                }
                Some((Ok(n), b)) => {
                    ubuf = b.into_inner();
                    last_read_filled = n == c;
                    input = 0..n;
                }
                Some((Err(_), b)) => {
                    ubuf = b.into_inner();
                    break;
                }
                None => {
                    self.w.stats().count_timeout(self.deadline.layer());
                    ubuf = w.bufs.take();
                    break;
                }
            }
        }
        let reusable = complete
            && self.resp.keep_alive
            && kind != BodyKind::UntilClose
            && ended_clean(extra, last_read_filled);
        w.bufs.give(ubuf);
        let ch = &w.router.channels[channel];
        let flow = if status == 401 || status == 403 {
            bump(&w.stats().upstream_auth_failed);
            let msg = format!(
                "upstream channel '{}' refused its API key ({status}); the request was not served",
                ch.cfg.name
            );
            self.respond_error(502, &msg, "upstream_error", "upstream_auth_failed", None)
                .await
        } else {
            ch.mask_keys(&mut body);
            let json = provider::normalise_upstream_error(status, &body, !complete);
            self.respond(status, b"application/json", &json, retry_after.as_deref())
                .await
        };
        if reusable {
            w.pool.put_back(conn, Instant::now());
        } else {
            drop(conn);
        }
        flow
    }

    // ---- responses the relay makes itself ---------------------------------------------------

    async fn respond_error(
        &mut self,
        status: u16,
        message: &str,
        kind: &str,
        code: &str,
        retry_after: Option<&[u8]>,
    ) -> Flow {
        let mut body = Vec::with_capacity(message.len() + 96);
        provider::error_json(&mut body, message, kind, code);
        self.respond(status, b"application/json", &body, retry_after)
            .await
    }

    async fn respond(
        &mut self,
        status: u16,
        content_type: &[u8],
        body: &[u8],
        retry_after: Option<&[u8]>,
    ) -> Flow {
        match retry_after {
            Some(r) => {
                self.respond_with(status, content_type, body, (b"retry-after", r))
                    .await
            }
            None => {
                self.respond_with(status, content_type, body, (b"", b""))
                    .await
            }
        }
    }

    /// A response of the relay's own, with one extra header (skipped when its name is empty).
    /// The answer to a HEAD request carries the head only.
    async fn respond_with(
        &mut self,
        status: u16,
        content_type: &[u8],
        body: &[u8],
        extra: (&[u8], &[u8]),
    ) -> Flow {
        // A body the client sent but we did not read would be parsed as the next request.
        let unread_body = self.head.body != BodyKind::None && self.consumed <= self.head.len;
        let close = !self.head.keep_alive || unread_body;
        let mut out = self.w.bufs.take();
        wire::write_status_line(&mut out, status);
        wire::write_header(&mut out, b"content-type", content_type);
        out.extend_from_slice(b"content-length: ");
        wire::push_u64(&mut out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
        wire::write_header(&mut out, b"x-request-id", &self.request_id);
        if !extra.0.is_empty() {
            wire::write_header(&mut out, extra.0, extra.1);
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.head.method != Method::Head {
            out.extend_from_slice(body);
        }
        self.mark_first_byte(status);
        let t = self.timeouts();
        // Unclamped: this may be the answer to an expired total, which must still go out.
        self.deadline
            .arm_unclamped(Layer::ClientIdle, t.client_idle);
        let len = out.len();
        match self.write_client(out, 0..len).await {
            Ok(out) => {
                self.w.bufs.give(out);
                if close {
                    self.head.keep_alive = false;
                    Flow::Close
                } else {
                    Flow::Keep
                }
            }
            Err(flow) => flow,
        }
    }
}

/// May a connection whose response just ended go back to the pool? Not when bytes followed
/// the response, and not when the read that ended it filled its buffer: a TLS session may
/// then hold more decrypted bytes that no socket check can see. Together with the pool's
/// check that a parked socket has nothing to read, nothing an upstream sent after a response
/// can reach another request.
#[inline]
fn ended_clean(extra: bool, last_read_filled: bool) -> bool {
    !extra && !last_read_filled
}

#[derive(Clone, Copy)]
enum ClientFraming {
    Length(u64),
    Chunked,
    UntilClose,
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        Method::Head => "HEAD",
        Method::Other => "OTHER",
    }
}

fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
