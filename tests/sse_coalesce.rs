//! SSE coalescing (`[server] sse_coalesce`): after an event stream relays a chunk it lets the
//! next ones gather for the hold before reading again. These tests check what that may and may
//! not change: bytes never change, the first event is never held, events further apart than the
//! hold each go out alone, close ones are merged, and a hold never outlives a deadline.
//! Every test runs on io_uring and on epoll.

mod common;

use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    close_events_are_gathered_but_the_first_is_not_held,
    events_further_apart_than_the_hold_go_out_alone,
    zero_hold_forwards_every_event_alone,
    hold_longer_than_stream_idle_is_skipped,
}

/// Index of the client chunk that carried `needle`.
fn chunk_with(r: &Response, needle: &str) -> usize {
    r.chunks
        .iter()
        .position(|(_, data)| data.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or_else(|| panic!("no chunk carried {needle:?}: {:?}", r.text()))
}

fn close_events_are_gathered_but_the_first_is_not_held(driver: Driver) {
    let mock = Mock::start();
    let relay = start(
        driver,
        &ConfigBuilder::new(mock.addr).server(r#"sse_coalesce = "300ms""#),
    );
    // Ten events 30 ms apart: about 270 ms of stream.
    let req = chat("mock-stream-10-30", true);
    // The relay asks the upstream for usage on the client's behalf (see usage_accounting).
    let direct = mock_direct(mock.addr, &chat_asking_usage("mock-stream-10-30"));
    let mut c = relay.client();
    let sent = Instant::now();
    c.send(&req);
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert_eq!(
        r.text(),
        without_usage_events(&direct.text()),
        "coalescing changed the bytes"
    );

    let first_at = r.chunks[chunk_with(&r, "tok0")].0.duration_since(sent);
    assert!(
        first_at < Duration::from_millis(250),
        "first event held back: arrived after {first_at:?}"
    );
    // Without coalescing each event would be its own chunk (11 with [DONE]); with a 300 ms
    // hold the nine later events gather into one or two writes.
    assert!(
        r.chunks.len() <= 4,
        "{} client chunks for 11 events: not gathered",
        r.chunks.len()
    );
    assert_ne!(
        chunk_with(&r, "tok0"),
        chunk_with(&r, "tok1"),
        "the first event waited for the second"
    );
    let took = r.done_at.duration_since(sent);
    assert!(
        took < Duration::from_millis(2000),
        "stream took {took:?}: holds are not bounded"
    );
}

fn events_further_apart_than_the_hold_go_out_alone(driver: Driver) {
    let mock = Mock::start();
    // The default hold (5 ms) against events 80 ms apart.
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let r = relay.roundtrip(&chat("mock-stream-5-80", true));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let at: Vec<usize> = (0..5).map(|i| chunk_with(&r, &format!("tok{i}"))).collect();
    for pair in at.windows(2) {
        assert!(pair[0] < pair[1], "events merged: chunk indexes {at:?}");
    }
    let arrivals: Vec<Instant> = at.iter().map(|&i| r.chunks[i].0).collect();
    for pair in arrivals.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(40),
            "events 80 ms apart arrived {gap:?} apart"
        );
    }
}

fn zero_hold_forwards_every_event_alone(driver: Driver) {
    let mock = Mock::start();
    let relay = start(
        driver,
        &ConfigBuilder::new(mock.addr).server(r#"sse_coalesce = "0ms""#),
    );
    let r = relay.roundtrip(&chat("mock-stream-6-40", true));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let at: Vec<usize> = (0..6).map(|i| chunk_with(&r, &format!("tok{i}"))).collect();
    for pair in at.windows(2) {
        assert!(pair[0] < pair[1], "events merged: chunk indexes {at:?}");
    }
}

fn hold_longer_than_stream_idle_is_skipped(driver: Driver) {
    let mock = Mock::start();
    // Events every 100 ms keep a 300 ms stream_idle satisfied; a 1 s hold would starve it.
    let relay = start(
        driver,
        &ConfigBuilder::new(mock.addr)
            .server(r#"sse_coalesce = "1s""#)
            .section("[timeouts]\nstream_idle = \"300ms\"\n"),
    );
    let r = relay.roundtrip(&chat("mock-stream-8-100", true));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert!(
        !r.text().contains("stream_idle_timeout"),
        "stream cut: {:?}",
        r.text()
    );
    assert!(r.body.ends_with(b"data: [DONE]\n\n"), "{:?}", r.text());
    assert_eq!(r.text().matches("chat.completion.chunk").count(), 8);
}
