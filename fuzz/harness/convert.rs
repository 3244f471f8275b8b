//! The protocol conversion layer: the SSE event parser and each Anthropic ⇄ OpenAI converter.
//!
//! Besides "no panic", each asserts that output stays bounded by its input (no amplification)
//! and is well formed where it is produced: converted bodies are JSON objects, converted streams
//! are the same bytes however the input is split into reads.

use ringway::internals::convert::{
    errors, from_anthropic_request, from_anthropic_response, to_anthropic_request,
    to_anthropic_response, write_data, write_event, AnthropicToOpenAiStream,
    OpenAiToAnthropicStream, SseError, SseParser,
};
use serde_json::Value;

use super::{split_seed, Splits};

/// Output a converter may write for `input` bytes: a constant (a message's opening and closing
/// events) plus a fixed factor per input byte.
fn bound(input: usize) -> usize {
    32 * input + 4096
}

fn assert_object(out: &[u8], what: &str) {
    match serde_json::from_slice::<Value>(out) {
        Ok(Value::Object(_)) => {}
        other => panic!("{what} produced a non-object: {other:?}"),
    }
}

// ---- SSE parser ------------------------------------------------------------------------------

type Events = Vec<(Vec<u8>, Vec<u8>)>;

fn parse_reads(limit: usize, reads: &[&[u8]]) -> (Events, Option<SseError>, usize) {
    let mut p = SseParser::new(limit);
    let mut events = Vec::new();
    let mut max_state = 0;
    for r in reads {
        let res = p.feed(r, |e| {
            events.push((e.name.to_vec(), e.data.to_vec()));
            Ok::<(), SseError>(())
        });
        max_state = max_state.max(p.state_bytes());
        if let Err(e) = res {
            return (events, Some(e), max_state);
        }
    }
    (events, None, max_state)
}

/// 4 seed bytes (read boundaries), 2 bytes of event size limit, then a stream.
pub fn sse_parse(data: &[u8]) {
    let (seed, rest) = split_seed(data, 4);
    let (limit, stream) = split_seed(rest, 2);
    let limit = match limit {
        [a, b] => 1 + (u16::from_le_bytes([*a, *b]) as usize % 4096),
        _ => 64,
    };
    let whole = parse_reads(limit, &[stream]);
    let reads = Splits::new(seed).pieces(stream);
    let split = parse_reads(limit, &reads);
    assert_eq!(whole.0, split.0, "events differ by read boundaries");
    assert_eq!(whole.1, split.1, "errors differ by read boundaries");
    if stream.len() <= 2048 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let one = parse_reads(limit, &bytes);
        assert_eq!(whole.0, one.0, "events differ byte at a time");
        assert_eq!(whole.1, one.1);
    }
    // Memory: one event, however long the stream.
    for (_, _, max_state) in [&whole, &split] {
        assert!(
            *max_state <= 6 * (limit + 1) + 64,
            "parser held {max_state} bytes with a {limit}-byte limit"
        );
    }
    for (name, data) in &whole.0 {
        assert!(name.len() + data.len() <= limit + 1);
        assert!(!name.contains(&b'\n') && !name.contains(&b'\r'));
        assert!(!data.contains(&b'\r'));
        // What the writers write reads back as the same event.
        let mut out = Vec::new();
        match std::str::from_utf8(name) {
            Ok(n) if !n.is_empty() => write_event(&mut out, n, data),
            _ => write_data(&mut out, data),
        }
        let (again, err, _) = parse_reads(usize::MAX, &[&out]);
        assert!(err.is_none());
        assert_eq!(again.len(), 1, "a written event reads back as one");
        assert_eq!(&again[0].1, data);
        if std::str::from_utf8(name).is_ok() {
            assert_eq!(&again[0].0, name);
        }
    }
}

// ---- requests, responses, errors -------------------------------------------------------------

pub fn convert_request_to_anthropic(body: &[u8]) {
    if let Ok(r) = to_anthropic_request(body, "claude-fuzz", 4096) {
        assert_object(&r.body, "to_anthropic_request");
        assert!(
            r.body.len() <= bound(body.len()),
            "request grew {} -> {}",
            body.len(),
            r.body.len()
        );
        assert!(r.stream || !r.include_usage, "include_usage without stream");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["max_tokens"].is_u64(), "Anthropic requires max_tokens");
        assert!(v["messages"].is_array());
    }
}

