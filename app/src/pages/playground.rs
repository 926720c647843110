//! Playground: try a priced model in the browser. Messages stream in as the model writes them
//! (from `POST /playground/chat`, as the signed-in user); Stop cancels the job, which is then
//! charged only for what was delivered. After each answer: tokens, time to first token and
//! tokens per second as the server measured them, cost and the new balance. "View code" shows
//! the same request as curl and as Python with the official openai client. Ctrl+Enter (⌘+Enter)
//! sends.

use leptos::prelude::*;

use crate::components::form::cents;
use leptos::task::spawn_local;
use leptos_meta::Title;
use serde_json::{Value, json};

use crate::api::{AnswerReceipt, PlaygroundModel, job_receipt, playground_models};
use crate::components::copy::CopyButton;
use crate::components::stream::{StreamError, post_events};

#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: &'static str,
    pub content: String,
}

/// The settings of one request, as typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub model: String,
    pub system: String,
    pub temperature: String,
    pub top_p: String,
    pub max_tokens: String,
    /// One stop sequence per line.
    pub stop: String,
}

/// The chat request the settings, the conversation so far and the new message make, checked
/// the way the server checks it (so most mistakes are caught before a round trip).
pub fn chat_body(s: &Settings, turns: &[Turn], message: &str) -> Result<Value, String> {
    if s.model.is_empty() {
        return Err("Choose a model.".into());
    }
    if message.trim().is_empty() {
        return Err("Write a message first.".into());
    }
    // f64, so that 0.7 is sent (and shown in the code samples) as 0.7.
    let temperature: f64 = s
        .temperature
        .trim()
        .parse()
        .ok()
        .filter(|t| (0.0..=2.0).contains(t))
        .ok_or("Temperature is a number from 0 to 2.")?;
    let top_p: f64 = s
        .top_p
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0.0 && *p <= 1.0)
        .ok_or("Top P is a number above 0, at most 1.")?;
    let max_tokens: u32 = s
        .max_tokens
        .trim()
        .parse()
        .ok()
        .filter(|m| *m >= 1)
        .ok_or("Max tokens is a whole number, at least 1.")?;
    let stop: Vec<&str> = s.stop.lines().filter(|l| !l.is_empty()).collect();
    if stop.len() > 4 {
        return Err("At most 4 stop sequences.".into());
    }
    let mut messages = Vec::new();
    if !s.system.trim().is_empty() {
        messages.push(json!({"role": "system", "content": s.system}));
    }
    for t in turns {
        messages.push(json!({"role": t.role, "content": t.content}));
    }
    messages.push(json!({"role": "user", "content": message}));
    let mut body = json!({
        "model": s.model,
        "messages": messages,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !stop.is_empty() {
        body["stop"] = json!(stop);
    }
    Ok(body)
}

/// The same request as a shell command and as Python with the openai client (the key comes
/// from the environment; it is never put in the page).
pub fn code_samples(body: &Value, origin: &str) -> (String, String) {
    let pretty = serde_json::to_string_pretty(body).unwrap_or_default();
    let curl = format!(
        "curl {origin}/v1/chat/completions \\\n  -H \"Authorization: Bearer $TOKENMILL_API_KEY\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '{}'",
        pretty.replace('\'', "'\\''")
    );
    let messages = serde_json::to_string_pretty(&body["messages"]).unwrap_or_default();
    let mut args = vec![
        format!("    model={},", body["model"]),
        format!("    messages={},", messages.replace('\n', "\n    ")),
    ];
    for (name, value) in [
        ("temperature", &body["temperature"]),
        ("top_p", &body["top_p"]),
        ("max_tokens", &body["max_tokens"]),
        ("stop", &body["stop"]),
    ] {
        if !value.is_null() {
            args.push(format!("    {name}={value},"));
        }
    }
    let python = format!(
        "import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=\"{origin}/v1\", api_key=os.environ[\"TOKENMILL_API_KEY\"])\nstream = client.chat.completions.create(\n{}\n    stream=True,\n)\nfor chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)\nprint()",
        args.join("\n")
    );
    (curl, python)
}

/// What the page shows after an answer.
#[derive(Debug, Clone, PartialEq)]
struct Stats {
    receipt: AnswerReceipt,
    stopped: bool,
}

/// Decode speed as the server measured it: the tokens after the first over the time from the
/// first token to the end (the first token's time is the time to first token).
pub fn tokens_per_s(r: &AnswerReceipt) -> Option<f64> {
    let decode_ms = r.duration_ms - r.ttft_ms?;
    (r.completion_tokens > 1 && decode_ms > 0)
        .then(|| (r.completion_tokens - 1) as f64 * 1000.0 / decode_ms as f64)
}

thread_local! {
    /// The abort controller of the running answer. Browser objects cannot live in reactive
    /// storage that the server (which renders on many threads) also creates, so the page keeps
    /// only a flag and the controller lives here, on the browser's one thread.
    static RUNNING: std::cell::RefCell<Option<web_sys::AbortController>> =
        const { std::cell::RefCell::new(None) };
}

fn origin() -> String {
    web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_else(|| "http://127.0.0.1:3000".into())
}

#[allow(
    clippy::too_many_lines,
    reason = "one page's markup, in the order it renders; its parts are components already"
)]
#[component]
pub fn Playground() -> impl IntoView {
    let models = Resource::new(|| (), |_| playground_models());
    let model = RwSignal::new(String::new());
    let system = RwSignal::new(String::from("You are a helpful assistant."));
    let temperature = RwSignal::new(String::from("0.7"));
    let top_p = RwSignal::new(String::from("1"));
    let max_tokens = RwSignal::new(String::from("256"));
    let stop = RwSignal::new(String::new());
    let turns = RwSignal::new(Vec::<Turn>::new());
    let message = RwSignal::new(String::new());
    let answer = RwSignal::new(String::new());
    // The message being answered: shown at once, a turn of the conversation once answered.
    let asking = RwSignal::new(None::<String>);
    let running = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let stats = RwSignal::new(None::<Stats>);
    let show_code = RwSignal::new(false);

    let first_model = move || {
        models
            .get()
            .and_then(|r| r.ok())
            .and_then(|v| v.first().map(|m| m.id.clone()))
            .unwrap_or_default()
    };
    let settings = move || Settings {
        model: Some(model.get())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(first_model),
        system: system.get(),
        temperature: temperature.get(),
        top_p: top_p.get(),
        max_tokens: max_tokens.get(),
        stop: stop.get(),
    };

    let send = move || {
        if running.get_untracked() {
            return;
        }
        let text = message.get_untracked();
        let body = match chat_body(&settings(), &turns.get_untracked(), &text) {
            Ok(b) => b,
            Err(e) => {
                error.set(Some(e));
                return;
            }
        };
        error.set(None);
        stats.set(None);
        answer.set(String::new());
        asking.set(Some(text.clone()));
        message.set(String::new());
        running.set(true);
        let controller = web_sys::AbortController::new().ok();
        let signal = controller.as_ref().map(|c| c.signal());
        RUNNING.with(|r| *r.borrow_mut() = controller);
        spawn_local(async move {
            let mut job_id = None::<String>;
            let mut late_error = None::<String>;
            let outcome = post_events(
                "/playground/chat",
                &body.to_string(),
                signal.as_ref(),
                |data| {
                    if data == "[DONE]" {
                        return;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        return;
                    };
                    if let Some(m) = v["error"]["message"].as_str() {
                        late_error = Some(m.to_string());
                        return;
                    }
                    if job_id.is_none() {
                        job_id = v["id"].as_str().map(str::to_string);
                    }
                    if let Some(t) = v["choices"][0]["delta"]["content"].as_str()
                        && !t.is_empty()
                    {
                        answer.update(|a| a.push_str(t));
                    }
                },
            )
            .await;
            RUNNING.with(|r| *r.borrow_mut() = None);
            let stopped = outcome == Err(StreamError::Aborted);
            if let Err(StreamError::Failed(m)) = outcome {
                error.set(Some(m));
            } else if let Some(m) = late_error {
                error.set(Some(m));
            }
            if let Some(id) = job_id {
                match job_receipt(id).await {
                    Ok(receipt) => stats.set(Some(Stats { stopped, receipt })),
                    Err(e) => error.set(Some(e.to_string())),
                }
                // The answer becomes a turn of the conversation, shown once.
                turns.update(|t| {
                    t.push(Turn {
                        role: "user",
                        content: text,
                    });
                    t.push(Turn {
                        role: "assistant",
                        content: answer.get_untracked(),
                    });
                });
                answer.set(String::new());
            } else if message.get_untracked().is_empty() {
                // Refused before any answer: the message goes back to be sent again.
                message.set(text);
            }
            asking.set(None);
            running.set(false);
        });
    };
    let stop_job = move || {
        RUNNING.with(|r| {
            if let Some(c) = r.borrow().as_ref() {
                c.abort();
            }
        })
    };
    let code = move || {
        let body = chat_body(&settings(), &turns.get(), &{
            let m = message.get();
            if m.trim().is_empty() {
                "Hello!".to_string()
            } else {
                m
            }
        });
        body.map(|b| code_samples(&b, &origin()))
    };

    view! {
        <Title text="Playground · Tokenmill" />
        <h1>"Playground"</h1>
        <p class="hint">
            "Runs as you, on your organisation's credits, at playground priority. "
            "Every answer is charged at the model's list price."
        </p>
        <div class="playground">
            <section class="chat">
                <Transition fallback=|| view! { <p class="loading">"Loading models…"</p> }>
                    {move || Suspend::new(async move {
                        match models.await {
                            Ok(list) if list.is_empty() => {
                                view! {
                                    <p class="empty">
                                        "No model is available yet: an operator has to price a model served by a factory."
                                    </p>
                                }
                                    .into_any()
                            }
                            Ok(list) => view! { <ModelPicker list model /> }.into_any(),
                            Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                        }
                    })}
                </Transition>
                <label for="pg-system">"System prompt"</label>
                <textarea id="pg-system" rows="2" prop:value=system on:input=move |ev| system.set(event_target_value(&ev))></textarea>
                <ol class="turns" data-testid="turns">
                    <For
                        each=move || turns.get().into_iter().enumerate()
                        key=|(i, _)| *i
                        children=|(_, t)| view! { <li class=format!("turn {}", t.role)><strong>{t.role}</strong><p>{t.content}</p></li> }
                    />
                </ol>
                <Show when=move || asking.get().is_some()>
                    <div class="turn user" data-testid="asking">
                        <strong>"user"</strong>
                        <p>{move || asking.get()}</p>
                    </div>
                </Show>
                <Show when=move || running.get() || !answer.get().is_empty()>
                    <div class="turn assistant live">
                        <strong>"assistant"</strong>
                        <p data-testid="answer" aria-live="polite">{move || answer.get()}</p>
                    </div>
                </Show>
                <label for="pg-message">"Message"</label>
                <textarea
                    id="pg-message"
                    rows="3"
                    prop:value=message
                    on:input=move |ev| message.set(event_target_value(&ev))
                    on:keydown=move |ev| {
                        if ev.key() == "Enter" && (ev.ctrl_key() || ev.meta_key()) {
                            ev.prevent_default();
                            send();
                        }
                    }
                ></textarea>
                <p class="hint">"Ctrl+Enter (⌘+Enter) sends."</p>
                <Show when=move || error.get().is_some()>
                    <p class="form-error" role="alert">{move || error.get()}</p>
                </Show>
                <div class="actions">
                    <button type="button" class="primary" data-testid="send" disabled=move || running.get() on:click=move |_| send()>
                        "Send"
                    </button>
                    <button type="button" data-testid="stop" disabled=move || !running.get() on:click=move |_| stop_job()>
                        "Stop"
                    </button>
                    <button type="button" on:click=move |_| { turns.set(Vec::new()); answer.set(String::new()); stats.set(None); }>
                        "Clear"
                    </button>
                    <button type="button" data-testid="view-code" on:click=move |_| show_code.update(|s| *s = !*s)>
                        "View code"
                    </button>
                </div>
                <Show when=move || stats.get().is_some()>
                    {move || stats.get().map(|s| view! { <StatsPanel stats=s /> })}
                </Show>
            </section>
            <section class="panel settings">
                <h2>"Settings"</h2>
                <label for="pg-temperature">"Temperature (0–2)"</label>
                <input id="pg-temperature" inputmode="decimal" prop:value=temperature on:input=move |ev| temperature.set(event_target_value(&ev)) />
                <label for="pg-top-p">"Top P (0–1)"</label>
                <input id="pg-top-p" inputmode="decimal" prop:value=top_p on:input=move |ev| top_p.set(event_target_value(&ev)) />
                <label for="pg-max-tokens">"Max tokens"</label>
                <input id="pg-max-tokens" inputmode="numeric" prop:value=max_tokens on:input=move |ev| max_tokens.set(event_target_value(&ev)) />
                <label for="pg-stop">"Stop sequences (one per line, up to 4)"</label>
                <textarea id="pg-stop" rows="2" prop:value=stop on:input=move |ev| stop.set(event_target_value(&ev))></textarea>
            </section>
        </div>
        <Show when=move || show_code.get()>
            <section class="panel code" data-testid="code">
                {move || match code() {
                    Ok((curl, python)) => view! {
                        <h2>"curl"</h2>
                        <pre><code data-testid="code-curl">{curl.clone()}</code></pre>
                        <CopyButton text=curl label="Copy curl" />
                        <h2>"Python (openai)"</h2>
                        <pre><code data-testid="code-python">{python.clone()}</code></pre>
                        <CopyButton text=python label="Copy Python" />
                        <p class="hint">"Create a key on the API keys page and export it as TOKENMILL_API_KEY."</p>
                    }.into_any(),
                    Err(e) => view! { <p class="hint">{e}</p> }.into_any(),
                }}
            </section>
        </Show>
    }
}

