//! Core relay behaviour, end to end: the real `ringway` binary in front of the project's mock
//! upstream, driven by a raw HTTP/1.1 client. Every test runs twice, once on io_uring and once
//! with `RINGWAY_FORCE_EPOLL=1`, and checks that health reports the driver it ran on.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    non_stream_chat_is_byte_identical_and_has_request_id,
    streamed_chat_is_byte_identical_sse,
    sse_events_arrive_before_upstream_finishes,
    keep_alive_client_and_upstream_connection_reuse,
    pipelined_requests_answered_in_order,
    chunked_request_body_forwarded_with_content_length,
    request_headers_rewritten_for_upstream,
    expect_100_continue_is_answered,
    relay_errors_have_contract_shape,
    head_errors_have_contract_shape_and_request_id,
    models_list_filtered_by_token,
    two_workers_serve_one_port,
    upstream_error_status_and_retry_after_pass_through,
    upstream_connect_failure_is_502,
    model_map_renames_only_the_model,
    check_config_accepts_good_and_names_unknown_key,
    oversize_head_answer_survives_unread_body,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn u64_field(v: &serde_json::Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("health field {name} missing or not a number: {v}"))
}

// ---------------------------------------------------------------------------------------------
// 1

fn non_stream_chat_is_byte_identical_and_has_request_id(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let req = chat("mock-fixed", false);
    let direct = mock_direct(mock.addr, &req);
    assert_eq!(direct.status, 200);

    let r = relay.roundtrip(&req);
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert_eq!(r.body, direct.body, "relayed body differs from the mock's");
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    let generated = r.request_id().to_string();
    assert_eq!(r.headers_named("x-request-id").len(), 1);

    let req = post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[("x-request-id", "abc-123")],
        &chat_body("mock-fixed", false),
    );
    let r = relay.roundtrip(&req);
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert_eq!(r.headers_named("x-request-id"), vec!["abc-123"]);
    assert_eq!(r.body, direct.body);
    assert_ne!(generated, "abc-123");
}

// ---------------------------------------------------------------------------------------------
// 2

fn streamed_chat_is_byte_identical_sse(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let req = chat("mock-stream-5-20", true);
    // The relay asks the upstream for the stream's usage (the client did not), and keeps the
    // usage-only event that adds from the client: the client gets what the mock streams for
    // that request, without that event.
    let asked = chat_body("mock-stream-5-20", true).replacen(
        '{',
        r#"{"stream_options":{"include_usage":true},"#,
        1,
    );
    let mut direct = mock_direct(
        mock.addr,
        &post_json("/v1/chat/completions", Some(TOKEN), &[], &asked),
    );
    assert_eq!(direct.status, 200);
    let text = direct.text();
    let usage_at = text.find("data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-stream-5-20\",\"choices\":[]");
    let usage_at = usage_at.expect("the mock sends the usage event when asked");
    let usage_end = usage_at + text[usage_at..].find("\n\n").unwrap() + 2;
    direct.body = [&text.as_bytes()[..usage_at], &text.as_bytes()[usage_end..]].concat();

    let r = relay.roundtrip(&req);
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "content-type {:?}",
        r.header("content-type")
    );
    r.request_id();
    assert_eq!(
        r.text(),
        direct.text(),
        "de-chunked relayed stream differs from the mock's"
    );
    assert!(
        r.body.ends_with(b"data: [DONE]\n\n"),
        "stream end: {:?}",
        r.text()
    );
    assert_eq!(r.text().matches("chat.completion.chunk").count(), 5);
}

// ---------------------------------------------------------------------------------------------
// 3

fn sse_events_arrive_before_upstream_finishes(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let mut c = relay.client();
    let sent = Instant::now();
    c.send(&chat("mock-stream-3-1500", true));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let arrival = |needle: &[u8]| {
        r.chunks
            .iter()
            .find(|(_, data)| contains(data, needle))
            .map(|(at, _)| at.duration_since(sent))
            .unwrap_or_else(|| panic!("no chunk with {:?} in {:?}", needle, r.text()))
    };
    let first = arrival(b"tok0");
    let second = arrival(b"tok1");
    let total = r.done_at.duration_since(sent);
    assert!(
        first < Duration::from_millis(1000),
        "first event after {first:?}"
    );
    assert!(
        second >= Duration::from_millis(1000),
        "second event after {second:?}: events were not paced"
    );
    assert!(
        total >= Duration::from_millis(2500),
        "stream took {total:?}"
    );
    assert!(total < Duration::from_secs(15), "stream took {total:?}");
    assert!(r.body.ends_with(b"data: [DONE]\n\n"));
}

