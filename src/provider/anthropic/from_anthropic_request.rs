//! An Anthropic Messages request → an OpenAI chat-completions request, for an Anthropic-dialect
//! client served by an OpenAI-compatible channel.
//!
//! Carried: `system` (a string or text blocks) → a leading `system` message; `user` content →
//! a string or parts (`text`; `image` with a base64 source → an `image_url` data URL, with a
//! `url` source → that URL); `tool_result` blocks → `tool` messages (placed before the rest of
//! that user turn, right after the assistant's calls, as OpenAI requires; text content joined);
//! `assistant` `text` and `tool_use` blocks → `content` and `tool_calls` (`input` serialised as
//! `arguments`); `tools` → function tools (`input_schema` → `parameters`); `tool_choice`
//! `auto` / `any` / `tool` / `none` → `auto` / `required` / the named function / `none`, and
//! `disable_parallel_tool_use` → `parallel_tool_calls: false`; `stop_sequences` → `stop`;
//! `max_tokens`; `temperature`; `top_p`; `stream` → `stream` with
//! `stream_options.include_usage: true` (so the usage the Anthropic answer must carry arrives);
//! `metadata.user_id` → `user`.
//!
//! Dropped: `top_k`, `thinking`, `service_tier`, `container`, `mcp_servers`, cache-control
//! marks, `thinking` / `redacted_thinking` blocks of past turns, images and `is_error` inside
//! tool results (an OpenAI tool message holds text), document blocks' citations settings, and
//! tools without an `input_schema` (Anthropic's server tools, which an OpenAI model cannot run).
//!
//! Refused (400): a body that is not a JSON object, missing `messages`, an unknown role or
//! block type, an image source that is neither base64 nor a URL.

use serde_json::{json, Map, Value};

use super::{invalid, parse_object, str_of, to_bytes, Side};
use crate::error::RelayError;

/// Convert an Anthropic request `body` for an OpenAI-compatible channel serving it as
/// `upstream_model`. Returns the body and whether it asks for a stream.
pub fn from_anthropic_request(
    body: &[u8],
    upstream_model: &str,
) -> Result<(Vec<u8>, bool), RelayError> {
    let req = parse_object(body, "the request body", Side::Client)?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(upstream_model.to_owned()));

    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = join_text(blocks, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => {
            return Err(invalid(
                "'system' must be a string or an array of text blocks",
            ))
        }
    }
    let turns = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("'messages' must be an array"))?;
    for (i, m) in turns.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(m.get("content"), i, &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(m.get("content"), i)?),
            _ => {
                return Err(invalid(format!(
                    "messages[{i}].role must be 'user' or 'assistant'"
                )))
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(n) = req.get("max_tokens").and_then(Value::as_u64) {
        out.insert("max_tokens".into(), json!(n));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stops) = req.get("stop_sequences").and_then(Value::as_array) {
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let functions: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let schema = t.get("input_schema")?;
                let mut f = Map::new();
                f.insert("name".into(), json!(str_of(t, "name")));
                if let Some(d) = t.get("description").and_then(Value::as_str) {
                    f.insert("description".into(), json!(d));
                }
                f.insert("parameters".into(), schema.clone());
                Some(json!({"type": "function", "function": Value::Object(f)}))
            })
            .collect();
        if !functions.is_empty() {
            out.insert("tools".into(), Value::Array(functions));
        }
    }
    if let Some(choice) = req.get("tool_choice").filter(|c| c.is_object()) {
        let converted = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": str_of(choice, "name")}})
            }
            _ => return Err(invalid("tool_choice.type must be auto, any, tool or none")),
        };
        if out.contains_key("tools") {
            out.insert("tool_choice".into(), converted);
            if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    if let Some(user) = req.pointer("/metadata/user_id").and_then(Value::as_str) {
        out.insert("user".into(), json!(user));
    }
    Ok((to_bytes(&Value::Object(out)), stream))
}

/// The text of text blocks, joined with newlines.
fn join_text(blocks: &[Value], what: &str) -> Result<String, RelayError> {
    let mut parts = Vec::with_capacity(blocks.len());
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(str_of(b, "text")),
            _ => return Err(invalid(format!("{what} may only hold text blocks"))),
        }
    }
    Ok(parts.join("\n"))
}

