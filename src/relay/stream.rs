//! Streamed answers (part of `respond`): a chunked or close-delimited upstream body,
//! re-framed chunk by chunk as it arrives, so the relay always stands at a chunk boundary and
//! can end the stream cleanly on error.
//!
//! Owns: de-chunking in place behind a headroom so the client's chunk header is written
//! without a copy, the `sse_coalesce` hold (never before the first event, never after a read
//! that filled the buffer, off for good once a hold gathered a whole buffer — a bulk stream),
//! the quiet-stream handling (no buffer held while an SSE stream is idle; the client watched),
//! and the end of a stream: the last chunk, or an SSE `error` event then the last chunk. Usage
//! is read from every read (an Anthropic stream's whole events at a time, so a report a read
//! boundary cuts is not misread: `provider::UsageCarry`).
//!
//! Error handling: after the head, an upstream failure or timeout becomes an SSE `error`
//! event (`upstream_reset`, `upstream_closed`, `bad_upstream_response`, `<layer>_timeout`)
//! with everything decoded before it relayed first; a non-SSE body is cut instead, so a
//! truncated body never looks whole. Must not: alter event bytes.

use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};

use crate::config::Timeouts;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::monitor::bump;
use crate::provider::UsageEvents;
use crate::upstream::{Stream, UpConn};
use crate::wire::{self, BodyKind, CHUNK_HEADROOM};

use super::exchange::{Endpoint, Exchange, Outcome, RelayKind};
use super::own::write_client;
use super::respond::{ended_clean, halt, note_usage, write_client_head, ClientFraming};
use super::watch::{is_cancelled, upstream_wait, Waited, WATCH_GRACE};
use super::{Conn, Flow, Halt};
use crate::tls_server::ClientStream;

/// Bytes reserved at the end of a stream buffer for `\r\n` plus the last chunk.
pub(super) const STREAM_TAILROOM: usize = 2 + wire::LAST_CHUNK.len();

/// What one wait for upstream body bytes came to.
/// Each buffer comes back with the bytes held back by the usage-event filter still in front.
pub(super) enum StreamRead {
    Data(Vec<u8>),
    Eof(Vec<u8>),
    Failed(Vec<u8>, std::io::Error),
    Timeout(Vec<u8>),
    ClientGone,
}

