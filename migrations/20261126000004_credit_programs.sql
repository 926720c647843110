-- Credit-support programs and the grants they make. A program's budget sits in its own ledger
-- account (funded from the sponsor's), which may not go negative: a program can never grant
-- beyond its budget. Each grant is a wallet bucket of its own, with the grant's expiry.

CREATE TABLE credit_programs (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    sponsor_org_id     TEXT,
    eligible_kinds     TEXT NOT NULL,
    eligible_regions   TEXT NOT NULL,
    grant_amount       BIGINT NOT NULL CHECK (grant_amount > 0),
    grant_lifetime_ms  BIGINT NOT NULL CHECK (grant_lifetime_ms > 0),
    budget             BIGINT NOT NULL CHECK (budget > 0),
    auto_on_signup     INTEGER NOT NULL CHECK (auto_on_signup IN (0, 1)),
    fund_account_id    TEXT NOT NULL REFERENCES ledger_accounts (id),
    created_at         BIGINT NOT NULL
);

CREATE TABLE credit_grants (
    id           TEXT PRIMARY KEY,
    program_id   TEXT NOT NULL REFERENCES credit_programs (id),
    org_id       TEXT NOT NULL,
    amount       BIGINT NOT NULL CHECK (amount > 0),
    account_id   TEXT NOT NULL REFERENCES ledger_accounts (id),
    idempotency_key  TEXT NOT NULL UNIQUE,
    reason       TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX credit_grants_org ON credit_grants (org_id);
