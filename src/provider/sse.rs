//! The usage-only event of an OpenAI-style event stream, found read by read in the bytes the
//! relay is about to send, and taken out when the relay asked for it on the client's behalf.
//!
//! With `stream_options.include_usage`, OpenAI ends a stream with one extra event,
//! `data: {…,"choices":[],"usage":{…}}`, just before `data: [DONE]`. When the client did not ask
//! for it, the relay asks anyway (to account the stream exactly) and must then remove that
//! event: a client that did not ask is entitled to assume every chunk has a choice.
//!
//! Owns: [`UsageEvents`], the per-stream state (three flags, no buffer), and
//! [`is_usage_event`], the test one whole event must pass. Must not: buffer a stream, or alter
//! any other event — the one thing it holds back is the end of a read that may be the start
//! of the usage event (at most [`MAX_USAGE_EVENT`] bytes, kept in the relay's own read buffer
//! and sent or dropped with the next read), so a client sees every other byte as soon as the
//! relay would have sent it without this.
//!
//! What it does not remove: OpenAI also puts `"usage":null` into every other chunk of such a
//! stream. Those are the upstream's bytes inside events the client wants; they pass through.
//!
//! Events are delimited by a blank line (`\n\n`, or with `\r\n` line ends); an event in any
//! other shape (several lines, comments, another field than `data`, bare `\r` line ends) is
//! never taken for the usage event and passes through untouched.

use super::usage::{scan_usage, Usage};

/// The longest usage event recognised (OpenAI's is about 500 bytes with every detail); a
/// longer event passes through, so what the relay holds back stays bounded.
pub const MAX_USAGE_EVENT: usize = 4096;

/// Per-stream state of the usage-event filter.
#[derive(Debug)]
pub struct UsageEvents {
    /// Remove the usage-only event (the relay asked for it; the client did not).
    strip: bool,
    /// Inside an event whose start already went out: the rest of it passes.
    passing: bool,
    /// While `passing`: the current line so far is blank (empty or only `\r`).
    line_blank: bool,
}

/// What [`UsageEvents::filter`] made of one read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// `data[..keep]` goes to the client now.
    pub keep: usize,
    /// `data[keep..keep + held]` is held back: it may be the start of the usage event. It must
    /// come first in the next call's `data`.
    pub held: usize,
    /// The usage of a whole usage-only event found in this read (removed or not).
    pub usage: Option<Usage>,
}

impl UsageEvents {
    pub fn new(strip: bool) -> UsageEvents {
        UsageEvents {
            strip,
            passing: false,
            line_blank: false,
        }
    }

    /// Filter one read's decoded bytes in place: `data` is the bytes held back last time
    /// followed by this read's. Whole usage-only events are read (and removed when stripping;
    /// the rest moves down over them); a trailing partial event that may be one is held back
    /// unless `end` says no more bytes will come.
    pub fn filter(&mut self, data: &mut [u8], end: bool) -> Filtered {
        let mut usage = None;
        let mut read = 0;
        if self.passing {
            match event_end(data, 0, self.line_blank) {
                Ok(e) => {
                    read = e;
                    self.passing = false;
                }
                Err(blank) => {
                    self.line_blank = blank;
                    return Filtered {
                        keep: data.len(),
                        held: 0,
                        usage,
                    };
                }
            }
        }
        let mut write = read;
        while read < data.len() {
            match event_end(data, read, true) {
                Ok(e) => {
                    let event = &data[read..e];
                    let is_usage = is_usage_event(event);
                    if is_usage {
                        usage = scan_usage(event);
                    }
                    if !(is_usage && self.strip) {
                        data.copy_within(read..e, write);
                        write += e - read;
                    }
                    read = e;
                }
                Err(blank) => {
                    let rest = read..data.len();
                    data.copy_within(rest.clone(), write);
                    if !end && may_be_usage_event(&data[write..write + rest.len()]) {
                        return Filtered {
                            keep: write,
                            held: rest.len(),
                            usage,
                        };
                    }
                    write += rest.len();
                    self.passing = true;
                    self.line_blank = blank;
                    break;
                }
            }
        }
        Filtered {
            keep: write,
            held: 0,
            usage,
        }
    }
}

