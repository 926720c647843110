//! Chat templates render as Jinja2 renders them in Hugging Face's `apply_chat_template`: the
//! same text for the same messages, and the template's own refusal where it raises one. Checked
//! on the real SmolLM2 file's template (read from the GGUF by the `gguf` package on the Python
//! side, so our reading of the file is checked too), on the fixture's, and on a template that
//! uses what real ones use: slices, `set`, Python string methods, filters, loop controls and
//! `raise_exception`.

mod common;

use engine::chat::ChatTemplate;
use engine::fixture::{CHAT_TEMPLATE, FixtureSpec, write_fixture};
use engine::gguf::convert;
use engine::{ChatMessage, Checkpoint};
use serde_json::{Value, json};

/// Renders each conversation of the JSON input as `apply_chat_template` does (its sandboxed
/// environment, `trim_blocks`, `lstrip_blocks`, loop controls and `raise_exception`). The
/// template and the BOS/EOS tokens come from the GGUF file named in the input, else from it.
const JINJA2: &str = r#"
import json, sys
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

job = json.load(sys.stdin)
if job.get("gguf"):
    from gguf import GGUFReader
    r = GGUFReader(job["gguf"])
    def part(name, i=0):
        f = r.fields[name]
        return f.parts[f.data[i]]
    source = bytes(part("tokenizer.chat_template")).decode()
    token = lambda key: bytes(part("tokenizer.ggml.tokens", int(part(key)[0]))).decode()
    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
else:
    source, bos, eos = job["template"], job["bos"], job["eos"]

def raise_exception(message):
    raise TemplateError(message)

# apply_chat_template's own tojson: json.dumps with its defaults, not Jinja2's HTML-safe one.
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.globals["raise_exception"] = raise_exception
env.filters["tojson"] = tojson
template = env.from_string(source)
extra = {"tools": job["tools"]} if "tools" in job else {}
out = []
for messages in job["conversations"]:
    try:
        out.append({"text": template.render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True, **extra)})
    except TemplateError as e:
        out.append({"error": str(e)})
json.dump({"template": source, "renders": out}, sys.stdout)
"#;

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

/// Conversations that differ where templates branch: a system prompt or none, several turns,
/// whitespace a template may trim, non-ASCII text, and text that looks like template syntax.
fn conversations() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![message("user", "What color is the sky?")],
        vec![
            message("system", "  Answer in French.\n"),
            message("user", "Bonjour !"),
        ],
        vec![
            message("user", "Write a haiku."),
            message("assistant", "Leaves fall\n\tslowly\n"),
            message("user", "Another, about 日本語 and Ünïcödé ✓"),
        ],
        vec![message(
            "user",
            "{{ bos_token }} {% if %} <|im_end|> \"quotes\" 'single' \\ backslash",
        )],
        vec![
            message("user", "/skip this one"),
            message("assistant", "  "),
            message("user", ""),
        ],
        // Two user turns in a row: a template that checks alternation refuses.
        vec![message("user", "one"), message("user", "two")],
    ]
}

/// Ours against Jinja2's for every conversation; returns the template Python read.
fn same_as_jinja2(ours: impl Fn(&[ChatMessage]) -> Result<String, String>, job: Value) -> String {
    let conversations: Vec<Vec<ChatMessage>> = match job.get("conversations") {
        Some(given) => serde_json::from_value(given.clone()).unwrap(),
        None => conversations(),
    };
    let mut job = job;
    job["conversations"] = serde_json::to_value(&conversations).unwrap();
    let out = common::python(JINJA2, &[], job.to_string().as_bytes());
    let theirs: Value = serde_json::from_slice(&out).unwrap();
    let renders = theirs["renders"].as_array().unwrap();
    assert_eq!(renders.len(), conversations.len());
    for (messages, theirs) in conversations.iter().zip(renders) {
        match (ours(messages), theirs) {
            (Ok(ours), theirs) => {
                assert_eq!(Some(ours.as_str()), theirs["text"].as_str(), "{messages:?}")
            }
            (Err(ours), theirs) => assert_eq!(
                Some(ours.as_str()),
                theirs["error"].as_str(),
                "{messages:?}"
            ),
        }
    }
    theirs["template"].as_str().unwrap().to_string()
}

fn render(template: &ChatTemplate) -> impl Fn(&[ChatMessage]) -> Result<String, String> {
    |messages| template.render(messages).map_err(|e| e.message)
}

