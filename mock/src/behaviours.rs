//! Routing and the ordinary behaviours: the routes (`/v1/...`, `/v1/models`, `/mock/stats`),
//! the model-name table (`mock-fixed`, `mock-stream-N-D`, `mock-status-CODE`, ... — see
//! [`crate::MODELS_DOC`]) and the behaviours that stay valid HTTP: canned replies, streams,
//! error statuses, stalls, resets, broken chunking, echo, slow bodies.
//!
//! Must not: write broken HTTP itself; the behaviours that do are in `hostile`. A name that is
//! not in the table behaves like `mock-fixed`, never as an error.

use std::io;
use std::time::Duration;

use crate::bodies::{
    anthropic_error_body, anthropic_message, anthropic_stream_events, chat_completion, chunk_event,
    count_tokens, embeddings, error_kind, huge_error_body, json_str, stream_usage_event,
    text_completion, with_usage_null,
};
use crate::hostile::{hostile, Hostile};
use crate::reply::{Framing, Reply};
use crate::request::Request;
use crate::server::Outcome;

/// Names served by `GET /v1/models`; parameterised families appear with sample parameters.
const MODEL_NAMES: &[&str] = &[
    "mock-fixed",
    "mock-stream-5-0",
    "mock-stream-5-100",
    "mock-stream-nousage-5-100",
    "mock-status-400",
    "mock-status-401",
    "mock-status-429",
    "mock-status-500",
    "mock-status-503",
    "mock-status-504",
    "mock-huge-error",
    "mock-reset-body",
    "mock-reset-stream",
    "mock-stall-head-2000",
    "mock-stall-stream-2000",
    "mock-broken-chunked",
    "mock-echo",
    "mock-close",
    "mock-slow-body-100",
    "mock-tools",
    "mock-mirror",
    "mock-stream-error",
    "mock-big-event-65536",
    "mock-split-usage",
];

/// Caps every scripted wait so a silly model name cannot overflow `Instant` arithmetic.
const MAX_WAIT_MS: u64 = 3_600_000;
const HUGE_WRITE: usize = 64 * 1024;
/// The largest event `mock-big-event-N` makes (64 MiB).
const MAX_BIG_EVENT: u64 = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Routing and behaviours

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Messages,
    /// `/v1/messages/count_tokens`.
    CountTokens,
}

#[derive(Debug, PartialEq, Eq)]
enum Behaviour {
    Fixed,
    Stream {
        events: u64,
        gap_ms: u64,
    },
    /// Like `Stream`, but never sends usage, whatever the request asks.
    StreamNoUsage {
        events: u64,
        gap_ms: u64,
    },
    Status(u16),
    HugeError,
    ResetBody,
    ResetStream,
    StallHead(u64),
    StallStream(u64),
    BrokenChunked,
    Echo,
    Close,
    SlowBody(u64),
    /// 401 `invalid_api_key` when the Authorization header ends with the suffix.
    RefuseKey(String),
    /// 429 `insufficient_quota` when the Authorization header ends with the suffix.
    NoQuotaKey(String),
    /// The first `count` requests of this model name get `status` (and `Retry-After:
    /// retry_after` seconds unless 0), later ones are served like mock-fixed.
    FailFirst {
        count: u64,
        status: u16,
        retry_after: u64,
    },
    Hostile(Hostile),
    /// Text and a tool call (and thinking on `/v1/messages`), streamed when asked.
    Tools,
    /// The request as received, as the answer's text.
    Mirror,
    /// A stream with an in-band error after its first delta.
    StreamError,
    /// A stream with one content event of this many bytes.
    BigEvent(usize),
    /// An Anthropic stream whose usage report is split across two writes.
    SplitUsage,
}

