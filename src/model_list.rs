//! Upstream model lists: what a channel whose `models` hold a glob (`"gpt-4o*"`, `"*"`) really
//! serves, asked of the upstream's own `GET /v1/models`, so that ringway's `/v1/models` can list
//! it.
//!
//! Key components:
//! - [`ModelLists`]: one slot per glob channel, holding the last good list (sorted, deduplicated
//!   ids). Part of the routing table; `/v1/models` reads it.
//! - [`spawn`]: the `model-lists` thread. It fetches every glob channel's list at start, then
//!   every `server.models_refresh` (zero: only at start; `"off"`: never), and [`RETRY_AFTER_FAILURE`] after a
//!   failed fetch. It holds the routing table weakly and ends when the table is gone.
//!
//! Error handling: a failed fetch (connect, TLS, a non-200 answer, a body that is not a model
//! list, one over [`MAX_LIST_BYTES`]) keeps the last good list and logs one WARN per failure
//! streak; a channel never fetched lists only its exact names. Bounded: at most [`MAX_MODELS`]
//! ids of at most [`MAX_ID_BYTES`] bytes per channel.
//!
//! Must not: run on a worker or on any request's path. A `/v1/models` request takes a read
//! lock for an `Arc` clone; a relayed request never touches the lists.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::config::{Layer, Scheme};
use crate::route::{Channel, Router};
use crate::wire::{self, BodyKind, ChunkedDecoder, ResponseHead};

/// The largest model list read from an upstream (OpenAI's is about 20 KiB).
pub const MAX_LIST_BYTES: usize = 4 << 20;
/// Ids kept per channel; the rest are dropped with a warning.
pub const MAX_MODELS: usize = 10_000;
/// Longer ids are skipped: no real model name is this long.
pub const MAX_ID_BYTES: usize = 256;
/// A failed fetch is tried again this soon (or at the next refresh, if that is sooner).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Start the `model-lists` thread when some channel has a glob and `every` is not off; it ends
/// with the router.
pub fn spawn(router: &Arc<Router>, every: Option<Duration>) -> io::Result<()> {
    let Some(every) = every else { return Ok(()) };
    if !router.model_lists.any() {
        return Ok(());
    }
    let weak = Arc::downgrade(router);
    std::thread::Builder::new()
        .name("model-lists".into())
        .spawn(move || refresh_loop(weak, every))
        .map(|_| ())
}

fn refresh_loop(router: Weak<Router>, every: Duration) {
    let n = match router.upgrade() {
        Some(r) => r.channels.len(),
        None => return,
    };
    let mut due: Vec<Option<Instant>> = vec![Some(Instant::now()); n];
    let mut failing = vec![false; n];
    // The TLS settings per channel, built once (a channel's own ca_file, else the defaults).
    let mut tls: Vec<Option<Arc<rustls::ClientConfig>>> = vec![None; n];
    loop {
        let Some(r) = router.upgrade() else { return };
        let now = Instant::now();
        for (i, ch) in r.channels.iter().enumerate() {
            if !r.model_lists.fetched(i) || due[i].is_none_or(|t| t > now) {
                continue;
            }
            let result = fetch(ch, &mut tls[i]);
            let next_in = match result {
                Ok((ids, dropped)) => {
                    let matching = ids.iter().filter(|id| ch.cfg.serves(id)).count();
                    if failing[i] || r.model_lists.get(i).is_empty() {
                        crate::log::info(&format!(
                            "channel '{}': its upstream lists {} model(s), {matching} matching its models{}",
                            ch.cfg.name,
                            ids.len(),
                            if dropped > 0 {
                                format!(" ({dropped} more dropped: at most {MAX_MODELS} are kept)")
                            } else {
                                String::new()
                            }
                        ));
                    }
                    failing[i] = false;
                    r.model_lists.set(i, ids);
                    every
                }
                Err(e) => {
                    let retry = if every.is_zero() {
                        RETRY_AFTER_FAILURE
                    } else {
                        RETRY_AFTER_FAILURE.min(every)
                    };
                    if !failing[i] {
                        crate::log::warn(&format!(
                            "channel '{}': fetching its upstream's model list failed: {e}; /v1/models lists only its exact names until a fetch succeeds (next try in {}s)",
                            ch.cfg.name,
                            retry.as_secs()
                        ));
                    }
                    failing[i] = true;
                    retry
                }
            };
            due[i] = (!next_in.is_zero() || failing[i]).then(|| Instant::now() + next_in);
        }
        let next = due.iter().flatten().min().copied();
        drop(r);
        match next {
            // Wake at least once a second to notice the router is gone.
            Some(t) => std::thread::sleep(
                t.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1)),
            ),
            None => return,
        }
    }
}

