//! Configuration: turns the TOML file (plus the `RELAY_TIMEOUT` and `key_env` environment
//! variables) into a fully validated [`Config`], or into a [`ConfigError`] that names the file,
//! the line and the dotted key at fault, so `check-config` and startup can point the operator
//! straight at the mistake. Everything downstream may trust a `Config` without re-checking it.
//!
//! This module must not do IO beyond reading the one file and the PEM files channels name in
//! `ca_file` (resolving a host name written in `server.listen` through the system resolver is
//! the only other lookup), must not touch the
//! network, and must never print or embed a secret (upstream keys, client tokens) in an error
//! message or in [`Config::summary`].

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A validated configuration. Build it with [`load`], [`parse`] or [`parse_with_env`].
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file path as given on the command line.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub timeouts: Timeouts,
    pub monitor: MonitorConfig,
    /// In file order; never empty.
    pub channels: Vec<ChannelConfig>,
    /// In file order; never empty, keys unique.
    pub tokens: Vec<TokenConfig>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `server.listen` exactly as written, for logs and the summary.
    pub listen_text: String,
    /// 0 = one per online core, as written; see [`Config::effective_workers`].
    pub workers: usize,
    pub max_inflight: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// Cap on how much of an upstream error body is read before it is normalised.
    pub max_error_body_bytes: usize,
    /// How long an SSE stream that just relayed a chunk lets the next ones gather before
    /// reading again (zero: every chunk is forwarded the moment it arrives).
    pub sse_coalesce: Duration,
    /// How long a worker keeps polling for completions after its last request event before it
    /// sleeps (zero: it sleeps at once). Trades CPU for the wake-up latency of an idle core.
    pub busy_poll: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub tls_handshake: Duration,
    pub response_header: Duration,
    pub stream_idle: Duration,
    pub total: Duration,
    pub pool_idle: Duration,
    pub quick: Duration,
    pub client_header: Duration,
    pub client_body: Duration,
    /// The whole request body, however it trickles in (a body that is never silent for
    /// `client_body` is still bounded).
    pub client_body_total: Duration,
    pub client_idle: Duration,
}

/// Per-channel overrides; `None` means "use the global [`Timeouts`] value".
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChannelTimeouts {
    pub connect: Option<Duration>,
    pub tls_handshake: Option<Duration>,
    pub response_header: Option<Duration>,
    pub stream_idle: Option<Duration>,
    pub total: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct MonitorConfig {
    pub log_interval: Duration,
    pub warn_inflight: usize,
    pub alert_inflight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Clone, Debug)]
pub struct ChannelConfig {
    pub name: String,
    pub provider: Provider,
    /// As written, minus trailing slashes.
    pub base_url: String,
    pub scheme: Scheme,
    /// Without brackets for IPv6 literals.
    pub host: String,
    /// Explicit port, or 80 / 443 by scheme.
    pub port: u16,
    /// `""` or e.g. `"/openai"`; never a trailing slash.
    pub path_prefix: String,
    /// Never empty; each key is non-empty and safe to put in an HTTP header.
    pub keys: Vec<String>,
    pub models: Vec<String>,
    /// Client model -> upstream model, in file order.
    pub model_map: Vec<(String, String)>,
    pub priority: i64,
    pub weight: u32,
    pub timeouts: ChannelTimeouts,
    /// Extra trusted roots for this channel's upstream (besides the webpki roots), from the
    /// optional `ca_file` key; https channels only.
    pub ca: Option<CaFile>,
}

/// A channel's `ca_file`, read and checked at load so start-up never reads it again.
#[derive(Clone)]
pub struct CaFile {
    /// Resolved against the config file's directory when written as a relative path.
    pub path: PathBuf,
    /// The file's contents: PEM with at least one certificate, each usable as a trust anchor.
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("pem_bytes", &self.pem.len())
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub name: String,
    pub key: String,
    pub models: Vec<String>,
}

/// A configuration problem, displayed as `FILE:LINE: KEY: MESSAGE`.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 if unknown.
    pub line: usize,
    /// Dotted path such as `timeouts.connect` or `channels[1].base_url`; empty if none applies
    /// (unreadable file, TOML syntax error).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            listen_text: "127.0.0.1:3000".to_string(),
            workers: 0,
            max_inflight: 500,
            max_header_bytes: 65536,
            max_body_bytes: 67_108_864,
            max_error_body_bytes: 65536,
            sse_coalesce: Duration::from_millis(5),
            busy_poll: Duration::ZERO,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            response_header: Duration::from_secs(15 * 60),
            stream_idle: Duration::from_secs(5 * 60),
            total: Duration::from_secs(15 * 60),
            pool_idle: Duration::from_secs(90),
            quick: Duration::from_secs(2 * 60),
            client_header: Duration::from_secs(30),
            client_body: Duration::from_secs(30),
            client_body_total: Duration::from_secs(2 * 60),
            client_idle: Duration::from_secs(75),
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            log_interval: Duration::from_secs(30),
            warn_inflight: 2000,
            alert_inflight: 5000,
        }
    }
}

/// Reads `path` and parses it with the real process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, path)
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
    root.check_known(&["server", "timeouts", "monitor", "channels", "tokens"])?;

    let server = match root.field("server") {
        Some(f) => read_server(&f.table()?)?,
        None => ServerConfig::default(),
    };
    let mut timeouts = match root.field("timeouts") {
        Some(f) => read_timeouts(&f.table()?)?,
        None => Timeouts::default(),
    };
    let monitor = match root.field("monitor") {
        Some(f) => read_monitor(&f.table()?)?,
        None => MonitorConfig::default(),
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
        token_lines.push((name_line, key_line));
        tokens.push(token);
    }

    if let Some(raw) = env("RELAY_TIMEOUT") {
        // An empty assignment (`RELAY_TIMEOUT=` in a compose file) conventionally means unset.
        if !raw.trim().is_empty() {
            timeouts.total = parse_relay_timeout(&raw)?;
        }
    }

    Ok(Config {
        path: path.to_path_buf(),
        server,
        timeouts,
        monitor,
        channels,
        tokens,
    })
}

