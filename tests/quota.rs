//! Token quotas (`quota_tokens`) and their ledger under `[server] state_dir`: exhaustion
//! (429 `quota_exhausted`, the upstream untouched), reservations of requests in flight, usage
//! that survives a clean restart and a `kill -9` under load (nothing lost beyond the flush
//! bound, nothing counted twice), a torn ledger tail, and the start-up errors. Real binary
//! against the mock (`mock-fixed` reports 9 + 7 = 16 tokens per chat completion), 2 workers,
//! both io drivers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    exhaustion_is_429_quota_exhausted_and_the_upstream_is_untouched,
    reservations_in_flight_refuse_with_retry_after_and_settle_to_the_real_usage,
    usage_survives_a_clean_restart_and_renamed_tokens_start_at_zero,
    kill_9_mid_load_loses_nothing_beyond_the_flush_bound_and_counts_nothing_twice,
    a_torn_ledger_tail_is_ignored_with_a_warning,
    usage_carries_across_a_reload_that_changes_the_quota,
}

/// Tokens the mock reports for one chat completion (9 prompt + 7 completion).
const PER_REQUEST: u64 = 16;

/// A fresh state directory path (not created: the relay creates it); removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new(stem: &str) -> StateDir {
        StateDir(temp_path(stem, "state"))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 2 workers, the ledger in `dir` flushed every `flush`, and a token `q` (key `sk-q`) with
/// `quota`.
fn config(mock: &Mock, dir: &Path, flush: &str, quota: u64) -> ConfigBuilder {
    ConfigBuilder::new(mock.addr)
        .workers(2)
        .server(&format!("state_dir = {:?}", dir.display().to_string()))
        .server(&format!("state_flush = {flush:?}"))
        .section(&quota_token("q", "sk-q", quota))
}

fn quota_token(name: &str, key: &str, quota: u64) -> String {
    format!(
        "[[tokens]]\nname = {name:?}\nkey = {key:?}\nmodels = [\"*\"]\nquota_tokens = {quota}\n"
    )
}

fn body(model: &str, max_tokens: u64) -> String {
    format!(
        "{{\"model\":{model:?},\"max_tokens\":{max_tokens},\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}"
    )
}

/// What the relay reserves for `body`: its bytes / 4 (rounded up) plus its max_tokens.
fn reservation(body: &str, max_tokens: u64) -> u64 {
    (body.len() as u64).div_ceil(4) + max_tokens
}

fn chat_as(key: &str, body: &str) -> Vec<u8> {
    post_json("/v1/chat/completions", Some(key), &[], body)
}

/// Token `name`'s (quota_tokens, quota_used, quota_reserved) from health.
fn quota_of(relay: &Relay, name: &str) -> (Option<u64>, u64, u64) {
    let health = relay.health();
    let tokens = health["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("health has no tokens array: {health}"));
    let t = tokens
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("token {name} not in health: {health}"));
    (
        t["quota_tokens"].as_u64(),
        json_u64(t, "quota_used"),
        json_u64(t, "quota_reserved"),
    )
}

/// SIGTERM, and the exit status 0 that follows (the ledger's last flush is made first).
fn stop_cleanly(mut relay: Relay) {
    relay.signal(libc::SIGTERM);
    let status = relay
        .wait_exit(Duration::from_secs(20))
        .expect("relay exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        relay.stderr_text().contains("quota ledger flushed"),
        "{}",
        relay.stderr_text()
    );
}

