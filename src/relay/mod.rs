//! The request lifecycle: one task per client connection, each request a value with a
//! lifetime ([`Exchange`]) taken through the same named phases in one order.
//!
//! ```text
//!   read_request ─► admit ─► route ─► forward ─► respond ─► finish
//!   (head,          (token,   (model,   (attempts:  (fixed |    (accounting,
//!    endpoint)       body,     ordered   connect,    stream |    upstream back to the
//!                    limits)   channels) send,       upstream    pool, keep-alive
//!                                        await head) error)      decision)
//! ```
//!
//! The operations endpoints (health, metrics, models) go from `read_request` straight to
//! `respond`; every error of the relay's own ends the phases early with one
//! [`RelayError`](crate::error::RelayError), answered in one place. Where each feature lives:
//! token limits and the quota reservation in `admit` (its estimate in `reserve`, settled in
//! `finish`), failover across channels in `forward`, the Responses API's ids learned in
//! `respond` (`responses`) and looked up in `route`,
//! protocol conversion in `forward` (the request, per attempt) and `respond` (the answer,
//! `convert`), the access log in `finish`
//! (docs/ARCHITECTURE.md has the chart).
//!
//! Key components:
//! - [`Conn`]: what outlives a request — the client socket (plain TCP, or a TLS session over
//!   it: `Conn` is generic over the stream), its read buffer, its one deadline slot, the
//!   client watch. Owned by the connection task; dropped with it.
//! - [`Exchange`]: one request — its parsed head, id, route, attempts, usage, timings. Created
//!   when a head is read, dropped when `finish` is done; nothing is reset by hand.
//!
//! Error handling: a phase returns `Err(Halt::Answer(error))` to have the relay answer with
//! the contract's error, or `Err(Halt::Close)` when nobody is left to answer (the client left,
//! or a response was already cut). After the first response byte, errors can only end a
//! stream (an SSE `error` event) — `respond` owns that.
//!
//! Must not: spawn tasks, or leave any IO future running past the phase that started it —
//! when a phase loses a race against its deadline its futures are dropped right there, and the
//! upstream connection with them. Every phase is bounded by the request's `total`.

mod admit;
mod convert;
mod exchange;
mod finish;
mod forward;
mod own;
mod read_request;
mod reserve;
mod respond;
mod responses;
mod route;
mod stream;
mod watch;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::TcpStream;

use crate::context::Worker;
use crate::deadline::{DeadlineSet, Layer};
use crate::error::RelayError;
use crate::monitor::{bump, drop_one};
use crate::tls_server::{self, ClientStream};

use exchange::{Endpoint, Exchange, Scratch};
use read_request::Next;
use watch::ClientWatch;

/// How long a keep-alive connection may sit idle before its read buffer goes back to the pool.
const IDLE_BUFFER_RELEASE: Duration = Duration::from_secs(1);

/// Whether the client connection can carry another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Keep,
    Close,
}

/// Why a phase stopped the request early.
enum Halt {
    /// Answer with this error (the relay's own response, or an SSE error event mid-stream).
    Answer(RelayError),
    /// Nobody to answer, or the answer already went out: close the connection.
    Close,
}

impl From<RelayError> for Halt {
    fn from(e: RelayError) -> Halt {
        Halt::Answer(e)
    }
}

