-- Factories as fleets of worker nodes that partners run. A worker token enrols nodes into one
-- factory: shown once, stored only as SHA-256 (190 random bits, so a fast hash is enough),
-- revocable, with its last use. A factory with any token, revoked or not, runs its jobs only
-- on its own nodes; one without keeps using the portal's in-process pool.
CREATE TABLE worker_tokens (
    id            TEXT PRIMARY KEY,
    factory_id    TEXT NOT NULL REFERENCES factories (id),
    created_by    TEXT NOT NULL,
    name          TEXT NOT NULL,
    display       TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX worker_tokens_factory ON worker_tokens (factory_id, created_at);

-- Which node and device produced a job's tokens: the node's name as it announced itself
-- (`local` for the portal's own pool) and the device id (`cpu`, `cuda:0`).
ALTER TABLE usage_events ADD COLUMN node TEXT;
ALTER TABLE usage_events ADD COLUMN device TEXT;
