//! Converted answers (part of `respond`): the 2xx answer of a channel of the other dialect,
//! turned into the client's — a whole body converted once it is in, a stream converted event by
//! event as each read arrives.
//!
//! Owns: reading a whole converted body (up to `max_body_bytes`), the converted answer's head
//! (the client's dialect's content type, `x-request-id`, the upstream's request id as
//! `x-upstream-request-id`, CORS, framing — none of the upstream's other headers, which
//! describe a body the client does not get), the stream loop (de-chunk in place, feed the
//! converter, write what it wrote as one chunk, reuse the buffer), the usage the converters
//! report, and ending a converted stream: the last chunk, or the relay's SSE `error` event.
//!
//! Bounded by construction: the converters hold one upstream event (`max_sse_event_bytes`) and
//! a few ids and counters; the output of one read is written before the next read, into the
//! same buffer. Nothing of the stream's output is kept.
//!
//! Error handling: before the head, a body that cannot be converted is a 502
//! `bad_upstream_response` (a timeout the layer's 504); after it, an upstream `error` event,
//! an event over `max_sse_event_bytes` (`sse_event_too_large`), a malformed event or framing,
//! a cut or a timeout end the stream with an SSE `error` event in the client's dialect. Must
//! not: touch the OpenAI → OpenAI path, or retry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::buf::IoBufMut;
use monoio::io::Canceller;

use crate::config::Timeouts;
use crate::deadline::Layer;
use crate::error::RelayError;
use crate::monitor::bump;
use crate::provider::anthropic::{
    from_anthropic_response, to_anthropic_response, AnthropicToOpenAiStream,
    OpenAiToAnthropicStream, StreamUsage,
};
use crate::provider::{self, Conversion, Converted, Usage};
use crate::upstream::UpConn;
use crate::wire::{self, BodyKind, CHUNK_HEADROOM};

use super::exchange::{Exchange, Outcome};
use super::own::write_client;
use super::respond::{end_head, ended_clean, halt, ClientFraming};
use super::stream::{read_stream, StreamRead, STREAM_TAILROOM};
use super::{Conn, Flow, Halt};
use crate::tls_server::ClientStream;

/// Relay the converted answer of a 2xx upstream response; Ok((flow, upstream clean)).
pub async fn relay_converted<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    upconn: &mut UpConn,
    ubuf: Vec<u8>,
    t: &Timeouts,
    how: Converted,
) -> Result<(Flow, bool), Halt> {
    let streamed =
        ex.resp.event_stream && matches!(ex.resp.body, BodyKind::Chunked | BodyKind::UntilClose);
    if streamed {
        relay_stream(conn, ex, upconn, ubuf, t, how).await
    } else {
        relay_whole(conn, ex, upconn, ubuf, t, how).await
    }
}

/// One converted stream's converter (boxed: a connection's future stays as small as the
/// passthrough path needs).
enum StreamConverter {
    ToOpenAi(AnthropicToOpenAiStream),
    ToAnthropic(OpenAiToAnthropicStream),
}

impl StreamConverter {
    fn new(how: Converted, max_event_bytes: usize) -> Box<StreamConverter> {
        Box::new(match how.conversion {
            Conversion::ChatToMessages => StreamConverter::ToOpenAi(AnthropicToOpenAiStream::new(
                how.include_usage,
                unix_now(),
                max_event_bytes,
            )),
            Conversion::MessagesToChat => {
                StreamConverter::ToAnthropic(OpenAiToAnthropicStream::new(max_event_bytes))
            }
        })
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RelayError> {
        match self {
            StreamConverter::ToOpenAi(c) => c.feed(input, out),
            StreamConverter::ToAnthropic(c) => c.feed(input, out),
        }
    }

    /// The upstream stream ended: complete the client's, or the error that ends it.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RelayError> {
        match self {
            StreamConverter::ToOpenAi(c) => c.finish(),
            StreamConverter::ToAnthropic(c) => c.finish(out),
        }
    }

    fn usage(&self) -> StreamUsage {
        match self {
            StreamConverter::ToOpenAi(c) => c.usage(),
            StreamConverter::ToAnthropic(c) => c.usage(),
        }
    }

