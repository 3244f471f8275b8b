//! The hostile behaviours: upstreams that break HTTP on purpose (no or binary reason phrase,
//! bare LF, extra or unasked responses, conflicting framing, odd statuses, endless interim
//! responses, a leaked Authorization, bulk streams, a short head), for the relay's
//! hostile-peer tests.
//!
//! Must not: go through the well-formed writers where the fault is the point: these bytes are
//! written raw. Which model name picks which of them is decided in `behaviours`.

use std::io;
use std::time::Duration;

use crate::behaviours::Endpoint;
use crate::bodies::{chat_completion, chunk_event, error_body, error_kind};
use crate::reply::Reply;
use crate::request::Request;
use crate::server::Outcome;

/// Upstreams that break HTTP on purpose, for the relay's hostile-peer tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hostile {
    /// `HTTP/1.1 200\r\n`: no reason phrase (JSON, or an SSE stream).
    NoReason { stream: bool },
    /// A reason phrase with bytes 0x80-0xFF.
    BinaryReason,
    /// A whole response with bare LF line ends.
    BareLf,
    /// A whole response, then a second one ("INJECTED") in the same write, kept alive.
    ExtraResponse,
    /// A whole response, then 50 ms later a second one ("INJECTED"), kept alive.
    ExtraLater,
    /// A whole SSE stream, then stray bytes after its last chunk, kept alive.
    ExtraAfterStream,
    /// `101 Switching Protocols` although nothing asked for an upgrade.
    UnaskedSwitch,
    /// Content-Length and chunked framing at once, disagreeing.
    LengthAndChunked,
    /// Two different Content-Length values.
    DuplicateLength,
    /// A status outside 100-599.
    BadStatus(u16),
    /// N interim responses (100, 103, ...) and the final one, all in one write.
    Interim(u64),
    /// 103 Early Hints every 10 ms, forever.
    EndlessInterim,
    /// STATUS with the received Authorization header echoed in the body and in an
    /// `x-debug-auth` header.
    EchoKey(u16),
    /// An SSE stream of N MiB: 1 KiB events written back to back, 16 per chunk.
    Bulk(u64),
    /// One valid SSE chunk and a non-hex chunk-size line in the same write.
    BrokenChunkedOneWrite,
    /// `HTTP/1.1 200\r\n\r\n` (a head shorter than the relay's chunk headroom), then a body
    /// delimited by the close.
    ShortHeadStream,
}

/// The hostile behaviours write their bytes raw: the point is that they are not valid HTTP.
pub(crate) fn hostile(
    reply: Reply<'_>,
    request: &Request,
    endpoint: Endpoint,
    model: &str,
    h: Hostile,
) -> io::Result<Outcome> {
    let body = chat_completion(model);
    let json_tail = |status_line: &str, eol: &str| {
        format!(
            "{status_line}{eol}content-type: application/json{eol}content-length: {}{eol}x-mock-request: {}{eol}{eol}{body}",
            body.len(),
            reply.n
        )
    };
    match h {
        Hostile::NoReason { stream: false } => {
            reply.send(json_tail("HTTP/1.1 200", "\r\n").as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::NoReason { stream: true } => {
            reply.send(
                b"HTTP/1.1 200\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            )?;
            for index in 0..3 {
                reply.chunk(chunk_event(endpoint, model, index, index == 2).as_bytes())?;
            }
            reply.end_stream()
        }
        Hostile::BinaryReason => {
            let mut bytes = b"HTTP/1.1 200 \xe9t\xe9".to_vec();
            let rest = json_tail("", "\r\n");
            bytes.extend_from_slice(rest.as_bytes());
            reply.send(&bytes)?;
            Ok(reply.finished())
        }
        Hostile::BareLf => {
            reply.send(json_tail("HTTP/1.1 200 OK", "\n").as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::ExtraResponse | Hostile::ExtraLater => {
            let injected = "{\"injected\":\"INJECTED by the upstream after its response\"}";
            let extra = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{injected}",
                injected.len()
            );
            let mut bytes = json_tail("HTTP/1.1 200 OK", "\r\n").into_bytes();
            if h == Hostile::ExtraLater {
                reply.send(&bytes)?;
                if !reply.pause(Duration::from_millis(50)) {
                    return Ok(Outcome::Close);
                }
                reply.send(extra.as_bytes())?;
            } else {
                bytes.extend_from_slice(extra.as_bytes());
                reply.send(&bytes)?;
            }
            Ok(reply.finished())
        }
        Hostile::ExtraAfterStream => {
            reply.sse_head()?;
            reply.chunk(chunk_event(endpoint, model, 0, true).as_bytes())?;
            let injected = "{\"injected\":\"INJECTED\"}";
            let bytes = format!(
                "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{injected}",
                injected.len()
            );
            reply.send(bytes.as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::UnaskedSwitch => {
            reply.send(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x05hello",
            )?;
            Ok(Outcome::Close)
        }
        Hostile::LengthAndChunked => {
            let bytes = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            reply.send(bytes.as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::DuplicateLength => {
            let bytes = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncontent-length: 5\r\n\r\n{body}",
                body.len()
            );
            reply.send(bytes.as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::BadStatus(code) => {
            reply.send(json_tail(&format!("HTTP/1.1 {code:03} Odd"), "\r\n").as_bytes())?;
            Ok(reply.finished())
        }
        Hostile::Interim(n) => {
            let mut bytes = Vec::new();
            for i in 0..n {
                let line: &[u8] = if i % 2 == 0 {
                    b"HTTP/1.1 100 Continue\r\n\r\n"
                } else {
                    b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
                };
                bytes.extend_from_slice(line);
            }
            bytes.extend_from_slice(json_tail("HTTP/1.1 200 OK", "\r\n").as_bytes());
            reply.send(&bytes)?;
            Ok(reply.finished())
        }
        Hostile::EndlessInterim => loop {
            reply.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")?;
            if !reply.pause(Duration::from_millis(10)) {
                return Ok(Outcome::Close);
            }
        },
        Hostile::EchoKey(status) => {
            let auth = request
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let (kind, code) = error_kind(status);
            let text = if status < 400 {
                body.clone()
            } else {
                error_body(
                    &format!("Incorrect API key provided: {auth}. You can find your key at https://example.invalid."),
                    kind,
                    code,
                )
            };
            reply.full(
                status,
                &[
                    ("content-type", "application/json"),
                    ("x-debug-auth", &auth),
                ],
                text.as_bytes(),
            )
        }
        Hostile::Bulk(mib) => {
            reply.sse_head()?;
            let mut event = b"data: ".to_vec();
            event.resize(1022, b'x');
            event.extend_from_slice(b"\n\n");
            let chunk = event.repeat(16);
            for _ in 0..mib * 64 {
                reply.chunk(&chunk)?;
            }
            reply.end_stream()
        }
        Hostile::ShortHeadStream => {
            let mut bytes = b"HTTP/1.1 200\r\n\r\n".to_vec();
            bytes.extend_from_slice(body.as_bytes());
            reply.send(&bytes)?;
            Ok(Outcome::Close)
        }
        Hostile::BrokenChunkedOneWrite => {
            reply.sse_head()?;
            let event = chunk_event(endpoint, model, 0, false);
            let bytes = format!("{:x}\r\n{event}\r\nzz\r\n", event.len());
            reply.send(bytes.as_bytes())?;
            Ok(Outcome::Close)
        }
    }
}
