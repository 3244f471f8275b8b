//! End to end, in process: one relay worker on loopback in front of the mock upstream, driven
//! by a keep-alive client. Reports time per relayed request (criterion's figure) — the inverse
//! is requests/s on one worker including the client's and the mock's work on the same machine.
//!
//! `cargo bench --bench relay_e2e`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TOKEN: &str = "sk-bench-client";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay() -> std::net::SocketAddr {
    let mock = ringway_mock::spawn("127.0.0.1:0").unwrap();
    let port = free_port();
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
workers = 1
[[channels]]
name = "mock"
provider = "openai"
base_url = "http://{}"
keys = ["sk-upstream"]
models = ["mock-*", "gpt-4o-mini"]
[[tokens]]
name = "bench"
key = "{TOKEN}"
models = ["*"]
"#,
        mock.addr
    );
    std::mem::forget(mock);
    let config = ringway::parse(&toml, Path::new("<bench>")).unwrap();
    let running = ringway::start(config).unwrap();
    std::mem::forget(running);
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn request(model: &str, stream: bool) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"Say hello in one short sentence."}}]}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Read one response: Content-Length framed, or chunked up to the last chunk.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.clear();
    let mut tmp = [0u8; 16384];
    loop {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "relay closed the connection");
        buf.extend_from_slice(&tmp[..n]);
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end])
                .unwrap()
                .to_ascii_lowercase();
            if let Some(cl) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
            {
                if buf.len() >= head_end + 4 + cl.trim().parse::<usize>().unwrap() {
                    return;
                }
            } else if buf.ends_with(b"0\r\n\r\n") {
                return;
            }
        }
    }
}

fn relay(c: &mut Criterion) {
    let addr = start_relay();
    let mut g = c.benchmark_group("relay_e2e_one_worker");
    g.throughput(Throughput::Elements(1));
    for (name, model, stream) in [
        ("non_stream_chat", "mock-fixed", false),
        ("stream_chat_8_events", "mock-stream-8-0", true),
    ] {
        let req = request(model, stream);
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        let mut buf = Vec::with_capacity(65536);
        g.bench_function(name, |b| {
            b.iter(|| {
                conn.write_all(&req).unwrap();
                read_response(&mut conn, &mut buf);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = relay
}
criterion_main!(benches);
