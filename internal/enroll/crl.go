package enroll

import (
	"context"
	"math/big"
	"net/http"
	"strconv"
	"sync"
	"time"
)

const (
	crlMaxAge     = time.Hour      // rebuilt at least this often
	crlNextUpdate = 24 * time.Hour // NextUpdate promised to relying parties
)

// crlCache holds the last CRL built. It is rebuilt when the registry's
// revocation generation moves or it is older than crlMaxAge. The CRL number
// is the Unix time of the build, bumped if needed so it always grows.
type crlCache struct {
	mu      sync.Mutex
	der     []byte
	gen     uint64
	builtAt time.Time
	number  int64
}

func (s *Server) currentCRL(ctx context.Context) ([]byte, time.Time, error) {
	c := &s.crl
	c.mu.Lock()
	defer c.mu.Unlock()
	now := s.now()
	gen := s.fleet.RevocationGeneration() // read before the rows: a change during the build triggers another
	if c.der != nil && gen == c.gen && now.Sub(c.builtAt) < crlMaxAge {
		return c.der, c.builtAt, nil
	}
	entries, err := s.fleet.RevokedEntries(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	number := max(now.Unix(), c.number+1)
	der, err := s.ca.CRL(entries, big.NewInt(number), crlNextUpdate)
	if err != nil {
		return nil, time.Time{}, err
	}
	c.der, c.gen, c.builtAt, c.number = der, gen, now, number
	return der, now, nil
}

func (s *Server) serveCRL(w http.ResponseWriter, r *http.Request) {
	der, built, err := s.currentCRL(r.Context())
	if err != nil {
		s.log.Error("enroll: build CRL", "err", err)
		writeText(w, http.StatusInternalServerError, messageOf(err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", mediaCRL)
	h.Set("Content-Length", strconv.Itoa(len(der)))
	h.Set("Last-Modified", built.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", "max-age=60")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(der)
}
