//! The monitor, end to end: `/api/monitor/health` carries every contract field (whole process
//! and per worker) with consistent values, its `status` and the periodic log line follow the
//! `warn_inflight` / `alert_inflight` thresholds, and `/metrics` is Prometheus text whose
//! counters, gauges and histograms move with traffic. Every test runs on io_uring and epoll.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    health_has_every_contract_field,
    health_passes_only_once_every_worker_is_up,
    status_and_log_level_follow_thresholds,
    metrics_are_prometheus_text_and_move_with_traffic,
    unanswered_requests_are_not_counted_as_1xx,
    channel_latency_shows_the_slower_channel,
    channel_latency_counts_only_the_channel_that_answered,
}

/// Whole-number counters and gauges every health object and every per-worker object carries.
const COUNTERS: [&str; 5] = [
    "inflight_requests",
    "client_connections",
    "upstream_connections_active",
    "upstream_connections_idle",
    "requests_total",
];

fn wait_health(
    relay: &Relay,
    within: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut h = relay.health();
    let ok = wait_for(within, || {
        h = relay.health();
        f(&h)
    });
    assert!(ok.is_some(), "{what} not reached within {within:?}: {h}");
    h
}

// ---------------------------------------------------------------------------------------------
// health fields

/// Each worker binds its own SO_REUSEPORT listener, so the first worker up can take a health
/// check while the others are still building their runtimes. From the moment the port first
/// answers, health must say 503 `"starting"` until the whole process is up, and its first 200
/// must show every worker running and the fd baseline taken (a load balancer that saw 200
/// earlier would send traffic to a half-started relay). Started five times; the window is a
/// race, so a run may well see no 503 at all, but no run may see an early 200.
fn health_passes_only_once_every_worker_is_up(driver: Driver) {
    let mock = Mock::start();
    let mut starting_answers = 0;
    for _ in 0..5 {
        let port = free_port();
        let config = write_temp(
            "startup",
            "toml",
            &ConfigBuilder::new(mock.addr).workers(2).render(port),
        );
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in driver.env() {
            cmd.env(k, v);
        }
        let _child = KillOnDrop(cmd.spawn().expect("spawn ringway"));
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let give_up = Instant::now() + Duration::from_secs(10);
        let h = loop {
            assert!(Instant::now() < give_up, "no 200 from health within 10 s");
            let Ok(mut c) = Client::try_connect(addr) else {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            };
            c.set_read_timeout(Duration::from_secs(2));
            c.send(&get("/api/monitor/health", &[("connection", "close")]));
            let r = c.read_response();
            let h = r.json();
            if r.status == 503 {
                assert_eq!(h["status"], "starting", "{h}");
                starting_answers += 1;
                continue;
            }
            assert_eq!(r.status, 200, "{h}");
            break h;
        };
        assert_ne!(h["status"], "starting", "{h}");
        assert_eq!(h["io_driver"], driver.health_name(), "{h}");
        let per = h["per_worker"].as_array().expect("per_worker array");
        assert_eq!(per.len(), 2, "{h}");
        for w in per {
            assert_eq!(w["io_driver"], driver.health_name(), "{h}");
        }
        assert!(json_u64(&h, "baseline_fds") > 0, "{h}");
        let _ = std::fs::remove_file(&config);
    }
    eprintln!("health answered 503 starting {starting_answers} times over 5 startups");
}

