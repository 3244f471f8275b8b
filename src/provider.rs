//! What the relay needs to know about provider wire formats (OpenAI-compatible first).
//!
//! Owns: finding the `model` in a request body without building a JSON tree (the body goes
//! upstream byte-for-byte; only a `model_map` rename splices the one string), the relay's
//! OpenAI-shaped error bodies, and normalising an upstream error body into that shape.
//!
//! Must not: re-serialise request bodies on the passthrough path, or allocate per request when
//! no rename is needed.

use std::ops::Range;

/// Where the top-level `"model"` string sits in a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelField {
    /// The string's contents, between the quotes.
    pub span: Range<usize>,
    /// Contains backslash escapes; the caller must unescape before matching.
    pub escaped: bool,
}

/// Scan a JSON object for its top-level `"model"` string value.
/// `Err` when the body is not a JSON object; `Ok(None)` when there is no string `model`.
pub fn peek_model(body: &[u8]) -> Result<Option<ModelField>, &'static str> {
    let mut p = Scanner { b: body, i: 0 };
    p.ws();
    if p.next() != Some(b'{') {
        return Err("request body must be a JSON object");
    }
    let mut found = None;
    let mut first = true;
    loop {
        p.ws();
        match p.next() {
            // `{}` is fine; `{"a":1,}` is not.
            Some(b'}') if first => break,
            Some(b'"') => {}
            _ => return Err("malformed JSON in request body"),
        }
        first = false;
        let (key, key_escaped) = p.string()?;
        p.ws();
        if p.next() != Some(b':') {
            return Err("malformed JSON in request body");
        }
        p.ws();
        let is_model = !key_escaped && &body[key.clone()] == b"model";
        if is_model && p.peek() == Some(b'"') {
            p.i += 1;
            let (span, escaped) = p.string()?;
            // JSON allows duplicate keys; like most parsers, the last one wins.
            found = Some(ModelField { span, escaped });
        } else {
            p.skip_value()?;
        }
        p.ws();
        match p.next() {
            Some(b',') => continue,
            Some(b'}') => break,
            _ => return Err("malformed JSON in request body"),
        }
    }
    p.ws();
    if p.i != body.len() {
        return Err("trailing bytes after the JSON object");
    }
    Ok(found)
}

/// The model name as a string, unescaping only when the body used escapes.
pub fn model_name<'a>(body: &'a [u8], field: &ModelField) -> Option<std::borrow::Cow<'a, str>> {
    let raw = &body[field.span.clone()];
    if !field.escaped {
        return std::str::from_utf8(raw)
            .ok()
            .map(std::borrow::Cow::Borrowed);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .ok()
        .map(std::borrow::Cow::Owned)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    /// After an opening quote: returns the contents' range and whether escapes occur.
    fn string(&mut self) -> Result<(Range<usize>, bool), &'static str> {
        let start = self.i;
        let quote = self.close_quote()?;
        let escaped = memchr::memchr(b'\\', &self.b[start..quote]).is_some();
        Ok((start..quote, escaped))
    }

    /// After an opening quote: moves past the closing one (escapes not reported).
    fn skip_string(&mut self) -> Result<(), &'static str> {
        self.close_quote().map(|_| ())
    }

    /// Finds the closing quote of the string that starts at `self.i`, moves past it and returns
    /// its index. Jumps from quote to quote with memchr and looks back over backslashes only at a
    /// quote, so the common escapes in prompts (`\n`, `\t`) cost nothing: long message bodies are
    /// skipped at memchr speed.
    fn close_quote(&mut self) -> Result<usize, &'static str> {
        let start = self.i;
        let mut from = start;
        loop {
            let Some(off) = memchr::memchr(b'"', &self.b[from..]) else {
                return Err("unterminated string in request body");
            };
            let quote = from + off;
            let mut k = quote;
            while k > start && self.b[k - 1] == b'\\' {
                k -= 1;
            }
            if (quote - k).is_multiple_of(2) {
                self.i = quote + 1;
                return Ok(quote);
            }
            from = quote + 1;
        }
    }

    fn skip_value(&mut self) -> Result<(), &'static str> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.skip_string()
            }
            Some(b'{') | Some(b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.next() {
                        Some(b'{') | Some(b'[') => depth += 1,
                        Some(b'}') | Some(b']') => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                        Some(b'"') => self.skip_string()?,
                        Some(_) => {}
                        None => return Err("unterminated JSON value in request body"),
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.b.len()
                    && !matches!(
                        self.b[self.i],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'
                    )
                {
                    self.i += 1;
                }
                if self.i == start {
                    Err("malformed JSON in request body")
                } else {
                    Ok(())
                }
            }
            None => Err("malformed JSON in request body"),
        }
    }
}

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

