//! Operations: signals, graceful drain, the systemd notify protocol and its watchdog, against
//! the real binary on 127.0.0.1 with the mock upstream. Every wait is bounded.
//!
//! - the notify datagrams READY, STATUS, WATCHDOG, then STOPPING arrive in that order on a
//!   fake `NOTIFY_SOCKET` (a datagram socket this test binds; also as an abstract `@name`);
//! - a worker whose thread is blocked stops the watchdog pings, which resume when it turns;
//! - SIGTERM / SIGINT under streaming load: streams that end within `drain` finish whole,
//!   longer ones end with the SSE `error` event `shutting_down` and a clean end, the listener
//!   is closed, an idle keep-alive connection is closed, a request in flight is answered with
//!   `Connection: close`, a request whose head arrives during the drain is answered with
//!   `Connection: close`, and the process exits 0 and logs what it drained;
//! - SIGHUP no longer ends the process and still reopens the access log file.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A fake service manager: a datagram socket the relay's `NOTIFY_SOCKET` names, and a thread
/// recording what arrives and when.
struct FakeSystemd {
    /// The value for `NOTIFY_SOCKET`.
    address: String,
    path: Option<std::path::PathBuf>,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let path = temp_path("notify", "sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        FakeSystemd::listen(socket, path.display().to_string(), Some(path))
    }

    fn bind_abstract() -> FakeSystemd {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "ringway-test-notify-{}-{:x}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (free_port() as u128)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        FakeSystemd::listen(socket, format!("@{name}"), None)
    }