/// One `GET <base_url>/models` with the channel's first key: the sorted ids, and how many were
/// dropped over [`MAX_MODELS`].
fn fetch(
    ch: &Channel,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
) -> Result<(Vec<String>, usize), String> {
    let connect_timeout = ch.timeouts[Layer::Connect];
    let io_timeout = ch.timeouts[Layer::ResponseHeader];
    let addrs = (ch.cfg.host.as_str(), ch.cfg.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", ch.cfg.host))?;
    let mut last = format!("{} resolved to no address", ch.cfg.host);
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, connect_timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let set = tcp
        .set_read_timeout(Some(io_timeout))
        .and_then(|()| tcp.set_write_timeout(Some(io_timeout)));
    set.map_err(|e| e.to_string())?;

    let mut req = Vec::with_capacity(256);
    req.extend_from_slice(b"GET ");
    ch.adapter
        .write_target(&mut req, ch.cfg.path_prefix.as_bytes(), b"/v1/models");
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(&ch.host_header);
    req.extend_from_slice(b"\r\n");
    if let Some(auth) = ch.auth_lines.first() {
        req.extend_from_slice(auth);
    }
    if let Some(line) = &ch.default_header_line {
        req.extend_from_slice(line);
    }
    req.extend_from_slice(b"Accept: application/json\r\nConnection: close\r\n\r\n");

    let raw = match ch.cfg.scheme {
        Scheme::Http => exchange(tcp, &req)?,
        Scheme::Https => {
            if tls.is_none() {
                let pem = ch.cfg.ca.as_ref().map(|c| c.pem.as_slice());
                *tls = Some(crate::upstream::tls_client_config(pem).map_err(|e| e.to_string())?);
            }
            let config = tls.clone().expect("set above");
            let name = ServerName::try_from(ch.cfg.host.clone()).map_err(|e| e.to_string())?;
            let session = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            exchange(rustls::StreamOwned::new(session, tcp), &req)?
        }
    };
    let body = response_body(&raw)?;
    parse_ids(&body)
}

/// Send `req`, read the answer until the upstream closes (at most [`MAX_LIST_BYTES`] past the
/// head's worth).
fn exchange(mut s: impl Read + Write, req: &[u8]) -> Result<Vec<u8>, String> {
    s.write_all(req)
        .and_then(|()| s.flush())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_LIST_BYTES + 64 * 1024 {
                    return Err(format!("the answer is over {MAX_LIST_BYTES} bytes"));
                }
            }
            // A TLS peer that closes without close_notify: what arrived is judged by framing.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(buf),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
}

/// The body of a whole 200 answer in `raw`, de-chunked; anything else is an error.
fn response_body(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut head = ResponseHead::default();
    match wire::parse_response(raw, &mut head, false) {
        Ok(true) => {}
        Ok(false) => return Err("the upstream closed before a whole response head".into()),
        Err(e) => return Err(format!("malformed response head: {}", e.message())),
    }
    if head.status != 200 {
        let start = &raw[head.len..raw.len().min(head.len + 200)];
        return Err(format!(
            "the upstream answered {}: {}",
            head.status,
            String::from_utf8_lossy(start).trim()
        ));
    }
    let rest = &raw[head.len..];
    match head.body {
        BodyKind::None => Ok(Vec::new()),
        BodyKind::UntilClose => Ok(rest.to_vec()),
        BodyKind::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if rest.len() < n {
                return Err(format!("the body ended after {} of {n} bytes", rest.len()));
            }
            Ok(rest[..n].to_vec())
        }
        BodyKind::Chunked => {
            let mut body = rest.to_vec();
            let mut decoder = ChunkedDecoder::new();
            let mut end = 0;
            let done = wire::dechunk_in_place(&mut decoder, &mut body, 0, &mut end)
                .map_err(|e| format!("malformed chunked body: {}", e.message()))?;
            if !done.done {
                return Err("the chunked body ended early".into());
            }
            body.truncate(end);
            Ok(body)
        }
    }
}

/// The `data[].id`s of an OpenAI model list, sorted and deduplicated, at most [`MAX_MODELS`]
/// (and how many more there were).
fn parse_ids(body: &[u8]) -> Result<(Vec<String>, usize), String> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        id: String,
    }
    let list: List = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an OpenAI model list: {e}"))?;
    let mut ids: Vec<String> = list
        .data
        .into_iter()
        .map(|i| i.id)
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
        .collect();
    ids.sort();
    ids.dedup();
    let dropped = ids.len().saturating_sub(MAX_MODELS);
    ids.truncate(MAX_MODELS);
    Ok((ids, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_each_framing() {
        let json = br#"{"object":"list","data":[{"id":"b"},{"id":"a"},{"id":"b"}]}"#;
        let mut by_length =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", json.len()).into_bytes();
        by_length.extend_from_slice(json);
        let body = response_body(&by_length).unwrap();
        assert_eq!(parse_ids(&body).unwrap(), (vec!["a".into(), "b".into()], 0));

        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(format!("{:x}\r\n", json.len()).as_bytes());
        chunked.extend_from_slice(json);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(response_body(&chunked).unwrap(), json);

        let mut short = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n".to_vec();
        short.extend_from_slice(json);
        assert!(response_body(&short).unwrap_err().contains("ended after"));
        let err = response_body(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\n\r\nno!");
        assert!(err.unwrap_err().contains("401"));
    }

    #[test]
    fn ids_are_bounded() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let mut items: Vec<String> = (0..MAX_MODELS + 5)
            .map(|i| format!(r#"{{"id":"m{i:05}"}}"#))
            .collect();
        items.push(format!(r#"{{"id":"{long}"}}"#));
        items.push(r#"{"id":""}"#.into());
        let body = format!(r#"{{"data":[{}]}}"#, items.join(","));
        let (ids, dropped) = parse_ids(body.as_bytes()).unwrap();
        assert_eq!((ids.len(), dropped), (MAX_MODELS, 5));
        assert!(ids
            .iter()
            .all(|id| id.len() <= MAX_ID_BYTES && !id.is_empty()));
        assert!(parse_ids(b"{\"object\":\"list\"}").is_err());
        assert!(parse_ids(b"<html>").is_err());
    }
}
