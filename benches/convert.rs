//! CPU per SSE event: a converted stream (Anthropic → OpenAI chunks, OpenAI chunks → Anthropic
//! events) against the passthrough pipeline's per-read work (de-chunk in place, re-frame, the
//! usage-event filter, the usage and content scans). Each iteration handles one upstream read
//! of 64 text-delta events, so the figure per event is the reported time / 64.
//!
//! `cargo bench --bench convert`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringway::internals::convert::{AnthropicToOpenAiStream, OpenAiToAnthropicStream};
use ringway::internals::provider::{content_bytes, scan_usage, UsageEvents};
use ringway::internals::{
    dechunk_in_place, write_chunk_header_before, ChunkedDecoder, CHUNK_HEADROOM,
};

const EVENTS: usize = 64;

const OPENAI_EVENT: &[u8] = br#"data: {"id":"chatcmpl-sse","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}

"#;
const ANTHROPIC_START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const ANTHROPIC_EVENT: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"tok\"}}\n\n";

fn repeated(event: &[u8]) -> Vec<u8> {
    event.repeat(EVENTS)
}

fn chunked(events: &[u8], event_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events.chunks(event_len) {
        out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
        out.extend_from_slice(ev);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One upstream read as the relay holds it: `EVENTS` copies of `event`, one chunk each, behind
/// the chunk-header headroom.
fn one_read(event: &[u8]) -> Vec<u8> {
    let mut read = vec![0u8; CHUNK_HEADROOM];
    read.extend_from_slice(&chunked(&repeated(event), event.len()));
    read
}

/// What relay::convert does with one read: de-chunk in place, convert the events into `out`
/// behind the headroom, scan the content, frame the chunk.
fn converted_read(
    template: &[u8],
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    mut convert: impl FnMut(&[u8], &mut Vec<u8>) -> bool,
) -> usize {
    buf.clear();
    buf.extend_from_slice(template);
    let mut decoder = ChunkedDecoder::new();
    let mut write_at = CHUNK_HEADROOM;
    dechunk_in_place(&mut decoder, buf, CHUNK_HEADROOM, &mut write_at).unwrap();
    out.clear();
    out.resize(CHUNK_HEADROOM, 0);
    assert!(convert(&buf[CHUNK_HEADROOM..write_at], out));
    black_box(content_bytes(&out[CHUNK_HEADROOM..]));
    let len = out.len() - CHUNK_HEADROOM;
    black_box(write_chunk_header_before(out, CHUNK_HEADROOM, len));
    out.len()
}

fn per_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_64_events_per_read");
    g.throughput(Throughput::Elements(EVENTS as u64));

    // Passthrough: what relay::stream does with one read (OpenAI → OpenAI).
    let template = one_read(OPENAI_EVENT);
    let mut buf = template.clone();
    let mut filter = UsageEvents::new(false);
    g.bench_function("passthrough_openai", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&template);
            let mut decoder = ChunkedDecoder::new();
            let mut write_at = CHUNK_HEADROOM;
            dechunk_in_place(&mut decoder, &mut buf, CHUNK_HEADROOM, &mut write_at).unwrap();
            let f = filter.filter(&mut buf[CHUNK_HEADROOM..write_at], false);
            let data = &buf[CHUNK_HEADROOM..CHUNK_HEADROOM + f.keep];
            black_box(scan_usage(data));
            black_box(content_bytes(data));
            let end = CHUNK_HEADROOM + f.keep;
            black_box(write_chunk_header_before(&mut buf, CHUNK_HEADROOM, f.keep));
            buf.truncate(end);
            buf.extend_from_slice(b"\r\n");
            black_box(buf.len())
        })
    });

    // Anthropic events → OpenAI chunks (a chat client on an Anthropic channel).
    let mut out = Vec::with_capacity(16 * 1024);
    let mut conv = AnthropicToOpenAiStream::new(true, 1_700_000_000, 1 << 20);
    conv.feed(ANTHROPIC_START, &mut out).unwrap();
    let template = one_read(ANTHROPIC_EVENT);
    g.bench_function("convert_anthropic_to_openai", |b| {
        b.iter(|| {
            converted_read(&template, &mut buf, &mut out, |i, o| {
                conv.feed(i, o).is_ok()
            })
        })
    });

    // OpenAI chunks → Anthropic events (an Anthropic client on an OpenAI-compatible channel).
    let mut conv = OpenAiToAnthropicStream::new(1 << 20);
    conv.feed(OPENAI_EVENT, &mut out).unwrap();
    let template = one_read(OPENAI_EVENT);
    g.bench_function("convert_openai_to_anthropic", |b| {
        b.iter(|| {
            converted_read(&template, &mut buf, &mut out, |i, o| {
                conv.feed(i, o).is_ok()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
