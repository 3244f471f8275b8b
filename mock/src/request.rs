//! Reading one request off a connection: the head (httparse), then a Content-Length or
//! chunked body, answering `Expect: 100-continue` on the way.
//!
//! Must not: be lenient. Unframeable input (bad or conflicting lengths, both framings, bad
//! chunk lines, oversized heads or bodies) becomes [`Fail::Reject`], a 4xx and a close, so a
//! relay that frames wrongly is caught instead of accommodated.

use std::io;

use crate::reply::Reply;
use crate::server::{Shared, Wire};

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64;
const MAX_BODY: u64 = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Request reading

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) keep_alive: bool,
}

pub(crate) enum Fail {
    /// The peer went away (or the mock is stopping): nobody to answer.
    Gone,
    /// Unframeable input: answer with this status and close.
    Reject(u16, &'static str),
}

impl From<io::Error> for Fail {
    fn from(_: io::Error) -> Self {
        Fail::Gone
    }
}

struct Head {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

enum BodyLen {
    Fixed(u64),
    Chunked,
}

/// Received bytes not yet consumed, plus the socket they come from.
pub(crate) struct Inbox<'a> {
    pub(crate) stream: &'a Wire,
    pub(crate) shared: &'a Shared,
    pub(crate) buf: Vec<u8>,
}

impl Inbox<'_> {
    /// Appends whatever the socket has; `Ok(0)` means the peer closed.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if self.shared.stopping() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, len: usize) -> Result<Vec<u8>, Fail> {
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(Fail::Gone);
            }
        }
        let rest = self.buf.split_off(len);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// One CRLF-terminated line, without the CRLF. Bare LF is not accepted: the relay must
    /// produce correct chunk framing, and leniency here would hide it if it did not.
    fn line(&mut self) -> Result<Vec<u8>, Fail> {
        loop {
            let window = &self.buf[..self.buf.len().min(MAX_LINE + 2)];
            if let Some(pos) = window.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(pos + 2)?;
                return Ok(line[..pos].to_vec());
            }
            if self.buf.len() > MAX_LINE {
                return Err(Fail::Reject(400, "chunk framing line too long"));
            }
            if self.fill()? == 0 {
                return Err(Fail::Gone);
            }
        }
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub(crate) fn read_request(inbox: &mut Inbox<'_>) -> Result<Request, Fail> {
    let head = loop {
        if let Some((head, len)) = parse_head(&inbox.buf)? {
            inbox.take(len)?;
            break head;
        }
        if inbox.fill()? == 0 {
            return Err(Fail::Gone);
        }
    };
    let framing = body_framing(&head.headers)?;
    let expects_continue = head.version == 1
        && has_token(&head.headers, "expect", "100-continue")
        && !matches!(framing, BodyLen::Fixed(0));
    if expects_continue {
        let interim = Reply {
            stream: inbox.stream,
            shared: inbox.shared,
            n: 0,
            close: false,
        };
        interim.send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = match framing {
        BodyLen::Fixed(len) => inbox.take(len as usize)?,
        BodyLen::Chunked => read_chunked(inbox)?,
    };
    let keep_alive = if head.version == 1 {
        !has_token(&head.headers, "connection", "close")
    } else {
        has_token(&head.headers, "connection", "keep-alive")
    };
    Ok(Request {
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
        keep_alive,
    })
}

fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Fail> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: parsed.method.unwrap_or_default().to_owned(),
                target: parsed.path.unwrap_or_default().to_owned(),
                version: parsed.version.unwrap_or(1),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(Fail::Reject(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Fail::Reject(431, "too many request headers")),
        Err(_) => Err(Fail::Reject(400, "malformed request head")),
    }
}

fn body_framing(headers: &[(String, Vec<u8>)]) -> Result<BodyLen, Fail> {
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the final coding decides the framing (RFC 9112 section 6.3).
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = value.trim_ascii();
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Fail::Reject(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Fail::Reject(400, "conflicting Content-Length headers"));
            }
            length = Some(parsed);
        }
    }
    match (chunked, length) {
        // Both at once is the classic smuggling shape; a relay must never emit it.
        (Some(_), Some(_)) => Err(Fail::Reject(
            400,
            "both Transfer-Encoding and Content-Length",
        )),
        (Some(true), None) => Ok(BodyLen::Chunked),
        (Some(false), None) => Err(Fail::Reject(400, "unsupported Transfer-Encoding")),
        (None, Some(len)) if len > MAX_BODY => Err(Fail::Reject(413, "request body too large")),
        (None, Some(len)) => Ok(BodyLen::Fixed(len)),
        (None, None) => Ok(BodyLen::Fixed(0)),
    }
}

fn read_chunked(inbox: &mut Inbox<'_>) -> Result<Vec<u8>, Fail> {
    let mut body = Vec::new();
    loop {
        let line = inbox.line()?;
        let size = parse_chunk_size(&line).ok_or(Fail::Reject(400, "invalid chunk size"))?;
        if size == 0 {
            break;
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(Fail::Reject(413, "request body too large"));
        }
        body.extend_from_slice(&inbox.take(size as usize)?);
        if inbox.take(2)? != b"\r\n" {
            return Err(Fail::Reject(400, "chunk data not followed by CRLF"));
        }
    }
    for _ in 0..MAX_TRAILERS {
        if inbox.line()?.is_empty() {
            return Ok(body);
        }
    }
    Err(Fail::Reject(400, "too many trailer fields"))
}

pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    // Chunk extensions are legal and meaningless here.
    let size = line.split(|&b| b == b';').next()?.trim_ascii();
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

fn has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}
