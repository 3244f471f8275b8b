//! Dialect conversion in the relay, both directions: OpenAI chat completions served by an
//! Anthropic channel, and Anthropic's `/v1/messages` served by an OpenAI-compatible channel —
//! whole answers and streams (event by event), tools, thinking, usage with cached tokens as
//! the access log sees it, upstream errors in the client's dialect, in-band stream errors, the
//! `max_sse_event_bytes` bound, `count_tokens` without an Anthropic channel, failover across
//! providers, and relay-level golden files (the request the mock saw, the answer the client
//! got) under `tests/golden/relay/`. Real binary against the mock.
//!
//! Models: `claude-*` on the Anthropic channel and `gpt-*` on the OpenAI-compatible one, each
//! mapped to a mock behaviour (`claude-tools` → `mock-tools`, ...; see `ringway_mock::
//! MODELS_DOC`). `RINGWAY_BLESS_GOLDEN=1` rewrites the golden files.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

both_drivers! {
    chat_answers_from_an_anthropic_channel_are_converted_whole,
    chat_streams_from_an_anthropic_channel_are_converted_event_by_event,
    messages_answers_from_an_openai_channel_are_converted_whole,
    messages_streams_from_an_openai_channel_open_and_close_blocks_in_order,
}

const ANTHROPIC_KEY: &str = "sk-ant-upstream-key-0123456789";
const TOOL_ARGS: &str = "{\"city\":\"Paris\"}";

/// The mock behaviours each dialect's models are mapped to.
const MAPPED: &[&str] = &[
    "tools",
    "mirror",
    "fixed",
    "stream-error",
    "status-400",
    "status-401",
    "status-429",
    "status-500",
    "status-529",
    "big-event-100000",
    "big-event-1000",
    "stream-100000-0",
    "split-usage",
];

fn model_map(prefix: &str) -> String {
    let pairs: Vec<String> = MAPPED
        .iter()
        .map(|m| format!("\"{prefix}-{m}\" = \"mock-{m}\""))
        .collect();
    format!("model_map = {{ {} }}", pairs.join(", "))
}

/// A relay with the Anthropic channel `anthropic` (`claude-*`) and the OpenAI-compatible
/// channel `mock` (`gpt-*`), both on `mock`, the access log in a fresh file, and `server`
/// lines.
fn relay(driver: Driver, mock: &Mock, stem: &str, server: &[&str]) -> (Relay, PathBuf) {
    let path = temp_path(stem, "log");
    let anthropic = channel_toml(
        "anthropic",
        &mock.base_url(),
        ANTHROPIC_KEY,
        &["claude-*"],
        &format!("{}\ndefault_max_tokens = 321", model_map("claude")),
    )
    .replace("provider = \"openai\"", "provider = \"anthropic\"");
    let mut cfg = ConfigBuilder::new(mock.addr)
        .section(&format!("[log]\naccess = {:?}", path.to_str().unwrap()))
        .default_channel(mock.addr, &["gpt-*"], &model_map("gpt"))
        .section(&anthropic);
    for line in server {
        cfg = cfg.server(line);
    }
    (start(driver, &cfg), path)
}

/// (prompt, completion, cached, estimated) of an access-log line.
fn logged_usage(line: &Value) -> (u64, u64, u64, bool) {
    (
        line["prompt_tokens"].as_u64().unwrap_or(u64::MAX),
        line["completion_tokens"].as_u64().unwrap_or(u64::MAX),
        line["cached_tokens"].as_u64().unwrap_or(u64::MAX),
        line["tokens_estimated"].as_bool().unwrap_or(true),
    )
}

fn tools_openai() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }}])
}

fn tools_anthropic() -> Value {
    json!([{"name": "get_weather", "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

fn chat_request(model: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "And Paris?"}
        ],
        "tools": tools_openai(),
        "tool_choice": "auto",
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn messages_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "And Paris?"}
            ]}
        ],
        "tools": tools_anthropic(),
        "tool_choice": {"type": "auto"},
        "temperature": 0.5,
        "stop_sequences": ["END"],
    })
}