    fn listen(
        socket: UnixDatagram,
        address: String,
        path: Option<std::path::PathBuf>,
    ) -> FakeSystemd {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(120);
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) && Instant::now() < give_up {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    g.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        FakeSystemd {
            address,
            path,
            got,
            stop,
        }
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the messages so far.
    fn wait(&self, within: Duration, what: &str, pred: impl Fn(&[(Instant, String)]) -> bool) {
        let deadline = Instant::now() + within;
        while !pred(&self.messages()) {
            assert!(
                Instant::now() < deadline,
                "notify: {what} did not happen within {within:?}; got {:?}",
                self.kinds()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first line of each message (its kind), in arrival order.
    fn kinds(&self) -> Vec<String> {
        self.messages()
            .into_iter()
            .map(|(_, m)| m.split('=').next().unwrap_or("").to_string())
            .collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.kinds().iter().filter(|k| *k == kind).count()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn position(kinds: &[String], kind: &str) -> usize {
    kinds
        .iter()
        .position(|k| k == kind)
        .unwrap_or_else(|| panic!("no {kind} among {kinds:?}"))
}

fn notify_messages_arrive_in_order(driver: Driver, abstract_name: bool) {
    let mock = Mock::start();
    let systemd = if abstract_name {
        FakeSystemd::bind_abstract()
    } else {
        FakeSystemd::bind()
    };
    let cfg = ConfigBuilder::new(mock.addr).workers(2);
    let mut relay = start_env(
        driver,
        &cfg,
        &[
            ("NOTIFY_SOCKET", systemd.address.as_str()),
            // Pings every 500 ms.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    systemd.wait(Duration::from_secs(10), "READY, STATUS, 2 WATCHDOG", |_| {
        systemd.count("READY") == 1
            && systemd.count("STATUS") >= 1
            && systemd.count("WATCHDOG") >= 2
    });
    let status = systemd
        .messages()
        .into_iter()
        .find(|(_, m)| m.starts_with("STATUS="))
        .unwrap()
        .1;
    assert!(
        status.starts_with("STATUS=serving: ")
            && status.contains("in flight")
            && status.contains("req/s"),
        "{status}"
    );
    // A reload (SIGHUP) is bracketed by RELOADING=1 (with the monotonic clock) and READY=1.
    relay.signal(libc::SIGHUP);
    systemd.wait(Duration::from_secs(10), "RELOADING, READY", |_| {
        systemd.count("RELOADING") == 1 && systemd.count("READY") == 2
    });
    let messages = systemd.messages();
    let reloading = messages
        .iter()
        .position(|(_, m)| m.starts_with("RELOADING=1"))
        .unwrap();
    assert!(
        messages[reloading].1.contains("\nMONOTONIC_USEC="),
        "{:?}",
        messages[reloading].1
    );
    let second_ready = messages
        .iter()
        .rposition(|(_, m)| m.starts_with("READY=1"))
        .unwrap();
    assert!(second_ready > reloading, "{:?}", systemd.kinds());
    assert!(relay.stderr_text().contains("SIGHUP: config reloaded"));
    relay.signal(libc::SIGTERM);
    let exit = relay
        .wait_exit(Duration::from_secs(20))
        .expect("exited after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", relay.stderr_text());
    systemd.wait(Duration::from_secs(5), "STOPPING", |_| {
        systemd.count("STOPPING") == 1
    });
    let kinds = systemd.kinds();
    let ready = position(&kinds, "READY");
    assert_eq!(ready, 0, "READY comes first: {kinds:?}");
    assert!(position(&kinds, "STATUS") > ready, "{kinds:?}");
    assert!(position(&kinds, "WATCHDOG") > ready, "{kinds:?}");
    let stopping = position(&kinds, "STOPPING");
    let last_serving_status = systemd
        .messages()
        .iter()
        .rposition(|(_, m)| m.starts_with("STATUS=serving"))
        .unwrap();
    assert!(stopping > last_serving_status, "{kinds:?}");
    // After STOPPING, the status says the relay drains.
    let after: Vec<String> = systemd.messages()[stopping..]
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    assert!(
        after.iter().all(|m| !m.starts_with("STATUS=serving")),
        "{after:?}"
    );
}

fn notify_messages_arrive_in_order_on_a_path_socket(driver: Driver) {
    notify_messages_arrive_in_order(driver, false);
}

fn notify_messages_arrive_in_order_on_an_abstract_socket(driver: Driver) {
    notify_messages_arrive_in_order(driver, true);
}

/// One worker's thread blocked (the test-only stall hook) stops the watchdog pings; they
/// resume once it turns again.
fn a_stalled_worker_stops_the_watchdog_pings(driver: Driver) {
    let mock = Mock::start();
    let systemd = FakeSystemd::bind();
    let port = free_port();
    let config = write_temp(
        "stall",
        "toml",
        &ConfigBuilder::new(mock.addr).workers(2).render(port),
    );
    let stderr_path = temp_path("stall-stderr", "log");
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
        .env("NOTIFY_SOCKET", &systemd.address)
        // Pings every 300 ms while every worker turns (heartbeats every 100 ms).
        .env("WATCHDOG_USEC", "600000")
        .env("RINGWAY_TEST_STALL_ON_ACCEPT_MS", "4000");
    for (k, v) in driver.env() {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("spawn ringway"));
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // No HTTP before the stall: the first accepted connection is what blocks a worker.
    systemd.wait(Duration::from_secs(10), "READY and 3 pings", |_| {
        systemd.count("READY") == 1 && systemd.count("WATCHDOG") >= 3
    });
    let stalled_at = Instant::now();
    let _conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // Wait past the stall (4 s) and until pings are back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resumed = systemd
            .messages()
            .iter()
            .any(|(t, m)| m == "WATCHDOG=1" && *t > stalled_at + Duration::from_millis(4000));
        if resumed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pings did not resume after the stall; stderr:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pings: Vec<Instant> = systemd
        .messages()
        .into_iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| t)
        .collect();
    // The stall began when a worker accepted the connection (at once on an idle relay); one
    // check may still see a beat from before it. From 1 s in until the stall ends: no ping.
    let silent_from = stalled_at + Duration::from_millis(1000);
    let silent_to = stalled_at + Duration::from_millis(3500);
    let during: Vec<Duration> = pings
        .iter()
        .filter(|&&t| t > silent_from && t < silent_to)
        .map(|&t| t - stalled_at)
        .collect();
    assert!(
        during.is_empty(),
        "watchdog pings while a worker was stalled, at {during:?} after the stall began; stderr:\n{}",
        stderr()
    );
    let log = stderr();
    assert!(
        log.contains("withholding the watchdog ping") && log.contains("turns again"),
        "{log}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let exit = wait_child(&mut child.0, Duration::from_secs(20));
    assert_eq!(exit.and_then(|e| e.code()), Some(0), "{}", stderr());
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&stderr_path);
}

fn wait_child(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Streams through the relay on their own connections; returns their join handles.
fn start_streams(relay: &Relay, model: &str, n: usize) -> Vec<std::thread::JoinHandle<Response>> {
    (0..n)
        .map(|_| {
            let addr = relay.addr;
            let request = chat(model, true);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.set_read_timeout(Duration::from_secs(20));
                c.send(&request);
                c.read_response()
            })
        })
        .collect()
}

/// SIGTERM or SIGINT with a 2 s drain under streaming load.
fn drain_under_streaming_load(driver: Driver, sig: i32) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .workers(2)
        .server("drain = \"2s\"");
    let mut relay = start(driver, &cfg);

    // An idle keep-alive connection (one request done).
    let mut idle = relay.client();
    idle.send(&chat("mock-fixed", false));
    let r = idle.read_response();
    assert_eq!(r.status, 200);
    assert!(!r.closes());

    // Streams that end within the drain (8 events 100 ms apart) and ones that would not (100).
    let short = start_streams(&relay, "mock-stream-8-100", 3);
    let long = start_streams(&relay, "mock-stream-100-100", 3);
    // A non-streamed request whose answer comes during the drain (the mock waits 1 s).
    let in_flight = {
        let addr = relay.addr;
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            c.send(&chat("mock-stall-head-1000", false));
            let r = c.read_response();
            let closed = c.closed_within(Duration::from_secs(5));
            (r, closed)
        })
    };
    // A connection with half a request head when the signal comes.
    let mut partial = relay.client();
    let request = chat("mock-fixed", false);
    let split = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    partial.send(&request[..split]);

    let all_in = wait_for(Duration::from_secs(10), || {
        json_u64(&relay.health(), "inflight_requests") == 7
    });
    assert!(all_in.is_some(), "7 requests in flight: {}", relay.health());
    let signalled = Instant::now();
    relay.signal(sig);

    // The idle keep-alive connection is closed.
    assert!(
        idle.closed_within(Duration::from_secs(3)),
        "an idle keep-alive connection stays open during the drain"
    );
    // The listener is closed: a new connection is refused (or closed unanswered).
    let refused = wait_for(Duration::from_secs(3), || match TcpStream::connect_timeout(
        &relay.addr,
        Duration::from_secs(1),
    ) {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.write_all(&get("/api/monitor/health", &[]));
            let mut b = [0u8; 64];
            matches!(std::io::Read::read(&mut s, &mut b), Ok(0) | Err(_))
        }
    });
    assert!(
        refused.is_some(),
        "new connections are still accepted while draining"
    );
    // The rest of the half-sent head arrives during the drain: answered, with close.
    partial.send(&request[split..]);
    let r = partial.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.closes(),
        "a request read while draining is answered with Connection: close"
    );
    assert!(partial.closed_within(Duration::from_secs(5)));

    let (r, closed) = in_flight.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.closes(),
        "an answer written while draining says Connection: close"
    );
    assert!(closed, "the connection ends after it");

    for h in short {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        let text = r.text();
        assert!(
            sse_error_event(&r.body).is_none() && text.contains("data: [DONE]"),
            "a stream that ends within the drain finishes whole: {text}"
        );
        assert_eq!(text.matches("chat.completion.chunk").count(), 8, "{text}");
    }
    for h in long {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        let (error, last) =
            sse_error_event(&r.body).unwrap_or_else(|| panic!("no error event: {}", r.text()));
        assert_eq!(error["error"]["code"], "shutting_down", "{error}");
        assert!(last, "the error event ends the stream: {}", r.text());
        assert!(!r.text().contains("[DONE]"));
        let ended = r.done_at.duration_since(signalled);
        assert!(
            ended >= Duration::from_millis(1800) && ended < Duration::from_secs(8),
            "a long stream ended {ended:?} after the signal (drain 2 s)"
        );
    }
    let exit = relay
        .wait_exit(Duration::from_secs(15))
        .expect("the relay exits");
    assert_eq!(exit.code(), Some(0), "{}", relay.stderr_text());
    let log = relay.stderr_text();
    let name = if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    };
    assert!(log.contains(&format!("{name}: shutting down")), "{log}");
    assert!(log.contains("drain: 7 request(s) in flight"), "{log}");
    assert!(
        log.contains("3 ended at the drain deadline with shutting_down"),
        "{log}"
    );
}

