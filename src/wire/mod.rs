//! HTTP/1.1 framing on httparse, for both sides of the relay.
//!
//! Owns: parsing request and response heads into offset-based views (no copies, no allocation
//! once the header vectors are warm), the incremental chunked-body decoder, and writing heads,
//! chunk frames and the relay's own error responses into caller-provided buffers.
//!
//! Must not: do IO, hold buffers, or know about routing. Everything here is a pure function of
//! the bytes it is given, so it can be fuzzed and benchmarked without a runtime.

use std::mem::MaybeUninit;

/// httparse needs a fixed header array; 100 covers real SDK and browser traffic with room.
pub const MAX_HEADERS: usize = 100;

/// A byte range into the buffer a head was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// The span of `part` inside `base`. httparse hands back a static `""` (pointing
    /// nowhere near `base`) for parts it could not or did not take from the input — a status
    /// line with no reason phrase, or one with bytes 0x80–0xFF — so a part that does not lie
    /// inside `base` becomes the empty span instead of a garbage offset.
    #[inline]
    fn within(base: &[u8], part: &[u8]) -> Span {
        let base_start = base.as_ptr() as usize;
        let start = (part.as_ptr() as usize).wrapping_sub(base_start);
        if start > base.len() || part.len() > base.len() - start {
            debug_assert!(part.is_empty(), "a non-empty part outside the buffer");
            return Span::default();
        }
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderPos {
    pub name: Span,
    pub value: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
    Head,
    Other,
}

/// How a message body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the peer closes.
    UntilClose,
}

/// Why a head could not be accepted; the relay maps these to 400 / 431.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Malformed(&'static str),
    TooManyHeaders,
    HeadTooLarge,
    BadChunk,
    /// A request transfer coding other than a single `chunked` (answered 501).
    UnsupportedCoding,
}

impl WireError {
    pub fn message(&self) -> &'static str {
        match self {
            WireError::Malformed(m) => m,
            WireError::TooManyHeaders => "too many request headers",
            WireError::HeadTooLarge => "request head too large",
            WireError::BadChunk => "malformed chunked body",
            WireError::UnsupportedCoding => {
                "unsupported transfer-encoding: only a single \"chunked\" coding is accepted"
            }
        }
    }
}

/// A parsed request head, as offsets into the connection's read buffer.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head including the blank line.
    pub len: usize,
    pub method: Method,
    pub path: Span,
    pub minor_version: u8,
    pub headers: Vec<HeaderPos>,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Bearer token from `Authorization`, or the value of `x-api-key`.
    pub api_key: Option<Span>,
    pub request_id: Option<Span>,
    /// Header names listed in `Connection:`; they are hop-by-hop for this message only.
    pub connection_tokens: Vec<Span>,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            len: 0,
            method: Method::Other,
            path: Span::default(),
            minor_version: 1,
            headers: Vec::with_capacity(32),
            body: BodyKind::None,
            keep_alive: true,
            expect_continue: false,
            api_key: None,
            request_id: None,
            connection_tokens: Vec::new(),
        }
    }
}

impl RequestHead {
    /// The path without its query string.
    pub fn route_path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let p = self.path.of(buf);
        match memchr::memchr(b'?', p) {
            Some(i) => &p[..i],
            None => p,
        }
    }

    /// True when `name` must not be forwarded upstream as-is.
    pub fn is_hop_or_replaced(&self, buf: &[u8], name: &[u8]) -> bool {
        is_hop_by_hop(name)
            || REPLACED_REQUEST_HEADERS
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            || self
                .connection_tokens
                .iter()
                .any(|t| t.of(buf).eq_ignore_ascii_case(name))
    }
}

/// Headers the relay sets itself on the upstream request (or deliberately drops):
/// identity and framing are per hop; `accept-encoding` is dropped so that streamed bodies stay
/// plain text the relay can inspect (SSE error injection, usage accounting); `x-request-id`
/// is always the relay's one id for the request (the client's own when it was acceptable).
const REPLACED_REQUEST_HEADERS: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"authorization",
    b"x-api-key",
    b"expect",
    b"accept-encoding",
    b"x-request-id",
];

const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

