//! `/metrics`: the Prometheus text rendering of the counters [`Monitor`] sums.
//!
//! Owns: metric names, HELP lines and label escaping; nothing else.
//!
//! Must not: write a counter; it only reads what the workers wrote.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::health::ChannelState;

/// One of a channel's two latency histograms.
type LatencyPhase = fn(&ChannelLatency) -> &Histogram;

impl Monitor {
    pub fn metrics_text(&self, serving: Option<&Serving>) -> Vec<u8> {
        let mut o = String::with_capacity(8192);
        let g = |o: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut o,
            "ringway_uptime_seconds",
            "Seconds since start.",
            "gauge",
            self.started.elapsed().as_secs(),
        );
        g(
            &mut o,
            "ringway_inflight_requests",
            "Relay requests being served.",
            "gauge",
            self.inflight(),
        );
        g(
            &mut o,
            "ringway_client_connections",
            "Open client connections.",
            "gauge",
            self.sum(|w| &w.client_connections),
        );
        g(
            &mut o,
            "ringway_upstream_connections_active",
            "Upstream connections in use.",
            "gauge",
            self.sum(|w| &w.upstream_active),
        );
        g(
            &mut o,
            "ringway_upstream_connections_idle",
            "Upstream connections parked in pools.",
            "gauge",
            self.sum(|w| &w.upstream_idle),
        );
        g(
            &mut o,
            "ringway_upstream_connects_total",
            "New upstream connections opened.",
            "counter",
            self.sum(|w| &w.upstream_connects),
        );
        g(
            &mut o,
            "ringway_upstream_reused_total",
            "Requests sent on a pooled upstream connection.",
            "counter",
            self.sum(|w| &w.upstream_reused),
        );
        g(
            &mut o,
            "ringway_upstream_unclean_total",
            "Pooled upstream connections closed instead of reused: bytes or a close were waiting.",
            "counter",
            self.sum(|w| &w.upstream_unclean),
        );
        g(
            &mut o,
            "ringway_upstream_bad_response_total",
            "Upstream responses refused as malformed or ambiguous.",
            "counter",
            self.sum(|w| &w.upstream_bad_response),
        );
        g(
            &mut o,
            "ringway_upstream_auth_failed_total",
            "Upstream 401/403 answers: a channel key was refused.",
            "counter",
            self.sum(|w| &w.upstream_auth_failed),
        );
        g(
            &mut o,
            "ringway_client_gone_total",
            "Clients that disconnected before their response ended.",
            "counter",
            self.sum(|w| &w.client_gone),
        );
        g(
            &mut o,
            "ringway_overloaded_total",
            "Requests refused over max_inflight.",
            "counter",
            self.sum(|w| &w.overloaded),
        );
        g(
            &mut o,
            "ringway_rate_limited_total",
            "Requests refused over a token's rpm, tpm or max_inflight.",
            "counter",
            self.sum(|w| &w.rate_limited),
        );
        g(
            &mut o,
            "ringway_access_log_dropped_total",
            "Access-log lines dropped (a worker's buffer full, or the writer behind).",
            "counter",
            self.access_log_dropped.load(Relaxed),
        );
        g(
            &mut o,
            "ringway_connections_rejected_total",
            "Client connections closed at once: over max_connections or at the fd limit.",
            "counter",
            self.sum(|w| &w.connections_rejected),
        );
        g(
            &mut o,
            "ringway_idle_connections_shed_total",
            "Idle keep-alive client connections closed to make room for new ones.",
            "counter",
            self.sum(|w| &w.idle_shed),
        );
        g(
            &mut o,
            "ringway_accept_errors_total",
            "Failed accept calls (mostly the file descriptor limit).",
            "counter",
            self.sum(|w| &w.accept_errors),
        );
        g(
            &mut o,
            "ringway_upstream_connect_failed_total",
            "Upstream connect or TLS failures.",
            "counter",
            self.sum(|w| &w.upstream_connect_failed),
        );
        g(
            &mut o,
            "ringway_open_fds",
            "File descriptors open in the process.",
            "gauge",
            open_fds(),
        );
        g(
            &mut o,
            "ringway_rss_bytes",
            "Resident memory.",
            "gauge",
            rss_bytes(),
        );
        o.push_str("# HELP ringway_requests_total Finished requests by status class.\n# TYPE ringway_requests_total counter\n");
        for (i, class) in ["1xx", "1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
            .skip(1)
        {
            let v = self.sum(|w| &w.status_class[i])
                + if i == 1 {
                    self.sum(|w| &w.status_class[0])
                } else {
                    0
                };
            let _ = writeln!(o, "ringway_requests_total{{class=\"{class}\"}} {v}");
        }
        o.push_str("# HELP ringway_timeouts_total Deadlines that expired, by layer.\n# TYPE ringway_timeouts_total counter\n");
        for l in Layer::ALL {
            let _ = writeln!(
                o,
                "ringway_timeouts_total{{layer=\"{}\"}} {}",
                l.name(),
                self.sum(|w| &w.timeouts[l as usize])
            );
        }
        o.push_str("# HELP ringway_upstream_errors_total Upstream non-2xx responses by status.\n# TYPE ringway_upstream_errors_total counter\n");
        for i in 0..UPSTREAM_STATUS_SLOTS {
            let v = self.sum(|w| &w.upstream_status[i]);
            if v > 0 {
                let _ = writeln!(
                    o,
                    "ringway_upstream_errors_total{{status=\"{}\"}} {v}",
                    UPSTREAM_STATUS_MIN as usize + i
                );
            }
        }
        let other = self.sum(|w| &w.upstream_status_other);
        if other > 0 {
            let _ = writeln!(
                o,
                "ringway_upstream_errors_total{{status=\"other\"}} {other}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP ringway_client_tls_handshakes_total TLS handshakes with clients ([server.tls]) by result: ok, failed (an error, an alert, a plain-HTTP client, a close) or timeout (client_header).\n# TYPE ringway_client_tls_handshakes_total counter"
        );
        for (result, v) in [
            ("ok", self.sum(|w| &w.client_tls_handshakes)),
            ("failed", self.sum(|w| &w.client_tls_failed)),
            ("timeout", self.sum(|w| &w.client_tls_timeouts)),
        ] {
            let _ = writeln!(
                o,
                "ringway_client_tls_handshakes_total{{result=\"{result}\"}} {v}"
            );
        }
        let channel_names = self.channel_names.snapshot();
        self.usage_metrics(&mut o, "token", &self.token_names.snapshot(), |w| {
            &w.token_usage
        });
        self.quota_metrics(&mut o, serving);
        self.usage_metrics(&mut o, "channel", &channel_names, |w| &w.channel_usage);
        let attempts = |i: usize, k: usize| -> u64 {
            self.workers
                .iter()
                .map(|w| w.channel_attempts.get(i).map_or(0, |r| r[k].load(Relaxed)))
                .sum()
        };
        let _ = writeln!(
            o,
            "# HELP ringway_channel_attempts_total Upstream attempts by channel: relayed (its answer went to the client) or failed (failed over to the next channel, or ended the request).\n# TYPE ringway_channel_attempts_total counter"
        );
        for (i, name) in channel_names.iter().enumerate() {
            let failed = attempts(i, 1);
            let _ = writeln!(
                o,
                "ringway_channel_attempts_total{{channel=\"{}\",result=\"relayed\"}} {}",
                LabelValue(name),
                attempts(i, 0).saturating_sub(failed)
            );
            let _ = writeln!(
                o,
                "ringway_channel_attempts_total{{channel=\"{}\",result=\"failed\"}} {failed}",
                LabelValue(name)
            );
        }
        self.channel_latency_metrics(&mut o, &channel_names);
        if let Some(g) = serving {
            let names: Vec<String> = g.config.channels.iter().map(|c| c.name.clone()).collect();
            channel_health_metrics(&mut o, g.health, &names);
        }
        self.histogram(
            &mut o,
            "ringway_request_duration_seconds",
            "Whole relay request duration.",
            |w| &w.latency_total,
        );
        self.histogram(
            &mut o,
            "ringway_time_to_first_byte_seconds",
            "Request start to first response byte sent.",
            |w| &w.latency_ttfb,
        );
        o.into_bytes()
    }

    /// `ringway_quota_exhausted_total`, `ringway_ledger_write_errors_total` and per token
    /// `ringway_token_quota_tokens` (tokens with a quota), `ringway_token_quota_used`,
    /// `ringway_token_quota_reserved`.
    fn quota_metrics(&self, o: &mut String, serving: Option<&Serving>) {
        let _ = writeln!(
            o,
            "# HELP ringway_quota_exhausted_total Requests refused over a token's quota_tokens.\n# TYPE ringway_quota_exhausted_total counter\nringway_quota_exhausted_total {}",
            self.sum(|w| &w.quota_exhausted)
        );
        let _ = writeln!(
            o,
            "# HELP ringway_ledger_write_errors_total Quota ledger flushes that failed.\n# TYPE ringway_ledger_write_errors_total counter\nringway_ledger_write_errors_total {}",
            self.ledger_write_errors.load(Relaxed)
        );
        let Some(g) = serving else {
            return;
        };
        let names: Vec<&String> = g.config.tokens.iter().map(|t| &t.name).collect();
        let states: Vec<_> = (0..names.len()).map(|i| g.limits.quota_state(i)).collect();
        let series: [(&str, &str, QuotaFigure); 3] = [
            ("quota_tokens", "A token's quota_tokens.", |q| q.quota),
            (
                "quota_used",
                "Prompt + completion tokens a token has used over its life (settled, as the ledger keeps them).",
                |q| Some(q.used),
            ),
            (
                "quota_reserved",
                "Tokens reserved by a token's requests in flight.",
                |q| Some(q.reserved),
            ),
        ];
        for (name, help, value) in series {
            let _ = writeln!(
                o,
                "# HELP ringway_token_{name} {help}\n# TYPE ringway_token_{name} gauge"
            );
            for (token, state) in names.iter().zip(&states) {
                if let Some(v) = state.as_ref().and_then(value) {
                    let _ = writeln!(
                        o,
                        "ringway_token_{name}{{token=\"{}\"}} {v}",
                        LabelValue(token)
                    );
                }
            }
        }
    }

    /// `ringway_<label>_requests_total` and `ringway_<label>_tokens_total{kind}` per name.
    fn usage_metrics(
        &self,
        o: &mut String,
        label: &str,
        names: &[String],
        rows: impl Fn(&WorkerStats) -> &Vec<[AtomicU64; 3]>,
    ) {
        let total = |i: usize, k: usize| -> u64 {
            self.workers
                .iter()
                .map(|w| rows(w).get(i).map(|r| r[k].load(Relaxed)).unwrap_or(0))
                .sum()
        };
        let _ = writeln!(
            o,
            "# HELP ringway_{label}_requests_total Relayed requests by {label}.\n# TYPE ringway_{label}_requests_total counter"
        );
        for (i, name) in names.iter().enumerate() {
            let _ = writeln!(
                o,
                "ringway_{label}_requests_total{{{label}=\"{}\"}} {}",
                LabelValue(name),
                total(i, 0)
            );
        }
        let _ = writeln!(
            o,
            "# HELP ringway_{label}_tokens_total Tokens reported in upstream usage, by {label}.\n# TYPE ringway_{label}_tokens_total counter"
        );
        for (i, name) in names.iter().enumerate() {
            for (k, kind) in [(1, "prompt"), (2, "completion")] {
                let _ = writeln!(
                    o,
                    "ringway_{label}_tokens_total{{{label}=\"{}\",kind=\"{kind}\"}} {}",
                    LabelValue(name),
                    total(i, k)
                );
            }
        }
    }

    /// `ringway_channel_upstream_seconds{channel, phase}`: per channel, the time from sending a
    /// request upstream to the response head (`phase="head"`) and to the response's end
    /// (`phase="total"`), for the requests the channel answered.
    fn channel_latency_metrics(&self, o: &mut String, channel_names: &[String]) {
        let name = "ringway_channel_upstream_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Upstream latency by channel: request sent to response head (phase=\"head\") and to the end of the response (phase=\"total\"), for the requests the channel answered.\n# TYPE {name} histogram"
        );
        for (row, channel) in channel_names.iter().enumerate() {
            let phases: [(&str, LatencyPhase); 2] =
                [("head", |l| &l.head), ("total", |l| &l.total)];
            for (phase, f) in phases {
                let (buckets, sum) = Histogram::merged(
                    self.workers
                        .iter()
                        .filter_map(|w| w.channel_latency.get(row))
                        .map(f),
                );
                let labels = format!("channel=\"{}\",phase=\"{phase}\"", LabelValue(channel));
                let mut cumulative = 0;
                for (b, n) in LATENCY_BOUNDS.iter().zip(&buckets) {
                    cumulative += n;
                    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
                }
                cumulative += buckets[LATENCY_BOUNDS.len()];
                let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                let _ = writeln!(
                    o,
                    "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {cumulative}",
                    sum as f64 / 1e6
                );
            }
        }
    }

