-- +goose Up
-- WebAuthn credentials (security keys, passkeys) registered as a person's
-- second factor. id is the credential id the authenticator chose;
-- public_key is its COSE_Key. sign_count is the last signature counter
-- seen: an assertion that does not raise it (a cloned authenticator) is
-- refused. Nothing here is secret.
CREATE TABLE webauthn_credentials (
    id               BLOB PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key       BLOB NOT NULL,
    attestation_type TEXT NOT NULL DEFAULT '',
    attestation_fmt  TEXT NOT NULL DEFAULT '',
    aaguid           BLOB,
    sign_count       BIGINT NOT NULL DEFAULT 0,
    transports       TEXT NOT NULL DEFAULT '[]',
    user_verified    BOOLEAN NOT NULL DEFAULT FALSE,
    backup_eligible  BOOLEAN NOT NULL DEFAULT FALSE,
    backup_state     BOOLEAN NOT NULL DEFAULT FALSE,
    attachment       TEXT NOT NULL DEFAULT '',
    name             TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMP NOT NULL,
    last_used_at     TIMESTAMP
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

-- The one WebAuthn ceremony (registration or login) a session has under
-- way: the library's session data, challenge included, kept server-side so
-- that Finish may land on any node. Finish deletes it, so a challenge is
-- answered at most once.
CREATE TABLE webauthn_ceremonies (
    session_id  TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    expires_at  TIMESTAMP NOT NULL
);

-- OIDC logins under way: one row per redirect to the identity provider,
-- named by the SHA-256 of its state and bound to the browser that started
-- it by the SHA-256 of a cookie. The callback deletes it.
CREATE TABLE oidc_logins (
    state_hash   BLOB PRIMARY KEY,
    binding_hash BLOB NOT NULL,
    nonce        TEXT NOT NULL,
    verifier     TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP NOT NULL
);
CREATE INDEX oidc_logins_expires ON oidc_logins (expires_at);

-- +goose Down
DROP TABLE oidc_logins;
DROP TABLE webauthn_ceremonies;
DROP TABLE webauthn_credentials;
