//! Shared harness for ringway's integration tests.
//!
//! Everything here talks only to 127.0.0.1 and is bounded: every socket read has a timeout, and
//! every wait loop has a deadline. The pieces:
//!
//! - [`Mock`]: the project's mock upstream, in process, stopped on drop.
//! - [`ConfigBuilder`]: a relay config pointing at a mock, with hooks for extra TOML.
//! - [`Relay`]: the real `ringway` binary started with a config file, killed on drop; its stderr
//!   is captured to a file and printed when a test panics.
//! - [`Client`] / [`Response`]: a raw HTTP/1.1 client over `std::net::TcpStream` that records
//!   when each body chunk arrived.
//! - [`mock_direct`]: the mock's own answer to a request, for byte-exact comparisons.
//! - [`sdk`]: the Python interpreter with an official SDK package (openai, anthropic), and the
//!   skip / fail rules of the SDK tests.

#![allow(dead_code)]

pub mod sdk;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The client token every default config accepts (models `["*"]`).
pub const TOKEN: &str = "sk-test-client-token";
/// The upstream key of the default mock channel.
pub const UPSTREAM_KEY: &str = "sk-test-upstream-key";
/// Read timeout for every client socket.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on reading one whole response, however it trickles in.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(30);
/// How long [`Relay::start`] waits for the health endpoint.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the relay binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringway")
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, drop the listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A unique path in the system temp dir (process id + counter + nanos).
pub fn temp_path(stem: &str, ext: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "ringway-test-{}-{n}-{nanos:x}-{stem}.{ext}",
        std::process::id()
    ))
}

/// Writes `text` to a fresh temp file and returns its path.
pub fn write_temp(stem: &str, ext: &str, text: &str) -> PathBuf {
    let path = temp_path(stem, ext);
    std::fs::write(&path, text).expect("write temp file");
    path
}

// ---------------------------------------------------------------------------------------------
// I/O driver selection

/// Which relay io driver a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    /// Environment for the relay process that selects this driver.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Driver::IoUring => &[],
            Driver::Epoll => &[("RINGWAY_FORCE_EPOLL", "1")],
        }
    }

    /// What `/api/monitor/health` must report as `io_driver`.
    pub fn health_name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mock upstream

/// The in-process mock upstream; stopped (listener closed) on drop.
pub struct Mock {
    pub addr: SocketAddr,
    handle: Option<ringway_mock::MockHandle>,
}

impl Mock {
    pub fn start() -> Mock {
        let handle = ringway_mock::spawn("127.0.0.1:0").expect("start mock upstream");
        Mock {
            addr: handle.addr,
            handle: Some(handle),
        }
    }

    pub fn stats(&self) -> ringway_mock::MockStats {
        self.handle.as_ref().expect("mock running").stats()
    }

    /// `http://127.0.0.1:PORT`, for a channel's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config builder

/// Builds a relay config: `[server]` (listen, workers, extra lines), optional extra sections,
/// a default channel `mock` serving `*` from the mock, extra channels, the default token
/// [`TOKEN`] and extra tokens.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    pub workers: usize,
    server_lines: Vec<String>,
    sections: Vec<String>,
    default_channel: Option<String>,
    channels: Vec<String>,
    tokens: Vec<String>,
    /// The body of the `[health]` table; see [`ConfigBuilder::health`].
    health: String,
}

/// The `[health]` body every builder config starts with: off. The suites that inject faults
/// per request (a failing mock model on the one channel they have) test how each single
/// request is answered; channel health would, by design, take that channel out of rotation
/// after a few of them. `tests/channel_health.rs` turns it on with [`ConfigBuilder::health`].
pub const HEALTH_OFF: &str = "enabled = false";

