//! Batches: upload a JSONL file of requests (OpenAI's batch input format), follow each batch's
//! progress (done / failed / total, live while it runs), download its results and errors,
//! cancel it. The same batches are reachable through `/v1/batches`.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::{BatchView, CancelBatch, batch_views};
use crate::components::form::{FormError, confirm_first, general_error};

#[component]
pub fn Batches() -> impl IntoView {
    let query = use_query_map();
    let cancel = ServerAction::<CancelBatch>::new();
    let cancel_error = general_error(cancel.value());
    // Bumped every two seconds while a batch is open, so progress moves without a reload.
    let tick = RwSignal::new(0u32);
    let batches = Resource::new(
        move || (tick.get(), cancel.version().get()),
        |_| batch_views(),
    );
    Effect::new(move |_| {
        let open = batches
            .get()
            .and_then(|r| r.ok())
            .is_some_and(|l| l.iter().any(|b| b.open));
        if open {
            set_timeout(
                move || tick.update(|t| *t += 1),
                std::time::Duration::from_secs(2),
            );
        }
    });
    let notice = move || query.with(|q| q.get("created"));
    let error = move || query.with(|q| q.get("error"));
    view! {
        <Title text="Batches · Tokenmill" />
        <h1>"Batches"</h1>
        <p>
            "A batch runs many requests at the lowest priority, filling idle capacity; each line
             is paid for when it starts. Upload a JSONL file with one request per line: "
            <code>
                r#"{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "…", "messages": […]}}"#
            </code> ". The API offers the same as " <code>"/v1/files"</code> " and "
            <code>"/v1/batches"</code> "."
        </p>
        <form
            class="panel"
            method="post"
            action="/batches/upload"
            enctype="multipart/form-data"
            data-testid="batch-upload"
        >
            <label>
                "Endpoint"
                <select name="endpoint">
                    <option value="/v1/chat/completions">"/v1/chat/completions"</option>
                    <option value="/v1/completions">"/v1/completions"</option>
                </select>
            </label>
            <label>
                "Requests (JSONL)" <input type="file" name="file" accept=".jsonl,.json,.txt" required />
            </label>
            <button type="submit">"Start batch"</button>
        </form>
        <Show when=move || notice().is_some()>
            <p class="notice" role="status">
                "Batch " <code>{notice}</code> " created."
            </p>
        </Show>
        <Show when=move || error().is_some()>
            <p class="form-error" role="alert">{error}</p>
        </Show>
        <FormError message=cancel_error />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match batches.await {
                    Ok(list) if list.is_empty() => {
                        view! { <p class="empty">"No batches yet."</p> }.into_any()
                    }
                    Ok(list) => view! { <BatchTable list cancel /> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn BatchTable(list: Vec<BatchView>, cancel: ServerAction<CancelBatch>) -> impl IntoView {
    view! {
        <table class="list" data-testid="batches">
            <thead>
                <tr>
                    <th>"Batch"</th>
                    <th>"Created (UTC)"</th>
                    <th>"Endpoint"</th>
                    <th>"Status"</th>
                    <th>"Progress"</th>
                    <th>"Files"</th>
                    <th></th>
                </tr>
            </thead>
            <tbody>
                {list
                    .into_iter()
                    .map(|b| {
                        let ended = b.completed + b.failed;
                        let output = format!("/batches/{}/output.jsonl", b.id);
                        let errors = format!("/batches/{}/errors.jsonl", b.id);
                        let id = b.id.clone();
                        view! {
                            <tr data-testid="batch" data-batch=b.id.clone()>
                                <td>
                                    <code>{b.id.clone()}</code>
                                </td>
                                <td>{b.created}</td>
                                <td>{b.endpoint}</td>
                                <td data-testid="batch-status">{b.status.replace('_', " ")}</td>
                                <td>
                                    <progress value=ended max=b.total.max(1)></progress>
                                    " "
                                    <span data-testid="batch-progress">
                                        {format!(
                                            "{} done / {} failed / {} total",
                                            b.completed,
                                            b.failed,
                                            b.total,
                                        )}
                                    </span>
                                </td>
                                <td>
                                    {b
                                        .has_output
                                        .then(|| {
                                            view! {
                                                <a href=output download="" rel="external" data-testid="batch-output">
                                                    "Results"
                                                </a>
                                                " "
                                            }
                                        })}
                                    {b
                                        .has_errors
                                        .then(|| {
                                            view! {
                                                <a href=errors download="" rel="external" data-testid="batch-errors">
                                                    "Errors"
                                                </a>
                                            }
                                        })}
                                </td>
                                <td>
                                    {(b.status == "in_progress")
                                        .then(|| {
                                            view! {
                                                <ActionForm action=cancel>
                                                    <input type="hidden" name="id" value=id />
                                                    <button
                                                        type="submit"
                                                        class="secondary"
                                                        on:click=confirm_first("Cancel this batch? Lines not started yet will not run.".into())
                                                    >
                                                        "Cancel"
                                                    </button>
                                                </ActionForm>
                                            }
                                        })}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}
