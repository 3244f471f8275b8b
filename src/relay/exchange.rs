//! One request as a value: [`Exchange`] is created when a head has been read and dropped when
//! `finish` is done with it, so nothing about a request outlives it or is reset by hand.
//!
//! Owns: the request's parsed head (in storage the connection lends it), its id, endpoint,
//! token, body range, route and attempt count, the upstream's response head, usage (and what an
//! estimate of it needs), the status sent and the timings. Must not: hold IO resources — sockets and buffers stay with the
//! connection and the phases that use them.

use std::ops::Range;
use std::time::Instant;

use crate::config::{Layer, Provider};
use crate::error::Dialect;
use crate::provider::{BodySplice, Converted, ModelField, Usage};
use crate::wire::{Method, RequestHead, ResponseHead};

/// Which endpoint a request is for, decided from its path and method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Metrics,
    Models,
    /// `GET /v1/models/{id}`.
    Model,
    /// A relayed API call.
    Relay(RelayKind),
    Unknown,
    /// A known path with the wrong method: the `Allow` value.
    WrongMethod(&'static str),
    /// A head that could not be accepted (answered, never counted as traffic).
    Refused,
    /// A CORS preflight (`OPTIONS` from an allowed origin).
    Preflight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayKind {
    ChatCompletions,
    Completions,
    Embeddings,
    /// `POST /v1/messages`: Anthropic's Messages API, relayed to Anthropic channels.
    Messages,
    /// `POST /v1/messages/count_tokens`: relayed to Anthropic channels; costs no tokens.
    CountTokens,
    /// `POST /v1/responses`: OpenAI's Responses API, relayed to the OpenAI channels that serve
    /// it (`responses`, on by default); the created id is remembered with its channel and key.
    Responses,
    /// `GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`,
    /// `GET /v1/responses/{id}/input_items`: no model; the id decides the channel and key.
    /// Costs no tokens.
    ResponseById,
}

impl RelayKind {
    /// The dialect this endpoint speaks: the provider whose API it is.
    pub fn provider(self) -> Provider {
        match self {
            RelayKind::Messages | RelayKind::CountTokens => Provider::Anthropic,
            _ => Provider::OpenAi,
        }
    }

    /// Whether a channel of `channel` provider can serve this endpoint: its own dialect's
    /// channels always; chat completions and Messages also the other provider's, converted
    /// (`provider::Conversion`). Nothing else has a conversion (`count_tokens` has no OpenAI
    /// counterpart, and no count is ever made up).
    pub fn served_by(self, channel: Provider) -> bool {
        channel == self.provider()
            || matches!(self, RelayKind::ChatCompletions | RelayKind::Messages)
    }
}

impl Endpoint {
    /// HEAD is GET without the body (RFC 9110 9.3.2); the relay's own answers leave it out.
    pub fn of(path: &[u8], method: Method) -> Endpoint {
        let get = matches!(method, Method::Get | Method::Head);
        let post = method == Method::Post;
        let (endpoint, allowed, allow) = match path {
            b"/v1/chat/completions" => (Endpoint::Relay(RelayKind::ChatCompletions), post, "POST"),
            b"/v1/completions" => (Endpoint::Relay(RelayKind::Completions), post, "POST"),
            b"/v1/embeddings" => (Endpoint::Relay(RelayKind::Embeddings), post, "POST"),
            b"/v1/messages" => (Endpoint::Relay(RelayKind::Messages), post, "POST"),
            b"/v1/messages/count_tokens" => (Endpoint::Relay(RelayKind::CountTokens), post, "POST"),
            b"/v1/models" => (Endpoint::Models, get, "GET, HEAD"),
            b"/api/monitor/health" => (Endpoint::Health, get, "GET, HEAD"),
            b"/metrics" => (Endpoint::Metrics, get, "GET, HEAD"),
            p if p.len() > 11 && p.starts_with(b"/v1/models/") => {
                (Endpoint::Model, get, "GET, HEAD")
            }
            b"/v1/responses" => (Endpoint::Relay(RelayKind::Responses), post, "POST"),
            p if p.starts_with(b"/v1/responses/") => {
                let Some((_, action)) = response_route(p) else {
                    return Endpoint::Unknown;
                };
                let by_id = Endpoint::Relay(RelayKind::ResponseById);
                match action {
                    b"" => (
                        by_id,
                        matches!(method, Method::Get | Method::Delete),
                        "GET, DELETE",
                    ),
                    b"/cancel" => (by_id, post, "POST"),
                    _ => (by_id, method == Method::Get, "GET"),
                }
            }
            _ => return Endpoint::Unknown,
        };
        if allowed {
            endpoint
        } else {
            Endpoint::WrongMethod(allow)
        }
    }

    /// The path of a known endpoint.
    pub fn path(self) -> Option<&'static str> {
        Some(match self {
            Endpoint::Relay(RelayKind::ChatCompletions) => "/v1/chat/completions",
            Endpoint::Relay(RelayKind::Completions) => "/v1/completions",
            Endpoint::Relay(RelayKind::Embeddings) => "/v1/embeddings",
            Endpoint::Relay(RelayKind::Messages) => "/v1/messages",
            Endpoint::Relay(RelayKind::CountTokens) => "/v1/messages/count_tokens",
            Endpoint::Relay(RelayKind::Responses) => "/v1/responses",
            Endpoint::Models => "/v1/models",
            Endpoint::Health => "/api/monitor/health",
            Endpoint::Metrics => "/metrics",
            _ => return None,
        })
    }

    /// The error shape the caller speaks: Anthropic's on the Messages endpoints.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Relay(kind) if kind.provider() == Provider::Anthropic => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// Health and metrics are not traffic, and a refused head is not a request: none of
    /// them is counted as one.
    pub fn is_counted(self) -> bool {
        !matches!(
            self,
            Endpoint::Health | Endpoint::Metrics | Endpoint::Refused | Endpoint::Preflight
        )
    }
}

