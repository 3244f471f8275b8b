//! Phase 4, `forward`: the attempt loop. For the next candidate channel: a connection (parked
//! or new), the upstream request (head, then the body as the adapter plans it), and the
//! upstream's response head.
//!
//! Owns: building the upstream request per channel (target, `Host`, the channel's key in
//! rotation, the client's end-to-end headers, one `x-request-id`), sending it under
//! `response_header`, and reading the response head — interim 1xx heads skipped (at most
//! [`MAX_INTERIM_RESPONSES`], parsed from what is already buffered before reading again),
//! ambiguous or malformed heads refused. A parked connection that turns out closed before any
//! response byte is retried once on a new one.
//!
//! Failover (`[retry]`): while `attempts` extra attempts remain and a candidate is left, a
//! failure that says it may go elsewhere (`RelayError::retryable`: connect or TLS failure, a
//! connect / TLS / response-header timeout, a malformed head), an upstream 401/403 (the
//! channel's key refused), or an upstream status in `on_status` sends the request to the next candidate — the body replayed from
//! memory, within the request's total deadline. The client gets the last channel's answer.
//!
//! Error handling: 502 / 504 as [`RelayError`]s, counted here; a client that left while the
//! relay waited is `Halt::Close`. Must not: write to the client.

use monoio::buf::{IoBuf, IoBufMut};

use crate::bufpool::BUF_SIZE;
use crate::config::Timeouts;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::monitor::bump;
use crate::provider::{self, RequestPlan};
use crate::route::Candidates;
use crate::upstream::{ConnectError, UpConn};
use crate::wire;

use super::exchange::{Exchange, Outcome};
use super::watch::{upstream_wait, Waited};
use super::{Conn, Halt};

/// Largest upstream response head accepted.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
/// Interim (1xx) responses skipped before an upstream is taken for broken. Real servers send
/// one or two (100 Continue, 103 Early Hints); an endless stream of them must not hold the
/// request until `response_header`.
const MAX_INTERIM_RESPONSES: usize = 8;
/// Bodies up to this size are copied behind the head so one write sends both.
const INLINE_BODY: usize = BUF_SIZE / 2;

/// An upstream whose response head is in `Exchange::resp`.
pub struct Upstream {
    pub conn: UpConn,
    /// Holds the response head and whatever body bytes came with it.
    pub ubuf: Vec<u8>,
    pub channel: usize,
}

/// How one attempt ended before a response head.
enum Failure {
    Error(RelayError),
    /// A parked connection died before any response byte: safe to retry once on a new one.
    Stale,
    ClientGone,
}

pub async fn forward(
    conn: &mut Conn,
    ex: &mut Exchange<'_>,
    candidates: &mut Candidates,
) -> Result<Upstream, Halt> {
    let w = conn.w.clone();
    let retry = &w.config.retry;
    let mut channel = candidates.next().expect("route found a candidate");
    loop {
        ex.attempts += 1;
        ex.channel = Some(channel);
        // Failover: another channel may be tried while attempts remain and one is left. No
        // response byte has reached the client yet: this phase never writes to it.
        let mut rest = *candidates;
        let next = rest.next().filter(|_| ex.attempts <= retry.attempts);
        let result = attempt(conn, ex, channel).await;
        let failed_over = match &result {
            Ok(_) if next.is_some() && key_refused(ex.resp.status) => {
                // The channel's key was refused, not the client's: another channel may serve.
                w.stats().count_upstream_error(ex.resp.status);
                bump(&w.stats().upstream_auth_failed);
                true
            }
            Ok(_) if next.is_some() && retry.retries_status(ex.resp.status) => {
                // The last channel's error is what the client gets; this one's is dropped
                // with its connection (not drained: it is never pooled).
                w.stats().count_upstream_error(ex.resp.status);
                true
            }
            Err(Halt::Answer(e)) => e.retryable && next.is_some(),
            _ => false,
        };
        w.stats()
            .count_attempt(channel, failed_over || result.is_err());
        warn_failure(&w, channel, ex.resp.status, &result, failed_over);
        if !failed_over {
            return result;
        }
        if let Ok(up) = result {
            w.bufs.give(up.ubuf);
            drop(up.conn);
        }
        channel = candidates.next().expect("checked above");
    }
}

