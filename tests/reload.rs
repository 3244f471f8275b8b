//! SIGHUP reloads the config: tokens, channels and limits change for requests whose head
//! arrives after it, while in-flight requests finish under the config they started with,
//! pooled connections to unchanged upstreams stay, and counters go on. A bad config is
//! refused with a log line and the old one keeps serving. Real binary against the mock, both
//! io drivers.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    tokens_channels_and_limits_change_on_reload,
    a_bad_config_is_refused_and_the_old_one_serves,
    an_in_flight_stream_finishes_under_its_config,
    reload_under_load_loses_no_request,
}

fn chat_as(token: &str, model: &str) -> Vec<u8> {
    post_json(
        "/v1/chat/completions",
        Some(token),
        &[],
        &chat_body(model, false),
    )
}

fn token_requests(relay: &Relay, token: &str) -> f64 {
    metric_value(
        &metrics_text(relay),
        &format!("ringway_token_requests_total{{token=\"{token}\"}}"),
    )
    .unwrap_or(0.0)
}

fn tokens_channels_and_limits_change_on_reload(driver: Driver) {
    let mock = Mock::start();
    let before = ConfigBuilder::new(mock.addr)
        .default_channel(
            mock.addr,
            &["*"],
            "model_map = { \"alias\" = \"mock-fixed\" }",
        )
        .token("old", "sk-old", &["*"]);
    let relay = start(driver, &before);
    let port = relay.addr.port();
    assert_eq!(relay.roundtrip(&chat_as("sk-old", "alias")).status, 200);
    assert_eq!(relay.roundtrip(&chat_as("sk-new", "alias")).status, 401);
    for _ in 0..3 {
        assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    }
    let counted = token_requests(&relay, "default");
    assert_eq!(counted, 3.0);

    // "old" goes, "new" comes with rpm = 2, and the alias now maps to a failing behaviour.
    let after = ConfigBuilder::new(mock.addr)
        .default_channel(
            mock.addr,
            &["*"],
            "model_map = { \"alias\" = \"mock-status-503\" }",
        )
        .token("new", "sk-new", &["*"])
        .render(port)
        + "rpm = 2\n";
    let line = relay.reload_with(&after);
    assert!(line.contains("config reloaded"), "{line}");
    assert!(line.contains("generation 2"), "{line}");

    let r = relay.roundtrip(&chat_as("sk-old", "alias"));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
    assert_eq!(
        relay.roundtrip(&chat_as("sk-new", "mock-fixed")).status,
        200
    );
    assert_eq!(
        relay.roundtrip(&chat_as("sk-new", "mock-fixed")).status,
        200
    );
    let r = relay.roundtrip(&chat_as("sk-new", "mock-fixed"));
    assert_error_shape(&r, 429, Some("rate_limited"));
    assert_eq!(relay.roundtrip(&chat("alias", false)).status, 503);
    // Counters go on: the unchanged token's count was not reset.
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    assert_eq!(token_requests(&relay, "default"), counted + 2.0);
    assert_eq!(token_requests(&relay, "new"), 2.0);
    assert!(
        token_requests(&relay, "old") >= 1.0,
        "a removed token keeps its figures"
    );
    assert_eq!(relay.health()["status"], "ok");
}

fn a_bad_config_is_refused_and_the_old_one_serves(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr);
    let relay = start(driver, &cfg);
    let port = relay.addr.port();
    let good = cfg.render(port);

    let broken = good.replace("[server]\n", "[server]\nmax_inflight = \"lots\"\n");
    let line = relay.reload_with(&broken);
    assert!(line.contains("config reload refused"), "{line}");
    assert!(
        line.contains(&format!(
            "{}:2: server.max_inflight",
            relay.config_path.display()
        )),
        "the error names file, line and key: {line}"
    );
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);

    let moved = good.replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    let line = relay.reload_with(&moved);
    assert!(
        line.contains("config reload refused") && line.contains("server.listen changed"),
        "{line}"
    );
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);

    // A good one after the bad ones is taken.
    let line = relay.reload_with(&good);
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
}

