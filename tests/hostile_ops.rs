//! Hostile peers and operators' slips, end to end against the real binary: a second relay on a
//! port in use refuses to start (and the first keeps all the traffic); at the file-descriptor
//! limit the relay closes its longest-idle connections to keep serving health and new
//! requests, and logs accept failures at most once a second; over `max_connections` it closes
//! idle connections first, then accepts and closes new ones at once, counted; `/metrics` label
//! values are escaped; the monitor thresholds default to shares of `max_inflight`; a config
//! file other users can read is warned about. The network tests run on io_uring and epoll.

mod common;

use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    second_relay_on_a_port_in_use_refuses_to_start,
    fd_limit_closes_oldest_idle_connections_and_keeps_serving,
    fd_limit_with_nothing_idle_closes_new_connections_at_once,
    max_connections_sheds_idle_then_refuses_at_once,
    metrics_label_values_are_escaped,
    inflight_thresholds_default_to_shares_of_max_inflight,
}

// ---------------------------------------------------------------------------------------------
// port in use

/// Relay A listens; relay B with the same `listen` must exit at once with an error naming the
/// address (SO_REUSEPORT would otherwise let it start and silently take part of A's
/// connections). Then 50 requests on fresh connections are all answered by A: A's
/// `requests_total` counts every one, and the mock saw exactly those.
fn second_relay_on_a_port_in_use_refuses_to_start(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).workers(2);
    let a = start(driver, &cfg);
    let port = a.addr.port();
    let b_config = write_temp("relay-b", "toml", &cfg.render(port));

    let t = Instant::now();
    let (code, _stdout, stderr) = run_bin(
        &["--config", b_config.to_str().expect("utf-8 path")],
        driver.env(),
    );
    let took = t.elapsed();
    let _ = std::fs::remove_file(&b_config);
    assert_eq!(code, Some(1), "relay B exit status; stderr:\n{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "relay B took {took:?} to give up"
    );
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && stderr.contains("another process already listens there"),
        "relay B's error does not name the address: {stderr}"
    );
    assert!(
        !stderr.contains("listening on"),
        "relay B announced it was listening: {stderr}"
    );

    for i in 0..50 {
        let r = a.roundtrip(&chat("mock-fixed", false));
        assert_eq!(r.status, 200, "request {i}: {:?}", r.text());
    }
    let h = a.health();
    assert_eq!(json_u64(&h, "requests_total"), 50, "relay A: {h}");
    assert_eq!(mock.stats().requests, 50, "{:?}", mock.stats());
}

// ---------------------------------------------------------------------------------------------
// the fd limit

/// The relay's RLIMIT_NOFILE, soft and hard (so it cannot raise it).
const NOFILE: u64 = 128;

