//! Which conversion a request takes to a channel of the other dialect, and the converted
//! request: the choice the relay makes per attempt, on top of the pure conversions of
//! [`super::anthropic`].
//!
//! Owns: [`Conversion`] (OpenAI chat → an Anthropic channel, Anthropic Messages → an
//! OpenAI-compatible channel), the upstream path each one sends to, and [`Converted`], what the
//! answer's conversion needs to know of the request (streamed or not, whether the client asked
//! for a usage chunk). Must not: touch the passthrough path, or decide routing.

use super::anthropic;
use crate::config::Provider;
use crate::error::RelayError;

/// A request converted for a channel of the other dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// An OpenAI chat-completions request for an Anthropic channel; the answer comes back in
    /// OpenAI's shape.
    ChatToMessages,
    /// An Anthropic Messages request for an OpenAI-compatible channel; the answer comes back in
    /// Anthropic's shape.
    MessagesToChat,
}

/// What the answer's conversion needs of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converted {
    pub conversion: Conversion,
    /// The request asked for a stream.
    pub stream: bool,
    /// An OpenAI client's `stream_options.include_usage` (the converted stream ends with a
    /// usage chunk only when asked).
    pub include_usage: bool,
}

impl Conversion {
    /// The conversion a request in the `client` dialect needs to reach a `channel` of this
    /// provider; `None` when they speak the same dialect.
    pub fn between(client: Provider, channel: Provider) -> Option<Conversion> {
        match (client, channel) {
            (Provider::OpenAi, Provider::Anthropic) => Some(Conversion::ChatToMessages),
            (Provider::Anthropic, Provider::OpenAi) => Some(Conversion::MessagesToChat),
            _ => None,
        }
    }

    /// The upstream path (under the channel's `base_url` path) the converted request goes to.
    pub fn upstream_path(self) -> &'static [u8] {
        match self {
            Conversion::ChatToMessages => b"/v1/messages",
            Conversion::MessagesToChat => b"/v1/chat/completions",
        }
    }

    /// The client's `body` converted for a channel serving the model as `upstream_model`;
    /// `default_max_tokens` is the channel's, for an Anthropic request without a limit. A body
    /// that cannot be converted is the client's 400.
    pub fn request(
        self,
        body: &[u8],
        upstream_model: &str,
        default_max_tokens: u64,
    ) -> Result<(Vec<u8>, Converted), RelayError> {
        match self {
            Conversion::ChatToMessages => {
                let r = anthropic::to_anthropic_request(body, upstream_model, default_max_tokens)?;
                Ok((
                    r.body,
                    Converted {
                        conversion: self,
                        stream: r.stream,
                        include_usage: r.include_usage,
                    },
                ))
            }
            Conversion::MessagesToChat => {
                let (body, stream) = anthropic::from_anthropic_request(body, upstream_model)?;
                Ok((
                    body,
                    Converted {
                        conversion: self,
                        stream,
                        include_usage: true,
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_between_dialects() {
        use Provider::*;
        assert_eq!(Conversion::between(OpenAi, OpenAi), None);
        assert_eq!(Conversion::between(Anthropic, Anthropic), None);
        assert_eq!(
            Conversion::between(OpenAi, Anthropic),
            Some(Conversion::ChatToMessages)
        );
        assert_eq!(
            Conversion::between(Anthropic, OpenAi),
            Some(Conversion::MessagesToChat)
        );
    }

    #[test]
    fn a_chat_request_becomes_a_messages_request_with_the_default_limit() {
        let body = br#"{"model":"a","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let (out, c) = Conversion::ChatToMessages
            .request(body, "claude-x", 321)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "claude-x");
        assert_eq!(v["max_tokens"], 321);
        assert!(c.stream && c.include_usage);
        let e = Conversion::ChatToMessages
            .request(b"[1]", "m", 1)
            .unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn a_messages_request_becomes_a_chat_request_asking_for_usage() {
        let body = br#"{"model":"a","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let (out, c) = Conversion::MessagesToChat
            .request(body, "gpt-x", 1)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-x");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(c.stream);
    }
}
