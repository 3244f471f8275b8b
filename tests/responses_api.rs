//! OpenAI's Responses API through the relay: `POST /v1/responses` answered whole and streamed
//! (bodies checked field by field, streams event by event), usage counted from every ending
//! (`response.completed`, `response.incomplete`, `response.failed`) into the access log, the id
//! routes (`GET` / `DELETE /v1/responses/{id}`, `POST …/cancel`, `GET …/input_items`) reaching
//! the channel and key that created the response — and only for the token that did —, the id
//! map's bound and expiry, failover before the first byte, channels with `responses = false`,
//! a model on channels of both providers (no conversion for the Responses API, chat converted),
//! and errors in OpenAI's shape. Real binary against the mock upstream.
//!
//! The mock's figures (see `ringway_mock::MODELS_DOC`): every Responses answer reports 9 input
//! tokens, 4 of them cached; a whole answer 7 output tokens, a stream one per delta. Every
//! Responses answer carries `x-mock-key`, the last 4 characters of the key the mock saw.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

const OTHER_TOKEN: &str = "sk-test-other-client-token";

fn responses_body(model: &str, stream: bool, extra: &str) -> String {
    format!("{{\"model\":{model:?},\"stream\":{stream},\"input\":\"Say hello\"{extra}}}")
}

fn create(relay: &Relay, model: &str, stream: bool, extra: &str) -> Response {
    relay.roundtrip(&post_json(
        "/v1/responses",
        Some(TOKEN),
        &[],
        &responses_body(model, stream, extra),
    ))
}

fn by_id(relay: &Relay, method: &str, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    relay.roundtrip(&request(method, path, &[("authorization", &auth)], b""))
}

fn with_access_log(cfg: ConfigBuilder, stem: &str) -> (ConfigBuilder, PathBuf) {
    let path = temp_path(stem, "log");
    let cfg = cfg.section(&format!("[log]\naccess = {:?}", path.to_str().unwrap()));
    (cfg, path)
}

/// (prompt, completion, cached, estimated) as an access-log line has them.
fn tokens(line: &serde_json::Value) -> (u64, u64, u64, bool) {
    let n = |k: &str| line[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    (
        n("prompt_tokens"),
        n("completion_tokens"),
        n("cached_tokens"),
        line["tokens_estimated"].as_bool().unwrap(),
    )
}

/// The SSE events of a body: (the `event:` name, the `data:` JSON).
fn events(body: &[u8]) -> Vec<(String, serde_json::Value)> {
    let text = String::from_utf8_lossy(body);
    assert!(
        text.ends_with("\n\n"),
        "a stream ends with a whole event: {text:?}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(
                        serde_json::from_str(d)
                            .unwrap_or_else(|err| panic!("event data is not JSON ({err}): {d}")),
                    );
                } else {
                    panic!("unexpected line {line:?} in {e:?}");
                }
            }
            (name, data.unwrap_or_else(|| panic!("no data in {e:?}")))
        })
        .collect()
}

#[test]
fn a_response_object_passes_field_by_field_and_its_usage_is_counted() {
    let mock = Mock::start();
    let (cfg, log) = with_access_log(ConfigBuilder::new(mock.addr), "responses-fixed");
    let relay = cfg.start(&[]);
    let r = create(
        &relay,
        "gpt-4o-mini",
        false,
        ",\"instructions\":\"Be brief\"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(!r.request_id().is_empty());
    let v = r.json();
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("resp_"), "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["instructions"], "Be brief");
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["incomplete_details"], serde_json::Value::Null);
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{v}");
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["status"], "completed");
    assert_eq!(output[0]["content"][0]["type"], "output_text");
    assert_eq!(
        output[0]["content"][0]["text"],
        "Hello from the ringway mock upstream."
    );
    assert_eq!(v["usage"]["input_tokens"], 9);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 16);
    let lines = log_lines(&log, 1);
    let line = &lines[0];
    assert_eq!(line["path"], "/v1/responses", "{line}");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["status"], 200);
    assert_eq!(line["model"], "gpt-4o-mini");
    assert_eq!(line["channel"], "mock");
    assert_eq!(tokens(line), (9, 7, 4, false), "{line}");
}

