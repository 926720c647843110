//! The batch runner: a task of every portal instance that runs batch lines as batch-priority
//! jobs, a few at a time, so batches fill the capacity production and the playground leave
//! idle (the engine's scheduler puts them last). Each line is admitted like an API request,
//! with its own hold; its answer is staged before its job is settled (see the batches crate).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batches::{Batches, Line, Staged};
use jobs::{JobError, JobKind, Jobs, Principal};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::openai::{self, ApiError};

/// A runner whose heartbeat is older than this is taken for dead and its lines taken over.
pub const STALE_MS: i64 = 15_000;
const HEARTBEAT: Duration = Duration::from_secs(3);
/// How often the runner looks for work when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);
/// After the engine said it is full: wait before queueing more batch work.
const BACKOFF: Duration = Duration::from_secs(1);

/// Lines this instance's tasks are running, by (batch, line).
type InFlight = Arc<Mutex<HashSet<(String, i64)>>>;

/// Starts the runner; `concurrency` lines run at once in this instance.
pub fn spawn(batches: Batches, jobs: Jobs, concurrency: usize) {
    let id = format!("runner-{}", db::new_id());
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let in_flight = InFlight::default();
        let mut last_beat = None::<tokio::time::Instant>;
        loop {
            if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                if let Err(e) = batches.heartbeat(&id).await {
                    tracing::warn!(error = %e, "batch runner heartbeat failed");
                }
                last_beat = Some(tokio::time::Instant::now());
                recover(&batches, &jobs, &id, &in_flight).await;
            }
            if let Err(e) = batches.finalize().await {
                tracing::warn!(error = %e, "ending batches failed");
            }
            let mut busy = false;
            let free = slots.available_permits();
            // A draining instance takes no new lines; another instance (or the restarted one)
            // runs them.
            if free > 0 && !jobs.is_draining() {
                match batches.claim(&id, free).await {
                    Ok(lines) => {
                        for line in lines {
                            // The shutdown waits for the line's task; once it has begun, the
                            // line goes back for another instance.
                            let Ok(busy) = jobs.busy() else {
                                if let Err(e) = batches.release(&line).await {
                                    tracing::warn!(error = %e, "releasing a batch line failed");
                                }
                                continue;
                            };
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let key = (line.batch_id.clone(), line.line_no);
                            lock(&in_flight).insert(key.clone());
                            let (b, j, f) = (batches.clone(), jobs.clone(), in_flight.clone());
                            tokio::spawn(async move {
                                let outcome = run_line(&b, &j, &line).await;
                                drop(busy);
                                if outcome == Outcome::Busy {
                                    tokio::time::sleep(BACKOFF).await;
                                }
                                lock(&f).remove(&key);
                                drop(permit);
                                b.wake();
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming batch lines failed");
                        busy = true;
                    }
                }
            }
            let wait = if busy { BACKOFF } else { POLL };
            let _ = tokio::time::timeout(wait, batches.woken()).await;
        }
    });
}

fn lock(f: &InFlight) -> std::sync::MutexGuard<'_, HashSet<(String, i64)>> {
    f.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves the lines no task runs: those of runners that died (their jobs died with them and
/// are abandoned), and this runner's own whose task ended in an error (their jobs end by
/// themselves: a line waits while its job is still running).
async fn recover(batches: &Batches, jobs: &Jobs, id: &str, in_flight: &InFlight) {
    let orphans = batches.take_over_orphans(id, STALE_MS).await;
    let own = batches.lines_of(id).await;
    let (orphans, own) = match (orphans, own) {
        (Ok(o), Ok(m)) => (o, m),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "looking for orphaned batch lines failed");
            return;
        }
    };
    let stray: Vec<Line> = {
        let running = lock(in_flight);
        own.into_iter()
            .filter(|l| !running.contains(&(l.batch_id.clone(), l.line_no)))
            .collect()
    };
    for (line, dead) in orphans
        .into_iter()
        .map(|l| (l, true))
        .chain(stray.into_iter().map(|l| (l, false)))
    {
        match resolve(batches, jobs, &line, dead).await {
            Ok(true) => tracing::info!(
                batch = line.batch_id,
                line = line.line_no,
                "resumed a batch line"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(batch = line.batch_id, line = line.line_no, error = %e, "resuming a batch line failed")
            }
        }
    }
}

/// Finishes a line whose job was settled (its answer is staged), or puts it back to pending
/// when its job never was. Returns whether anything changed.
async fn resolve(
    batches: &Batches,
    jobs: &Jobs,
    line: &Line,
    dead: bool,
) -> Result<bool, JobError> {
    if let Some(job) = &line.job_id {
        if jobs.status_of(job).await?.as_deref() == Some("running") {
            if !dead {
                return Ok(false); // ending by itself (settled or voided) shortly
            }
            jobs.abandon(job, "its batch runner stopped").await?;
        }
        if jobs.is_settled(job).await? {
            if !line.staged {
                return Err(JobError::Storage(format!(
                    "job {job} was settled but its batch line has no answer"
                )));
            }
            batches.finish(line).await.map_err(storage)?;
            return Ok(true);
        }
    }
    batches.release(line).await.map_err(storage)?;
    Ok(true)
}