/// Relay the stream; Ok((flow, upstream clean)).
pub async fn relay_stream<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    upconn: &mut UpConn,
    mut ubuf: Vec<u8>,
    channel: usize,
    t: &Timeouts,
) -> Result<(Flow, bool), Halt> {
    let hl = ex.resp.len;
    let chunked_in = ex.resp.body == BodyKind::Chunked;
    let chunked_out = ex.head.minor_version >= 1;
    // Shutdown has begun: the answer says so, and the connection ends after it.
    ex.close |= conn.w.drain.is_draining();
    let close = !ex.keeps_alive() || !chunked_out;
    let event_stream = ex.resp.event_stream;
    let sse = chunked_out && event_stream;
    let framing = if chunked_out {
        ClientFraming::Chunked
    } else {
        ClientFraming::UntilClose
    };
    let mut out = conn.w.bufs.take();
    write_client_head(conn, ex, &mut out, &ubuf, channel, framing, close);
    // No IO since the response head arrived (`forward` read the clock then).
    let now = conn.deadline.recent();
    ex.mark_first_byte(ex.resp.status, now);
    conn.deadline
        .arm_recent(Layer::ClientIdle, t[Layer::ClientIdle]);
    let len = out.len();
    let out = write_client(conn, out, 0..len).await.map_err(halt)?;
    conn.w.bufs.give(out);
    ex.bytes_out += len as u64;

    let mut last_read_filled = ubuf.len() == ubuf.capacity();
    // Body bytes that came with the head move behind the chunk-header headroom.
    let initial = ubuf.len() - hl;
    if ubuf.capacity() < CHUNK_HEADROOM + initial + STREAM_TAILROOM {
        ubuf.reserve(CHUNK_HEADROOM + initial + STREAM_TAILROOM);
    }
    if hl < CHUNK_HEADROOM {
        // A head shorter than the headroom (`HTTP/1.1 200\r\n\r\n` is 17 bytes): make room
        // for the bytes to move up into (found by the relay fuzz target).
        ubuf.resize(CHUNK_HEADROOM + initial, 0);
    }
    ubuf.copy_within(hl..hl + initial, CHUNK_HEADROOM);
    ubuf.truncate(CHUNK_HEADROOM + initial);

    // The client connection is idle while we wait on the upstream: it holds no read buffer.
    // The upstream one is borrowed only while bytes are in flight (SSE streams).
    if conn.rbuf.len() <= ex.consumed && event_stream {
        let rbuf = std::mem::take(&mut conn.rbuf);
        conn.w.bufs.give(rbuf);
        ex.consumed = 0;
    }

    let mut decoder = wire::ChunkedDecoder::new();
    // An event stream's usage-only event: read always, kept from the client when the relay
    // asked for it on the client's behalf. `held` bytes of a possible one wait at
    // `ubuf[CHUNK_HEADROOM..]` for the next read.
    // (The Responses API's events carry no such event: its usage is read in `note_usage`.)
    let chat_like = !matches!(
        ex.endpoint,
        Endpoint::Relay(RelayKind::Responses | RelayKind::ResponseById)
    );
    let mut usage_events =
        (event_stream && chat_like).then(|| UsageEvents::new(ex.usage_splice.is_some()));
    let mut held = 0usize;
    // An Anthropic stream reports usage inside events a read may split: read whole events.
    let mut usage_carry = (event_stream
        && ex.endpoint.dialect() == crate::error::Dialect::Anthropic)
        .then(crate::provider::UsageCarry::new);
    // One per stream: monoio's canceller allocates, so it is not made per chunk.
    let mut canceller = Canceller::new();
    let mut tail: [u8; 2] = [b'\n', b'\n'];
    let mut upstream_done = false;
    // The wait before the next read: set only after a chunk went out, so the first one is
    // never held back and time to first token is untouched by coalescing.
    let mut hold = Duration::ZERO;
    let mut coalesce = if event_stream {
        conn.w.config.server.sse_coalesce
    } else {
        Duration::ZERO
    };
    loop {
        let mut write_at = ubuf.len();
        let mut extra = false;
        let mut broken = false;
        let fresh = CHUNK_HEADROOM + held;
        if chunked_in && ubuf.len() > fresh {
            write_at = fresh;
            match wire::dechunk_in_place(&mut decoder, &mut ubuf, fresh, &mut write_at) {
                Ok(d) => {
                    upstream_done = d.done;
                    extra = d.consumed < ubuf.len();
                }
                // The data decoded before the bad framing still goes out, then the error.
                Err(_) => broken = true,
            }
        }
        // The bytes held last time go out with this read's, or are held again (after the data,
        // at `ubuf[write_at..]`).
        held = 0;
        if let Some(filter) = usage_events.as_mut() {
            let f = filter.filter(&mut ubuf[CHUNK_HEADROOM..write_at], upstream_done || broken);
            if f.usage.is_some() {
                ex.usage = f.usage;
            }
            held = f.held;
            write_at = CHUNK_HEADROOM + f.keep;
        }
        let data_len = write_at - CHUNK_HEADROOM;
        if data_len > 0 {
            let data = &ubuf[CHUNK_HEADROOM..write_at];
            match usage_carry.as_mut() {
                Some(carry) => {
                    ex.usage = carry.scan(ex.usage, data);
                    ex.content_bytes += crate::provider::content_bytes(data);
                }
                None => note_usage(&conn.w, ex, data),
            }
        }
        if data_len > 0 || upstream_done {
            let mut start = CHUNK_HEADROOM;
            if data_len >= 2 {
                tail = [ubuf[write_at - 2], ubuf[write_at - 1]];
            } else if data_len == 1 {
                tail = [tail[1], ubuf[write_at - 1]];
            }
            // Held bytes move 2 bytes up, clear of the chunk's CRLF (the read left
            // STREAM_TAILROOM for that), and back down behind the headroom once the write is
            // done. Nothing is held at the end of the body.
            let end = if held > 0 {
                if ubuf.len() < write_at + 2 + held {
                    ubuf.resize(write_at + 2 + held, 0);
                }
                ubuf.copy_within(write_at..write_at + held, write_at + 2);
                if chunked_out {
                    start = wire::write_chunk_header_before(&mut ubuf, CHUNK_HEADROOM, data_len);
                    ubuf[write_at..write_at + 2].copy_from_slice(b"\r\n");
                    write_at + 2
                } else {
                    write_at
                }
            } else {
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
                ubuf.len()
            };
            // The write runs under the stream_idle deadline armed for the read: a client that
            // stops reading stalls the stream just like a silent upstream.
            ubuf = write_client(conn, ubuf, start..end).await.map_err(halt)?;
            ex.bytes_out += (end - start) as u64;
            if held > 0 {
                ubuf.copy_within(write_at + 2..write_at + 2 + held, CHUNK_HEADROOM);
            }
            if upstream_done {
                ex.completed = true;
                conn.w.bufs.give(ubuf);
                let flow = if close { Flow::Close } else { Flow::Keep };
                let clean =
                    chunked_in && ex.resp.keep_alive && ended_clean(extra, last_read_filled);
                return Ok((flow, clean));
            }
            // Never hold after a read that filled the buffer: more is already waiting.
            if data_len > 0 && !last_read_filled {
                hold = coalesce;
            }
        }
        if broken {
            let error = RelayError::mid_stream(
                "bad_upstream_response",
                "upstream sent malformed chunked framing",
            );
            return end_with_error(conn, ex, ubuf, held, tail, &error, sse).await;
        }

        // Wait for more upstream bytes.
        let wait = std::mem::take(&mut hold);
        let waited_hold = !wait.is_zero();
        // The held bytes (if any) stay in front; read_stream reads behind them.
        ubuf.truncate(CHUNK_HEADROOM + held);
        let read = read_stream(conn, upconn, ubuf, t, event_stream, wait, &mut canceller).await;
        match read {
            StreamRead::Data(b) => {
                last_read_filled = b.len() == b.capacity() - STREAM_TAILROOM;
                // A hold that gathered a whole buffer shows a bulk stream, not tokens: holding
                // it again would only throttle it.
                if waited_hold && last_read_filled {
                    coalesce = Duration::ZERO;
                }
                ubuf = b;
            }
            StreamRead::Eof(b) if !chunked_in => {
                ubuf = b;
                upstream_done = true;
            }
            StreamRead::Eof(b) => {
                let error = RelayError::mid_stream(
                    "upstream_closed",
                    "upstream closed the stream before its end",
                );
                return end_with_error(conn, ex, b, held, tail, &error, sse).await;
            }
            StreamRead::Failed(b, e) => {
                let error = RelayError::mid_stream(
                    "upstream_reset",
                    format!("upstream connection failed mid-stream: {e}"),
                );
                return end_with_error(conn, ex, b, held, tail, &error, sse).await;
            }
            StreamRead::Timeout(b) if conn.deadline.drain_ended() => {
                // Shutdown's drain ran out: the stream ends cleanly, with its reason.
                conn.w.drain.note_ended();
                let error = RelayError::shutting_down_mid_stream();
                return end_with_error(conn, ex, b, held, tail, &error, sse).await;
            }
            StreamRead::Timeout(b) => {
                let layer = conn.deadline.layer();
                conn.w.stats().count_timeout(layer);
                let error = RelayError::stream_timeout(layer);
                return end_with_error(conn, ex, b, held, tail, &error, sse).await;
            }
            StreamRead::ClientGone => {
                bump(&conn.w.stats().client_gone);
                ex.outcome = Outcome::ClientGone;
                return Err(Halt::Close);
            }
        }
    }
}