#[test]
fn a_stream_passes_event_by_event_and_its_usage_is_counted() {
    let mock = Mock::start();
    let (cfg, log) = with_access_log(ConfigBuilder::new(mock.addr), "responses-stream");
    let relay = cfg.start(&[]);
    let r = create(&relay, "mock-stream-4-100", true, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let evs = events(&r.body);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "event {i}");
        assert_eq!(data["sequence_number"], i as u64, "event {i}");
    }
    let id = evs[0].1["response"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_"));
    assert_eq!(evs[0].1["response"]["status"], "in_progress");
    assert_eq!(evs[0].1["response"]["usage"], serde_json::Value::Null);
    let deltas: Vec<&str> = evs[4..8]
        .iter()
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ["tok0", "tok1", "tok2", "tok3"]);
    assert_eq!(evs[8].1["text"], "tok0tok1tok2tok3");
    let done = &evs[11].1["response"];
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "tok0tok1tok2tok3");
    assert_eq!(done["usage"]["input_tokens"], 9);
    assert_eq!(done["usage"]["output_tokens"], 4);
    // The deltas came as they were sent (100 ms apart), not gathered at the end: the piece
    // with the first delta arrived well before the one with the last.
    let at = |needle: &str| {
        r.chunks
            .iter()
            .find(|(_, piece)| String::from_utf8_lossy(piece).contains(needle))
            .unwrap_or_else(|| panic!("{needle} in no piece"))
            .0
    };
    let spread = at("\"delta\":\"tok3\"") - at("\"delta\":\"tok0\"");
    assert!(spread >= Duration::from_millis(200), "{spread:?}");
    let lines = log_lines(&log, 1);
    assert_eq!(tokens(&lines[0]), (9, 4, 4, false), "{}", lines[0]);
    // The stream's id is routable.
    let got = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["output"][0]["content"][0]["text"],
        "tok0tok1tok2tok3"
    );
}

#[test]
fn usage_is_counted_from_every_ending() {
    let mock = Mock::start();
    let (cfg, log) = with_access_log(ConfigBuilder::new(mock.addr), "responses-endings");
    let relay = cfg.start(&[]);
    // Streamed: the last event is response.incomplete / response.failed, with the usage.
    for (model, last, status) in [
        ("mock-incomplete", "response.incomplete", "incomplete"),
        ("mock-failed", "response.failed", "failed"),
    ] {
        let r = create(&relay, model, true, "");
        assert_eq!(r.status, 200, "{}", r.text());
        let evs = events(&r.body);
        let (name, data) = evs.last().unwrap();
        assert_eq!(name, last);
        assert_eq!(data["response"]["status"], status);
        assert_eq!(data["response"]["usage"]["output_tokens"], 5);
    }
    // Whole: the same endings in the object.
    let r = create(&relay, "mock-incomplete", false, "");
    let v = r.json();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    let r = create(&relay, "mock-failed", false, "");
    let v = r.json();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "server_error");
    // A stream that reports no usage is estimated, and says so.
    let r = create(&relay, "mock-stream-nousage-3-0", true, "");
    assert_eq!(r.status, 200);
    let lines = log_lines(&log, 5);
    assert_eq!(tokens(&lines[0]), (9, 5, 4, false), "{}", lines[0]);
    assert_eq!(tokens(&lines[1]), (9, 5, 4, false), "{}", lines[1]);
    assert_eq!(tokens(&lines[2]), (9, 7, 4, false), "{}", lines[2]);
    assert_eq!(tokens(&lines[3]), (9, 7, 4, false), "{}", lines[3]);
    let (p, _, _, estimated) = tokens(&lines[4]);
    assert!(estimated && p > 0, "{}", lines[4]);
}

#[test]
fn function_tools_come_back_as_function_calls() {
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr).start(&[]);
    let tools = ",\"tools\":[{\"type\":\"function\",\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"usage\":{\"type\":\"object\"}}}}]";
    let r = create(&relay, "gpt-4o", false, tools);
    let v = r.json();
    assert_eq!(v["output"][0]["type"], "function_call", "{v}");
    assert_eq!(v["output"][0]["name"], "get_weather");
    assert!(v["output"][0]["call_id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    assert_eq!(v["output"][0]["arguments"], "{\"mock\":true}");
    assert_eq!(v["tools"][0]["name"], "get_weather");
    let r = create(&relay, "mock-stream-2-0", true, tools);
    let evs = events(&r.body);
    let args: String = evs
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, "{\"parts\":\"p0p1\"}");
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "function_call");
    assert_eq!(done["output"][0]["arguments"], args.as_str());
}

