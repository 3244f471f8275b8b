//! Anthropic's Messages API ⇄ OpenAI's chat completions: the pure conversion layer.
//!
//! Owns every translation between the two dialects, both ways, as functions of bytes (or of a
//! parsed body) to bytes, with no IO and no clock: requests, whole responses, event streams and
//! error bodies. The relay decides when to call them; the conversions decide nothing about
//! routing, limits or accounting, they only report the usage they saw ([`StreamUsage`]).
//!
//! Key components:
//! - [`to_anthropic_request`] / [`from_anthropic_request`]: an OpenAI chat request for an
//!   Anthropic channel, and an Anthropic request for an OpenAI-compatible channel.
//! - [`from_anthropic_response`] / [`to_anthropic_response`]: whole (non-streamed) answers.
//! - [`AnthropicToOpenAiStream`] / [`OpenAiToAnthropicStream`]: event streams converted event
//!   by event as reads arrive, on the [`SseParser`](super::sse_parser::SseParser); per-stream state is
//!   one event (the parser's, bounded by `max_event_bytes`) plus a few ids and counters —
//!   nothing of the output is kept.
//! - [`errors`]: Anthropic's error shape, the status ⇄ error type table, both directions.
//!
//! What is dropped (no equivalent on the other side) is listed in each converter's docs; a
//! field that cannot be carried but would change the answer's meaning is refused with a 400
//! instead (e.g. a non-function tool, an image URL that is neither `data:` nor http(s)).
//!
//! Error handling: a client body that cannot be converted is a 400 [`RelayError`]
//! (`invalid_request_error`), an upstream body or stream that cannot be read is a 502
//! `bad_upstream_response`, an upstream stream's `error` event is that error with the status
//! its type stands for, and an event over `max_event_bytes` is a 502 `sse_event_too_large`.
//! Bad input never panics.
//!
//! Must not: fetch anything (an image URL is passed on as a URL, never followed), keep a
//! stream's output, or touch the OpenAI → OpenAI path.

pub mod errors;
mod from_anthropic_request;
mod from_anthropic_response;
mod from_anthropic_stream;
mod to_anthropic_request;
mod to_anthropic_response;
mod to_anthropic_stream;

pub use from_anthropic_request::from_anthropic_request;
pub use from_anthropic_response::from_anthropic_response;
pub use from_anthropic_stream::AnthropicToOpenAiStream;
pub use to_anthropic_request::{to_anthropic_request, AnthropicRequest};
pub use to_anthropic_response::to_anthropic_response;
pub use to_anthropic_stream::OpenAiToAnthropicStream;

use serde_json::Value;

use crate::error::RelayError;
use crate::provider::sse_parser::SseError;

/// The `anthropic-version` header value the conversions are written against.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Token counts a converted answer reported, in OpenAI's terms: `prompt` counts every input
/// token (Anthropic's `input_tokens` + `cache_read_input_tokens` +
/// `cache_creation_input_tokens`), `cached` the ones read from the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamUsage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cache_creation: u64,
}

impl StreamUsage {
    /// From an Anthropic `usage` object (missing numbers count 0).
    fn from_anthropic(usage: &Value) -> StreamUsage {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        let cached = n("cache_read_input_tokens");
        let cache_creation = n("cache_creation_input_tokens");
        StreamUsage {
            prompt: n("input_tokens")
                .saturating_add(cached)
                .saturating_add(cache_creation),
            completion: n("output_tokens"),
            cached,
            cache_creation,
        }
    }

    /// From an OpenAI `usage` object.
    fn from_openai(usage: &Value) -> StreamUsage {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        StreamUsage {
            prompt: n(usage.get("prompt_tokens")),
            completion: n(usage.get("completion_tokens")),
            cached: n(usage.pointer("/prompt_tokens_details/cached_tokens")),
            cache_creation: 0,
        }
    }

    /// OpenAI's `usage` object.
    fn openai_json(&self) -> Value {
        serde_json::json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt.saturating_add(self.completion),
            "prompt_tokens_details": { "cached_tokens": self.cached },
        })
    }

    /// Anthropic's `usage` object: `input_tokens` is what was neither read from nor written
    /// to the cache.
    fn anthropic_json(&self) -> Value {
        serde_json::json!({
            "input_tokens": self
                .prompt
                .saturating_sub(self.cached)
                .saturating_sub(self.cache_creation),
            "output_tokens": self.completion,
            "cache_read_input_tokens": self.cached,
            "cache_creation_input_tokens": self.cache_creation,
        })
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason_for(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and reasons added later.
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason_for(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// A client body that cannot be converted.
fn invalid(message: impl Into<String>) -> RelayError {
    RelayError::invalid_json(message.into())
}

/// An upstream body or stream that cannot be converted.
fn bad_upstream(message: impl Into<String>) -> RelayError {
    RelayError::bad_upstream_response(message.into())
}

impl From<SseError> for RelayError {
    fn from(e: SseError) -> RelayError {
        RelayError::mid_stream("sse_event_too_large", e.to_string())
    }
}

/// Whose body a conversion reads: a fault in it is the client's (400) or the upstream's (502).
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

/// Parse a JSON object body.
fn parse_object(body: &[u8], what: &str, side: Side) -> Result<Value, RelayError> {
    let fault = |m: String| match side {
        Side::Client => invalid(m),
        Side::Upstream => bad_upstream(m),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(fault(format!("{what} must be a JSON object"))),
        Err(e) => Err(fault(format!("{what} is not valid JSON: {e}"))),
    }
}

/// Serialise a converted body (a `Value` built here always serialises).
fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A string member, or `""`.
fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}