/// Append the relay's own error body: `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
pub fn error_json(out: &mut Vec<u8>, message: &str, kind: &str, code: &str) {
    out.extend_from_slice(b"{\"error\":{\"message\":");
    json_string(out, message);
    out.extend_from_slice(b",\"type\":");
    json_string(out, kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    json_string(out, code);
    out.extend_from_slice(b"}}");
}

pub fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// An upstream non-2xx body turned into the relay's error shape, keeping the upstream's words.
pub fn normalise_upstream_error(status: u16, body: &[u8], truncated: bool) -> Vec<u8> {
    let parsed: Option<serde_json::Value> = if truncated {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    let mut message = None;
    let mut kind = None;
    let mut code = None;
    if let Some(v) = &parsed {
        let err = v.get("error");
        match err {
            Some(serde_json::Value::Object(e)) => {
                message = e.get("message").and_then(|m| m.as_str()).map(str::to_owned);
                kind = e.get("type").and_then(|m| m.as_str()).map(str::to_owned);
                code = match e.get("code") {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
            }
            Some(serde_json::Value::String(s)) => message = Some(s.clone()),
            _ => {}
        }
        if message.is_none() {
            message = v
                .get("message")
                .or_else(|| v.get("detail"))
                .and_then(|m| m.as_str())
                .map(str::to_owned);
        }
    }
    let message = message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
        let text = text.trim();
        if text.is_empty() {
            format!("upstream returned status {status}")
        } else if truncated || body.len() > 512 {
            format!("upstream returned status {status}: {text}...")
        } else {
            format!("upstream returned status {status}: {text}")
        }
    });
    let kind = kind.unwrap_or_else(|| "upstream_error".to_owned());
    let code = code.unwrap_or_else(|| format!("upstream_{status}"));
    let mut out = Vec::with_capacity(message.len() + 96);
    error_json(&mut out, &message, &kind, &code);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(body: &str) -> Option<String> {
        let b = body.as_bytes();
        peek_model(b)
            .unwrap()
            .map(|f| model_name(b, &f).unwrap().into_owned())
    }

    #[test]
    fn finds_model_anywhere_at_top_level() {
        assert_eq!(model(r#"{"model":"gpt-4o"}"#).as_deref(), Some("gpt-4o"));
        assert_eq!(
            model(r#" { "messages": [{"role":"user","content":"{\"model\":\"x\"}"}], "model" : "m1" , "n":1} "#)
                .as_deref(),
            Some("m1")
        );
        assert_eq!(model(r#"{"meta":{"model":"inner"},"stream":true}"#), None);
        assert_eq!(model(r#"{"model":"a\u0062c"}"#).as_deref(), Some("abc"));
        assert_eq!(
            model(r#"{"x":"q\"uote\\","y":["\\\"",{"model":"no"}],"model":"m\\"}"#).as_deref(),
            Some("m\\")
        );
        assert_eq!(model(r#"{"model":12}"#), None);
        assert_eq!(model(r#"{}"#), None);
    }

    #[test]
    fn rejects_non_objects() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"model":"x""#,
            r#"{"model":"x",}"#,
            r#"{"a":[1,2}"#,
            r#"{"model":"x"} trailing"#,
            "{\"a\":\"\\",
        ] {
            assert!(peek_model(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

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

    #[test]
    fn error_json_shape() {
        let mut out = Vec::new();
        error_json(
            &mut out,
            "bad \"key\"",
            "invalid_request_error",
            "invalid_api_key",
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["message"], "bad \"key\"");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn normalises_upstream_errors() {
        let v: serde_json::Value = serde_json::from_slice(&normalise_upstream_error(
            429,
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            false,
        ))
        .unwrap();
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        let v: serde_json::Value = serde_json::from_slice(&normalise_upstream_error(
            502,
            b"<html>bad gateway</html>",
            false,
        ))
        .unwrap();
        assert_eq!(v["error"]["code"], "upstream_502");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad gateway"));
    }
}