#[test]
fn id_routes_reach_the_channel_and_key_that_created_the_response() {
    let (mock_a, mock_b) = (Mock::start(), Mock::start());
    let keys_a = "keys = [\"sk-chan-a-key-1111\", \"sk-chan-a-key-2222\"]";
    let cfg = ConfigBuilder::new(mock_a.addr)
        .without_default_channel()
        .channel("a", &mock_a.base_url(), "unused", &["*"], "")
        .channel("b", &mock_b.base_url(), "sk-chan-b-key-3333", &["*"], "")
        .token("other", OTHER_TOKEN, &["*"]);
    // Channel a gets two keys in rotation (the builder writes one).
    let text = cfg.render(0);
    assert!(text.contains("keys = [\"unused\"]"));
    // Two workers: the id map is shared; each request comes on a new connection.
    let relay = start_rendered(&cfg.workers(2), |t| {
        t.replace("keys = [\"unused\"]", keys_a)
    });
    // Created through both channels and all three keys (weights are equal, keys rotate).
    let mut created: HashMap<String, String> = HashMap::new();
    for i in 0..24 {
        let stream = i % 4 == 3;
        let r = create(&relay, "mock-fixed", stream, "");
        assert_eq!(r.status, 200, "{}", r.text());
        let tail = r.header("x-mock-key").unwrap().to_string();
        let id = if stream {
            events(&r.body)[0].1["response"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            r.json()["id"].as_str().unwrap().to_string()
        };
        created.insert(id, tail);
    }
    let tails: std::collections::HashSet<&str> = created.values().map(String::as_str).collect();
    assert_eq!(tails.len(), 3, "every key was used: {tails:?}");
    for (id, tail) in &created {
        let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.header("x-mock-key"), Some(tail.as_str()), "{id}");
        assert_eq!(r.json()["id"], id.as_str());
        let r = by_id(
            &relay,
            "GET",
            &format!("/v1/responses/{id}/input_items?limit=5"),
            TOKEN,
        );
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.header("x-mock-key"), Some(tail.as_str()));
        let v = r.json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["content"][0]["text"], "Say hello");
        // Another token never reaches it: the relay's own 404, before any upstream.
        let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), OTHER_TOKEN);
        let e = assert_error_shape(&r, 404, Some("response_not_found"));
        assert!(e["message"].as_str().unwrap().contains(id.as_str()), "{e}");
        assert!(r.header("x-mock-key").is_none());
    }
    // Cancel: the upstream's 400 for a response not made in the background, in OpenAI's shape.
    let (id, tail) = created.iter().next().unwrap();
    let r = by_id(&relay, "POST", &format!("/v1/responses/{id}/cancel"), TOKEN);
    assert_error_shape(&r, 400, None);
    // A background response is cancelled.
    let r = create(&relay, "mock-fixed", false, ",\"background\":true");
    let bg = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["status"], "queued");
    let r = by_id(&relay, "POST", &format!("/v1/responses/{bg}/cancel"), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    // Delete: the upstream deletes it, and the relay forgets the id.
    let r = by_id(&relay, "DELETE", &format!("/v1/responses/{id}"), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-key"), Some(tail.as_str()));
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(r.json()["id"], id.as_str());
    let requests_before = mock_a.stats().requests + mock_b.stats().requests;
    let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
    assert_error_shape(&r, 404, Some("response_not_found"));
    // Unknown ids are answered without asking any upstream.
    let r = by_id(&relay, "GET", "/v1/responses/resp_unknown", TOKEN);
    assert_error_shape(&r, 404, Some("response_not_found"));
    let r = by_id(&relay, "DELETE", "/v1/responses/resp_unknown", TOKEN);
    assert_error_shape(&r, 404, Some("response_not_found"));
    assert_eq!(
        mock_a.stats().requests + mock_b.stats().requests,
        requests_before
    );
    // Without a token: 401 as everywhere.
    let r = relay.roundtrip(&get("/v1/responses/resp_unknown", &[]));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
}

#[test]
fn wrong_methods_and_shapes_of_the_routes() {
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr).start(&[]);
    for (method, path, allow) in [
        ("GET", "/v1/responses", "POST"),
        ("PUT", "/v1/responses/resp_1", "GET, DELETE"),
        ("POST", "/v1/responses/resp_1", "GET, DELETE"),
        ("GET", "/v1/responses/resp_1/cancel", "POST"),
        ("POST", "/v1/responses/resp_1/input_items", "GET"),
    ] {
        let r = by_id(&relay, method, path, TOKEN);
        assert_error_shape(&r, 405, Some("method_not_allowed"));
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    for path in [
        "/v1/responses/",
        "/v1/responses//cancel",
        "/v1/responses/resp_1/other",
        "/v1/responses/resp_1/cancel/x",
    ] {
        let r = by_id(&relay, "GET", path, TOKEN);
        assert_error_shape(&r, 404, Some("not_found"));
    }
    // A body that is not JSON, or has no model: the relay's 400s.
    let r = relay.roundtrip(&post_json(
        "/v1/responses",
        Some(TOKEN),
        &[],
        "{\"input\":\"x\"}",
    ));
    assert_error_shape(&r, 400, Some("missing_model"));
}

/// Starts the relay for `cfg` with its rendered text edited by `edit`.
fn start_rendered(cfg: &ConfigBuilder, edit: impl Fn(&str) -> String) -> Relay {
    let text = edit(&cfg.render(free_port()));
    Relay::start(&text, &[])
}

#[test]
fn the_id_map_forgets_the_oldest_when_full_and_expired_ids() {
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr)
        .server("responses_ids = 2")
        .start(&[]);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            create(&relay, "mock-fixed", false, "").json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let status = |id: &str| by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN).status;
    assert_eq!(status(&ids[0]), 404, "the oldest was forgotten");
    assert_eq!(status(&ids[1]), 200);
    assert_eq!(status(&ids[2]), 200);
    drop(relay);
    let relay = ConfigBuilder::new(mock.addr)
        .server("responses_ttl = \"1s\"")
        .start(&[]);
    let id = create(&relay, "mock-fixed", false, "").json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
    assert_eq!(r.status, 200, "young: {}", r.text());
    std::thread::sleep(Duration::from_millis(1300));
    let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
    assert_error_shape(&r, 404, Some("response_not_found"));
}

