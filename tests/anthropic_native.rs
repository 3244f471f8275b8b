//! Anthropic's Messages API, natively: `POST /v1/messages` and `/v1/messages/count_tokens`
//! relayed byte for byte to `provider = "anthropic"` channels — the channel's key as
//! `x-api-key`, `anthropic-version` (the client's, the channel's, or the default), the client's
//! own key never upstream — usage from the body and from `message_start` / `message_delta`
//! (cache reads and writes counted in the prompt), and every error on these endpoints in
//! Anthropic's shape `{"type":"error","error":{"type","message"}}`. Real binary against the
//! mock, access log to a file, both io drivers.
//!
//! The mock's figures (see `ringway_mock::MODELS_DOC`): a fixed message reports 9 input, 4
//! cache-read and 7 output tokens; a stream 5 input and 4 cache-read tokens in `message_start`
//! and one output token per text delta in `message_delta`.

mod common;

use std::path::PathBuf;

use common::*;

both_drivers! {
    messages_are_relayed_byte_for_byte_with_their_usage,
    the_upstream_gets_the_channel_key_and_a_version,
    count_tokens_is_relayed_and_costs_nothing,
    a_model_served_only_by_a_provider_the_endpoint_cannot_use_is_a_404,
    a_bad_client_key_is_an_anthropic_401,
    upstream_errors_reach_the_client_in_anthropic_shape,
    a_stream_cut_by_a_timeout_ends_with_an_anthropic_error_event,
    a_usage_report_split_across_reads_is_read_whole,
}

const ANTHROPIC_KEY: &str = "sk-ant-upstream-key-0123456789";

/// A relay with an Anthropic channel (`mock-*`, `claude-*`, and `claude-pinned` → `mock-echo`
/// on a second Anthropic channel with its own `anthropic_version`), an OpenAI-compatible
/// channel serving `gpt-*`, and the access log in a fresh file.
fn relay(driver: Driver, mock: &Mock, stem: &str) -> (Relay, PathBuf) {
    let path = temp_path(stem, "log");
    let anthropic = |name: &str, models: &[&str], extra: &str| {
        channel_toml(name, &mock.base_url(), ANTHROPIC_KEY, models, extra)
            .replace("provider = \"openai\"", "provider = \"anthropic\"")
    };
    let cfg = ConfigBuilder::new(mock.addr)
        .section(&format!("[log]\naccess = {:?}", path.to_str().unwrap()))
        .default_channel(mock.addr, &["gpt-*"], "")
        .section(&anthropic(
            "anthropic",
            &["mock-*", "claude-*"],
            "timeouts = { stream_idle = \"700ms\" }",
        ))
        .section(&anthropic(
            "anthropic-pinned",
            &["claude-pinned"],
            "priority = 1\nanthropic_version = \"2099-01-01\"\nmodel_map = { \"claude-pinned\" = \"mock-echo\" }",
        ));
    (start(driver, &cfg), path)
}

/// (prompt, completion, cached, total, estimated) as the log line has them.
fn tokens(line: &serde_json::Value) -> (u64, u64, u64, u64, bool) {
    let n = |k: &str| {
        line[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {line}"))
    };
    (
        n("prompt_tokens"),
        n("completion_tokens"),
        n("cached_tokens"),
        n("total_tokens"),
        line["tokens_estimated"]
            .as_bool()
            .unwrap_or_else(|| panic!("tokens_estimated missing in {line}")),
    )
}

fn messages_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":{model:?},"max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"Hello"}}]}}"#
    )
}

/// `POST path` with the client key in `x-api-key` (as the anthropic SDK sends it) and `extra`.
fn post_anthropic(path: &str, key: &str, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-api-key", key),
        ("anthropic-version", "2023-06-01"),
    ];
    headers.extend_from_slice(extra);
    request("POST", path, &headers, body.as_bytes())
}

/// Asserts Anthropic's error shape with `kind` and returns the message.
fn assert_anthropic_error(r: &Response, status: u16, kind: &str) -> String {
    assert_eq!(r.status, status, "status; body {:?}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(2),
        "only type and error: {v}"
    );
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error.message: {v}");
    r.request_id();
    message.to_string()
}

