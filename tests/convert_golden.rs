//! Golden files for the Anthropic Messages ⇄ OpenAI chat conversions, and the stream
//! converters' split-independence and bounded state.
//!
//! `tests/golden/convert/<converter>.<case>.in.(json|sse)` goes through the converter named by
//! its first part and must give `<converter>.<case>.out.(json|sse)`, compared field by field
//! (JSON values) or event by event (event name, then the data as JSON, or as bytes for
//! `[DONE]`). What a converter returns to the relay besides the bytes is part of the expected
//! output: for requests the `stream` / `include_usage` flags, for responses and streams the
//! usage (`{"body": .., "usage": ..}`; streams end with a `ringway_usage` pseudo-event), and a
//! stream that ends in an error ends with a `ringway_error` pseudo-event (status, code,
//! message) — what the relay turns into its SSE error. A stream input whose first line is the
//! comment `: include_usage` is converted as for a client that asked for it.
//!
//! `RINGWAY_BLESS_GOLDEN=1 cargo test --test convert_golden` rewrites the `.out` files from the
//! converters; review the diff before committing it.

use std::path::{Path, PathBuf};

use ringway::internals::convert::{
    errors, from_anthropic_request, from_anthropic_response, to_anthropic_request,
    to_anthropic_response, AnthropicToOpenAiStream, OpenAiToAnthropicStream, StreamUsage,
};
use serde_json::{json, Value};

const CREATED: u64 = 1_700_000_000;
const DEFAULT_MAX_TOKENS: u64 = 4096;
const MAX_EVENT_BYTES: usize = 1 << 20;
const ANTHROPIC_MODEL: &str = "claude-upstream";
const OPENAI_MODEL: &str = "gpt-upstream";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/convert")
}

/// Every `(converter, case, input path)`.
fn cases() -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir()).expect("tests/golden/convert exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(stem) = name
            .strip_suffix(".in.json")
            .or_else(|| name.strip_suffix(".in.sse"))
        else {
            continue;
        };
        let (converter, case) = stem.split_once('.').expect("<converter>.<case>");
        out.push((converter.to_owned(), case.to_owned(), path));
    }
    out.sort();
    out
}

fn usage_json(u: StreamUsage) -> Value {
    json!({"prompt": u.prompt, "completion": u.completion, "cached": u.cached,
           "cache_creation": u.cache_creation})
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })
}

fn error_event(out: &mut Vec<u8>, e: &Shown) {
    out.extend_from_slice(b"event: ringway_error\ndata: ");
    out.extend_from_slice(
        json!({"status": e.status, "code": e.code, "message": e.message})
            .to_string()
            .as_bytes(),
    );
    out.extend_from_slice(b"\n\n");
}

/// What of a relay error the golden files record.
#[derive(Debug)]
struct Shown {
    status: u16,
    code: String,
    message: String,
}

fn shown(status: u16, code: &str, message: &str) -> Shown {
    Shown {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// A stream converter fed read by read.
trait StreamConverter {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Shown>;
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), Shown>;
    fn usage(&self) -> StreamUsage;
    fn state_bytes(&self) -> usize;
}

impl StreamConverter for AnthropicToOpenAiStream {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Shown> {
        AnthropicToOpenAiStream::feed(self, input, out)
            .map_err(|e| shown(e.status, &e.code, &e.message))
    }
    fn end(&mut self, _out: &mut Vec<u8>) -> Result<(), Shown> {
        self.finish()
            .map_err(|e| shown(e.status, &e.code, &e.message))
    }
    fn usage(&self) -> StreamUsage {
        AnthropicToOpenAiStream::usage(self)
    }
    fn state_bytes(&self) -> usize {
        AnthropicToOpenAiStream::state_bytes(self)
    }
}

impl StreamConverter for OpenAiToAnthropicStream {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Shown> {
        OpenAiToAnthropicStream::feed(self, input, out)
            .map_err(|e| shown(e.status, &e.code, &e.message))
    }
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), Shown> {
        self.finish(out)
            .map_err(|e| shown(e.status, &e.code, &e.message))
    }
    fn usage(&self) -> StreamUsage {
        OpenAiToAnthropicStream::usage(self)
    }
    fn state_bytes(&self) -> usize {
        OpenAiToAnthropicStream::state_bytes(self)
    }
}