/// The end (just past its blank line) of the event whose bytes start at `from`, or — when the
/// data ends first — whether the line the data ends in is blank so far. `blank` says whether
/// the line at `from` is blank so far (true at an event's start).
fn event_end(data: &[u8], from: usize, mut blank: bool) -> Result<usize, bool> {
    let mut line = from;
    for nl in memchr::memchr_iter(b'\n', &data[from..]) {
        let nl = from + nl;
        if blank && data[line..nl].iter().all(|&b| b == b'\r') {
            return Ok(nl + 1);
        }
        blank = true;
        line = nl + 1;
    }
    Err(blank && data[line..].iter().all(|&b| b == b'\r'))
}

/// One whole event (through its blank line) is a usage-only chunk: a single `data:` line whose
/// JSON object has `"choices": []` and a `"usage"` object at its top level (and whose first
/// `"choices"` key is that empty one), at most [`MAX_USAGE_EVENT`] bytes.
pub fn is_usage_event(event: &[u8]) -> bool {
    if event.len() > MAX_USAGE_EVENT {
        return false;
    }
    let Some(rest) = event.strip_prefix(b"data:") else {
        return false;
    };
    let Some(nl) = memchr::memchr(b'\n', rest) else {
        return false;
    };
    // One line only: what follows the data line is the blank line that ends the event.
    if !rest[nl + 1..].iter().all(|&b| matches!(b, b'\r' | b'\n')) {
        return false;
    }
    let payload = trim(&rest[..nl]);
    first_choices_empty(payload) == Some(true) && super::json::is_usage_only_chunk(payload)
}

/// Could `partial` (an event's bytes so far, its blank line not yet seen) still turn out to
/// pass [`is_usage_event`]? Decided from the bytes seen only, so that holding and passing agree
/// with what the whole event would have been.
fn may_be_usage_event(partial: &[u8]) -> bool {
    if partial.len() > MAX_USAGE_EVENT {
        return false;
    }
    let n = partial.len().min(5);
    if partial[..n] != b"data:"[..n] {
        return false;
    }
    if partial.len() <= 5 {
        return true;
    }
    let rest = &partial[5..];
    let line = match memchr::memchr(b'\n', rest) {
        // The data line ended: only the blank line may follow.
        Some(nl) if rest[nl + 1..].iter().all(|&b| b == b'\r') => &rest[..nl],
        Some(_) => return false,
        None => rest,
    };
    let payload = trim_start(line);
    if payload.first().is_some_and(|&b| b != b'{') {
        return false;
    }
    first_choices_empty(payload) != Some(false)
}

/// Whether the first `"choices"` key in `json` has an empty array: `None` while the bytes do not
/// tell yet (no `"choices"`, or cut off before its value is known).
fn first_choices_empty(json: &[u8]) -> Option<bool> {
    static CHOICES: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"choices\""));
    let at = CHOICES.find(json)? + b"\"choices\"".len();
    let mut expect = [b':', b'[', b']'].into_iter();
    let mut want = expect.next();
    for &b in &json[at..] {
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            continue;
        }
        if Some(b) != want {
            return Some(false);
        }
        want = expect.next();
        if want.is_none() {
            return Some(true);
        }
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let skip = b
        .iter()
        .take_while(|&&c| matches!(c, b' ' | b'\t' | b'\r'))
        .count();
    &b[skip..]
}

