//! An Anthropic Messages event stream → OpenAI `chat.completion.chunk`s, event by event.
//!
//! Each upstream read goes through [`AnthropicToOpenAiStream::feed`]; every whole event is
//! converted the moment it completes and written to the caller's buffer:
//!
//! | Anthropic event | OpenAI output |
//! |---|---|
//! | `message_start` | a chunk with `delta: {"role":"assistant","content":""}` (id, model, input usage kept) |
//! | `content_block_start` `tool_use` | a `tool_calls` delta with `index` (tool blocks counted alone), `id`, `name`, `arguments: ""` |
//! | `content_block_delta` `text_delta` | a `content` delta |
//! | `content_block_delta` `input_json_delta` | an `arguments` delta for the open tool call's `index` |
//! | `content_block_delta` `thinking_delta` | a `reasoning_content` delta |
//! | `message_delta` | the final chunk: `delta: {}` with `finish_reason`; then, if the client asked for `include_usage`, a chunk with `choices: []` and `usage` |
//! | `message_stop` | `data: [DONE]` |
//! | `ping`, `content_block_stop`, `signature_delta`, `citations_delta`, unknown events | nothing |
//! | `error` | `Err` with the upstream's error: the relay ends the stream with its SSE error |
//!
//! State: the parser's one event, the chunk prefix (id, model, created — from `message_start`),
//! the open block's kind and tool index, a tool counter and the usage numbers. A message id or
//! model name over 512 bytes is refused (502): both are repeated in every chunk. Nothing of the
//! output is kept; [`state_bytes`](AnthropicToOpenAiStream::state_bytes) is constant once the
//! stream has begun.

use std::borrow::Cow;

use serde::Deserialize;

use super::{bad_upstream, errors, finish_reason_for, StreamUsage};
use crate::error::{json_string, RelayError};
use crate::provider::sse_parser::{SseEvent, SseParser, DONE};

/// The longest message id or model name accepted from `message_start` (real ones are under
/// 100 bytes); every chunk repeats both.
const MAX_ID_BYTES: usize = 512;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Option<MessageStart<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct MessageStart<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default, Debug)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

/// The content block being streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    /// A `tool_use` block and the OpenAI `index` its tool call has.
    Tool(u32),
    /// A block kind that has no OpenAI form (server tools, redacted thinking, ...).
    Other,
}

/// One stream's conversion. Create one per upstream stream.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    parser: SseParser,
    conv: Converter,
}

#[derive(Debug)]
struct Converter {
    include_usage: bool,
    created: u64,
    /// `{"id":..,"object":"chat.completion.chunk","created":..,"model":..,"choices":` — every
    /// chunk's beginning, written once at `message_start`.
    head: Vec<u8>,
    open: Open,
    tool_calls: u32,
    input: Usage,
    output_tokens: u64,
    finish_reason: Option<&'static str>,
    done: bool,
}

impl AnthropicToOpenAiStream {
    /// `include_usage`: the client's `stream_options.include_usage`; `created`: the Unix time
    /// to stamp on chunks; `max_event_bytes`: the largest upstream event accepted.
    pub fn new(include_usage: bool, created: u64, max_event_bytes: usize) -> Self {
        AnthropicToOpenAiStream {
            parser: SseParser::new(max_event_bytes),
            conv: Converter {
                include_usage,
                created,
                head: Vec::new(),
                open: Open::None,
                tool_calls: 0,
                input: Usage::default(),
                output_tokens: 0,
                finish_reason: None,
                done: false,
            },
        }
    }

    /// Convert the next de-chunked bytes of the upstream stream, appending OpenAI SSE to `out`.
    /// `Err` ends the stream with that error (an upstream `error` event, a malformed event, an
    /// event over the size limit).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RelayError> {
        let conv = &mut self.conv;
        self.parser.feed(input, |e| conv.event(e, out))
    }

    /// The upstream stream ended: `Ok` if it ended after `message_stop` (`[DONE]` was written),
    /// else the error that ends the client's stream.
    pub fn finish(&self) -> Result<(), RelayError> {
        if self.conv.done {
            Ok(())
        } else {
            Err(RelayError::mid_stream(
                "upstream_stream_incomplete",
                "the upstream stream ended before message_stop",
            ))
        }
    }

    /// `message_stop` was seen: the client's stream is complete.
    pub fn is_done(&self) -> bool {
        self.conv.done
    }

    /// The usage the stream reported so far, in OpenAI's terms.
    pub fn usage(&self) -> StreamUsage {
        self.conv.usage()
    }

    /// The finish reason written, once `message_delta` came.
    pub fn finish_reason(&self) -> Option<&'static str> {
        self.conv.finish_reason
    }

    /// Bytes of memory this stream's conversion holds.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.parser.state_bytes() + self.conv.head.capacity()
    }
}

