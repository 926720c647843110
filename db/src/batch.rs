//! Writes that need no answer between them, sent together.
//!
//! Through sqlx every statement on SQLite is a round trip to the connection's own thread
//! (about 60 µs here; docs/perf.md, "Gateway overhead"), far more than SQLite takes to run
//! it. A job's hold and its settlement are each a handful of inserts and updates whose values
//! are all known before the first is sent, so on SQLite a [`Batch`] sends them as one multi-statement query: one
//! round trip, and SQLite still reports each statement's result on its own. PostgreSQL's
//! extended protocol takes one statement per query, so there they run one after another.
//! A metering transaction ([`crate::MeterTx`]) can also send its `COMMIT` (and its `BEGIN`)
//! inside the batch's query; each checked row count is then checked by the query itself.
//! On PostgreSQL a metering batch is instead one statement of data-modifying `WITH` queries,
//! committed on its own ([`run_as_one_statement`]).
//!
//! Each statement is written with its own placeholders, `$1` up; the batch renumbers them
//! when it joins statements. Statements must not contain `$` anywhere else (no string
//! literals with a dollar sign), which holds for every statement the domain crates write.

use sqlx::{Any, AnyConnection, Arguments, any::AnyArguments};

use crate::Backend;

/// A value bound to one placeholder; `None` is SQL `NULL` of that column type (PostgreSQL
/// is told each parameter's type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Value {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(Some(v.to_string()))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(Some(v))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(Some(v.clone()))
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Value {
        Value::Text(v.map(str::to_string))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Value {
        Value::Text(v)
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        Value::Text(v.clone())
    }
}

/// The type of one column of [`Rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Int,
    Text,
}

/// Rows of values sent as one parameter (a JSON array), which a statement reads as a table
/// (see [`Batch::push_rows`]). However many rows there are, the statement's text stays the
/// same, so each connection parses and plans it once. Written out as a multi-row `VALUES`,
/// every number of rows is a statement of its own, parsed and planned anew on each
/// connection that meets it (0.7 ms apiece on PostgreSQL; docs/perf.md, "Tried and not
/// kept").
#[derive(Debug, Clone)]
pub struct Rows<const N: usize> {
    columns: &'static [(&'static str, Column); N],
    rows: Vec<serde_json::Value>,
}

