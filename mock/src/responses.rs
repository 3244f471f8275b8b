//! OpenAI's Responses API, imitated: `POST /v1/responses` (a Response object, or its event
//! stream: `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta` …, the `.done` events, then
//! `response.completed` — or `response.incomplete` / `response.failed` — with the usage), and
//! `GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`,
//! `GET /v1/responses/{id}/input_items` for the responses this mock created.
//!
//! Like OpenAI, a stored response is reachable only with the key that created it (another key
//! gets 404), and every answer says which key the mock saw: `x-mock-key` carries the last four
//! characters of the Authorization header. A request with `"tools"` naming a function gets a
//! `function_call` output item instead of a message.
//!
//! Must not: grow without bound — at most [`MAX_STORED`] responses are kept, the oldest
//! forgotten first.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::bodies::{error_body, STREAM_CACHED_TOKENS, STREAM_PROMPT_TOKENS};
use crate::reply::Reply;
use crate::request::Request;
use crate::server::Outcome;

/// Responses kept for the id routes, per mock.
pub(crate) const MAX_STORED: usize = 10_000;
/// Output tokens a non-streamed answer reports.
const FIXED_OUTPUT_TOKENS: u64 = 7;
const FIXED_TEXT: &str = "Hello from the ringway mock upstream.";

/// How a response ends (`mock-incomplete`, `mock-failed`; anything else completes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    Incomplete,
    Failed,
}

impl Ending {
    pub(crate) fn of(model: &str) -> Ending {
        match model {
            "mock-incomplete" => Ending::Incomplete,
            "mock-failed" => Ending::Failed,
            _ => Ending::Completed,
        }
    }

    fn status(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Incomplete => "incomplete",
            Ending::Failed => "failed",
        }
    }
}

struct Stored {
    /// The Authorization header that created it.
    key: Vec<u8>,
    response: Value,
    input_items: Vec<Value>,
}

/// The responses this mock created, oldest first.
#[derive(Default)]
pub(crate) struct ResponseStore {
    by_id: HashMap<String, Stored>,
    order: VecDeque<String>,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("stored", &self.by_id.len())
            .finish()
    }
}

impl ResponseStore {
    fn put(&mut self, id: String, stored: Stored) {
        while self.order.len() >= MAX_STORED {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.by_id.insert(id, stored);
    }
}

fn next_id(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id() as u64;
    format!("{prefix}_{salt:08x}{n:040x}")
}

fn authorization(request: &Request) -> Vec<u8> {
    request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// `x-mock-key`: the last four characters of the Authorization header the mock saw.
fn key_tail(request: &Request) -> String {
    let auth = authorization(request);
    let tail = &auth[auth.len().saturating_sub(4)..];
    String::from_utf8_lossy(tail).into_owned()
}

/// The first function tool's name, when the request gives tools.
fn function_tool(json: &Value) -> Option<String> {
    json.get("tools")?
        .as_array()?
        .iter()
        .find(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": STREAM_PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": STREAM_CACHED_TOKENS},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": STREAM_PROMPT_TOKENS + output_tokens
    })
}

/// A Response object with OpenAI's fields, `status` and `output` as given.
fn response_object(id: &str, model: &str, json: &Value, status: &str, output: Vec<Value>) -> Value {
    let get = |k: &str| json.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "id": id,
        "object": "response",
        "created_at": 1_700_000_000u64,
        "status": status,
        "background": json.get("background").and_then(Value::as_bool).unwrap_or(false),
        "error": null,
        "incomplete_details": null,
        "instructions": get("instructions"),
        "max_output_tokens": get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": get("previous_response_id"),
        "reasoning": {"effort": null, "summary": null},
        "store": json.get("store").and_then(Value::as_bool).unwrap_or(true),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": json.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": json.get("tools").cloned().unwrap_or(json!([])),
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": null,
        "user": null,
        "metadata": json.get("metadata").cloned().unwrap_or(json!({}))
    })
}

/// Sets the ending's fields on a finished response.
fn finish(response: &mut Value, ending: Ending, output_tokens: u64, with_usage: bool) {
    response["status"] = json!(ending.status());
    match ending {
        Ending::Completed => {}
        Ending::Incomplete => {
            response["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        Ending::Failed => {
            response["error"] = json!({"code": "server_error", "message": "mock failure"});
        }
    }
    if with_usage {
        response["usage"] = usage(output_tokens);
    }
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": []}]),
        None => json!([]),
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, call_id: &str, name: &str, status: &str, arguments: &str) -> Value {
    json!({
        "id": id, "type": "function_call", "status": status,
        "call_id": call_id, "name": name, "arguments": arguments
    })
}

/// The request's `input` as stored input items.
fn input_items(json: &Value) -> Vec<Value> {
    let message = |role: &str, text: &str| {
        json!({
            "id": next_id("msg"), "type": "message", "role": role, "status": "completed",
            "content": [{"type": "input_text", "text": text}]
        })
    };
    match json.get("input") {
        Some(Value::String(s)) => vec![message("user", s)],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match (item.get("role"), item.get("content")) {
                (Some(role), Some(Value::String(text))) => {
                    message(role.as_str().unwrap_or("user"), text)
                }
                _ => {
                    let mut item = item.clone();
                    if item.get("id").is_none() && item.is_object() {
                        item["id"] = json!(next_id("item"));
                    }
                    item
                }
            })
            .take(1000)
            .collect(),
        _ => Vec::new(),
    }
}

