//! One `[[channels]]` section: its keys, its `base_url` (parsed by hand: scheme, host, port,
//! path prefix) and its `ca_file`.
//!
//! Must not: do IO beyond reading the `ca_file` it names.

use super::load::CHANNEL_KEYS;
use super::spans::{Field, Section};
use super::token::{check_secret, read_patterns};
use super::*;

pub(super) fn read_channel(
    sec: &Section,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChannelConfig, ConfigError> {
    sec.check_known(CHANNEL_KEYS)?;
    let name = sec.required("name")?.nonempty_str()?.to_string();

    let provider_field = sec.required("provider")?;
    let provider = match provider_field.str()? {
        "openai" => Provider::OpenAi,
        "anthropic" => Provider::Anthropic,
        other => {
            return Err(provider_field.err(&format!(
                "unknown provider {other:?} (expected \"openai\" or \"anthropic\")"
            )))
        }
    };

    let url_field = sec.required("base_url")?;
    let url = parse_base_url(url_field.str()?).map_err(|m| url_field.err(&m))?;

    let keys = match (sec.field("keys"), sec.field("key_env")) {
        (Some(_), Some(f)) => {
            return Err(f.err("set either keys or key_env, not both"));
        }
        (None, None) => {
            return Err(sec.cx.error(
                sec.line,
                &sec.key("keys"),
                "missing: set keys = [\"...\"] or key_env = \"ENV_VAR\"",
            ));
        }
        (Some(f), None) => {
            let items = f.array()?;
            if items.is_empty() {
                return Err(f.err("must list at least one key"));
            }
            let mut keys = Vec::with_capacity(items.len());
            for item in items {
                let key = item.str()?;
                check_secret(key).map_err(|m| item.err(m))?;
                keys.push(key.to_string());
            }
            keys
        }
        (None, Some(f)) => {
            let var = f.nonempty_str()?;
            let value = env(var)
                .ok_or_else(|| f.err(&format!("environment variable {var:?} is not set")))?;
            // Files and secret stores often leave a trailing newline on the value.
            let key = value.trim();
            if key.is_empty() {
                return Err(f.err(&format!("environment variable {var:?} is empty")));
            }
            check_secret(key).map_err(|m| f.err(&format!("environment variable {var:?}: {m}")))?;
            vec![key.to_string()]
        }
    };

    let models = read_patterns(&sec.required("models")?)?;

    let mut model_map = Vec::new();
    if let Some(f) = sec.field("model_map") {
        let table = f.table()?;
        for (from, _) in table.entries {
            let entry = table.field(from).expect("key taken from the same table");
            if from.is_empty() {
                return Err(entry.err("client model name must not be empty"));
            }
            model_map.push((from.clone(), entry.nonempty_str()?.to_string()));
        }
    }

    let priority = match sec.field("priority") {
        Some(f) => f.int()?,
        None => 0,
    };
    // Capped so a sum of weights over many channels cannot overflow a u32 or u64.
    let weight = sec.usize_or("weight", 1, 1, 1_000_000)?;
    let weight = u32::try_from(weight).expect("weight is capped at 1_000_000");

    let mut timeouts = ChannelTimeouts::default();
    if let Some(f) = sec.field("timeouts") {
        let t = f.table()?;
        let names: Vec<&str> = Layer::PER_CHANNEL.iter().map(|l| l.name()).collect();
        for (key, _) in t.entries {
            let layer = Layer::from_name(key).filter(|l| Layer::PER_CHANNEL.contains(l));
            let entry = t.field(key).expect("key taken from the same table");
            match layer {
                Some(layer) => timeouts.set(layer, entry.duration()?),
                None => {
                    return Err(entry.err(&format!(
                        "unknown timeout layer (per-channel overrides: {})",
                        names.join(", ")
                    )))
                }
            }
        }
    }

    let ca = match sec.field("ca_file") {
        Some(f) => Some(read_ca_file(&f, url.scheme, base_dir)?),
        None => None,
    };

    let anthropic_version = match sec.field("anthropic_version") {
        Some(f) if provider != Provider::Anthropic => {
            return Err(f.err("anthropic_version applies to provider = \"anthropic\" channels only"))
        }
        Some(f) => {
            let v = f.nonempty_str()?;
            if !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(f.err("must be a header-safe version like \"2023-06-01\""));
            }
            Some(v.to_string())
        }
        None => None,
    };

    let default_max_tokens = match sec.field("default_max_tokens") {
        Some(f) if provider != Provider::Anthropic => {
            return Err(
                f.err("default_max_tokens applies to provider = \"anthropic\" channels only")
            )
        }
        Some(f) => f.usize_in(1, 10_000_000)? as u64,
        None => super::DEFAULT_MAX_TOKENS,
    };

    Ok(ChannelConfig {
        name,
        provider,
        base_url: url.base_url,
        scheme: url.scheme,
        host: url.host,
        port: url.port,
        path_prefix: url.path_prefix,
        keys,
        models,
        model_map,
        priority,
        weight,
        timeouts,
        ca,
        anthropic_version,
        default_max_tokens,
    })
}

