//! The one-screen summary `check-config` prints and the relay logs at start.
//!
//! Must not: print a secret (upstream keys, client tokens), ever.

use super::timeouts::CLIENT_BODY_TOTAL;
use super::*;

impl Config {
    /// A one-screen, secret-free description for `check-config` and the startup log.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let s = &self.server;
        let t = &self.timeouts;
        let m = &self.monitor;
        let workers = if s.workers == 0 {
            format!("0 (auto: {})", self.effective_workers())
        } else {
            s.workers.to_string()
        };
        // Writing to a String cannot fail, so the results are ignored.
        let _ = writeln!(out, "config {}", self.path.display());
        let _ = writeln!(
            out,
            "server    listen {} ({}), workers {}",
            s.listen_text, s.listen, workers
        );
        match &s.tls {
            Some(tls) => {
                let _ = writeln!(
                    out,
                    "tls       clients speak TLS 1.2/1.3 (ALPN http/1.1): cert {} ({} certificate(s)), key {}",
                    tls.cert.display(),
                    tls.chain_len,
                    tls.key.display()
                );
            }
            None => {
                let _ = writeln!(out, "tls       off (clients speak plain HTTP)");
            }
        }
        let _ = writeln!(
            out,
            "limits    max_inflight {}, max_connections {}, max_header_bytes {}, max_body_bytes {}, max_error_body_bytes {}",
            s.max_inflight,
            s.max_connections,
            s.max_header_bytes,
            s.max_body_bytes,
            s.max_error_body_bytes
        );
        let _ = writeln!(
            out,
            "streams   sse_coalesce {}, busy_poll {}, max_sse_event_bytes {}",
            format_duration(s.sse_coalesce),
            format_duration(s.busy_poll),
            s.max_sse_event_bytes
        );
        if let Some(dir) = &s.state_dir {
            let _ = writeln!(
                out,
                "state     state_dir {}, state_flush {}, quota_reserve {}",
                dir.display(),
                format_duration(s.state_flush),
                s.quota_reserve
            );
        }
        let _ = writeln!(out, "shutdown  drain {}", format_duration(s.drain));
        let _ = writeln!(
            out,
            "responses responses_ids {}, responses_ttl {} (in memory: lost at restart)",
            s.responses_ids,
            format_duration(s.responses_ttl)
        );
        let first = Layer::PER_CHANNEL.map(|l| format!("{} {}", l.name(), format_duration(t[l])));
        let _ = writeln!(out, "timeouts  {}", first.join(", "));
        let mut rest: Vec<String> = [
            Layer::PoolIdle,
            Layer::Quick,
            Layer::ClientHeader,
            Layer::ClientBody,
        ]
        .iter()
        .map(|&l| format!("{} {}", l.name(), format_duration(t[l])))
        .collect();
        rest.push(format!(
            "{CLIENT_BODY_TOTAL} {}",
            format_duration(t.client_body_total)
        ));
        rest.push(format!(
            "{} {}",
            Layer::ClientIdle.name(),
            format_duration(t[Layer::ClientIdle])
        ));
        let _ = writeln!(out, "          {}", rest.join(", "));
        let derived = |set: bool, percent: usize| {
            if set {
                String::new()
            } else {
                format!(" ({percent}% of max_inflight)")
            }
        };
        let _ = writeln!(
            out,
            "monitor   log_interval {}, warn_inflight {}{}, alert_inflight {}{}",
            format_duration(m.log_interval),
            m.warn_inflight,
            derived(m.warn_inflight_set, WARN_PERCENT),
            m.alert_inflight,
            derived(m.alert_inflight_set, ALERT_PERCENT)
        );
        let statuses: Vec<String> = self.retry.on_status.iter().map(u16::to_string).collect();
        let _ = writeln!(
            out,
            "retry     attempts {} (other channels, before the first response byte), on_status [{}]",
            self.retry.attempts,
            statuses.join(", ")
        );
        let h = &self.health;
        if h.enabled {
            let recheck = if h.key_recheck.is_zero() {
                "never (until a restart)".to_string()
            } else {
                format_duration(h.key_recheck)
            };
            let _ = writeln!(
                out,
                "health    cooldown after {} failure(s), {} doubling to at most {}; refused keys rechecked after {recheck}",
                h.failures,
                format_duration(h.cooldown),
                format_duration(h.max_cooldown)
            );
        } else {
            let _ = writeln!(
                out,
                "health    off (no cooldown, no key taken out of rotation)"
            );
        }
        let access = match &self.log.access {
            AccessLogTo::Off => "off".to_string(),
            AccessLogTo::Stderr => "stderr".to_string(),
            AccessLogTo::File(p) => p.display().to_string(),
        };
        let format = match self.log.format {
            LogFormat::Text => "text",
            LogFormat::Logfmt => "logfmt",
            LogFormat::Json => "json",
        };
        let _ = writeln!(out, "log       access {access}, format {format}");
        if !s.cors_origins.is_empty() {
            let _ = writeln!(out, "cors      {}", s.cors_origins.join(", "));
        }
        if self
            .channels
            .iter()
            .any(|c| c.models.iter().any(|m| m.contains('*')))
        {
            let refresh = match s.models_refresh {
                None => "off".to_string(),
                Some(d) if d.is_zero() => "once at start".to_string(),
                Some(d) => format!("every {}", format_duration(d)),
            };
            let _ = writeln!(
                out,
                "models    glob channels' upstream model lists: {refresh}"
            );
        }
        let _ = writeln!(out, "channels  {}", self.channels.len());
        for c in &self.channels {
            let provider = match c.provider {
                Provider::OpenAi => "openai",
                Provider::Anthropic => "anthropic",
            };
            let _ = write!(
                out,
                "  {} [{}] {} priority {} weight {} keys {} models {}",
                c.name,
                provider,
                c.base_url,
                c.priority,
                c.weight,
                c.keys.len(),
                c.models.join(",")
            );
            if !c.model_map.is_empty() {
                let map: Vec<String> = c
                    .model_map
                    .iter()
                    .map(|(from, to)| format!("{from}->{to}"))
                    .collect();
                let _ = write!(out, " map {}", map.join(","));
            }
            let ct = &c.timeouts;
            let overrides: Vec<String> = Layer::PER_CHANNEL
                .iter()
                .filter_map(|&l| {
                    ct.get(l)
                        .map(|d| format!("{}={}", l.name(), format_duration(d)))
                })
                .collect();
            if !overrides.is_empty() {
                let _ = write!(out, " timeouts {}", overrides.join(","));
            }
            if let Some(ca) = &c.ca {
                let _ = write!(out, " ca_file {}", ca.path.display());
            }
            if c.provider == Provider::OpenAi && !c.responses {
                out.push_str(" responses off");
            }
            if c.provider == Provider::Anthropic {
                let _ = write!(out, " default_max_tokens {}", c.default_max_tokens);
            }
            out.push('\n');
        }
        let _ = writeln!(out, "tokens    {}", self.tokens.len());
        for tk in &self.tokens {
            let _ = write!(out, "  {} models {}", tk.name, tk.models.join(","));
            for (key, limit) in [
                ("rpm", tk.rpm),
                ("tpm", tk.tpm),
                ("max_inflight", tk.max_inflight),
                ("quota_tokens", tk.quota_tokens),
            ] {
                if let Some(n) = limit {
                    let _ = write!(out, " {key} {n}");
                }
            }
            if let Some(at) = tk.expires_at {
                let _ = write!(out, " expires_at {}", format_rfc3339(at));
            }
            out.push('\n');
        }
        out
    }

    /// The worker count to start: `server.workers`, or one per online core when it is 0.
    pub fn effective_workers(&self) -> usize {
        if self.server.workers > 0 {
            self.server.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
