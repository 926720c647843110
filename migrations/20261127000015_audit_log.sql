-- The audit log: every change operators and partners make (suspensions, prices, approvals,
-- factories, programs, agreements, statements, workers), who made it, when, and the state
-- before and after as JSON. Rows are only ever added.
CREATE TABLE audit_events (
    id             TEXT PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor_user_id  TEXT NOT NULL REFERENCES users (id),
    actor_email    TEXT NOT NULL,
    actor_org_id   TEXT NOT NULL REFERENCES organizations (id),
    action         TEXT NOT NULL,
    target_kind    TEXT NOT NULL,
    target_id      TEXT NOT NULL,
    -- The organisation the target belongs to, when it has one (its partner sees the entry).
    target_org_id  TEXT,
    before_json    TEXT,
    after_json     TEXT
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_orgs ON audit_events (actor_org_id, target_org_id);
