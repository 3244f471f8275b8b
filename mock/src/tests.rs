//! The mock's own tests, end to end over real sockets: reply bytes, framing, timing, faults,
//! connection counters, request parsing and shutdown.
//!
//! Must not: share code with the relay; the client used here is `test_client`.

use std::io;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::behaviours::Endpoint;
use crate::bodies::{chat_completion, chunk_event};
use crate::test_client::{chat, post, Client, Response};
use crate::{spawn, MockHandle, MockStats};

const FIXED_TEXT: &str = "Hello from the ringway mock upstream.";

fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn mock() -> MockHandle {
    spawn("127.0.0.1:0").expect("spawn mock")
}

#[test]
fn fixed_reply_bytes() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-fixed"));
    let response = client.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-mock-request"), Some("1"));
    assert_eq!(response.header("connection"), None);
    assert_eq!(
        response.text(),
        concat!(
            r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"#,
            r#""model":"mock-fixed","choices":[{"index":0,"message":{"role":"assistant","#,
            r#""content":"Hello from the ringway mock upstream."},"finish_reason":"stop"}],"#,
            r#""usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#
        )
    );

    client.send(&chat("some-real-model"));
    let response = client.response();
    assert_eq!(response.json()["model"], "some-real-model");
    assert_eq!(response.header("x-mock-request"), Some("2"));
    mock.stop();
}

#[test]
fn other_endpoints_have_their_own_shapes() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let body = r#"{"model":"mock-fixed","input":"x","prompt":"x"}"#;

    client.send(&post("/v1/completions", body));
    let json = client.response().json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["text"], FIXED_TEXT);

    client.send(&post("/v1/embeddings", body));
    let response = client.response();
    assert_eq!(
        response.text(),
        concat!(
            r#"{"object":"list","data":[{"object":"embedding","index":0,"#,
            r#""embedding":[0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0]}],"#,
            r#""model":"mock-fixed","usage":{"prompt_tokens":1,"total_tokens":1}}"#
        )
    );

    client.send(&post("/v1/messages", body));
    let json = client.response().json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["content"][0]["text"], FIXED_TEXT);

    // Embeddings never stream, whatever the flag says.
    client.send(&post(
        "/v1/embeddings",
        r#"{"model":"mock-fixed","input":"x","stream":true}"#,
    ));
    let response = client.response();
    assert_eq!(response.header("content-type"), Some("application/json"));
    mock.stop();
}

#[test]
fn models_routes_and_request_errors() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);

    client.send(b"GET /v1/models HTTP/1.1\r\nhost: mock\r\n\r\n");
    let json = client.response().json();
    assert_eq!(json["object"], "list");
    let data = json["data"].as_array().unwrap();
    assert!(data.iter().any(|m| m["id"] == "mock-stream-5-100"));
    assert!(data
        .iter()
        .all(|m| m["object"] == "model" && m["owned_by"] == "ringway-mock"));

    client.send(b"GET /nope?x=1 HTTP/1.1\r\nhost: mock\r\n\r\n");
    let response = client.response();
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"]["code"], "not_found");
    assert!(response.json()["error"]["param"].is_null());

    client.send(&post("/v1/chat/completions", "not json"));
    let response = client.response();
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");

    client.send(&post("/v1/chat/completions", r#"{"messages":[]}"#));
    let response = client.response();
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["code"], "missing_model");

    // JSON-level errors leave the framing intact, so the connection stays usable.
    client.send(&chat("mock-fixed"));
    assert_eq!(client.response().status, 200);
    mock.stop();
}

#[test]
fn stream_framing_and_timing() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let sent = Instant::now();
    client.send(&chat("mock-stream-3-300"));
    let (status, headers) = client.head();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v == "text/event-stream"));
    assert!(headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked"));

    let mut chunks = vec![client.chunk().expect("first event")];
    let first_at = sent.elapsed();
    while let Some(chunk) = client.chunk() {
        chunks.push(chunk);
    }
    let end_at = sent.elapsed();
    // Two 300 ms gaps separate the first event from the end.
    assert!(
        end_at >= first_at + Duration::from_millis(450),
        "first event at {first_at:?}, end at {end_at:?}"
    );

    assert_eq!(chunks.len(), 4);
    for (i, chunk) in chunks[..3].iter().enumerate() {
        let text = std::str::from_utf8(chunk).unwrap();
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("one SSE event per chunk");
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["object"], "chat.completion.chunk");
        assert_eq!(json["choices"][0]["delta"]["content"], format!("tok{i}"));
    }
    assert_eq!(chunks[3], b"data: [DONE]\n\n");

    // The stream ended cleanly, so keep-alive continues.
    client.send(&post(
        "/v1/chat/completions",
        r#"{"model":"mock-fixed","stream":true}"#,
    ));
    let response = client.response();
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.chunks.len(), 6);
    mock.stop();
}