fn stream_converter(converter: &str, input: &[u8]) -> Box<dyn StreamConverter> {
    match converter {
        "stream_from_anthropic" => Box::new(AnthropicToOpenAiStream::new(
            input.starts_with(b": include_usage"),
            CREATED,
            MAX_EVENT_BYTES,
        )),
        "stream_to_anthropic" => Box::new(OpenAiToAnthropicStream::new(MAX_EVENT_BYTES)),
        other => panic!("no stream converter {other}"),
    }
}

/// Run a stream converter over `reads`, then the pseudo-events.
fn run_stream(converter: &str, input: &[u8], reads: &[&[u8]]) -> Vec<u8> {
    let mut c = stream_converter(converter, input);
    let mut out = Vec::new();
    let mut failed = None;
    for r in reads {
        if let Err(e) = c.feed(r, &mut out) {
            failed = Some(e);
            break;
        }
    }
    if failed.is_none() {
        failed = c.end(&mut out).err();
    }
    if let Some(e) = failed {
        error_event(&mut out, &e);
    }
    out.extend_from_slice(b"event: ringway_usage\ndata: ");
    out.extend_from_slice(usage_json(c.usage()).to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

enum Output {
    Json(Value),
    Sse(Vec<u8>),
}

fn convert(converter: &str, input: &[u8]) -> Output {
    let result = |r: Result<Value, Shown>| match r {
        Ok(v) => v,
        Err(e) => json!({"error": {"status": e.status, "code": e.code, "message": e.message}}),
    };
    match converter {
        "req_to_anthropic" => Output::Json(result(
            to_anthropic_request(input, ANTHROPIC_MODEL, DEFAULT_MAX_TOKENS)
                .map(|r| {
                    json!({"body": parse(&r.body), "stream": r.stream,
                           "include_usage": r.include_usage})
                })
                .map_err(|e| shown(e.status, &e.code, &e.message)),
        )),
        "req_from_anthropic" => Output::Json(result(
            from_anthropic_request(input, OPENAI_MODEL)
                .map(|(body, stream)| json!({"body": parse(&body), "stream": stream}))
                .map_err(|e| shown(e.status, &e.code, &e.message)),
        )),
        "resp_from_anthropic" => Output::Json(result(
            from_anthropic_response(input, CREATED)
                .map(|(body, u)| json!({"body": parse(&body), "usage": usage_json(u)}))
                .map_err(|e| shown(e.status, &e.code, &e.message)),
        )),
        "resp_to_anthropic" => Output::Json(result(
            to_anthropic_response(input)
                .map(|(body, u)| json!({"body": parse(&body), "usage": usage_json(u)}))
                .map_err(|e| shown(e.status, &e.code, &e.message)),
        )),
        "error_to_anthropic" | "error_from_anthropic" => {
            let v = parse(input);
            let status = v["status"].as_u64().unwrap() as u16;
            let body = serde_json::to_vec(&v["body"]).unwrap();
            let out = if converter == "error_to_anthropic" {
                errors::openai_error_to_anthropic(status, &body, false)
            } else {
                errors::anthropic_error_to_openai(status, &body, false)
            };
            Output::Json(json!({"status": status, "body": parse(&out)}))
        }
        "stream_from_anthropic" | "stream_to_anthropic" => {
            Output::Sse(run_stream(converter, input, &[input]))
        }
        other => panic!("unknown converter '{other}' in tests/golden/convert"),
    }
}

/// Events of an SSE text: (name, data), blank-line separated, `\n` line ends (what the
/// converters write).
fn sse_events(bytes: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(bytes).expect("converted streams are UTF-8");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                } else {
                    panic!("unexpected line in a converted stream: {line:?}");
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

/// The first difference between two values, by JSON path.
fn diff(path: &str, got: &Value, want: &Value) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                match g.get(k) {
                    None => return Some(format!("{path}.{k}: missing (want {wv})")),
                    Some(gv) => {
                        if let Some(d) = diff(&format!("{path}.{k}"), gv, wv) {
                            return Some(d);
                        }
                    }
                }
            }
            g.keys()
                .find(|k| !w.contains_key(*k))
                .map(|k| format!("{path}.{k}: unexpected (got {})", g[k]))
        }
        (Value::Array(g), Value::Array(w)) => {
            if g.len() != w.len() {
                return Some(format!("{path}: {} items, want {}", g.len(), w.len()));
            }
            g.iter()
                .zip(w)
                .enumerate()
                .find_map(|(i, (gv, wv))| diff(&format!("{path}[{i}]"), gv, wv))
        }
        _ if got == want => None,
        _ => Some(format!("{path}: got {got}, want {want}")),
    }
}

