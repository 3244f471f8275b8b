//! The official SDKs against converted (and native) endpoints, the real binary against the
//! mock: the `anthropic` Python package on `/v1/messages` served by an Anthropic channel
//! natively AND by an OpenAI-compatible channel converted — whole and streamed, with tools and
//! usage, and typed exceptions (`RateLimitError`, `AuthenticationError`) —, and the `openai`
//! package on `/v1/chat/completions` served by an Anthropic channel (whole and streamed, tools,
//! usage, `RateLimitError`).
//!
//! The interpreter and the skip rules are `common::sdk`'s, shared with `sdk_smoke` and
//! `sdk_responses`: `$RINGWAY_PYTHON`, else `.ci/venv/bin/python`, else `python3`; a missing
//! package FAILS the test under `CI` or `RINGWAY_REQUIRE_SDK` (`.ci/run` installs both
//! packages) and skips it visibly elsewhere.

mod common;

use common::*;

const ANTHROPIC_KEY: &str = "sk-ant-upstream-key-0123456789";

const ANTHROPIC_SCRIPT: &str = r#"
import sys, json, anthropic
base, token, native, converted = sys.argv[1:5]
c = anthropic.Anthropic(base_url=base, api_key=token, max_retries=0, timeout=20)
tools = [{"name": "get_weather", "description": "Weather of a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
messages = [{"role": "user", "content": "Weather in Paris?"}]

def describe(m):
    text = "".join(b.text for b in m.content if b.type == "text")
    tool = [b for b in m.content if b.type == "tool_use"][0]
    return f"{m.stop_reason}|{text}|{tool.name}|{json.dumps(tool.input, sort_keys=True)}"

for kind, model in (("NATIVE", native), ("CONVERTED", converted)):
    m = c.messages.create(model=model, max_tokens=64, tools=tools, messages=messages)
    u = m.usage
    print(f"{kind} WHOLE {describe(m)}|{u.input_tokens}|{u.output_tokens}|{u.cache_read_input_tokens}")
    delta_usage = None
    with c.messages.stream(model=model, max_tokens=64, tools=tools, messages=messages) as s:
        for event in s:
            if event.type == "message_delta":
                delta_usage = event.usage
        final = s.get_final_message()
    fu = final.usage
    print(f"{kind} STREAM {describe(final)}|{fu.input_tokens}|{fu.output_tokens}|{fu.cache_read_input_tokens}|{delta_usage.output_tokens}")

for kind, model in (("NATIVE", "claude-status-429"), ("CONVERTED", "gpt-status-429")):
    try:
        c.messages.create(model=model, max_tokens=8, messages=messages)
        print(f"{kind} ERROR none")
    except anthropic.RateLimitError as e:
        print(f"{kind} ERROR RateLimitError {e.status_code} {e.body['error']['type']}")

bad = anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0, timeout=20)
try:
    bad.messages.create(model=converted, max_tokens=8, messages=messages)
    print("AUTH none")
except anthropic.AuthenticationError as e:
    print(f"AUTH AuthenticationError {e.status_code}")
"#;

const OPENAI_SCRIPT: &str = r#"
import sys, json, openai
base, token, model = sys.argv[1:4]
c = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=20)
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": "Weather in Paris?"}]
r = c.chat.completions.create(model=model, messages=messages, tools=tools)
ch = r.choices[0]
call = ch.message.tool_calls[0]
u = r.usage
print(f"WHOLE {ch.finish_reason}|{ch.message.content}|{call.function.name}|{call.function.arguments}|"
      f"{u.prompt_tokens}|{u.completion_tokens}|{u.prompt_tokens_details.cached_tokens}")
