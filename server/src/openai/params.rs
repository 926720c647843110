//! Request bodies of `/v1/chat/completions` and `/v1/completions`, parsed into an engine
//! request. Everything a client can get wrong is named by the parameter OpenAI names, before
//! any work or hold: wrong types (with the JSON path), values out of range, features this
//! server does not offer (several choices, tools, echo).

use engine::{ChatMessage, Constraint, FunctionCall, Prompt, Request, SamplingParams, ToolCall};
use serde::Deserialize;

use super::error::ApiError;
use super::tools::{Choice, ToolRequest};

/// Which endpoint a body came to; decides the response's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// How log-probabilities are reported: chat's `logprobs.content[]` or the legacy
/// completions' parallel arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logprobs {
    Off,
    Chat { top: usize },
    Legacy { top: usize },
}

#[derive(Debug, Clone)]
pub struct Parsed {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: Logprobs,
    pub request: Request,
    /// The field the request's constraint came from (`response_format`, `guided_json`, …).
    pub constraint_param: Option<&'static str>,
    /// Tools on offer (chat only).
    pub tools: Option<ToolRequest>,
    /// Completions' further prompts, after the request's own: each is its own job and hold,
    /// and its own choice of one answer.
    pub more_prompts: Vec<Prompt>,
    /// Choices per prompt (OpenAI's `n`), 1 to [`MAX_CHOICES`].
    pub n: usize,
}

/// The most prompts one completions request may carry.
pub const MAX_PROMPTS: usize = 64;

/// The most choices (`n`) one prompt may ask for.
pub const MAX_CHOICES: u64 = 8;

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
    /// An assistant turn's calls.
    tool_calls: Option<Vec<MessageCall>>,
    /// A `tool` turn: the call it answers.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageCall {
    id: String,
    function: MessageFunction,
}

#[derive(Deserialize)]
struct MessageFunction {
    name: String,
    /// A JSON text, as OpenAI sends it.
    arguments: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The fields both endpoints share, and the ones only one of them has (rejected on the other
/// by `into_parsed`).
#[derive(Deserialize)]
struct Body {
    model: String,
    messages: Option<Vec<Message>>,
    prompt: Option<PromptField>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    stop: Option<Stop>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// `true`/`false` on chat, a count (0–5) on completions.
    logprobs: Option<serde_json::Value>,
    top_logprobs: Option<u64>,
    ignore_eos: Option<bool>,
    // vLLM's sampling extensions.
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    /// Token id (as a string key) → bias, −100 to 100.
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    tool_choice: Option<serde_json::Value>,
    parallel_tool_calls: Option<bool>,
    // Features not offered: refused by name rather than silently ignored.
    echo: Option<bool>,
    best_of: Option<u64>,
    suffix: Option<String>,
    tools: Option<serde_json::Value>,
    functions: Option<serde_json::Value>,
    response_format: Option<ResponseFormat>,
    // vLLM's structured-output extensions.
    guided_json: Option<GuidedJson>,
    guided_regex: Option<String>,
    guided_grammar: Option<String>,
    guided_choice: Option<Vec<String>>,
}

/// OpenAI's `response_format`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize)]
struct JsonSchemaFormat {
    #[allow(dead_code)]
    name: Option<String>,
    schema: Option<serde_json::Value>,
    strict: Option<bool>,
}

/// vLLM takes `guided_json` as a schema or as a string holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum GuidedJson {
    Text(String),
    Schema(serde_json::Value),
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// The top-level parameter a JSON path starts with, as a `'static` name for the error body.
fn param_of(path: &serde_path_to_error::Path) -> &'static str {
    const KNOWN: [&str; 34] = [
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "ignore_eos",
        "top_k",
        "min_p",
        "repetition_penalty",
        "logit_bias",
        "tool_choice",
        "parallel_tool_calls",
        "echo",
        "best_of",
        "suffix",
        "tools",
        "functions",
        "response_format",
        "guided_json",
        "guided_regex",
        "guided_grammar",
        "guided_choice",
        "user",
    ];
    let first = path
        .iter()
        .next()
        .map(|s| s.to_string())
        .unwrap_or_default();
    KNOWN.into_iter().find(|k| *k == first).unwrap_or("body")
}

pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<Parsed, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body: Body = match serde_path_to_error::deserialize(&mut de) {
        Ok(b) => b,
        Err(e) => {
            let inner = e.inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(invalid(
                    "body",
                    format!(
                        "We could not parse the JSON body of your request ({inner}). Send valid JSON with Content-Type: application/json."
                    ),
                ));
            }
            let param = param_of(e.path());
            let message = if inner.to_string().starts_with("missing field") {
                format!("Missing required parameter: {inner}.")
            } else {
                format!("Invalid value for '{}': {inner}.", e.path())
            };
            return Err(invalid(param, message));
        }
    };
    into_parsed(endpoint, body)
}