fn behaviour(model: &str) -> Behaviour {
    fn number(s: &str) -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    fn millis(s: &str) -> Option<u64> {
        number(s).map(|ms| ms.min(MAX_WAIT_MS))
    }
    let parsed = match model {
        "mock-huge-error" => Some(Behaviour::HugeError),
        "mock-reset-body" => Some(Behaviour::ResetBody),
        "mock-reset-stream" => Some(Behaviour::ResetStream),
        "mock-broken-chunked" => Some(Behaviour::BrokenChunked),
        "mock-echo" => Some(Behaviour::Echo),
        "mock-tools" => Some(Behaviour::Tools),
        "mock-mirror" => Some(Behaviour::Mirror),
        "mock-stream-error" => Some(Behaviour::StreamError),
        "mock-split-usage" => Some(Behaviour::SplitUsage),
        "mock-close" => Some(Behaviour::Close),
        "mock-no-reason" => Some(Behaviour::Hostile(Hostile::NoReason { stream: false })),
        "mock-no-reason-stream" => Some(Behaviour::Hostile(Hostile::NoReason { stream: true })),
        "mock-binary-reason" => Some(Behaviour::Hostile(Hostile::BinaryReason)),
        "mock-bare-lf" => Some(Behaviour::Hostile(Hostile::BareLf)),
        "mock-extra-response" => Some(Behaviour::Hostile(Hostile::ExtraResponse)),
        "mock-extra-later" => Some(Behaviour::Hostile(Hostile::ExtraLater)),
        "mock-extra-after-stream" => Some(Behaviour::Hostile(Hostile::ExtraAfterStream)),
        "mock-unasked-101" => Some(Behaviour::Hostile(Hostile::UnaskedSwitch)),
        "mock-length-and-chunked" => Some(Behaviour::Hostile(Hostile::LengthAndChunked)),
        "mock-duplicate-length" => Some(Behaviour::Hostile(Hostile::DuplicateLength)),
        "mock-endless-interim" => Some(Behaviour::Hostile(Hostile::EndlessInterim)),
        "mock-broken-chunked-one-write" => Some(Behaviour::Hostile(Hostile::BrokenChunkedOneWrite)),
        "mock-short-head-stream" => Some(Behaviour::Hostile(Hostile::ShortHeadStream)),
        _ => {
            if let Some(rest) = model.strip_prefix("mock-stream-nousage-") {
                let (events, gap) = rest.split_once('-').unwrap_or((rest, "0"));
                number(events)
                    .zip(millis(gap))
                    .map(|(events, gap_ms)| Behaviour::StreamNoUsage { events, gap_ms })
            } else if let Some(rest) = model.strip_prefix("mock-stream-") {
                let (events, gap) = rest.split_once('-').unwrap_or((rest, "0"));
                number(events)
                    .zip(millis(gap))
                    .map(|(events, gap_ms)| Behaviour::Stream { events, gap_ms })
            } else if let Some(code) = model.strip_prefix("mock-status-") {
                number(code)
                    .filter(|c| (200..=599).contains(c))
                    .map(|c| Behaviour::Status(c as u16))
            } else if let Some(ms) = model.strip_prefix("mock-stall-head-") {
                millis(ms).map(Behaviour::StallHead)
            } else if let Some(ms) = model.strip_prefix("mock-stall-stream-") {
                millis(ms).map(Behaviour::StallStream)
            } else if let Some(ms) = model.strip_prefix("mock-slow-body-") {
                millis(ms).map(Behaviour::SlowBody)
            } else if let Some(code) = model.strip_prefix("mock-bad-status-") {
                // Any three digits: 000-099 and 600-999 are what this is for.
                (code.len() == 3)
                    .then(|| number(code))
                    .flatten()
                    .map(|c| Behaviour::Hostile(Hostile::BadStatus(c as u16)))
            } else if let Some(n) = model.strip_prefix("mock-interim-") {
                number(n).map(|n| Behaviour::Hostile(Hostile::Interim(n.min(1000))))
            } else if let Some(code) = model.strip_prefix("mock-echo-key-") {
                number(code)
                    .filter(|c| (200..=599).contains(c))
                    .map(|c| Behaviour::Hostile(Hostile::EchoKey(c as u16)))
            } else if let Some(suffix) = model.strip_prefix("mock-refuse-key-") {
                (!suffix.is_empty()).then(|| Behaviour::RefuseKey(suffix.to_string()))
            } else if let Some(suffix) = model.strip_prefix("mock-no-quota-key-") {
                (!suffix.is_empty()).then(|| Behaviour::NoQuotaKey(suffix.to_string()))
            } else if let Some(rest) = model.strip_prefix("mock-fail-") {
                let mut parts = rest.splitn(3, '-').map(number);
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Some(count)), Some(Some(status)), Some(Some(retry_after)))
                        if (400..=599).contains(&status) =>
                    {
                        Some(Behaviour::FailFirst {
                            count,
                            status: status as u16,
                            retry_after: retry_after.min(MAX_WAIT_MS / 1000),
                        })
                    }
                    _ => None,
                }
            } else if let Some(n) = model.strip_prefix("mock-big-event-") {
                number(n).map(|n| Behaviour::BigEvent(n.min(MAX_BIG_EVENT) as usize))
            } else if let Some(mib) = model.strip_prefix("mock-bulk-") {
                number(mib).map(|m| Behaviour::Hostile(Hostile::Bulk(m.min(1024))))
            } else {
                None
            }
        }
    };
    parsed.unwrap_or(Behaviour::Fixed)
}

