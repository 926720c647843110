-- The double-entry ledger. Amounts are integer nano-dollars (1e-9 USD) in BIGINT.
-- A transaction's entries sum to zero (the application builds only balanced postings);
-- entries are never updated or deleted. `balance` is the running sum of an account's entries,
-- kept in the same transaction that writes them, so a debit can be checked and applied in one
-- conditional UPDATE; the CHECK is the backstop.

CREATE TABLE ledger_accounts (
    id               TEXT PRIMARY KEY,
    code             TEXT NOT NULL UNIQUE,
    org_id           TEXT,
    kind             TEXT NOT NULL,
    may_go_negative  INTEGER NOT NULL CHECK (may_go_negative IN (0, 1)),
    balance          BIGINT NOT NULL DEFAULT 0,
    held             BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    expires_at       BIGINT,
    created_at       BIGINT NOT NULL,
    CHECK (may_go_negative = 1 OR balance - held >= 0)
);
CREATE INDEX ledger_accounts_org ON ledger_accounts (org_id);

CREATE TABLE ledger_transactions (
    id               TEXT PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    memo             TEXT NOT NULL,
    org_id           TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX ledger_transactions_org ON ledger_transactions (org_id, created_at);

CREATE TABLE ledger_entries (
    transaction_id  TEXT NOT NULL REFERENCES ledger_transactions (id),
    account_id      TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount          BIGINT NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (transaction_id, account_id)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id);