fn exhaustion_is_429_quota_exhausted_and_the_upstream_is_untouched(driver: Driver) {
    let mock = Mock::start();
    let dir = StateDir::new("exhaust");
    let b = body("mock-fixed", 7);
    let r = reservation(&b, 7);
    // Admitted while used + reservation fits: used 0, 16, 32, 48, 64 -> five requests.
    let quota = 4 * PER_REQUEST + r;
    let relay = start(driver, &config(&mock, &dir.0, "1s", quota));
    for i in 0..5 {
        let resp = relay.roundtrip(&chat_as("sk-q", &b));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    // A response reaches its client a moment before its request settles (on 2 workers the next
    // request may be admitted in between): wait until nothing is reserved.
    let settled = wait_for(Duration::from_secs(5), || quota_of(&relay, "q").2 == 0);
    assert!(settled.is_some(), "{:?}", quota_of(&relay, "q"));
    for _ in 0..3 {
        let resp = relay.roundtrip(&chat_as("sk-q", &b));
        let e = assert_error_shape(&resp, 429, Some("quota_exhausted"));
        let message = e["message"].as_str().unwrap();
        assert!(message.contains("is spent"), "{message}");
        assert!(!message.contains("sk-"), "a key in the message: {message}");
        // A spent quota never refills: no Retry-After.
        assert_eq!(resp.header("retry-after"), None);
    }
    // The refused requests never reached the upstream.
    assert_eq!(mock.stats().requests, 5);
    assert_quota(&relay, "q", (Some(quota), 5 * PER_REQUEST, 0));
    // Other tokens are not affected; their usage is counted too (no quota: null).
    let resp = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(resp.status, 200);
    assert_quota(&relay, "default", (None, PER_REQUEST, 0));
    let health = relay.health();
    assert_eq!(json_u64(&health, "quota_exhausted"), 3, "{health}");
    let metrics = metrics_text(&relay);
    for (series, value) in [
        ("ringway_token_quota_used{token=\"q\"}", 5 * PER_REQUEST),
        ("ringway_token_quota_tokens{token=\"q\"}", quota),
        ("ringway_token_quota_reserved{token=\"q\"}", 0),
        ("ringway_token_quota_used{token=\"default\"}", PER_REQUEST),
        ("ringway_quota_exhausted_total", 3),
    ] {
        assert_eq!(
            metric_value(&metrics, series),
            Some(value as f64),
            "{series}\n{metrics}"
        );
    }
    // No quota_tokens series for a token without a quota.
    assert!(!metrics.contains("ringway_token_quota_tokens{token=\"default\"}"));
}

fn reservations_in_flight_refuse_with_retry_after_and_settle_to_the_real_usage(driver: Driver) {
    let mock = Mock::start();
    let dir = StateDir::new("reserve");
    let relay = start(driver, &config(&mock, &dir.0, "1s", 1000));
    let addr = relay.addr;
    // A slow request reserving most of the quota.
    let slow = body("mock-stall-head-1500", 900);
    let slow_reservation = reservation(&slow, 900);
    let held = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(&chat_as("sk-q", &slow));
        c.read_final_response().status
    });
    assert!(
        wait_for(Duration::from_secs(10), || quota_of(&relay, "q").2 > 0).is_some(),
        "the slow request's reservation never showed"
    );
    assert_quota(&relay, "q", (Some(1000), 0, slow_reservation));
    // Nothing is spent, but the reservation leaves too little: 429 with Retry-After 1.
    let b = body("mock-fixed", 100);
    let resp = relay.roundtrip(&chat_as("sk-q", &b));
    let e = assert_error_shape(&resp, 429, Some("quota_exhausted"));
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("reserved by its requests in flight"),
        "{e}"
    );
    assert_eq!(resp.header("retry-after"), Some("1"));
    // The slow one ends: it is charged its real usage, not its reservation.
    assert_eq!(held.join().unwrap(), 200);
    assert!(
        wait_for(Duration::from_secs(10), || quota_of(&relay, "q")
            == (Some(1000), PER_REQUEST, 0))
        .is_some(),
        "{:?}",
        quota_of(&relay, "q")
    );
    let resp = relay.roundtrip(&chat_as("sk-q", &b));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_quota(&relay, "q", (Some(1000), 2 * PER_REQUEST, 0));
}

fn usage_survives_a_clean_restart_and_renamed_tokens_start_at_zero(driver: Driver) {
    let mock = Mock::start();
    let dir = StateDir::new("restart");
    let b = body("mock-fixed", 7);
    // A flush interval far longer than the test: only the last flush at SIGTERM writes.
    let cfg = config(&mock, &dir.0, "60s", 1_000_000);
    let relay = start(driver, &cfg);
    for _ in 0..3 {
        assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    }
    assert_used(&relay, "q", 3 * PER_REQUEST);
    stop_cleanly(relay);

    let relay = start(driver, &cfg);
    assert_quota(&relay, "q", (Some(1_000_000), 3 * PER_REQUEST, 0));
    assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    stop_cleanly(relay);

    // The token renamed (same key): a new name starts at 0; the old record is kept untouched.
    let renamed = ConfigBuilder::new(mock.addr)
        .workers(2)
        .server(&format!("state_dir = {:?}", dir.0.display().to_string()))
        .section(&quota_token("q2", "sk-q", 1_000_000));
    let relay = start(driver, &renamed);
    assert_quota(&relay, "q2", (Some(1_000_000), 0, 0));
    assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    stop_cleanly(relay);
    let relay = start(driver, &cfg);
    assert_used(&relay, "q", 4 * PER_REQUEST);
    stop_cleanly(relay);
}

