//! Server functions of the Statements pages: a partner's monthly revenue-share statements
//! (its own only; operators any partner's), and the operators' tools: closing a month,
//! adjustments, refunds of usage, and the agreement editor. The documents themselves are
//! downloads: `/statements/{partner}/{period}/statement.csv|statement.pdf|usage.csv`.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementRow {
    pub period: String,
    pub closed: bool,
    pub number: Option<i64>,
    pub gross: String,
    pub gross_nanos: i64,
    pub payable: String,
    pub payable_nanos: i64,
    pub vendor: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementView {
    pub version: i64,
    pub dates: String,
    pub partner_share: String,
    pub credit_reimbursement: String,
    pub recoupment: String,
    pub note: String,
    pub created: String,
    pub ended: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdjustmentView {
    pub created: String,
    pub period: String,
    pub kind: String,
    pub gross: String,
    pub partner: String,
    pub reason: String,
    pub settled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainView {
    pub period: String,
    pub number: i64,
    pub sha256: String,
    pub previous: String,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementsView {
    pub partner_id: String,
    pub partner_name: String,
    pub is_operator: bool,
    /// For operators: every partner, (id, name).
    pub partners: Vec<(String, String)>,
    /// Newest first.
    pub rows: Vec<StatementRow>,
    pub next_closable: Option<String>,
    pub agreements: Vec<AgreementView>,
    pub adjustments: Vec<AdjustmentView>,
    pub chain: Vec<ChainView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineView {
    pub usage_period: String,
    pub tenant: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub device_seconds: String,
    pub gross: String,
    pub cash: String,
    pub credit_support: String,
    pub partner: String,
    pub vendor: String,
    pub recouped: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementDocView {
    pub partner_id: String,
    pub partner_name: String,
    pub period: String,
    pub closed: bool,
    pub number: Option<i64>,
    pub sha256: Option<String>,
    pub previous_sha256: Option<String>,
    pub agreements: Vec<String>,
    pub lines: Vec<LineView>,
    pub total: LineView,
    pub support: Vec<(String, String, String, String)>,
    pub adjustments: Vec<AdjustmentView>,
    pub gross: String,
    pub payable: String,
    pub vendor: String,
    pub recoupment: String,
    pub rounding: String,
}

#[cfg(feature = "ssr")]
pub mod access {
    use crate::AppError;
    use crate::ssr::AppState;

    /// Which partner's statements `user` may see: a partner's users their own (another
    /// partner's are not found), operators any (the first by name when none is asked for).
    pub async fn statement_partner(
        app: &AppState,
        user: &accounts::User,
        requested: Option<&str>,
    ) -> Result<String, AppError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        if user.is_operator {
            return match requested {
                Some(p) => {
                    app.statements.partner_name(p).await?;
                    Ok(p.to_string())
                }
                None => app
                    .statements
                    .partners()
                    .await?
                    .into_iter()
                    .next()
                    .map(|(id, _)| id)
                    .ok_or(AppError::NotFound),
            };
        }
        let org = app
            .accounts
            .org(&user.org_id)
            .await?
            .ok_or(AppError::NotFound)?;
        if org.kind != accounts::OrgKind::Partner {
            return Err(AppError::Forbidden);
        }
        match requested {
            Some(p) if p != org.id => Err(AppError::NotFound),
            _ => Ok(org.id),
        }
    }

    pub fn pct(bps: u32) -> String {
        format!("{}.{:02} %", bps / 100, bps % 100)
    }

    /// `70`, `70.5`, `12.25` (percent, two decimals at most) as basis points.
    pub fn parse_pct(text: &str, field: &'static str) -> Result<u32, AppError> {
        let bad = || AppError::Field {
            field: field.into(),
            message: "Enter a percentage from 0 to 100, like 70 or 12.5.".into(),
        };
        let text = text.trim().trim_end_matches('%').trim();
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty()
            || frac.len() > 2
            || !whole
                .chars()
                .chain(frac.chars())
                .all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        let bps = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(bad)?;
        if bps > 10_000 {
            return Err(bad());
        }
        Ok(bps)
    }
}

#[cfg(feature = "ssr")]
fn row(s: &statements::Statement) -> StatementRow {
    let d = &s.document;
    let sha256 = match &s.status {
        statements::StatementStatus::Closed { sha256, .. } => Some(sha256.clone()),
        statements::StatementStatus::Draft => None,
    };
    StatementRow {
        period: s.period.to_string(),
        closed: s.is_closed(),
        number: d.number,
        gross: ledger::Nanos::new(d.summary[0]).to_string(),
        gross_nanos: d.summary[0],
        payable: ledger::Nanos::new(d.payable).to_string(),
        payable_nanos: d.payable,
        vendor: ledger::Nanos::new(d.summary[2]).to_string(),
        sha256,
    }
}

#[cfg(feature = "ssr")]
fn adjustment_view(a: &statements::Adjustment) -> AdjustmentView {
    AdjustmentView {
        created: statements::date_label(a.created_at),
        period: a.period.to_string(),
        kind: a.kind.code().to_string(),
        gross: a.gross.to_string(),
        partner: a.partner_amount.to_string(),
        reason: a.reason.clone(),
        settled: a.statement_id.is_some(),
    }
}

#[server(endpoint = "statements_overview")]
pub async fn statements_overview(partner: Option<String>) -> Result<StatementsView, AppError> {
    let (app, user) = signed_in().await?;
    let partner_id = access::statement_partner(&app, &user, partner.as_deref())
        .await
        .map_err(with_status)?;
    let s = &app.statements;
    let now = db::now_ms();
    let partner_name = s.partner_name(&partner_id).await.map_err(with_status)?;
    let rows = s.list(&partner_id, now).await.map_err(with_status)?;
    let agreements = s.agreements(&partner_id).await.map_err(with_status)?;
    let adjustments = s.adjustments(&partner_id).await.map_err(with_status)?;
    let chain = s.chain(&partner_id).await.map_err(with_status)?;
    let next = s
        .next_closable(&partner_id, now)
        .await
        .map_err(with_status)?;
    let partners = if user.is_operator {
        s.partners().await.map_err(with_status)?
    } else {
        Vec::new()
    };
    Ok(StatementsView {
        partner_id,
        partner_name,
        is_operator: user.is_operator,
        partners,
        rows: rows.iter().map(row).collect(),
        next_closable: next.map(|p| p.to_string()),
        agreements: agreements
            .iter()
            .rev()
            .map(|a| AgreementView {
                version: a.version,
                dates: a.dates(),
                partner_share: access::pct(a.terms.partner_share_bps),
                credit_reimbursement: access::pct(a.terms.credit_reimbursement_bps),
                recoupment: a.terms.recoupment.map_or("none".into(), |r| {
                    format!(
                        "{} at a vendor share of {}",
                        ledger::Nanos::new(r.cost),
                        access::pct(r.vendor_share_bps)
                    )
                }),
                note: a.note.clone(),
                created: format!(
                    "{} by {}",
                    statements::date_label(a.created_at),
                    a.created_by
                ),
                ended: a.ended_by.as_ref().map(|by| {
                    format!(
                        "ended {} by {by}",
                        statements::date_label(a.ended_at.unwrap_or_default())
                    )
                }),
            })
            .collect(),
        adjustments: adjustments.iter().map(adjustment_view).collect(),
        chain: chain
            .into_iter()
            .map(|c| ChainView {
                period: c.period.to_string(),
                number: c.number,
                ok: c.linked && c.intact,
                sha256: c.sha256,
                previous: c.previous_sha256.unwrap_or_else(|| "none".into()),
            })
            .collect(),
    })
}

#[server(endpoint = "statement_detail")]
pub async fn statement_detail(
    partner: String,
    period: String,
) -> Result<StatementDocView, AppError> {
    let app = state()?;
    let user = require_user().await.map_err(with_status)?;
    let partner_id = access::statement_partner(&app, &user, Some(&partner))
        .await
        .map_err(with_status)?;
    let period = statements::Period::parse(&period).map_err(with_status)?;
    let st = app
        .statements
        .statement(&partner_id, period, db::now_ms())
        .await
        .map_err(with_status)?;
    Ok(statement_doc_view(partner_id, &st))
}

/// A statement as the statement page shows it: money as dollars, agreements in words.
#[cfg(feature = "ssr")]
fn statement_doc_view(partner_id: String, st: &statements::Statement) -> StatementDocView {
    let d = &st.document;
    let money = |n: i64| ledger::Nanos::new(n).to_string();
    let line = |period: &str, tenant: &str, model: &str, s: &statements::canonical::Sums| {
        line_view(period, tenant, model, s, money)
    };
    let [cost, before, during, after, remaining] = d.recoupment;
    let (sha256, previous_sha256) = match &st.status {
        statements::StatementStatus::Closed {
            sha256,
            previous_sha256,
            ..
        } => (Some(sha256.clone()), previous_sha256.clone()),
        statements::StatementStatus::Draft => (None, d.previous_sha256.clone()),
    };
    StatementDocView {
        partner_id,
        partner_name: d.partner_name.clone(),
        period: d.period.clone(),
        closed: st.is_closed(),
        number: d.number,
        sha256,
        previous_sha256,
        agreements: d
            .agreements
            .iter()
            .map(|a| agreement_text(a, money))
            .collect(),
        lines: d
            .lines
            .iter()
            .map(|l| {
                let tenant = if l.tenant_name.is_empty() {
                    &l.tenant_id
                } else {
                    &l.tenant_name
                };
                line(&l.usage_period, tenant, &l.model, &l.sums)
            })
            .collect(),
        total: line("Total", "", "", &d.total),
        support: d
            .support
            .iter()
            .map(|s| {
                (
                    format!("{} / {}", s.usage_period, s.model),
                    if s.sponsor_name.is_empty() {
                        s.sponsor_id.clone()
                    } else {
                        s.sponsor_name.clone()
                    },
                    money(s.amount),
                    money(s.partner_share),
                )
            })
            .collect(),
        adjustments: d
            .adjustments
            .iter()
            .map(|a| AdjustmentView {
                created: a.date.clone(),
                period: d.period.clone(),
                kind: a.kind.clone(),
                gross: money(a.gross),
                partner: money(a.partner),
                reason: format!("{} ({})", a.reason, a.created_by),
                settled: st.is_closed(),
            })
            .collect(),
        gross: money(d.summary[0]),
        payable: money(d.payable),
        vendor: money(d.summary[2]),
        recoupment: format!(
            "cost {}, recouped before {}, this period {}, after {}, remaining {}",
            money(cost),
            money(before),
            money(during),
            money(after),
            money(remaining)
        ),
        rounding: d.rounding.clone(),
    }
}

/// One line (or the total) of a statement's usage table.
#[cfg(feature = "ssr")]
fn line_view(
    period: &str,
    tenant: &str,
    model: &str,
    s: &statements::canonical::Sums,
    money: impl Fn(i64) -> String,
) -> LineView {
    LineView {
        usage_period: period.to_string(),
        tenant: tenant.to_string(),
        model: model.to_string(),
        requests: s.requests,
        input_tokens: s.input_tokens,
        output_tokens: s.output_tokens,
        device_seconds: statements::canonical::seconds(s.device_us),
        gross: money(s.gross),
        cash: money(s.cash),
        credit_support: money(s.credit_support),
        partner: money(s.partner_share),
        vendor: money(s.vendor_share),
        recouped: money(s.recouped),
    }
}

/// An agreement version in force during the month, in words.
#[cfg(feature = "ssr")]
fn agreement_text(
    a: &statements::canonical::DocAgreement,
    money: impl Fn(i64) -> String,
) -> String {
    let recoup = match (a.recoup_cost, a.recoup_vendor_share_bps) {
        (Some(c), Some(v)) => format!(
            "; recoupment of {} at a vendor share of {}",
            money(c),
            access::pct(v as u32)
        ),
        _ => String::new(),
    };
    format!(
        "Version {} from {} to {}: partner share {}, credit support reimbursed at {}{recoup}",
        a.version,
        a.from,
        if a.to.is_empty() { "open" } else { &a.to },
        access::pct(a.partner_share_bps as u32),
        access::pct(a.credit_reimbursement_bps as u32)
    )
}

#[server(endpoint = "close_statement")]
pub async fn close_statement(partner_id: String, period: String) -> Result<i64, AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let period = statements::Period::parse(&period).map_err(with_status)?;
    let closed = app
        .statements
        .close(&partner_id, period, &user.email, db::now_ms())
        .await
        .map_err(with_status)?;
    let after = serde_json::json!({
        "status": "closed",
        "number": closed.document.number,
        "sha256": statements::sha256_hex(closed.csv.as_bytes()),
        "previous_sha256": closed.document.previous_sha256,
    });
    audited(
        &app,
        &user,
        accounts::Change {
            action: "statement.close",
            target_kind: "statement",
            target_id: &format!("{partner_id}/{period}"),
            target_org_id: Some(&partner_id),
            before: audit_json(serde_json::json!({ "status": "draft" })),
            after: audit_json(after),
        },
    )
    .await;
    Ok(closed.document.number.unwrap_or_default())
}

/// The agreement editor's fields (`form[from]`, …): dates as YYYY-MM-DD, rates in percent,
/// the recoupment cost in dollars; `to` and the recoupment pair may be empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgreementForm {
    pub partner_id: String,
    pub from: String,
    pub to: String,
    pub partner_share: String,
    pub credit_reimbursement: String,
    pub recoup_cost: String,
    pub recoup_vendor_share: String,
    pub note: String,
}

#[server(endpoint = "create_agreement")]
pub async fn create_agreement(form: AgreementForm) -> Result<i64, AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let AgreementForm {
        partner_id,
        from,
        to,
        partner_share,
        credit_reimbursement,
        recoup_cost,
        recoup_vendor_share,
        note,
    } = form;
    let field = |field: &str, e: statements::StatementError| AppError::Field {
        field: field.into(),
        message: e.to_string(),
    };
    let from = statements::parse_date(&from).map_err(|e| with_status(field("from", e)))?;
    let to = match to.trim() {
        "" => None,
        t => Some(statements::parse_date(t).map_err(|e| with_status(field("to", e)))?),
    };
    let partner_share_bps =
        access::parse_pct(&partner_share, "partner_share").map_err(with_status)?;
    let credit_bps =
        access::parse_pct(&credit_reimbursement, "credit_reimbursement").map_err(with_status)?;
    let recoupment = match (recoup_cost.trim(), recoup_vendor_share.trim()) {
        ("", "") => None,
        (cost, vendor) => {
            let cost = ledger::Nanos::parse_dollars(cost).map_err(|e| {
                with_status(AppError::Field {
                    field: "recoup_cost".into(),
                    message: e.to_string(),
                })
            })?;
            let vendor_share_bps =
                access::parse_pct(vendor, "recoup_vendor_share").map_err(with_status)?;
            Some(statements::Recoupment {
                cost: cost.get(),
                vendor_share_bps,
            })
        }
    };
    let terms = serde_json::json!({
        "from": statements::date_label(from), "to": to.map(statements::date_label),
        "partner_share_bps": partner_share_bps, "credit_reimbursement_bps": credit_bps,
        "recoupment_cost": recoupment.as_ref().map(|r| r.cost),
        "recoupment_vendor_share_bps": recoupment.as_ref().map(|r| r.vendor_share_bps),
    });
    let added = app
        .statements
        .add_agreement(
            &user.email,
            &statements::NewAgreement {
                partner_org_id: partner_id.clone(),
                from,
                to,
                terms: statements::Terms {
                    partner_share_bps,
                    credit_reimbursement_bps: credit_bps,
                    recoupment,
                },
                note: note.trim().chars().take(500).collect(),
            },
            db::now_ms(),
        )
        .await
        .map_err(with_status)?;
    audited(
        &app,
        &user,
        accounts::Change {
            action: "agreement.create",
            target_kind: "agreement",
            target_id: &format!("{partner_id}/v{}", added.version),
            target_org_id: Some(&partner_id),
            before: None,
            after: audit_json(terms),
        },
    )
    .await;
    Ok(added.version)
}

#[server(endpoint = "create_adjustment")]
pub async fn create_adjustment(
    partner_id: String,
    period: String,
    kind: String,
    amount: String,
    reason: String,
) -> Result<(), AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let period = statements::Period::parse(&period).map_err(with_status)?;
    let kind = statements::AdjustmentKind::parse(kind.trim()).map_err(with_status)?;
    let amount = ledger::Nanos::parse_dollars(&amount).map_err(|e| {
        with_status(AppError::Field {
            field: "amount".into(),
            message: e.to_string(),
        })
    })?;
    app.statements
        .adjust(
            &partner_id,
            period,
            kind,
            amount,
            None,
            &reason,
            &user.email,
            db::now_ms(),
        )
        .await
        .map_err(with_status)?;
    let after = serde_json::json!({
        "period": period.to_string(), "kind": format!("{kind:?}"), "amount": amount.to_string(),
        "reason": reason.trim(),
    });
    audited(
        &app,
        &user,
        accounts::Change {
            action: "statement.adjust",
            target_kind: "statement",
            target_id: &format!("{partner_id}/{period}"),
            target_org_id: Some(&partner_id),
            before: None,
            after: audit_json(after),
        },
    )
    .await;
    Ok(())
}

#[server(endpoint = "refund_usage")]
pub async fn refund_usage(
    usage_event_id: String,
    amount: String,
    reason: String,
) -> Result<(), AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let amount = ledger::Nanos::parse_dollars(&amount).map_err(|e| {
        with_status(AppError::Field {
            field: "refund_amount".into(),
            message: e.to_string(),
        })
    })?;
    app.statements
        .refund_usage(
            usage_event_id.trim(),
            amount,
            &reason,
            &user.email,
            db::now_ms(),
        )
        .await
        .map_err(with_status)?;
    audited(
        &app,
        &user,
        accounts::Change {
            action: "usage.refund",
            target_kind: "usage_event",
            target_id: usage_event_id.trim(),
            target_org_id: None,
            before: None,
            after: audit_json(serde_json::json!({
                "amount": amount.to_string(), "reason": reason.trim(),
            })),
        },
    )
    .await;
    Ok(())
}