impl Converter {
    fn usage(&self) -> StreamUsage {
        let cached = self.input.cache_read_input_tokens.unwrap_or(0);
        let cache_creation = self.input.cache_creation_input_tokens.unwrap_or(0);
        StreamUsage {
            prompt: self
                .input
                .input_tokens
                .unwrap_or(0)
                .saturating_add(cached)
                .saturating_add(cache_creation),
            completion: self.output_tokens,
            cached,
            cache_creation,
        }
    }

    /// Later figures win: `message_delta` may repeat or correct `message_start`'s.
    fn take_usage(&mut self, u: &Usage) {
        let keep = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        keep(&mut self.input.input_tokens, u.input_tokens);
        keep(
            &mut self.input.cache_read_input_tokens,
            u.cache_read_input_tokens,
        );
        keep(
            &mut self.input.cache_creation_input_tokens,
            u.cache_creation_input_tokens,
        );
        if let Some(n) = u.output_tokens {
            self.output_tokens = n;
        }
    }

    fn event(&mut self, e: SseEvent<'_>, out: &mut Vec<u8>) -> Result<(), RelayError> {
        if self.done {
            return Ok(()); // nothing follows message_stop
        }
        if e.name == b"error" {
            return Err(errors::stream_error(e.data));
        }
        let ev: Event<'_> = serde_json::from_slice(e.data).map_err(|err| {
            bad_upstream(format!(
                "the upstream sent an unreadable stream event: {err}"
            ))
        })?;
        if ev.kind != "message_start"
            && ev.kind != "ping"
            && ev.kind != "error"
            && self.head.is_empty()
        {
            return Err(bad_upstream(
                "the upstream stream did not begin with message_start",
            ));
        }
        match &*ev.kind {
            "message_start" => {
                let m = ev
                    .message
                    .ok_or_else(|| bad_upstream("message_start without a message"))?;
                let (id, model) = (
                    m.id.as_deref().unwrap_or(""),
                    m.model.as_deref().unwrap_or(""),
                );
                // Both are repeated in every chunk: an absurd one would multiply the output.
                if id.len() > MAX_ID_BYTES || model.len() > MAX_ID_BYTES {
                    return Err(bad_upstream(format!(
                        "the upstream's message id or model name is over {MAX_ID_BYTES} bytes"
                    )));
                }
                self.head.clear();
                self.head.extend_from_slice(b"{\"id\":");
                json_string(&mut self.head, id);
                self.head
                    .extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
                push_u64(&mut self.head, self.created);
                self.head.extend_from_slice(b",\"model\":");
                json_string(&mut self.head, model);
                self.head.extend_from_slice(b",\"choices\":");
                if let Some(u) = &m.usage {
                    self.take_usage(u);
                }
                self.chunk(
                    out,
                    |o| o.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}"),
                    None,
                );
            }
            "content_block_start" => {
                let b = ev
                    .content_block
                    .ok_or_else(|| bad_upstream("content_block_start without a content_block"))?;
                self.open = match &*b.kind {
                    "text" => {
                        if let Some(t) = b.text.as_deref().filter(|t| !t.is_empty()) {
                            self.content(out, b"content", t);
                        }
                        Open::Text
                    }
                    "thinking" => {
                        if let Some(t) = b.thinking.as_deref().filter(|t| !t.is_empty()) {
                            self.content(out, b"reasoning_content", t);
                        }
                        Open::Thinking
                    }
                    "tool_use" => {
                        let index = self.tool_calls;
                        self.tool_calls = self.tool_calls.saturating_add(1);
                        let (id, name) = (
                            b.id.as_deref().unwrap_or(""),
                            b.name.as_deref().unwrap_or(""),
                        );
                        self.chunk(
                            out,
                            |o| {
                                o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                                push_u64(o, index as u64);
                                o.extend_from_slice(b",\"id\":");
                                json_string(o, id);
                                o.extend_from_slice(
                                    b",\"type\":\"function\",\"function\":{\"name\":",
                                );
                                json_string(o, name);
                                o.extend_from_slice(b",\"arguments\":\"\"}}]}");
                            },
                            None,
                        );
                        Open::Tool(index)
                    }
                    _ => Open::Other,
                };
            }
            "content_block_delta" => {
                let d = ev
                    .delta
                    .ok_or_else(|| bad_upstream("content_block_delta without a delta"))?;
                match d.kind.as_deref().unwrap_or("") {
                    "text_delta" => {
                        let t = d.text.as_deref().unwrap_or("");
                        if !t.is_empty() {
                            self.content(out, b"content", t);
                        }
                    }
                    "thinking_delta" => {
                        let t = d.thinking.as_deref().unwrap_or("");
                        if !t.is_empty() {
                            self.content(out, b"reasoning_content", t);
                        }
                    }
                    "input_json_delta" => {
                        let Open::Tool(index) = self.open else {
                            if self.open == Open::Other {
                                return Ok(()); // a server tool's input: not the client's
                            }
                            return Err(bad_upstream("input_json_delta outside a tool_use block"));
                        };
                        let part = d.partial_json.as_deref().unwrap_or("");
                        if !part.is_empty() {
                            self.chunk(
                                out,
                                |o| {
                                    o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                                    push_u64(o, index as u64);
                                    o.extend_from_slice(b",\"function\":{\"arguments\":");
                                    json_string(o, part);
                                    o.extend_from_slice(b"}}]}");
                                },
                                None,
                            );
                        }
                    }
                    _ => {} // signature_delta, citations_delta, later kinds
                }
            }
            "content_block_stop" => self.open = Open::None,
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    self.take_usage(u);
                }
                if self.finish_reason.is_some() {
                    return Ok(()); // one final chunk per stream; later figures still count
                }
                let reason = ev
                    .delta
                    .as_ref()
                    .and_then(|d| d.stop_reason.as_deref())
                    .map(finish_reason_for)
                    .unwrap_or("stop");
                self.finish_reason = Some(reason);
                self.chunk(out, |o| o.extend_from_slice(b"{}"), Some(reason));
                if self.include_usage {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&self.head);
                    out.extend_from_slice(b"[],\"usage\":");
                    write_openai_usage(out, &self.usage());
                    out.extend_from_slice(b"}\n\n");
                }
            }
            "message_stop" => {
                out.extend_from_slice(DONE);
                self.done = true;
            }
            "error" => return Err(errors::stream_error(e.data)),
            _ => {} // ping and events added later
        }
        Ok(())
    }

    /// A chunk whose delta is `{"<key>": "<text>"}`.
    fn content(&self, out: &mut Vec<u8>, key: &[u8], text: &str) {
        self.chunk(
            out,
            |o| {
                o.extend_from_slice(b"{\"");
                o.extend_from_slice(key);
                o.extend_from_slice(b"\":");
                json_string(o, text);
                o.push(b'}');
            },
            None,
        );
    }

    /// `data: <head>[{"index":0,"delta":<delta>,"logprobs":null,"finish_reason":..}]}\n\n`.
    fn chunk(&self, out: &mut Vec<u8>, delta: impl FnOnce(&mut Vec<u8>), finish: Option<&str>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":");
        delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => json_string(out, f),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }
}

