//! Reading a request body's JSON without building a tree: the top-level `model` string, and
//! whether a stream asked for its usage report.
//!
//! Owns: the one-pass scanner that finds `model` (and reports where it is, so a rename can
//! splice just that string), `stream` and `stream_options.include_usage` (and the one edit that
//! asks an upstream for usage when a streaming client did not), and [`write_edited`], which
//! writes a body with such edits. Must not: allocate when the name has no escapes, or
//! re-serialise the body — it goes upstream byte for byte but for those edits.

use std::ops::Range;

/// Where the top-level `"model"` string sits in a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelField {
    /// The string's contents, between the quotes.
    pub span: Range<usize>,
    /// Contains backslash escapes; the caller must unescape before matching.
    pub escaped: bool,
}

/// What the relay reads from a request body, in one top-level pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestPeek {
    /// The top-level `"model"` string (the last one, as JSON parsers take duplicates).
    pub model: Option<ModelField>,
    /// `"stream": true` at the top level.
    pub stream: bool,
    /// For a stream whose client did not ask for `stream_options.include_usage`: the edit that
    /// asks the upstream for it. `None` when not streaming or when the client asked itself.
    pub usage_splice: Option<BodySplice>,
}

/// One edit of a request body: `body[start..end]` replaced by `with` (an insertion when the
/// range is empty). Offsets are into the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodySplice {
    pub start: usize,
    pub end: usize,
    pub with: &'static [u8],
}

/// The last top-level `stream_options` as the scan saw it.
enum StreamOptions {
    Absent,
    /// Not an object (`null`, or anything a parser would refuse later): this value's range.
    NotObject(Range<usize>),
    /// An object: the index just after its `{`, whether it has no member, and its last
    /// `include_usage` (value range, whether it is `true`).
    Object {
        inside: usize,
        empty: bool,
        include_usage: Option<(Range<usize>, bool)>,
    },
}

/// Scan a JSON object for its top-level `"model"` string value.
/// `Err` when the body is not a JSON object; `Ok(None)` when there is no string `model`.
pub fn peek_model(body: &[u8]) -> Result<Option<ModelField>, &'static str> {
    peek_request(body).map(|peek| peek.model)
}

/// Scan a JSON object's top level for `model`, `stream` and `stream_options` (keys written with
/// escapes count as their decoded names; nested objects are skipped, so a `"stream"` inside a
/// message is never taken for the top-level one). `Err` when the body is not a JSON object.
pub fn peek_request(body: &[u8]) -> Result<RequestPeek, &'static str> {
    let mut p = Scanner { b: body, i: 0 };
    p.ws();
    if p.next() != Some(b'{') {
        return Err("request body must be a JSON object");
    }
    let top_inside = p.i;
    let mut found = None;
    let mut stream = false;
    let mut options = StreamOptions::Absent;
    p.members(|p, key, key_escaped| {
        if key_is(body, &key, key_escaped, b"model") {
            if p.peek() == Some(b'"') {
                p.i += 1;
                let (span, escaped) = p.string()?;
                // JSON allows duplicate keys; like most parsers, the last one wins.
                found = Some(ModelField { span, escaped });
                return Ok(());
            }
            // The last `model` is not a string: there is no model name to route by.
            found = None;
        } else if key_is(body, &key, key_escaped, b"stream") {
            let at = p.i;
            p.skip_value()?;
            stream = &body[at..p.i] == b"true";
            return Ok(());
        } else if key_is(body, &key, key_escaped, b"stream_options") {
            options = p.stream_options()?;
            return Ok(());
        }
        p.skip_value()
    })?;
    p.ws();
    if p.i != body.len() {
        return Err("trailing bytes after the JSON object");
    }
    let usage_splice = if !stream {
        None
    } else {
        match options {
            StreamOptions::Absent => Some(BodySplice {
                start: top_inside,
                end: top_inside,
                // `stream` is a member, so the object is not empty: a comma follows.
                with: br#""stream_options":{"include_usage":true},"#,
            }),
            StreamOptions::NotObject(value) => Some(BodySplice {
                start: value.start,
                end: value.end,
                with: br#"{"include_usage":true}"#,
            }),
            StreamOptions::Object {
                include_usage: Some((_, true)),
                ..
            } => None,
            StreamOptions::Object {
                include_usage: Some((value, false)),
                ..
            } => Some(BodySplice {
                start: value.start,
                end: value.end,
                with: b"true",
            }),
            StreamOptions::Object {
                inside,
                empty,
                include_usage: None,
            } => Some(BodySplice {
                start: inside,
                end: inside,
                with: if empty {
                    br#""include_usage":true"#
                } else {
                    br#""include_usage":true,"#
                },
            }),
        }
    };
    Ok(RequestPeek {
        model: found,
        stream,
        usage_splice,
    })
}

