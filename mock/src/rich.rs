//! The richer answers, in both dialects, that dialect conversion is tested against: tool calls
//! (with Anthropic thinking), a mirror of the request as the upstream received it, an error in
//! the middle of a stream, and a stream with one oversized event.
//!
//! Each has the shape of the API it imitates: `chat.completion(.chunk)` with `tool_calls` on
//! `/v1/chat/completions` (argument deltas under a stable `index`, `finish_reason`
//! `tool_calls`, the usage-only chunk when `stream_options.include_usage` asks), and on
//! `/v1/messages` Anthropic's message with `thinking`, `text` and `tool_use` blocks, and its
//! event stream (`thinking_delta` / `signature_delta`, `text_delta`, `input_json_delta`,
//! `message_delta` with `stop_reason` `tool_use`, a `ping`, `message_stop`).
//!
//! Must not: write to a socket other than through [`Reply`], or decide which model gets which
//! behaviour (that is `behaviours`).

use std::io;

use crate::behaviours::Endpoint;
use crate::bodies::{anthropic_error_body, json_str, STREAM_CACHED_TOKENS, STREAM_PROMPT_TOKENS};
use crate::reply::Reply;
use crate::server::Outcome;

/// The tool every `mock-tools` answer calls, and its arguments.
const TOOL: &str = "get_weather";
const TOOL_ARGS: &str = "{\"city\":\"Paris\"}";
/// The text before the tool call, and the thinking before that (Anthropic only).
const TEXT: &str = "Let me check.";
const THINKING: &str = "The weather needs a tool.";
/// Completion tokens every `mock-tools` answer reports.
const TOOL_COMPLETION_TOKENS: u64 = 7;

fn chat_usage() -> String {
    format!(
        "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}}",
        STREAM_PROMPT_TOKENS,
        TOOL_COMPLETION_TOKENS,
        STREAM_PROMPT_TOKENS + TOOL_COMPLETION_TOKENS,
        STREAM_CACHED_TOKENS
    )
}

fn anthropic_usage(output: u64) -> String {
    format!(
        "{{\"input_tokens\":{},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":{},\"output_tokens\":{}}}",
        STREAM_PROMPT_TOKENS - STREAM_CACHED_TOKENS,
        STREAM_CACHED_TOKENS,
        output
    )
}

fn wants(json: &serde_json::Value, pointer: &str) -> bool {
    json.pointer(pointer).and_then(serde_json::Value::as_bool) == Some(true)
}

/// `mock-tools`: text, then one call of `get_weather` (after thinking, on `/v1/messages`).
pub(crate) fn tools(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
    json: &serde_json::Value,
) -> io::Result<Outcome> {
    let stream = wants(json, "/stream");
    match (endpoint, stream) {
        (Endpoint::Messages, false) => reply.json(200, &anthropic_tool_message(model)),
        (Endpoint::Messages, true) => {
            reply.sse_head()?;
            for event in anthropic_tool_events(model) {
                reply.chunk(event.as_bytes())?;
            }
            reply.send(b"0\r\n\r\n")?;
            Ok(reply.finished())
        }
        (_, false) => reply.json(200, &chat_tool_completion(model)),
        (_, true) => {
            reply.sse_head()?;
            let usage = wants(json, "/stream_options/include_usage");
            for event in chat_tool_chunks(model, usage) {
                reply.chunk(event.as_bytes())?;
            }
            reply.end_stream()
        }
    }
}

fn chat_tool_completion(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1700000000,",
            "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",",
            "\"content\":{},\"tool_calls\":[{{\"id\":\"call_mock_0\",\"type\":\"function\",",
            "\"function\":{{\"name\":{},\"arguments\":{}}}}}]}},",
            "\"finish_reason\":\"tool_calls\"}}],\"usage\":{}}}"
        ),
        json_str(model),
        json_str(TEXT),
        json_str(TOOL),
        json_str(TOOL_ARGS),
        chat_usage()
    )
}

/// One `chat.completion.chunk` event with `delta` and `finish`, `"usage":null` when the
/// stream reports usage at its end.
fn chat_chunk(model: &str, delta: &str, finish: &str, usage: bool) -> String {
    let usage = if usage { ",\"usage\":null" } else { "" };
    format!(
        concat!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",",
            "\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,",
            "\"delta\":{},\"finish_reason\":{}}}]{}}}\n\n"
        ),
        json_str(model),
        delta,
        finish,
        usage
    )
}

fn chat_tool_chunks(model: &str, usage: bool) -> Vec<String> {
    let (first, rest) = TOOL_ARGS.split_at(8);
    let mut events = vec![
        chat_chunk(
            model,
            &format!("{{\"role\":\"assistant\",\"content\":{}}}", json_str(TEXT)),
            "null",
            usage,
        ),
        chat_chunk(
            model,
            &format!(
                "{{\"tool_calls\":[{{\"index\":0,\"id\":\"call_mock_0\",\"type\":\"function\",\"function\":{{\"name\":{},\"arguments\":\"\"}}}}]}}",
                json_str(TOOL)
            ),
            "null",
            usage,
        ),
    ];
    for part in [first, rest] {
        events.push(chat_chunk(
            model,
            &format!(
                "{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{}}}}}]}}",
                json_str(part)
            ),
            "null",
            usage,
        ));
    }
    events.push(chat_chunk(model, "{}", "\"tool_calls\"", usage));
    if usage {
        events.push(format!(
            concat!(
                "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",",
                "\"created\":1700000000,\"model\":{},\"choices\":[],\"usage\":{}}}\n\n"
            ),
            json_str(model),
            chat_usage()
        ));
    }
    events
}