fn assert_counters(obj: &serde_json::Value, what: &str) {
    for f in COUNTERS {
        assert!(obj[f].is_u64(), "{what}: {f} missing or not a count: {obj}");
    }
    let t = obj["timeouts"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: timeouts is not an object: {obj}"));
    for l in TIMEOUT_LAYERS {
        assert!(
            t.get(l).is_some_and(|v| v.is_u64()),
            "{what}: timeouts.{l} missing: {obj}"
        );
    }
}

fn health_has_every_contract_field(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .workers(2)
        .section("[timeouts]\nresponse_header = \"300ms\"\n");
    let relay = start(driver, &cfg);
    // Health passes only once every worker is up, so the first 200 already shows both.
    let h = relay.health();
    let per = h["per_worker"].as_array().expect("per_worker array");
    assert!(
        per.iter().all(|w| w["io_driver"] == driver.health_name()),
        "{h}"
    );

    assert_eq!(h["status"], "ok", "{h}");
    assert!(h["uptime_seconds"].is_u64(), "uptime_seconds: {h}");
    assert_eq!(h["workers"], 2, "{h}");
    assert_eq!(h["io_driver"], driver.health_name(), "{h}");
    for f in ["tasks_pending", "open_fds", "rss_bytes"] {
        assert!(h[f].is_u64(), "{f} missing or not a count: {h}");
    }
    assert!(json_u64(&h, "open_fds") > 2, "open_fds: {h}");
    assert!(json_u64(&h, "rss_bytes") > 1024 * 1024, "rss_bytes: {h}");
    assert_eq!(json_u64(&h, "tasks_pending"), 0, "{h}");
    assert_counters(&h, "health");
    let per = h["per_worker"]
        .as_array()
        .unwrap_or_else(|| panic!("per_worker is not an array: {h}"));
    assert_eq!(per.len(), 2, "one per_worker entry per worker: {h}");
    for (i, w) in per.iter().enumerate() {
        assert_counters(w, &format!("per_worker[{i}]"));
    }

    // Traffic: 1 response_header timeout, 6 fine requests, on fresh connections (spread over
    // the workers by the kernel).
    let r = relay.roundtrip(&chat("mock-stall-head-5000", false));
    assert_eq!(r.status, 504, "{:?}", r.text());
    for i in 0..6 {
        let r = relay.roundtrip(&chat("mock-fixed", false));
        assert_eq!(r.status, 200, "request {i}: {:?}", r.text());
    }

    // Three idle client connections are counted.
    let idle: Vec<Client> = (0..3).map(|_| relay.client()).collect();
    let h = wait_health(&relay, Duration::from_secs(2), "3 idle clients", |h| {
        json_u64(h, "client_connections") >= 4
    });
    assert_eq!(json_u64(&h, "requests_total"), 7, "{h}");
    assert_eq!(json_u64(&h, "timeouts.response_header"), 1, "{h}");
    assert_eq!(json_u64(&h, "inflight_requests"), 0, "{h}");
    assert_eq!(json_u64(&h, "upstream_connections_active"), 0, "{h}");
    let pooled = json_u64(&h, "upstream_connections_idle");
    assert!((1..=2).contains(&pooled), "idle pool: {h}");
    let mock_open = mock.stats().open_connections;
    assert_eq!(
        mock_open, pooled,
        "the mock's open connections are the relay's idle pool: {h}"
    );

    // The whole-process figures are the sums of the per-worker ones.
    let per = h["per_worker"].as_array().expect("per_worker");
    for f in COUNTERS {
        let sum: u64 = per.iter().map(|w| json_u64(w, f)).sum();
        assert_eq!(sum, json_u64(&h, f), "{f}: per_worker does not sum up: {h}");
    }
    for l in TIMEOUT_LAYERS {
        let key = format!("timeouts.{l}");
        let sum: u64 = per.iter().map(|w| json_u64(w, &key)).sum();
        assert_eq!(
            sum,
            json_u64(&h, &key),
            "{key}: per_worker does not sum: {h}"
        );
    }

    drop(idle);
    wait_health(&relay, Duration::from_secs(2), "idle clients gone", |h| {
        json_u64(h, "client_connections") <= 1
    });
    // Uptime advances.
    let up = json_u64(&h, "uptime_seconds");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(json_u64(&relay.health(), "uptime_seconds") > up);
}

// ---------------------------------------------------------------------------------------------
// status thresholds and the health log line

/// Health log lines as (level, text), from the relay's captured stderr.
fn health_lines(relay: &Relay) -> Vec<(String, String)> {
    relay
        .stderr_text()
        .lines()
        .filter(|l| l.contains("health: status="))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let _ts = parts.next();
            let level = parts.next().unwrap_or_default().to_string();
            (level, l.to_string())
        })
        .collect()
}