#[test]
fn statuses_and_retry_after() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    for code in [400u16, 401, 429, 500, 503, 504] {
        client.send(&chat(&format!("mock-status-{code}")));
        let response = client.response();
        assert_eq!(response.status, code);
        let json = response.json();
        assert_eq!(json["error"]["message"], format!("mock error {code}"));
        assert!(json["error"]["param"].is_null());
        let expected_retry = (code == 429 || code == 503).then_some("7");
        assert_eq!(response.header("retry-after"), expected_retry, "{code}");
        if code == 429 {
            assert_eq!(json["error"]["code"], "rate_limit_exceeded");
        }
    }
    mock.stop();
}

#[test]
fn reset_body_and_stream() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-reset-body"));
    let (status, headers) = client.head();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-length" && v == "100000"));
    let (body, error) = client.drain();
    assert!(body.len() < 100_000);
    assert!(
        matches!(error, None | Some(io::ErrorKind::ConnectionReset)),
        "{error:?}"
    );

    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-reset-stream"));
    assert_eq!(client.head().0, 200);
    let (rest, error) = client.drain();
    assert!(!rest.ends_with(b"0\r\n\r\n"));
    assert!(
        matches!(error, None | Some(io::ErrorKind::ConnectionReset)),
        "{error:?}"
    );
    assert!(wait_until(|| mock.stats().open_connections == 0));
    mock.stop();
}

#[test]
fn broken_chunked_bytes() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-broken-chunked"));
    assert_eq!(client.head().0, 200);
    let event = chunk_event(Endpoint::Chat, "mock-broken-chunked", 0, false);
    let mut expected = format!("{:x}\r\n", event.len()).into_bytes();
    expected.extend_from_slice(event.as_bytes());
    expected.extend_from_slice(b"\r\nzz\r\n");
    let (rest, error) = client.drain();
    assert_eq!(error, None);
    assert_eq!(rest, expected);
    mock.stop();
}

#[test]
fn echo_reports_what_arrived() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let body = r#"{"model":"mock-echo","x":"caf\u00e9"}"#;
    client.send(
        format!(
            "POST /v1/chat/completions?q=1 HTTP/1.1\r\nHost: up.example\r\n\
             Authorization: Bearer sk-up\r\nX-Dup: a\r\nx-dup: b\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let json = client.response().json();
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/v1/chat/completions?q=1");
    assert_eq!(json["body"], body);
    let headers: Vec<(String, String)> = serde_json::from_value(json["headers"].clone()).unwrap();
    let expected = [
        ("Host", "up.example"),
        ("Authorization", "Bearer sk-up"),
        ("X-Dup", "a"),
        ("x-dup", "b"),
        ("Content-Length", &body.len().to_string()),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(headers, expected);
    mock.stop();
}

#[test]
fn chunked_request_body_is_dechunked() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let body = r#"{"model":"mock-echo","pad":"0123456789"}"#;
    let (a, b) = body.split_at(10);
    client.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n\
             transfer-encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nx-trailer: t\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    );
    let response = client.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"], body);

    // Bad chunk framing is a framing error: 400 and close.
    client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n\
          transfer-encoding: chunked\r\n\r\nq\r\n",
    );
    let response = client.response();
    assert_eq!(response.status, 400);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(client.drain(), (Vec::new(), None));
    mock.stop();
}

#[test]
fn stats_track_open_connections() {
    let mock = mock();
    assert_eq!(mock.stats(), MockStats::default());
    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-fixed"));
    assert_eq!(client.response().status, 200);
    assert!(wait_until(|| mock.stats().open_connections == 1));

    client.send(b"GET /mock/stats HTTP/1.1\r\nhost: mock\r\n\r\n");
    let json = client.response().json();
    assert_eq!(json["open_connections"], 1);
    assert_eq!(json["total_connections"], 1);
    assert_eq!(json["requests"], 2, "the stats request counts itself");

    let second = Client::connect(mock.addr);
    assert!(wait_until(|| mock.stats().open_connections == 2));
    drop(client);
    drop(second);
    assert!(
        wait_until(|| mock.stats().open_connections == 0),
        "{:?}",
        mock.stats()
    );
    assert_eq!(
        mock.stats(),
        MockStats {
            open_connections: 0,
            total_connections: 2,
            requests: 2
        }
    );
    mock.stop();
}

