//! Tool calling: the `tools`, `tool_choice` and `parallel_tool_calls` of a chat request, the
//! grammar that forces a call (`required` or a named function) in the model family's own call
//! syntax, and the calls found in an answer (whole or streamed). The family's syntax comes from
//! its chat template ([`ToolFormat`]): Hermes `<tool_call>` blocks (also every template without
//! tools of its own), Llama 3.1 JSON objects, Mistral's `[TOOL_CALLS]` lists.

use engine::{Constraint, ToolFormat};
use serde_json::{Value, json};

use super::error::ApiError;

/// The most calls one answer may make when a call is forced and parallel calls are allowed.
const MAX_FORCED_CALLS: usize = 4;
const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

#[derive(Debug, Clone)]
struct Function {
    name: String,
    parameters: Value,
}

/// The tools a chat request offers and how it lets the model use them.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// The tool objects as given (what the chat template renders).
    pub specs: Vec<Value>,
    functions: Vec<Function>,
    pub choice: Choice,
    parallel: bool,
}

/// A call found in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments as a JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolRequest {
    /// `tools` as OpenAI defines them (`{"type": "function", "function": {"name",
    /// "description", "parameters"}}`), with the choice and parallel flag.
    pub fn parse(
        tools: Value,
        choice: Option<Value>,
        parallel: Option<bool>,
    ) -> Result<ToolRequest, ApiError> {
        let Value::Array(specs) = tools else {
            return Err(invalid("tools", "tools must be a list of tool objects."));
        };
        if specs.is_empty() {
            return Err(invalid("tools", "tools must not be empty."));
        }
        let mut functions = Vec::with_capacity(specs.len());
        for (i, t) in specs.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid(
                    "tools",
                    format!("tools[{i}].type must be 'function'."),
                ));
            }
            let f = t.get("function").unwrap_or(&Value::Null);
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            if !valid_name(name) {
                return Err(invalid(
                    "tools",
                    format!(
                        "tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-'."
                    ),
                ));
            }
            if functions.iter().any(|f: &Function| f.name == name) {
                return Err(invalid("tools", format!("tools name '{name}' twice.")));
            }
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p) if p.is_object() => p.clone(),
                Some(_) => {
                    return Err(invalid(
                        "tools",
                        format!("tools[{i}].function.parameters must be a JSON schema object."),
                    ));
                }
            };
            functions.push(Function {
                name: name.to_string(),
                parameters,
            });
        }
        let choice = match choice {
            None | Some(Value::Null) => Choice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(invalid(
                        "tool_choice",
                        format!(
                            "tool_choice '{other}' is not one of none, auto, required or a function."
                        ),
                    ));
                }
            },
            Some(v) => {
                let name = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                    .ok_or_else(|| {
                        invalid(
                            "tool_choice",
                            "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}.",
                        )
                    })?;
                if !functions.iter().any(|f| f.name == name) {
                    return Err(invalid(
                        "tool_choice",
                        format!("tool_choice names '{name}', which is not among the tools."),
                    ));
                }
                Choice::Named(name.to_string())
            }
        };
        Ok(ToolRequest {
            specs,
            functions,
            choice,
            parallel: parallel.unwrap_or(true),
        })
    }

    /// Whether answers are searched for calls.
    pub fn calls_expected(&self) -> bool {
        self.choice != Choice::None
    }

    /// The grammar that makes the answer a call (`required`, or a named function), in the
    /// family's syntax; `special` finds a special token's id (Mistral's `[TOOL_CALLS]`).
    pub fn forced(
        &self,
        format: ToolFormat,
        special: impl Fn(&str) -> Option<u32>,
    ) -> Option<Constraint> {
        let allowed: Vec<&Function> = match &self.choice {
            Choice::None | Choice::Auto => return None,
            Choice::Required => self.functions.iter().collect(),
            Choice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
        };
        let many = self.parallel && self.choice == Choice::Required;
        let args_key = match format {
            ToolFormat::Llama3Json => "parameters",
            ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
        };
        let one_call = |f: &Function| {
            json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, args_key: f.parameters},
                "required": ["name", args_key],
                "additionalProperties": false
            })
        };
        let call = if allowed.len() == 1 {
            one_call(allowed[0])
        } else {
            json!({"anyOf": allowed.iter().map(|f| one_call(f)).collect::<Vec<_>>()})
        };
        match format {
            ToolFormat::Llama3Json => Some(Constraint::JsonSchema {
                schema: call,
                strict: false,
            }),
            ToolFormat::Mistral => {
                let list = json!({
                    "type": "array", "items": call, "minItems": 1,
                    "maxItems": if many { MAX_FORCED_CALLS } else { 1 }
                });
                let marker = match special("[TOOL_CALLS]") {
                    Some(id) => format!("<[{id}]> "),
                    None => String::new(),
                };
                Some(Constraint::Lark {
                    grammar: format!("start: {marker}%json {list}"),
                })
            }
            ToolFormat::Hermes => {
                let block = format!("\"{HERMES_OPEN}\\n\" %json {call} \"\\n{HERMES_CLOSE}\"");
                let count = if many { MAX_FORCED_CALLS } else { 1 };
                let alternatives: Vec<String> = (1..=count)
                    .map(|n| vec!["call"; n].join(" \"\\n\" "))
                    .collect();
                Some(Constraint::Lark {
                    grammar: format!("start: {}\ncall: {block}", alternatives.join(" | ")),
                })
            }
        }
    }

    /// The answer's text without its calls (`None` when nothing else is left), and the calls
    /// to offered functions, in order. A block that does not parse stays text.
    pub fn calls_in(&self, format: ToolFormat, text: &str) -> (Option<String>, Vec<Call>) {
        let (rest, found) = match format {
            ToolFormat::Hermes => hermes_calls(text),
            ToolFormat::Llama3Json | ToolFormat::Mistral => json_calls(text),
        };
        let mut calls = Vec::new();
        for v in found {
            match self.call_of(&v) {
                Some(c) => calls.push(c),
                None => return (Some(text.to_string()).filter(|t| !t.is_empty()), Vec::new()),
            }
        }
        let rest = rest.trim().to_string();
        (Some(rest).filter(|t| !t.is_empty()), calls)
    }

    fn call_of(&self, v: &Value) -> Option<Call> {
        let name = v.get("name")?.as_str()?;
        self.functions.iter().find(|f| f.name == name)?;
        let args = v.get("arguments").or_else(|| v.get("parameters"))?;
        let arguments = match args {
            // Some models write the arguments as a JSON text already.
            Value::String(s) if serde_json::from_str::<Value>(s).is_ok() => s.clone(),
            Value::Object(_) => args.to_string(),
            _ => return None,
        };
        Some(Call {
            name: name.to_string(),
            arguments,
        })
    }
}

