//! The signed-in layout: header with organisation and role, navigation, and the page.
//! Anyone not signed in is sent to the login page.

use leptos::prelude::*;
use leptos_router::components::{A, Outlet, Redirect};

use crate::api::{Logout, Profile, ResendVerification, me};

#[component]
pub fn Shell() -> impl IntoView {
    let me = Resource::new(|| (), |_| me());
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match me.await {
                    Ok(Some(me)) => view! { <SignedIn me /> }.into_any(),
                    _ => view! { <Redirect path="/login" /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The pages of operators only (Admin): anyone else sees why, not forms the server refuses.
#[component]
pub fn OperatorsOnly() -> impl IntoView {
    let me = use_context::<Profile>();
    if me.is_some_and(|m| m.is_operator) {
        view! { <Outlet /> }.into_any()
    } else {
        not_yours("These pages are for the platform's operators.").into_any()
    }
}

/// Approvals, statements and the audit log: partners' and operators' pages.
#[component]
pub fn PartnersAndOperators() -> impl IntoView {
    let me = use_context::<Profile>();
    if me.is_some_and(|m| m.is_operator || m.is_partner) {
        view! { <Outlet /> }.into_any()
    } else {
        not_yours(
            "This page is for partners (the AI clouds that run factories) and the platform's operators.",
        )
        .into_any()
    }
}

fn not_yours(why: &'static str) -> impl IntoView {
    view! {
        <h1>"Not available"</h1>
        <p data-testid="not-yours">{why} " " <A href="/dashboard">"Back to your dashboard"</A></p>
    }
}

#[component]
fn SignedIn(me: Profile) -> impl IntoView {
    // The pages inside read who is signed in from here instead of asking again.
    provide_context(me.clone());
    let logout = ServerAction::<Logout>::new();
    // Below 900 px the navigation folds behind a Menu button; following a link folds it again.
    let menu_open = RwSignal::new(false);
    let role = if me.is_operator {
        "operator".to_string()
    } else {
        me.role.clone()
    };
    view! {
        <div class="console" class:menu-open=move || menu_open.get()>
            <header class="topbar">
                <button
                    type="button"
                    class="menu-toggle"
                    aria-controls="main-nav"
                    aria-expanded=move || menu_open.get().to_string()
                    on:click=move |_| menu_open.update(|open| *open = !*open)
                >
                    "Menu"
                </button>
                <A href="/dashboard" attr:class="brand">
                    "Tokenmill"
                </A>
                <div class="who">
                    <span class="org-name" data-testid="org-name">
                        {me.org_name.clone()}
                    </span>
                    <span class="role" data-testid="role">
                        {role}
                    </span>
                    <span class="email">{me.email.clone()}</span>
                    <ActionForm action=logout attr:class="logout">
                        <button type="submit">"Log out"</button>
                    </ActionForm>
                </div>
            </header>
            <nav
                class="sidebar"
                id="main-nav"
                aria-label="Main"
                on:click=move |_| menu_open.set(false)
            >
                <A href="/dashboard">"Dashboard"</A>
                <Show when=move || !me.is_operator>
                    <A href="/credits">"Credits"</A>
                </Show>
                <Show when=move || !me.is_operator && !me.is_partner>
                    <A href="/compute">"Compute"</A>
                </Show>
                <Show when=move || me.is_operator || me.is_partner>
                    <A href="/approvals">"Approvals"</A>
                    <A href="/statements">"Statements"</A>
                    <A href="/fleet">"Fleet"</A>
                    <A href="/audit">"Audit log"</A>
                </Show>
                <Show when=move || !me.is_operator>
                    <A href="/playground">"Playground"</A>
                    <A href="/batches">"Batches"</A>
                    <A href="/usage">"Usage"</A>
                </Show>
                <A href="/models">"Models"</A>
                <A href="/keys">"API keys"</A>
                <A href="/members">"Members"</A>
                <A href="/account">"Account"</A>
                <Show when=move || me.is_operator>
                    <A href="/admin">"Admin"</A>
                </Show>
            </nav>
            <main class="content">
                <Show when=move || me.two_factor_setup_required>
                    <p class="form-error banner" role="alert" data-testid="two-factor-banner">
                        "Your role requires two-factor sign-in. "
                        <A href="/account">"Set it up under Account"</A>
                        " before you go on."
                    </p>
                </Show>
                <Show when=move || !me.email_verified>
                    <VerifyBanner />
                </Show>
                <Outlet />
            </main>
        </div>
    }
}

/// Until the address is verified: what waits for it, and a way to get the link again.
#[component]
fn VerifyBanner() -> impl IntoView {
    let resend = ServerAction::<ResendVerification>::new();
    let value = resend.value();
    let answer = move || {
        value.with(|v| match v {
            Some(Ok(message)) => Some(message.clone()),
            Some(Err(e)) => Some(e.to_string()),
            None => None,
        })
    };
    view! {
        <div class="notice banner" role="status" data-testid="verify-banner">
            <p>
                "Verify your email address with the link we sent you: credits, API keys and jobs wait for it."
            </p>
            <ActionForm action=resend attr:class="inline">
                <button type="submit">"Send the link again"</button>
            </ActionForm>
            <Show when=move || answer().is_some()>
                <p>{answer}</p>
            </Show>
        </div>
    }
}
