//! Reading a request body's JSON without building a tree: the top-level `model` string.
//!
//! Owns: the one-pass scanner that finds `model` (and reports where it is, so a rename can
//! splice just that string). Must not: allocate when the name has no escapes, or re-serialise
//! the body — it goes upstream byte for byte.

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
        // A key written with escapes (`"mod\u0065l"`) is still `model` to every JSON parser
        // upstream: compare it decoded, or the allow-list would check one model and the
        // upstream serve another (found by the model_peek fuzz target).
        let is_model = if key_escaped {
            let field = ModelField {
                span: key.clone(),
                escaped: true,
            };
            model_name(body, &field).is_some_and(|k| k == "model")
        } else {
            &body[key.clone()] == b"model"
        };
        if is_model && p.peek() == Some(b'"') {
            p.i += 1;
            let (span, escaped) = p.string()?;
            // JSON allows duplicate keys; like most parsers, the last one wins.
            found = Some(ModelField { span, escaped });
        } else {
            if is_model {
                // The last `model` is not a string: there is no model name to route by.
                found = None;
            }
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
    fn escaped_model_keys_count_and_the_last_model_wins() {
        assert_eq!(
            model(r#"{"model":"allowed","mod\u0065l":"other"}"#).as_deref(),
            Some("other")
        );
        assert_eq!(model(r#"{"\u006dodel":"m"}"#).as_deref(), Some("m"));
        assert_eq!(model(r#"{"model":"a","model":5}"#), None);
        assert_eq!(model(r#"{"model":"a","mode\u006c":null}"#), None);
        assert_eq!(
            model(r#"{"mod\nel":"x","model":"y"}"#).as_deref(),
            Some("y")
        );
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
}