fn sigterm_drains_streams_and_exits_0(driver: Driver) {
    drain_under_streaming_load(driver, libc::SIGTERM);
}

fn sigint_drains_streams_and_exits_0(driver: Driver) {
    drain_under_streaming_load(driver, libc::SIGINT);
}

/// With nothing in flight, a drain ends at once, however long `drain` is.
fn an_idle_relay_exits_at_once(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).workers(2);
    let mut relay = start(driver, &cfg);
    let t = Instant::now();
    relay.signal(libc::SIGTERM);
    let exit = relay.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// SIGHUP no longer ends the process, and reopens the access log file.
fn sighup_keeps_serving_and_reopens_the_access_log(driver: Driver) {
    let mock = Mock::start();
    let log_path = temp_path("access", "log");
    let cfg = ConfigBuilder::new(mock.addr).section(&format!(
        "[log]\naccess = {:?}",
        log_path.display().to_string()
    ));
    let mut relay = start(driver, &cfg);
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    let first = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.lines().count() == 1)
    });
    assert!(first.is_some());
    let rotated = temp_path("access-rotated", "log");
    std::fs::rename(&log_path, &rotated).unwrap();
    for _ in 0..3 {
        relay.signal(libc::SIGHUP);
    }
    let reopened = wait_for(Duration::from_secs(10), || {
        relay.roundtrip(&chat("mock-fixed", false));
        std::fs::read_to_string(&log_path).is_ok_and(|t| !t.is_empty())
    });
    assert!(reopened.is_some(), "{}", relay.stderr_text());
    assert!(relay.is_running(), "SIGHUP ended the relay");
    assert!(relay.stderr_text().contains("SIGHUP"));
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&rotated);
}

