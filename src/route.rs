//! Authentication and routing: which token is calling, and which channel serves its model.
//!
//! Owns: the read-only routing table built once from the config (token lookup, channels with
//! their pre-rendered upstream header lines, per-token `/v1/models` bodies) and the per-worker
//! choice state (random generator, key rotation cursors).
//!
//! Must not: take locks or touch shared mutable state — the table is immutable and shared by all
//! workers through an `Arc`; everything that changes per request lives in [`RouteState`], which
//! each worker owns.

use std::cell::Cell;
use std::collections::HashMap;

use crate::config::{ChannelConfig, Config, Scheme, Timeouts, TokenConfig};

pub struct Channel {
    pub cfg: ChannelConfig,
    /// `Host` header value: host, plus the port when it is not the scheme's default.
    pub host_header: Vec<u8>,
    /// `Authorization: Bearer <key>\r\n`, one per key, rendered once.
    pub auth_lines: Vec<Vec<u8>>,
    /// The request timeouts with this channel's overrides applied.
    pub timeouts: Timeouts,
    /// One searcher per key long enough to mask (see [`Channel::mask_keys`]).
    key_finders: Vec<memchr::memmem::Finder<'static>>,
}

/// Keys shorter than this are not searched for: masking a short string would deface
/// ordinary text, and no real provider key is this short.
const MIN_MASKED_KEY: usize = 8;
/// How much of a key's end stays readable, so an operator can tell keys apart.
const KEY_TAIL_SHOWN: usize = 4;

impl Channel {
    /// Overwrite every occurrence of one of this channel's keys in `buf` with `*`, all but
    /// the last few characters, in place (the length never changes, so framing computed
    /// before still holds). Upstreams echo keys in auth errors and debug headers.
    pub fn mask_keys(&self, buf: &mut [u8]) {
        for finder in &self.key_finders {
            let n = finder.needle().len();
            let mut at = 0;
            while let Some(i) = finder.find(&buf[at..]) {
                let start = at + i;
                buf[start..start + n - KEY_TAIL_SHOWN].fill(b'*');
                at = start + n;
            }
        }
    }
}

pub struct Router {
    tokens: HashMap<Vec<u8>, usize>,
    pub token_cfgs: Vec<TokenConfig>,
    pub channels: Vec<Channel>,
    /// Pre-rendered `/v1/models` body per token.
    models_bodies: Vec<Vec<u8>>,
}

/// Why a request could not be routed; maps to the contract's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    ModelNotAllowed,
    ModelNotFound,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut tokens = HashMap::new();
        for (i, t) in config.tokens.iter().enumerate() {
            tokens.insert(t.key.as_bytes().to_vec(), i);
        }
        let channels: Vec<Channel> = config
            .channels
            .iter()
            .map(|c| {
                let default_port = match c.scheme {
                    Scheme::Http => 80,
                    Scheme::Https => 443,
                };
                let host = if c.host.contains(':') {
                    format!("[{}]", c.host)
                } else {
                    c.host.clone()
                };
                let host_header = if c.port == default_port {
                    host
                } else {
                    format!("{host}:{}", c.port)
                };
                let mut timeouts = config.timeouts;
                let o = &c.timeouts;
                timeouts.connect = o.connect.unwrap_or(timeouts.connect);
                timeouts.tls_handshake = o.tls_handshake.unwrap_or(timeouts.tls_handshake);
                timeouts.response_header = o.response_header.unwrap_or(timeouts.response_header);
                timeouts.stream_idle = o.stream_idle.unwrap_or(timeouts.stream_idle);
                timeouts.total = o.total.unwrap_or(timeouts.total);
                Channel {
                    cfg: c.clone(),
                    host_header: host_header.into_bytes(),
                    auth_lines: c
                        .keys
                        .iter()
                        .map(|k| format!("Authorization: Bearer {k}\r\n").into_bytes())
                        .collect(),
                    timeouts,
                    key_finders: c
                        .keys
                        .iter()
                        .filter(|k| k.len() >= MIN_MASKED_KEY)
                        .map(|k| memchr::memmem::Finder::new(k.as_bytes()).into_owned())
                        .collect(),
                }
            })
            .collect();
        let models_bodies = config
            .tokens
            .iter()
            .map(|t| models_body(&channels, t))
            .collect();
        Router {
            tokens,
            token_cfgs: config.tokens.clone(),
            channels,
            models_bodies,
        }
    }

    #[inline]
    pub fn authenticate(&self, key: &[u8]) -> Option<usize> {
        self.tokens.get(key).copied()
    }

    pub fn models_body(&self, token: usize) -> &[u8] {
        &self.models_bodies[token]
    }

    /// Pick a channel for `model`: highest priority first, weighted random among equals.
    pub fn choose(
        &self,
        token: usize,
        model: &str,
        state: &RouteState,
    ) -> Result<usize, RouteError> {
        if !self.token_cfgs[token].allows(model) {
            return Err(RouteError::ModelNotAllowed);
        }
        let mut best_priority = i64::MIN;
        let mut total_weight: u64 = 0;
        for c in &self.channels {
            if !c.cfg.serves(model) {
                continue;
            }
            if c.cfg.priority > best_priority {
                best_priority = c.cfg.priority;
                total_weight = 0;
            }
            if c.cfg.priority == best_priority {
                total_weight += c.cfg.weight as u64;
            }
        }
        if total_weight == 0 {
            return Err(RouteError::ModelNotFound);
        }
        let mut pick = state.next_random() % total_weight;
        for (i, c) in self.channels.iter().enumerate() {
            if c.cfg.priority == best_priority && c.cfg.serves(model) {
                let w = c.cfg.weight as u64;
                if pick < w {
                    return Ok(i);
                }
                pick -= w;
            }
        }
        Err(RouteError::ModelNotFound)
    }

    /// The `Authorization` line for the next request on `channel`, rotating through its keys.
    pub fn auth_line<'a>(&'a self, channel: usize, state: &RouteState) -> &'a [u8] {
        let lines = &self.channels[channel].auth_lines;
        let cursor = &state.key_cursors[channel];
        let i = cursor.get();
        cursor.set(i.wrapping_add(1));
        &lines[i % lines.len()]
    }
}

fn models_body(channels: &[Channel], token: &TokenConfig) -> Vec<u8> {
    let mut models: Vec<(&str, &str)> = Vec::new();
    for c in channels {
        for m in c
            .cfg
            .models
            .iter()
            .chain(c.cfg.model_map.iter().map(|(k, _)| k))
        {
            if m.contains('*') || !token.allows(m) {
                continue;
            }
            if !models.iter().any(|(x, _)| x == m) {
                models.push((m, &c.cfg.name));
            }
        }
    }
    models.sort();
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|(id, owner)| {
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
        .expect("serialising a JSON value cannot fail")
}

/// Per-worker routing state: never shared, so plain `Cell`s suffice.
pub struct RouteState {
    rng: Cell<u64>,
    key_cursors: Vec<Cell<usize>>,
}

impl RouteState {
    pub fn new(router: &Router, seed: u64) -> RouteState {
        RouteState {
            rng: Cell::new(seed | 1),
            key_cursors: router
                .channels
                .iter()
                .enumerate()
                .map(|(i, _)| Cell::new(seed as usize + i))
                .collect(),
        }
    }

    /// xorshift64*: plenty for spreading load, and free of syscalls.
    #[inline]
    pub fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