fn anthropic_tool_message(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},",
            "\"content\":[{{\"type\":\"thinking\",\"thinking\":{},\"signature\":\"sig-mock\"}},",
            "{{\"type\":\"text\",\"text\":{}}},",
            "{{\"type\":\"tool_use\",\"id\":\"toolu_mock_0\",\"name\":{},\"input\":{}}}],",
            "\"stop_reason\":\"tool_use\",\"stop_sequence\":null,\"usage\":{}}}"
        ),
        json_str(model),
        json_str(THINKING),
        json_str(TEXT),
        json_str(TOOL),
        TOOL_ARGS,
        anthropic_usage(TOOL_COMPLETION_TOKENS)
    )
}

fn event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn message_start(model: &str) -> String {
    event(
        "message_start",
        &format!(
            concat!(
                "{{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_mock\",\"type\":\"message\",",
                "\"role\":\"assistant\",\"content\":[],\"model\":{},\"stop_reason\":null,",
                "\"stop_sequence\":null,\"usage\":{}}}}}"
            ),
            json_str(model),
            anthropic_usage(1)
        ),
    )
}

fn block_start(index: u64, block: &str) -> String {
    event(
        "content_block_start",
        &format!(
            "{{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{block}}}"
        ),
    )
}

fn block_delta(index: u64, delta: &str) -> String {
    event(
        "content_block_delta",
        &format!("{{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{delta}}}"),
    )
}

fn block_stop(index: u64) -> String {
    event(
        "content_block_stop",
        &format!("{{\"type\":\"content_block_stop\",\"index\":{index}}}"),
    )
}

fn message_end(stop_reason: &str, output: u64) -> [String; 2] {
    [
        event(
            "message_delta",
            &format!(
                "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{stop_reason}\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{output}}}}}"
            ),
        ),
        event("message_stop", "{\"type\":\"message_stop\"}"),
    ]
}

fn anthropic_tool_events(model: &str) -> Vec<String> {
    let (first, rest) = TOOL_ARGS.split_at(8);
    let mut events = vec![
        message_start(model),
        block_start(0, "{\"type\":\"thinking\",\"thinking\":\"\"}"),
        block_delta(
            0,
            &format!(
                "{{\"type\":\"thinking_delta\",\"thinking\":{}}}",
                json_str(THINKING)
            ),
        ),
        block_delta(
            0,
            "{\"type\":\"signature_delta\",\"signature\":\"sig-mock\"}",
        ),
        block_stop(0),
        block_start(1, "{\"type\":\"text\",\"text\":\"\"}"),
        block_delta(
            1,
            &format!("{{\"type\":\"text_delta\",\"text\":{}}}", json_str(TEXT)),
        ),
        block_stop(1),
        event("ping", "{\"type\": \"ping\"}"),
        block_start(
            2,
            &format!(
                "{{\"type\":\"tool_use\",\"id\":\"toolu_mock_0\",\"name\":{},\"input\":{{}}}}",
                json_str(TOOL)
            ),
        ),
    ];
    for part in [first, rest] {
        events.push(block_delta(
            2,
            &format!(
                "{{\"type\":\"input_json_delta\",\"partial_json\":{}}}",
                json_str(part)
            ),
        ));
    }
    events.push(block_stop(2));
    events.extend(message_end("tool_use", TOOL_COMPLETION_TOKENS));
    events
}

