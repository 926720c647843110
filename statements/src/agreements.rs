//! Partner agreements: versions with effective dates. A version that a closed statement has
//! used is never changed; a new version ends the open-ended one before it.

use db::{new_id, sqlx::Row};

use crate::compute::{AgreementSpan, Recoupment, Terms};
use crate::period::date_label;
use crate::store::{Statements, lock_head};
use crate::{Period, StatementError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementVersion {
    pub id: String,
    pub partner_org_id: String,
    pub version: i64,
    /// UTC midnight, Unix ms; `to` is exclusive, `None` open-ended.
    pub from: i64,
    pub to: Option<i64>,
    pub terms: Terms,
    pub note: String,
    pub created_by: String,
    pub created_at: i64,
    pub ended_by: Option<String>,
    pub ended_at: Option<i64>,
}

impl AgreementVersion {
    pub(crate) fn span(&self) -> AgreementSpan {
        AgreementSpan {
            version: self.version,
            from: self.from,
            to: self.to,
            terms: self.terms,
        }
    }

    /// `2026-10-01 – open` or `2026-10-01 – 2026-12-01`.
    pub fn dates(&self) -> String {
        format!(
            "{} – {}",
            date_label(self.from),
            self.to.map_or("open".into(), date_label)
        )
    }
}

#[derive(Debug, Clone)]
pub struct NewAgreement {
    pub partner_org_id: String,
    pub from: i64,
    pub to: Option<i64>,
    pub terms: Terms,
    pub note: String,
}

const TEN_YEARS_MS: i64 = 3_653 * 86_400_000;

const COLUMNS: &str = "id, partner_org_id, version, effective_from, effective_to, \
     partner_share_bps, credit_reimbursement_bps, recoup_cost, recoup_vendor_share_bps, note, \
     created_by, created_at, ended_by, ended_at";

fn from_row(r: &db::sqlx::any::AnyRow) -> Result<AgreementVersion, db::sqlx::Error> {
    let cost: Option<i64> = r.try_get("recoup_cost")?;
    let vendor: Option<i64> = r.try_get("recoup_vendor_share_bps")?;
    Ok(AgreementVersion {
        id: r.try_get("id")?,
        partner_org_id: r.try_get("partner_org_id")?,
        version: r.try_get("version")?,
        from: r.try_get("effective_from")?,
        to: r.try_get("effective_to")?,
        terms: Terms {
            partner_share_bps: r.try_get::<i64, _>("partner_share_bps")? as u32,
            credit_reimbursement_bps: r.try_get::<i64, _>("credit_reimbursement_bps")? as u32,
            recoupment: match (cost, vendor) {
                (Some(cost), Some(v)) => Some(Recoupment {
                    cost,
                    vendor_share_bps: v as u32,
                }),
                _ => None,
            },
        },
        note: r.try_get("note")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        ended_by: r.try_get("ended_by")?,
        ended_at: r.try_get("ended_at")?,
    })
}

pub(crate) async fn load(
    conn: &mut db::sqlx::AnyConnection,
    partner_org_id: &str,
) -> Result<Vec<AgreementVersion>, StatementError> {
    let rows = db::sqlx::query(&format!(
        "SELECT {COLUMNS} FROM partner_agreements WHERE partner_org_id = $1 ORDER BY version"
    ))
    .bind(partner_org_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

fn check_terms(t: &Terms) -> Result<(), StatementError> {
    let bps = |v: u32, what: &str| {
        if v > 10_000 {
            Err(StatementError::Invalid(format!(
                "The {what} is in basis points, at most 10000 (100 %)."
            )))
        } else {
            Ok(())
        }
    };
    bps(t.partner_share_bps, "partner share")?;
    bps(
        t.credit_reimbursement_bps,
        "credit-support reimbursement rate",
    )?;
    if let Some(r) = t.recoupment {
        if r.cost <= 0 {
            return Err(StatementError::Invalid(
                "The infrastructure cost to recoup must be more than zero.".into(),
            ));
        }
        if r.vendor_share_bps == 0 || r.vendor_share_bps > 10_000 {
            return Err(StatementError::Invalid(
                "The vendor's share while recouping is in basis points, from 1 to 10000.".into(),
            ));
        }
    }
    Ok(())
}

impl Statements {
    /// The partner's agreement versions, oldest first.
    pub async fn agreements(
        &self,
        partner_org_id: &str,
    ) -> Result<Vec<AgreementVersion>, StatementError> {
        let mut conn = self.db().pool().acquire().await?;
        load(&mut conn, partner_org_id).await
    }

    /// Adds a version. It may not start inside a closed month nor overlap another version,
    /// except that it ends an open-ended version that started before it.
    pub async fn add_agreement(
        &self,
        actor: &str,
        new: &NewAgreement,
        now: i64,
    ) -> Result<AgreementVersion, StatementError> {
        check_terms(&new.terms)?;
        if new.to.is_some_and(|to| to <= new.from) {
            return Err(StatementError::Invalid(
                "An agreement must end after it starts.".into(),
            ));
        }
        // A slip of the year would open decades of empty months to close.
        if new.from < now - TEN_YEARS_MS {
            return Err(StatementError::Invalid(
                "An agreement cannot start more than ten years ago.".into(),
            ));
        }
        self.partner_name(&new.partner_org_id).await?;
        let mut tx = self.db().begin_write().await?;
        let head = lock_head(&mut tx, &new.partner_org_id).await?;
        if let Some(last) = head.last_period
            && new.from < last.end_ms()
        {
            return Err(StatementError::Conflict(format!(
                "Statements are closed up to {last}; a new agreement can start on {} at the earliest.",
                date_label(last.end_ms())
            )));
        }
        let existing = load(&mut tx, &new.partner_org_id).await?;
        let mut to_end = None;
        for e in &existing {
            let overlaps =
                new.to.is_none_or(|to| e.from < to) && e.to.is_none_or(|to| new.from < to);
            if !overlaps {
                continue;
            }
            if e.to.is_none() && e.from < new.from {
                to_end = Some(e.id.clone());
            } else {
                return Err(StatementError::Conflict(format!(
                    "These dates overlap agreement version {} ({}).",
                    e.version,
                    e.dates()
                )));
            }
        }
        if let Some(id) = &to_end {
            db::sqlx::query(
                "UPDATE partner_agreements SET effective_to = $1, ended_by = $2, ended_at = $3 \
                 WHERE id = $4",
            )
            .bind(new.from)
            .bind(actor)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let version = existing.iter().map(|e| e.version).max().unwrap_or(0) + 1;
        let id = new_id();
        let r = new.terms.recoupment;
        db::sqlx::query(
            "INSERT INTO partner_agreements (id, partner_org_id, version, effective_from, \
             effective_to, partner_share_bps, credit_reimbursement_bps, recoup_cost, \
             recoup_vendor_share_bps, note, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&new.partner_org_id)
        .bind(version)
        .bind(new.from)
        .bind(new.to)
        .bind(i64::from(new.terms.partner_share_bps))
        .bind(i64::from(new.terms.credit_reimbursement_bps))
        .bind(r.map(|r| r.cost))
        .bind(r.map(|r| i64::from(r.vendor_share_bps)))
        .bind(new.note.trim())
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            partner = new.partner_org_id,
            version,
            actor,
            "agreement version added"
        );
        let mut conn = self.db().pool().acquire().await?;
        load(&mut conn, &new.partner_org_id)
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or(StatementError::NotFound)
    }

    /// Months are closed from this one on (for the agreement editor's hint).
    pub async fn first_open_month(
        &self,
        partner_org_id: &str,
    ) -> Result<Option<Period>, StatementError> {
        let last: Option<String> = db::sqlx::query_scalar(
            "SELECT last_period FROM statement_heads WHERE partner_org_id = $1",
        )
        .bind(partner_org_id)
        .fetch_optional(self.db().pool())
        .await?
        .flatten();
        last.map(|p| Period::parse(&p).map(Period::next))
            .transpose()
    }
}
