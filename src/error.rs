//! The one error type: every answer ringway gives on its own (not the upstream's), as the
//! README's error table in code.
//!
//! Owns: for each error, its status, OpenAI `type` and `code`, the message, `Retry-After`, the
//! timeout layer it stands for, the `Allow` header of a 405, whether it ends the client
//! connection, and whether the request may still go to another channel (an error before any
//! response byte reached the client). [`RelayError::render_as`] is the one place the body is
//! written, in the client's [`Dialect`]: OpenAI's shape ([`RelayError::render`]) or, on the
//! Anthropic Messages endpoints, Anthropic's (`{"type":"error","error":{"type","message"}}`,
//! the type chosen by status in [`anthropic_error_type`]).
//!
//! Must not: do IO or know the connection. The relay decides when and how an error goes out
//! (a response of its own, or an SSE `error` event once a stream has begun).

use std::borrow::Cow;

use crate::deadline::Layer;

/// The error shape a client speaks: chosen by the endpoint it called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error":{"message","type","param","code"}}`: every endpoint but Anthropic's.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`: `/v1/messages` and its `count_tokens`.
    Anthropic,
}

/// An error of the relay's own making, ready to render.
#[derive(Debug, Clone)]
pub struct RelayError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, `timeout_error`, ...
    pub kind: Cow<'static, str>,
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    pub retry_after: Option<Cow<'static, [u8]>>,
    /// The timeout layer this error reports, if it is a timeout.
    pub layer: Option<Layer>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// The client connection cannot carry another request after this answer.
    pub closes: bool,
    /// Nothing reached the client and the fault was the channel's: another channel may be
    /// tried (failover).
    pub retryable: bool,
    /// The upstream's failure (or its own error answer), not the client's or the relay's.
    pub upstream: bool,
}

impl RelayError {
    fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> RelayError {
        RelayError {
            status,
            kind: Cow::Borrowed(kind),
            code: Cow::Borrowed(code),
            message: message.into(),
            retry_after: None,
            layer: None,
            allow: None,
            closes: false,
            retryable: false,
            upstream: false,
        }
    }

    fn upstream_side(mut self) -> RelayError {
        self.upstream = true;
        self
    }

    fn closing(mut self) -> RelayError {
        self.closes = true;
        self
    }

    fn retryable(mut self) -> RelayError {
        self.retryable = true;
        self
    }

    // ---- the client's request -----------------------------------------------------------

    /// 401 `invalid_api_key`: no key, or one no token has.
    pub fn invalid_api_key(key_given: bool) -> RelayError {
        let message = if key_given {
            "Incorrect API key provided."
        } else {
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        };
        RelayError::new(401, "invalid_request_error", "invalid_api_key", message)
    }

    pub fn model_not_allowed(model: &str) -> RelayError {
        RelayError::new(
            403,
            "invalid_request_error",
            "model_not_allowed",
            format!("this token may not use the model '{model}'"),
        )
    }

