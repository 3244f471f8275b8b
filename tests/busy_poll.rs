//! Busy polling (`[server] busy_poll`): a worker keeps reaping completions for a window after
//! its last request event instead of sleeping. These tests check that spinning never starves
//! the work it is there to speed up: requests are answered while the worker spins, deadlines
//! and the wheel keep firing under continuous traffic, and the spinning stops by itself once
//! traffic does. Every test runs on io_uring and on epoll.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

both_drivers! {
    requests_are_answered_while_the_worker_spins,
    deadlines_fire_under_continuous_traffic,
    spinning_stops_when_traffic_does,
}

/// The largest window: a request that had to wait for the window to run out would take at
/// least this long, twice (its head, then the upstream's answer).
const WINDOW: &str = r#"busy_poll = "10ms""#;

/// The tests of this file run one at a time: a spinning worker takes a whole core, and the
/// machine may have two, so a test measuring latency or idle CPU beside another test's spinner
/// would measure the other test.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(c: &mut Client) -> Response {
    c.read_response_eof_aware()
        .unwrap_or_else(|e| panic!("reading the response failed: {e:?}"))
}

/// CPU time (user + system) the process has used so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The median time of 40 back-to-back requests on one keep-alive connection.
fn median_roundtrip(relay: &Relay) -> Duration {
    let mut c = relay.client();
    let mut took = Vec::new();
    for _ in 0..40 {
        let sent = Instant::now();
        c.send(&chat("mock-fixed", false));
        let r = answer(&mut c);
        took.push(sent.elapsed());
        assert_eq!(r.status, 200, "body {:?}", r.text());
    }
    took.sort();
    took[took.len() / 2]
}

fn requests_are_answered_while_the_worker_spins(driver: Driver) {
    let _serial = one_at_a_time();
    let mock = Mock::start();
    let spinning = start(driver, &ConfigBuilder::new(mock.addr).server(WINDOW));
    let sleeping = start(driver, &ConfigBuilder::new(mock.addr));
    // Measured side by side. Each request arrives within the window of the previous one, so
    // the worker is spinning when its bytes come in. Seen on an idle 2-core machine: about
    // 0.2 ms either way. A spinner that kept the connection task from running would hold each
    // request until the window ran out, twice (20 ms more), on every attempt. The spinner
    // takes a whole core, so on a 2-core machine busy with other work the test's client and
    // upstream wait for the remaining core: 1.8-2.9 ms medians were seen that way with a
    // sound spinner. Hence the 5 ms margin, and up to three attempts, failing only if every
    // one is slow. The spinner's latency itself is measured by `perf/latency_rounds.py`.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let base = median_roundtrip(&sleeping);
        let spin = median_roundtrip(&spinning);
        if spin < base * 2 + Duration::from_millis(5) {
            return;
        }
        seen.push(format!("{spin:?} spinning, {base:?} without"));
    }
    panic!(
        "median request slower with the worker spinning on every attempt: {}",
        seen.join("; ")
    );
}

fn deadlines_fire_under_continuous_traffic(driver: Driver) {
    let _serial = one_at_a_time();
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .server(WINDOW)
        .section("[timeouts]\nresponse_header = \"300ms\"\n");
    let relay = Arc::new(start(driver, &cfg));
    // Keep the worker spinning: requests back to back, never 10 ms apart, for up to 5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (relay, stop) = (relay.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = relay.client();
            let until = Instant::now() + Duration::from_secs(5);
            let mut served = 0u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                c.send(&chat("mock-fixed", false));
                assert_eq!(answer(&mut c).status, 200);
                served += 1;
            }
            served
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut c = relay.client();
    let sent = Instant::now();
    c.send(&chat("mock-stall-head-5000", false));
    let r = answer(&mut c);
    let took = sent.elapsed();
    let traffic_still_running = !traffic.is_finished();
    stop.store(true, Ordering::Relaxed);
    let served = traffic.join().expect("traffic thread");
    assert_eq!(r.status, 504, "body {:?}", r.text());
    // The wheel is driven by a monoio timer, which only fires when the runtime parks: a
    // spinner that never let it park would hold this 504 until the traffic stopped (5 s).
    assert!(
        traffic_still_running && took < Duration::from_millis(2500),
        "the 300 ms response_header deadline fired after {took:?} \
         (traffic still running: {traffic_still_running})"
    );
    assert!(
        served > 50,
        "only {served} background requests: the worker was not kept busy"
    );
}

fn spinning_stops_when_traffic_does(driver: Driver) {
    let _serial = one_at_a_time();
    let mock = Mock::start();
    let relay = start(driver, &ConfigBuilder::new(mock.addr).server(WINDOW));
    let mut c = relay.client();
    for _ in 0..200 {
        c.send(&chat("mock-fixed", false));
        assert_eq!(answer(&mut c).status, 200);
    }
    // The window is 10 ms; give the spinner ample time to notice the quiet, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_time(relay.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(relay.pid()) - before;
    // A spinner that never stopped would use the whole second of its core.
    assert!(
        used < Duration::from_millis(300),
        "the idle relay used {used:?} of CPU in 1 s after traffic stopped"
    );
}
