//! Phase 4, `forward`: the attempt loop. For the next candidate channel: a connection (parked
//! or new), the upstream request (head, then the body as the adapter plans it), and the
//! upstream's response head.
//!
//! Owns: building the upstream request per channel (the client's method — POST, or GET /
//! DELETE for the Responses API's id routes —, target, `Host`, the channel's key in rotation or
//! the key an id route is pinned to, the client's end-to-end headers, one `x-request-id`; for a
//! channel of the other dialect the body converted, to that dialect's path, decided anew for
//! each attempt and recorded in `Exchange::converted`), sending it under
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
//! Channel health (`crate::health`): each attempt's verdict is recorded — an answer clears the
//! channel's failure count (and ends its probe well), a channel failure (the triggers above
//! bar the 401/403) counts towards a cooldown (or cools it again after a failed probe, with
//! the upstream's `Retry-After`), and a refused key (401/403, or `invalid_api_key`,
//! `insufficient_quota`, `account_deactivated` in the first [`ERROR_PEEK`] bytes of a 4xx
//! body, read under the deadline already running and left in the buffer for `respond`) is
//! taken out of rotation. A refused key is retried with the channel's next key (never for a
//! pinned key: another key is another account) without
//! counting against `attempts` (at most one retry per key, [`MAX_KEY_RETRIES`] at most); a
//! candidate that went into cooldown since routing, or whose probe another request holds, is
//! passed over.
//!
//! Error handling: 502 / 504 as [`RelayError`]s, counted here; a client that left while the
//! relay waited is `Halt::Close`. Must not: write to the client.

use monoio::buf::{IoBuf, IoBufMut};

use crate::bufpool::BUF_SIZE;
use crate::config::Timeouts;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::health::{Health, KeyCode, Pass, Reason};
use crate::monitor::bump;
use crate::provider::{self, RequestPlan};
use crate::route::Candidates;
use crate::upstream::{ConnectError, UpConn};
use crate::wire;

use super::exchange::{Endpoint, Exchange, Outcome, RelayKind};
use super::watch::{upstream_wait, Waited};
use super::{Conn, Halt};
use crate::tls_server::ClientStream;

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
    /// The index of the channel's key the request carried.
    pub key: usize,
}

/// How one attempt ended before a response head.
enum Failure {
    Error(RelayError),
    /// A parked connection died before any response byte: safe to retry once on a new one.
    Stale,
    ClientGone,
}

pub async fn forward<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    candidates: &mut Candidates,
) -> Result<Upstream, Halt> {
    let w = conn.w.clone();
    let retry = &w.config.retry;
    let health = &*w.router.health;
    let Some((mut channel, mut pass)) = admitted_candidate(health, candidates) else {
        // Every candidate went into cooldown (or lost its probe) since routing lined it up.
        return Err(no_healthy_channel(conn, ex).into());
    };
    // Retries with another key of the same channel: they do not count against `attempts`
    // (the channel was never tried with a working key), and each takes a key out, so there
    // are at most as many as the channel has keys — and never more than this.
    let mut key_retries: u32 = 0;
    loop {
        ex.attempts += 1;
        ex.channel = Some(channel);
        // The channel's latency is this attempt's: none until it sends and hears back.
        ex.upstream_sent_at = None;
        ex.upstream_head_at = None;
        let (mut result, key) = attempt(conn, ex, channel).await;
        if health.enabled() {
            if let Ok(up) = &mut result {
                if let Err(e) = read_error_start(conn, ex, up).await {
                    if let Ok(up) = std::mem::replace(&mut result, Err(e.into())) {
                        w.bufs.give(up.ubuf);
                    }
                }
            }
        }
        let verdict = judge(conn, ex, &result, retry);
        let channels_tried = ex.attempts - key_retries;
        let may_fail_over = channels_tried <= retry.attempts;
        // Record the verdict in the shared health, and choose where the request goes next.
        let next = match verdict {
            Verdict::Answer => {
                health.success(channel, &mut pass);
                health.key_ok(channel, key);
                None
            }
            Verdict::Neutral => None,
            Verdict::ChannelFailure(reason, retry_after) => {
                health.failure(channel, reason, retry_after, &mut pass);
                may_fail_over
                    .then(|| admitted_candidate(health, candidates))
                    .flatten()
            }
            Verdict::KeyRefused(reason) => {
                let keys_left = health.disable_key(channel, key, reason);
                // A pinned key (a Responses API id route) is the only key that holds the
                // response: another key of the channel is another account.
                if keys_left && key_retries < MAX_KEY_RETRIES && ex.pinned.is_none() {
                    key_retries += 1;
                    Some((channel, std::mem::replace(&mut pass, Pass::Open)))
                } else {
                    may_fail_over
                        .then(|| admitted_candidate(health, candidates))
                        .flatten()
                }
            }
        };
        let failed_over = next.is_some();
        if failed_over && result.is_ok() {
            // The last channel's error is what the client gets; this one's is dropped with
            // its connection (not drained: it is never pooled).
            w.stats().count_upstream_error(ex.resp.status);
            if let Verdict::KeyRefused(_) = verdict {
                if key_refused(ex.resp.status) {
                    bump(&w.stats().upstream_auth_failed);
                }
            }
        }
        w.stats().count_attempt(
            w.router.channel_row(channel),
            failed_over || result.is_err(),
        );
        warn_failure(&w, channel, ex.resp.status, &result, failed_over);
        let Some((next_channel, next_pass)) = next else {
            return result;
        };
        if let Ok(up) = result {
            w.bufs.give(up.ubuf);
            drop(up.conn);
        }
        (channel, pass) = (next_channel, next_pass);
    }
}

