package access

// # TOTP
//
// RFC 6238 with the parameters every authenticator app supports: HMAC-SHA1,
// six digits, 30-second steps, a 160-bit seed. A code is accepted for the
// current step and one step either side (clock skew), and only for a step
// later than the last one accepted (users.totp_last_step, advanced with a
// compare-and-set so two nodes cannot both accept it): a code, once used, is
// refused, and so is any older one.
//
// Seeds are sealed at rest with AES-256-GCM under UsersConfig.SealKey, with a
// random 96-bit nonce and "ward/totp-seed/v1 <user id>" as additional data,
// so a sealed seed copied to another account does not open. The store holds
// nonce‖ciphertext‖tag; the base32 seed appears only once, in the answer to
// BeginTOTP, for the person to load into their app.
//
// Enrolment is two steps: BeginTOTP stores a pending seed (replacing any
// earlier pending one), ConfirmTOTP checks a code from it and makes it the
// account's seed. A wrong code counts as a failed login (lockout applies).

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// TOTP parameters.
const (
	TOTPIssuer = "Ward"
	totpPeriod = 30
	totpSkew   = 1
)

var totpOpts = hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

func sealAD(userID string) []byte { return []byte("ward/totp-seed/v1 " + userID) }

func (u *Users) aead() (cipher.AEAD, error) {
	b, err := aes.NewCipher(u.sealKey)
	if err != nil {
		return nil, fmt.Errorf("access: seal key: %w", err)
	}
	return cipher.NewGCM(b)
}

func (u *Users) seal(userID, seed string) ([]byte, error) {
	a, err := u.aead()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(seed)+a.Overhead())
	if _, err := io.ReadFull(u.rand, nonce); err != nil {
		return nil, fmt.Errorf("access: seal: %w", err)
	}
	return a.Seal(nonce, nonce, []byte(seed), sealAD(userID)), nil
}

func (u *Users) unseal(userID string, sealed []byte) (string, error) {
	a, err := u.aead()
	if err != nil {
		return "", err
	}
	if len(sealed) < a.NonceSize()+a.Overhead() {
		return "", errors.New("access: sealed TOTP seed is too short")
	}
	seed, err := a.Open(nil, sealed[:a.NonceSize()], sealed[a.NonceSize():], sealAD(userID))
	if err != nil {
		return "", errors.New("access: sealed TOTP seed does not open under this seal key")
	}
	return string(seed), nil
}