#[test]
fn keep_alive_pipelining_and_close() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let mut both = chat("mock-fixed");
    both.extend_from_slice(&chat("mock-status-503"));
    client.send(&both);
    let first = client.response();
    let second = client.response();
    assert_eq!((first.status, second.status), (200, 503));
    assert_eq!(first.header("x-mock-request"), Some("1"));
    assert_eq!(second.header("x-mock-request"), Some("2"));

    client.send(&chat("mock-close"));
    let response = client.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(client.drain(), (Vec::new(), None));

    let mut client = Client::connect(mock.addr);
    client.send(b"GET /v1/models HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n");
    assert_eq!(client.response().header("connection"), Some("close"));
    assert_eq!(client.drain(), (Vec::new(), None));
    assert!(wait_until(|| mock.stats().open_connections == 0));
    mock.stop();
}

#[test]
fn malformed_request_gets_400_and_close() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n");
    let response = client.response();
    assert_eq!(response.status, 400);
    assert!(response.json()["error"]["message"].is_string());
    assert_eq!(client.drain(), (Vec::new(), None));

    let mut client = Client::connect(mock.addr);
    client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\n\
          transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(client.response().status, 400);
    mock.stop();
}

#[test]
fn stalls_and_slow_body() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let started = Instant::now();
    client.send(&chat("mock-stall-head-300"));
    let response = client.response();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.json()["model"], "mock-stall-head-300");

    let started = Instant::now();
    client.send(&chat("mock-stall-stream-300"));
    assert_eq!(client.head().0, 200);
    client.chunk().expect("first event");
    let first_at = started.elapsed();
    let mut rest = 0;
    while client.chunk().is_some() {
        rest += 1;
    }
    assert_eq!(rest, 2, "second event and [DONE]");
    assert!(started.elapsed() >= first_at + Duration::from_millis(250));

    let started = Instant::now();
    client.send(&chat("mock-slow-body-150"));
    let response = client.response();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        response.body,
        chat_completion("mock-slow-body-150").as_bytes()
    );
    mock.stop();
}

#[test]
fn abandoned_stall_closes_promptly() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-stall-head-60000"));
    assert!(wait_until(|| mock.stats().requests == 1));
    drop(client);
    assert!(wait_until(|| mock.stats().open_connections == 0));

    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-stream-1000-1000"));
    assert_eq!(client.head().0, 200);
    client.chunk().expect("first event");
    drop(client);
    assert!(wait_until(|| mock.stats().open_connections == 0));
    mock.stop();
}

#[test]
fn huge_error_is_exactly_ten_mib() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&chat("mock-huge-error"));
    let response = client.response();
    assert_eq!(response.status, 500);
    assert_eq!(response.body.len(), 10_485_760);
    assert_eq!(response.json()["error"]["code"], "mock_huge_error");
    mock.stop();
}

#[test]
fn expect_continue_gets_interim_response() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let body = r#"{"model":"mock-fixed"}"#;
    client.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nexpect: 100-continue\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(client.head().0, 100);
    client.send(body.as_bytes());
    assert_eq!(client.response().status, 200);
    mock.stop();
}

#[test]
fn stop_closes_listener_and_idle_connections() {
    let mock = mock();
    let addr = mock.addr;
    let mut idle = Client::connect(addr);
    idle.send(&chat("mock-fixed"));
    assert_eq!(idle.response().status, 200);
    let stats = mock.shared.clone();
    mock.stop();
    assert!(TcpStream::connect(addr).is_err());
    assert_eq!(idle.drain(), (Vec::new(), None));
    assert!(wait_until(|| stats.stats().open_connections == 0));
}

/// The `choices[0]` of each `data:` event of an SSE body, and whether it ended in [DONE].
fn sse_choices(response: &Response) -> (Vec<serde_json::Value>, bool) {
    let mut choices = Vec::new();
    let mut done = false;
    for chunk in &response.chunks {
        let text = std::str::from_utf8(chunk).unwrap();
        let data = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("one SSE event per chunk");
        assert!(!done, "an event after [DONE]");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        choices.push(json);
    }
    (choices, done)
}

