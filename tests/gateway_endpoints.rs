//! What a gateway is also expected to do: `GET /v1/models/{id}`, CORS for browser clients
//! (`[server] cors_origins`, off by default), and a WARN line per upstream failure class
//! (rate-limited). Real binary against the mock, both io drivers.

mod common;

use std::time::Duration;

use common::*;

both_drivers! {
    model_by_id_follows_the_token_and_the_channels,
    cors_preflight_and_headers_for_allowed_origins_only,
    upstream_failures_leave_a_rate_limited_warn_line,
}

fn model_by_id_follows_the_token_and_the_channels(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(
            mock.addr,
            &["gpt-4o*", "mock-fixed"],
            "model_map = { \"alias\" = \"mock-fixed\" }",
        )
        .token("narrow", "sk-narrow", &["mock-fixed"]);
    let relay = start(driver, &cfg);
    let auth = bearer(TOKEN);
    for id in ["mock-fixed", "alias", "gpt-4o-mini"] {
        let r = relay.roundtrip(&get(&format!("/v1/models/{id}"), &[(auth.0, &auth.1)]));
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        let v = r.json();
        assert_eq!(
            (v["id"].as_str(), v["object"].as_str()),
            (Some(id), Some("model"))
        );
        assert_eq!(v["owned_by"], "mock");
    }
    let r = relay.roundtrip(&get("/v1/models/claude-3", &[(auth.0, &auth.1)]));
    assert_error_shape(&r, 404, Some("model_not_found"));
    // A token that may not use the model does not learn of it.
    let narrow = bearer("sk-narrow");
    let r = relay.roundtrip(&get("/v1/models/gpt-4o-mini", &[(narrow.0, &narrow.1)]));
    assert_error_shape(&r, 404, Some("model_not_found"));
    let r = relay.roundtrip(&get("/v1/models/mock-fixed", &[]));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
    assert_eq!(mock.stats().requests, 0);
}

fn cors_preflight_and_headers_for_allowed_origins_only(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).server("cors_origins = [\"https://app.example\"]");
    let relay = start(driver, &cfg);
    let preflight = |origin: &str| {
        let mut raw = get(
            "/v1/chat/completions",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
        );
        raw.splice(0..3, b"OPTIONS".iter().copied());
        relay.roundtrip(&raw)
    };
    let r = preflight("https://app.example");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(r.header("content-length").is_none(), "a 204 has no length");
    // Another origin: no preflight answer, and no CORS headers on a real request.
    let r = preflight("https://evil.example");
    assert_eq!(r.status, 405);
    assert!(r.header("access-control-allow-origin").is_none());
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let auth = bearer(TOKEN);
        for stream in [false, true] {
            let req = post_json(
                "/v1/chat/completions",
                None,
                &[(auth.0, &auth.1), ("origin", origin)],
                &chat_body("mock-fixed", stream),
            );
            let r = relay.roundtrip(&req);
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("access-control-allow-origin").is_some(),
                allowed,
                "{origin} stream={stream}"
            );
        }
        let r = relay.roundtrip(&get("/v1/models", &[("origin", origin)]));
        assert_eq!(r.status, 401);
        assert_eq!(r.header("access-control-allow-origin").is_some(), allowed);
    }
}

fn upstream_failures_leave_a_rate_limited_warn_line(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section("[retry]\nattempts = 0");
    let relay = start(driver, &cfg);
    for _ in 0..20 {
        assert_eq!(relay.roundtrip(&chat("mock-status-503", false)).status, 503);
    }
    assert_eq!(
        relay.roundtrip(&chat("mock-unasked-101", false)).status,
        502
    );
    let warns = |needle: &str| {
        relay
            .stderr_text()
            .lines()
            .filter(|l| {
                l.contains("WARN") && l.contains("upstream channel 'mock'") && l.contains(needle)
            })
            .count()
    };
    let seen = wait_for(Duration::from_secs(5), || {
        warns("answered 503") >= 1 && warns("101") >= 1
    });
    assert!(seen.is_some(), "{}", relay.stderr_text());
    // Twenty 503s within well under a second: one line, not twenty.
    assert!(warns("answered 503") <= 2, "{}", relay.stderr_text());
    assert!(!relay.stderr_text().contains(UPSTREAM_KEY));
}