pub(crate) fn respond(reply: Reply<'_>, request: &Request) -> io::Result<Outcome> {
    let path = request.target.split('?').next().unwrap_or_default();
    let endpoint = match (request.method.as_str(), path) {
        ("GET", "/mock/stats") => {
            let stats = reply.shared.stats();
            return reply.json(
                200,
                &format!(
                    "{{\"open_connections\":{},\"total_connections\":{},\"requests\":{}}}",
                    stats.open_connections, stats.total_connections, stats.requests
                ),
            );
        }
        ("GET", "/v1/models") => return reply.json(200, &models_list()),
        ("POST", "/v1/chat/completions") => Endpoint::Chat,
        ("POST", "/v1/completions") => Endpoint::Completions,
        ("POST", "/v1/embeddings") => Endpoint::Embeddings,
        ("POST", "/v1/messages") => Endpoint::Messages,
        ("POST", "/v1/messages/count_tokens") => Endpoint::CountTokens,
        (method, _) => {
            let message = format!("no route for {method} {path}");
            return reply.error(404, &message, "invalid_request_error", "not_found", &[]);
        }
    };
    let json: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(json) => json,
        Err(_) => {
            return reply.error(
                400,
                "request body is not valid JSON",
                "invalid_request_error",
                "invalid_json",
                &[],
            )
        }
    };
    let Some(model) = json.get("model").and_then(serde_json::Value::as_str) else {
        return reply.error(
            400,
            "request body has no \"model\" string",
            "invalid_request_error",
            "missing_model",
            &[],
        );
    };
    match behaviour(model) {
        Behaviour::Fixed => fixed(reply, endpoint, model, &json),
        Behaviour::Stream { events, gap_ms } => {
            let usage = wants_usage(&json);
            stream(reply, endpoint, model, events, gap_ms, usage)
        }
        Behaviour::StreamNoUsage { events, gap_ms } => {
            stream(reply, endpoint, model, events, gap_ms, false)
        }
        Behaviour::Status(code) => status_error(reply, endpoint, code),
        Behaviour::HugeError => huge_error(reply),
        Behaviour::ResetBody => reset_body(reply),
        Behaviour::ResetStream => reset_stream(reply, endpoint, model),
        Behaviour::StallHead(ms) => {
            if reply.pause(Duration::from_millis(ms)) {
                fixed(reply, endpoint, model, &json)
            } else {
                Ok(Outcome::Close)
            }
        }
        Behaviour::StallStream(ms) => stall_stream(reply, endpoint, model, ms),
        Behaviour::BrokenChunked => broken_chunked(reply, endpoint, model),
        Behaviour::Echo => echo(reply, request),
        Behaviour::Close => fixed(
            Reply {
                close: true,
                ..reply
            },
            endpoint,
            model,
            &json,
        ),
        Behaviour::SlowBody(ms) => slow_body(reply, model, ms),
        Behaviour::RefuseKey(suffix) if authorization_ends_with(request, &suffix) => reply.error(
            401,
            "Incorrect API key provided (mock)",
            "invalid_request_error",
            "invalid_api_key",
            &[],
        ),
        Behaviour::NoQuotaKey(suffix) if authorization_ends_with(request, &suffix) => reply.error(
            429,
            "You exceeded your current quota (mock)",
            "insufficient_quota",
            "insufficient_quota",
            &[],
        ),
        Behaviour::RefuseKey(_) | Behaviour::NoQuotaKey(_) => fixed(reply, endpoint, model, &json),
        Behaviour::FailFirst {
            count,
            status,
            retry_after,
        } => match reply.shared.count_model(model) {
            Some(before) if before < count => {
                let (kind, code) = error_kind(status);
                let secs = retry_after.to_string();
                let extra: &[(&str, &str)] = if retry_after > 0 {
                    &[("retry-after", &secs)]
                } else {
                    &[]
                };
                if matches!(endpoint, Endpoint::Messages | Endpoint::CountTokens) {
                    let mut headers = vec![("content-type", "application/json")];
                    headers.extend_from_slice(extra);
                    let body =
                        anthropic_error_body(status, &format!("mock failure {}", before + 1));
                    return reply.full(status, &headers, body.as_bytes());
                }
                reply.error(
                    status,
                    &format!("mock failure {}", before + 1),
                    kind,
                    code,
                    extra,
                )
            }
            _ => fixed(reply, endpoint, model, &json),
        },
        Behaviour::Hostile(h) => hostile(reply, request, endpoint, model, h),
        Behaviour::Tools => crate::rich::tools(reply, endpoint, model, &json),
        Behaviour::Mirror => {
            crate::rich::mirror(reply, endpoint, model, &json, &echo_json(request))
        }
        Behaviour::StreamError => crate::rich::stream_error(reply, endpoint, model),
        Behaviour::BigEvent(bytes) => crate::rich::big_event(reply, endpoint, model, bytes),
        Behaviour::SplitUsage => crate::rich::split_usage(reply, endpoint, model),
    }
}

