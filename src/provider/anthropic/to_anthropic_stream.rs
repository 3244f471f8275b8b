//! OpenAI `chat.completion.chunk`s → an Anthropic Messages event stream, chunk by chunk, for
//! an Anthropic-dialect client served by an OpenAI-compatible channel.
//!
//! The first chunk opens the message (`message_start`). Content blocks are opened and closed in
//! order, one at a time: `reasoning_content` deltas go to a `thinking` block, `content` deltas to
//! a `text` block, and each tool call (a new OpenAI tool `index`) to its own `tool_use` block
//! whose argument deltas are `input_json_delta`s; a delta of another kind closes the open block
//! (`content_block_stop`) and opens the next. `finish_reason` and `usage` are remembered; at
//! `[DONE]` (or at the end of a stream that had a `finish_reason` but no `[DONE]`) the open block
//! is closed, then `message_delta` carries the `stop_reason` (`tool_calls` → `tool_use`,
//! `length` → `max_tokens`, `stop` → `end_turn`) and the usage, then `message_stop`.
//!
//! State: the parser's one event, the message id, the open block and the last tool index, the
//! finish reason and usage numbers. Nothing of the output is kept, so a tool call whose
//! argument deltas come back after another block began cannot be put back in order: such a
//! stream ends with a 502 `bad_response_stream` rather than a wrong answer. Only `choices[0]`
//! is read. A chunk with an `error` member ends the stream with that error.

use std::borrow::Cow;

use serde::Deserialize;

use super::{bad_upstream, stop_reason_for, StreamUsage};
use crate::error::{json_string, RelayError};
use crate::provider::sse_parser::{SseEvent, SseParser};
use crate::wire::push_u64;

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// The block being streamed to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    /// A tool call's block, by its OpenAI tool index.
    Tool(u64),
}

/// One stream's conversion. Create one per upstream stream.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    parser: SseParser,
    conv: Converter,
}

#[derive(Debug)]
struct Converter {
    /// The upstream's id (the message id), kept from the first chunk.
    id: Vec<u8>,
    started: bool,
    open: Open,
    /// The Anthropic index of the next content block.
    next_block: u64,
    /// The highest OpenAI tool index seen, if any.
    last_tool: Option<u64>,
    finish_reason: Option<&'static str>,
    usage: StreamUsage,
    done: bool,
}

impl OpenAiToAnthropicStream {
    /// `max_event_bytes`: the largest upstream event accepted.
    pub fn new(max_event_bytes: usize) -> Self {
        OpenAiToAnthropicStream {
            parser: SseParser::new(max_event_bytes),
            conv: Converter {
                id: Vec::new(),
                started: false,
                open: Open::None,
                next_block: 0,
                last_tool: None,
                finish_reason: None,
                usage: StreamUsage::default(),
                done: false,
            },
        }
    }

    /// Convert the next de-chunked bytes of the upstream stream, appending Anthropic events to
    /// `out`. `Err` ends the stream with that error.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RelayError> {
        let conv = &mut self.conv;
        self.parser.feed(input, |e| conv.event(e, out))
    }

    /// The upstream stream ended. A stream that gave its `finish_reason` is completed here if
    /// `[DONE]` did not come (some upstreams omit it); otherwise the error that ends the
    /// client's stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RelayError> {
        if self.conv.done {
            return Ok(());
        }
        if self.conv.finish_reason.is_some() && self.parser.at_boundary() {
            self.conv.end(out);
            return Ok(());
        }
        Err(RelayError::mid_stream(
            "upstream_stream_incomplete",
            "the upstream stream ended before it finished",
        ))
    }

    /// `message_stop` was written.
    pub fn is_done(&self) -> bool {
        self.conv.done
    }

    /// The usage the stream reported (OpenAI's final usage chunk).
    pub fn usage(&self) -> StreamUsage {
        self.conv.usage
    }

    /// Bytes of memory this stream's conversion holds.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.parser.state_bytes() + self.conv.id.capacity()
    }
}

fn begin(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
}

fn end_event(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\n\n");
}