/// Read the next upstream body bytes into `ubuf[CHUNK_HEADROOM + held..]` under `stream_idle`,
/// where `ubuf.len()` is `CHUNK_HEADROOM + held` (or 0): the `held` bytes are what the
/// usage-event filter held back; they come back with the buffer, except after a timeout that
/// took the buffer with its cancelled read.
///
/// An active SSE stream reads straight into its buffer (one op per chunk). When the stream
/// goes quiet for [`WATCH_GRACE`], the read is cancelled and awaited (keeping any bytes it
/// got), the buffer goes back to the pool, and the stream waits for readiness with no buffer
/// while the client is watched for a hang-up: an idle stream costs no buffer.
///
/// `hold` (the `sse_coalesce` setting, right after a chunk went out) lets the next chunks
/// gather in the socket first: a token stream then costs one read and one write per few
/// chunks instead of per chunk, and streams whose holds end in the same wheel tick are served
/// in one wake-up. Chunks further apart than `hold` are not delayed at all.
pub(super) async fn read_stream<S: ClientStream>(
    conn: &mut Conn<S>,
    upconn: &mut UpConn,
    mut ubuf: Vec<u8>,
    t: &Timeouts,
    event_stream: bool,
    hold: Duration,
    canceller: &mut Canceller,
) -> StreamRead {
    let now = conn.deadline.now();
    conn.deadline
        .arm_at(Layer::StreamIdle, now + t[Layer::StreamIdle]);
    // A hold that would reach the deadline is skipped: bytes that arrive during it must still
    // count against stream_idle and total.
    if !hold.is_zero() && conn.deadline.checkpoint(now + hold) {
        conn.deadline.expired().await;
        if conn.deadline.is_due() {
            return StreamRead::Timeout(ubuf);
        }
        conn.deadline.resume();
    }
    loop {
        let fresh = ubuf.len().max(CHUNK_HEADROOM);
        ubuf.resize(fresh, 0);
        let cap = ubuf.capacity() - STREAM_TAILROOM;
        let tcp = match &mut upconn.stream {
            Stream::Plain(tcp) if event_stream => tcp,
            stream => {
                // TLS keeps decrypted bytes of its own; and non-SSE bodies are never idle for
                // long. A plain read, with the client watched after the grace period.
                let read = stream.read(ubuf.slice_mut(fresh..cap));
                return match upstream_wait(read, &conn.deadline, &mut conn.client, &mut conn.watch)
                    .await
                {
                    Waited::Done((Ok(0), b)) => StreamRead::Eof(b.into_inner()),
                    Waited::Done((Ok(_), b)) => StreamRead::Data(b.into_inner()),
                    Waited::Done((Err(e), b)) => StreamRead::Failed(b.into_inner(), e),
                    Waited::Timeout(_) => StreamRead::Timeout(conn.w.bufs.take()),
                    Waited::ClientGone => StreamRead::ClientGone,
                };
            }
        };
        conn.deadline.checkpoint(Instant::now() + WATCH_GRACE);
        let (res, b) = {
            let read = tcp.cancelable_read(ubuf.slice_mut(fresh..cap), canceller.handle());
            let mut read = std::pin::pin!(read);
            match conn.deadline.race(&mut read).await {
                Ok(r) => r,
                Err(_) if conn.deadline.is_due() => return StreamRead::Timeout(conn.w.bufs.take()),
                Err(_) => {
                    // Quiet: take the buffer back whole before letting it go.
                    *canceller = std::mem::take(canceller).cancel();
                    read.await
                }
            }
        };
        conn.deadline.resume();
        ubuf = b.into_inner();
        match res {
            Ok(0) => return StreamRead::Eof(ubuf),
            Ok(_) => return StreamRead::Data(ubuf),
            Err(e) if is_cancelled(&e) => {}
            Err(e) => return StreamRead::Failed(ubuf, e),
        }
        // Held bytes keep their buffer through the wait (rare: an upstream quiet in the middle
        // of an event); otherwise it goes back to the pool.
        let keep = ubuf.len() > CHUNK_HEADROOM;
        if !keep {
            conn.w.bufs.give(std::mem::take(&mut ubuf));
        }
        let ready = tcp.readable(false);
        let waited = upstream_wait(ready, &conn.deadline, &mut conn.client, &mut conn.watch).await;
        if !keep {
            ubuf = conn.w.bufs.take();
        }
        match waited {
            Waited::Done(_) => {}
            Waited::Timeout(_) => {
                return StreamRead::Timeout(ubuf);
            }
            Waited::ClientGone => {
                conn.w.bufs.give(ubuf);
                return StreamRead::ClientGone;
            }
        }
    }
}

