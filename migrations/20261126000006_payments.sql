-- Stripe top-ups. A checkout is created here before Stripe is asked, so every Checkout
-- Session maps back to the organisation that started it; only a verified webhook moves money.
-- `refunded_cents` is Stripe's cumulative amount refunded, so refund events apply once each
-- and an older one arriving late changes nothing.

CREATE TABLE payment_checkouts (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES organizations (id),
    user_id            TEXT NOT NULL,
    amount_cents       BIGINT NOT NULL CHECK (amount_cents > 0),
    stripe_session_id  TEXT UNIQUE,
    payment_intent     TEXT,
    status             TEXT NOT NULL,
    paid_cents         BIGINT NOT NULL DEFAULT 0,
    refunded_cents     BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX payment_checkouts_org ON payment_checkouts (org_id, created_at);
CREATE INDEX payment_checkouts_intent ON payment_checkouts (payment_intent);

-- Every verified event, recorded in the same transaction as what it did.
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);
