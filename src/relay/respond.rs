//! Phase 5, `respond`: the answer. The operations endpoints answer from the monitor and the
//! router; a relayed request's answer follows the upstream's response head: a fixed-length
//! body passed through, a stream re-framed chunk by chunk ([`super::stream`]), or an upstream
//! error read up to a cap and normalised.
//!
//! Owns: the client response head for an upstream answer (hop-by-hop headers dropped, the
//! upstream's `x-request-id` renamed, channel keys masked), reading the upstream body under
//! `stream_idle`, usage scanning (for `/v1/responses` with the id learning of
//! [`super::responses`]), and deciding whether the upstream connection ended clean
//! enough to be pooled (`finish` pools it). The 2xx answer of a channel of the other dialect
//! is converted back ([`super::convert`]); an upstream error is read by the channel's adapter
//! and answered in the client's dialect, whichever the channel spoke.
//!
//! Error handling: after the head went out an error can only cut the answer (`Halt::Close`)
//! or, for a stream, end it with an SSE `error` event. Must not: retry or pick channels.

use monoio::buf::IoBufMut;

use crate::config::Timeouts;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::monitor::bump;
use crate::provider::{self, ResponsePlan};
use crate::reload::Generation;
use crate::upstream::UpConn;
use crate::wire::{self, BodyKind, ResponseHead};

use super::exchange::{Endpoint, Exchange, Outcome, RelayKind};
use super::forward::Upstream;
use super::own::{respond, write_client};
use super::{Conn, Flow, Halt};
use crate::tls_server::ClientStream;

/// The answers of the operations endpoints (health, metrics, models).
pub async fn operations<S: ClientStream>(conn: &mut Conn<S>, ex: &mut Exchange<'_>) -> Flow {
    let w = conn.w.clone();
    conn.deadline
        .begin_request(ex.start, w.config.timeouts[Layer::Quick], Layer::Quick);
    match ex.endpoint {
        Endpoint::Health => {
            // 503 until the whole process is up, so a health check never passes a relay
            // whose other workers are still starting.
            let newest = crate::reload::newest_published();
            let serving = newest.as_deref().map(Generation::serving);
            let (ready, body) = w.monitor.health(serving.as_ref());
            let status = if ready { 200 } else { 503 };
            respond(conn, ex, status, b"application/json", &body, &[]).await
        }
        Endpoint::Metrics => {
            let newest = crate::reload::newest_published();
            let serving = newest.as_deref().map(Generation::serving);
            let body = w.monitor.metrics_text(serving.as_ref());
            let ct = b"text/plain; version=0.0.4";
            respond(conn, ex, 200, ct, &body, &[]).await
        }
        _ => {
            let token = ex
                .head
                .api_key
                .and_then(|key| w.router.authenticate(key.of(&conn.rbuf)));
            let Some(token) = token else {
                let error = RelayError::invalid_api_key(ex.head.api_key.is_some());
                return super::own::answer_error(conn, ex, &error).await;
            };
            if let Err(error) = w.limits.check_expiry(token) {
                return super::own::answer_error(conn, ex, &error).await;
            }
            ex.token = Some(token);
            if ex.endpoint == Endpoint::Models {
                let body = w.router.models_body(token);
                return respond(conn, ex, 200, b"application/json", &body, &[]).await;
            }
            let path = ex.head.route_path(&conn.rbuf);
            let id = String::from_utf8_lossy(&path[b"/v1/models/".len()..]).into_owned();
            match w.router.model_body(token, &id) {
                Some(body) => respond(conn, ex, 200, b"application/json", &body, &[]).await,
                None => {
                    let error = RelayError::model_not_found(&id);
                    super::own::answer_error(conn, ex, &error).await
                }
            }
        }
    }
}