// ---------------------------------------------------------------------------------------------
// 4

fn keep_alive_client_and_upstream_connection_reuse(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr).workers(1));
    let expected = mock_direct(mock.addr, &chat("mock-fixed", false)).body;
    let baseline = mock.stats().total_connections;

    let mut c = relay.client();
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        c.send(&chat("mock-fixed", false));
        let r = c.read_final_response();
        assert_eq!(r.status, 200, "request {i}: {:?}", r.text());
        assert!(!r.closes(), "request {i} closed the client connection");
        assert_eq!(r.body, expected);
        ids.insert(r.request_id().to_string());
    }
    assert_eq!(ids.len(), 3, "request ids must differ: {ids:?}");
    drop(c);

    // Sequential requests on fresh client connections reuse the pooled upstream connection.
    for i in 0..3 {
        let r = relay.roundtrip(&chat("mock-fixed", false));
        assert_eq!(
            r.status,
            200,
            "fresh-connection request {i}: {:?}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = mock.stats();
    assert_eq!(
        stats.total_connections - baseline,
        1,
        "one worker, sequential requests: exactly one upstream connection ({stats:?})"
    );
    let health = relay.health();
    assert!(
        u64_field(&health, "upstream_connections_idle") >= 1,
        "{health}"
    );
    assert!(u64_field(&health, "upstream_reused") >= 1, "{health}");
}

// ---------------------------------------------------------------------------------------------
// 5

fn pipelined_requests_answered_in_order(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let fixed = chat("mock-fixed", false);
    let expected_fixed = mock_direct(mock.addr, &fixed).body;
    let echo_body = chat_body("mock-echo", false);
    let mut both = fixed.clone();
    both.extend_from_slice(&post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[],
        &echo_body,
    ));

    let mut c = relay.client();
    c.send(&both); // one write
    let r1 = c.read_final_response();
    let r2 = c.read_final_response();
    assert_eq!(r1.status, 200, "first: {:?}", r1.text());
    assert_eq!(r1.body, expected_fixed, "first response is mock-fixed's");
    assert_eq!(r2.status, 200, "second: {:?}", r2.text());
    let echo = parse_echo(&r2);
    assert_eq!(echo.body, echo_body, "second response is mock-echo's");
    assert_ne!(r1.request_id(), r2.request_id());
    assert!(c.pending().is_empty(), "stray bytes: {:?}", c.pending());
}

// ---------------------------------------------------------------------------------------------
// 6

fn chunked_request_body_forwarded_with_content_length(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let body = r#"{"model":"mock-echo","messages":[{"role":"user","content":"sent in chunks"}]}"#;
    let (a, rest) = body.split_at(10);
    let (b, c_part) = rest.split_at(25);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut first = head.into_bytes();
    first.extend_from_slice(format!("{:x}\r\n{a}\r\n", a.len()).as_bytes());
    let second = format!(
        "{:X};ext=1\r\n{b}\r\n{:x}\r\n{c_part}\r\n0\r\n\r\n",
        b.len(),
        c_part.len()
    );

    let mut c = relay.client();
    c.send(&first);
    std::thread::sleep(Duration::from_millis(100));
    c.send(second.as_bytes());
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let echo = parse_echo(&r);
    assert_eq!(echo.body, body, "upstream body differs");
    assert_eq!(echo.one("content-length"), body.len().to_string());
    assert!(
        !echo.has("transfer-encoding"),
        "transfer-encoding forwarded: {echo:?}"
    );

    // The connection is still usable afterwards.
    c.send(&chat("mock-fixed", false));
    assert_eq!(c.read_final_response().status, 200);
}

// ---------------------------------------------------------------------------------------------
// 7

