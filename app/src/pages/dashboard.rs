use leptos::prelude::*;

use crate::components::form::cents;
use leptos_meta::Title;
use leptos_router::components::A;

use crate::api::{
    ConsoleView, DashboardView, GettingStarted, PartnerPanel, TenantSummary, UsageDay, dashboard,
};
use crate::components::copy::CopyButton;

/// The signed-in start page: the organisation at a glance. Everything it shows is one read
/// (one resource, one loading block), so server rendering and hydration always agree.
#[component]
pub fn Dashboard() -> impl IntoView {
    let view = Resource::new(|| (), |_| dashboard());
    view! {
        <Title text="Dashboard · Tokenmill" />
        <h1>"Dashboard"</h1>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match view.await {
                    Ok(d) => page(d).into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

fn page(d: DashboardView) -> impl IntoView {
    let DashboardView {
        me,
        team,
        tenant,
        start,
        console: glance,
        partner,
    } = d;
    let pending = team.invitations.len();
    view! {
        {start.map(|s| view! { <FirstSteps s /> })}
        <section class="cards">
            <article class="card">
                <h2>"Organisation"</h2>
                <p class="big" data-testid="dashboard-org">{me.org_name.clone()}</p>
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
        {tenant.map(|o| view! { <Overview o /> })}
        {glance.map(console)}
        {partner.map(|p| view! { <PartnerOverview p /> })}
    }
}

/// Getting started: the credit there is, and the three steps to a first answer.
#[component]
fn FirstSteps(s: GettingStarted) -> impl IntoView {
    let model = s.model.clone().unwrap_or_else(|| "MODEL".to_string());
    let curl = format!(
        "curl {}/chat/completions \\\n  -H \"Authorization: Bearer $TOKENMILL_KEY\" \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
        s.base_url
    );
    view! {
        <section class="panel wide getting-started" data-testid="getting-started">
            <h2>"Getting started"</h2>
            {if s.credits.is_empty() {
                view! {
                    <p>
                        {if s.email_verified {
                            "No credit yet. "
                        } else {
                            "Credits wait for your verified email address. "
                        }}
                        <A href="/credits">"Top up or see your wallet"</A>
                    </p>
                }
                    .into_any()
            } else {
                view! {
                    <p data-testid="start-credits">"You have " {s.credits.join("; ")} "."</p>
                }
                    .into_any()
            }}
            <ol class="steps">
                <li>
                    <A href="/playground">"Try a model in the playground"</A>
                    " — answers stream as they are made."
                </li>
                <li>
                    {if s.has_key {
                        view! { <span>"You have an API key. "</span> }.into_any()
                    } else {
                        view! { <span>"Create an API key. "</span> }.into_any()
                    }}
                    <A href="/keys">"API keys"</A>
                </li>
                <li>
                    "Call the OpenAI-compatible API at "
                    <code data-testid="base-url">{s.base_url.clone()}</code>
                    " "
                    <CopyButton text=s.base_url.clone() label="Copy base URL" />
                    <pre class="code" data-testid="start-curl">{curl.clone()}</pre>
                    <CopyButton text=curl label="Copy curl" />
                </li>
            </ol>
            {(!s.upcoming.is_empty())
                .then(|| {
                    view! {
                        <p data-testid="upcoming">
                            "Approved, starting soon: " {s.upcoming.join("; ")} "."
                        </p>
                    }
                })}
        </section>
    }
}

/// A tenant's money and use: balance, burn rate and when the credits run out, tokens per day,
/// and the allocations in force with today's use.
#[component]
fn Overview(o: TenantSummary) -> impl IntoView {
    let forecast = match (&o.runs_out, o.days_left) {
        (Some(date), Some(days)) if days < 36_500 => format!("about {days} days, until {date}"),
        (Some(_), Some(_)) => "more than a century".to_string(),
        _ => "no spend in the last 7 days".to_string(),
    };
    view! {
        <section class="cards">
            <article class="card">
                <h2>"Balance"</h2>
                <p class="big" data-testid="dashboard-balance" title=o.available.clone()>{cents(&o.available)}</p>
                <A href="/credits">"Wallet and top-ups"</A>
            </article>
            <article class="card">
                <h2>"Burn rate"</h2>
                <p class="big" data-testid="dashboard-burn">{format!("{} / day", o.burn_per_day)}</p>
                <p>"average of the last 7 days"</p>
            </article>
            <article class="card">
                <h2>"Credits last"</h2>
                <p data-testid="dashboard-forecast">{forecast}</p>
            </article>
        </section>
        <h2>"Tokens per day"</h2>
        <TokensChart days=o.per_day />
        <h2>"Allocations"</h2>
        {if o.allocations.is_empty() {
            view! { <p class="empty">"No allocation is active: jobs run on demand. " <A href="/compute">"Ask for an allocation"</A></p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="dashboard-allocations">
                    <thead><tr><th>"For"</th><th>"Factory"</th><th>"Period"</th><th>"Share weight"</th><th>"Tokens / minute"</th><th>"Tokens today"</th></tr></thead>
                    <tbody>
                        {o.allocations.into_iter().map(|a| view! {
                            <tr>
                                <td>{a.what}</td><td>{a.factory}</td><td>{a.period}</td>
                                <td>{a.share_weight}</td><td>{a.tokens_per_minute}</td><td>{a.tokens_today}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        }}
    }
}

/// Bars of tokens per day with axes: the busiest day's tokens and zero up the left, the first
/// and last dates along the bottom.
#[component]
fn TokensChart(days: Vec<UsageDay>) -> impl IntoView {
    const HEIGHT: f64 = 100.0;
    const LEFT: f64 = 64.0;
    let width = 640.0;
    let slot = (width - LEFT) / days.len().max(1) as f64;
    let top = days.iter().map(|d| d.tokens).max().unwrap_or(0);
    let max = top.max(1) as f64;
    let first = days.first().map(|d| d.day.clone()).unwrap_or_default();
    let last = days.last().map(|d| d.day.clone()).unwrap_or_default();
    view! {
        <svg class="chart" viewBox=format!("0 0 {width} {}", HEIGHT + 18.0) role="img"
            aria-label="Tokens per day" data-testid="dashboard-chart">
            <line class="axis" x1=LEFT y1="0" x2=LEFT y2=HEIGHT />
            <line class="axis" x1=LEFT y1=HEIGHT x2=width y2=HEIGHT />
            <text x=LEFT - 4.0 y="10" text-anchor="end">{format!("{top} tokens")}</text>
            <text x=LEFT - 4.0 y=HEIGHT text-anchor="end">"0"</text>
            {days.into_iter().enumerate().map(|(i, d)| {
                let h = (d.tokens as f64 / max * HEIGHT).max(if d.tokens > 0 { 1.0 } else { 0.0 });
                view! {
                    <rect x=format!("{:.1}", LEFT + i as f64 * slot + slot * 0.1) y=format!("{:.1}", HEIGHT - h)
                        width=format!("{:.1}", slot * 0.8) height=format!("{h:.1}")>
                        <title>{format!("{}: {} tokens ({})", d.day, d.tokens, d.amount)}</title>
                    </rect>
                }
            }).collect_view()}
            <text x=LEFT y=HEIGHT + 14.0>{first}</text>
            <text x=width y=HEIGHT + 14.0 text-anchor="end">{last}</text>
        </svg>
    }
}

/// The operators' console at a glance.
fn console(g: ConsoleView) -> impl IntoView {
    view! {
        <section class="cards" data-testid="console">
            <article class="card">
                <h2>"Approvals"</h2>
                <p class="big" data-testid="pending-approvals">{g.pending_approvals}</p>
                <p>"compute requests waiting"</p>
                <A href="/approvals">"Review"</A>
            </article>
            <article class="card">
                <h2>"Organisations"</h2>
                <p class="big">{g.organizations}</p>
                <p data-testid="suspended">{format!("{} suspended", g.suspended)}</p>
                <A href="/admin/organizations">"Organisations"</A>
            </article>
            <article class="card">
                <h2>"Workers"</h2>
                <p class="big" data-testid="workers-ready">{format!("{} / {}", g.workers_ready, g.workers)}</p>
                <p>{format!("ready; {} running, {} waiting", g.running, g.waiting)}</p>
                <A href="/admin/workers">"Worker pool"</A>
            </article>
            <article class="card">
                <h2>"Models"</h2>
                <p class="big">{g.priced_models}</p>
                <p>"with a list price"</p>
                <A href="/models">"Models and prices"</A>
            </article>
        </section>
        <h2>"Partners"</h2>
        <table class="list" data-testid="console-partners">
            <thead>
                <tr><th>"Partner"</th><th>"Factories"</th><th>"Models"</th><th>"Statements closed"</th><th>"Next to close"</th></tr>
            </thead>
            <tbody>
                {g.partners.into_iter().map(|p| view! {
                    <tr data-testid=format!("partner-{}", p.name)>
                        <td>{p.name.clone()}</td>
                        <td>{p.factories}</td>
                        <td>{p.models.join(", ")}</td>
                        <td>{p.closed}</td>
                        <td data-testid="next-to-close">{p.next_to_close.clone().map_or_else(
                            || view! { <span>"up to date"</span> }.into_any(),
                            |m| view! { <A href=format!("/statements?partner={}", p.id)>{m}</A> }.into_any(),
                        )}</td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
        <h2>"Credit programs"</h2>
        <table class="list" data-testid="console-programs">
            <thead><tr><th>"Program"</th><th>"Budget"</th><th>"Used"</th><th></th></tr></thead>
            <tbody>
                {g.programs.into_iter().map(|p| view! {
                    <tr data-testid=format!("program-{}", p.name)>
                        <td>{p.name.clone()}</td>
                        <td>{p.budget}</td>
                        <td data-testid="used">{p.used}</td>
                        <td><meter min="0" max="100" value=p.used_pct>{format!("{:.0} %", p.used_pct)}</meter></td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// A partner's month so far, its factories' last day, and its latest statements.
#[component]
fn PartnerOverview(p: PartnerPanel) -> impl IntoView {
    let statements_link = "/statements".to_string();
    view! {
        <section class="cards" data-testid="partner-panel">
            <article class="card">
                <h2>{format!("Gross usage, {} to date", p.month)}</h2>
                <p class="big" data-testid="partner-gross">{p.gross}</p>
                <p>"on your factories, at list price"</p>
            </article>
            <article class="card">
                <h2>"Payable to you so far"</h2>
                <p class="big" data-testid="partner-payable">{p.payable}</p>
                <A href=format!("/statements/{}/{}", p.partner_id, p.month)>"This month's draft statement"</A>
            </article>
        </section>
        <h2>"Your factories, last 24 hours"</h2>
        {if p.factories.is_empty() {
            view! { <p class="empty">"No factory yet: an operator sets them up for you."</p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="partner-factories">
                    <thead>
                        <tr><th>"Factory"</th><th>"Region"</th><th>"GPU"</th><th>"Models"</th><th>"Requests"</th><th>"Tokens"</th><th>"Device time (s)"</th></tr>
                    </thead>
                    <tbody>
                        {p.factories.into_iter().map(|f| view! {
                            <tr>
                                <td>{f.name}</td><td>{f.region}</td><td>{f.gpu_class}</td><td>{f.models}</td>
                                <td>{f.requests}</td><td>{f.tokens}</td><td>{f.device_seconds}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        }}
        <h2>"Latest statements"</h2>
        {if p.statements.is_empty() {
            view! { <p class="empty">"No statement closed yet. " <A href=statements_link>"Statements"</A></p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="partner-statements">
                    <thead><tr><th>"Month"</th><th>"No."</th><th>"Issued"</th><th>"Payable"</th></tr></thead>
                    <tbody>
                        {p.statements.into_iter().map(|s| view! {
                            <tr>
                                <td><A href=format!("/statements/{}/{}", p.partner_id, s.period)>{s.period.clone()}</A></td>
                                <td>{s.number}</td><td>{s.issued}</td><td>{s.payable}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        }}
    }
}
