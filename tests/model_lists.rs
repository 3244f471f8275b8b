//! `/v1/models` for channels whose `models` hold a glob: ringway asks the upstream's own
//! `/v1/models` (at start, then every `server.models_refresh`, in a background thread) and lists
//! what matches the channel's globs and the token's allow-list. Real binary against the mock,
//! whose `/v1/models` lists its behaviour names.

mod common;

use std::time::Duration;

use common::*;

both_drivers! {
    glob_channels_list_what_their_upstream_lists,
    a_failing_list_keeps_exact_names_and_warns,
    lists_refresh_in_the_background_only,
}

fn model_ids(relay: &Relay, token: &str) -> Vec<String> {
    let auth = bearer(token);
    let r = relay.roundtrip(&get("/v1/models", &[(auth.0, &auth.1)]));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    v["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

fn wait_for_listed(relay: &Relay, token: &str, id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let found = wait_for(Duration::from_secs(10), || {
        ids = model_ids(relay, token);
        ids.iter().any(|m| m == id)
    });
    assert!(
        found.is_some(),
        "{id} never listed: {ids:?}\n{}",
        relay.stderr_text()
    );
    ids
}

fn glob_channels_list_what_their_upstream_lists(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .server("models_refresh = \"10m\"")
        .channel(
            "streams",
            &mock.base_url(),
            UPSTREAM_KEY,
            &["mock-stream*", "exact-one"],
            "",
        )
        .channel("plain", &mock.base_url(), UPSTREAM_KEY, &["gpt-exact"], "")
        .token("narrow", "sk-narrow", &["mock-stream-5-0", "gpt-*"]);
    let relay = start(driver, &cfg);

    let ids = wait_for_listed(&relay, TOKEN, "mock-stream-5-0");
    // The upstream lists every mock behaviour; only what the glob matches is shown, with the
    // exact names of both channels.
    let upstream = mock_direct(mock.addr, &get("/v1/models", &[])).json();
    let mut expected: Vec<String> = upstream["data"]
        .as_array()
        .expect("the mock lists its models")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .filter(|id| id.starts_with("mock-stream"))
        .map(String::from)
        .chain(["exact-one".to_string(), "gpt-exact".to_string()])
        .collect();
    expected.sort();
    assert!(expected.len() >= 4, "{upstream}");
    assert_eq!(ids, expected);
    // A token sees only what its allow-list allows.
    let narrow = model_ids(&relay, "sk-narrow");
    assert_eq!(narrow, vec!["gpt-exact", "mock-stream-5-0"]);
    // The listed ids are owned by the channel that serves them.
    let auth = bearer(TOKEN);
    let r = relay.roundtrip(&get("/v1/models", &[(auth.0, &auth.1)]));
    let v = r.json();
    let owner = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "mock-stream-5-100")
        .map(|m| m["owned_by"].clone());
    assert_eq!(owner, Some(serde_json::json!("streams")), "{v}");
    // The first good fetch is logged.
    assert!(
        relay
            .stderr_text()
            .contains("channel 'streams': its upstream lists"),
        "{}",
        relay.stderr_text()
    );
}

fn a_failing_list_keeps_exact_names_and_warns(driver: Driver) {
    let mock = Mock::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .server("models_refresh = \"10m\"")
        .channel(
            "gone",
            &dead,
            UPSTREAM_KEY,
            &["gpt-4o*", "gpt-exact"],
            "timeouts = { connect = \"1s\" }",
        )
        // An upstream that answers its model list with an error.
        .channel(
            "refusing",
            &format!("{}/refuse", mock.base_url()),
            UPSTREAM_KEY,
            &["o1*"],
            "",
        );
    let relay = start(driver, &cfg);
    let found = wait_for(Duration::from_secs(10), || {
        let e = relay.stderr_text();
        e.contains("channel 'gone': fetching its upstream's model list failed")
            && e.contains("channel 'refusing': fetching its upstream's model list failed")
    });
    assert!(found.is_some(), "{}", relay.stderr_text());
    assert_eq!(model_ids(&relay, TOKEN), vec!["gpt-exact"]);
    // The relay still serves: a chat request for a glob model goes upstream as ever.
    let r = relay.roundtrip(&chat("o1-mini", false));
    assert_eq!(r.status, 404, "{}", r.text()); // the mock has no /refuse/chat/completions
}

fn lists_refresh_in_the_background_only(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(mock.addr, &["mock-*"], "")
        .server("models_refresh = \"1s\"");
    let relay = start(driver, &cfg);
    wait_for_listed(&relay, TOKEN, "mock-fixed");
    // Refreshed about once a second, whether or not anyone asks.
    let before = mock.stats().requests;
    let grew = wait_for(Duration::from_secs(10), || {
        mock.stats().requests >= before + 2
    });
    assert!(grew.is_some(), "no refresh: {:?}", mock.stats());

    // A listing request never reaches the upstream: the count moves only by the refreshes.
    let mock2 = Mock::start();
    let cfg = ConfigBuilder::new(mock2.addr)
        .default_channel(mock2.addr, &["mock-*"], "")
        .server("models_refresh = \"0s\"");
    let relay2 = start(driver, &cfg);
    wait_for_listed(&relay2, TOKEN, "mock-fixed");
    let after_fetch = mock2.stats().requests;
    assert_eq!(after_fetch, 1, "one fetch at start");
    for _ in 0..5 {
        model_ids(&relay2, TOKEN);
    }
    for _ in 0..10 {
        let r = relay2.roundtrip(&chat("mock-fixed", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mock2.stats().requests, after_fetch + 10, "only the chats");
    drop(relay);
}