fn request_headers_rewritten_for_upstream(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    // Unusual whitespace, escapes and non-ASCII text must arrive byte for byte.
    let body = "{ \"model\" :\t\"mock-echo\" ,\n  \"messages\" : [ {\"role\":\"user\", \
                \"content\":\"h\u{e9}llo \u{2713} \u{65e5}\u{672c}\u{8a9e} \\u00e9 \\\"q\\\" \\n \u{1f980}\"} ] ,\
                \"temperature\":1.50e0 }\n";
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n\
         Host: relay.example:8080\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\n\
         Connection: keep-alive, X-Hop-Extra\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Upgrade: h2c\r\n\
         X-Hop-Extra: drop me\r\n\
         X-Custom: 1\r\n\
         OpenAI-Organization: org-test\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body.as_bytes());
    let r = relay.roundtrip(&req);
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let echo = parse_echo(&r);
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/v1/chat/completions");
    assert_eq!(echo.one("host"), mock.addr.to_string());
    assert_eq!(echo.one("authorization"), format!("Bearer {UPSTREAM_KEY}"));
    for (name, value) in &echo.headers {
        assert!(
            !value.contains(TOKEN),
            "client token leaked upstream in {name}"
        );
    }
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "x-hop-extra",
    ] {
        assert!(
            !echo.has(hop),
            "{hop} forwarded upstream: {:?}",
            echo.headers
        );
    }
    assert_eq!(echo.one("x-request-id"), r.request_id());
    assert_eq!(echo.one("x-custom"), "1");
    assert_eq!(echo.one("openai-organization"), "org-test");
    assert_eq!(echo.one("content-type"), "application/json");
    assert_eq!(echo.one("content-length"), body.len().to_string());
    assert_eq!(echo.body, body, "body changed on the way upstream");

    // A token sent as x-api-key is not forwarded either.
    let req = request(
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", TOKEN), ("content-type", "application/json")],
        chat_body("mock-echo", false).as_bytes(),
    );
    let r = relay.roundtrip(&req);
    assert_eq!(r.status, 200, "x-api-key auth: {:?}", r.text());
    let echo = parse_echo(&r);
    assert!(!echo.has("x-api-key"), "x-api-key forwarded: {echo:?}");
    assert_eq!(echo.one("authorization"), format!("Bearer {UPSTREAM_KEY}"));
}

// ---------------------------------------------------------------------------------------------
// 8

fn expect_100_continue_is_answered(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let body = chat_body("mock-echo", false);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut c = relay.client();
    c.set_read_timeout(Duration::from_secs(5));
    c.send(head.as_bytes());
    let interim = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no interim response before the body was sent: {e:?}"));
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue, got {interim:?}"
    );
    c.set_read_timeout(READ_TIMEOUT);
    c.send(body.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "body {:?}", r.text());
    r.request_id();
    let echo = parse_echo(&r);
    assert_eq!(echo.body, body);
    assert!(!echo.has("expect"), "expect forwarded upstream: {echo:?}");
}

// ---------------------------------------------------------------------------------------------
// 9

fn relay_errors_have_contract_shape(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(mock.addr, &["mock-*"], "")
        .server("max_body_bytes = 1024")
        .token("restricted", "sk-restricted", &["gpt-4o*"]);
    let relay = start(driver, &cfg);
    let fixed = chat_body("mock-fixed", false);
    let path = "/v1/chat/completions";

    let check = |what: &str, req: &[u8], status: u16, code: Option<&str>| {
        let r = relay.roundtrip(req);
        eprintln!("{what}: {} {}", r.status, r.text());
        assert_error_shape(&r, status, code);
        r.request_id();
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{what}: content-type {:?}",
            r.header("content-type")
        );
        r
    };

    check(
        "missing token",
        &post_json(path, None, &[], &fixed),
        401,
        Some("invalid_api_key"),
    );
    check(
        "wrong token",
        &post_json(path, Some("sk-wrong"), &[], &fixed),
        401,
        Some("invalid_api_key"),
    );
    let auth = format!("Bearer {TOKEN}");
    check(
        "unknown path",
        &get("/v1/no-such-endpoint", &[("authorization", &auth)]),
        404,
        None,
    );
    check(
        "unknown model",
        &post_json(path, Some(TOKEN), &[], &chat_body("no-such-model", false)),
        404,
        Some("model_not_found"),
    );
    check(
        "model not allowed",
        &post_json(path, Some("sk-restricted"), &[], &fixed),
        403,
        Some("model_not_allowed"),
    );
    check(
        "body not JSON",
        &post_json(path, Some(TOKEN), &[], "this is not JSON"),
        400,
        None,
    );
    // Only the head is sent: the relay must refuse from Content-Length alone.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 5000\r\n\r\n"
    );
    check("body too large", head.as_bytes(), 413, None);
    // The relay is still healthy after all of that.
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200);
}