    pub fn model_not_found(model: &str) -> RelayError {
        RelayError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model '{model}' does not exist or no channel serves it"),
        )
    }

    /// 404 `model_not_found`: channels serve the model, but none of the provider the endpoint
    /// needs (`path` names the endpoint; no conversion between the APIs is made).
    pub fn model_on_other_provider(model: &str, path: &str, anthropic_needed: bool) -> RelayError {
        let (served_by, needed) = if anthropic_needed {
            ("OpenAI-compatible", "an Anthropic")
        } else {
            ("Anthropic", "an OpenAI-compatible")
        };
        RelayError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!(
                "The model '{model}' is served only by {served_by} channels; {path} needs {needed} channel"
            ),
        )
    }

    /// 404 `model_not_found` on `/v1/responses`: OpenAI-compatible channels serve the model,
    /// but each is configured without the Responses API (`responses = false`).
    pub fn model_without_responses(model: &str) -> RelayError {
        RelayError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!(
                "The model '{model}' is served only by channels without the Responses API (responses = false); /v1/responses needs a channel that has it"
            ),
        )
    }

    /// 404 `response_not_found`: a Responses API id this relay did not create for the calling
    /// token, or no longer remembers (expired, forgotten when the id map was full, deleted, or
    /// the process restarted). Never routed on a guess.
    pub fn response_not_found(id: &str) -> RelayError {
        RelayError::new(
            404,
            "invalid_request_error",
            "response_not_found",
            format!(
                "Response with id '{id}' not found (ids are known only to the token that created them, through this relay, until they expire)"
            ),
        )
    }

    pub fn missing_model() -> RelayError {
        RelayError::new(
            400,
            "invalid_request_error",
            "missing_model",
            "you must provide a model parameter",
        )
    }

    pub fn invalid_json(message: impl Into<Cow<'static, str>>) -> RelayError {
        RelayError::new(400, "invalid_request_error", "invalid_json", message)
    }

    /// 400 for a head or body that cannot be framed; the connection cannot be trusted after it.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> RelayError {
        RelayError::new(400, "invalid_request_error", "bad_request", message).closing()
    }

    pub fn not_found(message: String) -> RelayError {
        RelayError::new(404, "invalid_request_error", "not_found", message)
    }

    pub fn method_not_allowed(allow: &'static str) -> RelayError {
        let mut e = RelayError::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed for this endpoint",
        );
        e.allow = Some(allow);
        e
    }

    pub fn header_too_large(message: &'static str) -> RelayError {
        RelayError::new(
            431,
            "invalid_request_error",
            "request_header_too_large",
            message,
        )
        .closing()
    }

    pub fn body_too_large(max: usize) -> RelayError {
        RelayError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds max_body_bytes ({max})"),
        )
        .closing()
    }

    pub fn unsupported_transfer_encoding(message: &'static str) -> RelayError {
        RelayError::new(
            501,
            "invalid_request_error",
            "unsupported_transfer_encoding",
            message,
        )
        .closing()
    }

    /// 408: the client's head (`client_header`) or body (`client_body`) came too slowly.
    pub fn client_timeout(layer: Layer) -> RelayError {
        let message = match layer {
            Layer::ClientHeader => "the request head was not received in time",
            _ => "the request body was not received in time",
        };
        let mut e = RelayError::new(408, "invalid_request_error", layer.code(), message).closing();
        e.layer = Some(layer);
        e
    }

    /// 401 `token_expired`: the token's `expires_at` (shown in UTC) has passed.
    pub fn token_expired(expired_at: &str) -> RelayError {
        RelayError::new(
            401,
            "invalid_request_error",
            "token_expired",
            format!("this API key expired at {expired_at}"),
        )
    }

    // ---- the relay's own limits ---------------------------------------------------------

    /// 429 `rate_limited`: the token is over one of its limits; `message` names which one
    /// (never the key). `Retry-After` is whole seconds, at least 1.
    pub fn rate_limited(message: String, retry_after_secs: u64) -> RelayError {
        let mut e = RelayError::new(429, "rate_limit_error", "rate_limited", message);
        e.retry_after = Some(Cow::Owned(retry_after_secs.max(1).to_string().into_bytes()));
        e
    }

    /// 429 `quota_exhausted`: the token's `quota_tokens` cannot cover the request; `message`
    /// says how much is left (never the key). A quota never refills, so `Retry-After` is sent
    /// only when other requests' reservations are what stands in the way (they may settle
    /// lower than reserved).
    pub fn quota_exhausted(message: String, retry_after_secs: Option<u64>) -> RelayError {
        let mut e = RelayError::new(429, "insufficient_quota", "quota_exhausted", message);
        e.retry_after = retry_after_secs.map(|s| Cow::Owned(s.max(1).to_string().into_bytes()));
        e
    }

    pub fn overloaded() -> RelayError {
        let mut e = RelayError::new(
            503,
            "server_error",
            "overloaded",
            "ringway is over its max_inflight limit; retry shortly",
        );
        e.retry_after = Some(Cow::Borrowed(b"1"));
        e
    }

    /// 503 `no_healthy_channel`: channels serve the model, but each is cooling down or has no
    /// key left. `Retry-After` is the shortest wait until one may be tried (absent when every
    /// key was refused for good).
    pub fn no_healthy_channel(model: &str, retry_after_secs: Option<u64>) -> RelayError {
        let when = match retry_after_secs {
            Some(s) => format!("retry in {s}s"),
            None => "every key was refused by its upstream".to_string(),
        };
        let mut e = RelayError::new(
            503,
            "server_error",
            "no_healthy_channel",
            format!(
                "no healthy channel serves the model '{model}': each is cooling down after failures or has no usable key; {when}"
            ),
        );
        e.retry_after = retry_after_secs.map(|s| Cow::Owned(s.max(1).to_string().into_bytes()));
        e
    }

    /// 503 `shutting_down`: the relay is stopping (SIGTERM / SIGINT) and `[server] drain` ran
    /// out before this request's answer began. The connection closes after it.
    pub fn shutting_down() -> RelayError {
        RelayError::new(
            503,
            "server_error",
            "shutting_down",
            "ringway is shutting down and its drain time ran out; retry on another instance",
        )
        .closing()
    }

    /// `shutting_down` after a stream began: its SSE `error` event.
    pub fn shutting_down_mid_stream() -> RelayError {
        RelayError::new(
            503,
            "server_error",
            "shutting_down",
            "ringway is shutting down and its drain time ran out; the stream was ended",
        )
        .closing()
    }

    // ---- the upstream -------------------------------------------------------------------

    pub fn upstream_connect_failed(message: String) -> RelayError {
        RelayError::new(502, "upstream_error", "upstream_connect_failed", message)
            .retryable()
            .upstream_side()
    }

    /// 504 for an upstream-side layer that expired before the response head (total included).
    pub fn timeout(layer: Layer) -> RelayError {
        let mut e = RelayError::new(
            504,
            "timeout_error",
            layer.code(),
            format!(
                "upstream did not answer within the {} timeout",
                layer.name()
            ),
        );
        e.layer = Some(layer);
        // The whole request's time is spent; any other layer is the channel's fault.
        e.retryable = !matches!(layer, Layer::Total | Layer::Quick);
        e.upstream = true;
        e
    }

    /// 502: the upstream closed, reset, or sent a malformed or ambiguous head.
    pub fn bad_upstream_response(message: impl Into<Cow<'static, str>>) -> RelayError {
        RelayError::new(502, "upstream_error", "bad_upstream_response", message)
            .retryable()
            .upstream_side()
    }

    /// 502: the upstream refused the channel's key (401/403). Its body is never relayed.
    pub fn upstream_auth_failed(channel: &str, status: u16) -> RelayError {
        RelayError::new(
            502,
            "upstream_error",
            "upstream_auth_failed",
            format!(
                "upstream channel '{channel}' refused its API key ({status}); the request was not served"
            ),
        )
        .retryable()
        .upstream_side()
    }

    /// An upstream non-2xx, normalised: the upstream's status, words and Retry-After.
    pub fn upstream_status(
        status: u16,
        kind: String,
        code: String,
        message: String,
        retry_after: Option<Vec<u8>>,
    ) -> RelayError {
        RelayError {
            status,
            kind: Cow::Owned(kind),
            code: Cow::Owned(code),
            message: Cow::Owned(message),
            retry_after: retry_after.map(Cow::Owned),
            layer: None,
            allow: None,
            closes: false,
            retryable: false,
            upstream: true,
        }
    }

    /// An error after a stream began: only the code and message matter (the status is sent).
    pub fn mid_stream(code: &'static str, message: impl Into<Cow<'static, str>>) -> RelayError {
        RelayError::new(502, "upstream_error", code, message).upstream_side()
    }

    /// A timeout after a stream began.
    pub fn stream_timeout(layer: Layer) -> RelayError {
        let mut e = RelayError::new(
            504,
            "timeout_error",
            layer.code(),
            format!("upstream stream stopped: {} timeout", layer.name()),
        );
        e.layer = Some(layer);
        e
    }

    /// The error body in `dialect`'s shape (as a response body or an SSE `error` event's data).
    pub fn render_as(&self, dialect: Dialect, out: &mut Vec<u8>) {
        match dialect {
            Dialect::OpenAi => self.render(out),
            Dialect::Anthropic => render_anthropic(self, out),
        }
    }

    /// The data of the `error` event that ends a broken `/v1/responses` stream: the Responses
    /// API's error event (`type`, `code`, `message`, `param`) with the OpenAI error object
    /// beside it, on which the openai SDKs raise `APIError` as they do for chat streams.
    pub fn render_responses_event(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"error\",\"code\":");
        json_string(out, &self.code);
        out.extend_from_slice(b",\"message\":");
        json_string(out, &self.message);
        out.extend_from_slice(b",\"param\":null,");
        // `render`'s object without its opening brace: `"error":{..}}` closes this one.
        let start = out.len();
        self.render(out);
        out.remove(start);
    }

    /// The OpenAI error body: `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
    pub fn render(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":{\"message\":");
        json_string(out, &self.message);
        out.extend_from_slice(b",\"type\":");
        json_string(out, &self.kind);
        out.extend_from_slice(b",\"param\":null,\"code\":");
        json_string(out, &self.code);
        out.extend_from_slice(b"}}");
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// `error` as Anthropic's error body: `{"type":"error","error":{"type":..,"message":..}}`, the
/// type chosen by the error's status.
fn render_anthropic(error: &RelayError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    json_string(out, anthropic_error_type(error.status));
    out.extend_from_slice(b",\"message\":");
    json_string(out, &error.message);
    out.extend_from_slice(b"}}");
}

