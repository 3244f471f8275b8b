//! Writing to the client: the relay's own answers (errors, health, metrics, models) and the
//! one write primitive every response goes through.
//!
//! Owns: rendering a [`RelayError`] as a response (the one place an error reaches a client
//! outside a stream), the head of the relay's own responses (`x-request-id`, `Retry-After`,
//! `Allow`, `Connection: close`), HEAD answers without a body, and [`write_client`], which
//! lets a write outlive an upstream deadline but never the client's own.
//! Must not: decide whether to answer — the phases do.

use std::ops::Range;

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRentExt;

use crate::deadline::Layer;
use crate::error::{Dialect, RelayError};
use crate::monitor::bump;
use crate::wire::{self, BodyKind, Method};

use super::exchange::{Endpoint, Exchange, Outcome};
use super::{Conn, Flow};
use crate::tls_server::ClientStream;

/// The error shape the caller speaks: the endpoint's, and Anthropic's for anything under
/// `/v1/messages` that matched no endpoint (a wrong method, an unknown sub-path), since only
/// Anthropic clients call there.
fn dialect<S: ClientStream>(conn: &Conn<S>, ex: &Exchange<'_>) -> Dialect {
    match ex.endpoint {
        Endpoint::WrongMethod(_) | Endpoint::Unknown if conn.rbuf.len() >= ex.head.len => {
            let path = ex.head.route_path(&conn.rbuf);
            if path == b"/v1/messages" || path.starts_with(b"/v1/messages/") {
                Dialect::Anthropic
            } else {
                Dialect::OpenAi
            }
        }
        endpoint => endpoint.dialect(),
    }
}

/// Answer `error` with the contract's error body, in the shape of the endpoint's dialect.
pub async fn answer_error<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    error: &RelayError,
) -> Flow {
    let mut body = Vec::with_capacity(error.message.len() + 96);
    error.render_as(dialect(conn, ex), &mut body);
    ex.outcome = Outcome::of(error);
    if error.closes {
        ex.close = true;
    }
    let retry_after;
    let allow;
    let extra: &[(&[u8], &[u8])] = match (&error.retry_after, error.allow) {
        (Some(r), _) => {
            retry_after = [(&b"retry-after"[..], &r[..])];
            &retry_after
        }
        (None, Some(a)) => {
            allow = [(&b"allow"[..], a.as_bytes())];
            &allow
        }
        (None, None) => &[],
    };
    respond(conn, ex, error.status, b"application/json", &body, extra).await
}

/// A response of the relay's own, with extra headers. The answer to a HEAD request carries the
/// head only.
pub async fn respond<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    status: u16,
    content_type: &[u8],
    body: &[u8],
    extra: &[(&[u8], &[u8])],
) -> Flow {
    // A body the client sent but we did not read would be parsed as the next request.
    let unread_body = ex.head.body != BodyKind::None && ex.consumed <= ex.head.len;
    if unread_body {
        ex.close = true;
    }
    // Shutdown has begun: the answer says so, and the connection ends after it.
    ex.close |= conn.w.drain.is_draining();
    let close = !ex.keeps_alive();
    let mut out = conn.w.bufs.take();
    wire::write_status_line(&mut out, status);
    if status != 204 {
        // A 204 has no body and no length (RFC 9110 8.6).
        wire::write_header(&mut out, b"content-type", content_type);
        out.extend_from_slice(b"content-length: ");
        wire::push_u64(&mut out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    wire::write_header(&mut out, b"x-request-id", ex.id);
    for (name, value) in extra {
        wire::write_header(&mut out, name, value);
    }
    write_cors(conn, ex, &mut out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if ex.head.method != Method::Head {
        out.extend_from_slice(body);
    }
    let now = conn.deadline.now();
    ex.mark_first_byte(status, now);
    // Unclamped: this may be the answer to an expired total, which must still go out.
    conn.deadline
        .arm_unclamped(Layer::ClientIdle, conn.w.config.timeouts[Layer::ClientIdle]);
    let len = out.len();
    match write_client(conn, out, 0..len).await {
        Ok(out) => {
            conn.w.bufs.give(out);
            ex.bytes_out += len as u64;
            ex.completed = true;
            if close {
                Flow::Close
            } else {
                Flow::Keep
            }
        }
        Err(flow) => flow,
    }
}

/// The CORS headers of an answer to an allowed browser origin (`[server] cors_origins`).
pub fn write_cors<S: ClientStream>(conn: &Conn<S>, ex: &Exchange<'_>, out: &mut Vec<u8>) {
    if let Some(origin) = ex
        .cors_origin
        .filter(|o| (o.end as usize) <= conn.rbuf.len())
    {
        wire::write_header(out, b"access-control-allow-origin", origin.of(&conn.rbuf));
        out.extend_from_slice(
            b"vary: Origin\r\naccess-control-expose-headers: x-request-id, retry-after\r\n",
        );
    }
}

/// Write `buf[range]` to the client under the current deadline; gives the buffer back.
///
/// Only the client's own layer (`client_idle`) can cut a write. When an upstream-side
/// deadline (`total`, `stream_idle`) fires while a write is under way, the write is allowed
/// to finish under `client_idle` and the phase that owns the expired deadline answers it
/// next — dropping the write instead would cut the stream mid-chunk, since the kernel may
/// already have taken part of it, and the client would never see the error event.
pub async fn write_client<S: ClientStream>(
    conn: &mut Conn<S>,
    buf: Vec<u8>,
    range: Range<usize>,
) -> Result<Vec<u8>, Flow> {
    let client_idle = conn.w.config.timeouts[Layer::ClientIdle];
    let Conn {
        client, deadline, ..
    } = conn;
    let write = client.write_all(buf.slice(range));
    let mut write = std::pin::pin!(write);
    let r = loop {
        if let Ok(r) = deadline.race(&mut write).await {
            break Some(r);
        }
        if deadline.layer() == Layer::ClientIdle {
            break None;
        }
        deadline.arm_unclamped(Layer::ClientIdle, client_idle);
    };
    match r {
        Some((Ok(_), b)) => Ok(b.into_inner()),
        Some((Err(_), b)) => {
            bump(&conn.w.stats().client_gone);
            conn.w.bufs.give(b.into_inner());
            Err(Flow::Close)
        }
        None => {
            conn.w.stats().count_timeout(conn.deadline.layer());
            Err(Flow::Close)
        }
    }
}
