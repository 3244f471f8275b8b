//! Phase 3, `route`: the `model` of the request, and the channels that may serve it, in the
//! order `forward` tries them.
//!
//! Owns: finding `model` in the body without building a JSON tree (the body goes upstream
//! byte for byte), the token's model allow-list, and the candidate list
//! ([`Candidates`](crate::route::Candidates), priority tiers then weight) among the channels
//! that can serve the endpoint (`RelayKind::served_by`): chat completions and `/v1/messages`
//! on channels of either provider — converted when the channel speaks the other dialect —,
//! `count_tokens` on Anthropic channels only, the other OpenAI endpoints on OpenAI-compatible
//! ones (for `/v1/responses`, only those that serve the Responses API).
//! A Responses API id route (`/v1/responses/{id}…`) has no model: the id map
//! ([`crate::responses_ids`]) decides its one channel and key, for the token that created the
//! response only (404 `response_not_found` otherwise).
//! Error handling: 400 `missing_model` / `invalid_json`, 403 `model_not_allowed`, 404
//! `model_not_found` (also when only channels the endpoint cannot use serve the model, or, on
//! `/v1/responses`, only channels with `responses = false`), 503
//! `no_healthy_channel` (every channel serving the model is cooling down or out of keys).
//! Must not: allocate on the passthrough path, or contact an upstream.

use crate::config::Provider;
use crate::error::RelayError;
use crate::provider;
use crate::route::{Candidates, RouteError};

use crate::responses_ids::Lookup;

use super::exchange::{response_route, Endpoint, Exchange, RelayKind};
use super::{Conn, Halt};
use crate::tls_server::ClientStream;

pub fn route<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
) -> Result<Candidates, Halt> {
    if ex.endpoint == Endpoint::Relay(RelayKind::ResponseById) {
        return by_response_id(conn, ex);
    }
    let w = &conn.w;
    let body = &conn.rbuf[ex.body.clone()];
    let (field, usage_splice) = match provider::peek_request(body) {
        Ok(provider::RequestPeek {
            model: Some(f),
            usage_splice,
            ..
        }) => (f, usage_splice),
        Ok(_) => return Err(RelayError::missing_model().into()),
        Err(msg) => return Err(RelayError::invalid_json(msg).into()),
    };
    let Some(model) = provider::model_name(body, &field) else {
        return Err(RelayError::invalid_json("model is not valid UTF-8").into());
    };
    let token = ex.token.expect("admit authenticated the token");
    let kind = match ex.endpoint {
        Endpoint::Relay(kind) => kind,
        _ => RelayKind::ChatCompletions,
    };
    let provider = kind.provider();
    let served_by = |p: Provider| kind.served_by(p);
    let responses = kind == RelayKind::Responses;
    let found = w
        .router
        .candidates_for(token, &model, served_by, responses, &w.route_state);
    let candidates = match found {
        Ok(c) => c,
        Err(RouteError::ModelNotAllowed) => {
            return Err(RelayError::model_not_allowed(&model).into())
        }
        Err(RouteError::ModelNotFound) => return Err(RelayError::model_not_found(&model).into()),
        Err(RouteError::NoResponsesChannel) => {
            return Err(RelayError::model_without_responses(&model).into())
        }
        Err(RouteError::OtherProviderOnly) => {
            let path = ex.endpoint.path().unwrap_or("this endpoint");
            let anthropic = provider == Provider::Anthropic;
            return Err(RelayError::model_on_other_provider(&model, path, anthropic).into());
        }
        Err(RouteError::NoHealthyChannel { retry_after_secs }) => {
            return Err(RelayError::no_healthy_channel(&model, retry_after_secs).into())
        }
    };
    ex.model_name.clear();
    ex.model_name.push_str(&model);
    ex.model = Some(field);
    // The splice asks an OpenAI chat or completions stream for its usage; Anthropic streams
    // and the Responses API's report it unasked (and a converted request asks for it in its
    // conversion).
    ex.usage_splice = usage_splice.filter(|_| provider == Provider::OpenAi && !responses);
    Ok(candidates)
}

/// A Responses API id route: the id map names the one channel and key that created the
/// response, for the token that created it; anything else is a 404 (never a guess, which could
/// reach another tenant's response).
fn by_response_id<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
) -> Result<Candidates, Halt> {
    let w = &conn.w;
    let path = ex.head.route_path(&conn.rbuf);
    let (id, _) = response_route(path).expect("read_request matched the path");
    let token = ex.token.expect("admit authenticated the token");
    let token_key = &w.router.token_cfgs[token].key;
    let channels = w.router.channels.iter().map(|c| &c.cfg);
    let ttl = w.config.server.responses_ttl;
    let now = conn.deadline.recent();
    match w.response_ids.find(id, token_key, channels, now, ttl) {
        Lookup::Found { channel, key } => {
            ex.pinned = Some((channel, key));
            Ok(Candidates::only(channel))
        }
        Lookup::NotFound => {
            let shown: String = String::from_utf8_lossy(id).chars().take(200).collect();
            Err(RelayError::response_not_found(&shown).into())
        }
    }
}
