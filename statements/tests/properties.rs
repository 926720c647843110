//! Properties of the statement arithmetic over random usage, agreements and adjustments:
//! every event splits exactly, lines add up to totals, the partner's and the vendor's parts add
//! up to gross, recoupment never overshoots its cost, and the CSV verifies while any change
//! to a number breaks it.

use std::collections::BTreeMap;

use proptest::prelude::*;
use statements::compute::{AdjustmentIn, AgreementSpan, EventIn, compute};
use statements::{Period, Recoupment, Terms, canonical, parse_date};

fn terms() -> impl Strategy<Value = Terms> {
    (
        0u32..=10_000,
        0u32..=10_000,
        prop::option::of((1i64..5_000_000_000, 1u32..=10_000)),
    )
        .prop_map(|(p, r, rec)| Terms {
            partner_share_bps: p,
            credit_reimbursement_bps: r,
            recoupment: rec.map(|(cost, v)| Recoupment {
                cost,
                vendor_share_bps: v,
            }),
        })
}

fn event(month_start: i64) -> impl Strategy<Value = EventIn> {
    (
        0i64..(28 * 86_400_000),
        0usize..3,
        0usize..2,
        0i64..2_000_000_000,
        prop::collection::vec((0usize..2, 0i64..500_000_000), 0..3),
        0i64..10_000_000,
    )
        .prop_map(move |(offset, tenant, model, cash, grants, device_us)| {
            let grants: Vec<(String, i64)> = grants
                .into_iter()
                .map(|(s, a)| (["vendor", "sponsor-x"][s].to_string(), a))
                .collect();
            let amount = cash + grants.iter().map(|(_, a)| a).sum::<i64>();
            EventIn {
                id: format!("e{offset}-{tenant}-{model}-{amount}"),
                created_at: month_start + offset,
                tenant_org_id: format!("tenant-{tenant}"),
                model: ["m1", "m2"][model].to_string(),
                factory_id: format!("factory-{}", tenant % 2),
                prompt_tokens: amount % 1000,
                completion_tokens: amount % 777,
                device_us,
                amount,
                grants,
            }
        })
}

fn adjustment() -> impl Strategy<Value = AdjustmentIn> {
    (
        -1_000_000_000i64..1_000_000_000,
        -1_000_000_000i64..0,
        any::<bool>(),
    )
        .prop_map(|(credit, refund, is_refund)| {
            let (gross, partner) = if is_refund {
                (refund, refund * 7 / 10)
            } else {
                (0, credit)
            };
            AdjustmentIn {
                id: format!("a{credit}{refund}"),
                kind: if is_refund { "refund" } else { "credit" }.into(),
                tenant_org_id: None,
                factory_id: None,
                gross,
                partner_amount: partner,
                vendor_amount: gross - partner,
                recouped: 0,
                reason: "r, with \"quotes\"\nand a line break".into(),
                created_by: "ops".into(),
                created_at: 0,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn statements_add_up_and_verify(
        first in terms(),
        second in terms(),
        change_day in 1i64..28,
        events in prop::collection::vec(event(parse_date("2026-10-01").unwrap()), 0..40),
        adjustments in prop::collection::vec(adjustment(), 0..4),
        recouped_before in 0i64..3_000_000_000,
    ) {
        let period = Period::parse("2026-10").unwrap();
        let change = period.start_ms() + change_day * 86_400_000;
        let agreements = [
            AgreementSpan { version: 1, from: period.start_ms(), to: Some(change), terms: first },
            AgreementSpan { version: 2, from: change, to: None, terms: second },
        ];
        let c = compute(period, &events, &agreements, &adjustments, recouped_before);

        // Every line splits exactly; lines add up to totals; factories add up to gross.
        let mut gross = 0;
        for l in &c.lines {
            prop_assert_eq!(l.amounts.partner_share + l.amounts.vendor_share, l.amounts.gross);
            prop_assert_eq!(l.amounts.cash + l.amounts.credit_support, l.amounts.gross);
            prop_assert!(l.amounts.partner_share >= 0 && l.amounts.vendor_share >= 0);
            prop_assert_eq!(l.support.values().map(|s| s.amount).sum::<i64>(), l.amounts.credit_support);
            gross += l.amounts.gross;
        }
        prop_assert_eq!(gross, c.totals.gross);
        prop_assert_eq!(events.iter().map(|e| e.amount).sum::<i64>(), c.totals.gross);
        prop_assert_eq!(c.factory_gross.values().sum::<i64>(), c.totals.gross);
        prop_assert_eq!(c.payable() + c.vendor_total(), c.gross());
        // Recoupment moves by exactly what the lines recouped and never past the largest
        // cost in force.
        prop_assert_eq!(c.recouped_before + c.totals.recouped, c.recouped_after);
        let max_cost = [first, second].iter().filter_map(|t| t.recoupment).map(|r| r.cost).max().unwrap_or(0);
        if c.totals.recouped > 0 {
            prop_assert!(c.recouped_after <= max_cost.max(recouped_before));
        }

        // The CSV verifies, reproduces the totals, and a changed digit breaks it.
        let names = BTreeMap::new();
        let csv = canonical::write(
            &canonical::Header {
                partner_id: "p",
                partner_name: "Partner, Inc.",
                number: Some(3),
                previous_sha256: Some("ab"),
                agreements: &[],
                names: &names,
            },
            &c,
        );
        let verified = canonical::verify(csv.as_bytes(), Some("ab")).map_err(|e| TestCaseError::fail(e.0))?;
        prop_assert_eq!(verified.document.payable, c.payable());
        prop_assert_eq!(verified.document.total.gross, c.totals.gross);
        prop_assert!(canonical::verify(csv.as_bytes(), Some("cd")).is_err());
        if let Some(first_line) = c.lines.first() {
            let shown = canonical::usd(first_line.amounts.partner_share);
            let tampered = canonical::usd(first_line.amounts.partner_share + 1);
            let at = csv.find(&format!(",{shown},")).unwrap();
            let changed = format!("{}{}{}", &csv[..at + 1], tampered, &csv[at + 1 + shown.len()..]);
            prop_assert!(canonical::verify(changed.as_bytes(), None).is_err());
        }
    }
}

#[test]
fn a_threshold_inside_one_event_splits_it_exactly() {
    let period = Period::parse("2026-10").unwrap();
    let terms = Terms {
        partner_share_bps: 7000,
        credit_reimbursement_bps: 5000,
        recoupment: Some(Recoupment {
            cost: 780_000_000,
            vendor_share_bps: 6000,
        }),
    };
    let agreements = [AgreementSpan {
        version: 1,
        from: period.start_ms(),
        to: None,
        terms,
    }];
    let e = EventIn {
        id: "e".into(),
        created_at: period.start_ms() + 1,
        tenant_org_id: "t".into(),
        model: "m".into(),
        factory_id: "f".into(),
        prompt_tokens: 1,
        completion_tokens: 1,
        device_us: 1,
        amount: 2_000_000_000,
        grants: vec![],
    };
    let c = compute(period, &[e], &agreements, &[], 0);
    // 1.299999999 at 40/60 reaches 0.78 exactly; 0.700000001 at 70/30.
    assert_eq!(c.totals.recouped, 780_000_000);
    assert_eq!(c.totals.partner_share, 519_999_999 + 490_000_000);
    assert_eq!(c.totals.vendor_share, 780_000_000 + 210_000_001);
    assert_eq!(c.recoup_remaining(), 0);
}
