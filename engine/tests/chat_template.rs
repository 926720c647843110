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

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.globals["raise_exception"] = raise_exception
template = env.from_string(source)
out = []
for messages in job["conversations"]:
    try:
        out.append({"text": template.render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True)})
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
    let conversations = conversations();
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
