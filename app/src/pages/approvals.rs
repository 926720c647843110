//! Approvals: the requests a partner (on its own factories) or an operator decides.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::approvals;
use crate::pages::compute::RequestTable;

#[component]
pub fn Approvals() -> impl IntoView {
    let queue = Resource::new(|| (), |_| approvals());
    view! {
        <Title text="Approvals · Tokenmill" />
        <h1>"Approvals"</h1>
        <p>"Requests waiting for a decision come first. Open one to approve, send back or reject it."</p>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match queue.await {
                    Ok(rows) => view! { <RequestTable rows show_org=true /> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}