/// OpenAI's `usage` object, written without a tree.
pub(super) fn write_openai_usage(out: &mut Vec<u8>, u: &StreamUsage) {
    out.extend_from_slice(b"{\"prompt_tokens\":");
    push_u64(out, u.prompt);
    out.extend_from_slice(b",\"completion_tokens\":");
    push_u64(out, u.completion);
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, u.prompt.saturating_add(u.completion));
    out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
    push_u64(out, u.cached);
    out.extend_from_slice(b"}}");
}

use crate::wire::push_u64;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn chunks(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        text.split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let d = s.strip_prefix("data: ").unwrap();
                if d == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(d).unwrap()
                }
            })
            .collect()
    }

    const START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n";

    #[test]
    fn tool_blocks_get_their_own_indexes() {
        let mut s = AnthropicToOpenAiStream::new(true, 5, 4096);
        let mut out = Vec::new();
        s.feed(START, &mut out).unwrap();
        let body = concat!(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_b\",\"name\":\"g\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":12}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        s.feed(body.as_bytes(), &mut out).unwrap();
        let c = chunks(&out);
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(c[2]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(
            c[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "toolu_a"
        );
        assert_eq!(
            c[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(c[4]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(c[5]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(c[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c[7]["choices"], Value::Array(vec![]));
        assert_eq!(c[7]["usage"]["prompt_tokens"], 10);
        assert_eq!(c[7]["usage"]["completion_tokens"], 12);
        assert_eq!(c[7]["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
        assert_eq!(c[8], "[DONE]");
        assert_eq!(c.len(), 9);
        assert!(s.finish().is_ok());
        assert_eq!(s.usage().prompt, 10);
    }

    #[test]
    fn errors_and_incomplete_streams() {
        let mut s = AnthropicToOpenAiStream::new(false, 0, 4096);
        let mut out = Vec::new();
        s.feed(START, &mut out).unwrap();
        assert_eq!(s.finish().unwrap_err().code, "upstream_stream_incomplete");
        let e = s
            .feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", &mut out)
            .unwrap_err();
        assert_eq!((e.status, &*e.code), (529, "overloaded_error"));
        let mut s = AnthropicToOpenAiStream::new(false, 0, 4096);
        let e = s
            .feed(
                b"data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.status, 502);
        let mut s = AnthropicToOpenAiStream::new(false, 0, 4096);
        assert_eq!(s.feed(b"data: nope\n\n", &mut out).unwrap_err().status, 502);
        let mut s = AnthropicToOpenAiStream::new(false, 0, 64);
        let e = s.feed(START, &mut out).unwrap_err();
        assert_eq!(&*e.code, "sse_event_too_large");
    }

    #[test]
    fn push_u64_writes_decimal() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut o = Vec::new();
            push_u64(&mut o, n);
            assert_eq!(o, n.to_string().into_bytes());
        }
    }
}