/// Does the request's Authorization header end with `suffix`?
fn authorization_ends_with(request: &Request, suffix: &str) -> bool {
    request.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("authorization") && value.ends_with(suffix.as_bytes())
    })
}

fn models_list() -> String {
    let data: Vec<String> = MODEL_NAMES
        .iter()
        .map(|name| {
            format!(
                "{{\"id\":{},\"object\":\"model\",\"created\":0,\"owned_by\":\"ringway-mock\"}}",
                json_str(name)
            )
        })
        .collect();
    format!("{{\"object\":\"list\",\"data\":[{}]}}", data.join(","))
}

fn fixed(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
    json: &serde_json::Value,
) -> io::Result<Outcome> {
    if endpoint == Endpoint::CountTokens {
        return reply.json(200, &count_tokens(json));
    }
    let wants_stream = json.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
    if wants_stream && endpoint != Endpoint::Embeddings {
        return stream(reply, endpoint, model, 5, 0, wants_usage(json));
    }
    let body = match endpoint {
        Endpoint::Chat => chat_completion(model),
        Endpoint::Completions => text_completion(model),
        Endpoint::Embeddings => match embeddings(model, json) {
            Ok(body) => body,
            Err(message) => {
                return reply.error(400, &message, "invalid_request_error", "invalid_input", &[])
            }
        },
        Endpoint::Messages => anthropic_message(model),
        Endpoint::CountTokens => count_tokens(json),
    };
    reply.json(200, &body)
}

