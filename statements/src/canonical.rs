//! The canonical CSV of a statement, and its verification.
//!
//! One record per row, its kind in the first column (docs/statements.md lists the columns of
//! each kind). UTF-8, `\n` line ends, money as dollars with exactly nine decimals (`.`), device
//! time as seconds with six. The same statement always gives the same bytes, so its SHA-256
//! (what `sha256sum` prints) identifies it; closed statements carry their predecessor's hash.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::compute::{Computed, ROUNDING_RULE};
use crate::period::date_label;
use crate::{AgreementVersion, Period};

pub const FORMAT_VERSION: &str = "1";

/// Exact dollars with nine decimals: `12.500000000`, `-0.000000150`.
pub fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// Device microseconds as seconds with six decimals.
pub fn seconds(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "" };
    let abs = us.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a statement's CSV says about itself besides the numbers.
pub struct Header<'a> {
    pub partner_id: &'a str,
    pub partner_name: &'a str,
    /// `None` for a draft.
    pub number: Option<i64>,
    pub previous_sha256: Option<&'a str>,
    pub agreements: &'a [AgreementVersion],
    /// Display names of tenants and sponsors by id.
    pub names: &'a BTreeMap<String, String>,
}

#[allow(
    clippy::too_many_lines,
    reason = "the format's records in file order, one after another; split up, the order would be spread over functions"
)]
pub fn write(header: &Header<'_>, c: &Computed) -> String {
    // Names are the tenants' and partners' own text: every cell goes through text::Csv, so a
    // name that a spreadsheet would run as a formula is written with a leading `'`.
    let mut w = text::Csv::with({
        let mut b = csv::WriterBuilder::new();
        b.flexible(true).terminator(csv::Terminator::Any(b'\n'));
        b
    });
    let name = |id: &str| header.names.get(id).cloned().unwrap_or_default();
    // The rows borrow the writer until the block ends.
    {
        let mut row = |fields: Vec<String>| {
            // Writing to a Vec cannot fail.
            let _ = w.row(&fields);
        };
        let s = |x: &str| x.to_string();
        row(vec![s("tokenmill-statement"), s(FORMAT_VERSION)]);
        row(vec![
            s("partner"),
            s(header.partner_id),
            s(header.partner_name),
        ]);
        row(vec![
            s("period"),
            c.period.to_string(),
            date_label(c.period.start_ms()),
            date_label(c.period.end_ms()),
        ]);
        row(vec![
            s("status"),
            s(if header.number.is_some() {
                "closed"
            } else {
                "draft"
            }),
            header.number.map(|n| n.to_string()).unwrap_or_default(),
        ]);
        row(vec![
            s("previous_sha256"),
            s(header.previous_sha256.unwrap_or("")),
        ]);
        row(vec![s("rounding"), s(ROUNDING_RULE)]);
        for a in header.agreements {
            let r = a.terms.recoupment;
            row(vec![
                s("agreement"),
                a.version.to_string(),
                date_label(a.from),
                a.to.map(date_label).unwrap_or_default(),
                a.terms.partner_share_bps.to_string(),
                a.terms.credit_reimbursement_bps.to_string(),
                r.map(|r| usd(r.cost)).unwrap_or_default(),
                r.map(|r| r.vendor_share_bps.to_string())
                    .unwrap_or_default(),
            ]);
        }
        let amounts = |a: &crate::compute::Amounts| {
            vec![
                a.requests.to_string(),
                a.input_tokens.to_string(),
                a.output_tokens.to_string(),
                seconds(a.device_us),
                usd(a.gross),
                usd(a.cash),
                usd(a.credit_support),
                usd(a.partner_share),
                usd(a.vendor_share),
                usd(a.recouped),
            ]
        };
        for l in &c.lines {
            let mut fields = vec![
                s("line"),
                l.usage_period.to_string(),
                l.tenant_org_id.clone(),
                name(&l.tenant_org_id),
                l.model.clone(),
            ];
            fields.extend(amounts(&l.amounts));
            row(fields);
            for (sponsor, part) in &l.support {
                row(vec![
                    s("support"),
                    l.usage_period.to_string(),
                    l.tenant_org_id.clone(),
                    l.model.clone(),
                    sponsor.clone(),
                    name(sponsor),
                    usd(part.amount),
                    usd(part.partner_share),
                ]);
            }
        }
        let mut fields = vec![s("total")];
        fields.extend(amounts(&c.totals));
        row(fields);
        for a in &c.adjustments {
            row(vec![
                s("adjustment"),
                a.id.clone(),
                a.kind.clone(),
                date_label(a.created_at),
                a.created_by.clone(),
                a.tenant_org_id.clone().unwrap_or_default(),
                a.reason.clone(),
                usd(a.gross),
                usd(a.partner_amount),
                usd(a.vendor_amount),
                usd(a.recouped),
            ]);
        }
        row(vec![
            s("adjustments_total"),
            usd(c.adjustments_gross),
            usd(c.adjustments_partner),
            usd(c.adjustments_vendor),
            usd(c.adjustments_recouped),
        ]);
        row(vec![
            s("recoupment"),
            usd(c.recoup_cost),
            usd(c.recouped_before),
            usd(c.recouped_in_period()),
            usd(c.recouped_after),
            usd(c.recoup_remaining()),
        ]);
        row(vec![
            s("summary"),
            usd(c.gross()),
            usd(c.payable()),
            usd(c.vendor_total()),
        ]);
        row(vec![s("payable"), usd(c.payable())]);
    }
    w.finish().unwrap_or_default()
}