/// Refuses what this server does not do, naming the parameter: a missing model, n outside
/// 1 to 8, best_of above 1, echo, suffix, tools and functions, response formats other than text.
fn refuse_unsupported(b: &Body) -> Result<(), ApiError> {
    if b.model.trim().is_empty() {
        return Err(invalid(
            "model",
            "model must name a model; see GET /v1/models.",
        ));
    }
    if b.n.is_some_and(|n| !(1..=MAX_CHOICES).contains(&n)) {
        return Err(invalid(
            "n",
            format!("n must be between 1 and {MAX_CHOICES}."),
        ));
    }
    if b.best_of.is_some_and(|n| n != 1) {
        return Err(invalid("best_of", "Only best_of = 1 is supported."));
    }
    if b.echo == Some(true) {
        return Err(invalid("echo", "echo is not supported."));
    }
    if b.suffix.is_some() {
        return Err(invalid("suffix", "suffix is not supported."));
    }
    // Without tools there is nothing to choose from or call in parallel.
    let no_tools = b.tools.as_ref().is_none_or(serde_json::Value::is_null);
    if no_tools && b.tool_choice.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "tool_choice",
            "tool_choice is only allowed when tools are specified.",
        ));
    }
    if no_tools && b.parallel_tool_calls.is_some() {
        return Err(invalid(
            "parallel_tool_calls",
            "parallel_tool_calls is only allowed when tools are specified.",
        ));
    }
    if b.functions.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "functions",
            "functions (deprecated by OpenAI) are not supported; send tools.",
        ));
    }
    Ok(())
}

/// The grammar the output must match, from `response_format` or one of vLLM's `guided_*`
/// fields (at most one of them), and the field it came from (which a compile error names).
fn constraint_of(b: &mut Body) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    let mut found: Vec<(Constraint, &'static str)> = Vec::new();
    match b.response_format.take() {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => found.push((Constraint::JsonObject, "response_format")),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.ok_or_else(|| {
                invalid(
                    "response_format",
                    "response_format.json_schema.schema is missing: give the JSON schema the answer must follow.",
                )
            })?;
            found.push((
                Constraint::JsonSchema {
                    schema,
                    strict: json_schema.strict.unwrap_or(false),
                },
                "response_format",
            ));
        }
    }
    if let Some(j) = b.guided_json.take() {
        let schema = match j {
            GuidedJson::Schema(s) => s,
            GuidedJson::Text(t) => serde_json::from_str(&t)
                .map_err(|e| invalid("guided_json", format!("guided_json is not JSON: {e}.")))?,
        };
        found.push((
            Constraint::JsonSchema {
                schema,
                strict: false,
            },
            "guided_json",
        ));
    }
    if let Some(pattern) = b.guided_regex.take() {
        found.push((Constraint::Regex { pattern }, "guided_regex"));
    }
    if let Some(grammar) = b.guided_grammar.take() {
        found.push((Constraint::Lark { grammar }, "guided_grammar"));
    }
    if let Some(choices) = b.guided_choice.take() {
        if choices.is_empty() {
            return Err(invalid("guided_choice", "guided_choice must not be empty."));
        }
        found.push((Constraint::Choice { choices }, "guided_choice"));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
        return Err(invalid(
            found[1].1,
            format!(
                "Give one structured-output constraint; this request gives {}.",
                names.join(" and ")
            ),
        ));
    }
    Ok(found.pop())
}

