//! Phase 3, `route`: the `model` of the request, and the channels that may serve it, in the
//! order `forward` tries them.
//!
//! Owns: finding `model` in the body without building a JSON tree (the body goes upstream
//! byte for byte), the token's model allow-list, and the candidate list
//! ([`Candidates`](crate::route::Candidates), priority tiers then weight) among the channels
//! that can serve the endpoint (`RelayKind::served_by`): chat completions and `/v1/messages`
//! on channels of either provider — converted when the channel speaks the other dialect —,
//! `count_tokens` on Anthropic channels only, the other OpenAI endpoints on OpenAI-compatible
//! ones.
//! Error handling: 400 `missing_model` / `invalid_json`, 403 `model_not_allowed`, 404
//! `model_not_found` (also when only channels the endpoint cannot use serve the model), 503
//! `no_healthy_channel` (every channel serving the model is cooling down or out of keys).
//! Must not: allocate on the passthrough path, or contact an upstream.

use crate::config::Provider;
use crate::error::RelayError;
use crate::provider;
use crate::route::{Candidates, RouteError};

use super::exchange::{Endpoint, Exchange, RelayKind};
use super::{Conn, Halt};
use crate::tls_server::ClientStream;

pub fn route<S: ClientStream>(
    conn: &mut Conn<S>,
    ex: &mut Exchange<'_>,
) -> Result<Candidates, Halt> {
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
    let candidates = match w
        .router
        .candidates(token, &model, served_by, &w.route_state)
    {
        Ok(c) => c,
        Err(RouteError::ModelNotAllowed) => {
            return Err(RelayError::model_not_allowed(&model).into())
        }
        Err(RouteError::ModelNotFound) => return Err(RelayError::model_not_found(&model).into()),
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
    // The splice asks an OpenAI stream for its usage; Anthropic streams report it unasked (and
    // a converted request asks for it in its conversion).
    ex.usage_splice = usage_splice.filter(|_| provider == Provider::OpenAi);
    Ok(candidates)
}
