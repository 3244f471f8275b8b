//! The official openai Python package against `ringway demo`, as a new user would run it.
//!
//! Needs `python3` with `openai` installed. CI installs it and sets RINGWAY_REQUIRE_SDK=1, so
//! there a missing package fails the test; elsewhere the test says why it skipped.

mod common;

use common::{free_port, KillOnDrop};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-ringway-demo", max_retries=0, timeout=20)
r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
print("NORMAL:" + r.choices[0].message.content)
parts = []
for chunk in client.chat.completions.create(model="mock-stream-4-50", stream=True,
                                            messages=[{"role": "user", "content": "Hello"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print("STREAM:" + "|".join(parts))
try:
    client.chat.completions.create(model="mock-status-429", messages=[])
    print("ERROR:none")
except Exception as e:
    print("ERROR:" + type(e).__name__ + ":" + str(getattr(e, "status_code", "")))
m = client.models.list()
print("MODELS:" + ",".join(sorted(x.id for x in m.data)))
"#;

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
#[cfg_attr(
    not(feature = "demo"),
    ignore = "runs `ringway mock`/`demo`: needs the demo feature"
)]
fn openai_python_sdk_against_demo() {
    if !sdk_available() {
        assert!(
            std::env::var("RINGWAY_REQUIRE_SDK").is_err(),
            "RINGWAY_REQUIRE_SDK is set but `python3 -c 'import openai'` fails"
        );
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringway demo");
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child);
    // The demo prints its instructions once the relay is listening.
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("demo output ended").unwrap();
        if line.contains("ringway demo is running") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "demo did not start"
        );
    }
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &format!("http://127.0.0.1:{port}/v1")])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk script failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NORMAL:Hello from the ringway mock upstream."),
        "{text}"
    );
    assert!(text.contains("STREAM:tok0|tok1|tok2|tok3"), "{text}");
    assert!(text.contains("ERROR:RateLimitError:429"), "{text}");
    assert!(
        text.contains("MODELS:gpt-4o,gpt-4o-mini,text-embedding-3-small"),
        "{text}"
    );
}
