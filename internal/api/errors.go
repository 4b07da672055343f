package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
)

const internalDetail = "internal error; the server log has the cause"

// status maps a domain error to its HTTP status. This is the only place that
// does so; 500 means "not a domain error".
func status(err error) int {
	switch {
	case errors.Is(err, access.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, access.ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, access.ErrLocked):
		return http.StatusTooManyRequests
	case errors.Is(err, fleet.ErrNotFound), errors.Is(err, access.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, fleet.ErrInvalid), errors.Is(err, access.ErrInvalid):
		return http.StatusUnprocessableEntity
	case errors.Is(err, fleet.ErrConflict), errors.Is(err, fleet.ErrState), errors.Is(err, fleet.ErrAmbiguous),
		errors.Is(err, access.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, pki.ErrNotInitialised), errors.Is(err, access.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// problem turns any error a handler returns into an RFC 9457 problem. Domain
// errors keep their message, without package prefixes; anything else is
// logged and answered with a generic 500.
func (s *server) problem(ctx context.Context, err error) huma.StatusError {
	var se huma.StatusError
	if errors.As(err, &se) {
		return se
	}
	code := status(err)
	if code == http.StatusUnauthorized {
		// Say nothing about why: unknown, revoked and mistyped look alike.
		return huma.NewError(code, "authentication required: an API token (Authorization: Bearer <token>) or a session")
	}
	if code == http.StatusInternalServerError {
		if errors.Is(err, context.Canceled) {
			return huma.NewError(http.StatusServiceUnavailable, "request cancelled")
		}
		s.log.ErrorContext(ctx, "api: request failed", "err", err)
		return huma.NewError(code, internalDetail)
	}
	return huma.NewError(code, publicMessage(err))
}

// publicMessage is the domain error's text without the "fleet: " style
// prefixes that wrapping accumulates.
func publicMessage(err error) string {
	msg := err.Error()
	for _, p := range []string{"fleet: ", "access: ", "pki: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return msg
}