both_drivers! {
    notify_messages_arrive_in_order_on_a_path_socket,
    notify_messages_arrive_in_order_on_an_abstract_socket,
    a_stalled_worker_stops_the_watchdog_pings,
    sigterm_drains_streams_and_exits_0,
    sigint_drains_streams_and_exits_0,
    an_idle_relay_exits_at_once,
    sighup_keeps_serving_and_reopens_the_access_log,
    top_once_prints_the_health_figures,
}

/// `ringway top URL --once` prints the health figures as text; with `--json`, the health JSON.
fn top_once_prints_the_health_figures(driver: Driver) {
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr).workers(2));
    for _ in 0..3 {
        assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
    }
    let url = format!("http://{}", relay.addr);
    let (code, out, err) = run_bin(&["top", &url, "--once"], &[]);
    assert_eq!(code, Some(0), "{err}");
    for needle in [
        "status ok",
        "2 worker(s)",
        driver.health_name(),
        "inflight 0",
        "total 3",
        "2xx 3",
        "timeouts  ",
        "client_gone 0",
        "upstream  active 0",
        "open fds ",
        "rss ",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // One row per worker.
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_end().ends_with(driver.health_name())
                && l.trim_start().starts_with(char::is_numeric))
            .count(),
        2,
        "{out}"
    );
    let (code, out, err) = run_bin(&["top", &url, "--once", "--json"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let h: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(h["requests_total"], 3, "{h}");
    assert_eq!(h["requests_by_class"]["2xx"], 3, "{h}");
    assert_eq!(h["workers"], 2);
    // A relay that is not there: exit 1, the reason on stderr.
    let (code, _, err) = run_bin(
        &[
            "top",
            &format!("http://127.0.0.1:{}", free_port()),
            "--once",
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("ringway top:"), "{err}");
    let (code, _, _) = run_bin(&["top", &url, "--json"], &[]);
    assert_eq!(code, Some(2), "--json without --once is a usage error");
}

/// The shipped unit passes `systemd-analyze verify` (with its binary path pointed at the
/// binary under test) and `systemd-analyze security` rates it at most 3.0. Fails, never
/// skips, when systemd-analyze is missing.
#[test]
fn the_systemd_unit_verifies_and_its_exposure_is_at_most_3() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/ringway.service"
    ))
    .expect("systemd/ringway.service");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LoadCredential=ringway.toml:",
        "StateDirectory=ringway",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
    let dir = temp_path("unit", "d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringway.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ringway", bin())).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze must be installed (apt-get install systemd); this test does not skip");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["verify"]);
    assert_eq!(code, Some(0), "verify failed:\n{out}\n{err}");
    assert!(
        !err.contains("ringway.service"),
        "verify complained about the unit:\n{err}"
    );
    // --threshold is on a 0-100 scale: 30 is an exposure of 3.0.
    let (code, out, err) = run(&["security", "--offline=true", "--threshold=30"]);
    let text = format!("{out}{err}");
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ringway.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 3.0, "exposure {exposure}:\n{text}");
    assert_eq!(code, Some(0), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
