//! Phase 1, `read_request`: wait for the next request head on a keep-alive connection and
//! make an [`Exchange`] of it (id, endpoint).
//!
//! Owns: the idle wait (`client_idle`, holding no read buffer after a second of quiet), the
//! head deadline (`client_header`, slowloris), and the head's limits and framing checks.
//! Error handling: a head that cannot be accepted (too large, malformed, a transfer coding
//! other than `chunked`, too slow) becomes [`Next::Refused`] with the error to answer; the
//! connection closes after it. Must not: read the body — that waits until the token is known
//! (`admit`).

use monoio::buf::IoBufMut;

use crate::bufpool::BUF_SIZE;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::wire::{self, BodyKind, Method, WireError};

use super::exchange::{push_hex, Endpoint, Exchange, Scratch};
use super::watch::is_cancelled;
use super::{Conn, IDLE_BUFFER_RELEASE};
use crate::tls_server::ClientStream;

/// What waiting for the next request came to.
pub enum Next<'s> {
    Request(Exchange<'s>),
    /// A head that is answered with this error, then the connection closes.
    Refused(Exchange<'s>, RelayError),
    /// The client closed, or stayed idle past `client_idle`: close quietly.
    Closed,
}

pub async fn next<'s, S: ClientStream>(conn: &mut Conn<S>, scratch: &'s mut Scratch) -> Next<'s> {
    if conn.w.drain.is_draining() && conn.rbuf.is_empty() && !conn.fresh {
        // Shutdown: no new request is waited for; one already pipelined is still answered,
        // and so is a new connection's first.
        return Next::Closed;
    }
    let refusal = match read_head(conn, &mut scratch.head).await {
        Ok(()) => None,
        Err(None) => return Next::Closed,
        Err(Some(error)) => Some(error),
    };
    conn.fresh = false;
    let start = conn.deadline.now();
    let mut ex = Exchange::new(scratch, start);
    if let Some(error) = refusal {
        // No head was accepted: its fields still hold the previous request's.
        ex.head.method = Method::Other;
        ex.head.body = BodyKind::None;
        ex.endpoint = Endpoint::Refused;
        ex.close = true;
        new_request_id(conn, ex.id);
        return Next::Refused(ex, error);
    }
    ex.consumed = ex.head.len;
    ex.close |= conn.w.drain.is_draining();
    ex.endpoint = Endpoint::of(ex.head.route_path(&conn.rbuf), ex.head.method);
    ex.cors_origin = ex
        .head
        .origin
        .filter(|o| conn.w.config.server.cors_allows(o.of(&conn.rbuf)));
    if ex.cors_origin.is_some() && ex.head.method == Method::Options {
        ex.endpoint = Endpoint::Preflight;
    }
    match ex.head.request_id {
        Some(span) => {
            ex.id.clear();
            ex.id.extend_from_slice(span.of(&conn.rbuf));
        }
        None => new_request_id(conn, ex.id),
    }
    Next::Request(ex)
}

/// What ended a wait for the next request's first bytes.
enum Woke {
    /// The socket is readable (true), or failed or stays silent (false).
    Readable(bool),
    /// The phase's deadline passed.
    Timeout,
    /// The worker closed it to make room, or because it drains.
    Shed,
}

/// How long a connection accepted just before a drain gets for its first request head to
/// start arriving.
const FIRST_REQUEST_IN_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// `rw-<process start>-<worker>-<sequence>`: unique per process run without coordination.
fn new_request_id<S: ClientStream>(conn: &Conn<S>, id: &mut Vec<u8>) {
    id.clear();
    let seq = conn.w.next_request.get();
    conn.w.next_request.set(seq + 1);
    id.extend_from_slice(b"rw-");
    push_hex(id, conn.w.started_nanos & 0xffff_ffff_ffff);
    id.push(b'-');
    push_hex(id, conn.w.id as u64);
    id.push(b'-');
    push_hex(id, seq);
}

