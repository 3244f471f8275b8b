//! Routing and accounting: channel priority, key rotation, base URL prefixes, host names that
//! need a lookup, and usage counted per token and channel. Real binary, mock upstream, both
//! io drivers.

mod common;

use common::*;

both_drivers! {
    higher_priority_channel_wins,
    keys_rotate_round_robin,
    base_url_prefix_and_trailing_v1,
    host_name_base_url_is_resolved,
    usage_is_counted_per_token_and_channel,
}

fn echo(relay: &Relay, model: &str) -> Echo {
    let r = relay.roundtrip(&post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[],
        &chat_body(model, false),
    ));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    parse_echo(&r)
}

fn higher_priority_channel_wins(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "low",
            &mock.base_url(),
            "sk-low",
            &["mock-echo"],
            "priority = 0",
        )
        .channel(
            "high",
            &mock.base_url(),
            "sk-high",
            &["mock-echo"],
            "priority = 5",
        );
    let relay = start(driver, &cfg);
    for _ in 0..6 {
        assert_eq!(
            echo(&relay, "mock-echo").one("authorization"),
            "Bearer sk-high"
        );
    }
}

fn keys_rotate_round_robin(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .section(&format!(
            "[[channels]]\nname = \"rot\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
             keys = [\"sk-k1\", \"sk-k2\", \"sk-k3\"]\nmodels = [\"mock-echo\"]\n",
            mock.base_url()
        ));
    let relay = start(driver, &cfg);
    let seen: Vec<String> = (0..6)
        .map(|_| echo(&relay, "mock-echo").one("authorization").to_string())
        .collect();
    // One worker: consecutive requests walk the key list in order.
    for w in seen.windows(2) {
        assert_ne!(w[0], w[1], "key did not rotate: {seen:?}");
    }
    for k in ["sk-k1", "sk-k2", "sk-k3"] {
        assert!(
            seen.contains(&format!("Bearer {k}")),
            "{k} never used: {seen:?}"
        );
    }
}

fn base_url_prefix_and_trailing_v1(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "v1",
            &format!("{}/v1", mock.base_url()),
            "sk-a",
            &["mock-echo"],
            "",
        )
        .channel(
            "prefixed",
            &format!("{}/openai/", mock.base_url()),
            "sk-b",
            &["mock-echo-prefixed"],
            "",
        );
    let relay = start(driver, &cfg);
    // `.../v1` as SDK base URLs are written must not become /v1/v1/...
    let e = echo(&relay, "mock-echo");
    assert_eq!(e.path, "/v1/chat/completions");
    // The mock serves only /v1/...; its 404 names the path it was asked for, and the relay
    // passes that message through.
    let r = relay.roundtrip(&post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[],
        &chat_body("mock-echo-prefixed", false),
    ));
    assert_eq!(r.status, 404, "body {:?}", r.text());
    assert!(
        r.text().contains("POST /openai/v1/chat/completions"),
        "upstream path: {:?}",
        r.text()
    );
}

fn host_name_base_url_is_resolved(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "named",
            &format!("http://localhost:{}", mock.addr.port()),
            "sk-a",
            &["mock-echo"],
            "",
        );
    let relay = start(driver, &cfg);
    let e = echo(&relay, "mock-echo");
    assert_eq!(e.one("host"), format!("localhost:{}", mock.addr.port()));
}

fn usage_is_counted_per_token_and_channel(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).token("second", "sk-second", &["*"]);
    let relay = start(driver, &cfg);
    // mock-fixed reports usage {prompt_tokens: 9, completion_tokens: 7}.
    for token in [TOKEN, TOKEN, "sk-second"] {
        let r = relay.roundtrip(&post_json(
            "/v1/chat/completions",
            Some(token),
            &[],
            &chat_body("mock-fixed", false),
        ));
        assert_eq!(r.status, 200);
    }
    let m = metrics_text(&relay);
    let v =
        |series: &str| metric_value(&m, series).unwrap_or_else(|| panic!("{series} missing:\n{m}"));
    assert_eq!(v("ringway_token_requests_total{token=\"default\"}"), 2.0);
    assert_eq!(
        v("ringway_token_tokens_total{token=\"default\",kind=\"prompt\"}"),
        18.0
    );
    assert_eq!(
        v("ringway_token_tokens_total{token=\"default\",kind=\"completion\"}"),
        14.0
    );
    assert_eq!(
        v("ringway_token_tokens_total{token=\"second\",kind=\"prompt\"}"),
        9.0
    );
    assert_eq!(v("ringway_channel_requests_total{channel=\"mock\"}"), 3.0);
    assert_eq!(
        v("ringway_channel_tokens_total{channel=\"mock\",kind=\"completion\"}"),
        21.0
    );
}