fn post_chat(body: &Value) -> Vec<u8> {
    post_json("/v1/chat/completions", Some(TOKEN), &[], &body.to_string())
}

fn post_messages(path: &str, body: &Value) -> Vec<u8> {
    request(
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("x-api-key", TOKEN),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024-04-04"),
        ],
        body.to_string().as_bytes(),
    )
}

/// The `data:` payloads of an OpenAI-style stream, in order.
fn data_events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            assert!(
                e.starts_with("data: ") && !e.contains("\nevent:"),
                "not an OpenAI data event: {e:?}"
            );
            e["data: ".len()..].to_string()
        })
        .collect()
}

/// The (event name, data JSON) pairs of an Anthropic-style stream, in order.
fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e
                .strip_prefix("event: ")
                .and_then(|r| r.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an Anthropic event: {e:?}"));
            let v = serde_json::from_str(data).unwrap_or_else(|x| panic!("{x}: {data}"));
            (name.to_string(), v)
        })
        .collect()
}

fn chat_answers_from_an_anthropic_channel_are_converted_whole(driver: Driver) {
    let mock = Mock::start();
    let (relay, log) = relay(driver, &mock, "convert-chat-whole", &[]);
    let r = relay.roundtrip(&post_chat(&chat_request("claude-tools", false)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-upstream-request-id"), None);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["id"], "msg_mock");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["content"], "Let me check.");
    assert_eq!(msg["reasoning_content"], "The weather needs a tool.");
    let call = &msg["tool_calls"][0];
    assert_eq!(call["id"], "toolu_mock_0");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // input 5 + cache read 4 = 9 prompt tokens, 4 of them cached; 7 completion tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 9);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 16);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let line = &log_lines(&log, 1)[0];
    assert_eq!(logged_usage(line), (9, 7, 4, false), "{line}");
    assert_eq!(line["channel"], "anthropic", "{line}");
}

fn chat_streams_from_an_anthropic_channel_are_converted_event_by_event(driver: Driver) {
    let mock = Mock::start();
    let (relay, log) = relay(driver, &mock, "convert-chat-stream", &[]);
    let r = relay.roundtrip(&post_chat(&chat_request("claude-tools", true)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(!r.text().contains("ping"), "ping dropped: {}", r.text());
    let events = data_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut reasoning = String::new();
    let mut content = String::new();
    let mut args = String::new();
    let mut finish = Vec::new();
    let mut usage = Vec::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], "msg_mock");
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            assert_eq!(c["choices"], json!([]), "usage chunk has no choices: {c}");
            usage.push(u.clone());
            continue;
        }
        let choice = &c["choices"][0];
        let d = &choice["delta"];
        reasoning += d["reasoning_content"].as_str().unwrap_or("");
        content += d["content"].as_str().unwrap_or("");
        if let Some(calls) = d["tool_calls"].as_array() {
            for call in calls {
                assert_eq!(call["index"], 0, "stable tool index: {call}");
                if let Some(id) = call["id"].as_str() {
                    assert_eq!(id, "toolu_mock_0");
                    assert_eq!(call["function"]["name"], "get_weather");
                }
                args += call["function"]["arguments"].as_str().unwrap_or("");
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish.push(f.to_string());
        }
    }
    assert_eq!(reasoning, "The weather needs a tool.");
    assert_eq!(content, "Let me check.");
    assert_eq!(args, TOOL_ARGS);
    assert_eq!(
        finish,
        vec!["tool_calls"],
        "one final chunk with the finish reason"
    );
    assert_eq!(usage.len(), 1, "one usage chunk (include_usage)");
    assert_eq!(usage[0]["prompt_tokens"], 9);
    assert_eq!(usage[0]["completion_tokens"], 7);
    assert_eq!(usage[0]["prompt_tokens_details"]["cached_tokens"], 4);
    let line = &log_lines(&log, 1)[0];
    assert_eq!(logged_usage(line), (9, 7, 4, false), "{line}");

    // Without include_usage no usage chunk reaches the client, but the relay still counts it.
    let mut body = chat_request("claude-tools", true);
    body.as_object_mut().unwrap().remove("stream_options");
    let r = relay.roundtrip(&post_chat(&body));
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("\"usage\":{"), "{}", r.text());
    let line = &log_lines(&log, 2)[1];
    assert_eq!(logged_usage(line), (9, 7, 4, false), "{line}");
}

