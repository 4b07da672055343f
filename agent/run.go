package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// DeviceIDOf returns the Ward id that an operational certificate names in
// its one URI subject alternative name ward://device/<id>.
func DeviceIDOf(c *x509.Certificate) (string, error) {
	var found *url.URL
	for _, u := range c.URIs {
		if u == nil || u.Scheme != "ward" {
			continue
		}
		if found != nil {
			return "", errors.New("agent: more than one ward:// URI in the certificate")
		}
		found = u
	}
	if found == nil || found.Host != "device" || found.Opaque != "" || found.User != nil ||
		found.RawQuery != "" || found.Fragment != "" || len(found.Path) < 2 || found.Path[0] != '/' {
		return "", errors.New("agent: the certificate names no ward://device/<id>")
	}
	id := found.Path[1:]
	if !validID(id) {
		return "", errors.New("agent: malformed device id in the certificate")
	}
	return id, nil
}

// Reasons a session ends without a network failure.
var (
	errRenewed     = errors.New("operational certificate renewed")
	errExpired     = errors.New("operational certificate expired")
	errCertRefused = errors.New("operational certificate refused (revoked, banned or not trusted)")
)

// ErrRunning is returned by a second concurrent Run.
var ErrRunning = errors.New("agent: already running")

// Run enrolls the device if needed, then keeps its MQTT session up until
// ctx ends; it returns nil then. Run never gives up on its own: every
// failure is retried with backoff (see the package doc), and it never calls
// into the Device to stop anything.
func (a *Agent) Run(ctx context.Context) error {
	started := false
	a.runOnce.Do(func() { started = true })
	if !started {
		return ErrRunning
	}
	defer func() {
		a.mu.Lock()
		a.connected = false
		if a.phase == PhaseConnected {
			a.phase = PhaseEnrolled
		}
		a.mu.Unlock()
	}()
	cmds := make(chan []byte, 16)
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		a.commandWorker(ctx, cmds)
	}()
	defer func() { <-workerDone }()

	attempt := 0
	for {
		op, err := a.ensureEnrolled(ctx)
		if err != nil {
			return nil // ctx ended
		}
		// Renewal needs only the EST listener: try it even when MQTT is
		// out of reach.
		switch err := a.maybeRenew(ctx, op); {
		case errors.Is(err, errRenewed):
			continue
		case errors.Is(err, errCertRefused):
			a.mu.Lock()
			a.opRefused = true
			a.mu.Unlock()
			continue
		case ctx.Err() != nil:
			return nil
		}
		up, err := a.session(ctx, op, cmds)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case errors.Is(err, errRenewed):
			attempt = 0
			continue // reconnect at once with the new certificate
		case errors.Is(err, errExpired):
			a.log.Warn("agent: operational certificate expired; enrolling again with the birth certificate",
				"device", a.DeviceID())
			continue
		case errors.Is(err, errCertRefused):
			a.mu.Lock()
			a.opRefused = true
			a.mu.Unlock()
			a.log.Error("agent: Ward refused the operational certificate; falling back to the birth certificate (policy may refuse); the device keeps running",
				"device", a.DeviceID(), "err", err)
		}
		if up >= 10*a.cfg.BackoffMin {
			attempt = 0
		}
		a.setErr(err)
		d := a.backoff(attempt)
		attempt++
		a.log.Warn("agent: MQTT session ended; reconnecting with backoff", "device", a.DeviceID(),
			"err", err, "attempt", attempt, "delay", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// usable reports whether the operational chain can be used now.
func (a *Agent) usable() ([]*x509.Certificate, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.op) == 0 || a.opRefused || !a.now().Before(a.op[0].NotAfter) {
		return nil, false
	}
	return a.op, true
}