#[component]
fn ModelPicker(list: Vec<PlaygroundModel>, model: RwSignal<String>) -> impl IntoView {
    view! {
        <label for="pg-model">"Model"</label>
        <select id="pg-model" on:change=move |ev| model.set(event_target_value(&ev))>
            {list
                .into_iter()
                .map(|m| {
                    let context = m
                        .context
                        .map(|c| format!(", {c}-token context"))
                        .unwrap_or_default();
                    let label = format!(
                        "{} — {} in / {} out per million tokens{context}",
                        m.id, m.input_per_mtok, m.output_per_mtok
                    );
                    view! { <option value=m.id.clone() selected=move || model.get() == m.id>{label}</option> }
                })
                .collect_view()}
        </select>
    }
}

#[component]
fn StatsPanel(stats: Stats) -> impl IntoView {
    let r = stats.receipt;
    view! {
        <dl class="facts stats" data-testid="stats">
            <dt>"Tokens"</dt>
            <dd data-testid="tokens">{format!("{} prompt + {} completion", r.prompt_tokens, r.completion_tokens)}</dd>
            <dt>"Time to first token"</dt>
            <dd data-testid="ttft">{r.ttft_ms.map(|t| format!("{t} ms")).unwrap_or_else(|| "—".into())}</dd>
            <dt>"Speed"</dt>
            <dd data-testid="speed">{tokens_per_s(&r).map(|t| format!("{t:.1} tokens/s")).unwrap_or_else(|| "—".into())}</dd>
            <dt>"Cost"</dt>
            <dd data-testid="cost">{r.cost}</dd>
            <dt>"Balance"</dt>
            <dd data-testid="balance" title=r.balance.clone()>{cents(&r.balance)}</dd>
        </dl>
        {(stats.stopped || r.partial)
            .then(|| view! { <p class="hint" data-testid="stopped">"Stopped: only the tokens delivered were charged."</p> })}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            model: "tiny".into(),
            system: "Be brief.".into(),
            temperature: "0.5".into(),
            top_p: "1".into(),
            max_tokens: "64".into(),
            stop: "END\n\n###".into(),
        }
    }

    #[test]
    fn the_body_carries_the_conversation_and_settings() {
        let turns = vec![
            Turn {
                role: "user",
                content: "Hi".into(),
            },
            Turn {
                role: "assistant",
                content: "Hello".into(),
            },
        ];
        let b = chat_body(&settings(), &turns, "More").unwrap();
        assert_eq!(b["messages"].as_array().unwrap().len(), 4);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][3]["content"], "More");
        assert_eq!(b["stop"], json!(["END", "###"]));
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["stream"], true);
    }

    #[test]
    fn bad_settings_are_explained() {
        for (field, value) in [
            ("temperature", "3"),
            ("top_p", "0"),
            ("max_tokens", "0"),
            ("max_tokens", "x"),
        ] {
            let mut s = settings();
            match field {
                "temperature" => s.temperature = value.into(),
                "top_p" => s.top_p = value.into(),
                _ => s.max_tokens = value.into(),
            }
            assert!(chat_body(&s, &[], "x").is_err(), "{field}={value}");
        }
        assert!(chat_body(&settings(), &[], "  ").is_err());
        let mut s = settings();
        s.stop = "a\nb\nc\nd\ne".into();
        assert!(chat_body(&s, &[], "x").is_err());
    }

    #[test]
    fn numbers_are_sent_as_typed() {
        let mut s = settings();
        s.temperature = "0.7".into();
        s.top_p = "0.9".into();
        let b = chat_body(&s, &[], "x").unwrap();
        assert_eq!(b["temperature"].to_string(), "0.7");
        assert_eq!(b["top_p"].to_string(), "0.9");
    }

    #[test]
    fn speed_is_the_servers_decode_rate() {
        let r = AnswerReceipt {
            prompt_tokens: 5,
            completion_tokens: 101,
            cost: "$0".into(),
            partial: false,
            ttft_ms: Some(40),
            duration_ms: 540,
            balance: "$1".into(),
        };
        assert_eq!(tokens_per_s(&r), Some(200.0));
        assert_eq!(
            tokens_per_s(&AnswerReceipt {
                completion_tokens: 1,
                ..r.clone()
            }),
            None
        );
        assert_eq!(tokens_per_s(&AnswerReceipt { ttft_ms: None, ..r }), None);
    }

    #[test]
    fn code_samples_repeat_the_request_without_a_secret() {
        let b = chat_body(&settings(), &[], "It's fine").unwrap();
        let (curl, python) = code_samples(&b, "http://127.0.0.1:3000");
        assert!(curl.starts_with("curl http://127.0.0.1:3000/v1/chat/completions"));
        assert!(curl.contains("$TOKENMILL_API_KEY"));
        // The single quote is escaped for the shell.
        assert!(curl.contains(r#"It'\''s fine"#));
        assert!(python.contains("base_url=\"http://127.0.0.1:3000/v1\""));
        assert!(python.contains("temperature=0.5"));
        assert!(python.contains("stop=[\"END\",\"###\"]"));
        assert!(python.contains("stream=True"));
    }
}