fn messages_answers_from_an_openai_channel_are_converted_whole(driver: Driver) {
    let mock = Mock::start();
    let (relay, log) = relay(driver, &mock, "convert-messages-whole", &[]);
    let r = relay.roundtrip(&post_messages(
        "/v1/messages",
        &messages_request("gpt-tools", false),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["id"], "chatcmpl-mock");
    let content = v["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{v}");
    assert_eq!(content[0], json!({"type": "text", "text": "Let me check."}));
    assert_eq!(content[1]["type"], "tool_use");
    assert_eq!(content[1]["id"], "call_mock_0");
    assert_eq!(content[1]["name"], "get_weather");
    assert_eq!(content[1]["input"], json!({"city": "Paris"}));
    assert_eq!(v["stop_reason"], "tool_use");
    // 9 prompt tokens of which 4 cached: 5 input, 4 cache reads.
    assert_eq!(v["usage"]["input_tokens"], 5);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 7);
    let line = &log_lines(&log, 1)[0];
    assert_eq!(logged_usage(line), (9, 7, 4, false), "{line}");
    assert_eq!(line["channel"], "mock", "{line}");
}

fn messages_streams_from_an_openai_channel_open_and_close_blocks_in_order(driver: Driver) {
    let mock = Mock::start();
    let (relay, log) = relay(driver, &mock, "convert-messages-stream", &[]);
    let r = relay.roundtrip(&post_messages(
        "/v1/messages",
        &messages_request("gpt-tools", true),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = named_events(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{}",
        r.text()
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "type matches the event name");
    }
    assert_eq!(events[0].1["message"]["id"], "chatcmpl-mock");
    assert_eq!(events[1].1["index"], 0);
    assert_eq!(events[1].1["content_block"]["type"], "text");
    assert_eq!(events[2].1["delta"]["text"], "Let me check.");
    assert_eq!(events[3].1["index"], 0);
    assert_eq!(events[4].1["index"], 1);
    assert_eq!(events[4].1["content_block"]["type"], "tool_use");
    assert_eq!(events[4].1["content_block"]["id"], "call_mock_0");
    assert_eq!(events[4].1["content_block"]["name"], "get_weather");
    let args: String = events[5..7]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 1);
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(args, TOOL_ARGS);
    assert_eq!(events[7].1["index"], 1);
    assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[8].1["usage"]["output_tokens"], 7);
    assert_eq!(events[8].1["usage"]["input_tokens"], 5);
    assert_eq!(events[8].1["usage"]["cache_read_input_tokens"], 4);
    let line = &log_lines(&log, 1)[0];
    assert_eq!(logged_usage(line), (9, 7, 4, false), "{line}");
}

// ---- relay-level golden files --------------------------------------------------------------

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/relay")
}

/// What the mock saw of a converted request (from `mock-mirror`'s echo): method, path, the
/// headers that matter to the upstream's dialect, and the body.
fn seen_by_mock(echo: &str) -> Value {
    let e: Value = serde_json::from_str(echo).unwrap_or_else(|x| panic!("{x}: {echo}"));
    let headers: Vec<Value> = e["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            let name = h[0].as_str().unwrap().to_ascii_lowercase();
            name == "authorization"
                || name == "x-api-key"
                || name.starts_with("anthropic-")
                || name == "content-type"
        })
        .map(|h| json!([h[0].as_str().unwrap().to_ascii_lowercase(), h[1]]))
        .collect();
    let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
    json!({"method": e["method"], "path": e["path"], "headers": headers, "body": body})
}