fn storage(e: batches::BatchError) -> JobError {
    match e {
        batches::BatchError::Busy => JobError::Busy,
        e => JobError::Storage(e.to_string()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ended,
    /// The engine was full: the line went back to pending.
    Busy,
}

/// The line of the output or error file for an answer with this status and body.
fn entry(line: &Line, status: u16, request_id: Option<&str>, body: Value) -> String {
    json!({
        "id": format!("batch_req_{}", db::new_id()),
        "custom_id": line.custom_id,
        "response": { "status_code": status, "request_id": request_id, "body": body },
        "error": null,
    })
    .to_string()
}

fn refused(line: &Line, e: &ApiError) -> Staged {
    Staged {
        succeeded: false,
        response: entry(line, e.status.as_u16(), None, e.body()),
    }
}

async fn run_line(batches: &Batches, jobs: &Jobs, line: &Line) -> Outcome {
    match try_line(batches, jobs, line).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // Left running: once its job has ended, `recover` finishes the line from its staged
            // answer (the job was settled) or puts it back to pending (it was not), so an
            // answer that was charged is never run again.
            tracing::warn!(batch = line.batch_id, line = line.line_no, error = %e, "batch line interrupted; it resumes shortly");
            Outcome::Busy
        }
    }
}

async fn try_line(
    batches: &Batches,
    jobs: &Jobs,
    line: &Line,
) -> Result<Outcome, batches::BatchError> {
    let endpoint = match line.endpoint {
        batches::Endpoint::Chat => openai::Endpoint::Chat,
        batches::Endpoint::Completions => openai::Endpoint::Completions,
    };
    let parsed = match openai::parse(endpoint, line.body.as_bytes()) {
        Ok(p) if p.stream => {
            let e = ApiError::invalid("stream", "stream is not supported in a batch.");
            batches.finish_with(line, &refused(line, &e)).await?;
            return Ok(Outcome::Ended);
        }
        // Each line is one job with one hold: several prompts go on several lines.
        Ok(p) if !p.more_prompts.is_empty() => {
            let e = ApiError::invalid(
                "prompt",
                "A batch line takes one prompt; put each prompt on its own line.",
            );
            batches.finish_with(line, &refused(line, &e)).await?;
            return Ok(Outcome::Ended);
        }
        Ok(p) if p.n > 1 => {
            let e = ApiError::invalid(
                "n",
                "A batch line takes n = 1; repeat the line (with another seed) for more choices.",
            );
            batches.finish_with(line, &refused(line, &e)).await?;
            return Ok(Outcome::Ended);
        }
        Ok(p) => p,
        Err(e) => {
            batches.finish_with(line, &refused(line, &e)).await?;
            return Ok(Outcome::Ended);
        }
    };
    let who = Principal {
        org_id: line.creator.org_id.clone(),
        user_id: line.creator.user_id.clone(),
        api_key_id: line.creator.api_key_id.clone(),
        recheck_key: false,
    };
    let mut answer = match openai::admit(jobs, &who, JobKind::Batch, endpoint, parsed).await {
        Ok(a) => a,
        Err(e) if e.is_retryable() => {
            batches.release(line).await?;
            return Ok(Outcome::Busy);
        }
        Err(e) => {
            batches.finish_with(line, &refused(line, &e)).await?;
            return Ok(Outcome::Ended);
        }
    };
    let job_id = answer.job_id().to_string();
    batches.set_job(line, &job_id).await?;
    let whole = answer.run_whole().await;
    if let Some(body) = &whole {
        let staged = Staged {
            succeeded: true,
            response: entry(line, 200, Some(&job_id), body.clone()),
        };
        batches.stage(line, &staged).await?;
    }
    match answer.settle().await {
        // Cut by the shutdown (its staged answer is incomplete) and not charged: the line
        // goes back to pending and runs again after it; `release` drops the staged answer.
        Ok(receipt) if receipt.shut_down => {
            batches.release(line).await?;
            return Ok(Outcome::Busy);
        }
        Ok(_) if whole.is_some() => batches.finish(line).await?,
        Ok(receipt) => {
            let message = match receipt.charged {
                jobs::Charged::Failed(m) => m,
                _ => "the model ended without an answer".into(),
            };
            let e = openai::failed(&message);
            batches.finish_with(line, &refused(line, &e)).await?;
        }
        Err(e) => {
            // Settlement failed and voided the hold: the answer was not paid for.
            let e = ApiError::from(e);
            batches.finish_with(line, &refused(line, &e)).await?;
        }
    }
    Ok(Outcome::Ended)
}