fn store(reply: &Reply<'_>, request: &Request, json: &Value, response: &Value) {
    if json.get("store").and_then(Value::as_bool) == Some(false) {
        return;
    }
    let id = response["id"].as_str().unwrap_or_default().to_string();
    let stored = Stored {
        key: authorization(request),
        response: response.clone(),
        input_items: input_items(json),
    };
    reply
        .shared
        .responses
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(id, stored);
}

/// `POST /v1/responses` answered whole: a Response object (`status` per the ending; with
/// `"background": true`, `queued` and no output yet).
pub(crate) fn create(
    reply: Reply<'_>,
    request: &Request,
    model: &str,
    json: &Value,
) -> io::Result<Outcome> {
    let id = next_id("resp");
    let ending = Ending::of(model);
    let background = json.get("background").and_then(Value::as_bool) == Some(true);
    let output = if background || ending == Ending::Failed {
        Vec::new()
    } else if let Some(name) = function_tool(json) {
        vec![call_item(
            &next_id("fc"),
            &next_id("call"),
            &name,
            "completed",
            "{\"mock\":true}",
        )]
    } else {
        vec![message_item(&next_id("msg"), "completed", Some(FIXED_TEXT))]
    };
    let mut response = response_object(&id, model, json, "completed", output);
    if background {
        response["status"] = json!("queued");
    } else {
        finish(&mut response, ending, FIXED_OUTPUT_TOKENS, true);
    }
    store(&reply, request, json, &response);
    let tail = key_tail(request);
    reply.full(
        200,
        &[("content-type", "application/json"), ("x-mock-key", &tail)],
        response.to_string().as_bytes(),
    )
}

fn event(kind: &str, seq: &mut u64, mut data: Value) -> String {
    data["type"] = json!(kind);
    data["sequence_number"] = json!(*seq);
    *seq += 1;
    format!("event: {kind}\ndata: {data}\n\n")
}

/// `POST /v1/responses` streamed: `deltas` text (or function-call argument) deltas `gap_ms`
/// apart, the first at once, each event one HTTP chunk; the last event per the model's ending,
/// with usage unless `with_usage` is false. No `[DONE]`: the Responses API has none.
pub(crate) fn stream(
    reply: Reply<'_>,
    request: &Request,
    model: &str,
    json: &Value,
    deltas: u64,
    gap_ms: u64,
    with_usage: bool,
) -> io::Result<Outcome> {
    let id = next_id("resp");
    let ending = Ending::of(model);
    let mut seq = 0u64;
    let tail = key_tail(request);
    reply.send(&reply.head(
        200,
        &[
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-mock-key", &tail),
        ],
        crate::reply::Framing::Chunked,
    ))?;
    let mut response = response_object(&id, model, json, "in_progress", Vec::new());
    for kind in ["response.created", "response.in_progress"] {
        reply.chunk(event(kind, &mut seq, json!({ "response": response })).as_bytes())?;
    }
    let pause = |i: u64| i == 0 || reply.pause(Duration::from_millis(gap_ms));
    let item = if let Some(name) = function_tool(json) {
        let (item_id, call_id) = (next_id("fc"), next_id("call"));
        let added = call_item(&item_id, &call_id, &name, "in_progress", "");
        reply.chunk(
            event(
                "response.output_item.added",
                &mut seq,
                json!({"output_index": 0, "item": added}),
            )
            .as_bytes(),
        )?;
        let mut arguments = String::from("{\"parts\":\"");
        let mut pieces = vec![arguments.clone()];
        for i in 0..deltas {
            pieces.push(format!("p{i}"));
        }
        pieces.push("\"}".to_string());
        arguments = pieces.concat();
        for (i, piece) in pieces.iter().enumerate() {
            if !pause(i as u64) {
                return Ok(Outcome::Close);
            }
            let data = json!({"item_id": item_id, "output_index": 0, "delta": piece});
            let e = event("response.function_call_arguments.delta", &mut seq, data);
            reply.chunk(e.as_bytes())?;
        }
        let data =
            json!({"item_id": item_id, "output_index": 0, "name": name, "arguments": arguments});
        let e = event("response.function_call_arguments.done", &mut seq, data);
        reply.chunk(e.as_bytes())?;
        call_item(&item_id, &call_id, &name, "completed", &arguments)
    } else {
        let item_id = next_id("msg");
        let added = message_item(&item_id, "in_progress", None);
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        for (kind, data) in [
            (
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            ),
            (
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
            ),
        ] {
            reply.chunk(event(kind, &mut seq, data).as_bytes())?;
        }
        let mut text = String::new();
        for i in 0..deltas {
            if !pause(i) {
                return Ok(Outcome::Close);
            }
            let delta = format!("tok{i}");
            text.push_str(&delta);
            let data = json!({
                "item_id": item_id, "output_index": 0, "content_index": 0,
                "delta": delta, "logprobs": []
            });
            let e = event("response.output_text.delta", &mut seq, data);
            reply.chunk(e.as_bytes())?;
        }
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        for (kind, data) in [
            (
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ),
            (
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
            ),
        ] {
            reply.chunk(event(kind, &mut seq, data).as_bytes())?;
        }
        message_item(&item_id, "completed", Some(&text))
    };
    let done = json!({"output_index": 0, "item": item});
    reply.chunk(event("response.output_item.done", &mut seq, done).as_bytes())?;
    response["output"] = json!([item]);
    finish(&mut response, ending, deltas, with_usage);
    store(&reply, request, json, &response);
    let last = format!("response.{}", ending.status());
    reply.chunk(event(&last, &mut seq, json!({ "response": response })).as_bytes())?;
    reply.send(b"0\r\n\r\n")?;
    Ok(reply.finished())
}

