-- Factories (a partner's GPU capacity in one region) and the compute requests tenants make on
-- them, with a timeline of every action. Until remote workers exist every factory is served by
-- the local worker pool; `models` is the comma-separated list of model ids it serves.

CREATE TABLE factories (
    id              TEXT PRIMARY KEY,
    partner_org_id  TEXT NOT NULL REFERENCES organizations (id),
    name            TEXT NOT NULL UNIQUE,
    region          TEXT NOT NULL,
    gpu_class       TEXT NOT NULL,
    models          TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX factories_partner ON factories (partner_org_id);

-- `version` increases with every change of state, so a decision made on a stale view of the
-- request (approving twice, racing a cancel) changes nothing.
CREATE TABLE compute_requests (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES organizations (id),
    requested_by       TEXT NOT NULL,
    factory_id         TEXT NOT NULL REFERENCES factories (id),
    model              TEXT,
    tokens_per_minute  BIGINT CHECK (tokens_per_minute > 0),
    gpus               BIGINT CHECK (gpus > 0),
    starts_at          BIGINT NOT NULL,
    ends_at            BIGINT NOT NULL,
    commitment         TEXT NOT NULL CHECK (commitment IN ('reserved', 'on_demand')),
    support_program_id TEXT REFERENCES credit_programs (id),
    support_amount     BIGINT CHECK (support_amount > 0),
    justification      TEXT,
    status             TEXT NOT NULL,
    reason             TEXT,
    share_weight       BIGINT,
    rate_limit_tpm     BIGINT,
    alloc_starts_at    BIGINT,
    alloc_ends_at      BIGINT,
    grant_program_id   TEXT REFERENCES credit_programs (id),
    grant_amount       BIGINT CHECK (grant_amount > 0),
    grant_id           TEXT,
    -- The idempotency key of this approval's grant: one per approval, so a grant undone and
    -- approved again later is a new grant with its own lifetime.
    grant_key          TEXT,
    version            BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    -- Days are inclusive: a request runs from the start of its first day to the end of its last.
    CHECK (ends_at >= starts_at),
    CHECK ((model IS NULL) <> (gpus IS NULL))
);
CREATE INDEX compute_requests_org ON compute_requests (org_id, created_at);
CREATE INDEX compute_requests_factory ON compute_requests (factory_id, status);

CREATE TABLE compute_request_events (
    id           TEXT PRIMARY KEY,
    request_id   TEXT NOT NULL REFERENCES compute_requests (id),
    actor_id     TEXT,
    actor_email  TEXT NOT NULL,
    action       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX compute_request_events_request ON compute_request_events (request_id, created_at);
