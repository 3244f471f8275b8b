//! The timeout layers and their durations: [`Layer`] names each layer once (its config key,
//! its error code), and [`Timeouts`] holds one duration per layer, indexed by it.
//!
//! Owns: the layers' names, their defaults, which of them a channel may override, and the
//! duration syntax (`250ms`, `10s`, `15m`, `1h`, `200us`). Must not: know how deadlines are
//! armed — that is `deadline`'s.

use std::ops::{Index, IndexMut};
use std::time::Duration;

use super::ConfigError;

/// The timeout layers of the contract, in the order a request meets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Layer {
    ClientIdle = 0,
    ClientHeader,
    ClientBody,
    Connect,
    TlsHandshake,
    ResponseHeader,
    StreamIdle,
    Total,
    Quick,
    PoolIdle,
}

impl Layer {
    pub const COUNT: usize = 10;
    pub const ALL: [Layer; Layer::COUNT] = [
        Layer::ClientIdle,
        Layer::ClientHeader,
        Layer::ClientBody,
        Layer::Connect,
        Layer::TlsHandshake,
        Layer::ResponseHeader,
        Layer::StreamIdle,
        Layer::Total,
        Layer::Quick,
        Layer::PoolIdle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::ClientIdle => "client_idle",
            Layer::ClientHeader => "client_header",
            Layer::ClientBody => "client_body",
            Layer::Connect => "connect",
            Layer::TlsHandshake => "tls_handshake",
            Layer::ResponseHeader => "response_header",
            Layer::StreamIdle => "stream_idle",
            Layer::Total => "total",
            Layer::Quick => "quick",
            Layer::PoolIdle => "pool_idle",
        }
    }

    /// The error code clients see, e.g. `response_header_timeout`.
    pub fn code(self) -> &'static str {
        match self {
            Layer::ClientIdle => "client_idle_timeout",
            Layer::ClientHeader => "client_header_timeout",
            Layer::ClientBody => "client_body_timeout",
            Layer::Connect => "connect_timeout",
            Layer::TlsHandshake => "tls_handshake_timeout",
            Layer::ResponseHeader => "response_header_timeout",
            Layer::StreamIdle => "stream_idle_timeout",
            Layer::Total => "total_timeout",
            Layer::Quick => "quick_timeout",
            Layer::PoolIdle => "pool_idle_timeout",
        }
    }
}

impl Layer {
    /// The layers a channel may override (`timeouts = { ... }` in a `[[channels]]` table).
    pub const PER_CHANNEL: [Layer; 5] = [
        Layer::Connect,
        Layer::TlsHandshake,
        Layer::ResponseHeader,
        Layer::StreamIdle,
        Layer::Total,
    ];

    /// The layer a `[timeouts]` key names.
    pub fn from_name(name: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == name)
    }

    fn default_duration(self) -> Duration {
        Duration::from_secs(match self {
            Layer::ClientIdle => 75,
            Layer::ClientHeader => 30,
            Layer::ClientBody => 30,
            Layer::Connect => 10,
            Layer::TlsHandshake => 10,
            Layer::ResponseHeader => 15 * 60,
            Layer::StreamIdle => 5 * 60,
            Layer::Total => 15 * 60,
            Layer::Quick => 2 * 60,
            Layer::PoolIdle => 90,
        })
    }
}

/// The `[timeouts]` key that bounds a whole request body (not a layer of its own: it ends
/// the `client_body` layer early).
pub const CLIENT_BODY_TOTAL: &str = "client_body_total";

/// One duration per timeout layer (index it with a [`Layer`]), plus the whole-body bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    layers: [Duration; Layer::COUNT],
    /// The whole request body, however it trickles in (a body that is never silent for
    /// `client_body` is still bounded).
    pub client_body_total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            layers: Layer::ALL.map(Layer::default_duration),
            client_body_total: Duration::from_secs(2 * 60),
        }
    }
}

impl Index<Layer> for Timeouts {
    type Output = Duration;

    #[inline]
    fn index(&self, layer: Layer) -> &Duration {
        &self.layers[layer as usize]
    }
}

impl IndexMut<Layer> for Timeouts {
    #[inline]
    fn index_mut(&mut self, layer: Layer) -> &mut Duration {
        &mut self.layers[layer as usize]
    }
}

/// A channel's overrides of [`Layer::PER_CHANNEL`]; `None` keeps the global value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChannelTimeouts {
    overrides: [Option<Duration>; Layer::COUNT],
}

impl ChannelTimeouts {
    pub fn get(&self, layer: Layer) -> Option<Duration> {
        self.overrides[layer as usize]
    }

    pub fn set(&mut self, layer: Layer, d: Duration) {
        self.overrides[layer as usize] = Some(d);
    }

    /// `global` with these overrides applied.
    pub fn apply(&self, global: &Timeouts) -> Timeouts {
        let mut t = *global;
        for layer in Layer::ALL {
            if let Some(d) = self.get(layer) {
                t[layer] = d;
            }
        }
        t
    }
}

/// Longest duration or RELAY_TIMEOUT accepted: far beyond any sane timeout, yet small enough
/// that `Instant + Duration` arithmetic elsewhere can never overflow and panic.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn parse_relay_timeout(raw: &str) -> Result<Duration, ConfigError> {
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