#[test]
fn failover_before_the_first_byte_and_the_id_follows_the_channel_that_answered() {
    let mock = Mock::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let relay = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel("dead", &dead, "sk-dead-key-0000", &["*"], "priority = 5")
        .channel(
            "busy",
            &mock.base_url(),
            "sk-busy-key-9999",
            &["mock-fail-1-503-0"],
            "priority = 3",
        )
        .channel("good", &mock.base_url(), "sk-good-key-1234", &["*"], "")
        .start(&[]);
    // dead: connect refused; busy: 503 the first time; good answers.
    let r = create(&relay, "mock-fail-1-503-0", false, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-mock-key"),
        Some("1234"),
        "good answered after two failures"
    );
    // Next time busy answers (after dead failed again), and its id goes back to busy.
    let r = create(&relay, "mock-fail-1-503-0", false, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-key"), Some("9999"));
    let busy_id = r.json()["id"].as_str().unwrap().to_string();
    let r = by_id(&relay, "GET", &format!("/v1/responses/{busy_id}"), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-key"), Some("9999"));
    let r = create(&relay, "gpt-4o", true, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-key"), Some("1234"));
    let id = events(&r.body)[0].1["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-key"), Some("1234"));
}

#[test]
fn channels_without_the_responses_api_are_passed_over() {
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "compat",
            &mock.base_url(),
            "sk-compat-key-5555",
            &["*"],
            "priority = 5\nresponses = false",
        )
        .channel(
            "openai",
            &mock.base_url(),
            "sk-openai-key-6666",
            &["gpt-*"],
            "",
        )
        .start(&[]);
    for _ in 0..4 {
        let r = create(&relay, "gpt-4o", false, "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-mock-key"), Some("6666"));
    }
    // Chat still goes to the higher-priority channel.
    let r = relay.roundtrip(&chat("mock-echo", false));
    let echo = parse_echo(&r);
    assert!(echo.one("authorization").ends_with("5555"));
    // A model only the compatible channel serves: a clear 404.
    let r = create(&relay, "llama-3", false, "");
    let e = assert_error_shape(&r, 404, Some("model_not_found"));
    assert!(
        e["message"].as_str().unwrap().contains("responses = false"),
        "{e}"
    );
}

