//! Operators: every organisation (search by name), with its kind, region, balance and state;
//! suspend one (its sessions and API keys stop working on their next request) or resume it.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::{SetOrgSuspended, organizations};
use crate::components::form::{FormError, confirm_first, general_error};
use crate::pages::admin::AdminNav;

#[component]
pub fn AdminOrgs() -> impl IntoView {
    let query = use_query_map();
    let search = move || query.with(|q| q.get("q").unwrap_or_default());
    let toggle = ServerAction::<SetOrgSuspended>::new();
    let list = Resource::new(
        move || (search(), toggle.version().get()),
        |(q, _)| organizations(q),
    );
    view! {
        <Title text="Organisations · Admin · Tokenmill" />
        <h1>"Organisations"</h1>
        <AdminNav />
        <form method="get" action="/admin/organizations" class="inline">
            <label for="q">"Name contains"</label>
            <input id="q" name="q" value=search />
            <button type="submit">"Search"</button>
        </form>
        <FormError message=general_error(toggle.value()) />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(list) if list.is_empty() => view! { <p class="empty">"No organisation matches."</p> }.into_any(),
                    Ok(list) => view! {
                        <table class="list" data-testid="organizations">
                            <thead>
                                <tr><th>"Name"</th><th>"Kind"</th><th>"Region"</th><th>"Balance"</th><th>"State"</th><th></th></tr>
                            </thead>
                            <tbody>
                                {list.into_iter().map(|o| {
                                    let suspended = o.suspended.is_some();
                                    view! {
                                        <tr data-testid=format!("org-{}", o.name)>
                                            <td>{o.name.clone()}</td>
                                            <td>{o.kind}</td>
                                            <td>{o.region}</td>
                                            <td>{o.balance}</td>
                                            <td data-testid="state">{o.suspended.map_or("active".to_string(), |d| format!("suspended since {d}"))}</td>
                                            <td>
                                                <ActionForm action=toggle>
                                                    <input type="hidden" name="org_id" value=o.id />
                                                    <input type="hidden" name="suspend" value=if suspended { "0" } else { "1" } />
                                                    <button
                                                        type="submit"
                                                        on:click=confirm_first(if suspended { "Resume this organisation? Its sessions and keys work again.".into() } else { "Suspend this organisation? Its sessions and API keys are refused from their next request.".into() })
                                                    >
                                                        {if suspended { "Resume" } else { "Suspend" }}
                                                    </button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}