impl ConfigBuilder {
    /// A config whose default channel `mock` sends everything (`models = ["*"]`) to `mock`.
    pub fn new(mock: SocketAddr) -> ConfigBuilder {
        ConfigBuilder {
            workers: 1,
            server_lines: Vec::new(),
            sections: Vec::new(),
            default_channel: Some(channel_toml(
                "mock",
                &format!("http://{mock}"),
                UPSTREAM_KEY,
                &["*"],
                "",
            )),
            channels: Vec::new(),
            tokens: vec![token_toml("default", TOKEN, &["*"])],
            health: HEALTH_OFF.to_string(),
        }
    }

    /// Replaces the body of the `[health]` table (default [`HEALTH_OFF`]); `""` leaves every
    /// health setting at its default (on).
    pub fn health(mut self, body: &str) -> Self {
        self.health = body.to_string();
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// An extra `key = value` line in `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server_lines.push(line.to_string());
        self
    }

    /// Extra top-level TOML (e.g. a `[timeouts]` table), placed after `[server]`.
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_string());
        self
    }

    /// Replaces the default channel's model list and appends `extra` lines to it.
    pub fn default_channel(mut self, mock: SocketAddr, models: &[&str], extra: &str) -> Self {
        self.default_channel = Some(channel_toml(
            "mock",
            &format!("http://{mock}"),
            UPSTREAM_KEY,
            models,
            extra,
        ));
        self
    }

    /// Drops the default channel (add your own with [`ConfigBuilder::channel`]).
    pub fn without_default_channel(mut self) -> Self {
        self.default_channel = None;
        self
    }

    /// Adds a `[[channels]]` table; `extra` lines (e.g. `priority = 1`) go inside it.
    pub fn channel(
        mut self,
        name: &str,
        base_url: &str,
        key: &str,
        models: &[&str],
        extra: &str,
    ) -> Self {
        self.channels
            .push(channel_toml(name, base_url, key, models, extra));
        self
    }

    /// Adds a `[[tokens]]` table.
    pub fn token(mut self, name: &str, key: &str, models: &[&str]) -> Self {
        self.tokens.push(token_toml(name, key, models));
        self
    }

    /// The TOML text, listening on `127.0.0.1:port`.
    pub fn render(&self, port: u16) -> String {
        let mut out = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = {}\n",
            self.workers
        );
        // Glob channels would fetch the mock's model list at start, a request that tests
        // counting upstream requests do not expect; tests of the lists turn it back on. First, before
        // server lines that may open another table.
        if !self
            .server_lines
            .iter()
            .any(|l| l.starts_with("models_refresh"))
        {
            out.push_str("models_refresh = \"off\"\n");
        }
        for line in &self.server_lines {
            out.push_str(line);
            out.push('\n');
        }
        for s in &self.sections {
            out.push('\n');
            out.push_str(s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push_str("\n[health]\n");
        out.push_str(&self.health);
        out.push('\n');
        for c in self.default_channel.iter().chain(&self.channels) {
            out.push('\n');
            out.push_str(c);
        }
        for t in &self.tokens {
            out.push('\n');
            out.push_str(t);
        }
        out
    }

    /// Renders on a free port and starts the relay; retries on a fresh port if the chosen one
    /// was taken in between.
    pub fn start(&self, env: &[(&str, &str)]) -> Relay {
        let mut last = String::new();
        for _ in 0..3 {
            match Relay::try_start(&self.render(free_port()), env) {
                Ok(relay) => return relay,
                Err(e) if e.contains("Address already in use") || e.contains("os error 98") => {
                    last = e;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("relay could not bind a port after 3 attempts: {last}");
    }
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|m| format!("{m:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

pub fn channel_toml(name: &str, base_url: &str, key: &str, models: &[&str], extra: &str) -> String {
    let mut out = format!(
        "[[channels]]\nname = {name:?}\nprovider = \"openai\"\nbase_url = {base_url:?}\nkeys = [{key:?}]\nmodels = {}\n",
        toml_list(models)
    );
    if !extra.is_empty() {
        out.push_str(extra);
        if !extra.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub fn token_toml(name: &str, key: &str, models: &[&str]) -> String {
    format!(
        "[[tokens]]\nname = {name:?}\nkey = {key:?}\nmodels = {}\n",
        toml_list(models)
    )
}

// ---------------------------------------------------------------------------------------------
// The relay process

/// A running relay process; killed (and its temp files removed) on drop. If the test is
/// panicking, the relay's stderr is printed first.
pub struct Relay {
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Child,
}

impl Relay {
    /// Writes `config_toml` to a temp file, starts `ringway --config FILE` with `env` added,
    /// and waits (bounded) until `GET /api/monitor/health` answers 200. Panics on failure.
    pub fn start(config_toml: &str, env: &[(&str, &str)]) -> Relay {
        Relay::try_start(config_toml, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Relay::start`], but returns the failure (with the relay's stderr) as text.
    pub fn try_start(config_toml: &str, env: &[(&str, &str)]) -> Result<Relay, String> {
        Relay::try_start_probed(config_toml, env, &|r: &Relay| r.try_health().is_some())
    }

    /// Like [`Relay::try_start`], with `ready` telling when the relay answers (a TLS relay
    /// answers no plain-HTTP health request).
    pub fn try_start_probed(
        config_toml: &str,
        env: &[(&str, &str)],
        ready: &dyn Fn(&Relay) -> bool,
    ) -> Result<Relay, String> {
        let addr = listen_addr(config_toml);
        let config_path = write_temp("relay", "toml", config_toml);
        let stderr_path = temp_path("relay-stderr", "log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the ringway binary");
        let mut relay = Relay {
            addr,
            config_path,
            stderr_path,
            child,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = relay.child.try_wait() {
                return Err(format!(
                    "relay exited during startup ({status}); stderr:\n{}",
                    relay.stderr_text()
                ));
            }
            if ready(&relay) {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "relay did not answer /api/monitor/health within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    relay.stderr_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The relay's process id (for reading its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `GET /api/monitor/health` on a fresh connection; panics unless it is 200 JSON.
    pub fn health(&self) -> serde_json::Value {
        self.try_health()
            .unwrap_or_else(|| panic!("health request failed; stderr:\n{}", self.stderr_text()))
    }

    fn try_health(&self) -> Option<serde_json::Value> {
        let mut c = Client::try_connect(self.addr).ok()?;
        c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .ok()?;
        c.send(&get("/api/monitor/health", &[("connection", "close")]));
        let r = c.try_read_response().ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    /// A connected client.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends `request` on a fresh connection and reads the final (non-1xx) response.
    pub fn roundtrip(&self, request: &[u8]) -> Response {
        let mut c = self.client();
        c.send(request);
        c.read_final_response()
    }

    /// Whether the relay process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self.stderr_text();
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.stderr_path);
        if std::thread::panicking() {
            eprintln!(
                "---- relay stderr ({}) ----\n{stderr}\n---- end relay stderr ----",
                self.stderr_path.display(),
            );
            return;
        }
        // Every relay of every suite: no log line may carry a client token or an upstream key
        // (masked tails of at most 4 characters are how an operator tells keys apart).
        for secret in [TOKEN, UPSTREAM_KEY] {
            if let Some(line) = stderr.lines().find(|l| l.contains(secret)) {
                panic!("a secret ({secret}) in the relay's log: {line}");
            }
        }
    }
}

/// `server.listen` of a config text, as a socket address.
fn listen_addr(config_toml: &str) -> SocketAddr {
    let v: toml::Value = toml::from_str(config_toml).expect("config is valid TOML");
    v.get("server")
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .expect("config has server.listen")
        .parse()
        .expect("server.listen is an IP:port")
}

/// Runs the binary with `args` to completion (bounded: killed after 30 s).
/// Returns (exit code, stdout, stderr).
pub fn run_bin(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out_path = temp_path("run-stdout", "log");
    let err_path = temp_path("run-stderr", "log");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the ringway binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    let status = status.unwrap_or_else(|| panic!("ringway {args:?} did not exit within 30 s"));
    (status.code(), stdout, stderr)
}

// ---------------------------------------------------------------------------------------------
// Request builders

/// A request with `Host` and `Content-Length` filled in; `headers` come after `Host`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() || method == "POST" {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A GET without a body.
pub fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    request("GET", path, headers, b"")
}

/// `Authorization: Bearer <token>` as a header pair.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// `POST path` with JSON `body`, authorized with `token` (none if `None`), plus `extra` headers.
pub fn post_json(path: &str, token: Option<&str>, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    request("POST", path, &headers, body.as_bytes())
}

/// A minimal chat completion body for `model`.
pub fn chat_body(model: &str, stream: bool) -> String {
    format!(
        "{{\"model\":{model:?},\"stream\":{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}"
    )
}

/// `POST /v1/chat/completions` with [`chat_body`] and the default [`TOKEN`].
pub fn chat(model: &str, stream: bool) -> Vec<u8> {
    post_json(
        "/v1/chat/completions",
        Some(TOKEN),
        &[],
        &chat_body(model, stream),
    )
}

/// Sends `request` straight to the mock and reads its final response.
pub fn mock_direct(mock: SocketAddr, request: &[u8]) -> Response {
    let mut c = Client::connect(mock);
    c.send(request);
    c.read_final_response()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client

/// One body chunk as it arrived: (arrival time, payload). For Content-Length and close-delimited
/// bodies, each socket read is one "chunk".
pub type Arrival = (Instant, Vec<u8>);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Names lowercased, in received order.
    pub headers: Vec<(String, String)>,
    /// De-chunked body.
    pub body: Vec<u8>,
    /// Body pieces with arrival times (chunk payloads for chunked bodies).
    pub chunks: Vec<Arrival>,
    /// When the head was complete.
    pub head_at: Instant,
    /// When the body was complete.
    pub done_at: Instant,
    /// Whether the body was close-delimited.
    pub until_close: bool,
}

impl Response {
    /// When the body chunk holding `needle` arrived, counted from `sent`; panics if none does.
    pub fn arrival(&self, sent: Instant, needle: &[u8]) -> Duration {
        self.chunks
            .iter()
            .find(|(_, data)| data.windows(needle.len()).any(|w| w == needle))
            .map(|(at, _)| at.duration_since(sent))
            .unwrap_or_else(|| panic!("no chunk with {needle:?} in {:?}", self.text()))
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-request-id` header, asserted present and non-empty.
    pub fn request_id(&self) -> &str {
        let id = self
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id in {:?}", self.headers));
        assert!(!id.is_empty(), "empty x-request-id");
        id
    }

    /// Whether the response says `connection: close`.
    pub fn closes(&self) -> bool {
        self.headers_named("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// A raw client connection with a receive buffer (bytes read past one response stay for the
/// next, so pipelined responses parse correctly).
pub struct Client<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
    eof: bool,
}

#[derive(Debug)]
pub enum ReadError {
    /// The connection closed before a complete response (bytes received so far).
    Eof(Vec<u8>),
    Io(std::io::Error),
    Malformed(String),
    Deadline,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set timeout");
    }

    /// True if the peer closes (EOF or reset) within `within` with no further bytes.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.set_read_timeout(within);
        let r = match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        };
        self.set_read_timeout(READ_TIMEOUT);
        r
    }
}

impl<S: Read + Write> Client<S> {
    /// A client over any stream (e.g. a TLS session over TCP).
    pub fn over(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes all of `bytes` in one `write_all`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to peer");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into the buffer; Ok(0) at end of stream.
    fn fill(&mut self) -> std::io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next response, 1xx included; panics on failure.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading a response failed: {e:?}"))
    }

    /// Reads responses until a final (non-1xx) one; panics on failure.
    pub fn read_final_response(&mut self) -> Response {
        loop {
            let r = self.read_response();
            if !(100..200).contains(&r.status) {
                return r;
            }
        }
    }

    /// Reads a response head only (the answer to a HEAD request has no body).
    pub fn read_response_for_head(&mut self) -> Response {
        self.read_head_part(Instant::now() + RESPONSE_DEADLINE)
            .unwrap_or_else(|e| panic!("reading a response head failed: {e:?}"))
    }

    /// Reads and removes one response head from the buffer.
    fn read_head_part(&mut self, deadline: Instant) -> Result<Response, ReadError> {
        let (status, reason, headers, head_len) = loop {
            let mut raw = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut raw);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (
                        parsed.code.unwrap_or(0),
                        parsed.reason.unwrap_or("").to_string(),
                        headers,
                        len,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(ReadError::Malformed(format!(
                        "bad response head ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )))
                }
            }
            self.fill_bounded(deadline)?;
        };
        let head_at = Instant::now();
        self.buf.drain(..head_len);
        Ok(Response {
            status,
            reason,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            head_at,
            done_at: head_at,
            until_close: false,
        })
    }

    /// Reads the next response (1xx included), bounded by [`READ_TIMEOUT`] per read and
    /// [`RESPONSE_DEADLINE`] overall.
    pub fn try_read_response(&mut self) -> Result<Response, ReadError> {
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        let mut response = self.read_head_part(deadline)?;
        let status = response.status;
        let head_at = response.head_at;
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response
            .headers_named("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = response
            .header("content-length")
            .map(|v| v.trim().parse::<usize>());
        if chunked {
            self.read_chunked(&mut response, deadline)?;
        } else if let Some(len) = length {
            let len = len.map_err(|e| ReadError::Malformed(format!("content-length: {e}")))?;
            if !self.buf.is_empty() {
                let take = self.buf.len().min(len);
                response
                    .chunks
                    .push((head_at, self.buf.drain(..take).collect()));
            }
            let mut have = response.chunks.iter().map(|c| c.1.len()).sum::<usize>();
            while have < len {
                if self.fill_bounded(deadline)? == 0 {
                    return Err(ReadError::Eof(self.buf.clone()));
                }
                let take = self.buf.len().min(len - have);
                have += take;
                response
                    .chunks
                    .push((Instant::now(), self.buf.drain(..take).collect()));
            }
            response.body = response.chunks.iter().flat_map(|c| c.1.clone()).collect();
        } else {
            response.until_close = true;
            if !self.buf.is_empty() {
                response
                    .chunks
                    .push((head_at, std::mem::take(&mut self.buf)));
            }
            while self.fill_bounded(deadline)? > 0 {
                response
                    .chunks
                    .push((Instant::now(), std::mem::take(&mut self.buf)));
            }
            response.body = response.chunks.iter().flat_map(|c| c.1.clone()).collect();
        }
        response.done_at = Instant::now();
        Ok(response)
    }

    fn fill_bounded(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        if Instant::now() > deadline {
            return Err(ReadError::Deadline);
        }
        self.fill().map_err(ReadError::Io)
    }

    /// De-chunks incrementally; each chunk is stamped with the time its last byte arrived.
    fn read_chunked(&mut self, r: &mut Response, deadline: Instant) -> Result<(), ReadError> {
        loop {
            // Size line.
            let line = loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                    break line[..pos].to_vec();
                }
                if self.fill_bounded(deadline)? == 0 {
                    return Err(ReadError::Eof(self.buf.clone()));
                }
            };
            let text = String::from_utf8_lossy(&line).into_owned();
            let size_text = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| ReadError::Malformed(format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        self.buf.drain(..pos + 2);
                        if pos == 0 {
                            break;
                        }
                        continue;
                    }
                    if self.fill_bounded(deadline)? == 0 {
                        return Err(ReadError::Eof(self.buf.clone()));
                    }
                }
                r.body = r.chunks.iter().flat_map(|c| c.1.clone()).collect();
                return Ok(());
            }
            while self.buf.len() < size + 2 {
                if self.fill_bounded(deadline)? == 0 {
                    return Err(ReadError::Eof(self.buf.clone()));
                }
            }
            let data: Vec<u8> = self.buf.drain(..size).collect();
            if self.buf.drain(..2).as_slice() != b"\r\n" {
                return Err(ReadError::Malformed(
                    "chunk data not followed by CRLF".into(),
                ));
            }
            r.chunks.push((Instant::now(), data));
        }
    }

    /// Reads until the peer closes (bounded); returns every byte not yet consumed.
    pub fn read_to_close(&mut self) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        while self.fill_bounded(deadline)? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Bytes received but not yet consumed by a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// Parses a mock-echo body: (method, path, headers in received order, body).
pub fn parse_echo(r: &Response) -> Echo {
    let v = r.json();
    let headers = v["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("echo without headers: {v}"))
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or_default().to_string(),
                pair[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Echo {
        method: v["method"].as_str().unwrap_or_default().to_string(),
        path: v["path"].as_str().unwrap_or_default().to_string(),
        headers,
        body: v["body"].as_str().unwrap_or_default().to_string(),
    }
}

/// What the mock-echo model saw.
#[derive(Debug, Clone)]
pub struct Echo {
    pub method: String,
    pub path: String,
    /// As received (original case).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Echo {
    /// All values of header `name` (case-insensitive).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of header `name`; panics if absent or repeated.
    pub fn one(&self, name: &str) -> &str {
        let v = self.values(name);
        assert_eq!(
            v.len(),
            1,
            "upstream saw {name} {} times: {self:?}",
            v.len()
        );
        v[0]
    }

    pub fn has(&self, name: &str) -> bool {
        !self.values(name).is_empty()
    }
}

/// Asserts the contract's error shape `{"error":{"message","type","param":null,"code"}}` and
/// `code` (if given); returns the error object.
pub fn assert_error_shape(r: &Response, status: u16, code: Option<&str>) -> serde_json::Value {
    assert_eq!(r.status, status, "status; body {:?}", r.text());
    let v = r.json();
    let e = v
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {v}"))
        .clone();
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {v}"
    );
    assert!(e["type"].is_string(), "error.type: {v}");
    assert!(
        e.get("param").is_some_and(|p| p.is_null()),
        "error.param must be null: {v}"
    );
    assert!(e["code"].is_string(), "error.code: {v}");
    if let Some(code) = code {
        assert_eq!(e["code"], code, "error.code: {v}");
    }
    e
}

// ---------------------------------------------------------------------------------------------
// Helpers for the timeout, fault-storm and monitor suites (appended; generic).

/// Polls `f` every 10 ms until it returns true or `within` passes; returns how long it took.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Mock {
    /// Waits (bounded) until the mock has at most `n` open connections; returns how long it
    /// took, or `None` if it did not happen within `within`.
    pub fn wait_open_at_most(&self, n: u64, within: Duration) -> Option<Duration> {
        wait_for(within, || self.stats().open_connections <= n)
    }

    /// Waits (bounded) until the mock has read at least `n` requests in total.
    pub fn wait_requests(&self, n: u64, within: Duration) -> Option<Duration> {
        wait_for(within, || self.stats().requests >= n)
    }
}

/// A numeric field of a health JSON object, by dotted path (`"timeouts.connect"`); panics if
/// missing or not a whole number.
pub fn json_u64(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("field {path} missing or not a number in {v}"))
}

/// The first SSE `event: error` in a stream body: its `data:` JSON, and whether nothing but
/// whitespace follows it (an error event must be the last thing in the stream).
pub fn sse_error_event(body: &[u8]) -> Option<(serde_json::Value, bool)> {
    const MARK: &str = "event: error\ndata: ";
    let text = String::from_utf8_lossy(body);
    let start = text.find(MARK)? + MARK.len();
    let rest = &text[start..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    let json = serde_json::from_str(&rest[..end]).ok()?;
    let last = rest[end..].trim().is_empty();
    Some((json, last))
}

/// Reads raw bytes from `stream` until `needle` appears, EOF, an error, or `within` passes.
/// Returns everything read and whether the needle was seen.
pub fn read_until(stream: &mut TcpStream, needle: &[u8], within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                if got.windows(needle.len()).any(|w| w == needle) {
                    return (got, true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (got, false)
}

/// `GET /metrics` on a fresh connection: the Prometheus text.
pub fn metrics_text(relay: &Relay) -> String {
    let mut c = relay.client();
    c.send(&get("/metrics", &[("connection", "close")]));
    let r = c.read_final_response();
    assert_eq!(r.status, 200, "/metrics status; body {:?}", r.text());
    r.text()
}

/// The value of one Prometheus sample line, `name{labels}` exactly as written (e.g.
/// `ringway_timeouts_total{layer="connect"}`); `None` if absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.trim().parse::<f64>().ok())?
    })
}

impl Client {
    /// Like [`Client::try_read_response`], but a connection closed before a complete response
    /// head is reported at once as [`ReadError::Eof`] (instead of spinning until the deadline).
    pub fn read_response_eof_aware(&mut self) -> Result<Response, ReadError> {
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        loop {
            let mut raw = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut raw);
            if !matches!(parsed.parse(&self.buf), Ok(httparse::Status::Partial)) {
                break;
            }
            if self.fill_bounded(deadline)? == 0 {
                return Err(ReadError::Eof(self.buf.clone()));
            }
        }
        self.try_read_response()
    }
}

/// Instantiates each `fn name(driver: Driver)` once per io driver, as `io_uring::name` and
/// `epoll::name`. Attributes before a name apply to both; `uring #[...]` / `epoll #[...]` after
/// it to that variant only. Every entry ends with a comma.
#[macro_export]
macro_rules! both_drivers {
    ($( $(#[$meta:meta])* $name:ident $(uring #[$umeta:meta])? $(epoll #[$emeta:meta])?, )*) => {
        mod io_uring {
            $( $(#[$meta])* $(#[$umeta])? #[test] fn $name() { super::$name(super::Driver::IoUring) } )*
        }
        mod epoll {
            $( $(#[$meta])* $(#[$emeta])? #[test] fn $name() { super::$name(super::Driver::Epoll) } )*
        }
    };
}

/// The layers of the contract's health `timeouts` object.
pub const TIMEOUT_LAYERS: [&str; 8] = [
    "connect",
    "tls_handshake",
    "response_header",
    "stream_idle",
    "total",
    "client_header",
    "client_body",
    "client_idle",
];

/// Starts the relay for `cfg` on `driver` and checks health reports that driver.
pub fn start(driver: Driver, cfg: &ConfigBuilder) -> Relay {
    start_env(driver, cfg, &[])
}

/// [`start`] with extra environment variables.
pub fn start_env(driver: Driver, cfg: &ConfigBuilder, env: &[(&str, &str)]) -> Relay {
    let mut all: Vec<(&str, &str)> = driver.env().to_vec();
    all.extend_from_slice(env);
    let relay = cfg.start(&all);
    let health = relay.health();
    assert_eq!(
        health["io_driver"],
        driver.health_name(),
        "health io_driver: {health}"
    );
    relay
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the hostile-ops suite (appended; generic).

impl Relay {
    /// Like [`Relay::try_start`], for a config file the caller wrote (so its mode is the
    /// caller's), with `customize` applied to the command before it is spawned (e.g.
    /// [`nofile_limit`]). The file is removed when the relay is dropped.
    pub fn try_start_file(
        config_path: PathBuf,
        env: &[(&str, &str)],
        customize: &dyn Fn(&mut Command),
    ) -> Result<Relay, String> {
        let text = std::fs::read_to_string(&config_path).expect("read the config file");
        let addr = listen_addr(&text);
        let stderr_path = temp_path("relay-stderr", "log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (k, v) in env {
            cmd.env(k, v);
        }
        customize(&mut cmd);
        let child = cmd.spawn().expect("spawn the ringway binary");
        let mut relay = Relay {
            addr,
            config_path,
            stderr_path,
            child,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = relay.child.try_wait() {
                return Err(format!(
                    "relay exited during startup ({status}); stderr:\n{}",
                    relay.stderr_text()
                ));
            }
            if relay.try_health().is_some() {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "relay did not answer /api/monitor/health within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    relay.stderr_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A command customizer for [`Relay::try_start_file`]: the child's RLIMIT_NOFILE (soft and
/// hard) is set to `n` before it executes the relay, so it cannot raise it.
pub fn nofile_limit(n: u64) -> impl Fn(&mut Command) {
    move |cmd: &mut Command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Client {
    /// Whether the peer has closed the connection (EOF or reset) by now, without waiting:
    /// false if it is open with nothing to read, or sent bytes.
    pub fn closed_now(&mut self) -> bool {
        if self.eof {
            return true;
        }
        self.stream.set_nonblocking(true).expect("set_nonblocking");
        let mut byte = [0u8; 1];
        let closed = match self.stream.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        };
        self.stream.set_nonblocking(false).expect("set_nonblocking");
        closed
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the quota suite (appended; generic).

impl Relay {
    /// Sends `signal` (e.g. `libc::SIGTERM`) to the relay process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the child's pid; no memory is passed.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Waits (bounded) until the relay process has exited; its exit status, or `None` if it
    /// was still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// [`chat`] for a stream that asks for its usage (`stream_options.include_usage`): what the relay
/// sends upstream for a [`chat`] stream whose client did not ask.
pub fn chat_asking_usage(model: &str) -> Vec<u8> {
    let body =
        chat_body(model, true).replacen('{', r#"{"stream_options":{"include_usage":true},"#, 1);
    post_json("/v1/chat/completions", Some(TOKEN), &[], &body)
}

/// An SSE text without its usage-only events (`"choices":[]`): what a streaming client that did
/// not ask for usage gets through the relay of the upstream's [`chat_asking_usage`] stream.
pub fn without_usage_events(sse: &str) -> String {
    sse.split_inclusive("\n\n")
        .filter(|event| !event.contains("\"choices\":[]"))
        .collect()
}

/// The JSON lines of a file (the access log), waiting (bounded, 10 s) until there are at least
/// `n`; panics on a line that is not JSON, or if fewer than `n` came.
pub fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        out.len() >= n
    });
    assert!(
        out.len() >= n,
        "{} of {n} lines in {}: {out:#?}",
        out.len(),
        path.display()
    );
    out
}

/// The mock upstream as its own `ringway mock` process (killed on drop), for tests whose
/// process counts allocations: the in-process [`Mock`]'s would be counted with the relay's.
pub fn mock_process() -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let child = Command::new(bin())
        .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .expect("start `ringway mock`");
    let guard = KillOnDrop(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()).is_some(),
        "`ringway mock` never listened on {addr}"
    );
    (guard, addr)
}

impl Relay {
    /// Sends SIGHUP and waits (bounded) for the reload's outcome line (`config reloaded` or
    /// `config reload refused`); returns the last `config reload` line by then.
    pub fn hangup(&self) -> String {
        let outcomes = |e: &str| {
            e.lines()
                .filter(|l| l.contains("config reloaded") || l.contains("config reload refused"))
                .count()
        };
        let before = outcomes(&self.stderr_text());
        self.signal(libc::SIGHUP);
        let mut line = String::new();
        let seen = wait_for(Duration::from_secs(10), || {
            let e = self.stderr_text();
            line = e
                .lines()
                .rfind(|l| l.contains("config reload"))
                .unwrap_or_default()
                .to_string();
            outcomes(&e) > before
        });
        assert!(seen.is_some(), "no reload line:\n{}", self.stderr_text());
        line
    }

    /// Writes `text` over the relay's config file, then [`Relay::hangup`].
    pub fn reload_with(&self, text: &str) -> String {
        std::fs::write(&self.config_path, text).expect("rewrite the config");
        self.hangup()
    }
}