/// At most this many retries of one request with another key of the same channel.
const MAX_KEY_RETRIES: u32 = 8;
/// How much of an upstream 4xx error body is read ahead to see whether it refuses the key
/// (`insufficient_quota` comes with a 429, `account_deactivated` with a 401 or 403).
const ERROR_PEEK: usize = 4096;

/// How an attempt ended, for channel health and failover.
enum Verdict {
    /// An answer from a working channel and key (a success, or an error that is the
    /// request's own, such as a 400): relayed.
    Answer,
    /// Says nothing about the channel (the client left, the request's own time ran out).
    Neutral,
    /// The channel failed: connect or TLS failure, a timeout before the head, a malformed
    /// head, a status in `on_status` (with its `Retry-After` in seconds).
    ChannelFailure(Reason, Option<u64>),
    /// The upstream refused the channel's key (401/403, or an error code naming the key's
    /// account): the key goes out of rotation, the request may go on with another key.
    KeyRefused(Reason),
}

fn judge<S: ClientStream>(
    conn: &Conn<S>,
    ex: &Exchange<'_>,
    result: &Result<Upstream, Halt>,
    retry: &crate::config::RetryConfig,
) -> Verdict {
    match result {
        Ok(up) => {
            let status = ex.resp.status;
            let code = ((400..500).contains(&status) && conn.w.router.health.enabled())
                .then(|| KeyCode::find(&up.ubuf[ex.resp.len.min(up.ubuf.len())..]))
                .flatten();
            if let Some(code) = code {
                Verdict::KeyRefused(Reason::KeyCode(code, status))
            } else if key_refused(status) {
                Verdict::KeyRefused(Reason::Status(status))
            } else if retry.retries_status(status) {
                let retry_after = ex.resp.retry_after.and_then(|s| {
                    std::str::from_utf8(s.of(&up.ubuf))
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
                Verdict::ChannelFailure(Reason::Status(status), retry_after)
            } else {
                Verdict::Answer
            }
        }
        Err(Halt::Answer(e)) if e.upstream && e.retryable => {
            let reason = match (e.layer, &*e.code) {
                (Some(layer), _) => Reason::Timeout(layer),
                (None, "upstream_connect_failed") => Reason::ConnectFailed,
                _ => Reason::BadResponse,
            };
            Verdict::ChannelFailure(reason, None)
        }
        Err(_) => Verdict::Neutral,
    }
}

/// The next candidate this request may try now, with its health pass; candidates that went
/// into cooldown since routing, or whose probe another request took, are passed over.
fn admitted_candidate(health: &Health, candidates: &mut Candidates) -> Option<(usize, Pass)> {
    for channel in candidates.by_ref() {
        match health.enter(channel) {
            Pass::Skip => continue,
            pass => return Some((channel, pass)),
        }
    }
    None
}

/// Every candidate is cooling down: the Retry-After is the shortest wait among the channels
/// that could serve this request (a cooling channel of a provider the endpoint cannot use says
/// nothing about when this request may succeed).
fn no_healthy_channel<S: ClientStream>(conn: &Conn<S>, ex: &Exchange<'_>) -> RelayError {
    let w = &conn.w;
    if let Some((channel, _)) = ex.pinned {
        // A Responses API id route: the one channel that holds the response is cooling down.
        let mut e =
            RelayError::no_healthy_channel("", w.router.health.wait_secs(std::iter::once(channel)));
        e.message = format!(
            "the channel '{}' that holds this response is cooling down after failures; try again later",
            w.router.channels[channel].cfg.name
        )
        .into();
        return e;
    }
    let channels = &w.router.channels;
    let serving = (0..channels.len()).filter(|&i| {
        let c = &channels[i].cfg;
        let usable = match ex.endpoint {
            // As `route` lines them up: `/v1/responses` only on channels with the API.
            Endpoint::Relay(kind) => {
                kind.served_by(c.provider) && (kind != RelayKind::Responses || c.responses)
            }
            _ => true,
        };
        usable && c.serves(ex.model_name)
    });
    RelayError::no_healthy_channel(ex.model_name, w.router.health.wait_secs(serving))
}

/// For an upstream 4xx, read the start of its error body (up to [`ERROR_PEEK`] bytes, within
/// the buffer and the deadline already running) behind the head in `up.ubuf`, so [`judge`]
/// can see whether it refuses the key. `respond` goes on from what is buffered, so nothing is
/// read twice. A read error or the upstream's close ends the peek early (respond sees it too);
/// the deadline expiring is the attempt's timeout.
async fn read_error_start<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &Exchange<'_>,
    up: &mut Upstream,
) -> Result<(), RelayError> {
    if !(400..500).contains(&ex.resp.status) || key_refused(ex.resp.status) {
        return Ok(());
    }
    let head = ex.resp.len;
    let want = match ex.resp.body {
        wire::BodyKind::None => return Ok(()),
        wire::BodyKind::Length(n) => (n.min(ERROR_PEEK as u64)) as usize,
        wire::BodyKind::Chunked | wire::BodyKind::UntilClose => ERROR_PEEK,
    };
    loop {
        let have = up.ubuf.len() - head;
        let (len, cap) = (up.ubuf.len(), up.ubuf.capacity());
        let chunked_end =
            ex.resp.body == wire::BodyKind::Chunked && up.ubuf[head..].ends_with(b"0\r\n\r\n");
        if have >= want || len == cap || chunked_end {
            return Ok(());
        }
        let ubuf = std::mem::take(&mut up.ubuf);
        let read = up.conn.stream.read(ubuf.slice_mut(len..cap));
        match conn.deadline.race(read).await {
            Ok((r, b)) => {
                up.ubuf = b.into_inner();
                match r {
                    Ok(n) if n > 0 => {}
                    _ => return Ok(()),
                }
            }
            Err(layer) => {
                // The buffer went with the cancelled read.
                up.ubuf = conn.w.bufs.take();
                conn.w.stats().count_timeout(layer);
                return Err(RelayError::timeout(layer));
            }
        }
    }
}

/// One channel: build its request, get a connection, send, await the head. A parked
/// connection found closed before any response byte is retried once on a new one. Returns
/// the index of the key the request carried, too.
async fn attempt<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    channel: usize,
) -> (Result<Upstream, Halt>, usize) {
    let w = conn.w.clone();
    let (req, separate_body) = match build_request(conn, ex, channel) {
        Ok(built) => built,
        // The client's body cannot be converted for this channel: its 400, no failover.
        Err(e) => return (Err(e.into()), w.upstreams.channel(channel).last_key()),
    };
    // Read before the first await: other requests of this worker pick keys meanwhile.
    let key = match ex.pinned {
        Some((_, key)) => key,
        None => w.upstreams.channel(channel).last_key(),
    };
    let mut result = send_attempt(conn, ex, channel, req, separate_body).await;
    if let Ok(up) = &mut result {
        up.key = key;
    }
    (result, key)
}