/// Under a hard limit of [`NOFILE`] descriptors, more idle keep-alive connections than that are
/// opened, one after the other. The relay must keep accepting by closing the longest-idle ones
/// (the first opened see EOF, and the closed ones are exactly a prefix of the opening order),
/// health must still answer 200 within a second or two, a new chat request must be served, and
/// the accept failures behind all this must be logged at most once a second.
fn fd_limit_closes_oldest_idle_connections_and_keeps_serving(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).server("max_inflight = 8");
    let path = write_temp("relay-nofile", "toml", &cfg.render(free_port()));
    let relay = Relay::try_start_file(path, driver.env(), &nofile_limit(NOFILE))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(relay.health()["io_driver"], driver.health_name());
    assert!(
        relay
            .stderr_text()
            .contains(&format!("RLIMIT_NOFILE allows {NOFILE} (hard limit)")),
        "no fd budget warning at start:\n{}",
        relay.stderr_text()
    );
    // One pooled upstream connection, so the chat request below needs no new upstream socket.
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);

    let flood_start = Instant::now();
    let total = NOFILE as usize + 40;
    let mut conns: Vec<Client> = Vec::with_capacity(total);
    for i in 0..total {
        let c = Client::try_connect(relay.addr)
            .unwrap_or_else(|e| panic!("connection {i} could not connect: {e}"));
        conns.push(c);
        if i % 16 == 15 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The relay works through its backlog; the first opened must be closed.
    let first_closed = wait_for(Duration::from_secs(5), || conns[0].closed_now());
    assert!(
        first_closed.is_some(),
        "the oldest idle connection was not closed; stderr:\n{}",
        relay.stderr_text()
    );

    // Health and a new request are still served, at the limit.
    let t = Instant::now();
    let h = relay.health();
    let health_took = t.elapsed();
    assert!(
        health_took < Duration::from_secs(2),
        "health took {health_took:?} at the fd limit"
    );
    let t = Instant::now();
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "chat at the fd limit: {:?}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "chat took {:?}",
        t.elapsed()
    );

    // Oldest first: the closed connections are a prefix of the opening order, the newest are open.
    std::thread::sleep(Duration::from_millis(200));
    let closed: Vec<bool> = conns.iter_mut().map(|c| c.closed_now()).collect();
    let n_closed = closed.iter().take_while(|c| **c).count();
    assert!(
        closed[n_closed..].iter().all(|c| !c),
        "closed connections are not the oldest ones: {closed:?}"
    );
    assert!(
        n_closed >= 40 && n_closed < total - 16,
        "{n_closed} of {total} closed: {closed:?}"
    );
    eprintln!(
        "{n_closed} of {total} idle connections closed; health in {health_took:?}; {} shed, {} accept errors",
        h["idle_connections_shed"], h["accept_errors"]
    );
    assert!(json_u64(&h, "idle_connections_shed") >= 40, "{h}");
    assert!(json_u64(&h, "accept_errors") >= 1, "{h}");

    // The log: at least one accept failure line (the limit was reached), at most one a second.
    let secs = flood_start.elapsed().as_secs();
    let stderr = relay.stderr_text();
    let lines = stderr
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        lines >= 1 && lines as u64 <= secs + 1,
        "{lines} accept-failure lines in {secs} s:\n{stderr}"
    );
    assert!(
        stderr.contains("Too many open files") && stderr.contains("asked to close to make room"),
        "{stderr}"
    );
    drop(conns);
    let h = relay.health();
    assert_eq!(json_u64(&h, "connections_rejected"), 0, "{h}");
}

