//! The pages Stripe sends the browser back to. Coming back proves nothing: the page shows what
//! the webhook has (or has not yet) recorded for this Checkout Session.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::A, hooks::use_query_map};

use crate::api::top_up_status;

#[component]
pub fn TopUpSuccess() -> impl IntoView {
    let query = use_query_map();
    let session = move || query.with(|q| q.get("session_id").unwrap_or_default());
    let status = Resource::new(session, top_up_status);
    view! {
        <Title text="Top-up · Tokenmill" />
        <h1>"Thank you"</h1>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match status.await {
                    Ok(Some(c)) => view! {
                        <p data-testid="top-up-status">
                            {format!("Top-up of {}: {}.", c.amount, c.status.to_lowercase())}
                        </p>
                        <p>"Credit is added when Stripe confirms the payment; this usually takes seconds. Reload to see the latest."</p>
                    }
                        .into_any(),
                    Ok(None) => view! { <p>"We have no top-up with that reference for your organisation."</p> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
        <p><A href="/credits">"Back to Credits"</A></p>
    }
}

#[component]
pub fn TopUpCancelled() -> impl IntoView {
    view! {
        <Title text="Top-up cancelled · Tokenmill" />
        <h1>"Top-up cancelled"</h1>
        <p>"Nothing was charged. You can start again from the Credits page."</p>
        <p><A href="/credits">"Back to Credits"</A></p>
    }
}
