//! Replays the fuzz seed corpus through the fuzz harnesses, as an ordinary test.
//!
//! Every file under `fuzz/corpus/<target>/` goes through `fuzz/harness` — the same code the
//! cargo-fuzz targets run (docs/FUZZING.md) — so a seed that once crashed a target stays a
//! regression test, and the corpus cannot rot. A missing or empty corpus directory fails.
//!
//! All of `relay_response`'s corpus is replayed too: it runs against an in-process relay (one
//! worker) and a scripted upstream thread, about a millisecond per file, and ends by checking
//! that the relay is healthy and holds no request, client or upstream connection.

#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Instant;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.expect("read corpus directory").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    files
}

/// Names the corpus file whose replay panicked.
struct Current<'a>(&'a PathBuf);

impl Drop for Current<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fuzz corpus file that failed: {}", self.0.display());
        }
    }
}

fn replay(target: &str) {
    let run = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a harness for every target");
    let files = corpus(target);
    let started = Instant::now();
    for (path, bytes) in &files {
        let _current = Current(path);
        run(bytes);
    }
    eprintln!(
        "{target}: {} corpus files in {:?}",
        files.len(),
        started.elapsed()
    );
}

#[test]
fn every_target_has_a_corpus_and_a_test() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, _) in harness::TARGETS {
        assert!(dir.join(name).is_dir(), "no corpus for target {name}");
        let target = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(target.is_file(), "no fuzz target file for {name}");
    }
}

#[test]
fn request_head() {
    replay("request_head");
}

#[test]
fn response_head() {
    replay("response_head");
}

#[test]
fn chunked_decode() {
    replay("chunked_decode");
}

#[test]
fn chunked_encode() {
    replay("chunked_encode");
}

#[test]
fn usage_scan() {
    replay("usage_scan");
}

#[test]
fn sse_scan() {
    replay("sse_scan");
}

#[test]
fn model_peek() {
    replay("model_peek");
}

#[test]
fn relay_response() {
    replay("relay_response");
    harness::relay::relay().check_idle();
}

#[test]
fn relay_converted() {
    replay("relay_converted");
    harness::relay::relay().check_idle();
}

#[test]
fn sse_parse() {
    replay("sse_parse");
}

#[test]
fn convert_request_to_anthropic() {
    replay("convert_request_to_anthropic");
}

#[test]
fn convert_request_from_anthropic() {
    replay("convert_request_from_anthropic");
}

#[test]
fn convert_response_from_anthropic() {
    replay("convert_response_from_anthropic");
}

#[test]
fn convert_response_to_anthropic() {
    replay("convert_response_to_anthropic");
}

#[test]
fn convert_stream_from_anthropic() {
    replay("convert_stream_from_anthropic");
}

#[test]
fn convert_stream_to_anthropic() {
    replay("convert_stream_to_anthropic");
}

#[test]
fn convert_error() {
    replay("convert_error");
}