impl<const N: usize> Rows<N> {
    /// No rows yet, of these columns (names written as SQL identifiers, lower case).
    pub fn new(columns: &'static [(&'static str, Column); N]) -> Rows<N> {
        Rows {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row: one value per column, in the columns' order (the type says how many). A
    /// value is sent as what it is, a number, a string or null; the column's type is what
    /// PostgreSQL reads it as.
    pub fn push(&mut self, values: [Value; N]) {
        let row = self
            .columns
            .iter()
            .zip(values)
            .map(|((name, _), value)| {
                let json = match value {
                    Value::Int(v) => v.map(serde_json::Value::from),
                    Value::Text(v) => v.map(serde_json::Value::from),
                };
                (name.to_string(), json.unwrap_or(serde_json::Value::Null))
            })
            .collect();
        self.rows.push(serde_json::Value::Object(row));
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table the rows are read from, as `r`, from the parameter `$1`.
    fn source(&self, backend: Backend) -> String {
        match backend {
            // Typed by the column list; a JSON null is SQL NULL.
            Backend::Postgres => {
                let columns: Vec<String> = self
                    .columns
                    .iter()
                    .map(|(name, column)| match column {
                        Column::Int => format!("{name} BIGINT"),
                        Column::Text => format!("{name} TEXT"),
                    })
                    .collect();
                format!("json_to_recordset($1::json) AS r({})", columns.join(", "))
            }
            // `->>` gives a JSON number as an INTEGER, a string as TEXT, null as NULL.
            Backend::Sqlite => {
                let columns: Vec<String> = self
                    .columns
                    .iter()
                    .map(|(name, _)| format!("value ->> '{name}' AS {name}"))
                    .collect();
                format!("(SELECT {} FROM json_each($1)) AS r", columns.join(", "))
            }
        }
    }

    /// The parameter of [`Rows::source`].
    fn into_value(self) -> Value {
        Value::Text(Some(serde_json::Value::Array(self.rows).to_string()))
    }
}

/// Statements to run in order inside the caller's transaction, each with what it must affect.
/// `R` is what a statement that changed the wrong number of rows reports (the caller's own
/// error, so that "not enough funds in account X" comes back as such).
#[derive(Debug)]
pub struct Batch<R = String> {
    backend: Backend,
    statements: Vec<Statement<R>>,
}

#[derive(Debug)]
struct Statement<R> {
    sql: String,
    values: Vec<Value>,
    /// How many rows it must change, and what to report when it changed another number.
    expect: Option<(u64, R)>,
}

/// Why a batch stopped: the transaction it ran in must be rolled back (dropping it does).
#[derive(Debug, thiserror::Error)]
pub enum BatchError<R> {
    /// A statement changed another number of rows than it had to.
    #[error("a statement changed {changed} rows, expected {expected}")]
    Refused {
        refusal: R,
        changed: u64,
        expected: u64,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl<R> BatchError<R> {
    /// The refusal given with the statement that changed the wrong number of rows.
    pub fn refusal(&self) -> Option<&R> {
        match self {
            BatchError::Refused { refusal, .. } => Some(refusal),
            BatchError::Db(_) => None,
        }
    }

    /// The database's own error, when that is what stopped the batch.
    pub fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            BatchError::Db(e) => Some(e),
            BatchError::Refused { .. } => None,
        }
    }
}

impl<R> Batch<R> {
    pub fn new(backend: Backend) -> Batch<R> {
        Batch {
            backend,
            statements: Vec::new(),
        }
    }

    /// Adds a statement whose effect is not checked.
    pub fn push(&mut self, sql: impl Into<String>, values: Vec<Value>) {
        self.statements.push(Statement {
            sql: sql.into(),
            values,
            expect: None,
        });
    }

    /// Adds a statement that must change exactly `rows` rows; otherwise the batch fails with
    /// `refusal` (and the caller's transaction is to be rolled back).
    pub fn push_expecting(
        &mut self,
        sql: impl Into<String>,
        values: Vec<Value>,
        rows: u64,
        refusal: R,
    ) {
        self.statements.push(Statement {
            sql: sql.into(),
            values,
            expect: Some((rows, refusal)),
        });
    }

    /// Adds a statement over `rows`: `sql` reads them from the table that `{rows}` in it
    /// stands for, called `r` (`INSERT INTO t (a, b) SELECT r.a, r.b FROM {rows}`), and has
    /// no placeholders of its own. Its text does not depend on how many rows there are. With
    /// `refusal`, it must change exactly one row per row given.
    ///
    /// Meant for inserts. PostgreSQL plans an update joined to its rows from the table's size
    /// when a connection first meets it, and keeps that plan: planned on a small table, such a
    /// join went on scanning the whole table as it grew (docs/perf.md, "Tried and not kept").
    /// An update of rows by their keys stays one statement per row.
    pub fn push_rows<const N: usize>(&mut self, sql: &str, rows: Rows<N>, refusal: Option<R>) {
        let expected = rows.len() as u64;
        self.statements.push(Statement {
            sql: sql.replace("{rows}", &rows.source(self.backend)),
            values: vec![rows.into_value()],
            expect: refusal.map(|r| (expected, r)),
        });
    }

    /// Adds the insert of `rows` into `table`, whose columns are named as the rows' are (see
    /// [`Batch::push_rows`]).
    pub fn insert_rows<const N: usize>(&mut self, table: &str, rows: Rows<N>) {
        let names: Vec<&str> = rows.columns.iter().map(|(name, _)| *name).collect();
        let read: Vec<String> = names.iter().map(|name| format!("r.{name}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {{rows}}",
            names.join(", "),
            read.join(", ")
        );
        self.push_rows(&sql, rows, None);
    }

    /// Runs the statements in order on `conn`, inside a transaction: after a failure the
    /// statements before it stay applied until the transaction rolls back. Returns the rows
    /// each statement changed.
    pub async fn run(self, conn: &mut AnyConnection) -> Result<Vec<u64>, BatchError<R>> {
        if self.statements.is_empty() {
            return Ok(Vec::new());
        }
        let counts = match self.backend {
            Backend::Sqlite => run_joined(&self.statements, conn).await?,
            Backend::Postgres => run_each(&self.statements, conn).await?,
        };
        for (s, changed) in self.statements.into_iter().zip(counts.iter().copied()) {
            if let Some((expected, refusal)) = s.expect
                && changed != expected
            {
                return Err(BatchError::Refused {
                    refusal,
                    changed,
                    expected,
                });
            }
        }
        Ok(counts)
    }
}

pub(crate) fn bind(args: &mut AnyArguments<'_>, value: &Value) -> Result<(), sqlx::Error> {
    let bound = match value {
        Value::Int(v) => args.add(*v),
        Value::Text(v) => args.add(v.clone()),
    };
    bound.map_err(sqlx::Error::Encode)
}

/// What each statement of a joined query is, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Begin,
    /// The batch's statement with this index.
    Statement(usize),
    /// The check that the batch's statement with this index changed what it had to.
    Guard(usize),
    Commit,
}

/// The temporary table (one per SQLite connection, made when it opens) that turns a
/// statement's unexpected row count into an error inside the query: a guard inserts a row
/// only when the count is wrong, and the table refuses every row. SQLite has no `RAISE`
/// outside triggers, and a query that ends in `COMMIT` must stop before it.
pub(crate) const SQLITE_GUARD_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS batch_refusals \
     (statement INTEGER, CONSTRAINT unexpected_row_count CHECK (statement IS NULL));";

/// One round trip: the statements joined, their placeholders numbered on from each other.
/// SQLite binds `$N` by its number across every statement of the query.
async fn run_joined<R>(
    statements: &[Statement<R>],
    conn: &mut AnyConnection,
) -> Result<Vec<u64>, sqlx::Error> {
    let sent: Vec<Sent> = (0..statements.len()).map(Sent::Statement).collect();
    let (counts, failed) = send_joined(statements, &sent, conn).await;
    match failed {
        Some((_, e)) => Err(e),
        None => Ok(counts),
    }
}

/// The batch as a whole transaction in one round trip on SQLite: `BEGIN IMMEDIATE` first when
/// `begin` (the caller holds the process's writer lock and has sent nothing yet), then each
/// statement followed by its guard when it has an expected row count, then `COMMIT`. A wrong
/// count stops the query at its guard, before the commit; the caller then rolls back.
pub(crate) async fn run_committing<R>(
    batch: Batch<R>,
    conn: &mut AnyConnection,
    begin: bool,
) -> Result<Vec<u64>, BatchError<R>> {
    let mut sent = Vec::with_capacity(batch.statements.len() * 2 + 2);
    if begin {
        sent.push(Sent::Begin);
    }
    for (i, s) in batch.statements.iter().enumerate() {
        sent.push(Sent::Statement(i));
        if s.expect.is_some() {
            sent.push(Sent::Guard(i));
        }
    }
    sent.push(Sent::Commit);
    let (counts, failed) = send_joined(&batch.statements, &sent, conn).await;
    let Some((at, e)) = failed else {
        return Ok(counts);
    };
    match at {
        Some(Sent::Guard(i)) => {
            let changed = counts[i];
            let statement = batch.statements.into_iter().nth(i);
            match statement.and_then(|s| s.expect) {
                Some((expected, refusal)) => Err(BatchError::Refused {
                    refusal,
                    changed,
                    expected,
                }),
                None => Err(BatchError::Db(e)),
            }
        }
        _ => Err(BatchError::Db(e)),
    }
}

/// Sends `sent` as one query. Returns the rows each of the batch's statements changed (as far
/// as they ran) and, when the query failed, where and why.
async fn send_joined<R>(
    statements: &[Statement<R>],
    sent: &[Sent],
    conn: &mut AnyConnection,
) -> (Vec<u64>, Option<(Option<Sent>, sqlx::Error)>) {
    use futures_util::StreamExt;
    let mut counts = Vec::with_capacity(statements.len());
    // A parameter, not a literal: the query's text stays the same whatever the counts.
    let expected: Vec<[Value; 1]> = statements
        .iter()
        .map(|s| {
            [Value::Int(Some(
                s.expect.as_ref().map_or(0, |(n, _)| *n as i64),
            ))]
        })
        .collect();
    let parts: Vec<(String, &[Value])> = sent
        .iter()
        .map(|part| match *part {
            Sent::Begin => ("BEGIN IMMEDIATE".to_string(), &[][..]),
            Sent::Commit => ("COMMIT".to_string(), &[][..]),
            Sent::Guard(i) => (
                format!(
                    "INSERT INTO temp.batch_refusals (statement) SELECT {i} WHERE changes() <> $1"
                ),
                &expected[i][..],
            ),
            Sent::Statement(i) => (statements[i].sql.clone(), &statements[i].values[..]),
        })
        .collect();
    let (sql, args) = match join(parts.iter().map(|(sql, values)| (sql.as_str(), *values))) {
        Ok(joined) => joined,
        Err(e) => return (counts, Some((None, e))),
    };
    let query = sqlx::query_with::<Any, _>(&sql, args);
    let mut results = sqlx::Executor::fetch_many(&mut *conn, query);
    // Each statement ends with its result (`Left`), after any rows it returned.
    let mut done = 0;
    while let Some(step) = results.next().await {
        match step {
            Ok(sqlx::Either::Left(result)) => {
                if let Some(Sent::Statement(_)) = sent.get(done) {
                    counts.push(result.rows_affected());
                }
                done += 1;
            }
            Ok(sqlx::Either::Right(_)) => {}
            Err(e) => return (counts, Some((sent.get(done).copied(), e))),
        }
    }
    if done != sent.len() {
        let e = sqlx::Error::Protocol(format!(
            "a batch of {} statements reported {done} results",
            sent.len()
        ));
        return (counts, Some((None, e)));
    }
    (counts, None)
}

/// The function (one per PostgreSQL connection, made when it opens, in its temporary schema)
/// that stops a one-statement batch whose statement changed the wrong number of rows: the
/// error undoes the whole statement, and its detail (text of ours, never translated) says
/// which statement it was and what it changed. Plain SQL cannot raise an error of its own.
pub(crate) const POSTGRES_GUARD_FUNCTION: &str = "CREATE OR REPLACE FUNCTION \
     pg_temp.batch_refuse(statement BIGINT, changed BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS \
     'BEGIN RAISE EXCEPTION USING ERRCODE = ''TMB01'', \
     MESSAGE = ''a batch statement changed an unexpected number of rows'', \
     DETAIL = statement || '' '' || changed; END'";

/// The SQLSTATE [`POSTGRES_GUARD_FUNCTION`] raises.
const POSTGRES_REFUSED: &str = "TMB01";

/// The batch as one PostgreSQL statement, committed on its own (no transaction around it):
/// each statement a data-modifying `WITH` query that returns a row per row it changed, and
/// the main query counting them and calling the guard function where a count is wrong. A
/// statement is atomic, so a refusal or an error keeps nothing. Every part runs on the
/// snapshot the statement began with: no statement sees another's changes (rows another
/// inserts still satisfy its foreign keys, which are checked at the end), and no row may
/// be changed by two of them. With `async_commit` the commit does not wait for the WAL flush
/// (`synchronous_commit` set for this statement's own transaction only).
pub(crate) async fn run_as_one_statement<R>(
    batch: Batch<R>,
    pool: &sqlx::AnyPool,
    async_commit: bool,
) -> Result<Vec<u64>, BatchError<R>> {
    let statements = batch.statements;
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    for s in &statements {
        debug_assert!(
            !s.sql.trim_end().ends_with(';') && !s.sql.to_ascii_uppercase().contains("RETURNING"),
            "a batch statement for PostgreSQL is one statement without RETURNING: {}",
            s.sql
        );
    }
    let (sql, args) = one_statement(&statements, async_commit)?;
    let row = match sqlx::query_with::<Any, _>(&sql, args).fetch_one(pool).await {
        Ok(row) => row,
        Err(e) => return Err(refused_on_postgres(statements, e)),
    };
    (0..statements.len())
        .map(|i| {
            let changed: i64 = sqlx::Row::try_get(&row, format!("c{i}").as_str())?;
            Ok(changed as u64)
        })
        .collect::<Result<Vec<u64>, sqlx::Error>>()
        .map_err(BatchError::Db)
}

/// The text of [`run_as_one_statement`] and its values. The text depends on the statements'
/// texts only, not on their values or expected counts: a batch of the same statements is
/// one prepared statement for each connection, parsed and planned once.
fn one_statement<R>(
    statements: &[Statement<R>],
    async_commit: bool,
) -> Result<(String, AnyArguments<'static>), sqlx::Error> {
    let (numbered, mut args) =
        numbered(statements.iter().map(|s| (s.sql.as_str(), &s.values[..])))?;
    let mut placeholders = statements.iter().map(|s| s.values.len()).sum::<usize>();
    let queries: Vec<String> = numbered
        .iter()
        .enumerate()
        .map(|(i, statement)| format!("s{i} AS ({} RETURNING 1)", statement.trim_end()))
        .collect();
    let mut sql = format!("WITH {}", queries.join(", "));
    // Evaluated in this order: the setting, then each statement when its count is read.
    // Checked statements go last: they are the updates of rows other requests also change
    // (a wallet's account, a hold), whose locks are then held for less of the statement.
    sql.push_str(" SELECT ");
    sql.push_str(if async_commit {
        "set_config('synchronous_commit', 'off', true)"
    } else {
        "NULL"
    });
    let (checked, unchecked): (Vec<_>, Vec<_>) = statements
        .iter()
        .enumerate()
        .partition(|(_, s)| s.expect.is_some());
    for (i, s) in unchecked.into_iter().chain(checked) {
        let count = format!("(SELECT count(*) FROM s{i})");
        sql.push_str(&format!(", {count} AS c{i}"));
        // The expected count is a parameter, so that the text stays the same whatever it is.
        if let Some((expected, _)) = &s.expect {
            bind(&mut args, &Value::Int(Some(*expected as i64)))?;
            placeholders += 1;
            sql.push_str(&format!(
                ", CASE WHEN {count} <> ${placeholders} THEN pg_temp.batch_refuse({i}, {count}) END"
            ));
        }
    }
    Ok((sql, args))
}

/// The refusal of the statement the guard function named, or the database's error as it is.
fn refused_on_postgres<R>(statements: Vec<Statement<R>>, e: sqlx::Error) -> BatchError<R> {
    let named = e
        .as_database_error()
        .filter(|d| d.code().as_deref() == Some(POSTGRES_REFUSED))
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|d| d.detail())
        .and_then(|detail| {
            let (statement, changed) = detail.split_once(' ')?;
            Some((
                statement.parse::<usize>().ok()?,
                changed.parse::<u64>().ok()?,
            ))
        });
    let Some((i, changed)) = named else {
        return BatchError::Db(e);
    };
    match statements.into_iter().nth(i).and_then(|s| s.expect) {
        Some((expected, refusal)) => BatchError::Refused {
            refusal,
            changed,
            expected,
        },
        None => BatchError::Db(e),
    }
}

async fn run_each<R>(
    statements: &[Statement<R>],
    conn: &mut AnyConnection,
) -> Result<Vec<u64>, sqlx::Error> {
    let mut counts = Vec::with_capacity(statements.len());
    for s in statements {
        let mut args = AnyArguments::default();
        for v in &s.values {
            bind(&mut args, v)?;
        }
        let done = sqlx::query_with::<Any, _>(&s.sql, args)
            .execute(&mut *conn)
            .await?;
        counts.push(done.rows_affected());
    }
    Ok(counts)
}

/// Statements joined into one SQLite query with their values bound, each statement's own
/// `$1`-up placeholders numbered on from the statements before it.
pub(crate) fn join<'a>(
    statements: impl IntoIterator<Item = (&'a str, &'a [Value])>,
) -> Result<(String, AnyArguments<'static>), sqlx::Error> {
    let (numbered, args) = numbered(statements)?;
    Ok((numbered.join(";\n") + ";\n", args))
}