fn messages_are_relayed_byte_for_byte_with_their_usage(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-bytes");
    let mut c = relay.client();
    // Not streamed, with the key in x-api-key and then as a Bearer token.
    let body = messages_body("mock-fixed", false);
    let direct = mock_direct(mock.addr, &post_anthropic("/v1/messages", "k", &[], &body));
    assert_eq!(direct.status, 200);
    c.send(&post_anthropic("/v1/messages", TOKEN, &[], &body));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, direct.body, "relayed byte for byte");
    assert_eq!(r.json()["type"], "message");
    let bearer = bearer(TOKEN);
    let headers = [("content-type", "application/json"), (bearer.0, &*bearer.1)];
    c.send(&request("POST", "/v1/messages", &headers, body.as_bytes()));
    let r = c.read_response();
    assert_eq!((r.status, &r.body), (200, &direct.body));

    // Streamed: the events as the upstream sent them, in order, ending with message_stop.
    let body = messages_body("mock-stream-4-0", true);
    let direct = mock_direct(mock.addr, &post_anthropic("/v1/messages", "k", &[], &body));
    c.send(&post_anthropic("/v1/messages", TOKEN, &[], &body));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.text(), direct.text(), "stream relayed byte for byte");
    let text = r.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        events,
        [
            "event: message_start",
            "event: content_block_start",
            "event: ping",
            "event: content_block_delta",
            "event: content_block_delta",
            "event: content_block_delta",
            "event: content_block_delta",
            "event: content_block_stop",
            "event: message_delta",
            "event: message_stop",
        ]
    );
    assert!(!r.text().contains("[DONE]"));

    // Usage: prompt = input + cache reads (+ cache writes), the stream's output from
    // message_delta (not message_start's 1).
    let lines = log_lines(&path, 3);
    for l in &lines[..2] {
        assert_eq!(l["path"], "/v1/messages", "{l}");
        assert_eq!(l["channel"], "anthropic", "{l}");
        assert_eq!(tokens(l), (13, 7, 4, 20, false), "{l}");
    }
    assert_eq!(tokens(&lines[2]), (9, 4, 4, 13, false), "{}", lines[2]);
    let _ = std::fs::remove_file(&path);
}

fn the_upstream_gets_the_channel_key_and_a_version(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-headers");
    let mut c = relay.client();
    // No anthropic-version from the client: the default goes.
    let body = messages_body("mock-echo", false);
    let headers = [
        ("content-type", "application/json"),
        ("x-api-key", TOKEN),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
    ];
    c.send(&request("POST", "/v1/messages", &headers, body.as_bytes()));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = parse_echo(&r);
    assert_eq!(echo.path, "/v1/messages");
    assert_eq!(echo.one("x-api-key"), ANTHROPIC_KEY);
    assert!(!echo.has("authorization"), "{echo:?}");
    assert_eq!(echo.one("anthropic-version"), "2023-06-01");
    assert_eq!(echo.one("anthropic-beta"), "prompt-caching-2024-07-31");
    assert!(
        !echo.headers.iter().any(|(_, v)| v.contains(TOKEN)),
        "the client's key reached the upstream: {echo:?}"
    );
    assert_eq!(echo.body, body, "body byte for byte");

    // The client's version and a Bearer key: the version passes once, the key never.
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("anthropic-version", "2024-10-22"),
    ];
    c.send(&request("POST", "/v1/messages", &headers, body.as_bytes()));
    let echo = parse_echo(&c.read_response());
    assert_eq!(echo.one("anthropic-version"), "2024-10-22");
    assert_eq!(echo.one("x-api-key"), ANTHROPIC_KEY);
    assert!(!echo.has("authorization"), "{echo:?}");

    // A channel's own anthropic_version stands in for the default; its model_map renames.
    let headers = [("content-type", "application/json"), ("x-api-key", TOKEN)];
    let pinned = messages_body("claude-pinned", false);
    c.send(&request(
        "POST",
        "/v1/messages",
        &headers,
        pinned.as_bytes(),
    ));
    let echo = parse_echo(&c.read_response());
    assert_eq!(echo.one("anthropic-version"), "2099-01-01");
    assert_eq!(echo.body, messages_body("mock-echo", false));
    let lines = log_lines(&path, 3);
    assert_eq!(lines[2]["channel"], "anthropic-pinned", "{}", lines[2]);
    let _ = std::fs::remove_file(&path);
}

fn count_tokens_is_relayed_and_costs_nothing(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-count");
    let body =
        r#"{"model":"claude-sonnet-4","messages":[{"role":"user","content":"Hello, world"}]}"#;
    let direct = mock_direct(
        mock.addr,
        &post_anthropic("/v1/messages/count_tokens", "k", &[], body),
    );
    let r = relay.roundtrip(&post_anthropic(
        "/v1/messages/count_tokens",
        TOKEN,
        &[],
        body,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, direct.body);
    let n = r.json()["input_tokens"].as_u64().expect("input_tokens");
    assert!(n > 0);
    // A count is not usage: the request is logged as costing nothing, not estimated.
    let lines = log_lines(&path, 1);
    assert_eq!(lines[0]["path"], "/v1/messages/count_tokens");
    assert_eq!(lines[0]["channel"], "anthropic");
    assert_eq!(tokens(&lines[0]), (0, 0, 0, 0, false), "{}", lines[0]);
    // GET is not the endpoint's method.
    let r = relay.roundtrip(&request(
        "GET",
        "/v1/messages/count_tokens",
        &[("x-api-key", TOKEN)],
        b"",
    ));
    assert_eq!(r.status, 405);
    let _ = std::fs::remove_file(&path);
}

fn a_model_served_only_by_a_provider_the_endpoint_cannot_use_is_a_404(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-404");
    let before = mock.stats().requests;
    // count_tokens has no OpenAI counterpart: never a made-up count (`/v1/messages` itself is
    // converted for OpenAI-compatible channels: tests/convert_relay.rs).
    let endpoint = "/v1/messages/count_tokens";
    let r = relay.roundtrip(&post_anthropic(
        endpoint,
        TOKEN,
        &[],
        &messages_body("gpt-4o", false),
    ));
    let message = assert_anthropic_error(&r, 404, "not_found_error");
    assert!(
        message.contains("gpt-4o") && message.contains("only by OpenAI-compatible channels"),
        "{message}"
    );
    assert!(message.contains(endpoint), "{message}");
    // A model no channel serves at all.
    let r = relay.roundtrip(&post_anthropic(
        "/v1/messages",
        TOKEN,
        &[],
        &messages_body("nobody-serves-this", false),
    ));
    assert_anthropic_error(&r, 404, "not_found_error");
    // And the other way: legacy completions (no conversion) for a model only Anthropic
    // channels serve.
    let r = relay.roundtrip(&post_json(
        "/v1/completions",
        Some(TOKEN),
        &[],
        r#"{"model":"claude-sonnet-4","prompt":"Hello"}"#,
    ));
    let e = assert_error_shape(&r, 404, Some("model_not_found"));
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("only by Anthropic channels"),
        "{e}"
    );
    assert_eq!(mock.stats().requests, before, "nothing went upstream");
    let _ = std::fs::remove_file(&path);
}

