//! Hot-path pieces in isolation: head parsing, chunked decoding, SSE handling, the `model`
//! peek, usage scanning, and pool checkout/checkin.
//!
//! `cargo bench --bench hotpath`

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringway::internals as provider;
use ringway::internals::{self as wire, ChunkedDecoder, RequestHead, ResponseHead};

const REQUEST: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: OpenAI/Python 1.54.0\r\nAccept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-lab-client-7f3a9c2e5b8d4f1a6e0c9b7d3a5f8e2c\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.0\r\nContent-Length: 118\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 02:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 388\r\nConnection: keep-alive\r\nopenai-processing-ms: 312\r\nx-request-id: req_abc\r\n\r\n";
const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}"#;
const LONG_BODY_PREFIX: &str =
    r#"{"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":""#;

fn sse_stream(events: usize) -> Vec<u8> {
    let ev = br#"data: {"id":"chatcmpl-sse","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}

"#;
    let mut out = Vec::new();
    for _ in 0..events {
        out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
        out.extend_from_slice(ev);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let mut head = RequestHead::default();
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("request_head", |b| {
        b.iter(|| wire::parse_request(black_box(REQUEST), &mut head).unwrap())
    });
    let mut resp = ResponseHead::default();
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    g.bench_function("response_head", |b| {
        b.iter(|| wire::parse_response(black_box(RESPONSE), &mut resp, false).unwrap())
    });
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    g.bench_function("model_peek_small_body", |b| {
        b.iter(|| provider::peek_model(black_box(BODY)).unwrap())
    });
    // A 64 KiB conversation with the model at the end: the peek must skip the rest quickly.
    let long = format!(
        "{LONG_BODY_PREFIX}{}\"}}],\"model\":\"gpt-4o\"}}",
        "lorem ipsum \\\"quoted\\\" ".repeat(3000)
    );
    g.throughput(Throughput::Bytes(long.len() as u64));
    g.bench_function("model_peek_64k_body", |b| {
        b.iter(|| provider::peek_model(black_box(long.as_bytes())).unwrap())
    });
    g.finish();
}

fn streaming(c: &mut Criterion) {
    let stream = sse_stream(64);
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("chunked_decode_64_events", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::new();
            let mut n = 0;
            d.decode(black_box(&stream), |r| n += r.len()).unwrap();
            n
        })
    });
    // What the relay does per upstream read: de-chunk in place, then write its own chunk
    // header into the headroom in front of the data.
    let mut buf = vec![0u8; wire::CHUNK_HEADROOM];
    buf.extend_from_slice(&stream[..stream.len() / 8]);
    let template = buf.clone();
    g.throughput(Throughput::Bytes(template.len() as u64));
    g.bench_function("dechunk_and_reframe_read", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&template);
            let mut d = ChunkedDecoder::new();
            let mut write_at = wire::CHUNK_HEADROOM;
            wire::dechunk_in_place(&mut d, &mut buf, wire::CHUNK_HEADROOM, &mut write_at).unwrap();
            wire::write_chunk_header_before(
                &mut buf,
                wire::CHUNK_HEADROOM,
                write_at - wire::CHUNK_HEADROOM,
            )
        })
    });
    let event = &stream[4..200];
    g.throughput(Throughput::Bytes(event.len() as u64));
    g.bench_function("sse_usage_scan_per_event", |b| {
        b.iter(|| provider::scan_usage(black_box(event)))
    });
    g.finish();
}

fn pool(c: &mut Criterion) {
    use ringway::internals::Monitor;
    use ringway::internals::{Pool, Stream};
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let (_server, _) = listener.accept().await.unwrap();
        let monitor = Monitor::new(1, 100, 100, vec![], vec![]);
        let pool = Pool::new(1, 64, Duration::from_secs(90), monitor, 0);
        let now = Instant::now();
        pool.put_back(pool.lend(Stream::Plain(client), 0, false), now);
        c.bench_function("pool_checkout_checkin", |b| {
            b.iter(|| {
                let conn = pool.take(0, now).unwrap();
                pool.put_back(conn, now);
            })
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = parsing, streaming, pool
}
criterion_main!(benches);
