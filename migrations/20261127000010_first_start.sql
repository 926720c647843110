-- What a first start has set up, once per database even when several portal instances start
-- together (the insert of the marker is the lock).
CREATE TABLE first_start (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);
