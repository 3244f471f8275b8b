//! Authentication and routing: which token is calling, and which channel serves its model.
//!
//! Owns: the read-only routing table built once from the config (token lookup, channels with
//! their pre-rendered upstream header lines, per-token `/v1/models` bodies) and the per-worker
//! choice state (random generator, key rotation cursors).
//!
//! Must not: take locks or touch shared mutable state on a relayed request's path — the table is
//! immutable and shared by all workers through an `Arc`; everything that changes per request
//! lives in [`RouteState`], which each worker owns. The shared state it reads is channel health
//! (`crate::health`: atomics, read with plain loads here); the `/v1/models` answer also reads
//! the fetched upstream model lists ([`ModelLists`], filled by the `model_list` thread).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{ChannelConfig, Config, Provider, Scheme, Timeouts, TokenConfig};
use crate::health::Health;
use crate::provider::Adapter;

pub struct Channel {
    pub cfg: ChannelConfig,
    /// `Host` header value: host, plus the port when it is not the scheme's default.
    pub host_header: Vec<u8>,
    /// How this channel's upstream is spoken to.
    pub adapter: Adapter,
    /// The header line carrying each key (e.g. `Authorization: Bearer <key>\r\n`), rendered
    /// once.
    pub auth_lines: Vec<Vec<u8>>,
    /// The header line sent when the client did not send that header (Anthropic's
    /// `anthropic-version`; see [`Adapter::default_header_line`]), rendered once.
    pub default_header_line: Option<Vec<u8>>,
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
    /// True when a `models` pattern is a glob: what it serves is asked of the upstream.
    pub fn has_glob(&self) -> bool {
        self.cfg.models.iter().any(|m| m.contains('*'))
    }

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
    /// Pre-rendered `/v1/models` body per token: the exact names only.
    models_bodies: Vec<Vec<u8>>,
    /// What the upstreams of glob channels list (see [`crate::model_list`]).
    pub model_lists: ModelLists,
    /// Each token's and channel's row in the monitor's counters (kept by name across reloads;
    /// `usize::MAX`: not counted).
    token_rows: Vec<usize>,
    channel_rows: Vec<usize>,
    /// Channel and key health, shared by all workers: [`Router::candidates`] skips channels
    /// that are cooling down or out of keys. A reload carries each unchanged channel's state.
    pub health: Arc<Health>,
}

/// Why a request could not be routed; maps to the contract's error table.
/// At most this many channels are lined up for one request: far more than any retry budget.
pub const MAX_CANDIDATES: usize = 16;

/// The channels lined up for one request, in order (see [`Router::candidates`]). Inline and
/// `Copy`: lining them up costs no allocation and borrows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Candidates {
    list: [u16; MAX_CANDIDATES],
    len: u8,
    next: u8,
}

impl Candidates {
    /// Just `channel` (a Responses API id route: only the channel that holds the response).
    pub fn only(channel: usize) -> Candidates {
        let mut c = Candidates::default();
        c.push(channel);
        c
    }

    fn push(&mut self, channel: usize) -> bool {
        if (self.len as usize) == MAX_CANDIDATES || channel > u16::MAX as usize {
            return false;
        }
        self.list[self.len as usize] = channel as u16;
        self.len += 1;
        true
    }
}

