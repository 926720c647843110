//! Tokenmill's pages, components and server functions. Built twice: with `ssr` into the server
//! and with `hydrate` into the WASM that makes the pages interactive.

pub mod api;
mod components;
mod error;
mod pages;
#[cfg(feature = "ssr")]
pub mod ssr;

use leptos::prelude::*;
use leptos_meta::{HashedStylesheet, MetaTags, Title, provide_meta_context};
use leptos_router::{
    SsrMode,
    components::{ParentRoute, Route, Router, Routes},
    path,
};

pub use error::AppError;

/// The HTML document around the app, rendered on the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                <link rel="icon" href="/favicon.ico" sizes="32x32" />
                // The stylesheet under its hashed name when the build hashes file names.
                <HashedStylesheet options=options.clone() id="leptos" />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    // Lets browser tests wait until the page is interactive.
    Effect::new(move |_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });

    view! {
        <Title text="Tokenmill" />
        <Router>
            <Routes fallback=pages::not_found::NotFound>
                <Route path=path!("/") view=pages::home::Home ssr=SsrMode::Async />
                <Route path=path!("/signup") view=pages::auth::SignUp ssr=SsrMode::Async />
                <Route path=path!("/login") view=pages::auth::Login ssr=SsrMode::Async />
                <Route
                    path=path!("/login/code")
                    view=pages::two_factor::LoginCodePage
                    ssr=SsrMode::Async
                />
                <Route path=path!("/forgot") view=pages::recovery::Forgot ssr=SsrMode::Async />
                <Route path=path!("/reset/:token") view=pages::recovery::Reset ssr=SsrMode::Async />
                <Route
                    path=path!("/verify/:token")
                    view=pages::recovery::VerifyEmail
                    ssr=SsrMode::Async
                />
                <Route
                    path=path!("/invite/:token")
                    view=pages::auth::AcceptInvitation
                    ssr=SsrMode::Async
                />
                <ParentRoute path=path!("") view=components::shell::Shell ssr=SsrMode::Async>
                    <Route path=path!("/dashboard") view=pages::dashboard::Dashboard />
                    <Route path=path!("/members") view=pages::members::Members />
                    <Route path=path!("/credits") view=pages::credits::Credits />
                    <Route path=path!("/keys") view=pages::keys::Keys />
                    <Route path=path!("/models") view=pages::models::Models />
                    <Route path=path!("/playground") view=pages::playground::Playground />
                    <Route path=path!("/usage") view=pages::usage::Usage />
                    <Route path=path!("/batches") view=pages::batches::Batches />
                    <ParentRoute path=path!("") view=components::shell::PartnersAndOperators>
                        <Route path=path!("/approvals") view=pages::approvals::Approvals />
                        <Route path=path!("/statements") view=pages::statements::Statements />
                        <Route path=path!("/audit") view=pages::audit::AuditLog />
                        <Route path=path!("/fleet") view=pages::fleet::Fleet />
                        <Route
                            path=path!("/statements/:partner/:period")
                            view=pages::statements::StatementPage
                        />
                    </ParentRoute>
                    <Route path=path!("/credits/top-up/success") view=pages::top_up::TopUpSuccess />
                    <Route path=path!("/credits/top-up/cancelled") view=pages::top_up::TopUpCancelled />
                    <Route path=path!("/compute") view=pages::compute::Compute />
                    <Route path=path!("/compute/:id") view=pages::compute_detail::ComputeDetail />
                    <Route path=path!("/account") view=pages::account::Account />
                    <ParentRoute path=path!("/admin") view=components::shell::OperatorsOnly>
                        <Route path=path!("") view=pages::admin::Admin />
                        <Route path=path!("/factories") view=pages::admin_factories::AdminFactories />
                        <Route path=path!("/programs") view=pages::admin_programs::AdminPrograms />
                        <Route path=path!("/organizations") view=pages::admin_orgs::AdminOrgs />
                        <Route path=path!("/workers") view=pages::admin_workers::AdminWorkers />
                    </ParentRoute>
                </ParentRoute>
            </Routes>
        </Router>
    }
}