/// A statement CSV read back: what pages and the PDF show, and what verification checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document {
    pub partner_id: String,
    pub partner_name: String,
    pub period: String,
    pub period_from: String,
    pub period_to: String,
    pub status: String,
    pub number: Option<i64>,
    pub previous_sha256: Option<String>,
    pub rounding: String,
    pub agreements: Vec<DocAgreement>,
    pub lines: Vec<DocLine>,
    pub support: Vec<DocSupport>,
    pub total: Sums,
    pub adjustments: Vec<DocAdjustment>,
    /// gross, partner, vendor, recouped.
    pub adjustments_total: [i64; 4],
    /// cost, recouped before, in the period, after, remaining.
    pub recoupment: [i64; 5],
    /// gross, partner, vendor.
    pub summary: [i64; 3],
    pub payable: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocAgreement {
    pub version: i64,
    pub from: String,
    pub to: String,
    pub partner_share_bps: i64,
    pub credit_reimbursement_bps: i64,
    pub recoup_cost: Option<i64>,
    pub recoup_vendor_share_bps: Option<i64>,
}

/// The ten summed columns of `line` and `total` rows (device time in microseconds): the same
/// sums the computation makes.
pub use crate::compute::Amounts as Sums;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocLine {
    pub usage_period: String,
    pub tenant_id: String,
    pub tenant_name: String,
    pub model: String,
    pub sums: Sums,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocSupport {
    pub usage_period: String,
    pub tenant_id: String,
    pub model: String,
    pub sponsor_id: String,
    pub sponsor_name: String,
    pub amount: i64,
    pub partner_share: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocAdjustment {
    pub id: String,
    pub kind: String,
    pub date: String,
    pub created_by: String,
    pub tenant_id: String,
    pub reason: String,
    pub gross: i64,
    pub partner: i64,
    pub vendor: i64,
    pub recouped: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

fn money(text: &str, what: &str) -> Result<i64, VerifyError> {
    ledger::Nanos::parse_dollars(text)
        .map(ledger::Nanos::get)
        .map_err(|_| VerifyError(format!("{what}: {text:?} is not an amount of dollars")))
}

fn int(text: &str, what: &str) -> Result<i64, VerifyError> {
    text.parse()
        .map_err(|_| VerifyError(format!("{what}: {text:?} is not a whole number")))
}

fn opt<T>(
    text: &str,
    f: impl FnOnce(&str) -> Result<T, VerifyError>,
) -> Result<Option<T>, VerifyError> {
    if text.is_empty() {
        Ok(None)
    } else {
        f(text).map(Some)
    }
}

/// Micro-units from `seconds()`'s format.
fn micros(text: &str, what: &str) -> Result<i64, VerifyError> {
    // Seconds with six decimals read as dollars are nano-units: a thousand per micro-unit.
    money(text, what).map(|n| n / 1000)
}

fn sums(f: &[String], at: usize, what: &str) -> Result<Sums, VerifyError> {
    if f.len() != at + 10 {
        return Err(VerifyError(format!(
            "{what}: expected {} fields, found {}",
            at + 10,
            f.len()
        )));
    }
    let f = &f[at..];
    Ok(Sums {
        requests: int(&f[0], what)?,
        input_tokens: int(&f[1], what)?,
        output_tokens: int(&f[2], what)?,
        device_us: micros(&f[3], what)?,
        gross: money(&f[4], what)?,
        cash: money(&f[5], what)?,
        credit_support: money(&f[6], what)?,
        partner_share: money(&f[7], what)?,
        vendor_share: money(&f[8], what)?,
        recouped: money(&f[9], what)?,
    })
}

const SUM_NAMES: [&str; 10] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "device_seconds",
    "gross",
    "cash",
    "credit_support",
    "partner_share",
    "vendor_share",
    "recouped",
];

fn expect(ok: bool, message: impl FnOnce() -> String) -> Result<(), VerifyError> {
    if ok {
        Ok(())
    } else {
        Err(VerifyError(message()))
    }
}

fn field<'a>(fields: &'a [String], i: usize, what: &str) -> Result<&'a str, VerifyError> {
    fields
        .get(i)
        .map(String::as_str)
        .ok_or_else(|| VerifyError(format!("{what}: missing field {}", i + 1)))
}