#[inline]
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Parse a request head from the front of `buf`.
/// `Ok(false)`: incomplete, read more (the caller enforces `max_header_bytes`).
pub fn parse_request(buf: &[u8], head: &mut RequestHead) -> Result<bool, WireError> {
    // Uninitialised header slots: initialising 100 of them cost more than parsing a head.
    let mut raw = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyHeaders),
        Err(_) => return Err(WireError::Malformed("malformed request head")),
    };
    // httparse also takes bare LF line ends; a relay must not, since a peer that reads the
    // head differently would see different requests (RFC 9112 2.2).
    if has_bare_lf(&buf[..len]) {
        return Err(WireError::Malformed("request head lines must end in CRLF"));
    }
    head.len = len;
    head.method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    head.path = Span::within(buf, req.path.unwrap_or("").as_bytes());
    head.minor_version = req.version.unwrap_or(1);
    head.headers.clear();
    head.connection_tokens.clear();
    head.api_key = None;
    head.request_id = None;
    head.expect_continue = false;
    let mut keep_alive = head.minor_version >= 1;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        head.headers.push(HeaderPos {
            name: Span::within(buf, name),
            value: Span::within(buf, value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            note_content_length(value, &mut content_length)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // HTTP/1.0 has no transfer codings: a peer that reads the request as 1.0 would
            // frame it by Content-Length or the close instead (RFC 9112 6.1).
            if head.minor_version == 0 {
                return Err(WireError::Malformed(
                    "transfer-encoding in an HTTP/1.0 request",
                ));
            }
            // Exactly one `chunked` and nothing else: other codings would be forwarded
            // undecoded, and `gzip, chunked` or a repeated header are smuggling material.
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(WireError::UnsupportedCoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let t = trim(token);
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !t.is_empty() {
                    head.connection_tokens.push(Span::within(buf, t));
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = true;
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
                head.api_key = Some(Span::within(buf, trim(&value[7..])));
            }
        } else if name.eq_ignore_ascii_case(b"x-api-key") {
            if head.api_key.is_none() {
                head.api_key = Some(Span::within(buf, value));
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") && is_token_safe(value) {
            head.request_id = Some(Span::within(buf, value));
        }
    }
    if chunked && content_length.is_some() {
        return Err(WireError::Malformed(
            "both content-length and transfer-encoding",
        ));
    }
    head.body = if chunked {
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    head.keep_alive = keep_alive;
    Ok(true)
}

/// A parsed response head, as offsets into the upstream read buffer.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    pub headers: Vec<HeaderPos>,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub event_stream: bool,
    pub retry_after: Option<Span>,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            len: 0,
            status: 0,
            reason: Span::default(),
            headers: Vec::with_capacity(32),
            body: BodyKind::None,
            keep_alive: true,
            event_stream: false,
            retry_after: None,
        }
    }
}

/// Parse an upstream response head. `request_was_head` suppresses the body per RFC 9112.
pub fn parse_response(
    buf: &[u8],
    head: &mut ResponseHead,
    request_was_head: bool,
) -> Result<bool, WireError> {
    let mut raw = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyHeaders),
        Err(_) => return Err(WireError::Malformed("malformed response head")),
    };
    head.len = len;
    head.status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&head.status) {
        return Err(WireError::Malformed("upstream status outside 100-599"));
    }
    head.reason = Span::within(buf, resp.reason.unwrap_or("").as_bytes());
    head.headers.clear();
    head.event_stream = false;
    head.retry_after = None;
    let mut keep_alive = resp.version.unwrap_or(1) >= 1;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        head.headers.push(HeaderPos {
            name: Span::within(buf, name),
            value: Span::within(buf, value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            note_content_length(value, &mut content_length)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            if last_token_is(value, b"chunked") {
                chunked = true;
            } else {
                // Unknown codings end with the connection close (RFC 9112 6.3).
                chunked = false;
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let t = trim(token);
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            head.event_stream =
                value.len() >= 17 && value[..17].eq_ignore_ascii_case(b"text/event-stream");
        } else if name.eq_ignore_ascii_case(b"retry-after") {
            head.retry_after = Some(Span::within(buf, value));
        }
    }
    // Two framings at once is how responses get split: which one ends the body depends on
    // who reads it. Refused, so the connection is closed and never pooled (RFC 9112 6.3).
    if transfer_encoding && content_length.is_some() {
        return Err(WireError::Malformed(
            "upstream response has both content-length and transfer-encoding",
        ));
    }
    head.body = if request_was_head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        BodyKind::None
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = content_length {
        if n == 0 {
            BodyKind::None
        } else {
            BodyKind::Length(n)
        }
    } else {
        keep_alive = false;
        BodyKind::UntilClose
    };
    head.keep_alive = keep_alive;
    Ok(true)
}

/// One `Content-Length` header: must be a number, and repeats must agree (RFC 9112 6.3).
#[inline]
fn note_content_length(value: &[u8], content_length: &mut Option<u64>) -> Result<(), WireError> {
    let n = parse_decimal(value).ok_or(WireError::Malformed("bad content-length"))?;
    if content_length.is_some_and(|c| c != n) {
        return Err(WireError::Malformed("conflicting content-length"));
    }
    *content_length = Some(n);
    Ok(())
}

#[inline]
pub fn trim(v: &[u8]) -> &[u8] {
    let mut s = 0;
    let mut e = v.len();
    while s < e && (v[s] == b' ' || v[s] == b'\t') {
        s += 1;
    }
    while e > s && (v[e - 1] == b' ' || v[e - 1] == b'\t') {
        e -= 1;
    }
    &v[s..e]
}

fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .map(|t| trim(t).eq_ignore_ascii_case(token))
        .unwrap_or(false)
}

/// A `\n` not preceded by `\r`.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Values echoed back in a response header must not be able to inject header lines.
fn is_token_safe(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200 && v.iter().all(|&b| (0x21..0x7f).contains(&b))
}

pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as u64;
    }
    Some(n)
}

mod chunked;
#[cfg(test)]
mod tests;
mod write;

pub use chunked::{dechunk_in_place, ChunkedDecoder};
pub use write::*;
