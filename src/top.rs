//! `ringway top [URL]`: a live terminal view of a running relay's `/api/monitor/health`.
//!
//! Owns: a tiny blocking HTTP GET and the screen layout. Must not: change the relay.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GET `path` from `host:port`; returns the body of a 200 response.
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
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other("unexpected response")),
    }
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(i) if &rest[i..] != "/" => (rest[..i].to_owned(), rest[i..].to_owned()),
        Some(i) => (rest[..i].to_owned(), "/api/monitor/health".to_owned()),
        None => (rest.to_owned(), "/api/monitor/health".to_owned()),
    }
}

pub fn run(url: &str) -> i32 {
    let (addr, path) = split_url(url);
    loop {
        match http_get(&addr, &path).map(|b| serde_json::from_str::<serde_json::Value>(&b)) {
            Ok(Ok(h)) => {
                let mut out = String::from("\x1b[2J\x1b[H");
                out.push_str(&format!(
                    "ringway top — {addr}   status {}   up {}s   {} worker(s) on {}\n\n",
                    h["status"], h["uptime_seconds"], h["workers"], h["io_driver"]
                ));
                for k in [
                    "inflight_requests",
                    "client_connections",
                    "upstream_connections_active",
                    "upstream_connections_idle",
                    "requests_total",
                    "client_gone",
                    "connections_rejected",
                    "idle_connections_shed",
                    "accept_errors",
                    "open_fds",
                    "rss_bytes",
                ] {
                    out.push_str(&format!("  {k:<30} {}\n", h[k]));
                }
                out.push_str("\n  timeouts:");
                if let Some(t) = h["timeouts"].as_object() {
                    for (k, v) in t {
                        out.push_str(&format!(" {k}={v}"));
                    }
                }
                out.push_str(
                    "\n\n  per worker: inflight / client conns / upstream active / idle\n",
                );
                if let Some(ws) = h["per_worker"].as_array() {
                    for w in ws {
                        out.push_str(&format!(
                            "    w{}: {} / {} / {} / {}\n",
                            w["worker"],
                            w["inflight_requests"],
                            w["client_connections"],
                            w["upstream_connections_active"],
                            w["upstream_connections_idle"]
                        ));
                    }
                }
                out.push_str(&channel_lines(&h));
                print!("{out}");
                let _ = std::io::stdout().flush();
            }
            Ok(Err(e)) => eprintln!("ringway top: bad health JSON: {e}"),
            Err(e) => eprintln!("ringway top: {addr}{path}: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The channel health block: one line per channel (state, reason, time left, since when),
/// and one per key that is out of rotation (its position and masked tail, never the key).
fn channel_lines(h: &serde_json::Value) -> String {
    let Some(channels) = h["channels"].as_array() else {
        return String::new();
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = String::from("\n  channels: state / reason / cooldown left / since\n");
    for c in channels {
        let left = c["cooldown_remaining_ms"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "    {:<20} {:<10} {:<28} {:>7.1}s  {}\n",
            text(&c["name"]),
            text(&c["state"]),
            text(&c["reason"]),
            left as f64 / 1000.0,
            text(&c["since"])
        ));
        for k in c["keys"].as_array().into_iter().flatten() {
            if k["state"] != "active" {
                out.push_str(&format!(
                    "      key {} {:<8} {:<12} {:<28} {}\n",
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

#[cfg(test)]
mod tests {
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
        let text = super::channel_lines(&h);
        assert!(text.contains("openai") && text.contains("cooling") && text.contains("2.5s"));
        assert!(text.contains("key #2 ...2222") && text.contains("status 401"));
        assert!(
            !text.contains("#1"),
            "keys in rotation are not listed: {text}"
        );
        assert_eq!(super::channel_lines(&serde_json::json!({})), "");
    }
}
