//! Anthropic's error shape, both ways.
//!
//! Owns: the table from Anthropic's error `type`s to HTTP statuses (the reverse table, from a
//! status to a `type`, is `error`'s, which renders the relay's own errors in both dialects; as
//! Anthropic documents them: 400 `invalid_request_error` — also used for other 4xx —, 401 `authentication_error`,
//! 402 `billing_error`, 403 `permission_error`, 404 `not_found_error`, 413 `request_too_large`,
//! 429 `rate_limit_error`, 500 `api_error`, 504 `timeout_error`, 529 `overloaded_error`; a 503
//! — ringway's own `overloaded` — is `overloaded_error`, other 5xx `api_error`), writing a
//! [`RelayError`] as an SSE `error` event (the body itself is rendered by `error`), and reading an Anthropic error body or event into a [`RelayError`].
//!
//! The status itself is never changed by a conversion: the anthropic SDK picks its typed
//! exception by status (400 `BadRequestError` … 529 `OverloadedError`), the openai SDK too.
//!
//! Must not: carry anything of the upstream's error but its type and message (a key an
//! upstream echoes is masked by the relay before the body reaches here).

use serde_json::Value;

pub use crate::error::anthropic_error_type as error_type_for_status;
use crate::error::{Dialect, RelayError};
use crate::provider::sse_parser;

/// The HTTP status an Anthropic error `type` stands for (an `error` event in a stream has no
/// status of its own). Unknown types are 500.
pub fn status_for_error_type(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// `error` as the `event: error` that ends an Anthropic-dialect stream.
pub fn write_sse_error(error: &RelayError, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(96 + error.message.len());
    error.render_as(Dialect::Anthropic, &mut body);
    sse_parser::write_event(out, "error", &body);
}

/// An Anthropic error's `type` and `message` from an error body or an `error` event's data
/// (`{"type":"error","error":{...}}`); `None` when it is not that shape.
fn type_and_message(v: &Value) -> Option<(String, String)> {
    let e = v.get("error")?;
    let kind = e.get("type").and_then(Value::as_str)?;
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    Some((kind.to_owned(), message.to_owned()))
}

/// An Anthropic channel's non-2xx body (at most the relay's cap; `truncated` if there was more)
/// as the relay's error: the upstream's status and Retry-After, its error type as `type` and
/// `code`, its message.
pub fn normalise_error(
    status: u16,
    body: &[u8],
    truncated: bool,
    retry_after: Option<Vec<u8>>,
) -> RelayError {
    let parsed = serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(type_and_message);
    let (kind, message) = match parsed {
        Some(km) => km,
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("upstream answered {status}")
            } else if truncated {
                format!("{text}…")
            } else {
                text.to_owned()
            };
            (error_type_for_status(status).to_owned(), message)
        }
    };
    RelayError::upstream_status(status, kind.clone(), kind, message, retry_after)
}

/// An `error` event in an Anthropic stream (its data) as the relay's mid-stream error: the
/// status its type stands for, the type as `code`, the upstream's message.
pub fn stream_error(data: &[u8]) -> RelayError {
    let parsed = serde_json::from_slice::<Value>(data)
        .ok()
        .as_ref()
        .and_then(type_and_message);
    let (kind, message) = parsed.unwrap_or_else(|| {
        (
            "api_error".to_owned(),
            "the upstream stream reported an error".to_owned(),
        )
    });
    RelayError::upstream_status(
        status_for_error_type(&kind),
        kind.clone(),
        kind,
        message,
        None,
    )
}

/// An OpenAI-shaped error body (as an OpenAI-compatible channel sends it) in Anthropic's shape,
/// for an Anthropic-dialect client; the status stays.
pub fn openai_error_to_anthropic(status: u16, body: &[u8], truncated: bool) -> Vec<u8> {
    let e = crate::provider::openai::normalise_error(status, body, truncated, None);
    let mut out = Vec::with_capacity(64 + e.message.len());
    e.render_as(Dialect::Anthropic, &mut out);
    out
}

/// An Anthropic error body in OpenAI's shape (`{"error":{"message","type","param","code"}}`),
/// for an OpenAI-dialect client; the status stays.
pub fn anthropic_error_to_openai(status: u16, body: &[u8], truncated: bool) -> Vec<u8> {
    let e = normalise_error(status, body, truncated, None);
    let mut out = Vec::with_capacity(64 + e.message.len());
    e.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn status_table_matches_anthropic() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(error_type_for_status(status), kind, "{status}");
        }
        for kind in [
            "invalid_request_error",
            "authentication_error",
            "billing_error",
            "permission_error",
            "not_found_error",
            "request_too_large",
            "rate_limit_error",
            "timeout_error",
            "overloaded_error",
        ] {
            assert_eq!(error_type_for_status(status_for_error_type(kind)), kind);
        }
        assert_eq!(status_for_error_type("api_error"), 500);
        assert_eq!(status_for_error_type("something_new"), 500);
    }

    #[test]
    fn renders_the_relays_errors_in_anthropic_shape() {
        let mut out = Vec::new();
        RelayError::model_not_found("claude-x").render_as(Dialect::Anthropic, &mut out);
        let v = parse(&out);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("claude-x"));
        let mut out = Vec::new();
        write_sse_error(&RelayError::overloaded(), &mut out);
        assert!(out.starts_with(b"event: error\ndata: {\"type\":\"error\""));
        assert!(out.ends_with(b"}}\n\n"));
    }

    #[test]
    fn reads_anthropic_error_bodies_and_events() {
        let e = normalise_error(
            429,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
            false,
            Some(b"3".to_vec()),
        );
        assert_eq!(
            (e.status, &*e.kind, &*e.code, &*e.message),
            (429, "rate_limit_error", "rate_limit_error", "slow down")
        );
        assert_eq!(e.retry_after.as_deref(), Some(&b"3"[..]));
        let e = normalise_error(502, b"<html>bad gateway</html>", true, None);
        assert_eq!(
            (&*e.kind, &*e.message),
            ("api_error", "<html>bad gateway</html>…")
        );
        let e = normalise_error(500, b"", false, None);
        assert_eq!(&*e.message, "upstream answered 500");
        let e = stream_error(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(
            (e.status, &*e.code, &*e.message),
            (529, "overloaded_error", "Overloaded")
        );
        let e = stream_error(b"not json");
        assert_eq!((e.status, &*e.code), (500, "api_error"));
    }

    #[test]
    fn converts_error_bodies_both_ways() {
        let a = openai_error_to_anthropic(
            401,
            br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            false,
        );
        let a = parse(&a);
        assert_eq!(a["error"]["type"], "authentication_error");
        assert_eq!(a["error"]["message"], "Incorrect API key");
        let o = anthropic_error_to_openai(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            false,
        );
        let o = parse(&o);
        assert_eq!(o["error"]["type"], "overloaded_error");
        assert_eq!(o["error"]["code"], "overloaded_error");
        assert_eq!(o["error"]["message"], "Overloaded");
        assert!(o["error"]["param"].is_null());
    }
}
