//! Sign-up, login and accepting an invitation: the pages reached without a session.

use accounts_labels::{KINDS, REGIONS};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{
    components::A,
    hooks::{use_params_map, use_query_map},
};

use crate::{
    api::{
        AcceptInvitation as AcceptInvitationFn, Login as LoginFn, SignUp as SignUpFn, invitation,
    },
    components::form::{Choice, FieldError, FormError, PasswordInput, field_error, general_error},
};

/// Organisation kinds and regions as (code, label): the same codes the server parses.
mod accounts_labels {
    pub const KINDS: [(&str, &str); 5] = [
        ("startup", "Startup"),
        ("model_builder", "Model builder"),
        ("enterprise", "Enterprise"),
        ("research", "Research organisation"),
        ("regional", "Regional AI player"),
    ];
    pub const REGIONS: [(&str, &str); 9] = [
        ("north_america", "North America"),
        ("latin_america", "Latin America and the Caribbean"),
        ("europe", "Europe"),
        ("middle_east", "Middle East"),
        ("africa", "Africa"),
        ("south_asia", "South Asia"),
        ("east_asia", "East Asia"),
        ("southeast_asia", "Southeast Asia"),
        ("oceania", "Oceania"),
    ];
}

pub use accounts_labels::{KINDS as KIND_OPTIONS, REGIONS as REGION_OPTIONS};

#[component]
pub fn SignUp() -> impl IntoView {
    let action = ServerAction::<SignUpFn>::new();
    let value = action.value();
    view! {
        <Title text="Sign up · Tokenmill" />
        <main class="auth">
            <h1>"Sign up your organisation"</h1>
            <p>"You will be its owner and can invite your team afterwards."</p>
            <ActionForm action>
                <FormError message=general_error(value) />
                <label for="org_name">"Organisation name"</label>
                <input id="org_name" name="org_name" required autocomplete="organization" />
                <FieldError message=field_error(value, "org_name") id="org_name-error" />

                <Choice
                    label="Kind of organisation"
                    id="org_kind"
                    name="org_kind"
                    options=&KINDS
                    error=field_error(value, "org_kind")
                />
                <Choice
                    label="Country or region"
                    id="region"
                    name="region"
                    options=&REGIONS
                    error=field_error(value, "region")
                />

                <label for="email">"Work email"</label>
                <input id="email" name="email" type="email" required autocomplete="email" />
                <FieldError message=field_error(value, "email") id="email-error" />

                <label for="password">"Password"</label>
                <PasswordInput name="password" id="password" autocomplete="new-password" />
                <p class="hint">"At least 8 characters; a phrase of a few words is best."</p>
                <FieldError message=field_error(value, "password") id="password-error" />

                <button type="submit" class="primary">"Create account"</button>
            </ActionForm>
            <p>"Already have an account? " <A href="/login">"Log in"</A></p>
        </main>
    }
}

#[component]
pub fn Login() -> impl IntoView {
    let action = ServerAction::<LoginFn>::new();
    let value = action.value();
    let query = use_query_map();
    let signed_up = move || query.with(|q| q.get("signed_up").is_some());
    let reset = move || query.with(|q| q.get("reset").is_some());
    view! {
        <Title text="Log in · Tokenmill" />
        <main class="auth">
            <h1>"Log in"</h1>
            <Show when=signed_up>
                <p class="notice" role="status" data-testid="signed-up">
                    "Check your email: we sent a link to verify your address. You can log in now; credits, API keys and the playground wait for the link."
                </p>
            </Show>
            <Show when=reset>
                <p class="notice" role="status">
                    "Your password is set, and every session of yours has ended. Log in with the new password."
                </p>
            </Show>
            <ActionForm action>
                <FormError message=general_error(value) />
                <label for="email">"Email"</label>
                <input
                    id="email"
                    name="email"
                    type="email"
                    required
                    autocomplete="username"
                    value=move || query.with(|q| q.get("email").unwrap_or_default())
                />
                <FieldError message=field_error(value, "email") id="email-error" />
                <label for="password">"Password"</label>
                <PasswordInput name="password" id="password" autocomplete="current-password" />
                <button type="submit" class="primary">"Log in"</button>
            </ActionForm>
            <p><A href="/forgot">"Forgot your password?"</A></p>
            <p>"New to Tokenmill? " <A href="/signup">"Sign up your organisation"</A></p>
        </main>
    }
}

#[component]
pub fn AcceptInvitation() -> impl IntoView {
    let params = use_params_map();
    let token = move || params.with(|p| p.get("token").unwrap_or_default());
    let preview = Resource::new(token, invitation);
    let action = ServerAction::<AcceptInvitationFn>::new();
    let value = action.value();
    view! {
        <Title text="Join an organisation · Tokenmill" />
        <main class="auth">
            <Suspense>
                {move || Suspend::new(async move {
                    match preview.await {
                        Ok(p) => {
                            view! {
                                <h1>"Join " {p.org_name.clone()}</h1>
                                <p>
                                    "You were invited as " <strong>{p.role.clone()}</strong>
                                    " with the email " <strong>{p.email.clone()}</strong>
                                    ". Choose a password to create your account."
                                </p>
                                <ActionForm action>
                                    <FormError message=general_error(value) />
                                    <input type="hidden" name="token" value=token() />
                                    <label for="password">"Password"</label>
                                    <PasswordInput
                                        name="password"
                                        id="password"
                                        autocomplete="new-password"
                                    />
                                    <FieldError
                                        message=field_error(value, "password")
                                        id="password-error"
                                    />
                                    <button type="submit" class="primary">"Join"</button>
                                </ActionForm>
                            }
                                .into_any()
                        }
                        Err(e) => {
                            view! {
                                <h1>"Invitation not valid"</h1>
                                <p class="form-error">{e.to_string()}</p>
                                <p>"Ask the person who invited you for a new link."</p>
                            }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </main>
    }
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    /// The WASM build cannot link the accounts crate, so the choices are listed here again;
    /// this keeps the two lists identical.
    #[test]
    fn the_choices_offered_are_the_ones_the_server_accepts() {
        let kinds: Vec<_> = accounts::OrgKind::TENANT_KINDS
            .iter()
            .map(|k| (k.code(), k.label()))
            .collect();
        assert_eq!(kinds, super::KINDS.to_vec());
        let regions: Vec<_> = accounts::Region::ALL
            .iter()
            .map(|r| (r.code(), r.label()))
            .collect();
        assert_eq!(regions, super::REGIONS.to_vec());
    }
}
