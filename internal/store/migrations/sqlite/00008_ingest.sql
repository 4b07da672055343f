-- +goose Up
-- Last known state of each device, as it last reported it on its state
-- topic (JSON, protocol.StatePayload), written from the gateway's durable
-- JetStream consumer, never in a device's publish path.
ALTER TABLE devices ADD COLUMN last_state TEXT;
ALTER TABLE devices ADD COLUMN last_state_at TIMESTAMP;

-- Server commands sent to a device's cmd topic (gateway.Commands).
-- state: queued (not yet handed to the device's session), sent (in the
-- broker's inflight window), delivered (the device sent PUBACK), acked
-- (the device published an ack naming the command), expired, failed
-- (PUBACK with an error reason code). payload_hash is the SHA-256 (hex)
-- of the opaque command body; the message itself lives in message.
CREATE TABLE commands (
    id           TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES devices(id),
    payload_hash TEXT NOT NULL,
    message      TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP NOT NULL,
    state        TEXT NOT NULL,
    sent_at      TIMESTAMP,
    delivered_at TIMESTAMP,
    acked_at     TIMESTAMP,
    ack_payload  TEXT,
    error        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX commands_device_state ON commands (device_id, state);
CREATE INDEX commands_state_expires ON commands (state, expires_at);

-- +goose Down
DROP TABLE commands;
ALTER TABLE devices DROP COLUMN last_state_at;
ALTER TABLE devices DROP COLUMN last_state;