fn kill_9_mid_load_loses_nothing_beyond_the_flush_bound_and_counts_nothing_twice(driver: Driver) {
    const CLIENTS: usize = 8;
    const FLUSH: Duration = Duration::from_millis(100);
    // How long a settled request may take to be on disk: the flush interval, plus the flush
    // itself (an fdatasync) on a loaded machine, generously.
    const MARGIN: Duration = Duration::from_secs(2);
    let mock = Mock::start();
    let dir = StateDir::new("kill9");
    let cfg = config(&mock, &dir.0, "100ms", 1_000_000_000_000);
    let relay = start(driver, &cfg);
    let addr = relay.addr;
    let b = body("mock-stall-head-20", 7);

    struct Seen {
        /// When each response the client read completely arrived.
        completed: Vec<Instant>,
        /// A request was sent and its response not read when the client stopped.
        outstanding: bool,
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, seen, b) = (stop.clone(), seen.clone(), b.clone());
            std::thread::spawn(move || {
                let mut mine = Seen {
                    completed: Vec::new(),
                    outstanding: false,
                };
                if let Ok(mut c) = Client::try_connect(addr) {
                    c.set_read_timeout(Duration::from_secs(10));
                    while !stop.load(Ordering::Relaxed) {
                        mine.outstanding = true;
                        if c.try_send(&chat_as("sk-q", &b)).is_err() {
                            break;
                        }
                        match c.try_read_response() {
                            Ok(r) if r.status == 200 => {
                                mine.completed.push(Instant::now());
                                mine.outstanding = false;
                            }
                            Ok(r) => panic!("status {}: {}", r.status, r.text()),
                            Err(_) => break,
                        }
                    }
                }
                seen.lock().unwrap().push(mine);
            })
        })
        .collect();
    // Load for long enough that plenty completed well before the kill.
    let load_start = Instant::now();
    std::thread::sleep(MARGIN + FLUSH + Duration::from_millis(1500));
    assert!(
        mock.stats().requests >= 20,
        "only {} requests under load after {:?}",
        mock.stats().requests,
        load_start.elapsed()
    );
    let killed_at = Instant::now();
    relay.signal(libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    drop(relay);
    let seen = seen.lock().unwrap();
    let completed: u64 = seen.iter().map(|s| s.completed.len() as u64).sum();
    let outstanding = seen.iter().filter(|s| s.outstanding).count() as u64;
    let settled_before = seen
        .iter()
        .flat_map(|s| &s.completed)
        .filter(|&&t| t + FLUSH + MARGIN <= killed_at)
        .count() as u64;
    assert!(
        settled_before >= 10,
        "too few early completions: {settled_before}"
    );

    let relay = start(driver, &cfg);
    let (_, used, reserved) = quota_of(&relay, "q");
    eprintln!(
        "kill -9: {completed} completed ({settled_before} of them {:?} before the kill), \
         {outstanding} in flight; replayed quota_used {used} = {} requests",
        FLUSH + MARGIN,
        used / PER_REQUEST
    );
    assert_eq!(reserved, 0);
    assert_eq!(used % PER_REQUEST, 0, "a partial request in {used}");
    assert!(
        used >= PER_REQUEST * settled_before,
        "lost usage: replayed {used}, but {settled_before} requests completed at least {:?} \
         before the kill",
        FLUSH + MARGIN
    );
    assert!(
        used <= PER_REQUEST * (completed + outstanding),
        "counted twice: replayed {used}, but only {completed} completed and {outstanding} were \
         in flight"
    );
    // The relay goes on from there.
    assert_eq!(
        relay
            .roundtrip(&chat_as("sk-q", &body("mock-fixed", 7)))
            .status,
        200
    );
    assert_used(&relay, "q", used + PER_REQUEST);
}

fn a_torn_ledger_tail_is_ignored_with_a_warning(driver: Driver) {
    let mock = Mock::start();
    let dir = StateDir::new("torn");
    let b = body("mock-fixed", 7);
    let cfg = config(&mock, &dir.0, "60s", 1_000_000);
    let relay = start(driver, &cfg);
    for _ in 0..2 {
        assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    }
    stop_cleanly(relay);
    // What a crash in the middle of an append leaves: a damaged line and a torn last one
    // claiming far more usage.
    let log = newest_log(&dir.0);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(b"0badc0de 5000 \"q\"\n3f2e1d0c 99999 \"q");
    std::fs::write(&log, &bytes).unwrap();

    let relay = start(driver, &cfg);
    assert_used(&relay, "q", 2 * PER_REQUEST);
    let stderr = relay.stderr_text();
    assert!(
        stderr.contains("record ignored, it is torn")
            && stderr.contains("record ignored, it fails its checksum"),
        "{stderr}"
    );
    assert!(stderr.contains("WARN"), "{stderr}");
    // Recording goes on, on a clean line: the next restart sees it.
    assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    stop_cleanly(relay);
    let relay = start(driver, &cfg);
    assert_used(&relay, "q", 3 * PER_REQUEST);
    assert!(!relay.stderr_text().contains("record ignored"));
}

