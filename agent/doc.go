// Package agent is Ward's device SDK: the device side of the contract in
// docs/device-protocol.md, for a device maker to build into firmware. It
// holds the security logic (keys, certificates, enrollment, renewal, the
// MQTT session); the product holds the medicine, behind the Device
// interface. It imports nothing of Ward's server: the standard library,
// golang.org/x, paho.golang (MQTT 5), smallstep/pkcs7 and Ward's public
// protocol package.
//
// # Parties, keys and trust
//
//   - The device generates its key itself (KeyStore.Signer: ECDSA P-256) and
//     never exports it. FileKeyStore keeps it in a 0600 PKCS#8 file; a secure
//     element or TPM implements KeyStore with the key inside the chip;
//     MemKeyStore is for simulators and tests. The one key serves the birth
//     certificate and every operational certificate.
//   - The manufacturer's factory signs a birth certificate (IDevID) for that
//     key, with the device serial in the subject, and stores it in the key
//     store as CertBirth. It proves "manufacturer M made serial S".
//   - Ward's root CA certificate is provisioned at installation
//     (Config.Roots). It is the only trust anchor: Ward's listeners and every
//     certificate Ward issues must chain to it; /cacerts is read for the
//     issuing CA but never replaces the root.
//   - Ward issues the operational certificate (LDevID, CertOperational) over
//     EST. Its URI SAN ward://device/<id> is the device's Ward id, which is
//     also its MQTT client id and its topic namespace ward/v1/d/<id>/….
//
// # States
//
//	new ──▶ enrolling ──▶ pending ──▶ enrolled ──▶ connected
//	            │  ▲  (202, Retry-After)  ▲  │         │
//	            ▼  │                      │  └─────────┘ connection lost: backoff, reconnect
//	          refused (403: needs a person; retried with backoff)
//
// enrolling: POST /.well-known/est/simpleenroll with the birth certificate
// as TLS client certificate and a CSR (serialNumber = the device serial)
// signed by the device key. 200 → enrolled; 202 → pending: wait Retry-After
// seconds (never longer than BackoffMax, never shorter than the backoff of
// that attempt) and ask again; 403 → refused; anything else → backoff.
//
// enrolled → connected: MQTT 5 over TLS 1.3 to Config.MQTT with the LDevID,
// client id = the Ward id, clean start, user property software_version. The
// agent subscribes to its cmd topic, publishes Device.State retained on its
// state topic, then publishes state again whenever it changes,
// Device.Telemetry every TelemetryInterval and the events queued with
// Agent.Event, all at QoS 1, paced below Ward's per-device rate limit.
//
// # Renewal and fallback
//
// When RenewBefore of the LDevID's lifetime remains (default: a third, that
// is after day 5 of 7) the agent re-enrolls with simplereenroll, presenting
// the current LDevID, with the same device key. The new certificate must
// chain to the root and name the same Ward id; it is stored, and the session
// reconnects with it. Renewal needs only the EST listener, so it is also
// tried while MQTT is out of reach. A failed renewal is retried with backoff
// while the old certificate stays in use. If the LDevID expired (the device was off, or Ward
// was unreachable for days), or Ward refused it at a handshake (revoked),
// the agent falls back to simpleenroll with the birth certificate, which
// Ward's policy grants without a person only to an active or quarantined
// device; a refusal is logged and retried with backoff.
//
// Connections are retried with exponential backoff and full jitter
// (Backoff: uniformly random in [BackoffMin, min(BackoffMax,
// BackoffMin·2^n)], default 1 s to 5 min), so a fleet that lost Ward does
// not come back in one storm. The count starts again once a connection has
// stayed up for ten times BackoffMin.
//
// # Events, refusals and quarantine
//
// Events wait in a FIFO bounded by BufferLimit and leave it only when Ward
// acknowledged them (PUBACK success): nothing is lost while the agent is
// offline, up to the bound; beyond it the oldest event is dropped and counted
// (Status.Dropped). Delivery is at least once (a PUBACK lost with the
// connection means a resend); events carry a boot id and a sequence number
// to spot repeats. The buffer is in memory: it survives outages, not a
// reboot of the device. A refused event is handled by the PUBACK reason code: rate,
// quota, not authorized or a server error keep it at the head of the queue
// and retry it with backoff (no spinning); "packet too large" or "payload
// format invalid" can never succeed, so it is dropped, counted in
// Status.Rejected and logged.
//
// A quarantined device stays connected and may still publish state and
// events; Ward refuses its telemetry and acks with "not authorized" (0x87).
// The agent then reports Status.Quarantined, tries telemetry only every
// QuarantineProbe to learn of the release, and keeps events flowing.
//
// # Safe by default
//
// The agent never calls into the Device to stop or change therapy, and no
// security condition makes it do so (DESIGN.md §4.1–2): Ward unreachable,
// an expired or refused certificate, quarantine, revocation — the agent
// keeps retrying in the background and the device keeps running its current
// therapy on its last-known-good software and drug library. The agent only
// reads the Device (State, Telemetry; Idle is reserved for updates). Run
// returns only when its context ends.
//
// # Commands and updates
//
// Verified commands (signed envelopes) and TUF-verified updates come in
// later versions; then the agent will call the Device's Commander and
// Updater. This version verifies neither: it calls no product code for
// them. A simulator or test that wants the raw messages of the cmd topic
// sets Config.OnCommand (documented there as unverified); the agent answers
// every command on the ack topic.
//
// # Example
//
//	keys, err := agent.NewFileKeyStore("/var/lib/pump/ward")
//	// At the factory: keys.Signer() creates the key; the manufacturer CA
//	// signs a birth certificate for its public key; then
//	// keys.PutCertificate(agent.CertBirth, []*x509.Certificate{birth}).
//	roots := x509.NewCertPool()
//	roots.AppendCertsFromPEM(wardRootPEM) // provisioned at installation
//	a, err := agent.New(agent.Config{
//		Server: "ward.hospital.example:8443",
//		MQTT:   "ward.hospital.example:8883",
//		Roots:  roots,
//		Keys:   keys,
//		Device: pump, // implements agent.Device
//		Logger: slog.Default(),
//	})
//	go a.Run(ctx)
//	// The product goes on infusing; it reports what happens:
//	a.Event("occlusion_alarm", map[string]any{"line": "A"})
//	a.StateChanged()
package agent