/// Waits (bounded) for a new health line (after the first `seen` ones) with `level` and
/// `status=<status>`.
fn wait_log(relay: &Relay, seen: usize, level: &str, status: &str) -> usize {
    let needle = format!("status={status} ");
    let found = wait_for(Duration::from_secs(3), || {
        health_lines(relay)
            .iter()
            .skip(seen)
            .any(|(l, t)| l == level && t.contains(&needle))
    });
    assert!(
        found.is_some(),
        "no {level} health line with {needle:?} within 3 s; stderr:\n{}",
        relay.stderr_text()
    );
    health_lines(relay).len()
}

fn status_and_log_level_follow_thresholds(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .section("[monitor]\nlog_interval = \"300ms\"\nwarn_inflight = 1\nalert_inflight = 3\n");
    let relay = start(driver, &cfg);
    let seen = wait_log(&relay, 0, "INFO", "ok");
    assert_eq!(relay.health()["status"], "ok");

    let stall = || {
        let mut c = relay.client();
        c.send(&chat("mock-stall-head-10000", false));
        c
    };
    // 2 in flight: above warn_inflight (1), not above alert_inflight (3).
    let mut held = vec![stall(), stall()];
    let h = wait_health(&relay, Duration::from_secs(3), "2 in flight", |h| {
        json_u64(h, "inflight_requests") == 2
    });
    assert_eq!(h["status"], "warn", "{h}");
    let seen = wait_log(&relay, seen, "WARN", "warn");

    // 4 in flight: above alert_inflight.
    held.push(stall());
    held.push(stall());
    let h = wait_health(&relay, Duration::from_secs(3), "4 in flight", |h| {
        json_u64(h, "inflight_requests") == 4
    });
    assert_eq!(h["status"], "alert", "{h}");
    let seen = wait_log(&relay, seen, "ERROR", "alert");
    let line = health_lines(&relay)
        .into_iter()
        .rev()
        .find(|(l, _)| l == "ERROR")
        .map(|(_, t)| t)
        .unwrap_or_default();
    assert!(line.contains("inflight=4"), "alert line: {line}");

    // The clients leave: back to ok, in health and in the log.
    drop(held);
    let h = wait_health(&relay, Duration::from_secs(3), "clients gone", |h| {
        json_u64(h, "inflight_requests") == 0
    });
    assert_eq!(h["status"], "ok", "{h}");
    wait_log(&relay, seen, "INFO", "ok");
    assert!(
        mock.wait_open_at_most(0, Duration::from_secs(3)).is_some(),
        "stalled upstream connections not closed after the clients left: {:?}",
        mock.stats()
    );
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// Parses Prometheus text exposition; panics on malformed lines. Returns series -> value and
/// family -> type.
fn parse_prometheus(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut series = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next());
            match (kw, name, tail) {
                (Some("HELP"), Some(n), Some(_)) => assert!(valid_name(n), "HELP name: {line}"),
                (Some("TYPE"), Some(n), Some(t)) => {
                    assert!(valid_name(n), "TYPE name: {line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "TYPE: {line}"
                    );
                    assert!(
                        types.insert(n.to_string(), t.to_string()).is_none(),
                        "TYPE declared twice: {line}"
                    );
                }
                _ => panic!("malformed comment line: {line:?}"),
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value: {line:?}"));
        let name = match name_labels.split_once('{') {
            Some((n, labels)) => {
                assert!(labels.ends_with('}'), "labels not closed: {line:?}");
                for pair in labels.trim_end_matches('}').split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line:?}"));
                    assert!(valid_name(k), "label name: {line:?}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "label value not quoted: {line:?}"
                    );
                }
                n
            }
            None => name_labels,
        };
        assert!(valid_name(name), "metric name: {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its # TYPE line: {line:?}"
        );
        assert!(
            series.insert(name_labels.to_string(), v).is_none(),
            "series twice: {line:?}"
        );
    }
    (series, types)
}

/// Checks a histogram family: cumulative buckets, +Inf bucket equals _count.
fn check_histogram(series: &BTreeMap<String, f64>, name: &str) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = series
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *v))
        })
        .collect();
    assert!(buckets.len() >= 5, "{name}: too few buckets: {buckets:?}");
    let mut sorted = buckets.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        sorted.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: buckets not cumulative: {sorted:?}"
    );
    let inf = sorted.last().map(|b| b.1).unwrap_or(-1.0);
    assert_eq!(sorted.last().map(|b| b.0), Some(f64::INFINITY), "{name}");
    let count = series[&format!("{name}_count")];
    assert_eq!(inf, count, "{name}: +Inf bucket != _count");
    assert!(series.contains_key(&format!("{name}_sum")), "{name}_sum");
    count
}

