-- +goose Up
-- Two-person rule: a critical action is a request that a second person
-- approves or rejects before its deadline. params and result are JSON.
-- requester_creator is the creator of the requesting token (empty for a
-- person), so that neither can approve the other's request.
CREATE TABLE approvals (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    params            TEXT NOT NULL DEFAULT '{}',
    summary           TEXT NOT NULL DEFAULT '',
    requested_by      TEXT NOT NULL,
    requester_creator TEXT NOT NULL DEFAULT '',
    requested_at      TIMESTAMP NOT NULL,
    deadline          TIMESTAMP NOT NULL,
    state             TEXT NOT NULL,
    decided_by        TEXT NOT NULL DEFAULT '',
    decided_at        TIMESTAMP,
    reason            TEXT NOT NULL DEFAULT '',
    result            TEXT,
    error             TEXT NOT NULL DEFAULT '',
    executed_at       TIMESTAMP
);
CREATE INDEX approvals_state ON approvals (state, deadline);

-- A removed manufacturer stays on record (devices refer to it) but its CA
-- is no longer trusted.
ALTER TABLE manufacturers ADD COLUMN revoked_at TIMESTAMP;

-- +goose Down
ALTER TABLE manufacturers DROP COLUMN revoked_at;
DROP TABLE approvals;