/// The prompt: chat messages for chat, a prompt (text or token ids) for completions, never
/// the other's field.
fn prompt_of(
    endpoint: Endpoint,
    prompt: Option<PromptField>,
    messages: Option<Vec<Message>>,
) -> Result<Vec<Prompt>, ApiError> {
    Ok(match endpoint {
        Endpoint::Chat => {
            if prompt.is_some() {
                return Err(invalid(
                    "prompt",
                    "prompt belongs to /v1/completions; chat takes messages.",
                ));
            }
            let messages = messages
                .ok_or_else(|| invalid("messages", "Missing required parameter: 'messages'."))?;
            vec![Prompt::Chat(chat_messages(messages)?)]
        }
        Endpoint::Completions => {
            if messages.is_some() {
                return Err(invalid(
                    "messages",
                    "messages belong to /v1/chat/completions; completions take a prompt.",
                ));
            }
            let prompts: Vec<Prompt> = match prompt
                .ok_or_else(|| invalid("prompt", "Missing required parameter: 'prompt'."))?
            {
                PromptField::Text(t) => vec![Prompt::Text(t)],
                PromptField::Tokens(ids) => vec![Prompt::Tokens(ids)],
                PromptField::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
                PromptField::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
            };
            if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
                return Err(invalid(
                    "prompt",
                    format!("Send 1 to {MAX_PROMPTS} prompts (strings or lists of token ids)."),
                ));
            }
            prompts
        }
    })
}

/// The logprobs asked for: chat's `logprobs` + `top_logprobs` (up to 20), or legacy
/// completions' `logprobs` count (up to 5).
fn logprobs_of(endpoint: Endpoint, b: &Body) -> Result<Logprobs, ApiError> {
    Ok(match endpoint {
        Endpoint::Chat => {
            let on = match &b.logprobs {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(on)) => *on,
                Some(_) => return Err(invalid("logprobs", "logprobs must be true or false.")),
            };
            match (on, b.top_logprobs) {
                (_, Some(t)) if t > 20 => {
                    return Err(invalid(
                        "top_logprobs",
                        "top_logprobs must be between 0 and 20.",
                    ));
                }
                (false, Some(_)) => {
                    return Err(invalid(
                        "top_logprobs",
                        "top_logprobs needs logprobs set to true.",
                    ));
                }
                (true, t) => Logprobs::Chat {
                    top: t.unwrap_or(0) as usize,
                },
                (false, None) => Logprobs::Off,
            }
        }
        Endpoint::Completions => match &b.logprobs {
            None | Some(serde_json::Value::Null) => Logprobs::Off,
            Some(v) => match v.as_u64() {
                Some(n) if n <= 5 => Logprobs::Legacy { top: n as usize },
                _ => {
                    return Err(invalid(
                        "logprobs",
                        "logprobs must be an integer between 0 and 5.",
                    ));
                }
            },
        },
    })
}

/// `logit_bias`'s keys are token ids written as strings (JSON keys are strings).
fn logit_bias_of(
    bias: Option<&std::collections::BTreeMap<String, f32>>,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(bias.len());
    for (key, &value) in bias {
        let token: u32 = key.trim().parse().map_err(|_| {
            invalid(
                "logit_bias",
                format!("logit_bias keys must be token ids; '{key}' is not one."),
            )
        })?;
        if !(-100.0..=100.0).contains(&value) {
            return Err(invalid(
                "logit_bias",
                format!("logit_bias['{key}'] is {value}; a bias must be between -100 and 100."),
            ));
        }
        out.push((token, value));
    }
    out.sort_by_key(|&(t, _)| t);
    // "07" and "7" name one token: refuse rather than pick one.
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid("logit_bias", "logit_bias names a token twice."));
    }
    Ok(out)
}