fn trim(b: &[u8]) -> &[u8] {
    let b = trim_start(b);
    let keep = b.len()
        - b.iter()
            .rev()
            .take_while(|&&c| matches!(c, b' ' | b'\t' | b'\r'))
            .count();
    &b[..keep]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"prompt_tokens_details\":{\"cached_tokens\":3}}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    /// Runs `stream` through a filter in reads of the given sizes, as the relay does: held
    /// bytes come back first in the next read. Returns what went out and the usage found.
    fn run(
        stream: &[u8],
        strip: bool,
        sizes: &mut dyn Iterator<Item = usize>,
    ) -> (Vec<u8>, Option<Usage>, usize) {
        let mut f = UsageEvents::new(strip);
        let mut out = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        let mut usage = None;
        let mut max_held = 0;
        let mut at = 0;
        while at < stream.len() {
            let n = sizes
                .next()
                .unwrap_or(usize::MAX)
                .clamp(1, stream.len() - at);
            let mut data = std::mem::take(&mut held);
            data.extend_from_slice(&stream[at..at + n]);
            at += n;
            let r = f.filter(&mut data, at == stream.len());
            out.extend_from_slice(&data[..r.keep]);
            held = data[r.keep..r.keep + r.held].to_vec();
            max_held = max_held.max(r.held);
            usage = r.usage.or(usage);
        }
        assert!(held.is_empty(), "nothing is held at the end");
        (out, usage, max_held)
    }

    fn want_usage() -> Option<Usage> {
        Some(Usage {
            prompt: 9,
            completion: 2,
            cached: 3,
            estimated: false,
        })
    }

    #[test]
    fn the_usage_event_is_removed_whatever_the_reads() {
        let stream = [CHUNK, CHUNK, USAGE, DONE].concat();
        let expected = [CHUNK, CHUNK, DONE].concat();
        for size in [1, 2, 3, 7, 50, 150, 151, 300, 10_000] {
            let (out, usage, held) = run(stream.as_bytes(), true, &mut std::iter::repeat(size));
            assert_eq!(String::from_utf8(out).unwrap(), expected, "reads of {size}");
            assert_eq!(usage, want_usage(), "reads of {size}");
            assert!(held <= USAGE.len(), "held {held}");
        }
    }

    #[test]
    fn a_client_that_asked_gets_it_untouched_and_counted() {
        let stream = [CHUNK, USAGE, DONE].concat();
        for size in [1, 5, 100, 10_000] {
            let (out, usage, _) = run(stream.as_bytes(), false, &mut std::iter::repeat(size));
            assert_eq!(String::from_utf8(out).unwrap(), stream);
            assert_eq!(usage, want_usage());
        }
    }

    #[test]
    fn only_the_usage_only_event_goes() {
        let crlf = USAGE.replace('\n', "\r\n");
        let stream = [CHUNK, &crlf, DONE].concat();
        let (out, usage, _) = run(stream.as_bytes(), true, &mut [7, 3, 200].into_iter());
        assert_eq!(String::from_utf8(out).unwrap(), [CHUNK, DONE].concat());
        assert_eq!(usage, want_usage());
        for keep in [
            // Usage in a chunk that has a choice, or a nested "choices".
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: {\"x\":{\"choices\":[1]},\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
            // No usage object; an event field; two data lines; a comment.
            "data: {\"choices\":[],\"usage\":null}\n\n",
            "event: usage\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\n",
            ": {\"choices\":[],\"usage\":{}}\n\n",
            "data: [DONE]\n\n",
        ] {
            let stream = [CHUNK, keep, CHUNK].concat();
            for size in [1, 4, 1000] {
                let (out, _, _) = run(stream.as_bytes(), true, &mut std::iter::repeat(size));
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    stream,
                    "{keep:?} in reads of {size}"
                );
            }
        }
    }

    #[test]
    fn ordinary_events_are_not_held_once_they_show_a_choice() {
        let mut f = UsageEvents::new(true);
        // A read that ends inside an ordinary chunk after its choices: passed at once.
        let cut = CHUNK.find("\"delta\"").unwrap();
        let mut data = CHUNK.as_bytes()[..cut].to_vec();
        assert_eq!(
            f.filter(&mut data, false),
            Filtered {
                keep: cut,
                held: 0,
                usage: None
            }
        );
        // Its rest passes through; the next event starts clean.
        let mut data = [&CHUNK[cut..], CHUNK].concat().into_bytes();
        let len = data.len();
        assert_eq!(f.filter(&mut data, false).keep, len);
        // A partial that cannot be usage (not data, not an object) passes too.
        for partial in [": ping", "event: x", "data: [DO", "data:\n{"] {
            let mut f = UsageEvents::new(true);
            let mut data = partial.as_bytes().to_vec();
            assert_eq!(f.filter(&mut data, false).held, 0, "{partial:?}");
        }
        // One that may be is held, bounded.
        let mut f = UsageEvents::new(true);
        let mut data = b"data: {\"id\":\"c\",\"obj".to_vec();
        assert_eq!(f.filter(&mut data, false).held, data.len());
        let mut long = b"data: {\"id\":\"".to_vec();
        long.resize(MAX_USAGE_EVENT + 1, b'x');
        assert_eq!(f.filter(&mut long, false).held, 0);
    }
}
