//! Loading: the TOML text (with the process environment for `RELAY_TIMEOUT` and `key_env`)
//! into a validated [`Config`], section by section, every error naming file, line and key.
//!
//! Must not: do IO beyond the one file, its permission bits and the `ca_file`s it names.

use super::channel::read_channel;
use super::spans::{Cx, Field, Kind, Node, Section};
use super::timeouts::{parse_relay_timeout, CLIENT_BODY_TOTAL, MAX_DURATION};
use super::token::read_token;
use super::*;

/// Reads `path` and parses it with the real process environment. A file that users other
/// than its owner and group may access adds a warning (it holds keys and tokens).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    let mut config = parse(&text, path)?;
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        config
            .warnings
            .extend(permission_warning(path, meta.permissions().mode()));
    }
    Ok(config)
}

/// The warning for a config file whose mode lets other users (not owner, not group) read or
/// write it. Group access is fine: `640` with a group the service runs in is the usual setup.
pub fn permission_warning(path: &Path, mode: u32) -> Option<ConfigWarning> {
    let others = mode & 0o007;
    if others == 0 {
        return None;
    }
    let what = match (others & 0o004 != 0, others & 0o002 != 0) {
        (true, true) => "every user on this machine can read and change it",
        (true, false) => "every user on this machine can read it",
        (false, true) => "every user on this machine can change it",
        (false, false) => "every user on this machine has access to it",
    };
    let shown = path.display();
    Some(ConfigWarning {
        file: shown.to_string(),
        line: 0,
        key: String::new(),
        message: format!(
            "file mode {:04o}: {what}, and it holds channel keys and client tokens; \
             run chmod 600 {shown} (or chmod 640 with a group you trust)",
            mode & 0o7777
        ),
    })
}

/// Parses `text` (the contents of `path`) with the real process environment.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with_env(text, path, &|name| std::env::var(name).ok())
}

