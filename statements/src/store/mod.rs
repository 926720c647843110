//! Statements on storage, by subject: the months not yet closed and how they are computed
//! (`open`), drafts and closed statements as read (`drafts`), closing a month (`close`),
//! adjustments and refunds (`adjustments`), and the chain and usage exports (`export`).

mod adjustments;
mod close;
mod drafts;
mod export;
mod open;

use std::collections::BTreeMap;

use db::{Db, sqlx::AnyConnection};
use ledger::{AccountKind, AccountSpec};

use crate::agreements::AgreementVersion;
use crate::canonical;
use crate::compute::Computed;
use crate::{Period, StatementError};

pub use adjustments::{Adjustment, AdjustmentKind};
pub(crate) use open::lock_head;

/// Where the vendor's share of closed months goes.
const VENDOR_REVENUE: &str = "vendor:revenue";
/// Usage refunds paid out in a month not yet closed: closing that month settles them against
/// the partner's and the vendor's shares. Below zero while refunds await their statement.
const REFUNDS_PENDING: &str = "statements:refunds-pending";

#[derive(Clone, Debug)]
pub struct Statements {
    db: Db,
    credits: credits::Credits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementStatus {
    Draft,
    Closed {
        number: i64,
        sha256: String,
        previous_sha256: Option<String>,
        closed_by: String,
        closed_at: i64,
        transaction_id: Option<String>,
    },
}

/// One partner's statement for one month, as its canonical CSV and the numbers in it.
#[derive(Debug, Clone)]
pub struct Statement {
    pub partner_org_id: String,
    pub period: Period,
    pub status: StatementStatus,
    pub csv: String,
    pub document: canonical::Document,
}

impl Statement {
    pub fn is_closed(&self) -> bool {
        matches!(self.status, StatementStatus::Closed { .. })
    }
}

/// What one factory produced over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactoryActivity {
    pub factory_id: String,
    pub requests: i64,
    pub tokens: i64,
    pub device_us: i64,
}

/// A closed statement's place in its partner's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub period: Period,
    pub number: i64,
    pub sha256: String,
    pub previous_sha256: Option<String>,
    /// Whether `previous_sha256` is the hash of the statement before (and the first has none).
    pub linked: bool,
    /// Whether the stored CSV still hashes to `sha256` and verifies.
    pub intact: bool,
}

impl Statements {
    pub fn new(db: Db) -> Statements {
        let credits = credits::Credits::new(db.clone());
        Statements { db, credits }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// The partner organisation's name; `UnknownPartner` for anything but a partner.
    pub async fn partner_name(&self, partner_org_id: &str) -> Result<String, StatementError> {
        db::sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1 AND kind = 'partner'")
            .bind(partner_org_id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StatementError::UnknownPartner)
    }

    async fn names(
        &self,
        conn: &mut AnyConnection,
        c: &Computed,
    ) -> Result<BTreeMap<String, String>, StatementError> {
        let mut ids: Vec<&str> = c.lines.iter().map(|l| l.tenant_org_id.as_str()).collect();
        ids.extend(
            c.lines
                .iter()
                .flat_map(|l| l.support.keys().map(String::as_str)),
        );
        ids.sort_unstable();
        ids.dedup();
        let mut names = BTreeMap::new();
        for id in ids {
            if id == "vendor" {
                names.insert(id.to_string(), "Tokenmill (vendor)".to_string());
                continue;
            }
            let name: Option<String> =
                db::sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            names.insert(id.to_string(), name.unwrap_or_default());
        }
        Ok(names)
    }
}

/// One of the platform's own ledger accounts (no organisation's), opened if new.
async fn open_account(
    ledger: &ledger::Ledger,
    code: &str,
    kind: AccountKind,
) -> Result<String, StatementError> {
    Ok(ledger
        .open_account(&AccountSpec {
            code: code.to_string(),
            org_id: None,
            kind,
            expires_at: None,
        })
        .await?
        .id)
}

/// The agreement versions in force on any day of `period`.
fn in_period(agreements: &[AgreementVersion], period: Period) -> Vec<AgreementVersion> {
    agreements
        .iter()
        .filter(|a| a.from < period.end_ms() && a.to.is_none_or(|to| to > period.start_ms()))
        .cloned()
        .collect()
}