fn an_in_flight_stream_finishes_under_its_config(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).token("leaving", "sk-leaving", &["*"]);
    let relay = start(driver, &cfg);
    let port = relay.addr.port();

    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let req = post_json(
        "/v1/chat/completions",
        Some("sk-leaving"),
        &[],
        &chat_body("mock-stream-6-200", true),
    );
    s.write_all(&req).unwrap();
    let (first, ok) = read_until(&mut s, b"tok0", Duration::from_secs(10));
    assert!(ok, "no first event: {}", String::from_utf8_lossy(&first));

    // The token goes and the channel now points at nothing.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let after = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel("gone", &dead, UPSTREAM_KEY, &["*"], "")
        .render(port);
    let line = relay.reload_with(&after);
    assert!(line.contains("config reloaded"), "{line}");

    let (rest, ok) = read_until(&mut s, b"0\r\n\r\n", Duration::from_secs(10));
    assert!(ok, "the stream did not end cleanly");
    let whole = [first, rest].concat();
    let text = String::from_utf8_lossy(&whole);
    for i in 0..6 {
        assert!(
            text.contains(&format!("tok{i}")),
            "event {i} missing: {text}"
        );
    }
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    drop(s);

    let r = relay.roundtrip(&chat_as("sk-leaving", "mock-fixed"));
    assert_error_shape(&r, 401, Some("invalid_api_key"));
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_error_shape(&r, 502, Some("upstream_connect_failed"));
}

fn reload_under_load_loses_no_request(driver: Driver) {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 120;
    let mock = Mock::start();
    let a = ConfigBuilder::new(mock.addr).workers(2);
    let relay = start(driver, &a);
    let port = relay.addr.port();
    let text_a = a.render(port);
    let text_b = a
        .clone()
        .token("extra", "sk-extra", &["mock-*"])
        .render(port)
        .replace("max_inflight = 500", "max_inflight = 400");
    let addr = relay.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            let answered = answered.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut client = Client::connect(addr);
                for i in 0..PER_CLIENT {
                    let stream = (i + c) % 3 == 0;
                    let model = if stream {
                        "mock-stream-3-20"
                    } else {
                        "mock-fixed"
                    };
                    client.send(&chat(model, stream));
                    let r = client.read_response();
                    if r.status != 200 {
                        return Err(format!("client {c} request {i}: {} {}", r.status, r.text()));
                    }
                    if stream && !r.text().contains("data: [DONE]") {
                        return Err(format!("client {c} request {i}: cut stream {}", r.text()));
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return Err("stopped".into());
                    }
                }
                Ok(PER_CLIENT)
            })
        })
        .collect();
    let start_at = Instant::now();
    let mut reloads = 0;
    while reloads < 8 && start_at.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(60));
        let text = if reloads % 2 == 0 { &text_b } else { &text_a };
        let line = relay.reload_with(text);
        assert!(line.contains("config reloaded"), "{line}");
        reloads += 1;
    }
    // The reloads came while the clients were busy.
    let by_then = answered.load(Ordering::Relaxed);
    assert!(
        by_then < CLIENTS * PER_CLIENT,
        "the load was over before the reloads"
    );
    eprintln!(
        "{by_then} of {} requests answered when the last reload was done",
        CLIENTS * PER_CLIENT
    );
    let mut done = 0;
    for c in clients {
        match c.join().expect("client thread") {
            Ok(n) => done += n,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                panic!("{e}\n{}", relay.stderr_text());
            }
        }
    }
    assert_eq!(done, CLIENTS * PER_CLIENT);
    assert_eq!(reloads, 8);
    let h = relay.health();
    assert_eq!(
        json_u64(&h, "requests_total"),
        (CLIENTS * PER_CLIENT) as u64,
        "{h}"
    );
    assert_eq!(
        token_requests(&relay, "default"),
        (CLIENTS * PER_CLIENT) as f64,
        "counters go on across reloads"
    );
    // The upstream is unchanged, so its pooled connections were kept: at most one per client
    // and worker, never a new set per reload.
    let opened = mock.stats().total_connections;
    assert!(
        opened <= (2 * CLIENTS) as u64,
        "{opened} upstream connections for {CLIENTS} clients over {reloads} reloads"
    );
}
