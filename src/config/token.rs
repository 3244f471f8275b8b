//! One `[[tokens]]` section: name, key, allow-list, expiry and limits.
//!
//! Must not: do IO.

use super::load::{MAX_COUNT, MAX_QUOTA, TOKEN_KEYS};
use super::spans::{Field, Kind, Section};
use super::timestamp::parse_rfc3339;
use super::*;

pub(super) fn read_token(sec: &Section) -> Result<TokenConfig, ConfigError> {
    sec.check_known(TOKEN_KEYS)?;
    let name = sec.required("name")?.nonempty_str()?.to_string();
    let key_field = sec.required("key")?;
    let key = key_field.str()?;
    check_secret(key).map_err(|m| key_field.err(m))?;
    let models = read_patterns(&sec.required("models")?)?;
    let expires_at = match sec.field("expires_at") {
        Some(f) => Some(read_timestamp(&f)?),
        None => None,
    };
    Ok(TokenConfig {
        name,
        key: key.to_string(),
        models,
        expires_at,
        rpm: read_limit(sec, "rpm")?,
        tpm: read_limit(sec, "tpm")?,
        max_inflight: read_limit(sec, "max_inflight")?,
        quota_tokens: read_quota(sec)?,
    })
}

/// `quota_tokens`: like a limit, but a lifetime total may be far larger than a rate.
fn read_quota(sec: &Section) -> Result<Option<u64>, ConfigError> {
    let Some(f) = sec.field("quota_tokens") else {
        return Ok(None);
    };
    let n = f.int()?;
    if n < 1 {
        return Err(f.err("must be >= 1 (leave the key out for no quota)"));
    }
    if n as u64 > MAX_QUOTA {
        return Err(f.err(&format!("must be at most {MAX_QUOTA}")));
    }
    Ok(Some(n as u64))
}

/// A token's optional limit: a whole number from 1 to [`MAX_COUNT`]; leaving the key out is
/// how to have no limit (there is no 0 = unlimited).
fn read_limit(sec: &Section, key: &str) -> Result<Option<u64>, ConfigError> {
    let Some(f) = sec.field(key) else {
        return Ok(None);
    };
    let n = f.int()?;
    if n < 1 {
        return Err(f.err("must be >= 1 (leave the key out for no limit)"));
    }
    if n as u64 > MAX_COUNT as u64 {
        return Err(f.err(&format!("must be at most {MAX_COUNT}")));
    }
    Ok(Some(n as u64))
}

/// An RFC 3339 date-time string, as Unix milliseconds.
fn read_timestamp(f: &Field) -> Result<i64, ConfigError> {
    const HINT: &str = "use an RFC 3339 date-time in quotes, e.g. \"2027-01-01T00:00:00Z\"";
    let text = match &f.node.kind {
        Kind::Str(s) => s.as_str(),
        Kind::Datetime => {
            return Err(f.err(&format!(
                "expected a string, found a bare TOML date-time: {HINT}"
            )))
        }
        other => {
            return Err(f.err(&format!(
                "expected a string, found {}: {HINT}",
                other.describe()
            )))
        }
    };
    parse_rfc3339(text).map_err(|m| f.err(&format!("invalid timestamp {text:?}: {m} ({HINT})")))
}

/// A model allow-list: non-empty, each entry non-empty, `*` only as the final character
/// (anywhere else it would silently match nothing).
pub(super) fn read_patterns(f: &Field) -> Result<Vec<String>, ConfigError> {
    let items = f.array()?;
    if items.is_empty() {
        return Err(f.err("must list at least one model (\"*\" = any)"));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let p = item.nonempty_str()?;
        if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
            return Err(item.err(&format!(
                "invalid pattern {p:?}: '*' is only allowed once, at the end"
            )));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

/// Keys end up in request headers, so anything but visible ASCII would be a header-injection
/// hazard. The message never repeats the value.
pub(super) fn check_secret(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("must not be empty")
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        Err("contains a character not allowed in an HTTP header (spaces, control or non-ASCII)")
    } else {
        Ok(())
    }
}
