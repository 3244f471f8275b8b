//! The canned bodies: OpenAI-style error bodies and their `(type, code)`, chat and text
//! completions, embeddings (with the `input` forms the API takes, and base64 vectors), the
//! Anthropic-style message, one SSE event of a stream, and the 10 MiB error body.
//!
//! Must not: write to a socket or decide which body a request gets; these are pure functions
//! of their arguments.

use std::sync::OnceLock;

use crate::behaviours::Endpoint;

const HUGE_ERROR_LEN: usize = 10_485_760;

/// OpenAI-style `(type, code)` for an error status.
pub(crate) fn error_kind(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "invalid_request"),
        401 => ("authentication_error", "invalid_api_key"),
        403 => ("permission_error", "permission_denied"),
        404 => ("not_found_error", "not_found"),
        408 => ("timeout_error", "request_timeout"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        431 => ("invalid_request_error", "request_header_too_large"),
        500 => ("server_error", "internal_error"),
        502 => ("server_error", "bad_gateway"),
        503 => ("server_error", "service_unavailable"),
        504 => ("server_error", "gateway_timeout"),
        s if (400..500).contains(&s) => ("invalid_request_error", "mock_error"),
        s if (500..600).contains(&s) => ("server_error", "mock_error"),
        _ => ("api_error", "mock_error"),
    }
}

pub(crate) fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

pub(crate) fn error_body(message: &str, kind: &str, code: &str) -> String {
    format!(
        "{{\"error\":{{\"message\":{},\"type\":{},\"param\":null,\"code\":{}}}}}",
        json_str(message),
        json_str(kind),
        json_str(code)
    )
}

pub(crate) fn chat_completion(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1700000000,",
            "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",",
            "\"content\":\"Hello from the ringway mock upstream.\"}},\"finish_reason\":\"stop\"}}],",
            "\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}}}"
        ),
        json_str(model)
    )
}

pub(crate) fn text_completion(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"cmpl-mock\",\"object\":\"text_completion\",\"created\":1700000000,",
            "\"model\":{},\"choices\":[{{\"text\":\"Hello from the ringway mock upstream.\",",
            "\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}}],",
            "\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}}}"
        ),
        json_str(model)
    )
}

/// Every input's embedding: the same 8 floats, exactly representable in f32.
const EMBEDDING: [f32; 8] = [0.125, -0.25, 0.375, -0.5, 0.625, -0.75, 0.875, -1.0];

/// The tokens of each input of an embeddings request, like the API takes them: `input` is a
/// string, an array of strings, an array of token ids, or an array of such arrays. A string
/// counts one token per whitespace-separated word (at least 1); a token array its length.
/// `Err` is the message of a 400, for anything else (missing, empty, mixed, not integers).
pub(crate) fn embedding_inputs(json: &serde_json::Value) -> Result<Vec<u64>, String> {
    use serde_json::Value;
    fn words(s: &str) -> u64 {
        (s.split_whitespace().count() as u64).max(1)
    }
    fn token_ids(items: &[Value]) -> Option<u64> {
        let ok = !items.is_empty() && items.iter().all(|t| t.is_u64());
        ok.then_some(items.len() as u64)
    }
    let invalid = || {
        "'input' must be a string, an array of strings, an array of token ids, or an array of \
         token id arrays (none of them empty)"
            .to_string()
    };
    match json.get("input") {
        None | Some(Value::Null) => Err("'input' is a required property".to_string()),
        Some(Value::String(s)) => Ok(vec![words(s)]),
        Some(Value::Array(items)) if items.is_empty() => Err(invalid()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .map(|s| words(s.as_str().unwrap_or_default()))
            .collect()),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            token_ids(items).map(|n| vec![n]).ok_or_else(invalid)
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_array().and_then(|ids| token_ids(ids)))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// An embeddings list with one item per input, `index` in input order, and usage summing the
/// inputs' tokens. `"encoding_format": "base64"` gives each vector as base64 of little-endian
/// f32s, as the API does (the official SDKs ask for that by default).
pub(crate) fn embeddings(model: &str, json: &serde_json::Value) -> Result<String, String> {
    let tokens = embedding_inputs(json)?;
    let vector = match json
        .get("encoding_format")
        .and_then(serde_json::Value::as_str)
    {
        None | Some("float") => {
            let floats: Vec<String> = EMBEDDING.iter().map(|f| format!("{f:?}")).collect();
            format!("[{}]", floats.join(","))
        }
        Some("base64") => {
            let bytes: Vec<u8> = EMBEDDING.iter().flat_map(|f| f.to_le_bytes()).collect();
            json_str(&base64(&bytes))
        }
        Some(other) => {
            return Err(format!(
                "'encoding_format' must be \"float\" or \"base64\", not {}",
                json_str(other)
            ))
        }
    };
    let data: Vec<String> = (0..tokens.len())
        .map(|index| {
            format!("{{\"object\":\"embedding\",\"index\":{index},\"embedding\":{vector}}}")
        })
        .collect();
    let total: u64 = tokens.iter().sum();
    Ok(format!(
        concat!(
            "{{\"object\":\"list\",\"data\":[{}],\"model\":{},",
            "\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{}}}}}"
        ),
        data.join(","),
        json_str(model),
        total,
        total
    ))
}

/// Standard base64 with padding (RFC 4648), for `encoding_format: base64`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn anthropic_message(model: &str) -> String {
    format!(
        concat!(
            "{{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},",
            "\"content\":[{{\"type\":\"text\",\"text\":\"Hello from the ringway mock upstream.\"}}],",
            "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,",
            "\"usage\":{{\"input_tokens\":9,\"cache_creation_input_tokens\":0,",
            "\"cache_read_input_tokens\":4,\"output_tokens\":7}}}}"
        ),
        json_str(model)
    )
}

