//! TLS upstreams, end to end: the real `ringway` binary in front of the mock upstream in TLS
//! mode (`ringway_mock::spawn_tls` with the test-only certificates in `tests/certs/`), through an
//! `https://127.0.0.1:PORT` channel that trusts the test CA via `ca_file`. Every relay test runs
//! twice, once on io_uring and once with `RINGWAY_FORCE_EPOLL=1`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

both_drivers! {
    non_stream_chat_over_tls_is_byte_identical,
    streamed_chat_over_tls_arrives_chunk_by_chunk,
    upstream_tls_connection_is_reused,
    untrusted_certificate_is_502_and_never_pooled_across_trust,
    echo_over_tls_shows_host_and_channel_key,
}

fn certs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/certs")
}

fn cert(name: &str) -> Vec<u8> {
    std::fs::read(certs().join(name)).unwrap_or_else(|e| panic!("read tests/certs/{name}: {e}"))
}

/// The mock upstream serving TLS with the test server certificate; stopped on drop.
struct TlsMock {
    addr: SocketAddr,
    handle: Option<ringway_mock::MockHandle>,
}

impl TlsMock {
    fn start() -> TlsMock {
        let handle =
            ringway_mock::spawn_tls("127.0.0.1:0", &cert("server.pem"), &cert("server.key"))
                .expect("start the TLS mock upstream");
        TlsMock {
            addr: handle.addr,
            handle: Some(handle),
        }
    }

    fn stats(&self) -> ringway_mock::MockStats {
        self.handle.as_ref().expect("mock running").stats()
    }

    fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsMock {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

/// A config whose only channel `tls` sends everything to `mock` over TLS, trusting the test CA
/// through `ca_file` (an absolute path: the config file itself lives in the temp dir).
fn tls_config(mock: &TlsMock) -> ConfigBuilder {
    let ca = certs().join("ca.pem");
    ConfigBuilder::new(mock.addr)
        .without_default_channel()
        .channel(
            "tls",
            &mock.base_url(),
            UPSTREAM_KEY,
            &["*"],
            &format!("ca_file = {:?}", ca.to_str().expect("UTF-8 path")),
        )
}

/// A parsed response from a direct TLS exchange with the mock.
struct Direct {
    status: u16,
    body: Vec<u8>,
}

/// Sends `request` (which must ask for `connection: close`) straight to the TLS mock, trusting
/// only the test CA, and reads the whole answer up to the mock's close_notify.
fn tls_direct(addr: SocketAddr, request: &[u8]) -> Direct {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&cert("ca.pem")) {
        roots
            .add(c.expect("ca.pem parses"))
            .expect("ca.pem is a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect mock");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request).expect("send to the TLS mock");
    tls.flush().unwrap();
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .expect("the TLS mock ends with close_notify");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Direct {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "bad response head {other:?}: {:?}",
            String::from_utf8_lossy(raw)
        ),
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let rest = &raw[len..];
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)
    } else {
        let n: usize = header("content-length")
            .expect("content-length")
            .parse()
            .unwrap();
        rest[..n].to_vec()
    };
    Direct {
        status: parsed.code.unwrap(),
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16)
            .expect("hex chunk size");
        rest = &rest[eol + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n");
        rest = &rest[size + 2..];
    }
}

fn closing(model: &str, stream: bool) -> Vec<u8> {
    post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[("connection", "close")],
        &chat_body(model, stream),
    )
}

// ---------------------------------------------------------------------------------------------

fn non_stream_chat_over_tls_is_byte_identical(driver: Driver) {
    let mock = TlsMock::start();
    let relay = start(driver, &tls_config(&mock));
    let direct = tls_direct(mock.addr, &closing("mock-fixed", false));
    assert_eq!(direct.status, 200);

    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert_eq!(r.body, direct.body, "relayed body differs from the mock's");
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    r.request_id();
    assert_eq!(r.json()["model"], "mock-fixed");
}

fn streamed_chat_over_tls_arrives_chunk_by_chunk(driver: Driver) {
    let mock = TlsMock::start();
    let relay = start(driver, &tls_config(&mock));
    // The relay asks the upstream for usage on the client's behalf (see usage_accounting).
    let mut asking = chat_asking_usage("mock-stream-5-20");
    let at = asking.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    asking.splice(at + 2..at + 2, b"connection: close\r\n".iter().copied());
    let direct = tls_direct(mock.addr, &asking);
    assert_eq!(direct.status, 200);
    assert!(direct.body.ends_with(b"data: [DONE]\n\n"));

    let mut c = relay.client();
    let sent = Instant::now();
    c.send(&chat("mock-stream-5-20", true));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "body {:?}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "content-type {:?}",
        r.header("content-type")
    );
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.text(),
        without_usage_events(&String::from_utf8_lossy(&direct.body)),
        "de-chunked relayed stream differs from the mock's"
    );
    assert_eq!(r.text().matches("chat.completion.chunk").count(), 5);
    // 20 ms apart upstream: the relay passes them on as they come, not as one blob.
    assert!(r.chunks.len() >= 2, "one chunk for the whole stream");
    assert!(r.arrival(sent, b"tok0") < r.arrival(sent, b"data: [DONE]"));

    // Paced far apart, each event must reach the client long before the next is sent.
    let sent = Instant::now();
    c.send(&chat("mock-stream-3-600", true));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let (first, second) = (r.arrival(sent, b"tok0"), r.arrival(sent, b"tok1"));
    assert!(
        first < Duration::from_millis(500),
        "first event after {first:?}"
    );
    assert!(
        second >= first + Duration::from_millis(300),
        "events not paced: tok0 at {first:?}, tok1 at {second:?}"
    );
    assert!(r.body.ends_with(b"data: [DONE]\n\n"));
}

