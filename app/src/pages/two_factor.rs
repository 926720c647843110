//! Two-factor sign-in: the second step of a login, and the Account page's panel that sets it
//! up (QR code, a first code, recovery codes shown once), makes new recovery codes, or
//! switches it off.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;

use crate::{
    api::{
        BeginTwoFactor, DisableTwoFactor, EnableTwoFactor, LoginCode, NewRecoveryCodes,
        RecoveryCodes, two_factor,
    },
    components::form::{FieldError, FormError, field_error, general_error},
};

/// `/login/code`: after a right password, the code from the authenticator app or a recovery
/// code.
#[component]
pub fn LoginCodePage() -> impl IntoView {
    let action = ServerAction::<LoginCode>::new();
    let value = action.value();
    view! {
        <Title text="Two-factor sign-in · Tokenmill" />
        <main class="auth">
            <h1>"Two-factor sign-in"</h1>
            <p>"Enter the 6-digit code from your authenticator app, or one of your recovery codes."</p>
            <ActionForm action>
                <FormError message=general_error(value) />
                <label for="code">"Code"</label>
                <input
                    id="code"
                    name="code"
                    required
                    autocomplete="one-time-code"
                    autofocus
                    spellcheck="false"
                />
                <FieldError message=field_error(value, "code") id="code-error" />
                <button type="submit" class="primary">"Sign in"</button>
            </ActionForm>
            <p><A href="/login">"Start again"</A></p>
        </main>
    }
}

fn code_input() -> impl IntoView {
    view! {
        <label for="code">"Code from your authenticator app (or a recovery code)"</label>
        <input id="code" name="code" required autocomplete="one-time-code" spellcheck="false" />
    }
}

#[component]
fn ShowCodes(codes: RecoveryCodes) -> impl IntoView {
    view! {
        <div class="notice" role="status">
            <p>
                "Your recovery codes. Keep them somewhere safe: each signs you in once if you lose your device. They are not shown again."
            </p>
            <ul class="codes" data-testid="recovery-codes">
                {codes.codes.into_iter().map(|c| view! { <li><code>{c}</code></li> }).collect_view()}
            </ul>
        </div>
    }
}

/// The Account page's two-factor panel.
#[allow(
    clippy::too_many_lines,
    reason = "one page's markup, in the order it renders; its parts are components already"
)]
#[component]
pub fn TwoFactorPanel() -> impl IntoView {
    let begin = ServerAction::<BeginTwoFactor>::new();
    let enable = ServerAction::<EnableTwoFactor>::new();
    let disable = ServerAction::<DisableTwoFactor>::new();
    let renew = ServerAction::<NewRecoveryCodes>::new();
    let status = Resource::new(
        move || {
            (
                enable.version().get(),
                disable.version().get(),
                renew.version().get(),
            )
        },
        |_| two_factor(),
    );
    let enable_value = enable.value();
    let disable_value = disable.value();
    let renew_value = renew.value();
    let setup = begin.value();
    let new_codes = move || {
        enable_value
            .get()
            .and_then(Result::ok)
            .or_else(|| renew_value.get().and_then(Result::ok))
    };
    view! {
        <section class="panel" data-testid="two-factor">
            <h2>"Two-factor sign-in"</h2>
            <Show when=move || new_codes().is_some()>
                {move || new_codes().map(|codes| view! { <ShowCodes codes /> })}
            </Show>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match status.await {
                        Ok(s) if s.enabled => {
                            view! {
                                <p data-testid="two-factor-on">
                                    "On. " {format!("{} recovery code(s) left.", s.recovery_codes_left)}
                                </p>
                                <ActionForm action=renew>
                                    <FormError message=general_error(renew_value) />
                                    {code_input()}
                                    <FieldError message=field_error(renew_value, "code") id="renew-code-error" />
                                    <button type="submit">"Make new recovery codes"</button>
                                </ActionForm>
                                {(!s.required)
                                    .then(|| {
                                        view! {
                                            <ActionForm action=disable>
                                                <FormError message=general_error(disable_value) />
                                                <label for="off-code">"Code, to switch it off"</label>
                                                <input id="off-code" name="code" required autocomplete="one-time-code" />
                                                <FieldError message=field_error(disable_value, "code") id="off-code-error" />
                                                <button type="submit" class="danger">"Switch off"</button>
                                            </ActionForm>
                                        }
                                    })}
                            }
                                .into_any()
                        }
                        Ok(s) => {
                            view! {
                                {if s.required {
                                    view! {
                                        <p class="form-error" role="alert" data-testid="two-factor-required">
                                            "Your role requires two-factor sign-in. Set it up to use the console."
                                        </p>
                                    }
                                        .into_any()
                                } else {
                                    view! {
                                        <p>"Off. Sign in with a code from an authenticator app as well as your password."</p>
                                    }
                                        .into_any()
                                }}
                                <ActionForm action=begin>
                                    <button type="submit" class="primary">"Set up two-factor sign-in"</button>
                                </ActionForm>
                                {move || {
                                    setup
                                        .get()
                                        .and_then(Result::ok)
                                        .map(|t| {
                                            view! {
                                                <p>"Scan this with an authenticator app (or type the secret in), then enter the code it shows."</p>
                                                <div class="qr" inner_html=t.qr_svg></div>
                                                <p>"Secret: " <code data-testid="totp-secret">{t.secret}</code></p>
                                                <ActionForm action=enable>
                                                    <FormError message=general_error(enable_value) />
                                                    <label for="enable-code">"Code"</label>
                                                    <input id="enable-code" name="code" required autocomplete="one-time-code" inputmode="numeric" />
                                                    <FieldError message=field_error(enable_value, "code") id="enable-code-error" />
                                                    <button type="submit" class="primary">"Switch on"</button>
                                                </ActionForm>
                                            }
                                        })
                                }}
                            }
                                .into_any()
                        }
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
