-- Holds: money reserved before work runs, across a tenant's wallet buckets in burn order.
-- A hold resolves exactly once (open → settled | voided | expired); its parts say how much it
-- reserved on each account, which `ledger_accounts.held` sums for the open ones.

CREATE TABLE ledger_holds (
    id                     TEXT PRIMARY KEY,
    idempotency_key        TEXT NOT NULL UNIQUE,
    org_id                 TEXT,
    amount                 BIGINT NOT NULL CHECK (amount > 0),
    status                 TEXT NOT NULL CHECK (status IN ('open', 'settled', 'voided', 'expired')),
    expires_at             BIGINT NOT NULL,
    created_at             BIGINT NOT NULL,
    resolved_at            BIGINT,
    settled_amount         BIGINT,
    settle_transaction_id  TEXT REFERENCES ledger_transactions (id)
);
CREATE INDEX ledger_holds_open ON ledger_holds (status, expires_at);

CREATE TABLE ledger_hold_parts (
    hold_id     TEXT NOT NULL REFERENCES ledger_holds (id),
    account_id  TEXT NOT NULL REFERENCES ledger_accounts (id),
    position    INTEGER NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    PRIMARY KEY (hold_id, account_id)
);
