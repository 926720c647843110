-- Portal instances sharing the database, each beating every few seconds. A job whose
-- instance stopped beating is known dead: any live instance fails it and voids its hold.
CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);

ALTER TABLE jobs ADD COLUMN instance_id TEXT;
