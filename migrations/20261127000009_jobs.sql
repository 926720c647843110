-- Jobs: every generation from admission to its end, whoever asked (a signed-in user in the
-- playground, or an API key) and whichever factory served it. A job row is written before any
-- work is queued, with the hold that pays for its largest possible size.
CREATE TABLE jobs (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES organizations (id),
    user_id            TEXT,
    api_key_id         TEXT,
    kind               TEXT NOT NULL CHECK (kind IN ('playground', 'production', 'batch')),
    model              TEXT NOT NULL,
    factory_id         TEXT NOT NULL REFERENCES factories (id),
    partner_org_id     TEXT NOT NULL REFERENCES organizations (id),
    status             TEXT NOT NULL
                       CHECK (status IN ('running', 'succeeded', 'cancelled', 'failed')),
    hold_id            TEXT REFERENCES ledger_holds (id),
    prompt_tokens      BIGINT NOT NULL CHECK (prompt_tokens > 0),
    max_tokens         BIGINT NOT NULL CHECK (max_tokens > 0),
    completion_tokens  BIGINT,
    finish_reason      TEXT,
    error              TEXT,
    created_at         BIGINT NOT NULL,
    finished_at        BIGINT
);
CREATE INDEX jobs_org ON jobs (org_id, created_at);
CREATE INDEX jobs_status ON jobs (status);

-- Usage events: one immutable row per settled job, the record statements are built from.
-- Prices are copied from the list price at admission, so a later price change rewrites
-- nothing. `amount` is what the ledger charged; `paid_amount` came from paid credit and the
-- rest from grants (one row each in usage_event_grants). Device time is in microseconds.
CREATE TABLE usage_events (
    id                   TEXT PRIMARY KEY,
    job_id               TEXT NOT NULL UNIQUE REFERENCES jobs (id),
    org_id               TEXT NOT NULL REFERENCES organizations (id),
    user_id              TEXT,
    api_key_id           TEXT,
    kind                 TEXT NOT NULL,
    model                TEXT NOT NULL,
    factory_id           TEXT NOT NULL REFERENCES factories (id),
    partner_org_id       TEXT NOT NULL REFERENCES organizations (id),
    prompt_tokens        BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens    BIGINT NOT NULL CHECK (completion_tokens >= 0),
    input_nanos_per_mtok  BIGINT NOT NULL,
    output_nanos_per_mtok BIGINT NOT NULL,
    amount               BIGINT NOT NULL CHECK (amount >= 0),
    paid_amount          BIGINT NOT NULL CHECK (paid_amount >= 0),
    device_us            BIGINT NOT NULL CHECK (device_us >= 0),
    queue_ms             BIGINT NOT NULL,
    ttft_ms              BIGINT,
    duration_ms          BIGINT NOT NULL,
    partial              INTEGER NOT NULL CHECK (partial IN (0, 1)),
    finish_reason        TEXT NOT NULL,
    transaction_id       TEXT REFERENCES ledger_transactions (id),
    created_at           BIGINT NOT NULL,
    CHECK (paid_amount <= amount)
);
CREATE INDEX usage_events_org ON usage_events (org_id, created_at);
CREATE INDEX usage_events_partner ON usage_events (partner_org_id, created_at);

CREATE TABLE usage_event_grants (
    usage_event_id  TEXT NOT NULL REFERENCES usage_events (id),
    grant_id        TEXT NOT NULL REFERENCES credit_grants (id),
    program_id      TEXT NOT NULL REFERENCES credit_programs (id),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    PRIMARY KEY (usage_event_id, grant_id)
);

-- Idempotency-Key on the API's non-streaming POSTs (RELIABILITY M3): the first response is
-- kept and returned to every repeat with the same key and body.
CREATE TABLE api_idempotency (
    org_id           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    status_code      INTEGER,
    response_body    TEXT,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (org_id, idempotency_key)
);