/// One channel: build its request, get a connection, send, await the head. A parked
/// connection found closed before any response byte is retried once on a new one.
async fn attempt(conn: &mut Conn, ex: &mut Exchange<'_>, channel: usize) -> Result<Upstream, Halt> {
    let w = conn.w.clone();
    let ch = &w.router.channels[channel];
    let t = ch.timeouts;
    let (mut req, separate_body) = build_request(conn, ex, channel);
    let mut stale_retried = false;
    loop {
        let upconn = match w.upstreams.checkout(channel, conn.deadline.recent()) {
            Some(c) => c,
            None => match w.upstreams.connect(ch, channel, &conn.deadline).await {
                Ok(c) => c,
                Err(e) => {
                    w.bufs.give(req);
                    return Err(connect_failed(conn, e).into());
                }
            },
        };
        let reused = upconn.reused;
        let (result, req_back) =
            send_and_await_head(conn, ex, upconn, req, separate_body, &t).await;
        match result {
            Ok((upconn, ubuf)) => {
                if let Some(b) = req_back {
                    w.bufs.give(b);
                }
                return Ok(Upstream {
                    conn: upconn,
                    ubuf,
                    channel,
                });
            }
            Err(Failure::Stale) if reused && !stale_retried && req_back.is_some() => {
                stale_retried = true;
                req = req_back.unwrap_or_default();
            }
            Err(f) => {
                if let Some(b) = req_back {
                    w.bufs.give(b);
                }
                return Err(match f {
                    Failure::Error(e) => e.into(),
                    Failure::Stale => RelayError::bad_upstream_response(
                        "upstream closed the connection before responding",
                    )
                    .into(),
                    Failure::ClientGone => {
                        bump(&w.stats().client_gone);
                        ex.outcome = Outcome::ClientGone;
                        Halt::Close
                    }
                });
            }
        }
    }
}

/// The upstream request for `channel`: its head, with the body behind it when small enough
/// for one write (else the body goes in a second write, straight from the read buffer, which
/// is why it can be replayed to another channel). Returns whether the body goes separately.
fn build_request(conn: &Conn, ex: &Exchange<'_>, channel: usize) -> (Vec<u8>, bool) {
    let w = &conn.w;
    let ch = &w.router.channels[channel];
    let mut req = w.bufs.take();
    let body = &conn.rbuf[ex.body.clone()];
    let field = ex.model.clone().expect("route found the model");
    let model = provider::model_name(body, &field).expect("route read the model");
    let plan = ch
        .adapter
        .request_plan(&model, ch.cfg.upstream_model(&model));
    let separate_body = match plan {
        RequestPlan::Passthrough => {
            let inline = body.len() <= INLINE_BODY;
            write_upstream_head(conn, ex, channel, &mut req, body.len());
            if inline {
                req.extend_from_slice(body);
            }
            !inline
        }
        RequestPlan::SpliceModel(name) => {
            let mut escaped = Vec::with_capacity(name.len() + 2);
            crate::error::json_string(&mut escaped, name);
            let name = &escaped[1..escaped.len() - 1];
            let at = field.span.clone();
            write_upstream_head(
                conn,
                ex,
                channel,
                &mut req,
                body.len() - at.len() + name.len(),
            );
            req.extend_from_slice(&body[..at.start]);
            req.extend_from_slice(name);
            req.extend_from_slice(&body[at.end..]);
            false
        }
    };
    (req, separate_body)
}

