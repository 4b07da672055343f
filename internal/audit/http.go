package audit

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"regexp"
)

// RequestIDHeader carries a request's id in both directions.
const RequestIDHeader = "X-Request-Id"

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{8,64}$`)

// Requests is HTTP middleware that gives every request an id — the
// caller's X-Request-Id when it is a sane token, else a new random one —
// echoes it in the response, and puts it and the client's address into the
// request's context for Append.
func Requests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !requestIDRE.MatchString(id) {
			var b [12]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set(RequestIDHeader, id)
		ctx := WithRequest(r.Context(), RequestInfo{ID: id, Source: r.RemoteAddr})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
