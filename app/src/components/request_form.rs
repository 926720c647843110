//! The fields of a compute request, shared by the new-request form and the resubmit form.
//! Field names are `terms[…]`, the server functions' `RequestTerms` argument.

use leptos::prelude::*;

use crate::AppError;
use crate::api::{FactoryView, ProgramOption, RequestTerms};
use crate::components::form::{FieldError, field_error};

#[allow(
    clippy::too_many_lines,
    reason = "one form's markup, in the order it renders; its parts are components already"
)]
#[component]
pub fn RequestFields<S>(
    factories: Vec<FactoryView>,
    programs: Vec<ProgramOption>,
    initial: RequestTerms,
    /// The submitting action's latest result, for field errors.
    value: S,
) -> impl IntoView
where
    S: With<Value = Option<Result<String, AppError>>> + Copy + Send + Sync + 'static,
{
    let first = if initial.factory_id.is_empty() {
        factories.first().map(|f| f.id.clone()).unwrap_or_default()
    } else {
        initial.factory_id.clone()
    };
    let chosen = RwSignal::new(first);
    let factories = StoredValue::new(factories);
    let initial_what = initial.what.clone();
    // The models on offer follow the chosen factory (server-rendered for the first one).
    let what_options = move || {
        let id = chosen.get();
        let (models, gpu) = factories.with_value(|fs| {
            fs.iter()
                .find(|f| f.id == id)
                .map(|f| (f.models.clone(), f.gpu_class.clone()))
                .unwrap_or_default()
        });
        let initial_what = initial_what.clone();
        let mut options: Vec<_> = models
            .into_iter()
            .map(|m| {
                let selected = m == initial_what;
                view! { <option value=m.clone() selected=selected>{m.clone()}</option> }.into_any()
            })
            .collect();
        options.push(
            view! {
                <option value="gpus" selected=initial_what == "gpus">
                    {format!("Dedicated GPUs ({gpu})")}
                </option>
            }
            .into_any(),
        );
        options
    };
    let err = move |name: &'static str| field_error(value, name);
    let commitment = initial.commitment.clone();
    view! {
        <label for="factory_id">"Factory"</label>
        <select
            id="factory_id"
            name="terms[factory_id]"
            required
            on:change=move |ev| chosen.set(event_target_value(&ev))
        >
            {factories
                .get_value()
                .into_iter()
                .map(|f| {
                    let selected = f.id == chosen.get_untracked();
                    view! {
                        <option value=f.id.clone() selected=selected>
                            {format!("{} · {} · {} ({})", f.name, f.partner, f.region, f.gpu_class)}
                        </option>
                    }
                })
                .collect_view()}
        </select>
        <FieldError message=err("factory") id="factory_id-error" />
        <label for="what">"Model or GPUs"</label>
        <select id="what" name="terms[what]" required>
            {what_options}
        </select>
        <FieldError message=err("what") id="what-error" />
        <label for="amount">"Throughput: tokens per minute, or number of GPUs"</label>
        <input id="amount" name="terms[amount]" inputmode="numeric" required value=initial.amount />
        <FieldError message=err("amount") id="amount-error" />
        <div class="row">
            <div>
                <label for="starts_on">"First day (UTC)"</label>
                <input id="starts_on" name="terms[starts_on]" type="date" required value=initial.starts_on />
                <FieldError message=err("starts_on") id="starts_on-error" />
            </div>
            <div>
                <label for="ends_on">"Last day (UTC)"</label>
                <input id="ends_on" name="terms[ends_on]" type="date" required value=initial.ends_on />
                <FieldError message=err("ends_on") id="ends_on-error" />
            </div>
        </div>
        <fieldset>
            <legend>"Commitment"</legend>
            <label class="inline">
                <input type="radio" name="terms[commitment]" value="reserved" checked=commitment != "on_demand" />
                "Reserved capacity"
            </label>
            <label class="inline">
                <input type="radio" name="terms[commitment]" value="on_demand" checked=commitment == "on_demand" />
                "On demand"
            </label>
        </fieldset>
        <FieldError message=err("commitment") id="commitment-error" />
        <fieldset>
            <legend>"Credit support (optional)"</legend>
            <label for="program_id">"Program"</label>
            <select id="program_id" name="terms[program_id]">
                <option value="">"No credit support"</option>
                {programs
                    .into_iter()
                    .map(|p| {
                        let selected = p.id == initial.program_id;
                        view! {
                            <option value=p.id.clone() selected=selected>
                                {format!("{} ({} left)", p.name, p.remaining)}
                            </option>
                        }
                    })
                    .collect_view()}
            </select>
            <FieldError message=err("program") id="program_id-error" />
            <label for="support_amount">"Amount (USD)"</label>
            <input id="support_amount" name="terms[support_amount]" inputmode="decimal" value=initial.support_amount />
            <FieldError message=err("support_amount") id="support_amount-error" />
            <label for="justification">"What the credits are for"</label>
            <textarea id="justification" name="terms[justification]" rows="3">
                {initial.justification}
            </textarea>
            <FieldError message=err("justification") id="justification-error" />
        </fieldset>
    }
}
