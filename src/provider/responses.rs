//! OpenAI's Responses API, as the relay reads it in passing: the id of the response an upstream
//! created, and the usage it reports, found in the bytes the relay is sending anyway.
//!
//! Owns: [`ResponsesScan`], fed every relayed read of one answer, in order. A non-streamed
//! answer is one Response object: its top-level `id` and `usage`. A stream is SSE events
//! whose `data` is `{"type": …, "response": {…}}` for the lifecycle events: the id comes from
//! the first event that carries `response.id` (`response.created`), the usage from every
//! event whose `response.usage` is an object — `response.completed`, and equally
//! `response.incomplete` and `response.failed`, so a stream that ends early still counts.
//! The scan follows the JSON's structure (depth, strings, escapes), so a `usage` or `id` key
//! nested elsewhere (a tool's parameter schema, an output item) is never taken for these.
//!
//! Must not: buffer the answer or alter it. Its state is fixed in size: the lexer's position,
//! the id (at most [`MAX_ID`] bytes; a longer one is not learned) and the usage object's bytes
//! (at most [`MAX_USAGE`]; a longer one is not read). Reads may split anything anywhere.

use super::usage::{scan_usage, Usage};

/// The longest response id learned (OpenAI's are about 55 bytes).
pub const MAX_ID: usize = 128;
/// The longest `usage` object read (OpenAI's is about 200 bytes with every detail).
pub const MAX_USAGE: usize = 1024;
/// Nesting tracked exactly; deeper levels are only counted.
const TRACKED: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Other,
    /// `response` at depth 1 of an event.
    Response,
    Id,
    Usage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// At the start of an SSE line (`len` bytes of its field name seen, all matching `data:`).
    Start { len: u8 },
    /// In a `data:` line: its bytes go to the JSON lexer.
    Data,
    /// In another line (a comment, `event:`, `id:`): skipped.
    Skip,
}

/// The per-answer state (see the module docs). About 1.3 KiB; the relay boxes it, and only
/// for `/v1/responses` answers.
pub struct ResponsesScan {
    events: bool,
    line: Line,
    /// The line so far holds only `\r` (a blank line ends an event).
    line_blank: bool,
    depth: usize,
    /// Whether each tracked container (by depth − 1) is an object.
    objects: [bool; TRACKED],
    in_string: bool,
    escape: bool,
    /// Inside an object, where the next string is a key.
    expect_key: bool,
    string_is_key: bool,
    key: [u8; 16],
    key_len: usize,
    /// The last key read, and the depth it was read at.
    target: Key,
    target_depth: usize,
    /// In an event, inside its top-level `response` object.
    in_response: bool,
    capturing_id: bool,
    id: [u8; MAX_ID],
    id_len: usize,
    id_state: IdState,
    /// The depth the `usage` object being captured opened at (0: not capturing).
    usage_depth: usize,
    usage_buf: [u8; MAX_USAGE],
    usage_len: usize,
    usage_overflow: bool,
    usage: Option<Usage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdState {
    None,
    /// Learned, not yet taken by [`ResponsesScan::take_id`].
    New,
    Taken,
}

impl ResponsesScan {
    /// A scanner for an SSE stream (`events`) or for one JSON body.
    pub fn new(events: bool) -> ResponsesScan {
        ResponsesScan {
            events,
            line: Line::Start { len: 0 },
            line_blank: true,
            depth: 0,
            objects: [false; TRACKED],
            in_string: false,
            escape: false,
            expect_key: false,
            string_is_key: false,
            key: [0; 16],
            key_len: 0,
            target: Key::Other,
            target_depth: 0,
            in_response: false,
            capturing_id: false,
            id: [0; MAX_ID],
            id_len: 0,
            id_state: IdState::None,
            usage_depth: 0,
            usage_buf: [0; MAX_USAGE],
            usage_len: 0,
            usage_overflow: false,
            usage: None,
        }
    }

    /// The usage reported so far (the last report wins).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The response's id, once, when it has just been learned.
    pub fn take_id(&mut self) -> Option<&[u8]> {
        if self.id_state != IdState::New {
            return None;
        }
        self.id_state = IdState::Taken;
        Some(&self.id[..self.id_len])
    }

    /// Read the next bytes of the answer.
    pub fn feed(&mut self, data: &[u8]) {
        if !self.events {
            for &b in data {
                self.json(b);
            }
            return;
        }
        for &b in data {
            match self.line {
                Line::Data if b == b'\n' => self.new_line(),
                Line::Data => self.json(b),
                Line::Skip if b == b'\n' => self.new_line(),
                Line::Skip => {}
                Line::Start { len } => {
                    if b == b'\n' {
                        if self.line_blank {
                            self.end_event();
                        }
                        self.new_line();
                    } else if b == b'\r' && len == 0 {
                    } else if len < 5 && b == b"data:"[len as usize] {
                        self.line_blank = false;
                        self.line = if len == 4 {
                            Line::Data
                        } else {
                            Line::Start { len: len + 1 }
                        };
                    } else {
                        self.line_blank = false;
                        self.line = Line::Skip;
                    }
                }
            }
        }
    }

