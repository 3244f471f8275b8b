//! Channel health (`[health]`), shared by all workers: a refused key taken out of rotation
//! while the client is still served, a channel cooled down for the upstream's `Retry-After`
//! while its backup serves, a half-open probe that re-enables it or cools it again for twice
//! as long, the state seen the same by both workers, and the answer when every candidate is
//! out. Real binary against mock upstreams, both io drivers.

mod common;

use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    refused_key_leaves_rotation_and_the_client_is_served,
    quota_code_in_a_429_body_takes_the_key_out,
    cooldown_honours_retry_after_then_a_probe_re_enables,
    failed_probe_cools_again_for_longer,
    cooldown_is_shared_by_both_workers,
    every_candidate_out_gets_no_healthy_channel,
}

const GOOD_KEY: &str = "sk-good-key-aaaa1111";
const BAD_KEY: &str = "sk-bad-key-bbbb2222";

/// A `[[channels]]` table with several keys (the builder's own channels have one).
fn channel_with_keys(
    name: &str,
    base_url: &str,
    keys: &[&str],
    models: &[&str],
    extra: &str,
) -> String {
    let list = |items: &[&str]| {
        let q: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", q.join(", "))
    };
    format!(
        "[[channels]]\nname = {name:?}\nprovider = \"openai\"\nbase_url = {base_url:?}\nkeys = {}\nmodels = {}\n{extra}\n",
        list(keys),
        list(models)
    )
}

