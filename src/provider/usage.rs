//! Token usage as upstreams report it, found in body bytes without parsing them.
//!
//! Owns: [`Usage`] and the scan that finds its numbers in a response body or in any relayed
//! chunk of a stream. Must not: allocate, or keep state across chunks.

/// Token counts reported by an upstream (`usage` in a response body or a stream's last chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// Find `"prompt_tokens": N` / `"completion_tokens": N` (OpenAI) or `"input_tokens"` /
/// `"output_tokens"` (Anthropic) in a body slice without parsing it. Costs one memchr-driven
/// search per slice when the slice carries no usage, so it can run on every relayed chunk.
pub fn scan_usage(data: &[u8]) -> Option<Usage> {
    // Built once: constructing a searcher per call cost more than the search itself.
    static TOKENS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"_tokens\""));
    let mut prompt = None;
    let mut completion = None;
    for at in TOKENS.find_iter(data) {
        let key = &data[..at];
        let value = || number_after_colon(&data[at + 8..]);
        if key.ends_with(b"\"prompt") || key.ends_with(b"\"input") {
            prompt = prompt.or_else(value);
        } else if key.ends_with(b"\"completion") || key.ends_with(b"\"output") {
            completion = completion.or_else(value);
        }
    }
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some(Usage {
        prompt: prompt.unwrap_or(0),
        completion: completion.unwrap_or(0),
    })
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

    #[test]
    fn finds_usage() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":9,"completion_tokens": 7,"total_tokens":16}}"#;
        assert_eq!(
            scan_usage(body),
            Some(Usage {
                prompt: 9,
                completion: 7
            })
        );
        let anthropic = br#"{"usage":{"input_tokens":12,"output_tokens":30}}"#;
        assert_eq!(
            scan_usage(anthropic),
            Some(Usage {
                prompt: 12,
                completion: 30
            })
        );
        assert_eq!(
            scan_usage(br#"data: {"choices":[{"delta":{"content":"tok"}}]}"#),
            None
        );
        assert_eq!(scan_usage(br#"{"max_tokens":"x"}"#), None);
    }
}
