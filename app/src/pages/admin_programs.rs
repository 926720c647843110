//! Operators: credit-support programs (sponsor, eligibility, grant, lifetime, budget).

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{CreateProgram, programs};
use crate::components::form::{
    FieldError, FormError, field_error, general_error, reset_on_success,
};
use crate::components::partner_options::PartnerOptions;
use crate::pages::admin::AdminNav;
use crate::pages::auth::{KIND_OPTIONS, REGION_OPTIONS};

#[allow(
    clippy::too_many_lines,
    reason = "one page's markup, in the order it renders; its parts are components already"
)]
#[component]
pub fn AdminPrograms() -> impl IntoView {
    let create = ServerAction::<CreateProgram>::new();
    let value = create.value();
    let list = Resource::new(move || create.version().get(), |_| programs());
    let err = move |name: &'static str| field_error(value, name);
    view! {
        <Title text="Programs · Admin · Tokenmill" />
        <h1>"Credit-support programs"</h1>
        <AdminNav />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(list) if list.is_empty() => view! { <p>"No programs yet."</p> }.into_any(),
                    Ok(list) => {
                        view! {
                            <table class="list" data-testid="programs">
                                <thead>
                                    <tr>
                                        <th>"Name"</th>
                                        <th>"Sponsor"</th>
                                        <th>"Open to"</th>
                                        <th>"Grant"</th>
                                        <th>"Lifetime"</th>
                                        <th>"Budget"</th>
                                        <th>"Left"</th>
                                        <th>"On sign-up"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .iter()
                                        .cloned()
                                        .map(|p| {
                                            view! {
                                                <tr>
                                                    <td>{p.name}</td>
                                                    <td>{p.sponsor}</td>
                                                    <td>{p.eligible}</td>
                                                    <td>{p.grant}</td>
                                                    <td>{format!("{} days", p.lifetime_days)}</td>
                                                    <td>{p.budget}</td>
                                                    <td>{p.remaining}</td>
                                                    <td>
                                                        {match (p.auto_on_signup, p.requires_verified_email) {
                                                            (true, true) => "yes, once the email is verified",
                                                            (true, false) => "yes",
                                                            (false, _) => "no",
                                                        }}
                                                    </td>
                                                </tr>
                                            }
                                        })
                                        .collect_view()}
                                </tbody>
                            </table>
                            {list.into_iter().map(|p| view! { <ProgramGrants p /> }).collect_view()}
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
        <section class="panel">
            <h2>"Add a program"</h2>
            <p>"The budget moves from the sponsor into the program's fund now; grants draw on it and never beyond it."</p>
            <ActionForm action=create node_ref=reset_on_success(value)>
                <FormError message=general_error(value) />
                <label for="program_name">"Name"</label>
                <input id="program_name" name="form[name]" required />
                <FieldError message=err("name") id="program_name-error" />
                <label for="sponsor">"Sponsor"</label>
                <select id="sponsor" name="form[sponsor]" required>
                    <option value="vendor">"The GPU vendor"</option>
                    <PartnerOptions />
                </select>
                <FieldError message=err("sponsor") id="sponsor-error" />
                <Ticks legend="Open to" options=&KIND_OPTIONS />
                <FieldError message=err("eligible_kinds") id="kinds-error" />
                <Ticks legend="In regions (none ticked: every region)" options=&REGION_OPTIONS />
                <div class="row">
                    <div>
                        <label for="program_grant">"Standard grant (USD)"</label>
                        <input id="program_grant" name="form[grant_amount]" inputmode="decimal" required />
                        <FieldError message=err("grant_amount") id="program_grant-error" />
                    </div>
                    <div>
                        <label for="program_lifetime">"Grant lifetime (days)"</label>
                        <input id="program_lifetime" name="form[grant_lifetime_days]" inputmode="numeric" value="90" required />
                        <FieldError message=err("grant_lifetime_days") id="program_lifetime-error" />
                    </div>
                    <div>
                        <label for="program_budget">"Total budget (USD)"</label>
                        <input id="program_budget" name="form[budget]" inputmode="decimal" required />
                        <FieldError message=err("budget") id="program_budget-error" />
                    </div>
                </div>
                <label class="inline">
                    <input type="checkbox" name="form[auto_on_signup]" value="on" />
                    "Grant automatically when an eligible organisation signs up"
                </label>
                <label class="inline">
                    <input
                        type="checkbox"
                        name="form[requires_verified_email]"
                        value="on"
                        checked
                    />
                    "Only once its email address is verified, and once per address"
                </label>
                <button type="submit" class="primary">"Create program"</button>
            </ActionForm>
        </section>
    }
}

/// A checkbox per option, named `form[<code>]`: the program form's optional fields.
#[component]
fn Ticks(legend: &'static str, options: &'static [(&'static str, &'static str)]) -> impl IntoView {
    view! {
        <fieldset>
            <legend>{legend}</legend>
            {options
                .iter()
                .map(|(code, label)| {
                    view! {
                        <label class="inline">
                            <input type="checkbox" name=format!("form[{code}]") value="on" />
                            {*label}
                        </label>
                    }
                })
                .collect_view()}
        </fieldset>
    }
}

/// What one program's budget went to: its latest grants.
#[component]
fn ProgramGrants(p: crate::api::ProgramView) -> impl IntoView {
    let count = p.grants.len();
    view! {
        <details class="panel" data-testid="program-grants">
            <summary>
                {format!(
                    "What {} granted: budget {}, {} left; latest {} grant(s)",
                    p.name,
                    p.budget,
                    p.remaining,
                    count,
                )}
            </summary>
            {if p.grants.is_empty() {
                view! { <p>"Nothing granted yet."</p> }.into_any()
            } else {
                view! {
                    <div class="table-scroll">
                        <table class="list">
                            <thead>
                                <tr>
                                    <th>"Organisation"</th>
                                    <th>"Amount"</th>
                                    <th>"Why"</th>
                                    <th>"When (UTC)"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {p
                                    .grants
                                    .into_iter()
                                    .map(|g| {
                                        view! {
                                            <tr>
                                                <td>{g.org_name}</td>
                                                <td>{g.amount}</td>
                                                <td>{g.reason}</td>
                                                <td>{g.granted}</td>
                                            </tr>
                                        }
                                    })
                                    .collect_view()}
                            </tbody>
                        </table>
                    </div>
                }
                    .into_any()
            }}
        </details>
    }
}
