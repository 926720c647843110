//! Credits: what the organisation holds, bucket by bucket in the order it is spent, what open
//! jobs reserve, top-ups through Stripe, and the history with filters, pages and a CSV export.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::{CreditsView, HISTORY_KINDS, StartTopUp, TopUpView, credits_overview};
use crate::components::form::{FieldError, FormError, cents, field_error, general_error};

#[component]
pub fn Credits() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        query.with(|q| {
            (
                q.get("kind").unwrap_or_default(),
                q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1),
            )
        })
    };
    let overview = Resource::new(filter, |(kind, page)| credits_overview(kind, page));
    view! {
        <Title text="Credits · Tokenmill" />
        <h1>"Credits"</h1>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Ok(c) => view! { <Overview c /> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Overview(c: CreditsView) -> impl IntoView {
    view! {
        <section class="cards">
            <article class="card">
                <h2>"Available"</h2>
                <p class="big" data-testid="available" title=c.available.clone()>{cents(&c.available)}</p>
                <p>"Spent in this order: grants that expire soonest, then paid credit."</p>
            </article>
            {c.owed.clone().map(|owed| view! {
                <article class="card warning">
                    <h2>"Owed"</h2>
                    <p class="big" data-testid="owed">{owed}</p>
                    <p>"A refunded payment had already been spent. Contact support to settle it."</p>
                </article>
            })}
        </section>
        <TopUp t=c.top_up.clone() />
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
                {c.buckets
                    .into_iter()
                    .map(|b| {
                        view! {
                            <tr>
                                <td>{b.label}</td>
                                <td title=b.balance.clone()>{cents(&b.balance)}</td>
                                <td>{b.held}</td>
                                <td>
                                    {b.expires.unwrap_or_else(|| "never".to_string())}
                                    {b.expiring_soon.then(|| view! { " " <span class="badge warning">"expires soon"</span> })}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
        <h2>"Reserved for running jobs"</h2>
        {if c.holds.is_empty() {
            view! { <p data-testid="holds-empty">"Nothing is reserved right now."</p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="holds">
                    <thead>
                        <tr>
                            <th>"Since"</th>
                            <th>"Released by"</th>
                            <th>"Amount"</th>
                        </tr>
                    </thead>
                    <tbody>
                        {c.holds
                            .into_iter()
                            .map(|h| view! { <tr><td>{h.created}</td><td>{h.expires}</td><td>{h.amount}</td></tr> })
                            .collect_view()}
                    </tbody>
                </table>
            }
                .into_any()
        }}
        <History
            kind=c.kind
            page=c.page
            pages=c.pages
            count=c.history_count
            total=c.history_total
            rows=c.history
        />
    }
}

#[component]
fn TopUp(t: TopUpView) -> impl IntoView {
    let start = ServerAction::<StartTopUp>::new();
    let value = start.value();
    // The server function redirects to Stripe's URL; Leptos follows that redirect in the
    // browser (and a plain form post follows it without JavaScript).
    if !t.configured {
        return view! {
            <section class="panel" data-testid="top-up">
                <h2>"Top up"</h2>
                <p class="notice">
                    "Paying by card is not available on this portal yet. Ask the platform's operator for credit."
                </p>
            </section>
        }
            .into_any();
    }
    view! {
        <section class="panel" data-testid="top-up">
            <h2>"Top up"</h2>
            <p>"Pay by card through Stripe. Credit appears once Stripe confirms the payment, usually within seconds."</p>
            <FormError message=general_error(value) />
            <div class="presets">
                {t.presets
                    .into_iter()
                    .map(|d| {
                        view! {
                            <ActionForm action=start attr:class="inline">
                                <input type="hidden" name="amount" value=d.clone() />
                                <button type="submit">{format!("${d}")}</button>
                            </ActionForm>
                        }
                    })
                    .collect_view()}
            </div>
            <ActionForm action=start attr:class="inline">
                <label for="top_up_amount">"Other amount (USD, $5 to $10,000)"</label>
                <input id="top_up_amount" name="amount" inputmode="decimal" required />
                <FieldError message=field_error(value, "amount") id="top_up_amount-error" />
                <button type="submit" class="primary">"Pay"</button>
            </ActionForm>
            {(!t.recent.is_empty()).then(|| view! {
                <h3>"Recent top-ups"</h3>
                <table class="list" data-testid="top-ups">
                    <thead>
                        <tr><th>"Date"</th><th>"Amount"</th><th>"Status"</th><th>"Refunded"</th></tr>
                    </thead>
                    <tbody>
                        {t.recent
                            .into_iter()
                            .map(|c| view! {
                                <tr>
                                    <td>{c.date}</td>
                                    <td>{c.amount}</td>
                                    <td>{c.status}</td>
                                    <td>{c.refunded.unwrap_or_default()}</td>
                                </tr>
                            })
                            .collect_view()}
                    </tbody>
                </table>
            })}
        </section>
    }
    .into_any()
}

#[component]
fn History(
    kind: String,
    page: i64,
    pages: i64,
    count: i64,
    total: String,
    rows: Vec<crate::api::HistoryView>,
) -> impl IntoView {
    let link = {
        let kind = kind.clone();
        move |page: i64| {
            if kind.is_empty() {
                format!("/credits?page={page}")
            } else {
                format!("/credits?kind={kind}&page={page}")
            }
        }
    };
    let csv = if kind.is_empty() {
        "/credits/history.csv".to_string()
    } else {
        format!("/credits/history.csv?kind={kind}")
    };
    view! {
        <h2>"History"</h2>
        <form method="get" action="/credits" class="filters">
            <label for="kind">"Show"</label>
            <select id="kind" name="kind">
                {HISTORY_KINDS
                    .iter()
                    .map(|(code, label)| {
                        view! { <option value=*code selected=*code == kind>{*label}</option> }
                    })
                    .collect_view()}
            </select>
            <button type="submit">"Filter"</button>
            <a href=csv download="" data-testid="export-csv" rel="external">"Download CSV"</a>
        </form>
        <p data-testid="history-total">
            {format!("{count} movements, net ")}
            <strong data-testid="history-net">{total}</strong>
        </p>
        {if rows.is_empty() {
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
                        {rows
                            .into_iter()
                            .map(|h| view! {
                                <tr><td>{h.date}</td><td>{h.kind}</td><td>{h.memo}</td><td>{h.amount}</td></tr>
                            })
                            .collect_view()}
                    </tbody>
                </table>
            }
                .into_any()
        }}
        {(pages > 1).then(|| view! {
            <nav class="pager" aria-label="History pages">
                {(page > 1).then(|| view! { <a href=link(page - 1)>"← Newer"</a> })}
                <span>{format!("Page {page} of {pages}")}</span>
                {(page < pages).then(|| view! { <a href=link(page + 1)>"Older →"</a> })}
            </nav>
        })}
    }
}
