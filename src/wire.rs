//! HTTP/1.1 framing on httparse, for both sides of the relay.
//!
//! Owns: parsing request and response heads into offset-based views (no copies, no allocation
//! once the header vectors are warm), the incremental chunked-body decoder, and writing heads,
//! chunk frames and the relay's own error responses into caller-provided buffers.
//!
//! Must not: do IO, hold buffers, or know about routing. Everything here is a pure function of
//! the bytes it is given, so it can be fuzzed and benchmarked without a runtime.

use std::mem::MaybeUninit;
use std::ops::Range;

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

/// Incremental decoder for `Transfer-Encoding: chunked`, fed whatever bytes arrive.
///
/// It reports the data ranges of each input slice and never buffers, so the relay can forward
/// or compact data in place. Chunk extensions and trailers are accepted and discarded.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    digits: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the chunk size.
    Size,
    /// Whitespace after the size: only `;` (an extension) or the CR may follow.
    SizeWs,
    /// Inside a chunk extension, up to its CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// What one `decode` call got through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes consumed; less than the input only once `done`.
    pub consumed: usize,
    pub done: bool,
}

/// What one `step` got through: at most one data range, relative to its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub data: Option<Range<usize>>,
    pub done: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// True between chunks: the point where a relay may end its own re-framed stream cleanly.
    pub fn at_chunk_boundary(&self) -> bool {
        self.state == ChunkState::Size && self.digits == 0
    }

    /// Walk `input`, calling `on_data` with each range of body data it contains.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Decoded, WireError> {
        let mut pos = 0;
        loop {
            let s = self.step(&input[pos..])?;
            if let Some(r) = s.data {
                on_data(pos + r.start..pos + r.end);
            }
            pos += s.consumed;
            if s.done || pos >= input.len() || s.consumed == 0 {
                return Ok(Decoded {
                    consumed: pos,
                    done: s.done,
                });
            }
        }
    }

    /// Advance over `input` until one data range is found, the input ends, or the body ends.
    /// One range per call lets callers move bytes around in the buffer between calls.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, WireError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match hex_value(b) {
                    Some(v) => {
                        if self.digits >= 15 {
                            return Err(WireError::BadChunk);
                        }
                        self.remaining = self.remaining * 16 + v as u64;
                        self.digits += 1;
                        i += 1;
                    }
                    None if self.digits == 0 => return Err(WireError::BadChunk),
                    // CRLF only: a bare LF, or anything but an extension after the digits
                    // (`18 zz`), is refused (RFC 9112 7.1).
                    None => {
                        self.state = match b {
                            b'\r' => ChunkState::SizeLf,
                            b';' => ChunkState::Ext,
                            b' ' | b'\t' => ChunkState::SizeWs,
                            _ => return Err(WireError::BadChunk),
                        };
                        i += 1;
                    }
                },
                ChunkState::SizeWs => {
                    self.state = match b {
                        b' ' | b'\t' => ChunkState::SizeWs,
                        b';' => ChunkState::Ext,
                        b'\r' => ChunkState::SizeLf,
                        _ => return Err(WireError::BadChunk),
                    };
                    i += 1;
                }
                ChunkState::Ext => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(off) => {
                        i += off;
                        if input[i] != b'\r' {
                            return Err(WireError::BadChunk);
                        }
                        self.state = ChunkState::SizeLf;
                        i += 1;
                    }
                    None => i = input.len(),
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.end_size_line();
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Step {
                        consumed: i + take,
                        data: Some(i..i + take),
                        done: false,
                    });
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    match b {
                        b'\r' => self.state = ChunkState::EndLf,
                        b'\n' => return Err(WireError::BadChunk),
                        _ => self.state = ChunkState::TrailerLine,
                    }
                }
                ChunkState::TrailerLine => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(off) => {
                        i += off;
                        if input[i] != b'\r' {
                            return Err(WireError::BadChunk);
                        }
                        i += 1;
                        self.state = ChunkState::TrailerLf;
                    }
                    None => i = input.len(),
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    self.state = ChunkState::Done;
                    return Ok(Step {
                        consumed: i + 1,
                        data: None,
                        done: true,
                    });
                }
                ChunkState::Done => break,
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
            done: self.state == ChunkState::Done,
        })
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        if self.remaining == 0 {
            self.state = ChunkState::TrailerStart;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

#[inline]
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode the chunked bytes in `buf[from..]` in place, moving the data down to `*write_at`
/// (which must be <= `from`). Returns how far into `buf` decoding got and whether the body ended.
pub fn dechunk_in_place(
    decoder: &mut ChunkedDecoder,
    buf: &mut [u8],
    from: usize,
    write_at: &mut usize,
) -> Result<Decoded, WireError> {
    let mut pos = from;
    loop {
        let s = decoder.step(&buf[pos..])?;
        if let Some(r) = s.data {
            let len = r.len();
            buf.copy_within(pos + r.start..pos + r.end, *write_at);
            *write_at += len;
        }
        pos += s.consumed;
        if s.done || pos >= buf.len() || s.consumed == 0 {
            return Ok(Decoded {
                consumed: pos,
                done: s.done,
            });
        }
    }
}

/// The standard reason phrase (RFC 9110 names), for heads ringway writes itself and for
/// upstream heads that came without one.
pub fn reason_phrase(status: u16) -> &'static str {
    known_reason_phrase(status).unwrap_or("Unknown")
}

