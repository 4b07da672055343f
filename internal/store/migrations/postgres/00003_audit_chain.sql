-- +goose Up
-- The audit log becomes a hash chain (package audit): every entry carries
-- the request it belongs to, the hash of the entry before it and its own
-- hash. Append always fills them and numbers entries itself, from 1 without
-- gaps. Entries written before this migration have no hash, so a chain is
-- only whole on a store that had none: chains start with this migration on
-- fresh installs.
ALTER TABLE audit_events ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

-- Signed checkpoints: Ward's checkpoint key signs "the chain ended at seq
-- with hash" now and then, so that a rewritten or truncated tail shows.
CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      TEXT NOT NULL,
    at        TIMESTAMPTZ NOT NULL,
    key_id    TEXT NOT NULL,
    signature BYTEA NOT NULL
);

-- +goose Down
DROP TABLE audit_checkpoints;
ALTER TABLE audit_events DROP COLUMN hash;
ALTER TABLE audit_events DROP COLUMN prev_hash;
ALTER TABLE audit_events DROP COLUMN request_id;
