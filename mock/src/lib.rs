//! `ringway-mock`: a fault-injecting, OpenAI-compatible upstream for ringway's integration
//! tests, the demo (`ringway demo`, `ringway mock`, behind the `ringway` crate's default `demo`
//! feature) and the benchmarks.
//!
//! What it owns: a real HTTP/1.1 server (keep-alive, pipelining, Content-Length and chunked
//! request bodies) whose behaviour is picked by the request's JSON `model` — canned replies,
//! SSE streams with controlled pacing, error statuses, stalls, resets, broken framing and an
//! echo of exactly what arrived (see [`MODELS_DOC`]). Its replies have the shapes of the API it
//! imitates: `chat.completion(.chunk)` on `/v1/chat/completions`, `text_completion` (streamed
//! too) on `/v1/completions`, one embedding per input on `/v1/embeddings`. It also keeps exact
//! connection counters ([`MockHandle::stats`], `GET /mock/stats`) so tests can prove the relay
//! closed its upstream sockets.
//!
//! What it must not do: it is never on the relay's request path, and it deliberately shares no
//! code (it does not depend on the `ringway` crate) with the relay's own wire framing or async
//! runtime. It uses blocking std sockets, one thread per connection, and httparse for heads, so
//! a framing bug in the relay cannot be mirrored (and thereby hidden) by the same bug here.
//!
//! [`spawn_tls`] / `ringway mock --tls-cert --tls-key` serve the same behaviours over TLS
//! (blocking rustls over the same sockets), for the relay's https upstream tests.
//!
//! Modules: `server` (listener, accept loop, connections and their counters), `request`
//! (reading and framing requests), `reply` (writing responses), `behaviours` (the model-name
//! table and the ordinary behaviours), `hostile` (the behaviours that break HTTP on purpose),
//! `bodies` (the canned JSON bodies), `rich` (tool calls, thinking, the request mirror, in-band
//! stream errors and oversized events, in both dialects).

mod behaviours;
mod bodies;
mod hostile;
mod reply;
mod request;
mod rich;
mod server;

#[cfg(test)]
mod test_client;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use rustls::ServerConfig;

use crate::server::{accept_loop, bind, tls_server_config, Shared};