#[test]
fn a_model_on_both_providers_goes_to_its_openai_channel_for_responses_and_converted_for_chat() {
    // The Anthropic channel comes first for the model, so chat goes there (converted); the
    // Responses API has no conversion, so /v1/responses and its id routes go to the OpenAI one.
    let mock = Mock::start();
    let (cfg, log) = with_access_log(
        ConfigBuilder::new(mock.addr)
            .without_default_channel()
            .channel(
                "claude",
                &mock.base_url(),
                "sk-anthropic-key-7777",
                &["gpt-4o"],
                "priority = 5",
            )
            .channel(
                "openai",
                &mock.base_url(),
                "sk-openai-key-6666",
                &["gpt-*"],
                "",
            ),
        "responses-both-providers",
    );
    let relay = start_rendered(&cfg, |t| {
        t.replace(
            "name = \"claude\"\nprovider = \"openai\"",
            "name = \"claude\"\nprovider = \"anthropic\"",
        )
    });
    let mut ids = Vec::new();
    for stream in [false, true, false, true] {
        let r = create(&relay, "gpt-4o", stream, "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-mock-key"), Some("6666"));
        let id = if stream {
            let evs = events(&r.body);
            assert_eq!(evs.last().unwrap().0, "response.completed");
            evs[0].1["response"]["id"].as_str().unwrap().to_string()
        } else {
            assert_eq!(r.json()["object"], "response");
            r.json()["id"].as_str().unwrap().to_string()
        };
        ids.push(id);
    }
    let r = relay.roundtrip(&chat("gpt-4o", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    for id in &ids {
        let r = by_id(&relay, "GET", &format!("/v1/responses/{id}"), TOKEN);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-mock-key"), Some("6666"));
        assert_eq!(r.json()["id"], id.as_str());
    }
    let lines = log_lines(&log, 9);
    let channel_of = |i: usize| lines[i]["channel"].as_str().unwrap().to_string();
    for i in (0..4).chain(5..9) {
        assert_eq!(channel_of(i), "openai", "{}", lines[i]);
    }
    assert_eq!(channel_of(4), "claude", "{}", lines[4]);
    assert_eq!(lines[4]["path"], "/v1/chat/completions");
}

#[test]
fn upstream_errors_come_back_in_openai_shape() {
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr)
        .section("[retry]\nattempts = 0")
        .start(&[]);
    let r = create(&relay, "mock-status-429", false, "");
    let e = assert_error_shape(&r, 429, None);
    assert_eq!(e["message"], "mock error 429");
    assert_eq!(r.header("retry-after"), Some("7"));
    // Cut mid-stream: what came is relayed, then an SSE error event ends it cleanly.
    let r = create(&relay, "mock-reset-stream", true, "");
    assert_eq!(r.status, 200);
    let evs = events(&r.body);
    assert_eq!(evs[0].0, "response.output_text.delta");
    let (name, data) = evs.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["code"], "upstream_reset", "{data}");
    // Also the Responses API's own error event, for clients that read events by `type`.
    assert_eq!(data["type"], "error", "{data}");
    assert_eq!(data["code"], "upstream_reset", "{data}");
    assert_eq!(data["message"], data["error"]["message"], "{data}");
    assert!(data["param"].is_null(), "{data}");
}

#[test]
fn the_token_allow_list_and_anthropic_channels() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(mock.addr, &["gpt-*"], "")
        .channel(
            "claude",
            &mock.base_url(),
            "sk-anthropic-key-7777",
            &["claude-*"],
            "",
        )
        .token("narrow", OTHER_TOKEN, &["gpt-4o-mini", "claude-*"]);
    let relay = start_rendered(&cfg, |t| {
        t.replace(
            "name = \"claude\"\nprovider = \"openai\"",
            "name = \"claude\"\nprovider = \"anthropic\"",
        )
    });
    let narrow = |model: &str| {
        relay.roundtrip(&post_json(
            "/v1/responses",
            Some(OTHER_TOKEN),
            &[],
            &responses_body(model, false, ""),
        ))
    };
    assert_eq!(narrow("gpt-4o-mini").status, 200);
    assert_error_shape(&narrow("gpt-4o"), 403, Some("model_not_allowed"));
    // Only an Anthropic channel serves it: a 404 that says so, no upstream asked.
    let before = mock.stats().requests;
    let e = assert_error_shape(&narrow("claude-3"), 404, Some("model_not_found"));
    assert!(e["message"].as_str().unwrap().contains("Anthropic"), "{e}");
    assert_eq!(mock.stats().requests, before);
    let r = relay.roundtrip(&post_json(
        "/v1/responses",
        Some("sk-unknown"),
        &[],
        &responses_body("gpt-4o", false, ""),
    ));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
}

