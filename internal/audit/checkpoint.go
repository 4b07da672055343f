package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

// ErrEmpty is returned when a checkpoint is asked of a log with no entries.
var ErrEmpty = errors.New("audit: the log is empty")

// Checkpoint is a signed statement that the chain ended at Seq with Hash.
type Checkpoint struct {
	Seq       int64     `json:"seq"`
	Hash      string    `json:"hash"`
	At        time.Time `json:"at"`
	KeyID     string    `json:"key_id"`
	Signature []byte    `json:"signature"`
}

// Statement is the exact text the checkpoint key signs.
func (c Checkpoint) Statement() []byte {
	return []byte("ward-audit-checkpoint v1\n" + strconv.FormatInt(c.Seq, 10) + "\n" + c.Hash + "\n" + c.At.UTC().Format(time.RFC3339Nano))
}

// CheckpointerConfig configures a Checkpointer.
type CheckpointerConfig struct {
	Log    *Log
	Signer crypto.Signer // Ed25519 or ECDSA; see NewCheckpointKey
	Every  time.Duration // how often Run looks for new entries; default 1m
	Now    func() time.Time
	Rand   io.Reader    // for ECDSA signatures; default crypto/rand
	Logger *slog.Logger // nil: discard
}

// Checkpointer signs the head of the chain: periodically in Run, or when
// asked with Checkpoint.
type Checkpointer struct {
	cfg   CheckpointerConfig
	keyID string
	log   *slog.Logger
}

// NewCheckpointer returns a Checkpointer; Log and Signer are required.
func NewCheckpointer(cfg CheckpointerConfig) (*Checkpointer, error) {
	if cfg.Log == nil || cfg.Signer == nil {
		return nil, errors.New("audit: checkpointer needs a log and a signer")
	}
	id, err := KeyID(cfg.Signer.Public())
	if err != nil {
		return nil, err
	}
	if cfg.Every <= 0 {
		cfg.Every = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	c := &Checkpointer{cfg: cfg, keyID: id, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// KeyID returns the id of the key that signs checkpoints.
func (c *Checkpointer) KeyID() string { return c.keyID }

// Run writes a checkpoint every Every when entries were appended since the
// last one, until ctx ends; then it writes a last one and returns nil. A
// failed checkpoint is logged and retried at the next tick.
func (c *Checkpointer) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			c.tick(fctx)
			return nil
		case <-t.C:
			c.tick(ctx)
		}
	}
}

func (c *Checkpointer) tick(ctx context.Context) {
	cp, wrote, err := c.checkpoint(ctx)
	switch {
	case errors.Is(err, ErrEmpty) || errors.Is(err, context.Canceled):
	case err != nil:
		c.log.WarnContext(ctx, "audit: checkpoint failed", "err", err)
	case wrote:
		c.log.DebugContext(ctx, "audit: checkpoint", "seq", cp.Seq, "key_id", cp.KeyID)
	}
}

// Checkpoint signs the current head of the chain unless the latest
// checkpoint already covers it, and returns the latest checkpoint. On an
// empty log it returns ErrEmpty.
func (c *Checkpointer) Checkpoint(ctx context.Context) (Checkpoint, error) {
	cp, _, err := c.checkpoint(ctx)
	return cp, err
}

