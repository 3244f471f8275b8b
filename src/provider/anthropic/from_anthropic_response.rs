//! An Anthropic Messages response → an OpenAI `chat.completion`.
//!
//! Carried: `text` blocks → `content` (concatenated; `null` when there is none but tool calls),
//! `tool_use` blocks → `tool_calls` (`input` serialised as the `arguments` string), `thinking`
//! blocks → `reasoning_content`, `stop_reason` → `finish_reason` (end_turn / stop_sequence →
//! stop, max_tokens → length, tool_use → tool_calls, refusal → content_filter), `usage` with
//! `prompt_tokens` = input + cache read + cache creation, `prompt_tokens_details.cached_tokens`
//! = cache read, `completion_tokens` = output. `id` and `model` are the upstream's.
//!
//! Dropped: `redacted_thinking` blocks, thinking signatures, citations, server tool blocks
//! (`server_tool_use`, `web_search_tool_result`, ...), `stop_sequence`, `container`.

use serde_json::{json, Map, Value};

use super::{bad_upstream, finish_reason_for, parse_object, str_of, to_bytes, Side, StreamUsage};
use crate::error::RelayError;

/// Convert an Anthropic channel's 2xx `body`; `created` is the Unix time to stamp. Returns the
/// OpenAI body and the usage it reports.
pub fn from_anthropic_response(
    body: &[u8],
    created: u64,
) -> Result<(Vec<u8>, StreamUsage), RelayError> {
    let msg = parse_object(body, "the upstream's Anthropic response", Side::Upstream)?;
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_upstream("the upstream's Anthropic response has no content array"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(str_of(b, "text")),
            Some("thinking") => reasoning.push_str(str_of(b, "thinking")),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": str_of(b, "id"),
                    "type": "function",
                    "function": {
                        "name": str_of(b, "name"),
                        "arguments": serde_json::to_string(&input).unwrap_or_default(),
                    }
                }));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let finish_reason = match msg.get("stop_reason").and_then(Value::as_str) {
        Some(r) => Value::String(finish_reason_for(r).to_owned()),
        None => Value::Null,
    };
    let usage = msg
        .get("usage")
        .map(StreamUsage::from_anthropic)
        .unwrap_or_default();
    let out = json!({
        "id": str_of(&msg, "id"),
        "object": "chat.completion",
        "created": created,
        "model": str_of(&msg, "model"),
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage.openai_json(),
    });
    Ok((to_bytes(&out), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_use_and_cache_usage() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": "x"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5,
                      "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
        });
        let (out, usage) =
            from_anthropic_response(&serde_json::to_vec(&body).unwrap(), 1700000000).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Let me look.");
        assert_eq!(m["reasoning_content"], "hmm");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"q\":\"x\"}");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["prompt_tokens"], 130);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(v["usage"]["total_tokens"], 135);
        assert_eq!(
            usage,
            StreamUsage {
                prompt: 130,
                completion: 5,
                cached: 100,
                cache_creation: 20
            }
        );
    }

    #[test]
    fn bad_bodies_are_upstream_errors() {
        for b in [&b"nope"[..], b"[]", b"{\"content\":3}"] {
            assert_eq!(from_anthropic_response(b, 0).unwrap_err().status, 502);
        }
    }
}
