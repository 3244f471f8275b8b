//! Token usage as upstreams report it, found in body bytes without parsing them, and the
//! estimate that stands in for it when no report arrives.
//!
//! Owns: [`Usage`], the scan that finds its numbers in a response body or in any relayed chunk
//! of a stream, the count of answer text bytes ([`content_bytes`]) and [`Usage::estimate`].
//! Must not: allocate, or keep state across chunks.

/// Token counts for one request: reported by the upstream (`usage` in a response body or a
/// stream's last event), or estimated from byte counts when no report arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens served from the upstream's prompt cache (part of `prompt`):
    /// `prompt_tokens_details.cached_tokens` (OpenAI), `prompt_cache_hit_tokens` (DeepSeek),
    /// `cache_read_input_tokens` (Anthropic).
    pub cached: u64,
    /// No report arrived: the figures are [`Usage::estimate`]'s.
    pub estimated: bool,
}

/// Bytes per token the estimate assumes (English text and JSON average about 4).
const BYTES_PER_TOKEN: u64 = 4;

impl Usage {
    /// Prompt plus completion (OpenAI's `total_tokens`).
    #[inline]
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// The stand-in when an upstream's report never arrived (the client left, the upstream cut
    /// the stream or does not report usage): a quarter of the request body's bytes for the
    /// prompt (at least one token) and a quarter of the answer text's bytes (rounded up) for the
    /// completion. Never zero, and never more than the bytes that went each way could carry.
    pub fn estimate(body_bytes: u64, content_bytes: u64) -> Usage {
        Usage {
            prompt: (body_bytes / BYTES_PER_TOKEN).max(1),
            completion: content_bytes.div_ceil(BYTES_PER_TOKEN),
            cached: 0,
            estimated: true,
        }
    }
}

/// Find `"prompt_tokens": N` / `"completion_tokens": N` (OpenAI) or `"input_tokens"` /
/// `"output_tokens"` (Anthropic, Responses), and the cached prompt tokens, in a body slice without
/// parsing it. Costs one memchr-driven search per slice when the slice carries no usage, so it
/// can run on every relayed chunk. Anthropic counts cache writes and reads apart from
/// `input_tokens`: the prompt is `input_tokens + cache_creation_input_tokens +
/// cache_read_input_tokens`, the cached part `cache_read_input_tokens`.
pub fn scan_usage(data: &[u8]) -> Option<Usage> {
    update_usage(None, data)
}

/// `previous` with the usage reported in `data` applied: each side (prompt, completion) that
/// `data` reports replaces the previous reading's, a side it does not report stays. An
/// Anthropic stream reports its prompt in `message_start` and the final `output_tokens` in
/// `message_delta`; an OpenAI report carries both sides at once. Within `data` the last value
/// of each field wins (one read may hold both Anthropic events). `previous` when `data` reports
/// neither side.
pub fn update_usage(previous: Option<Usage>, data: &[u8]) -> Option<Usage> {
    // Built once: constructing a searcher per call cost more than the search itself.
    static TOKENS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"_tokens\""));
    let mut prompt = None;
    let mut completion = None;
    let mut cached = None;
    let mut cache_creation = None;
    let mut cache_read = None;
    for at in TOKENS.find_iter(data) {
        let key = &data[..at];
        let value = number_after_colon(&data[at + 8..]);
        let slot = if key.ends_with(b"\"prompt") || key.ends_with(b"\"input") {
            &mut prompt
        } else if key.ends_with(b"\"completion") || key.ends_with(b"\"output") {
            &mut completion
        } else if key.ends_with(b"\"cached") || key.ends_with(b"\"prompt_cache_hit") {
            &mut cached
        } else if key.ends_with(b"\"cache_creation_input") {
            &mut cache_creation
        } else if key.ends_with(b"\"cache_read_input") {
            &mut cache_read
        } else {
            continue;
        };
        if value.is_some() {
            *slot = value;
        }
    }
    if prompt.is_none() && completion.is_none() {
        return previous;
    }
    let mut usage = Usage {
        estimated: false,
        ..previous.unwrap_or_default()
    };
    if prompt.is_some() || cache_creation.is_some() || cache_read.is_some() {
        usage.prompt = prompt
            .unwrap_or(0)
            .saturating_add(cache_creation.unwrap_or(0))
            .saturating_add(cache_read.unwrap_or(0));
        usage.cached = cache_read.or(cached).unwrap_or(0);
    }
    if let Some(c) = completion {
        usage.completion = c;
    }
    Some(usage)
}

/// Bytes of answer text in `data`: the contents of every `"content":"…"` (chat) and
/// `"text":"…"` (completions) string, escapes counted as written. A string cut by the end of
/// `data` counts up to there. The estimate's completion side; one memchr-driven pass.
pub fn content_bytes(data: &[u8]) -> u64 {
    static QUOTE_COLON: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\":\""));
    let mut total = 0u64;
    let mut from = 0;
    while let Some(off) = QUOTE_COLON.find(&data[from..]) {
        let at = from + off;
        let start = at + 3;
        let key = &data[..at];
        let end = string_end(data, start);
        if key.ends_with(b"\"content") || key.ends_with(b"\"text") {
            total += (end - start) as u64;
        }
        // Skip the string value: a `":"` inside it is no key.
        from = (end + 1).min(data.len());
    }
    total
}