/// Longest duration or RELAY_TIMEOUT accepted: far beyond any sane timeout, yet small enough
/// that `Instant + Duration` arithmetic elsewhere can never overflow and panic.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn parse_relay_timeout(raw: &str) -> Result<Duration, ConfigError> {
    let error = |message: String| ConfigError {
        file: "RELAY_TIMEOUT (environment)".to_string(),
        line: 0,
        key: "RELAY_TIMEOUT".to_string(),
        message,
    };
    let secs: u64 = raw.trim().parse().map_err(|_| {
        error(format!(
            "invalid value {raw:?} (want a whole number of seconds > 0, e.g. 900)"
        ))
    })?;
    if secs == 0 {
        return Err(error("must be > 0".to_string()));
    }
    if secs > MAX_DURATION.as_secs() {
        return Err(error(format!(
            "must be at most {} seconds (30 days)",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses `250ms`, `10s`, `15m` or `1h` (a whole number and one unit). Zero is accepted here;
/// callers that need a positive duration check for it themselves.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?} (use 250ms, 10s, 15m, 1h)");
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let micros_per_unit: u64 = match unit {
        "us" | "µs" => 1,
        "ms" => 1000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return Err(invalid()),
    };
    n.checked_mul(micros_per_unit)
        .map(Duration::from_micros)
        .ok_or_else(invalid)
}

/// Renders a duration in the largest unit that is exact, the inverse of [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        if d.subsec_nanos().is_multiple_of(1000) {
            return format!("{}us", d.as_micros());
        }
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `"*"` matches anything, `"abc*"` matches by prefix, anything else must match exactly.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
    }
}

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
        let _ = writeln!(
            out,
            "limits    max_inflight {}, max_header_bytes {}, max_body_bytes {}, max_error_body_bytes {}",
            s.max_inflight, s.max_header_bytes, s.max_body_bytes, s.max_error_body_bytes
        );
        let _ = writeln!(
            out,
            "streams   sse_coalesce {}, busy_poll {}",
            format_duration(s.sse_coalesce),
            format_duration(s.busy_poll)
        );
        let _ = writeln!(
            out,
            "timeouts  connect {}, tls_handshake {}, response_header {}, stream_idle {}, total {}",
            format_duration(t.connect),
            format_duration(t.tls_handshake),
            format_duration(t.response_header),
            format_duration(t.stream_idle),
            format_duration(t.total)
        );
        let _ = writeln!(
            out,
            "          pool_idle {}, quick {}, client_header {}, client_body {}, client_body_total {}, client_idle {}",
            format_duration(t.pool_idle),
            format_duration(t.quick),
            format_duration(t.client_header),
            format_duration(t.client_body),
            format_duration(t.client_body_total),
            format_duration(t.client_idle)
        );
        let _ = writeln!(
            out,
            "monitor   log_interval {}, warn_inflight {}, alert_inflight {}",
            format_duration(m.log_interval),
            m.warn_inflight,
            m.alert_inflight
        );
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
            let overrides: Vec<String> = [
                ("connect", ct.connect),
                ("tls_handshake", ct.tls_handshake),
                ("response_header", ct.response_header),
                ("stream_idle", ct.stream_idle),
                ("total", ct.total),
            ]
            .iter()
            .filter_map(|(name, d)| d.map(|d| format!("{name}={}", format_duration(d))))
            .collect();
            if !overrides.is_empty() {
                let _ = write!(out, " timeouts {}", overrides.join(","));
            }
            if let Some(ca) = &c.ca {
                let _ = write!(out, " ca_file {}", ca.path.display());
            }
            out.push('\n');
        }
        let _ = writeln!(out, "tokens    {}", self.tokens.len());
        for tk in &self.tokens {
            let _ = writeln!(out, "  {} models {}", tk.name, tk.models.join(","));
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

impl ChannelConfig {
    /// True if a `models` pattern matches, or if `model_map` names the model: a mapped alias
    /// is served by construction even when only its target is listed in `models`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|p| glob_match(p, model))
            || self.model_map.iter().any(|(from, _)| from == model)
    }

    /// The model name to send upstream for a client's `model`.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map
            .iter()
            .find(|(from, _)| from == model)
            .map_or(model, |(_, to)| to.as_str())
    }
}

impl TokenConfig {
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|p| glob_match(p, model))
    }
}

// ---------------------------------------------------------------------------------------------
// Section readers
// ---------------------------------------------------------------------------------------------

const SERVER_KEYS: &[&str] = &[
    "listen",
    "workers",
    "max_inflight",
    "max_header_bytes",
    "max_body_bytes",
    "max_error_body_bytes",
    "sse_coalesce",
    "busy_poll",
];
const TIMEOUT_KEYS: &[&str] = &[
    "connect",
    "tls_handshake",
    "response_header",
    "stream_idle",
    "total",
    "pool_idle",
    "quick",
    "client_header",
    "client_body",
    "client_body_total",
    "client_idle",
];
const CHANNEL_TIMEOUT_KEYS: &[&str] = &[
    "connect",
    "tls_handshake",
    "response_header",
    "stream_idle",
    "total",
];
const MONITOR_KEYS: &[&str] = &["log_interval", "warn_inflight", "alert_inflight"];
const CHANNEL_KEYS: &[&str] = &[
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
];
const TOKEN_KEYS: &[&str] = &["name", "key", "models"];

/// Upper bound for counts and byte limits: generous, but keeps arithmetic elsewhere far from
/// overflow.
const MAX_COUNT: usize = 1_000_000_000;

fn read_server(sec: &Section) -> Result<ServerConfig, ConfigError> {
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
        max_header_bytes: sec.usize_or("max_header_bytes", d.max_header_bytes, 1, MAX_COUNT)?,
        max_body_bytes: sec.usize_or("max_body_bytes", d.max_body_bytes, 1, usize::MAX)?,
        max_error_body_bytes: sec.usize_or(
            "max_error_body_bytes",
            d.max_error_body_bytes,
            1,
            MAX_COUNT,
        )?,
        sse_coalesce: match sec.field("sse_coalesce") {
            Some(f) => f.duration_at_most(MAX_SSE_COALESCE)?,
            None => d.sse_coalesce,
        },
        busy_poll: match sec.field("busy_poll") {
            Some(f) => f.duration_at_most(crate::busy::MAX_BUSY_POLL)?,
            None => d.busy_poll,
        },
    })
}

/// Coalescing is a latency trade: past this it would be felt as stutter in a token stream.
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
    sec.check_known(TIMEOUT_KEYS)?;
    let d = Timeouts::default();
    Ok(Timeouts {
        connect: sec.duration_or("connect", d.connect)?,
        tls_handshake: sec.duration_or("tls_handshake", d.tls_handshake)?,
        response_header: sec.duration_or("response_header", d.response_header)?,
        stream_idle: sec.duration_or("stream_idle", d.stream_idle)?,
        total: sec.duration_or("total", d.total)?,
        pool_idle: sec.duration_or("pool_idle", d.pool_idle)?,
        quick: sec.duration_or("quick", d.quick)?,
        client_header: sec.duration_or("client_header", d.client_header)?,
        client_body: sec.duration_or("client_body", d.client_body)?,
        client_body_total: sec.duration_or("client_body_total", d.client_body_total)?,
        client_idle: sec.duration_or("client_idle", d.client_idle)?,
    })
}

