//! Phase 6, `finish`: the end of an exchange, on every path.
//!
//! Owns: releasing what the request held (the request's total deadline; the upstream
//! connection, pooled only when `respond` found its response ended clean), accounting (status
//! class, latency, time to first byte, usage per token and channel — estimated, and marked so,
//! when an upstream answered but its usage never arrived — and the access log line), the
//! settling of the request's usage against its token's quota (its reservation is given back
//! only after the usage is counted), and the keep-alive decision: the connection carries
//! another request only if
//! both sides allow it, and then the finished request's bytes leave the read buffer while
//! anything pipelined behind them stays.
//!
//! Must not: do IO — by the time an exchange finishes its answer is written or abandoned.

use crate::bufpool::BUF_SIZE;
use std::time::{Duration, SystemTime};

use crate::access_log::Line;
use crate::provider::Usage;
use crate::upstream::UpConn;

use super::exchange::{method_name, Exchange, Outcome};
use super::{Conn, Flow};
use crate::tls_server::ClientStream;

pub fn finish<S: ClientStream>(
    conn: &mut Conn<S>,
    mut ex: Exchange<'_>,
    flow: Flow,
    upstream: Option<UpConn>,
) -> Flow {
    conn.deadline.end_request();
    let w = &conn.w;
    if let Some(up) = upstream {
        w.upstreams.pool.put_back(up, conn.deadline.recent());
    }
    if !ex.completed && ex.outcome == Outcome::Ok {
        // Nothing else cut the answer short: the client went away.
        ex.outcome = Outcome::ClientGone;
    }
    if ex.usage.is_none() && ex.channel.is_some() && (200..300).contains(&ex.status_sent) {
        // An upstream answered but its usage never arrived (the client left, the stream was
        // cut, the upstream does not report it): account an estimate, marked as one.
        ex.usage = Some(Usage::estimate(ex.body.len() as u64, ex.content_bytes));
    }
    let s = w.stats();
    if ex.endpoint.is_counted() {
        s.count_status(ex.status_sent);
        let now = conn.deadline.now();
        let total = now - ex.start;
        s.latency_total.observe(total);
        if let Some(t) = ex.first_byte_at {
            s.latency_ttfb.observe(t - ex.start);
        }
        if let (Some(channel), Some(sent), Some(head)) =
            (ex.channel, ex.upstream_sent_at, ex.upstream_head_at)
        {
            s.observe_channel(w.router.channel_row(channel), head - sent, now - sent);
        }
        if let Some(log) = &w.access_log {
            log.append(|out| access_line(conn, &ex, total, out));
        }
    }
    if let (Some(token), Some(channel)) = (ex.token, ex.channel) {
        s.count_usage(
            w.router.token_row(token),
            w.router.channel_row(channel),
            ex.usage,
        );
    }
    w.limits.spend(ex.token, ex.usage);
    w.limits
        .settle(ex.token, conn.quota.take(), quota_charge(&ex));
    if flow == Flow::Close || !ex.keeps_alive() {
        return Flow::Close;
    }
    // Drop the finished request's bytes, keeping anything pipelined behind it.
    conn.watch.rearm();
    if conn.rbuf.capacity() == 0 {
        return Flow::Keep;
    }
    let consumed = ex.consumed.min(conn.rbuf.len());
    if conn.rbuf.capacity() > 4 * BUF_SIZE {
        // A large body grew this buffer; go back to a pool-sized one.
        let mut fresh = w.bufs.take();
        fresh.extend_from_slice(&conn.rbuf[consumed..]);
        conn.rbuf = fresh;
    } else {
        conn.rbuf.drain(..consumed);
    }
    Flow::Keep
}

/// What the request costs against its token's quota: its usage (as reported, or the estimate
/// made above when an upstream answered 2xx without reporting it); nothing when no upstream
/// answer reached the client (the relay's own error, an upstream error status).
fn quota_charge(ex: &Exchange<'_>) -> u64 {
    ex.usage
        .map_or(0, |u| u.prompt.saturating_add(u.completion))
}

/// The request's access-log line (see `access_log`).
fn access_line<S: ClientStream>(
    conn: &Conn<S>,
    ex: &Exchange<'_>,
    total: Duration,
    out: &mut Vec<u8>,
) {
    let router = &conn.w.router;
    let channel = ex.channel.map(|c| &router.channels[c].cfg);
    let model = (ex.model.is_some()).then_some(ex.model_name.as_str());
    // An SSE stream gives the read buffer back before it ends: a relayed endpoint names its
    // path itself.
    let path = match ex.endpoint.path() {
        Some(p) => p.as_bytes(),
        None if conn.rbuf.len() >= ex.head.len => ex.head.route_path(&conn.rbuf),
        None => b"",
    };
    Line {
        at: SystemTime::now(),
        request_id: ex.id,
        method: method_name(ex.head.method),
        path,
        token: ex.token.map(|t| router.token_cfgs[t].name.as_str()),
        channel: channel.map(|c| c.name.as_str()),
        model,
        upstream_model: channel.zip(model).map(|(c, m)| c.upstream_model(m)),
        status: ex.status_sent,
        outcome: ex.outcome.as_str(),
        attempts: ex.attempts,
        ttfb: ex.first_byte_at.map(|t| t - ex.start),
        total,
        prompt_tokens: ex.usage.map(|u| u.prompt),
        completion_tokens: ex.usage.map(|u| u.completion),
        cached_tokens: ex.usage.map(|u| u.cached),
        tokens_estimated: ex.usage.is_some_and(|u| u.estimated),
        bytes_in: (ex.head.len + ex.body.len()) as u64,
        bytes_out: ex.bytes_out,
    }
    .write(out);
}