/// `"stream_options": {"include_usage": true}` in the request.
fn wants_usage(json: &serde_json::Value) -> bool {
    json.pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// `events` content events `gap_ms` apart, then (when `usage`, as OpenAI does for
/// `include_usage`) the usage-only event, with `"usage":null` in every content event.
fn stream(
    reply: Reply<'_>,
    endpoint: Endpoint,
    model: &str,
    events: u64,
    gap_ms: u64,
    usage: bool,
) -> io::Result<Outcome> {
    if endpoint == Endpoint::Messages {
        return anthropic_stream(reply, model, events, gap_ms);
    }
    reply.sse_head()?;
    for index in 0..events {
        if index > 0 && !reply.pause(Duration::from_millis(gap_ms)) {
            return Ok(Outcome::Close);
        }
        let event = chunk_event(endpoint, model, index, index + 1 == events);
        if usage {
            reply.chunk(with_usage_null(&event).as_bytes())?;
        } else {
            reply.chunk(event.as_bytes())?;
        }
    }
    if usage {
        reply.chunk(stream_usage_event(endpoint, model, events).as_bytes())?;
    }
    reply.end_stream()
}

/// Anthropic's event stream: `deltas` text deltas `gap_ms` apart (the first at once), each
/// event one HTTP chunk, no `[DONE]` (Anthropic ends with `message_stop`).
fn anthropic_stream(
    reply: Reply<'_>,
    model: &str,
    deltas: u64,
    gap_ms: u64,
) -> io::Result<Outcome> {
    reply.sse_head()?;
    for (i, event) in anthropic_stream_events(model, deltas).iter().enumerate() {
        let delta = (i as u64).checked_sub(3).filter(|&d| d < deltas);
        if delta.is_some_and(|d| d > 0) && !reply.pause(Duration::from_millis(gap_ms)) {
            return Ok(Outcome::Close);
        }
        reply.chunk(event.as_bytes())?;
    }
    reply.send(b"0\r\n\r\n")?;
    Ok(reply.finished())
}

fn status_error(reply: Reply<'_>, endpoint: Endpoint, code: u16) -> io::Result<Outcome> {
    let (kind, code_name) = error_kind(code);
    let retry: &[(&str, &str)] = if code == 429 || code == 503 {
        &[("retry-after", "7")]
    } else {
        &[]
    };
    if matches!(endpoint, Endpoint::Messages | Endpoint::CountTokens) {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(retry);
        let body = anthropic_error_body(code, &format!("mock error {code}"));
        return reply.full(code, &headers, body.as_bytes());
    }
    reply.error(code, &format!("mock error {code}"), kind, code_name, retry)
}

fn huge_error(reply: Reply<'_>) -> io::Result<Outcome> {
    let body = huge_error_body();
    reply.send(&reply.head(
        500,
        &[("content-type", "application/json")],
        Framing::Length(body.len()),
    ))?;
    for piece in body.chunks(HUGE_WRITE) {
        reply.send(piece)?;
    }
    Ok(reply.finished())
}

/// Lets the bytes already written reach the peer before the RST, so the fault lands mid-body
/// instead of racing the head.
const RESET_GRACE: Duration = Duration::from_millis(50);

fn reset_body(reply: Reply<'_>) -> io::Result<Outcome> {
    let mut bytes = reply.head(
        200,
        &[("content-type", "application/json")],
        Framing::Length(100_000),
    );
    let body_start = bytes.len();
    bytes.extend_from_slice(br#"{"id":"chatcmpl-mock","padding":""#);
    bytes.resize(body_start + 1000, b'x');
    reply.send(&bytes)?;
    reply.pause(RESET_GRACE);
    Ok(Outcome::Reset)
}

fn reset_stream(reply: Reply<'_>, endpoint: Endpoint, model: &str) -> io::Result<Outcome> {
    reply.sse_head()?;
    reply.chunk(chunk_event(endpoint, model, 0, false).as_bytes())?;
    reply.chunk(chunk_event(endpoint, model, 1, false).as_bytes())?;
    reply.pause(RESET_GRACE);
    Ok(Outcome::Reset)
}

fn stall_stream(reply: Reply<'_>, endpoint: Endpoint, model: &str, ms: u64) -> io::Result<Outcome> {
    reply.sse_head()?;
    reply.chunk(chunk_event(endpoint, model, 0, false).as_bytes())?;
    if !reply.pause(Duration::from_millis(ms)) {
        return Ok(Outcome::Close);
    }
    reply.chunk(chunk_event(endpoint, model, 1, true).as_bytes())?;
    reply.end_stream()
}

fn broken_chunked(reply: Reply<'_>, endpoint: Endpoint, model: &str) -> io::Result<Outcome> {
    reply.sse_head()?;
    reply.chunk(chunk_event(endpoint, model, 0, false).as_bytes())?;
    reply.send(b"zz\r\n")?;
    Ok(Outcome::Close)
}

fn echo(reply: Reply<'_>, request: &Request) -> io::Result<Outcome> {
    reply.json(200, &echo_json(request))
}

/// `{"method", "path", "headers": [[name, value], ...], "body"}` of what arrived.
fn echo_json(request: &Request) -> String {
    let headers: Vec<String> = request
        .headers
        .iter()
        .map(|(name, value)| {
            format!(
                "[{},{}]",
                json_str(name),
                json_str(&String::from_utf8_lossy(value))
            )
        })
        .collect();
    format!(
        "{{\"method\":{},\"path\":{},\"headers\":[{}],\"body\":{}}}",
        json_str(&request.method),
        json_str(&request.target),
        headers.join(","),
        json_str(&String::from_utf8_lossy(&request.body))
    )
}

fn slow_body(reply: Reply<'_>, model: &str, ms: u64) -> io::Result<Outcome> {
    let body = chat_completion(model).into_bytes();
    let third = body.len() / 3;
    let mut first = reply.head(
        200,
        &[("content-type", "application/json")],
        Framing::Length(body.len()),
    );
    first.extend_from_slice(&body[..third]);
    reply.send(&first)?;
    for piece in [&body[third..2 * third], &body[2 * third..]] {
        if !reply.pause(Duration::from_millis(ms)) {
            return Ok(Outcome::Close);
        }
        reply.send(piece)?;
    }
    Ok(reply.finished())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_chunk_size;

    #[test]
    fn behaviour_names() {
        assert_eq!(
            behaviour("mock-stream-5-100"),
            Behaviour::Stream {
                events: 5,
                gap_ms: 100
            }
        );
        assert_eq!(
            behaviour("mock-stream-nousage-3-10"),
            Behaviour::StreamNoUsage {
                events: 3,
                gap_ms: 10
            }
        );
        assert_eq!(behaviour("mock-status-429"), Behaviour::Status(429));
        assert_eq!(behaviour("mock-status-99"), Behaviour::Fixed);
        assert_eq!(behaviour("mock-stall-head-x"), Behaviour::Fixed);
        assert_eq!(
            behaviour("mock-stall-head-99999999999999999"),
            Behaviour::StallHead(MAX_WAIT_MS)
        );
        assert_eq!(behaviour("gpt-4o"), Behaviour::Fixed);
        assert_eq!(behaviour("mock-tools"), Behaviour::Tools);
        assert_eq!(behaviour("mock-mirror"), Behaviour::Mirror);
        assert_eq!(behaviour("mock-stream-error"), Behaviour::StreamError);
        assert_eq!(behaviour("mock-big-event-100"), Behaviour::BigEvent(100));
        assert_eq!(
            behaviour("mock-big-event-99999999999"),
            Behaviour::BigEvent(MAX_BIG_EVENT as usize)
        );
        assert_eq!(parse_chunk_size(b"1f;x=y"), Some(31));
        assert_eq!(parse_chunk_size(b"+1"), None);
        assert_eq!(parse_chunk_size(b"zz"), None);
    }
}