async fn send_attempt<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    channel: usize,
    mut req: Vec<u8>,
    separate_body: bool,
) -> Result<Upstream, Halt> {
    let w = conn.w.clone();
    let ch = &w.router.channels[channel];
    let t = ch.timeouts;
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
                    key: 0,
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
///
/// A body the adapter plans to edit (a `model_map` rename, the `stream_options` splice that
/// asks for a stream's usage, or both) is written whole behind the head with its edits; the
/// read buffer keeps the client's body as it came, for a replay to another channel.
///
/// A channel of the other dialect gets the body converted ([`provider::Conversion`]), whole
/// behind the head, sent to the converted endpoint's path; `ex.converted` tells `respond` to
/// convert the answer back. It is set (or cleared) for every attempt, so failover across
/// providers converts for each channel tried.
fn build_request<S: ClientStream>(
    conn: &Conn<S>,
    ex: &mut Exchange<'_>,
    channel: usize,
) -> Result<(Vec<u8>, bool), RelayError> {
    let w = &conn.w;
    let ch = &w.router.channels[channel];
    let body = &conn.rbuf[ex.body.clone()];
    ex.converted = None;
    // A request without a model (a Responses API id route) goes byte for byte.
    let field = ex.model.clone();
    let model = match &field {
        Some(field) => provider::model_name(body, field).expect("route read the model"),
        None => std::borrow::Cow::Borrowed(""),
    };
    let client_dialect = match ex.endpoint {
        Endpoint::Relay(kind) => kind.provider(),
        _ => ch.cfg.provider,
    };
    let conversion = provider::Conversion::between(client_dialect, ch.cfg.provider);
    if let Some(conversion) = conversion.filter(|_| field.is_some()) {
        let (converted, how) = conversion.request(
            body,
            ch.cfg.upstream_model(&model),
            ch.cfg.default_max_tokens,
        )?;
        let mut req = w.bufs.take();
        write_upstream_head(
            conn,
            ex,
            channel,
            &mut req,
            converted.len(),
            Some(conversion.upstream_path()),
        );
        req.extend_from_slice(&converted);
        ex.converted = Some(how);
        return Ok((req, false));
    }
    let mut req = w.bufs.take();
    let plan = match field {
        Some(_) => ch
            .adapter
            .request_plan(&model, ch.cfg.upstream_model(&model), ex.usage_splice),
        None => RequestPlan::Passthrough,
    };
    let separate_body = match plan {
        RequestPlan::Passthrough => {
            let inline = body.len() <= INLINE_BODY;
            write_upstream_head(conn, ex, channel, &mut req, body.len(), None);
            if inline {
                req.extend_from_slice(body);
            }
            !inline
        }
        RequestPlan::Splice { model, usage } => {
            // A name that needs no JSON escaping (any sensible one) is spliced as it is,
            // without an allocation.
            let escaped;
            let name: Option<&[u8]> = match model {
                Some(name) if name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) => {
                    let mut quoted = Vec::with_capacity(name.len() + 2);
                    crate::error::json_string(&mut quoted, name);
                    escaped = quoted;
                    Some(&escaped[1..escaped.len() - 1])
                }
                Some(name) => Some(name.as_bytes()),
                None => None,
            };
            let mut edits: [(std::ops::Range<usize>, &[u8]); 2] = [(0..0, b""), (0..0, b"")];
            let mut n = 0;
            if let (Some(name), Some(field)) = (name, &field) {
                edits[n] = (field.span.clone(), name);
                n += 1;
            }
            if let Some(splice) = usage {
                edits[n] = (splice.start..splice.end, splice.with);
                n += 1;
            }
            let edits = &mut edits[..n];
            write_upstream_head(
                conn,
                ex,
                channel,
                &mut req,
                provider::edited_len(body, edits),
                None,
            );
            provider::write_edited(&mut req, body, edits);
            false
        }
    };
    Ok((req, separate_body))
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

fn connect_failed<S: ClientStream>(conn: &Conn<S>, e: ConnectError) -> RelayError {
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

fn write_upstream_head<S: ClientStream>(
    conn: &Conn<S>,
    ex: &Exchange<'_>,
    channel: usize,
    out: &mut Vec<u8>,
    body_len: usize,
    converted_path: Option<&[u8]>,
) {
    let w = &conn.w;
    let ch = &w.router.channels[channel];
    let buf = &conn.rbuf;
    // Every relayed endpoint is a POST but the Responses API's id routes (GET, DELETE).
    let method = ex.head.method;
    out.extend_from_slice(super::exchange::method_name(method).as_bytes());
    out.push(b' ');
    let path = converted_path.unwrap_or_else(|| ex.head.path.of(buf));
    ch.adapter
        .write_target(out, ch.cfg.path_prefix.as_bytes(), path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(&ch.host_header);
    out.extend_from_slice(b"\r\n");
    let key = match ex.pinned {
        Some((_, key)) if key < ch.auth_lines.len() => key,
        _ => w.upstreams.channel(channel).next_key(ch.auth_lines.len()),
    };
    out.extend_from_slice(&ch.auth_lines[key]);
    // A GET or DELETE without a body says nothing of one (RFC 9110 8.6).
    if method == wire::Method::Post || body_len > 0 {
        out.extend_from_slice(b"Content-Length: ");
        wire::push_u64(out, body_len as u64);
        out.extend_from_slice(b"\r\n");
    }
    // The adapter's default (Anthropic's `anthropic-version`) goes only when the client sent
    // none: the client's own version and `anthropic-beta` pass through like any header.
    let default_name = ch.adapter.default_header_name();
    let mut client_sent_default = false;
    for h in &ex.head.headers {
        let name = h.name.of(buf);
        if ex.head.is_hop_or_replaced(buf, name) {
            continue;
        }
        // An Anthropic client's `anthropic-version` / `anthropic-beta` mean nothing to the
        // OpenAI-compatible API its converted request goes to.
        if converted_path.is_some()
            && ch.cfg.provider == crate::config::Provider::OpenAi
            && name.len() > 10
            && name[..10].eq_ignore_ascii_case(b"anthropic-")
        {
            continue;
        }
        client_sent_default |= !default_name.is_empty() && name.eq_ignore_ascii_case(default_name);
        wire::write_header(out, name, h.value.of(buf));
    }
    if let Some(line) = ch
        .default_header_line
        .as_ref()
        .filter(|_| !client_sent_default)
    {
        out.extend_from_slice(line);
    }
    // Always exactly one: a refused client value was skipped with the replaced headers.
    wire::write_header(out, b"x-request-id", ex.id);
    out.extend_from_slice(b"\r\n");
}

/// Send the request and read the response head into `ex.resp`.
/// Returns the request buffer when it came back from the kernel, so a stale parked
/// connection can be retried.
async fn send_and_await_head<S: ClientStream>(
    conn: &mut Conn<S>,
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
    // `arm` just read the clock: the moment the request goes upstream.
    ex.upstream_sent_at = Some(conn.deadline.recent());
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
                Ok(true) => {
                    // The response head's arrival; `respond` takes its first-byte time from
                    // this reading, so the clock is read no more often than before.
                    ex.upstream_head_at = Some(conn.deadline.now());
                    return (Ok((upconn, ubuf)), Some(req));
                }
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
        let (r, b) =
            match upstream_wait(read, &conn.deadline, &mut conn.client, &mut conn.watch).await {
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

fn timeout<S: ClientStream>(conn: &Conn<S>, layer: Layer) -> Failure {
    if conn.deadline.drain_ended() {
        // Shutdown's drain ran out, not the upstream's time: no failover, no timeout counted.
        conn.w.drain.note_ended();
        return Failure::Error(RelayError::shutting_down());
    }
    conn.w.stats().count_timeout(layer);
    Failure::Error(RelayError::timeout(layer))
}

fn bad_response<S: ClientStream>(conn: &Conn<S>, msg: String) -> Failure {
    bump(&conn.w.stats().upstream_bad_response);
    Failure::Error(RelayError::bad_upstream_response(msg))
}