pub fn known_reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

/// Append `HTTP/1.1 <status> <reason>\r\n`.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Write `<hex len>\r\n` ending exactly at `end` of `buf`; returns where it starts.
/// The relay reads upstream bytes with headroom in front so framing needs no copy.
pub fn write_chunk_header_before(buf: &mut [u8], end: usize, len: usize) -> usize {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = len;
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let digits = &hex[i..];
    let start = end - digits.len() - 2;
    buf[start..start + digits.len()].copy_from_slice(digits);
    buf[end - 2] = b'\r';
    buf[end - 1] = b'\n';
    start
}

/// Room kept in front of upstream body bytes for a chunk header: 16 hex digits + CRLF.
pub const CHUNK_HEADROOM: usize = 18;

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<(bool, RequestHead), WireError> {
        let mut h = RequestHead::default();
        let done = parse_request(text.as_bytes(), &mut h)?;
        Ok((done, h))
    }

    #[test]
    fn request_head_fields() {
        let text = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-1 \r\nContent-Length: 12\r\nX-Request-Id: abc\r\nExpect: 100-continue\r\n\r\nbody";
        let (done, h) = req(text).unwrap();
        assert!(done);
        assert_eq!(h.len, text.len() - 4);
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.route_path(text.as_bytes()), b"/v1/chat/completions");
        assert_eq!(h.api_key.unwrap().of(text.as_bytes()), b"sk-1");
        assert_eq!(h.request_id.unwrap().of(text.as_bytes()), b"abc");
        assert_eq!(h.body, BodyKind::Length(12));
        assert!(h.keep_alive && h.expect_continue);
    }

    #[test]
    fn request_partial_and_errors() {
        assert!(!req("POST / HTTP/1.1\r\nHost: a\r\n").unwrap().0);
        assert!(req("GARBAGE\r\n\r\n").is_err());
        assert!(req("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(req("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(
            req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
                .is_err()
        );
        let many: String = (0..120).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            WireError::TooManyHeaders
        );
    }

    #[test]
    fn connection_semantics() {
        let (_, h) = req("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let (_, h) = req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let t = "GET / HTTP/1.1\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\n\r\n";
        let (_, h) = req(t).unwrap();
        assert!(!h.keep_alive);
        assert!(h.is_hop_or_replaced(t.as_bytes(), b"x-foo"));
        assert!(h.is_hop_or_replaced(t.as_bytes(), b"Host"));
        assert!(!h.is_hop_or_replaced(t.as_bytes(), b"content-type"));
    }

    #[test]
    fn response_framing() {
        let mut h = ResponseHead::default();
        let t = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_response(t, &mut h, false).unwrap());
        assert_eq!(h.body, BodyKind::Chunked);
        assert!(h.event_stream && h.keep_alive);
        let t = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 5\r\n\r\n";
        assert!(parse_response(t, &mut h, false).unwrap());
        assert_eq!(h.status, 429);
        assert_eq!(h.retry_after.unwrap().of(t), b"7");
        assert_eq!(h.body, BodyKind::Length(5));
        let t = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(parse_response(t, &mut h, false).unwrap());
        assert_eq!(h.body, BodyKind::UntilClose);
        assert!(!h.keep_alive);
        let t = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(parse_response(t, &mut h, false).unwrap());
        assert_eq!(h.body, BodyKind::None);
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Decoded), WireError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut last = Decoded {
            consumed: 0,
            done: false,
        };
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + split).min(input.len());
            let part = &input[pos..end];
            last = d.decode(part, |r| out.extend_from_slice(&part[r]))?;
            pos += last.consumed;
            if last.done {
                break;
            }
        }
        Ok((out, last))
    }

    #[test]
    fn chunked_any_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 1..body.len() + 1 {
            let (out, d) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello, world", "split {split}");
            assert!(d.done, "split {split}");
        }
    }

    #[test]
    fn chunked_errors() {
        assert!(decode_all(b"zz\r\n", 4).is_err());
        assert!(decode_all(b"3\r\nabcX\r\n", 16).is_err());
        assert!(decode_all(b"ffffffffffffffffff\r\n", 64).is_err());
        assert!(decode_all(b"\r\n", 4).is_err());
    }

    #[test]
    fn chunked_stops_at_end() {
        let body = b"1\r\na\r\n0\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::new();
        let r = d.decode(body, |_| {}).unwrap();
        assert!(r.done);
        assert_eq!(&body[r.consumed..], b"NEXT");
    }

    #[test]
    fn dechunk_compacts() {
        let mut buf = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec();
        let mut d = ChunkedDecoder::new();
        let mut w = 0;
        let r = dechunk_in_place(&mut d, &mut buf, 0, &mut w).unwrap();
        assert!(r.done);
        assert_eq!(&buf[..w], b"hello, world");
    }

    /// Every span a parsed response head carries, read as the relay reads them.
    fn touch_response_spans(h: &ResponseHead, buf: &[u8]) {
        let _ = h.reason.of(buf);
        for hp in &h.headers {
            let _ = (hp.name.of(buf), hp.value.of(buf));
        }
        if let Some(r) = h.retry_after {
            let _ = r.of(buf);
        }
    }

    #[test]
    fn status_line_without_usable_reason_is_an_empty_span() {
        // httparse answers these with a static "" that does not point into the buffer.
        let cases: [&[u8]; 6] = [
            b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200\nContent-Length: 2\n\nok",
            b"HTTP/1.1 200 \xe9\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 \xe9\nContent-Length: 2\n\nok",
            b"HTTP/1.1 200 \r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK \xff\xfe\r\nContent-Length: 0\r\n\r\n",
        ];
        for t in cases {
            let mut h = ResponseHead::default();
            assert!(parse_response(t, &mut h, false).unwrap());
            assert_eq!(h.status, 200);
            assert!((h.reason.end as usize) <= t.len());
            touch_response_spans(&h, t);
        }
    }

    #[test]
    fn ambiguous_upstream_responses_are_refused() {
        let cases: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 600 Nope\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 099 Nope\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 000 Nope\r\nContent-Length: 0\r\n\r\n",
        ];
        for t in cases {
            let mut h = ResponseHead::default();
            assert!(
                parse_response(t, &mut h, false).is_err(),
                "{}",
                String::from_utf8_lossy(t)
            );
        }
        let mut h = ResponseHead::default();
        let t = b"HTTP/1.1 599 Edge\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert!(parse_response(t, &mut h, false).unwrap());
        assert_eq!(h.body, BodyKind::Length(5));
    }

    #[test]
    fn strict_request_framing() {
        // Bare LF line ends anywhere in the head.
        assert!(req("POST / HTTP/1.1\nHost: a\n\n").is_err());
        assert!(req("POST / HTTP/1.1\r\nHost: a\n\r\n").is_err());
        // Transfer-Encoding on HTTP/1.0.
        assert!(matches!(
            req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(WireError::Malformed(_))
        ));
        // Codings other than one plain chunked: 501 material.
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "gzip",
            "chunked;q=1",
        ] {
            let t = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(req(&t).unwrap_err(), WireError::UnsupportedCoding, "{te}");
        }
        let t =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(req(t).unwrap_err(), WireError::UnsupportedCoding);
        let (_, h) = req("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyKind::Chunked);
    }

    #[test]
    fn chunk_lines_are_crlf_only_and_sizes_hex_only() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5;ext\nhello\r\n0\r\n\r\n",
            b"18 zz\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nTrailer: x\n\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
        ] {
            for split in 1..=bad.len() {
                assert!(
                    decode_all(bad, split).is_err(),
                    "{} split {split}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        let good = b"5 ;a=b\r\nhello\r\n5\t\r\nworld\r\n0\r\nT: 1\r\nU: 2\r\n\r\n";
        for split in 1..=good.len() {
            let (out, d) = decode_all(good, split).unwrap();
            assert_eq!(out, b"helloworld");
            assert!(d.done);
        }
    }

    #[test]
    fn chunk_header_before() {
        let mut buf = vec![0u8; 32];
        let s = write_chunk_header_before(&mut buf, CHUNK_HEADROOM, 300);
        assert_eq!(&buf[s..CHUNK_HEADROOM], b"12c\r\n");
        let s = write_chunk_header_before(&mut buf, CHUNK_HEADROOM, usize::MAX);
        assert_eq!(s, 0);
    }
}