fn metrics_are_prometheus_text_and_move_with_traffic(driver: Driver) {
    let mock = Mock::start();
    // One impatient channel (priority 1) for the model that must time out, and no failover
    // to the default channel.
    let cfg = ConfigBuilder::new(mock.addr)
        .section("[retry]\nattempts = 0")
        .channel(
            "impatient",
            &mock.base_url(),
            UPSTREAM_KEY,
            &["mock-stall-head-5000"],
            "priority = 1\ntimeouts = { response_header = \"300ms\" }",
        );
    let relay = start(driver, &cfg);

    let (m0, types) = parse_prometheus(&metrics_text(&relay));
    let mut required: Vec<String> = vec![
        "ringway_inflight_requests".into(),
        "ringway_client_connections".into(),
        "ringway_upstream_connections_active".into(),
        "ringway_upstream_connections_idle".into(),
        "ringway_client_gone_total".into(),
        "ringway_open_fds".into(),
        "ringway_rss_bytes".into(),
    ];
    for class in ["2xx", "4xx", "5xx"] {
        required.push(format!("ringway_requests_total{{class=\"{class}\"}}"));
    }
    for l in TIMEOUT_LAYERS {
        required.push(format!("ringway_timeouts_total{{layer=\"{l}\"}}"));
    }
    for h in [
        "ringway_request_duration_seconds",
        "ringway_time_to_first_byte_seconds",
    ] {
        required.push(format!("{h}_bucket{{le=\"+Inf\"}}"));
        required.push(format!("{h}_sum"));
        required.push(format!("{h}_count"));
    }
    for r in &required {
        assert!(
            m0.contains_key(r),
            "/metrics lacks {r}; have {:?}",
            m0.keys()
        );
    }
    for (family, kind) in [
        ("ringway_inflight_requests", "gauge"),
        ("ringway_upstream_connections_idle", "gauge"),
        ("ringway_upstream_connections_active", "gauge"),
        ("ringway_requests_total", "counter"),
        ("ringway_timeouts_total", "counter"),
        ("ringway_client_gone_total", "counter"),
        ("ringway_upstream_errors_total", "counter"),
        ("ringway_request_duration_seconds", "histogram"),
        ("ringway_time_to_first_byte_seconds", "histogram"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}"
        );
    }
    let d0 = check_histogram(&m0, "ringway_request_duration_seconds");
    let t0 = check_histogram(&m0, "ringway_time_to_first_byte_seconds");

    // A stalled request shows in the gauges while it is in flight; then its client leaves.
    let mut stalled = relay.client();
    stalled.send(&chat("mock-stall-head-10000", false));
    mock.wait_requests(1, Duration::from_secs(3))
        .expect("mock never saw the stalled request");
    let (m, _) = parse_prometheus(&metrics_text(&relay));
    assert_eq!(m["ringway_inflight_requests"], 1.0, "inflight gauge");
    assert_eq!(
        m["ringway_upstream_connections_active"], 1.0,
        "upstream active gauge"
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(stalled);
    wait_health(&relay, Duration::from_secs(3), "client gone noticed", |h| {
        json_u64(h, "inflight_requests") == 0 && json_u64(h, "client_gone") == 1
    });

    // Traffic: 1 response_header timeout (504), 3 x 200, 1 upstream 429, 1 relay 401.
    let r = relay.roundtrip(&chat("mock-stall-head-5000", false));
    assert_error_shape(&r, 504, Some("response_header_timeout"));
    for _ in 0..3 {
        assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    }
    assert_eq!(relay.roundtrip(&chat("mock-status-429", false)).status, 429);
    let unauth = post_json(
        "/v1/chat/completions",
        None,
        &[],
        &chat_body("mock-fixed", false),
    );
    assert_eq!(relay.roundtrip(&unauth).status, 401);
    let (m1, _) = parse_prometheus(&metrics_text(&relay));
    let delta = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    // The class counters also count the operations endpoints (health, /metrics) this test
    // polls, so 2xx moved by at least the 3 relayed 200s.
    assert!(
        delta("ringway_requests_total{class=\"2xx\"}") >= 3.0,
        "2xx moved by {}",
        delta("ringway_requests_total{class=\"2xx\"}")
    );
    assert_eq!(
        delta("ringway_requests_total{class=\"4xx\"}"),
        2.0,
        "4xx (429 + 401)"
    );
    assert_eq!(
        delta("ringway_requests_total{class=\"5xx\"}"),
        1.0,
        "5xx (504)"
    );
    assert_eq!(
        delta("ringway_timeouts_total{layer=\"response_header\"}"),
        1.0,
        "response_header timeouts"
    );
    assert_eq!(delta("ringway_client_gone_total"), 1.0, "client gone");
    assert_eq!(
        m1.get("ringway_upstream_errors_total{status=\"429\"}")
            .copied(),
        Some(1.0),
        "upstream errors by status"
    );
    assert_eq!(m1["ringway_inflight_requests"], 0.0);
    assert_eq!(m1["ringway_upstream_connections_active"], 0.0);
    let h = relay.health();
    assert_eq!(
        m1["ringway_upstream_connections_idle"],
        json_u64(&h, "upstream_connections_idle") as f64,
        "idle gauge vs health"
    );
    assert!(m1["ringway_upstream_connections_idle"] >= 1.0, "pooled");
    let d1 = check_histogram(&m1, "ringway_request_duration_seconds");
    let t1 = check_histogram(&m1, "ringway_time_to_first_byte_seconds");
    assert!(d1 - d0 >= 7.0, "request duration count moved {d0} -> {d1}");
    assert!(
        t1 - t0 >= 6.0,
        "time to first byte count moved {t0} -> {t1}"
    );
    let slow = m1["ringway_request_duration_seconds_bucket{le=\"0.25\"}"];
    assert!(
        slow < d1,
        "the 300 ms timeout must land above the 0.25 s bucket: {slow} of {d1}"
    );
    let started = Instant::now();
    let _ = metrics_text(&relay);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A request that never got a response (its client left) has no status class; it must not
/// show up as an informational (1xx) response.
fn unanswered_requests_are_not_counted_as_1xx(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr));
    let (m0, _) = parse_prometheus(&metrics_text(&relay));
    let mut c = relay.client();
    c.send(&chat("mock-stall-head-10000", false));
    mock.wait_requests(1, Duration::from_secs(3))
        .expect("mock never saw the request");
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    wait_health(&relay, Duration::from_secs(3), "client gone noticed", |h| {
        json_u64(h, "inflight_requests") == 0 && json_u64(h, "client_gone") == 1
    });
    let (m1, _) = parse_prometheus(&metrics_text(&relay));
    let key = "ringway_requests_total{class=\"1xx\"}";
    assert_eq!(
        m1.get(key).copied().unwrap_or(0.0),
        m0.get(key).copied().unwrap_or(0.0),
        "{key} moved for a request that was never answered"
    );
}

