//! Compute: this organisation's requests for capacity, and the form to ask for more.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;

use crate::api::{RequestRow, RequestTerms, SubmitCompute, compute_page};
use crate::components::form::{FormError, general_error};
use crate::components::request_form::RequestFields;

#[component]
pub fn Compute() -> impl IntoView {
    let submit = ServerAction::<SubmitCompute>::new();
    let value = submit.value();
    let page = Resource::new(move || submit.version().get(), |_| compute_page());
    view! {
        <Title text="Compute · Tokenmill" />
        <h1>"Compute"</h1>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Ok(p) => {
                        let none = p.factories.is_empty().then(|| {
                            view! { <p>"No factories are open for requests yet."</p> }
                        });
                        let form = (p.may_request && !p.factories.is_empty())
                            .then(|| {
                                view! {
                                    <section class="panel">
                                        <h2>"Request capacity"</h2>
                                        <p>
                                            "The partner running the factory reviews your request. You can apply for credit support from a program you are eligible for."
                                        </p>
                                        <ActionForm action=submit attr:data-testid="request-form">
                                            <FormError message=general_error(value) />
                                            <RequestFields
                                                factories=p.factories.clone()
                                                programs=p.programs.clone()
                                                initial=RequestTerms::default()
                                                value=value
                                            />
                                            <button type="submit" class="primary">"Submit request"</button>
                                        </ActionForm>
                                    </section>
                                }
                            });
                        view! {
                            <h2>"Your requests"</h2>
                            <RequestTable rows=p.requests show_org=false />
                            {none}
                            {form}
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// A table of requests, each linking to its detail page.
#[component]
pub fn RequestTable(rows: Vec<RequestRow>, show_org: bool) -> impl IntoView {
    if rows.is_empty() {
        return view! { <p>"No requests."</p> }.into_any();
    }
    view! {
        <table class="list" data-testid="requests">
            <thead>
                <tr>
                    <th>"Submitted"</th>
                    {show_org.then(|| view! { <th>"Organisation"</th> })}
                    <th>"Factory"</th>
                    <th>"What"</th>
                    <th>"Period"</th>
                    <th>"Status"</th>
                </tr>
            </thead>
            <tbody>
                {rows
                    .into_iter()
                    .map(|r| {
                        view! {
                            <tr>
                                <td>
                                    <A href=format!("/compute/{}", r.id)>{r.created}</A>
                                </td>
                                {show_org.then(|| view! { <td>{r.org}</td> })}
                                <td>{r.factory}</td>
                                <td>{r.what}</td>
                                <td>{r.period}</td>
                                <td>
                                    <span class=format!("status status-{}", r.status_code)>{r.status}</span>
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}