/// The ledger log the relay appends to (the highest generation).
fn newest_log(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let gen: u64 = name
                .strip_prefix("quota-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((gen, dir.join(name)))
        })
        .max()
        .expect("a ledger log")
        .1
}

#[test]
fn a_quota_without_a_state_dir_is_a_config_error_naming_file_line_and_key() {
    let mock = Mock::start();
    let text = ConfigBuilder::new(mock.addr)
        .section(&quota_token("q", "sk-q", 100))
        .render(free_port());
    let path = write_temp("quota", "toml", &text);
    let (code, _, stderr) = run_bin(&["check-config", path.to_str().unwrap()], &[]);
    let line = text
        .lines()
        .position(|l| l.starts_with("quota_tokens"))
        .unwrap()
        + 1;
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:{line}: tokens[0].quota_tokens: needs [server] state_dir",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn an_unusable_or_busy_state_dir_refuses_the_start_naming_it() {
    let mock = Mock::start();
    // Under a regular file: the directory cannot be created.
    let file = write_temp("not-a-dir", "txt", "x");
    let under_file = file.join("state");
    let cfg = ConfigBuilder::new(mock.addr)
        .server(&format!(
            "state_dir = {:?}",
            under_file.display().to_string()
        ))
        .section(&quota_token("q", "sk-q", 100));
    let e = Relay::try_start(&cfg.render(free_port()), &[])
        .err()
        .expect("start refused");
    let _ = std::fs::remove_file(&file);
    assert!(e.contains("exit status: 1"), "{e}");
    assert!(
        e.contains("cannot create state_dir") && e.contains(&under_file.display().to_string()),
        "{e}"
    );
    // In use by another relay: refused, the first one unharmed.
    let dir = StateDir::new("busy");
    let cfg = config(&mock, &dir.0, "1s", 100);
    let first = cfg.start(&[]);
    let e = Relay::try_start(&cfg.render(free_port()), &[])
        .err()
        .expect("second relay refused");
    assert!(e.contains("is in use by another ringway process"), "{e}");
    assert_eq!(first.roundtrip(&chat("mock-fixed", false)).status, 200);
    // Created when missing.
    assert!(dir.0.join("LOCK").exists());
}

fn usage_carries_across_a_reload_that_changes_the_quota(driver: Driver) {
    let mock = Mock::start();
    let dir = StateDir::new("quota-reload");
    let relay = start(driver, &config(&mock, &dir.0, "50ms", 1000));
    let port = relay.addr.port();
    let b = body("mock-fixed", 10);
    for _ in 0..3 {
        assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    }
    assert_quota(&relay, "q", (Some(1000), 3 * PER_REQUEST, 0));

    // The quota shrinks to just under what one more request reserves on top of the usage:
    // the usage so far must still count.
    let smaller = 3 * PER_REQUEST + reservation(&b, 10) - 1;
    let line = relay.reload_with(&config(&mock, &dir.0, "50ms", smaller).render(port));
    assert!(line.contains("config reloaded"), "{line}");
    assert_quota(&relay, "q", (Some(smaller), 3 * PER_REQUEST, 0));
    let r = relay.roundtrip(&chat_as("sk-q", &b));
    assert_error_shape(&r, 429, Some("quota_exhausted"));

    // Raised again, the same usage leaves room for exactly one more.
    let one_more = smaller + 1;
    let line = relay.reload_with(&config(&mock, &dir.0, "50ms", one_more).render(port));
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(relay.roundtrip(&chat_as("sk-q", &b)).status, 200);
    assert_used(&relay, "q", 4 * PER_REQUEST);

    // The ledger cannot move while the process runs.
    let other = StateDir::new("quota-reload-other");
    let line = relay.reload_with(&config(&mock, &other.0, "50ms", one_more).render(port));
    assert!(
        line.contains("config reload refused") && line.contains("state_dir"),
        "{line}"
    );
    stop_cleanly(relay);
}

/// Waits (bounded) until token `name`'s quota figures are `want`, then asserts them: a response
/// reaches its client a moment before its request settles (usage counted, reservation given
/// back), so a reading taken right after a response may be one step behind.
fn assert_quota(relay: &Relay, name: &str, want: (Option<u64>, u64, u64)) {
    let mut got = quota_of(relay, name);
    let _ = wait_for(Duration::from_secs(5), || {
        got = quota_of(relay, name);
        got == want
    });
    assert_eq!(got, want, "token {name}");
}

/// Like [`assert_quota`], for the settled usage alone.
fn assert_used(relay: &Relay, name: &str, want: u64) {
    let mut got = quota_of(relay, name).1;
    let _ = wait_for(Duration::from_secs(5), || {
        got = quota_of(relay, name).1;
        got == want
    });
    assert_eq!(got, want, "token {name}");
}