// ensureEnrolled returns a usable operational chain, enrolling with the
// birth certificate (simpleenroll) until it gets one. It returns an error
// only when ctx ends.
func (a *Agent) ensureEnrolled(ctx context.Context) ([]*x509.Certificate, error) {
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if op, ok := a.usable(); ok {
			a.mu.Lock()
			if a.phase != PhaseConnected {
				a.phase = PhaseEnrolled
			}
			a.mu.Unlock()
			return op, nil
		}
		delay := a.backoff(attempt)
		birth, err := a.cfg.Keys.Certificate(CertBirth)
		if err != nil {
			a.setPhase(PhaseRefused)
			a.setErr(fmt.Errorf("cannot enroll: %w", err))
			a.log.Error("agent: no usable operational certificate and no birth certificate to enroll with; the device keeps running",
				"err", err, "retry_in", delay.Round(time.Millisecond))
			if !sleep(ctx, delay) {
				return nil, ctx.Err()
			}
			continue
		}
		a.mu.Lock()
		prev := a.phase
		if prev != PhasePending && prev != PhaseRefused {
			a.phase = PhaseEnrolling // pending and refused stay until Ward answers otherwise
		}
		a.mu.Unlock()
		chain, id, err := a.enrollOnce(ctx, pathSimpleEnroll, birth)
		if err == nil {
			a.adopt(chain, id, false)
			a.log.Info("agent: enrolled", "device", id, "serial", a.serial, "not_after", chain[0].NotAfter)
			continue // usable() now answers
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		a.setErr(err)
		var ee *estError
		switch {
		case errors.As(err, &ee) && ee.status == http.StatusAccepted:
			a.setPhase(PhasePending)
			delay = max(delay, min(ee.retryAfter, a.cfg.BackoffMax))
			a.log.Info("agent: waiting for a person at Ward to approve the device", "serial", a.serial,
				"retry_in", delay.Round(time.Millisecond))
		case errors.As(err, &ee) && ee.refused():
			a.setPhase(PhaseRefused)
			level := slog.LevelError // once, then quieter while nothing changes
			if prev == PhaseRefused {
				level = slog.LevelInfo
			}
			a.log.Log(ctx, level, "agent: Ward refused enrollment with the birth certificate; a person must act; retrying with backoff, the device keeps running",
				"serial", a.serial, "err", err, "retry_in", delay.Round(time.Millisecond))
		case errors.As(err, &ee) && ee.retryAfter > 0:
			delay = max(delay, min(ee.retryAfter, a.cfg.BackoffMax))
			a.log.Warn("agent: enrollment failed", "serial", a.serial, "err", err, "retry_in", delay.Round(time.Millisecond))
		default:
			a.log.Warn("agent: enrollment failed", "serial", a.serial, "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		if !sleep(ctx, delay) {
			return nil, ctx.Err()
		}
	}
}

// adopt makes chain the operational certificate and stores it.
func (a *Agent) adopt(chain []*x509.Certificate, id string, renewal bool) {
	if err := a.cfg.Keys.PutCertificate(CertOperational, chain); err != nil {
		// Keep using it from memory: the device stays online; after a
		// restart it enrolls again.
		a.log.Error("agent: could not store the operational certificate", "err", err)
	}
	a.mu.Lock()
	if a.deviceID != "" && a.deviceID != id {
		a.log.Warn("agent: Ward admitted the device under a new id", "old", a.deviceID, "new", id)
	}
	a.op, a.deviceID, a.opRefused = chain, id, false
	if renewal {
		a.renewals++
	}
	a.lastErr = ""
	a.mu.Unlock()
}

// renewAt is when the operational certificate c should be renewed:
// RenewBefore before it expires, at most half its lifetime before.
func (a *Agent) renewAt(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	before := a.cfg.RenewBefore
	if before == 0 {
		before = life / 3
	}
	return c.NotAfter.Add(-min(before, life/2))
}

// maybeRenew renews op if it is due and no failed attempt asks to wait.
// It returns errRenewed when the agent holds a new certificate,
// errCertRefused when Ward refused the current one, and nil otherwise
// (a failure to reach Ward is retried later with backoff).
func (a *Agent) maybeRenew(ctx context.Context, op []*x509.Certificate) error {
	now := a.now()
	a.mu.Lock()
	wait := a.renewRetryAt
	a.mu.Unlock()
	if now.Before(a.renewAt(op[0])) || now.Before(wait) {
		return nil
	}
	err := a.renew(ctx, op)
	if err == nil {
		a.mu.Lock()
		a.renewAttempt = 0
		a.renewRetryAt = time.Time{}
		if cur := a.op[0]; !a.now().Before(a.renewAt(cur)) {
			// Due at once: the clocks disagree by more than half a
			// lifetime. Do not renew in a loop.
			a.renewRetryAt = a.now().Add(a.cfg.BackoffMax)
			a.log.Warn("agent: the new certificate is already due for renewal; is the device clock right?",
				"not_before", cur.NotBefore, "not_after", cur.NotAfter, "device_time", a.now())
		}
		a.mu.Unlock()
		return errRenewed
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *estError
	if errors.As(err, &ee) && ee.refused() {
		a.log.Error("agent: Ward refused to renew the operational certificate", "device", a.DeviceID(), "err", err)
		return fmt.Errorf("simplereenroll: %v: %w", err, errCertRefused)
	}
	d := a.backoff(a.renewAttempt)
	a.mu.Lock()
	a.renewAttempt++
	a.renewRetryAt = now.Add(d)
	a.mu.Unlock()
	a.setErr(err)
	a.log.Warn("agent: renewal failed; keeping the current certificate and retrying", "device", a.DeviceID(),
		"err", err, "retry_in", d.Round(time.Millisecond), "not_after", op[0].NotAfter)
	return nil
}

// renew re-enrolls with the current LDevID. The new certificate must name
// the same Ward id.
func (a *Agent) renew(ctx context.Context, op []*x509.Certificate) error {
	chain, id, err := a.enrollOnce(ctx, pathSimpleReenroll, op)
	if err != nil {
		return err
	}
	if cur := a.DeviceID(); id != cur {
		return fmt.Errorf("simplereenroll: Ward issued a certificate for %s, not for this device (%s)", id, cur)
	}
	a.adopt(chain, id, true)
	a.log.Info("agent: operational certificate renewed", "device", id, "not_after", chain[0].NotAfter)
	return nil
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