/// Decrements a gauge when the thing it counts goes away, on every path.
struct GaugeGuard(&'static std::sync::atomic::AtomicU64);

impl GaugeGuard {
    fn new(
        worker: &Rc<Worker>,
        gauge: fn(&'static crate::monitor::WorkerStats) -> &'static std::sync::atomic::AtomicU64,
    ) -> GaugeGuard {
        let g = gauge(&worker.monitor.workers[worker.id]);
        bump(g);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        drop_one(self.0);
    }
}

/// What outlives a request on a client connection. `S` is the client stream: a plain
/// `TcpStream`, or a `TlsClient` after its handshake (each compiled on its own, so the plain
/// path pays nothing for TLS).
struct Conn<S: ClientStream> {
    w: Rc<Worker>,
    client: S,
    /// Request bytes: head, body, and whatever the client pipelined after them. Taken from the
    /// worker's pool only once the client is readable, so an idle connection holds none.
    rbuf: Vec<u8>,
    /// The connection's one timer slot, re-armed phase by phase.
    deadline: DeadlineSet,
    watch: ClientWatch,
    /// Cancels an idle keep-alive read so its buffer can be returned (one per connection:
    /// monoio's canceller allocates).
    idle_canceller: Canceller,
    /// The quota reservation of the request in progress (requests on a connection are served
    /// one at a time): taken by `admit`, settled by `finish` after the real usage is counted,
    /// given back if the connection ends first.
    quota: Option<crate::limits::QuotaHold>,
    /// No request head has arrived yet. A drain closes idle keep-alive connections, but a new
    /// one still gets its first request answered: its client connected while the listener was
    /// open (at an upgrade, to the listener this process shares with its successor).
    fresh: bool,
}

/// The connection task for a plain-HTTP client. It owns everything its requests touch; when it
/// returns (or is dropped), the client socket, buffers, timer slot and any upstream connection
/// go with it.
pub async fn serve_connection(worker: Rc<Worker>, stream: TcpStream) {
    let _conn_gauge = GaugeGuard::new(&worker, |s| &s.client_connections);
    let deadline = DeadlineSet::new(worker.wheel.timer());
    serve(worker, stream, deadline).await
}

/// The connection task for a TLS client: the handshake under `client_header` (a client that
/// stalls in it is cut there and counted), then the same requests as plain HTTP. `tls` is the
/// server configuration of the generation that accepted the connection: a reload's new
/// certificate serves the connections accepted after it, and this one keeps its own.
pub async fn serve_tls_connection(
    worker: Rc<Worker>,
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) {
    let _conn_gauge = GaugeGuard::new(&worker, |s| &s.client_connections);
    let deadline = DeadlineSet::new(worker.wheel.timer());
    deadline.arm(
        Layer::ClientHeader,
        worker.config.timeouts[Layer::ClientHeader],
    );
    let stats: &'static crate::monitor::WorkerStats = &worker.monitor.workers[worker.id];
    match deadline.race(tls_server::accept(stream, tls)).await {
        Ok(Ok(client)) => {
            bump(&stats.client_tls_handshakes);
            serve(worker, client, deadline).await
        }
        Ok(Err(_)) => bump(&stats.client_tls_failed),
        Err(layer) => {
            stats.count_timeout(layer);
            bump(&stats.client_tls_timeouts);
        }
    }
}

async fn serve<S: ClientStream>(worker: Rc<Worker>, client: S, deadline: DeadlineSet) {
    let mut conn = Conn {
        deadline,
        rbuf: Vec::new(),
        w: worker,
        client,
        watch: ClientWatch::new(),
        idle_canceller: Canceller::new(),
        quota: None,
        fresh: true,
    };
    // Storage each exchange borrows for its parsed heads and id, kept across requests.
    let mut scratch = Scratch::default();
    loop {
        let mut ex = match read_request::next(&mut conn, &mut scratch).await {
            Next::Request(ex) => ex,
            Next::Refused(mut ex, error) => {
                let flow = own::answer_error(&mut conn, &mut ex, &error).await;
                finish::finish(&mut conn, ex, flow, None);
                break;
            }
            Next::Closed => break,
        };
        // A request runs whole under the newest config when its head arrived.
        if let Some(newer) = conn.w.newer() {
            conn.w = newer;
        }
        conn.w.activity.note();
        let (flow, upstream) = match handle(&mut conn, &mut ex).await {
            Ok(done) => done,
            Err(Halt::Answer(error)) => (own::answer_error(&mut conn, &mut ex, &error).await, None),
            Err(Halt::Close) => (Flow::Close, None),
        };
        conn.w.activity.note();
        if finish::finish(&mut conn, ex, flow, upstream) == Flow::Close {
            break;
        }
    }
    let rbuf = std::mem::take(&mut conn.rbuf);
    conn.w.bufs.give(rbuf);
    if S::SAYS_GOODBYE {
        // TLS: close_notify before the close, briefly (a client that reads nothing more
        // does not hold the connection).
        conn.deadline.arm(Layer::ClientIdle, GOODBYE_WAIT);
        let _ = conn.deadline.race(conn.client.shutdown()).await;
    }
}

/// How long a TLS connection's `close_notify` may take to go out.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// The phases after `read_request`, in order. Returns how the connection goes on and, when
/// an upstream response ended cleanly, the upstream connection for `finish` to pool.
async fn handle<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
) -> Result<(Flow, Option<crate::upstream::UpConn>), Halt> {
    match ex.endpoint {
        Endpoint::Health | Endpoint::Metrics | Endpoint::Models | Endpoint::Model => {
            Ok((respond::operations(conn, ex).await, None))
        }
        Endpoint::Relay(_) => {
            let _admitted = admit::admit(conn, ex).await?;
            let mut candidates = route::route(conn, ex)?;
            let upstream = forward::forward(conn, ex, &mut candidates).await?;
            respond::relay(conn, ex, upstream).await
        }
        Endpoint::Unknown | Endpoint::Refused => Err(RelayError::not_found(format!(
            "Unknown request URL: {} {}",
            exchange::method_name(ex.head.method),
            String::from_utf8_lossy(ex.head.route_path(&conn.rbuf))
        ))
        .into()),
        Endpoint::WrongMethod(allow) => Err(RelayError::method_not_allowed(allow).into()),
        Endpoint::Preflight => Ok((respond::preflight(conn, ex).await, None)),
    }
}
