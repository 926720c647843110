//! The statement arithmetic, free of storage: usage events, agreement versions and
//! adjustments in; lines, totals and the recoupment progress out.
//!
//! Rounding rule (written on every statement): each usage event is split separately, per
//! funding part (cash, and each grant); the partner's share of a part is rounded down to the
//! nano-dollar and the vendor receives the remainder, so partner + vendor = gross exactly for
//! every event, and lines and totals are plain sums of events.

use std::collections::BTreeMap;

use crate::Period;

pub const ROUNDING_RULE: &str = "Each usage event is split separately per funding part (cash, \
each credit-support grant); the partner's share of a part is rounded down to the nano-dollar \
(1e-9 USD) and the vendor receives the remainder. Lines and totals are exact sums of events. \
Recoupment applies to cash-paid usage only and switches rates inside the event that reaches \
the cost.";

const BPS: i128 = 10_000;

/// The economic terms of one agreement version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Partner's share of cash-paid usage (after any recoupment), in basis points.
    pub partner_share_bps: u32,
    /// Partner's share of credit-supported usage (paid by program grants), in basis points.
    pub credit_reimbursement_bps: u32,
    pub recoupment: Option<Recoupment>,
}

/// While the vendor's cumulative recouped amount is below `cost`, the vendor takes
/// `vendor_share_bps` of cash-paid usage (and that share counts as recouped); after, the
/// partner takes its normal share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recoupment {
    pub cost: i64,
    pub vendor_share_bps: u32,
}

impl Terms {
    /// No agreement in force: everything stays with the vendor.
    pub const NONE: Terms = Terms {
        partner_share_bps: 0,
        credit_reimbursement_bps: 0,
        recoupment: None,
    };
}

/// An agreement version as the computation sees it: `[from, to)` in Unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementSpan {
    pub version: i64,
    pub from: i64,
    pub to: Option<i64>,
    pub terms: Terms,
}

/// One usage event. `grants` are the credit-support parts by sponsor; the rest of `amount`
/// was paid in cash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIn {
    pub id: String,
    pub created_at: i64,
    pub tenant_org_id: String,
    pub model: String,
    pub factory_id: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub device_us: i64,
    pub amount: i64,
    pub grants: Vec<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentIn {
    pub id: String,
    pub kind: String,
    pub tenant_org_id: Option<String>,
    pub factory_id: Option<String>,
    pub gross: i64,
    pub partner_amount: i64,
    pub vendor_amount: i64,
    /// Recoupment given back (zero or negative): a refund of cash the vendor had recouped.
    pub recouped: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
}

/// Sums shared by lines and totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub device_us: i64,
    pub gross: i64,
    pub cash: i64,
    pub credit_support: i64,
    pub partner_share: i64,
    pub vendor_share: i64,
    pub recouped: i64,
}

impl Amounts {
    /// The ten columns in the CSV's order.
    pub fn array(&self) -> [i64; 10] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.device_us,
            self.gross,
            self.cash,
            self.credit_support,
            self.partner_share,
            self.vendor_share,
            self.recouped,
        ]
    }

    fn add(&mut self, o: &Amounts) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.device_us += o.device_us;
        self.gross += o.gross;
        self.cash += o.cash;
        self.credit_support += o.credit_support;
        self.partner_share += o.partner_share;
        self.vendor_share += o.vendor_share;
        self.recouped += o.recouped;
    }
}

/// Credit-supported usage of one line paid by one sponsor's grants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Support {
    pub amount: i64,
    pub partner_share: i64,
}

/// Usage of one tenant and model that happened in `usage_period` (earlier than the
/// statement's period for usage that arrived after its month was closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub usage_period: Period,
    pub tenant_org_id: String,
    pub model: String,
    pub amounts: Amounts,
    /// By sponsor id (`vendor` when the platform itself funds the program).
    pub support: BTreeMap<String, Support>,
}