/// At the fd limit with no idle connection to close (every connection is mid-head), a new
/// connection must not hang in the kernel's queue: the relay accepts it on its spare descriptor
/// and closes it at once, counted. The connections it already holds are kept.
fn fd_limit_with_nothing_idle_closes_new_connections_at_once(driver: Driver) {
    const LIMIT: u64 = 64;
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).server("max_inflight = 8");
    let path = write_temp("relay-nofile-busy", "toml", &cfg.render(free_port()));
    let relay = Relay::try_start_file(path, driver.env(), &nofile_limit(LIMIT))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(relay.health()["io_driver"], driver.health_name());

    let start = Instant::now();
    let total = LIMIT as usize + 16;
    let mut busy: Vec<Client> = Vec::with_capacity(total);
    for i in 0..total {
        let mut c = Client::try_connect(relay.addr)
            .unwrap_or_else(|e| panic!("connection {i} could not connect: {e}"));
        let _ = c.try_send(PARTIAL_HEAD);
        busy.push(c);
        if i % 8 == 7 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let last_closed = wait_for(Duration::from_secs(3), || busy[total - 1].closed_now());
    assert!(
        last_closed.is_some(),
        "the newest connection was left open at the fd limit; stderr:\n{}",
        relay.stderr_text()
    );
    let closed: Vec<bool> = busy.iter_mut().map(|c| c.closed_now()).collect();
    let held = closed.iter().take_while(|c| !**c).count();
    let refused = closed.iter().filter(|c| **c).count();
    // A connection whose half head had not been read when the limit was hit looks idle, so the
    // relay may close it to make room and hold a later one in its place: at most two such holes.
    let late_held = closed[held..].iter().filter(|c| !**c).count();
    assert!(
        held >= 20 && late_held <= 2 && closed[total - 8..].iter().all(|c| *c),
        "the relay should hold the first connections and refuse the rest: {closed:?}"
    );
    // One more: closed within a second, without a byte.
    let mut c = relay.client();
    let _ = c.try_send(&get("/api/monitor/health", &[]));
    assert!(
        c.closed_within(Duration::from_secs(1)),
        "a new connection hung"
    );
    assert!(c.pending().is_empty());
    eprintln!("held {held}, refused {refused} + 1 of {total} busy connections");

    let secs = start.elapsed().as_secs();
    drop(busy);
    drop(c);
    // Let the relay see the hang-ups and close its sockets before health needs one.
    std::thread::sleep(Duration::from_millis(300));
    let h = wait_for_health(&relay, |h| json_u64(h, "client_connections") <= 1);
    // A connection whose half head had not been read yet when the limit was hit counts as idle
    // (it is, as far as the relay can tell), so it may have been closed to make room instead.
    let rejected = json_u64(&h, "connections_rejected");
    let shed = json_u64(&h, "idle_connections_shed");
    assert_eq!(rejected + shed, refused as u64 + 1, "{h}");
    assert!(rejected >= refused as u64 - 1 && shed <= 2, "{h}");
    let stderr = relay.stderr_text();
    let lines = stderr
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        lines >= 1 && lines as u64 <= secs + 1,
        "{lines} accept-failure lines in {secs} s:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// max_connections

/// A GET /api/monitor/health head without its final empty line: the connection is busy (the
/// relay waits for the rest of the head), not idle.
const PARTIAL_HEAD: &[u8] = b"GET /api/monitor/health HTTP/1.1\r\nhost: 127.0.0.1\r\n";

/// `max_connections = 4`, one worker. Four idle connections fill it; a fifth (health) is served
/// by closing the oldest idle one, and only that one. On a second relay, four busy connections
/// (half a request head each) fill it; five more are accepted and closed at once (EOF, no
/// byte), counted in health and `/metrics`, and logged.
fn max_connections_sheds_idle_then_refuses_at_once(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).server("max_connections = 4");

    let relay = start(driver, &cfg);
    let mut idle: Vec<Client> = (0..4).map(|_| relay.client()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = relay.roundtrip(&get("/api/monitor/health", &[("connection", "close")]));
    assert_eq!(r.status, 200, "{:?}", r.text());
    assert!(
        idle[0].closed_within(Duration::from_secs(2)),
        "the oldest idle connection was not closed to make room"
    );
    assert!(
        idle[1..].iter_mut().all(|c| !c.closed_now()),
        "a newer idle connection was closed"
    );
    // 3 idle + this health connection: within the bound, nothing more is closed.
    let h = relay.health();
    assert_eq!(json_u64(&h, "idle_connections_shed"), 1, "{h}");
    assert_eq!(json_u64(&h, "connections_rejected"), 0, "{h}");
    assert!(idle[1..].iter_mut().all(|c| !c.closed_now()));
    drop(idle);

    let relay = start(driver, &cfg);
    let busy: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = relay.client();
            c.send(PARTIAL_HEAD);
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5 {
        let mut c = relay.client();
        let t = Instant::now();
        // The relay may already have closed it: a failed send is fine, an answer is not.
        let _ = c.try_send(&get("/api/monitor/health", &[]));
        assert!(
            c.closed_within(Duration::from_secs(2)),
            "connection {i} over max_connections was not closed"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "connection {i}: {:?}",
            t.elapsed()
        );
        assert!(c.pending().is_empty(), "connection {i} got bytes");
    }
    drop(busy);
    // Until the relay has seen the busy connections go, a health check is refused too: count
    // those refusals.
    let mut refused_checks = 0;
    let h = loop {
        std::thread::sleep(Duration::from_millis(100));
        match health_or_closed(&relay) {
            Some(h) => break h,
            None => refused_checks += 1,
        }
        assert!(refused_checks < 30, "health never answered");
    };
    assert_eq!(
        json_u64(&h, "connections_rejected"),
        5 + refused_checks,
        "{h}"
    );
    assert_eq!(json_u64(&h, "idle_connections_shed"), 0, "{h}");
    assert_eq!(
        json_u64(&h["per_worker"][0], "connections_rejected"),
        5 + refused_checks,
        "{h}"
    );
    let m = metrics_text(&relay);
    assert_eq!(
        metric_value(&m, "ringway_connections_rejected_total"),
        Some((5 + refused_checks) as f64)
    );
    assert_eq!(
        metric_value(&m, "ringway_idle_connections_shed_total"),
        Some(0.0)
    );
    let stderr = relay.stderr_text();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("at max_connections (4 per worker)"))
        .collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "max_connections log lines: {lines:?}"
    );
}