/// Append `s` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &RelayError) -> serde_json::Value {
        let mut out = Vec::new();
        e.render(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn renders_the_contract_shape() {
        let v = body(&RelayError::model_not_found("gpt-\"x\""));
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        assert_eq!(
            v["error"]["message"],
            "The model 'gpt-\"x\"' does not exist or no channel serves it"
        );
    }

    #[test]
    fn a_responses_stream_error_event_is_both_shapes() {
        let e = RelayError::model_not_found("gpt-\"x\"");
        let mut out = Vec::new();
        e.render_responses_event(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "model_not_found");
        assert!(v["param"].is_null());
        assert_eq!(v["message"], v["error"]["message"]);
        assert_eq!(v["error"], body(&e)["error"]);
        assert_eq!(v.as_object().unwrap().len(), 5, "{v}");
    }

    #[test]
    fn table_rows() {
        let e = RelayError::timeout(Layer::ResponseHeader);
        assert_eq!((e.status, &*e.code), (504, "response_header_timeout"));
        assert!(e.retryable);
        assert!(!RelayError::timeout(Layer::Total).retryable);
        let e = RelayError::client_timeout(Layer::ClientBody);
        assert_eq!(
            (e.status, &*e.code, e.closes),
            (408, "client_body_timeout", true)
        );
        let e = RelayError::overloaded();
        assert_eq!(e.retry_after.as_deref(), Some(&b"1"[..]));
        assert_eq!(RelayError::method_not_allowed("POST").allow, Some("POST"));
        assert!(RelayError::upstream_auth_failed("c", 401).retryable);
        assert!(!RelayError::model_not_allowed("m").retryable);
        let e = RelayError::rate_limited("over rpm".into(), 0);
        assert_eq!(
            (e.status, &*e.code, &*e.kind),
            (429, "rate_limited", "rate_limit_error")
        );
        assert_eq!(e.retry_after.as_deref(), Some(&b"1"[..]));
        assert!(!e.retryable && !e.closes);
        let e = RelayError::rate_limited("over tpm".into(), 42);
        assert_eq!(e.retry_after.as_deref(), Some(&b"42"[..]));
        let mut anthropic = Vec::new();
        RelayError::invalid_api_key(true).render_as(Dialect::Anthropic, &mut anthropic);
        let v: serde_json::Value = serde_json::from_slice(&anthropic).unwrap();
        assert_eq!(
            (&v["type"], &v["error"]["type"]),
            (&"error".into(), &"authentication_error".into())
        );
        let e = RelayError::token_expired("2020-01-01T00:00:00Z");
        assert_eq!((e.status, &*e.code), (401, "token_expired"));
        assert!(e.message.contains("2020-01-01T00:00:00Z"));
    }
}