/// Compare `got` with the golden file `name` (or write it under `RINGWAY_BLESS_GOLDEN`).
fn golden(name: &str, got: &Value) {
    let path = golden_dir().join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(got).unwrap() + "\n";
    if std::env::var_os("RINGWAY_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (RINGWAY_BLESS_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "{} differs", path.display());
}

/// The client's answer with what varies per run (`created`) set to 0.
fn stable_answer(r: &Response, streamed: bool) -> Value {
    let mut v = if !streamed {
        r.json()
    } else if r.text().starts_with("event:") {
        Value::Array(
            named_events(&r.body)
                .into_iter()
                .map(|(n, d)| json!({"event": n, "data": d}))
                .collect(),
        )
    } else {
        Value::Array(
            data_events(&r.body)
                .into_iter()
                .map(|d| serde_json::from_str(&d).unwrap_or(Value::String(d)))
                .collect(),
        )
    };
    fn zero_created(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if o.contains_key("created") {
                    o.insert("created".into(), json!(0));
                }
                o.values_mut().for_each(zero_created);
            }
            Value::Array(a) => a.iter_mut().for_each(zero_created),
            _ => {}
        }
    }
    zero_created(&mut v);
    v
}

/// The answer with the mirrored request (which holds the port and request id of this run)
/// replaced by a marker: the request has its own golden file.
fn without_mirror(mut answer: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) if s.starts_with("{\"method\":") => {
                *s = "<the request as the mock received it>".into()
            }
            Value::Object(o) => o.values_mut().for_each(walk),
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut answer);
    answer
}

/// The mirrored request inside a converted answer: the text of the answer.
fn mirrored_text(answer: &Value) -> String {
    let mut text = String::new();
    let mut walk = |v: &Value| {
        if let Some(s) = v["choices"][0]["message"]["content"].as_str() {
            text += s;
        }
        if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
            text += s;
        }
        if let Some(s) = v["content"][0]["text"].as_str() {
            text += s;
        }
        if let Some(s) = v["data"]["delta"]["text"].as_str() {
            text += s;
        }
    };
    match answer {
        Value::Array(items) => items.iter().for_each(&mut walk),
        v => walk(v),
    }
    text
}

#[test]
fn converted_requests_and_answers_match_the_golden_files() {
    let mock = Mock::start();
    let (relay, _log) = relay(Driver::IoUring, &mock, "convert-golden", &[]);
    for stream in [false, true] {
        let suffix = if stream { "stream" } else { "whole" };
        // OpenAI chat → the Anthropic channel.
        let r = relay.roundtrip(&post_chat(&chat_request("claude-mirror", stream)));
        assert_eq!(r.status, 200, "{}", r.text());
        let answer = stable_answer(&r, stream);
        let seen = seen_by_mock(&mirrored_text(&answer));
        assert_eq!(seen["path"], "/v1/messages");
        let headers = seen["headers"].as_array().unwrap();
        assert!(
            headers.contains(&json!(["x-api-key", ANTHROPIC_KEY])),
            "{seen}"
        );
        assert!(
            headers.contains(&json!(["anthropic-version", "2023-06-01"])),
            "{seen}"
        );
        assert!(!headers.iter().any(|h| h[0] == "authorization"), "{seen}");
        let body = &seen["body"];
        assert_eq!(body["model"], "mock-mirror");
        assert_eq!(body["max_tokens"], 321, "the channel's default_max_tokens");
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["stream"].as_bool().unwrap_or(false), stream);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["tool_choice"], json!({"type": "auto"}));
        assert_eq!(
            body["tools"][0]["input_schema"]["required"],
            json!(["city"])
        );
        let images: Vec<&Value> = body["messages"][0]["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "image")
            .collect();
        assert_eq!(images[0]["source"]["type"], "base64");
        assert_eq!(images[0]["source"]["media_type"], "image/png");
        assert_eq!(
            images[1]["source"],
            json!({"type": "url", "url": "https://example.com/cat.png"})
        );
        golden(
            &format!("chat_to_anthropic.{suffix}.upstream_request"),
            &seen,
        );
        golden(
            &format!("chat_to_anthropic.{suffix}.client_answer"),
            &without_mirror(answer),
        );

        // Anthropic Messages → the OpenAI-compatible channel.
        let r = relay.roundtrip(&post_messages(
            "/v1/messages",
            &messages_request("gpt-mirror", stream),
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let answer = stable_answer(&r, stream);
        let seen = seen_by_mock(&mirrored_text(&answer));
        assert_eq!(seen["path"], "/v1/chat/completions");
        let headers = seen["headers"].as_array().unwrap();
        assert!(
            headers.contains(&json!(["authorization", format!("Bearer {UPSTREAM_KEY}")])),
            "{seen}"
        );
        assert!(
            !headers
                .iter()
                .any(|h| h[0].as_str().unwrap().starts_with("anthropic-") || h[0] == "x-api-key"),
            "no Anthropic headers to an OpenAI channel: {seen}"
        );
        let body = &seen["body"];
        assert_eq!(body["model"], "mock-mirror");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["stop"], json!(["END"]));
        if stream {
            assert_eq!(body["stream_options"]["include_usage"], true);
        }
        golden(
            &format!("messages_to_openai.{suffix}.upstream_request"),
            &seen,
        );
        golden(
            &format!("messages_to_openai.{suffix}.client_answer"),
            &without_mirror(answer),
        );
    }
}