#[test]
fn streamed_completions_are_text_completion_chunks() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    for body in [
        r#"{"model":"mock-fixed","prompt":"Say","stream":true}"#,
        r#"{"model":"mock-stream-3-0","prompt":"Say"}"#,
    ] {
        client.send(&post("/v1/completions", body));
        let response = client.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        let (events, done) = sse_choices(&response);
        assert!(done, "{body}: ends with [DONE]");
        let n = if body.contains("stream-3") { 3 } else { 5 };
        assert_eq!(events.len(), n, "{body}");
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["object"], "text_completion", "{event}");
            assert_eq!(event["id"], "cmpl-mock");
            let choice = &event["choices"][0];
            assert_eq!(choice["text"], format!("tok{i}"), "{event}");
            assert_eq!(choice["index"], 0);
            assert!(choice["logprobs"].is_null());
            assert!(choice.get("delta").is_none(), "{event}");
            let finish = if i + 1 == n {
                "stop".into()
            } else {
                serde_json::Value::Null
            };
            assert_eq!(choice["finish_reason"], finish, "{event}");
        }
    }
    // The first event, byte for byte.
    client.send(&post(
        "/v1/completions",
        r#"{"model":"mock-stream-1-0","prompt":"Say"}"#,
    ));
    let response = client.response();
    assert_eq!(
        std::str::from_utf8(&response.chunks[0]).unwrap(),
        concat!(
            r#"data: {"id":"cmpl-mock","object":"text_completion","created":1700000000,"#,
            r#""model":"mock-stream-1-0","choices":[{"text":"tok0","index":0,"#,
            r#""logprobs":null,"finish_reason":"stop"}]}"#,
            "\n\n"
        )
    );

    // Chat streams stay chat.completion.chunk.
    client.send(&post(
        "/v1/chat/completions",
        r#"{"model":"mock-fixed","messages":[],"stream":true}"#,
    ));
    let (events, done) = sse_choices(&client.response());
    assert!(done);
    assert_eq!(events.len(), 5);
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk" && e["choices"][0]["delta"].is_object()));
    mock.stop();
}

