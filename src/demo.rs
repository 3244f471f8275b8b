//! `ringway demo`: the mock upstream and a relay configured for it, on loopback.
//!
//! Owns: the demo's config (built as TOML text and validated like any user config) and the
//! instructions it prints. Must not: need a key, the network, or any file. Compiled only with the
//! `demo` cargo feature (the `ringway-mock` crate, on by default).

use std::path::Path;

pub const DEMO_TOKEN: &str = "sk-ringway-demo";

pub fn demo_config(listen_port: u16, mock: std::net::SocketAddr) -> String {
    format!(
        r#"# ringway demo: relay on 127.0.0.1:{listen_port}, upstream = built-in mock on {mock}
[server]
listen = "127.0.0.1:{listen_port}"
workers = 0

[timeouts]
response_header = "2m"
stream_idle = "1m"
total = "5m"

[monitor]
log_interval = "60s"

[[channels]]
name = "demo-mock"
provider = "openai"
base_url = "http://{mock}"
keys = ["sk-mock-upstream"]
models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "mock-*"]

[[tokens]]
name = "demo"
key = "{DEMO_TOKEN}"
models = ["*"]
"#
    )
}

/// Runs until the process ends.
pub fn run(port: u16) -> i32 {
    let mock = match ringway_mock::spawn("127.0.0.1:0") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("demo: cannot start the mock upstream: {e}");
            return 1;
        }
    };
    let text = demo_config(port, mock.addr);
    let config = match crate::config::parse(&text, Path::new("<demo>")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: internal config error: {e}");
            return 1;
        }
    };
    let running = match crate::server::start(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: cannot start the relay on 127.0.0.1:{port}: {e} (try --port N)");
            return 1;
        }
    };
    println!(
        r#"
ringway demo is running: relay http://127.0.0.1:{port} -> mock upstream http://{mock}

Try it (token {DEMO_TOKEN}):

  curl -s http://127.0.0.1:{port}/v1/chat/completions \
    -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'Content-Type: application/json' \
    -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -sN http://127.0.0.1:{port}/v1/chat/completions \
    -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'Content-Type: application/json' \
    -d '{{"model":"mock-stream-10-200","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -s http://127.0.0.1:{port}/api/monitor/health

Python (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="{DEMO_TOKEN}")
  print(client.chat.completions.create(model="gpt-4o-mini",
        messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)
  for chunk in client.chat.completions.create(model="mock-stream-10-200", stream=True,
        messages=[{{"role": "user", "content": "Hello"}}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)

Fault models (mock-status-429, mock-stall-head-5000, mock-reset-stream, ...): ringway mock --help
Ctrl-C stops the demo.
"#,
        mock = mock.addr
    );
    running.wait();
    0
}
