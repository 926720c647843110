//! A button that copies a text to the clipboard (a new key, a link, a code sample), and says
//! so for a moment. It works once the page is hydrated.

use leptos::prelude::*;

#[component]
pub fn CopyButton(#[prop(into)] text: String, label: &'static str) -> impl IntoView {
    let copied = RwSignal::new(false);
    let copy = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let clipboard = window().navigator().clipboard();
            let promise = clipboard.write_text(&text);
            leptos::task::spawn_local(async move {
                if wasm_bindgen_futures::JsFuture::from(promise).await.is_ok() {
                    copied.set(true);
                    set_timeout(
                        move || copied.set(false),
                        std::time::Duration::from_millis(1500),
                    );
                }
            });
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = &text;
    };
    view! {
        <button type="button" class="copy" on:click=copy aria-live="polite">
            {move || if copied.get() { "Copied" } else { label }}
        </button>
    }
}
