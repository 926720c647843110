//! Statements on storage: drafts computed on demand, closing, adjustments, refunds, exports.

use std::collections::{BTreeMap, HashMap};

use db::{
    Db, new_id,
    sqlx::{AnyConnection, Row},
};
use ledger::{AccountKind, AccountSpec, Leg, Nanos, Posting};

use crate::agreements::{self, AgreementVersion};
use crate::canonical::{self, Header, sha256_hex};
use crate::compute::{self, AdjustmentIn, Computed, EventIn};
use crate::{Period, StatementError};

/// Where the vendor's share of closed months goes.
const VENDOR_REVENUE: &str = "vendor:revenue";
/// Usage refunds paid out in a month not yet closed: closing that month settles them against
/// the partner's and the vendor's shares. Below zero while refunds await their statement.
const REFUNDS_PENDING: &str = "statements:refunds-pending";
/// Drafts are computed month by month from the last closed one; a partner more than this many
/// months behind is asked to close earlier months first.
const MAX_OPEN_MONTHS: usize = 240;

fn factory_account_code(factory_id: &str) -> String {
    format!("factory:{factory_id}:usage")
}

fn payable_code(partner_org_id: &str) -> String {
    format!("partner:{partner_org_id}:payable")
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentKind {
    Refund,
    Credit,
    Correction,
}

impl AdjustmentKind {
    pub fn code(self) -> &'static str {
        match self {
            AdjustmentKind::Refund => "refund",
            AdjustmentKind::Credit => "credit",
            AdjustmentKind::Correction => "correction",
        }
    }

    pub fn parse(code: &str) -> Result<AdjustmentKind, StatementError> {
        match code {
            "refund" => Ok(AdjustmentKind::Refund),
            "credit" => Ok(AdjustmentKind::Credit),
            "correction" => Ok(AdjustmentKind::Correction),
            other => Err(StatementError::Invalid(format!(
                "{other:?} is not an adjustment kind (refund, credit, correction)."
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub id: String,
    pub partner_org_id: String,
    pub period: Period,
    pub kind: AdjustmentKind,
    pub tenant_org_id: Option<String>,
    pub usage_event_id: Option<String>,
    pub gross: Nanos,
    pub partner_amount: Nanos,
    pub vendor_amount: Nanos,
    /// Recoupment given back (a refund of cash the vendor had recouped): zero or negative.
    pub recouped: Nanos,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub statement_id: Option<String>,
}

pub(crate) struct Head {
    pub last_period: Option<Period>,
    pub last_number: i64,
    pub last_sha256: Option<String>,
    pub recouped_total: i64,
}

/// Reads the partner's chain head and locks it (created if new): closing, adjusting and adding
/// agreements for one partner happen one at a time.
pub(crate) async fn lock_head(
    conn: &mut AnyConnection,
    partner_org_id: &str,
) -> Result<Head, StatementError> {
    db::sqlx::query(
        "INSERT INTO statement_heads (partner_org_id) VALUES ($1) \
         ON CONFLICT (partner_org_id) DO NOTHING",
    )
    .bind(partner_org_id)
    .execute(&mut *conn)
    .await?;
    db::sqlx::query("UPDATE statement_heads SET writes = writes + 1 WHERE partner_org_id = $1")
        .bind(partner_org_id)
        .execute(&mut *conn)
        .await?;
    read_head(conn, partner_org_id).await
}

async fn read_head(conn: &mut AnyConnection, partner_org_id: &str) -> Result<Head, StatementError> {
    let row = db::sqlx::query(
        "SELECT last_period, last_number, last_sha256, recouped_total FROM statement_heads \
         WHERE partner_org_id = $1",
    )
    .bind(partner_org_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        return Ok(Head {
            last_period: None,
            last_number: 0,
            last_sha256: None,
            recouped_total: 0,
        });
    };
    let last: Option<String> = r.try_get("last_period")?;
    Ok(Head {
        last_period: last.map(|p| Period::parse(&p)).transpose()?,
        last_number: r.try_get("last_number")?,
        last_sha256: r.try_get("last_sha256")?,
        recouped_total: r.try_get("recouped_total")?,
    })
}

/// The events and adjustments of a partner not yet in a closed statement.
struct Open {
    events: Vec<EventIn>,
    adjustments: Vec<(Period, AdjustmentIn)>,
}

/// Which usage events to load: those not yet in a closed statement (before a time), or those
/// one closed statement took.
enum EventSet<'a> {
    OpenBefore(i64),
    Statement(&'a str),
}

async fn fetch_set(
    conn: &mut AnyConnection,
    sql: &str,
    partner_org_id: &str,
    set: &EventSet<'_>,
) -> Result<Vec<db::sqlx::any::AnyRow>, db::sqlx::Error> {
    let q = db::sqlx::query(sql).bind(partner_org_id);
    let q = match set {
        EventSet::OpenBefore(before) => q.bind(*before),
        EventSet::Statement(id) => q.bind(*id),
    };
    q.fetch_all(&mut *conn).await
}

async fn load_events(
    conn: &mut AnyConnection,
    partner_org_id: &str,
    set: EventSet<'_>,
) -> Result<Vec<EventIn>, StatementError> {
    let filter = match set {
        EventSet::OpenBefore(_) => {
            "LEFT JOIN statement_events s ON s.usage_event_id = e.id \
             WHERE e.partner_org_id = $1 AND e.created_at < $2 AND s.usage_event_id IS NULL"
        }
        EventSet::Statement(_) => {
            "JOIN statement_events s ON s.usage_event_id = e.id \
             WHERE e.partner_org_id = $1 AND s.statement_id = $2"
        }
    };
    let sql = format!(
        "SELECT e.id, e.created_at, e.org_id, e.model, e.factory_id, e.prompt_tokens, \
         e.completion_tokens, e.device_us, e.amount FROM usage_events e {filter}"
    );
    let rows = fetch_set(conn, &sql, partner_org_id, &set).await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut index = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        index.insert(id.clone(), events.len());
        events.push(EventIn {
            id,
            created_at: r.try_get("created_at")?,
            tenant_org_id: r.try_get("org_id")?,
            model: r.try_get("model")?,
            factory_id: r.try_get("factory_id")?,
            prompt_tokens: r.try_get("prompt_tokens")?,
            completion_tokens: r.try_get("completion_tokens")?,
            device_us: r.try_get("device_us")?,
            amount: r.try_get("amount")?,
            grants: Vec::new(),
        });
    }
    let sql = format!(
        "SELECT g.usage_event_id, g.amount, p.sponsor_org_id FROM usage_event_grants g \
         JOIN usage_events e ON e.id = g.usage_event_id \
         JOIN credit_programs p ON p.id = g.program_id {filter} \
         ORDER BY g.usage_event_id, g.grant_id"
    );
    let grants = fetch_set(conn, &sql, partner_org_id, &set).await?;
    for g in &grants {
        let event: String = g.try_get("usage_event_id")?;
        let sponsor: Option<String> = g.try_get("sponsor_org_id")?;
        if let Some(&i) = index.get(&event) {
            events[i].grants.push((
                sponsor.unwrap_or_else(|| "vendor".into()),
                g.try_get("amount")?,
            ));
        }
    }
    Ok(events)
}

async fn load_open(
    conn: &mut AnyConnection,
    partner_org_id: &str,
    before: i64,
) -> Result<Open, StatementError> {
    let events = load_events(conn, partner_org_id, EventSet::OpenBefore(before)).await?;
    let rows = db::sqlx::query(
        "SELECT id, period, kind, tenant_org_id, factory_id, gross, partner_amount, \
         vendor_amount, recouped, reason, created_by, created_at FROM statement_adjustments \
         WHERE partner_org_id = $1 AND statement_id IS NULL",
    )
    .bind(partner_org_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut adjustments = Vec::with_capacity(rows.len());
    for r in &rows {
        let period = Period::parse(&r.try_get::<String, _>("period")?)?;
        adjustments.push((
            period,
            AdjustmentIn {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                tenant_org_id: r.try_get("tenant_org_id")?,
                factory_id: r.try_get("factory_id")?,
                gross: r.try_get("gross")?,
                partner_amount: r.try_get("partner_amount")?,
                vendor_amount: r.try_get("vendor_amount")?,
                recouped: r.try_get("recouped")?,
                reason: r.try_get("reason")?,
                created_by: r.try_get("created_by")?,
                created_at: r.try_get("created_at")?,
            },
        ));
    }
    Ok(Open {
        events,
        adjustments,
    })
}

impl Open {
    /// The earliest month with something not yet in a closed statement.
    fn earliest(&self) -> Option<Period> {
        let e = self.events.iter().map(|e| Period::of_ms(e.created_at));
        let a = self.adjustments.iter().map(|(p, _)| *p);
        e.chain(a).min()
    }
}

/// The first month not yet closed: the one after the last closed; for a partner without
/// statements, the earliest month with usage, an adjustment or an agreement in force (the
/// current month when there is none). Statements start there and close in order.
fn first_open(head: &Head, open: &Open, agreements: &[AgreementVersion], now: i64) -> Period {
    match head.last_period {
        Some(last) => last.next(),
        None => open
            .earliest()
            .into_iter()
            .chain(agreements.iter().map(|a| Period::of_ms(a.from)))
            .min()
            .unwrap_or_else(|| Period::of_ms(now)),
    }
}

/// Computes the open months from `first` to `until` in order, carrying the recoupment, and
/// returns the last. The first month also takes anything older (late usage).
fn compute_open(
    first: Period,
    until: Period,
    open: &Open,
    agreements: &[AgreementVersion],
    recouped_before: i64,
) -> Result<Computed, StatementError> {
    let spans: Vec<_> = agreements.iter().map(AgreementVersion::span).collect();
    let mut month = first;
    let mut recouped = recouped_before;
    for _ in 0..MAX_OPEN_MONTHS {
        let from = if month == first {
            i64::MIN
        } else {
            month.start_ms()
        };
        let events: Vec<EventIn> = open
            .events
            .iter()
            .filter(|e| e.created_at >= from && e.created_at < month.end_ms())
            .cloned()
            .collect();
        let adjustments: Vec<AdjustmentIn> = open
            .adjustments
            .iter()
            .filter(|(p, _)| *p == month || (month == first && *p < first))
            .map(|(_, a)| a.clone())
            .collect();
        let c = compute::compute(month, &events, &spans, &adjustments, recouped);
        if month >= until {
            return Ok(c);
        }
        recouped = c.recouped_after;
        month = month.next();
    }
    Err(StatementError::Conflict(format!(
        "More than {MAX_OPEN_MONTHS} months are open; close {first} and the months after it first."
    )))
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

    /// The statement of `period`: the stored document once closed, otherwise a draft computed
    /// now. Future months and months before the partner's first statement are `NotFound`.
    pub async fn statement(
        &self,
        partner_org_id: &str,
        period: Period,
        now: i64,
    ) -> Result<Statement, StatementError> {
        let partner_name = self.partner_name(partner_org_id).await?;
        if let Some(s) = self.closed(partner_org_id, period).await? {
            return Ok(s);
        }
        if period > Period::of_ms(now) {
            return Err(StatementError::NotFound);
        }
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        if head.last_period.is_some_and(|last| period <= last) {
            return Err(StatementError::NotFound);
        }
        let open = load_open(&mut conn, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let first = first_open(&head, &open, &agreements, now);
        if period < first {
            return Err(StatementError::NotFound);
        }
        let c = compute_open(first, period, &open, &agreements, head.recouped_total)?;
        let names = self.names(&mut conn, &c).await?;
        let in_force = in_period(&agreements, period);
        let csv = canonical::write(
            &Header {
                partner_id: partner_org_id,
                partner_name: &partner_name,
                number: None,
                previous_sha256: head.last_sha256.as_deref(),
                agreements: &in_force,
                names: &names,
            },
            &c,
        );
        let document = canonical::parse(csv.as_bytes())
            .map_err(|e| StatementError::Invalid(format!("draft statement: {e}")))?;
        Ok(Statement {
            partner_org_id: partner_org_id.to_string(),
            period,
            status: StatementStatus::Draft,
            csv,
            document,
        })
    }

    async fn closed(
        &self,
        partner_org_id: &str,
        period: Period,
    ) -> Result<Option<Statement>, StatementError> {
        let row = db::sqlx::query(
            "SELECT number, csv, sha256, previous_sha256, closed_by, closed_at, transaction_id \
             FROM statements WHERE partner_org_id = $1 AND period = $2",
        )
        .bind(partner_org_id)
        .bind(period.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let csv: String = r.try_get("csv")?;
        let document = canonical::parse(csv.as_bytes())
            .map_err(|e| StatementError::Invalid(format!("stored statement: {e}")))?;
        Ok(Some(Statement {
            partner_org_id: partner_org_id.to_string(),
            period,
            status: StatementStatus::Closed {
                number: r.try_get("number")?,
                sha256: r.try_get("sha256")?,
                previous_sha256: r.try_get("previous_sha256")?,
                closed_by: r.try_get("closed_by")?,
                closed_at: r.try_get("closed_at")?,
                transaction_id: r.try_get("transaction_id")?,
            },
            csv,
            document,
        }))
    }

    /// The partner's statements, newest first: every closed one and the drafts of the open
    /// months up to the current one.
    pub async fn list(
        &self,
        partner_org_id: &str,
        now: i64,
    ) -> Result<Vec<Statement>, StatementError> {
        self.partner_name(partner_org_id).await?;
        let periods: Vec<String> = db::sqlx::query_scalar(
            "SELECT period FROM statements WHERE partner_org_id = $1 ORDER BY period",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::new();
        for p in periods {
            if let Some(s) = self.closed(partner_org_id, Period::parse(&p)?).await? {
                out.push(s);
            }
        }
        let current = Period::of_ms(now);
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        let open = load_open(&mut conn, partner_org_id, current.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let first = first_open(&head, &open, &agreements, now).min(current);
        drop(conn);
        let mut month = first;
        while month <= current && out.len() < 240 {
            out.push(self.statement(partner_org_id, month, now).await?);
            month = month.next();
        }
        out.reverse();
        Ok(out)
    }

    /// What each of the partner's factories produced since `since` (Unix ms): requests,
    /// tokens and device time, for the partner's dashboard. Factories with no usage are left out.
    pub async fn factory_activity(
        &self,
        partner_org_id: &str,
        since: i64,
    ) -> Result<Vec<FactoryActivity>, StatementError> {
        let rows = db::sqlx::query(
            "SELECT factory_id, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS tokens, \
             CAST(COALESCE(SUM(device_us), 0) AS BIGINT) AS device_us \
             FROM usage_events WHERE partner_org_id = $1 AND created_at > $2 \
             GROUP BY factory_id",
        )
        .bind(partner_org_id)
        .bind(since)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FactoryActivity {
                    factory_id: r.try_get("factory_id")?,
                    requests: r.try_get("requests")?,
                    tokens: r.try_get("tokens")?,
                    device_us: r.try_get("device_us")?,
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Every partner organisation, by name: (id, name).
    pub async fn partners(&self) -> Result<Vec<(String, String)>, StatementError> {
        let rows = db::sqlx::query(
            "SELECT id, name FROM organizations WHERE kind = 'partner' ORDER BY name, id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// The month an operator may close next for this partner, if one is over.
    pub async fn next_closable(
        &self,
        partner_org_id: &str,
        now: i64,
    ) -> Result<Option<Period>, StatementError> {
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        let current = Period::of_ms(now);
        let open = load_open(&mut conn, partner_org_id, current.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let next = first_open(&head, &open, &agreements, now);
        Ok((next < current).then_some(next))
    }

    /// Closes a past month: computes it, stores the canonical CSV with its hash chained to the
    /// previous statement, marks its events and adjustments as taken and posts the split to the
    /// ledger: all in one transaction, so a failure leaves the month open and nothing posted.
    pub async fn close(
        &self,
        partner_org_id: &str,
        period: Period,
        actor: &str,
        now: i64,
    ) -> Result<Statement, StatementError> {
        let partner_name = self.partner_name(partner_org_id).await?;
        if period.end_ms() > now {
            return Err(StatementError::Conflict(format!(
                "{period} is not over yet: a month can be closed from the first day of the next."
            )));
        }
        let ledger = self.credits.ledger();
        let payable = ledger
            .open_account(&AccountSpec {
                code: payable_code(partner_org_id),
                org_id: Some(partner_org_id.to_string()),
                kind: AccountKind::SharePayable,
                expires_at: None,
            })
            .await?
            .id;
        let vendor = open(ledger, VENDOR_REVENUE, AccountKind::SharePayable).await?;
        let pending = open(ledger, REFUNDS_PENDING, AccountKind::External).await?;

        let mut tx = self.db.begin_write().await?;
        let head = lock_head(&mut tx, partner_org_id).await?;
        let number: Option<i64> = db::sqlx::query_scalar(
            "SELECT number FROM statements WHERE partner_org_id = $1 AND period = $2",
        )
        .bind(partner_org_id)
        .bind(period.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(n) = number {
            return Err(StatementError::Conflict(format!(
                "{period} is already closed (statement {n})."
            )));
        }
        let open_rows = load_open(&mut tx, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut tx, partner_org_id).await?;
        let first = first_open(&head, &open_rows, &agreements, now);
        if period < first {
            return Err(StatementError::Conflict(match head.last_period {
                Some(_) => format!(
                    "{period} is before this partner's first statement and cannot be closed."
                ),
                None => format!(
                    "Nothing to close before {first}: this partner had no agreement, usage or adjustment earlier."
                ),
            }));
        }
        if period > first {
            return Err(StatementError::Conflict(format!(
                "Close {first} first: statements are closed month by month, in order."
            )));
        }
        let c = compute_open(period, period, &open_rows, &agreements, head.recouped_total)?;
        let names = self.names(&mut tx, &c).await?;
        let number = head.last_number + 1;
        let in_force = in_period(&agreements, period);
        let csv = canonical::write(
            &Header {
                partner_id: partner_org_id,
                partner_name: &partner_name,
                number: Some(number),
                previous_sha256: head.last_sha256.as_deref(),
                agreements: &in_force,
                names: &names,
            },
            &c,
        );
        let sha256 = sha256_hex(csv.as_bytes());

        // The split: each factory's usage account gives up the month's gross, pending refunds
        // are settled, and the partner and the vendor receive their totals.
        let mut legs = Vec::new();
        for (factory, gross) in &c.factory_gross {
            if *gross == 0 {
                continue;
            }
            let account = ledger
                .account_by_code(&factory_account_code(factory))
                .await?
                .ok_or_else(|| {
                    ledger::LedgerError::UnknownAccount(factory_account_code(factory))
                })?;
            legs.push(Leg {
                account_id: account.id,
                amount: -gross,
            });
        }
        let refunds: i64 = -c
            .adjustments
            .iter()
            .filter(|a| a.kind == "refund")
            .map(|a| a.gross)
            .sum::<i64>();
        for (account, amount) in [
            (pending, refunds),
            (payable, c.payable()),
            (vendor, c.vendor_total()),
        ] {
            if amount != 0 {
                legs.push(Leg {
                    account_id: account,
                    amount,
                });
            }
        }
        let id = new_id();
        db::sqlx::query(
            "INSERT INTO statements (id, partner_org_id, period, number, csv, sha256, \
             previous_sha256, gross, cash, credit_support, partner_total, vendor_total, \
             recouped_before, recouped_after, transaction_id, closed_by, closed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&id)
        .bind(partner_org_id)
        .bind(period.to_string())
        .bind(number)
        .bind(&csv)
        .bind(&sha256)
        .bind(head.last_sha256.as_deref())
        .bind(c.gross())
        .bind(c.totals.cash)
        .bind(c.totals.credit_support)
        .bind(c.payable())
        .bind(c.vendor_total())
        .bind(c.recouped_before)
        .bind(c.recouped_after)
        .bind(None::<String>)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let taken: Vec<&str> = open_rows
            .events
            .iter()
            .filter(|e| e.created_at < period.end_ms())
            .map(|e| e.id.as_str())
            .collect();
        for chunk in taken.chunks(400) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, $1)", i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO statement_events (usage_event_id, statement_id) VALUES {}",
                values.join(", ")
            );
            let mut q = db::sqlx::query(&sql).bind(&id);
            for e in chunk {
                q = q.bind(*e);
            }
            q.execute(&mut *tx).await?;
        }
        for a in &c.adjustments {
            db::sqlx::query("UPDATE statement_adjustments SET statement_id = $1 WHERE id = $2")
                .bind(&id)
                .bind(&a.id)
                .execute(&mut *tx)
                .await?;
        }
        db::sqlx::query(
            "UPDATE statement_heads SET last_period = $1, last_number = $2, last_sha256 = $3, \
             recouped_total = $4 WHERE partner_org_id = $5",
        )
        .bind(period.to_string())
        .bind(number)
        .bind(&sha256)
        .bind(c.recouped_after)
        .bind(partner_org_id)
        .execute(&mut *tx)
        .await?;
        // The ledger last: if the posting fails, everything above rolls back with it.
        let transaction_id = if legs.is_empty() {
            None
        } else {
            let posting = Posting::new(
                format!("statement:{partner_org_id}:{period}"),
                "statement_close",
                format!("{partner_name} statement {number} for {period}"),
                Some(partner_org_id.to_string()),
                legs,
            )?;
            Some(
                ledger
                    .post_in(&mut tx, &posting)
                    .await?
                    .transaction_id()
                    .to_string(),
            )
        };
        if let Some(t) = &transaction_id {
            db::sqlx::query("UPDATE statements SET transaction_id = $1 WHERE id = $2")
                .bind(t)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        tracing::info!(
            partner = partner_org_id,
            %period,
            number,
            payable = %Nanos::new(c.payable()),
            "statement closed"
        );
        self.closed(partner_org_id, period)
            .await?
            .ok_or(StatementError::NotFound)
    }

    /// A credit or correction for the partner in an open month (not after the current one):
    /// `amount` is what the partner gains (negative: loses); the vendor's part is the opposite.
    #[allow(clippy::too_many_arguments)]
    pub async fn adjust(
        &self,
        partner_org_id: &str,
        period: Period,
        kind: AdjustmentKind,
        amount: Nanos,
        tenant_org_id: Option<&str>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Adjustment, StatementError> {
        self.partner_name(partner_org_id).await?;
        if kind == AdjustmentKind::Refund {
            return Err(StatementError::Invalid(
                "Refunds are made against a usage event.".into(),
            ));
        }
        if amount.get() == 0 {
            return Err(StatementError::Invalid(
                "An adjustment needs an amount other than zero.".into(),
            ));
        }
        let reason = check_reason(reason)?;
        if period > Period::of_ms(now) {
            return Err(StatementError::Invalid(format!(
                "{period} has not started; adjustments go into the current month or an earlier open one."
            )));
        }
        let mut tx = self.db.begin_write().await?;
        let head = lock_head(&mut tx, partner_org_id).await?;
        let open_rows = load_open(&mut tx, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut tx, partner_org_id).await?;
        let first = first_open(&head, &open_rows, &agreements, now);
        if period < first {
            return Err(StatementError::Conflict(match head.last_period {
                Some(last) if period <= last => format!(
                    "{period} is closed; adjustments go into an open month ({first} or later)."
                ),
                _ => format!(
                    "{period} is before this partner's first statement month ({first}); choose {first} or later."
                ),
            }));
        }
        let a = Adjustment {
            id: new_id(),
            partner_org_id: partner_org_id.to_string(),
            period,
            kind,
            tenant_org_id: tenant_org_id.map(str::to_string),
            usage_event_id: None,
            gross: Nanos::ZERO,
            partner_amount: amount,
            vendor_amount: Nanos::new(-amount.get()),
            recouped: Nanos::ZERO,
            reason,
            created_by: actor.to_string(),
            created_at: now,
            statement_id: None,
        };
        insert_adjustment(&mut tx, &a, None, None).await?;
        tx.commit().await?;
        Ok(a)
    }

    /// Refunds `amount` of a usage event to the tenant's paid credit now. The partner gives
    /// back its normal share of it (agreement in force when the usage happened), in the
    /// current month's statement.
    pub async fn refund_usage(
        &self,
        usage_event_id: &str,
        amount: Nanos,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Adjustment, StatementError> {
        let reason = check_reason(reason)?;
        if amount.get() <= 0 {
            return Err(StatementError::Invalid(
                "A refund needs an amount above zero.".into(),
            ));
        }
        let row = db::sqlx::query(
            "SELECT partner_org_id, org_id, factory_id, paid_amount, created_at FROM usage_events \
             WHERE id = $1",
        )
        .bind(usage_event_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(StatementError::UnknownUsage)?;
        let partner: String = row.try_get("partner_org_id")?;
        let tenant: String = row.try_get("org_id")?;
        let factory: String = row.try_get("factory_id")?;
        let paid: i64 = row.try_get("paid_amount")?;
        let used_at: i64 = row.try_get("created_at")?;
        let wallet = self.credits.paid_account(&tenant).await?;
        let pending = open(
            self.credits.ledger(),
            REFUNDS_PENDING,
            AccountKind::External,
        )
        .await?;

        let mut tx = self.db.begin_write().await?;
        let head = lock_head(&mut tx, &partner).await?;
        // The current month, unless a close of it committed while this waited for the lock.
        let period = match head.last_period {
            Some(last) if Period::of_ms(now) <= last => last.next(),
            _ => Period::of_ms(now),
        };
        let refunded: Option<i64> = db::sqlx::query_scalar(
            "SELECT CAST(SUM(-gross) AS BIGINT) FROM statement_adjustments \
             WHERE usage_event_id = $1 AND kind = 'refund'",
        )
        .bind(usage_event_id)
        .fetch_one(&mut *tx)
        .await?;
        let left = paid - refunded.unwrap_or(0);
        if amount.get() > left {
            return Err(StatementError::Invalid(format!(
                "At most {} of this usage is left to refund: {} was paid in cash (credit-supported \
                 usage is not refunded in money).",
                Nanos::new(left),
                Nanos::new(paid)
            )));
        }
        let split = self
            .cash_split(&mut tx, &head, &partner, usage_event_id, used_at, now)
            .await?;
        let (partner_part, vendor_part, recouped_part) =
            compute::refund_split(amount.get(), &split);
        let id = new_id();
        let posting = Posting::transfer(
            format!("refund:{id}"),
            "usage_refund",
            format!("Refund of usage {usage_event_id}: {reason}"),
            Some(tenant.clone()),
            &pending,
            &wallet,
            amount,
        )?;
        let transaction_id = self
            .credits
            .ledger()
            .post_in(&mut tx, &posting)
            .await?
            .transaction_id()
            .to_string();
        let a = Adjustment {
            id,
            partner_org_id: partner.clone(),
            period,
            kind: AdjustmentKind::Refund,
            tenant_org_id: Some(tenant),
            usage_event_id: Some(usage_event_id.to_string()),
            gross: Nanos::new(-amount.get()),
            partner_amount: Nanos::new(partner_part),
            vendor_amount: Nanos::new(vendor_part),
            recouped: Nanos::new(recouped_part),
            reason,
            created_by: actor.to_string(),
            created_at: now,
            statement_id: None,
        };
        insert_adjustment(&mut tx, &a, Some(&factory), Some(&transaction_id)).await?;
        tx.commit().await?;
        Ok(a)
    }

    /// How an event's cash was split: recomputed from its closed statement's own inputs, or
    /// from the open month that holds it.
    async fn cash_split(
        &self,
        conn: &mut AnyConnection,
        head: &Head,
        partner_org_id: &str,
        event_id: &str,
        used_at: i64,
        now: i64,
    ) -> Result<compute::CashSplit, StatementError> {
        let agreements = agreements::load(conn, partner_org_id).await?;
        let closed = db::sqlx::query(
            "SELECT st.id, st.period, st.recouped_before FROM statement_events se \
             JOIN statements st ON st.id = se.statement_id WHERE se.usage_event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?;
        let c = match closed {
            Some(r) => {
                let statement_id: String = r.try_get("id")?;
                let period = Period::parse(&r.try_get::<String, _>("period")?)?;
                let events =
                    load_events(conn, partner_org_id, EventSet::Statement(&statement_id)).await?;
                let spans: Vec<_> = agreements.iter().map(AgreementVersion::span).collect();
                compute::compute(period, &events, &spans, &[], r.try_get("recouped_before")?)
            }
            None => {
                let month = Period::of_ms(used_at);
                let open = load_open(conn, partner_org_id, month.end_ms().max(now)).await?;
                let first = first_open(head, &open, &agreements, now);
                compute_open(
                    first,
                    month.max(first),
                    &open,
                    &agreements,
                    head.recouped_total,
                )?
            }
        };
        c.cash_splits
            .into_iter()
            .find(|s| s.event_id == event_id)
            .ok_or(StatementError::UnknownUsage)
    }

    /// The partner's closed statements in order, each checked against its stored CSV and its
    /// predecessor's hash.
    pub async fn chain(&self, partner_org_id: &str) -> Result<Vec<ChainLink>, StatementError> {
        self.partner_name(partner_org_id).await?;
        let rows = db::sqlx::query(
            "SELECT period, number, csv, sha256, previous_sha256 FROM statements \
             WHERE partner_org_id = $1 ORDER BY number",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut out: Vec<ChainLink> = Vec::with_capacity(rows.len());
        for r in &rows {
            let csv: String = r.try_get("csv")?;
            let sha256: String = r.try_get("sha256")?;
            let previous: Option<String> = r.try_get("previous_sha256")?;
            let expected = out.last().map(|l| l.sha256.clone());
            let intact = sha256_hex(csv.as_bytes()) == sha256
                && canonical::verify(csv.as_bytes(), previous.as_deref()).is_ok();
            out.push(ChainLink {
                period: Period::parse(&r.try_get::<String, _>("period")?)?,
                number: r.try_get("number")?,
                linked: previous == expected,
                sha256,
                previous_sha256: previous,
                intact,
            });
        }
        Ok(out)
    }

    /// The usage events of a statement as CSV, one per line, with everything needed to
    /// recompute its lines: closed months list the events they took, drafts the events they
    /// would take now.
    pub async fn usage_csv(
        &self,
        partner_org_id: &str,
        period: Period,
        now: i64,
    ) -> Result<String, StatementError> {
        let statement = self.statement(partner_org_id, period, now).await?;
        let (filter, bind_period) = match &statement.status {
            StatementStatus::Closed { .. } => (
                "JOIN statement_events s ON s.usage_event_id = e.id \
                 JOIN statements st ON st.id = s.statement_id \
                 WHERE e.partner_org_id = $1 AND st.period = $2",
                true,
            ),
            StatementStatus::Draft => (
                "LEFT JOIN statement_events s ON s.usage_event_id = e.id \
                 WHERE e.partner_org_id = $1 AND s.usage_event_id IS NULL AND e.created_at < $2 \
                 AND e.created_at >= $3",
                false,
            ),
        };
        // A draft takes what is not yet in a closed statement up to its end; only the first
        // open month also takes older (late) usage.
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        let open_rows = load_open(&mut conn, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let is_first = first_open(&head, &open_rows, &agreements, now) >= period;
        let from = if is_first {
            i64::MIN
        } else {
            period.start_ms()
        };
        let sql = format!(
            "SELECT e.id, e.created_at, e.org_id, e.model, e.factory_id, e.prompt_tokens, \
             e.completion_tokens, e.input_nanos_per_mtok, e.output_nanos_per_mtok, e.amount, \
             e.paid_amount, e.device_us, e.partial FROM usage_events e {filter} \
             ORDER BY e.created_at, e.id"
        );
        let q = db::sqlx::query(&sql).bind(partner_org_id);
        let q = if bind_period {
            q.bind(period.to_string())
        } else {
            q.bind(period.end_ms()).bind(from)
        };
        let rows = q.fetch_all(self.db.pool()).await?;
        let mut grants: HashMap<String, Vec<String>> = HashMap::new();
        let grant_rows = db::sqlx::query(
            "SELECT g.usage_event_id, g.amount, p.sponsor_org_id FROM usage_event_grants g \
             JOIN usage_events e ON e.id = g.usage_event_id \
             JOIN credit_programs p ON p.id = g.program_id \
             WHERE e.partner_org_id = $1 ORDER BY g.usage_event_id, g.grant_id",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        for g in &grant_rows {
            let sponsor: Option<String> = g.try_get("sponsor_org_id")?;
            grants
                .entry(g.try_get("usage_event_id")?)
                .or_default()
                .push(format!(
                    "{}={}",
                    sponsor.unwrap_or_else(|| "vendor".into()),
                    canonical::usd(g.try_get("amount")?)
                ));
        }
        let mut w = text::Csv::with({
            let mut b = csv::WriterBuilder::new();
            b.terminator(csv::Terminator::Any(b'\n'));
            b
        });
        let write_err = |e: csv::Error| StatementError::Invalid(e.to_string());
        w.row([
            "usage_event_id",
            "created_at_ms",
            "usage_period",
            "tenant_id",
            "model",
            "factory_id",
            "input_tokens",
            "output_tokens",
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "gross_usd",
            "cash_usd",
            "credit_support",
            "device_seconds",
            "partial",
        ])
        .map_err(write_err)?;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let created_at: i64 = r.try_get("created_at")?;
            let support = grants.get(&id).map(|g| g.join(";")).unwrap_or_default();
            w.row([
                id,
                created_at.to_string(),
                Period::of_ms(created_at).to_string(),
                r.try_get("org_id")?,
                r.try_get("model")?,
                r.try_get("factory_id")?,
                r.try_get::<i64, _>("prompt_tokens")?.to_string(),
                r.try_get::<i64, _>("completion_tokens")?.to_string(),
                canonical::usd(r.try_get("input_nanos_per_mtok")?),
                canonical::usd(r.try_get("output_nanos_per_mtok")?),
                canonical::usd(r.try_get("amount")?),
                canonical::usd(r.try_get("paid_amount")?),
                support,
                canonical::seconds(r.try_get("device_us")?),
                r.try_get::<i64, _>("partial")?.to_string(),
            ])
            .map_err(write_err)?;
        }
        w.finish().map_err(write_err)
    }

    /// The partner's adjustments, newest first.
    pub async fn adjustments(
        &self,
        partner_org_id: &str,
    ) -> Result<Vec<Adjustment>, StatementError> {
        let rows = db::sqlx::query(
            "SELECT id, partner_org_id, period, kind, tenant_org_id, usage_event_id, gross, \
             partner_amount, vendor_amount, recouped, reason, created_by, created_at, \
             statement_id \
             FROM statement_adjustments WHERE partner_org_id = $1 ORDER BY created_at DESC, id",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Adjustment {
                    id: r.try_get("id")?,
                    partner_org_id: r.try_get("partner_org_id")?,
                    period: Period::parse(&r.try_get::<String, _>("period")?)?,
                    kind: AdjustmentKind::parse(&r.try_get::<String, _>("kind")?)?,
                    tenant_org_id: r.try_get("tenant_org_id")?,
                    usage_event_id: r.try_get("usage_event_id")?,
                    gross: Nanos::new(r.try_get("gross")?),
                    partner_amount: Nanos::new(r.try_get("partner_amount")?),
                    vendor_amount: Nanos::new(r.try_get("vendor_amount")?),
                    recouped: Nanos::new(r.try_get("recouped")?),
                    reason: r.try_get("reason")?,
                    created_by: r.try_get("created_by")?,
                    created_at: r.try_get("created_at")?,
                    statement_id: r.try_get("statement_id")?,
                })
            })
            .collect()
    }
}

async fn open(
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

fn check_reason(reason: &str) -> Result<String, StatementError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(StatementError::Invalid(
            "Give a reason: it is printed on the statement.".into(),
        ));
    }
    if reason.chars().count() > 500 {
        return Err(StatementError::Invalid(
            "Keep the reason under 500 characters.".into(),
        ));
    }
    Ok(reason.to_string())
}

async fn insert_adjustment(
    conn: &mut AnyConnection,
    a: &Adjustment,
    factory_id: Option<&str>,
    transaction_id: Option<&str>,
) -> Result<(), StatementError> {
    db::sqlx::query(
        "INSERT INTO statement_adjustments (id, partner_org_id, period, kind, tenant_org_id, \
         usage_event_id, factory_id, gross, partner_amount, vendor_amount, recouped, reason, \
         created_by, created_at, transaction_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&a.id)
    .bind(&a.partner_org_id)
    .bind(a.period.to_string())
    .bind(a.kind.code())
    .bind(&a.tenant_org_id)
    .bind(&a.usage_event_id)
    .bind(factory_id)
    .bind(a.gross.get())
    .bind(a.partner_amount.get())
    .bind(a.vendor_amount.get())
    .bind(a.recouped.get())
    .bind(&a.reason)
    .bind(&a.created_by)
    .bind(a.created_at)
    .bind(transaction_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The agreement versions in force on any day of `period`.
fn in_period(agreements: &[AgreementVersion], period: Period) -> Vec<AgreementVersion> {
    agreements
        .iter()
        .filter(|a| a.from < period.end_ms() && a.to.is_none_or(|to| to > period.start_ms()))
        .cloned()
        .collect()
}
