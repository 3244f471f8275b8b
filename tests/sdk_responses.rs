//! The official openai Python package's Responses API client against the relay (and the mock
//! upstream behind it): `client.responses.create` plain and with `stream=True`, each with and
//! without a function tool, `.retrieve` (of a plain and of a streamed response),
//! `.input_items.list`, `.delete`, the typed exceptions (`NotFoundError` for another token's
//! response and a deleted one, `RateLimitError` for an upstream 429, `APIError` for a stream
//! cut mid-way), and the usage the SDK parses.
//!
//! Interpreter and skip rules as `sdk_smoke` (see `common::sdk`): without the package the test
//! fails under `CI` / `RINGWAY_REQUIRE_SDK` and skips visibly elsewhere.

mod common;

use common::*;

const OTHER_TOKEN: &str = "sk-test-other-client-token";

const SCRIPT: &str = r#"
import sys
import openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=20)
other = OpenAI(base_url=sys.argv[1], api_key=sys.argv[3], max_retries=0, timeout=20)
r = client.responses.create(model="gpt-4o-mini", input="Say hello")
u = r.usage
print("CREATE:%s:%s:%s:%s:%d/%d/%d/%d" % (r.id[:5], r.object, r.status, r.output_text,
      u.input_tokens, u.input_tokens_details.cached_tokens, u.output_tokens, u.total_tokens))
tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]
t = client.responses.create(model="gpt-4o", input="Weather in Paris?", tools=tools)
call = t.output[0]
print("TOOL:%s:%s:%s:%s" % (call.type, call.name, call.call_id[:5], call.arguments))
types, deltas, final = [], [], None
for event in client.responses.create(model="mock-stream-3-20", input="Hi", stream=True):
    types.append(event.type)
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    if event.type == "response.completed":
        final = event.response
print("STREAM:" + ",".join(types))
print("DELTAS:%s:%s:%s:%d" % ("|".join(deltas), final.id[:5], final.output_text,
      final.usage.output_tokens))
args, tfinal = [], None
for event in client.responses.create(model="mock-stream-2-0", input="x", tools=tools, stream=True):
    if event.type == "response.function_call_arguments.delta":
        args.append(event.delta)
    if event.type == "response.completed":
        tfinal = event.response
print("STREAMTOOL:%s:%s" % ("".join(args), tfinal.output[0].name))
g = client.responses.retrieve(r.id)
print("RETRIEVE:%s:%s" % (g.id == r.id, g.output_text))
print("RETRIEVE_STREAMED:" + client.responses.retrieve(final.id).output_text)
items = client.responses.input_items.list(r.id)
print("ITEMS:" + ",".join("%s=%s" % (i.type, i.content[0].text) for i in items.data))
try:
    other.responses.retrieve(r.id)
    print("OTHER:none")
except openai.NotFoundError as e:
    print("OTHER:NotFoundError:%d:%s" % (e.status_code, e.code))
client.responses.delete(r.id)
print("DELETED")
try:
    client.responses.retrieve(r.id)
    print("AFTER_DELETE:none")
except openai.NotFoundError as e:
    print("AFTER_DELETE:NotFoundError:%d" % e.status_code)
try:
    client.responses.create(model="mock-status-429", input="x")
    print("ERROR:none")
except openai.RateLimitError as e:
    print("ERROR:RateLimitError:%d" % e.status_code)
try:
    for event in client.responses.create(model="mock-reset-stream", input="x", stream=True):
        pass
    print("MIDSTREAM:none")
except openai.APIError as e:
    print("MIDSTREAM:%s" % type(e).__name__)
"#;

#[test]
fn openai_python_sdk_responses_api() {
    let Some(python) = sdk::python_with("openai", "sdk_responses::openai_python_sdk_responses_api")
    else {
        return;
    };
    let mock = Mock::start();
    let relay = ConfigBuilder::new(mock.addr)
        .token("other", OTHER_TOKEN, &["*"])
        .start(&[]);
    let url = format!("http://{}/v1", relay.addr);
    let text = common::sdk::run_script(&python, SCRIPT, &[&url, TOKEN, OTHER_TOKEN]);
    let expected = [
        "CREATE:resp_:response:completed:Hello from the ringway mock upstream.:9/4/7/16",
        "TOOL:function_call:get_weather:call_:{\"mock\":true}",
        "STREAM:response.created,response.in_progress,response.output_item.added,\
         response.content_part.added,response.output_text.delta,response.output_text.delta,\
         response.output_text.delta,response.output_text.done,response.content_part.done,\
         response.output_item.done,response.completed",
        "DELTAS:tok0|tok1|tok2:resp_:tok0tok1tok2:3",
        "STREAMTOOL:{\"parts\":\"p0p1\"}:get_weather",
        "RETRIEVE:True:Hello from the ringway mock upstream.",
        "RETRIEVE_STREAMED:tok0tok1tok2",
        "ITEMS:message=Say hello",
        "OTHER:NotFoundError:404:response_not_found",
        "DELETED",
        "AFTER_DELETE:NotFoundError:404",
        "ERROR:RateLimitError:429",
        "MIDSTREAM:APIError",
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, expected, "{text}");
}
