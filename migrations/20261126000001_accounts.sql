-- Accounts, organisations, invitations, login throttling and sessions.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL. Ids are made by the application
-- (UUIDv7 text), times are Unix milliseconds in BIGINT.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('startup', 'model_builder', 'enterprise',
                    'research', 'regional', 'partner', 'platform')),
    region      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    org_id         TEXT NOT NULL REFERENCES organizations (id),
    org_role       TEXT NOT NULL CHECK (org_role IN ('owner', 'member')),
    platform_role  TEXT CHECK (platform_role IN ('operator')),
    last_login_ip  TEXT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX users_org ON users (org_id);

CREATE TABLE invitations (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    email        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    token_hash   TEXT NOT NULL UNIQUE,
    invited_by   TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    accepted_at  BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX invitations_org ON invitations (org_id);

-- One row per failed login; counted over a sliding window, pruned by age.
CREATE TABLE login_failures (
    email  TEXT NOT NULL,
    ip     TEXT NOT NULL,
    at     BIGINT NOT NULL
);
CREATE INDEX login_failures_email ON login_failures (email, at);
CREATE INDEX login_failures_ip ON login_failures (ip, at);

-- tower-sessions records. user_id is lifted out of the record so that a password change can
-- end every other session of that user.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT,
    data        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
