//! Hostile peers on the upstream side: the real binary in front of the mock's hostile models
//! (status lines without a reason, bytes after a response, ambiguous framing, 1xx floods, keys
//! echoed back, bulk streams, broken framing), on both io drivers. Each test asserts what the
//! client got, whether the upstream connection was closed or reused, and that the relay is
//! still serving afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    status_line_without_reason_is_relayed_not_a_crash,
    bytes_after_a_response_never_reach_another_client,
    ambiguous_upstream_responses_are_502_and_closed,
    interim_and_final_head_in_one_read_answer_at_once,
    endless_interim_responses_end,
    upstream_auth_failure_is_502_and_never_relays_the_body,
    channel_keys_are_masked_in_relayed_errors_and_headers,
    refused_client_request_id_reaches_upstream_once,
    valid_event_before_broken_framing_is_relayed_first,
    bulk_stream_is_not_held_by_coalescing,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The relay answers health and a normal request: no worker died.
fn assert_still_serving(relay: &Relay) {
    let h = relay.health();
    assert_eq!(h["status"], "ok", "{h}");
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "{}", r.text());
}

fn wait_upstream_closed(mock: &Mock) {
    assert!(
        mock.wait_open_at_most(0, Duration::from_secs(5)).is_some(),
        "the relay kept the upstream connection open: {:?}",
        mock.stats()
    );
}

// ---------------------------------------------------------------------------------------------

fn status_line_without_reason_is_relayed_not_a_crash(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let expected = mock_direct(mock.addr, &chat("mock-fixed", false)).body;
    for round in 0..3 {
        for model in ["mock-no-reason", "mock-binary-reason", "mock-bare-lf"] {
            let r = relay.roundtrip(&chat(model, false));
            assert_eq!(r.status, 200, "{model} round {round}: {}", r.text());
            assert_eq!(r.reason, "OK", "{model}: the standard phrase stands in");
            // The mock's chat completion names the model it was asked for.
            let body = String::from_utf8_lossy(&expected).replace("mock-fixed", model);
            assert_eq!(r.text(), body, "{model}");
        }
        let r = relay.roundtrip(&chat("mock-no-reason-stream", true));
        assert_eq!(r.status, 200);
        assert!(r.text().contains("tok2") && r.text().ends_with("data: [DONE]\n\n"));
    }
    assert_still_serving(&relay);
}

fn bytes_after_a_response_never_reach_another_client(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    for (model, stream) in [
        ("mock-extra-response", false),
        ("mock-extra-later", false),
        ("mock-extra-after-stream", true),
    ] {
        let r = relay.roundtrip(&chat(model, stream));
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert!(!contains(&r.body, b"INJECTED"), "{model}: {}", r.text());
        let before = mock.stats().total_connections;
        // Let a late injection land on the parked connection.
        std::thread::sleep(Duration::from_millis(150));
        // Other clients, one after another, each on its own connection to the relay.
        for i in 0..4 {
            let r = relay.roundtrip(&chat("mock-fixed", false));
            assert_eq!(r.status, 200, "{model}, client {i}: {}", r.text());
            assert!(
                !contains(&r.body, b"INJECTED") && contains(&r.body, b"chat.completion"),
                "{model}, client {i} got someone else's bytes: {}",
                r.text()
            );
        }
        // The tainted connection was closed, not reused: the next requests opened one new
        // connection and then reused that.
        assert_eq!(
            mock.stats().total_connections,
            before + 1,
            "{model}: {:?}",
            mock.stats()
        );
    }
    let h = relay.health();
    assert!(
        json_u64(&h, "upstream_unclean") >= 1,
        "a late injection is caught when the connection is lent: {h}"
    );
    assert_still_serving(&relay);
}

fn ambiguous_upstream_responses_are_502_and_closed(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let models = [
        (
            "mock-length-and-chunked",
            "content-length and transfer-encoding",
        ),
        ("mock-duplicate-length", "content-length"),
        ("mock-bad-status-600", "outside 100-599"),
        ("mock-bad-status-099", "outside 100-599"),
        ("mock-bad-status-000", "outside 100-599"),
        ("mock-unasked-101", "101"),
    ];
    for (model, says) in models {
        let r = relay.roundtrip(&chat(model, false));
        let v = assert_error_shape(&r, 502, Some("bad_upstream_response"));
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{model}: {msg}");
        wait_upstream_closed(&mock);
    }
    let h = relay.health();
    assert_eq!(json_u64(&h, "upstream_bad_response"), models.len() as u64);
    assert_eq!(json_u64(&h, "upstream_connections_idle"), 0);
    assert_still_serving(&relay);
}

