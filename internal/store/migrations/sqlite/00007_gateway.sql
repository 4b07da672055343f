-- +goose Up
-- Device connection history, written by the MQTT gateway: one row per
-- connection attempt that reached TLS, refused ones included (reason
-- refused_*, revoked, rate_limit, protocol_error; disconnected_at =
-- connected_at). device_id is empty when the peer could not be identified.
-- Rows are kept for the gateway's history retention (default 90 days).
CREATE TABLE device_connections (
    id              TEXT PRIMARY KEY,
    device_id       TEXT NOT NULL DEFAULT '',
    node            TEXT NOT NULL DEFAULT '',
    remote_addr     TEXT NOT NULL DEFAULT '',
    cert_serial     TEXT NOT NULL DEFAULT '',
    tls_version     TEXT NOT NULL DEFAULT '',
    cipher          TEXT NOT NULL DEFAULT '',
    mqtt_version    INTEGER NOT NULL DEFAULT 0,
    client_version  TEXT NOT NULL DEFAULT '',
    connected_at    TIMESTAMP NOT NULL,
    disconnected_at TIMESTAMP,
    duration_ms     INTEGER,
    reason          TEXT NOT NULL DEFAULT '',
    detail          TEXT NOT NULL DEFAULT '',
    refusals        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX device_connections_device ON device_connections (device_id, connected_at);
CREATE INDEX device_connections_at ON device_connections (connected_at);

-- +goose Down
DROP TABLE device_connections;
