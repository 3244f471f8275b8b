//! Usage accounting, exact and streaming: the usage the access log records matches what the
//! mock upstream reported, for fixed and streamed answers, whether or not the client asked for
//! `stream_options.include_usage`; the relay asks the upstream for it when the client did not,
//! and keeps the extra usage-only event from that client; when no usage arrives (the client
//! left, the upstream cut the stream or ignores include_usage) the figure is an estimate,
//! nonzero and marked. Real binary against the mock, access log to a file, both io drivers.
//!
//! The mock's figures (see `ringway_mock::MODELS_DOC`): a fixed chat completion reports 9
//! prompt and 7 completion tokens; a stream asked for usage reports 9 prompt tokens (4 of them
//! cached) and one completion token per content event.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

both_drivers! {
    fixed_answers_are_accounted_from_their_usage,
    a_client_that_did_not_ask_never_sees_the_usage_event,
    a_client_that_asked_sees_the_usage_event_once,
    the_upstream_is_asked_for_usage_and_nothing_else_changes,
    a_client_leaving_mid_stream_is_estimated,
    an_upstream_cut_is_estimated,
    an_upstream_ignoring_include_usage_is_estimated,
}

/// A relay with the access log in a fresh file; `alias` is renamed to `mock-echo`.
fn relay(driver: Driver, mock: &Mock, stem: &str) -> (Relay, PathBuf) {
    let path = temp_path(stem, "log");
    let cfg = ConfigBuilder::new(mock.addr)
        .section(&format!("[log]\naccess = {:?}", path.to_str().unwrap()))
        .default_channel(
            mock.addr,
            &["*"],
            "model_map = { \"alias\" = \"mock-echo\" }",
        );
    (start(driver, &cfg), path)
}

/// (prompt, completion, cached, total, estimated) as the log line has them.
fn tokens(line: &serde_json::Value) -> (u64, u64, u64, u64, bool) {
    let n = |k: &str| {
        line[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {line}"))
    };
    (
        n("prompt_tokens"),
        n("completion_tokens"),
        n("cached_tokens"),
        n("total_tokens"),
        line["tokens_estimated"]
            .as_bool()
            .unwrap_or_else(|| panic!("tokens_estimated missing in {line}")),
    )
}

/// The SSE events of a de-chunked body, without their blank lines.
fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Events with `"choices":[]` (the usage-only event).
fn usage_events(events: &[String]) -> Vec<&String> {
    events
        .iter()
        .filter(|e| e.replace(' ', "").contains("\"choices\":[]"))
        .collect()
}

fn post_chat(body: &str) -> Vec<u8> {
    post_json("/v1/chat/completions", Some(TOKEN), &[], body)
}

fn fixed_answers_are_accounted_from_their_usage(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-fixed");
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200);
    let completion = post_json(
        "/v1/completions",
        Some(TOKEN),
        &[],
        r#"{"model":"mock-fixed","prompt":"Hello"}"#,
    );
    assert_eq!(relay.roundtrip(&completion).status, 200);
    let lines = log_lines(&path, 2);
    for l in &lines {
        assert_eq!(tokens(l), (9, 7, 0, 16, false), "{l}");
    }
    let _ = std::fs::remove_file(&path);
}

fn a_client_that_did_not_ask_never_sees_the_usage_event(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-unasked");
    // Chat and text completions, 3 and 6 events, several requests on one connection.
    let mut c = relay.client();
    for (path, model, n) in [
        ("/v1/chat/completions", "mock-stream-3-0", 3u64),
        ("/v1/completions", "mock-stream-6-0", 6),
        ("/v1/chat/completions", "mock-stream-3-0", 3),
    ] {
        let body = format!(r#"{{"model":"{model}","stream":true,"prompt":"x","messages":[]}}"#);
        c.send(&post_json(path, Some(TOKEN), &[], &body));
        let r = c.read_response();
        assert_eq!(r.status, 200);
        let ev = events(&r.body);
        assert!(
            usage_events(&ev).is_empty(),
            "usage event reached the client: {ev:#?}"
        );
        assert_eq!(ev.len() as u64, n + 1, "{ev:#?}");
        assert_eq!(ev.last().map(String::as_str), Some("data: [DONE]"));
        // The upstream's own `"usage":null` in each content event passes through.
        assert!(
            ev[..n as usize]
                .iter()
                .all(|e| e.contains("\"usage\":null")),
            "{ev:#?}"
        );
    }
    let lines = log_lines(&path, 3);
    assert_eq!(tokens(&lines[0]), (9, 3, 4, 12, false), "{}", lines[0]);
    assert_eq!(tokens(&lines[1]), (9, 6, 4, 15, false), "{}", lines[1]);
    assert_eq!(tokens(&lines[2]), (9, 3, 4, 12, false), "{}", lines[2]);
    assert!(lines.iter().all(|l| l["outcome"] == "ok"), "{lines:#?}");
    let _ = std::fs::remove_file(&path);
}

fn a_client_that_asked_sees_the_usage_event_once(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-asked");
    let body = r#"{"model":"mock-stream-4-0","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let r = relay.roundtrip(&post_chat(body));
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    let usage = usage_events(&ev);
    assert_eq!(usage.len(), 1, "{ev:#?}");
    assert_eq!(ev.len(), 4 + 2, "{ev:#?}");
    assert_eq!(&ev[4], usage[0], "the usage event comes last before [DONE]");
    assert_eq!(ev[5], "data: [DONE]");
    // Untouched: exactly the mock's own bytes for the same request.
    let direct = mock_direct(
        mock.addr,
        &post_json("/v1/chat/completions", None, &[], body),
    );
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        String::from_utf8_lossy(&direct.body)
    );
    let l = &log_lines(&path, 1)[0];
    assert_eq!(tokens(l), (9, 4, 4, 13, false), "{l}");
    let _ = std::fs::remove_file(&path);
}

