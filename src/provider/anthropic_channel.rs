//! The Anthropic adapter: how an Anthropic Messages API channel is spoken to.
//!
//! Owns: the upstream path (as the OpenAI adapter: `base_url` path + the client's path, without
//! doubling a `/v1`), the key as `x-api-key`, and the `anthropic-version` the relay sends when
//! the client sent none. Reading Anthropic's error bodies is `anthropic::errors`'. Must not:
//! touch request or response bodies — only Anthropic-dialect requests reach this adapter.

/// Anthropic's API version sent when neither the client nor the channel names one.
pub const DEFAULT_VERSION: &str = "2023-06-01";

pub fn auth_line(key: &str) -> Vec<u8> {
    format!("x-api-key: {key}\r\n").into_bytes()
}

/// The `anthropic-version` header line for a channel: its `anthropic_version`, else
/// [`DEFAULT_VERSION`].
pub fn version_line(configured: Option<&str>) -> Vec<u8> {
    format!(
        "anthropic-version: {}\r\n",
        configured.unwrap_or(DEFAULT_VERSION)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines() {
        assert_eq!(auth_line("sk-ant-1"), b"x-api-key: sk-ant-1\r\n");
        assert_eq!(version_line(None), b"anthropic-version: 2023-06-01\r\n");
        assert_eq!(
            version_line(Some("2024-01-01")),
            b"anthropic-version: 2024-01-01\r\n"
        );
    }
}