    fn new_line(&mut self) {
        self.line = Line::Start { len: 0 };
        self.line_blank = true;
    }

    /// A blank line: the next event's data is a new JSON document.
    fn end_event(&mut self) {
        self.depth = 0;
        self.in_string = false;
        self.escape = false;
        self.expect_key = false;
        self.target = Key::Other;
        self.in_response = false;
        self.capturing_id = false;
        self.usage_depth = 0;
    }

    /// The depth whose keys name the id and usage: the body's top level, or an event's
    /// `response` object.
    fn fields_depth(&self) -> usize {
        if self.events {
            2
        } else {
            1
        }
    }

    fn json(&mut self, b: u8) {
        if self.usage_depth > 0 {
            if self.usage_len < MAX_USAGE {
                self.usage_buf[self.usage_len] = b;
                self.usage_len += 1;
            } else {
                self.usage_overflow = true;
            }
        }
        if self.in_string {
            if self.escape {
                self.escape = false;
                self.string_byte(b);
                return;
            }
            match b {
                b'\\' => {
                    self.escape = true;
                    self.string_byte(b);
                }
                b'"' => self.end_string(),
                _ => self.string_byte(b),
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.string_is_key = self.expect_key;
                self.key_len = 0;
                if !self.string_is_key {
                    self.capturing_id = self.target == Key::Id
                        && self.target_depth == self.depth
                        && self.id_state == IdState::None;
                    if self.capturing_id {
                        self.id_len = 0;
                    }
                }
            }
            b'{' | b'[' => {
                let object = b == b'{';
                if object && self.target == Key::Usage && self.target_depth == self.depth {
                    self.usage_depth = self.depth + 1;
                    self.usage_buf[0] = b'{';
                    self.usage_len = 1;
                    self.usage_overflow = false;
                }
                if object && self.target == Key::Response && self.target_depth == 1 {
                    self.in_response = self.depth == 1;
                }
                self.depth += 1;
                if self.depth <= TRACKED {
                    self.objects[self.depth - 1] = object;
                }
                self.expect_key = object;
                self.target = Key::Other;
            }
            b'}' | b']' => {
                if self.usage_depth > 0 && self.depth == self.usage_depth {
                    self.usage_depth = 0;
                    if !self.usage_overflow {
                        if let Some(u) = scan_usage(&self.usage_buf[..self.usage_len]) {
                            self.usage = Some(u);
                        }
                    }
                }
                self.depth = self.depth.saturating_sub(1);
                if self.depth < 2 {
                    self.in_response = false;
                }
                self.expect_key = false;
                self.target = Key::Other;
            }
            b':' => self.expect_key = false,
            b',' => {
                self.expect_key =
                    self.depth > 0 && self.depth <= TRACKED && self.objects[self.depth - 1];
                self.target = Key::Other;
            }
            _ => {}
        }
    }

    fn string_byte(&mut self, b: u8) {
        if self.string_is_key {
            if self.key_len < self.key.len() {
                self.key[self.key_len] = b;
            }
            self.key_len += 1;
        } else if self.capturing_id {
            if self.id_len < MAX_ID {
                self.id[self.id_len] = b;
                self.id_len += 1;
            } else {
                // Too long to be an id the relay keeps: not learned.
                self.capturing_id = false;
                self.id_len = 0;
            }
        }
    }

    fn end_string(&mut self) {
        self.in_string = false;
        if self.string_is_key {
            let key = &self.key[..self.key_len.min(self.key.len())];
            let exact = self.key_len <= self.key.len();
            let fields = self.fields_depth();
            self.target = match key {
                b"response" if exact && self.events && self.depth == 1 => Key::Response,
                b"id" if exact && self.depth == fields && self.fields_here() => Key::Id,
                b"usage" if exact && self.depth == fields && self.fields_here() => Key::Usage,
                _ => Key::Other,
            };
            self.target_depth = self.depth;
            self.string_is_key = false;
        } else if self.capturing_id {
            self.capturing_id = false;
            // Ids are plain ASCII; one with an escape or control byte is not learned.
            let id = &self.id[..self.id_len];
            if !id.is_empty() && id.iter().all(|&c| c.is_ascii_graphic() && c != b'\\') {
                self.id_state = IdState::New;
            }
        }
    }

