-- Operators suspend an organisation: its sessions and API keys stop working on their next
-- request, until it is resumed. NULL: active.
ALTER TABLE organizations ADD COLUMN suspended_at BIGINT;
