package enroll

// The EST wire format (RFC 7030 §4, as clarified by RFC 8951): requests and
// responses are base64 of DER, whitespace and line breaks allowed in what we
// read, 64-character lines in what we write.

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/smallstep/pkcs7"

	"github.com/wardhq/ward/internal/pki"
)

// Media types.
const (
	mediaPKCS10    = "application/pkcs10"
	mediaCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	mediaPKCS7     = "application/pkcs7-mime"
	mediaCRL       = "application/pkix-crl"
)

// checkMediaType accepts application/pkcs10, with or without parameters.
func checkMediaType(ct string) error {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != mediaPKCS10 {
		return refuse(ErrMediaType, "Content-Type must be %s", mediaPKCS10)
	}
	return nil
}

// readBody reads at most limit bytes of the request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, refuse(ErrTooLarge, "request body larger than %d bytes", limit)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, refuse(ErrTooLarge, "request body larger than %d bytes", limit)
		}
		return nil, refuse(ErrBadRequest, "could not read the request body")
	}
	return b, nil
}

// parseCSR decodes an EST request body (base64 of a DER PKCS#10, line
// breaks and other whitespace allowed) and checks the request's self
// signature. Every error is a refusal wrapping ErrBadRequest.
func parseCSR(body []byte) (*pki.CSR, error) {
	der, err := decodeBase64(body)
	if err != nil {
		return nil, refuse(ErrBadRequest, "body is not base64: %v", err)
	}
	if len(der) == 0 {
		return nil, refuse(ErrBadRequest, "empty certificate request")
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse(ErrBadRequest, "body is not a PKCS#10 certificate request")
	}
	csr, err := pki.CheckCSR(req)
	if err != nil {
		return nil, refuse(ErrBadRequest, "certificate request signature does not verify")
	}
	return csr, nil
}

func decodeBase64(b []byte) ([]byte, error) {
	clean := make([]byte, 0, len(b))
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		clean = append(clean, c)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(out, clean)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// certsOnly returns the base64 body of a degenerate certs-only PKCS#7
// SignedData holding certs, in order.
func certsOnly(certs ...*x509.Certificate) ([]byte, error) {
	var der []byte
	for _, c := range certs {
		der = append(der, c.Raw...)
	}
	p7, err := pkcs7.DegenerateCertificate(der)
	if err != nil {
		return nil, err
	}
	return encodeBase64Lines(p7), nil
}

// encodeBase64Lines writes standard base64 in lines of 64 characters, each
// ending with CRLF, as MIME and OpenSSL's decoder expect.
func encodeBase64Lines(der []byte) []byte {
	s := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	b.Grow(len(s) + len(s)/64*2 + 2)
	for len(s) > 64 {
		b.WriteString(s[:64])
		b.WriteString("\r\n")
		s = s[64:]
	}
	b.WriteString(s)
	b.WriteString("\r\n")
	return []byte(b.String())
}

// writeCerts writes a 200 certs-only response.
func writeCerts(w http.ResponseWriter, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Transfer-Encoding", "base64")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// writeText writes a one-line text/plain response.
func writeText(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, strings.ReplaceAll(msg, "\n", " ")+"\n")
}