fn interim_and_final_head_in_one_read_answer_at_once(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section("[timeouts]\nresponse_header = \"20s\"");
    let relay = start(driver, &cfg);
    for n in [1, 2, 5, 8] {
        let model = format!("mock-interim-{n}");
        let started = Instant::now();
        let r = relay.roundtrip(&chat(&model, false));
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert!(contains(&r.body, b"chat.completion"));
        // Before the fix this waited for the 20 s response_header deadline.
        assert!(took < Duration::from_secs(5), "{model} took {took:?}");
    }
    // The connection is reusable after interim responses.
    let h = relay.health();
    assert!(json_u64(&h, "upstream_reused") >= 3, "{h}");
    let r = relay.roundtrip(&chat("mock-interim-9", false));
    let v = assert_error_shape(&r, 502, Some("bad_upstream_response"));
    assert!(v["message"].as_str().unwrap().contains("interim"));
}

fn endless_interim_responses_end(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section("[timeouts]\nresponse_header = \"30s\"");
    let relay = start(driver, &cfg);
    let cpu_before = process_cpu(relay.pid());
    let started = Instant::now();
    let r = relay.roundtrip(&chat("mock-endless-interim", false));
    let took = started.elapsed();
    let v = assert_error_shape(&r, 502, Some("bad_upstream_response"));
    assert!(v["message"].as_str().unwrap().contains("interim"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    wait_upstream_closed(&mock);
    let cpu = process_cpu(relay.pid()) - cpu_before;
    assert!(
        cpu < Duration::from_millis(500),
        "the relay burned {cpu:?} of CPU on {took:?} of interim responses"
    );
    assert_still_serving(&relay);
}

/// User + system CPU time of a process, from /proc.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn upstream_auth_failure_is_502_and_never_relays_the_body(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    for status in [401, 403] {
        let r = relay.roundtrip(&chat(&format!("mock-echo-key-{status}"), false));
        let v = assert_error_shape(&r, 502, Some("upstream_auth_failed"));
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("'mock'"), "names the channel: {msg}");
        assert!(!contains(&r.body, b"Incorrect API key"), "{}", r.text());
        assert!(!contains(&r.body, UPSTREAM_KEY.as_bytes()));
        assert!(r.header("x-debug-auth").is_none());
    }
    // The client's own key is fine: a 401 of the relay's own stays invalid_api_key.
    let r = relay.roundtrip(&post_json(
        "/v1/chat/completions",
        Some("sk-wrong"),
        &[],
        &chat_body("mock-fixed", false),
    ));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
    let h = relay.health();
    assert_eq!(json_u64(&h, "upstream_auth_failed"), 2);
}

fn channel_keys_are_masked_in_relayed_errors_and_headers(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let tail = &UPSTREAM_KEY[UPSTREAM_KEY.len() - 4..];
    let masked = format!("{}{tail}", "*".repeat(UPSTREAM_KEY.len() - 4));

    let r = relay.roundtrip(&chat("mock-echo-key-500", false));
    let v = assert_error_shape(&r, 500, None);
    let msg = v["message"].as_str().unwrap();
    assert!(!msg.contains(UPSTREAM_KEY), "{msg}");
    assert!(msg.contains(&masked), "{msg}");

    let r = relay.roundtrip(&chat("mock-echo-key-200", false));
    assert_eq!(r.status, 200);
    let echoed = r.header("x-debug-auth").expect("the header is relayed");
    assert_eq!(echoed, format!("Bearer {masked}"));
    assert!(!r.headers.iter().any(|(_, v)| v.contains(UPSTREAM_KEY)));
}

fn refused_client_request_id_reaches_upstream_once(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let long = "x".repeat(300);
    for (client_id, kept) in [
        ("abc-123", true),
        ("has space", false),
        (long.as_str(), false),
    ] {
        let req = post_json(
            "/v1/chat/completions",
            Some(TOKEN),
            &[("x-request-id", client_id)],
            &chat_body("mock-echo", false),
        );
        let r = relay.roundtrip(&req);
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = parse_echo(&r);
        let sent = echo.values("x-request-id");
        assert_eq!(sent.len(), 1, "upstream got {sent:?}");
        assert_eq!(sent[0], r.request_id());
        assert_eq!(sent[0] == client_id, kept, "{client_id:?}");
    }
}

fn valid_event_before_broken_framing_is_relayed_first(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let r = relay.roundtrip(&chat("mock-broken-chunked-one-write", true));
    assert_eq!(r.status, 200);
    let text = r.text();
    let event = text.find("tok0").expect("the valid event arrived");
    let error = text.find("event: error").expect("then the error event");
    assert!(event < error, "{text}");
    let (err, _) = sse_error_event(&r.body).expect("an SSE error event");
    assert_eq!(err["error"]["code"], "bad_upstream_response");
    wait_upstream_closed(&mock);
}

fn bulk_stream_is_not_held_by_coalescing(driver: Driver) {
    let mock = Mock::start();
    // A hold of a whole second: if holds followed full reads, 16 MiB in 16 KiB reads would
    // take over 1,000 s; with holds only after short reads it takes one hold and the transfer.
    let cfg = ConfigBuilder::new(mock.addr).server("sse_coalesce = \"1s\"");
    let relay = start(driver, &cfg);
    let started = Instant::now();
    let r = relay.roundtrip(&chat("mock-bulk-16", true));
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 16 * 1024 * 1024, "{} bytes", r.body.len());
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