/// `mock-mirror`: the answer's text is what the upstream received — `{"method", "path",
/// "headers", "body"}` as `mock-echo` has it — in a message of the endpoint's dialect
/// (streamed when the request asks), so a converted request can be inspected through the
/// converted answer.
pub(crate) fn mirror(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
    json: &serde_json::Value,
    echo: &str,
) -> io::Result<Outcome> {
    let stream = wants(json, "/stream");
    match (endpoint, stream) {
        (Endpoint::Messages, false) => reply.json(
            200,
            &format!(
                concat!(
                    "{{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},",
                    "\"content\":[{{\"type\":\"text\",\"text\":{}}}],\"stop_reason\":\"end_turn\",",
                    "\"stop_sequence\":null,\"usage\":{}}}"
                ),
                json_str(model),
                json_str(echo),
                anthropic_usage(1)
            ),
        ),
        (Endpoint::Messages, true) => {
            reply.sse_head()?;
            let mut events = vec![
                message_start(model),
                block_start(0, "{\"type\":\"text\",\"text\":\"\"}"),
                block_delta(
                    0,
                    &format!("{{\"type\":\"text_delta\",\"text\":{}}}", json_str(echo)),
                ),
                block_stop(0),
            ];
            events.extend(message_end("end_turn", 1));
            for e in events {
                reply.chunk(e.as_bytes())?;
            }
            reply.send(b"0\r\n\r\n")?;
            Ok(reply.finished())
        }
        (_, false) => reply.json(
            200,
            &format!(
                concat!(
                    "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1700000000,",
                    "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",",
                    "\"content\":{}}},\"finish_reason\":\"stop\"}}],\"usage\":{}}}"
                ),
                json_str(model),
                json_str(echo),
                chat_usage()
            ),
        ),
        (_, true) => {
            reply.sse_head()?;
            let usage = wants(json, "/stream_options/include_usage");
            let content = format!("{{\"content\":{}}}", json_str(echo));
            reply.chunk(chat_chunk(model, &content, "null", usage).as_bytes())?;
            reply.chunk(chat_chunk(model, "{}", "\"stop\"", usage).as_bytes())?;
            if usage {
                reply.chunk(
                    format!(
                        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
                        json_str(model),
                        chat_usage()
                    )
                    .as_bytes(),
                )?;
            }
            reply.end_stream()
        }
    }
}

/// `mock-stream-error`: a stream that starts, then reports an error in-band: Anthropic's
/// `event: error` (`overloaded_error`) on `/v1/messages`, an OpenAI `{"error":{...}}` data
/// event elsewhere; the stream then ends (no `message_stop`, no `[DONE]`).
pub(crate) fn stream_error(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
) -> io::Result<Outcome> {
    reply.sse_head()?;
    if endpoint == Endpoint::Messages {
        for e in [
            message_start(model),
            block_start(0, "{\"type\":\"text\",\"text\":\"\"}"),
            block_delta(0, "{\"type\":\"text_delta\",\"text\":\"tok0\"}"),
            event("error", &anthropic_error_body(529, "Overloaded (mock)")),
        ] {
            reply.chunk(e.as_bytes())?;
        }
    } else {
        reply.chunk(chat_chunk(model, "{\"content\":\"tok0\"}", "null", false).as_bytes())?;
        reply.chunk(
            b"data: {\"error\":{\"message\":\"Overloaded (mock)\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\n",
        )?;
    }
    reply.send(b"0\r\n\r\n")?;
    Ok(reply.finished())
}

/// `mock-big-event-BYTES`: a stream whose one content event carries BYTES bytes of text
/// (`x`s), in the endpoint's dialect, then a normal end.
pub(crate) fn big_event(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
    bytes: usize,
) -> io::Result<Outcome> {
    let text = "x".repeat(bytes);
    reply.sse_head()?;
    if endpoint == Endpoint::Messages {
        let mut events = vec![
            message_start(model),
            block_start(0, "{\"type\":\"text\",\"text\":\"\"}"),
            block_delta(
                0,
                &format!("{{\"type\":\"text_delta\",\"text\":\"{text}\"}}"),
            ),
            block_stop(0),
        ];
        events.extend(message_end("end_turn", 1));
        for e in events {
            reply.chunk(e.as_bytes())?;
        }
        reply.send(b"0\r\n\r\n")?;
        Ok(reply.finished())
    } else {
        reply.chunk(
            chat_chunk(model, &format!("{{\"content\":\"{text}\"}}"), "null", false).as_bytes(),
        )?;
        reply.chunk(chat_chunk(model, "{}", "\"stop\"", false).as_bytes())?;
        reply.end_stream()
    }
}

/// `mock-split-usage`: an Anthropic stream (on `/v1/messages`; a chat stream elsewhere) whose
/// `message_delta` reports 1234 output tokens, written in two HTTP chunks 50 ms apart that
/// split the number (`…"output_tokens":12` | `34}}…`), so a reader that scans each read on its
/// own reads 12.
pub(crate) fn split_usage(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
) -> io::Result<Outcome> {
    reply.sse_head()?;
    if endpoint != Endpoint::Messages {
        reply.chunk(chat_chunk(model, "{\"content\":\"tok0\"}", "\"stop\"", false).as_bytes())?;
        return reply.end_stream();
    }
    for e in [
        message_start(model),
        block_start(0, "{\"type\":\"text\",\"text\":\"\"}"),
        block_delta(0, "{\"type\":\"text_delta\",\"text\":\"tok0\"}"),
        block_stop(0),
    ] {
        reply.chunk(e.as_bytes())?;
    }
    let [delta, stop] = message_end("end_turn", 1234);
    let cut = delta.find("1234").map_or(delta.len() / 2, |at| at + 2);
    reply.chunk(&delta.as_bytes()[..cut])?;
    if !reply.pause(std::time::Duration::from_millis(50)) {
        return Ok(Outcome::Close);
    }
    reply.chunk(&delta.as_bytes()[cut..])?;
    reply.chunk(stop.as_bytes())?;
    reply.send(b"0\r\n\r\n")?;
    Ok(reply.finished())
}
