//! Server-sent events, read incrementally and written: the framing under every converted stream.
//!
//! Owns: [`SseParser`], which takes the de-chunked bytes of each upstream read — split anywhere,
//! mid-line and mid-`\r\n` included — and yields whole events (the `event:` name and the
//! `data:` lines joined with `\n`; comments, `id:`, `retry:` and unknown fields are ignored, as
//! the WHATWG event-stream rules say), and the writers for the two outgoing shapes
//! (`event: x\ndata: y\n\n` for Anthropic's dialect, `data: y\n\n` for OpenAI's).
//!
//! Must not: hold more than one event. The parser keeps the unfinished line, the event name and
//! the data of the one event being read; together they may not exceed `max_event_bytes`, and an
//! event that would is an error ([`SseError::EventTooLarge`]) that ends the stream — never a
//! growing buffer. After an error the parser stays failed.
//!
//! Error handling: the one error is the size limit; bytes that are not UTF-8 or not JSON are the
//! converters' concern (they see the event data as bytes).

use std::fmt;

/// One whole event as the parser yields it; borrowed from the parser until the next `feed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field (empty when the event had none: the default `message` type).
    pub name: &'a [u8],
    /// The `data:` lines joined with `\n` (no trailing newline).
    pub data: &'a [u8],
}

/// Why a stream cannot be read on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseError {
    /// One event (its unfinished line, name and data) went over `max_event_bytes`.
    EventTooLarge { max_event_bytes: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge { max_event_bytes } => write!(
                f,
                "an upstream stream event exceeds max_sse_event_bytes ({max_event_bytes})"
            ),
        }
    }
}