/// Parses `text`; `env` stands in for the process environment so tests stay hermetic.
pub fn parse_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let cx = Cx::new(path, text);
    // Relative `ca_file` paths resolve against the config file's directory.
    let base_dir = path.parent().unwrap_or(Path::new(""));
    let root: Node = toml::from_str(text).map_err(|e| cx.syntax_error(&e))?;
    let root = Section {
        cx: &cx,
        path: String::new(),
        line: 0,
        entries: match &root.kind {
            Kind::Table(entries) => entries,
            // A TOML document is always a table; anything else means the parser changed.
            _ => return Err(cx.error(0, "", "the document is not a TOML table")),
        },
    };
    root.check_known(&[
        "server", "timeouts", "monitor", "retry", "log", "channels", "tokens", "health",
    ])?;

    let server = match root.field("server") {
        Some(f) => read_server(&f.table()?, base_dir)?,
        None => ServerConfig::default(),
    };
    let mut timeouts = match root.field("timeouts") {
        Some(f) => read_timeouts(&f.table()?)?,
        None => Timeouts::default(),
    };
    let mut warnings = Vec::new();
    let monitor = match root.field("monitor") {
        Some(f) => read_monitor(&f.table()?, server.max_inflight, &mut warnings)?,
        None => MonitorConfig::defaults_for(server.max_inflight),
    };

    let retry = match root.field("retry") {
        Some(f) => read_retry(&f.table()?)?,
        None => RetryConfig::default(),
    };

    let log = match root.field("log") {
        Some(f) => read_log(&f.table()?, base_dir)?,
        None => LogConfig::default(),
    };

    let health = match root.field("health") {
        Some(f) => read_health(&f.table()?)?,
        None => HealthConfig::default(),
    };

    let mut channels: Vec<ChannelConfig> = Vec::new();
    let mut channel_lines: Vec<usize> = Vec::new();
    for f in root.required_array_of_tables("channels")? {
        let table = f.table()?;
        let channel = read_channel(&table, base_dir, env)?;
        let name_field = table.field("name");
        if let Some(first) = channels.iter().position(|c| c.name == channel.name) {
            let at = name_field.map_or(table.line, |f| f.line);
            return Err(cx.error(
                at,
                &table.key("name"),
                &format!(
                    "duplicate channel name {:?} (first used on line {})",
                    channel.name, channel_lines[first]
                ),
            ));
        }
        channel_lines.push(name_field.map_or(table.line, |f| f.line));
        channels.push(channel);
    }

    let mut tokens: Vec<TokenConfig> = Vec::new();
    // Only to warn about an `expires_at` already past; the relay checks expiry per request.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut token_lines: Vec<(usize, usize)> = Vec::new();
    for f in root.required_array_of_tables("tokens")? {
        let table = f.table()?;
        let token = read_token(&table)?;
        let name_line = table.field("name").map_or(table.line, |f| f.line);
        let key_line = table.field("key").map_or(table.line, |f| f.line);
        if let Some(first) = tokens.iter().position(|t| t.name == token.name) {
            return Err(cx.error(
                name_line,
                &table.key("name"),
                &format!(
                    "duplicate token name {:?} (first used on line {})",
                    token.name, token_lines[first].0
                ),
            ));
        }
        if let Some(first) = tokens.iter().position(|t| t.key == token.key) {
            // Name the other token, never the key itself.
            return Err(cx.error(
                key_line,
                &table.key("key"),
                &format!(
                    "same key as token {:?} (line {})",
                    tokens[first].name, token_lines[first].1
                ),
            ));
        }
        if let (Some(at), Some(f)) = (token.expires_at, table.field("expires_at")) {
            if at <= now_ms {
                warnings.push(ConfigWarning {
                    file: cx.file.clone(),
                    line: f.line,
                    key: f.path.clone(),
                    message: format!(
                        "{} has passed: every request with token {:?} is refused (401 token_expired)",
                        format_rfc3339(at),
                        token.name
                    ),
                });
            }
        }
        if let (Some(_), Some(f), None) = (
            token.quota_tokens,
            table.field("quota_tokens"),
            &server.state_dir,
        ) {
            return Err(f.err(
                "needs [server] state_dir: the quota ledger is kept there, so that usage \
                 survives a restart (e.g. state_dir = \"/var/lib/ringway\")",
            ));
        }
        token_lines.push((name_line, key_line));
        tokens.push(token);
    }

    if let Some(raw) = env("RELAY_TIMEOUT") {
        // An empty assignment (`RELAY_TIMEOUT=` in a compose file) conventionally means unset.
        if !raw.trim().is_empty() {
            timeouts[Layer::Total] = parse_relay_timeout(&raw)?;
        }
    }

    Ok(Config {
        path: path.to_path_buf(),
        server,
        timeouts,
        monitor,
        retry,
        log,
        health,
        channels,
        tokens,
        warnings,
    })
}

/// `[log]`: `access = "off" | "stderr" | PATH`.
fn read_log(sec: &Section, base_dir: &Path) -> Result<LogConfig, ConfigError> {
    sec.check_known(&["access", "format"])?;
    let access = match sec.field("access") {
        None => AccessLogTo::Off,
        Some(f) => match f.nonempty_str()? {
            "off" => AccessLogTo::Off,
            "stderr" => AccessLogTo::Stderr,
            path => {
                let path = base_dir.join(path);
                if path.is_dir() {
                    return Err(f.err(&format!("{} is a directory", path.display())));
                }
                AccessLogTo::File(path)
            }
        },
    };
    let format = match sec.field("format") {
        None => LogFormat::Text,
        Some(f) => match f.nonempty_str()? {
            "text" => LogFormat::Text,
            "logfmt" => LogFormat::Logfmt,
            "json" => LogFormat::Json,
            other => {
                return Err(f.err(&format!(
                    "unknown format {other:?}: use \"text\", \"logfmt\" or \"json\""
                )))
            }
        },
    };
    Ok(LogConfig { access, format })
}

