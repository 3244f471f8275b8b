//! The Responses API's part of `respond`: learning which channel, key and token created a
//! response, and reading its usage, from the answer as it passes.
//!
//! Owns: [`ResponsesTrack`], made (boxed, so other requests pay nothing) for a 2xx answer to
//! `POST /v1/responses`: it feeds each relayed read to a [`ResponsesScan`] and puts the id
//! into the process's id map ([`crate::responses_ids`]) the moment it is seen — from a stream's
//! first event, so the id routes work while the stream still runs — and forgetting an id whose
//! `DELETE` succeeded. Must not: hold or alter the answer's bytes.

use crate::context::Worker;
use crate::provider::{ResponsesScan, Usage};
use crate::responses_ids::{channel_fingerprint, fingerprint, Origin};
use crate::wire::Method;

use super::exchange::{response_route, Endpoint, Exchange, RelayKind};

pub struct ResponsesTrack {
    scan: ResponsesScan,
    origin: Origin,
}

impl ResponsesTrack {
    /// For an answer to `POST /v1/responses` from `channel` with its key `key`; `events`: the
    /// answer is an event stream.
    pub fn new(w: &Worker, ex: &Exchange<'_>, channel: usize, key: usize, events: bool) -> Self {
        let c = &w.router.channels[channel].cfg;
        let token = ex.token.map_or("", |t| w.router.token_cfgs[t].key.as_str());
        ResponsesTrack {
            scan: ResponsesScan::new(events),
            origin: Origin {
                channel: channel_fingerprint(c),
                key: c.keys.get(key).map_or(0, |k| fingerprint(k.as_bytes())),
                token: fingerprint(token.as_bytes()),
            },
        }
    }

    /// Read the next relayed bytes; remembers the response's id as soon as it shows.
    pub fn feed(&mut self, w: &Worker, data: &[u8]) {
        self.scan.feed(data);
        if let Some(id) = self.scan.take_id() {
            let now = std::time::Instant::now();
            w.response_ids
                .insert(id, self.origin, now, w.config.server.responses_ttl);
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.scan.usage()
    }
}

/// Does this exchange answer `POST /v1/responses` (and so learn an id)?
pub fn creates_response(ex: &Exchange<'_>) -> bool {
    ex.endpoint == Endpoint::Relay(RelayKind::Responses)
}

/// A `DELETE /v1/responses/{id}` the upstream accepted: the id is forgotten.
pub fn forget_if_deleted(w: &Worker, ex: &Exchange<'_>, rbuf: &[u8]) {
    if ex.endpoint != Endpoint::Relay(RelayKind::ResponseById)
        || ex.head.method != Method::Delete
        || !(200..300).contains(&ex.resp.status)
    {
        return;
    }
    if let Some((id, b"")) = response_route(ex.head.route_path(rbuf)) {
        w.response_ids.remove(id);
    }
}
