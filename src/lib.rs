//! ringway: an OpenAI-compatible LLM API relay on monoio (io_uring), one runtime per core.
//!
//! Module map, one concern each (docs/ARCHITECTURE.md has the request-lifecycle chart and the
//! ownership table):
//!
//! | module     | concern |
//! |------------|---------|
//! | `cli`      | command line: run, check-config, demo, mock, top |
//! | `config`   | TOML + env into a validated `Config`; errors name file, line and key |
//! | `worker`   | threads, runtimes (io_uring / epoll fallback), listeners, accept loop |
//! | `relay`    | the request lifecycle, phase by phase, inside one connection task |
//! | `wire`     | HTTP/1.1 framing on httparse: heads, chunked bodies, writers |
//! | `upstream` | DNS, connect, TLS, per-worker connection pool |
//! | `deadline` | a request's layered timeouts on one wheel timer |
//! | `wheel`    | the per-worker hierarchical timing wheel |
//! | `route`    | token auth, channel choice, `/v1/models` |
//! | `provider` | provider body formats: model peek, error JSON |
//! | `bufpool`  | per-worker IO buffer pool |
//! | `monitor`  | counters, health JSON, Prometheus metrics, health log line |

pub mod bufpool;
pub mod busy;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod error;
pub mod log;
pub mod monitor;
pub mod provider;
pub mod relay;
pub mod route;
pub mod top;
pub mod upstream;
pub mod wheel;
pub mod wire;
pub mod worker;
