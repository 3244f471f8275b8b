//! Provider adapters: what the relay must know about an upstream's wire format.
//!
//! Key components:
//! - [`Adapter`]: one per channel, chosen by its `provider` (`OpenAi`, or `Anthropic` for
//!   Anthropic's Messages API: `x-api-key` and `anthropic-version`). It says where a request
//!   goes (the upstream path), how the channel's key is sent, how the body goes (the
//!   [`RequestPlan`]: byte for byte, or with the `model` string and `stream_options` spliced),
//!   how the answer comes back (the [`ResponsePlan`]), how an upstream error reads, and where
//!   usage is found.
//! - [`peek_request`] / [`model_name`]: the request's `model`, and whether a stream asked for
//!   its usage, without a JSON tree; the [`BodySplice`] that asks for it when it did not.
//! - [`scan_usage`]: token counts in any relayed bytes; [`content_bytes`] and
//!   [`Usage::estimate`] for when no count arrives.
//! - [`Conversion`]: a request for a channel of the other dialect (OpenAI chat ⇄ Anthropic
//!   Messages), converted by [`anthropic`], with [`Converted`] telling the answer's conversion
//!   what it needs.
//! - [`UsageCarry`]: a passed-through Anthropic stream's usage, read whole event by whole
//!   event across reads.
//! - [`UsageEvents`]: the stream's usage-only event, read and (when the relay asked for it)
//!   removed without buffering the stream.
//!
//! Error handling: an upstream's error body becomes a [`RelayError`] with its status and words
//! (never parsed beyond the cap the relay read). Must not: re-serialise a body on the
//! OpenAI → OpenAI path, or allocate per request for a rename or the usage splice.

mod anthropic_channel;
mod conversion;
mod json;
mod openai;
mod sse;
mod usage;
mod usage_carry;

pub use conversion::{Conversion, Converted};
pub use json::{
    edited_len, model_name, peek_model, peek_request, write_edited, BodySplice, ModelField,
    RequestPeek,
};
pub use sse::{is_usage_event, UsageEvents, MAX_USAGE_EVENT};
pub use usage::{content_bytes, scan_usage, update_usage, Usage};
pub use usage_carry::UsageCarry;

use crate::config::Provider;
use crate::error::RelayError;

// The conversion layer (Anthropic Messages ⇄ OpenAI chat, and the SSE framing under it); a few
// of its helpers (state sizes, the error-body converters) serve its tests, fuzz targets and
// benches rather than the relay.
#[allow(dead_code)]
pub mod anthropic;
#[allow(dead_code)]
pub mod sse_parser;

/// How a channel's upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// Any OpenAI-compatible API.
    OpenAi,
    /// Anthropic's Messages API, relayed as is.
    Anthropic,
}

/// How a request body goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestPlan<'a> {
    /// Byte for byte.
    Passthrough,
    /// Byte for byte but for these edits, which combine: the `model` string replaced by
    /// `model` (a `model_map` rename), and the `usage` splice that asks the upstream for a
    /// stream's usage report (`stream_options.include_usage`) the client did not ask for.
    Splice {
        model: Option<&'a str>,
        usage: Option<BodySplice>,
    },
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
            Provider::Anthropic => Adapter::Anthropic,
        }
    }

    /// Append the upstream request target for `client_path` under `prefix` (the channel's
    /// `base_url` path).
    #[inline]
    pub fn write_target(self, out: &mut Vec<u8>, prefix: &[u8], client_path: &[u8]) {
        match self {
            Adapter::OpenAi | Adapter::Anthropic => openai::write_target(out, prefix, client_path),
        }
    }

    /// The header line (with its CRLF) that carries `key`, rendered once per key at start.
    pub fn auth_line(self, key: &str) -> Vec<u8> {
        match self {
            Adapter::OpenAi => openai::auth_line(key),
            Adapter::Anthropic => anthropic_channel::auth_line(key),
        }
    }

    /// The header line (with its CRLF) the channel sends when the client did not send that
    /// header itself, rendered once at start: `anthropic-version` for Anthropic (the channel's
    /// `anthropic_version`, else the default). The header's name is
    /// [`Adapter::default_header_name`].
    pub fn default_header_line(self, anthropic_version: Option<&str>) -> Option<Vec<u8>> {
        match self {
            Adapter::OpenAi => None,
            Adapter::Anthropic => Some(anthropic_channel::version_line(anthropic_version)),
        }
    }

    /// The name of the header [`Adapter::default_header_line`] supplies.
    pub fn default_header_name(self) -> &'static [u8] {
        match self {
            Adapter::OpenAi => b"",
            Adapter::Anthropic => b"anthropic-version",
        }
    }

    /// How the body goes: `upstream_model` is the channel's name for the client's model;
    /// `usage` the splice [`peek_request`] found for a stream that did not ask for its usage.
    #[inline]
    pub fn request_plan<'a>(
        self,
        client_model: &str,
        upstream_model: &'a str,
        usage: Option<BodySplice>,
    ) -> RequestPlan<'a> {
        match self {
            Adapter::OpenAi => {
                let model = (client_model != upstream_model).then_some(upstream_model);
                if model.is_none() && usage.is_none() {
                    RequestPlan::Passthrough
                } else {
                    RequestPlan::Splice { model, usage }
                }
            }
            // Anthropic streams report their usage unasked: only a rename edits the body.
            Adapter::Anthropic => {
                match (client_model != upstream_model).then_some(upstream_model) {
                    Some(model) => RequestPlan::Splice {
                        model: Some(model),
                        usage: None,
                    },
                    None => RequestPlan::Passthrough,
                }
            }
        }
    }

    #[inline]
    pub fn response_plan(self) -> ResponsePlan {
        match self {
            Adapter::OpenAi | Adapter::Anthropic => ResponsePlan::Passthrough,
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
            Adapter::Anthropic => {
                anthropic::errors::normalise_error(status, body, truncated, retry_after)
            }
        }
    }
}