#[test]
fn the_smollm2_template_renders_as_jinja2_renders_it() {
    let Some(path) = common::smollm2() else {
        return;
    };
    if !common::python_has("jinja2, gguf") {
        return;
    }
    let ck = Checkpoint::open(&path).unwrap();
    let source = ck.chat_template.as_deref().unwrap();
    let ours = ChatTemplate::new(source, ck.bos_token.as_deref(), ck.eos_token.as_deref()).unwrap();
    let theirs = same_as_jinja2(render(&ours), json!({ "gguf": path }));
    assert_eq!(theirs, source, "the template as the gguf package reads it");
}

#[test]
fn the_fixture_template_renders_as_jinja2_renders_it_from_the_gguf_file() {
    if !common::python_has("jinja2, gguf") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_fixture(&dir, &FixtureSpec::default()).unwrap();
    let file = tmp.path().join("tiny.gguf");
    convert(&Checkpoint::open(&dir).unwrap(), None, &file).unwrap();
    let ck = Checkpoint::open(&file).unwrap();
    let source = ck.chat_template.as_deref().unwrap();
    assert_eq!(source, CHAT_TEMPLATE);
    let ours = ChatTemplate::new(source, ck.bos_token.as_deref(), ck.eos_token.as_deref()).unwrap();
    same_as_jinja2(render(&ours), json!({ "gguf": file }));
}

/// Shaped like the Llama 3, Qwen2 and Mistral templates: a default system prompt, roles that
/// must alternate, methods, filters and a loop control.
const RICH: &str = "\
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] | trim %}
    {%- set rest = messages[1:] %}
{%- else %}
    {%- set system = 'You are a helpful assistant.' %}
    {%- set rest = messages %}
{%- endif %}
{{- bos_token }}<|system|>
{{ system }}
{% for m in rest %}
    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if m['content'].startswith('/skip') %}{% continue %}{% endif %}
<|{{ m['role'] }}|>
{{ m['content'].strip() | replace('\\t', '    ') }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}

{% endfor %}
{%- if add_generation_prompt %}<|assistant|>
{% endif %}";

#[test]
fn a_template_with_methods_filters_and_loop_controls_renders_as_jinja2_renders_it() {
    if !common::python_has("jinja2") {
        return;
    }
    let ours = ChatTemplate::new(RICH, Some("<s>"), Some("</s>")).unwrap();
    let refused = render(&ours)(&[message("user", "one"), message("user", "two")]);
    assert_eq!(
        refused.unwrap_err(),
        "Conversation roles must alternate user/assistant/user/assistant/..."
    );
    same_as_jinja2(
        render(&ours),
        json!({ "template": RICH, "bos": "<s>", "eos": "</s>" }),
    );
}

/// Shaped like Qwen2.5's template with tools: the tool list as `tojson` lines in the system
/// turn, an assistant's calls as `<tool_call>` blocks with `arguments | tojson`, consecutive
/// tool results gathered in one user turn, `tojson(indent=4)` as Llama 3.1's uses.
const WITH_TOOLS: &str = r#"
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nThe first tool, spelled out:\n" }}
    {{- tools[0] | tojson(indent=4) }}
    {{- "<|im_end|>\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

#[test]
fn a_template_with_tools_renders_as_jinja2_renders_it() {
    if !common::python_has("jinja2") {
        return;
    }
    let tools = vec![
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather at a <city>, in °C & 'degrees'",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "Città"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}
            }, "required": ["city"]}
        }}),
        json!({"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}),
    ];
    let call = |id: &str, name: &str, arguments: Value| json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
    let conversations = json!([
        [{"role": "user", "content": "Weather in Zürich?"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Zürich and Nairobi, and the time?"},
            {"role": "assistant", "content": "", "tool_calls": [
                call("c1", "get_weather", json!({"city": "Zürich", "days": 2})),
                call("c2", "get_weather", json!({"city": "Nairobi", "note": "a \"quoted\" <b>"})),
                call("c3", "now", json!({}))
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"t\": 3}"},
            {"role": "tool", "tool_call_id": "c2", "content": "{\"t\": 24}"},
            {"role": "tool", "tool_call_id": "c3", "content": "12:00"},
            {"role": "assistant", "content": "3 °C, 24 °C, noon."},
            {"role": "user", "content": "Thanks"}
        ]
    ]);
    let ours = ChatTemplate::new(WITH_TOOLS, None, Some("<|im_end|>")).unwrap();
    let tools_given = tools.clone();
    let render = move |messages: &[ChatMessage]| {
        ours.render_with_tools(messages, &tools_given)
            .map_err(|e| e.message)
    };
    same_as_jinja2(
        render,
        json!({ "template": WITH_TOOLS, "bos": "", "eos": "<|im_end|>", "tools": tools,
                "conversations": conversations }),
    );
}
