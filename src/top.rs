//! `ringway top [URL] [--once [--json]]`: a running relay's `/api/monitor/health`, as a live
//! terminal view or as one reading for scripts.
//!
//! Owns: a tiny blocking HTTP GET, the screen layout ([`render`], a pure function of two
//! readings and the terminal size), and the terminal handling of the live view: raw mode on
//! a terminal (no echo; `q` or Ctrl-C quit), a redraw every second and at once when the
//! terminal is resized (SIGWINCH), the terminal restored on the way out.
//!
//! Error handling: an unreachable relay or a bad answer is shown on the screen and retried
//! each second in the live view; `--once` prints it to stderr and exits 1.
//! Must not: change the relay.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::Value;

/// GET `path` from `host:port`; returns the body of a 200 (or a 503, which health answers while
/// the relay starts or drains, with the same fields).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 503") =>
        {
            Ok(body.to_owned())
        }
        Some((head, _)) => Err(std::io::Error::other(format!(
            "unexpected answer: {}",
            head.lines().next().unwrap_or("")
        ))),
        None => Err(std::io::Error::other("no HTTP answer")),
    }
}

/// `http://host:port[/path]` (or `host:port`) into the address and the path (health by default).
fn split_url(url: &str) -> Result<(String, String), String> {
    if url.starts_with("https://") {
        return Err("https is not supported by `ringway top`; use http://".into());
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (addr, path) = match rest.find('/') {
        Some(i) if &rest[i..] != "/" => (rest[..i].to_owned(), rest[i..].to_owned()),
        Some(i) => (rest[..i].to_owned(), "/api/monitor/health".to_owned()),
        None => (rest.to_owned(), "/api/monitor/health".to_owned()),
    };
    if addr.is_empty() {
        return Err(format!("no host:port in {url:?}"));
    }
    Ok((addr, path))
}

fn fetch(addr: &str, path: &str) -> Result<Value, String> {
    let body = http_get(addr, path).map_err(|e| format!("{addr}{path}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{addr}{path}: bad health JSON: {e}"))
}

/// `ringway top URL --once [--json]`: one reading to stdout. 0, or 1 when the relay could not
/// be read.
pub fn once(url: &str, json: bool) -> i32 {
    let (addr, path) = match split_url(url) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringway top: {e}");
            return 2;
        }
    };
    match fetch(&addr, &path) {
        Ok(h) if json => {
            println!("{h}");
            0
        }
        Ok(h) => {
            print!("{}", render(&addr, &h, None, 100, usize::MAX));
            0
        }
        Err(e) => {
            eprintln!("ringway top: {e}");
            1
        }
    }
}

