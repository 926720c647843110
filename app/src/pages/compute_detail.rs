//! One compute request: its terms, its timeline, and what the viewer may do with it: the
//! tenant cancels or answers a request for changes; the deciding partner or an operator
//! approves (allocation and optional grant), sends back, rejects, or ends it.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use crate::api::{
    AnswerCompute, ApproveCompute, CancelCompute, RequestDetail, ResubmitCompute, compute_request,
};
use crate::components::form::{FieldError, FormError, confirm_first, field_error, general_error};
use crate::components::request_form::RequestFields;

#[component]
pub fn ComputeDetail() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    let cancel = ServerAction::<CancelCompute>::new();
    let resubmit = ServerAction::<ResubmitCompute>::new();
    let approve = ServerAction::<ApproveCompute>::new();
    let answer = ServerAction::<AnswerCompute>::new();
    let detail = Resource::new(
        move || {
            (
                id(),
                cancel.version().get(),
                resubmit.version().get(),
                approve.version().get(),
                answer.version().get(),
            )
        },
        |(id, ..)| compute_request(id),
    );
    let actions = Actions {
        cancel,
        resubmit,
        approve,
        answer,
    };
    view! {
        <Title text="Compute request · Tokenmill" />
        <h1>"Compute request"</h1>
        <FormError message=general_error(cancel.value()) />
        <FormError message=general_error(answer.value()) />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(d) => view! { <Detail d actions /> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[derive(Clone, Copy)]
struct Actions {
    cancel: ServerAction<CancelCompute>,
    resubmit: ServerAction<ResubmitCompute>,
    approve: ServerAction<ApproveCompute>,
    answer: ServerAction<AnswerCompute>,
}

#[component]
fn Detail(d: RequestDetail, actions: Actions) -> impl IntoView {
    let id = d.row.id.clone();
    let row = d.row.clone();
    view! {
        <dl class="facts" data-testid="request">
            <dt>"Status"</dt>
            <dd>
                <span class=format!("status status-{}", row.status_code) data-testid="status">
                    {row.status}
                </span>
            </dd>
            <dt>"Organisation"</dt>
            <dd>{row.org}</dd>
            <dt>"Factory"</dt>
            <dd>{row.factory}</dd>
            <dt>"What"</dt>
            <dd>{row.what}</dd>
            <dt>"Period"</dt>
            <dd>{row.period}</dd>
            <dt>"Commitment"</dt>
            <dd>{d.commitment.clone()}</dd>
            {d.support.clone().map(|s| view! { <dt>"Credit support asked"</dt><dd>{s}</dd> })}
            {d.justification.clone().map(|s| view! { <dt>"Justification"</dt><dd>{s}</dd> })}
            {d.reason.clone().map(|s| view! { <dt>"Reason given"</dt><dd data-testid="reason">{s}</dd> })}
            {d.allocation.clone().map(|s| view! { <dt>"Allocation"</dt><dd data-testid="allocation">{s}</dd> })}
            {d.grant.clone().map(|s| view! { <dt>"Credit granted"</dt><dd data-testid="grant">{s}</dd> })}
        </dl>
        {d.can_cancel.then(|| {
            let id = id.clone();
            view! {
                <ActionForm action=actions.cancel>
                    <input type="hidden" name="id" value=id />
                    <button
                        type="submit"
                        class="danger"
                        on:click=confirm_first("Cancel this compute request? This cannot be undone.".into())
                    >
                        "Cancel this request"
                    </button>
                </ActionForm>
            }
        })}
        {d.can_resubmit.then(|| view! { <Resubmit d=d.clone() action=actions.resubmit /> })}
        {d.can_decide.then(|| view! { <Approve d=d.clone() action=actions.approve /> })}
        {d.can_decide.then(|| view! { <Answer id=id.clone() action=actions.answer ending=false /> })}
        {d.can_end.then(|| view! { <Answer id=id.clone() action=actions.answer ending=true /> })}
        <h2>"Timeline"</h2>
        <ol class="timeline" data-testid="timeline">
            {d.timeline
                .into_iter()
                .map(|e| {
                    view! {
                        <li>
                            <time>{e.when}</time>
                            " · "
                            <strong>{e.action}</strong>
                            " by "
                            {e.who}
                            <p>{e.detail}</p>
                        </li>
                    }
                })
                .collect_view()}
        </ol>
    }
}

#[component]
fn Resubmit(d: RequestDetail, action: ServerAction<ResubmitCompute>) -> impl IntoView {
    let value = action.value();
    view! {
        <section class="panel">
            <h2>"Change and submit again"</h2>
            <ActionForm action=action>
                <FormError message=general_error(value) />
                <input type="hidden" name="id" value=d.row.id.clone() />
                <RequestFields factories=d.factories programs=d.programs initial=d.terms value=value />
                <button type="submit" class="primary">"Submit again"</button>
            </ActionForm>
        </section>
    }
}

#[component]
fn Approve(d: RequestDetail, action: ServerAction<ApproveCompute>) -> impl IntoView {
    let value = action.value();
    let err = move |name: &'static str| field_error(value, name);
    let has_programs = !d.grant_programs.is_empty();
    view! {
        <section class="panel">
            <h2>"Approve"</h2>
            <ActionForm action=action attr:data-testid="approve-form">
                <FormError message=general_error(value) />
                <input type="hidden" name="id" value=d.row.id.clone() />
                <div class="row">
                    <div>
                        <label for="share_weight">"Share weight (1–1,000)"</label>
                        <input id="share_weight" name="share_weight" inputmode="numeric" value="10" required />
                        <FieldError message=err("share_weight") id="share_weight-error" />
                    </div>
                    <div>
                        <label for="rate_limit_tpm">"Rate limit (tokens per minute)"</label>
                        <input id="rate_limit_tpm" name="rate_limit_tpm" inputmode="numeric" value=d.suggested_tpm.clone() required />
                        <FieldError message=err("rate_limit_tpm") id="rate_limit_tpm-error" />
                    </div>
                </div>
                <div class="row">
                    <div>
                        <label for="alloc_starts_on">"First day (empty: as requested)"</label>
                        <input id="alloc_starts_on" name="starts_on" type="date" />
                        <FieldError message=err("starts_on") id="alloc_starts_on-error" />
                    </div>
                    <div>
                        <label for="alloc_ends_on">"Last day (empty: as requested)"</label>
                        <input id="alloc_ends_on" name="ends_on" type="date" />
                        <FieldError message=err("ends_on") id="alloc_ends_on-error" />
                    </div>
                </div>
                <label for="grant_program_id">"Grant credits from"</label>
                <select id="grant_program_id" name="grant_program_id">
                    <option value="">"No grant"</option>
                    {d.grant_programs
                        .into_iter()
                        .map(|p| {
                            let selected = d.terms.program_id == p.id;
                            view! {
                                <option value=p.id.clone() selected=selected>
                                    {format!("{} ({} left)", p.name, p.remaining)}
                                </option>
                            }
                        })
                        .collect_view()}
                </select>
                {(!has_programs).then(|| view! { <p class="hint">"No program you may grant from is open to this organisation."</p> })}
                <FieldError message=err("grant_program") id="grant_program_id-error" />
                <label for="grant_amount">"Grant amount (USD)"</label>
                <input id="grant_amount" name="grant_amount" inputmode="decimal" value=d.terms.support_amount.clone() />
                <FieldError message=err("grant_amount") id="grant_amount-error" />
                <button type="submit" class="primary">"Approve"</button>
            </ActionForm>
        </section>
    }
}

/// Send back for changes or reject (while submitted), or end early (while approved or active).
#[component]
fn Answer(id: String, action: ServerAction<AnswerCompute>, ending: bool) -> impl IntoView {
    let value = action.value();
    view! {
        <section class="panel">
            <h2>{if ending { "End early" } else { "Send back or reject" }}</h2>
            <ActionForm action=action attr:data-testid=if ending { "end-form" } else { "answer-form" }>
                <input type="hidden" name="id" value=id />
                {if ending {
                    view! { <input type="hidden" name="answer" value="end" /> }.into_any()
                } else {
                    view! {
                        <label for="answer">"Decision"</label>
                        <select id="answer" name="answer">
                            <option value="changes">"Ask for changes"</option>
                            <option value="reject">"Reject"</option>
                        </select>
                    }
                        .into_any()
                }}
                <label for=if ending { "end_reason" } else { "reason" }>"Reason (shown to the requester)"</label>
                <textarea id=if ending { "end_reason" } else { "reason" } name="reason" rows="2" required></textarea>
                <FieldError message=field_error(value, "reason") id="reason-error" />
                <button type="submit" class="danger">{if ending { "End allocation" } else { "Send" }}</button>
            </ActionForm>
        </section>
    }
}
