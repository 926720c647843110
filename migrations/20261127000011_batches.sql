-- Files uploaded through /v1/files (OpenAI's Files API): batch input, and the output and error
-- files a batch writes. The content is kept in the database so every portal instance sees it.
CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    purpose     TEXT NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    filename    TEXT NOT NULL,
    bytes       BIGINT NOT NULL CHECK (bytes >= 0),
    content     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE INDEX files_org ON files (org_id, created_at);

-- Batches (OpenAI's Batch API). Each input line is a row of batch_lines, run as its own batch
-- job with its own hold, so a batch resumes line by line after a restart and never runs or
-- charges a line twice.
CREATE TABLE batches (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    user_id         TEXT,
    api_key_id      TEXT,
    endpoint        TEXT NOT NULL,
    input_file_id   TEXT NOT NULL REFERENCES files (id),
    status          TEXT NOT NULL CHECK (status IN
                    ('in_progress', 'completed', 'cancelling', 'cancelled', 'expired')),
    total           BIGINT NOT NULL,
    completed       BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    output_file_id  TEXT REFERENCES files (id),
    error_file_id   TEXT REFERENCES files (id),
    metadata        TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    in_progress_at  BIGINT,
    completed_at    BIGINT,
    cancelling_at   BIGINT,
    cancelled_at    BIGINT,
    expired_at      BIGINT
);
CREATE INDEX batches_org ON batches (org_id, created_at);
CREATE INDEX batches_status ON batches (status);

-- One row per input line. `status`: pending (not started), running (claimed by `runner_id`,
-- whose heartbeat says whether it is alive), done (a 2xx answer in `response`) or failed (an
-- error in `response`). `response` is the line of the output or error file, written before
-- the job is settled so a crash in between loses no answer that was charged; `succeeded`
-- says which file it goes to.
CREATE TABLE batch_lines (
    batch_id    TEXT NOT NULL REFERENCES batches (id),
    line_no     BIGINT NOT NULL,
    custom_id   TEXT,
    body        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    runner_id   TEXT,
    job_id      TEXT REFERENCES jobs (id),
    response    TEXT,
    succeeded   INTEGER NOT NULL DEFAULT 0 CHECK (succeeded IN (0, 1)),
    PRIMARY KEY (batch_id, line_no)
);
CREATE INDEX batch_lines_status ON batch_lines (status, batch_id);

CREATE TABLE batch_runners (
    id            TEXT PRIMARY KEY,
    heartbeat_at  BIGINT NOT NULL
);
