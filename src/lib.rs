//! ringway: an OpenAI-compatible LLM API gateway on monoio (io_uring), one runtime per core.
//!
//! The public surface is small: [`main`] (the command line), [`load`] / [`parse`] a
//! [`Config`], and [`start`] the relay ([`Running`]). Everything else is private to the crate,
//! so the compiler reports what is unused. [`internals`] re-exports the pure parts the
//! project's own benches and fuzz targets measure; it is not an API.
//!
//! Module map, one concern each (docs/ARCHITECTURE.md has the request-lifecycle chart and the
//! ownership table):
//!
//! | module     | concern |
//! |------------|---------|
//! | `cli`      | command line: run (with `--takeover`), check-config, demo, mock, top |
//! | `server`   | a validated config into running workers |
//! | `config`   | TOML + env into a validated `Config`; errors name file, line and key; the timeout layers |
//! | `worker`   | threads, runtimes (io_uring / epoll fallback), the accept loop |
//! | `listen`   | the listen address (refused when taken), listeners, the fd budget |
//! | `takeover` | handing the listening sockets to a new process (`--takeover`, SIGUSR2) |
//! | `context`  | what one worker's requests share (`Worker`) |
//! | `idle`     | a worker's idle client connections, oldest first |
//! | `relay`    | the request lifecycle: read_request → admit → route → forward → respond → finish |
//! | `error`    | the one error type, rendered in one place |
//! | `wire`     | HTTP/1.1 framing on httparse: heads, chunked bodies, writers |
//! | `upstream` | connecting (DNS, TCP, TLS), the per-worker pool, per-channel runtime |
//! | `tls_server` | TLS for clients (`[server.tls]`): the rustls server config, the TLS client stream |
//! | `deadline` | a request's layered timeouts on one wheel timer |
//! | `wheel`    | the per-worker hierarchical timing wheel |
//! | `route`    | token auth, candidate channels, `/v1/models` |
//! | `health`   | channel cooldowns, probes and keys out of rotation, shared by all workers |
//! | `responses_ids` | which channel, key and token created each Responses API id; bounded, expiring |
//! | `provider` | provider adapters: paths, auth, body plans, error bodies, usage; the conversion between the OpenAI and Anthropic dialects |
//! | `bufpool`  | per-worker IO buffer pool |
//! | `monitor`  | counters, health JSON, Prometheus metrics, health log line |
//! | `busy`     | opt-in busy polling |
//! | `state`    | state that survives restarts: the quota ledger (`QuotaStore`, file-backed) |
//! | `lifecycle`| serving → draining across threads; worker heartbeats |
//! | `signals`  | SIGTERM / SIGINT / SIGHUP / SIGUSR2, blocked everywhere, taken by one thread |
//! | `notify`   | the systemd notify protocol (`$NOTIFY_SOCKET`) |

mod access_log;
mod bufpool;
mod busy;
mod cli;
mod config;
mod context;
mod deadline;
#[cfg(feature = "demo")]
mod demo;
mod error;
mod health;
mod idle;
mod lifecycle;
mod limits;
mod listen;
mod log;
mod model_list;
mod monitor;
mod notify;
mod provider;
mod relay;
mod reload;
mod responses_ids;
mod route;
mod server;
mod signals;
mod state;
mod takeover;
mod tls_server;
mod top;
mod upstream;
mod wheel;
mod wire;
mod worker;

pub use cli::main;
pub use config::{load, parse, Config, ConfigError};
pub use server::{start, Running};

/// The pure parts the project's benches and fuzz targets drive directly. Not an API: names
/// and signatures follow the code.
#[doc(hidden)]
pub mod internals {
    pub use crate::monitor::Monitor;
    pub use crate::provider::{model_name, peek_model, scan_usage, ModelField, Usage};
    pub use crate::upstream::{Pool, Stream};
    pub use crate::wheel::{Timer, Wheel};
    pub use crate::wire::{
        dechunk_in_place, parse_request, parse_response, write_chunk_header_before, BodyKind,
        ChunkedDecoder, RequestHead, ResponseHead, CHUNK_HEADROOM, LAST_CHUNK,
    };

    /// HTTP/1.1 framing, whole, for the fuzz harness's own checks.
    pub mod wire {
        pub use crate::wire::*;
    }

    /// Body formats, for the fuzz harness.
    pub mod provider {
        pub use crate::error::json_string;
        pub use crate::provider::{
            content_bytes, is_usage_event, peek_request, UsageEvents, MAX_USAGE_EVENT,
        };
        pub use crate::provider::{model_name, peek_model, scan_usage, ModelField, Usage};
    }

    /// Protocol conversion (Anthropic Messages ⇄ OpenAI chat) and SSE framing, for the golden
    /// tests and the fuzz harness.
    pub mod convert {
        pub use crate::provider::anthropic::*;
        pub use crate::provider::sse_parser::*;
    }
}