/// Reads a statement CSV into its parts, checking only that each row is well formed.
#[allow(
    clippy::too_many_lines,
    reason = "the format's records in file order, one after another; split up, the order would be spread over functions"
)]
pub fn parse(bytes: &[u8]) -> Result<Document, VerifyError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| VerifyError(format!("row {}: {e}", i + 1)))?;
        rows.push(record.iter().map(str::to_string).collect::<Vec<_>>());
    }
    expect(
        rows.first().is_some_and(|r| {
            r.first().map(String::as_str) == Some("tokenmill-statement")
                && r.get(1).map(String::as_str) == Some(FORMAT_VERSION)
        }),
        || "not a Tokenmill statement (format 1)".into(),
    )?;
    let mut d = Document::default();
    let mut seen = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let what = format!("row {}", i + 1);
        let what = what.as_str();
        let f = |k: usize| field(r, k, what);
        seen.push(r[0].clone());
        match r[0].as_str() {
            "tokenmill-statement" => {}
            "partner" => {
                d.partner_id = f(1)?.to_string();
                d.partner_name = f(2)?.to_string();
            }
            "period" => {
                d.period = Period::parse(f(1)?)
                    .map_err(|e| VerifyError(format!("{what}: {e}")))?
                    .to_string();
                d.period_from = f(2)?.to_string();
                d.period_to = f(3)?.to_string();
            }
            "status" => {
                d.status = f(1)?.to_string();
                d.number = opt(f(2)?, |n| int(n, what))?;
            }
            "previous_sha256" => d.previous_sha256 = opt(f(1)?, |h| Ok(h.to_string()))?,
            "rounding" => d.rounding = f(1)?.to_string(),
            "agreement" => d.agreements.push(DocAgreement {
                version: int(f(1)?, what)?,
                from: f(2)?.to_string(),
                to: f(3)?.to_string(),
                partner_share_bps: int(f(4)?, what)?,
                credit_reimbursement_bps: int(f(5)?, what)?,
                recoup_cost: opt(f(6)?, |x| money(x, what))?,
                recoup_vendor_share_bps: opt(f(7)?, |x| int(x, what))?,
            }),
            "line" => d.lines.push(DocLine {
                usage_period: f(1)?.to_string(),
                tenant_id: f(2)?.to_string(),
                tenant_name: f(3)?.to_string(),
                model: f(4)?.to_string(),
                sums: sums(r, 5, what)?,
            }),
            "support" => d.support.push(DocSupport {
                usage_period: f(1)?.to_string(),
                tenant_id: f(2)?.to_string(),
                model: f(3)?.to_string(),
                sponsor_id: f(4)?.to_string(),
                sponsor_name: f(5)?.to_string(),
                amount: money(f(6)?, what)?,
                partner_share: money(f(7)?, what)?,
            }),
            "total" => d.total = sums(r, 1, what)?,
            "adjustment" => d.adjustments.push(DocAdjustment {
                id: f(1)?.to_string(),
                kind: f(2)?.to_string(),
                date: f(3)?.to_string(),
                created_by: f(4)?.to_string(),
                tenant_id: f(5)?.to_string(),
                reason: f(6)?.to_string(),
                gross: money(f(7)?, what)?,
                partner: money(f(8)?, what)?,
                vendor: money(f(9)?, what)?,
                recouped: money(f(10)?, what)?,
            }),
            "adjustments_total" => {
                d.adjustments_total = [
                    money(f(1)?, what)?,
                    money(f(2)?, what)?,
                    money(f(3)?, what)?,
                    money(f(4)?, what)?,
                ]
            }
            "recoupment" => {
                for k in 0..5 {
                    d.recoupment[k] = money(f(k + 1)?, what)?;
                }
            }
            "summary" => {
                d.summary = [
                    money(f(1)?, what)?,
                    money(f(2)?, what)?,
                    money(f(3)?, what)?,
                ]
            }
            "payable" => d.payable = money(f(1)?, what)?,
            other => return Err(VerifyError(format!("{what}: unknown record {other:?}"))),
        }
    }
    for needed in [
        "partner",
        "period",
        "status",
        "total",
        "adjustments_total",
        "recoupment",
        "summary",
        "payable",
    ] {
        expect(seen.iter().filter(|s| *s == needed).count() == 1, || {
            format!("the statement needs exactly one {needed} row")
        })?;
    }
    Ok(d)
}