fn the_upstream_is_asked_for_usage_and_nothing_else_changes(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-echo");
    let echoed = |body: &str| -> serde_json::Value {
        let r = relay.roundtrip(&post_chat(body));
        assert_eq!(r.status, 200, "{}", r.text());
        let echo: serde_json::Value = r.json();
        let sent = echo["body"].as_str().unwrap().to_owned();
        serde_json::from_str(&sent)
            .unwrap_or_else(|e| panic!("upstream body not JSON ({e}): {sent}"))
    };
    // A stream without stream_options: added. The rename happens in the same body.
    let sent = echoed(
        r#"{"model":"alias","stream":true,"messages":[{"role":"user","content":"{\"stream\":false}"}]}"#,
    );
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(sent["model"], "mock-echo");
    assert_eq!(sent["messages"][0]["content"], "{\"stream\":false}");
    // include_usage false becomes true; other options stay.
    let sent = echoed(
        r#"{"model":"mock-echo","stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
    );
    assert_eq!(
        sent["stream_options"],
        serde_json::json!({"include_usage": true, "x": 1})
    );
    // Not a stream, or a stream that asked: byte for byte.
    for body in [
        r#"{"model":"mock-echo","stream":false,"messages":[{"role":"user","content":"hi","stream":true}]}"#,
        r#"{"model":"mock-echo", "stream": true, "stream_options": {"include_usage": true}}"#,
    ] {
        let r = relay.roundtrip(&post_chat(body));
        let echo: serde_json::Value = r.json();
        assert_eq!(echo["body"], body);
    }
    let _ = std::fs::remove_file(&path);
}

/// Sends `body` on a raw connection and reads until the first content event arrived.
fn stream_then_leave(relay: &Relay, body: &str) {
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.write_all(&post_chat(body)).unwrap();
    let (got, seen) = read_until(&mut s, b"tok0", Duration::from_secs(10));
    assert!(seen, "no first event: {}", String::from_utf8_lossy(&got));
    drop(s);
}

fn a_client_leaving_mid_stream_is_estimated(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-gone");
    let body = r#"{"model":"mock-stream-40-100","stream":true,"messages":[{"role":"user","content":"Tell me a long story"}]}"#;
    stream_then_leave(&relay, body);
    // The relay notices at its next write (or by watching the idle client).
    let l = &log_lines(&path, 1)[0];
    assert_eq!(l["outcome"], "client_gone", "{l}");
    let (prompt, completion, cached, total, estimated) = tokens(l);
    assert!(estimated, "{l}");
    assert_eq!(prompt, body.len() as u64 / 4, "{l}");
    // At least the first event's "tok0", at most the 40 events' 4-5 text bytes each.
    assert!((1..=50).contains(&completion), "{l}");
    assert_eq!((cached, total), (0, prompt + completion));
    let _ = std::fs::remove_file(&path);
}

fn an_upstream_cut_is_estimated(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-cut");
    let body = r#"{"model":"mock-reset-stream","stream":true,"messages":[]}"#;
    let r = relay.roundtrip(&post_chat(body));
    assert_eq!(r.status, 200);
    assert!(sse_error_event(&r.body).is_some(), "{}", r.text());
    let l = &log_lines(&path, 1)[0];
    assert_ne!(l["outcome"], "ok", "{l}");
    // Two events reached the client: "tok0" and "tok1", 8 text bytes.
    assert_eq!(
        tokens(l),
        (body.len() as u64 / 4, 2, 0, body.len() as u64 / 4 + 2, true),
        "{l}"
    );
    let _ = std::fs::remove_file(&path);
}

fn an_upstream_ignoring_include_usage_is_estimated(driver: Driver) {
    let mock = Mock::start();
    let (relay, path) = relay(driver, &mock, "usage-ignored");
    let body = r#"{"model":"mock-stream-nousage-4-0","stream":true,"messages":[]}"#;
    let r = relay.roundtrip(&post_chat(body));
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert_eq!(ev.len(), 5, "{ev:#?}");
    let l = &log_lines(&path, 1)[0];
    assert_eq!(l["outcome"], "ok", "{l}");
    // "tok0" .. "tok3": 16 text bytes, 4 tokens.
    assert_eq!(
        tokens(l),
        (body.len() as u64 / 4, 4, 0, body.len() as u64 / 4 + 4, true),
        "{l}"
    );
    let _ = std::fs::remove_file(&path);
}