pub fn convert_request_from_anthropic(body: &[u8]) {
    if let Ok((out, stream)) = from_anthropic_request(body, "gpt-fuzz") {
        assert_object(&out, "from_anthropic_request");
        assert!(
            out.len() <= bound(body.len()),
            "request grew {} -> {}",
            body.len(),
            out.len()
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream"].as_bool().unwrap_or(false), stream);
        if stream {
            assert_eq!(v["stream_options"]["include_usage"], true);
        }
    }
}

pub fn convert_response_from_anthropic(body: &[u8]) {
    if let Ok((out, usage)) = from_anthropic_response(body, 1_700_000_000) {
        assert_object(&out, "from_anthropic_response");
        assert!(out.len() <= bound(body.len()));
        assert!(usage.cached <= usage.prompt);
    }
}

pub fn convert_response_to_anthropic(body: &[u8]) {
    if let Ok((out, _)) = to_anthropic_response(body) {
        assert_object(&out, "to_anthropic_response");
        assert!(out.len() <= bound(body.len()));
    }
}

/// 2 bytes of status, then an error body; both directions.
pub fn convert_error(data: &[u8]) {
    let (status, body) = split_seed(data, 2);
    let status = match status {
        [a, b] => 100 + u16::from_le_bytes([*a, *b]) % 500,
        _ => 500,
    };
    for truncated in [false, true] {
        let a = errors::openai_error_to_anthropic(status, body, truncated);
        assert_object(&a, "openai_error_to_anthropic");
        assert!(a.len() <= 8 * body.len() + 512);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], errors::error_type_for_status(status));
        let o = errors::anthropic_error_to_openai(status, body, truncated);
        assert_object(&o, "anthropic_error_to_openai");
        assert!(o.len() <= 8 * body.len() + 512);
    }
    let e = errors::stream_error(body);
    assert!((400..600).contains(&e.status));
}

// ---- streams -----------------------------------------------------------------------------------

/// One read into a stream converter: its output appended, or the error code that ends it.
type Feed<C> = fn(&mut C, &[u8], &mut Vec<u8>) -> Result<(), String>;

/// The output and the error (code) of a converter over `reads`, the end of stream included.
fn stream_run<C>(
    mut c: C,
    reads: &[&[u8]],
    feed: Feed<C>,
    end: fn(&mut C, &mut Vec<u8>) -> Result<(), String>,
    state: fn(&C) -> usize,
) -> (Vec<u8>, Option<String>, usize) {
    let mut out = Vec::new();
    let mut max_state = 0;
    for r in reads {
        let res = feed(&mut c, r, &mut out);
        max_state = max_state.max(state(&c));
        if let Err(e) = res {
            return (out, Some(e), max_state);
        }
    }
    let res = end(&mut c, &mut out);
    (out, res.err(), max_state)
}

const STREAM_LIMIT: usize = 4096;

/// 1 flag byte (`include_usage`), 4 seed bytes (read boundaries), then an Anthropic stream.
pub fn convert_stream_from_anthropic(data: &[u8]) {
    let (flags, rest) = split_seed(data, 1);
    let (seed, stream) = split_seed(rest, 4);
    let include_usage = flags.first().is_some_and(|f| f & 1 == 1);
    let run = |reads: &[&[u8]]| {
        stream_run(
            AnthropicToOpenAiStream::new(include_usage, 1_700_000_000, STREAM_LIMIT),
            reads,
            |c, r, o| c.feed(r, o).map_err(|e| e.code.into_owned()),
            |c, _| c.finish().map_err(|e| e.code.into_owned()),
            |c| c.state_bytes(),
        )
    };
    check_stream(stream, seed, run);
}

/// 4 seed bytes (read boundaries), then an OpenAI chunk stream.
pub fn convert_stream_to_anthropic(data: &[u8]) {
    let (seed, stream) = split_seed(data, 4);
    let run = |reads: &[&[u8]]| {
        stream_run(
            OpenAiToAnthropicStream::new(STREAM_LIMIT),
            reads,
            |c, r, o| c.feed(r, o).map_err(|e| e.code.into_owned()),
            |c, o| c.finish(o).map_err(|e| e.code.into_owned()),
            |c| c.state_bytes(),
        )
    };
    check_stream(stream, seed, run);
}

fn check_stream(
    stream: &[u8],
    seed: &[u8],
    run: impl Fn(&[&[u8]]) -> (Vec<u8>, Option<String>, usize),
) {
    let whole = run(&[stream]);
    let reads = Splits::new(seed).pieces(stream);
    let split = run(&reads);
    assert_eq!(whole.1, split.1, "stream errors differ by read boundaries");
    assert!(
        whole.0 == split.0,
        "stream output differs by read boundaries"
    );
    assert!(
        whole.0.len() <= bound(stream.len()),
        "stream grew {} -> {}",
        stream.len(),
        whole.0.len()
    );
    // One event's worth of parser plus a few ids, never the output.
    assert!(
        whole.2 <= 6 * (STREAM_LIMIT + 1) + 2048,
        "stream state {} bytes",
        whole.2
    );
    // Whatever was written is well-formed SSE: whole events, each data line JSON or [DONE].
    let (events, err, _) = parse_reads(usize::MAX, &[&whole.0]);
    assert!(err.is_none());
    let mut p = SseParser::new(usize::MAX);
    let _ = p.feed(&whole.0, |_| Ok::<(), SseError>(()));
    assert!(p.at_boundary(), "converted output ends mid-event");
    for (_, data) in events {
        if data != b"[DONE]" {
            assert_object(&data, "a converted stream event");
        }
    }
}
