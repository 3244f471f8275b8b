//! Phase 6, `finish`: the end of an exchange, on every path.
//!
//! Owns: releasing what the request held (the request's total deadline; the upstream
//! connection, pooled only when `respond` found its response ended clean), accounting (status
//! class, latency, time to first byte, usage per token and channel — the access log will be
//! written here), and the keep-alive decision: the connection carries another request only if
//! both sides allow it, and then the finished request's bytes leave the read buffer while
//! anything pipelined behind them stays.
//!
//! Must not: do IO — by the time an exchange finishes its answer is written or abandoned.

use crate::bufpool::BUF_SIZE;
use crate::upstream::UpConn;

use super::exchange::Exchange;
use super::{Conn, Flow};

pub fn finish(conn: &mut Conn, ex: Exchange<'_>, flow: Flow, upstream: Option<UpConn>) -> Flow {
    conn.deadline.end_request();
    let w = &conn.w;
    if let Some(up) = upstream {
        w.upstreams.pool.put_back(up, conn.deadline.recent());
    }
    let s = w.stats();
    if ex.endpoint.is_counted() {
        s.count_status(ex.status_sent);
        let now = conn.deadline.now();
        s.latency_total.observe(now - ex.start);
        if let Some(t) = ex.first_byte_at {
            s.latency_ttfb.observe(t - ex.start);
        }
    }
    if let (Some(token), Some(channel)) = (ex.token, ex.channel) {
        s.count_usage(token, channel, ex.usage);
    }
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