/// The `latency_ms` object of channel `name` in a health reading.
fn channel_latency<'a>(h: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let c = h["channels"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no channel {name} in {h}"));
    &c["latency_ms"]
}

fn ms(l: &serde_json::Value, key: &str) -> f64 {
    l[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {l}"))
}

/// Two channels, one answering at once and one whose upstream waits 400 ms before its head:
/// health's `latency_ms`, the `ringway_channel_upstream_seconds` histogram and
/// `ringway top --once` (text and JSON) all show the slower one slower.
fn channel_latency_shows_the_slower_channel(driver: Driver) {
    let mock = Mock::start();
    let base = mock.base_url();
    let relay = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel("fast", &base, UPSTREAM_KEY, &["mock-fixed"], "")
        .channel("slow", &base, UPSTREAM_KEY, &["mock-stall-head-400"], "")
        .channel("idle", &base, UPSTREAM_KEY, &["never-asked"], "")
        .start(driver.env());
    for _ in 0..3 {
        for model in ["mock-fixed", "mock-stall-head-400"] {
            let r = relay.roundtrip(&chat(model, false));
            assert_eq!(r.status, 200, "{model}: {}", r.text());
        }
    }

    let h = relay.health();
    let (fast, slow) = (channel_latency(&h, "fast"), channel_latency(&h, "slow"));
    assert_eq!(fast["requests"], 3, "{fast}");
    assert_eq!(slow["requests"], 3, "{slow}");
    assert!(
        ms(slow, "head_mean") >= 400.0,
        "the mock waited 400 ms: {slow}"
    );
    assert!(
        ms(slow, "head_mean") > ms(fast, "head_mean"),
        "{fast} vs {slow}"
    );
    assert!(
        ms(slow, "head_p50") > ms(fast, "head_p50"),
        "{fast} vs {slow}"
    );
    assert!(
        ms(slow, "head_p90") > ms(fast, "head_p90"),
        "{fast} vs {slow}"
    );
    assert!(
        ms(slow, "total_p50") > ms(fast, "total_p50"),
        "{fast} vs {slow}"
    );
    // The 400 ms fall in the (250 ms, 500 ms] bucket: the estimate stays inside it.
    assert!((250.0..=500.0).contains(&ms(slow, "head_p50")), "{slow}");
    assert!(ms(slow, "total_mean") >= ms(slow, "head_mean"), "{slow}");
    let idle = channel_latency(&h, "idle");
    assert_eq!(idle["requests"], 0, "{idle}");
    assert!(
        idle["head_p50"].is_null(),
        "no estimate without requests: {idle}"
    );

    let (m, types) = parse_prometheus(&metrics_text(&relay));
    let name = "ringway_channel_upstream_seconds";
    assert_eq!(types.get(name).map(String::as_str), Some("histogram"));
    let sample = |channel: &str, suffix: &str| {
        let key = format!("{name}_{suffix}{{channel=\"{channel}\",phase=\"head\"}}");
        *m.get(&key).unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(sample("fast", "count"), 3.0);
    assert_eq!(sample("slow", "count"), 3.0);
    assert!(sample("slow", "sum") >= 1.2, "3 × 400 ms");
    assert!(sample("slow", "sum") > sample("fast", "sum"));
    let bucket = |channel: &str, le: &str| {
        let key = format!("{name}_bucket{{channel=\"{channel}\",phase=\"head\",le=\"{le}\"}}");
        *m.get(&key).unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(bucket("slow", "0.25"), 0.0, "no slow head under 250 ms");
    assert_eq!(bucket("slow", "+Inf"), 3.0);

    let url = format!("http://{}", relay.addr);
    let (code, out, err) = run_bin(&["top", &url, "--once", "--json"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let t: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let (fast, slow) = (channel_latency(&t, "fast"), channel_latency(&t, "slow"));
    assert!(
        ms(slow, "head_p50") > ms(fast, "head_p50"),
        "{fast} vs {slow}"
    );
    let (code, out, err) = run_bin(&["top", &url, "--once"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("slow "))
        .unwrap_or_else(|| panic!("no line for channel slow:\n{out}"));
    assert!(line.contains("head ") && line.contains(" n=3"), "{line}");
}

/// A request that fails over from a channel answering 503 to one that cannot be reached: the
/// first channel's time is not counted (its answer did not go out) and the second one never
/// answered, so neither has a latency sample.
fn channel_latency_counts_only_the_channel_that_answered(driver: Driver) {
    let mock = Mock::start();
    let model = "mock-status-503";
    let relay = ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "first",
            &mock.base_url(),
            UPSTREAM_KEY,
            &[model],
            "priority = 1",
        )
        .channel(
            "unreachable",
            &format!("http://127.0.0.1:{}", free_port()),
            UPSTREAM_KEY,
            &[model],
            "",
        )
        .start(driver.env());
    let r = relay.roundtrip(&chat(model, false));
    assert_eq!(
        r.status,
        502,
        "the unreachable channel's error: {}",
        r.text()
    );
    let h = relay.health();
    assert_eq!(channel_latency(&h, "first")["requests"], 0, "{h}");
    assert_eq!(channel_latency(&h, "unreachable")["requests"], 0, "{h}");
    // The attempts were made all the same.
    let m = metrics_text(&relay);
    assert!(
        m.contains(r#"ringway_channel_attempts_total{channel="first",result="failed"} 1"#),
        "{m}"
    );
}