#[test]
fn embeddings_answer_one_item_per_input() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    let floats = serde_json::json!([0.125, -0.25, 0.375, -0.5, 0.625, -0.75, 0.875, -1.0]);
    // (input, items, prompt tokens)
    let cases = [
        (r#""one two three""#, 1, 3),
        (r#"["a b", "c"]"#, 2, 3),
        (r#"["x", "y", "z w v", ""]"#, 4, 6),
        ("[1, 2, 3, 4]", 1, 4),
        ("[[1, 2], [3], [4, 5, 6]]", 3, 6),
    ];
    for (input, items, tokens) in cases {
        let body = format!(r#"{{"model":"text-embedding-3-small","input":{input}}}"#);
        client.send(&post("/v1/embeddings", &body));
        let response = client.response();
        assert_eq!(response.status, 200, "{input}: {}", response.text());
        let json = response.json();
        assert_eq!(json["object"], "list");
        assert_eq!(json["model"], "text-embedding-3-small");
        let data = json["data"].as_array().unwrap();
        assert_eq!(data.len(), items, "{input}");
        for (i, item) in data.iter().enumerate() {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i, "{input}");
            assert_eq!(item["embedding"], floats);
        }
        assert_eq!(json["usage"]["prompt_tokens"], tokens, "{input}");
        assert_eq!(json["usage"]["total_tokens"], tokens, "{input}");
    }

    // base64: little-endian f32s, as the SDKs ask for by default.
    client.send(&post(
        "/v1/embeddings",
        r#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#,
    ));
    let json = client.response().json();
    assert_eq!(json["data"].as_array().unwrap().len(), 2);
    for item in json["data"].as_array().unwrap() {
        assert_eq!(
            item["embedding"],
            "AAAAPgAAgL4AAMA+AAAAvwAAID8AAEC/AABgPwAAgL8="
        );
    }

    // What the API refuses is a 400 the connection survives.
    for input in [
        None,
        Some("null"),
        Some("[]"),
        Some("[[]]"),
        Some(r#"[1, "a"]"#),
        Some("[1.5]"),
        Some("[-1]"),
        Some(r#"[[1], "a"]"#),
        Some("{}"),
        Some("7"),
    ] {
        let body = match input {
            Some(input) => format!(r#"{{"model":"m","input":{input}}}"#),
            None => r#"{"model":"m"}"#.to_string(),
        };
        client.send(&post("/v1/embeddings", &body));
        let response = client.response();
        assert_eq!(response.status, 400, "{body}");
        let json = response.json();
        assert_eq!(json["error"]["type"], "invalid_request_error", "{body}");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'input'"));
    }
    client.send(&post(
        "/v1/embeddings",
        r#"{"model":"m","input":"x","encoding_format":"int8"}"#,
    ));
    assert_eq!(client.response().status, 400);
    client.send(&post("/v1/embeddings", r#"{"model":"m","input":"x"}"#));
    assert_eq!(client.response().status, 200);
    mock.stop();
}

/// A chat request carrying `Authorization: Bearer <key>`.
fn chat_with_key(model: &str, key: &str) -> Vec<u8> {
    let body = format!("{{\"model\":\"{model}\",\"messages\":[]}}");
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn key_refusals_by_authorization_suffix() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&chat_with_key("mock-refuse-key-2222", "sk-bad-2222"));
    let r = client.response();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    client.send(&chat_with_key("mock-refuse-key-2222", "sk-good-1111"));
    assert_eq!(client.response().status, 200);
    client.send(&chat_with_key("mock-no-quota-key-2222", "sk-bad-2222"));
    let r = client.response();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert_eq!(r.header("retry-after"), None);
    client.send(&chat_with_key("mock-no-quota-key-2222", "sk-good-1111"));
    assert_eq!(client.response().status, 200);
    mock.stop();
}

#[test]
fn fail_first_counts_per_model_name() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    for i in 1..=2 {
        client.send(&chat("mock-fail-2-503-3"));
        let r = client.response();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("3"));
        assert_eq!(r.json()["error"]["message"], format!("mock failure {i}"));
    }
    client.send(&chat("mock-fail-2-503-3"));
    assert_eq!(client.response().status, 200);
    // Another name has its own count; RA 0 sends no Retry-After.
    client.send(&chat("mock-fail-1-500-0"));
    let r = client.response();
    assert_eq!((r.status, r.header("retry-after")), (500, None));
    client.send(&chat("mock-fail-1-500-0"));
    assert_eq!(client.response().status, 200);
    mock.stop();
}

/// `mock-tools` in both dialects, whole and streamed: one `get_weather` call whose streamed
/// arguments join into the whole answer's, the right stop reasons, and Anthropic's events with
/// a `type` equal to their name, blocks started and stopped in index order.
#[test]
fn tool_answers_in_both_dialects() {
    let mock = mock();
    let mut client = Client::connect(mock.addr);
    client.send(&post("/v1/chat/completions", r#"{"model":"mock-tools"}"#));
    let v = client.response().json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);

    client.send(&post(
        "/v1/chat/completions",
        r#"{"model":"mock-tools","stream":true,"stream_options":{"include_usage":true}}"#,
    ));
    let text = client.response().text();
    let mut args = String::new();
    let mut usage = 0;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").expect("data event");
        if data == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if v["usage"].is_object() {
            usage += 1;
        }
        if let Some(a) = v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        {
            args += a;
        }
    }
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert_eq!(usage, 1);
    assert!(text.ends_with("data: [DONE]\n\n"));

    client.send(&post("/v1/messages", r#"{"model":"mock-tools"}"#));
    let v = client.response().json();
    let types: Vec<&str> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["thinking", "text", "tool_use"]);
    assert_eq!(v["content"][2]["input"]["city"], "Paris");
    assert_eq!(v["stop_reason"], "tool_use");

    client.send(&post(
        "/v1/messages",
        r#"{"model":"mock-tools","stream":true}"#,
    ));
    let text = client.response().text();
    let mut open: Option<u64> = None;
    let mut next = 0;
    let mut partial = String::new();
    let mut names = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = event
            .strip_prefix("event: ")
            .and_then(|e| e.split_once("\ndata: "))
            .expect("named event");
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], name);
        names.push(name.to_string());
        match name {
            "content_block_start" => {
                assert_eq!(open, None);
                assert_eq!(v["index"], next);
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => {
                assert_eq!(v["index"].as_u64(), open);
                if let Some(p) = v["delta"]["partial_json"].as_str() {
                    partial += p;
                }
            }
            "content_block_stop" => {
                assert_eq!(v["index"].as_u64(), open);
                open = None;
            }
            _ => {}
        }
    }
    assert_eq!(next, 3);
    assert_eq!(partial, "{\"city\":\"Paris\"}");
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(names.iter().any(|n| n == "ping"));
    mock.stop();
}