fn data_value(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
}

fn out_path(input: &Path) -> PathBuf {
    let name = input.file_name().unwrap().to_str().unwrap();
    input.with_file_name(name.replacen(".in.", ".out.", 1))
}

#[test]
fn golden_conversions() {
    let bless = std::env::var_os("RINGWAY_BLESS_GOLDEN").is_some();
    let cases = cases();
    assert!(cases.len() >= 25, "golden cases missing: {}", cases.len());
    let mut failures = Vec::new();
    for (converter, case, input_path) in &cases {
        let input = std::fs::read(input_path).unwrap();
        let expected_path = out_path(input_path);
        let got = convert(converter, &input);
        if bless {
            let bytes = match &got {
                Output::Json(v) => {
                    let mut b = serde_json::to_vec_pretty(v).unwrap();
                    b.push(b'\n');
                    b
                }
                Output::Sse(b) => b.clone(),
            };
            std::fs::write(&expected_path, bytes).unwrap();
            continue;
        }
        let want = std::fs::read(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let problem = match got {
            Output::Json(v) => diff("$", &v, &parse(&want)),
            Output::Sse(bytes) => {
                let (g, w) = (sse_events(&bytes), sse_events(&want));
                let mut p = None;
                for (i, (ge, we)) in g.iter().zip(&w).enumerate() {
                    if ge.0 != we.0 {
                        p = Some(format!("event {i}: name {:?}, want {:?}", ge.0, we.0));
                    } else if let Some(d) = diff(
                        &format!("event {i} ({})", we.0),
                        &data_value(&ge.1),
                        &data_value(&we.1),
                    ) {
                        p = Some(d);
                    }
                    if p.is_some() {
                        break;
                    }
                }
                p.or_else(|| {
                    (g.len() != w.len()).then(|| format!("{} events, want {}", g.len(), w.len()))
                })
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{converter}.{case}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

/// A small deterministic generator for split points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn streams_convert_the_same_however_the_reads_are_split() {
    let mut checked = 0;
    for (converter, case, input_path) in cases() {
        if !converter.starts_with("stream_") {
            continue;
        }
        let input = std::fs::read(&input_path).unwrap();
        let whole = run_stream(&converter, &input, &[&input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run_stream(&converter, &input, &bytes),
            whole,
            "{converter}.{case}: byte at a time"
        );
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(
                run_stream(&converter, &input, &[a, b]),
                whole,
                "{converter}.{case}: split at {cut}"
            );
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ input.len() as u64);
        for round in 0..200 {
            let mut reads = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (rng.next() as usize % 97).min(rest.len() - 1);
                let (a, b) = rest.split_at(n);
                reads.push(a);
                rest = b;
            }
            assert_eq!(
                run_stream(&converter, &input, &reads),
                whole,
                "{converter}.{case}: random split round {round}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "stream cases: {checked}");
}

/// Feed `events` (a generator of one event's bytes by number) through `c` in reads of about
/// 4 KiB, dropping the output after each read as the relay does once it is written; the state
/// must be the same after event 1,000 and after the last, and the output complete.
fn hundred_thousand_events(
    c: &mut dyn StreamConverter,
    head: &[u8],
    event: impl Fn(usize) -> Vec<u8>,
    tail: &[u8],
) -> (usize, usize) {
    const EVENTS: usize = 100_000;
    let mut out = Vec::new();
    let mut written = 0usize;
    c.feed(head, &mut out).expect("head converts");
    let mut pending = Vec::new();
    let mut state_after_warmup = 0;
    let mut max_state = 0;
    for i in 0..EVENTS {
        pending.extend_from_slice(&event(i));
        if pending.len() >= 4096 {
            // An odd cut, so reads end mid-event.
            let cut = pending.len() - 7;
            c.feed(&pending[..cut], &mut out).expect("event converts");
            pending.drain(..cut);
            written += out.len();
            out.clear();
        }
        if i == 1_000 {
            state_after_warmup = c.state_bytes();
        }
        max_state = max_state.max(c.state_bytes());
    }
    c.feed(&pending, &mut out).expect("events convert");
    c.feed(tail, &mut out).expect("tail converts");
    c.end(&mut out).expect("the stream ends complete");
    written += out.len();
    assert_eq!(
        c.state_bytes(),
        state_after_warmup,
        "state grew after the first 1,000 events"
    );
    assert_eq!(
        max_state, state_after_warmup,
        "state peaked above its steady size"
    );
    assert!(
        state_after_warmup < 16 * 1024,
        "state is {state_after_warmup} bytes for events under 200 bytes"
    );
    (written, state_after_warmup)
}

#[test]
fn a_100k_event_anthropic_stream_converts_in_constant_state() {
    let mut c = AnthropicToOpenAiStream::new(true, CREATED, 64 * 1024);
    let head = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_big\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
    // 1,000 blocks of 100 events: text blocks and tool_use blocks alternating.
    let event = |i: usize| -> Vec<u8> {
        let block = i / 100;
        let tool = block % 2 == 1;
        match i % 100 {
            0 if tool => format!("event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{block},\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_{block:06}\",\"name\":\"f\",\"input\":{{}}}}}}\n\n"),
            0 => format!("event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{block},\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"),
            99 => format!("event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{block}}}\n\n"),
            _ if tool => format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{block},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{{\\\"k\\\":{i:07}\"}}}}\n\n"),
            _ => format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{block},\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i:07} \"}}}}\n\n"),
        }
        .into_bytes()
    };
    let tail = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":100000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (written, state) = hundred_thousand_events(&mut c, head, event, tail);
    assert_eq!(c.usage().completion, 100_000);
    assert!(written > 100_000 * 100, "output written: {written}");
    eprintln!("anthropic → openai: 100,000 events, {written} bytes out, state {state} bytes");
}

#[test]
fn a_100k_chunk_openai_stream_converts_in_constant_state() {
    let mut c = OpenAiToAnthropicStream::new(64 * 1024);
    let head = b"data: {\"id\":\"chatcmpl-big\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    // 1,000 runs of 100 chunks: text runs and tool calls (rising indexes) alternating.
    let event = |i: usize| -> Vec<u8> {
        let run = i / 100;
        if run % 2 == 1 {
            let tool = run / 2;
            if i.is_multiple_of(100) {
                format!("data: {{\"id\":\"chatcmpl-big\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{tool},\"id\":\"call_{tool:06}\",\"type\":\"function\",\"function\":{{\"name\":\"f\",\"arguments\":\"\"}}}}]}}}}]}}\n\n")
            } else {
                format!("data: {{\"id\":\"chatcmpl-big\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{tool},\"function\":{{\"arguments\":\"{i:07}\"}}}}]}}}}]}}\n\n")
            }
        } else {
            format!("data: {{\"id\":\"chatcmpl-big\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i:07} \"}}}}]}}\n\n")
        }
        .into_bytes()
    };
    let tail = b"data: {\"id\":\"chatcmpl-big\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: {\"id\":\"chatcmpl-big\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":100000}}\n\ndata: [DONE]\n\n";
    let (written, state) = hundred_thousand_events(&mut c, head, event, tail);
    assert_eq!(c.usage().completion, 100_000);
    assert!(written > 100_000 * 100, "output written: {written}");
    eprintln!("openai → anthropic: 100,000 chunks, {written} bytes out, state {state} bytes");
}

/// An OpenAI conversation with tool calls and results, taken to Anthropic's form and back,
/// says the same thing: the same calls (ids, names, arguments) and results in the same order.
#[test]
fn tool_results_round_trip() {
    let input = std::fs::read(dir().join("req_to_anthropic.tool_results.in.json")).unwrap();
    let there = to_anthropic_request(&input, "claude", 1000).unwrap();
    let (back, _) = from_anthropic_request(&there.body, "gpt").unwrap();
    let (orig, back) = (parse(&input), parse(&back));
    let (om, bm) = (
        orig["messages"].as_array().unwrap(),
        back["messages"].as_array().unwrap(),
    );
    assert_eq!(om.len(), bm.len(), "{back}");
    for (o, b) in om.iter().zip(bm) {
        assert_eq!(o["role"], b["role"]);
        if let Some(calls) = o["tool_calls"].as_array() {
            let bcalls = b["tool_calls"].as_array().unwrap();
            for (oc, bc) in calls.iter().zip(bcalls) {
                assert_eq!(oc["id"], bc["id"]);
                assert_eq!(oc["function"]["name"], bc["function"]["name"]);
                let oa: Value =
                    serde_json::from_str(oc["function"]["arguments"].as_str().unwrap()).unwrap();
                let ba: Value =
                    serde_json::from_str(bc["function"]["arguments"].as_str().unwrap()).unwrap();
                assert_eq!(oa, ba);
            }
        }
        if o["role"] == "tool" {
            assert_eq!(o["tool_call_id"], b["tool_call_id"]);
        }
    }
}
