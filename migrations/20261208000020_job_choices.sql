-- The choices of one request (`n` > 1) are one job each and share their prompt's KV blocks:
-- the first job pays for the prompt, the others only for their own output.
ALTER TABLE jobs ADD COLUMN pays_prompt INTEGER NOT NULL DEFAULT 1 CHECK (pays_prompt IN (0, 1));