/// The model table printed by `--help` and copied into the README.
pub const MODELS_DOC: &str = "\
Mock upstream models (chosen by the request body's JSON \"model\"):
  mock-fixed             200 JSON, Content-Length framed: chat.completion on /v1/chat/completions,
                         text_completion on /v1/completions, an Anthropic message on
                         /v1/messages (usage input_tokens 9, cache_read_input_tokens 4,
                         output_tokens 7), {\"input_tokens\": N} on /v1/messages/count_tokens
                         (N: a quarter of the bytes of messages and system); on /v1/embeddings one embedding (8 floats, or base64 with
                         \"encoding_format\": \"base64\") per input: \"input\" a string, an array
                         of strings, an array of token ids or an array of those (else 400);
                         usage counts a string's words and a token array's length.
                         \"stream\": true streams like mock-stream-5-0 (except on /v1/embeddings).
                         Any model name not listed here behaves like mock-fixed.
  mock-stream-N-D        200 text/event-stream, chunked: N chat.completion.chunk events
                         (content tok0, tok1, ...; text_completion chunks with text tok0, ... on
                         /v1/completions), one HTTP chunk each, D ms apart (the first at once),
                         then data: [DONE] and the terminating chunk. Ignores \"stream\".
                         With \"stream_options\": {\"include_usage\": true} (here and for
                         mock-fixed streams), like OpenAI: \"usage\":null in every content event,
                         then, before [DONE], one event with \"choices\":[] and usage
                         prompt_tokens 9 (prompt_tokens_details.cached_tokens 4),
                         completion_tokens N, total_tokens 9+N.
                         On /v1/messages: Anthropic's event stream instead — message_start
                         (input_tokens 5, cache_read_input_tokens 4, output_tokens 1),
                         content_block_start, one ping, N text_delta events D ms apart,
                         content_block_stop, message_delta (end_turn, output_tokens N),
                         message_stop; no [DONE].
  mock-stream-nousage-N-D  like mock-stream-N-D, but never sends usage (an upstream that ignores
                         include_usage).
  mock-status-CODE       status CODE (200-599) with an OpenAI error body \"mock error CODE\"
                         (Anthropic's error shape on /v1/messages*); 429 and 503 also send
                         Retry-After: 7.
  mock-huge-error        500 with a 10 MiB (10485760-byte) JSON error body, Content-Length framed.
  mock-reset-body        200 with Content-Length: 100000, 1000 body bytes, then a TCP reset.
  mock-reset-stream      200 SSE head and 2 events, then a TCP reset.
  mock-stall-head-MS     reads the request, waits MS ms, then answers like mock-fixed.
  mock-stall-stream-MS   200 SSE: one event at once, MS ms of silence, one more event, [DONE].
  mock-broken-chunked    200 SSE: one valid chunk, then the non-hex chunk-size line \"zz\", then close.
  mock-echo              200 JSON {\"method\", \"path\", \"headers\": [[name, value], ...] in received
                         order, \"body\": the request body as lossy UTF-8}.
  mock-close             like mock-fixed, plus Connection: close; the mock then closes.
  mock-slow-body-MS      the mock-fixed reply, Content-Length framed, written in 3 pieces MS ms apart.
  mock-refuse-key-SUFFIX 401 invalid_api_key when the Authorization header ends with SUFFIX, else
                         like mock-fixed (one refused key among a channel's keys).
  mock-no-quota-key-SUFFIX  429 insufficient_quota (no Retry-After) when the Authorization header
                         ends with SUFFIX, else like mock-fixed.
  mock-fail-N-STATUS-RA  the first N requests with this exact model name (counted per mock
                         instance) get STATUS (400-599) with an OpenAI error body (Anthropic's
                         on /v1/messages*) and, unless RA is 0, Retry-After: RA; later ones are
                         served like mock-fixed.
  mock-tools             text \"Let me check.\" and one call of get_weather({\"city\":\"Paris\"});
                         streamed when \"stream\": true. Chat: tool_calls (id call_mock_0, the
                         arguments in two deltas under index 0), finish_reason tool_calls, usage
                         prompt 9 (cached 4), completion 7 (streams: when include_usage asks).
                         /v1/messages: thinking (signature sig-mock), text and tool_use
                         (toolu_mock_0) blocks, stop_reason tool_use, usage input_tokens 5,
                         cache_read_input_tokens 4, output_tokens 7; the stream has
                         thinking_delta, signature_delta, text_delta, a ping, two
                         input_json_delta events, message_delta, message_stop.
  mock-mirror            the answer's text (chat content, or the Anthropic text block) is what
                         mock-echo returns: the request as the mock received it; streamed when
                         asked.
  mock-stream-error      a stream that reports an error after its first delta: Anthropic's
                         event: error (overloaded_error) on /v1/messages, an OpenAI data event
                         {\"error\":{...}} elsewhere; then the body ends.
  mock-big-event-BYTES   a stream whose one content delta carries BYTES (at most 64 MiB) bytes of
                         text, in the endpoint's dialect, then a normal end.
  mock-split-usage       on /v1/messages: an Anthropic stream whose message_delta (1234
                         output_tokens) is written in two chunks 50 ms apart, split inside the
                         number; elsewhere one chat chunk and [DONE].
Hostile upstreams (bytes written raw; for the relay's hostile-peer tests):
  mock-no-reason         200 with no reason phrase (\"HTTP/1.1 200\\r\\n\"); -stream: the same as SSE.
  mock-binary-reason     200 with a reason phrase of bytes 0x80-0xFF.
  mock-bare-lf           a whole response with bare LF line ends.
  mock-extra-response    a whole response, then a second (\"INJECTED\") in the same write;
                         mock-extra-later: the second one 50 ms after the first.
  mock-extra-after-stream  a whole SSE stream, then a stray response after its last chunk.
  mock-unasked-101       101 Switching Protocols and websocket bytes.
  mock-length-and-chunked  Content-Length: 5 and chunked framing at once.
  mock-duplicate-length  two different Content-Length values.
  mock-bad-status-NNN    status NNN, any three digits (e.g. 600, 099).
  mock-interim-N         N interim responses (100 / 103 alternating) and the final one, one write.
  mock-endless-interim   103 Early Hints every 10 ms until the peer leaves.
  mock-echo-key-STATUS   STATUS, echoing the received Authorization in the error body and in an
                         x-debug-auth header (STATUS 200: a chat completion with that header).
  mock-bulk-MIB          an SSE stream of MIB MiB: 1 KiB events back to back, 16 per chunk.
  mock-broken-chunked-one-write  one valid SSE chunk and a \"zz\" chunk-size line in one write.
  mock-short-head-stream  \"HTTP/1.1 200\\r\\n\\r\\n\" (17 bytes), then a body delimited by the close.
Other routes: GET /v1/models lists these names (parameterised ones with sample values);
GET /mock/stats returns {\"open_connections\",\"total_connections\",\"requests\"}, where the stats
request itself is counted in requests and its own connection in open_connections.
Every response carries x-mock-request: <n>, the request's sequence number (from 1).
Waits end early when the peer hangs up or the mock is stopped.";

/// Counters as seen at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockStats {
    /// Accepted connections whose socket is not yet closed.
    pub open_connections: u64,
    /// Connections accepted since the mock started.
    pub total_connections: u64,
    /// Requests answered or rejected (every response's `x-mock-request` value is drawn from this).
    pub requests: u64,
}

/// A mock started by [`spawn`]. Dropping it leaves the mock running until the process exits;
/// call [`MockHandle::stop`] to shut it down.
#[derive(Debug)]
pub struct MockHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: thread::JoinHandle<()>,
}

impl MockHandle {
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Stops accepting and closes the listener before returning. Live connections end on their
    /// own: idle ones within about 250 ms, scripted waits within about 50 ms.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.acceptor.join();
    }
}

/// Binds `listen` (port 0 allowed) and serves on background threads.
pub fn spawn(listen: &str) -> io::Result<MockHandle> {
    spawn_with(listen, None)
}

/// Like [`spawn`], but every connection speaks TLS (rustls, TLS 1.2 and 1.3) with the given
/// PEM certificate chain (leaf first) and PEM private key (PKCS#8, SEC1 or PKCS#1). The models
/// behave the same; the reset and stall faults act on the TCP socket under the TLS session.
pub fn spawn_tls(listen: &str, cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<MockHandle> {
    spawn_with(listen, Some(tls_server_config(cert_chain_pem, key_pem)?))
}

fn spawn_with(listen: &str, tls: Option<Arc<ServerConfig>>) -> io::Result<MockHandle> {
    let (listener, addr) = bind(listen)?;
    let shared = Arc::new(Shared::default());
    let acceptor = {
        let shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || accept_loop(&listener, &shared, tls.as_ref()))?
    };
    Ok(MockHandle {
        addr,
        shared,
        acceptor,
    })
}

/// Binds `listen` and serves forever on the calling thread.
pub fn run(listen: &str) -> io::Result<()> {
    let (listener, addr) = bind(listen)?;
    eprintln!("mock upstream listening on {addr}");
    accept_loop(&listener, &Arc::new(Shared::default()), None);
    Ok(())
}

/// Like [`run`], serving TLS with the PEM files at `cert_path` (chain, leaf first) and
/// `key_path`.
pub fn run_tls(listen: &str, cert_path: &str, key_path: &str) -> io::Result<()> {
    let read = |path: &str| {
        std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))
    };
    let tls = tls_server_config(&read(cert_path)?, &read(key_path)?)?;
    let (listener, addr) = bind(listen)?;
    eprintln!("mock upstream listening on {addr} (TLS)");
    accept_loop(&listener, &Arc::new(Shared::default()), Some(&tls));
    Ok(())
}