/// Whether the key at `span` is `name`. A key written with escapes (`"mod\u0065l"`) is still
/// `model` to every JSON parser upstream: compare it decoded, or the allow-list would check one
/// model and the upstream serve another (found by the model_peek fuzz target).
fn key_is(body: &[u8], span: &Range<usize>, escaped: bool, name: &[u8]) -> bool {
    if escaped {
        let field = ModelField {
            span: span.clone(),
            escaped: true,
        };
        model_name(body, &field).is_some_and(|k| k.as_bytes() == name)
    } else {
        &body[span.clone()] == name
    }
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

/// Whether `json` is one object whose top-level `choices` is an empty array and whose
/// top-level `usage` is an object: the usage-only chunk that ends an OpenAI stream asked for
/// `include_usage`.
pub fn is_usage_only_chunk(json: &[u8]) -> bool {
    let mut p = Scanner { b: json, i: 0 };
    p.ws();
    if p.next() != Some(b'{') {
        return false;
    }
    let (mut choices_empty, mut usage_object) = (false, false);
    let walked = p.members(|p, key, key_escaped| {
        let at = p.i;
        p.skip_value()?;
        let value = &json[at..p.i];
        if key_is(json, &key, key_escaped, b"choices") {
            choices_empty =
                value.starts_with(b"[") && value[1..value.len() - 1].trim_ascii().is_empty();
        } else if key_is(json, &key, key_escaped, b"usage") {
            usage_object = value.starts_with(b"{");
        }
        Ok(())
    });
    p.ws();
    walked.is_ok() && p.i == json.len() && choices_empty && usage_object
}

/// The body's length once `edits` are made.
pub fn edited_len(body: &[u8], edits: &[(Range<usize>, &[u8])]) -> usize {
    edits
        .iter()
        .fold(body.len(), |n, (range, with)| n - range.len() + with.len())
}

/// Append `body` to `out` with each `edits` range replaced by its bytes. The edits must not
/// overlap; they are applied in body order whatever order they come in.
pub fn write_edited(out: &mut Vec<u8>, body: &[u8], edits: &mut [(Range<usize>, &[u8])]) {
    edits.sort_unstable_by_key(|(range, _)| range.start);
    let mut at = 0;
    for (range, with) in edits.iter() {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(with);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
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

    /// The members of the object whose `{` was just read, through its `}`: `member` is called
    /// with the scanner at each value (whitespace skipped) and must consume it.
    fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, Range<usize>, bool) -> Result<(), &'static str>,
    ) -> Result<(), &'static str> {
        let mut first = true;
        loop {
            self.ws();
            match self.next() {
                // `{}` is fine; `{"a":1,}` is not.
                Some(b'}') if first => return Ok(()),
                Some(b'"') => {}
                _ => return Err("malformed JSON in request body"),
            }
            first = false;
            let (key, key_escaped) = self.string()?;
            self.ws();
            if self.next() != Some(b':') {
                return Err("malformed JSON in request body");
            }
            self.ws();
            member(self, key, key_escaped)?;
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err("malformed JSON in request body"),
            }
        }
    }

    /// A `stream_options` value: where `include_usage` is, or where it would go.
    fn stream_options(&mut self) -> Result<StreamOptions, &'static str> {
        let at = self.i;
        if self.peek() != Some(b'{') {
            self.skip_value()?;
            return Ok(StreamOptions::NotObject(at..self.i));
        }
        self.i += 1;
        let inside = self.i;
        let mut empty = true;
        let mut include_usage = None;
        let b = self.b;
        self.members(|p, key, key_escaped| {
            empty = false;
            let value = p.i;
            p.skip_value()?;
            if key_is(b, &key, key_escaped, b"include_usage") {
                include_usage = Some((value..p.i, &b[value..p.i] == b"true"));
            }
            Ok(())
        })?;
        Ok(StreamOptions::Object {
            inside,
            empty,
            include_usage,
        })
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

    /// The body the upstream gets: the usage splice applied (and nothing when there is none).
    fn asked(body: &str) -> (serde_json::Value, bool) {
        let peek = peek_request(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut edits: Vec<(Range<usize>, &[u8])> = peek
            .usage_splice
            .iter()
            .map(|s| (s.start..s.end, s.with))
            .collect();
        assert_eq!(edited_len(body.as_bytes(), &edits), {
            write_edited(&mut out, body.as_bytes(), &mut edits);
            out.len()
        });
        let v = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        (v, peek.usage_splice.is_some())
    }

    #[test]
    fn a_stream_without_include_usage_gets_it() {
        let (v, spliced) = asked(r#"{"model":"m","stream":true,"messages":[]}"#);
        assert!(spliced);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            (v["model"].as_str(), v["stream"].as_bool()),
            (Some("m"), Some(true))
        );

        // Into an existing stream_options, empty or not.
        let (v, _) = asked(r#"{"model":"m","stream":true,"stream_options":{}}"#);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        let (v, _) = asked(
            r#"{"stream_options": { "x" : [1,{"include_usage":false}] },"stream":true,"model":"m"}"#,
        );
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": [1, {"include_usage": false}]})
        );
        // include_usage false (or null) becomes true; a null stream_options becomes an object.
        let (v, spliced) =
            asked(r#"{"model":"m","stream":true,"stream_options":{"include_usage": false}}"#);
        assert!(spliced);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let (v, _) =
            asked(r#"{"model":"m","stream":true,"stream_options":{"include_usage":null,"a":1}}"#);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "a": 1})
        );
        let (v, _) = asked(r#"{"model":"m","stream":true,"stream_options":null}"#);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true})
        );
    }

    #[test]
    fn a_client_that_asked_or_does_not_stream_is_left_alone() {
        for body in [
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m","stream":"true"}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","stream":true,"stream":false}"#,
        ] {
            let peek = peek_request(body.as_bytes()).unwrap();
            assert_eq!(peek.usage_splice, None, "{body}");
        }
        // Escaped keys are their decoded names.
        let peek = peek_request(br#"{"model":"m","str\u0065am":true,"stream_\u006fptions":{"include_\u0075sage":true}}"#).unwrap();
        assert!(peek.stream);
        assert_eq!(peek.usage_splice, None);
        let (v, spliced) = asked(r#"{"model":"m","\u0073tream":true}"#);
        assert!(spliced);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn nested_stream_keys_are_not_the_top_level_ones() {
        // `stream` inside a message, in a string, or in a nested object is not the request's.
        for body in [
            r#"{"model":"m","messages":[{"role":"user","content":"x","stream":true}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"\"stream\":true"}]}"#,
            r#"{"model":"m","metadata":{"stream":true,"stream_options":{}}}"#,
        ] {
            let peek = peek_request(body.as_bytes()).unwrap();
            assert!(!peek.stream, "{body}");
            assert_eq!(peek.usage_splice, None, "{body}");
        }
        // A nested stream_options does not count as the top-level one either.
        let (v, spliced) = asked(
            r#"{"messages":[{"role":"user","content":"hi","stream_options":{"include_usage":true}}],"model":"m","stream":true}"#,
        );
        assert!(spliced);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["stream_options"]["include_usage"], true);
    }

    #[test]
    fn a_rename_and_the_usage_splice_combine() {
        let body = br#"{"model":"alias","stream":true,"stream_options":{"a":1}}"#;
        let peek = peek_request(body).unwrap();
        let model = peek.model.unwrap();
        let usage = peek.usage_splice.unwrap();
        let mut edits: [(Range<usize>, &[u8]); 2] = [
            (usage.start..usage.end, usage.with),
            (model.span.clone(), b"real-model"),
        ];
        let mut out = Vec::new();
        let len = edited_len(body, &edits);
        write_edited(&mut out, body, &mut edits);
        assert_eq!(out.len(), len);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"real-model","stream":true,"stream_options":{"include_usage":true,"a":1}}"#
        );
    }
}