// ---- errors ----------------------------------------------------------------------------------

#[test]
fn upstream_errors_reach_the_client_in_its_own_dialect() {
    let mock = Mock::start();
    let (relay, _log) = relay(Driver::IoUring, &mock, "convert-errors", &[]);
    // An Anthropic channel's errors to an OpenAI client: OpenAI's shape, the status kept.
    for (model, status, kind) in [
        ("claude-status-400", 400, "invalid_request_error"),
        ("claude-status-429", 429, "rate_limit_error"),
        ("claude-status-500", 500, "api_error"),
        ("claude-status-529", 529, "overloaded_error"),
    ] {
        let r = relay.roundtrip(&post_chat(&chat_request(model, false)));
        let e = assert_error_shape(&r, status, None);
        assert_eq!(e["type"], kind, "{model}: {e}");
        assert!(r.json().get("type").is_none(), "OpenAI shape: {}", r.text());
        if status == 429 {
            assert_eq!(r.header("retry-after"), Some("7"));
        }
    }
    // A refused channel key is the relay's 502, in the client's dialect.
    let r = relay.roundtrip(&post_chat(&chat_request("claude-status-401", false)));
    assert_error_shape(&r, 502, Some("upstream_auth_failed"));
    assert!(!r.text().contains(ANTHROPIC_KEY));

    // An OpenAI channel's errors to an Anthropic client: Anthropic's shape, the status kept.
    for (model, status, kind) in [
        ("gpt-status-400", 400, "invalid_request_error"),
        ("gpt-status-429", 429, "rate_limit_error"),
        ("gpt-status-500", 500, "api_error"),
        ("gpt-status-401", 502, "api_error"),
    ] {
        let r = relay.roundtrip(&post_messages(
            "/v1/messages",
            &messages_request(model, false),
        ));
        assert_eq!(r.status, status, "{model}: {}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error", "{model}: {v}");
        assert_eq!(v["error"]["type"], kind, "{model}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }

    // A client body that cannot be converted is the client's 400, never sent upstream.
    let before = mock.stats().requests;
    let r = relay.roundtrip(&post_chat(&json!({"model": "claude-fixed", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}
    ]})));
    assert_error_shape(&r, 400, None);
    assert_eq!(mock.stats().requests, before, "nothing went upstream");
}

#[test]
fn an_error_inside_an_upstream_stream_ends_the_converted_stream_with_the_relays_error_event() {
    let mock = Mock::start();
    let (relay, log) = relay(Driver::IoUring, &mock, "convert-stream-error", &[]);
    // Anthropic's `event: error` (overloaded) → the OpenAI client's stream: tok0, then the error.
    let r = relay.roundtrip(&post_chat(&chat_request("claude-stream-error", true)));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"content\":\"tok0\""), "{}", r.text());
    let (e, last) = sse_error_event(&r.body).expect("an error event");
    assert!(last, "the error event ends the stream: {}", r.text());
    assert_eq!(e["error"]["type"], "overloaded_error", "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Overloaded"));
    assert!(!r.text().contains("[DONE]"));

    // An OpenAI in-band error → the Anthropic client's stream: an Anthropic error event.
    let r = relay.roundtrip(&post_messages(
        "/v1/messages",
        &messages_request("gpt-stream-error", true),
    ));
    assert_eq!(r.status, 200);
    let (e, last) = sse_error_event(&r.body).expect("an error event");
    assert!(last, "{}", r.text());
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["error"]["type"].is_string(), "{e}");
    assert!(!r.text().contains("message_stop"));
    let lines = log_lines(&log, 2);
    assert!(
        lines.iter().all(|l| l["outcome"] == "upstream_error"),
        "{lines:#?}"
    );
}