/// The events of an Anthropic Messages stream with `deltas` text deltas (`tok0`, `tok1`, ...),
/// each a whole SSE event, in order: `message_start` (usage: [`STREAM_PROMPT_TOKENS`] input
/// tokens, [`STREAM_CACHED_TOKENS`] of them read from the cache and counted apart as Anthropic
/// does, 1 output token), `content_block_start`, one `ping`, the deltas, `content_block_stop`,
/// `message_delta` (`end_turn`, `output_tokens` = `deltas`), `message_stop`. The deltas are the
/// events from index 3 to 3 + `deltas`.
pub(crate) fn anthropic_stream_events(model: &str, deltas: u64) -> Vec<String> {
    let mut events = Vec::with_capacity(deltas as usize + 6);
    events.push(format!(
        concat!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{",
            "\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],",
            "\"model\":{},\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{",
            "\"input_tokens\":{},\"cache_creation_input_tokens\":0,",
            "\"cache_read_input_tokens\":{},\"output_tokens\":1}}}}}}\n\n"
        ),
        json_str(model),
        STREAM_PROMPT_TOKENS - STREAM_CACHED_TOKENS,
        STREAM_CACHED_TOKENS
    ));
    events.push(
        concat!(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,",
            "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
        )
        .to_string(),
    );
    events.push("event: ping\ndata: {\"type\": \"ping\"}\n\n".to_string());
    for index in 0..deltas {
        events.push(format!(
            concat!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,",
                "\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{}\"}}}}\n\n"
            ),
            index
        ));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_string(),
    );
    events.push(format!(
        concat!(
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{",
            "\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},",
            "\"usage\":{{\"output_tokens\":{}}}}}\n\n"
        ),
        deltas
    ));
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    events
}

/// Anthropic's error body for `status`, with Anthropic's error type for it.
pub(crate) fn anthropic_error_body(status: u16, message: &str) -> String {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":{}}}}}",
        json_str(message)
    )
}

/// `{"input_tokens": N}` for a `count_tokens` request: a quarter of the bytes of its
/// `messages` (and `system`), at least 1.
pub(crate) fn count_tokens(json: &serde_json::Value) -> String {
    let bytes = ["messages", "system"]
        .iter()
        .filter_map(|k| json.get(*k))
        .map(|v| v.to_string().len())
        .sum::<usize>();
    format!("{{\"input_tokens\":{}}}", (bytes / 4).max(1))
}

/// One SSE event of a streamed reply, with content `tok<index>`: a `text_completion` chunk
/// (`choices[].text`) on `/v1/completions`, a `chat.completion.chunk` (`choices[].delta`)
/// everywhere else.
pub(crate) fn chunk_event(endpoint: Endpoint, model: &str, index: u64, last: bool) -> String {
    let finish = if last { "\"stop\"" } else { "null" };
    if endpoint == Endpoint::Responses {
        return crate::responses::delta_event(index);
    }
    if endpoint == Endpoint::Completions {
        return format!(
            concat!(
                "data: {{\"id\":\"cmpl-mock\",\"object\":\"text_completion\",",
                "\"created\":1700000000,\"model\":{},\"choices\":[{{\"text\":\"tok{}\",",
                "\"index\":0,\"logprobs\":null,\"finish_reason\":{}}}]}}\n\n"
            ),
            json_str(model),
            index,
            finish
        );
    }
    format!(
        concat!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",",
            "\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,",
            "\"delta\":{{\"content\":\"tok{}\"}},\"finish_reason\":{}}}]}}\n\n"
        ),
        json_str(model),
        index,
        finish
    )
}

/// Prompt tokens the mock reports for every streamed request, and the cached part of them.
pub(crate) const STREAM_PROMPT_TOKENS: u64 = 9;
pub(crate) const STREAM_CACHED_TOKENS: u64 = 4;

/// A stream event with `"usage":null` added, as OpenAI sends every chunk but the last of a
/// stream asked for `stream_options.include_usage`.
pub(crate) fn with_usage_null(event: &str) -> String {
    let body = event.trim_end_matches('\n');
    let object = body.strip_suffix('}').unwrap_or(body);
    format!("{object},\"usage\":null}}\n\n")
}

/// The usage-only event that ends a stream asked for `stream_options.include_usage`:
/// `"choices": []` and the usage — [`STREAM_PROMPT_TOKENS`] prompt tokens (of which
/// [`STREAM_CACHED_TOKENS`] cached) and one completion token per content event.
pub(crate) fn stream_usage_event(endpoint: Endpoint, model: &str, completion: u64) -> String {
    let (id, object) = if endpoint == Endpoint::Completions {
        ("cmpl-mock", "text_completion")
    } else {
        ("chatcmpl-mock", "chat.completion.chunk")
    };
    format!(
        concat!(
            "data: {{\"id\":\"{}\",\"object\":\"{}\",\"created\":1700000000,\"model\":{},",
            "\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},",
            "\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}}}}\n\n"
        ),
        id,
        object,
        json_str(model),
        STREAM_PROMPT_TOKENS,
        completion,
        STREAM_PROMPT_TOKENS + completion,
        STREAM_CACHED_TOKENS
    )
}

pub(crate) fn huge_error_body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let head = br#"{"error":{"message":"mock huge error "#;
        let tail = br#"","type":"server_error","param":null,"code":"mock_huge_error"}}"#;
        let mut body = Vec::with_capacity(HUGE_ERROR_LEN);
        body.extend_from_slice(head);
        body.resize(HUGE_ERROR_LEN - tail.len(), b'x');
        body.extend_from_slice(tail);
        body
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }
}