/// The index of the closing quote of the string whose contents start at `start`, or
/// `data.len()` when it is cut off.
fn string_end(data: &[u8], start: usize) -> usize {
    let mut from = start;
    while let Some(off) = memchr::memchr(b'"', &data[from.min(data.len())..]) {
        let quote = from + off;
        let mut k = quote;
        while k > start && data[k - 1] == b'\\' {
            k -= 1;
        }
        if (quote - k).is_multiple_of(2) {
            return quote;
        }
        from = quote + 1;
    }
    data.len()
}

/// `  : 123` -> 123.
fn number_after_colon(data: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < data.len() && matches!(data[i], b' ' | b':' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    let start = i;
    while i < data.len() && data[i].is_ascii_digit() && i - start < 19 {
        i += 1;
    }
    crate::wire::parse_decimal(&data[start..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(prompt: u64, completion: u64, cached: u64) -> Option<Usage> {
        Some(Usage {
            prompt,
            completion,
            cached,
            estimated: false,
        })
    }

    #[test]
    fn finds_usage() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":9,"completion_tokens": 7,"total_tokens":16}}"#;
        assert_eq!(scan_usage(body), reported(9, 7, 0));
        let anthropic = br#"{"usage":{"input_tokens":12,"output_tokens":30}}"#;
        assert_eq!(scan_usage(anthropic), reported(12, 30, 0));
        assert_eq!(
            scan_usage(br#"data: {"choices":[{"delta":{"content":"tok"}}]}"#),
            None
        );
        assert_eq!(scan_usage(br#"{"max_tokens":"x"}"#), None);
    }

    #[test]
    fn finds_cached_prompt_tokens() {
        let openai = br#"{"choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        assert_eq!(scan_usage(openai), reported(2006, 300, 1920));
        let deepseek = br#"{"usage":{"prompt_tokens":50,"completion_tokens":5,"prompt_cache_hit_tokens":32,"prompt_cache_miss_tokens":18}}"#;
        assert_eq!(scan_usage(deepseek), reported(50, 5, 32));
        let anthropic =
            br#"{"usage":{"input_tokens":10,"cache_read_input_tokens":7,"output_tokens":3}}"#;
        assert_eq!(scan_usage(anthropic), reported(17, 3, 7));
        let anthropic = br#"{"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"cache_creation":{"ephemeral_5m_input_tokens":5},"output_tokens":3}}"#;
        assert_eq!(scan_usage(anthropic), reported(22, 3, 7));
        // Cached tokens alone are no report.
        assert_eq!(scan_usage(br#"{"cached_tokens":4}"#), None);
    }

    #[test]
    fn an_anthropic_stream_adds_up() {
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":4,\"cache_read_input_tokens\":6,\"output_tokens\":1}}}\n\n";
        let delta = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n";
        // Read by read: message_delta replaces the completion only.
        let u = update_usage(scan_usage(start), b"event: ping\ndata: {}\n\n");
        assert_eq!(u, reported(35, 1, 6));
        assert_eq!(update_usage(u, delta), reported(35, 15, 6));
        // Both events in one read: the last output_tokens wins.
        let both = [&start[..], &delta[..]].concat();
        assert_eq!(scan_usage(&both), reported(35, 15, 6));
        // An OpenAI report replaces both sides.
        let openai = br#"{"usage":{"prompt_tokens":9,"completion_tokens":7}}"#;
        assert_eq!(update_usage(reported(1, 2, 3), openai), reported(9, 7, 0));
    }

    #[test]
    fn counts_answer_text() {
        let chunk = br#"data: {"model":"m","choices":[{"index":0,"delta":{"content":"tok12"},"finish_reason":null}]}"#;
        assert_eq!(content_bytes(chunk), 5);
        let escaped = br#"{"choices":[{"message":{"role":"assistant","content":"a\"b\\"}}]}"#;
        assert_eq!(content_bytes(escaped), 6);
        // A key-like `":"` inside a value is not a key.
        let tricky = br#"{"content":"x\":\"yy","text":"abc"}"#;
        assert_eq!(content_bytes(tricky), 8 + 3);
        // Cut off mid-string: counted up to the cut.
        assert_eq!(content_bytes(br#"{"content":"abcd"#), 4);
        assert_eq!(content_bytes(br#"{"content":null}"#), 0);
    }

    #[test]
    fn an_estimate_is_never_zero() {
        let e = Usage::estimate(0, 0);
        assert!(e.estimated && e.prompt == 1 && e.completion == 0);
        let e = Usage::estimate(400, 41);
        assert_eq!((e.prompt, e.completion, e.total()), (100, 11, 111));
    }
}
