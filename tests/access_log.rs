//! The access log (`[log] access`): one JSON line per request with the fields the README
//! names, to a file that is reopened on SIGHUP (logrotate) or to stderr. Real binary against
//! the mock, both io drivers.

mod common;

use std::time::Duration;

use common::*;

both_drivers! {
    one_line_per_request_with_its_fields,
    the_file_is_reopened_on_sighup,
    lines_can_go_to_stderr,
}

fn config(mock: &Mock, access: &str) -> ConfigBuilder {
    ConfigBuilder::new(mock.addr)
        .section(&format!("[log]\naccess = {access:?}"))
        .default_channel(
            mock.addr,
            &["*"],
            "model_map = { \"alias\" = \"mock-fixed\" }",
        )
}

fn one_line_per_request_with_its_fields(driver: Driver) {
    let mock = Mock::start();
    let path = temp_path("access", "log");
    let relay = start(driver, &config(&mock, path.to_str().unwrap()));
    let fixed = relay.roundtrip(&chat("alias", false));
    assert_eq!(fixed.status, 200);
    let stream = relay.roundtrip(&chat("mock-stream-3-0", true));
    assert_eq!(stream.status, 200);
    let failed = relay.roundtrip(&chat("mock-status-500", false));
    assert_eq!(failed.status, 500);
    let refused = relay.roundtrip(&post_json(
        "/v1/chat/completions",
        Some("sk-nobody"),
        &[],
        &chat_body("mock-fixed", false),
    ));
    assert_eq!(refused.status, 401);
    // Health is not traffic: no line.
    relay.health();
    let got = log_lines(&path, 4);
    assert_eq!(got.len(), 4, "{got:#?}");

    let l = &got[0];
    assert_eq!(l["request_id"], fixed.request_id());
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/v1/chat/completions");
    assert_eq!(l["token"], "default");
    assert_eq!(l["channel"], "mock");
    assert_eq!(l["model"], "alias");
    assert_eq!(l["upstream_model"], "mock-fixed");
    assert_eq!(l["status"], 200);
    assert_eq!(l["outcome"], "ok");
    assert_eq!(l["attempts"], 1);
    // The mock's usage: 9 prompt and 7 completion tokens.
    assert_eq!(
        (l["prompt_tokens"].as_u64(), l["completion_tokens"].as_u64()),
        (Some(9), Some(7))
    );
    assert!(l["bytes_in"].as_u64().unwrap() > 100);
    assert!(l["bytes_out"].as_u64().unwrap() > fixed.body.len() as u64);
    let (ttfb, total) = (
        l["ttfb_ms"].as_f64().unwrap(),
        l["total_ms"].as_f64().unwrap(),
    );
    assert!(ttfb > 0.0 && ttfb <= total, "{ttfb} {total}");
    assert!(l["time"].as_str().unwrap().ends_with('Z'));

    let l = &got[1];
    assert_eq!(l["request_id"], stream.request_id());
    assert_eq!(
        (l["status"].as_u64(), l["outcome"].as_str()),
        (Some(200), Some("ok"))
    );
    assert!(l["bytes_out"].as_u64().unwrap() > stream.body.len() as u64);

    let l = &got[2];
    assert_eq!(
        (l["status"].as_u64(), l["outcome"].as_str()),
        (Some(500), Some("upstream_error"))
    );
    let l = &got[3];
    assert_eq!(
        (l["status"].as_u64(), l["outcome"].as_str()),
        (Some(401), Some("rejected"))
    );
    assert!(l["token"].is_null() && l["channel"].is_null() && l["model"].is_null());
    assert_eq!(json_u64(&relay.health(), "access_log_dropped"), 0);
    let _ = std::fs::remove_file(&path);
}

fn the_file_is_reopened_on_sighup(driver: Driver) {
    let mock = Mock::start();
    let path = temp_path("access-rotate", "log");
    let rotated = path.with_extension("log.1");
    let relay = start(driver, &config(&mock, path.to_str().unwrap()));
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    log_lines(&path, 1);
    // What logrotate does: rename, then tell the process.
    std::fs::rename(&path, &rotated).unwrap();
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(relay.pid() as i32, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    let second = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(second.status, 200, "the relay survives SIGHUP");
    let fresh = log_lines(&path, 1);
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["request_id"], second.request_id());
    assert_eq!(
        log_lines(&rotated, 1).len(),
        1,
        "the old file kept its line"
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
}

fn lines_can_go_to_stderr(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &config(&mock, "stderr"));
    let r = relay.roundtrip(&chat("mock-fixed", false));
    let id = r.request_id().to_string();
    let found = wait_for(Duration::from_secs(5), || {
        relay
            .stderr_text()
            .lines()
            .any(|l| l.starts_with('{') && l.contains(&format!("\"request_id\":\"{id}\"")))
    });
    assert!(found.is_some(), "{}", relay.stderr_text());
}
