//! Phase 2, `admit`: who is asking, the whole body, and whether the relay takes the request
//! on now.
//!
//! Owns: token authentication and expiry (before any body byte is read, so an unknown or
//! expired key costs no body), reading and de-chunking the body (`client_body` silence,
//! `client_body_total` for the whole body, `max_body_bytes`, `Expect: 100-continue`), and
//! admission — the token's `max_inflight`, `tpm`, quota and `rpm`, then the process's
//! `max_inflight` (`limits`) — only once the body is in, so a client trickling its body holds
//! no slot. For a token with `quota_tokens` the request's estimate (`reserve`) is reserved
//! here and the reservation is kept on the connection until `finish` settles it.
//!
//! Error handling: 401, 408, 413, 429 and 503 as [`RelayError`]s; a client that leaves is
//! `Halt::Close`.
//! Must not: look at the body's content beyond the reservation estimate (the model is
//! `route`'s), or touch the upstream.

use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::AsyncWriteRentExt;

use crate::config::Timeouts;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::limits::{Admission, Refusal};
use crate::monitor::bump;
use crate::wire::{self, BodyKind};

use super::exchange::Exchange;
use super::{reserve, Conn, GaugeGuard, Halt};
use crate::tls_server::ClientStream;

/// Held for as long as the request counts against `max_inflight` (the process's and its
/// token's).
pub struct Admitted {
    _slot: Admission,
    /// This worker's share of the count, for health.
    _inflight: GaugeGuard,
}

pub async fn admit<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
) -> Result<Admitted, Halt> {
    let w = conn.w.clone();
    let token = ex
        .head
        .api_key
        .and_then(|key| w.router.authenticate(key.of(&conn.rbuf)));
    let Some(token) = token else {
        return Err(RelayError::invalid_api_key(ex.head.api_key.is_some()).into());
    };
    ex.token = Some(token);
    w.limits.check_expiry(token)?;
    conn.deadline
        .begin_request(ex.start, w.config.timeouts[Layer::Total], Layer::Total);
    read_body(conn, ex).await?;
    // Only a token with a quota pays for the body scan.
    let reserve = if w.limits.has_quota(token) {
        let body = conn.rbuf.get(ex.body.clone()).unwrap_or_default();
        reserve::estimate(body, ex.endpoint, w.config.server.quota_reserve)
    } else {
        0
    };
    // The token's limits, then one process-wide count: all hold across workers (limits.rs).
    let mut slot = w.limits.admit(token, reserve).map_err(|refused| {
        let s = w.stats();
        bump(match refused {
            Refusal::Overloaded => &s.overloaded,
            Refusal::QuotaExhausted { .. } => &s.quota_exhausted,
            Refusal::RateLimited { .. } => &s.rate_limited,
        });
        refused.error()
    })?;
    conn.quota = slot.take_quota();
    Ok(Admitted {
        _slot: slot,
        _inflight: GaugeGuard::new(&w, |s| &s.inflight),
    })
}

async fn read_body<S: ClientStream>(conn: &mut Conn<S>, ex: &mut Exchange<'_>) -> Result<(), Halt> {
    let max = conn.w.config.server.max_body_bytes;
    let t = conn.w.config.timeouts;
    let hl = ex.head.len;
    let body_due = conn.deadline.recent() + t.client_body_total;
    match ex.head.body {
        BodyKind::None | BodyKind::UntilClose => {
            ex.body = hl..hl;
            ex.consumed = hl;
            Ok(())
        }
        BodyKind::Length(n) => {
            if n > max as u64 {
                return Err(RelayError::body_too_large(max).into());
            }
            let need = hl + n as usize;
            if conn.rbuf.len() < need && ex.head.expect_continue {
                send_continue(conn).await?;
            }
            if conn.rbuf.capacity() < need {
                conn.rbuf.reserve(need - conn.rbuf.len());
            }
            while conn.rbuf.len() < need {
                read_more(conn, &t, body_due).await?;
            }
            ex.body = hl..need;
            ex.consumed = need;
            Ok(())
        }
        BodyKind::Chunked => {
            let mut decoder = wire::ChunkedDecoder::new();
            let mut pos = hl;
            let mut write_at = hl;
            let mut continued = false;
            loop {
                if pos < conn.rbuf.len() {
                    let d =
                        wire::dechunk_in_place(&mut decoder, &mut conn.rbuf, pos, &mut write_at)
                            .map_err(|_| {
                                RelayError::bad_request("malformed chunked request body")
                            })?;
                    pos = d.consumed;
                    if write_at - hl > max {
                        return Err(RelayError::body_too_large(max).into());
                    }
                    if d.done {
                        ex.body = hl..write_at;
                        ex.consumed = pos;
                        return Ok(());
                    }
                }
                if ex.head.expect_continue && !continued {
                    continued = true;
                    send_continue(conn).await?;
                }
                if conn.rbuf.len() - hl > max + 4096 {
                    return Err(RelayError::body_too_large(max).into());
                }
                if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
                    conn.rbuf.reserve(conn.rbuf.capacity());
                }
                read_more(conn, &t, body_due).await?;
            }
        }
    }
}

async fn send_continue<S: ClientStream>(conn: &mut Conn<S>) -> Result<(), Halt> {
    let (r, _) = conn
        .client
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n" as &'static [u8])
        .await;
    r.map(|_| ()).map_err(|_| Halt::Close)
}

/// Read more of the body: silence is bounded by `client_body`, the whole body by `body_due`
/// (`client_body_total` after the head), both answered 408; `total` answers 504.
async fn read_more<S: ClientStream>(
    conn: &mut Conn<S>,
    t: &Timeouts,
    body_due: Instant,
) -> Result<(), Halt> {
    let silence_due = conn.deadline.now() + t[Layer::ClientBody];
    conn.deadline
        .arm_at(Layer::ClientBody, silence_due.min(body_due));
    let buf = std::mem::take(&mut conn.rbuf);
    let (len, cap) = (buf.len(), buf.capacity());
    match conn
        .deadline
        .race(conn.client.read(buf.slice_mut(len..cap)))
        .await
    {
        Ok((Ok(n), b)) if n > 0 => {
            conn.rbuf = b.into_inner();
            Ok(())
        }
        Ok((_, b)) => {
            conn.rbuf = b.into_inner();
            Err(Halt::Close)
        }
        Err(layer) => {
            conn.w.stats().count_timeout(layer);
            let error = if layer == Layer::ClientBody {
                RelayError::client_timeout(layer)
            } else {
                let mut e = RelayError::timeout(layer);
                e.message = "the request body was not received within the total timeout".into();
                e.closes = true;
                e
            };
            Err(error.into())
        }
    }
}