/// Errors produced while reading the request head, before any request exists to route.
fn head_errors_have_contract_shape_and_request_id(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).server("max_header_bytes = 4096");
    let relay = start(driver, &cfg);

    let mut c = relay.client();
    c.send(b"BAD REQUEST LINE\r\n\r\n");
    let r = c.read_final_response();
    assert_error_shape(&r, 400, None);
    r.request_id();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection left open after a 400"
    );

    let big = "a".repeat(10 * 1024);
    let req = post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[("x-big", &big)],
        &chat_body("mock-fixed", false),
    );
    let r = relay.roundtrip(&req);
    assert_error_shape(&r, 431, None);
    r.request_id();

    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 10

fn models_list_filtered_by_token(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(
            mock.addr,
            &["gpt-4o", "gpt-4o-mini", "mock-fixed", "mock-*"],
            "",
        )
        .channel(
            "second",
            &mock.base_url(),
            "sk-second",
            &["o1", "mock-echo", "gpt-4o"],
            "",
        )
        .token("gpt-only", "sk-gpt-only", &["gpt-4o*"]);
    let relay = start(driver, &cfg);

    let ids = |token: &str| -> Vec<String> {
        let r = relay.roundtrip(&get(
            "/v1/models",
            &[("authorization", &format!("Bearer {token}"))],
        ));
        assert_eq!(r.status, 200, "body {:?}", r.text());
        r.request_id();
        let v = r.json();
        assert_eq!(v["object"], "list", "{v}");
        let data = v["data"].as_array().unwrap_or_else(|| panic!("data: {v}"));
        for m in data {
            assert_eq!(m["object"], "model", "{v}");
        }
        data.iter()
            .map(|m| {
                m["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("id: {m}"))
                    .to_string()
            })
            .collect()
    };
    let all = ids(TOKEN);
    let set: BTreeSet<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(all.len(), set.len(), "duplicate ids: {all:?}");
    assert_eq!(
        set,
        BTreeSet::from(["gpt-4o", "gpt-4o-mini", "mock-fixed", "o1", "mock-echo"]),
        "full token"
    );
    let limited = ids("sk-gpt-only");
    let set: BTreeSet<&str> = limited.iter().map(String::as_str).collect();
    assert_eq!(
        set,
        BTreeSet::from(["gpt-4o", "gpt-4o-mini"]),
        "gpt-4o* token"
    );
    assert_eq!(limited.len(), 2);

    let r = relay.roundtrip(&get("/v1/models", &[]));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
    r.request_id();
}

// ---------------------------------------------------------------------------------------------
// 11

fn two_workers_serve_one_port(driver: Driver) {
    const CONNECTIONS: u64 = 40;
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr).workers(2));
    for i in 0..CONNECTIONS {
        let r = relay.roundtrip(&chat("mock-fixed", false));
        assert_eq!(r.status, 200, "connection {i}: {:?}", r.text());
    }
    // The last request's accounting may land just after its response; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let h = relay.health();
        if u64_field(&h, "requests_total") >= CONNECTIONS || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(u64_field(&health, "workers"), 2, "{health}");
    assert_eq!(
        u64_field(&health, "requests_total"),
        CONNECTIONS,
        "{health}"
    );
    let per = health["per_worker"]
        .as_array()
        .unwrap_or_else(|| panic!("per_worker: {health}"));
    assert_eq!(per.len(), 2, "{health}");
    for w in per {
        assert!(
            u64_field(w, "requests_total") > 0,
            "a worker served nothing: {health}"
        );
        assert_eq!(w["io_driver"], driver.health_name(), "{health}");
    }
}

// ---------------------------------------------------------------------------------------------
// 12