/// `[retry]`: at most 10 extra attempts (each bounded by the request's total anyway); the
/// statuses must be errors an upstream can answer with.
fn read_retry(sec: &Section) -> Result<RetryConfig, ConfigError> {
    sec.check_known(&["attempts", "on_status"])?;
    let d = RetryConfig::default();
    let attempts = sec.usize_or("attempts", d.attempts as usize, 0, 10)? as u32;
    let on_status = match sec.field("on_status") {
        None => d.on_status,
        Some(f) => {
            let mut out = Vec::new();
            for item in f.array()? {
                let n = item.usize_in(400, 599)? as u16;
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            out
        }
    };
    Ok(RetryConfig {
        attempts,
        on_status,
    })
}

/// `[health]`: `failures` 0-1000 (0: channels never cool down), `cooldown` above zero and at
/// most `max_cooldown`, `key_recheck` zero (never) or a duration.
fn read_health(sec: &Section) -> Result<HealthConfig, ConfigError> {
    sec.check_known(&[
        "enabled",
        "failures",
        "cooldown",
        "max_cooldown",
        "key_recheck",
    ])?;
    let d = HealthConfig::default();
    let enabled = match sec.field("enabled") {
        Some(f) => f.bool()?,
        None => d.enabled,
    };
    let failures = sec.usize_or("failures", d.failures as usize, 0, 1000)? as u32;
    let cooldown = sec.duration_or("cooldown", d.cooldown)?;
    let max_cooldown = sec.duration_or("max_cooldown", d.max_cooldown.max(cooldown))?;
    if max_cooldown < cooldown {
        let f = sec
            .field("max_cooldown")
            .expect("only a written max_cooldown can be short");
        return Err(f.err(&format!(
            "must not be shorter than cooldown ({})",
            format_duration(cooldown)
        )));
    }
    let key_recheck = match sec.field("key_recheck") {
        Some(f) => f.duration_at_most(MAX_DURATION)?,
        None => d.key_recheck,
    };
    Ok(HealthConfig {
        enabled,
        failures,
        cooldown,
        max_cooldown,
        key_recheck,
    })
}

// ---------------------------------------------------------------------------------------------
// Section readers
// ---------------------------------------------------------------------------------------------

const SERVER_KEYS: &[&str] = &[
    "listen",
    "workers",
    "max_inflight",
    "max_connections",
    "max_header_bytes",
    "max_body_bytes",
    "max_error_body_bytes",
    "max_sse_event_bytes",
    "sse_coalesce",
    "busy_poll",
    "cors_origins",
    "models_refresh",
    "state_dir",
    "state_flush",
    "quota_reserve",
    "drain",
    "responses_ids",
    "responses_ttl",
    "tls",
];
const MONITOR_KEYS: &[&str] = &["log_interval", "warn_inflight", "alert_inflight"];
pub(super) const CHANNEL_KEYS: &[&str] = &[
    "name",
    "provider",
    "base_url",
    "keys",
    "key_env",
    "models",
    "model_map",
    "priority",
    "weight",
    "timeouts",
    "ca_file",
    "anthropic_version",
    "responses",
    "default_max_tokens",
];
pub(super) const TOKEN_KEYS: &[&str] = &[
    "name",
    "key",
    "models",
    "expires_at",
    "rpm",
    "tpm",
    "max_inflight",
    "quota_tokens",
];

/// `responses_ids` bound: about 64 bytes each, so the largest map stays under a gigabyte.
const MAX_RESPONSES_IDS: usize = 10_000_000;
/// `responses_ttl` bounds: OpenAI keeps stored responses for 30 days; a year is plenty.
const MIN_RESPONSES_TTL: Duration = Duration::from_secs(1);
const MAX_RESPONSES_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A drain longer than an hour would outlast any service manager's stop timeout.
const MAX_DRAIN: Duration = Duration::from_secs(3600);

/// A model list older than a day is stale by any measure.
const MAX_MODELS_REFRESH: Duration = Duration::from_secs(86_400);

/// Upper bound for counts and byte limits: generous, but keeps arithmetic elsewhere far from
/// overflow.
pub(super) const MAX_COUNT: usize = 1_000_000_000;

fn read_server(sec: &Section, base_dir: &Path) -> Result<ServerConfig, ConfigError> {
    sec.check_known(SERVER_KEYS)?;
    let d = ServerConfig::default();
    let (listen, listen_text) = match sec.field("listen") {
        Some(f) => {
            let text = f.str()?;
            (parse_listen(text).map_err(|m| f.err(&m))?, text.to_string())
        }
        None => (d.listen, d.listen_text),
    };
    Ok(ServerConfig {
        listen,
        listen_text,
        // Far more threads than any machine has cores only burns memory.
        workers: sec.usize_or("workers", d.workers, 0, 1024)?,
        max_inflight: sec.usize_or("max_inflight", d.max_inflight, 1, MAX_COUNT)?,
        // Each connection is a file descriptor; far past any RLIMIT_NOFILE is a typo.
        max_connections: sec.usize_or("max_connections", d.max_connections, 1, 100_000_000)?,
        max_header_bytes: sec.usize_or("max_header_bytes", d.max_header_bytes, 1, MAX_COUNT)?,
        max_body_bytes: sec.usize_or("max_body_bytes", d.max_body_bytes, 1, usize::MAX)?,
        max_error_body_bytes: sec.usize_or(
            "max_error_body_bytes",
            d.max_error_body_bytes,
            1,
            MAX_COUNT,
        )?,
        max_sse_event_bytes: sec.usize_or(
            "max_sse_event_bytes",
            d.max_sse_event_bytes,
            MIN_SSE_EVENT_BYTES,
            MAX_SSE_EVENT_BYTES,
        )?,
        sse_coalesce: match sec.field("sse_coalesce") {
            Some(f) => f.duration_at_most(MAX_SSE_COALESCE)?,
            None => d.sse_coalesce,
        },
        busy_poll: match sec.field("busy_poll") {
            Some(f) => f.duration_at_most(MAX_BUSY_POLL)?,
            None => d.busy_poll,
        },
        cors_origins: match sec.field("cors_origins") {
            Some(f) => read_origins(&f)?,
            None => d.cors_origins,
        },
        models_refresh: match sec.field("models_refresh") {
            Some(f) if f.str().is_ok_and(|s| s == "off") => None,
            Some(f) => Some(f.duration_at_most(MAX_MODELS_REFRESH)?),
            None => d.models_refresh,
        },
        // The directory is created (or found unwritable) at start, not here: loading does no IO
        // beyond the files it reads.
        state_dir: match sec.field("state_dir") {
            Some(f) => Some(base_dir.join(f.nonempty_str()?)),
            None => d.state_dir,
        },
        state_flush: match sec.field("state_flush") {
            Some(f) => {
                let every = f.duration_at_most(MAX_STATE_FLUSH)?;
                if every < MIN_STATE_FLUSH {
                    return Err(f.err(&format!(
                        "must be at least {} (each flush is an fdatasync)",
                        format_duration(MIN_STATE_FLUSH)
                    )));
                }
                every
            }
            None => d.state_flush,
        },
        quota_reserve: sec.usize_or("quota_reserve", d.quota_reserve as usize, 0, MAX_COUNT)?
            as u64,
        drain: match sec.field("drain") {
            Some(f) => f.duration_at_most(MAX_DRAIN)?,
            None => d.drain,
        },
        responses_ids: sec.usize_or("responses_ids", d.responses_ids, 1, MAX_RESPONSES_IDS)?,
        responses_ttl: match sec.field("responses_ttl") {
            Some(f) => {
                let ttl = f.duration_at_most(MAX_RESPONSES_TTL)?;
                if ttl < MIN_RESPONSES_TTL {
                    return Err(f.err(&format!(
                        "must be at least {}",
                        format_duration(MIN_RESPONSES_TTL)
                    )));
                }
                ttl
            }
            None => d.responses_ttl,
        },
        tls: match sec.field("tls") {
            Some(f) => Some(super::tls::read_tls(&f.table()?, base_dir)?),
            None => None,
        },
    })
}

/// `max_sse_event_bytes` bounds: below a few KiB ordinary events (Anthropic's `message_start`)
/// would be refused; above 1 GiB a single event could exhaust a small host.
const MIN_SSE_EVENT_BYTES: usize = 4096;
const MAX_SSE_EVENT_BYTES: usize = 1 << 30;

/// `state_flush` bounds: what a crash may lose is one interval, and each flush costs an
/// fdatasync.
const MIN_STATE_FLUSH: Duration = Duration::from_millis(10);
const MAX_STATE_FLUSH: Duration = Duration::from_secs(60);
/// Upper bound for `quota_tokens`: far above any real budget, far below overflow when
/// reservations are added to it.
pub(super) const MAX_QUOTA: u64 = 1_000_000_000_000_000;

/// `cors_origins`: `"*"`, or origins as browsers send them (`https://app.example.com`, a port
/// if not the default, no path, no trailing slash).
fn read_origins(f: &Field) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for item in f.array()? {
        let o = item.nonempty_str()?;
        let valid = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && !o
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'))
                && o.bytes().all(|b| (0x21..0x7f).contains(&b)));
        if !valid {
            return Err(item.err(&format!(
                "invalid origin {o:?} (use \"*\" or scheme://host[:port], e.g. \"https://app.example.com\")"
            )));
        }
        out.push(o.to_string());
    }
    Ok(out)
}

