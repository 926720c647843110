-- Accounts people can trust: verified email addresses, password reset, two-factor sign-in,
-- limits counted atomically, member keys revoked with the member, search by folded case.

-- When the address was shown to belong to the user (a verification link, a password reset
-- link, or an invitation sent to it). Accounts made before verification existed count as
-- verified from their creation.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;
UPDATE users SET email_verified_at = created_at;
-- Two-factor sign-in (TOTP, RFC 6238): the shared secret (base32) while it is set up or on,
-- when it was switched on, and the last time step accepted, so a code works only once.
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_enabled_at BIGINT;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;

-- Links sent by email: single use, expiring, stored only as SHA-256 of the 256-bit token.
CREATE TABLE email_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL CHECK (purpose IN ('verify', 'reset')),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX email_tokens_user ON email_tokens (user_id, purpose);

-- One-time recovery codes of two-factor sign-in, stored only as SHA-256 (80 random bits each).
CREATE TABLE recovery_codes (
    code_hash   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

-- Attempts counted against sliding-window limits (logins, password checks, two-factor codes,
-- sign-ups, reset requests, verification mails). One attempt writes a row per window it
-- counts in, all under one `id`, in the transaction that found every window under its limit.
CREATE TABLE rate_events (
    id       TEXT NOT NULL,
    scope    TEXT NOT NULL,
    subject  TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX rate_events_window ON rate_events (scope, subject, at);
CREATE INDEX rate_events_id ON rate_events (id);
CREATE INDEX rate_events_at ON rate_events (at);
DROP TABLE login_failures;

-- Searches compare Unicode case-folded text, folded by the application (SQLite's LOWER folds
-- ASCII only). Rows written before this column existed are folded at start.
ALTER TABLE organizations ADD COLUMN name_folded TEXT;
ALTER TABLE audit_events ADD COLUMN search_folded TEXT;

-- Why a key was revoked when its owner did not do it (`member_removed`).
ALTER TABLE api_keys ADD COLUMN revoked_reason TEXT;
CREATE INDEX api_keys_creator ON api_keys (created_by);

-- A program that requires a verified email grants when the founding owner verifies it
-- (its grant's idempotency key then names a digest of the normalised address, so one address
-- gets one grant however many organisations it signs up). Programs that grant on sign-up now
-- require it.
ALTER TABLE credit_programs ADD COLUMN requires_verified_email INTEGER NOT NULL DEFAULT 0;
UPDATE credit_programs SET requires_verified_email = 1 WHERE auto_on_signup = 1;
