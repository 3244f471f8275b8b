//! An OpenAI chat-completions request → an Anthropic Messages request.
//!
//! Carried: `system` and `developer` messages (wherever they stand) → `system`, joined with a
//! blank line; `user` content as a string or parts (`text`; `image_url` with a `data:` URL → a
//! base64 `image` source, with an http(s) URL → a `url` source — never fetched);
//! `assistant` text and `tool_calls` → `text` and `tool_use` blocks (arguments parsed to the
//! `input` object); `tool` messages → `tool_result` blocks in a user turn (consecutive turns of
//! one role are merged, as Anthropic wants roles to alternate); `tools` (functions) →
//! `name` / `description` / `input_schema`; `tool_choice` `auto` / `none` / `required` / a named
//! function → `auto` / `none` / `any` / `tool`; `parallel_tool_calls: false` →
//! `disable_parallel_tool_use`; `stop` → `stop_sequences`; `temperature`; `top_p`;
//! `max_completion_tokens`, else `max_tokens`, else the default given (Anthropic requires one);
//! `stream`; `user` → `metadata.user_id`. `stream_options.include_usage` is returned for the
//! stream converter.
//!
//! Dropped (no Anthropic equivalent): `n`, `presence_penalty`, `frequency_penalty`,
//! `logit_bias`, `logprobs`, `top_logprobs`, `seed`, `response_format`, `service_tier`, an
//! image part's `detail`, empty text parts (Anthropic refuses empty text blocks),
//! `store`, `metadata`, `modalities`, `audio`, `prediction`, `reasoning_effort`, an assistant's
//! `reasoning_content`, a message's `name`, and any other member.
//!
//! Refused (400): a body that is not a JSON object, missing or non-array `messages`, an unknown
//! role or content part type, an image URL that is neither `data:` nor http(s), a non-function
//! tool, tool-call arguments that are not a JSON object.

use serde_json::{json, Map, Value};

use super::{invalid, parse_object, str_of, to_bytes, Side};
use crate::error::RelayError;

/// The converted request and what the answer's conversion needs to know of it.
#[derive(Debug)]
pub struct AnthropicRequest {
    pub body: Vec<u8>,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of the stream.
    pub include_usage: bool,
}

/// Convert an OpenAI chat request `body` for an Anthropic channel serving it as
/// `upstream_model`; `default_max_tokens` is used when the client gave no limit.
pub fn to_anthropic_request(
    body: &[u8],
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<AnthropicRequest, RelayError> {
    let req = parse_object(body, "the request body", Side::Client)?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(upstream_model.to_owned()));

    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("'messages' must be an array"))?;
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
        let blocks = match role {
            "system" | "developer" => {
                let text = text_of(m.get("content"), i)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => user_blocks(m.get("content"), i)?,
            "assistant" => assistant_blocks(m, i)?,
            "tool" => vec![tool_result(m, i)?],
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role '{other}' cannot be sent to an Anthropic model"
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        let turn_role = if role == "assistant" {
            "assistant"
        } else {
            "user"
        };
        match turns.last_mut() {
            Some((r, b)) if r == turn_role => b.extend(blocks),
            _ => turns.push((turn_role.to_owned(), blocks)),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    let turns: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    out.insert("messages".into(), Value::Array(turns));

    let max_tokens = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(default_max_tokens);
    out.insert("max_tokens".into(), json!(max_tokens));

    match req.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            if list.iter().any(|s| !s.is_string()) {
                return Err(invalid("'stop' must be a string or an array of strings"));
            }
            out.insert("stop_sequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    let include_usage = stream
        && req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);

    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        if !tools.is_empty() {
            let converted = tools
                .iter()
                .enumerate()
                .map(|(i, t)| tool(t, i))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("tools".into(), Value::Array(converted));
        }
    }
    let mut choice = match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(invalid(format!("tool_choice '{other}' is not known"))),
        }),
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice must name a function"))?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if req.get("parallel_tool_calls") == Some(&Value::Bool(false)) && out.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    Ok(AnthropicRequest {
        body: to_bytes(&Value::Object(out)),
        stream,
        include_usage,
    })
}

/// The text of a `content` that may only hold text (system, developer, tool): a string or
/// `text` parts, joined.
fn text_of(content: Option<&Value>, i: usize) -> Result<String, RelayError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(str_of(p, "text")),
                    _ => {
                        return Err(invalid(format!(
                            "messages[{i}].content may only hold text parts here"
                        )))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(invalid(format!(
            "messages[{i}].content must be a string or an array"
        ))),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, RelayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![text_block(s)]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    // Anthropic refuses empty text blocks; an empty part says nothing.
                    Some("text") if str_of(p, "text").is_empty() => {}
                    Some("text") => blocks.push(text_block(str_of(p, "text"))),
                    Some("image_url") => {
                        let url = p
                            .pointer("/image_url/url")
                            .or_else(|| p.get("image_url"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                invalid(format!("messages[{i}] has an image_url part without a url"))
                            })?;
                        blocks.push(json!({"type": "image", "source": image_source(url, i)?}));
                    }
                    other => {
                        return Err(invalid(format!(
                            "messages[{i}] has a content part of type {} that an Anthropic model cannot take",
                            other.unwrap_or("(none)")
                        )))
                    }
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(invalid(format!(
            "messages[{i}].content must be a string or an array"
        ))),
    }
}