#[test]
fn a_usage_report_split_across_reads_is_converted_whole() {
    let mock = Mock::start();
    let (relay, log) = relay(Driver::IoUring, &mock, "convert-split-usage", &[]);
    let r = relay.roundtrip(&post_chat(&chat_request("claude-split-usage", true)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("\"completion_tokens\":1234"),
        "{}",
        r.text()
    );
    let line = &log_lines(&log, 1)[0];
    assert_eq!(logged_usage(line), (9, 1234, 4, false), "{line}");
}

#[test]
fn an_event_over_max_sse_event_bytes_ends_the_stream_with_sse_event_too_large() {
    let mock = Mock::start();
    let (relay, _log) = relay(
        Driver::IoUring,
        &mock,
        "convert-big-event",
        &["max_sse_event_bytes = 65536"],
    );
    for (path, model) in [
        ("/v1/chat/completions", "claude-big-event-100000"),
        ("/v1/messages", "gpt-big-event-100000"),
    ] {
        let req = if path == "/v1/messages" {
            post_messages(path, &messages_request(model, true))
        } else {
            post_chat(&chat_request(model, true))
        };
        let r = relay.roundtrip(&req);
        assert_eq!(r.status, 200, "{model}");
        let (e, last) = sse_error_event(&r.body).unwrap_or_else(|| panic!("{model}: {}", r.text()));
        assert!(last);
        let text = e.to_string();
        assert!(text.contains("max_sse_event_bytes"), "{model}: {e}");
        if path == "/v1/chat/completions" {
            assert_eq!(e["error"]["code"], "sse_event_too_large", "{e}");
        }
        assert!(
            r.body.len() < 65536,
            "the big event never reached the client"
        );
    }
    // An event under the bound passes whole.
    let r = relay.roundtrip(&post_chat(&chat_request("claude-big-event-1000", true)));
    assert!(sse_error_event(&r.body).is_none(), "{}", r.text());
    assert!(r.text().contains(&"x".repeat(1000)));
}

#[test]
fn count_tokens_for_a_model_only_openai_channels_serve_is_a_404_never_a_made_up_count() {
    let mock = Mock::start();
    let (relay, _log) = relay(Driver::IoUring, &mock, "convert-count", &[]);
    let before = mock.stats().requests;
    let r = relay.roundtrip(&post_messages(
        "/v1/messages/count_tokens",
        &json!({"model": "gpt-fixed", "messages": [{"role": "user", "content": "hi"}]}),
    ));
    assert_eq!(r.status, 404, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-fixed") && message.contains("Anthropic"),
        "{message}"
    );
    assert_eq!(mock.stats().requests, before, "nothing went upstream");
    // The legacy completions endpoint has no conversion either.
    let r = relay.roundtrip(&post_json(
        "/v1/completions",
        Some(TOKEN),
        &[],
        r#"{"model":"claude-fixed","prompt":"hi"}"#,
    ));
    assert_error_shape(&r, 404, Some("model_not_found"));
}

#[test]
fn failover_across_providers_converts_for_each_channel_tried() {
    let mock = Mock::start();
    let path = temp_path("convert-failover", "log");
    // `mixed` is served first by an Anthropic channel that fails once (503), then by the
    // OpenAI-compatible channel, which mirrors what it received.
    let anthropic = channel_toml(
        "anthropic",
        &mock.base_url(),
        ANTHROPIC_KEY,
        &["mixed"],
        "priority = 1\nmodel_map = { \"mixed\" = \"mock-fail-1-503-0\" }",
    )
    .replace("provider = \"openai\"", "provider = \"anthropic\"");
    let cfg = ConfigBuilder::new(mock.addr)
        .section(&format!("[log]\naccess = {:?}", path.to_str().unwrap()))
        .default_channel(
            mock.addr,
            &["mixed"],
            "model_map = { \"mixed\" = \"mock-mirror\" }",
        )
        .section(&anthropic);
    let relay = start(Driver::IoUring, &cfg);
    // A Messages client: native first (fails), then converted for the OpenAI channel.
    let r = relay.roundtrip(&post_messages(
        "/v1/messages",
        &messages_request("mixed", false),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message", "{v}");
    let seen = seen_by_mock(v["content"][0]["text"].as_str().unwrap());
    assert_eq!(seen["path"], "/v1/chat/completions");
    assert_eq!(seen["body"]["model"], "mock-mirror");
    assert!(seen["body"]["messages"].is_array());
    let line = &log_lines(&path, 1)[0];
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["channel"], "mock", "{line}");
    assert_eq!(logged_usage(line), (9, 7, 4, false), "{line}");
}

// ---- memory ----------------------------------------------------------------------------------

/// What a long stream brought: how often `needle` occurred, whether an `event: error` did,
/// and the stream's last bytes. Read raw until the relay closes (the request says
/// `Connection: close`), counting as it goes, under an overall deadline generous enough for
/// a debug build on a loaded machine.
fn count_stream(relay: &Relay, mut request: Vec<u8>, needle: &[u8]) -> (usize, bool, Vec<u8>) {
    use std::io::{Read, Write};
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    request.splice(head_end..head_end, b"connection: close\r\n".iter().copied());
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&request).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut window: Vec<u8> = Vec::new();
    let mut count = 0;
    let mut error = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream took over 240 s"
        );
        let n = s.read(&mut chunk).expect("read the stream");
        if n == 0 {
            break;
        }
        // Keep the tail of the previous read so a needle split across reads is counted once.
        let keep = window.len().min(256);
        window.drain(..window.len() - keep);
        let old = window.len();
        window.extend_from_slice(&chunk[..n]);
        count += window
            .windows(needle.len())
            .enumerate()
            .filter(|(i, w)| *w == needle && i + needle.len() > old)
            .count();
        error |= window.windows(12).any(|w| w == b"event: error");
    }
    (count, error, window)
}

