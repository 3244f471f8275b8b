//! Failover before the first byte (`[retry]`): a request that fails on one channel goes to the
//! next candidate, and the client gets the second channel's answer. Real binary, two (or
//! three) channels over two mock upstreams, both io drivers. Each trigger is a client model
//! that the primary channel's `model_map` turns into a failing mock behaviour and the backup's
//! into `mock-fixed`.

mod common;

use common::*;

both_drivers! {
    each_trigger_fails_over_to_the_backup,
    no_failover_once_the_answer_began,
    attempts_are_bounded_and_the_last_error_is_relayed,
}

/// (client model, what the primary does with it)
const TRIGGERS: [(&str, &str); 6] = [
    ("t503", "mock-status-503"),
    ("t429", "mock-status-429"),
    ("t500", "mock-status-500"),
    ("tslow", "mock-stall-head-3000"),
    ("t101", "mock-unasked-101"),
    ("t401", "mock-status-401"),
];

fn map_to(pairs: &[(&str, &str)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(a, b)| format!("{a:?} = {b:?}"))
        .collect();
    format!("model_map = {{ {} }}", items.join(", "))
}

fn attempts(relay: &Relay, channel: &str, result: &str) -> f64 {
    let text = metrics_text(relay);
    metric_value(
        &text,
        &format!("ringway_channel_attempts_total{{channel=\"{channel}\",result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no attempts series for {channel}/{result}:\n{text}"))
}

fn each_trigger_fails_over_to_the_backup(driver: Driver) {
    let primary = Mock::start();
    let backup = Mock::start();
    let mut models: Vec<&str> = TRIGGERS.iter().map(|t| t.0).collect();
    models.push("tconnect");
    let primary_map = map_to(&TRIGGERS);
    let backup_pairs: Vec<(&str, &str)> = models.iter().map(|m| (*m, "mock-fixed")).collect();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = ConfigBuilder::new(primary.addr)
        .without_default_channel()
        .channel(
            "dead",
            &dead,
            UPSTREAM_KEY,
            &["tconnect"],
            "priority = 2\ntimeouts = { connect = \"1s\" }",
        )
        .channel(
            "primary",
            &primary.base_url(),
            UPSTREAM_KEY,
            &models[..TRIGGERS.len()],
            &format!("priority = 1\n{primary_map}\ntimeouts = {{ response_header = \"300ms\" }}"),
        )
        .channel(
            "backup",
            &backup.base_url(),
            UPSTREAM_KEY,
            &models,
            &map_to(&backup_pairs),
        );
    let relay = start(driver, &cfg);
    for (i, model) in models.iter().enumerate() {
        let before = (primary.stats().requests, backup.stats().requests);
        let r = relay.roundtrip(&chat(model, false));
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert!(
            r.text().contains("\"model\":\"mock-fixed\""),
            "{model}: {}",
            r.text()
        );
        assert_eq!(
            backup.stats().requests,
            before.1 + 1,
            "{model}: the backup answered"
        );
        if *model != "tconnect" {
            assert_eq!(
                primary.stats().requests,
                before.0 + 1,
                "{model}: the primary was tried"
            );
        }
        assert_eq!(attempts(&relay, "backup", "relayed") as usize, i + 1);
    }
    assert_eq!(attempts(&relay, "primary", "failed"), TRIGGERS.len() as f64);
    assert_eq!(attempts(&relay, "dead", "failed"), 1.0);
    assert_eq!(attempts(&relay, "primary", "relayed"), 0.0);
}

fn no_failover_once_the_answer_began(driver: Driver) {
    let primary = Mock::start();
    let backup = Mock::start();
    let cfg = ConfigBuilder::new(primary.addr)
        .without_default_channel()
        .channel(
            "primary",
            &primary.base_url(),
            UPSTREAM_KEY,
            &["s", "bad"],
            "priority = 1\nmodel_map = { \"s\" = \"mock-reset-stream\", \"bad\" = \"mock-status-400\" }",
        )
        .channel(
            "backup",
            &backup.base_url(),
            UPSTREAM_KEY,
            &["s", "bad"],
            "model_map = { \"s\" = \"mock-fixed\", \"bad\" = \"mock-fixed\" }",
        );
    let relay = start(driver, &cfg);
    // The stream began: its failure ends it with an SSE error event, never a second answer.
    let r = relay.roundtrip(&chat("s", true));
    assert_eq!(r.status, 200);
    let (err, _) = sse_error_event(&r.body).expect("the stream ends with an error event");
    assert_eq!(err["error"]["code"], "upstream_reset");
    // A status not in on_status is the client's answer.
    let r = relay.roundtrip(&chat("bad", false));
    assert_error_shape(&r, 400, None);
    assert_eq!(backup.stats().requests, 0);
}

fn attempts_are_bounded_and_the_last_error_is_relayed(driver: Driver) {
    let a = Mock::start();
    let b = Mock::start();
    let three = |retry: &str| {
        ConfigBuilder::new(a.addr)
            .without_default_channel()
            .section(retry)
            .channel(
                "first",
                &a.base_url(),
                UPSTREAM_KEY,
                &["x"],
                "priority = 2\nmodel_map = { \"x\" = \"mock-status-503\" }",
            )
            .channel(
                "second",
                &a.base_url(),
                UPSTREAM_KEY,
                &["x"],
                "priority = 1\nmodel_map = { \"x\" = \"mock-status-500\" }",
            )
            .channel(
                "third",
                &b.base_url(),
                UPSTREAM_KEY,
                &["x"],
                "model_map = { \"x\" = \"mock-fixed\" }",
            )
    };
    // One extra attempt: first (503), then second (500), whose error the client gets.
    let relay = start(driver, &three("[retry]\nattempts = 1"));
    let r = relay.roundtrip(&chat("x", false));
    let e = assert_error_shape(&r, 500, None);
    assert_eq!(e["message"], "mock error 500");
    assert_eq!((a.stats().requests, b.stats().requests), (2, 0));
    drop(relay);
    // No extra attempt: the first channel's 503 and its Retry-After.
    let relay = start(driver, &three("[retry]\nattempts = 0"));
    let r = relay.roundtrip(&chat("x", false));
    assert_error_shape(&r, 503, None);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!((a.stats().requests, b.stats().requests), (3, 0));
    drop(relay);
    // The default (2 extra): the third channel answers.
    let relay = start(driver, &three(""));
    let r = relay.roundtrip(&chat("x", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((a.stats().requests, b.stats().requests), (5, 1));
}