/// Read until `rbuf` starts with a complete head, parsed into `head`.
/// `Err(None)`: close quietly; `Err(Some(e))`: answer `e`, then close.
async fn read_head<S: ClientStream>(
    conn: &mut Conn<S>,
    head: &mut wire::RequestHead,
) -> Result<(), Option<RelayError>> {
    let t = conn.w.config.timeouts;
    let limit = conn.w.config.server.max_header_bytes;
    let mut phase = if conn.rbuf.is_empty() {
        Layer::ClientIdle
    } else {
        Layer::ClientHeader
    };
    conn.deadline.arm(phase, t[phase]);
    loop {
        if !conn.rbuf.is_empty() {
            match wire::parse_request(&conn.rbuf, head) {
                Ok(true) if head.len <= limit => return Ok(()),
                Ok(true) => {
                    return Err(Some(RelayError::header_too_large("request head too large")))
                }
                Ok(false) if conn.rbuf.len() > limit => {
                    return Err(Some(RelayError::header_too_large("request head too large")))
                }
                Ok(false) => {}
                Err(WireError::TooManyHeaders) => {
                    return Err(Some(RelayError::header_too_large(
                        "too many request headers",
                    )))
                }
                Err(e @ WireError::UnsupportedCoding) => {
                    return Err(Some(RelayError::unsupported_transfer_encoding(e.message())))
                }
                Err(e) => return Err(Some(RelayError::bad_request(e.message()))),
            }
            if phase == Layer::ClientIdle {
                phase = Layer::ClientHeader;
                conn.deadline.arm(phase, t[Layer::ClientHeader]);
            }
        }
        if conn.rbuf.capacity() == 0 {
            let woke = if conn.client.has_buffered() {
                // A TLS session may already hold the next request's bytes: no socket wait.
                Woke::Readable(true)
            } else if phase == Layer::ClientIdle && conn.w.drain.is_draining() {
                if !conn.fresh {
                    // Shutdown began while this connection sat idle: close it.
                    return Err(None);
                }
                // A new connection during shutdown: accepted just before the listener closed
                // (or, at an upgrade, while the successor shares it), its first request is on
                // its way. Waited for briefly, off the idle list the drain empties.
                monoio::select! {
                    biased;
                    r = conn.client.socket().readable(false) => Woke::Readable(r.is_ok()),
                    _ = conn.deadline.expired() => Woke::Timeout,
                    _ = monoio::time::sleep(FIRST_REQUEST_IN_DRAIN) => Woke::Readable(false),
                }
            } else {
                // Readiness first: an idle connection holds no read buffer. While it waits it
                // is on the worker's idle list: at max_connections or the fd limit the worker
                // closes the longest-idle connections first to make room (worker.rs,
                // IdleConnections).
                let idle = conn.w.idle.enter();
                monoio::select! {
                    biased;
                    r = conn.client.socket().readable(false) => Woke::Readable(r.is_ok()),
                    _ = conn.deadline.expired() => Woke::Timeout,
                    _ = idle.shed() => Woke::Shed,
                }
            };
            match woke {
                Woke::Readable(true) => {}
                // Shed by a drain that began during the wait: a new connection waits on as
                // above.
                Woke::Shed if conn.fresh && conn.w.drain.is_draining() => continue,
                Woke::Readable(false) | Woke::Shed => return Err(None),
                Woke::Timeout => return Err(head_timeout(conn, phase)),
            }
            conn.rbuf = conn.w.bufs.take();
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
            conn.rbuf.reserve(conn.rbuf.capacity().max(BUF_SIZE));
        }
        let buf = std::mem::take(&mut conn.rbuf);
        let (len, cap) = (buf.len(), buf.capacity());
        let Conn {
            client,
            deadline,
            idle_canceller,
            ..
        } = conn;
        let r = if phase == Layer::ClientIdle && len == 0 {
            // An idle keep-alive connection: read with the buffer (the next request usually
            // comes at once), but if it stays quiet, take the buffer back and wait for
            // readiness without one, so idle connections hold no read buffer.
            deadline.checkpoint(deadline.recent() + IDLE_BUFFER_RELEASE);
            let read = client.cancelable_read(buf.slice_mut(0..cap), idle_canceller.handle());
            let mut read = std::pin::pin!(read);
            match deadline.race(&mut read).await {
                Ok(r) => {
                    deadline.resume();
                    Some(r)
                }
                Err(_) if deadline.is_due() => None,
                Err(_) => {
                    *idle_canceller = std::mem::take(idle_canceller).cancel();
                    deadline.resume();
                    match read.await {
                        (Err(e), b) if is_cancelled(&e) => {
                            conn.w.bufs.give(b.into_inner());
                            continue;
                        }
                        r => Some(r),
                    }
                }
            }
        } else {
            deadline
                .race(client.read(buf.slice_mut(len..cap)))
                .await
                .ok()
        };
        match r {
            None => return Err(head_timeout(conn, phase)),
            Some((Ok(n), b)) => {
                conn.rbuf = b.into_inner();
                if n == 0 {
                    return Err(None);
                }
            }
            Some((Err(_), b)) => {
                conn.rbuf = b.into_inner();
                return Err(None);
            }
        }
    }
}

/// `client_idle` closes quietly; `client_header` (slowloris) gets a 408 first.
fn head_timeout<S: ClientStream>(conn: &Conn<S>, phase: Layer) -> Option<RelayError> {
    conn.w.stats().count_timeout(phase);
    (phase == Layer::ClientHeader).then(|| RelayError::client_timeout(phase))
}