/// How one event's cash part was split (what a refund of it reverses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CashSplit {
    pub event_id: String,
    pub cash: i64,
    pub partner: i64,
    pub recouped: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    pub period: Period,
    /// Ordered by usage period, tenant, model.
    pub lines: Vec<Line>,
    pub totals: Amounts,
    pub adjustments: Vec<AdjustmentIn>,
    pub adjustments_gross: i64,
    pub adjustments_partner: i64,
    pub adjustments_vendor: i64,
    pub adjustments_recouped: i64,
    pub recouped_before: i64,
    pub recouped_after: i64,
    /// The largest recoupment cost of the agreement versions in force during the period (0
    /// without recoupment).
    pub recoup_cost: i64,
    /// Usage gross per factory: what closing moves out of each factory's usage account
    /// (refunds were paid from a pending-refunds account, which closing settles).
    pub factory_gross: BTreeMap<String, i64>,
    /// Events that fell outside every agreement version (their revenue stays with the vendor).
    pub events_without_agreement: i64,
    /// Each event's cash split, in the order they were applied.
    pub cash_splits: Vec<CashSplit>,
}

impl Computed {
    pub fn gross(&self) -> i64 {
        self.totals.gross + self.adjustments_gross
    }
    /// What the partner is owed for the period.
    pub fn payable(&self) -> i64 {
        self.totals.partner_share + self.adjustments_partner
    }
    pub fn vendor_total(&self) -> i64 {
        self.totals.vendor_share + self.adjustments_vendor
    }
    pub fn recoup_remaining(&self) -> i64 {
        (self.recoup_cost - self.recouped_after).max(0)
    }
    /// Recoupment of the period: the events' less what refunds gave back.
    pub fn recouped_in_period(&self) -> i64 {
        self.totals.recouped + self.adjustments_recouped
    }
}

pub fn terms_at(agreements: &[AgreementSpan], at: i64) -> Option<&AgreementSpan> {
    agreements
        .iter()
        .find(|a| a.from <= at && a.to.is_none_or(|to| at < to))
}

fn share(amount: i64, bps: u32) -> i64 {
    (i128::from(amount) * i128::from(bps) / BPS) as i64
}

/// Splits a cash part into (partner, vendor, recouped), moving `recouped_total` on.
fn split_cash(cash: i64, terms: &Terms, recouped_total: &mut i64) -> (i64, i64, i64) {
    if cash <= 0 {
        return (0, 0, 0);
    }
    let normal = |c: i64| {
        let partner = share(c, terms.partner_share_bps);
        (partner, c - partner)
    };
    let Some(r) = terms.recoupment else {
        let (p, v) = normal(cash);
        return (p, v, 0);
    };
    let remaining = r.cost - *recouped_total;
    if remaining <= 0 {
        let (p, v) = normal(cash);
        return (p, v, 0);
    }
    let v_bps = i128::from(r.vendor_share_bps.clamp(1, 10_000));
    // The vendor's share while recouping, rounded up (the partner's is rounded down).
    let vendor_of = |c: i64| ((i128::from(c) * v_bps + BPS - 1) / BPS) as i64;
    let vendor_all = vendor_of(cash);
    if vendor_all <= remaining {
        *recouped_total += vendor_all;
        return (cash - vendor_all, vendor_all, vendor_all);
    }
    // The smallest first slice whose vendor share reaches the remaining cost exactly: it is
    // `remaining` (see the tests); the rest of the event is split at the normal rate.
    let first = ((i128::from(remaining) - 1) * BPS / v_bps + 1) as i64;
    debug_assert_eq!(vendor_of(first), remaining);
    let (p2, v2) = normal(cash - first);
    *recouped_total += remaining;
    (first - remaining + p2, remaining + v2, remaining)
}