/// `<tool_call>` blocks (the last may be cut off at the end), each a JSON object.
fn hermes_calls(text: &str) -> (String, Vec<Value>) {
    let mut rest = String::new();
    let mut calls = Vec::new();
    let mut at = 0;
    while let Some(open) = text[at..].find(HERMES_OPEN) {
        let start = at + open + HERMES_OPEN.len();
        let (body, next) = match text[start..].find(HERMES_CLOSE) {
            Some(close) => (
                &text[start..start + close],
                start + close + HERMES_CLOSE.len(),
            ),
            None => (&text[start..], text.len()),
        };
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(v) => {
                rest.push_str(&text[at..at + open]);
                calls.push(v);
            }
            Err(_) => rest.push_str(&text[at..next]),
        }
        at = next;
    }
    rest.push_str(&text[at..]);
    (rest, calls)
}

/// A bare call object or a list of them, after an optional `<|python_tag|>` or
/// `[TOOL_CALLS]` marker (when the detokenizer kept special tokens).
fn json_calls(text: &str) -> (String, Vec<Value>) {
    let body = text
        .trim()
        .trim_start_matches("<|python_tag|>")
        .trim_start_matches("[TOOL_CALLS]")
        .trim();
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_object) => {
            (String::new(), items)
        }
        Ok(v @ Value::Object(_)) if v.get("name").is_some() => (String::new(), vec![v]),
        _ => (text.to_string(), Vec::new()),
    }
}

/// A streamed answer's text while calls may come: text that cannot be part of a call goes out
/// at once; from where a call may start, text is held until the end, when the calls are
/// parsed from the whole answer.
pub struct ToolStream {
    format: ToolFormat,
    text: String,
    sent: usize,
    holding: bool,
}

impl ToolStream {
    pub fn new(format: ToolFormat) -> ToolStream {
        ToolStream {
            format,
            text: String::new(),
            sent: 0,
            holding: false,
        }
    }