/// A `data:<media type>;base64,<data>` URL → a base64 source; an http(s) URL → a URL source
/// (passed on, never fetched).
fn image_source(url: &str, i: usize) -> Result<Value, RelayError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| invalid(format!("messages[{i}] has a data URL without data")))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| invalid(format!("messages[{i}] has a data URL that is not base64")))?;
        return Ok(json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(invalid(format!(
        "messages[{i}] has an image URL that is neither a data: nor an http(s) URL"
    )))
}

fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>, RelayError> {
    let mut blocks = Vec::new();
    match m.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                blocks.push(text_block(s));
            }
        }
        Some(Value::Array(parts)) => {
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | Some("refusal")
                        if str_of(p, "text").is_empty() && str_of(p, "refusal").is_empty() => {}
                    Some("text") => blocks.push(text_block(str_of(p, "text"))),
                    // A refusal part is the assistant's words too.
                    Some("refusal") => blocks.push(text_block(str_of(p, "refusal"))),
                    _ => {
                        return Err(invalid(format!(
                            "messages[{i}].content may only hold text parts"
                        )))
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array"
            )))
        }
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for (j, call) in calls.iter().enumerate() {
            let id = call.get("id").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!("messages[{i}].tool_calls[{j}].id must be a string"))
            })?;
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(format!(
                        "messages[{i}].tool_calls[{j}].function.name must be a string"
                    ))
                })?;
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let input = if arguments.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str::<Value>(arguments) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return Err(invalid(format!(
                            "messages[{i}].tool_calls[{j}].function.arguments must be a JSON object"
                        )))
                    }
                }
            };
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(blocks)
}

fn tool_result(m: &Value, i: usize) -> Result<Value, RelayError> {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id must be a string")))?;
    let content = text_of(m.get("content"), i)?;
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn tool(t: &Value, i: usize) -> Result<Value, RelayError> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(format!(
            "tools[{i}] is not a function tool; only function tools reach an Anthropic model"
        )));
    }
    let f = t
        .get("function")
        .ok_or_else(|| invalid(format!("tools[{i}].function is missing")))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("tools[{i}].function.name must be a string")))?;
    let mut out = Map::new();
    out.insert("name".into(), Value::String(name.to_owned()));
    if let Some(d) = f.get("description").and_then(Value::as_str) {
        out.insert("description".into(), Value::String(d.to_owned()));
    }
    let schema = match f.get("parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(body: Value) -> (Value, AnthropicRequest) {
        let r =
            to_anthropic_request(&serde_json::to_vec(&body).unwrap(), "claude-up", 1024).unwrap();
        (serde_json::from_slice(&r.body).unwrap(), r)
    }

    #[test]
    fn plain_request() {
        let (v, r) = convert(json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                {"role": "user", "content": "hi"}
            ],
            "stop": "END", "temperature": 0.5, "top_p": 0.9, "seed": 7,
            "stream": true, "stream_options": {"include_usage": true}
        }));
        assert_eq!(
            v,
            json!({
                "model": "claude-up",
                "system": "be brief\n\nand kind",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "max_tokens": 1024,
                "stop_sequences": ["END"],
                "temperature": 0.5, "top_p": 0.9, "stream": true
            })
        );
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn max_completion_tokens_wins() {
        let (v, r) = convert(json!({"messages": [], "max_tokens": 5, "max_completion_tokens": 9}));
        assert_eq!(v["max_tokens"], 9);
        assert!(!r.stream && !r.include_usage);
        let (v, _) = convert(json!({"messages": [], "max_tokens": 5}));
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn refuses_what_cannot_be_carried() {
        for body in [
            json!([1]),
            json!({"messages": "x"}),
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            json!({"messages": [], "tools": [{"type": "code_interpreter"}]}),
            json!({"messages": [], "tool_choice": "sometimes"}),
        ] {
            let e = to_anthropic_request(&serde_json::to_vec(&body).unwrap(), "m", 1).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
        }
        assert_eq!(to_anthropic_request(b"{", "m", 1).unwrap_err().status, 400);
    }

    #[test]
    fn empty_text_parts_and_messages_are_left_out() {
        let (v, _) = convert(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]}
        ]}));
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
    }

    #[test]
    fn parallel_tool_calls_off() {
        let (v, _) = convert(json!({
            "messages": [],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "parallel_tool_calls": false
        }));
        assert_eq!(
            v["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            v["tools"],
            json!([{"name": "f", "input_schema": {"type": "object", "properties": {}}}])
        );
    }
}
