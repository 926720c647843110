//! Usage: tokens and spend per day and model over 7, 30 or 90 days, a chart of daily spend,
//! the same rows as CSV, the window's use by API key and by source (API, playground, batch),
//! and the activity log: every request, newest first, a page at a time.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::{
    ActivityPage, ShareRow, USAGE_WINDOWS, UsageDay, UsageSummary, usage_activity, usage_report,
};

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
    let after = move || query.with(|q| q.get("after").unwrap_or_default());
    let activity = Resource::new(after, usage_activity);
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
        <h2 id="activity">"Activity"</h2>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match activity.await {
                    Ok(page) => activity_log(page, days(), !after().is_empty()).into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// Every request, newest first: when, what, how big, what it cost, which key, how fast.
fn activity_log(page: ActivityPage, days: i64, older: bool) -> impl IntoView {
    if page.rows.is_empty() {
        return view! { <p class="empty">"No requests yet."</p> }.into_any();
    }
    view! {
        <table class="list" data-testid="activity">
            <thead>
                <tr>
                    <th>"Time (UTC)"</th>
                    <th>"Model"</th>
                    <th>"Source"</th>
                    <th>"API key"</th>
                    <th>"Input"</th>
                    <th>"Output"</th>
                    <th>"Cost"</th>
                    <th>"First token / total"</th>
                </tr>
            </thead>
            <tbody>
                {page
                    .rows
                    .into_iter()
                    .map(|a| {
                        view! {
                            <tr>
                                <td>{a.at}</td>
                                <td>{a.model}</td>
                                <td>{a.source}{a.partial.then_some(" (stopped)")}</td>
                                <td>{a.key}</td>
                                <td>{a.prompt_tokens}</td>
                                <td>{a.completion_tokens}</td>
                                <td>{a.cost}</td>
                                <td>{a.latency}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
        <nav class="pager" aria-label="Activity pages">
            {older.then(|| view! { <a href=format!("/usage?days={days}#activity")>"Newest"</a> })}
            {page
                .next
                .map(|next| {
                    view! {
                        <a href=format!("/usage?days={days}&after={next}#activity") data-testid="older">
                            "Older requests"
                        </a>
                    }
                })}
        </nav>
    }
        .into_any()
}

/// A window's use split by API key or by source.
fn shares(
    title: &'static str,
    testid: &'static str,
    first: &'static str,
    rows: Vec<ShareRow>,
) -> impl IntoView {
    (!rows.is_empty()).then(|| {
        view! {
            <h2>{title}</h2>
            <table class="list" data-testid=testid>
                <thead>
                    <tr><th>{first}</th><th>"Requests"</th><th>"Tokens"</th><th>"Spend"</th></tr>
                </thead>
                <tbody>
                    {rows
                        .into_iter()
                        .map(|r| view! {
                            <tr><td>{r.label}</td><td>{r.requests}</td><td>{r.tokens}</td><td>{r.amount}</td></tr>
                        })
                        .collect_view()}
                </tbody>
            </table>
        }
    })
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
        {shares("By API key", "usage-by-key", "Key", r.by_key)}
        {shares("By source", "usage-by-source", "Source", r.by_source)}
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

/// Bars of daily spend, drawn as SVG on the server (no script needed), with axes: the largest
/// day's spend and zero up the left, the first, middle and last dates along the bottom; each
/// bar's title gives the exact amount and tokens.
#[component]
fn Chart(days: Vec<UsageDay>) -> impl IntoView {
    const HEIGHT: f64 = 120.0;
    const LEFT: f64 = 64.0;
    let width = 640.0;
    let n = days.len().max(1) as f64;
    let slot = (width - LEFT) / n;
    let top = days.iter().max_by_key(|d| d.amount_nanos).cloned();
    let max = top.as_ref().map_or(0, |d| d.amount_nanos).max(1) as f64;
    let top_label = top.map(|d| d.amount).unwrap_or_else(|| "$0.00".into());
    let label = |i: usize| days.get(i).map(|d| d.day.clone()).unwrap_or_default();
    let (first, middle, last) = (
        label(0),
        label(days.len() / 2),
        label(days.len().saturating_sub(1)),
    );
    view! {
        <svg
            class="chart"
            viewBox=format!("0 0 {width} {}", HEIGHT + 18.0)
            role="img"
            aria-label="Spend per day"
            data-testid="usage-chart"
        >
            <line class="axis" x1=LEFT y1="0" x2=LEFT y2=HEIGHT />
            <line class="axis" x1=LEFT y1=HEIGHT x2=width y2=HEIGHT />
            <text x=LEFT - 4.0 y="10" text-anchor="end" data-testid="chart-max">{top_label}</text>
            <text x=LEFT - 4.0 y=HEIGHT text-anchor="end">"$0"</text>
            {days
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let h = (d.amount_nanos as f64 / max * HEIGHT).max(if d.amount_nanos > 0 { 1.0 } else { 0.0 });
                    view! {
                        <rect
                            x=format!("{:.1}", LEFT + i as f64 * slot + slot * 0.1)
                            y=format!("{:.1}", HEIGHT - h)
                            width=format!("{:.1}", slot * 0.8)
                            height=format!("{h:.1}")
                        >
                            <title>{format!("{}: {} ({} tokens)", d.day, d.amount, d.tokens)}</title>
                        </rect>
                    }
                })
                .collect_view()}
            <text x=LEFT y=HEIGHT + 14.0>{first}</text>
            <text x=LEFT + (width - LEFT) / 2.0 y=HEIGHT + 14.0 text-anchor="middle">{middle}</text>
            <text x=width y=HEIGHT + 14.0 text-anchor="end">{last}</text>
        </svg>
    }
}
