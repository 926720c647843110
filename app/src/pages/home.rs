use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::{A, Redirect};

use crate::api::me;

/// The start page: signed-in users go straight to their dashboard.
#[component]
pub fn Home() -> impl IntoView {
    let me = Resource::new(|| (), |_| me());
    view! {
        <Title text="Tokenmill · tokens for every tenant" />
        <Suspense>
            {move || Suspend::new(async move {
                match me.await {
                    Ok(Some(_)) => view! { <Redirect path="/dashboard" /> }.into_any(),
                    _ => view! { <Landing /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Landing() -> impl IntoView {
    view! {
        <main class="landing">
            <h1>"Tokenmill"</h1>
            <p class="lead">
                "GPU capacity from our AI cloud partners, for startups, model builders, enterprises, "
                "research organisations and regional AI players. Pay nothing up front: hold credits, "
                "request compute and produce tokens."
            </p>
            <p class="actions">
                <A href="/signup" attr:class="button primary">
                    "Sign up your organisation"
                </A>
                <A href="/login" attr:class="button">
                    "Log in"
                </A>
            </p>
        </main>
    }
}