/// The id and the action (`""`, `"/cancel"` or `"/input_items"`) of a path under
/// `/v1/responses/`; `None` for any other shape (an empty id, more segments, another action).
pub fn response_route(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = path.strip_prefix(b"/v1/responses/")?;
    let (id, action) = match memchr::memchr(b'/', rest) {
        Some(i) => rest.split_at(i),
        None => (rest, &b""[..]),
    };
    let known = matches!(action, b"" | b"/cancel" | b"/input_items");
    (!id.is_empty() && known).then_some((id, action))
}

/// Per-connection storage an exchange borrows for its parsed heads and id, so a request costs
/// no allocation once the connection is warm.
pub struct Scratch {
    pub head: RequestHead,
    pub resp: ResponseHead,
    pub id: Vec<u8>,
    pub model: String,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            head: RequestHead::default(),
            resp: ResponseHead::default(),
            id: Vec::with_capacity(48),
            model: String::with_capacity(64),
        }
    }
}

/// One request, from its head to the end of its answer.
pub struct Exchange<'s> {
    pub head: &'s mut RequestHead,
    /// The upstream's response head, once there is one.
    pub resp: &'s mut ResponseHead,
    /// The `x-request-id`: the client's when acceptable, else `rw-<start>-<worker>-<seq>`.
    pub id: &'s mut Vec<u8>,
    pub start: Instant,
    pub endpoint: Endpoint,
    /// The authenticated token (index into the router's tokens).
    pub token: Option<usize>,
    /// The body inside the connection's read buffer (de-chunked in place if it was chunked).
    pub body: Range<usize>,
    /// Bytes of the read buffer this request occupies; the rest belongs to the next one.
    pub consumed: usize,
    /// Where the body's `model` string is (relative to the body).
    pub model: Option<ModelField>,
    /// The client's model name, kept for the access log (the body may be gone by then).
    pub model_name: &'s mut String,
    /// The channel the answer came from.
    pub channel: Option<usize>,
    /// The one channel and key every attempt must use (a Responses API id route: those that
    /// created the response); `None`: routing and the channel's key rotation decide.
    pub pinned: Option<(usize, usize)>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Usage the upstream reported, if any (`finish` estimates it when none arrived).
    pub usage: Option<Usage>,
    /// A stream whose client did not ask for its usage: the body edit that asks the upstream
    /// for it (its usage-only event is then kept from the client).
    pub usage_splice: Option<BodySplice>,
    /// A `POST /v1/responses` answer's id and usage reader (boxed: other requests pay
    /// nothing for it).
    pub responses: Option<Box<super::responses::ResponsesTrack>>,
    /// The attempt in progress goes to a channel of the other dialect: how its request was
    /// converted, so its answer is converted back (set per attempt by `forward`).
    pub converted: Option<Converted>,
    /// Bytes of answer text relayed (see `provider::content_bytes`): the estimate's basis.
    pub content_bytes: u64,
    /// The status of the answer, once its head went out (0 before).
    pub status_sent: u16,
    pub first_byte_at: Option<Instant>,
    /// When the request went to the upstream of the latest attempt (its connection ready),
    /// and when that upstream's response head arrived: the channel's latency.
    pub upstream_sent_at: Option<Instant>,
    pub upstream_head_at: Option<Instant>,
    /// The connection cannot carry another request after this one (an error that closes, a
    /// body left unread, or the client's own `Connection: close`).
    pub close: bool,
    /// How the request ended, for the access log.
    pub outcome: Outcome,
    /// The answer went out whole (or a stream ended with its error event).
    pub completed: bool,
    /// Bytes written to the client for this request.
    pub bytes_out: u64,
    /// The request's `Origin`, when `[server] cors_origins` allows it: answers carry CORS
    /// headers.
    pub cors_origin: Option<crate::wire::Span>,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The upstream failed or answered with an error status.
    UpstreamError,
    Timeout(Layer),
    ClientGone,
    /// Refused by the relay itself (auth, limits, a bad request).
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout(layer) => layer.code(),
            Outcome::ClientGone => "client_gone",
            Outcome::Rejected => "rejected",
        }
    }

    /// The outcome an error of the relay's own stands for.
    pub fn of(error: &crate::error::RelayError) -> Outcome {
        match error.layer {
            Some(layer) => Outcome::Timeout(layer),
            None if error.upstream => Outcome::UpstreamError,
            None => Outcome::Rejected,
        }
    }
}

