package enroll

import (
	"errors"
	"fmt"
	"net/http"
)

// Kinds of refusal. A refusal's error wraps exactly one of them.
var (
	ErrNoCertificate = errors.New("client certificate required")
	ErrForbidden     = errors.New("forbidden")
	ErrBadRequest    = errors.New("bad request")
	ErrTooLarge      = errors.New("request body too large")
	ErrMediaType     = errors.New("unsupported media type")
	ErrRateLimited   = errors.New("too many requests")
)

// refusal is a decision to refuse a request: a kind and the one-line reason
// that the device (and the audit log) is told.
type refusal struct {
	kind   error
	reason string
}

func (e *refusal) Error() string { return e.reason }
func (e *refusal) Unwrap() error { return e.kind }

func refuse(kind error, format string, args ...any) error {
	return &refusal{kind: kind, reason: fmt.Sprintf(format, args...)}
}

// statusOf is the one place where an enrollment error becomes an HTTP
// status. Anything that is not a refusal is an internal error.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNoCertificate):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrMediaType):
		return http.StatusUnsupportedMediaType
	case errors.Is(err, ErrRateLimited):
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// messageOf is what the client reads: the refusal's reason, or nothing
// about an internal error.
func messageOf(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	return "internal error; try again later"
}
