-- List prices per model, in nano-dollars per million tokens, set by operators. Usage events
-- will record the price they were charged at, so changing a price never rewrites history.
CREATE TABLE model_prices (
    model_id                TEXT PRIMARY KEY,
    input_nanos_per_mtok    BIGINT NOT NULL CHECK (input_nanos_per_mtok >= 0),
    output_nanos_per_mtok   BIGINT NOT NULL CHECK (output_nanos_per_mtok >= 0),
    updated_at              BIGINT NOT NULL,
    updated_by              TEXT NOT NULL
);