/// A stream of 100,000 events through each conversion: the relay's RSS stays flat.
#[test]
fn a_stream_of_100000_events_through_each_conversion_keeps_rss_flat() {
    let mock = Mock::start();
    let (relay, log) = relay(Driver::IoUring, &mock, "convert-rss", &[]);
    let rss = |relay: &Relay| relay.health()["rss_bytes"].as_u64().unwrap();
    let run = |n: usize| {
        let (chunks, error, tail) = count_stream(
            &relay,
            post_chat(&chat_request("claude-stream-100000-0", true)),
            b"chat.completion.chunk",
        );
        assert!(!error, "{}", String::from_utf8_lossy(&tail));
        // 100,000 deltas, the first and the final chunk, the usage chunk.
        assert!(chunks >= 100_002, "{chunks} chunks");
        assert!(tail.ends_with(b"data: [DONE]\n\n\r\n0\r\n\r\n"));
        let (deltas, error, tail) = count_stream(
            &relay,
            post_messages(
                "/v1/messages",
                &messages_request("gpt-stream-100000-0", true),
            ),
            b"event: content_block_delta",
        );
        assert!(!error, "{}", String::from_utf8_lossy(&tail));
        assert_eq!(deltas, 100_000);
        assert!(tail
            .ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n\r\n0\r\n\r\n"));
        log_lines(&log, n);
    };
    // One round first, so the allocator's pools and the buffer pool are warm.
    run(2);
    let before = rss(&relay);
    run(4);
    let after = rss(&relay);
    let lines = log_lines(&log, 4);
    assert_eq!(logged_usage(&lines[2]).1, 100_000, "{}", lines[2]);
    assert_eq!(logged_usage(&lines[3]).1, 100_000, "{}", lines[3]);
    eprintln!("rss before {before} after {after}");
    assert!(
        after <= before + 4 * 1024 * 1024,
        "RSS grew from {before} to {after} over two streams of 100,000 events"
    );
}