/// Coalescing is a latency trade: past this it would be felt as stutter in a token stream.
/// Upper bound for `busy_poll`: past this a worker is simply never idle.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);
const MAX_SSE_COALESCE: Duration = Duration::from_secs(1);

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let invalid = || {
        format!(
            "invalid listen address {text:?} (use host:port, e.g. 127.0.0.1:3000 or [::1]:3000)"
        )
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if host.is_empty() || host.contains([':', '[', ']', '/', ' ']) {
        return Err(invalid());
    }
    if host.eq_ignore_ascii_case("localhost") {
        // Pinned to IPv4 so the result does not depend on the resolver's ordering.
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("listen host {host:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve listen host {host:?}: {e}")),
    }
}

fn read_timeouts(sec: &Section) -> Result<Timeouts, ConfigError> {
    let mut keys: Vec<&str> = Layer::ALL.iter().map(|l| l.name()).collect();
    keys.push(CLIENT_BODY_TOTAL);
    sec.check_known(&keys)?;
    let mut t = Timeouts::default();
    for layer in Layer::ALL {
        t[layer] = sec.duration_or(layer.name(), t[layer])?;
    }
    t.client_body_total = sec.duration_or(CLIENT_BODY_TOTAL, t.client_body_total)?;
    Ok(t)
}

