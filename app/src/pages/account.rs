use leptos::prelude::*;
use leptos_meta::Title;

use crate::{
    api::{ChangePassword, me},
    components::form::{
        FieldError, FormError, PasswordInput, field_error, general_error, reset_on_success,
    },
};

#[component]
pub fn Account() -> impl IntoView {
    let me = Resource::new(|| (), |_| me());
    let action = ServerAction::<ChangePassword>::new();
    let value = action.value();
    let done = move || value.with(|v| v.as_ref().and_then(|r| r.as_ref().ok().cloned()));
    view! {
        <Title text="Account · Tokenmill" />
        <h1>"Account"</h1>
        <Suspense>
            {move || Suspend::new(async move {
                me.await
                    .ok()
                    .flatten()
                    .map(|me| {
                        view! {
                            <p>"Signed in as " <strong>{me.email}</strong></p>
                        }
                    })
            })}
        </Suspense>
        <crate::pages::two_factor::TwoFactorPanel />
        <section class="panel">
            <h2>"Change password"</h2>
            <p>"Changing your password logs you out of every other browser and device."</p>
            <ActionForm action node_ref=reset_on_success(value)>
                <FormError message=general_error(value) />
                <label for="current_password">"Current password"</label>
                <PasswordInput
                    name="current_password"
                    id="current_password"
                    autocomplete="current-password"
                />
                <FieldError
                    message=field_error(value, "current_password")
                    id="current_password-error"
                />
                <label for="new_password">"New password"</label>
                <PasswordInput name="new_password" id="new_password" autocomplete="new-password" />
                <FieldError message=field_error(value, "new_password") id="new_password-error" />
                <button type="submit" class="primary">"Change password"</button>
            </ActionForm>
            <Show when=move || done().is_some()>
                <p class="notice" role="status">{done}</p>
            </Show>
        </section>
    }
}
