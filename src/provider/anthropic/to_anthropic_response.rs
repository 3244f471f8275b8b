//! An OpenAI `chat.completion` → an Anthropic Messages response, for an Anthropic-dialect
//! client served by an OpenAI-compatible channel.
//!
//! Carried (from `choices[0]`): `reasoning_content` → a `thinking` block (first, with an empty
//! `signature`: an OpenAI-compatible model signs nothing), `content` → a `text` block,
//! `tool_calls` → `tool_use` blocks (`arguments` parsed to `input`; arguments that are not a
//! JSON object are kept under `{"_raw": "<arguments>"}` rather than lost), `finish_reason` →
//! `stop_reason` (`tool_calls` → `tool_use`, `length` → `max_tokens`, `content_filter` →
//! `refusal`, `stop` → `end_turn`), `usage` → `input_tokens` (prompt tokens not read from the
//! cache), `cache_read_input_tokens` (`prompt_tokens_details.cached_tokens`),
//! `output_tokens`. `id` and `model` are the upstream's.
//!
//! Dropped: other choices (`n` > 1), `logprobs`, `refusal` text, `system_fingerprint`,
//! `service_tier`, audio.

use serde_json::{json, Value};

use super::{bad_upstream, parse_object, stop_reason_for, str_of, to_bytes, Side, StreamUsage};
use crate::error::RelayError;

/// Convert an OpenAI-compatible channel's 2xx `body`. Returns the Anthropic body and the usage.
pub fn to_anthropic_response(body: &[u8]) -> Result<(Vec<u8>, StreamUsage), RelayError> {
    let resp = parse_object(body, "the upstream's chat completion", Side::Upstream)?;
    let choice = resp
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| bad_upstream("the upstream's chat completion has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(r) = message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let input = match serde_json::from_str::<Value>(arguments) {
                Ok(v @ Value::Object(_)) => v,
                _ if arguments.trim().is_empty() => json!({}),
                _ => json!({ "_raw": arguments }),
            };
            content.push(json!({
                "type": "tool_use",
                "id": str_of(call, "id"),
                "name": call.pointer("/function/name").and_then(Value::as_str).unwrap_or(""),
                "input": input,
            }));
        }
    }
    let stop_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some(f) => Value::String(stop_reason_for(f).to_owned()),
        None => Value::Null,
    };
    let usage = resp
        .get("usage")
        .map(StreamUsage::from_openai)
        .unwrap_or_default();
    let out = json!({
        "id": str_of(&resp, "id"),
        "type": "message",
        "role": "assistant",
        "model": str_of(&resp, "model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage.anthropic_json(),
    });
    Ok((to_bytes(&out), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_stop_as_tool_use() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "f", "arguments": "{\"a\":1}"}}]
            }}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34,
                      "prompt_tokens_details": {"cached_tokens": 10}}
        });
        let (out, usage) = to_anthropic_response(&serde_json::to_vec(&body).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(
            v["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(v["usage"]["input_tokens"], 20);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 10);
        assert_eq!(v["usage"]["output_tokens"], 4);
        assert_eq!((usage.prompt, usage.completion, usage.cached), (30, 4, 10));
    }

    #[test]
    fn bad_bodies_are_upstream_errors() {
        for b in [&b"x"[..], b"{}", b"{\"choices\":[]}"] {
            assert_eq!(to_anthropic_response(b).unwrap_err().status, 502);
        }
    }
}
