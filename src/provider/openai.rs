//! The OpenAI-compatible adapter (OpenAI, xAI, DeepSeek, vLLM and any compatible base URL).
//!
//! Owns: the upstream path (`base_url` path + the client's path, without doubling a `/v1`),
//! `Authorization: Bearer`, and reading OpenAI-shaped error bodies. Must not: touch request or
//! response bodies — this provider speaks the client's dialect already.

use crate::error::RelayError;

pub fn write_target(out: &mut Vec<u8>, prefix: &[u8], path: &[u8]) {
    // base_url may already end in /v1 (as SDK base URLs do); don't send /v1/v1/...
    out.extend_from_slice(prefix);
    if prefix.ends_with(b"/v1") && path.starts_with(b"/v1/") {
        out.extend_from_slice(&path[3..]);
    } else {
        out.extend_from_slice(path);
    }
}

pub fn auth_line(key: &str) -> Vec<u8> {
    format!("Authorization: Bearer {key}\r\n").into_bytes()
}

/// The upstream's `error.message` / `type` / `code` (or a top-level `message` / `detail`),
/// else the start of the body as text.
pub fn normalise_error(
    status: u16,
    body: &[u8],
    truncated: bool,
    retry_after: Option<Vec<u8>>,
) -> RelayError {
    let parsed: Option<serde_json::Value> = if truncated {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    let mut message = None;
    let mut kind = None;
    let mut code = None;
    if let Some(v) = &parsed {
        match v.get("error") {
            Some(serde_json::Value::Object(e)) => {
                message = e.get("message").and_then(|m| m.as_str()).map(str::to_owned);
                kind = e.get("type").and_then(|m| m.as_str()).map(str::to_owned);
                code = match e.get("code") {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
            }
            Some(serde_json::Value::String(s)) => message = Some(s.clone()),
            _ => {}
        }
        if message.is_none() {
            message = v
                .get("message")
                .or_else(|| v.get("detail"))
                .and_then(|m| m.as_str())
                .map(str::to_owned);
        }
    }
    let message = message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
        let text = text.trim();
        if text.is_empty() {
            format!("upstream returned status {status}")
        } else if truncated || body.len() > 512 {
            format!("upstream returned status {status}: {text}...")
        } else {
            format!("upstream returned status {status}: {text}")
        }
    });
    let kind = kind.unwrap_or_else(|| "upstream_error".to_owned());
    let code = code.unwrap_or_else(|| format!("upstream_{status}"));
    RelayError::upstream_status(status, kind, code, message, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_do_not_double_v1() {
        let mut out = Vec::new();
        write_target(&mut out, b"/proxy/v1", b"/v1/chat/completions");
        assert_eq!(out, b"/proxy/v1/chat/completions");
        out.clear();
        write_target(&mut out, b"/proxy", b"/v1/chat/completions");
        assert_eq!(out, b"/proxy/v1/chat/completions");
    }

    #[test]
    fn normalises_upstream_errors() {
        let e = normalise_error(
            429,
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            false,
            Some(b"7".to_vec()),
        );
        assert_eq!(
            (e.status, &*e.message, &*e.code),
            (429, "slow down", "rate_limit_exceeded")
        );
        assert_eq!(e.retry_after.as_deref(), Some(&b"7"[..]));
        let e = normalise_error(502, b"<html>bad gateway</html>", false, None);
        assert_eq!(&*e.code, "upstream_502");
        assert!(e.message.contains("bad gateway"));
    }
}
