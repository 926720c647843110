-- API keys. The secret is shown once and never stored: only its SHA-256 (a key carries 190
-- random bits, so a fast hash is enough) and a display prefix to recognise it by.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organizations (id),
    created_by    TEXT NOT NULL,
    name          TEXT NOT NULL,
    display       TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at);
