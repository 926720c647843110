//! Turning a running job into OpenAI's responses: one JSON object, or server-sent events
//! (`chat.completion.chunk` / `text_completion` chunks, a last chunk with the finish reason,
//! a usage chunk when asked, then `data: [DONE]`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::{
    Json,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use engine::ModelInfo;
use engine::sampling::TokenLogprob;
use engine::{Event, FinishReason, ToolFormat};
use jobs::{Charged, JobError, JobKind, Jobs, Principal, Receipt, RunningJob};
use serde_json::{Value, json};

use super::error::ApiError;
use super::params::{Endpoint, Logprobs, Parsed};
use super::tools::{Call, ToolRequest, ToolStream, tool_calls_value};

/// What every chunk of one choice of a response repeats.
#[derive(Clone)]
struct Shape {
    endpoint: Endpoint,
    /// The choice's `index`.
    index: usize,
    id: String,
    created: i64,
    model: String,
    logprobs: Logprobs,
    include_usage: bool,
    /// The model's tokenizer, for logprobs' token texts and bytes.
    info: Option<Arc<ModelInfo>>,
    /// Tools on offer whose calls answers are searched for, in the model family's syntax.
    tools: Option<(ToolRequest, ToolFormat)>,
}

impl Shape {
    /// The same for choice `index`.
    fn at(&self, index: usize) -> Shape {
        Shape {
            index,
            ..self.clone()
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn token_text(&self, id: u32) -> String {
        self.info
            .as_ref()
            .and_then(|i| i.tokenizer.decode(&[id], false).ok())
            .unwrap_or_default()
    }

    /// The token's own bytes: one byte of a character split over tokens is that byte, not
    /// the U+FFFD its text alone shows.
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.info
            .as_ref()
            .map(|i| i.token_bytes(id))
            .unwrap_or_default()
    }

    fn chat_entry(&self, lp: &TokenLogprob) -> Value {
        let entry = |id: u32, logprob: f32| json!({ "token": self.token_text(id), "logprob": logprob, "bytes": self.token_bytes(id) });
        let mut v = entry(lp.token, lp.logprob);
        v["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
        v
    }

    /// Legacy `top_logprobs` of one position, keyed by token text; distinct tokens with the
    /// same text (byte tokens all show U+FFFD) are never merged: after the first, each is
    /// keyed `token_id:N`, as vLLM names tokens by id.
    fn legacy_top(&self, top: &[(u32, f32)]) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for &(id, lp) in top {
            let text = self.token_text(id);
            let key = if out.contains_key(&text) {
                format!("token_id:{id}")
            } else {
                text
            };
            out.insert(key, json!(lp));
        }
        out
    }

    /// How far a token moves `text_offset`: its text's length in characters, the same whether
    /// the answer is streamed or whole.
    fn offset_step(&self, lps: &[TokenLogprob]) -> usize {
        lps.iter()
            .map(|l| self.token_text(l.token).chars().count())
            .sum()
    }

    /// The `logprobs` of a choice for these tokens, in the endpoint's format; `offset` is
    /// where the first token's text starts in the completion (legacy `text_offset`).
    fn logprobs_value(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        match self.logprobs {
            Logprobs::Off => Value::Null,
            Logprobs::Chat { .. } => {
                json!({ "content": lps.iter().map(|l| self.chat_entry(l)).collect::<Vec<_>>() })
            }
            Logprobs::Legacy { .. } => {
                let mut at = offset;
                let mut tokens = Vec::new();
                let mut offsets = Vec::new();
                for l in lps {
                    let t = self.token_text(l.token);
                    offsets.push(at);
                    at += t.chars().count();
                    tokens.push(t);
                }
                json!({
                    "tokens": tokens,
                    "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": lps.iter().map(|l| self.legacy_top(&l.top)).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }

    /// A whole chat answer's choice: its calls, if it made any, as `message.tool_calls` with
    /// `finish_reason: "tool_calls"`.
    fn whole_choice(&self, text: &str, logprobs: Value, finish: &str) -> Value {
        let Some((tools, format)) = &self.tools else {
            return self.choice(text, logprobs, Some(finish), false);
        };
        let (content, calls) = tools.calls_in(*format, text);
        if calls.is_empty() {
            return self.choice(text, logprobs, Some(finish), false);
        }
        json!({
            "index": self.index,
            "message": {
                "role": "assistant",
                "content": content,
                "refusal": null,
                "tool_calls": tool_calls_value(&self.id, self.index, &calls, false),
            },
            "logprobs": logprobs,
            "finish_reason": if finish == "stop" { "tool_calls" } else { finish },
        })
    }

    /// A stream chunk carrying an answer's calls.
    fn calls_chunk(&self, calls: &[Call]) -> Value {
        let choice = json!({
            "index": self.index,
            "delta": {"tool_calls": tool_calls_value(&self.id, self.index, calls, true)},
            "logprobs": null,
            "finish_reason": null,
        });
        self.envelope(vec![choice], Value::Null, true)
    }

    fn choice(&self, text: &str, logprobs: Value, finish: Option<&str>, chunk: bool) -> Value {
        match self.endpoint {
            Endpoint::Chat if chunk => json!({
                "index": self.index,
                "delta": if text.is_empty() && finish.is_some() { json!({}) } else { json!({ "content": text }) },
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
            Endpoint::Chat => json!({
                "index": self.index,
                "message": { "role": "assistant", "content": text, "refusal": null },
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
            Endpoint::Completions => json!({
                "index": self.index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        }
    }

    fn envelope(&self, choices: Vec<Value>, usage: Value, chunk: bool) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage,
        })
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn finish_name(reason: Option<FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Length) => "length",
        // A cancelled job's client is gone; "stop" is what it would have read.
        _ => "stop",
    }
}

/// A job this instance's shutdown cancelled: 503 with `Retry-After`, so clients retry
/// elsewhere.
fn shut_down(receipt: &jobs::Receipt) -> ApiError {
    let message = if receipt.completion_tokens > 0 {
        format!(
            "The server shut down before this answer finished; you were charged for the {} tokens delivered. Retry to get the rest.",
            receipt.completion_tokens
        )
    } else {
        "The server shut down before this request finished; you were not charged. Retry in a few seconds.".into()
    };
    ApiError {
        message,
        ..ApiError::from(jobs::JobError::ShuttingDown)
    }
}

pub fn failed(message: &str) -> ApiError {
    ApiError::internal(format!(
        "The model failed while generating ({message}); you were not charged. Try again."
    ))
}

/// An admitted job and the shape of its answer.
pub struct Admitted {
    job: RunningJob,
    shape: Shape,
}

impl Admitted {
    pub fn job_id(&self) -> &str {
        self.job.id()
    }

    /// Runs the job to its end without settling it: the whole answer, as a non-streaming
    /// response has it (usage from the engine's counts, which settlement charges), or `None`
    /// when the engine failed.
    pub async fn run_whole(&mut self) -> Option<Value> {
        let events = self.job.run_buffered().await;
        let finish = events.iter().find_map(|e| match e {
            Event::Finished(f) => Some(f.clone()),
            _ => None,
        })?;
        Some(whole_body(
            &self.shape,
            &events,
            finish.prompt_tokens,
            finish.completion_tokens,
            Some(finish.reason),
        ))
    }

    pub async fn settle(self) -> Result<Receipt, JobError> {
        self.job.settle().await
    }
}

/// A refused admission as the client is told it, naming the field at fault.
fn admission_error(
    e: JobError,
    endpoint: Endpoint,
    constraint_param: Option<&'static str>,
) -> ApiError {
    let context = matches!(e, JobError::ContextLength { .. });
    let mut e = ApiError::from(e);
    if context && endpoint == Endpoint::Completions {
        e.param = Some("prompt");
    }
    // A grammar the compiler refused: name the field it came in.
    if e.param == Some("response_format") {
        e.param = constraint_param.or(e.param);
    }
    e
}

/// Admits the job of the request's prompt (validation, price, allocation, hold, queue), for a
/// request of one choice; [`generate`] answers the others.
pub async fn admit(
    jobs: &Jobs,
    who: &Principal,
    kind: JobKind,
    endpoint: Endpoint,
    mut parsed: Parsed,
) -> Result<Admitted, ApiError> {
    parsed.n = 1;
    let (mut choices, shape, _) = admit_choices(jobs, who, kind, endpoint, parsed).await?;
    let job = choices.pop().ok_or_else(|| failed("no job was started"))?;
    Ok(Admitted { job, shape })
}

/// Admits the `n` choices of the request's prompt (see `Jobs::start_choices`): their jobs, the
/// shape of the first choice's answer, and whether to stream.
async fn admit_choices(
    jobs: &Jobs,
    who: &Principal,
    kind: JobKind,
    endpoint: Endpoint,
    mut parsed: Parsed,
) -> Result<(Vec<RunningJob>, Shape, bool), ApiError> {
    let info = jobs.model_info(&parsed.model);
    let tools = parsed.tools.take().map(|t| {
        let format = info
            .as_ref()
            .and_then(|i| i.chat_template.as_ref())
            .map_or(ToolFormat::Hermes, |c| c.tool_format());
        parsed.request.tools = t.specs.clone();
        if let Some(forced) = t.forced(format, |s| {
            info.as_ref().and_then(|i| i.tokenizer.token_to_id(s))
        }) {
            parsed.request.constraint = Some(forced);
            parsed.constraint_param = Some("tool_choice");
        }
        (t, format)
    });
    let choices = jobs
        .start_choices(who, kind, &parsed.model, parsed.request, parsed.n)
        .await
        .map_err(|e| admission_error(e, endpoint, parsed.constraint_param))?;
    let first = choices
        .first()
        .ok_or_else(|| failed("no job was started"))?;
    let shape = Shape {
        endpoint,
        index: 0,
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-{}", first.id()),
            Endpoint::Completions => format!("cmpl-{}", first.id()),
        },
        created: first.created_at() / 1000,
        model: parsed.model,
        logprobs: parsed.logprobs,
        include_usage: parsed.include_usage,
        info,
        tools: tools.filter(|(t, _)| t.calls_expected()),
    };
    Ok((choices, shape, parsed.stream))
}

/// Admits the request's jobs and answers with the whole completion or a stream of it.
pub async fn generate(
    jobs: &Jobs,
    who: &Principal,
    kind: JobKind,
    endpoint: Endpoint,
    parsed: Parsed,
) -> Result<Response, ApiError> {
    if !parsed.more_prompts.is_empty() {
        return generate_many(jobs, who, kind, endpoint, parsed).await;
    }
    let n = parsed.n;
    let (choices, shape, stream) = admit_choices(jobs, who, kind, endpoint, parsed).await?;
    if stream {
        return Ok(stream_choices(choices, shape, n));
    }
    let (choices, prompt_tokens, completion_tokens) = run_choices(choices, &shape, 0).await?;
    let body = shape.envelope(choices, usage(prompt_tokens, completion_tokens), false);
    Ok(Json(body).into_response())
}

/// Completions with several prompts: every prompt is checked (tokenized, against the
/// context) before any is held for; then each prompt's choices are their own jobs and holds,
/// all run at once, and answered as choices `prompt × n + choice` of one answer (whole, or
/// one stream) whose usage is their sum.
async fn generate_many(
    jobs: &Jobs,
    who: &Principal,
    kind: JobKind,
    endpoint: Endpoint,
    mut parsed: Parsed,
) -> Result<Response, ApiError> {
    let more = std::mem::take(&mut parsed.more_prompts);
    let mut each = vec![parsed.clone()];
    for prompt in more {
        let mut one = parsed.clone();
        one.request.prompt = prompt;
        each.push(one);
    }
    if let Some(info) = jobs.model_info(&parsed.model) {
        for one in &each {
            info.prepare(one.request.clone())
                .map_err(|e| admission_error(JobError::from(e), endpoint, one.constraint_param))?;
        }
    }
    let mut admitted = Vec::with_capacity(each.len());
    for one in each {
        admitted.push(admit_choices(jobs, who, kind, endpoint, one).await?);
    }
    let n = parsed.n;
    if parsed.stream {
        let mut shapes = admitted.iter().map(|(_, shape, _)| shape.clone());
        let shape = shapes.next().ok_or_else(|| failed("no prompt was run"))?;
        let all = admitted.into_iter().flat_map(|(choices, _, _)| choices);
        return Ok(stream_choices(all.collect(), shape, n));
    }
    let ran = futures_util::future::join_all(admitted.into_iter().enumerate().map(
        |(i, (choices, shape, _))| async move {
            let ran = run_choices(choices, &shape, i * n).await;
            (ran, shape)
        },
    ))
    .await;
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut choices = Vec::new();
    let mut first = None;
    for (result, shape) in ran {
        let (some, p, c) = result?;
        prompt_tokens += p;
        completion_tokens += c;
        choices.extend(some);
        first.get_or_insert(shape);
    }
    let shape = first.ok_or_else(|| failed("no prompt was run"))?;
    let body = shape.envelope(choices, usage(prompt_tokens, completion_tokens), false);
    Ok(Json(body).into_response())
}

/// Runs one prompt's choices to their ends: each choice whole (numbered from `first`), the
/// prompt's tokens (counted once, as the first choice pays for them) and the completions'.
async fn run_choices(
    jobs: Vec<RunningJob>,
    shape: &Shape,
    first: usize,
) -> Result<(Vec<Value>, usize, usize), ApiError> {
    let ran = futures_util::future::join_all(jobs.into_iter().map(run_whole)).await;
    let mut prompt_tokens = None;
    let mut completion_tokens = 0;
    let mut choices = Vec::with_capacity(ran.len());
    for (i, result) in ran.into_iter().enumerate() {
        let (events, p, c, reason) = result?;
        prompt_tokens.get_or_insert(p);
        completion_tokens += c;
        choices.push(whole_choice_of(&shape.at(first + i), &events, reason));
    }
    Ok((choices, prompt_tokens.unwrap_or(0), completion_tokens))
}

/// Runs a job to its end: its events, prompt and completion tokens, and how it ended.
async fn run_whole(
    mut job: RunningJob,
) -> Result<(Vec<Event>, usize, usize, Option<FinishReason>), ApiError> {
    let events = job.run_buffered().await;
    // The usual end: the charge is the engine's counts (the answer goes out while the
    // settlement commits).
    if let Some(f) = job.completed().cloned() {
        job.settle_without_waiting();
        return Ok((events, f.prompt_tokens, f.completion_tokens, Some(f.reason)));
    }
    let receipt = job.settle().await?;
    if receipt.shut_down {
        return Err(shut_down(&receipt));
    }
    if let Charged::Failed(m) = &receipt.charged {
        return Err(failed(m));
    }
    Ok((
        events,
        receipt.prompt_tokens,
        receipt.completion_tokens,
        receipt.finish_reason,
    ))
}

/// The non-streaming response for these events.
fn whole_body(
    shape: &Shape,
    events: &[Event],
    prompt_tokens: usize,
    completion_tokens: usize,
    reason: Option<FinishReason>,
) -> Value {
    let choice = whole_choice_of(shape, events, reason);
    shape.envelope(vec![choice], usage(prompt_tokens, completion_tokens), false)
}

/// The choice of a whole answer made of these events.
fn whole_choice_of(shape: &Shape, events: &[Event], reason: Option<FinishReason>) -> Value {
    let mut text = String::new();
    let mut lps = Vec::new();
    for e in events {
        if let Event::Token {
            text: t, logprob, ..
        } = e
        {
            text.push_str(t);
            lps.extend(logprob.iter().cloned());
        }
    }
    shape.whole_choice(&text, shape.logprobs_value(&lps, 0), finish_name(reason))
}

fn data(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// What one choice's stream gives the response's stream.
enum Out {
    Chunk(Value),
    /// The choice's end: its usage (prompt, completion) when it is to be shown, and an
    /// error to send when it did not end well.
    End {
        index: usize,
        usage: Option<(usize, usize)>,
        error: Option<Value>,
    },
}

/// Streams the choices (`n` per prompt), their chunks interleaved as they come; then one
/// usage chunk (when asked) and the errors of choices that failed. When the client goes away
/// the stream is dropped with the jobs in it, which cancels their sequences and settles only
/// what was delivered.
fn stream_choices(jobs: Vec<RunningJob>, shape: Shape, n: usize) -> Response {
    let include_usage = shape.include_usage;
    let choices = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| Box::pin(choice_stream(job, shape.at(i))));
    let mut merged = futures_util::stream::select_all(choices);
    let events = async_stream::stream! {
        let (mut prompt_tokens, mut completion_tokens, mut counted) = (0, 0, false);
        let mut errors = Vec::new();
        while let Some(out) = futures_util::StreamExt::next(&mut merged).await {
            match out {
                Out::Chunk(v) => yield data(&v),
                Out::End { index, usage, error } => {
                    if let Some((p, c)) = usage {
                        // A prompt's first choice pays for the prompt its choices share.
                        if index % n == 0 {
                            prompt_tokens += p;
                        }
                        completion_tokens += c;
                        counted = true;
                    }
                    errors.extend(error);
                }
            }
        }
        if include_usage && counted {
            yield data(&shape.envelope(Vec::new(), usage(prompt_tokens, completion_tokens), true));
        }
        for e in errors {
            yield data(&e);
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One choice's chunks, then its end.
fn choice_stream(mut job: RunningJob, shape: Shape) -> impl futures_util::Stream<Item = Out> {
    async_stream::stream! {
        if shape.endpoint == Endpoint::Chat {
            let first = json!({
                "index": shape.index,
                "delta": { "role": "assistant", "content": "" },
                "logprobs": null,
                "finish_reason": null,
            });
            yield Out::Chunk(strip_usage(shape.envelope(vec![first], Value::Null, true), &shape));
        }
        let mut offset = 0usize;
        // With tools on offer, text that may be a call waits for the end.
        let mut calls_stream = shape.tools.as_ref().map(|(_, format)| ToolStream::new(*format));
        while let Some(event) = job.next().await {
            match event {
                Event::Token { text, logprob, .. } => {
                    let text = match &mut calls_stream {
                        Some(s) => s.push(&text),
                        None => text,
                    };
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let lps: Vec<TokenLogprob> = logprob.into_iter().collect();
                    let lp = shape.logprobs_value(&lps, offset);
                    offset += shape.offset_step(&lps);
                    let choice = shape.choice(&text, lp, None, true);
                    yield Out::Chunk(strip_usage(shape.envelope(vec![choice], Value::Null, true), &shape));
                }
                // Cut by a shutdown: no finish chunk, the error event says why.
                Event::Finished(f) if f.reason == FinishReason::Cancelled && job.shutting_down() => {}
                Event::Finished(f) => {
                    let mut finish = finish_name(Some(f.reason));
                    if let (Some(s), Some((tools, _))) = (calls_stream.take(), &shape.tools) {
                        let (rest, calls) = s.finish(tools);
                        if !rest.is_empty() {
                            let choice = shape.choice(&rest, Value::Null, None, true);
                            yield Out::Chunk(strip_usage(shape.envelope(vec![choice], Value::Null, true), &shape));
                        }
                        if !calls.is_empty() {
                            yield Out::Chunk(strip_usage(shape.calls_chunk(&calls), &shape));
                            if finish == "stop" {
                                finish = "tool_calls";
                            }
                        }
                    }
                    let choice = shape.choice("", Value::Null, Some(finish), true);
                    yield Out::Chunk(strip_usage(shape.envelope(vec![choice], Value::Null, true), &shape));
                }
                Event::Failed(_) => {}
            }
        }
        let index = shape.index;
        // Ran to its end: usage is the engine's counts (settled while the stream ends).
        if let Some(f) = job.completed().cloned() {
            job.settle_without_waiting();
            yield Out::End { index, usage: Some((f.prompt_tokens, f.completion_tokens)), error: None };
            return;
        }
        match job.settle().await {
            Ok(receipt) if receipt.shut_down => {
                let usage = (receipt.completion_tokens > 0)
                    .then_some((receipt.prompt_tokens, receipt.completion_tokens));
                yield Out::End { index, usage, error: Some(shut_down(&receipt).body()) };
            }
            Ok(receipt) => match &receipt.charged {
                Charged::Failed(m) => {
                    yield Out::End { index, usage: None, error: Some(failed(m).body()) };
                }
                _ => {
                    let usage = Some((receipt.prompt_tokens, receipt.completion_tokens));
                    yield Out::End { index, usage, error: None };
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "settling a streamed job failed");
                yield Out::End { index, usage: None, error: Some(ApiError::from(e).body()) };
            }
        }
    }
}

/// With include_usage every chunk carries `"usage": null` and the last one the numbers;
/// without, chunks have no `usage` key at all (as OpenAI sends them).
fn strip_usage(mut v: Value, shape: &Shape) -> Value {
    if !shape.include_usage
        && let Some(o) = v.as_object_mut()
    {
        o.remove("usage");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_share_a_text_keep_their_own_top_logprobs_keys() {
        let dir = tempfile::tempdir().unwrap();
        engine::fixture::write_fixture(dir.path(), &engine::fixture::FixtureSpec::default())
            .unwrap();
        let info = Arc::new(ModelInfo::open("tiny", dir.path()).unwrap());
        // Two tokens that are single bytes of multi-byte characters: both read U+FFFD alone.
        let pair: Vec<u32> = (0..info.config.vocab_size as u32)
            .filter(|&i| matches!(info.token_bytes(i).as_slice(), [b] if *b >= 0x80))
            .take(2)
            .collect();
        let shape = Shape {
            endpoint: Endpoint::Completions,
            index: 0,
            id: "cmpl-1".into(),
            created: 0,
            model: "tiny".into(),
            logprobs: Logprobs::Legacy { top: 3 },
            include_usage: false,
            info: Some(info),
            tools: None,
        };
        let ids = [pair[0], 7, pair[1]];
        let top = shape.legacy_top(&[(ids[0], -0.5), (ids[1], -1.0), (ids[2], -2.0)]);
        let keys: Vec<&String> = top.keys().collect();
        assert_eq!(keys.len(), 3, "{top:?}");
        assert_eq!(top["\u{fffd}"], json!(-0.5));
        assert_eq!(top[&format!("token_id:{}", pair[1])], json!(-2.0));
    }
}
