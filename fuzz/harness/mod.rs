//! The fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/fuzz_targets/` and by the corpus
//! replay test `tests/fuzz_corpus.rs`, so a replayed seed runs exactly the checks the fuzzer ran.
//!
//! Each `pub fn <target>(data: &[u8])` takes one input and panics when an invariant breaks. They
//! use only ringway's public API (plus httparse and serde_json as independent references).
//! docs/FUZZING.md lists what each one asserts.

#![allow(dead_code)]

pub mod chunked;
pub mod convert;
pub mod heads;
pub mod json;
pub mod relay;

pub use chunked::{chunked_decode, chunked_encode};
pub use convert::{
    convert_error, convert_request_from_anthropic, convert_request_to_anthropic,
    convert_response_from_anthropic, convert_response_to_anthropic, convert_stream_from_anthropic,
    convert_stream_to_anthropic, sse_parse,
};
pub use heads::{request_head, response_head};
pub use json::{model_peek, sse_scan, usage_scan};
pub use relay::{relay_converted, relay_response};

/// One harness: panics when an invariant breaks.
pub type Harness = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked_decode", chunked_decode),
    ("chunked_encode", chunked_encode),
    ("usage_scan", usage_scan),
    ("sse_scan", sse_scan),
    ("model_peek", model_peek),
    ("relay_response", relay_response),
    ("relay_converted", relay_converted),
    ("sse_parse", sse_parse),
    ("convert_request_to_anthropic", convert_request_to_anthropic),
    (
        "convert_request_from_anthropic",
        convert_request_from_anthropic,
    ),
    (
        "convert_response_from_anthropic",
        convert_response_from_anthropic,
    ),
    (
        "convert_response_to_anthropic",
        convert_response_to_anthropic,
    ),
    (
        "convert_stream_from_anthropic",
        convert_stream_from_anthropic,
    ),
    ("convert_stream_to_anthropic", convert_stream_to_anthropic),
    ("convert_error", convert_error),
];

/// A deterministic stream of split sizes drawn from a few input bytes, so that one input always
/// exercises the same read boundaries (reproducible crashes) while the fuzzer can vary them.
pub struct Splits {
    state: u32,
    small: bool,
}

impl Splits {
    pub fn new(seed: &[u8]) -> Splits {
        let mut state = 0x9e37_79b9u32;
        for &b in seed {
            state = (state ^ b as u32).wrapping_mul(0x0100_0193);
        }
        let small = seed.first().is_some_and(|b| b & 1 == 1);
        Splits {
            state: state | 1,
            small,
        }
    }

    /// The next piece length, in `1..=max(1, left)`.
    pub fn next(&mut self, left: usize) -> usize {
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let cap = if self.small { 8 } else { 256 };
        let n = 1 + (self.state as usize % cap);
        n.min(left.max(1))
    }

    /// Cut `data` into consecutive pieces; every piece non-empty (an empty input gives none).
    pub fn pieces<'a>(&mut self, data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let n = self.next(data.len() - pos);
            out.push(&data[pos..pos + n]);
            pos += n;
        }
        out
    }
}

/// `data` split as `(seed, rest)`: the first `n` bytes steer the harness, the rest is the input.
pub fn split_seed(data: &[u8], n: usize) -> (&[u8], &[u8]) {
    data.split_at(n.min(data.len()))
}
