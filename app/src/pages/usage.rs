//! Usage: tokens and spend per day and model over 7, 30 or 90 days, a chart of daily spend,
//! and the same rows as CSV.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::{USAGE_WINDOWS, UsageDay, UsageSummary, usage_report};

#[component]
pub fn Usage() -> impl IntoView {
    let query = use_query_map();
    let days = move || {
        query.with(|q| {
            q.get("days")
                .and_then(|d| d.parse().ok())
                .filter(|d| USAGE_WINDOWS.contains(d))
                .unwrap_or(30)
        })
    };
    let report = Resource::new(days, usage_report);
    view! {
        <Title text="Usage · Tokenmill" />
        <h1>"Usage"</h1>
        <nav class="tabs" aria-label="Window">
            {USAGE_WINDOWS
                .iter()
                .map(|d| {
                    let href = format!("/usage?days={d}");
                    view! {
                        <a href=href aria-current=move || (days() == *d).then_some("page")>
                            {format!("{d} days")}
                        </a>
                    }
                })
                .collect_view()}
        </nav>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match report.await {
                    Ok(r) => view! { <Report r /> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Report(r: UsageSummary) -> impl IntoView {
    let csv = format!("/usage.csv?days={}", r.days);
    view! {
        <section class="cards">
            <div class="card">
                <h2>"Spend"</h2>
                <p class="big" data-testid="usage-total">{r.total_amount.clone()}</p>
            </div>
            <div class="card">
                <h2>"Tokens"</h2>
                <p class="big" data-testid="usage-tokens">{r.total_tokens}</p>
            </div>
        </section>
        <h2>"Daily spend"</h2>
        <Chart days=r.per_day />
        <p>
            <a href=csv download="" data-testid="usage-csv" rel="external">"Download CSV"</a>
        </p>
        {if r.rows.is_empty() {
            view! { <p class="empty">"No usage in this window."</p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="usage-rows">
                    <thead>
                        <tr>
                            <th>"Date (UTC)"</th>
                            <th>"Model"</th>
                            <th>"Requests"</th>
                            <th>"Input tokens"</th>
                            <th>"Output tokens"</th>
                            <th>"Spend"</th>
                        </tr>
                    </thead>
                    <tbody>
                        {r.rows
                            .into_iter()
                            .map(|u| {
                                view! {
                                    <tr>
                                        <td>{u.day}</td>
                                        <td>{u.model}</td>
                                        <td>{u.requests}</td>
                                        <td>{u.prompt_tokens}</td>
                                        <td>{u.completion_tokens}</td>
                                        <td>{u.amount}</td>
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
}

/// Bars of daily spend, drawn as SVG on the server (no script needed); each bar's title gives
/// the exact amount and tokens.
#[component]
fn Chart(days: Vec<UsageDay>) -> impl IntoView {
    const HEIGHT: f64 = 120.0;
    let width = 640.0;
    let n = days.len().max(1) as f64;
    let slot = width / n;
    let max = days
        .iter()
        .map(|d| d.amount_nanos)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let first = days.first().map(|d| d.day.clone()).unwrap_or_default();
    let last = days.last().map(|d| d.day.clone()).unwrap_or_default();
    view! {
        <svg
            class="chart"
            viewBox=format!("0 0 {width} {}", HEIGHT + 18.0)
            role="img"
            aria-label="Spend per day"
            data-testid="usage-chart"
        >
            {days
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let h = (d.amount_nanos as f64 / max * HEIGHT).max(if d.amount_nanos > 0 { 1.0 } else { 0.0 });
                    view! {
                        <rect
                            x=format!("{:.1}", i as f64 * slot + slot * 0.1)
                            y=format!("{:.1}", HEIGHT - h)
                            width=format!("{:.1}", slot * 0.8)
                            height=format!("{h:.1}")
                        >
                            <title>{format!("{}: {} ({} tokens)", d.day, d.amount, d.tokens)}</title>
                        </rect>
                    }
                })
                .collect_view()}
            <text x="0" y=HEIGHT + 14.0>{first}</text>
            <text x=width y=HEIGHT + 14.0 text-anchor="end">{last}</text>
        </svg>
    }
}
