use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;

use crate::components::request_id::RequestId;

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <Title text="Not found · Tokenmill" />
        <main class="centered">
            <h1>"Page not found"</h1>
            <p>"There is nothing at this address. It may have moved, or the link may be mistyped."</p>
            <p>
                <A href="/">"Go to the start page"</A>
            </p>
            <RequestId />
        </main>
    }
}
