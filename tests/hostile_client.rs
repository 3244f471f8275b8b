//! Hostile peers on the client side: framing the relay must refuse (RFC 9112), bodies that
//! trickle in, and HEAD / wrong-method answers, against the real binary on both io drivers.
//! Each refusal is checked for its status and code, for the connection being closed, and for
//! the upstream (mock) having received nothing.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    transfer_codings_other_than_chunked_are_501_and_closed,
    transfer_encoding_on_http_1_0_is_refused,
    bare_lf_request_heads_are_refused,
    chunk_lines_are_crlf_only_and_sizes_hex_only,
    a_trickling_body_gets_408_and_holds_no_inflight_slot,
    head_requests_get_no_body_and_405_carries_allow,
}

/// Sends `raw` on a fresh connection; returns the response and whether the relay closed after.
fn refused(relay: &Relay, raw: &[u8]) -> (Response, bool) {
    let mut c = relay.client();
    c.send(raw);
    let r = c.read_final_response();
    let closed = c.closed_within(Duration::from_secs(3));
    (r, closed)
}

fn transfer_codings_other_than_chunked_are_501_and_closed(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let body = chat_body("mock-fixed", false);
    for te in ["gzip, chunked", "gzip", "identity", "chunked, chunked"] {
        let raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: {te}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let (r, closed) = refused(&relay, raw.as_bytes());
        assert_error_shape(&r, 501, Some("unsupported_transfer_encoding"));
        assert!(closed, "{te}: the connection must close");
    }
    assert_eq!(mock.stats().requests, 0, "nothing reached the upstream");
}

fn transfer_encoding_on_http_1_0_is_refused(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let body = chat_body("mock-fixed", false);
    // Without a Content-Length, so only the HTTP version makes the coding wrong.
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let (r, closed) = refused(&relay, raw.as_bytes());
    assert_error_shape(&r, 400, Some("bad_request"));
    assert!(closed);
    assert_eq!(mock.stats().requests, 0);
}

fn bare_lf_request_heads_are_refused(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let body = chat_body("mock-fixed", false);
    for eol in ["\n", "\r\n"] {
        // One bare LF is enough: the last header line here, or every line.
        let raw = format!(
            "POST /v1/chat/completions HTTP/1.1{eol}Host: r{eol}Authorization: Bearer {TOKEN}{eol}Content-Length: {}\n\r\n{body}",
            body.len()
        );
        let (r, closed) = refused(&relay, raw.as_bytes());
        assert_error_shape(&r, 400, Some("bad_request"));
        assert!(r.text().contains("CRLF"), "{}", r.text());
        assert!(closed);
    }
    assert_eq!(mock.stats().requests, 0);
}

fn chunk_lines_are_crlf_only_and_sizes_hex_only(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let body = chat_body("mock-fixed", false);
    let n = body.len();
    let bad = [
        format!("{n:x}\n{body}\r\n0\r\n\r\n"),
        format!("{n:x}\r\n{body}\n0\r\n\r\n"),
        format!("{n:x};ext=1\n{body}\r\n0\r\n\r\n"),
        format!("{n:x} zz\r\n{body}\r\n0\r\n\r\n"),
        format!("{n:x}\r\n{body}\r\n0\r\n\n"),
    ];
    for chunked in &bad {
        let raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        );
        let (r, closed) = refused(&relay, raw.as_bytes());
        assert_error_shape(&r, 400, Some("bad_request"));
        assert!(closed, "{chunked:?}");
    }
    assert_eq!(mock.stats().requests, 0);
    // The same body, framed properly, goes through.
    let good = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{n:x} ;a=b\r\n{body}\r\n0\r\n\r\n"
    );
    let r = relay.roundtrip(good.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

fn a_trickling_body_gets_408_and_holds_no_inflight_slot(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .server("max_inflight = 1")
        .section("[timeouts]\nclient_body = \"10s\"\nclient_body_total = \"1500ms\"");
    let relay = start(driver, &cfg);
    // Two tricklers: never silent for client_body, so only the whole-body bound can end them.
    let trickle = || {
        let addr = relay.addr;
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n"
            );
            c.send(head.as_bytes());
            let started = Instant::now();
            let mut sent = 0;
            while sent < 1000 && started.elapsed() < Duration::from_secs(8) {
                if c.stream.write_all(b"{").is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (c.read_final_response(), started.elapsed())
        })
    };
    let tricklers = [trickle(), trickle()];
    std::thread::sleep(Duration::from_millis(300));
    // With the only inflight slot free, a whole request is served while both trickle.
    for _ in 0..3 {
        let r = relay.roundtrip(&chat("mock-fixed", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for t in tricklers {
        let (r, took) = t.join().expect("trickler");
        assert_error_shape(&r, 408, Some("client_body_timeout"));
        assert!(r.closes());
        assert!(
            took < Duration::from_secs(5),
            "ended by client_body_total, not by the trickle running out: {took:?}"
        );
    }
    let h = relay.health();
    assert_eq!(json_u64(&h, "timeouts.client_body"), 2, "{h}");
    assert_eq!(json_u64(&h, "overloaded"), 0, "{h}");
    assert_eq!(mock.stats().requests, 3);
}

fn head_requests_get_no_body_and_405_carries_allow(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let mut c = relay.client();
    // A HEAD answer has a head only: the pipelined GET behind it must parse cleanly.
    let mut both = get("/api/monitor/health", &[]);
    both.splice(0..3, b"HEAD".iter().copied());
    both.extend_from_slice(&get("/metrics", &[]));
    c.send(&both);
    let head = c.read_response_for_head();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").is_some_and(|v| v != "0"));
    let metrics = c.read_final_response();
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("ringway_requests_total"));

    for (method, path, allow) in [
        ("HEAD", "/v1/chat/completions", "POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/api/monitor/health", "GET, HEAD"),
    ] {
        let mut raw = get(path, &[("authorization", &format!("Bearer {TOKEN}"))]);
        raw.splice(0..3, method.bytes());
        let mut c = relay.client();
        c.send(&raw);
        let r = if method == "HEAD" {
            c.read_response_for_head()
        } else {
            c.read_final_response()
        };
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        if method == "HEAD" {
            assert!(r.body.is_empty());
        } else {
            assert_error_shape(&r, 405, Some("method_not_allowed"));
        }
    }
    assert_eq!(mock.stats().requests, 0);
}