fn into_parsed(endpoint: Endpoint, mut b: Body) -> Result<Parsed, ApiError> {
    refuse_unsupported(&b)?;
    let mut prompts = prompt_of(endpoint, b.prompt.take(), b.messages.take())?;
    let prompt = prompts.remove(0);
    let logprobs = logprobs_of(endpoint, &b)?;
    let constraint = constraint_of(&mut b)?;
    let tools = match b.tools.take().filter(|t| !t.is_null()) {
        None => None,
        Some(_) if endpoint == Endpoint::Completions => {
            return Err(invalid("tools", "tools belong to /v1/chat/completions."));
        }
        Some(t) => Some(ToolRequest::parse(
            t,
            b.tool_choice.take(),
            b.parallel_tool_calls,
        )?),
    };
    if let (Some(t), Some((_, param))) = (&tools, &constraint)
        && matches!(t.choice, Choice::Required | Choice::Named(_))
    {
        return Err(invalid(
            param,
            format!("{param} cannot be combined with a tool_choice that forces a call."),
        ));
    }
    let max_tokens = match (b.max_completion_tokens, b.max_tokens) {
        (Some(m), _) | (None, Some(m)) => {
            if m == 0 {
                return Err(invalid("max_tokens", "max_tokens must be at least 1."));
            }
            Some(usize::try_from(m).unwrap_or(usize::MAX))
        }
        // Legacy completions default to 16 tokens, as OpenAI's do; chat runs to the context.
        (None, None) if endpoint == Endpoint::Completions => Some(16),
        (None, None) => None,
    };
    let top_k = match b.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(_) => return Err(invalid("top_k", "top_k must be -1 (off) or positive.")),
    };
    let stop = match b.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let sampling = SamplingParams {
        temperature: b.temperature.unwrap_or(1.0),
        top_k,
        top_p: b.top_p.unwrap_or(1.0),
        min_p: b.min_p.unwrap_or(0.0),
        repetition_penalty: b.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: b.frequency_penalty.unwrap_or(0.0),
        presence_penalty: b.presence_penalty.unwrap_or(0.0),
        seed: b.seed.map(|s| s as u64),
        logit_bias: logit_bias_of(b.logit_bias.as_ref())?,
        logprobs: match logprobs {
            Logprobs::Off => None,
            Logprobs::Chat { top } | Logprobs::Legacy { top } => Some(top),
        },
    };
    let mut request = Request::new(prompt);
    request.sampling = sampling;
    request.max_tokens = max_tokens;
    request.stop = stop;
    request.ignore_eos = b.ignore_eos.unwrap_or(false);
    let constraint_param = constraint.as_ref().map(|(_, p)| *p);
    request.constraint = constraint.map(|(c, _)| c);
    let stream = b.stream.unwrap_or(false);
    if b.stream_options.is_some() && !stream {
        return Err(invalid(
            "stream_options",
            "stream_options is only allowed when stream is true.",
        ));
    }
    Ok(Parsed {
        model: b.model,
        stream,
        include_usage: b
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        request,
        constraint_param,
        tools,
        more_prompts: prompts,
        n: b.n.unwrap_or(1) as usize,
    })
}

fn chat_messages(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "messages must not be empty."));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                // OpenAI's newer name for the system role.
                "developer" | "system" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(invalid(
                        "messages",
                        format!(
                            "messages[{i}].role '{other}' is not supported; use system, developer, user, assistant or tool."
                        ),
                    ));
                }
            };
            let tool_calls = calls_of(i, m.tool_calls.unwrap_or_default())?;
            if role == "tool" && m.tool_call_id.is_none() {
                return Err(invalid(
                    "messages",
                    format!("messages[{i}] is a tool result without tool_call_id."),
                ));
            }
            let content = match m.content {
                // An assistant turn that only calls tools has no content.
                None if !tool_calls.is_empty() => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(invalid(
                                    "messages",
                                    format!(
                                        "messages[{i}] has a '{kind}' part; only text parts are supported."
                                    ),
                                ));
                            }
                        }
                    }
                    text
                }
                None => {
                    return Err(invalid(
                        "messages",
                        format!("messages[{i}].content is missing."),
                    ));
                }
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id,
            })
        })
        .collect()
}