/// The WARN line (rate-limited per class) for an attempt that failed on the upstream's side.
fn warn_failure(
    w: &crate::context::Worker,
    channel: usize,
    status: u16,
    result: &Result<Upstream, Halt>,
    failed_over: bool,
) {
    use crate::context::UpstreamFailure as F;
    let name = &w.router.channels[channel].cfg.name;
    let then = if failed_over {
        "; trying the next channel"
    } else {
        ""
    };
    match result {
        Err(Halt::Answer(e)) if e.upstream => {
            let class = match (e.layer, &*e.code) {
                (Some(_), _) => F::Timeout,
                (None, "upstream_connect_failed") => F::Connect,
                _ => F::BadResponse,
            };
            w.upstream_warnings
                .warn(class, name, &format!("{} ({}){then}", e.message, e.code));
        }
        Ok(_) if failed_over && key_refused(status) => w.upstream_warnings.warn(
            F::KeyRefused,
            name,
            &format!("the upstream refused the channel's key ({status}){then}"),
        ),
        Ok(_) if failed_over => w.upstream_warnings.warn(
            F::Status,
            name,
            &format!("the upstream answered {status}{then}"),
        ),
        _ => {}
    }
}

/// An upstream 401/403 refuses the channel's key (`respond` answers it as a 502
/// `upstream_auth_failed` when no other channel is left).
pub fn key_refused(status: u16) -> bool {
    status == 401 || status == 403
}

fn connect_failed(conn: &Conn, e: ConnectError) -> RelayError {
    let s = conn.w.stats();
    bump(&s.upstream_connect_failed);
    match e {
        ConnectError::Failed(msg) => RelayError::upstream_connect_failed(msg),
        ConnectError::Timeout(_) if conn.deadline.drain_ended() => {
            conn.w.drain.note_ended();
            RelayError::shutting_down()
        }
        ConnectError::Timeout(layer) => {
            s.count_timeout(layer);
            RelayError::timeout(layer)
        }
    }
}

