//! Chat templates, rendered as Hugging Face's `apply_chat_template` renders them: Jinja with
//! `trim_blocks` and `lstrip_blocks`, Python string and dict methods (`.strip()`, `.items()` …),
//! `raise_exception`, and `messages`, `bos_token`, `eos_token`, `add_generation_prompt` in scope.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::request::InvalidRequest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos: bos.unwrap_or_default().to_string(),
            eos: eos.unwrap_or_default().to_string(),
        })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, InvalidRequest> {
        let template = self.env.get_template(NAME).map_err(|e| InvalidRequest {
            param: "messages",
            message: e.to_string(),
        })?;
        template
            .render(context! {
                messages => messages,
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