/// The text of a `tool_result`'s content (a string or blocks; non-text blocks dropped).
fn tool_result_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .map(|b| str_of(b, "text"))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn image_part(b: &Value, i: usize) -> Result<Value, RelayError> {
    let source = b
        .get("source")
        .ok_or_else(|| invalid(format!("messages[{i}] has an image without a source")))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            str_of(source, "media_type"),
            str_of(source, "data")
        ),
        Some("url") => str_of(source, "url").to_owned(),
        _ => {
            return Err(invalid(format!(
                "messages[{i}] has an image source that is neither base64 nor url"
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn user_turn(
    content: Option<&Value>,
    i: usize,
    messages: &mut Vec<Value>,
) -> Result<(), RelayError> {
    let blocks = match content {
        Some(Value::String(s)) => {
            messages.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array"
            )))
        }
    };
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": str_of(b, "text")})),
            Some("image") => parts.push(image_part(b, i)?),
            Some("tool_result") => messages.push(json!({
                "role": "tool",
                "tool_call_id": str_of(b, "tool_use_id"),
                "content": tool_result_text(b.get("content")),
            })),
            // A document's text (plain-text sources) is words the model should read.
            Some("document") if b.pointer("/source/type") == Some(&json!("text")) => parts.push(
                json!({"type": "text", "text": b.pointer("/source/data").and_then(Value::as_str).unwrap_or("")}),
            ),
            other => {
                return Err(invalid(format!(
                    "messages[{i}] has a content block of type {} that cannot go to an OpenAI-compatible model",
                    other.unwrap_or("(none)")
                )))
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = if parts.len() == 1 && parts[0]["type"] == "text" {
        parts[0]["text"].clone()
    } else {
        Value::Array(parts)
    };
    messages.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn assistant_turn(content: Option<&Value>, i: usize) -> Result<Value, RelayError> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(json!({"role": "assistant", "content": s})),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array"
            )))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(str_of(b, "text")),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": str_of(b, "id"),
                    "type": "function",
                    "function": {
                        "name": str_of(b, "name"),
                        "arguments": serde_json::to_string(&input).unwrap_or_default(),
                    }
                }));
            }
            Some("thinking") | Some("redacted_thinking") => {}
            other => {
                return Err(invalid(format!(
                    "messages[{i}] has a content block of type {} that cannot go to an OpenAI-compatible model",
                    other.unwrap_or("(none)")
                )))
            }
        }
    }
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    m.insert("content".into(), content);
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(body: Value) -> (Value, bool) {
        let (b, s) = from_anthropic_request(&serde_json::to_vec(&body).unwrap(), "gpt-up").unwrap();
        (serde_json::from_slice(&b).unwrap(), s)
    }

    #[test]
    fn stream_asks_for_usage() {
        let (v, stream) = convert(json!({
            "model": "claude", "max_tokens": 100, "stream": true, "top_k": 5,
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "messages": [{"role": "user", "content": "hi"}]
        }));
        assert!(stream);
        assert_eq!(
            v,
            json!({
                "model": "gpt-up",
                "messages": [{"role": "system", "content": "a\nb"}, {"role": "user", "content": "hi"}],
                "max_tokens": 100, "stream": true, "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn tool_results_come_first() {
        let (v, _) = convert(json!({
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "and then?"},
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]}
            ]}]
        }));
        assert_eq!(
            v["messages"][0],
            json!({"role": "tool", "tool_call_id": "t1", "content": "42"})
        );
        assert_eq!(
            v["messages"][1],
            json!({"role": "user", "content": "and then?"})
        );
    }

    #[test]
    fn refuses_unknown_shapes() {
        for body in [
            json!({"messages": [{"role": "system", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            json!({"messages": 1}),
            json!({"messages": [], "system": 3}),
        ] {
            let e = from_anthropic_request(&serde_json::to_vec(&body).unwrap(), "m").unwrap_err();
            assert_eq!(e.status, 400, "{body}");
        }
    }
}
