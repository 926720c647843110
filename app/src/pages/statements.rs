//! Statements: a partner's monthly revenue-share statements (list with status and totals, a
//! chart of gross revenue and the partner's share over the months, CSV / PDF / usage
//! downloads, the hash chain) and, for operators, any partner's, with closing a month,
//! adjustments, refunds and the agreement editor with its history.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

use crate::api::{
    CloseStatement, CreateAdjustment, CreateAgreement, RefundUsage, StatementRow, StatementsView,
    statement_detail, statements_overview,
};
use crate::components::form::{FieldError, FormError, confirm_first, field_error, general_error};

fn downloads(partner: &str, period: &str) -> [(String, &'static str, &'static str); 3] {
    let base = format!("/statements/{partner}/{period}");
    [
        (format!("{base}/statement.csv"), "CSV", "csv"),
        (format!("{base}/statement.pdf"), "PDF", "pdf"),
        (format!("{base}/usage.csv"), "Usage events", "usage"),
    ]
}

#[component]
pub fn Statements() -> impl IntoView {
    let query = use_query_map();
    let partner = move || query.with(|q| q.get("partner"));
    let close = ServerAction::<CloseStatement>::new();
    let adjust = ServerAction::<CreateAdjustment>::new();
    let refund = ServerAction::<RefundUsage>::new();
    let agree = ServerAction::<CreateAgreement>::new();
    let view_data = Resource::new(
        move || {
            (
                partner(),
                close.version().get(),
                adjust.version().get(),
                refund.version().get(),
                agree.version().get(),
            )
        },
        |(p, ..)| statements_overview(p),
    );
    view! {
        <Title text="Statements · Tokenmill" />
        <h1>"Statements"</h1>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match view_data.await {
                    Ok(v) => view! { <Overview v close adjust refund agree /> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Overview(
    v: StatementsView,
    close: ServerAction<CloseStatement>,
    adjust: ServerAction<CreateAdjustment>,
    refund: ServerAction<RefundUsage>,
    agree: ServerAction<CreateAgreement>,
) -> impl IntoView {
    let partner_id = v.partner_id.clone();
    let picker = v.is_operator.then(|| {
        let current = v.partner_id.clone();
        view! {
            <form method="get" action="/statements" class="inline" data-testid="partner-picker">
                <label for="partner">"Partner"</label>
                <select id="partner" name="partner">
                    {v
                        .partners
                        .iter()
                        .map(|(id, name)| {
                            view! { <option value=id.clone() selected=*id == current>{name.clone()}</option> }
                        })
                        .collect_view()}
                </select>
                <button type="submit">"Show"</button>
            </form>
        }
    });
    let rows = v.rows.clone();
    let mut chart_rows = v.rows.clone();
    chart_rows.reverse();
    view! {
        {picker}
        <h2 data-testid="statements-partner">{v.partner_name.clone()}</h2>
        <p>
            "One statement per calendar month (UTC). The current month is a draft that grows as usage
             arrives; once an operator closes a month it never changes, and its SHA-256 is chained to
             the statement before it. Check a downloaded CSV with "
            <code>"tokenmill statements verify FILE.csv --previous-hash HASH"</code> " or "
            <code>"sha256sum"</code> "."
        </p>
        <Chart rows=chart_rows />
        <table class="list" data-testid="statements">
            <thead>
                <tr>
                    <th>"Month"</th>
                    <th>"Status"</th>
                    <th>"Gross"</th>
                    <th>"Payable to partner"</th>
                    <th>"Vendor"</th>
                    <th>"Downloads"</th>
                </tr>
            </thead>
            <tbody>
                {rows
                    .into_iter()
                    .map(|r| {
                        let detail = format!("/statements/{}/{}", partner_id, r.period);
                        let status = match r.number {
                            Some(n) => format!("Closed · no. {n}"),
                            None => "Draft".to_string(),
                        };
                        let links = downloads(&partner_id, &r.period);
                        view! {
                            <tr data-testid=format!("statement-{}", r.period)>
                                <td><a href=detail>{r.period.clone()}</a></td>
                                <td data-testid="status">{status}</td>
                                <td>{r.gross.clone()}</td>
                                <td data-testid="payable">{r.payable.clone()}</td>
                                <td>{r.vendor.clone()}</td>
                                <td>
                                    {links
                                        .into_iter()
                                        .map(|(href, label, id)| {
                                            view! {
                                                <a href=href download="" rel="external" data-testid=format!("download-{id}")>{label}</a>
                                                " "
                                            }
                                        })
                                        .collect_view()}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
        <Chain chain=v.chain.clone() />
        {v.is_operator.then(|| view! { <CloseMonth partner_id=v.partner_id.clone() next=v.next_closable.clone() close /> })}
        <Agreements v=v.clone() agree />
        <Adjustments v=v.clone() adjust refund />
    }
}

/// Bars per month: gross revenue (light) with the partner's share (dark) inside.
#[component]
fn Chart(rows: Vec<StatementRow>) -> impl IntoView {
    const HEIGHT: f64 = 120.0;
    let width = 640.0;
    let slot = width / rows.len().max(1) as f64;
    let max = rows
        .iter()
        .map(|r| r.gross_nanos.max(r.payable_nanos))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bar = |v: i64| (v.max(0) as f64 / max * HEIGHT).max(if v > 0 { 1.0 } else { 0.0 });
    view! {
        <svg class="chart" viewBox=format!("0 0 {width} {}", HEIGHT + 18.0) role="img"
            aria-label="Gross revenue and partner share per month" data-testid="statements-chart">
            {rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let (g, p) = (bar(r.gross_nanos), bar(r.payable_nanos));
                    let x = i as f64 * slot;
                    view! {
                        <g>
                            <title>{format!("{}: gross {}, partner {}", r.period, r.gross, r.payable)}</title>
                            <rect class="gross" x=format!("{:.1}", x + slot * 0.1) y=format!("{:.1}", HEIGHT - g)
                                width=format!("{:.1}", slot * 0.8) height=format!("{g:.1}") />
                            <rect x=format!("{:.1}", x + slot * 0.25) y=format!("{:.1}", HEIGHT - p)
                                width=format!("{:.1}", slot * 0.5) height=format!("{p:.1}") />
                            <text x=format!("{:.1}", x + slot / 2.0) y=HEIGHT + 14.0 text-anchor="middle">{r.period}</text>
                        </g>
                    }
                })
                .collect_view()}
        </svg>
    }
}

#[component]
fn Chain(chain: Vec<crate::api::ChainView>) -> impl IntoView {
    if chain.is_empty() {
        return view! { <p class="empty">"No month is closed yet, so the hash chain is empty."</p> }.into_any();
    }
    view! {
        <h2>"Hash chain"</h2>
        <table class="list hashes" data-testid="chain">
            <thead>
                <tr><th>"No."</th><th>"Month"</th><th>"SHA-256 of the CSV"</th><th>"Follows"</th><th>"Check"</th></tr>
            </thead>
            <tbody>
                {chain
                    .into_iter()
                    .map(|c| view! {
                        <tr>
                            <td>{c.number}</td>
                            <td>{c.period}</td>
                            <td><code data-testid="sha256">{c.sha256}</code></td>
                            <td><code>{c.previous}</code></td>
                            <td>{if c.ok { "intact" } else { "BROKEN" }}</td>
                        </tr>
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

#[component]
fn CloseMonth(
    partner_id: String,
    next: Option<String>,
    close: ServerAction<CloseStatement>,
) -> impl IntoView {
    let value = close.value();
    let Some(next) = next else {
        return view! { <p class="empty">"No finished month is waiting to be closed."</p> }
            .into_any();
    };
    view! {
        <section class="panel" data-testid="close-month">
            <h2>"Close a month"</h2>
            <p>{format!("Closing {next} makes its statement final, numbers it, chains its hash and posts the split to the ledger.")}</p>
            <ActionForm action=close>
                <FormError message=general_error(value) />
                <input type="hidden" name="partner_id" value=partner_id />
                <input type="hidden" name="period" value=next.clone() />
                <button
                    type="submit"
                    class="primary"
                    on:click=confirm_first(format!("Close {next}? The statement becomes final: numbered, hashed and posted to the ledger."))
                >
                    {format!("Close {next}")}
                </button>
            </ActionForm>
        </section>
    }
    .into_any()
}

#[component]
fn Agreements(v: StatementsView, agree: ServerAction<CreateAgreement>) -> impl IntoView {
    let value = agree.value();
    view! {
        <h2>"Agreement"</h2>
        {if v.agreements.is_empty() {
            view! { <p class="empty">"No agreement yet: usage revenue stays with the vendor."</p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="agreements">
                    <thead>
                        <tr><th>"Version"</th><th>"In force"</th><th>"Partner share (cash)"</th><th>"Credit support"</th><th>"Recoupment"</th><th>"History"</th></tr>
                    </thead>
                    <tbody>
                        {v.agreements
                            .into_iter()
                            .map(|a| view! {
                                <tr>
                                    <td>{a.version}</td>
                                    <td>{a.dates}</td>
                                    <td>{a.partner_share}</td>
                                    <td>{a.credit_reimbursement}</td>
                                    <td>{a.recoupment}</td>
                                    <td>{a.created} {a.ended.map(|e| format!("; {e}"))} {(!a.note.is_empty()).then(|| format!(" · {}", a.note))}</td>
                                </tr>
                            })
                            .collect_view()}
                    </tbody>
                </table>
            }
                .into_any()
        }}
        {v.is_operator.then(|| view! {
            <section class="panel" data-testid="agreement-form">
                <h3>"New agreement version"</h3>
                <p>"A version starting after the open-ended one ends it; no version may start inside a closed month or overlap another."</p>
                <ActionForm action=agree>
                    <FormError message=general_error(value) />
                    <input type="hidden" name="form[partner_id]" value=v.partner_id.clone() />
                    <label for="from">"From (YYYY-MM-DD, UTC)"</label>
                    <input id="from" name="form[from]" required placeholder="2026-12-01" />
                    <FieldError message=field_error(value, "from") id="from-error" />
                    <label for="to">"Until (exclusive, empty: open-ended)"</label>
                    <input id="to" name="form[to]" placeholder="" />
                    <FieldError message=field_error(value, "to") id="to-error" />
                    <label for="partner_share">"Partner share of cash usage (%)"</label>
                    <input id="partner_share" name="form[partner_share]" required inputmode="decimal" />
                    <FieldError message=field_error(value, "partner_share") id="partner_share-error" />
                    <label for="credit_reimbursement">"Credit-supported usage reimbursed at (%)"</label>
                    <input id="credit_reimbursement" name="form[credit_reimbursement]" required inputmode="decimal" />
                    <FieldError message=field_error(value, "credit_reimbursement") id="credit_reimbursement-error" />
                    <label for="recoup_cost">"Infrastructure cost to recoup ($, optional)"</label>
                    <input id="recoup_cost" name="form[recoup_cost]" inputmode="decimal" />
                    <FieldError message=field_error(value, "recoup_cost") id="recoup_cost-error" />
                    <label for="recoup_vendor_share">"Vendor's share while recouping (%)"</label>
                    <input id="recoup_vendor_share" name="form[recoup_vendor_share]" inputmode="decimal" />
                    <FieldError message=field_error(value, "recoup_vendor_share") id="recoup_vendor_share-error" />
                    <label for="note">"Note"</label>
                    <input id="note" name="form[note]" />
                    <button type="submit" class="primary">"Add version"</button>
                </ActionForm>
            </section>
        })}
    }
}

#[component]
fn Adjustments(
    v: StatementsView,
    adjust: ServerAction<CreateAdjustment>,
    refund: ServerAction<RefundUsage>,
) -> impl IntoView {
    let adjust_value = adjust.value();
    let refund_value = refund.value();
    let month = v.rows.first().map(|r| r.period.clone()).unwrap_or_default();
    view! {
        <h2>"Adjustments"</h2>
        {if v.adjustments.is_empty() {
            view! { <p class="empty">"No adjustments."</p> }.into_any()
        } else {
            view! {
                <table class="list" data-testid="adjustments">
                    <thead>
                        <tr><th>"Date"</th><th>"Month"</th><th>"Kind"</th><th>"Gross"</th><th>"Partner"</th><th>"Reason"</th><th>"State"</th></tr>
                    </thead>
                    <tbody>
                        {v.adjustments
                            .into_iter()
                            .map(|a| view! {
                                <tr>
                                    <td>{a.created}</td>
                                    <td>{a.period}</td>
                                    <td>{a.kind}</td>
                                    <td>{a.gross}</td>
                                    <td>{a.partner}</td>
                                    <td>{a.reason}</td>
                                    <td>{if a.settled { "in a closed statement" } else { "open" }}</td>
                                </tr>
                            })
                            .collect_view()}
                    </tbody>
                </table>
            }
                .into_any()
        }}
        {v.is_operator.then(|| view! {
            <section class="panel" data-testid="adjustment-form">
                <h3>"Credit or correction"</h3>
                <ActionForm action=adjust>
                    <FormError message=general_error(adjust_value) />
                    <input type="hidden" name="partner_id" value=v.partner_id.clone() />
                    <label for="adj_period">"Month (an open one)"</label>
                    <input id="adj_period" name="period" required value=month />
                    <label for="adj_kind">"Kind"</label>
                    <select id="adj_kind" name="kind">
                        <option value="credit">"Credit"</option>
                        <option value="correction">"Correction"</option>
                    </select>
                    <label for="amount">"Amount to the partner ($, negative takes back)"</label>
                    <input id="amount" name="amount" required inputmode="decimal" />
                    <FieldError message=field_error(adjust_value, "amount") id="amount-error" />
                    <label for="adj_reason">"Reason (printed on the statement)"</label>
                    <input id="adj_reason" name="reason" required />
                    <button type="submit">"Add adjustment"</button>
                </ActionForm>
            </section>
            <section class="panel" data-testid="refund-form">
                <h3>"Refund usage"</h3>
                <p>"Returns money for one usage event (its id is in the usage-events CSV) to the tenant's paid credit; the partner gives back its share in the current month."</p>
                <ActionForm action=refund>
                    <FormError message=general_error(refund_value) />
                    <label for="usage_event_id">"Usage event id"</label>
                    <input id="usage_event_id" name="usage_event_id" required />
                    <label for="refund_amount">"Amount ($)"</label>
                    <input id="refund_amount" name="amount" required inputmode="decimal" />
                    <FieldError message=field_error(refund_value, "refund_amount") id="refund_amount-error" />
                    <label for="refund_reason">"Reason"</label>
                    <input id="refund_reason" name="reason" required />
                    <button type="submit">"Refund"</button>
                </ActionForm>
            </section>
        })}
    }
}

/// One statement in full: lines per tenant and model, credit support, adjustments, totals.
#[component]
pub fn StatementPage() -> impl IntoView {
    let params = use_params_map();
    let key = move || {
        params.with(|p| {
            (
                p.get("partner").unwrap_or_default(),
                p.get("period").unwrap_or_default(),
            )
        })
    };
    let detail = Resource::new(key, |(partner, period)| statement_detail(partner, period));
    view! {
        <Title text="Statement · Tokenmill" />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(d) => {
                        let links = downloads(&d.partner_id, &d.period);
                        let status = match d.number {
                            Some(n) => format!("Closed statement no. {n}"),
                            None => "Draft: changes until the month is closed".into(),
                        };
                        view! {
                            <h1>{format!("{} · {}", d.partner_name, d.period)}</h1>
                            <p data-testid="statement-status">{status}</p>
                            <p>
                                {links.into_iter().map(|(href, label, id)| view! {
                                    <a href=href download="" rel="external" data-testid=format!("download-{id}")>{label}</a> " "
                                }).collect_view()}
                                <a href=format!("/statements?partner={}", d.partner_id)>"All statements"</a>
                            </p>
                            <section class="cards">
                                <div class="card"><h2>"Gross"</h2><p class="big" data-testid="statement-gross">{d.gross.clone()}</p></div>
                                <div class="card"><h2>"Payable to partner"</h2><p class="big" data-testid="statement-payable">{d.payable.clone()}</p></div>
                                <div class="card"><h2>"Vendor"</h2><p class="big" data-testid="statement-vendor">{d.vendor.clone()}</p></div>
                            </section>
                            <ul>{d.agreements.into_iter().map(|a| view! { <li>{a}</li> }).collect_view()}</ul>
                            <p>{format!("Recoupment: {}", d.recoupment)}</p>
                            <table class="list" data-testid="statement-lines">
                                <thead>
                                    <tr>
                                        <th>"Month"</th><th>"Tenant"</th><th>"Model"</th><th>"Requests"</th><th>"Input tokens"</th>
                                        <th>"Output tokens"</th><th>"Device s"</th><th>"Gross"</th><th>"Cash"</th>
                                        <th>"Credit support"</th><th>"Partner"</th><th>"Vendor"</th><th>"Recouped"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {d.lines.into_iter().chain(std::iter::once(d.total)).map(|l| view! {
                                        <tr>
                                            <td>{l.usage_period}</td><td>{l.tenant}</td><td>{l.model}</td><td>{l.requests}</td>
                                            <td>{l.input_tokens}</td><td>{l.output_tokens}</td><td>{l.device_seconds}</td>
                                            <td>{l.gross}</td><td>{l.cash}</td><td>{l.credit_support}</td>
                                            <td>{l.partner}</td><td>{l.vendor}</td><td>{l.recouped}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {(!d.support.is_empty()).then(|| view! {
                                <h2>"Credit support by sponsor"</h2>
                                <table class="list">
                                    <thead><tr><th>"Month / model"</th><th>"Sponsor"</th><th>"Amount"</th><th>"Partner share"</th></tr></thead>
                                    <tbody>{d.support.into_iter().map(|(what, sponsor, amount, share)| view! {
                                        <tr><td>{what}</td><td>{sponsor}</td><td>{amount}</td><td>{share}</td></tr>
                                    }).collect_view()}</tbody>
                                </table>
                            })}
                            <h2>"Adjustments"</h2>
                            {if d.adjustments.is_empty() {
                                view! { <p class="empty">"None."</p> }.into_any()
                            } else {
                                view! {
                                    <table class="list">
                                        <thead><tr><th>"Date"</th><th>"Kind"</th><th>"Gross"</th><th>"Partner"</th><th>"Reason"</th></tr></thead>
                                        <tbody>{d.adjustments.into_iter().map(|a| view! {
                                            <tr><td>{a.created}</td><td>{a.kind}</td><td>{a.gross}</td><td>{a.partner}</td><td>{a.reason}</td></tr>
                                        }).collect_view()}</tbody>
                                    </table>
                                }.into_any()
                            }}
                            <p class="hint">{format!("Rounding: {}", d.rounding)}</p>
                            {d.sha256.map(|h| view! { <p>"SHA-256 of the CSV: " <code data-testid="statement-sha256">{h}</code></p> })}
                            <p>"Follows: " <code>{d.previous_sha256.unwrap_or_else(|| "none (first statement)".into())}</code></p>
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}