/// Each statement with its placeholders numbered on from the statements before it, and all
/// their values bound in that order: the parts of one query (SQLite) or one statement
/// (PostgreSQL's `WITH` queries), which bind `$N` by its number across all of them.
fn numbered<'a>(
    statements: impl IntoIterator<Item = (&'a str, &'a [Value])>,
) -> Result<(Vec<String>, AnyArguments<'static>), sqlx::Error> {
    let mut numbered = Vec::new();
    let mut args = AnyArguments::default();
    let mut offset = 0;
    for (statement, values) in statements {
        numbered.push(renumber(statement, offset));
        for v in values {
            bind(&mut args, v)?;
        }
        offset += values.len();
    }
    Ok((numbered, args))
}

/// `sql` with every `$N` placeholder made `$(N + offset)`: for a caller that joins a
/// condition written with its own `$1`-up placeholders onto a statement's.
pub fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::{Backend, Batch, Column, Rows, one_statement, renumber};

    /// How many rows a statement is given, and how many rows a checked statement must change,
    /// leave a batch's text alone on PostgreSQL: each connection parses and plans it once.
    #[test]
    fn rows_and_expected_counts_leave_the_text_alone() {
        fn batch(rows: i64) -> Batch<&'static str> {
            let mut b = Batch::new(Backend::Postgres);
            let mut r = Rows::new(&[("id", Column::Text), ("n", Column::Int)]);
            for i in 0..rows {
                r.push([format!("id{i}").into(), i.into()]);
            }
            b.push_rows(
                "INSERT INTO t (id, n) SELECT r.id, r.n FROM {rows} WHERE true \
                 ON CONFLICT DO NOTHING",
                r.clone(),
                Some("taken"),
            );
            b.push_rows("INSERT INTO u (id) SELECT r.id FROM {rows}", r, None);
            b.push_expecting(
                "UPDATE v SET n = n + $1 WHERE id = $2",
                vec![rows.into(), "v".into()],
                rows as u64,
                "no v",
            );
            b
        }
        let (one, _) = one_statement(&batch(1).statements, true).unwrap();
        let (three, _) = one_statement(&batch(3).statements, true).unwrap();
        assert_eq!(one, three);
        assert!(
            one.contains("json_to_recordset($1::json) AS r(id TEXT, n BIGINT)"),
            "{one}"
        );
        assert!(
            one.contains("<> $6 THEN"),
            "the expected counts follow the values: {one}"
        );
    }

    #[test]
    fn placeholders_are_numbered_on() {
        assert_eq!(
            renumber("UPDATE t SET a = $1, b = $10 WHERE id = $2", 3),
            "UPDATE t SET a = $4, b = $13 WHERE id = $5"
        );
        assert_eq!(renumber("SELECT $1", 0), "SELECT $1");
        assert_eq!(renumber("no placeholders", 7), "no placeholders");
        assert_eq!(renumber("ends with $", 7), "ends with $");
    }
}
