package agent

// The EST client (RFC 7030, as docs/device-protocol.md §2–4 profiles it).

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"
)

// EST paths on the device listener.
const (
	pathCACerts        = "/.well-known/est/cacerts"
	pathSimpleEnroll   = "/.well-known/est/simpleenroll"
	pathSimpleReenroll = "/.well-known/est/simplereenroll"
)

// maxResponse bounds what the agent reads of an EST response.
const maxResponse = 256 << 10

// estError is a refusal or a failure of an EST request.
type estError struct {
	status     int           // HTTP status; 0: no response (network, TLS)
	retryAfter time.Duration // from Retry-After, on 202, 429 and 503
	msg        string        // Ward's one line for a person, or the transport error
	revoked    bool          // TLS bad_certificate alert: our client certificate was refused
}

func (e *estError) Error() string {
	switch {
	case e.revoked:
		return "the client certificate was refused at the TLS handshake (revoked or not trusted)"
	case e.status == 0:
		return e.msg
	case e.status == http.StatusAccepted:
		return "pending approval by a person at Ward"
	}
	return fmt.Sprintf("status %d: %s", e.status, e.msg)
}

// refused reports a decision that retrying will not change without a
// person (403, 401) or without a different request (400, 413, 415).
func (e *estError) refused() bool {
	return e.revoked || e.status == http.StatusForbidden || e.status == http.StatusUnauthorized ||
		e.status == http.StatusBadRequest || e.status == http.StatusRequestEntityTooLarge ||
		e.status == http.StatusUnsupportedMediaType
}

// dialContext opens a TCP connection as Config says.
func (a *Agent) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if a.cfg.Dial != nil {
		return a.cfg.Dial(ctx, network, addr)
	}
	d := net.Dialer{Timeout: a.cfg.PacketTimeout, LocalAddr: a.cfg.LocalAddr}
	return d.DialContext(ctx, network, addr)
}

// tlsConfig is the client side of Ward's device listeners: TLS 1.3, Ward's
// root, the agent's clock, and cert (if any) as client certificate. The
// server's name is Config.ServerName, or the host of addr.
func (a *Agent) tlsConfig(addr string, cert *tls.Certificate) *tls.Config {
	name := a.cfg.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(addr)
	}
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    a.cfg.Roots,
		ServerName: name,
		Time:       a.now,
	}
	if cert != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return c
}

// estDo sends one EST request and returns the body of a 200 response.
func (a *Agent) estDo(ctx context.Context, method, path string, cert *tls.Certificate, body []byte) ([]byte, error) {
	tr := &http.Transport{
		DialContext:         a.dialContext,
		TLSClientConfig:     a.tlsConfig(a.cfg.Server, cert),
		TLSHandshakeTimeout: a.cfg.PacketTimeout,
		DisableKeepAlives:   true,
		ForceAttemptHTTP2:   false,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PacketTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+a.cfg.Server+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/pkcs10")
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, &estError{msg: err.Error(), revoked: badCertificate(err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, &estError{msg: err.Error(), revoked: badCertificate(err)}
	}
	if resp.StatusCode != http.StatusOK {
		e := &estError{status: resp.StatusCode, msg: oneLine(b)}
		e.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), a.now())
		return nil, e
	}
	return b, nil
}

// badCertificate reports whether err is the TLS alert Ward sends for a
// client certificate it refuses at the handshake (revoked, expired, not
// Ward's).
func badCertificate(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" && op.Err != nil {
		s := op.Err.Error()
		return s == "tls: bad certificate" || s == "tls: revoked certificate" || s == "tls: expired certificate"
	}
	return err != nil && strings.Contains(err.Error(), "remote error: tls: bad certificate")
}

func oneLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.ToValidUTF8(s, "?")
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0
		}
		if n > 7*24*3600 {
			n = 7 * 24 * 3600
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// decodeCerts decodes a base64 certs-only PKCS#7 body.
func decodeCerts(body []byte) ([]*x509.Certificate, error) {
	der, err := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(body), nil)))
	if err != nil {
		return nil, fmt.Errorf("response is not base64: %w", err)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("response is not PKCS#7: %w", err)
	}
	if len(p7.Certificates) == 0 {
		return nil, errors.New("response holds no certificate")
	}
	return p7.Certificates, nil
}

// caCerts fetches Ward's CA certificates and returns those that chain to
// the provisioned root (the issuing CA, and the root itself).
func (a *Agent) caCerts(ctx context.Context) ([]*x509.Certificate, error) {
	body, err := a.estDo(ctx, http.MethodGet, pathCACerts, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("cacerts: %w", err)
	}
	certs, err := decodeCerts(body)
	if err != nil {
		return nil, fmt.Errorf("cacerts: %w", err)
	}
	inter := x509.NewCertPool()
	for _, c := range certs {
		inter.AddCert(c)
	}
	var ok []*x509.Certificate
	for _, c := range certs {
		if !c.IsCA {
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: a.cfg.Roots, Intermediates: inter, CurrentTime: a.now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			ok = append(ok, c)
		}
	}
	if len(ok) == 0 {
		return nil, errors.New("cacerts: no CA certificate chains to the provisioned root")
	}
	return ok, nil
}

// csr returns a base64 PKCS#10 request for the device key naming the
// device serial.
func (a *Agent) csr(key crypto.Signer) ([]byte, error) {
	a.rngMu.Lock()
	der, err := x509.CreateCertificateRequest(a.cfg.Rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: a.serial, SerialNumber: a.serial},
	}, key)
	a.rngMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	return []byte(base64.StdEncoding.EncodeToString(der)), nil
}

// enrollOnce runs one (re-)enrollment: path is simpleenroll (client
// certificate: the birth certificate) or simplereenroll (the current
// LDevID). It returns the new operational chain (LDevID, issuing CA),
// checked: it chains to the root, is for the device key, and names a Ward
// id.
func (a *Agent) enrollOnce(ctx context.Context, path string, client []*x509.Certificate) ([]*x509.Certificate, string, error) {
	key, err := a.cfg.Keys.Signer()
	if err != nil {
		return nil, "", err
	}
	cas, err := a.caCerts(ctx)
	if err != nil {
		return nil, "", err
	}
	body, err := a.csr(key)
	if err != nil {
		return nil, "", err
	}
	cert := tlsCert(client, key)
	resp, err := a.estDo(ctx, http.MethodPost, path, &cert, body)
	if err != nil {
		return nil, "", err
	}
	certs, err := decodeCerts(resp)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	inter := x509.NewCertPool()
	for _, c := range cas {
		inter.AddCert(c)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return nil, "", errors.New("device key has no comparable public key")
	}
	for _, c := range certs {
		if !pub.Equal(c.PublicKey) {
			continue
		}
		id, err := DeviceIDOf(c)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", path, err)
		}
		chains, err := c.Verify(x509.VerifyOptions{Roots: a.cfg.Roots, Intermediates: inter, CurrentTime: a.now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			return nil, "", fmt.Errorf("%s: the issued certificate does not chain to Ward's root: %w", path, err)
		}
		chain := []*x509.Certificate{c}
		// Send the issuing CA along: everything between leaf and root.
		if len(chains[0]) > 2 {
			chain = append(chain, chains[0][1:len(chains[0])-1]...)
		}
		return chain, id, nil
	}
	return nil, "", fmt.Errorf("%s: no certificate for the device key in the response", path)
}

func tlsCert(chain []*x509.Certificate, key crypto.Signer) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}
