//! The months of a partner not yet in a closed statement: the chain head that says where
//! they start, the usage events and adjustments they hold, and their computation in order.

use std::collections::HashMap;

use db::sqlx::{AnyConnection, Row};

use crate::agreements::AgreementVersion;
use crate::compute::{self, AdjustmentIn, Computed, EventIn};
use crate::{Period, StatementError};

/// Drafts are computed month by month from the last closed one; a partner more than this many
/// months behind is asked to close earlier months first.
const MAX_OPEN_MONTHS: usize = 240;

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

pub(super) async fn read_head(
    conn: &mut AnyConnection,
    partner_org_id: &str,
) -> Result<Head, StatementError> {
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
pub(super) struct Open {
    pub events: Vec<EventIn>,
    pub adjustments: Vec<(Period, AdjustmentIn)>,
}

/// Which usage events to load: those not yet in a closed statement (before a time), or those
/// one closed statement took.
pub(super) enum EventSet<'a> {
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

pub(super) async fn load_events(
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

pub(super) async fn load_open(
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
pub(super) fn first_open(
    head: &Head,
    open: &Open,
    agreements: &[AgreementVersion],
    now: i64,
) -> Period {
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
pub(super) fn compute_open(
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