fn a_bad_client_key_is_an_anthropic_401(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-401");
    let body = messages_body("mock-fixed", false);
    let r = relay.roundtrip(&post_anthropic("/v1/messages", "sk-wrong", &[], &body));
    assert_anthropic_error(&r, 401, "authentication_error");
    let r = relay.roundtrip(&request(
        "POST",
        "/v1/messages",
        &[("content-type", "application/json")],
        body.as_bytes(),
    ));
    assert_anthropic_error(&r, 401, "authentication_error");
    // A body that is not JSON: 400 in the same shape.
    let r = relay.roundtrip(&post_anthropic("/v1/messages", TOKEN, &[], "{not json"));
    assert_anthropic_error(&r, 400, "invalid_request_error");
    // Under /v1/messages, a wrong method and an unknown path answer in Anthropic's shape too.
    let r = relay.roundtrip(&get("/v1/messages", &[("x-api-key", TOKEN)]));
    assert_anthropic_error(&r, 405, "invalid_request_error");
    assert!(
        r.header("allow").is_some_and(|a| a.contains("POST")),
        "{:?}",
        r.headers
    );
    let r = relay.roundtrip(&post_anthropic("/v1/messages/batches", TOKEN, &[], &body));
    assert_anthropic_error(&r, 404, "not_found_error");
    // The OpenAI endpoints keep OpenAI's shape.
    let r = relay.roundtrip(&post_json(
        "/v1/chat/completions",
        Some("sk-wrong"),
        &[],
        &chat_body("gpt-4o", false),
    ));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
    let _ = std::fs::remove_file(&path);
}

fn upstream_errors_reach_the_client_in_anthropic_shape(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-upstream-errors");
    for (model, status, kind, retry_after) in [
        ("mock-status-529", 529, "overloaded_error", None),
        ("mock-status-429", 429, "rate_limit_error", Some("7")),
        ("mock-status-400", 400, "invalid_request_error", None),
    ] {
        let r = relay.roundtrip(&post_anthropic(
            "/v1/messages",
            TOKEN,
            &[],
            &messages_body(model, false),
        ));
        let message = assert_anthropic_error(&r, status, kind);
        assert_eq!(message, format!("mock error {status}"));
        assert_eq!(r.header("retry-after"), retry_after, "{model}");
    }
    let _ = std::fs::remove_file(&path);
}

fn a_stream_cut_by_a_timeout_ends_with_an_anthropic_error_event(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-stream-error");
    // One event, then 10 s of silence: the channel's 700 ms stream_idle ends the stream.
    let r = relay.roundtrip(&post_anthropic(
        "/v1/messages",
        TOKEN,
        &[],
        &messages_body("mock-stall-stream-10000", true),
    ));
    assert_eq!(r.status, 200);
    let text = r.text();
    let last = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .last()
        .unwrap_or_default();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("no error event at the end: {text:?}"));
    let v: serde_json::Value = serde_json::from_str(data).expect("error event JSON");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "timeout_error", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("stream_idle")));
    let _ = std::fs::remove_file(&path);
}

/// `mock-split-usage` writes its `message_delta` in two pieces 50 ms apart, cut inside
/// `"output_tokens":1234`: the relay reads them apart, and must still account 1234, not 12.
fn a_usage_report_split_across_reads_is_read_whole(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "anthropic-split-usage");
    let r = relay.roundtrip(&post_anthropic(
        "/v1/messages",
        TOKEN,
        &[],
        &messages_body("mock-split-usage", true),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"output_tokens\":1234"), "{}", r.text());
    let line = &log_lines(&path, 1)[0];
    // 5 input + 4 cache reads; 1234 output.
    assert_eq!(tokens(line), (9, 1234, 4, 1243, false), "{line}");
    let _ = std::fs::remove_file(&path);
}
