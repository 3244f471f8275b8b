//! Binary upgrade under load, end to end against the real binary: relay A serves a steady load
//! of new connections, keep-alive requests and keep-alive streams; relay B starts on the same
//! address with `--takeover` (it takes A's listening sockets over, see docs/upgrade.md); A gets
//! SIGTERM and drains; the load goes on against B. No connection attempt may fail, and every
//! request must get its whole, correct answer (no stream cut). Runs on io_uring and epoll, and
//! across the two (A on one driver, B on the other).
//!
//! Without `--takeover` a second relay still refuses a port in use: tests/hostile_ops.rs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    takeover_under_load_refuses_no_connection,
    sigusr2_upgrade_under_load_refuses_no_connection,
}

#[test]
fn takeover_from_epoll_to_io_uring_refuses_no_connection() {
    upgrade_under_load(Driver::Epoll, Driver::IoUring, How::Flag);
}

#[test]
fn takeover_from_io_uring_to_epoll_refuses_no_connection() {
    upgrade_under_load(Driver::IoUring, Driver::Epoll, How::Flag);
}

/// `ringway --config PATH --takeover` started next to A, then SIGTERM to A.
fn takeover_under_load_refuses_no_connection(driver: Driver) {
    upgrade_under_load(driver, driver, How::Flag);
}

/// SIGUSR2 to A, under a fake service manager: A starts its successor, hands over, sends
/// `MAINPID=`, and drains by itself.
fn sigusr2_upgrade_under_load_refuses_no_connection(driver: Driver) {
    upgrade_under_load(driver, driver, How::Signal);
}

/// Client threads of each kind.
const FRESH_THREADS: usize = 3;
const BURST_THREADS: usize = 1;
/// Connections a burst opens before reading their answers.
const BURST: usize = 32;
const KEEPALIVE_THREADS: usize = 2;
const STREAM_THREADS: usize = 2;
/// The streamed model: 6 events 40 ms apart, so streams are in flight at every step.
const STREAM_MODEL: &str = "mock-stream-6-40";
/// Answers (plain or streamed) the load must get before B starts, between B and A's drain,
/// and after A exited: counts, not times, so a slow machine only makes the test slower.
const STEP: u64 = 300;
/// How long one step may take at most.
const STEP_WITHIN: Duration = Duration::from_secs(60);
/// Upper bound on requests per client thread (the load stops at whichever comes first).
const MAX_PER_THREAD: u64 = 20_000;

/// What the client threads saw.
struct Tally {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    answers: AtomicU64,
    streams: AtomicU64,
    /// A reused keep-alive connection the relay closed before any byte of the next answer
    /// (an idle close: HTTP/1.1 lets a client retry that request on a new connection, and the
    /// threads do). Counted, and printed.
    idle_closes: AtomicU64,
    failures: AtomicU64,
    /// The first few failures, described, with when they happened.
    failed: Mutex<Vec<String>>,
    started: Instant,
}

impl Tally {
    /// Answers so far, plain and streamed.
    fn answered(&self) -> u64 {
        self.answers.load(Relaxed) + self.streams.load(Relaxed)
    }

    /// Waits (bounded by [`STEP_WITHIN`]) until `at_least` answers were counted; returns the
    /// count. The load running through every step of the upgrade is what this asserts.
    fn wait_answers(&self, at_least: u64, step: &str) -> u64 {
        let reached = wait_for(STEP_WITHIN, || self.answered() >= at_least);
        assert!(
            reached.is_some(),
            "{step}: {} answers within {STEP_WITHIN:?}, {at_least} expected; failures: {:#?}",
            self.answered(),
            self.failed.lock().unwrap()
        );
        self.answered()
    }

    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Relaxed);
        let mut f = self.failed.lock().unwrap();
        if f.len() < 20 {
            f.push(format!("{what} (at {:?})", self.started.elapsed()));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A new connection per request.
    Fresh,
    /// [`BURST`] new connections opened and sent a request each before any answer is read,
    /// again and again: connections wait in the accept queues at every moment, so a queue
    /// that closed would reset some.
    Burst,
    /// Sequential plain requests on one connection, a new one when the relay closes it.
    KeepAlive,
    /// Sequential streams on one connection, likewise.
    Streams,
}