    /// Takes a delta; returns the content that can go out now.
    pub fn push(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        if self.holding {
            return String::new();
        }
        let pending = &self.text[self.sent..];
        let release = match self.format {
            ToolFormat::Hermes => match pending.find(HERMES_OPEN) {
                Some(i) => {
                    self.holding = true;
                    i
                }
                // Hold what could still grow into the opening tag.
                None => (0..pending.len())
                    .find(|&i| {
                        pending.is_char_boundary(i) && HERMES_OPEN.starts_with(&pending[i..])
                    })
                    .unwrap_or(pending.len()),
            },
            ToolFormat::Llama3Json | ToolFormat::Mistral => {
                let started = self.text.trim_start();
                if self.sent == 0 && started.is_empty() {
                    0
                } else if self.sent == 0
                    && (started.starts_with(['{', '['])
                        || started.starts_with("<|python_tag|>")
                        || started.starts_with("[TOOL_CALLS]"))
                {
                    self.holding = true;
                    0
                } else {
                    pending.len()
                }
            }
        };
        let out = pending[..release].to_string();
        self.sent += release;
        out
    }

    /// At the end: the content still held back and the calls of the whole answer.
    pub fn finish(self, tools: &ToolRequest) -> (String, Vec<Call>) {
        let (content, calls) = tools.calls_in(self.format, &self.text);
        if calls.is_empty() {
            return (self.text[self.sent..].to_string(), calls);
        }
        let content = content.unwrap_or_default();
        let sent = self.text[..self.sent].trim();
        let rest = content
            .strip_prefix(sent)
            .map(str::to_string)
            .unwrap_or_default();
        (rest, calls)
    }
}

/// The calls of choice `choice` of response `response_id` as a message's `tool_calls`, each
/// with an id of its own (`index` added for stream deltas).
pub fn tool_calls_value(response_id: &str, choice: usize, calls: &[Call], indexed: bool) -> Value {
    let suffix: String = response_id
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": match choice {
                        0 => format!("call_{suffix}_{i}"),
                        c => format!("call_{suffix}_{c}_{i}"),
                    },
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if indexed {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolRequest {
        ToolRequest::parse(
            json!([{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]),
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn each_family_s_calls_are_found() {
        let t = weather();
        let (content, calls) = t.calls_in(
            ToolFormat::Hermes,
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nairobi\"}}\n</tool_call>",
        );
        assert_eq!(content.as_deref(), Some("Let me look."));
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Nairobi"}"#);
        let (content, calls) = t.calls_in(
            ToolFormat::Llama3Json,
            r#"{"name": "get_weather", "parameters": {"city": "Lagos"}}"#,
        );
        assert_eq!((content, calls.len()), (None, 1));
        let (_, calls) = t.calls_in(
            ToolFormat::Mistral,
            r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Accra"}}, {"name": "get_weather", "arguments": {"city": "Kigali"}}]"#,
        );
        assert_eq!(calls.len(), 2);
        // An unknown function or broken JSON is text.
        let (content, calls) = t.calls_in(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>",
        );
        assert!(calls.is_empty() && content.is_some());
    }

    #[test]
    fn a_stream_holds_back_only_what_may_be_a_call() {
        let t = weather();
        let mut s = ToolStream::new(ToolFormat::Hermes);
        let mut out = String::new();
        for piece in [
            "Sure",
            ". <tool",
            "_call>\n{\"name\": \"get_weather\", ",
            "\"arguments\": {}}\n</tool_call>",
        ] {
            out.push_str(&s.push(piece));
        }
        assert_eq!(out, "Sure. ");
        let (rest, calls) = s.finish(&t);
        assert_eq!((rest.as_str(), calls.len()), ("", 1));
        let mut s = ToolStream::new(ToolFormat::Hermes);
        assert_eq!(s.push("a <tool"), "a ");
        assert_eq!(s.push("kit> b"), "<toolkit> b");
    }

    #[test]
    fn bad_tools_and_choices_are_refused_by_name() {
        for (tools, choice, param) in [
            (json!({}), None, "tools"),
            (json!([{"type": "retrieval"}]), None, "tools"),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                None,
                "tools",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}]),
                Some(json!("sometimes")),
                "tool_choice",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}]),
                Some(json!({"type": "function", "function": {"name": "g"}})),
                "tool_choice",
            ),
        ] {
            let e = ToolRequest::parse(tools, choice, None).unwrap_err();
            assert_eq!(e.param, Some(param));
        }
    }
}