impl<'s> Exchange<'s> {
    pub fn new(scratch: &'s mut Scratch, start: Instant) -> Exchange<'s> {
        Exchange {
            head: &mut scratch.head,
            resp: &mut scratch.resp,
            id: &mut scratch.id,
            model_name: &mut scratch.model,
            start,
            endpoint: Endpoint::Unknown,
            token: None,
            body: 0..0,
            consumed: 0,
            model: None,
            channel: None,
            pinned: None,
            attempts: 0,
            usage: None,
            usage_splice: None,
            responses: None,
            converted: None,
            content_bytes: 0,
            status_sent: 0,
            first_byte_at: None,
            upstream_sent_at: None,
            upstream_head_at: None,
            close: false,
            outcome: Outcome::Ok,
            completed: false,
            bytes_out: 0,
            cors_origin: None,
        }
    }

    /// The answer's head goes out now.
    pub fn mark_first_byte(&mut self, status: u16, now: Instant) {
        self.status_sent = status;
        if self.first_byte_at.is_none() {
            self.first_byte_at = Some(now);
        }
    }

    /// Whether the connection may carry another request after this one.
    pub fn keeps_alive(&self) -> bool {
        self.head.keep_alive && !self.close
    }
}

pub fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        Method::Head => "HEAD",
        Method::Options => "OPTIONS",
        Method::Other => "OTHER",
    }
}

/// Append `n` in lowercase hex.
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