func (c *Checkpointer) checkpoint(ctx context.Context) (cp Checkpoint, wrote bool, err error) {
	err = c.cfg.Log.st.Tx(ctx, func(tx *store.Tx) error {
		if tx.Dialect() == store.Postgres {
			// The appenders' lock: the head cannot move while it is signed,
			// and two nodes never sign the same head twice.
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, chainLockKey); err != nil {
				return fmt.Errorf("lock the chain: %w", err)
			}
		}
		seq, hash, err := head(ctx, tx)
		if err != nil {
			return err
		}
		if seq == 0 {
			return ErrEmpty
		}
		last, err := lastCheckpoint(ctx, tx)
		if err != nil {
			return err
		}
		if last.Seq >= seq {
			cp = last
			return nil
		}
		cp = Checkpoint{Seq: seq, Hash: hash, At: c.cfg.Now().UTC().Truncate(time.Microsecond), KeyID: c.keyID}
		if cp.Signature, err = sign(c.cfg.Signer, c.cfg.Rand, cp.Statement()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)`,
			cp.Seq, cp.Hash, cp.At, cp.KeyID, cp.Signature); err != nil {
			return err
		}
		wrote = true
		return nil
	})
	if err != nil && !errors.Is(err, ErrEmpty) {
		err = fmt.Errorf("audit: checkpoint: %w", err)
	}
	return cp, wrote, err
}

// lastCheckpoint returns the checkpoint with the highest seq, or a zero one.
func lastCheckpoint(ctx context.Context, q store.Querier) (Checkpoint, error) {
	var cp Checkpoint
	err := q.QueryRowContext(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1`).
		Scan(&cp.Seq, &cp.Hash, &cp.At, &cp.KeyID, &cp.Signature)
	if errors.Is(err, sql.ErrNoRows) {
		return Checkpoint{}, nil
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read the last checkpoint: %w", err)
	}
	cp.At = cp.At.UTC()
	return cp, nil
}

// Checkpoints returns up to limit checkpoints with seq > after, in order.
func (l *Log) Checkpoints(ctx context.Context, after int64, limit int) ([]Checkpoint, error) {
	var out []Checkpoint
	err := l.checkpoints(ctx, after, 1<<62, limit, func(cp Checkpoint) error {
		out = append(out, cp)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoints: %w", err)
	}
	return out, nil
}

func (l *Log) checkpoints(ctx context.Context, after, upTo int64, limit int, fn func(Checkpoint) error) error {
	rows, err := l.st.QueryContext(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?`, after, upTo, limit)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var cp Checkpoint
		if err := rows.Scan(&cp.Seq, &cp.Hash, &cp.At, &cp.KeyID, &cp.Signature); err != nil {
			return err
		}
		cp.At = cp.At.UTC()
		if err := fn(cp); err != nil {
			return err
		}
	}
	return rows.Err()
}

// sign signs msg: Ed25519 over the message itself, ECDSA over its SHA-256
// (ASN.1 DER signature).
func sign(s crypto.Signer, rnd io.Reader, msg []byte) ([]byte, error) {
	switch s.Public().(type) {
	case ed25519.PublicKey:
		return s.Sign(rnd, msg, crypto.Hash(0))
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return s.Sign(rnd, d[:], crypto.SHA256)
	}
	return nil, fmt.Errorf("unsupported checkpoint key %T: use Ed25519 or ECDSA", s.Public())
}

// verifySignature checks a checkpoint signature made by sign.
func verifySignature(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, d[:], sig)
	}
	return false
}

// KeyID names a checkpoint key: "SHA256:" and the hex SHA-256 of the
// public key's PKIX (SubjectPublicKeyInfo) DER.
func KeyID(pub crypto.PublicKey) (string, error) {
	switch pub.(type) {
	case ed25519.PublicKey, *ecdsa.PublicKey:
	default:
		return "", fmt.Errorf("audit: unsupported checkpoint key %T: use Ed25519 or ECDSA", pub)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("audit: checkpoint key: %w", err)
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + hex.EncodeToString(sum[:]), nil
}

// NewCheckpointKey loads the checkpoint key at path, or creates an Ed25519
// one there (mode 0600) if there is none. The file is encrypted with
// passphrase unless passphrase is nil.
func NewCheckpointKey(path string, passphrase []byte) (crypto.Signer, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		k, err := pki.ReadKeyFile(path, passphrase)
		if errors.Is(err, pki.ErrBadPassphrase) {
			return nil, fmt.Errorf("audit: checkpoint key %s: wrong passphrase or damaged key", path)
		}
		if err != nil {
			return nil, fmt.Errorf("audit: checkpoint key: %w", err)
		}
		if _, err := KeyID(k.Public()); err != nil {
			return nil, err
		}
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	if err := pki.WriteKeyFile(path, k, passphrase); err != nil {
		return nil, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	return k, nil
}
