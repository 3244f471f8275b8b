//! Writing responses: [`Reply`] builds the head (status, reason phrase, `x-mock-request`,
//! framing, `connection: close`), writes whole responses, SSE heads and chunks, and pauses
//! between them, cut short when the peer hangs up or the mock stops.
//!
//! Must not: choose what to send (that is `behaviours` and `hostile`), or block past `stop`:
//! every write and wait wakes at least every tick to look.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::bodies::error_body;
use crate::request::is_timeout;
use crate::server::{poll_fd, Outcome, Shared, Wire, PEER_HANGUP};

/// Granularity of scripted waits, which is how quickly a hang-up or `stop` cuts one short.
const PAUSE_TICK: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Responses

pub(crate) enum Framing {
    Length(usize),
    Chunked,
    /// For statuses that never carry a body (204, 304).
    Bodiless,
}

#[derive(Clone, Copy)]
pub(crate) struct Reply<'a> {
    pub(crate) stream: &'a Wire,
    pub(crate) shared: &'a Shared,
    pub(crate) n: u64,
    pub(crate) close: bool,
}

impl Reply<'_> {
    pub(crate) fn head(&self, status: u16, extra: &[(&str, &str)], framing: Framing) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nserver: ringway-mock\r\nx-mock-request: {}\r\n",
            reason(status),
            self.n
        );
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match framing {
            Framing::Length(len) => head.push_str(&format!("content-length: {len}\r\n")),
            Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
            Framing::Bodiless => {}
        }
        if self.close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// `write_all` that wakes every [`IO_TICK`](crate::server::IO_TICK) so a peer that stops
    /// reading cannot pin the thread past `stop`.
    pub(crate) fn send(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !self.shared.stopping() => {}
                Err(e) => return Err(e),
            }
        }
        // Over TLS, records the socket did not take yet must leave before a pause or a reset.
        loop {
            match self.stream.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !self.shared.stopping() => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn finished(&self) -> Outcome {
        if self.close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }

    pub(crate) fn full(
        &self,
        status: u16,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Outcome> {
        // 204 and 304 are bodiless by definition; a length there would desync the peer.
        let bodiless = status == 204 || status == 304;
        let framing = if bodiless {
            Framing::Bodiless
        } else {
            Framing::Length(body.len())
        };
        let mut bytes = self.head(status, extra, framing);
        if !bodiless {
            bytes.extend_from_slice(body);
        }
        self.send(&bytes)?;
        Ok(self.finished())
    }

    pub(crate) fn json(&self, status: u16, body: &str) -> io::Result<Outcome> {
        self.full(
            status,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    pub(crate) fn error(
        &self,
        status: u16,
        message: &str,
        kind: &str,
        code: &str,
        extra: &[(&str, &str)],
    ) -> io::Result<Outcome> {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.full(status, &headers, error_body(message, kind, code).as_bytes())
    }

    pub(crate) fn sse_head(&self) -> io::Result<()> {
        self.send(&self.head(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            Framing::Chunked,
        ))
    }

    /// One HTTP chunk in one write, so each event leaves as its own segment.
    pub(crate) fn chunk(&self, data: &[u8]) -> io::Result<()> {
        let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes)
    }

    pub(crate) fn end_stream(&self) -> io::Result<Outcome> {
        self.send(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")?;
        Ok(self.finished())
    }

    /// Sleeps `wait`; false if cut short because the peer hung up or the mock is stopping.
    pub(crate) fn pause(&self, wait: Duration) -> bool {
        if wait.is_zero() {
            return true;
        }
        let deadline = Instant::now().checked_add(wait);
        loop {
            if self.shared.stopping() {
                return false;
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => PAUSE_TICK,
            };
            if left.is_zero() {
                return true;
            }
            let hangup = PEER_HANGUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            if poll_fd(
                self.stream.tcp.as_raw_fd(),
                PEER_HANGUP,
                left.min(PAUSE_TICK),
            ) & hangup
                != 0
            {
                return false;
            }
        }
    }
}

/// The reason phrase the mock writes: RFC 9110's for the statuses it is asked for most, "Mock
/// Status" for any other (a client must not care; the relay's tests check that it does not).
fn reason(status: u16) -> &'static str {
    match status {
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
        _ => "Mock Status",
    }
}