/// `ca_file = "path"`: readable, PEM, at least one certificate, every certificate usable as a
/// trust anchor (the same check the TLS connector makes at start, so start cannot fail on it).
fn read_ca_file(f: &Field, scheme: Scheme, base_dir: &Path) -> Result<CaFile, ConfigError> {
    let raw = f.nonempty_str()?;
    if scheme == Scheme::Http {
        return Err(f.err("ca_file needs an https base_url"));
    }
    let path = base_dir.join(raw);
    let shown = path.display();
    let pem = std::fs::read(&path).map_err(|e| f.err(&format!("cannot read {shown}: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0usize;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        count += 1;
        let cert = cert.map_err(|e| f.err(&format!("{shown}: invalid PEM: {e}")))?;
        roots.add(cert).map_err(|e| {
            f.err(&format!(
                "{shown}: certificate {count} cannot be a trusted root: {e}"
            ))
        })?;
    }
    if count == 0 {
        return Err(f.err(&format!(
            "{shown} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(CaFile { path, pem })
}

struct ParsedUrl {
    base_url: String,
    scheme: Scheme,
    host: String,
    port: u16,
    path_prefix: String,
}

fn parse_base_url(raw: &str) -> Result<ParsedUrl, String> {
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("https://") {
        (Scheme::Https, &raw[8..])
    } else if lower.starts_with("http://") {
        (Scheme::Http, &raw[7..])
    } else {
        return Err(format!(
            "invalid base_url {raw:?}: must start with http:// or https://"
        ));
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "invalid base_url {raw:?}: a query or fragment is not allowed"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        // Deliberately not echoing the value: it carries credentials.
        return Err("invalid base_url: credentials in the URL are not supported (use keys)".into());
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (h, tail) = after
            .split_once(']')
            .ok_or_else(|| format!("invalid base_url {raw:?}: unclosed '[' in host"))?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "invalid base_url {raw:?}: {h:?} is not an IPv6 address"
            ));
        }
        let port =
            match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| {
                    format!("invalid base_url {raw:?}: unexpected {t:?} after ']'")
                })?),
            };
        (h, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !host_ok {
        return Err(format!(
            "invalid base_url {raw:?}: bad host (IPv6 addresses go in brackets)"
        ));
    }
    let port = match port {
        None => match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        },
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("invalid base_url {raw:?}: bad port {p:?}")),
        },
    };
    let path_prefix = path.trim_end_matches('/');
    if !path_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "invalid base_url {raw:?}: the path may only contain visible ASCII"
        ));
    }
    Ok(ParsedUrl {
        base_url: raw.trim_end_matches('/').to_string(),
        scheme,
        host: host.to_string(),
        port,
        path_prefix: path_prefix.to_string(),
    })
}