/// Health on a fresh connection; `None` if the relay closed the connection without answering.
fn health_or_closed(relay: &Relay) -> Option<serde_json::Value> {
    let mut c = relay.client();
    c.try_send(&get("/api/monitor/health", &[("connection", "close")]))
        .ok()?;
    match c.read_response_eof_aware() {
        Ok(r) => {
            assert_eq!(r.status, 200, "{:?}", r.text());
            Some(r.json())
        }
        Err(ReadError::Eof(b)) if b.is_empty() => None,
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("health: {e:?}"),
    }
}

fn wait_for_health(relay: &Relay, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut h = relay.health();
    let ok = wait_for(Duration::from_secs(3), || {
        h = relay.health();
        f(&h)
    });
    assert!(ok.is_some(), "health condition not reached within 3 s: {h}");
    h
}

// ---------------------------------------------------------------------------------------------
// /metrics escaping

/// A Prometheus text sample: name, labels (unescaped values), value. Panics on anything the text
/// format does not allow.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "metric name: {line:?}"
    );
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            let eq = rest.find('=').unwrap_or_else(|| panic!("label: {line:?}"));
            let key = &rest[..eq];
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name {key:?}: {line:?}"
            );
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("label value not quoted: {line:?}"));
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?}: {line:?}"),
                    },
                    Some((_, '\n')) => panic!("raw newline in a label value: {line:?}"),
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line:?}"),
                }
            };
            labels.push((key.to_string(), value));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest
                    .strip_prefix('}')
                    .unwrap_or_else(|| panic!("labels not closed: {line:?}"));
                break;
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line:?}"));
    let v: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value: {line:?}"));
    (name.to_string(), labels, v)
}

/// Token and channel names holding a double quote, a backslash and a line feed: the scrape must
/// stay valid Prometheus text, with the exact escaped lines, and every label value must read
/// back as the configured name.
fn metrics_label_values_are_escaped(driver: Driver) {
    const TOKEN_Q: &str = "team \"a\"";
    const TOKEN_BS: &str = "back\\slash\nand line";
    const CHANNEL: &str = "ch \"x\"\\y\nz";
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .token(TOKEN_Q, "sk-token-quote", &["*"])
        .token(TOKEN_BS, "sk-token-backslash", &["*"])
        .channel(
            CHANNEL,
            &mock.base_url(),
            UPSTREAM_KEY,
            &["mock-fixed"],
            "priority = 1",
        );
    let relay = start(driver, &cfg);
    let body = chat_body("mock-fixed", false);
    for key in ["sk-token-quote", "sk-token-backslash", "sk-token-backslash"] {
        let r = relay.roundtrip(&post_json("/v1/chat/completions", Some(key), &[], &body));
        assert_eq!(r.status, 200, "{:?}", r.text());
    }

    let text = metrics_text(&relay);
    for line in [
        r#"ringway_token_requests_total{token="team \"a\""} 1"#,
        r#"ringway_token_requests_total{token="back\\slash\nand line"} 2"#,
        r#"ringway_channel_requests_total{channel="ch \"x\"\\y\nz"} 3"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, labels, _) = parse_sample(line);
        for (k, v) in labels {
            if (name.starts_with("ringway_token_") && k == "token")
                || (name.starts_with("ringway_channel_") && k == "channel")
            {
                names.insert(v);
            }
        }
    }
    for want in [TOKEN_Q, TOKEN_BS, CHANNEL, "default", "mock"] {
        assert!(names.contains(want), "{want:?} not read back: {names:?}");
    }
    assert_eq!(names.len(), 5, "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// monitor thresholds

/// `max_inflight = 10` and no `[monitor]` thresholds: warn above 8 (80%), alert above 9 (95%),
/// so both levels can be reached (the old fixed 2000 / 5000 never could). `check-config` prints
/// the effective values.
fn inflight_thresholds_default_to_shares_of_max_inflight(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).server("max_inflight = 10");
    let config = write_temp("thresholds", "toml", &cfg.render(free_port()));
    let (code, stdout, stderr) =
        run_bin(&["check-config", config.to_str().expect("utf-8 path")], &[]);
    let _ = std::fs::remove_file(&config);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "warn_inflight 8 (80% of max_inflight), alert_inflight 9 (95% of max_inflight)"
        ),
        "{stdout}"
    );

    let relay = start(driver, &cfg);
    let stall = || {
        let mut c = relay.client();
        c.send(&chat("mock-stall-head-10000", false));
        c
    };
    let mut held: Vec<Client> = (0..8).map(|_| stall()).collect();
    let h = wait_for_health(&relay, |h| json_u64(h, "inflight_requests") == 8);
    assert_eq!(h["status"], "ok", "8 of 10 in flight: {h}");
    held.push(stall());
    let h = wait_for_health(&relay, |h| json_u64(h, "inflight_requests") == 9);
    assert_eq!(h["status"], "warn", "9 of 10 in flight: {h}");
    held.push(stall());
    let h = wait_for_health(&relay, |h| json_u64(h, "inflight_requests") == 10);
    assert_eq!(h["status"], "alert", "10 of 10 in flight: {h}");
    drop(held);
    let h = wait_for_health(&relay, |h| json_u64(h, "inflight_requests") == 0);
    assert_eq!(h["status"], "ok", "{h}");
}

