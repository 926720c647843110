-- Partner agreements and revenue-share statements.
--
-- An agreement version is never edited once a closed statement covers any of its days; a
-- new version starts where the open-ended one before it is ended. Rates are basis points;
-- money is nano-dollars; times are Unix milliseconds (agreement bounds at UTC midnight).
CREATE TABLE partner_agreements (
    id                        TEXT PRIMARY KEY,
    partner_org_id            TEXT NOT NULL REFERENCES organizations (id),
    version                   INTEGER NOT NULL,
    effective_from            BIGINT NOT NULL,
    effective_to              BIGINT,
    partner_share_bps         INTEGER NOT NULL CHECK (partner_share_bps BETWEEN 0 AND 10000),
    credit_reimbursement_bps  INTEGER NOT NULL
                              CHECK (credit_reimbursement_bps BETWEEN 0 AND 10000),
    recoup_cost               BIGINT CHECK (recoup_cost > 0),
    recoup_vendor_share_bps   INTEGER CHECK (recoup_vendor_share_bps BETWEEN 1 AND 10000),
    note                      TEXT NOT NULL,
    created_by                TEXT NOT NULL,
    created_at                BIGINT NOT NULL,
    ended_by                  TEXT,
    ended_at                  BIGINT,
    UNIQUE (partner_org_id, version),
    CHECK (effective_to IS NULL OR effective_to > effective_from),
    CHECK ((recoup_cost IS NULL) = (recoup_vendor_share_bps IS NULL))
);

-- One row per partner: the head of its statement chain. Closing a month and recording an
-- adjustment both update this row first, which serialises them per partner on PostgreSQL
-- (SQLite's write lock already does).
CREATE TABLE statement_heads (
    partner_org_id   TEXT PRIMARY KEY REFERENCES organizations (id),
    last_period      TEXT,
    last_number      INTEGER NOT NULL DEFAULT 0,
    last_sha256      TEXT,
    recouped_total   BIGINT NOT NULL DEFAULT 0 CHECK (recouped_total >= 0),
    writes           BIGINT NOT NULL DEFAULT 0
);

-- A closed statement: immutable. `csv` is the canonical document, `sha256` its hash, and
-- `previous_sha256` the hash of the partner's statement before it.
CREATE TABLE statements (
    id               TEXT PRIMARY KEY,
    partner_org_id   TEXT NOT NULL REFERENCES organizations (id),
    period           TEXT NOT NULL,
    number           INTEGER NOT NULL,
    csv              TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    previous_sha256  TEXT,
    gross            BIGINT NOT NULL,
    cash             BIGINT NOT NULL,
    credit_support   BIGINT NOT NULL,
    partner_total    BIGINT NOT NULL,
    vendor_total     BIGINT NOT NULL,
    recouped_before  BIGINT NOT NULL,
    recouped_after   BIGINT NOT NULL,
    transaction_id   TEXT REFERENCES ledger_transactions (id),
    closed_by        TEXT NOT NULL,
    closed_at        BIGINT NOT NULL,
    UNIQUE (partner_org_id, period),
    UNIQUE (partner_org_id, number)
);

-- Which closed statement took each usage event: an event is counted exactly once, and one
-- that arrives after its month was closed lands in the next open statement.
CREATE TABLE statement_events (
    usage_event_id  TEXT PRIMARY KEY REFERENCES usage_events (id),
    statement_id    TEXT NOT NULL REFERENCES statements (id)
);
CREATE INDEX statement_events_statement ON statement_events (statement_id);

-- Adjustments to a partner's open month: refunds of usage (cash returned to the tenant, each
-- side giving back what it got of that cash, and the vendor's recouped part no longer
-- counting as recouped), credits and corrections (moved between vendor and partner).
-- `gross` = `partner_amount` + `vendor_amount`.
CREATE TABLE statement_adjustments (
    id               TEXT PRIMARY KEY,
    partner_org_id   TEXT NOT NULL REFERENCES organizations (id),
    period           TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('refund', 'credit', 'correction')),
    tenant_org_id    TEXT REFERENCES organizations (id),
    usage_event_id   TEXT REFERENCES usage_events (id),
    factory_id       TEXT REFERENCES factories (id),
    gross            BIGINT NOT NULL,
    partner_amount   BIGINT NOT NULL,
    vendor_amount    BIGINT NOT NULL,
    recouped         BIGINT NOT NULL DEFAULT 0 CHECK (recouped <= 0),
    reason           TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    transaction_id   TEXT REFERENCES ledger_transactions (id),
    statement_id     TEXT REFERENCES statements (id),
    CHECK (gross = partner_amount + vendor_amount)
);
CREATE INDEX statement_adjustments_partner ON statement_adjustments (partner_org_id, period);