/// One event of a Responses stream, for the fault modes that cut a stream short.
pub(crate) fn delta_event(index: u64) -> String {
    format!(
        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_mock\",\"output_index\":0,\"content_index\":0,\"delta\":\"tok{index}\",\"logprobs\":[]}}\n\n",
        index + 2
    )
}

/// The id routes, for a response this mock created with the same key.
pub(crate) fn by_id(reply: Reply<'_>, request: &Request, path: &str) -> io::Result<Outcome> {
    let rest = path.strip_prefix("/v1/responses/").unwrap_or_default();
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let key = authorization(request);
    let tail = key_tail(request);
    let method = request.method.as_str();
    let not_found = |reply: Reply<'_>| {
        let body = error_body(
            &format!("Response with id '{id}' not found."),
            "invalid_request_error",
            "not_found",
        );
        let headers = [("content-type", "application/json"), ("x-mock-key", &tail)];
        reply.full(404, &headers, body.as_bytes())
    };
    let allowed = matches!(
        (method, action),
        ("GET" | "DELETE", "") | ("POST", "cancel") | ("GET", "input_items")
    );
    if !allowed {
        let message = format!("no route for {method} {path}");
        return reply.error(404, &message, "invalid_request_error", "not_found", &[]);
    }
    let mut store = reply
        .shared
        .responses
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(stored) = store.by_id.get_mut(id).filter(|s| s.key == key) else {
        drop(store);
        return not_found(reply);
    };
    let body = match (method, action) {
        ("GET", "") => stored.response.to_string(),
        ("DELETE", "") => {
            store.by_id.remove(id);
            json!({"id": id, "object": "response", "deleted": true}).to_string()
        }
        ("POST", "cancel") => {
            if stored.response["background"] != json!(true) {
                drop(store);
                let headers = [("content-type", "application/json"), ("x-mock-key", &tail)];
                let body = error_body(
                    "Only responses created with background=true can be cancelled.",
                    "invalid_request_error",
                    "invalid_request",
                );
                return reply.full(400, &headers, body.as_bytes());
            }
            stored.response["status"] = json!("cancelled");
            stored.response.to_string()
        }
        _ => {
            let items = &stored.input_items;
            json!({
                "object": "list",
                "data": items,
                "first_id": items.first().map(|i| i["id"].clone()),
                "last_id": items.last().map(|i| i["id"].clone()),
                "has_more": false
            })
            .to_string()
        }
    };
    drop(store);
    let headers = [("content-type", "application/json"), ("x-mock-key", &tail)];
    reply.full(200, &headers, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_at_most_max_stored_oldest_out_first() {
        let mut store = ResponseStore::default();
        for i in 0..MAX_STORED + 5 {
            let stored = Stored {
                key: b"Bearer k".to_vec(),
                response: json!({"n": i}),
                input_items: Vec::new(),
            };
            store.put(format!("resp_{i}"), stored);
        }
        assert_eq!(store.by_id.len(), MAX_STORED);
        assert_eq!(store.order.len(), MAX_STORED);
        assert!(!store.by_id.contains_key("resp_4"));
        assert!(store.by_id.contains_key("resp_5"));
        assert!(store
            .by_id
            .contains_key(&format!("resp_{}", MAX_STORED + 4)));
    }

    #[test]
    fn endings_and_input_items() {
        assert_eq!(Ending::of("mock-incomplete"), Ending::Incomplete);
        assert_eq!(Ending::of("mock-failed"), Ending::Failed);
        assert_eq!(Ending::of("gpt-4o"), Ending::Completed);
        let items = input_items(&json!({"input": [
            {"role": "user", "content": "hi"},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"}
        ]}));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["content"][0]["text"], "hi");
        assert_eq!(items[1]["type"], "function_call_output");
        assert!(items[1]["id"].as_str().unwrap().starts_with("item_"));
    }
}
