-- +goose Up
-- People's accounts. A local account has an argon2id password_hash; an
-- account linked to an OIDC provider has external_issuer and
-- external_subject and no password. TOTP seeds are sealed (AES-256-GCM, the
-- user id as additional data): totp_pending while enrolling, totp_seed once
-- confirmed. totp_last_step is the last time step accepted, so a code is
-- never accepted twice.
CREATE TABLE users (
    id                  TEXT PRIMARY KEY,
    username            TEXT NOT NULL UNIQUE,
    display_name        TEXT NOT NULL DEFAULT '',
    email               TEXT NOT NULL DEFAULT '',
    password_hash       TEXT NOT NULL DEFAULT '',
    roles               TEXT NOT NULL DEFAULT '[]',
    sites               TEXT NOT NULL DEFAULT '[]',
    disabled            BOOLEAN NOT NULL DEFAULT FALSE,
    totp_seed           BLOB,
    totp_pending        BLOB,
    totp_last_step      BIGINT NOT NULL DEFAULT 0,
    external_issuer     TEXT NOT NULL DEFAULT '',
    external_subject    TEXT NOT NULL DEFAULT '',
    failed_logins       INTEGER NOT NULL DEFAULT 0,
    locked_until        TIMESTAMP,
    created_at          TIMESTAMP NOT NULL,
    created_by          TEXT NOT NULL DEFAULT '',
    updated_at          TIMESTAMP NOT NULL,
    last_login_at       TIMESTAMP
);
CREATE UNIQUE INDEX users_external ON users (external_issuer, external_subject) WHERE external_issuer <> '';

-- Browser sessions. Only the SHA-256 of the cookie is kept; id is the
-- session's public name (audit log, listings).
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    cookie_hash  BLOB NOT NULL UNIQUE,
    user_id      TEXT NOT NULL REFERENCES users(id),
    created_at   TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP NOT NULL,
    mfa          BOOLEAN NOT NULL DEFAULT FALSE,
    method       TEXT NOT NULL,
    source       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- +goose Down
DROP TABLE sessions;
DROP TABLE users;