/// An assistant turn's calls, their arguments parsed (chat templates take them as objects).
fn calls_of(i: usize, calls: Vec<MessageCall>) -> Result<Vec<ToolCall>, ApiError> {
    calls
        .into_iter()
        .map(|c| {
            let arguments = serde_json::from_str(&c.function.arguments).map_err(|e| {
                invalid(
                    "messages",
                    format!(
                        "messages[{i}].tool_calls: the arguments of '{}' are not JSON ({e}).",
                        c.function.name
                    ),
                )
            })?;
            Ok(ToolCall {
                id: c.id,
                kind: "function".into(),
                function: FunctionCall {
                    name: c.function.name,
                    arguments,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> Result<Parsed, ApiError> {
        parse(Endpoint::Chat, json.as_bytes())
    }

    #[test]
    fn a_full_chat_body() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_completion_tokens":5,"max_tokens":9,"temperature":0.5,"top_p":0.9,"stop":"END",
                "seed":-1,"presence_penalty":0.1,"frequency_penalty":0.2,"logprobs":true,"top_logprobs":3,
                "stream":true,"stream_options":{"include_usage":true},"ignore_eos":true,"user":"u1","n":1}"#,
        )
        .unwrap();
        assert_eq!(p.model, "m");
        assert!(p.stream && p.include_usage);
        assert_eq!(p.logprobs, Logprobs::Chat { top: 3 });
        let r = p.request;
        // max_completion_tokens wins over the deprecated max_tokens.
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, vec!["END".to_string()]);
        assert_eq!(r.sampling.seed, Some(u64::MAX));
        assert!(r.ignore_eos);
        let Prompt::Chat(m) = r.prompt else { panic!() };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "hi there");
    }

    #[test]
    fn completions_prompts_and_defaults() {
        let p = parse(Endpoint::Completions, br#"{"model":"m","prompt":["one"]}"#).unwrap();
        assert_eq!(p.request.prompt, Prompt::Text("one".into()));
        assert_eq!(p.request.max_tokens, Some(16));
        let p = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":[1,2,3],"logprobs":2}"#,
        )
        .unwrap();
        assert_eq!(p.request.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(p.logprobs, Logprobs::Legacy { top: 2 });
        let p = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"x","logit_bias":{"65":100,"7":-100}}"#,
        )
        .unwrap();
        assert_eq!(
            p.request.sampling.logit_bias,
            vec![(7, -100.0), (65, 100.0)]
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        let cases: [(&str, &str); 18] = [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#,
                "tool_choice",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"parallel_tool_calls":false}"#,
                "parallel_tool_calls",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"x":1}}"#,
                "logit_bias",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"5":101}}"#,
                "logit_bias",
            ),
            (r#"{"model":"m","messages":[]"#, "body"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "body"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-3}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":9}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{}]}"#,
                "tools",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                "messages",
            ),
            (r#"{"model":"m","prompt":"x"}"#, "prompt"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
        ];
        for (body, param) in cases {
            let e = chat(body).unwrap_err();
            assert_eq!(e.param.unwrap_or("body"), param, "{body}: {}", e.message);
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        }
        let p = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":["a","b"]}"#,
        )
        .unwrap();
        assert_eq!(p.more_prompts, vec![Prompt::Text("b".into())]);
        let e = parse(Endpoint::Completions, br#"{"model":"m","prompt":[]}"#).unwrap_err();
        assert_eq!(e.param, Some("prompt"));
        let p = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":[[1],[2]],"stream":true,"n":3}"#,
        )
        .unwrap();
        assert_eq!(p.more_prompts, vec![Prompt::Tokens(vec![2])]);
        assert_eq!((p.stream, p.n), (true, 3));
        let e = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"a","logprobs":9}"#,
        )
        .unwrap_err();
        assert_eq!(e.param, Some("logprobs"));
    }
}
