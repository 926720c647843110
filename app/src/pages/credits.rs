//! Credits: what the organisation holds, bucket by bucket in the order it is spent, and the
//! latest movements.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::credits_overview;

#[component]
pub fn Credits() -> impl IntoView {
    let overview = Resource::new(|| (), |_| credits_overview());
    view! {
        <Title text="Credits · Tokenmill" />
        <h1>"Credits"</h1>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Ok(c) => {
                        view! {
                            <section class="cards">
                                <article class="card">
                                    <h2>"Available"</h2>
                                    <p class="big" data-testid="available">{c.available.clone()}</p>
                                    <p>"Spent in this order: grants that expire soonest, then paid credit."</p>
                                </article>
                            </section>
                            <h2>"Balance by source"</h2>
                            <table class="list" data-testid="buckets">
                                <thead>
                                    <tr>
                                        <th>"Source"</th>
                                        <th>"Balance"</th>
                                        <th>"Reserved for running jobs"</th>
                                        <th>"Expires"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {c
                                        .buckets
                                        .into_iter()
                                        .map(|b| {
                                            view! {
                                                <tr>
                                                    <td>{b.label}</td>
                                                    <td>{b.balance}</td>
                                                    <td>{b.held}</td>
                                                    <td>{b.expires.unwrap_or_else(|| "never".to_string())}</td>
                                                </tr>
                                            }
                                        })
                                        .collect_view()}
                                </tbody>
                            </table>
                            <h2>"History"</h2>
                            {if c.history.is_empty() {
                                view! { <p>"No credit movements yet."</p> }.into_any()
                            } else {
                                view! {
                                    <table class="list" data-testid="history">
                                        <thead>
                                            <tr>
                                                <th>"Date (UTC)"</th>
                                                <th>"What"</th>
                                                <th>"Details"</th>
                                                <th>"Amount"</th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {c
                                                .history
                                                .into_iter()
                                                .map(|h| {
                                                    view! {
                                                        <tr>
                                                            <td>{h.date}</td>
                                                            <td>{h.kind}</td>
                                                            <td>{h.memo}</td>
                                                            <td>{h.amount}</td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table>
                                }
                                    .into_any()
                            }}
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}
