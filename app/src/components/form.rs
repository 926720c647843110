//! Form helpers: field-level error messages and a password input that can be revealed.

use leptos::prelude::*;

use crate::AppError;

/// The message for `field` from the action's latest result, if any.
pub fn field_error<T, S>(value: S, field: &'static str) -> Signal<Option<String>>
where
    S: With<Value = Option<Result<T, AppError>>> + Copy + Send + Sync + 'static,
{
    Signal::derive(move || {
        value.with(|v| match v {
            Some(Err(e)) => e.for_field(field),
            _ => None,
        })
    })
}

/// The message for errors not tied to one field.
pub fn general_error<T, S>(value: S) -> Signal<Option<String>>
where
    S: With<Value = Option<Result<T, AppError>>> + Copy + Send + Sync + 'static,
{
    Signal::derive(move || {
        value.with(|v| match v {
            Some(Err(e)) => e.general(),
            _ => None,
        })
    })
}

#[component]
pub fn FieldError(
    #[prop(into)] message: Signal<Option<String>>,
    #[prop(into)] id: String,
) -> impl IntoView {
    view! {
        <Show when=move || message.get().is_some()>
            <p class="field-error" id=id.clone() role="alert">
                {move || message.get()}
            </p>
        </Show>
    }
}

#[component]
pub fn FormError(#[prop(into)] message: Signal<Option<String>>) -> impl IntoView {
    view! {
        <Show when=move || message.get().is_some()>
            <p class="form-error" role="alert">
                {move || message.get()}
            </p>
        </Show>
    }
}

/// A password input with a Show/Hide button (works once the page is hydrated).
#[component]
pub fn PasswordInput(
    name: &'static str,
    id: &'static str,
    autocomplete: &'static str,
) -> impl IntoView {
    let shown = RwSignal::new(false);
    view! {
        <div class="password">
            <input
                id=id
                name=name
                type=move || if shown.get() { "text" } else { "password" }
                autocomplete=autocomplete
                required
                minlength="8"
            />
            <button
                type="button"
                class="reveal"
                aria-controls=id
                aria-pressed=move || shown.get().to_string()
                on:click=move |_| shown.update(|s| *s = !*s)
            >
                {move || if shown.get() { "Hide" } else { "Show" }}
            </button>
        </div>
    }
}

/// A labelled, required `<select>` over (value, label) pairs, with its field error below.
#[component]
pub fn Choice(
    label: &'static str,
    id: &'static str,
    name: &'static str,
    options: &'static [(&'static str, &'static str)],
    #[prop(into)] error: Signal<Option<String>>,
) -> impl IntoView {
    view! {
        <label for=id>{label}</label>
        <select id=id name=name required>
            <option value="">"Choose…"</option>
            {options
                .iter()
                .map(|(code, label)| view! { <option value=*code>{*label}</option> })
                .collect_view()}
        </select>
        <FieldError message=error id=format!("{id}-error") />
    }
}

/// The click handler of the submit button of an irreversible action: asks `question` first
/// and stops the submission unless it is confirmed. (Without JavaScript the form submits as
/// it is.)
pub fn confirm_first(question: String) -> impl Fn(leptos::ev::MouseEvent) + Clone + 'static {
    move |ev| {
        #[cfg(feature = "hydrate")]
        if !window().confirm_with_message(&question).unwrap_or(false) {
            ev.prevent_default();
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (&ev, &question);
    }
}

/// A `<form>` reference that clears the form when `value` (an action's latest result) turns
/// out a success, so the next entry starts empty; pass it as the `ActionForm`'s `node_ref`.
pub fn reset_on_success<T, S>(value: S) -> NodeRef<leptos::html::Form>
where
    S: With<Value = Option<Result<T, AppError>>> + Copy + Send + Sync + 'static,
{
    let form = NodeRef::<leptos::html::Form>::new();
    Effect::new(move |_| {
        if value.with(|v| matches!(v, Some(Ok(_))))
            && let Some(f) = form.get_untracked()
        {
            f.reset();
        }
    });
    form
}

/// A balance as people read it: dollars and cents, cut (never rounded up, so it is never more
/// than what is there) from the exact amount (`$9.9999874` shows `$9.99`; the page puts the
/// exact figure in a tooltip).
pub fn cents(exact: &str) -> String {
    match exact.split_once('.') {
        Some((whole, frac)) => {
            let two: String = frac.chars().chain("00".chars()).take(2).collect();
            format!("{whole}.{two}")
        }
        None => exact.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn balances_show_whole_cents_never_rounded_up() {
        assert_eq!(super::cents("$9.9999874"), "$9.99");
        assert_eq!(super::cents("$10.00"), "$10.00");
        assert_eq!(super::cents("$0.5"), "$0.50");
        assert_eq!(super::cents("$3"), "$3");
    }
}