impl Iterator for Candidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        (self.next < self.len).then(|| {
            self.next += 1;
            self.list[self.next as usize - 1] as usize
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    ModelNotAllowed,
    ModelNotFound,
    /// Only channels of a provider the endpoint cannot use serve the model (e.g.
    /// `/v1/messages/count_tokens` for a model only OpenAI-compatible channels serve: there is
    /// no conversion for it).
    OtherProviderOnly,
    /// `/v1/responses`: channels of the endpoint's provider serve the model, but none of them
    /// serves the Responses API (`responses = false`).
    NoResponsesChannel,
    /// Channels serve the model, but each is cooling down or has no key left; the shortest
    /// wait in whole seconds, if any will end (`None`: every key refused for good).
    NoHealthyChannel {
        retry_after_secs: Option<u64>,
    },
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
                let timeouts = c.timeouts.apply(&config.timeouts);
                let adapter = Adapter::for_provider(c.provider);
                Channel {
                    cfg: c.clone(),
                    adapter,
                    host_header: host_header.into_bytes(),
                    auth_lines: c.keys.iter().map(|k| adapter.auth_line(k)).collect(),
                    default_header_line: adapter
                        .default_header_line(c.anthropic_version.as_deref()),
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
            .map(|t| models_body(&channels, t, None))
            .collect();
        Router {
            tokens,
            token_cfgs: config.tokens.clone(),
            model_lists: ModelLists::for_channels(&channels),
            token_rows: (0..config.tokens.len()).collect(),
            channel_rows: (0..channels.len()).collect(),
            health: Arc::new(Health::new(&config.health, &config.channels)),
            channels,
            models_bodies,
        }
    }

    /// Map tokens and channels to `monitor`'s counter rows by name (a name keeps its row across
    /// reloads). A name past the monitor's room is not counted, and said so.
    pub fn with_counter_rows(mut self, monitor: &crate::monitor::Monitor) -> Router {
        let mut uncounted = Vec::new();
        let mut row = |names: &crate::monitor::Names, name: &str| {
            names.row_of(name).unwrap_or_else(|| {
                uncounted.push(name.to_string());
                usize::MAX
            })
        };
        self.token_rows = self
            .token_cfgs
            .iter()
            .map(|t| row(&monitor.token_names, &t.name))
            .collect();
        self.channel_rows = self
            .channels
            .iter()
            .map(|c| row(&monitor.channel_names, &c.cfg.name))
            .collect();
        if !uncounted.is_empty() {
            crate::log::warn(&format!(
                "no room left for the counters of {} (more new names than the process started with allow): restart to count them",
                uncounted.join(", ")
            ));
        }
        self
    }

    /// Carry channel health over from the generation before (see [`Health::renewed`]).
    pub fn with_health_from(mut self, before: &Router, old: &Config, config: &Config) -> Router {
        self.health = Arc::new(before.health.renewed(
            &config.health,
            &old.channels,
            &config.channels,
        ));
        self
    }

    /// `token`'s row in the monitor's per-token counters.
    #[inline]
    pub fn token_row(&self, token: usize) -> usize {
        self.token_rows.get(token).copied().unwrap_or(usize::MAX)
    }

    /// Every channel's row in the monitor's per-channel counters, by position.
    pub fn channel_rows(&self) -> &[usize] {
        &self.channel_rows
    }

    /// `channel`'s row in the monitor's per-channel counters.
    #[inline]
    pub fn channel_row(&self, channel: usize) -> usize {
        self.channel_rows
            .get(channel)
            .copied()
            .unwrap_or(usize::MAX)
    }

    #[inline]
    pub fn authenticate(&self, key: &[u8]) -> Option<usize> {
        self.tokens.get(key).copied()
    }

    /// The `/v1/models` body for `token`: the exact names of every channel, and what the
    /// upstreams of glob channels listed that matches their globs and the token's allow-list.
    pub fn models_body(&self, token: usize) -> Cow<'_, [u8]> {
        if !self.model_lists.any() {
            return Cow::Borrowed(&self.models_bodies[token]);
        }
        let token = &self.token_cfgs[token];
        Cow::Owned(models_body(&self.channels, token, Some(&self.model_lists)))
    }

    /// `GET /v1/models/{id}`: the model object when `token` may use `id` and a channel serves
    /// it (by name, by a `model_map` alias, or by a glob), owned by the first such channel in
    /// routing order; `None` otherwise.
    pub fn model_body(&self, token: usize, id: &str) -> Option<Vec<u8>> {
        if !self.token_cfgs[token].allows(id) {
            return None;
        }
        let owner = self
            .channels
            .iter()
            .filter(|c| c.cfg.serves(id))
            .max_by_key(|c| c.cfg.priority)?;
        serde_json::to_vec(&serde_json::json!({
            "id": id, "object": "model", "created": 0, "owned_by": owner.cfg.name
        }))
        .ok()
    }

    /// The channels of a provider the endpoint can use (`served_by`: its own dialect's, and
    /// the other one's where a conversion exists) that may serve `model` for `token`, in the
    /// order to try them: priority
    /// tiers from the highest down; within a tier the first is drawn at random by weight and
    /// the others follow in config order after it. Channels that are cooling down, being
    /// probed, or out of keys are left out (a channel whose cooldown is over is lined up: the
    /// first request to reach it in `forward` is its probe). Never allocates; reads each
    /// serving channel's health word, and the clock only when one is cooling.
    #[cfg(test)]
    pub fn candidates(
        &self,
        token: usize,
        model: &str,
        served_by: impl Fn(Provider) -> bool,
        state: &RouteState,
    ) -> Result<Candidates, RouteError> {
        self.candidates_for(token, model, served_by, false, state)
    }

    /// [`Router::candidates`], among only the channels that serve the Responses API when
    /// `responses` is set (`/v1/responses`).
    pub fn candidates_for(
        &self,
        token: usize,
        model: &str,
        served_by: impl Fn(Provider) -> bool,
        responses: bool,
        state: &RouteState,
    ) -> Result<Candidates, RouteError> {
        if !self.token_cfgs[token].allows(model) {
            return Err(RouteError::ModelNotAllowed);
        }
        let mut out = Candidates::default();
        let mut below: Option<i64> = None;
        let now = self.health.lazy_now();
        let serves = |c: &Channel| {
            served_by(c.cfg.provider) && c.cfg.serves(model) && (!responses || c.cfg.responses)
        };
        let usable = |i: usize, c: &Channel| serves(c) && self.health.routable(i, &now);
        while (out.len as usize) < MAX_CANDIDATES {
            // The next tier: the highest priority under the previous one.
            let mut tier: Option<i64> = None;
            let mut total_weight: u64 = 0;
            for (i, c) in self.channels.iter().enumerate() {
                let p = c.cfg.priority;
                if below.is_some_and(|b| p >= b) || !usable(i, c) {
                    continue;
                }
                if tier.is_none_or(|t| p > t) {
                    tier = Some(p);
                    total_weight = 0;
                }
                if tier == Some(p) {
                    total_weight += c.cfg.weight as u64;
                }
            }
            let Some(tier) = tier else { break };
            let in_tier = |i: usize, c: &Channel| c.cfg.priority == tier && usable(i, c);
            let mut first = None;
            let mut pick = state.next_random() % total_weight.max(1);
            for (i, c) in self.channels.iter().enumerate() {
                if in_tier(i, c) {
                    let w = c.cfg.weight as u64;
                    if pick < w {
                        first = Some(i);
                        break;
                    }
                    pick -= w;
                }
            }
            let first = first.unwrap_or_else(|| {
                (0..self.channels.len())
                    .find(|&i| in_tier(i, &self.channels[i]))
                    .expect("a tier has a channel")
            });
            let n = self.channels.len();
            for k in 0..n {
                let i = (first + k) % n;
                if in_tier(i, &self.channels[i]) && !out.push(i) {
                    break;
                }
            }
            below = Some(tier);
        }
        if out.len == 0 {
            let serving = (0..self.channels.len()).filter(|&i| serves(&self.channels[i]));
            if serving.clone().next().is_none() {
                let usable_provider =
                    |c: &Channel| served_by(c.cfg.provider) && c.cfg.serves(model);
                if responses && self.channels.iter().any(usable_provider) {
                    return Err(RouteError::NoResponsesChannel);
                }
                if self.channels.iter().any(|c| c.cfg.serves(model)) {
                    return Err(RouteError::OtherProviderOnly);
                }
                return Err(RouteError::ModelNotFound);
            }
            return Err(RouteError::NoHealthyChannel {
                retry_after_secs: self.health.wait_secs(serving),
            });
        }
        Ok(out)
    }
}

