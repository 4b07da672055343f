package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/store"
)

// people holds the components that authenticate and authorise people.
type people struct {
	users     *access.Users
	sessions  *access.Sessions
	webauthn  *access.WebAuthn // nil when not configured
	oidc      *access.OIDC     // nil when not configured
	approvals *access.Approvals
}

func openAccess(_ context.Context, cfg config.Config, log *slog.Logger, st *store.Store, al *audit.Log, now func() time.Time) (people, error) {
	var p people
	seal, err := loadOrCreateSealKey(cfg.SealKeyPath())
	if err != nil {
		return p, err
	}
	if p.users, err = access.NewUsers(access.UsersConfig{Store: st, Audit: al, SealKey: seal, Now: now}); err != nil {
		return p, err
	}
	p.sessions = access.NewSessions(access.SessionsConfig{Store: st, Users: p.users, Audit: al, Now: now,
		Idle: time.Duration(cfg.Access.SessionIdle), Absolute: time.Duration(cfg.Access.SessionAbsolute)})
	if w := cfg.Access.WebAuthn; w.RPID != "" {
		if p.webauthn, err = access.NewWebAuthn(access.WebAuthnConfig{Store: st, Users: p.users, Sessions: p.sessions, Audit: al,
			RPID: w.RPID, RPOrigins: w.Origins, Now: now}); err != nil {
			return p, err
		}
		log.Info("security keys (WebAuthn) enabled", "rp_id", w.RPID)
	}
	if o := cfg.Access.OIDC; o.Issuer != "" {
		var secret string
		if o.ClientSecretFile != "" {
			b, err := os.ReadFile(o.ClientSecretFile)
			if err != nil {
				return p, fmt.Errorf("server: oidc client secret: %w", err)
			}
			secret = strings.TrimSpace(string(b))
		}
		roleMap := map[string][]access.Role{}
		for group, names := range o.RoleMap {
			roles, err := access.ParseRoles(names)
			if err != nil {
				return p, fmt.Errorf("server: access.oidc.role_map[%s]: %w", group, err)
			}
			roleMap[group] = roles
		}
		if p.oidc, err = access.NewOIDC(access.OIDCConfig{
			Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret, RedirectURL: o.RedirectURL, Scopes: o.Scopes,
			GroupsClaim: o.GroupsClaim, RoleMap: roleMap, SiteMap: o.SiteMap, TrustIdPMFA: o.TrustIdPMFA,
			Store: st, Users: p.users, Sessions: p.sessions, Audit: al, Now: now,
		}); err != nil {
			return p, err
		}
		log.Info("single sign-on (OIDC) enabled", "issuer", o.Issuer)
	}
	p.approvals = access.NewApprovals(access.ApprovalsConfig{Store: st, Audit: al, Now: now, Logger: log.With("component", "approvals")})
	return p, nil
}

// loadOrCreateSealKey reads the 32-byte key that seals TOTP seeds, making
// it (mode 0600) on first start.
func loadOrCreateSealKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) != 32 {
			return nil, fmt.Errorf("server: seal key %s: want 32 bytes, found %d", path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("server: seal key: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("server: seal key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("server: seal key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, fmt.Errorf("server: seal key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("server: seal key: %w", err)
	}
	return key, f.Close()
}

// openCheckpointer loads (or creates) the audit checkpoint key, encrypted
// with the CA passphrase, and the checkpointer that uses it.
func openCheckpointer(cfg config.Config, log *slog.Logger, al *audit.Log, pass []byte, now func() time.Time) (*audit.Checkpointer, crypto.Signer, error) {
	key, err := audit.NewCheckpointKey(cfg.AuditKeyPath(), pass)
	if err != nil {
		return nil, nil, err
	}
	cp, err := audit.NewCheckpointer(audit.CheckpointerConfig{Log: al, Signer: key, Every: time.Duration(cfg.Audit.CheckpointEvery), Now: now,
		Logger: log.With("component", "audit")})
	if err != nil {
		return nil, nil, err
	}
	return cp, key, nil
}

// sweepSessions deletes ended sessions every ten minutes.
func (s *Server) sweepSessions(ctx context.Context) error {
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n, err := s.sessions.Sweep(ctx); err != nil {
				s.log.Warn("sweep sessions", "err", err)
			} else if n > 0 {
				s.log.Debug("swept sessions", "ended", n)
			}
		}
	}
}
