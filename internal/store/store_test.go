package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func TestStoreContract(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		now := time.Date(2026, 11, 21, 10, 0, 0, 123456000, time.FixedZone("x", 3600))

		// A committed transaction is visible; times round-trip in UTC.
		err := s.Tx(ctx, func(tx *store.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO manufacturers (id, name, ca_pem, fingerprint, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
				"m1", "Acme", "pem", "fp", now, "test")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		var got time.Time
		if err := s.QueryRowContext(ctx, `SELECT created_at FROM manufacturers WHERE id = ?`, "m1").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if !got.Equal(now) {
			t.Fatalf("created_at = %v, want %v", got, now)
		}

		// A failed transaction leaves nothing behind.
		boom := errors.New("boom")
		err = s.Tx(ctx, func(tx *store.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO manufacturers (id, name, ca_pem, fingerprint, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
				"m2", "Other", "pem", "fp", now, "test"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Tx error = %v, want boom", err)
		}
		var n int
		if err := s.QueryRowContext(ctx, `SELECT COUNT(*) FROM manufacturers`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("rolled-back insert is visible: %d rows", n)
		}

		// Unique violations are recognised in both dialects.
		err = s.Tx(ctx, func(tx *store.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO manufacturers (id, name, ca_pem, fingerprint, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
				"m3", "Acme", "pem", "fp", now, "test")
			return err
		})
		if !store.IsUniqueViolation(err) {
			t.Fatalf("duplicate name: err = %v, want a unique violation", err)
		}

		// Placeholders inside string literals are not rebound.
		var lit string
		if err := s.QueryRowContext(ctx, `SELECT name || '?' FROM manufacturers WHERE id = ?`, "m1").Scan(&lit); err != nil {
			t.Fatal(err)
		}
		if lit != "Acme?" {
			t.Fatalf("literal = %q", lit)
		}
	})
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	u := storetest.URL(t, store.SQLite)
	s, err := store.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ExecContext(ctx, `INSERT INTO api_tokens (id, name, secret_hash, created_at) VALUES (?, ?, ?, ?)`, "t1", "x", []byte{1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = store.Open(ctx, u) // migrations are idempotent
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	if err := s.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("after reopen: n=%d err=%v", n, err)
	}
}