/// What verifying a statement CSV found: its hash and headline numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sha256: String,
    pub document: Document,
}

/// Re-adds every line, checks each total, split and balance, and hashes the file. With
/// `previous_sha256`, also checks the chain link. Sums are taken in 128 bits, so no file can
/// overflow them into agreement.
#[allow(
    clippy::too_many_lines,
    reason = "every check of the format in file order, each a few lines, sharing the sums read so far"
)]
pub fn verify(bytes: &[u8], previous_sha256: Option<&str>) -> Result<Verified, VerifyError> {
    let d = parse(bytes)?;
    let wide = |s: &Sums| s.array().map(i128::from);
    let mut line_sum = [0i128; 10];
    // Per line key: (credit support, partner share).
    let mut lines: BTreeMap<(&str, &str, &str), (i128, i128)> = BTreeMap::new();
    for l in &d.lines {
        let [_, _, _, _, gross, cash, credit, partner, vendor, recouped] = wide(&l.sums);
        let what = format!("line {} / {} / {}", l.usage_period, l.tenant_id, l.model);
        expect(partner + vendor == gross, || {
            format!("{what}: partner_share + vendor_share differs from gross")
        })?;
        expect(cash + credit == gross, || {
            format!("{what}: cash + credit_support differs from gross")
        })?;
        expect(recouped >= 0 && recouped <= vendor, || {
            format!("{what}: recouped is more than the vendor's share")
        })?;
        for (acc, x) in line_sum.iter_mut().zip(wide(&l.sums)) {
            *acc += x;
        }
        let key = (
            l.usage_period.as_str(),
            l.tenant_id.as_str(),
            l.model.as_str(),
        );
        expect(lines.insert(key, (credit, partner)).is_none(), || {
            format!("{what} appears twice")
        })?;
    }
    let total = wide(&d.total);
    for k in 0..10 {
        expect(line_sum[k] == total[k], || {
            format!(
                "the lines' {} add up to {}, the total row says {}",
                SUM_NAMES[k], line_sum[k], total[k]
            )
        })?;
    }
    let mut support: BTreeMap<(&str, &str, &str), (i128, i128)> = BTreeMap::new();
    for s in &d.support {
        let key = (
            s.usage_period.as_str(),
            s.tenant_id.as_str(),
            s.model.as_str(),
        );
        expect(lines.contains_key(&key), || {
            format!(
                "credit support of {} / {} / {} has no line",
                key.0, key.1, key.2
            )
        })?;
        let entry = support.entry(key).or_default();
        entry.0 += i128::from(s.amount);
        entry.1 += i128::from(s.partner_share);
    }
    for (key, (credit, partner)) in &lines {
        let (s, s_partner) = support.get(key).copied().unwrap_or((0, 0));
        expect(s == *credit, || {
            format!(
                "credit support of {} / {} / {}: sponsors add up to {s}, the line says {credit}",
                key.0, key.1, key.2
            )
        })?;
        expect(s_partner >= 0 && s_partner <= *partner, || {
            format!(
                "credit support of {} / {} / {}: the sponsors' partner share is more than the line's",
                key.0, key.1, key.2
            )
        })?;
    }
    let mut adj = [0i128; 4];
    for a in &d.adjustments {
        let (g, p, v) = (
            i128::from(a.gross),
            i128::from(a.partner),
            i128::from(a.vendor),
        );
        expect(p + v == g, || {
            format!(
                "adjustment {}: partner + vendor differs from its gross",
                a.id
            )
        })?;
        expect(a.recouped <= 0, || {
            format!(
                "adjustment {}: an adjustment can only give recoupment back",
                a.id
            )
        })?;
        adj[0] += g;
        adj[1] += p;
        adj[2] += v;
        adj[3] += i128::from(a.recouped);
    }
    expect(adj == d.adjustments_total.map(i128::from), || {
        "the adjustments do not add up to adjustments_total".into()
    })?;
    let [cost, before, during, after, remaining] = d.recoupment.map(i128::from);
    expect(during == total[9] + adj[3], || {
        "recouped in the period differs from the lines' recouped less the adjustments'".into()
    })?;
    expect(
        after >= 0 && before >= 0 && before + during == after,
        || "recouped before + in the period differs from recouped after".into(),
    )?;
    expect(total[9] == 0 || after <= cost, || {
        "more was recouped than the cost to recoup".into()
    })?;
    expect(remaining == (cost - after).max(0), || {
        "the remaining recoupment balance is not cost - recouped".into()
    })?;
    let [gross, partner, vendor] = d.summary.map(i128::from);
    expect(gross == total[4] + adj[0], || {
        "summary gross is not total gross + adjustments".into()
    })?;
    expect(partner == total[7] + adj[1], || {
        "summary partner total is not partner share + adjustments".into()
    })?;
    expect(vendor == total[8] + adj[2], || {
        "summary vendor total is not vendor share + adjustments".into()
    })?;
    expect(partner + vendor == gross, || {
        "partner + vendor totals differ from gross".into()
    })?;
    expect(i128::from(d.payable) == partner, || {
        "the payable amount is not the partner total".into()
    })?;
    if let Some(want) = previous_sha256 {
        expect(d.previous_sha256.as_deref() == Some(want), || {
            format!(
                "the chain is broken: this statement follows {}, not {want}",
                d.previous_sha256.as_deref().unwrap_or("nothing")
            )
        })?;
    }
    Ok(Verified {
        sha256: sha256_hex(bytes),
        document: d,
    })
}