    fn histogram(
        &self,
        o: &mut String,
        name: &str,
        help: &str,
        f: impl Fn(&WorkerStats) -> &Histogram,
    ) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in LATENCY_BOUNDS.iter().enumerate() {
            cumulative += self.sum(|w| &f(w).buckets[i]);
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.sum(|w| &f(w).buckets[LATENCY_BOUNDS.len()]);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum(|w| &f(w).sum_micros) as f64 / 1e6;
        let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The health series of `/metrics`: one `ringway_channel_state` gauge per channel and state (1
/// for the state it is in), its remaining cooldown, and one `ringway_channel_key_active` gauge
/// per key, labelled with its position and masked tail.
fn channel_health_metrics(o: &mut String, health: &Health, names: &[String]) {
    let states = health.snapshot(names);
    let _ = writeln!(
        o,
        "# HELP ringway_channel_state Channel health: 1 for the state the channel is in (healthy, cooling, probe_due, probing, disabled).\n# TYPE ringway_channel_state gauge"
    );
    for c in &states {
        for s in ChannelState::STATES {
            let _ = writeln!(
                o,
                "ringway_channel_state{{channel=\"{}\",state=\"{s}\"}} {}",
                LabelValue(&c.name),
                u8::from(c.state == s)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP ringway_channel_cooldown_remaining_seconds Time left in the channel's cooldown.\n# TYPE ringway_channel_cooldown_remaining_seconds gauge"
    );
    for c in &states {
        let _ = writeln!(
            o,
            "ringway_channel_cooldown_remaining_seconds{{channel=\"{}\"}} {}",
            LabelValue(&c.name),
            c.cooldown_remaining_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        o,
        "# HELP ringway_channel_key_active A channel key in rotation (1) or taken out after the upstream refused it (0), by position and last 4 characters.\n# TYPE ringway_channel_key_active gauge"
    );
    for c in &states {
        for k in &c.keys {
            let _ = writeln!(
                o,
                "ringway_channel_key_active{{channel=\"{}\",key=\"#{}\",tail=\"...{}\"}} {}",
                LabelValue(&c.name),
                k.position,
                LabelValue(&k.tail),
                u8::from(k.state == "active")
            );
        }
    }
}