/// `[monitor]`. An unset threshold is a share of `max_inflight` ([`WARN_PERCENT`],
/// [`ALERT_PERCENT`]), moved so the pair stays ordered when only the other one is written. An
/// explicit threshold at or above `max_inflight` can never be exceeded: a warning, not an error.
fn read_monitor(
    sec: &Section,
    max_inflight: usize,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<MonitorConfig, ConfigError> {
    sec.check_known(MONITOR_KEYS)?;
    let d = MonitorConfig::defaults_for(max_inflight);
    let read = |key: &str| {
        sec.field(key)
            .map(|f| f.usize_in(1, MAX_COUNT).map(|v| (v, f.line)))
            .transpose()
    };
    let (warn, alert) = (read("warn_inflight")?, read("alert_inflight")?);
    let m = MonitorConfig {
        log_interval: sec.duration_or("log_interval", d.log_interval)?,
        warn_inflight: match (warn, alert) {
            (Some((w, _)), _) => w,
            (None, Some((a, _))) => d.warn_inflight.min(a),
            (None, None) => d.warn_inflight,
        },
        alert_inflight: match (alert, warn) {
            (Some((a, _)), _) => a,
            (None, Some((w, _))) => d.alert_inflight.max(w),
            (None, None) => d.alert_inflight,
        },
        warn_inflight_set: warn.is_some(),
        alert_inflight_set: alert.is_some(),
    };
    for (key, value) in [("warn_inflight", warn), ("alert_inflight", alert)] {
        if let Some((v, line)) = value {
            if v >= max_inflight {
                warnings.push(ConfigWarning {
                    file: sec.cx.file.clone(),
                    line,
                    key: sec.key(key),
                    message: format!(
                        "{v} is not below server.max_inflight ({max_inflight}), so in-flight \
                         requests can never exceed it and this level never fires"
                    ),
                });
            }
        }
    }
    if m.warn_inflight > m.alert_inflight {
        let (key, line) = match (sec.field("warn_inflight"), sec.field("alert_inflight")) {
            (Some(f), _) => ("warn_inflight", f.line),
            (None, Some(f)) => ("alert_inflight", f.line),
            (None, None) => ("warn_inflight", sec.line),
        };
        return Err(sec.cx.error(
            line,
            &sec.key(key),
            &format!(
                "warn_inflight ({}) must not exceed alert_inflight ({})",
                m.warn_inflight, m.alert_inflight
            ),
        ));
    }
    Ok(m)
}
