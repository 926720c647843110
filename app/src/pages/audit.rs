//! The audit log: operators see every operator's and partner's change, partners their own
//! organisation's; search, and download the same selection as CSV.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::audit_entries;

#[component]
pub fn AuditLog() -> impl IntoView {
    let query = use_query_map();
    let search = move || query.with(|q| q.get("q").unwrap_or_default());
    let list = Resource::new(search, audit_entries);
    let csv = move || {
        let q = search();
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("/audit.csv?q={encoded}")
    };
    view! {
        <Title text="Audit log · Tokenmill" />
        <h1>"Audit log"</h1>
        <form method="get" action="/audit" class="inline">
            <label for="q">"Action, person or target contains"</label>
            <input id="q" name="q" value=search />
            <button type="submit">"Search"</button>
            <a href=csv download data-testid="audit-csv">"Download CSV"</a>
        </form>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(list) if list.is_empty() => view! { <p class="empty">"Nothing recorded yet."</p> }.into_any(),
                    Ok(list) => view! {
                        <table class="list" data-testid="audit">
                            <thead>
                                <tr><th>"When (UTC)"</th><th>"Who"</th><th>"Action"</th><th>"Target"</th><th>"Before"</th><th>"After"</th></tr>
                            </thead>
                            <tbody>
                                {list.into_iter().map(|e| view! {
                                    <tr data-testid=format!("audit-{}", e.action)>
                                        <td>{e.at}</td>
                                        <td>{e.actor}</td>
                                        <td>{e.action.clone()}</td>
                                        <td>{e.target}</td>
                                        <td><code>{e.before}</code></td>
                                        <td><code>{e.after}</code></td>
                                    </tr>
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