fn read_monitor(sec: &Section) -> Result<MonitorConfig, ConfigError> {
    sec.check_known(MONITOR_KEYS)?;
    let d = MonitorConfig::default();
    let m = MonitorConfig {
        log_interval: sec.duration_or("log_interval", d.log_interval)?,
        warn_inflight: sec.usize_or("warn_inflight", d.warn_inflight, 1, MAX_COUNT)?,
        alert_inflight: sec.usize_or("alert_inflight", d.alert_inflight, 1, MAX_COUNT)?,
    };
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

fn read_channel(
    sec: &Section,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChannelConfig, ConfigError> {
    sec.check_known(CHANNEL_KEYS)?;
    let name = sec.required("name")?.nonempty_str()?.to_string();

    let provider_field = sec.required("provider")?;
    let provider = match provider_field.str()? {
        "openai" => Provider::OpenAi,
        "anthropic" => Provider::Anthropic,
        other => {
            return Err(provider_field.err(&format!(
                "unknown provider {other:?} (expected \"openai\" or \"anthropic\")"
            )))
        }
    };

    let url_field = sec.required("base_url")?;
    let url = parse_base_url(url_field.str()?).map_err(|m| url_field.err(&m))?;

    let keys = match (sec.field("keys"), sec.field("key_env")) {
        (Some(_), Some(f)) => {
            return Err(f.err("set either keys or key_env, not both"));
        }
        (None, None) => {
            return Err(sec.cx.error(
                sec.line,
                &sec.key("keys"),
                "missing: set keys = [\"...\"] or key_env = \"ENV_VAR\"",
            ));
        }
        (Some(f), None) => {
            let items = f.array()?;
            if items.is_empty() {
                return Err(f.err("must list at least one key"));
            }
            let mut keys = Vec::with_capacity(items.len());
            for item in items {
                let key = item.str()?;
                check_secret(key).map_err(|m| item.err(m))?;
                keys.push(key.to_string());
            }
            keys
        }
        (None, Some(f)) => {
            let var = f.nonempty_str()?;
            let value = env(var)
                .ok_or_else(|| f.err(&format!("environment variable {var:?} is not set")))?;
            // Files and secret stores often leave a trailing newline on the value.
            let key = value.trim();
            if key.is_empty() {
                return Err(f.err(&format!("environment variable {var:?} is empty")));
            }
            check_secret(key).map_err(|m| f.err(&format!("environment variable {var:?}: {m}")))?;
            vec![key.to_string()]
        }
    };

    let models = read_patterns(&sec.required("models")?)?;

    let mut model_map = Vec::new();
    if let Some(f) = sec.field("model_map") {
        let table = f.table()?;
        for (from, _) in table.entries {
            let entry = table.field(from).expect("key taken from the same table");
            if from.is_empty() {
                return Err(entry.err("client model name must not be empty"));
            }
            model_map.push((from.clone(), entry.nonempty_str()?.to_string()));
        }
    }

    let priority = match sec.field("priority") {
        Some(f) => f.int()?,
        None => 0,
    };
    // Capped so a sum of weights over many channels cannot overflow a u32 or u64.
    let weight = sec.usize_or("weight", 1, 1, 1_000_000)?;
    let weight = u32::try_from(weight).expect("weight is capped at 1_000_000");

    let mut timeouts = ChannelTimeouts::default();
    if let Some(f) = sec.field("timeouts") {
        let t = f.table()?;
        for (key, _) in t.entries {
            if !CHANNEL_TIMEOUT_KEYS.contains(&key.as_str()) {
                let entry = t.field(key).expect("key taken from the same table");
                return Err(entry.err(&format!(
                    "unknown timeout layer (per-channel overrides: {})",
                    CHANNEL_TIMEOUT_KEYS.join(", ")
                )));
            }
        }
        let get = |key: &str| t.field(key).map(|f| f.duration()).transpose();
        timeouts = ChannelTimeouts {
            connect: get("connect")?,
            tls_handshake: get("tls_handshake")?,
            response_header: get("response_header")?,
            stream_idle: get("stream_idle")?,
            total: get("total")?,
        };
    }

    let ca = match sec.field("ca_file") {
        Some(f) => Some(read_ca_file(&f, url.scheme, base_dir)?),
        None => None,
    };

    Ok(ChannelConfig {
        name,
        provider,
        base_url: url.base_url,
        scheme: url.scheme,
        host: url.host,
        port: url.port,
        path_prefix: url.path_prefix,
        keys,
        models,
        model_map,
        priority,
        weight,
        timeouts,
        ca,
    })
}

/// `ca_file = "path"`: readable, PEM, at least one certificate, every certificate usable as a
/// trust anchor (the same check the TLS connector makes at start, so start cannot fail on it).
fn read_ca_file(f: &Field, scheme: Scheme, base_dir: &Path) -> Result<CaFile, ConfigError> {
    let raw = f.nonempty_str()?;
    if scheme == Scheme::Http {
        return Err(f.err("ca_file needs an https base_url"));
    }
    let path = base_dir.join(raw);
    let shown = path.display();
    let pem = std::fs::read(&path).map_err(|e| f.err(&format!("cannot read {shown}: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0usize;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        count += 1;
        let cert = cert.map_err(|e| f.err(&format!("{shown}: invalid PEM: {e}")))?;
        roots.add(cert).map_err(|e| {
            f.err(&format!(
                "{shown}: certificate {count} cannot be a trusted root: {e}"
            ))
        })?;
    }
    if count == 0 {
        return Err(f.err(&format!(
            "{shown} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(CaFile { path, pem })
}

fn read_token(sec: &Section) -> Result<TokenConfig, ConfigError> {
    sec.check_known(TOKEN_KEYS)?;
    let name = sec.required("name")?.nonempty_str()?.to_string();
    let key_field = sec.required("key")?;
    let key = key_field.str()?;
    check_secret(key).map_err(|m| key_field.err(m))?;
    let models = read_patterns(&sec.required("models")?)?;
    Ok(TokenConfig {
        name,
        key: key.to_string(),
        models,
    })
}

/// A model allow-list: non-empty, each entry non-empty, `*` only as the final character
/// (anywhere else it would silently match nothing).
fn read_patterns(f: &Field) -> Result<Vec<String>, ConfigError> {
    let items = f.array()?;
    if items.is_empty() {
        return Err(f.err("must list at least one model (\"*\" = any)"));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let p = item.nonempty_str()?;
        if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
            return Err(item.err(&format!(
                "invalid pattern {p:?}: '*' is only allowed once, at the end"
            )));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

/// Keys end up in request headers, so anything but visible ASCII would be a header-injection
/// hazard. The message never repeats the value.
fn check_secret(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("must not be empty")
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        Err("contains a character not allowed in an HTTP header (spaces, control or non-ASCII)")
    } else {
        Ok(())
    }
}

struct ParsedUrl {
    base_url: String,
    scheme: Scheme,
    host: String,
    port: u16,
    path_prefix: String,
}

fn parse_base_url(raw: &str) -> Result<ParsedUrl, String> {
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("https://") {
        (Scheme::Https, &raw[8..])
    } else if lower.starts_with("http://") {
        (Scheme::Http, &raw[7..])
    } else {
        return Err(format!(
            "invalid base_url {raw:?}: must start with http:// or https://"
        ));
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "invalid base_url {raw:?}: a query or fragment is not allowed"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        // Deliberately not echoing the value: it carries credentials.
        return Err("invalid base_url: credentials in the URL are not supported (use keys)".into());
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (h, tail) = after
            .split_once(']')
            .ok_or_else(|| format!("invalid base_url {raw:?}: unclosed '[' in host"))?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "invalid base_url {raw:?}: {h:?} is not an IPv6 address"
            ));
        }
        let port =
            match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| {
                    format!("invalid base_url {raw:?}: unexpected {t:?} after ']'")
                })?),
            };
        (h, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !host_ok {
        return Err(format!(
            "invalid base_url {raw:?}: bad host (IPv6 addresses go in brackets)"
        ));
    }
    let port = match port {
        None => match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        },
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("invalid base_url {raw:?}: bad port {p:?}")),
        },
    };
    let path_prefix = path.trim_end_matches('/');
    if !path_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "invalid base_url {raw:?}: the path may only contain visible ASCII"
        ));
    }
    Ok(ParsedUrl {
        base_url: raw.trim_end_matches('/').to_string(),
        scheme,
        host: host.to_string(),
        port,
        path_prefix: path_prefix.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Span-preserving TOML tree and typed access with file:line:key errors
// ---------------------------------------------------------------------------------------------

/// Error context: the file name as given and where each line starts.
struct Cx {
    file: String,
    line_starts: Vec<usize>,
    last_line: usize,
}

impl Cx {
    fn new(path: &Path, text: &str) -> Cx {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cx {
            file: path.display().to_string(),
            last_line: text.lines().count(),
            line_starts,
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn error(&self, line: usize, key: &str, message: &str) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = match e.span() {
            Some(span) => {
                let line = self.line_of(span.start);
                (line, span.start - self.line_starts[line - 1] + 1)
            }
            None => (0, 0),
        };
        let detail = e.message().trim().replace('\n', "; ");
        let message = if column > 0 {
            format!("invalid TOML at column {column}: {detail}")
        } else {
            format!("invalid TOML: {detail}")
        };
        self.error(line, "", &message)
    }
}

/// A TOML value with the byte span the parser reported for it, where it reported one (implicit
/// tables such as `a` in `[a.b]` have none; their entries do).
#[derive(Debug)]
struct Node {
    span: Option<Range<usize>>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Str(String),
    Int(i64),
    Float,
    Bool,
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(String, Node)>),
}

impl Node {
    /// The node's own line or, for an implicit table (`a` in `[a.b]`), that of its first
    /// entry: the nearest place in the file that shows the key.
    fn line(&self, cx: &Cx) -> Option<usize> {
        if let Some(span) = &self.span {
            return Some(cx.line_of(span.start));
        }
        match &self.kind {
            Kind::Table(entries) => entries.iter().find_map(|(_, n)| n.line(cx)),
            Kind::Array(items) => items.iter().find_map(|n| n.line(cx)),
            _ => None,
        }
    }
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float => "a float",
            Kind::Bool => "a boolean",
            Kind::Datetime => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

// `toml::Spanned<T>` cannot be used directly: it fails outright on tables the parser has no
// span for. Instead `Node` speaks the same private protocol as `serde_spanned` (toml 0.8 /
// serde_spanned 0.6): it asks for the magic struct, and if the deserializer answers with the
// span fields it records them; otherwise it is looking at a plain table and reads it as one.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
const DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

/// The value inside a span: asking for the magic struct again would recurse forever.
struct UnspannedNode;

impl<'de> DeserializeSeed<'de> for UnspannedNode {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

fn bare(kind: Kind) -> Node {
    Node { span: None, kind }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(bare(Kind::Bool))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(bare(Kind::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| bare(Kind::Int(v)))
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(bare(Kind::Float))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(bare(Kind::Str(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(bare(Kind::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(bare(Kind::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(bare(Kind::Table(Vec::new())));
        };
        if first == SPANNED_START {
            let start: usize = map.next_value()?;
            let _ = map.next_key::<String>()?;
            let end: usize = map.next_value()?;
            let _ = map.next_key::<String>()?;
            let mut node = map.next_value_seed(UnspannedNode)?;
            node.span = Some(start..end);
            return Ok(node);
        }
        if first == DATETIME_KEY {
            map.next_value::<de::IgnoredAny>()?;
            return Ok(bare(Kind::Datetime));
        }
        let mut entries = vec![(first, map.next_value::<Node>()?)];
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(bare(Kind::Table(entries)))
    }
}

/// A table being read: its dotted path and the line errors fall back to when an entry has no
/// span of its own.
struct Section<'a> {
    cx: &'a Cx,
    path: String,
    line: usize,
    entries: &'a [(String, Node)],
}

/// One value being read, with everything needed to blame it precisely.
struct Field<'a> {
    cx: &'a Cx,
    path: String,
    line: usize,
    node: &'a Node,
}

impl<'a> Section<'a> {
    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn field(&self, key: &str) -> Option<Field<'a>> {
        let (_, node) = self.entries.iter().find(|(k, _)| k == key)?;
        Some(Field {
            cx: self.cx,
            path: self.key(key),
            line: node.line(self.cx).unwrap_or(self.line),
            node,
        })
    }

    fn required(&self, key: &str) -> Result<Field<'a>, ConfigError> {
        self.field(key).ok_or_else(|| {
            self.cx
                .error(self.line, &self.key(key), "required key is missing")
        })
    }

    fn check_known(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            Some((key, _)) => {
                Err(self
                    .field(key)
                    .expect("key taken from the same table")
                    .err(&format!(
                        "unknown key (expected one of: {})",
                        allowed.join(", ")
                    )))
            }
            None => Ok(()),
        }
    }

    fn usize_or(
        &self,
        key: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        match self.field(key) {
            Some(f) => f.usize_in(min, max),
            None => Ok(default),
        }
    }

    fn duration_or(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.field(key) {
            Some(f) => f.duration(),
            None => Ok(default),
        }
    }

    /// `[[name]]`: present, an array, not empty, every element a table.
    fn required_array_of_tables(&self, key: &str) -> Result<Vec<Field<'a>>, ConfigError> {
        let Some(f) = self.field(key) else {
            return Err(self.cx.error(
                self.cx.last_line,
                key,
                &format!("at least one [[{key}]] entry is required"),
            ));
        };
        if let Kind::Table(_) = f.node.kind {
            return Err(f.err(&format!("must be written [[{key}]] (an array of tables)")));
        }
        let items = f.array()?;
        if items.is_empty() {
            return Err(f.err(&format!("at least one [[{key}]] entry is required")));
        }
        Ok(items)
    }
}

impl<'a> Field<'a> {
    fn err(&self, message: &str) -> ConfigError {
        self.cx.error(self.line, &self.path, message)
    }

    fn wrong_type(&self, expected: &str) -> ConfigError {
        self.err(&format!(
            "expected {expected}, found {}",
            self.node.kind.describe()
        ))
    }

    fn str(&self) -> Result<&'a str, ConfigError> {
        match &self.node.kind {
            Kind::Str(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn nonempty_str(&self) -> Result<&'a str, ConfigError> {
        let s = self.str()?;
        if s.is_empty() {
            return Err(self.err("must not be empty"));
        }
        Ok(s)
    }

    fn int(&self) -> Result<i64, ConfigError> {
        match self.node.kind {
            Kind::Int(n) => Ok(n),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn usize_in(&self, min: usize, max: usize) -> Result<usize, ConfigError> {
        let n = self.int()?;
        match usize::try_from(n) {
            Ok(v) if v >= min && v <= max => Ok(v),
            Ok(v) if v > max => Err(self.err(&format!("must be at most {max}"))),
            _ if min == 0 => Err(self.err("must not be negative")),
            _ => Err(self.err(&format!("must be >= {min}"))),
        }
    }

    /// A timeout: above zero, at most [`MAX_DURATION`].
    fn duration(&self) -> Result<Duration, ConfigError> {
        let d = self.duration_at_most(MAX_DURATION)?;
        if d.is_zero() {
            return Err(self.err("must be > 0"));
        }
        Ok(d)
    }

    /// A duration that may be zero ("0ms" turns a feature off), up to `max`.
    fn duration_at_most(&self, max: Duration) -> Result<Duration, ConfigError> {
        let s = self.str().map_err(|_| {
            self.err(&format!(
                "expected a duration string like \"10s\", found {}",
                self.node.kind.describe()
            ))
        })?;
        let d = parse_duration(s).map_err(|m| self.err(&m))?;
        if d > max {
            let days = if max == MAX_DURATION {
                " (30 days)"
            } else {
                ""
            };
            return Err(self.err(&format!("must be at most {}{days}", format_duration(max))));
        }
        Ok(d)
    }

    fn array(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        let Kind::Array(items) = &self.node.kind else {
            return Err(self.wrong_type("an array"));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, node)| Field {
                cx: self.cx,
                path: format!("{}[{i}]", self.path),
                line: node.line(self.cx).unwrap_or(self.line),
                node,
            })
            .collect())
    }

    fn table(&self) -> Result<Section<'a>, ConfigError> {
        match &self.node.kind {
            Kind::Table(entries) => Ok(Section {
                cx: self.cx,
                path: self.path.clone(),
                line: self.line,
                entries,
            }),
            _ => Err(self.wrong_type("a table")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"[server]
listen = "127.0.0.1:3000"   # host:port; each worker binds it with SO_REUSEPORT
workers = 0                 # 0 = one per online core
max_inflight = 500          # whole process; over it: 503 + Retry-After, code "overloaded"
max_header_bytes = 65536    # request head over it: 431
max_body_bytes = 67108864   # request body over it: 413

[timeouts]                  # durations: "250ms", "10s", "15m", "1h"
connect = "10s"             # TCP connect to upstream
tls_handshake = "10s"       # TLS handshake to upstream
response_header = "15m"     # request fully sent -> upstream response head received
stream_idle = "5m"          # longest silence between upstream body bytes
total = "15m"               # whole request; env RELAY_TIMEOUT (integer seconds) overrides
pool_idle = "90s"           # idle upstream connection kept at most this long
quick = "2m"                # total for quick endpoints (/v1/models, task polls, health)
client_header = "30s"       # client must deliver a full request head within this
client_body = "30s"         # longest silence while reading a client request body
client_body_total = "2m"    # ringway extension: the whole request body, however slowly it trickles
client_idle = "75s"         # idle keep-alive client connection closed after this

[monitor]
log_interval = "30s"        # periodic health line in the log
warn_inflight = 2000        # log level WARN above this
alert_inflight = 5000       # log level ERROR above this

[[channels]]
name = "openai-main"        # unique
provider = "openai"         # "openai" (any OpenAI-compatible base_url: OpenAI, xAI, DeepSeek, ...) | "anthropic"
base_url = "https://api.openai.com"   # http:// or https://, optional path prefix
keys = ["sk-..."]           # rotated; or key_env = "OPENAI_API_KEY"
models = ["gpt-4o", "gpt-4o-mini"]    # what this channel serves ("*" = anything)
model_map = { "gpt-4" = "gpt-4o" }    # optional: client model -> upstream model
priority = 0                # higher is tried first
weight = 1                  # weighted random among equal priority
# optional per-channel overrides of connect / tls_handshake / response_header / stream_idle / total:
# timeouts = { response_header = "2m" }

[[tokens]]
name = "team-a"
key = "sk-ringway-..."      # what clients send as Authorization: Bearer ... (or x-api-key)
models = ["*"]              # allow-list, "*" and prefix globs like "gpt-4o*"
"#;

    /// Smallest valid file; snippets below are prepended/appended to it.
    const MINIMAL: &str = r#"[[channels]]
name = "c"
provider = "openai"
base_url = "http://127.0.0.1:9000"
keys = ["k"]
models = ["*"]

[[tokens]]
name = "t"
key = "tk"
models = ["*"]
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> Config {
        match parse_with_env(text, Path::new("ringway.toml"), &no_env) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}\n--- input ---\n{text}"),
        }
    }

    fn parse_err(text: &str) -> ConfigError {
        parse_err_env(text, &no_env)
    }

    fn parse_err_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigError {
        match parse_with_env(text, Path::new("ringway.toml"), env) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts line and key, and that the message mentions `needle`.
    fn assert_err(e: &ConfigError, line: usize, key: &str, needle: &str) {
        assert_eq!((e.line, e.key.as_str()), (line, key), "error was: {e}");
        assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
        assert_eq!(e.file, "ringway.toml");
    }

    #[test]
    fn contract_example_parses_to_documented_values() {
        let c = parse_ok(CONTRACT_EXAMPLE);
        assert_eq!(c.path, PathBuf::from("ringway.toml"));
        assert_eq!(c.server.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.server.listen_text, "127.0.0.1:3000");
        assert_eq!(c.server.workers, 0);
        assert_eq!(c.server.max_inflight, 500);
        assert_eq!(c.server.max_header_bytes, 65536);
        assert_eq!(c.server.max_body_bytes, 67_108_864);
        assert_eq!(c.server.max_error_body_bytes, 65536);
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.monitor.log_interval, Duration::from_secs(30));
        assert_eq!(
            (c.monitor.warn_inflight, c.monitor.alert_inflight),
            (2000, 5000)
        );

        assert_eq!(c.channels.len(), 1);
        let ch = &c.channels[0];
        assert_eq!(ch.name, "openai-main");
        assert_eq!(ch.provider, Provider::OpenAi);
        assert_eq!(ch.base_url, "https://api.openai.com");
        assert_eq!(ch.scheme, Scheme::Https);
        assert_eq!((ch.host.as_str(), ch.port), ("api.openai.com", 443));
        assert_eq!(ch.path_prefix, "");
        assert_eq!(ch.keys, vec!["sk-...".to_string()]);
        assert_eq!(
            ch.models,
            vec!["gpt-4o".to_string(), "gpt-4o-mini".to_string()]
        );
        assert_eq!(
            ch.model_map,
            vec![("gpt-4".to_string(), "gpt-4o".to_string())]
        );
        assert_eq!((ch.priority, ch.weight), (0, 1));
        assert_eq!(ch.timeouts, ChannelTimeouts::default());

        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.tokens[0].name, "team-a");
        assert_eq!(c.tokens[0].key, "sk-ringway-...");
        assert_eq!(c.tokens[0].models, vec!["*".to_string()]);
    }

    #[test]
    fn contract_example_with_key_env_and_channel_timeouts() {
        let text = CONTRACT_EXAMPLE
            .replace(r#"keys = ["sk-..."]  "#, r#"key_env = "OPENAI_API_KEY""#)
            .replace(
                r#"# timeouts = { response_header = "2m" }"#,
                r#"timeouts = { response_header = "2m", connect = "250ms" }"#,
            );
        let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-from-env\n".to_string());
        let c = parse_with_env(&text, Path::new("ringway.toml"), &env).unwrap();
        let ch = &c.channels[0];
        assert_eq!(ch.keys, vec!["sk-from-env".to_string()]);
        assert_eq!(ch.timeouts.response_header, Some(Duration::from_secs(120)));
        assert_eq!(ch.timeouts.connect, Some(Duration::from_millis(250)));
        assert_eq!(ch.timeouts.total, None);
    }

    #[test]
    fn sse_coalesce_may_be_zero_and_is_bounded() {
        let c = parse_ok(&format!("[server]\nsse_coalesce = \"0ms\"\n{MINIMAL}"));
        assert_eq!(c.server.sse_coalesce, Duration::ZERO);
        let c = parse_ok(&format!("[server]\nsse_coalesce = \"20ms\"\n{MINIMAL}"));
        assert_eq!(c.server.sse_coalesce, Duration::from_millis(20));
        let e = parse_err(&format!("[server]\nsse_coalesce = \"2s\"\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (2, "server.sse_coalesce"), "{e}");
        assert!(e.message.contains("at most 1s"), "{e}");
        let e = parse_err(&format!("[server]\nsse_coalesce = 5\n{MINIMAL}"));
        assert!(e.message.contains("duration string"), "{e}");
    }

    #[test]
    fn busy_poll_is_off_by_default_and_bounded() {
        assert_eq!(parse_ok(MINIMAL).server.busy_poll, Duration::ZERO);
        let c = parse_ok(&format!("[server]\nbusy_poll = \"300us\"\n{MINIMAL}"));
        assert_eq!(c.server.busy_poll, Duration::from_micros(300));
        let e = parse_err(&format!(
            "[server]\nworkers = 1\nbusy_poll = \"1s\"\n{MINIMAL}"
        ));
        assert_eq!((e.line, e.key.as_str()), (3, "server.busy_poll"), "{e}");
        assert!(e.message.contains("at most 10ms"), "{e}");
        let e = parse_err(&format!("[server]\nbusy_poll = \"fast\"\n{MINIMAL}"));
        assert_eq!(e.key, "server.busy_poll", "{e}");
    }

    #[test]
    fn defaults_apply_when_sections_are_absent() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.server.listen_text, "127.0.0.1:3000");
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 3000)));
        assert_eq!(c.server.workers, 0);
        assert_eq!(c.server.max_inflight, 500);
        assert_eq!(c.server.max_header_bytes, 65536);
        assert_eq!(c.server.max_body_bytes, 67_108_864);
        assert_eq!(c.server.max_error_body_bytes, 65536);
        assert_eq!(c.server.sse_coalesce, Duration::from_millis(5));
        let t = c.timeouts;
        assert_eq!(t.connect, Duration::from_secs(10));
        assert_eq!(t.tls_handshake, Duration::from_secs(10));
        assert_eq!(t.response_header, Duration::from_secs(900));
        assert_eq!(t.stream_idle, Duration::from_secs(300));
        assert_eq!(t.total, Duration::from_secs(900));
        assert_eq!(t.pool_idle, Duration::from_secs(90));
        assert_eq!(t.quick, Duration::from_secs(120));
        assert_eq!(t.client_header, Duration::from_secs(30));
        assert_eq!(t.client_body, Duration::from_secs(30));
        assert_eq!(t.client_idle, Duration::from_secs(75));
        assert_eq!(c.monitor.log_interval, Duration::from_secs(30));
        assert_eq!(c.monitor.warn_inflight, 2000);
        assert_eq!(c.monitor.alert_inflight, 5000);
        let ch = &c.channels[0];
        assert_eq!((ch.priority, ch.weight), (0, 1));
        assert_eq!((ch.scheme, ch.port), (Scheme::Http, 9000));
        assert!(ch.model_map.is_empty());
        assert!(c.effective_workers() >= 1);
    }

    #[test]
    fn partial_sections_keep_other_defaults_and_dotted_keys_work() {
        let c = parse_ok(&format!(
            "server.workers = 3\ntimeouts.connect = \"1s\"\n[monitor]\nwarn_inflight = 5\n{MINIMAL}"
        ));
        assert_eq!(c.server.workers, 3);
        assert_eq!(c.effective_workers(), 3);
        assert_eq!(c.server.max_inflight, 500);
        assert_eq!(c.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.timeouts.tls_handshake, Duration::from_secs(10));
        assert_eq!(c.monitor.warn_inflight, 5);
        assert_eq!(c.monitor.alert_inflight, 5000);
    }

    #[test]
    fn listen_forms() {
        for (text, want) in [
            ("127.0.0.1:3000", "127.0.0.1:3000"),
            ("0.0.0.0:80", "0.0.0.0:80"),
            ("[::1]:3000", "[::1]:3000"),
            ("localhost:3001", "127.0.0.1:3001"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            let c = parse_ok(&format!("[server]\nlisten = \"{text}\"\n{MINIMAL}"));
            assert_eq!(c.server.listen, want.parse::<SocketAddr>().unwrap());
            assert_eq!(c.server.listen_text, text);
        }
        for bad in [
            "3000",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":3000",
            "::1:3000",
            "a b:1",
        ] {
            let e = parse_err(&format!("[server]\nlisten = \"{bad}\"\n{MINIMAL}"));
            assert_err(&e, 2, "server.listen", "listen address");
        }
    }

    #[test]
    fn base_url_forms() {
        let cases = [
            (
                "https://api.openai.com",
                Scheme::Https,
                "api.openai.com",
                443,
                "",
            ),
            (
                "https://api.openai.com/",
                Scheme::Https,
                "api.openai.com",
                443,
                "",
            ),
            (
                "http://gw.local:8080/openai/",
                Scheme::Http,
                "gw.local",
                8080,
                "/openai",
            ),
            (
                "http://10.0.0.1/a/b//",
                Scheme::Http,
                "10.0.0.1",
                80,
                "/a/b",
            ),
            ("http://[::1]:9000", Scheme::Http, "::1", 9000, ""),
            (
                "https://[2001:db8::1]/x",
                Scheme::Https,
                "2001:db8::1",
                443,
                "/x",
            ),
            ("HTTPS://Example.com", Scheme::Https, "Example.com", 443, ""),
        ];
        for (url, scheme, host, port, prefix) in cases {
            let text = MINIMAL.replace("http://127.0.0.1:9000", url);
            let ch = parse_ok(&text).channels.remove(0);
            assert_eq!(
                (
                    ch.scheme,
                    ch.host.as_str(),
                    ch.port,
                    ch.path_prefix.as_str()
                ),
                (scheme, host, port, prefix),
                "{url}"
            );
            assert!(!ch.base_url.ends_with('/'));
        }
        for bad in [
            "api.openai.com",
            "ftp://x",
            "https://",
            "https://host:0",
            "https://host:70000",
            "https://host:port",
            "https://host?x=1",
            "https://host/p#frag",
            "https://user:pw@host",
            "http://::1:9000",
            "http://[::1",
            "http://[nothex]:1",
            "http://[::1]x",
            "http://ho st/",
        ] {
            let e = parse_err(&MINIMAL.replace("http://127.0.0.1:9000", bad));
            assert_err(&e, 4, "channels[0].base_url", "base_url");
        }
        let e = parse_err(&MINIMAL.replace("http://127.0.0.1:9000", "https://user:secret@h"));
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn display_format() {
        let e = parse_err(&format!(
            "[timeouts]\n\n\n\n\n\nconnect = \"10x\"\n{MINIMAL}"
        ));
        assert_eq!(
            e.to_string(),
            "ringway.toml:7: timeouts.connect: invalid duration \"10x\" (use 250ms, 10s, 15m, 1h)"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = parse_err(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n{MINIMAL}"
        ));
        assert_err(&e, 3, "server.listn", "unknown key");
        let e = parse_err(&format!("[servr]\nlisten = 1\n{MINIMAL}"));
        assert_err(&e, 1, "servr", "unknown key");
        let e = parse_err(&format!("[a.b]\n\nc = 1\n{MINIMAL}"));
        assert_err(&e, 1, "a", "unknown key");
        let e = parse_err(&format!("server.port = 1\n{MINIMAL}"));
        assert_err(&e, 1, "server.port", "unknown key");
        let e = parse_err(&format!("bogus = 1\n{MINIMAL}"));
        assert_err(&e, 1, "bogus", "unknown key");
        let e = parse_err(&format!("[timeouts]\nconect = \"1s\"\n{MINIMAL}"));
        assert_err(&e, 2, "timeouts.conect", "unknown key");
        let e = parse_err(&format!("[monitor]\nlevel = 1\n{MINIMAL}"));
        assert_err(&e, 2, "monitor.level", "unknown key");
        let e = parse_err(&format!("{MINIMAL}\n[[channels]]\nname = \"d\"\nurl = 1\n"));
        assert_err(&e, 15, "channels[1].url", "unknown key");
        let e = parse_err(&format!("{MINIMAL}secret = \"x\"\n"));
        assert_err(&e, 12, "tokens[0].secret", "unknown key");
        let e = parse_err(&MINIMAL.replace(
            "models = [\"*\"]\n\n",
            "models = [\"*\"]\ntimeouts = { pool_idle = \"1s\" }\n",
        ));
        assert_err(
            &e,
            7,
            "channels[0].timeouts.pool_idle",
            "unknown timeout layer",
        );
    }

    #[test]
    fn value_errors_report_line_and_key() {
        let e = parse_err(&format!("[timeouts]\ntotal = \"0s\"\n{MINIMAL}"));
        assert_err(&e, 2, "timeouts.total", "must be > 0");
        let e = parse_err(&format!("[timeouts]\ntotal = 10\n{MINIMAL}"));
        assert_err(&e, 2, "timeouts.total", "duration");
        let e = parse_err(&format!("[timeouts]\ntotal = \"100000h\"\n{MINIMAL}"));
        assert_err(&e, 2, "timeouts.total", "at most");
        let e = parse_err(&format!("[server]\nworkers = -1\n{MINIMAL}"));
        assert_err(&e, 2, "server.workers", "negative");
        let e = parse_err(&format!("[server]\nworkers = \"4\"\n{MINIMAL}"));
        assert_err(
            &e,
            2,
            "server.workers",
            "expected an integer, found a string",
        );
        let e = parse_err(&format!("[server]\nmax_inflight = 0\n{MINIMAL}"));
        assert_err(&e, 2, "server.max_inflight", ">= 1");
        let e = parse_err(&format!(
            "[monitor]\nwarn_inflight = 10\nalert_inflight = 5\n{MINIMAL}"
        ));
        assert_err(&e, 2, "monitor.warn_inflight", "must not exceed");
        let e = parse_err(&format!("[monitor]\nalert_inflight = 5\n{MINIMAL}"));
        assert_err(&e, 2, "monitor.alert_inflight", "must not exceed");
        let e = parse_err(&format!("server = 5\n{MINIMAL}"));
        assert_err(&e, 1, "server", "expected a table");
    }

    #[test]
    fn channel_errors_report_line_and_key() {
        let e = parse_err(&MINIMAL.replace("provider = \"openai\"", "provider = \"azure\""));
        assert_err(&e, 3, "channels[0].provider", "unknown provider");
        let e = parse_err(&MINIMAL.replace("provider = \"openai\"\n", ""));
        assert_err(&e, 1, "channels[0].provider", "required");
        let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = []"));
        assert_err(&e, 5, "channels[0].keys", "at least one key");
        let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = [\"k\",\n  \"\"]"));
        assert_err(&e, 6, "channels[0].keys[1]", "must not be empty");
        let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = [\"k x\"]"));
        assert_err(&e, 5, "channels[0].keys[0]", "HTTP header");
        let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = [\"k\"]\nkey_env = \"X\""));
        assert_err(&e, 6, "channels[0].key_env", "not both");
        let e = parse_err(&MINIMAL.replace("keys = [\"k\"]\n", ""));
        assert_err(&e, 1, "channels[0].keys", "key_env");
        let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "key_env = \"NOPE\""));
        assert_err(&e, 5, "channels[0].key_env", "not set");
        let env = |_: &str| Some("  ".to_string());
        let e = parse_err_env(
            &MINIMAL.replace("keys = [\"k\"]", "key_env = \"BLANK\""),
            &env,
        );
        assert_err(&e, 5, "channels[0].key_env", "empty");
        let e = parse_err(&MINIMAL.replace("models = [\"*\"]\n\n", "models = []\n\n"));
        assert_err(&e, 6, "channels[0].models", "at least one model");
        let e = parse_err(&MINIMAL.replace("models = [\"*\"]\n\n", "models = [\"g*4\"]\n\n"));
        assert_err(&e, 6, "channels[0].models[0]", "'*'");
        let e =
            parse_err(&MINIMAL.replace("models = [\"*\"]\n\n", "models = [\"*\"]\nweight = 0\n\n"));
        assert_err(&e, 7, "channels[0].weight", ">= 1");
        let e = parse_err(&MINIMAL.replace(
            "models = [\"*\"]\n\n",
            "models = [\"*\"]\npriority = \"high\"\n\n",
        ));
        assert_err(&e, 7, "channels[0].priority", "integer");
        let e = parse_err(&MINIMAL.replace(
            "models = [\"*\"]\n\n",
            "models = [\"*\"]\nmodel_map = { a = 1 }\n\n",
        ));
        assert_err(&e, 7, "channels[0].model_map.a", "string");
        let e = parse_err(&MINIMAL.replace(
            "models = [\"*\"]\n\n",
            "models = [\"*\"]\ntimeouts = { total = \"1d\" }\n\n",
        ));
        assert_err(&e, 7, "channels[0].timeouts.total", "invalid duration");
        let channel = &MINIMAL[..MINIMAL.find("[[tokens]]").unwrap()];
        let dup = format!("{MINIMAL}\n{channel}");
        let e = parse_err(&dup);
        assert_err(&e, 14, "channels[1].name", "duplicate channel name");
        assert!(e.message.contains("line 2"), "{e}");
        let e = parse_err(&MINIMAL.replace("[[channels]]", "[channels]"));
        assert_err(&e, 1, "channels", "[[channels]]");
    }

    #[test]
    fn token_errors_report_line_and_key() {
        let two = format!("{MINIMAL}\n[[tokens]]\nname = \"u\"\nkey = \"tk\"\nmodels = [\"*\"]\n");
        let e = parse_err(&two);
        assert_err(&e, 15, "tokens[1].key", "same key as token \"t\" (line 10)");
        assert!(!e.to_string().contains("tk\""), "key leaked: {e}");
        let e = parse_err(&two.replace("name = \"u\"", "name = \"t\""));
        assert_err(&e, 14, "tokens[1].name", "duplicate token name");
        let e = parse_err(&MINIMAL.replace("key = \"tk\"\n", ""));
        assert_err(&e, 8, "tokens[0].key", "required");
        let e = parse_err(&MINIMAL.replace("key = \"tk\"", "key = \"\""));
        assert_err(&e, 10, "tokens[0].key", "empty");
        let e = parse_err(&format!("{MINIMAL}models = [\"*\"]\n"));
        assert_eq!(e.key, "");
        assert_eq!(e.line, 12, "duplicate keys are a TOML error: {e}");
    }

    #[test]
    fn missing_sections_and_empty_input() {
        let e = parse_err("");
        assert_eq!((e.key.as_str(), e.line), ("channels", 0));
        let tokens_only = &MINIMAL[MINIMAL.find("[[tokens]]").unwrap()..];
        let e = parse_err(tokens_only);
        assert_err(&e, 4, "channels", "at least one [[channels]]");
        let channels_only = &MINIMAL[..MINIMAL.find("[[tokens]]").unwrap()];
        let e = parse_err(channels_only);
        assert_err(&e, 7, "tokens", "at least one [[tokens]]");
        let e = parse_err(&format!("channels = []\n{}", tokens_only));
        assert_err(&e, 1, "channels", "at least one");
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = parse_err(&format!("{MINIMAL}\n[server\n"));
        assert_eq!(e.line, 13, "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");
        let e = parse_err("[server]\nlisten = \"127.0.0.1:1\n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn relay_timeout_overrides_total() {
        let env = |name: &str| (name == "RELAY_TIMEOUT").then(|| "42".to_string());
        let c = parse_with_env(MINIMAL, Path::new("ringway.toml"), &env).unwrap();
        assert_eq!(c.timeouts.total, Duration::from_secs(42));
        assert_eq!(c.timeouts.response_header, Duration::from_secs(900));

        let env = |name: &str| (name == "RELAY_TIMEOUT").then(String::new);
        let c = parse_with_env(MINIMAL, Path::new("ringway.toml"), &env).unwrap();
        assert_eq!(c.timeouts.total, Duration::from_secs(900));

        for bad in ["0", "-5", "10s", "1.5", "abc", "99999999999999999999"] {
            let env = |name: &str| (name == "RELAY_TIMEOUT").then(|| bad.to_string());
            let e = parse_with_env(MINIMAL, Path::new("ringway.toml"), &env).unwrap_err();
            assert_eq!(e.file, "RELAY_TIMEOUT (environment)");
            assert_eq!((e.line, e.key.as_str()), (0, "RELAY_TIMEOUT"), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "10",
            "10x",
            "1.5s",
            "-1s",
            " 1s",
            "1s ",
            "1 s",
            "1hh",
            "18446744073709551615h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("200µs"), Ok(Duration::from_micros(200)));
        for d in [
            "250ms", "10s", "15m", "1h", "90s", "1500ms", "200us", "1500us",
        ] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn globs_serves_allows_and_model_map() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-4o*", "gpt-4o"));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o*", "gpt-4"));
        assert!(glob_match("gpt-4", "gpt-4"));
        assert!(!glob_match("gpt-4", "gpt-4o"));
        assert!(!glob_match("gpt-4", "GPT-4"));

        let c = parse_ok(CONTRACT_EXAMPLE);
        let ch = &c.channels[0];
        assert!(ch.serves("gpt-4o"));
        assert!(ch.serves("gpt-4o-mini"));
        assert!(ch.serves("gpt-4"), "mapped alias is served");
        assert!(!ch.serves("gpt-3.5-turbo"));
        assert_eq!(ch.upstream_model("gpt-4"), "gpt-4o");
        assert_eq!(ch.upstream_model("gpt-4o-mini"), "gpt-4o-mini");
        assert!(c.tokens[0].allows("claude-3"));

        let c = parse_ok(&MINIMAL.replace(
            "name = \"t\"\nkey = \"tk\"\nmodels = [\"*\"]",
            "name = \"t\"\nkey = \"tk\"\nmodels = [\"gpt-4o*\", \"o1\"]",
        ));
        let t = &c.tokens[0];
        assert!(t.allows("gpt-4o-mini") && t.allows("o1"));
        assert!(!t.allows("o1-mini") && !t.allows("gpt-4"));
    }

    #[test]
    fn summary_names_everything_but_secrets() {
        let text = MINIMAL
            .replace(
                "keys = [\"k\"]",
                "keys = [\"sk-SECRET-A\", \"sk-SECRET-B\"]",
            )
            .replace("key = \"tk\"", "key = \"sk-TOKEN-SECRET\"")
            .replace(
                "models = [\"*\"]\n\n",
                "models = [\"*\"]\nmodel_map = { a = \"b\" }\ntimeouts = { total = \"1m\" }\n\n",
            );
        let s = parse_ok(&text).summary();
        assert!(!s.contains("SECRET"), "{s}");
        for needle in [
            "127.0.0.1:3000",
            "workers 0",
            "max_inflight 500",
            "response_header 15m",
            "client_idle 75s",
            "log_interval 30s",
            "  c [openai] http://127.0.0.1:9000",
            "keys 2",
            "map a->b",
            "timeouts total=1m",
            "  t models *",
        ] {
            assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
        }
        assert!(s.lines().count() <= 24);
    }

    #[test]
    fn load_reports_unreadable_file() {
        let e = load(Path::new("/nonexistent/ringway.toml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/ringway.toml");
        assert_eq!((e.line, e.key.as_str()), (0, ""));
        assert!(e
            .to_string()
            .starts_with("/nonexistent/ringway.toml:0: cannot read"));
    }

    /// MINIMAL with an https base_url and `ca_file = <ca>` on line 7.
    fn with_ca_file(ca: &str) -> String {
        MINIMAL
            .replace("http://127.0.0.1:9000", "https://127.0.0.1:9000")
            .replace(
                "models = [\"*\"]\n\n",
                &format!("models = [\"*\"]\nca_file = {ca:?}\n\n"),
            )
    }

    fn test_certs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs")
    }

    #[test]
    fn ca_file_is_read_and_resolved_against_the_config_dir() {
        let ca = test_certs().join("ca.pem");
        let c = parse_ok(&with_ca_file(ca.to_str().unwrap()));
        let loaded = c.channels[0].ca.as_ref().expect("ca_file loaded");
        assert_eq!(loaded.path, ca);
        assert_eq!(loaded.pem, std::fs::read(&ca).unwrap());
        assert!(c.summary().contains(&format!("ca_file {}", ca.display())));
        assert!(parse_ok(MINIMAL).channels[0].ca.is_none());

        // Relative: against the config file's directory, not the working directory.
        let config_path = test_certs().join("ringway.toml");
        let c = parse_with_env(&with_ca_file("ca.pem"), &config_path, &no_env).unwrap();
        assert_eq!(c.channels[0].ca.as_ref().unwrap().path, ca);
        let c = parse_with_env(&with_ca_file("../certs/server.pem"), &config_path, &no_env)
            .expect("a chain of two certificates is accepted");
        assert!(c.channels[0].ca.is_some());
        // Relative to the config file, so the same name is missing from another directory.
        let e = parse_err(&with_ca_file("ca.pem"));
        assert_err(&e, 7, "channels[0].ca_file", "cannot read ca.pem");
    }

    #[test]
    fn ca_file_errors_report_line_and_key() {
        let ca = test_certs().join("ca.pem");
        let http = with_ca_file(ca.to_str().unwrap())
            .replace("https://127.0.0.1:9000", "http://127.0.0.1:9000");
        let e = parse_err(&http);
        assert_err(
            &e,
            7,
            "channels[0].ca_file",
            "ca_file needs an https base_url",
        );

        let e = parse_err(&with_ca_file("/nonexistent/ca.pem"));
        assert_err(
            &e,
            7,
            "channels[0].ca_file",
            "cannot read /nonexistent/ca.pem",
        );
        let e = parse_err(&with_ca_file(test_certs().to_str().unwrap()));
        assert_err(&e, 7, "channels[0].ca_file", "cannot read");
        let e = parse_err(&with_ca_file(""));
        assert_err(&e, 7, "channels[0].ca_file", "must not be empty");
        let e = parse_err(&with_ca_file("x").replace("ca_file = \"x\"", "ca_file = 5"));
        assert_err(&e, 7, "channels[0].ca_file", "expected a string");

        // A PEM file without a certificate (the server's private key).
        let key = test_certs().join("server.key");
        let e = parse_err(&with_ca_file(key.to_str().unwrap()));
        assert_err(&e, 7, "channels[0].ca_file", "contains no PEM certificate");
        assert!(!e.message.contains("PRIVATE"), "{e}");

        let dir = std::env::temp_dir().join(format!("ringway-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            parse_err(&with_ca_file(path.to_str().unwrap()))
        };
        let e = bad("empty.pem", "");
        assert_err(&e, 7, "channels[0].ca_file", "contains no PEM certificate");
        let e = bad("text.pem", "not a certificate\n");
        assert_err(&e, 7, "channels[0].ca_file", "contains no PEM certificate");
        let e = bad(
            "base64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        assert_err(&e, 7, "channels[0].ca_file", "invalid PEM");
        let e = bad(
            "der.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        assert_err(
            &e,
            7,
            "channels[0].ca_file",
            "certificate 1 cannot be a trusted root",
        );
        let _ = std::fs::remove_dir_all(&dir);

        // The second channel's key names its own index and line.
        let second = format!(
            "{}\n[[channels]]\nname = \"d\"\nprovider = \"openai\"\nbase_url = \"http://x\"\n\
             keys = [\"k\"]\nmodels = [\"*\"]\nca_file = {:?}\n",
            MINIMAL,
            ca.to_str().unwrap()
        );
        let e = parse_err(&second);
        assert_err(&e, 19, "channels[1].ca_file", "https");
    }

    /// Malformed input of every shape must come back as an error, never a panic, and the error
    /// must point somewhere inside the file.
    #[test]
    fn malformed_inputs_never_panic() {
        let mut inputs: Vec<String> = vec![
            "".into(),
            "\n\n\n".into(),
            "[".into(),
            "[[".into(),
            "[[channels]".into(),
            "=".into(),
            "a =".into(),
            "\"unterminated".into(),
            "key = 'x".into(),
            "[server]\nworkers = 99999999999999999999999".into(),
            "[server]\nworkers = -9223372036854775808".into(),
            "[server]\nworkers = 9223372036854775807".into(),
            "[server]\nworkers = 1e400".into(),
            "[server]\nworkers = 1.5".into(),
            "[server]\nworkers = true".into(),
            "[server]\nworkers = 1979-05-27T07:32:00Z".into(),
            "[server]\nlisten = []".into(),
            "[server]\nlisten = { a = 1 }".into(),
            "[server]\nlisten = \"\"".into(),
            "[server]\nmax_body_bytes = 0".into(),
            "[timeouts]\nconnect = \"\"".into(),
            "[timeouts]\nconnect = \"ms\"".into(),
            "[timeouts]\nconnect = [\"1s\"]".into(),
            "[timeouts.connect]\nx = 1".into(),
            "timeouts = 1".into(),
            "channels = 1".into(),
            "channels = [1]".into(),
            "channels = [[]]".into(),
            "tokens = \"x\"".into(),
            "[[channels]]\n[[tokens]]".into(),
            "[[channels]]\nname = 1".into(),
            "[[channels]]\nname = \"\"".into(),
            "[[channels]]\nname = \"a\"\nprovider = 1".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = \"k\"".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [1]".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = \"*\"".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = [\"*\"]\nmodel_map = []".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = [\"*\"]\nweight = 99999999999".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = [\"*\"]\ntimeouts = \"1s\"".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://\u{e9}\"\nkeys = [\"k\"]\nmodels = [\"*\"]".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"h\u{e9}\"\nkeys = [\"k\"]\nmodels = [\"*\"]".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://[\u{e9}]\"\nkeys = [\"k\"]\nmodels = [\"*\"]".into(),
            "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x/\u{e9}\"\nkeys = [\"k\u{e9}\"]\nmodels = [\"*\"]".into(),
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            format!("a = {}{}", "[".repeat(5000), "]".repeat(5000)),
            format!("a = {}", "{ b = ".repeat(3000)),
            "\u{feff}[server]\nworkers = 1".into(),
            "\0".into(),
        ];
        // Every prefix of a valid file is either valid or an error; none may panic.
        for cut in 0..CONTRACT_EXAMPLE.len() {
            if CONTRACT_EXAMPLE.is_char_boundary(cut) {
                inputs.push(CONTRACT_EXAMPLE[..cut].to_string());
            }
        }
        for text in &inputs {
            let lines = text.lines().count().max(1);
            let outcome = std::panic::catch_unwind(|| {
                parse_with_env(text, Path::new("ringway.toml"), &no_env)
            });
            match outcome {
                Err(_) => panic!("panicked on {text:?}"),
                Ok(Ok(_)) => assert!(text.len() > MINIMAL.len(), "accepted {text:?}"),
                Ok(Err(e)) => {
                    assert!(
                        e.line <= lines,
                        "line {} beyond input {text:?}: {e}",
                        e.line
                    );
                    assert!(!e.message.is_empty());
                }
            }
        }
    }
}