/// The incremental event-stream reader. State: at most one event, `max_event_bytes` in all.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The line being read (no line terminator).
    line: Vec<u8>,
    /// The event's `event:` value.
    name: Vec<u8>,
    /// The event's data lines, each followed by `\n`.
    data: Vec<u8>,
    /// The last byte seen was a `\r` ending a line: a `\n` right after it is the same line end
    /// (the pair may be split across two reads).
    after_cr: bool,
    /// At least one `data:` field was seen for the current event.
    has_data: bool,
    failed: Option<SseError>,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            name: Vec::new(),
            data: Vec::new(),
            after_cr: false,
            has_data: false,
            failed: None,
        }
    }

    /// Read `input` (the next bytes of the stream) and call `on_event` for each event it
    /// completes, in order. `on_event` may stop the read by returning `Err`; that error is
    /// returned as is and the bytes after that event are not read (the stream ends).
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        mut on_event: impl FnMut(SseEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<SseError>,
    {
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        if self.after_cr && input.first() == Some(&b'\n') {
            input = &input[1..];
        }
        self.after_cr = false;
        while !input.is_empty() {
            match memchr::memchr2(b'\n', b'\r', input) {
                None => {
                    self.grow_line(input)?;
                    return Ok(());
                }
                Some(end) => {
                    self.grow_line(&input[..end])?;
                    let crlf_split = input[end] == b'\r' && end + 1 == input.len();
                    let skip = if input[end] == b'\r' && input.get(end + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    input = &input[end + skip..];
                    self.after_cr = crlf_split;
                    if self.end_line() {
                        let event = SseEvent {
                            name: &self.name,
                            data: &self.data[..self.data.len().saturating_sub(1)],
                        };
                        let r = on_event(event);
                        self.name.clear();
                        self.data.clear();
                        self.has_data = false;
                        r?;
                    }
                }
            }
        }
        Ok(())
    }

    /// True when no event is half read (the stream may end here without losing one).
    pub fn at_boundary(&self) -> bool {
        self.line.is_empty() && !self.has_data && self.name.is_empty()
    }

    /// Bytes of memory the parser holds (its buffers' capacities): bounded by about twice
    /// `max_event_bytes` whatever the stream's length.
    pub fn state_bytes(&self) -> usize {
        self.line.capacity() + self.name.capacity() + self.data.capacity()
    }

    fn held(&self) -> usize {
        self.line.len() + self.name.len() + self.data.len()
    }

    fn over(&mut self) -> SseError {
        let e = SseError::EventTooLarge {
            max_event_bytes: self.max_event_bytes,
        };
        self.failed = Some(e);
        // Give the memory back at once: the stream is over.
        self.line = Vec::new();
        self.name = Vec::new();
        self.data = Vec::new();
        e
    }

    fn grow_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.held() + bytes.len() > self.max_event_bytes {
            return Err(self.over());
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Interpret the finished line; true when it was the blank line that dispatches an event
    /// with data (an event without data is dropped, as the event-stream rules say).
    fn end_line(&mut self) -> bool {
        if self.line.is_empty() {
            if self.has_data {
                return true;
            }
            self.name.clear();
            return false;
        }
        let line = std::mem::take(&mut self.line);
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(0) => (&line[..0], &line[..0]), // a comment
            Some(colon) => {
                let v = &line[colon + 1..];
                (&line[..colon], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &line[..0]),
        };
        match field {
            b"data" => {
                // Moving bytes from the line to the data never raises what is held, except by
                // the one separator, which the next growth check counts.
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            _ => {} // comments, id, retry, unknown fields
        }
        self.line = line;
        self.line.clear();
        false
    }
}

/// Append `event: <name>\ndata: <data>\n\n` (Anthropic's framing). Data with line breaks is
/// written as several `data:` lines, so it reads back as the same bytes.
pub fn write_event(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, data);
}

/// Append `data: <data>\n\n` (OpenAI's framing).
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// OpenAI's end of stream: `data: [DONE]\n\n`.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, input: &[u8]) -> Result<Vec<(String, String)>, SseError> {
        let mut out = Vec::new();
        parser.feed(input, |e| {
            out.push((
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            ));
            Ok::<(), SseError>(())
        })?;
        Ok(out)
    }

    fn all_splits(input: &[u8]) -> Vec<(String, String)> {
        let whole = events(&mut SseParser::new(1 << 20), input).unwrap();
        for cut in 0..=input.len() {
            let mut p = SseParser::new(1 << 20);
            let mut got = events(&mut p, &input[..cut]).unwrap();
            got.extend(events(&mut p, &input[cut..]).unwrap());
            assert_eq!(got, whole, "split at {cut}");
        }
        let mut p = SseParser::new(1 << 20);
        let mut got = Vec::new();
        for b in input {
            got.extend(events(&mut p, std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, whole, "byte at a time");
        whole
    }

    #[test]
    fn reads_named_events_and_joins_data_lines() {
        let s = b"event: message_start\ndata: {\"a\":1}\n\n: a comment\nid: 7\nretry: 10\ndata: one\ndata:two\n\n";
        assert_eq!(
            all_splits(s),
            vec![
                ("message_start".into(), "{\"a\":1}".into()),
                (String::new(), "one\ntwo".into())
            ]
        );
    }

    #[test]
    fn every_line_ending_and_split_point() {
        for s in [
            &b"event: a\r\ndata: x\r\n\r\ndata: y\r\n\r\n"[..],
            b"event: a\rdata: x\r\rdata: y\r\r",
            b"event: a\ndata: x\n\ndata: y\n\n",
        ] {
            assert_eq!(
                all_splits(s),
                vec![("a".into(), "x".into()), (String::new(), "y".into())]
            );
        }
    }

    #[test]
    fn events_without_data_are_dropped_and_names_reset() {
        let s = b"event: ping\n\ndata: d\n\n";
        assert_eq!(all_splits(s), vec![(String::new(), "d".into())]);
        let s = b"data\n\n";
        assert_eq!(all_splits(s), vec![(String::new(), String::new())]);
    }

    #[test]
    fn an_event_over_the_limit_is_an_error_and_the_parser_stays_failed() {
        let mut p = SseParser::new(32);
        let ok = events(&mut p, b"data: 0123456789\n\n").unwrap();
        assert_eq!(ok.len(), 1);
        let e = events(&mut p, b"data: 0123456789012345\ndata: 0123456789012345\n").unwrap_err();
        assert_eq!(
            e,
            SseError::EventTooLarge {
                max_event_bytes: 32
            }
        );
        assert_eq!(p.state_bytes(), 0);
        assert!(events(&mut p, b"\n").is_err());
        // A line that never ends is held to the limit too.
        let mut p = SseParser::new(64);
        for _ in 0..6 {
            let _ = events(&mut p, b"0123456789");
        }
        assert!(events(&mut p, b"0123456789").is_err());
    }

    #[test]
    fn state_stays_bounded_over_many_events() {
        let mut p = SseParser::new(256);
        let mut n = 0;
        let chunk =
            b"event: content_block_delta\ndata: {\"type\":\"text_delta\",\"text\":\"hi\"}\n\n";
        let mut first = 0;
        for i in 0..10_000 {
            p.feed(chunk, |_| {
                n += 1;
                Ok::<(), SseError>(())
            })
            .unwrap();
            if i == 0 {
                first = p.state_bytes();
            }
        }
        assert_eq!(n, 10_000);
        assert_eq!(p.state_bytes(), first);
        assert!(p.at_boundary());
    }

    #[test]
    fn writers_read_back() {
        let mut out = Vec::new();
        write_event(&mut out, "message_stop", b"{\"type\":\"message_stop\"}");
        write_data(&mut out, b"a\nb");
        out.extend_from_slice(DONE);
        assert_eq!(
            out,
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            all_splits(&out),
            vec![
                ("message_stop".into(), "{\"type\":\"message_stop\"}".into()),
                (String::new(), "a\nb".into()),
                (String::new(), "[DONE]".into())
            ]
        );
    }

    #[test]
    fn the_callback_can_stop_the_read() {
        let mut p = SseParser::new(1024);
        let mut seen = 0;
        let r = p.feed(b"data: 1\n\ndata: 2\n\n", |_| {
            seen += 1;
            Err(SseError::EventTooLarge { max_event_bytes: 0 })
        });
        assert!(r.is_err());
        assert_eq!(seen, 1);
    }
}
