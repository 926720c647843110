use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;

use crate::api::{me, team};

/// The signed-in start page: the organisation at a glance.
#[component]
pub fn Dashboard() -> impl IntoView {
    let me = Resource::new(|| (), |_| me());
    let team = Resource::new(|| (), |_| team());
    view! {
        <Title text="Dashboard · Tokenmill" />
        <h1>"Dashboard"</h1>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let me = me.await;
                let team = team.await;
                match (me, team) {
                    (Ok(Some(me)), Ok(team)) => {
                        let pending = team.invitations.len();
                        view! {
                            <section class="cards">
                                <article class="card">
                                    <h2>"Organisation"</h2>
                                    <p class="big" data-testid="dashboard-org">
                                        {me.org_name.clone()}
                                    </p>
                                    <p>{me.org_kind.clone()} " · " {me.region.clone()}</p>
                                </article>
                                <article class="card">
                                    <h2>"Team"</h2>
                                    <p class="big">{team.members.len()}</p>
                                    <p>
                                        {if team.members.len() == 1 { "member" } else { "members" }}
                                        {(pending > 0).then(|| format!(", {pending} invitation(s) open"))}
                                    </p>
                                    <A href="/members">"Manage members"</A>
                                </article>
                                <article class="card">
                                    <h2>"You"</h2>
                                    <p>{me.email.clone()}</p>
                                    <p>"Role: " {me.role.clone()}</p>
                                    <A href="/account">"Account settings"</A>
                                </article>
                            </section>
                        }
                            .into_any()
                    }
                    _ => view! { <p class="form-error">"Could not load the dashboard."</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}
