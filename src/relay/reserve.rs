//! The quota reservation of a request: what it may cost, estimated from its body before it
//! goes upstream.
//!
//! Owns: the estimate — the body's top-level `max_tokens` / `max_completion_tokens` /
//! `max_output_tokens` (the largest when several are there), or `server.quota_reserve` when
//! none is (none for embeddings, which produce no completion, nor for Anthropic's
//! `count_tokens` or the Responses API's id routes), plus the prompt as body bytes / 4.
//! Read by a one-pass top-level scan (strings skipped at memchr speed), never a JSON tree, and
//! only for tokens with a quota.
//!
//! Must not: allocate, panic on any input, or decide anything — a body that is not JSON gets
//! the default reservation here and its 400 from `route`. The estimate may be wrong either way;
//! `finish` settles the real usage, and the README states how far the quota can be passed.

use super::exchange::{Endpoint, RelayKind};

/// Tokens to reserve for a request to `endpoint` with `body`; `default_completion` when the
/// body names no completion limit.
pub fn estimate(body: &[u8], endpoint: Endpoint, default_completion: u64) -> u64 {
    let prompt = body.len().div_ceil(4) as u64;
    let completion = match endpoint {
        Endpoint::Relay(
            RelayKind::Embeddings | RelayKind::CountTokens | RelayKind::ResponseById,
        ) => 0,
        _ => peek_max_tokens(body).unwrap_or(default_completion),
    };
    prompt.saturating_add(completion)
}

/// The larger of the top-level `max_tokens`, `max_completion_tokens` and `max_output_tokens`
/// (the Responses API's), when at least one is
/// a non-negative integer. Keys written with escapes are not recognised (the default applies).
pub fn peek_max_tokens(body: &[u8]) -> Option<u64> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found: Option<u64> = None;
    loop {
        i = skip_ws(body, i);
        if body.get(i) != Some(&b'"') {
            return found;
        }
        let key_start = i + 1;
        let key_end = close_quote(body, key_start)?;
        i = skip_ws(body, key_end + 1);
        if body.get(i) != Some(&b':') {
            return found;
        }
        i = skip_ws(body, i + 1);
        let key = body.get(key_start..key_end)?;
        if key == b"max_tokens" || key == b"max_completion_tokens" || key == b"max_output_tokens" {
            if let Some(n) = integer(body, i) {
                found = Some(found.map_or(n, |f| f.max(n)));
            }
        }
        i = skip_value(body, i)?;
        i = skip_ws(body, i);
        if body.get(i) != Some(&b',') {
            return found;
        }
        i += 1;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// From just after an opening quote: the index of the closing one.
fn close_quote(b: &[u8], start: usize) -> Option<usize> {
    let mut from = start;
    loop {
        let quote = from + memchr::memchr(b'"', b.get(from..)?)?;
        // Escaped when an odd number of backslashes precede it.
        let mut k = quote;
        while k > start && b[k - 1] == b'\\' {
            k -= 1;
        }
        if (quote - k).is_multiple_of(2) {
            return Some(quote);
        }
        from = quote + 1;
    }
}

/// A JSON integer at `i` (no sign, fraction or exponent), saturating at `u64::MAX`.
fn integer(b: &[u8], i: usize) -> Option<u64> {
    let digits = b.get(i..)?;
    let len = digits.iter().take_while(|d| d.is_ascii_digit()).count();
    if len == 0 || matches!(digits.get(len), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some(digits[..len].iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Past the value that starts at `i`; `None` when it does not end inside the body.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => close_quote(b, i + 1).map(|q| q + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *b.get(i)? {
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    b'"' => i = close_quote(b, i + 1)?,
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let start = i;
            while !matches!(
                b.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
            ) {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peek(s: &str) -> Option<u64> {
        peek_max_tokens(s.as_bytes())
    }

    #[test]
    fn finds_the_top_level_completion_limit_only() {
        assert_eq!(peek(r#"{"model":"m","max_tokens":32}"#), Some(32));
        assert_eq!(peek(r#"{ "max_completion_tokens" : 7 , "x": 1}"#), Some(7));
        assert_eq!(
            peek(r#"{"max_tokens":5,"max_completion_tokens":900}"#),
            Some(900)
        );
        // Inside a string or a nested object it is not the request's limit.
        assert_eq!(
            peek(r#"{"messages":[{"content":"\"max_tokens\":99","max_tokens":98}],"n":1}"#),
            None
        );
        assert_eq!(peek(r#"{"meta":{"max_tokens":3}}"#), None);
        assert_eq!(peek(r#"{"prompt":"a \\\" b","max_tokens":4}"#), Some(4));
        // Not a whole number: ignored.
        for v in ["-1", "1.5", "1e3", "\"8\"", "null", "true"] {
            assert_eq!(peek(&format!(r#"{{"max_tokens":{v}}}"#)), None, "{v}");
        }
        assert_eq!(
            peek(r#"{"max_tokens":99999999999999999999999}"#),
            Some(u64::MAX)
        );
    }

    #[test]
    fn any_input_is_fine() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi \"x\" [{"}],"max_tokens":12,"stream":true}"#;
        assert_eq!(peek_max_tokens(body), Some(12));
        // Every truncation and every single-byte corruption: no panic.
        for end in 0..body.len() {
            let _ = peek_max_tokens(&body[..end]);
        }
        for at in 0..body.len() {
            for byte in [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', 0xff] {
                let mut b = body.to_vec();
                b[at] = byte;
                let _ = peek_max_tokens(&b);
            }
        }
        for junk in [
            "",
            "[]",
            "{",
            "{\"",
            "{\"a\"",
            "{\"a\":",
            "]]]]",
            "{\"a\":}}",
        ] {
            assert_eq!(peek(junk), None, "{junk}");
        }
    }

    #[test]
    fn estimate_is_prompt_bytes_over_four_plus_the_completion_limit_or_default() {
        let chat = Endpoint::Relay(RelayKind::ChatCompletions);
        let body = br#"{"model":"m","max_tokens":32}"#; // 29 bytes: 8 prompt tokens
        assert_eq!(estimate(body, chat, 1024), 8 + 32);
        assert_eq!(estimate(br#"{"model":"m"}"#, chat, 1024), 4 + 1024);
        let emb = Endpoint::Relay(RelayKind::Embeddings);
        assert_eq!(estimate(body, emb, 1024), 8);
    }
}