impl Converter {
    fn event(&mut self, e: SseEvent<'_>, out: &mut Vec<u8>) -> Result<(), RelayError> {
        if self.done {
            return Ok(());
        }
        if e.data == b"[DONE]" {
            self.start(out, "", "");
            self.end(out);
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_slice(e.data).map_err(|err| {
            bad_upstream(format!(
                "the upstream sent an unreadable stream chunk: {err}"
            ))
        })?;
        if chunk.error.is_some() {
            let mut err = crate::provider::openai::normalise_error(500, e.data, false, None);
            err.retryable = false;
            return Err(err);
        }
        self.start(
            out,
            chunk.id.as_deref().unwrap_or(""),
            chunk.model.as_deref().unwrap_or(""),
        );
        if let Some(u) = &chunk.usage {
            self.usage = StreamUsage {
                prompt: u.prompt_tokens.unwrap_or(0),
                completion: u.completion_tokens.unwrap_or(0),
                cached: u
                    .prompt_tokens_details
                    .as_ref()
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
                cache_creation: 0,
            };
        }
        let Some(choice) = chunk
            .choices
            .into_iter()
            .flatten()
            .find(|c| c.index.unwrap_or(0) == 0)
        else {
            return Ok(());
        };
        if let Some(d) = choice.delta {
            if let Some(r) = d.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
                self.open_block(out, Open::Thinking, |o| {
                    o.extend_from_slice(
                        b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}",
                    )
                });
                self.delta(out, |o| {
                    o.extend_from_slice(b"{\"type\":\"thinking_delta\",\"thinking\":");
                    json_string(o, r);
                    o.push(b'}');
                });
            }
            if let Some(t) = d.content.as_deref().filter(|t| !t.is_empty()) {
                self.open_block(out, Open::Text, |o| {
                    o.extend_from_slice(b"{\"type\":\"text\",\"text\":\"\"}")
                });
                self.delta(out, |o| {
                    o.extend_from_slice(b"{\"type\":\"text_delta\",\"text\":");
                    json_string(o, t);
                    o.push(b'}');
                });
            }
            for call in d.tool_calls.into_iter().flatten() {
                self.tool_delta(out, call)?;
            }
        }
        if let Some(f) = choice.finish_reason.as_deref() {
            self.finish_reason = Some(stop_reason_for(f));
        }
        Ok(())
    }

    fn tool_delta(&mut self, out: &mut Vec<u8>, call: ToolDelta<'_>) -> Result<(), RelayError> {
        let index = call.index.unwrap_or(0);
        let (name, arguments) = match &call.function {
            Some(f) => (f.name.as_deref(), f.arguments.as_deref()),
            None => (None, None),
        };
        let is_new = match self.last_tool {
            None => true,
            Some(last) if index > last => true,
            Some(last) if index == last => self.open != Open::Tool(index),
            Some(_) => false,
        };
        if is_new {
            if self.last_tool == Some(index) {
                return Err(RelayError::mid_stream(
                    "bad_response_stream",
                    "the upstream resumed a tool call after another block began",
                ));
            }
            self.last_tool = Some(index);
            // An upstream that sends no id gets one made unique per message and block.
            let id: Cow<'_, str> = match call.id.as_deref() {
                Some(id) => Cow::Borrowed(id),
                None => {
                    let mut made = String::from("toolu_");
                    made.extend(
                        self.id
                            .iter()
                            .filter(|b| b.is_ascii_alphanumeric())
                            // Bounded: the id is repeated per tool call.
                            .take(32)
                            .map(|&b| b as char),
                    );
                    made.push('_');
                    made.push_str(&self.next_block.to_string());
                    Cow::Owned(made)
                }
            };
            self.open_block(out, Open::Tool(index), |o| {
                o.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
                json_string(o, &id);
                o.extend_from_slice(b",\"name\":");
                json_string(o, name.unwrap_or(""));
                o.extend_from_slice(b",\"input\":{}}");
            });
        } else if self.open != Open::Tool(index) {
            return Err(RelayError::mid_stream(
                "bad_response_stream",
                "the upstream interleaved tool calls, which cannot be streamed in order",
            ));
        }
        if let Some(a) = arguments.filter(|a| !a.is_empty()) {
            self.delta(out, |o| {
                o.extend_from_slice(b"{\"type\":\"input_json_delta\",\"partial_json\":");
                json_string(o, a);
                o.push(b'}');
            });
        }
        Ok(())
    }

    fn start(&mut self, out: &mut Vec<u8>, id: &str, model: &str) {
        if self.started {
            return;
        }
        self.started = true;
        // Only the start of the id is kept: it goes into made-up tool ids, at most 32 bytes.
        self.id.clear();
        self.id
            .extend_from_slice(&id.as_bytes()[..id.len().min(64)]);
        begin(out, "message_start");
        out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
        json_string(out, id);
        out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        json_string(out, model);
        out.extend_from_slice(b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}");
        end_event(out);
    }

    /// Make `kind` the open block: close another one, start this one (with `block` written as
    /// its `content_block`). A block of the same kind stays open.
    fn open_block(&mut self, out: &mut Vec<u8>, kind: Open, block: impl FnOnce(&mut Vec<u8>)) {
        if self.open == kind {
            return;
        }
        self.close_block(out);
        begin(out, "content_block_start");
        out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
        push_u64(out, self.next_block);
        out.extend_from_slice(b",\"content_block\":");
        block(out);
        out.push(b'}');
        end_event(out);
        self.open = kind;
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open == Open::None {
            return;
        }
        begin(out, "content_block_stop");
        out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
        push_u64(out, self.next_block);
        out.push(b'}');
        end_event(out);
        self.open = Open::None;
        self.next_block += 1;
    }

    fn delta(&self, out: &mut Vec<u8>, delta: impl FnOnce(&mut Vec<u8>)) {
        begin(out, "content_block_delta");
        out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
        push_u64(out, self.next_block);
        out.extend_from_slice(b",\"delta\":");
        delta(out);
        out.push(b'}');
        end_event(out);
    }

    /// Close the open block, then `message_delta` and `message_stop`.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(out, "", "");
        self.close_block(out);
        let u = self.usage;
        begin(out, "message_delta");
        out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
        json_string(out, self.finish_reason.unwrap_or("end_turn"));
        out.extend_from_slice(b",\"stop_sequence\":null},\"usage\":{\"input_tokens\":");
        push_u64(out, u.prompt.saturating_sub(u.cached));
        out.extend_from_slice(b",\"output_tokens\":");
        push_u64(out, u.completion);
        out.extend_from_slice(b",\"cache_read_input_tokens\":");
        push_u64(out, u.cached);
        out.extend_from_slice(b",\"cache_creation_input_tokens\":0}}");
        end_event(out);
        begin(out, "message_stop");
        out.extend_from_slice(b"{\"type\":\"message_stop\"}");
        end_event(out);
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn events(out: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (name, data) = s.split_once('\n').unwrap();
                (
                    name.strip_prefix("event: ").unwrap().to_owned(),
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn text_then_two_tools_in_order() {
        let mut s = OpenAiToAnthropicStream::new(4096);
        let mut out = Vec::new();
        let input = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"x\\\":1}\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
            "data: [DONE]\n\n",
        );
        s.feed(input.as_bytes(), &mut out).unwrap();
        let names: Vec<String> = events(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let ev = events(&out);
        assert_eq!(ev[4].1["content_block"]["id"], "call_a");
        assert_eq!(ev[7].1["index"], 2);
        assert_eq!(ev[8].1["delta"]["partial_json"], "{\"x\":1}");
        assert_eq!(ev[10].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(ev[10].1["usage"]["input_tokens"], 5);
        assert_eq!(ev[10].1["usage"]["cache_read_input_tokens"], 4);
        assert!(s.is_done());
        assert_eq!(s.usage().prompt, 9);
    }

    #[test]
    fn interleaved_tool_calls_and_cut_streams_are_errors() {
        let mut s = OpenAiToAnthropicStream::new(4096);
        let mut out = Vec::new();
        let input = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"g\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
        );
        let e = s.feed(input.as_bytes(), &mut out).unwrap_err();
        assert_eq!(&*e.code, "bad_response_stream");
        let mut s = OpenAiToAnthropicStream::new(4096);
        s.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            s.finish(&mut out).unwrap_err().code,
            "upstream_stream_incomplete"
        );
        let mut s = OpenAiToAnthropicStream::new(4096);
        let e = s
            .feed(
                b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
                &mut out,
            )
            .unwrap_err();
        assert_eq!(&*e.message, "boom");
    }

    #[test]
    fn a_finished_stream_without_done_is_completed() {
        let mut s = OpenAiToAnthropicStream::new(4096);
        let mut out = Vec::new();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"length\"}]}\n\n", &mut out)
            .unwrap();
        s.finish(&mut out).unwrap();
        let ev = events(&out);
        assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(ev.last().unwrap().0, "message_stop");
    }
}