    /// The id and usage keys count in the body's top-level object, or in an event's
    /// `response` object.
    fn fields_here(&self) -> bool {
        !self.events || self.in_response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"id":"resp_abc","object":"response","tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"usage":{"type":"object"},"id":{"type":"string"}}}}],"output":[{"type":"message","id":"msg_1","content":[{"type":"output_text","text":"\"usage\":{\"input_tokens\":99}"}]}],"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":5},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":19}}"#;

    fn feed_in(scan: &mut ResponsesScan, data: &[u8], size: usize) -> Vec<Vec<u8>> {
        let mut ids = Vec::new();
        for piece in data.chunks(size) {
            scan.feed(piece);
            if let Some(id) = scan.take_id() {
                ids.push(id.to_vec());
            }
        }
        ids
    }

    #[test]
    fn a_body_gives_its_top_level_id_and_usage_whatever_the_reads() {
        for size in [1, 2, 3, 7, 64, 10_000] {
            let mut scan = ResponsesScan::new(false);
            let ids = feed_in(&mut scan, BODY.as_bytes(), size);
            assert_eq!(ids, vec![b"resp_abc".to_vec()], "reads of {size}");
            let u = scan.usage().expect("usage");
            assert_eq!(
                (u.prompt, u.completion, u.cached),
                (12, 7, 5),
                "reads of {size}"
            );
        }
    }

    fn event(kind: &str, response: &str) -> String {
        format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":1,\"response\":{response}}}\n\n"
        )
    }

    #[test]
    fn a_stream_gives_the_first_id_and_the_usage_of_any_ending() {
        for ending in [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ] {
            let stream = [
                event(
                    "response.created",
                    r#"{"id":"resp_s1","status":"in_progress","usage":null}"#,
                ),
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"delta\":\"{\\\"id\\\":\\\"x\\\"}\"}\n\n".to_string(),
                ": keep-alive\n\n".to_string(),
                event(
                    ending,
                    r#"{"id":"resp_s1","output":[{"id":"msg_1","usage":{"input_tokens":1}}],"usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"total_tokens":23}}"#,
                ),
            ]
            .concat();
            for size in [1, 5, 13, 100, 100_000] {
                let mut scan = ResponsesScan::new(true);
                let ids = feed_in(&mut scan, stream.as_bytes(), size);
                assert_eq!(
                    ids,
                    vec![b"resp_s1".to_vec()],
                    "{ending} in reads of {size}"
                );
                let u = scan.usage().expect("usage");
                assert_eq!(
                    (u.prompt, u.completion),
                    (20, 3),
                    "{ending} reads of {size}"
                );
            }
        }
        // CRLF line ends, no event lines.
        let stream = event(
            "response.completed",
            r#"{"id":"resp_x","usage":{"input_tokens":4,"output_tokens":2}}"#,
        )
        .replace("event: response.completed\n", "")
        .replace('\n', "\r\n");
        let mut scan = ResponsesScan::new(true);
        assert_eq!(
            feed_in(&mut scan, stream.as_bytes(), 3),
            vec![b"resp_x".to_vec()]
        );
        assert_eq!(scan.usage().map(|u| (u.prompt, u.completion)), Some((4, 2)));
    }

    #[test]
    fn nothing_is_taken_from_the_wrong_place_and_state_stays_bounded() {
        // An error event, a usage nested in an item, an over-long id.
        let mut scan = ResponsesScan::new(true);
        scan.feed(b"event: error\ndata: {\"type\":\"error\",\"code\":\"x\",\"usage\":{\"input_tokens\":5}}\n\n");
        assert_eq!(scan.usage(), None);
        assert!(scan.take_id().is_none());
        let long = format!("{{\"id\":\"{}\"}}", "r".repeat(MAX_ID + 1));
        let mut scan = ResponsesScan::new(false);
        scan.feed(long.as_bytes());
        assert!(scan.take_id().is_none());
        // A usage object too large to be one is not read; garbage does not panic.
        let big = format!(
            "{{\"usage\":{{\"input_tokens\":1,\"pad\":\"{}\"}}}}",
            "p".repeat(MAX_USAGE)
        );
        let mut scan = ResponsesScan::new(false);
        scan.feed(big.as_bytes());
        assert_eq!(scan.usage(), None);
        let mut scan = ResponsesScan::new(true);
        scan.feed(&[b'}'; 100]);
        scan.feed(b"data: ]]]]\"\\\n\n{{{{");
        scan.feed(&[b'{'; 10_000]);
        assert_eq!(scan.usage(), None);
    }

    #[test]
    fn random_bytes_in_random_reads_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Bytes drawn mostly from JSON's and SSE's punctuation, so structure is exercised.
        const ALPHABET: &[u8] = b"{}[]\":,\\ \n\rdata:eventidusageresponse0123456789x";
        for round in 0..2000 {
            let mut scan = ResponsesScan::new(round % 2 == 0);
            let len = (next() % 3000) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + (next() % 200) as usize;
                let end = (at + n).min(bytes.len());
                scan.feed(&bytes[at..end]);
                if let Some(id) = scan.take_id() {
                    assert!(!id.is_empty() && id.len() <= MAX_ID);
                }
                at = end;
            }
        }
    }
}
