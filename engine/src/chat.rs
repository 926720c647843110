//! Chat templates, rendered as Hugging Face's `apply_chat_template` renders them: Jinja with
//! `trim_blocks` and `lstrip_blocks`, Python string and dict methods (`.strip()`, `.items()` …),
//! `raise_exception`, and `messages`, `tools`, `bos_token`, `eos_token`, `add_generation_prompt`
//! in scope. A template that knows nothing of tools gets them as Hermes-style text instead: the
//! tool list in the system message, calls as `<tool_call>` blocks, results as
//! `<tool_response>` blocks in a user turn (what Qwen2.5's own template writes).

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::request::InvalidRequest;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }
}

/// A function call as chat templates take it (`arguments` an object, as Hugging Face's
/// templates expect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: serde_json::Value,
}

/// How a model family writes tool calls (found in its chat template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen2.5, SmolLM2 and
    /// every template without tools of its own).
    Hermes,
    /// A bare `{"name": …, "parameters": …}` object, or after `<|python_tag|>` (Llama 3.1+).
    Llama3Json,
    /// `[TOOL_CALLS] [{"name": …, "arguments": …}, …]` (Mistral).
    Mistral,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The template renders `tools` itself.
    takes_tools: bool,
    tool_format: ToolFormat,
}

const NAME: &str = "chat";

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as `apply_chat_template` defines it: Python's `json.dumps` with its defaults
/// (`", "` and `": "` between items, `","` with an `indent`, non-ASCII and `<>&'` written as
/// they are, keys in their given order), so that tools and call arguments reach the model
/// spelled as in its training.
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let pretty = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                &json,
                &mut serde_json::Serializer::with_formatter(&mut out, pretty),
            )
        }
        None => serde::Serialize::serialize(
            &json,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonSeparators),
        ),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// JSON on one line with Python's default separators.
struct PythonSeparators;

/// `", "` before every item but the first.
fn item_separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    if first { Ok(()) } else { w.write_all(b", ") }
}

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        let takes_tools = source.contains("tools");
        let tool_format = if !takes_tools || source.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        };
        Ok(ChatTemplate {
            env,
            bos: bos.unwrap_or_default().to_string(),
            eos: eos.unwrap_or_default().to_string(),
            takes_tools,
            tool_format,
        })
    }

    pub fn tool_format(&self) -> ToolFormat {
        self.tool_format
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, InvalidRequest> {
        self.render_with_tools(messages, &[])
    }

    /// The prompt text for `messages` with `tools` (OpenAI's tool objects) on offer.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<String, InvalidRequest> {
        let uses_tools = !tools.is_empty()
            || messages
                .iter()
                .any(|m| !m.tool_calls.is_empty() || m.role == "tool");
        let rewritten;
        let messages = if uses_tools && !self.takes_tools {
            rewritten = hermes_messages(messages, tools);
            &rewritten[..]
        } else {
            messages
        };
        let tools = (self.takes_tools && !tools.is_empty()).then_some(tools);
        let template = self.env.get_template(NAME).map_err(|e| InvalidRequest {
            param: "messages",
            message: e.to_string(),
        })?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
                bos_token => self.bos,
                eos_token => self.eos,
                add_generation_prompt => true,
            })
            .map_err(|e| InvalidRequest {
                param: "messages",
                message: match e.kind() {
                    // The template's own complaint (e.g. roles must alternate) is the message.
                    ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid").to_string(),
                    _ => format!("the chat template failed on these messages: {e}"),
                },
            })
    }
}

const HERMES_TOOLS: &str = "You may call one or more functions to assist with the user query.\n\n\
You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const HERMES_CALLS: &str = "</tools>\n\nFor each function call, return a json object with function \
name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

/// `messages` for a template without tools: the tool list joins the system message, calls
/// become `<tool_call>` blocks and tool results `<tool_response>` blocks in a user turn.
fn hermes_messages(messages: &[ChatMessage], tools: &[serde_json::Value]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if !tools.is_empty() {
        let mut system = String::new();
        if let Some(first) = messages.first().filter(|m| m.role == "system") {
            system.push_str(&first.content);
            system.push_str("\n\n");
            rest = &messages[1..];
        }
        system.push_str(HERMES_TOOLS);
        for t in tools {
            system.push('\n');
            system.push_str(&t.to_string());
        }
        system.push('\n');
        system.push_str(HERMES_CALLS);
        out.push(ChatMessage::new("system", system));
    }
    for m in rest {
        if m.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
            // Consecutive results share one user turn.
            match out.last_mut() {
                Some(last) if last.role == "user" && last.content.ends_with("</tool_response>") => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(ChatMessage::new("user", block)),
            }
            continue;
        }
        let mut content = m.content.clone();
        for c in &m.tool_calls {
            let call =
                serde_json::json!({"name": c.function.name, "arguments": c.function.arguments});
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
        }
        out.push(ChatMessage::new(m.role.clone(), content));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_without_tools_gets_them_in_the_hermes_format() {
        let t = ChatTemplate::new(crate::fixture::CHAT_TEMPLATE, Some("<s>"), None).unwrap();
        assert_eq!(t.tool_format(), ToolFormat::Hermes);
        let tool = serde_json::json!({"type": "function", "function": {"name": "f"}});
        let call = ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: serde_json::json!({"x": 1}),
            },
        };
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Go"),
            ChatMessage {
                tool_calls: vec![call],
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("c1".into()),
                ..ChatMessage::new("tool", "42")
            },
        ];
        let text = t.render_with_tools(&messages, &[tool]).unwrap();
        let system = text.split("<|im_end|>").next().unwrap();
        assert!(system.starts_with("<s><|im_start|>system\nBe brief.\n\nYou may call"));
        assert!(
            system.contains(
                "<tools>\n{\"type\":\"function\",\"function\":{\"name\":\"f\"}}\n</tools>"
            )
        );
        assert!(text.contains(
            "<|im_start|>assistant\n<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call><|im_end|>"
        ));
        assert!(text.contains("<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>"));
        assert!(text.ends_with("<|im_start|>assistant\n"));

        // Templates that name a family's syntax are read as that family.
        let mistral = ChatTemplate::new(
            "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]",
            None,
            None,
        );
        assert_eq!(mistral.unwrap().tool_format(), ToolFormat::Mistral);
        let llama = ChatTemplate::new("{% if tools %}Environment: ipython{% endif %}", None, None);
        assert_eq!(llama.unwrap().tool_format(), ToolFormat::Llama3Json);
    }
}
