//! Token limits: `expires_at` (401 `token_expired`, before the body), `rpm`, `tpm` and a
//! token's `max_inflight` (429 `rate_limited` with `Retry-After`), holding across workers.
//! Real binary against the mock, both io drivers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

both_drivers! {
    expired_token_is_refused_before_its_body,
    rpm_holds_across_workers,
    token_max_inflight_holds_across_workers,
    tpm_refuses_once_reported_usage_reaches_it,
    a_request_refused_by_max_inflight_gives_its_rpm_back,
}

/// A `[[tokens]]` table for `key` (all models) with `limits` lines.
fn token(name: &str, key: &str, limits: &str) -> String {
    format!("[[tokens]]\nname = {name:?}\nkey = {key:?}\nmodels = [\"*\"]\n{limits}\n")
}

/// A chat request for `model` with the client key `key`.
fn chat_as(key: &str, model: &str) -> Vec<u8> {
    post_json(
        "/v1/chat/completions",
        Some(key),
        &[],
        &chat_body(model, false),
    )
}

/// The worker that answered: `rw-<start>-<worker>-<seq>` in `x-request-id`.
fn worker_of(r: &Response) -> String {
    r.request_id()
        .split('-')
        .nth(2)
        .unwrap_or_else(|| panic!("x-request-id {:?}", r.request_id()))
        .to_string()
}

/// A 429 `rate_limited` naming `limit`, with a `Retry-After` of 1 to `max` seconds; returns it.
fn assert_rate_limited(r: &Response, limit: &str, max: u64) -> u64 {
    let e = assert_error_shape(r, 429, Some("rate_limited"));
    assert_eq!(e["type"], "rate_limit_error", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{limit} limit")),
        "message does not name {limit}: {message}"
    );
    assert!(!message.contains("sk-"), "a key in the message: {message}");
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=max).contains(&secs), "Retry-After {secs}");
    secs
}

fn expired_token_is_refused_before_its_body(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .section(&token(
            "old",
            "sk-old",
            "expires_at = \"2001-02-03T04:05:06Z\"",
        ))
        .section(&token(
            "later",
            "sk-later",
            "expires_at = \"2999-01-01T00:00:00+02:00\"",
        ));
    let relay = start(driver, &cfg);
    // Only the head, promising 1000 body bytes that never come: the 401 comes anyway (waiting
    // for the body would run into the 3 s read timeout).
    let mut c = relay.client();
    c.set_read_timeout(Duration::from_secs(3));
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer sk-old\r\n\
          content-type: application/json\r\ncontent-length: 1000\r\n\r\n",
    );
    let r = c.read_final_response();
    let e = assert_error_shape(&r, 401, Some("token_expired"));
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("2001-02-03T04:05:06Z"), "{message}");
    // The model list is closed to it as well.
    for path in ["/v1/models", "/v1/models/mock-fixed"] {
        let r = relay.roundtrip(&get(path, &[("authorization", "Bearer sk-old")]));
        assert_error_shape(&r, 401, Some("token_expired"));
    }
    assert!(!r.text().contains("sk-old"), "{}", r.text());
    // The unread body cannot be taken for the next request: the connection ends.
    assert!(
        r.closes(),
        "the connection should close after an unread body"
    );
    // With its body too, and over x-api-key: the same.
    let r = relay.roundtrip(&post_json(
        "/v1/chat/completions",
        None,
        &[("x-api-key", "sk-old")],
        &chat_body("mock-fixed", false),
    ));
    assert_error_shape(&r, 401, Some("token_expired"));
    // A token expiring in the future works, and so does one without expires_at.
    let r = relay.roundtrip(&chat_as("sk-later", "mock-fixed"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "{}", r.text());
    // The expired token never reached the upstream.
    assert_eq!(mock.stats().requests, 2);
}