fn models_body(channels: &[Channel], token: &TokenConfig, lists: Option<&ModelLists>) -> Vec<u8> {
    let fetched: Vec<Arc<Vec<String>>> = match lists {
        Some(l) => (0..channels.len()).map(|i| l.get(i)).collect(),
        None => Vec::new(),
    };
    let mut models: Vec<(&str, &str)> = Vec::new();
    // In routing order, so a model is owned by the channel that would serve it first.
    let mut order: Vec<usize> = (0..channels.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(channels[i].cfg.priority));
    let mut seen = std::collections::HashSet::new();
    for i in order {
        let c = &channels[i];
        let exact = c
            .cfg
            .models
            .iter()
            .chain(c.cfg.model_map.iter().map(|(k, _)| k))
            .filter(|m| !m.contains('*'));
        let listed = fetched
            .get(i)
            .into_iter()
            .flat_map(|l| l.iter())
            .filter(|m| c.cfg.serves(m));
        for m in exact.chain(listed) {
            if token.allows(m) && seen.insert(m.as_str()) {
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
}

impl RouteState {
    pub fn new(seed: u64) -> RouteState {
        RouteState {
            rng: Cell::new(seed | 1),
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

// ---- routing predicates of the config types ----------------------------------------------

/// `"*"` matches anything, `"abc*"` matches by prefix, anything else must match exactly.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
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

/// The fetched lists, one slot per channel (empty for channels without a glob).
pub struct ModelLists {
    slots: Vec<Option<RwLock<Arc<Vec<String>>>>>,
}

impl ModelLists {
    pub fn for_channels(channels: &[Channel]) -> ModelLists {
        ModelLists {
            slots: channels
                .iter()
                .map(|c| c.has_glob().then(|| RwLock::new(Arc::new(Vec::new()))))
                .collect(),
        }
    }

    /// True when `channel`'s list is fetched from its upstream (it has a glob).
    pub fn fetched(&self, channel: usize) -> bool {
        matches!(self.slots.get(channel), Some(Some(_)))
    }

    /// True when some channel's list is fetched from its upstream.
    pub fn any(&self) -> bool {
        self.slots.iter().any(Option::is_some)
    }

    /// The ids `channel`'s upstream listed last (empty until a fetch succeeds).
    pub fn get(&self, channel: usize) -> Arc<Vec<String>> {
        match self.slots.get(channel) {
            Some(Some(slot)) => slot.read().map(|l| l.clone()).unwrap_or_default(),
            _ => Arc::default(),
        }
    }

    /// Replaces `channel`'s list (the `model-lists` thread, after a fetch).
    pub fn set(&self, channel: usize, ids: Vec<String>) {
        if let Some(Some(slot)) = self.slots.get(channel) {
            if let Ok(mut l) = slot.write() {
                *l = Arc::new(ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(channels: &[(&str, &str, i64, u32)], token_models: &str) -> Config {
        let mut text = String::new();
        for (name, models, priority, weight) in channels {
            text.push_str(&format!(
                "[[channels]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = [\"k\"]\nmodels = {models}\npriority = {priority}\nweight = {weight}\nmodel_map = {{ \"alias\" = \"real\" }}\n\n"
            ));
        }
        text.push_str(&format!(
            "[[tokens]]\nname = \"t\"\nkey = \"tk\"\nmodels = {token_models}\n"
        ));
        crate::config::parse(&text, std::path::Path::new("<test>")).expect("valid test config")
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

        let c = config(&[("a", "[\"gpt-4o*\"]", 0, 1)], "[\"gpt-4o*\", \"o1\"]");
        let ch = &c.channels[0];
        assert!(ch.serves("gpt-4o") && ch.serves("gpt-4o-mini"));
        assert!(ch.serves("alias"), "a mapped alias is served");
        assert!(!ch.serves("gpt-3.5-turbo"));
        assert_eq!(ch.upstream_model("alias"), "real");
        assert_eq!(ch.upstream_model("gpt-4o-mini"), "gpt-4o-mini");
        let t = &c.tokens[0];
        assert!(t.allows("gpt-4o-mini") && t.allows("o1"));
        assert!(!t.allows("o1-mini") && !t.allows("gpt-4"));
    }

    #[test]
    fn candidates_go_by_tier_then_weight_and_never_repeat() {
        let c = config(
            &[
                ("low", "[\"*\"]", 0, 1),
                ("high-a", "[\"*\"]", 5, 3),
                ("other", "[\"x-*\"]", 9, 1),
                ("high-b", "[\"*\"]", 5, 1),
            ],
            "[\"*\"]",
        );
        let router = Router::new(&c);
        let state = RouteState::new(42);
        let mut firsts = [0u32; 4];
        for _ in 0..4000 {
            let order: Vec<usize> = router
                .candidates(0, "gpt", |p| p == Provider::OpenAi, &state)
                .unwrap()
                .collect();
            // Both priority-5 channels first (in some order), then the priority-0 one; the
            // channel that does not serve the model never appears.
            assert_eq!(order.len(), 3, "{order:?}");
            let mut top = order[..2].to_vec();
            top.sort();
            assert_eq!(top, vec![1, 3]);
            assert_eq!(order[2], 0);
            firsts[order[0]] += 1;
        }
        // Weight 3 against 1: about three quarters of first picks.
        let share = firsts[1] as f64 / 4000.0;
        assert!((0.70..0.80).contains(&share), "{firsts:?}");
        assert_eq!(
            router
                .candidates(0, "x-1", |p| p == Provider::OpenAi, &state)
                .unwrap()
                .next(),
            Some(2)
        );
    }

    /// A model served by an OpenAI-compatible and an Anthropic channel: an endpoint both can
    /// serve (converted) lines up both; one only Anthropic channels can serve (`count_tokens`)
    /// only the Anthropic one — and, when every usable one cools, its Retry-After is theirs,
    /// not that of a channel the request could never use.
    #[test]
    fn candidates_mix_providers_only_where_the_endpoint_can_use_them() {
        use crate::health::{Pass, Reason};
        let text = "[health]\nfailures = 1\ncooldown = \"5s\"\nmax_cooldown = \"10m\"\n\n\
            [[channels]]\nname = \"o\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = [\"k\"]\nmodels = [\"m\", \"only-o\"]\n\n\
            [[channels]]\nname = \"a\"\nprovider = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = [\"k\"]\nmodels = [\"m\"]\n\n\
            [[tokens]]\nname = \"t\"\nkey = \"tk\"\nmodels = [\"*\"]\n";
        let c = crate::config::parse(text, std::path::Path::new("<test>")).expect("valid");
        let router = Router::new(&c);
        let state = RouteState::new(7);
        let both = |_: Provider| true;
        let anthropic_only = |p: Provider| p == Provider::Anthropic;
        let mut all: Vec<usize> = router.candidates(0, "m", both, &state).unwrap().collect();
        all.sort();
        assert_eq!(all, vec![0, 1]);
        let only: Vec<usize> = router
            .candidates(0, "m", anthropic_only, &state)
            .unwrap()
            .collect();
        assert_eq!(only, vec![1]);
        assert_eq!(
            router.candidates(0, "only-o", anthropic_only, &state).err(),
            Some(RouteError::OtherProviderOnly)
        );
        // The OpenAI channel cools for 10 s, the Anthropic one for 100 s.
        router
            .health
            .failure(0, Reason::ConnectFailed, Some(10), &mut Pass::Open);
        router
            .health
            .failure(1, Reason::ConnectFailed, Some(100), &mut Pass::Open);
        let wait = |e: Option<RouteError>| match e {
            Some(RouteError::NoHealthyChannel { retry_after_secs }) => retry_after_secs,
            other => panic!("{other:?}"),
        };
        let w = wait(router.candidates(0, "m", anthropic_only, &state).err());
        assert!(w.is_some_and(|s| (90..=100).contains(&s)), "{w:?}");
        let w = wait(router.candidates(0, "m", both, &state).err());
        assert!(w.is_some_and(|s| s <= 10), "{w:?}");
    }

    #[test]
    fn candidates_errors() {
        let c = config(&[("a", "[\"gpt-*\"]", 0, 1)], "[\"gpt-4o\"]");
        let router = Router::new(&c);
        let state = RouteState::new(1);
        assert_eq!(
            router
                .candidates(0, "gpt-5", |p| p == Provider::OpenAi, &state)
                .err(),
            Some(RouteError::ModelNotAllowed)
        );
        let c = config(&[("a", "[\"gpt-*\"]", 0, 1)], "[\"*\"]");
        let router = Router::new(&c);
        assert_eq!(
            router
                .candidates(0, "claude", |p| p == Provider::OpenAi, &state)
                .err(),
            Some(RouteError::ModelNotFound)
        );
    }
}
