//! Usage in a passed-through Anthropic event stream, read event by event although reads split
//! events anywhere.
//!
//! Anthropic reports a stream's usage inside `message_start` (the prompt side) and
//! `message_delta` (the final `output_tokens`). Scanning each read on its own would misread a
//! report a read boundary cuts (`"output_tokens":12` | `34` reads as 12). [`UsageCarry`] scans
//! only whole events: the unfinished event at the end of a read is carried (copied, at most
//! [`MAX_CARRY`] bytes) and scanned once the next read completes it.
//!
//! Must not: hold more than [`MAX_CARRY`] bytes, or alter the stream (it only reads it). An
//! event longer than the carry is a content event, never a usage report: it is skipped whole.

use super::usage::{update_usage, Usage};

/// The longest unfinished event carried to the next read (a `message_start` is a few hundred
/// bytes; text deltas can be longer, and are not usage).
pub const MAX_CARRY: usize = 8192;

/// Per-stream state: the unfinished event, or that one is being skipped.
#[derive(Debug, Default)]
pub struct UsageCarry {
    carry: Vec<u8>,
    /// The unfinished event outgrew the carry: skip to its end.
    skipping: bool,
}

/// The index just past the first blank line (`\n\n` or `\n\r\n`) in `data`.
fn event_end(data: &[u8]) -> Option<usize> {
    for nl in memchr::memchr_iter(b'\n', data) {
        match data.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if data.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
    }
    None
}

/// The index just past the last blank line in `data` (0 when there is none).
fn last_event_end(data: &[u8]) -> usize {
    for nl in memchr::memrchr_iter(b'\n', data) {
        if nl == 0 {
            break;
        }
        if data[nl - 1] == b'\n' || (nl >= 2 && data[nl - 1] == b'\r' && data[nl - 2] == b'\n') {
            return nl + 1;
        }
    }
    0
}

impl UsageCarry {
    pub fn new() -> UsageCarry {
        UsageCarry::default()
    }

    /// `previous` with the usage reported by the events `data` (the next decoded bytes of the
    /// stream) completes.
    pub fn scan(&mut self, previous: Option<Usage>, data: &[u8]) -> Option<Usage> {
        let mut usage = previous;
        let mut rest = data;
        if self.skipping || !self.carry.is_empty() {
            let Some(end) = event_end_across(&self.carry, rest) else {
                if !self.skipping && self.carry.len() + rest.len() <= MAX_CARRY {
                    self.carry.extend_from_slice(rest);
                } else {
                    self.carry.clear();
                    self.skipping = true;
                }
                return usage;
            };
            if !self.skipping {
                self.carry.extend_from_slice(&rest[..end]);
                usage = update_usage(usage, &self.carry);
            }
            self.carry.clear();
            self.skipping = false;
            rest = &rest[end..];
        }
        let whole = last_event_end(rest);
        usage = update_usage(usage, &rest[..whole]);
        let tail = &rest[whole..];
        if tail.len() <= MAX_CARRY {
            self.carry.extend_from_slice(tail);
        } else {
            self.skipping = true;
        }
        usage
    }
}

/// Where the event begun in `carry` ends in `next`: a blank line may straddle the two.
fn event_end_across(carry: &[u8], next: &[u8]) -> Option<usize> {
    match (carry.last(), next.first(), next.get(1)) {
        (Some(b'\n'), Some(b'\n'), _) => return Some(1),
        (Some(b'\n'), Some(b'\r'), Some(b'\n')) => return Some(2),
        (Some(b'\r'), Some(b'\n'), _) if carry.len() >= 2 && carry[carry.len() - 2] == b'\n' => {
            return Some(1)
        }
        _ => {}
    }
    event_end(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":2,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1234}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn expected() -> Option<Usage> {
        Some(Usage {
            prompt: 11,
            completion: 1234,
            cached: 4,
            estimated: false,
        })
    }

    #[test]
    fn every_split_point_reads_the_same_usage() {
        for stream in [
            STREAM.to_vec(),
            String::from_utf8_lossy(STREAM)
                .replace('\n', "\r\n")
                .into_bytes(),
        ] {
            for cut in 0..=stream.len() {
                let mut c = UsageCarry::new();
                let u = c.scan(None, &stream[..cut]);
                let u = c.scan(u, &stream[cut..]);
                assert_eq!(u, expected(), "split at {cut}");
            }
            let mut c = UsageCarry::new();
            let mut u = None;
            for b in &stream {
                u = c.scan(u, std::slice::from_ref(b));
            }
            assert_eq!(u, expected(), "byte at a time");
        }
    }

    #[test]
    fn a_long_event_is_skipped_and_the_carry_stays_bounded() {
        let mut c = UsageCarry::new();
        let mut long = b"event: content_block_delta\ndata: {\"text\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'x', 3 * MAX_CARRY));
        let mut u = None;
        for piece in long.chunks(1000) {
            u = c.scan(u, piece);
            assert!(c.carry.capacity() <= 2 * MAX_CARRY);
        }
        // The end of the long event carries a usage-like fragment that must not be read.
        u = c.scan(u, b"\"output_tokens\":99}\n\n");
        assert_eq!(u, None);
        u = c.scan(u, STREAM);
        assert_eq!(u, expected());
    }
}