content, args, finish, usage = "", {}, None, None
for chunk in c.chat.completions.create(model=model, messages=messages, tools=tools, stream=True,
                                       stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        content += choice.delta.content or ""
        for t in choice.delta.tool_calls or []:
            args[t.index] = args.get(t.index, "") + (t.function.arguments or "")
        finish = choice.finish_reason or finish
print(f"STREAM {finish}|{content}|{json.dumps(args)}|{usage.prompt_tokens}|{usage.completion_tokens}|"
      f"{usage.prompt_tokens_details.cached_tokens}")
try:
    c.chat.completions.create(model="claude-status-429", messages=messages)
    print("ERROR none")
except openai.RateLimitError as e:
    print(f"ERROR RateLimitError {e.status_code}")
"#;

fn relay(mock: &Mock) -> Relay {
    let map = |prefix: &str| {
        let pairs: Vec<String> = ["tools", "status-429"]
            .iter()
            .map(|m| format!("\"{prefix}-{m}\" = \"mock-{m}\""))
            .collect();
        format!("model_map = {{ {} }}", pairs.join(", "))
    };
    let anthropic = channel_toml(
        "anthropic",
        &mock.base_url(),
        ANTHROPIC_KEY,
        &["claude-*"],
        &map("claude"),
    )
    .replace("provider = \"openai\"", "provider = \"anthropic\"");
    let cfg = ConfigBuilder::new(mock.addr)
        .default_channel(mock.addr, &["gpt-*"], &map("gpt"))
        .section(&anthropic);
    start(Driver::IoUring, &cfg)
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
}

#[test]
fn anthropic_sdk_on_messages_native_and_converted() {
    let Some(python) = sdk::python_with(
        "anthropic",
        "convert_sdk::anthropic_sdk_on_messages_native_and_converted",
    ) else {
        return;
    };
    let mock = Mock::start();
    let relay = relay(&mock);
    let base = format!("http://{}", relay.addr);
    let text = common::sdk::run_script(
        &python,
        ANTHROPIC_SCRIPT,
        &[&base, TOKEN, "claude-tools", "gpt-tools"],
    );
    // Same answer both ways: text, one get_weather call, 5 input tokens (9 minus 4 read from
    // the cache), 7 output tokens, 4 cache reads.
    let whole = "tool_use|Let me check.|get_weather|{\"city\": \"Paris\"}|5|7|4";
    assert_eq!(line(&text, "NATIVE WHOLE "), whole, "{text}");
    assert_eq!(line(&text, "CONVERTED WHOLE "), whole, "{text}");
    // The SDK's final message: input and cache reads from message_start (native) or from
    // message_delta (converted: an OpenAI stream reports usage only at its end).
    let stream = "tool_use|Let me check.|get_weather|{\"city\": \"Paris\"}|5|7|4|7";
    assert_eq!(line(&text, "NATIVE STREAM "), stream, "{text}");
    assert_eq!(line(&text, "CONVERTED STREAM "), stream, "{text}");
    assert_eq!(
        line(&text, "NATIVE ERROR "),
        "RateLimitError 429 rate_limit_error"
    );
    assert_eq!(
        line(&text, "CONVERTED ERROR "),
        "RateLimitError 429 rate_limit_error"
    );
    assert_eq!(line(&text, "AUTH "), "AuthenticationError 401");
}

#[test]
fn openai_sdk_on_chat_completions_served_by_an_anthropic_channel() {
    let Some(python) = sdk::python_with(
        "openai",
        "convert_sdk::openai_sdk_on_chat_completions_served_by_an_anthropic_channel",
    ) else {
        return;
    };
    let mock = Mock::start();
    let relay = relay(&mock);
    let base = format!("http://{}", relay.addr);
    let text = common::sdk::run_script(&python, OPENAI_SCRIPT, &[&base, TOKEN, "claude-tools"]);
    assert_eq!(
        line(&text, "WHOLE "),
        "tool_calls|Let me check.|get_weather|{\"city\":\"Paris\"}|9|7|4",
        "{text}"
    );
    assert_eq!(
        line(&text, "STREAM "),
        "tool_calls|Let me check.|{\"0\": \"{\\\"city\\\":\\\"Paris\\\"}\"}|9|7|4",
        "{text}"
    );
    assert_eq!(line(&text, "ERROR "), "RateLimitError 429");
}
