//! The process log's formats (`[log] format`: text, logfmt, json), changed by a reload, and the
//! journald priority prefix when stderr is the journal. Real binary against the mock.

mod common;

use std::time::Duration;

use common::*;

both_drivers! {
    json_lines_then_logfmt_after_a_reload,
}

fn json_lines_then_logfmt_after_a_reload(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).section("[log]\nformat = \"json\"");
    let relay = start(driver, &cfg);
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    let text = relay.stderr_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(
            ["info", "warn", "error"].contains(&v["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(v["msg"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("listening on")), "{text}");

    // A reload switches the format for the lines after it.
    let before = lines.len();
    let logfmt = ConfigBuilder::new(mock.addr).section("[log]\nformat = \"logfmt\"");
    std::fs::write(&relay.config_path, logfmt.render(relay.addr.port())).unwrap();
    relay.signal(libc::SIGHUP);
    let mut after = Vec::new();
    let seen = wait_for(Duration::from_secs(10), || {
        after = relay
            .stderr_text()
            .lines()
            .skip(before)
            .map(String::from)
            .collect();
        after.iter().any(|l| l.contains("config reloaded"))
    });
    assert!(seen.is_some(), "{}", relay.stderr_text());
    let reloaded = after
        .iter()
        .find(|l| l.contains("config reloaded"))
        .unwrap();
    assert!(
        reloaded.starts_with("ts=")
            && reloaded.contains(" level=info msg=\"SIGHUP: config reloaded from "),
        "{reloaded}"
    );
}

#[test]
fn journald_gets_the_level_as_a_priority_prefix() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr);
    // A world-readable config file gives a WARN line at start, beside the INFO ones.
    let relay = start_env(Driver::IoUring, &cfg, &[("JOURNAL_STREAM", "8:12345")]);
    let text = relay.stderr_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("<6>") || l.starts_with("<4>") || l.starts_with("<3>")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("listening on")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("WARN")),
        "{text}"
    );
}