/// A CORS preflight from an allowed origin: 204 with what the browser may send.
pub async fn preflight<S: ClientStream>(conn: &mut Conn<S>, ex: &mut Exchange<'_>) -> Flow {
    let requested = ex
        .head
        .cors_request_headers
        .map(|s| s.of(&conn.rbuf).to_vec());
    let allow_headers: &[u8] = match &requested {
        Some(h) => h,
        None => b"authorization, content-type, x-api-key, x-request-id",
    };
    let extra: [(&[u8], &[u8]); 3] = [
        (
            b"access-control-allow-methods",
            b"GET, POST, DELETE, OPTIONS",
        ),
        (b"access-control-allow-headers", allow_headers),
        (b"access-control-max-age", b"600"),
    ];
    respond(conn, ex, 204, b"text/plain", b"", &extra).await
}

/// How the client's copy of an upstream body is delimited.
#[derive(Clone, Copy)]
pub enum ClientFraming {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Answer with the upstream's response. Returns the upstream connection when its response
/// ended clean, for `finish` to pool.
pub async fn relay<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    upstream: Upstream,
) -> Result<(Flow, Option<UpConn>), Halt> {
    let Upstream {
        conn: mut upconn,
        ubuf,
        channel,
        key,
    } = upstream;
    let w = conn.w.clone();
    let t = w.router.channels[channel].timeouts;
    match w.router.channels[channel].adapter.response_plan() {
        ResponsePlan::Passthrough => {}
    }
    if ex.resp.status >= 400 {
        return upstream_error(conn, ex, upconn, ubuf, channel, &t).await;
    }
    if let Some(how) = ex.converted {
        let (flow, clean) =
            super::convert::relay_converted(conn, ex, &mut upconn, ubuf, &t, how).await?;
        return Ok((flow, clean.then_some(upconn)));
    }
    if super::responses::creates_response(ex) {
        let events = ex.resp.event_stream;
        ex.responses = Some(Box::new(super::responses::ResponsesTrack::new(
            &w, ex, channel, key, events,
        )));
    }
    super::responses::forget_if_deleted(&w, ex, &conn.rbuf);
    let (flow, clean) = match ex.resp.body {
        BodyKind::None => relay_fixed(conn, ex, &mut upconn, ubuf, 0, channel, &t).await?,
        BodyKind::Length(n) => relay_fixed(conn, ex, &mut upconn, ubuf, n, channel, &t).await?,
        BodyKind::Chunked | BodyKind::UntilClose => {
            super::stream::relay_stream(conn, ex, &mut upconn, ubuf, channel, &t).await?
        }
    };
    Ok((flow, clean.then_some(upconn)))
}