/// After streaming began an error can no longer change the status: an SSE stream gets an
/// `error` event and a proper end; anything else is cut (close without the last chunk) so the
/// client cannot mistake a truncated body for a whole one. The upstream is mid-response, so
/// it is never clean.
///
/// Bytes the usage-event filter held back (`held`, at `buf[CHUNK_HEADROOM..]`, when the buffer
/// still has them) go out first: the stream will not get the rest of that event.
async fn end_with_error<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    mut buf: Vec<u8>,
    held: usize,
    mut tail: [u8; 2],
    error: &RelayError,
    sse: bool,
) -> Result<(Flow, bool), Halt> {
    ex.outcome = Outcome::of(error);
    if !sse {
        conn.w.bufs.give(buf);
        return Err(Halt::Close);
    }
    let held = if buf.len() >= CHUNK_HEADROOM + held {
        held
    } else {
        0
    };
    buf.truncate(CHUNK_HEADROOM + held);
    buf.resize(CHUNK_HEADROOM + held, 0);
    match held {
        0 => {}
        1 => tail = [tail[1], buf[CHUNK_HEADROOM]],
        _ => tail = [buf[buf.len() - 2], buf[buf.len() - 1]],
    }
    if held > 0 {
        note_usage(&conn.w, ex, &buf[CHUNK_HEADROOM..]);
    }
    if tail != [b'\n', b'\n'] {
        // Terminate a half-sent event so the error event parses on its own.
        buf.extend_from_slice(b"\n\n");
    }
    buf.extend_from_slice(b"event: error\ndata: ");
    if ex.endpoint == Endpoint::Relay(RelayKind::Responses) {
        error.render_responses_event(&mut buf);
    } else {
        error.render_as(ex.endpoint.dialect(), &mut buf);
    }
    buf.extend_from_slice(b"\n\n");
    write_last_chunk(conn, ex, buf).await
}

/// Frames what follows `CHUNK_HEADROOM` in `buf` (the stream's last bytes; none is fine) as one
/// chunk, adds the terminating chunk, writes it all and ends the exchange as completed.
pub(super) async fn write_last_chunk<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    mut buf: Vec<u8>,
) -> Result<(Flow, bool), Halt> {
    let data_len = buf.len() - CHUNK_HEADROOM;
    let mut start = CHUNK_HEADROOM;
    if data_len > 0 {
        start = wire::write_chunk_header_before(&mut buf, CHUNK_HEADROOM, data_len);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(wire::LAST_CHUNK);
    conn.deadline
        .arm_unclamped(Layer::ClientIdle, conn.w.config.timeouts[Layer::ClientIdle]);
    let end = buf.len();
    let buf = write_client(conn, buf, start..end).await.map_err(halt)?;
    conn.w.bufs.give(buf);
    ex.bytes_out += (end - start) as u64;
    ex.completed = true;
    let flow = if ex.keeps_alive() {
        Flow::Keep
    } else {
        Flow::Close
    };
    Ok((flow, false))
}
