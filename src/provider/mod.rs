//! Provider adapters: what the relay must know about an upstream's wire format.
//!
//! Key components:
//! - [`Adapter`]: one per channel, chosen by its `provider`. It says where a request goes (the
//!   upstream path), how the channel's key is sent, how the body goes (the [`RequestPlan`]:
//!   byte for byte, or with the one `model` string spliced; conversion is the next plan), how
//!   the answer comes back (the [`ResponsePlan`]), how an upstream error reads, and where usage
//!   is found.
//! - [`peek_model`] / [`model_name`]: the request's `model` without a JSON tree.
//! - [`scan_usage`]: token counts in any relayed bytes.
//!
//! Error handling: an upstream's error body becomes a [`RelayError`] with its status and words
//! (never parsed beyond the cap the relay read). Must not: re-serialise a body on the
//! OpenAI → OpenAI path, or allocate per request when no rename is needed.

mod json;
mod openai;
mod usage;

pub use json::{model_name, peek_model, ModelField};
pub use usage::{scan_usage, Usage};

use crate::config::Provider;
use crate::error::RelayError;

// The conversion layer (Anthropic Messages ⇄ OpenAI chat, and the SSE framing under it) is
// complete and tested on its own; the relay's respond and stream phases call it next, and
// until then the crate itself uses none of it.
#[allow(dead_code)]
pub mod anthropic;
#[allow(dead_code)]
pub mod sse_parser;

/// How a channel's upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// Any OpenAI-compatible API.
    OpenAi,
}

/// How a request body goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestPlan<'a> {
    /// Byte for byte.
    Passthrough,
    /// Byte for byte but for the `model` string, replaced by this (a `model_map` rename).
    SpliceModel(&'a str),
}

/// How an upstream answer comes back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponsePlan {
    /// Byte for byte (re-framed, never altered).
    Passthrough,
}

impl Adapter {
    pub fn for_provider(provider: Provider) -> Adapter {
        match provider {
            Provider::OpenAi => Adapter::OpenAi,
        }
    }

    /// Append the upstream request target for `client_path` under `prefix` (the channel's
    /// `base_url` path).
    #[inline]
    pub fn write_target(self, out: &mut Vec<u8>, prefix: &[u8], client_path: &[u8]) {
        match self {
            Adapter::OpenAi => openai::write_target(out, prefix, client_path),
        }
    }

    /// The header line (with its CRLF) that carries `key`, rendered once per key at start.
    pub fn auth_line(self, key: &str) -> Vec<u8> {
        match self {
            Adapter::OpenAi => openai::auth_line(key),
        }
    }

    /// How the body goes: `upstream_model` is the channel's name for the client's model.
    #[inline]
    pub fn request_plan<'a>(self, client_model: &str, upstream_model: &'a str) -> RequestPlan<'a> {
        match self {
            Adapter::OpenAi if client_model == upstream_model => RequestPlan::Passthrough,
            Adapter::OpenAi => RequestPlan::SpliceModel(upstream_model),
        }
    }

    #[inline]
    pub fn response_plan(self) -> ResponsePlan {
        match self {
            Adapter::OpenAi => ResponsePlan::Passthrough,
        }
    }

    /// An upstream non-2xx body (at most the relay's cap; `truncated` if there was more) as the
    /// relay's error, keeping the upstream's status, words and Retry-After.
    pub fn normalise_error(
        self,
        status: u16,
        body: &[u8],
        truncated: bool,
        retry_after: Option<Vec<u8>>,
    ) -> RelayError {
        match self {
            Adapter::OpenAi => openai::normalise_error(status, body, truncated, retry_after),
        }
    }
}