/// The client response head for the upstream response in `resp` (header bytes in `ubuf`).
pub fn write_client_head<S: ClientStream>(
    conn: &Conn<S>,
    ex: &Exchange<'_>,
    out: &mut Vec<u8>,
    ubuf: &[u8],
    channel: usize,
    framing: ClientFraming,
    close: bool,
) {
    let head_start = out.len();
    let resp: &ResponseHead = ex.resp;
    let status = resp.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    wire::push_u64(out, status as u64);
    out.push(b' ');
    let reason = resp.reason.of(ubuf);
    if reason.is_empty() {
        out.extend_from_slice(wire::reason_phrase(status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    for h in &resp.headers {
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
    end_head(conn, ex, out, framing, close);
    // An upstream may echo the channel's key in a header; the client never sees it.
    conn.w.router.channels[channel].mask_keys(&mut out[head_start..]);
}

/// The end of every answer head the relay writes from an upstream's: the relay's request id,
/// CORS, the client framing, `connection: close` when the connection ends, the blank line.
pub(super) fn end_head<S: ClientStream>(
    conn: &Conn<S>,
    ex: &Exchange<'_>,
    out: &mut Vec<u8>,
    framing: ClientFraming,
    close: bool,
) {
    wire::write_header(out, b"x-request-id", ex.id);
    super::own::write_cors(conn, ex, out);
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
}

/// Usage the upstream reported in `data`, if any (each side a report carries replaces the
/// earlier reading: see [`provider::update_usage`]), and the answer text bytes in it, which
/// `finish` turns into an estimate if no report ever arrives. A `count_tokens` answer's
/// `input_tokens` is a count, not usage: that request costs nothing; nor does reading,
/// deleting or cancelling a stored response (the Responses API's id routes). A
/// `/v1/responses` answer is read by its [`ResponsesTrack`](super::responses::ResponsesTrack),
/// which also learns the response's id.
#[inline]
pub fn note_usage(w: &crate::context::Worker, ex: &mut Exchange<'_>, data: &[u8]) {
    if matches!(
        ex.endpoint,
        Endpoint::Relay(RelayKind::CountTokens | RelayKind::ResponseById)
    ) {
        ex.usage = Some(provider::Usage::default());
        return;
    }
    if let Some(track) = ex.responses.as_mut() {
        track.feed(w, data);
        ex.usage = track.usage();
        ex.content_bytes += provider::content_bytes(data);
        return;
    }
    ex.usage = provider::update_usage(ex.usage, data);
    ex.content_bytes += provider::content_bytes(data);
}

/// May a connection whose response just ended go back to the pool? Not when bytes followed
/// the response, and not when the read that ended it filled its buffer: a TLS session may
/// then hold more decrypted bytes that no socket check can see. Together with the pool's
/// check that a parked socket has nothing to read, nothing an upstream sent after a response
/// can reach another request.
#[inline]
pub fn ended_clean(extra: bool, last_read_filled: bool) -> bool {
    !extra && !last_read_filled
}

/// A Content-Length (or empty) upstream body: passed through byte for byte.
/// Ok((flow, upstream clean)).
async fn relay_fixed<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    upconn: &mut UpConn,
    mut ubuf: Vec<u8>,
    n: u64,
    channel: usize,
    t: &Timeouts,
) -> Result<(Flow, bool), Halt> {
    let hl = ex.resp.len;
    let have = (ubuf.len() - hl) as u64;
    let first = have.min(n) as usize;
    // Bytes past the body's end are the upstream's, not the next request's answer.
    let mut extra = have > n;
    let mut last_read_filled = ubuf.len() == ubuf.capacity();
    // Shutdown has begun: the answer says so, and the connection ends after it.
    ex.close |= conn.w.drain.is_draining();
    let close = !ex.keeps_alive();
    note_usage(&conn.w, ex, &ubuf[hl..hl + first]);
    let mut out = conn.w.bufs.take();
    write_client_head(
        conn,
        ex,
        &mut out,
        &ubuf,
        channel,
        ClientFraming::Length(n),
        close,
    );
    // No IO since the response head arrived (`forward` read the clock then).
    let now = conn.deadline.recent();
    ex.mark_first_byte(ex.resp.status, now);
    let mut remaining = n - first as u64;
    conn.deadline
        .arm_recent(Layer::ClientIdle, t[Layer::ClientIdle]);
    if out.len() + first <= out.capacity() {
        out.extend_from_slice(&ubuf[hl..hl + first]);
        let len = out.len();
        let out = write_client(conn, out, 0..len).await.map_err(halt)?;
        conn.w.bufs.give(out);
        ex.bytes_out += len as u64;
    } else {
        let len = out.len();
        let out = write_client(conn, out, 0..len).await.map_err(halt)?;
        conn.w.bufs.give(out);
        ubuf = write_client(conn, ubuf, hl..hl + first)
            .await
            .map_err(halt)?;
        ex.bytes_out += (len + first) as u64;
    }
    while remaining > 0 {
        conn.deadline.arm(Layer::StreamIdle, t[Layer::StreamIdle]);
        ubuf.clear();
        // The whole buffer, not just what is left of the body: a read that brings more than
        // the body shows the upstream sent something after it.
        let want = ubuf.capacity();
        match conn
            .deadline
            .race(upconn.stream.read(ubuf.slice_mut(0..want)))
            .await
        {
            Ok((Ok(k), b)) if k > 0 => {
                ubuf = b.into_inner();
                last_read_filled = k == want;
                if k as u64 > remaining {
                    extra = true;
                    ubuf.truncate(remaining as usize);
                }
                remaining -= ubuf.len() as u64;
            }
            // The upstream died mid-body; the client sees a short body and a close.
            Ok(_) => {
                ex.outcome = Outcome::UpstreamError;
                return Err(Halt::Close);
            }
            Err(layer) => {
                conn.w.stats().count_timeout(layer);
                ex.outcome = Outcome::Timeout(layer);
                return Err(Halt::Close);
            }
        }
        note_usage(&conn.w, ex, &ubuf);
        conn.deadline.arm(Layer::ClientIdle, t[Layer::ClientIdle]);
        let len = ubuf.len();
        ubuf = write_client(conn, ubuf, 0..len).await.map_err(halt)?;
        ex.bytes_out += len as u64;
    }
    conn.w.bufs.give(ubuf);
    ex.completed = true;
    let flow = if close { Flow::Close } else { Flow::Keep };
    Ok((
        flow,
        ex.resp.keep_alive && ended_clean(extra, last_read_filled),
    ))
}

/// A failed client write: the answer is cut, the connection closes.
pub fn halt(_: Flow) -> Halt {
    Halt::Close
}

/// An upstream non-2xx: read its body up to the cap, answer with the contract's error shape
/// (keeping status and Retry-After), and pool the connection only if fully drained.
///
/// An upstream 401/403 is the channel's key being refused, not the client's: it becomes a 502
/// `upstream_auth_failed` naming the channel, and the upstream's body (which may echo the key)
/// is never relayed. Any other body has the channel's keys masked.
async fn upstream_error<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    mut upconn: UpConn,
    mut ubuf: Vec<u8>,
    channel: usize,
    t: &Timeouts,
) -> Result<(Flow, Option<UpConn>), Halt> {
    let w = conn.w.clone();
    w.stats().count_upstream_error(ex.resp.status);
    let cap = w.config.server.max_error_body_bytes;
    let hl = ex.resp.len;
    let mut body: Vec<u8> = Vec::new();
    let mut complete = false;
    let mut extra = false;
    let mut last_read_filled = ubuf.len() == ubuf.capacity();
    let mut decoder = wire::ChunkedDecoder::new();
    let kind = ex.resp.body;
    let mut remaining = match kind {
        BodyKind::Length(n) => n,
        _ => u64::MAX,
    };
    let retry_after: Option<Vec<u8>> = ex.resp.retry_after.map(|s| s.of(&ubuf).to_vec());
    let status = ex.resp.status;
    let mut input = hl..ubuf.len();
    loop {
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
        conn.deadline.arm(Layer::StreamIdle, t[Layer::StreamIdle]);
        ubuf.clear();
        let c = ubuf.capacity();
        match conn
            .deadline
            .race(upconn.stream.read(ubuf.slice_mut(0..c)))
            .await
        {
            Ok((Ok(0), b)) => {
                ubuf = b.into_inner();
                complete = kind == BodyKind::UntilClose;
                break;
            }
            Ok((Ok(n), b)) => {
                ubuf = b.into_inner();
                last_read_filled = n == c;
                input = 0..n;
            }
            Ok((Err(_), b)) => {
                ubuf = b.into_inner();
                break;
            }
            Err(layer) => {
                w.stats().count_timeout(layer);
                ubuf = w.bufs.take();
                break;
            }
        }
    }
    let clean = complete
        && ex.resp.keep_alive
        && kind != BodyKind::UntilClose
        && ended_clean(extra, last_read_filled);
    w.bufs.give(ubuf);
    let ch = &w.router.channels[channel];
    {
        use crate::context::UpstreamFailure as F;
        if super::forward::key_refused(status) {
            w.upstream_warnings.warn(
                F::KeyRefused,
                &ch.cfg.name,
                &format!("the upstream refused the channel's key ({status})"),
            );
        } else if status >= 500 {
            w.upstream_warnings.warn(
                F::Status,
                &ch.cfg.name,
                &format!("the upstream answered {status}"),
            );
        }
    }
    let error = if super::forward::key_refused(status) {
        bump(&w.stats().upstream_auth_failed);
        RelayError::upstream_auth_failed(&ch.cfg.name, status)
    } else {
        ch.mask_keys(&mut body);
        ch.adapter
            .normalise_error(status, &body, !complete, retry_after)
    };
    let flow = super::own::answer_error(conn, ex, &error).await;
    Ok((flow, clean.then_some(upconn)))
}