#[test]
fn a_long_stream_is_relayed_without_keeping_its_output() {
    let mock = Mock::start();
    let (cfg, log) = with_access_log(ConfigBuilder::new(mock.addr), "responses-long");
    let relay = cfg.start(&[]);
    let warm = create(&relay, "mock-stream-100-0", true, "");
    assert_eq!(warm.status, 200);
    let rss = |relay: &Relay| relay.health()["rss_bytes"].as_u64().unwrap();
    let before = rss(&relay);
    const DELTAS: u64 = 30_000;
    let r = create(&relay, &format!("mock-stream-{DELTAS}-0"), true, "");
    assert_eq!(r.status, 200);
    // Every delta, then the whole text twice more (output_text.done, response.completed).
    assert!(r.body.len() > 6_000_000, "{} bytes", r.body.len());
    let evs = events(&r.body);
    assert_eq!(evs.len() as u64, DELTAS + 8);
    let (name, last) = evs.last().unwrap();
    assert_eq!(name, "response.completed");
    assert_eq!(last["response"]["usage"]["output_tokens"], DELTAS);
    let after = rss(&relay);
    eprintln!(
        "relay RSS {before} -> {after} bytes over a {} byte stream",
        r.body.len()
    );
    assert!(
        after < before + 4_000_000,
        "RSS grew from {before} to {after} for a {} byte stream",
        r.body.len()
    );
    let lines = log_lines(&log, 2);
    assert_eq!(tokens(&lines[1]), (9, DELTAS, 4, false), "{}", lines[1]);
}

#[test]
fn the_quota_is_charged_the_reported_usage_of_every_ending_and_nothing_for_the_id_routes() {
    let mock = Mock::start();
    let dir = temp_path("responses-quota", "state");
    let relay = ConfigBuilder::new(mock.addr)
        .server(&format!("state_dir = {:?}", dir.display().to_string()))
        .section(
            "[[tokens]]\nname = \"q\"\nkey = \"sk-q\"\nmodels = [\"*\"]\nquota_tokens = 1000000\n",
        )
        .start(&[]);
    let used = || {
        let health = relay.health();
        let t = health["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "q")
            .unwrap_or_else(|| panic!("no token q: {health}"))
            .clone();
        (
            t["quota_used"].as_u64().unwrap(),
            t["quota_reserved"].as_u64().unwrap(),
        )
    };
    let as_q = |model: &str, stream: bool, extra: &str| {
        relay.roundtrip(&post_json(
            "/v1/responses",
            Some("sk-q"),
            &[],
            &responses_body(model, stream, extra),
        ))
    };
    // 9 input + 7 output whole; 9 + 5 for each streamed ending.
    let r = as_q("mock-fixed", false, ",\"max_output_tokens\":64");
    let id = r.json()["id"].as_str().unwrap().to_string();
    as_q("mock-incomplete", true, "");
    as_q("mock-failed", true, "");
    as_q("mock-fixed", true, "");
    let expected = 16 + 3 * 14;
    // (A request is settled just after its last byte went out: allow for that moment.)
    wait_for(Duration::from_secs(5), || used() == (expected, 0));
    assert_eq!(used(), (expected, 0));
    // Reading, listing and deleting the stored response cost nothing.
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("GET", format!("/v1/responses/{id}/input_items")),
        ("DELETE", format!("/v1/responses/{id}")),
    ] {
        let r = by_id(&relay, method, &path, "sk-q");
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    }
    wait_for(Duration::from_secs(1), || used().1 == 0);
    assert_eq!(used(), (expected, 0));
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
