//! The request's id on error pages: the `X-Request-Id` the server gave this request, which
//! its log lines carry, so a person reporting a problem can quote it.

use leptos::prelude::*;

#[component]
pub fn RequestId() -> impl IntoView {
    // Read while rendering on the server; the browser gets the value with the page's data.
    let id = request_id();
    let id = OnceResource::new(async move { id });
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                id.await.map(|id| view! {
                    <p class="request-id" data-testid="request-id">"Request id: "<code>{id}</code></p>
                })
            })}
        </Suspense>
    }
}

#[cfg(feature = "ssr")]
fn request_id() -> Option<String> {
    use_context::<http::request::Parts>()?
        .headers
        .get("x-request-id")?
        .to_str()
        .ok()
        .map(str::to_string)
}

#[cfg(not(feature = "ssr"))]
fn request_id() -> Option<String> {
    None
}