// ---------------------------------------------------------------------------------------------
// config warnings

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `check-config` on a file every user can read: a warning naming the file and its mode and
/// suggesting `chmod 600`, on stderr, and exit status 0; none once it is 0600 (or 0640).
/// Thresholds that can never fire are warned about with their line and key.
#[test]
fn check_config_warns_about_a_readable_file_and_unreachable_thresholds() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr);
    let path = write_temp("readable", "toml", &cfg.render(free_port()));
    let shown = path.to_str().expect("utf-8 path").to_string();
    set_mode(&path, 0o644);
    let (code, stdout, stderr) = run_bin(&["check-config", &shown], &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("config OK\n"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "warning: {shown}: file mode 0644: every user on this machine can read it"
        )) && stderr.contains(&format!("chmod 600 {shown}")),
        "{stderr}"
    );
    for mode in [0o600, 0o640] {
        set_mode(&path, mode);
        let (code, stdout, stderr) = run_bin(&["check-config", &shown], &[]);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(!stderr.contains("warning"), "mode {mode:o}: {stderr}");
    }

    // Lines 5 and 6 of the file: [server] listen workers models_refresh, then these two.
    let text = cfg
        .clone()
        .server("[monitor]\nwarn_inflight = 2000")
        .render(free_port());
    std::fs::write(&path, text).expect("rewrite");
    let (code, _stdout, stderr) = run_bin(&["check-config", &shown], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {shown}:6: monitor.warn_inflight: 2000 is not below server.max_inflight (500)"
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&path);
}

/// The relay started with a file every user can read logs one WARN naming it, and keeps
/// running; with mode 0600 it logs none.
#[test]
fn relay_warns_once_about_a_readable_config_file() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr);
    for (mode, want) in [(0o644, 1), (0o600, 0)] {
        let path = write_temp("readable-run", "toml", &cfg.render(free_port()));
        set_mode(&path, mode);
        let shown = path.display().to_string();
        let relay = Relay::try_start_file(path, &[], &|_| {}).unwrap_or_else(|e| panic!("{e}"));
        let stderr = relay.stderr_text();
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(&shown) && l.contains("chmod 600"))
            .collect();
        assert_eq!(warnings.len(), want, "mode {mode:o}:\n{stderr}");
        if want == 1 {
            assert!(warnings[0].contains("file mode 0644"), "{}", warnings[0]);
        }
        assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    }
}
