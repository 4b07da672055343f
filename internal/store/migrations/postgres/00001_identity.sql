-- +goose Up
-- Manufacturers whose device birth certificates (IDevID) Ward trusts.
CREATE TABLE manufacturers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    ca_pem      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL
);

-- The device registry. A device is named by its Ward id; (manufacturer, serial)
-- is its identity from birth.
CREATE TABLE devices (
    id               TEXT PRIMARY KEY,
    manufacturer_id  TEXT NOT NULL REFERENCES manufacturers(id),
    serial           TEXT NOT NULL,
    model            TEXT NOT NULL DEFAULT '',
    site             TEXT NOT NULL DEFAULT '',
    unit             TEXT NOT NULL DEFAULT '',
    tags             TEXT NOT NULL DEFAULT '[]',
    state            TEXT NOT NULL,
    state_reason     TEXT NOT NULL DEFAULT '',
    approved_at      TIMESTAMPTZ,
    approved_by      TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    last_seen_at     TIMESTAMPTZ,
    enroll_requested_at TIMESTAMPTZ,
    cert_serial      TEXT NOT NULL DEFAULT '',
    cert_not_after   TIMESTAMPTZ,
    UNIQUE (manufacturer_id, serial)
);
CREATE INDEX devices_state ON devices (state);

-- Every operational certificate (LDevID) Ward has issued.
CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL REFERENCES devices(id),
    issued_at         TIMESTAMPTZ NOT NULL,
    not_before        TIMESTAMPTZ NOT NULL,
    not_after         TIMESTAMPTZ NOT NULL,
    revoked_at        TIMESTAMPTZ,
    revocation_reason INTEGER NOT NULL DEFAULT 0,
    der               BYTEA NOT NULL
);
CREATE INDEX certificates_device ON certificates (device_id);
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

-- Bearer tokens for the admin API. Only a hash of the secret is kept.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

-- Audit log: who did what, when, with which outcome.
CREATE TABLE audit_events (
    seq        BIGSERIAL PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL DEFAULT '',
    outcome    TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL DEFAULT '',
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_target ON audit_events (target);

-- +goose Down
DROP TABLE audit_events;
DROP TABLE api_tokens;
DROP TABLE certificates;
DROP TABLE devices;
DROP TABLE manufacturers;