fn upstream_tls_connection_is_reused(driver: Driver) {
    let mock = TlsMock::start();
    let relay = start(driver, &tls_config(&mock).workers(1));
    let expected = tls_direct(mock.addr, &closing("mock-fixed", false)).body;
    let baseline = mock.stats().total_connections;

    // Sequential requests on fresh client connections, and several on one keep-alive client
    // connection: all over the one pooled upstream TLS connection.
    for i in 0..3 {
        let r = relay.roundtrip(&chat("mock-fixed", false));
        assert_eq!(r.status, 200, "request {i}: {:?}", r.text());
        assert_eq!(r.body, expected);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = relay.client();
    for i in 0..3 {
        c.send(&chat("mock-stream-3-0", true));
        let r = c.read_final_response();
        assert_eq!(r.status, 200, "keep-alive request {i}: {:?}", r.text());
        assert!(r.body.ends_with(b"data: [DONE]\n\n"));
    }
    let stats = mock.stats();
    assert_eq!(
        stats.total_connections - baseline,
        1,
        "upstream TLS connections were not reused: {stats:?}"
    );
    assert_eq!(stats.open_connections, 1, "{stats:?}");
    let health = relay.health();
    assert_eq!(
        json_u64(&health, "upstream_connections_idle"),
        1,
        "{health}"
    );
}

fn untrusted_certificate_is_502_and_never_pooled_across_trust(driver: Driver) {
    let mock = TlsMock::start();
    // Same endpoint twice: `tls` trusts the test CA, `plain-trust` only the webpki roots. No
    // failover: the untrusting channel's own failure is what is tested.
    let cfg = tls_config(&mock)
        .workers(1)
        .section("[retry]\nattempts = 0")
        .channel(
            "plain-trust",
            &mock.base_url(),
            "sk-other",
            &["untrusted-model"],
            "priority = 1",
        );
    let relay = start(driver, &cfg);

    // Warm the pool through the trusting channel first: its connection must not be lent to
    // the channel that does not trust the certificate.
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(r.status, 200, "trusted channel: {:?}", r.text());

    for i in 0..2 {
        let sent = Instant::now();
        let r = relay.roundtrip(&chat("untrusted-model", false));
        let e = assert_error_shape(&r, 502, Some("upstream_connect_failed"));
        r.request_id();
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "attempt {i}: an untrusted certificate took {:?}",
            sent.elapsed()
        );
        let message = e["message"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            message.contains("tls") || message.contains("certificate"),
            "message should say why: {e}"
        );
    }
    // The mock saw the failed handshakes close (exact count: the pooled one stays).
    assert!(
        wait_for(Duration::from_secs(5), || mock.stats().open_connections
            == 1)
        .is_some(),
        "{:?}",
        mock.stats()
    );

    // The trusting channel still works afterwards.
    let r = relay.roundtrip(&chat("mock-fixed", false));
    assert_eq!(
        r.status,
        200,
        "trusted channel after failures: {:?}",
        r.text()
    );
}

fn echo_over_tls_shows_host_and_channel_key(driver: Driver) {
    let mock = TlsMock::start();
    let relay = start(driver, &tls_config(&mock));
    let body = chat_body("mock-echo", false);
    let r = relay.roundtrip(&post_json("/v1/chat/completions", Some(TOKEN), &[], &body));
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let echo = parse_echo(&r);
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/v1/chat/completions");
    assert_eq!(echo.one("host"), mock.addr.to_string());
    assert_eq!(echo.one("authorization"), format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(echo.one("x-request-id"), r.request_id());
    assert_eq!(echo.body, body, "body changed on the way upstream");
    for (name, value) in &echo.headers {
        assert!(
            !value.contains(TOKEN),
            "client token leaked upstream in {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The mock's TLS mode on its own (no relay, so no io driver involved).

#[test]
#[cfg_attr(
    not(feature = "demo"),
    ignore = "runs `ringway mock`/`demo`: needs the demo feature"
)]
fn mock_cli_serves_tls() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cert_path, key_path) = (certs().join("server.pem"), certs().join("server.key"));
    let mut child = std::process::Command::new(bin())
        .args(["mock", "--listen", &listen, "--tls-cert"])
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ringway mock");
    let addr: SocketAddr = listen.parse().unwrap();
    let up = wait_for(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
    let result = std::panic::catch_unwind(|| {
        assert!(up.is_some(), "ringway mock --tls-cert did not listen");
        let r = tls_direct(addr, &closing("mock-fixed", false));
        assert_eq!(r.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["object"], "chat.completion");
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // The TLS flags go together, and a bad key file is a clean error.
    let (code, _, stderr) = run_bin(
        &[
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, _, stderr) = run_bin(
        &[
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            cert_path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("private key"), "{stderr}");
}

#[test]
fn tls_mock_counts_connections_exactly() {
    let mock = TlsMock::start();
    // A full exchange, then a client that hangs up mid-handshake, then one that never speaks.
    let r = tls_direct(mock.addr, &closing("mock-echo", false));
    assert_eq!(r.status, 200);
    let mut half = TcpStream::connect(mock.addr).unwrap();
    half.write_all(b"\x16\x03\x01\x00\x05hello").unwrap();
    drop(half);
    let silent = TcpStream::connect(mock.addr).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || mock.stats().total_connections
            == 3)
        .is_some()
    );
    drop(silent);
    assert!(
        wait_for(Duration::from_secs(5), || mock.stats().open_connections
            == 0)
        .is_some(),
        "{:?}",
        mock.stats()
    );
    assert_eq!(mock.stats().total_connections, 3);
}
