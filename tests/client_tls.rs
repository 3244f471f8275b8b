//! TLS for clients (`[server.tls]`), end to end: the real `ringway` binary serving TLS with
//! certificates made inside each test (a test CA and a leaf signed by it, `rcgen`), reached by
//! a rustls client on plain std threads. Chat (whole and streamed) and health over TLS, ALPN,
//! a plain-HTTP client on the TLS port, a stalled handshake, a certificate renewed by SIGHUP,
//! and configs with a bad certificate or key.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

both_drivers! {
    chat_stream_and_health_over_tls,
    idle_tls_connection_serves_again_and_a_departed_client_is_noticed,
}

/// A test CA and the leaf certificates it signs.
struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

/// A leaf certificate (for `localhost` and 127.0.0.1) and its key, as PEM and DER.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringway test CA");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { key, cert }
    }

    fn leaf(&self, common_name: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        Leaf {
            // The chain as servers are given it: leaf first, then the issuer.
            chain_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config_for(rustls::DEFAULT_VERSIONS)
    }

    fn client_config_for(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .expect("trust the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A directory of its own for one test's certificate files (removed on drop).
struct CertDir(PathBuf);

impl CertDir {
    fn new() -> CertDir {
        let dir = temp_path("tls", "d");
        std::fs::create_dir_all(&dir).expect("create the cert dir");
        CertDir(dir)
    }

    /// Writes `leaf` as `chain.pem` and `key.pem` (over any previous files).
    fn install(&self, leaf: &Leaf) {
        std::fs::write(self.0.join("chain.pem"), &leaf.chain_pem).expect("write chain.pem");
        std::fs::write(self.0.join("key.pem"), &leaf.key_pem).expect("write key.pem");
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_string()
    }

    fn tls_section(&self) -> String {
        format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n",
            self.path("chain.pem"),
            self.path("key.pem")
        )
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the relay with its handshake done (bounded by socket timeouts).
fn tls_connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(READ_TIMEOUT))?;
    tcp.set_write_timeout(Some(READ_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The leaf certificate the relay served on this connection.
fn served_leaf(tls: &TlsStream) -> Vec<u8> {
    tls.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the relay sent a certificate")
        .to_vec()
}

fn tls_client(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Client<TlsStream> {
    Client::over(tls_connect(addr, config).expect("TLS connection to the relay"))
}

/// Health over TLS, or None while the relay is not up.
fn tls_health(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Option<serde_json::Value> {
    let mut c = Client::over(tls_connect(addr, config).ok()?);
    c.stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    c.try_send(&get("/api/monitor/health", &[("connection", "close")]))
        .ok()?;
    let r = c.try_read_response().ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).ok())?
}

/// Starts a relay in front of `mock` serving TLS from `dir` (which must hold the files).
fn start_tls_relay(
    mock: &Mock,
    dir: &CertDir,
    ca: &TestCa,
    extra: &str,
    env: &[(&str, &str)],
) -> Relay {
    let config = ca.client_config();
    let builder = ConfigBuilder::new(mock.addr)
        .section(&dir.tls_section())
        .section(extra);
    let probe = |r: &Relay| tls_health(r.addr, &config).is_some();
    let mut last = String::new();
    for _ in 0..3 {
        match Relay::try_start_probed(&builder.render(free_port()), env, &probe) {
            Ok(relay) => return relay,
            Err(e) if e.contains("Address already in use") || e.contains("os error 98") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("relay could not bind a port after 3 attempts: {last}");
}

fn chat_and_stream_once(c: &mut Client<TlsStream>, mock: &Mock) {
    c.send(&chat("mock-fixed", false));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let direct = mock_direct(mock.addr, &chat("mock-fixed", false));
    assert_eq!(
        r.body, direct.body,
        "the relayed body is the mock's, byte for byte"
    );

    c.send(&chat("mock-stream-5-20", true));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert_eq!(text.matches("chat.completion.chunk").count(), 5, "{text}");
    assert!(text.contains("data: [DONE]"), "the stream ended: {text}");

    // Paced far apart upstream: each event reaches the client long before the next is sent,
    // so the TLS stream passes events on as they come.
    let sent = Instant::now();
    c.send(&chat("mock-stream-2-1500", true));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let (first, second) = (r.arrival(sent, b"tok0"), r.arrival(sent, b"tok1"));
    assert!(
        second >= first + Duration::from_millis(700),
        "events not paced: tok0 at {first:?}, tok1 at {second:?}"
    );
}

fn chat_stream_and_health_over_tls(driver: Driver) {
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    let leaf = ca.leaf("ringway test server");
    dir.install(&leaf);
    let relay = start_tls_relay(&mock, &dir, &ca, "", driver.env());
    let config = ca.client_config();

    let mut c = tls_client(relay.addr, &config);
    assert_eq!(
        c.stream.conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN: http/1.1 chosen over the h2 the client offered first"
    );
    assert_eq!(
        served_leaf(&c.stream),
        leaf.der,
        "the configured leaf is served"
    );
    // Keep-alive: two rounds of whole and streamed chat on one TLS connection.
    chat_and_stream_once(&mut c, &mock);
    chat_and_stream_once(&mut c, &mock);

    // Two requests in one write: the second is already inside the TLS session when the first
    // is answered, and must be served without waiting on the socket.
    let mut two = chat("mock-fixed", false);
    two.extend_from_slice(&chat("mock-fixed", false));
    c.send(&two);
    for _ in 0..2 {
        let r = c.read_final_response();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // TLS 1.2 as well as 1.3 (the default connections above negotiate 1.3).
    assert_eq!(
        c.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut tls12 = tls_client(
        relay.addr,
        &ca.client_config_for(&[&rustls::version::TLS12]),
    );
    assert_eq!(
        tls12.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls12.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    chat_and_stream_once(&mut tls12, &mock);

    let mut h = tls_client(relay.addr, &config);
    h.send(&get("/api/monitor/health", &[("connection", "close")]));
    let r = h.read_final_response();
    assert_eq!(r.status, 200);
    // The relay ends the session with close_notify: the client sees a clean end, not a
    // truncation (rustls reports a close without it as an UnexpectedEof error).
    let rest = h.read_to_close();
    assert!(
        matches!(&rest, Ok(b) if b.is_empty()),
        "clean TLS close: {rest:?}"
    );
    let health = r.json();
    assert_eq!(health["io_driver"], driver.health_name());
    assert!(
        json_u64(&health, "client_tls.handshakes") >= 3,
        "handshakes counted: {health}"
    );
    assert_eq!(json_u64(&health, "client_tls.failed"), 0, "{health}");
}

/// A TLS keep-alive connection that idles past the read-buffer release (its pending read is
/// cancelled) still serves the next request; a TLS client that leaves while the upstream is
/// slow to answer is noticed through the TCP socket under the session (`client_gone`).
fn idle_tls_connection_serves_again_and_a_departed_client_is_noticed(driver: Driver) {
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    dir.install(&ca.leaf("server"));
    let relay = start_tls_relay(&mock, &dir, &ca, "", driver.env());
    let config = ca.client_config();

    let mut c = tls_client(relay.addr, &config);
    c.send(&chat("mock-fixed", false));
    assert_eq!(c.read_final_response().status, 200);
    // Idle for longer than the 1 s after which an idle connection gives its buffer back.
    std::thread::sleep(Duration::from_millis(1600));
    for _ in 0..2 {
        c.send(&chat("mock-fixed", false));
        let r = c.read_final_response();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // A request sent while the previous one waits on a slow upstream: the watch reads its
    // TLS record to see what it is, and keeps it for the next request.
    c.send(&chat("mock-stall-head-1000", false));
    std::thread::sleep(Duration::from_millis(500));
    c.send(&chat("mock-echo", false));
    let first = c.read_final_response();
    assert_eq!(first.status, 200, "{}", first.text());
    let second = c.read_final_response();
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(parse_echo(&second).path, "/v1/chat/completions");

    let mut gone = tls_client(relay.addr, &config);
    gone.send(&chat("mock-stall-head-5000", false));
    std::thread::sleep(Duration::from_millis(400));
    let during = mock.stats().open_connections;
    let left = Instant::now();
    drop(gone);
    let noticed = wait_for(Duration::from_secs(4), || {
        tls_health(relay.addr, &config).is_some_and(|h| json_u64(&h, "client_gone") >= 1)
    });
    assert!(
        noticed.is_some(),
        "the departed TLS client was not noticed within 4 s (the upstream takes 5 s)"
    );
    assert!(left.elapsed() < Duration::from_secs(5));
    // The upstream connection of the abandoned request was closed, not left to the stall.
    let mock_open = wait_for(Duration::from_secs(3), || {
        mock.stats().open_connections < during
    });
    assert!(
        mock_open.is_some(),
        "upstream connection closed: {:?}",
        mock.stats()
    );

    // A client that says close_notify but leaves its socket open is leaving too.
    let mut polite = tls_client(relay.addr, &config);
    polite.send(&chat("mock-stall-head-5000", false));
    std::thread::sleep(Duration::from_millis(400));
    polite.stream.conn.send_close_notify();
    polite
        .stream
        .conn
        .complete_io(&mut polite.stream.sock)
        .expect("send close_notify");
    let noticed = wait_for(Duration::from_secs(4), || {
        tls_health(relay.addr, &config).is_some_and(|h| json_u64(&h, "client_gone") >= 2)
    });
    assert!(
        noticed.is_some(),
        "close_notify not taken as the client leaving"
    );
    drop(polite);
}

/// A client speaking plain HTTP to the TLS port gets no HTTP answer (only, at most, a TLS
/// alert) and the connection ends at once; the relay counts a failed handshake.
#[test]
fn plain_http_client_on_the_tls_port_gets_no_answer_and_is_closed() {
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    dir.install(&ca.leaf("server"));
    let relay = start_tls_relay(&mock, &dir, &ca, "", &[]);

    let mut c = relay.client();
    c.set_read_timeout(Duration::from_secs(5));
    let sent = Instant::now();
    c.send(&get("/api/monitor/health", &[]));
    let got = c.read_to_close().expect("the relay closes the connection");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "closed at once, not after a timeout ({:?})",
        sent.elapsed()
    );
    assert!(
        !got.starts_with(b"HTTP/"),
        "no HTTP answer on the TLS port: {:?}",
        String::from_utf8_lossy(&got)
    );
    if let Some(&first) = got.first() {
        assert_eq!(
            first, 0x15,
            "only a TLS alert record may come back: {got:?}"
        );
    }
    let health = tls_health(relay.addr, &ca.client_config()).expect("health over TLS");
    assert!(json_u64(&health, "client_tls.failed") >= 1, "{health}");
}

/// A client that connects and stalls in the handshake is cut when `client_header` runs out.
#[test]
fn stalled_handshake_is_cut_by_client_header() {
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    dir.install(&ca.leaf("server"));
    let relay = start_tls_relay(
        &mock,
        &dir,
        &ca,
        "[timeouts]\nclient_header = \"1s\"\n",
        &[],
    );

    // One connection sends nothing; one sends the first bytes of a ClientHello and stops.
    let mut silent = relay.client();
    let mut partial = relay.client();
    partial.send(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01]);
    let started = Instant::now();
    assert!(
        silent.closed_within(Duration::from_secs(10)),
        "silent client cut"
    );
    assert!(
        partial.closed_within(Duration::from_secs(10)),
        "partial hello cut"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "cut by the 1 s deadline, not at once ({waited:?})"
    );
    let health = tls_health(relay.addr, &ca.client_config()).expect("health over TLS");
    assert_eq!(json_u64(&health, "client_tls.timeouts"), 2, "{health}");
    assert!(json_u64(&health, "timeouts.client_header") >= 2, "{health}");
}

/// A renewed certificate: new files at the same paths, then new paths; after each SIGHUP a new
/// connection is served the new leaf, while a keep-alive connection from before goes on with
/// the session it has.
#[test]
fn reload_serves_a_renewed_certificate_to_new_connections_only() {
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    let first = ca.leaf("first");
    dir.install(&first);
    let relay = start_tls_relay(&mock, &dir, &ca, "", &[]);
    let config = ca.client_config();

    let mut old = tls_client(relay.addr, &config);
    assert_eq!(served_leaf(&old.stream), first.der);
    old.send(&chat("mock-fixed", false));
    assert_eq!(old.read_final_response().status, 200);

    // Same paths, new files.
    let second = ca.leaf("second");
    dir.install(&second);
    let line = relay.hangup();
    assert!(line.contains("config reloaded"), "{line}");
    let fresh = tls_connect(relay.addr, &config).expect("new connection");
    assert_eq!(
        served_leaf(&fresh),
        second.der,
        "a new connection gets the new leaf"
    );
    drop(fresh);

    old.send(&chat("mock-fixed", false));
    let r = old.read_final_response();
    assert_eq!(r.status, 200, "the old keep-alive connection still serves");
    assert_eq!(served_leaf(&old.stream), first.der);

    // New paths in the config.
    let third = ca.leaf("third");
    let other = CertDir::new();
    other.install(&third);
    let text = std::fs::read_to_string(&relay.config_path).expect("read the config");
    let text = text.replace(&dir.path("chain.pem"), &other.path("chain.pem"));
    let text = text.replace(&dir.path("key.pem"), &other.path("key.pem"));
    std::fs::write(&relay.config_path, text).expect("rewrite the config");
    let line = relay.hangup();
    assert!(line.contains("config reloaded"), "{line}");
    let fresh = tls_connect(relay.addr, &config).expect("new connection");
    assert_eq!(
        served_leaf(&fresh),
        third.der,
        "the leaf from the new paths"
    );
    old.send(&chat("mock-fixed", false));
    assert_eq!(old.read_final_response().status, 200);
}

/// Turning TLS off by reload is refused (it changes what the port speaks), and the relay goes
/// on serving TLS; so is a reload whose key no longer matches its certificate.
#[test]
fn reload_refuses_turning_tls_off_and_a_mismatched_key() {
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    let leaf = ca.leaf("server");
    dir.install(&leaf);
    let relay = start_tls_relay(&mock, &dir, &ca, "", &[]);
    let config = ca.client_config();
    let original = std::fs::read_to_string(&relay.config_path).expect("read the config");

    let plain = original.replace(&dir.tls_section(), "");
    assert_ne!(plain, original);
    std::fs::write(&relay.config_path, &plain).expect("rewrite the config");
    let line = relay.hangup();
    assert!(line.contains("config reload refused"), "{line}");
    assert!(
        line.contains("[server.tls]") && line.contains("restart"),
        "{line}"
    );

    std::fs::write(&relay.config_path, &original).expect("restore the config");
    let other = ca.leaf("other");
    std::fs::write(dir.0.join("key.pem"), &other.key_pem).expect("write a foreign key");
    let line = relay.hangup();
    assert!(line.contains("config reload refused"), "{line}");
    assert!(line.contains("server.tls.key"), "{line}");

    let c = tls_connect(relay.addr, &config).expect("still serving TLS");
    assert_eq!(served_leaf(&c), leaf.der, "the running certificate stays");
}

/// `check-config` names the file, line and key of every certificate or key problem, and shows
/// TLS in its summary when the files are good (paths relative to the config file).
#[test]
fn bad_certificate_or_key_is_refused_with_file_line_and_key() {
    let ca = TestCa::new();
    let dir = CertDir::new();
    let leaf = ca.leaf("server");
    let other = ca.leaf("other");
    let write = |name: &str, text: &str| std::fs::write(dir.0.join(name), text).expect("write");
    write("chain.pem", &leaf.chain_pem);
    write("key.pem", &leaf.key_pem);
    write("other-key.pem", &other.key_pem);
    write("empty.pem", "no PEM here\n");
    write("only-cert.pem", &leaf.chain_pem);

    let config_at = |cert: &str, key: &str| -> PathBuf {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n\n[server.tls]\ncert = {cert:?}\nkey = {key:?}\n\n{}\n{}",
            free_port(),
            channel_toml("mock", "http://127.0.0.1:9", UPSTREAM_KEY, &["*"], ""),
            token_toml("default", TOKEN, &["*"]),
        );
        let path = dir.0.join("ringway.toml");
        std::fs::write(&path, text).expect("write the config");
        path
    };
    let check = |path: &Path| -> (Option<i32>, String) {
        let (code, out, err) = run_bin(&["check-config", path.to_str().expect("utf-8")], &[]);
        (code, format!("{out}{err}"))
    };

    // Relative paths resolve against the config file's directory.
    let good = config_at("chain.pem", "key.pem");
    let (code, text) = check(&good);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("tls") && text.contains("chain.pem") && text.contains("2 certificate"),
        "{text}"
    );

    // The section's own keys: both required, nothing else accepted.
    for (section, blamed, why) in [
        (
            "[server.tls]\ncert = \"chain.pem\"\n",
            "server.tls.key",
            "required key is missing",
        ),
        (
            "[server.tls]\ncert = \"chain.pem\"\nkey = \"key.pem\"\nca = \"x.pem\"\n",
            "server.tls.ca",
            "unknown key",
        ),
    ] {
        let path = dir.0.join("section.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n\n{section}\n{}\n{}",
            free_port(),
            channel_toml("mock", "http://127.0.0.1:9", UPSTREAM_KEY, &["*"], ""),
            token_toml("default", TOKEN, &["*"]),
        );
        std::fs::write(&path, text).expect("write the config");
        let (code, text) = check(&path);
        assert_ne!(code, Some(0), "{section}: accepted: {text}");
        assert!(
            text.contains(blamed) && text.contains(why),
            "{section}: {text}"
        );
    }

    let cases: [(&str, &str, &str, &str); 4] = [
        ("missing.pem", "key.pem", "server.tls.cert", "cannot read"),
        (
            "empty.pem",
            "key.pem",
            "server.tls.cert",
            "no PEM certificate",
        ),
        (
            "chain.pem",
            "only-cert.pem",
            "server.tls.key",
            "no usable PEM private key",
        ),
        (
            "chain.pem",
            "other-key.pem",
            "server.tls.key",
            "not the private key",
        ),
    ];
    for (cert, key, blamed, why) in cases {
        let path = config_at(cert, key);
        let (code, text) = check(&path);
        assert_ne!(code, Some(0), "{cert}/{key} accepted: {text}");
        let line = if blamed.ends_with("cert") { 5 } else { 6 };
        let at = format!("{}:{line}: {blamed}: ", path.display());
        assert!(text.contains(&at), "{cert}/{key}: wanted {at:?} in {text}");
        assert!(text.contains(why), "{cert}/{key}: wanted {why:?} in {text}");
        for secret in [&leaf.key_pem, &other.key_pem] {
            let body = secret.lines().nth(1).expect("a PEM body line");
            assert!(!text.contains(body), "no key material in errors: {text}");
        }
    }
}

const SDK_SCRIPT: &str = r#"
import sys, httpx
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[3], max_retries=0, timeout=20,
                http_client=httpx.Client(verify=sys.argv[2]))
r = client.chat.completions.create(model="mock-fixed", messages=[{"role": "user", "content": "Hello"}])
print("NORMAL:" + r.choices[0].message.content)
parts = []
for chunk in client.chat.completions.create(model="mock-stream-3-20", stream=True,
                                            messages=[{"role": "user", "content": "Hello"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print("STREAM:" + "|".join(parts))
"#;

/// The official openai Python SDK over https, trusting the test CA through httpx's `verify`:
/// chat, whole and streamed. Skips visibly without the package, fails under CI (the rules of
/// `common::sdk`).
#[test]
fn openai_python_sdk_over_https() {
    // The script hands the CA to httpx itself (openai 1.x and 2.x install it; 3.x has httpx2).
    let Some(python) =
        sdk::python_with("openai, httpx", "client_tls::openai_python_sdk_over_https")
    else {
        return;
    };
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    dir.install(&ca.leaf("server"));
    std::fs::write(dir.0.join("ca.pem"), ca.cert.pem()).expect("write ca.pem");
    let relay = start_tls_relay(&mock, &dir, &ca, "", &[]);
    let url = format!("https://localhost:{}/v1", relay.addr.port());
    let text = common::sdk::run_script(&python, SDK_SCRIPT, &[&url, &dir.path("ca.pem"), TOKEN]);
    assert!(
        text.contains("NORMAL:Hello from the ringway mock upstream."),
        "{text}"
    );
    assert!(text.contains("STREAM:tok0|tok1|tok2\n"), "{text}");
}

/// Idle TLS keep-alive connections stay small: each holds its rustls session but no read or
/// write buffer of the relay's once it has idled past the buffer release (bounded RSS check).
#[test]
fn idle_tls_connections_hold_no_buffers() {
    const CONNS: usize = 300;
    let mock = Mock::start();
    let ca = TestCa::new();
    let dir = CertDir::new();
    dir.install(&ca.leaf("server"));
    let relay = start_tls_relay(&mock, &dir, &ca, "", &[]);
    let config = ca.client_config();
    let rss = || {
        json_u64(
            &tls_health(relay.addr, &config).expect("health"),
            "rss_bytes",
        )
    };
    // Warm up: the allocator's first pages, a first batch of buffers.
    let warm: Vec<_> = (0..20).map(|_| tls_client(relay.addr, &config)).collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(1500));
    let before = rss();
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut c = tls_client(relay.addr, &config);
        c.send(&chat("mock-fixed", false));
        assert_eq!(c.read_final_response().status, 200);
        conns.push(c);
    }
    // Past the 1 s idle buffer release (and the allocator's once-a-second collect).
    std::thread::sleep(Duration::from_millis(2500));
    let after = rss();
    let per = after.saturating_sub(before) / CONNS as u64;
    eprintln!("idle TLS connection: {per} bytes of RSS each ({CONNS} open)");
    assert!(
        per < 48 * 1024,
        "{per} bytes of RSS per idle TLS connection ({before} -> {after})"
    );
    // All still usable.
    for c in conns.iter_mut().take(5) {
        c.send(&chat("mock-fixed", false));
        assert_eq!(c.read_final_response().status, 200);
    }
}