/// The `channels` entry of health named `name`.
fn channel_health(relay: &Relay, name: &str) -> serde_json::Value {
    let h = relay.health();
    h["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("health has no channels array: {h}"))
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no channel {name} in health: {h}"))
}

/// A primary channel (priority 1) and a backup on two mocks, both serving client model `m`:
/// the primary as `primary_model`, the backup as `mock-fixed`.
fn primary_and_backup(
    primary: &Mock,
    backup: &Mock,
    primary_model: &str,
    health: &str,
) -> ConfigBuilder {
    ConfigBuilder::new(primary.addr)
        .without_default_channel()
        .channel(
            "primary",
            &primary.base_url(),
            UPSTREAM_KEY,
            &["m"],
            &format!("priority = 1\nmodel_map = {{ \"m\" = {primary_model:?} }}"),
        )
        .channel(
            "backup",
            &backup.base_url(),
            UPSTREAM_KEY,
            &["m"],
            "model_map = { \"m\" = \"mock-fixed\" }",
        )
        .health(health)
}

fn answered_by(r: &Response, model: &str) -> bool {
    r.status == 200 && r.text().contains(&format!("\"model\":\"{model}\""))
}

fn refused_key_leaves_rotation_and_the_client_is_served(driver: Driver) {
    let mock = Mock::start();
    let model = "mock-refuse-key-2222";
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .workers(2)
        .section(&channel_with_keys(
            "multi",
            &mock.base_url(),
            &[GOOD_KEY, BAD_KEY],
            &["*"],
            "",
        ))
        .health("");
    let relay = start(driver, &cfg);
    // Each worker starts its rotation at its own key: send until the refused key was met.
    let mut sent = 0;
    let met = wait_for(Duration::from_secs(30), || {
        let r = relay.roundtrip(&chat(model, false));
        assert!(
            answered_by(&r, model),
            "the client is served: {} {}",
            r.status,
            r.text()
        );
        sent += 1;
        channel_health(&relay, "multi")["keys"][1]["state"] == "disabled"
    });
    assert!(
        met.is_some(),
        "key #2 never taken out after {sent} requests"
    );
    let refusals = mock.stats().requests - sent;
    assert_eq!(
        refusals, 1,
        "exactly one request met the refused key (shared state)"
    );

    // From now on the refused key is never sent: one upstream request per client request.
    let before = mock.stats().requests;
    for _ in 0..20 {
        let r = relay.roundtrip(&chat(model, false));
        assert!(answered_by(&r, model), "{} {}", r.status, r.text());
    }
    assert_eq!(
        mock.stats().requests,
        before + 20,
        "the refused key was sent again"
    );

    let ch = channel_health(&relay, "multi");
    assert_eq!(ch["state"], "healthy", "{ch}");
    let key = &ch["keys"][1];
    assert_eq!(
        (key["key"].as_str(), key["tail"].as_str()),
        (Some("#2"), Some("...2222")),
        "{ch}"
    );
    assert!(key["reason"].as_str().unwrap_or("").contains("401"), "{ch}");
    assert!(
        key["since"].as_str().unwrap_or("").ends_with('Z'),
        "RFC 3339 since: {ch}"
    );
    assert!(key["recheck_in_ms"].as_u64().unwrap_or(0) > 0, "{ch}");
    assert_eq!(ch["keys"][0]["state"], "active", "{ch}");

    let metrics = metrics_text(&relay);
    assert_eq!(
        metric_value(
            &metrics,
            "ringway_channel_key_active{channel=\"multi\",key=\"#2\",tail=\"...2222\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ringway_channel_key_active{channel=\"multi\",key=\"#1\",tail=\"...1111\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ringway_channel_state{channel=\"multi\",state=\"healthy\"}"
        ),
        Some(1.0)
    );
    let all = format!("{}{metrics}{}", relay.health(), relay.stderr_text());
    for secret in [GOOD_KEY, BAD_KEY, "sk-bad-key"] {
        assert!(!all.contains(secret), "a key was shown: {secret}");
    }
}

fn quota_code_in_a_429_body_takes_the_key_out(driver: Driver) {
    let mock = Mock::start();
    let model = "mock-no-quota-key-2222";
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .section(&channel_with_keys(
            "multi",
            &mock.base_url(),
            &[GOOD_KEY, BAD_KEY],
            &["*"],
            "",
        ))
        .health("");
    let relay = start(driver, &cfg);
    for _ in 0..4 {
        let r = relay.roundtrip(&chat(model, false));
        assert!(answered_by(&r, model), "{} {}", r.status, r.text());
    }
    // One worker rotating over two keys met the refused one once, and never again.
    assert_eq!(mock.stats().requests, 5);
    let ch = channel_health(&relay, "multi");
    assert_eq!(ch["keys"][1]["state"], "disabled", "{ch}");
    assert_eq!(ch["keys"][1]["reason"], "insufficient_quota (429)", "{ch}");
    assert_eq!(
        ch["state"], "healthy",
        "a key refusal is no channel failure: {ch}"
    );
}

fn cooldown_honours_retry_after_then_a_probe_re_enables(driver: Driver) {
    let primary = Mock::start();
    let backup = Mock::start();
    // One failure cools; the first cooldown is 500 ms, but the upstream asks for 3 s.
    let failing = "mock-fail-1-503-3";
    let cfg = primary_and_backup(
        &primary,
        &backup,
        failing,
        "failures = 1\ncooldown = \"500ms\"",
    );
    let relay = start(driver, &cfg);
    let r = relay.roundtrip(&chat("m", false));
    let failed_at = Instant::now();
    assert!(
        answered_by(&r, "mock-fixed"),
        "the backup served: {}",
        r.text()
    );
    assert_eq!(primary.stats().requests, 1);
    let ch = channel_health(&relay, "primary");
    assert_eq!(ch["state"], "cooling", "{ch}");
    assert_eq!(ch["reason"], "status 503", "{ch}");
    let remaining = ch["cooldown_remaining_ms"].as_u64().unwrap();
    assert!(
        (1000..=3000).contains(&remaining),
        "Retry-After: 3 honoured: {ch}"
    );

    // Skipped while cooling: the backup serves, the primary is not touched, until the one
    // probe after about 3 s.
    let probe = loop {
        let r = relay.roundtrip(&chat("m", false));
        assert_eq!(r.status, 200, "{}", r.text());
        if primary.stats().requests > 1 {
            break r;
        }
        assert!(answered_by(&r, "mock-fixed"));
        assert!(
            failed_at.elapsed() < Duration::from_secs(20),
            "no probe within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "probed after {waited:?}, before Retry-After"
    );
    assert!(
        answered_by(&probe, failing),
        "the probe's answer is the primary's: {}",
        probe.text()
    );
    assert_eq!(primary.stats().requests, 2, "exactly one probe");
    let ch = channel_health(&relay, "primary");
    assert_eq!(
        (ch["state"].as_str(), ch["reason"].as_str()),
        (Some("healthy"), Some("recovered")),
        "{ch}"
    );
    // Back in rotation: the primary serves again.
    let r = relay.roundtrip(&chat("m", false));
    assert!(answered_by(&r, failing), "{}", r.text());
    assert_eq!(primary.stats().requests, 3);
}

fn failed_probe_cools_again_for_longer(driver: Driver) {
    let primary = Mock::start();
    let backup = Mock::start();
    // Fails twice (the first request and the first probe), no Retry-After.
    let failing = "mock-fail-2-500-0";
    let cfg = primary_and_backup(
        &primary,
        &backup,
        failing,
        "failures = 1\ncooldown = \"2s\"\nmax_cooldown = \"1m\"",
    );
    let relay = start(driver, &cfg);
    let send_until_primary_has = |n: u64, deadline: Duration| -> Instant {
        let start = Instant::now();
        loop {
            let r = relay.roundtrip(&chat("m", false));
            assert_eq!(r.status, 200, "every request is served: {}", r.text());
            if primary.stats().requests >= n {
                return Instant::now();
            }
            assert!(
                start.elapsed() < deadline,
                "primary did not reach {n} requests"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first_failure = send_until_primary_has(1, Duration::from_secs(5));
    let probe_failed = send_until_primary_has(2, Duration::from_secs(30));
    let ch = channel_health(&relay, "primary");
    assert_eq!(
        ch["state"], "cooling",
        "the failed probe cooled it again: {ch}"
    );
    let remaining = ch["cooldown_remaining_ms"].as_u64().unwrap();
    assert!(
        remaining > 2000,
        "the second cooldown is the doubled backoff (4 s): {ch}"
    );
    let probe_passed = send_until_primary_has(3, Duration::from_secs(30));
    let first = probe_failed - first_failure;
    let second = probe_passed - probe_failed;
    assert!(
        first >= Duration::from_millis(1900),
        "first cooldown {first:?}"
    );
    assert!(
        second >= Duration::from_millis(3900),
        "second cooldown {second:?}"
    );
    assert_eq!(channel_health(&relay, "primary")["state"], "healthy");
    assert_eq!(primary.stats().requests, 3, "one probe per cooldown");
}

fn cooldown_is_shared_by_both_workers(driver: Driver) {
    let primary = Mock::start();
    let backup = Mock::start();
    let cfg = primary_and_backup(
        &primary,
        &backup,
        "mock-fail-1-503-0",
        "failures = 1\ncooldown = \"1m\"",
    )
    .workers(2);
    let relay = start(driver, &cfg);
    let r = relay.roundtrip(&chat("m", false));
    assert!(answered_by(&r, "mock-fixed"), "{}", r.text());
    assert_eq!(primary.stats().requests, 1);
    // Fresh connections spread over both workers; neither sends to the cooling primary.
    for _ in 0..30 {
        let r = relay.roundtrip(&chat("m", false));
        assert!(answered_by(&r, "mock-fixed"), "{}", r.text());
    }
    assert_eq!(
        primary.stats().requests,
        1,
        "a worker sent to the cooling channel"
    );
    let h = relay.health();
    let per = h["per_worker"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    for w in per {
        assert!(
            w["requests_total"].as_u64().unwrap() > 0,
            "both workers served: {h}"
        );
    }
}

fn every_candidate_out_gets_no_healthy_channel(driver: Driver) {
    // Cooling: one channel, cooled for 20 s by its first 503 (Retry-After 7 is shorter).
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).health("failures = 1\ncooldown = \"20s\"");
    let relay = start(driver, &cfg);
    let r = relay.roundtrip(&chat("mock-status-503", false));
    assert_eq!(r.status, 503, "the upstream's own 503 first: {}", r.text());
    let before = mock.stats().requests;
    let r = relay.roundtrip(&chat("mock-status-503", false));
    let body = assert_error_shape(&r, 503, Some("no_healthy_channel"));
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        (15..=20).contains(&retry),
        "Retry-After is the cooldown left: {retry}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("mock-status-503"));
    assert_eq!(mock.stats().requests, before, "the upstream is not touched");
    drop(relay);

    // Disabled: the channel's only key refused, never rechecked: no Retry-After.
    let cfg = ConfigBuilder::new(mock.addr).health("key_recheck = \"0s\"");
    let relay = start(driver, &cfg);
    let r = relay.roundtrip(&chat("mock-status-401", false));
    assert_error_shape(&r, 502, Some("upstream_auth_failed"));
    let before = mock.stats().requests;
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_error_shape(&r, 503, Some("no_healthy_channel"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(mock.stats().requests, before);
    let ch = channel_health(&relay, "mock");
    assert_eq!(ch["state"], "disabled", "{ch}");
    let metrics = metrics_text(&relay);
    assert_eq!(
        metric_value(
            &metrics,
            "ringway_channel_state{channel=\"mock\",state=\"disabled\"}"
        ),
        Some(1.0)
    );
}