fn write_upstream_head(
    conn: &Conn,
    ex: &Exchange<'_>,
    channel: usize,
    out: &mut Vec<u8>,
    body_len: usize,
) {
    let w = &conn.w;
    let ch = &w.router.channels[channel];
    let buf = &conn.rbuf;
    out.extend_from_slice(b"POST ");
    ch.adapter
        .write_target(out, ch.cfg.path_prefix.as_bytes(), ex.head.path.of(buf));
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(&ch.host_header);
    out.extend_from_slice(b"\r\n");
    let key = w.upstreams.channel(channel).next_key(ch.auth_lines.len());
    out.extend_from_slice(&ch.auth_lines[key]);
    out.extend_from_slice(b"Content-Length: ");
    wire::push_u64(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
    for h in &ex.head.headers {
        let name = h.name.of(buf);
        if ex.head.is_hop_or_replaced(buf, name) {
            continue;
        }
        wire::write_header(out, name, h.value.of(buf));
    }
    // Always exactly one: a refused client value was skipped with the replaced headers.
    wire::write_header(out, b"x-request-id", ex.id);
    out.extend_from_slice(b"\r\n");
}

/// Send the request and read the response head into `ex.resp`.
/// Returns the request buffer when it came back from the kernel, so a stale parked
/// connection can be retried.
async fn send_and_await_head(
    conn: &mut Conn,
    ex: &mut Exchange<'_>,
    mut upconn: UpConn,
    req: Vec<u8>,
    separate_body: bool,
    t: &Timeouts,
) -> (Result<(UpConn, Vec<u8>), Failure>, Option<Vec<u8>>) {
    let reused = upconn.reused;
    let stale_or = |received: bool, msg: String| {
        if reused && !received {
            Failure::Stale
        } else {
            Failure::Error(RelayError::bad_upstream_response(msg))
        }
    };
    // Sending is bounded by the response_header layer: an upstream that does not read its
    // request is as stuck as one that does not answer.
    conn.deadline
        .arm(Layer::ResponseHeader, t[Layer::ResponseHeader]);
    let (r, req) = match conn.deadline.race(upconn.stream.write_all(req)).await {
        Ok(done) => done,
        Err(layer) => return (Err(timeout(conn, layer)), None),
    };
    if let Err(e) = r {
        let msg = format!("sending to upstream failed: {e}");
        return (Err(stale_or(false, msg)), Some(req));
    }
    if separate_body {
        let rbuf = std::mem::take(&mut conn.rbuf);
        let sent = conn
            .deadline
            .race(upconn.stream.write_all(rbuf.slice(ex.body.clone())))
            .await;
        let (r, slice) = match sent {
            Ok(done) => done,
            Err(layer) => return (Err(timeout(conn, layer)), Some(req)),
        };
        conn.rbuf = slice.into_inner();
        if let Err(e) = r {
            let msg = format!("sending to upstream failed: {e}");
            return (Err(stale_or(false, msg)), Some(req));
        }
    }
    let mut ubuf = conn.w.bufs.take();
    let mut received = false;
    let mut interim = 0;
    loop {
        // Parse what is already here first: a 1xx and the final head often share a read.
        if !ubuf.is_empty() {
            match wire::parse_response(&ubuf, ex.resp, false) {
                Ok(true) if ex.resp.status == 101 => {
                    // Nothing here asks for an upgrade: whatever follows is not HTTP.
                    return (
                        Err(bad_response(
                            conn,
                            "upstream switched protocols (101) without being asked".into(),
                        )),
                        Some(req),
                    );
                }
                Ok(true) if ex.resp.status < 200 => {
                    // An interim response (100 Continue, 103 Early Hints): skip it. An
                    // upstream that sends nothing else is cut off after a few.
                    interim += 1;
                    if interim > MAX_INTERIM_RESPONSES {
                        let msg = format!(
                            "upstream sent more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
                        );
                        return (Err(bad_response(conn, msg)), Some(req));
                    }
                    ubuf.drain(..ex.resp.len);
                    continue;
                }
                Ok(true) => return (Ok((upconn, ubuf)), Some(req)),
                Ok(false) => {}
                Err(e) => {
                    let msg = format!("malformed upstream response head: {}", e.message());
                    return (Err(bad_response(conn, msg)), Some(req));
                }
            }
        }
        let (len, cap) = (ubuf.len(), ubuf.capacity());
        if len == cap {
            if cap >= MAX_UPSTREAM_HEAD {
                let msg = "upstream response head too large".to_string();
                return (Err(bad_response(conn, msg)), Some(req));
            }
            ubuf.reserve(cap);
        }
        let cap = ubuf.capacity();
        let read = upconn.stream.read(ubuf.slice_mut(len..cap));
        let (r, b) = match upstream_wait(read, &conn.deadline, &conn.client, &mut conn.watch).await
        {
            Waited::Done(r) => r,
            Waited::Timeout(layer) => return (Err(timeout(conn, layer)), Some(req)),
            Waited::ClientGone => return (Err(Failure::ClientGone), Some(req)),
        };
        ubuf = b.into_inner();
        match r {
            Ok(0) if !received => {
                let msg = "upstream closed the connection before responding".to_string();
                return (Err(stale_or(false, msg)), Some(req));
            }
            Ok(0) => {
                let msg = "upstream closed the connection mid-head".to_string();
                return (Err(stale_or(true, msg)), Some(req));
            }
            Ok(_) => received = true,
            Err(e) => {
                let msg = format!("upstream connection failed: {e}");
                return (Err(stale_or(received, msg)), Some(req));
            }
        }
    }
}

fn timeout(conn: &Conn, layer: Layer) -> Failure {
    if conn.deadline.drain_ended() {
        // Shutdown's drain ran out, not the upstream's time: no failover, no timeout counted.
        conn.w.drain.note_ended();
        return Failure::Error(RelayError::shutting_down());
    }
    conn.w.stats().count_timeout(layer);
    Failure::Error(RelayError::timeout(layer))
}

fn bad_response(conn: &Conn, msg: String) -> Failure {
    bump(&conn.w.stats().upstream_bad_response);
    Failure::Error(RelayError::bad_upstream_response(msg))
}
