-- +goose Up
-- API tokens carry roles (a subset of their creator's), optional sites and
-- an optional expiry. Tokens made before this keep the admin role.
ALTER TABLE api_tokens ADD COLUMN roles TEXT NOT NULL DEFAULT '["admin"]';
ALTER TABLE api_tokens ADD COLUMN sites TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_tokens ADD COLUMN expires_at TIMESTAMP;
ALTER TABLE api_tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE api_tokens DROP COLUMN created_by;
ALTER TABLE api_tokens DROP COLUMN expires_at;
ALTER TABLE api_tokens DROP COLUMN sites;
ALTER TABLE api_tokens DROP COLUMN roles;