fn rpm_holds_across_workers(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .workers(2)
        .section(&token("limited", "sk-limited", "rpm = 5"))
        .section(&token("burst", "sk-burst", "rpm = 5"));
    let relay = start(driver, &cfg);
    // One at a time, each on a fresh connection (the kernel spreads them over both workers):
    // five pass, then every further one in the minute is refused.
    let mut workers = HashSet::new();
    for i in 0..16 {
        let r = relay.roundtrip(&chat_as("sk-limited", "mock-fixed"));
        workers.insert(worker_of(&r));
        if i < 5 {
            assert_eq!(r.status, 200, "request {}: {}", i + 1, r.text());
        } else {
            assert_rate_limited(&r, "rpm", 60);
        }
    }
    assert_eq!(workers.len(), 2, "both workers took requests: {workers:?}");
    assert_eq!(mock.stats().requests, 5);
    // Another token is not affected.
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "{}", r.text());
    // Twelve at once on their own connections: exactly five get through.
    let before = mock.stats().requests;
    let mut clients: Vec<Client> = (0..12).map(|_| relay.client()).collect();
    for c in &mut clients {
        c.send(&chat_as("sk-burst", "mock-fixed"));
    }
    let mut ok = 0;
    for c in &mut clients {
        let r = c.read_final_response();
        match r.status {
            200 => ok += 1,
            _ => {
                assert_rate_limited(&r, "rpm", 60);
            }
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(mock.stats().requests, before + 5);
    let h = relay.health();
    assert_eq!(json_u64(&h, "rate_limited"), 11 + 7);
    assert_eq!(json_u64(&h, "overloaded"), 0);
    assert_eq!(json_u64(&h, "inflight_requests"), 0);
    let m = metrics_text(&relay);
    assert_eq!(metric_value(&m, "ringway_rate_limited_total"), Some(18.0));
}

fn token_max_inflight_holds_across_workers(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).workers(2).section(&token(
        "limited",
        "sk-limited",
        "max_inflight = 2",
    ));
    let relay = start(driver, &cfg);
    for round in 0..2 {
        let before = mock.stats().requests;
        // Five slow requests at once, each on its own connection.
        let mut clients: Vec<Client> = (0..5).map(|_| relay.client()).collect();
        for c in &mut clients {
            c.send(&chat_as("sk-limited", "mock-stall-head-1500"));
        }
        let (mut ok, mut refused) = (0, 0);
        for c in &mut clients {
            let r = c.read_final_response();
            match r.status {
                200 => ok += 1,
                _ => {
                    assert_eq!(assert_rate_limited(&r, "max_inflight", 1), 1);
                    refused += 1;
                }
            }
        }
        assert_eq!((ok, refused), (2, 3), "round {round}");
        assert_eq!(mock.stats().requests, before + 2, "round {round}");
    }
    // Every slot came back: two at once still pass.
    let mut clients: Vec<Client> = (0..2).map(|_| relay.client()).collect();
    for c in &mut clients {
        c.send(&chat_as("sk-limited", "mock-stall-head-200"));
    }
    for c in &mut clients {
        assert_eq!(c.read_final_response().status, 200);
    }
    let h = relay.health();
    assert_eq!(json_u64(&h, "rate_limited"), 6);
    assert_eq!(json_u64(&h, "inflight_requests"), 0);
}

fn tpm_refuses_once_reported_usage_reaches_it(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).workers(2).section(&token(
        "limited",
        "sk-limited",
        "tpm = 40",
    ));
    let relay = start(driver, &cfg);
    // mock-fixed reports 9 + 7 = 16 tokens. One keep-alive connection, so each request's
    // usage is counted (when it finishes) before the next one is read.
    let mut c = relay.client();
    let mut passed = 0;
    let mut refusals = Vec::new();
    for _ in 0..6 {
        c.send(&chat_as("sk-limited", "mock-fixed"));
        let r = c.read_final_response();
        if r.status == 200 {
            assert!(refusals.is_empty(), "admitted after a refusal");
            passed += 1;
        } else {
            refusals.push(assert_rate_limited(&r, "tpm", 60));
        }
    }
    // 0, 16 and 32 are under 40; after the third, 48 were reported.
    assert_eq!(passed, 3);
    assert_eq!(refusals.len(), 3);
    // 8 over at 40 a minute: about 12 s until the next one.
    assert!(
        refusals.iter().all(|&s| (10..=12).contains(&s)),
        "{refusals:?}"
    );
    assert_eq!(mock.stats().requests, 3);
    // The usage metrics agree with what the limit counted.
    let m = metrics_text(&relay);
    let prompt = r#"ringway_token_tokens_total{token="limited",kind="prompt"}"#;
    let completion = r#"ringway_token_tokens_total{token="limited",kind="completion"}"#;
    assert_eq!(
        metric_value(&m, prompt).zip(metric_value(&m, completion)),
        Some((27.0, 21.0))
    );
    assert_eq!(metric_value(&m, "ringway_rate_limited_total"), Some(3.0));
}

fn a_request_refused_by_max_inflight_gives_its_rpm_back(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .server("max_inflight = 1")
        .section(&token("limited", "sk-limited", "rpm = 2\nmax_inflight = 2"));
    let relay = start(driver, &cfg);
    // The first takes the process's only slot for a second.
    let mut slow = relay.client();
    slow.send(&chat_as("sk-limited", "mock-stall-head-1000"));
    assert!(mock.wait_requests(1, Duration::from_secs(5)).is_some());
    // The second passes rpm (2 of 2) but not the process's max_inflight: 503, and the rpm it
    // took goes back.
    let r = relay.roundtrip(&chat_as("sk-limited", "mock-fixed"));
    assert_error_shape(&r, 503, Some("overloaded"));
    assert_eq!(slow.read_final_response().status, 200);
    // So the second of rpm 2 is still there; the third is over.
    let r = relay.roundtrip(&chat_as("sk-limited", "mock-fixed"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = relay.roundtrip(&chat_as("sk-limited", "mock-fixed"));
    assert_rate_limited(&r, "rpm", 60);
    assert_eq!(mock.stats().requests, 2);
    let h = relay.health();
    assert_eq!(
        (json_u64(&h, "overloaded"), json_u64(&h, "rate_limited")),
        (1, 1)
    );
}
