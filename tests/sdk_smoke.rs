//! The official openai Python package against `ringway demo`, as a new user would run it:
//! chat (plain and streamed), an error status, streamed legacy completions, embeddings of two
//! inputs, and the model list.
//!
//! It needs the `openai` package; the interpreter and the skip rules are `common::sdk`'s:
//! `$RINGWAY_PYTHON`, else `.ci/venv/bin/python` (made by `.ci/run`), else `python3`; without
//! the package the test FAILS when `CI` or `RINGWAY_REQUIRE_SDK` is set, and elsewhere skips
//! with a banner on the real stderr.

mod common;

use common::{free_port, sdk, KillOnDrop};

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
parts = []
for chunk in client.completions.create(model="gpt-4o-mini", prompt="Say", stream=True):
    parts.append(chunk.object + "=" + chunk.choices[0].text)
print("COMPLETIONS:" + "|".join(parts))
e = client.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
print("EMBEDDINGS:" + ";".join(f"{d.index}:{d.embedding[:2]}:{len(d.embedding)}" for d in e.data)
      + ":" + str(e.usage.prompt_tokens))
m = client.models.list()
print("MODELS:" + ",".join(sorted(x.id for x in m.data)))
"#;

#[test]
#[cfg_attr(
    not(feature = "demo"),
    ignore = "runs `ringway mock`/`demo`: needs the demo feature"
)]
fn openai_python_sdk_against_demo() {
    let Some(python) = sdk::python_with("openai", "sdk_smoke::openai_python_sdk_against_demo")
    else {
        return;
    };
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
    let url = format!("http://127.0.0.1:{port}/v1");
    let text = common::sdk::run_script(&python, SCRIPT, &[&url]);
    assert!(
        text.contains("NORMAL:Hello from the ringway mock upstream."),
        "{text}"
    );
    assert!(text.contains("STREAM:tok0|tok1|tok2|tok3"), "{text}");
    assert!(text.contains("ERROR:RateLimitError:429"), "{text}");
    assert!(
        text.contains(
            "COMPLETIONS:text_completion=tok0|text_completion=tok1|text_completion=tok2|\
             text_completion=tok3|text_completion=tok4\n"
        ),
        "{text}"
    );
    // The SDK asks for base64 unless told otherwise, and decodes it.
    assert!(
        text.contains("EMBEDDINGS:0:[0.125, -0.25]:8;1:[0.125, -0.25]:8:3\n"),
        "{text}"
    );
    // The demo channel's exact names, and (once its upstream's list was fetched) what the mock
    // lists that its `mock-*` glob matches; sorted.
    let models: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("MODELS:"))
        .unwrap_or_else(|| panic!("no MODELS line: {text}"))
        .split(',')
        .collect();
    let mut sorted = models.clone();
    sorted.sort();
    assert_eq!(models, sorted, "{text}");
    for name in ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"] {
        assert!(models.contains(&name), "{name} missing: {text}");
    }
    assert!(
        models.iter().all(
            |m| ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"].contains(m)
                || m.starts_with("mock-")
        ),
        "{text}"
    );
}
