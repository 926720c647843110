//! The partners as `<option>`s, for the operator forms that pick one.

use leptos::prelude::*;

use crate::api::partners;

#[component]
pub fn PartnerOptions() -> impl IntoView {
    let list = Resource::new(|| (), |_| partners());
    view! {
        <Transition>
            {move || Suspend::new(async move {
                list.await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| view! { <option value=p.id>{p.name}</option> })
                    .collect_view()
            })}
        </Transition>
    }
}
