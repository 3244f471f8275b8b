//! Configuration: turns the TOML file (plus the `RELAY_TIMEOUT` and `key_env` environment
//! variables) into a fully validated [`Config`], or into a [`ConfigError`] that names the file,
//! the line and the dotted key at fault, so `check-config` and startup can point the operator
//! straight at the mistake. Everything downstream may trust a `Config` without re-checking it.
//!
//! It also collects [`ConfigWarning`]s: settings that are valid but probably not what the
//! operator meant (a threshold that can never be reached, a config file other users can read).
//! They never fail a load; `check-config` prints them and the relay logs them once at start.
//!
//! This module must not do IO beyond reading the one file (and its permission bits), the
//! PEM files channels name in `ca_file` and those `[server.tls]` names (resolving a host name written in `server.listen`
//! through the system resolver is the only other lookup), must not touch the
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

mod channel;
mod load;
mod spans;
mod summary;
#[cfg(test)]
mod tests;
mod timeouts;
mod timestamp;
mod tls;
mod token;

pub use load::{load, parse};
pub use timeouts::{format_duration, parse_duration, ChannelTimeouts, Layer, Timeouts};
pub use timestamp::format_rfc3339;
pub use tls::ClientTls;

/// A validated configuration. Build it with [`load`], [`parse`] or [`parse_with_env`].
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file path as given on the command line.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub timeouts: Timeouts,
    pub monitor: MonitorConfig,
    pub retry: RetryConfig,
    pub log: LogConfig,
    pub health: HealthConfig,
    /// In file order; never empty.
    pub channels: Vec<ChannelConfig>,
    /// In file order; never empty, keys unique.
    pub tokens: Vec<TokenConfig>,
    /// Valid but suspicious settings, in file order (the file's permissions last).
    pub warnings: Vec<ConfigWarning>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `server.listen` exactly as written, for logs and the summary.
    pub listen_text: String,
    /// 0 = one per online core, as written; see [`Config::effective_workers`].
    pub workers: usize,
    pub max_inflight: usize,
    /// Open client connections, whole process (split evenly across workers). At the bound a
    /// worker closes its longest-idle connection to make room, or refuses the new one.
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// Cap on how much of an upstream error body is read before it is normalised.
    pub max_error_body_bytes: usize,
    /// The largest event of an upstream stream the relay converts between dialects (the one
    /// event the conversion holds); an event over it ends the stream with `sse_event_too_large`.
    pub max_sse_event_bytes: usize,
    /// How long an SSE stream that just relayed a chunk lets the next ones gather before
    /// reading again (zero: every chunk is forwarded the moment it arrives).
    pub sse_coalesce: Duration,
    /// How long a worker keeps polling for completions after its last request event before it
    /// sleeps (zero: it sleeps at once). Trades CPU for the wake-up latency of an idle core.
    pub busy_poll: Duration,
    /// Browser origins allowed to call the API (CORS); empty: CORS off; `"*"`: any origin.
    pub cors_origins: Vec<String>,
    /// How often the model lists of channels whose `models` hold a glob are fetched again
    /// from their upstream's `/v1/models` (zero: once, at start; `None`: never, `"off"`).
    pub models_refresh: Option<Duration>,
    /// Where the quota ledger (and other state that survives restarts) is kept; relative paths
    /// are relative to the config file. Required when a token has `quota_tokens`.
    pub state_dir: Option<PathBuf>,
    /// How often settled usage is written to the ledger (and made durable): what a crash may
    /// lose at most.
    pub state_flush: Duration,
    /// Completion tokens reserved against a quota for a request that names no `max_tokens` /
    /// `max_completion_tokens`.
    pub quota_reserve: u64,
    /// SIGTERM / SIGINT: how long in-flight requests and streams may run on after the
    /// listeners closed before they are ended with `shutting_down` (zero: at once).
    pub drain: Duration,
    /// Responses API ids remembered (which channel, key and token created each), whole
    /// process; the oldest is forgotten first when full.
    pub responses_ids: usize,
    /// How long a Responses API id stays routable after its response was created.
    pub responses_ttl: Duration,
    /// `[server.tls]`: clients speak TLS (HTTP/1.1 inside); `None`: plain HTTP.
    pub tls: Option<ClientTls>,
}

impl ServerConfig {
    /// Does `[server] cors_origins` allow a browser at `origin`?
    #[inline]
    pub fn cors_allows(&self, origin: &[u8]) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin)
    }
}

/// `[log]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Where the access log goes (default: off).
    pub access: AccessLogTo,
    /// How the process log's lines are written.
    pub format: LogFormat,
}

/// The process log's line format (`[log] format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000Z INFO  message`, for people.
    #[default]
    Text,
    /// `ts=... level=info msg="..."`.
    Logfmt,
    /// `{"ts":"...","level":"info","msg":"..."}`.
    Json,
}

/// The access log's destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogTo {
    #[default]
    Off,
    Stderr,
    /// A file (relative paths are relative to the config file), appended to and reopened on
    /// SIGHUP.
    File(PathBuf),
}

/// `[retry]`: failover to the next candidate channel, before the first response byte only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Extra attempts on other channels after the first one.
    pub attempts: u32,
    /// Upstream statuses that send the request on to the next channel.
    pub on_status: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            on_status: vec![429, 500, 502, 503, 504],
        }
    }
}