// BeginTOTP makes a new TOTP seed for the account, pending until
// ConfirmTOTP. It returns the base32 seed and its otpauth:// URL, to show
// once.
func (u *Users) BeginTOTP(ctx context.Context, userID string) (secret, otpauthURL string, err error) {
	x, err := u.Get(ctx, userID)
	if err != nil {
		return "", "", err
	}
	if x.Disabled {
		return "", "", fmt.Errorf("access: totp: %w: account is disabled", ErrForbidden)
	}
	key, err := totp.Generate(totp.GenerateOpts{Issuer: TOTPIssuer, AccountName: x.Username, Period: totpPeriod,
		SecretSize: 20, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, Rand: u.rand})
	if err != nil {
		return "", "", fmt.Errorf("access: totp: %w", err)
	}
	sealed, err := u.seal(x.ID, key.Secret())
	if err != nil {
		return "", "", err
	}
	now := u.now().UTC()
	err = u.st.Tx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET totp_pending = ?, updated_at = ? WHERE id = ?`, sealed, now, x.ID); err != nil {
			return fmt.Errorf("access: totp: %w", err)
		}
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: x.Actor(), Action: "user.totp.begin", Target: x.Actor(), Outcome: audit.Success,
			Detail: map[string]any{"username": x.Username}})
	})
	if err != nil {
		return "", "", err
	}
	return key.Secret(), key.URL(), nil
}

// matchStep returns the time step within the skew window whose code is code.
func matchStep(seed, code string, now time.Time) (uint64, bool) {
	if len(code) != int(otp.DigitsSix) {
		return 0, false
	}
	cur := uint64(now.Unix()) / totpPeriod
	var found uint64
	ok := 0
	for d := -totpSkew; d <= totpSkew; d++ {
		step := uint64(int64(cur) + int64(d))
		want, err := hotp.GenerateCodeCustom(seed, step, totpOpts)
		if err != nil {
			return 0, false
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && ok == 0 {
			found, ok = step, 1
		}
	}
	return found, ok == 1
}

// ConfirmTOTP checks code against the pending seed and, if it matches, makes
// the seed the account's second factor.
func (u *Users) ConfirmTOTP(ctx context.Context, userID, code string) error {
	return u.checkTOTP(ctx, userID, code, true)
}

// VerifyTOTP checks a code of the account's TOTP seed. A step once used is
// refused. A wrong code counts as a failed login; a locked account is
// ErrLocked.
func (u *Users) VerifyTOTP(ctx context.Context, userID, code string) error {
	return u.checkTOTP(ctx, userID, code, false)
}

func (u *Users) checkTOTP(ctx context.Context, userID, code string, pending bool) error {
	now := u.now().UTC()
	var (
		id, name    string
		seed, pend  []byte
		lastStep    int64
		disabled    bool
		lockedUntil sql.NullTime
	)
	err := u.st.QueryRowContext(ctx, `SELECT id, username, totp_seed, totp_pending, totp_last_step, disabled, locked_until FROM users WHERE id = ?`, userID).
		Scan(&id, &name, &seed, &pend, &lastStep, &disabled, &lockedUntil)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("access: totp: user %q: %w", userID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("access: totp: %w", err)
	}
	if disabled {
		return fmt.Errorf("access: totp: %w", ErrUnauthenticated)
	}
	if lockedUntil.Valid && now.Before(lockedUntil.Time) {
		return lockedError(lockedUntil.Time)
	}
	sealed := seed
	if pending {
		sealed = pend
	}
	if len(sealed) == 0 {
		if pending {
			return fmt.Errorf("access: totp: %w: no enrolment in progress; begin one first", ErrConflict)
		}
		return fmt.Errorf("access: totp: %w: no TOTP enrolled", ErrConflict)
	}
	secret, err := u.unseal(id, sealed)
	if err != nil {
		return err
	}
	action := "user.totp"
	if pending {
		action = "user.totp.confirm"
	}
	step, ok := matchStep(secret, code, now)
	if ok && int64(step) > lastStep {
		var res sql.Result
		err := u.st.Tx(ctx, func(tx *store.Tx) error {
			var err error
			if pending {
				res, err = tx.ExecContext(ctx, `UPDATE users SET totp_seed = totp_pending, totp_pending = NULL, totp_last_step = ?, failed_logins = 0, updated_at = ?
					WHERE id = ? AND totp_last_step < ? AND totp_pending = ?`, int64(step), now, id, int64(step), sealed)
			} else {
				res, err = tx.ExecContext(ctx, `UPDATE users SET totp_last_step = ?, failed_logins = 0 WHERE id = ? AND totp_last_step < ?`, int64(step), id, int64(step))
			}
			if err != nil {
				return fmt.Errorf("access: totp: %w", err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return errReplay
			}
			if !pending {
				return nil
			}
			return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: KindUser + ":" + id, Action: action, Target: KindUser + ":" + id, Outcome: audit.Success,
				Detail: map[string]any{"username": name}})
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, errReplay) {
			return err
		}
	}
	reason := "wrong TOTP code"
	if ok {
		reason = "TOTP code already used"
	}
	if err := u.failed(ctx, id, name, reason, "", now); err != nil {
		return err
	}
	return fmt.Errorf("access: totp: %w: invalid code", ErrUnauthenticated)
}

var errReplay = errors.New("access: totp: step already used")