fn upstream_error_status_and_retry_after_pass_through(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    for code in [429u16, 503] {
        let r = relay.roundtrip(&chat(&format!("mock-status-{code}"), false));
        let e = assert_error_shape(&r, code, None);
        assert_eq!(e["message"], format!("mock error {code}"), "{}", r.text());
        assert_eq!(r.headers_named("retry-after"), vec!["7"], "{code}");
        r.request_id();
    }
    // An upstream error does not poison the connection or the pool.
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 13

fn upstream_connect_failure_is_502(driver: Driver) {
    let closed = free_port();
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "dead",
            &format!("http://127.0.0.1:{closed}"),
            "sk-dead",
            &["*"],
            "",
        );
    let relay = start(driver, &cfg);
    let sent = Instant::now();
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_error_shape(&r, 502, Some("upstream_connect_failed"));
    r.request_id();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "a refused connect took {:?}",
        sent.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 14

fn model_map_renames_only_the_model(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).default_channel(
        mock.addr,
        &["mock-*"],
        "model_map = { \"alias-x\" = \"mock-echo\" }",
    );
    let relay = start(driver, &cfg);
    let body =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"say \\\"model\\\":\\\"alias-x\\\"\"}],\
                \"model\" : \"alias-x\" ,\"n\":1}";
    let expected = body.replacen("\"model\" : \"alias-x\"", "\"model\" : \"mock-echo\"", 1);
    assert_ne!(expected, body);
    let r = relay.roundtrip(&post_json("/v1/chat/completions", Some(TOKEN), &[], body));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let echo = parse_echo(&r);
    assert_eq!(echo.body, expected, "upstream body");
    assert_eq!(echo.one("content-length"), expected.len().to_string());
}

// ---------------------------------------------------------------------------------------------
// 15

fn check_config_accepts_good_and_names_unknown_key(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr);
    let good_text = cfg.render(free_port());
    let good = write_temp("good", "toml", &good_text);
    let good_s = good.display().to_string();
    let (code, stdout, stderr) = run_bin(&["check-config", &good_s], driver.env());
    assert_eq!(code, Some(0), "stdout {stdout}\nstderr {stderr}");
    assert!(!stdout.trim().is_empty(), "check-config printed no summary");

    // Unknown key in [server], on line 4.
    let bad_text = good_text.replacen("workers = 1\n", "workers = 1\nbogus_key = 1\n", 1);
    assert_eq!(bad_text.lines().nth(3), Some("bogus_key = 1"));
    let bad = write_temp("bad", "toml", &bad_text);
    let bad_s = bad.display().to_string();
    let (code, stdout, stderr) = run_bin(&["check-config", &bad_s], driver.env());
    assert_eq!(code, Some(2), "stdout {stdout}\nstderr {stderr}");
    assert!(stderr.contains(&bad_s), "file not named: {stderr}");
    assert!(stderr.contains("bogus_key"), "key not named: {stderr}");
    assert!(
        stderr.contains(":4:") || stderr.contains("line 4"),
        "line not named: {stderr}"
    );

    // Unknown key inside a channel table.
    let bad2_text = good_text.replacen("[[channels]]\n", "[[channels]]\ncolour = \"blue\"\n", 1);
    let line = 1 + bad2_text
        .lines()
        .position(|l| l == "colour = \"blue\"")
        .expect("inserted line");
    let bad2 = write_temp("bad2", "toml", &bad2_text);
    let bad2_s = bad2.display().to_string();
    let (code, _, stderr) = run_bin(&["check-config", &bad2_s], driver.env());
    assert_eq!(code, Some(2), "stderr {stderr}");
    assert!(stderr.contains(&bad2_s), "file not named: {stderr}");
    assert!(stderr.contains("colour"), "key not named: {stderr}");
    assert!(
        stderr.contains(&format!(":{line}:")) || stderr.contains(&format!("line {line}")),
        "line {line} not named: {stderr}"
    );

    // The relay itself refuses the bad file with exit 2, and runs the good one.
    let (code, _, stderr) = run_bin(&["--config", &bad_s], driver.env());
    assert_eq!(code, Some(2), "relay started on a bad config: {stderr}");
    let relay = Relay::start(&good_text, driver.env());
    assert_eq!(relay.health()["io_driver"], driver.health_name());

    for p in [&good, &bad, &bad2] {
        let _ = std::fs::remove_file(p);
    }
}

// ---------------------------------------------------------------------------------------------
// Error answers survive unread request bytes

/// A head over the limit followed by a large body the relay never reads: the 431 must still
/// reach the client (closing with unread bytes would send a reset that can destroy it).
fn oversize_head_answer_survives_unread_body(driver: Driver) {
    let mock = Mock::start();
    let relay = start(
        driver,
        &ConfigBuilder::new(mock.addr).server("max_header_bytes = 4096"),
    );
    for _ in 0..20 {
        let mut c = relay.client();
        let big = "a".repeat(8 * 1024);
        let body = vec![b'x'; 256 * 1024];
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nx-big: {big}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let _ = c.try_send(&req);
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("the 431 answer was lost: {e:?}"));
        assert_error_shape(&r, 431, Some("request_header_too_large"));
    }
}
