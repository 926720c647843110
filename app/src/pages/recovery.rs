//! Pages opened from a letter or without a session: verifying an email address, asking for a
//! password reset, and setting a new password from its link.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::A, hooks::use_params_map};

use crate::{
    api::{ForgotPassword, ResetPassword, reset_link, verify_email},
    components::form::{FieldError, FormError, PasswordInput, field_error, general_error},
};

/// `/verify/:token`: the link of a verification letter. Opening it verifies the address (the
/// token works once), and shows the credits that waited for it.
#[component]
pub fn VerifyEmail() -> impl IntoView {
    let params = use_params_map();
    let token = move || params.with(|p| p.get("token").unwrap_or_default());
    let verified = Resource::new(token, verify_email);
    view! {
        <Title text="Verify your email · Tokenmill" />
        <main class="auth">
            <Suspense fallback=|| view! { <p class="loading">"Verifying…"</p> }>
                {move || Suspend::new(async move {
                    match verified.await {
                        Ok(v) => {
                            view! {
                                <h1>"Email verified"</h1>
                                <p class="notice" role="status" data-testid="verified">
                                    {format!("{} is verified.", v.email)}
                                </p>
                                {(!v.grants.is_empty())
                                    .then(|| {
                                        view! {
                                            <p data-testid="verified-grants">
                                                "Credits granted: " {v.grants.join(", ")} "."
                                            </p>
                                        }
                                    })}
                                <p>
                                    <A href="/dashboard">"Go to your dashboard"</A>
                                    " (log in first if you are not signed in here)."
                                </p>
                            }
                                .into_any()
                        }
                        Err(e) => {
                            view! {
                                <h1>"Link not valid"</h1>
                                <p class="form-error">{e.to_string()}</p>
                                <p>
                                    "Log in and send a new link from the dashboard. "
                                    <A href="/login">"Log in"</A>
                                </p>
                            }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </main>
    }
}

/// `/forgot`: asks for a reset link. The answer is the same whether or not the address has an
/// account.
#[component]
pub fn Forgot() -> impl IntoView {
    let action = ServerAction::<ForgotPassword>::new();
    let value = action.value();
    let sent = move || value.with(|v| v.as_ref().and_then(|r| r.as_ref().ok().cloned()));
    view! {
        <Title text="Forgot your password · Tokenmill" />
        <main class="auth">
            <h1>"Forgot your password?"</h1>
            <p>"We will send a link to set a new one to your email address."</p>
            <ActionForm action>
                <FormError message=general_error(value) />
                <label for="email">"Email"</label>
                <input id="email" name="email" type="email" required autocomplete="username" />
                <FieldError message=field_error(value, "email") id="email-error" />
                <button type="submit" class="primary">"Send the link"</button>
            </ActionForm>
            <Show when=move || sent().is_some()>
                <p class="notice" role="status" data-testid="reset-sent">
                    {sent}
                </p>
            </Show>
            <p><A href="/login">"Back to log in"</A></p>
        </main>
    }
}

/// `/reset/:token`: sets a new password through a reset link.
#[component]
pub fn Reset() -> impl IntoView {
    let params = use_params_map();
    let token = move || params.with(|p| p.get("token").unwrap_or_default());
    let email = Resource::new(token, reset_link);
    let action = ServerAction::<ResetPassword>::new();
    let value = action.value();
    view! {
        <Title text="Set a new password · Tokenmill" />
        <main class="auth">
            <Suspense>
                {move || Suspend::new(async move {
                    match email.await {
                        Ok(email) => {
                            view! {
                                <h1>"Set a new password"</h1>
                                <p>"For " <strong>{email}</strong> ". You will be signed out everywhere."</p>
                                <ActionForm action>
                                    <FormError message=general_error(value) />
                                    <input type="hidden" name="token" value=token() />
                                    <label for="password">"New password"</label>
                                    <PasswordInput
                                        name="password"
                                        id="password"
                                        autocomplete="new-password"
                                    />
                                    <FieldError
                                        message=field_error(value, "password")
                                        id="password-error"
                                    />
                                    <button type="submit" class="primary">"Set password"</button>
                                </ActionForm>
                            }
                                .into_any()
                        }
                        Err(e) => {
                            view! {
                                <h1>"Link not valid"</h1>
                                <p class="form-error">{e.to_string()}</p>
                                <p><A href="/forgot">"Ask for a new link"</A></p>
                            }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </main>
    }
}