/// The live view until `q` or Ctrl-C.
pub fn run(url: &str) -> i32 {
    let (addr, path) = match split_url(url) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringway top: {e}");
            return 2;
        }
    };
    let term = Terminal::enter();
    let mut previous: Option<(Instant, Value)> = None;
    let mut screen = String::new();
    let mut next_fetch = Instant::now();
    loop {
        if Instant::now() >= next_fetch {
            next_fetch = Instant::now() + Duration::from_secs(1);
            let (cols, rows) = term.size();
            screen = match fetch(&addr, &path) {
                Ok(h) => {
                    let out = render(
                        &addr,
                        &h,
                        previous.as_ref().map(|(t, v)| (t.elapsed(), v)),
                        cols,
                        rows,
                    );
                    previous = Some((Instant::now(), h));
                    out
                }
                Err(e) => fit(
                    &format!("ringway top — {e}\n(retrying every second)\n"),
                    cols,
                    rows,
                ),
            };
            term.draw(&screen);
        }
        match term.wait_key(next_fetch.saturating_duration_since(Instant::now())) {
            Key::Quit => break,
            Key::Resized => {
                // Redraw at the new size at once, from the last reading.
                let (cols, rows) = term.size();
                if let Some((_, h)) = &previous {
                    screen = render(&addr, h, None, cols, rows);
                }
                term.draw(&fit(&screen, cols, rows));
            }
            Key::None => {}
        }
    }
    drop(term);
    0
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn human_uptime(s: u64) -> String {
    match s {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// `key value` pairs of a JSON object, in its order.
fn pairs(v: &Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    format!(
                        "{k} {}",
                        v.as_str().map(str::to_owned).unwrap_or(v.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join("  ")
        })
        .unwrap_or_default()
}

/// One screen of `h` (with the reading `previous` taken `ago`, for the rates), cut to
/// `cols` × `rows`.
pub fn render(
    addr: &str,
    h: &Value,
    previous: Option<(Duration, &Value)>,
    cols: usize,
    rows: usize,
) -> String {
    let mut out = String::new();
    let requests = n(h, "requests_total");
    let rate = match previous {
        Some((ago, p)) if !ago.is_zero() => format!(
            "{:.1}",
            requests.saturating_sub(n(p, "requests_total")) as f64 / ago.as_secs_f64()
        ),
        _ => {
            let up = n(h, "uptime_seconds").max(1);
            format!("{:.1} (average since start)", requests as f64 / up as f64)
        }
    };
    out.push_str(&format!(
        "ringway top — {addr}   status {}   up {}   {} worker(s), {}\n\n",
        h["status"].as_str().unwrap_or("?"),
        human_uptime(n(h, "uptime_seconds")),
        n(h, "workers"),
        h["io_driver"].as_str().unwrap_or("?"),
    ));
    out.push_str(&format!(
        "requests  inflight {}   req/s {rate}   total {requests}   client connections {}  rejected {}  accept_errors {}\n",
        n(h, "inflight_requests"),
        n(h, "client_connections"),
        n(h, "connections_rejected"),
        n(h, "accept_errors"),
    ));
    out.push_str(&format!("answers   {}\n", pairs(&h["requests_by_class"])));
    out.push_str(&format!(
        "errors    client_gone {}  overloaded {}  rate_limited {}  quota_exhausted {}\n",
        n(h, "client_gone"),
        n(h, "overloaded"),
        n(h, "rate_limited"),
        n(h, "quota_exhausted"),
    ));
    out.push_str(&format!("timeouts  {}\n", pairs(&h["timeouts"])));
    out.push_str(&format!(
        "upstream  active {}  idle {}  connects {}  reused {}  unclean {}  bad_response {}  auth_failed {}\n",
        n(h, "upstream_connections_active"),
        n(h, "upstream_connections_idle"),
        n(h, "upstream_connects"),
        n(h, "upstream_reused"),
        n(h, "upstream_unclean"),
        n(h, "upstream_bad_response"),
        n(h, "upstream_auth_failed"),
    ));
    out.push_str(&format!(
        "process   open fds {} (baseline {})  rss {}  access_log_dropped {}\n",
        n(h, "open_fds"),
        n(h, "baseline_fds"),
        human_bytes(n(h, "rss_bytes")),
        n(h, "access_log_dropped"),
    ));
    // Channel health (state, reason, cooldown left, keys out of rotation).
    match h["channels"].as_array() {
        Some(channels) if !channels.is_empty() => out.push_str(&channel_lines(channels)),
        _ => out.push_str("channels  (this relay reports no channel states in health)\n"),
    }
    out.push_str("\nworker  inflight  connections  upstream active  upstream idle  requests  io\n");
    if let Some(ws) = h["per_worker"].as_array() {
        for w in ws {
            out.push_str(&format!(
                "{:>6}  {:>8}  {:>11}  {:>15}  {:>13}  {:>8}  {}\n",
                n(w, "worker"),
                n(w, "inflight_requests"),
                n(w, "client_connections"),
                n(w, "upstream_connections_active"),
                n(w, "upstream_connections_idle"),
                n(w, "requests_total"),
                w["io_driver"].as_str().unwrap_or("?"),
            ));
        }
    }
    fit(&out, cols, rows)
}

/// Cut every line to `cols` characters and the text to `rows` lines (a line that wrapped
/// would scroll the screen).
fn fit(text: &str, cols: usize, rows: usize) -> String {
    let mut out = String::new();
    for line in text.lines().take(rows) {
        out.extend(line.chars().take(cols.max(1)));
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The terminal

static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    RESIZED.store(true, Relaxed);
}

enum Key {
    Quit,
    Resized,
    None,
}

/// The terminal in the live view's mode; restored when dropped.
struct Terminal {
    /// The settings to restore, when stdin is a terminal.
    saved: Option<libc::termios>,
    tty_out: bool,
}

impl Terminal {
    fn enter() -> Terminal {
        // SAFETY: isatty/tcgetattr/tcsetattr on fds 0 and 1 with termios structs we own;
        // sigaction installs a handler that only stores to an atomic (async-signal-safe).
        unsafe {
            let tty_out = libc::isatty(1) == 1;
            let mut saved = None;
            if libc::isatty(0) == 1 {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(0, &mut t) == 0 {
                    saved = Some(t);
                    let mut raw = t;
                    // No line buffering, no echo, and Ctrl-C arrives as a byte (0x03) so the
                    // terminal is restored before exiting.
                    raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
                    raw.c_cc[libc::VMIN] = 0;
                    raw.c_cc[libc::VTIME] = 0;
                    libc::tcsetattr(0, libc::TCSANOW, &raw);
                }
            }
            // No SA_RESTART: a resize interrupts the wait for a key, and the screen is redrawn.
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_winch as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut());
            if tty_out {
                // The alternate screen, cursor hidden.
                print!("\x1b[?1049h\x1b[?25l");
                let _ = std::io::stdout().flush();
            }
            Terminal { saved, tty_out }
        }
    }

    /// (columns, rows) of the terminal; 100 × 40 when it is not one.
    fn size(&self) -> (usize, usize) {
        // SAFETY: TIOCGWINSZ fills a winsize we own.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
                (ws.ws_col as usize, ws.ws_row as usize)
            } else {
                (100, 40)
            }
        }
    }

    fn draw(&self, screen: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty_out {
            // Home, then each line cleared to its end, then the rest of the screen cleared: no
            // flicker from clearing everything first.
            // No line break after the last line: on the bottom row it would scroll the top
            // line away.
            let _ = write!(out, "\x1b[H");
            for (i, line) in screen.lines().enumerate() {
                if i > 0 {
                    let _ = write!(out, "\r\n");
                }
                let _ = write!(out, "{line}\x1b[K");
            }
            let _ = write!(out, "\x1b[J");
        } else {
            let _ = writeln!(out, "{screen}");
        }
        let _ = out.flush();
    }

    /// Wait up to `timeout` for a key or a resize.
    fn wait_key(&self, timeout: Duration) -> Key {
        if RESIZED.swap(false, Relaxed) {
            return Key::Resized;
        }
        if self.saved.is_none() {
            // Not a terminal: nothing to read keys from.
            std::thread::sleep(timeout);
            return if RESIZED.swap(false, Relaxed) {
                Key::Resized
            } else {
                Key::None
            };
        }
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(1000) as libc::c_int) };
        if r < 0 {
            return if RESIZED.swap(false, Relaxed) {
                Key::Resized
            } else {
                Key::None
            };
        }
        if r == 0 {
            return Key::None;
        }
        let mut buf = [0u8; 64];
        // SAFETY: read into a buffer we own.
        let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            // End of input: nothing more will come; quit rather than spin.
            return Key::Quit;
        }
        if buf[..got as usize]
            .iter()
            .any(|&b| b == b'q' || b == b'Q' || b == 0x03)
        {
            Key::Quit
        } else {
            Key::None
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.tty_out {
            print!("\x1b[?25h\x1b[?1049l");
            let _ = std::io::stdout().flush();
        }
        if let Some(t) = &self.saved {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// The channel health block: one line per channel (state, reason, time left, since when),
/// and one per key that is out of rotation (its position and masked tail, never the key).
fn channel_lines(channels: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = String::from(
        "channels  state / upstream latency p50/p90 (head, total) / cooldown left / reason / since\n",
    );
    for c in channels {
        let left = c["cooldown_remaining_ms"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "  {:<20} {:<10} {:<34} {:>6.1}s  {:<28} {}\n",
            text(&c["name"]),
            text(&c["state"]),
            latency(&c["latency_ms"]),
            left as f64 / 1000.0,
            text(&c["reason"]),
            text(&c["since"])
        ));
        for k in c["keys"].as_array().into_iter().flatten() {
            if k["state"] != "active" {
                out.push_str(&format!(
                    "    key {} {:<8} {:<12} {:<28} {}\n",
                    text(&k["key"]),
                    text(&k["tail"]),
                    text(&k["state"]),
                    text(&k["reason"]),
                    text(&k["since"])
                ));
            }
        }
    }
    out
}

/// A channel's `latency_ms` from health, short: `head 12/40ms total 1.2/3.4s n=57`, or
/// `-` before its first answered request.
fn latency(l: &serde_json::Value) -> String {
    let requests = l["requests"].as_u64().unwrap_or(0);
    if requests == 0 {
        return "-".into();
    }
    let pair = |p50: &serde_json::Value, p90: &serde_json::Value| {
        let (a, b) = (p50.as_f64().unwrap_or(0.0), p90.as_f64().unwrap_or(0.0));
        if b >= 1000.0 {
            format!("{:.1}/{:.1}s", a / 1000.0, b / 1000.0)
        } else {
            format!("{a:.0}/{b:.0}ms")
        }
    };
    format!(
        "head {} total {} n={requests}",
        pair(&l["head_p50"], &l["head_p90"]),
        pair(&l["total_p50"], &l["total_p90"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(requests: u64) -> Value {
        serde_json::json!({
            "status": "ok", "uptime_seconds": 3725, "workers": 2, "io_driver": "io_uring",
            "inflight_requests": 3, "client_connections": 9, "requests_total": requests,
            "requests_by_class": {"1xx": 0, "2xx": 90, "3xx": 0, "4xx": 7, "5xx": 3},
            "client_gone": 4, "timeouts": {"connect": 1, "stream_idle": 2},
            "upstream_connections_active": 2, "upstream_connections_idle": 5,
            "upstream_bad_response": 6, "quota_exhausted": 8,
            "open_fds": 40, "baseline_fds": 20, "rss_bytes": 9_437_184,
            "per_worker": [
                {"worker": 0, "inflight_requests": 1, "io_driver": "io_uring"},
                {"worker": 1, "inflight_requests": 2, "io_driver": "io_uring"}
            ]
        })
    }

    #[test]
    fn a_screen_shows_the_figures_and_the_rate_between_readings() {
        let s = render(
            "127.0.0.1:3000",
            &reading(300),
            Some((Duration::from_secs(2), &reading(100))),
            200,
            100,
        );
        assert!(
            s.contains("status ok   up 1h02m   2 worker(s), io_uring"),
            "{s}"
        );
        assert!(s.contains("inflight 3   req/s 100.0   total 300"), "{s}");
        assert!(s.contains("client connections 9  rejected 0"), "{s}");
        assert!(s.contains("2xx 90  3xx 0  4xx 7  5xx 3"), "{s}");
        assert!(s.contains("client_gone 4"), "{s}");
        assert!(s.contains("timeouts  connect 1  stream_idle 2"), "{s}");
        assert!(s.contains("active 2  idle 5"), "{s}");
        assert!(s.contains("bad_response 6  auth_failed 0"), "{s}");
        assert!(s.contains("quota_exhausted 8"), "{s}");
        assert!(s.contains("rss 9.0 MiB"), "{s}");
        assert!(s.contains("this relay reports no channel states"), "{s}");
        assert_eq!(
            s.lines()
                .filter(|l| l.ends_with("io_uring") && l.trim_start().starts_with(char::is_numeric))
                .count(),
            2,
            "{s}"
        );
    }

    #[test]
    fn a_screen_fits_the_terminal() {
        let s = render("127.0.0.1:3000", &reading(1), None, 30, 5);
        assert_eq!(s.lines().count(), 5);
        assert!(s.lines().all(|l| l.chars().count() <= 30), "{s}");
    }

    #[test]
    fn channel_lines_show_states_and_masked_keys_only() {
        let h = serde_json::json!({"channels": [{
            "name": "openai", "state": "cooling", "reason": "status 503",
            "since": "2026-01-01T00:00:00Z", "cooldown_remaining_ms": 2500,
            "keys": [
                {"key": "#1", "tail": "...1111", "state": "active", "reason": null, "since": null},
                {"key": "#2", "tail": "...2222", "state": "disabled", "reason": "status 401", "since": "2026-01-01T00:00:00Z"}
            ]
        }]});
        let text = super::channel_lines(h["channels"].as_array().unwrap());
        assert!(text.contains("openai") && text.contains("cooling") && text.contains("2.5s"));
        assert!(
            text.contains(" - "),
            "no latency before any request: {text}"
        );
        assert!(text.contains("key #2 ...2222") && text.contains("status 401"));
        assert!(
            !text.contains("#1"),
            "keys in rotation are not listed: {text}"
        );
    }

    #[test]
    fn channel_lines_show_latency_percentiles() {
        let h = serde_json::json!({"channels": [{
            "name": "fast", "state": "healthy", "reason": null, "since": null,
            "cooldown_remaining_ms": 0, "keys": [],
            "latency_ms": {"requests": 57, "head_mean": 15.2, "head_p50": 12.4, "head_p90": 40.0,
                           "total_mean": 2000.0, "total_p50": 1200.0, "total_p90": 3400.0}
        }]});
        let text = super::channel_lines(h["channels"].as_array().unwrap());
        assert!(text.contains("head 12/40ms total 1.2/3.4s n=57"), "{text}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:3000").unwrap(),
            ("127.0.0.1:3000".into(), "/api/monitor/health".into())
        );
        assert_eq!(
            split_url("localhost:9/").unwrap(),
            ("localhost:9".into(), "/api/monitor/health".into())
        );
        assert!(split_url("https://x:1").is_err());
        assert!(split_url("http:///x").is_err());
    }
}
