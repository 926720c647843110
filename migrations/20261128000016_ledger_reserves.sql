-- What holds reserve moves off the account row, so that a new hold never waits for a
-- settlement of the same account (PostgreSQL locks the row a statement updates until its
-- transaction ends, and every settlement updates its accounts' rows).
--
-- What an account holds is now two running totals on two rows:
--   ledger_account_reserves.reserved  every amount ever reserved on the account;
--   ledger_accounts.released          every reserved amount since given back.
-- held = reserved - released, and available = balance - held. Only reserving lowers what is
-- available, and it updates only the reserves row; a settlement (balance down by the charge,
-- released up by the whole reservation) and a release only raise it, and update only the
-- account row. So a reservation that checks `balance + released - reserved` against a stale
-- account row errs on the safe side, and reservations wait only for each other. A debit
-- outside a hold is reserved and released at once.
--
-- `ledger_accounts.held` is no longer written and stays 0: SQLite cannot drop a column that a
-- CHECK names, and with held at 0 that CHECK still says what it must (an account that may not
-- go negative never does).

CREATE TABLE ledger_account_reserves (
    account_id  TEXT PRIMARY KEY REFERENCES ledger_accounts (id),
    reserved    BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);

ALTER TABLE ledger_accounts ADD COLUMN released BIGINT NOT NULL DEFAULT 0;

INSERT INTO ledger_account_reserves (account_id, reserved) SELECT id, held FROM ledger_accounts;

UPDATE ledger_accounts SET held = 0;