impl RetryConfig {
    /// Does an upstream answering `status` send the request on to the next channel?
    #[inline]
    pub fn retries_status(&self, status: u16) -> bool {
        self.on_status.contains(&status)
    }
}

#[derive(Clone, Debug)]
pub struct MonitorConfig {
    pub log_interval: Duration,
    /// Effective value: as written, or [`WARN_PERCENT`] of `server.max_inflight`.
    pub warn_inflight: usize,
    /// Effective value: as written, or [`ALERT_PERCENT`] of `server.max_inflight`.
    pub alert_inflight: usize,
    /// Whether `warn_inflight` / `alert_inflight` were written in the file (else derived).
    pub warn_inflight_set: bool,
    pub alert_inflight_set: bool,
}

/// Default `monitor.warn_inflight`, in percent of `server.max_inflight` (rounded down).
pub const WARN_PERCENT: usize = 80;
/// Default `monitor.alert_inflight`, in percent of `server.max_inflight` (rounded down).
pub const ALERT_PERCENT: usize = 95;

impl MonitorConfig {
    /// The defaults for a process whose `max_inflight` is `max_inflight`.
    pub fn defaults_for(max_inflight: usize) -> MonitorConfig {
        MonitorConfig {
            log_interval: Duration::from_secs(30),
            warn_inflight: max_inflight * WARN_PERCENT / 100,
            alert_inflight: max_inflight * ALERT_PERCENT / 100,
            warn_inflight_set: false,
            alert_inflight_set: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Any OpenAI-compatible API: OpenAI, xAI, DeepSeek, vLLM, ...
    OpenAi,
    /// Anthropic's Messages API (`x-api-key`, `anthropic-version`).
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
    /// `anthropic_version` (Anthropic channels only): the `anthropic-version` sent when the
    /// client sent none; `None` for the default.
    pub anthropic_version: Option<String>,
    /// Whether the upstream serves OpenAI's Responses API (`/v1/responses`): true by default
    /// for `openai` channels, `responses = false` for a compatible upstream without it; never
    /// for `anthropic` channels.
    pub responses: bool,
    /// `default_max_tokens` (Anthropic channels only): the `max_tokens` sent with an OpenAI
    /// chat request converted for this channel when the client named none (Anthropic requires
    /// one).
    pub default_max_tokens: u64,
}

/// `default_max_tokens` when the channel does not set it.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

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
    /// `expires_at` as Unix milliseconds: from then on the token gets 401 `token_expired`.
    pub expires_at: Option<i64>,
    /// Requests per minute, whole process (429 `rate_limited` over it).
    pub rpm: Option<u64>,
    /// Prompt + completion tokens per minute from reported usage, whole process.
    pub tpm: Option<u64>,
    /// This token's requests at once, whole process.
    pub max_inflight: Option<u64>,
    /// Prompt + completion tokens over the token's life, kept in the ledger under
    /// `server.state_dir` (429 `quota_exhausted` once spent).
    pub quota_tokens: Option<u64>,
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

/// A valid but suspicious setting, displayed like a [`ConfigError`] (`FILE:LINE: KEY: MESSAGE`;
/// the line and key are left out when the warning is about the whole file).
#[derive(Clone, Debug)]
pub struct ConfigWarning {
    pub file: String,
    /// 1-based; 0 if the warning is about the file itself.
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line > 0 {
            write!(f, "{}:", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, " {}:", self.key)?;
        }
        write!(f, " {}", self.message)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            listen_text: "127.0.0.1:3000".to_string(),
            workers: 0,
            max_inflight: 500,
            max_connections: 10_000,
            max_header_bytes: 65536,
            max_body_bytes: 67_108_864,
            max_error_body_bytes: 65536,
            max_sse_event_bytes: 1 << 20,
            sse_coalesce: Duration::from_millis(5),
            busy_poll: Duration::ZERO,
            cors_origins: Vec::new(),
            models_refresh: Some(Duration::from_secs(600)),
            state_dir: None,
            state_flush: Duration::from_secs(1),
            quota_reserve: 1024,
            drain: Duration::from_secs(30),
            responses_ids: 100_000,
            responses_ttl: Duration::from_secs(30 * 86_400),
            tls: None,
        }
    }
}

impl Default for MonitorConfig {
    /// The defaults for the default `max_inflight`.
    fn default() -> Self {
        MonitorConfig::defaults_for(ServerConfig::default().max_inflight)
    }
}

/// `[health]`: channel cooldowns and key disabling, shared by all workers (see `health.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Off: no channel cools down and no key is taken out of rotation (failover still works).
    pub enabled: bool,
    /// Consecutive failures that put a channel in cooldown; 0: channels never cool down.
    pub failures: u32,
    /// The first cooldown; doubled after each failed probe, reset by a successful one.
    pub cooldown: Duration,
    /// No cooldown is longer, whatever the backoff or the upstream's `Retry-After`.
    pub max_cooldown: Duration,
    /// A refused key is tried again (by one request) after this long; zero: it stays out until
    /// the process restarts.
    pub key_recheck: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            failures: 3,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
            key_recheck: Duration::from_secs(600),
        }
    }
}