    /// The client's stream is complete (`[DONE]` / `message_stop` written).
    fn is_done(&self) -> bool {
        match self {
            StreamConverter::ToOpenAi(c) => c.is_done(),
            StreamConverter::ToAnthropic(c) => c.is_done(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The usage a converter reported, as the relay accounts it (quota, tpm, the access log);
/// nothing when it reported none yet (`finish` then estimates).
fn note_usage(ex: &mut Exchange<'_>, usage: StreamUsage) {
    if usage != StreamUsage::default() {
        ex.usage = Some(Usage {
            prompt: usage.prompt,
            completion: usage.completion,
            cached: usage.cached,
            estimated: false,
        });
    }
}

/// The upstream's request id (`x-request-id`, or Anthropic's `request-id`), copied while
/// `ubuf` still holds the upstream's head (reading the body reuses that buffer).
fn upstream_request_id(ex: &Exchange<'_>, ubuf: &[u8]) -> Option<Vec<u8>> {
    if ubuf.len() < ex.resp.len {
        return None;
    }
    ex.resp.headers.iter().find_map(|h| {
        let name = h.name.of(ubuf);
        (name.eq_ignore_ascii_case(b"x-request-id") || name.eq_ignore_ascii_case(b"request-id"))
            .then(|| h.value.of(ubuf).to_vec())
    })
}

/// The head of a converted answer.
fn write_head<S: ClientStream>(
    conn: &Conn<S>,
    ex: &Exchange<'_>,
    out: &mut Vec<u8>,
    upstream_id: Option<&[u8]>,
    content_type: &[u8],
    framing: ClientFraming,
    close: bool,
) {
    wire::write_status_line(out, ex.resp.status);
    wire::write_header(out, b"content-type", content_type);
    if matches!(framing, ClientFraming::Chunked | ClientFraming::UntilClose) {
        out.extend_from_slice(b"cache-control: no-cache\r\n");
    }
    if let Some(id) = upstream_id {
        wire::write_header(out, b"x-upstream-request-id", id);
    }
    end_head(conn, ex, out, framing, close);
}

fn bad_body<S: ClientStream>(conn: &Conn<S>, message: &'static str) -> Halt {
    bump(&conn.w.stats().upstream_bad_response);
    Halt::Answer(RelayError::bad_upstream_response(message))
}

/// A whole (non-streamed) answer: read it all (at most `max_body_bytes`), convert, answer with
/// a Content-Length body.
async fn relay_whole<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    upconn: &mut UpConn,
    mut ubuf: Vec<u8>,
    t: &Timeouts,
    how: Converted,
) -> Result<(Flow, bool), Halt> {
    let w = conn.w.clone();
    let cap = w.config.server.max_body_bytes;
    let kind = ex.resp.body;
    let mut body: Vec<u8> = Vec::new();
    let mut decoder = wire::ChunkedDecoder::new();
    let mut remaining = match kind {
        BodyKind::Length(n) => n,
        _ => u64::MAX,
    };
    let mut complete = false;
    let mut extra = false;
    let mut last_read_filled = ubuf.len() == ubuf.capacity();
    let upstream_id = upstream_request_id(ex, &ubuf);
    let mut input = ex.resp.len..ubuf.len();
    loop {
        let chunk = &ubuf[input.clone()];
        match kind {
            BodyKind::None => {
                complete = true;
                extra = !chunk.is_empty();
            }
            BodyKind::Length(_) => {
                let take = (chunk.len() as u64).min(remaining) as usize;
                body.extend_from_slice(&chunk[..take]);
                remaining -= take as u64;
                complete = remaining == 0;
                extra = chunk.len() > take;
            }
            BodyKind::Chunked => {
                match decoder.decode(chunk, |r| body.extend_from_slice(&chunk[r])) {
                    Ok(d) => {
                        complete = d.done;
                        extra = d.done && d.consumed < chunk.len();
                    }
                    Err(_) => {
                        w.bufs.give(ubuf);
                        return Err(bad_body(conn, "upstream sent malformed chunked framing"));
                    }
                }
            }
            BodyKind::UntilClose => body.extend_from_slice(chunk),
        }
        if body.len() > cap {
            w.bufs.give(ubuf);
            return Err(bad_body(
                conn,
                "the upstream's answer is larger than max_body_bytes and cannot be converted",
            ));
        }
        if complete {
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
                if kind == BodyKind::UntilClose {
                    break;
                }
                w.bufs.give(ubuf);
                return Err(bad_body(conn, "upstream closed the connection mid-body"));
            }
            Ok((Ok(n), b)) => {
                ubuf = b.into_inner();
                last_read_filled = n == c;
                input = 0..n;
            }
            Ok((Err(_), b)) => {
                w.bufs.give(b.into_inner());
                return Err(bad_body(conn, "upstream connection failed mid-body"));
            }
            Err(layer) => {
                w.stats().count_timeout(layer);
                return Err(RelayError::timeout(layer).into());
            }
        }
    }
    let (converted, usage) = match how.conversion {
        Conversion::ChatToMessages => from_anthropic_response(&body, unix_now()),
        Conversion::MessagesToChat => to_anthropic_response(&body),
    }
    .inspect_err(|_| bump(&w.stats().upstream_bad_response))?;
    drop(body);
    note_usage(ex, usage);
    ex.content_bytes += provider::content_bytes(&converted);

    ex.close |= w.drain.is_draining();
    let close = !ex.keeps_alive();
    let mut out = w.bufs.take();
    write_head(
        conn,
        ex,
        &mut out,
        upstream_id.as_deref(),
        b"application/json",
        ClientFraming::Length(converted.len() as u64),
        close,
    );
    w.bufs.give(ubuf);
    out.extend_from_slice(&converted);
    let now = conn.deadline.now();
    ex.mark_first_byte(ex.resp.status, now);
    conn.deadline
        .arm_recent(Layer::ClientIdle, t[Layer::ClientIdle]);
    let len = out.len();
    let out = write_client(conn, out, 0..len).await.map_err(halt)?;
    w.bufs.give(out);
    ex.bytes_out += len as u64;
    ex.completed = true;
    let flow = if close { Flow::Close } else { Flow::Keep };
    let clean =
        ex.resp.keep_alive && kind != BodyKind::UntilClose && ended_clean(extra, last_read_filled);
    Ok((flow, clean))
}

/// A streamed answer, converted read by read: each read is de-chunked in place, its whole
/// events converted into `out` (behind a chunk-header headroom) and written as one chunk; `out`
/// is then reused for the next read.
async fn relay_stream<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    upconn: &mut UpConn,
    mut ubuf: Vec<u8>,
    t: &Timeouts,
    how: Converted,
) -> Result<(Flow, bool), Halt> {
    let w = conn.w.clone();
    let hl = ex.resp.len;
    let chunked_in = ex.resp.body == BodyKind::Chunked;
    let chunked_out = ex.head.minor_version >= 1;
    ex.close |= w.drain.is_draining();
    let close = !ex.keeps_alive() || !chunked_out;
    let framing = if chunked_out {
        ClientFraming::Chunked
    } else {
        ClientFraming::UntilClose
    };
    let mut conv = StreamConverter::new(how, w.config.server.max_sse_event_bytes);
    let mut out = w.bufs.take();
    let upstream_id = upstream_request_id(ex, &ubuf);
    write_head(
        conn,
        ex,
        &mut out,
        upstream_id.as_deref(),
        b"text/event-stream",
        framing,
        close,
    );
    let now = conn.deadline.now();
    ex.mark_first_byte(ex.resp.status, now);
    conn.deadline
        .arm_recent(Layer::ClientIdle, t[Layer::ClientIdle]);
    let len = out.len();
    out = write_client(conn, out, 0..len).await.map_err(halt)?;
    ex.bytes_out += len as u64;
    out.clear();
    out.resize(CHUNK_HEADROOM, 0);

    let mut last_read_filled = ubuf.len() == ubuf.capacity();
    // Body bytes that came with the head move to where every later read puts its bytes.
    let initial = ubuf.len() - hl;
    if ubuf.capacity() < CHUNK_HEADROOM + initial + STREAM_TAILROOM {
        ubuf.reserve(CHUNK_HEADROOM + initial + STREAM_TAILROOM);
    }
    if hl < CHUNK_HEADROOM {
        ubuf.resize(CHUNK_HEADROOM + initial, 0);
    }
    ubuf.copy_within(hl..hl + initial, CHUNK_HEADROOM);
    ubuf.truncate(CHUNK_HEADROOM + initial);

    // The client connection is idle during the stream: it holds no read buffer.
    if conn.rbuf.len() <= ex.consumed {
        let rbuf = std::mem::take(&mut conn.rbuf);
        w.bufs.give(rbuf);
        ex.consumed = 0;
    }

    let mut decoder = wire::ChunkedDecoder::new();
    let mut canceller = Canceller::new();
    let mut upstream_done = false;
    let mut hold = Duration::ZERO;
    let coalesce = w.config.server.sse_coalesce;
    loop {
        let mut write_at = ubuf.len();
        let mut extra = false;
        let mut failure = None;
        if chunked_in && ubuf.len() > CHUNK_HEADROOM {
            write_at = CHUNK_HEADROOM;
            match wire::dechunk_in_place(&mut decoder, &mut ubuf, CHUNK_HEADROOM, &mut write_at) {
                Ok(d) => {
                    upstream_done = d.done;
                    extra = d.consumed < ubuf.len();
                }
                // What was decoded before the bad framing is converted first.
                Err(_) => {
                    failure = Some(RelayError::mid_stream(
                        "bad_upstream_response",
                        "upstream sent malformed chunked framing",
                    ))
                }
            }
        }
        let fed = conv.feed(&ubuf[CHUNK_HEADROOM..write_at], &mut out);
        let fed = fed.and_then(|()| {
            if upstream_done && failure.is_none() {
                conv.finish(&mut out)
            } else {
                Ok(())
            }
        });
        if let Err(e) = fed {
            failure = Some(e);
        }
        note_usage(ex, conv.usage());
        ex.content_bytes += provider::content_bytes(&out[CHUNK_HEADROOM..]);
        if let Some(error) = failure {
            w.bufs.give(ubuf);
            let done = conv.is_done();
            return end_with_error(conn, ex, out, &error, chunked_out, done).await;
        }
        let data_len = out.len() - CHUNK_HEADROOM;
        if data_len > 0 || upstream_done {
            let mut start = CHUNK_HEADROOM;
            if chunked_out {
                if data_len > 0 {
                    start = wire::write_chunk_header_before(&mut out, CHUNK_HEADROOM, data_len);
                    out.extend_from_slice(b"\r\n");
                }
                if upstream_done {
                    out.extend_from_slice(wire::LAST_CHUNK);
                }
            }
            let end = out.len();
            if end > start {
                out = write_client(conn, out, start..end).await.map_err(halt)?;
                ex.bytes_out += (end - start) as u64;
            }
            out.truncate(CHUNK_HEADROOM);
            if upstream_done {
                w.bufs.give(ubuf);
                w.bufs.give(out);
                ex.completed = true;
                let flow = if close { Flow::Close } else { Flow::Keep };
                let clean =
                    chunked_in && ex.resp.keep_alive && ended_clean(extra, last_read_filled);
                return Ok((flow, clean));
            }
            if data_len > 0 && !last_read_filled {
                hold = coalesce;
            }
        }

        let wait = std::mem::take(&mut hold);
        ubuf.truncate(CHUNK_HEADROOM);
        // The output buffer is empty between reads: a quiet stream holds none.
        w.bufs.give(out);
        let read = read_stream(conn, upconn, ubuf, t, true, wait, &mut canceller).await;
        out = w.bufs.take();
        out.resize(CHUNK_HEADROOM, 0);
        let error = match read {
            StreamRead::Data(b) => {
                last_read_filled = b.len() == b.capacity() - STREAM_TAILROOM;
                ubuf = b;
                continue;
            }
            StreamRead::Eof(b) if !chunked_in => {
                ubuf = b;
                upstream_done = true;
                continue;
            }
            StreamRead::Eof(b) => {
                w.bufs.give(b);
                RelayError::mid_stream(
                    "upstream_closed",
                    "upstream closed the stream before its end",
                )
            }
            StreamRead::Failed(b, e) => {
                w.bufs.give(b);
                RelayError::mid_stream(
                    "upstream_reset",
                    format!("upstream connection failed mid-stream: {e}"),
                )
            }
            StreamRead::Timeout(b) if conn.deadline.drain_ended() => {
                w.bufs.give(b);
                w.drain.note_ended();
                RelayError::shutting_down_mid_stream()
            }
            StreamRead::Timeout(b) => {
                w.bufs.give(b);
                let layer = conn.deadline.layer();
                w.stats().count_timeout(layer);
                RelayError::stream_timeout(layer)
            }
            StreamRead::ClientGone => {
                w.bufs.give(out);
                bump(&w.stats().client_gone);
                ex.outcome = Outcome::ClientGone;
                return Err(Halt::Close);
            }
        };
        let done = conv.is_done();
        return end_with_error(conn, ex, out, &error, chunked_out, done).await;
    }
}

/// End a converted stream with the relay's SSE `error` event in the client's dialect, after
/// whatever `out[CHUNK_HEADROOM..]` holds (events converted before the failure). A client
/// without chunked framing (HTTP/1.0) is cut instead, so a truncated body never looks whole.
///
/// When the client's stream is already `complete` (`[DONE]` / `message_stop` went out, and the
/// upstream failed only after its answer), it ends as a whole stream, with no error event
/// after its end; the upstream connection is not reused.
async fn end_with_error<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
    mut out: Vec<u8>,
    error: &RelayError,
    chunked_out: bool,
    complete: bool,
) -> Result<(Flow, bool), Halt> {
    if !complete {
        ex.outcome = Outcome::of(error);
    }
    let data_len = out.len() - CHUNK_HEADROOM;
    if !chunked_out {
        if complete && data_len > 0 {
            let end = out.len();
            out = write_client(conn, out, CHUNK_HEADROOM..end)
                .await
                .map_err(halt)?;
            ex.bytes_out += data_len as u64;
        }
        conn.w.bufs.give(out);
        if complete {
            ex.completed = true;
            return Ok((Flow::Close, false));
        }
        return Err(Halt::Close);
    }
    if !complete {
        if data_len > 0 && !out.ends_with(b"\n\n") {
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"event: error\ndata: ");
        error.render_as(ex.endpoint.dialect(), &mut out);
        out.extend_from_slice(b"\n\n");
    }
    super::stream::write_last_chunk(conn, ex, out).await
}