/// Computes one period's statement from its events (any order), the partner's agreement
/// versions, its adjustments and the cumulative amount recouped before the period.
pub fn compute(
    period: Period,
    events: &[EventIn],
    agreements: &[AgreementSpan],
    adjustments: &[AdjustmentIn],
    recouped_before: i64,
) -> Computed {
    let mut order: Vec<&EventIn> = events.iter().collect();
    order.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut recouped = recouped_before;
    let mut lines: BTreeMap<(Period, String, String), Line> = BTreeMap::new();
    let mut factory_gross: BTreeMap<String, i64> = BTreeMap::new();
    let mut without = 0;
    let mut cash_splits = Vec::with_capacity(order.len());
    for e in order {
        let agreement = terms_at(agreements, e.created_at);
        if agreement.is_none() {
            without += 1;
        }
        let terms = agreement.map_or(Terms::NONE, |a| a.terms);
        let supported: i64 = e.grants.iter().map(|(_, a)| a).sum();
        let cash = e.amount - supported;
        let (mut partner, mut vendor, recouped_now) = split_cash(cash, &terms, &mut recouped);
        cash_splits.push(CashSplit {
            event_id: e.id.clone(),
            cash,
            partner,
            recouped: recouped_now,
        });
        let key = (
            Period::of_ms(e.created_at),
            e.tenant_org_id.clone(),
            e.model.clone(),
        );
        let line = lines.entry(key.clone()).or_insert_with(|| Line {
            usage_period: key.0,
            tenant_org_id: key.1,
            model: key.2,
            amounts: Amounts::default(),
            support: BTreeMap::new(),
        });
        for (sponsor, amount) in &e.grants {
            let p = share(*amount, terms.credit_reimbursement_bps);
            partner += p;
            vendor += amount - p;
            let s = line.support.entry(sponsor.clone()).or_default();
            s.amount += amount;
            s.partner_share += p;
        }
        line.amounts.add(&Amounts {
            requests: 1,
            input_tokens: e.prompt_tokens,
            output_tokens: e.completion_tokens,
            device_us: e.device_us,
            gross: e.amount,
            cash,
            credit_support: supported,
            partner_share: partner,
            vendor_share: vendor,
            recouped: recouped_now,
        });
        *factory_gross.entry(e.factory_id.clone()).or_default() += e.amount;
    }
    let mut adjustments = adjustments.to_vec();
    adjustments.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    // Refunds give recoupment back at the end of the period.
    let adjustments_recouped: i64 = adjustments.iter().map(|a| a.recouped).sum();
    let recouped = recouped + adjustments_recouped;
    let lines: Vec<Line> = lines.into_values().collect();
    let mut totals = Amounts::default();
    for l in &lines {
        totals.add(&l.amounts);
    }
    // The largest cost of the versions in force during the period: recoupment never goes
    // past the cost of the version it happened under, so never past this.
    let recoup_cost = agreements
        .iter()
        .filter(|a| a.from < period.end_ms() && a.to.is_none_or(|to| to > period.start_ms()))
        .filter_map(|a| a.terms.recoupment)
        .map(|r| r.cost)
        .max()
        .unwrap_or(0);
    Computed {
        period,
        lines,
        totals,
        adjustments_gross: adjustments.iter().map(|a| a.gross).sum(),
        adjustments_partner: adjustments.iter().map(|a| a.partner_amount).sum(),
        adjustments_vendor: adjustments.iter().map(|a| a.vendor_amount).sum(),
        adjustments_recouped,
        adjustments,
        recouped_before,
        recouped_after: recouped,
        recoup_cost,
        factory_gross,
        events_without_agreement: without,
        cash_splits,
    }
}

/// The parts of a cash refund of `amount` of an event whose cash was split as `split`:
/// (partner, vendor, recouped), each zero or negative. Each side gives back its share of the
/// refunded cash, the partner's rounded toward zero; recoupment is given back likewise.
pub fn refund_split(amount: i64, split: &CashSplit) -> (i64, i64, i64) {
    if split.cash <= 0 {
        return (0, -amount, 0);
    }
    let part = |of: i64| (i128::from(of) * i128::from(amount) / i128::from(split.cash)) as i64;
    let partner = part(split.partner);
    (-partner, -(amount - partner), -part(split.recouped))
}