fn upgrade_under_load(driver_a: Driver, driver_b: Driver, how: How) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .workers(2)
        .server("drain = \"10s\"");
    let systemd = matches!(how, How::Signal).then(FakeNotify::bind);
    let mut a = match &systemd {
        Some(n) => start_env(driver_a, &cfg, &[("NOTIFY_SOCKET", n.address.as_str())]),
        None => start(driver_a, &cfg),
    };
    let addr = a.addr;
    // The answer every plain request must get (mock-fixed's content).
    let expected = content_of(&a.roundtrip(&chat("mock-fixed", false)));

    let tally = Arc::new(Tally {
        connects: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        answers: AtomicU64::new(0),
        streams: AtomicU64::new(0),
        idle_closes: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        failed: Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let steps = |what: &str| println!("{what} at {:?}", tally.started.elapsed());
    let stop = Arc::new(AtomicBool::new(false));
    let kinds = std::iter::repeat_n(Kind::Fresh, FRESH_THREADS)
        .chain(std::iter::repeat_n(Kind::Burst, BURST_THREADS))
        .chain(std::iter::repeat_n(Kind::KeepAlive, KEEPALIVE_THREADS))
        .chain(std::iter::repeat_n(Kind::Streams, STREAM_THREADS));
    let threads: Vec<_> = kinds
        .map(|kind| {
            let (tally, stop, expected) = (tally.clone(), stop.clone(), expected.clone());
            std::thread::spawn(move || load(addr, kind, &expected, &tally, &stop))
        })
        .collect();

    let before_b = tally.wait_answers(STEP, "before B");

    // A keep-alive connection of A's, idle through the upgrade: A's drain must close it (a
    // successor A started must not have inherited it and hold it open).
    let mut idle = Client::connect(addr);
    idle.send(&chat("mock-fixed", false));
    assert_eq!(content_of(&idle.read_response()), expected);

    steps("B starts");
    let (b, b_pid, before_term, status) = match how {
        How::Flag => {
            // B takes over: the same config, on the same address, started by the operator.
            let b_config = write_temp("relay-b", "toml", &cfg.render(addr.port()));
            let b = Relay::try_start_file(b_config, driver_b.env(), &|cmd| {
                cmd.arg("--takeover");
            })
            .unwrap_or_else(|e| panic!("relay B: {e}"));
            let b_listening = wait_for(Duration::from_secs(10), || {
                b.stderr_text().contains("listening on")
            });
            assert!(b_listening.is_some(), "relay B:\n{}", b.stderr_text());
            let b_pid = b.pid();
            let handed = wait_for(Duration::from_secs(5), || {
                a.stderr_text()
                    .contains(&format!("handed to ringway pid {b_pid}"))
            });
            assert!(handed.is_some(), "relay A:\n{}", a.stderr_text());
            let before_term = tally.wait_answers(before_b + STEP, "between B and SIGTERM");
            // A drains and exits while the load goes on.
            steps("SIGTERM");
            a.signal(libc::SIGTERM);
            let status = a.wait_exit(Duration::from_secs(20));
            (Some(b), b_pid, before_term, status)
        }
        How::Signal => {
            // A starts B itself (its own binary, its config, --takeover), hands over, tells
            // the service manager B is the main process, and drains.
            a.signal(libc::SIGUSR2);
            let mut b_pid = 0;
            let told = wait_for(Duration::from_secs(10), || {
                b_pid = main_pid(&systemd.as_ref().expect("notify socket").messages());
                b_pid != 0
            });
            assert!(told.is_some(), "no MAINPID=; relay A:\n{}", a.stderr_text());
            let before_term = tally.answers.load(Relaxed) + tally.streams.load(Relaxed);
            let status = a.wait_exit(Duration::from_secs(20));
            (None, b_pid, before_term, status)
        }
    };
    // B outlives A (in the signal case it is A's child, not this test's): ended at the end.
    let _b_guard = KillPid(b_pid);
    let a_log = a.stderr_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "relay A's exit: {status:?}\n{a_log}"
    );
    let at_exit = tally.answers.load(Relaxed) + tally.streams.load(Relaxed);
    steps("A exited");
    assert!(
        idle.closed_within(Duration::from_secs(2)),
        "an idle connection of A's is still open after A exited"
    );
    tally.wait_answers(at_exit + STEP, "after A exited");
    stop.store(true, Relaxed);
    for t in threads {
        t.join().expect("a load thread panicked");
    }
    let total = tally.answers.load(Relaxed) + tally.streams.load(Relaxed);

    let failures = tally.failures.load(Relaxed);
    println!(
        "upgrade {:?} -> {:?} by {how:?}: {} connections ({} failed), {} plain answers, \
         {} streams, {} idle keep-alive closes retried, {failures} failures; answered before B \
         {before_b}, before A's drain {before_term}, at A's exit {at_exit}, in all {total}",
        driver_a,
        driver_b,
        tally.connects.load(Relaxed),
        tally.connect_failures.load(Relaxed),
        tally.answers.load(Relaxed),
        tally.streams.load(Relaxed),
        tally.idle_closes.load(Relaxed),
    );
    let failed = tally.failed.lock().unwrap().clone();
    assert_eq!(
        tally.connect_failures.load(Relaxed),
        0,
        "refused or failed connections: {failed:#?}"
    );
    assert_eq!(
        failures, 0,
        "failed requests: {failed:#?}\nrelay A:\n{a_log}"
    );
    assert!(
        a_log.contains("drain: done"),
        "relay A did not drain:\n{a_log}"
    );
    assert!(
        a_log.contains(", 0 ended at the drain deadline"),
        "relay A cut requests at its drain deadline:\n{a_log}"
    );

    // B serves alone now, and counted requests of its own.
    let r = roundtrip(addr, &chat("mock-fixed", false));
    assert_eq!(r.status, 200, "{}", r.text());
    let h = health_at(addr);
    assert_eq!(h["io_driver"], driver_b.health_name(), "{h}");
    assert!(json_u64(&h, "requests_total") > 1, "relay B's health: {h}");
    let b_log = match &b {
        Some(b) => b.stderr_text(),
        // B writes to the stderr it inherited from A.
        None => a_log.clone(),
    };
    // B can itself be taken over later: it offers the listeners in turn.
    assert!(
        !b_log.contains("cannot open the takeover socket"),
        "relay B:\n{b_log}"
    );
    if let Some(systemd) = &systemd {
        // The service manager heard A ready, then B as the main process, then B ready.
        let kinds = systemd.messages();
        let main = kinds
            .iter()
            .position(|m| *m == format!("MAINPID={b_pid}"))
            .unwrap_or_else(|| panic!("{kinds:?}"));
        assert_eq!(
            kinds.iter().position(|m| m == "READY=1").map(|r| r < main),
            Some(true),
            "{kinds:?}"
        );
        assert!(
            kinds[main..].iter().any(|m| m == "READY=1"),
            "B's READY=1 after MAINPID: {kinds:?}"
        );
        // B's own log lines, in A's stderr.
        assert!(
            a_log.contains(&format!(
                "took 2 listener(s) of {addr} from ringway pid {}",
                a.pid()
            )),
            "{a_log}"
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// The operator starts B with `--takeover`, then sends A SIGTERM.
    Flag,
    /// The operator sends A SIGUSR2; A does the rest.
    Signal,
}

/// Kills a process by pid when dropped (a relay this test did not spawn itself).
struct KillPid(u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        if self.0 != 0 {
            // SAFETY: kill(2) on a pid; no memory is passed.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// A fake service manager: the datagrams sent to `NOTIFY_SOCKET`, in order.
struct FakeNotify {
    address: String,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeNotify {
    fn bind() -> FakeNotify {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "ringway-test-upgrade-notify-{}-{}",
            std::process::id(),
            free_port()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(120);
            let mut buf = [0u8; 4096];
            while !st.load(Relaxed) && Instant::now() < give_up {
                if let Ok(n) = socket.recv(&mut buf) {
                    g.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        FakeNotify {
            address: format!("@{name}"),
            got,
            stop,
        }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for FakeNotify {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// The pid of the first `MAINPID=` message, or 0.
fn main_pid(messages: &[String]) -> u32 {
    messages
        .iter()
        .find_map(|m| m.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn roundtrip(addr: std::net::SocketAddr, request: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send(request);
    c.read_final_response()
}

fn health_at(addr: std::net::SocketAddr) -> serde_json::Value {
    let r = roundtrip(addr, &get("/api/monitor/health", &[]));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// One client thread: requests of `kind` until `stop`, each checked whole.
fn load(addr: std::net::SocketAddr, kind: Kind, expected: &str, tally: &Tally, stop: &AtomicBool) {
    if kind == Kind::Burst {
        return bursts(addr, expected, tally, stop);
    }
    let stream = kind == Kind::Streams;
    let request = if stream {
        chat(STREAM_MODEL, true)
    } else {
        chat("mock-fixed", false)
    };
    let mut conn: Option<Client> = None;
    let mut sent = 0u64;
    while !stop.load(Relaxed) && sent < MAX_PER_THREAD {
        let reused = conn.is_some() && kind != Kind::Fresh;
        let mut c = match conn.take().filter(|_| kind != Kind::Fresh) {
            Some(c) => c,
            None => match Client::try_connect(addr) {
                Ok(c) => {
                    tally.connects.fetch_add(1, Relaxed);
                    c
                }
                Err(e) => {
                    tally.connect_failures.fetch_add(1, Relaxed);
                    tally.fail(format!("connect: {e}"));
                    continue;
                }
            },
        };
        sent += 1;
        if let Err(e) = c.try_send(&request) {
            if reused {
                tally.idle_closes.fetch_add(1, Relaxed);
            } else {
                tally.fail(format!("{kind:?}: sending on a new connection: {e}"));
            }
            continue;
        }
        let r = match c.read_response_eof_aware() {
            Ok(r) => r,
            Err(ReadError::Eof(bytes)) if reused && bytes.is_empty() => {
                tally.idle_closes.fetch_add(1, Relaxed);
                continue;
            }
            Err(ReadError::Io(e)) if reused && idle_reset(&e) && c.pending().is_empty() => {
                tally.idle_closes.fetch_add(1, Relaxed);
                continue;
            }
            Err(e) => {
                tally.fail(format!(
                    "{kind:?}: reading the answer ({} connection): {e:?}",
                    if reused { "reused" } else { "new" }
                ));
                continue;
            }
        };
        if r.status != 200 {
            tally.fail(format!("{kind:?}: status {}: {}", r.status, r.text()));
            continue;
        }
        if stream {
            let events = stream_contents(&r.text());
            let want: Vec<String> = (0..6).map(|i| format!("tok{i}")).collect();
            if events != want || !r.text().contains("data: [DONE]") {
                tally.fail(format!("a stream cut or altered: {:?}", r.text()));
                continue;
            }
            tally.streams.fetch_add(1, Relaxed);
        } else {
            let content = content_of(&r);
            if content != expected {
                tally.fail(format!("a wrong answer: {content:?}"));
                continue;
            }
            tally.answers.fetch_add(1, Relaxed);
        }
        if !r.closes() {
            conn = Some(c);
        }
    }
}

/// [`Kind::Burst`]: [`BURST`] connections, each sent a request at once, then every answer read.
fn bursts(addr: std::net::SocketAddr, expected: &str, tally: &Tally, stop: &AtomicBool) {
    let request = chat("mock-fixed", false);
    let mut rounds = 0u64;
    while !stop.load(Relaxed) && rounds * (BURST as u64) < MAX_PER_THREAD {
        rounds += 1;
        let mut open = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            match Client::try_connect(addr) {
                Ok(mut c) => {
                    tally.connects.fetch_add(1, Relaxed);
                    match c.try_send(&request) {
                        Ok(()) => open.push(c),
                        Err(e) => tally.fail(format!("Burst: sending on a new connection: {e}")),
                    }
                }
                Err(e) => {
                    tally.connect_failures.fetch_add(1, Relaxed);
                    tally.fail(format!("Burst: connect: {e}"));
                }
            }
        }
        for mut c in open {
            match c.read_response_eof_aware() {
                Ok(r) if r.status == 200 && content_of(&r) == expected => {
                    tally.answers.fetch_add(1, Relaxed);
                }
                Ok(r) => tally.fail(format!("Burst: a wrong answer: {} {}", r.status, r.text())),
                Err(e) => tally.fail(format!("Burst: reading the answer (new connection): {e:?}")),
            }
        }
    }
}

/// A reset seen when writing to or reading from a connection the peer closed while idle.
fn idle_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

fn content_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {}", r.text()))
        .to_string()
}

/// The `delta.content` of each chat chunk event, in order.
fn stream_contents(sse: &str) -> Vec<String> {
    sse.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What --takeover and SIGUSR2 refuse

/// `--takeover` on a port another program (not a ringway) listens on: exit 1 at once, saying
/// no ringway offers its listeners there, and the program keeps its port. On a free port the
/// flag changes nothing: the relay starts as usual.
#[test]
fn takeover_refuses_a_port_held_by_another_program() {
    let mock = Mock::start();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let cfg = ConfigBuilder::new(mock.addr).workers(2);
    let config = write_temp("takeover", "toml", &cfg.render(port));
    let path = config.to_str().expect("utf-8 path");
    let t = Instant::now();
    let (code, _out, stderr) = run_bin(&["--config", path, "--takeover"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        stderr.contains(&format!("--takeover: 127.0.0.1:{port} is in use"))
            && stderr.contains("no ringway offers its listeners")
            && stderr.contains("the port stays with its current holder"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    // The holder still has its port: a connection reaches it.
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_s, peer) = holder.accept().unwrap();
    assert_eq!(peer, c.local_addr().unwrap());
    drop((c, holder));
    let _ = std::fs::remove_file(&config);

    // Nothing listens: a plain start.
    let relay = Relay::try_start_file(
        write_temp("takeover-free", "toml", &cfg.render(free_port())),
        &[],
        &|cmd| {
            cmd.arg("--takeover");
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = relay.stderr_text();
    assert!(
        log.contains("starting without a takeover") && log.contains("listening on"),
        "{log}"
    );
    assert_eq!(relay.roundtrip(&chat("mock-fixed", false)).status, 200);
}

/// SIGUSR2 when the successor cannot start (its config no longer loads): the running relay
/// logs that the successor exited before taking over and keeps serving alone; once the config
/// is fixed, a second SIGUSR2 upgrades.
#[test]
fn sigusr2_with_a_failing_successor_keeps_serving() {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr).workers(1);
    let mut a = start(Driver::IoUring, &cfg);
    let good = std::fs::read_to_string(&a.config_path).unwrap();
    std::fs::write(&a.config_path, "[server\nbroken").unwrap();
    a.signal(libc::SIGUSR2);
    let logged = wait_for(Duration::from_secs(10), || {
        a.stderr_text()
            .contains("before taking over; still serving")
    });
    assert!(logged.is_some(), "{}", a.stderr_text());
    assert!(a.is_running());
    assert_eq!(a.roundtrip(&chat("mock-fixed", false)).status, 200);
    assert!(!a.stderr_text().contains("handed to ringway pid"));

    std::fs::write(&a.config_path, good).unwrap();
    a.signal(libc::SIGUSR2);
    let status = a.wait_exit(Duration::from_secs(20));
    let log = a.stderr_text();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    let b_pid: u32 = log
        .split("(started on SIGUSR2)")
        .next()
        .and_then(|head| head.rsplit("handed to ringway pid ").next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in:\n{log}"));
    let _b = KillPid(b_pid);
    let h = health_at(a.addr);
    assert_eq!(
        json_u64(&h, "requests_total"),
        0,
        "the successor answers: {h}"
    );
}
