package audit_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func testKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func checkpointer(t testing.TB, l *audit.Log, key crypto.Signer) *audit.Checkpointer {
	t.Helper()
	c, err := audit.NewCheckpointer(audit.CheckpointerConfig{Log: l, Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// row is an audit_events row as stored, for tampering.
type row struct {
	Seq                                                       int64
	At                                                        time.Time
	Actor, Action, Target, Outcome, Reason, Source, RequestID string
	Detail, PrevHash, Hash                                    string
}

const rowColumns = `seq, at, actor, action, target, outcome, reason, source, request_id, detail, prev_hash, hash`

func readRows(t *testing.T, st *store.Store, where string, args ...any) []row {
	t.Helper()
	rows, err := st.QueryContext(context.Background(), `SELECT `+rowColumns+` FROM audit_events WHERE `+where+` ORDER BY seq`, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Action, &r.Target, &r.Outcome, &r.Reason, &r.Source, &r.RequestID, &r.Detail, &r.PrevHash, &r.Hash); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func readRow(t *testing.T, st *store.Store, seq int64) row {
	t.Helper()
	rs := readRows(t, st, `seq = ?`, seq)
	if len(rs) != 1 {
		t.Fatalf("no entry %d", seq)
	}
	return rs[0]
}

// sqlTx runs fn in one transaction, straight on the tables.
func sqlTx(t *testing.T, st *store.Store, fn func(tx *store.Tx) error) {
	t.Helper()
	if err := st.Tx(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

// overwrite writes every column of r but seq into the row numbered seq.
func overwrite(tx *store.Tx, seq int64, r row) error {
	_, err := tx.ExecContext(context.Background(), `UPDATE audit_events SET at = ?, actor = ?, action = ?, target = ?, outcome = ?, reason = ?, source = ?, request_id = ?, detail = ?, prev_hash = ?, hash = ? WHERE seq = ?`,
		r.At, r.Actor, r.Action, r.Target, r.Outcome, r.Reason, r.Source, r.RequestID, r.Detail, r.PrevHash, r.Hash, seq)
	return err
}

func insert(tx *store.Tx, r row) error {
	_, err := tx.ExecContext(context.Background(), `INSERT INTO audit_events (`+rowColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Seq, r.At, r.Actor, r.Action, r.Target, r.Outcome, r.Reason, r.Source, r.RequestID, r.Detail, r.PrevHash, r.Hash)
	return err
}

// independentHash recomputes an entry's hash from the package
// documentation alone, without the package's code.
func independentHash(seq int64, at time.Time, actor, action, target, outcome, reason, source, requestID, detail, prevHash string) string {
	h := sha256.New()
	h.Write([]byte("ward-audit-entry v1\n"))
	for _, f := range []string{strconv.FormatInt(seq, 10), at.UTC().Format(time.RFC3339Nano), actor, action, target, outcome, reason, source, requestID, detail, prevHash} {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(f))))
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// busyChain writes n entries from 8 goroutines through Record while
// another signs checkpoints, then signs the head.
func busyChain(t *testing.T, l *audit.Log, cp *audit.Checkpointer, n int) {
	t.Helper()
	ctx := context.Background()
	const writers = 8
	var (
		wg      sync.WaitGroup
		errs    = make(chan error, writers+1)
		done    = make(chan struct{})
		cpDone  = make(chan struct{})
		targets = []string{"device:a", "device:b", "manufacturer:m", ""}
		results = []string{audit.Success, audit.Denied, audit.Failed, audit.Pending}
	)
	go func() {
		defer close(cpDone)
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := cp.Checkpoint(ctx); err != nil && !errors.Is(err, audit.ErrEmpty) {
				errs <- err
				return
			}
		}
	}()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / writers {
				rctx := audit.WithRequest(ctx, audit.RequestInfo{ID: fmt.Sprintf("req-%d-%d", w, i), Source: "192.0.2.7:5000"})
				e := audit.Entry{
					Actor: fmt.Sprintf("token:w%d", w), Action: "device.approve", Target: targets[i%len(targets)],
					Outcome: results[(w+i)%len(results)], Reason: fmt.Sprintf("writer %d, entry %d <&> é", w, i),
				}
				if i%3 == 0 {
					e.Detail = map[string]any{"i": i, "w": w, "nested": map[string]any{"z": "line\nbreak", "a": []any{1.5, nil, true}}}
				}
				if err := l.Record(rctx, e); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	<-cpDone
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, err := cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
}

func verify(t *testing.T, l *audit.Log, pub crypto.PublicKey) audit.Report {
	t.Helper()
	rep, err := l.Verify(context.Background(), pub)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func wantOK(t *testing.T, l *audit.Log, pub crypto.PublicKey, entries int) audit.Report {
	t.Helper()
	rep := verify(t, l, pub)
	if !rep.OK || rep.Entries != entries || rep.LastSeq != int64(entries) || rep.FirstBad != 0 || rep.Problem != "" {
		t.Fatalf("Verify = %+v; want OK with %d entries", rep, entries)
	}
	return rep
}

func wantBroken(t *testing.T, l *audit.Log, pub crypto.PublicKey, firstBad int64, problem string) {
	t.Helper()
	rep := verify(t, l, pub)
	if rep.OK || rep.FirstBad != firstBad || !strings.Contains(rep.Problem, problem) {
		t.Fatalf("Verify = %+v; want broken at %d with %q", rep, firstBad, problem)
	}
	t.Logf("detected: %s", rep.Problem)
}

// TestVerifyDetectsTampering builds a busy chain, then tampers with the
// tables directly, one way at a time, and undoes it: Verify names the
// right entry each time, and passes again once the rows are restored.
func TestVerifyDetectsTampering(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		l := audit.New(st, nil)
		key := testKey(1)
		pub := key.Public()
		cp := checkpointer(t, l, key)
		const n = 2000
		busyChain(t, l, cp, n)

		rep := wantOK(t, l, pub, n)
		cps, err := l.Checkpoints(ctx, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(cps) < 2 || rep.Checkpoints != len(cps) || cps[len(cps)-1].Seq != n || rep.LastCheckpoint != n {
			t.Fatalf("checkpoints: %d rows, last %+v; report %+v", len(cps), cps[len(cps)-1], rep)
		}
		if ent := readRow(t, st, 1); ent.PrevHash != audit.GenesisHash || len(ent.Hash) != 64 {
			t.Fatalf("entry 1: %+v", ent)
		}
		if nilKey := wantOK(t, l, nil, n); nilKey.KeyID != "" || nilKey.Checkpoints != len(cps) {
			t.Fatalf("Verify without a key: %+v", nilKey)
		}

		t.Run("edited outcome", func(t *testing.T) {
			orig := readRow(t, st, 57)
			other := audit.Success
			if orig.Outcome == other {
				other = audit.Denied
			}
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE audit_events SET outcome = ? WHERE seq = 57`, other)
				return err
			})
			wantBroken(t, l, pub, 57, "entry 57: hash mismatch (edited)")
			sqlTx(t, st, func(tx *store.Tx) error { return overwrite(tx, 57, orig) })
			wantOK(t, l, pub, n)
		})

		t.Run("edited reason", func(t *testing.T) {
			orig := readRow(t, st, 1234)
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE audit_events SET reason = reason || '.' WHERE seq = 1234`)
				return err
			})
			wantBroken(t, l, pub, 1234, "entry 1234: hash mismatch (edited)")
			sqlTx(t, st, func(tx *store.Tx) error { return overwrite(tx, 1234, orig) })
			wantOK(t, l, pub, n)
		})

		t.Run("edited with its hash recomputed", func(t *testing.T) {
			// An entry no checkpoint signed: a checkpoint on it would
			// name the entry itself (as "signed by a checkpoint" does
			// below); where the concurrent checkpointer landed varies.
			e := int64(900)
			for _, c := range cps {
				if c.Seq == e {
					e++
				}
			}
			orig := readRow(t, st, e)
			ed := orig
			ed.Outcome = "success-ish"
			ed.Hash = independentHash(ed.Seq, ed.At, ed.Actor, ed.Action, ed.Target, ed.Outcome, ed.Reason, ed.Source, ed.RequestID, ed.Detail, ed.PrevHash)
			sqlTx(t, st, func(tx *store.Tx) error { return overwrite(tx, e, ed) })
			t.Cleanup(func() { sqlTx(t, st, func(tx *store.Tx) error { return overwrite(tx, e, orig) }) })
			wantBroken(t, l, pub, e+1, fmt.Sprintf("entry %d: prev_hash does not match the hash of entry %d", e+1, e))
		})
		wantOK(t, l, pub, n)

		t.Run("deleted row", func(t *testing.T) {
			orig := readRow(t, st, 1000)
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq = 1000`)
				return err
			})
			wantBroken(t, l, pub, 1000, "entry 1000 missing (deleted or reordered)")
			sqlTx(t, st, func(tx *store.Tx) error { return insert(tx, orig) })
			wantOK(t, l, pub, n)
		})

		t.Run("deleted row, later ones renumbered", func(t *testing.T) {
			tail := readRows(t, st, `seq >= 1500`)
			sqlTx(t, st, func(tx *store.Tx) error {
				if _, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq >= 1500`); err != nil {
					return err
				}
				for _, r := range tail[1:] {
					r.Seq--
					if err := insert(tx, r); err != nil {
						return err
					}
				}
				return nil
			})
			wantBroken(t, l, pub, 1500, "entry 1500 out of place")
			sqlTx(t, st, func(tx *store.Tx) error {
				if _, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq >= 1500`); err != nil {
					return err
				}
				for _, r := range tail {
					if err := insert(tx, r); err != nil {
						return err
					}
				}
				return nil
			})
			wantOK(t, l, pub, n)
		})

		t.Run("swapped content, seq and hashes kept", func(t *testing.T) {
			a, b := readRow(t, st, 700), readRow(t, st, 1300)
			swapContent := func(x, y row) row {
				x.At, x.Actor, x.Action, x.Target, x.Outcome, x.Reason, x.Source, x.RequestID, x.Detail =
					y.At, y.Actor, y.Action, y.Target, y.Outcome, y.Reason, y.Source, y.RequestID, y.Detail
				return x
			}
			sqlTx(t, st, func(tx *store.Tx) error {
				if err := overwrite(tx, 700, swapContent(a, b)); err != nil {
					return err
				}
				return overwrite(tx, 1300, swapContent(b, a))
			})
			wantBroken(t, l, pub, 700, "entry 700: hash mismatch (edited)")
			sqlTx(t, st, func(tx *store.Tx) error {
				if err := overwrite(tx, 700, a); err != nil {
					return err
				}
				return overwrite(tx, 1300, b)
			})
			wantOK(t, l, pub, n)
		})

		t.Run("swapped rows, seq kept", func(t *testing.T) {
			a, b := readRow(t, st, 700), readRow(t, st, 1300)
			sqlTx(t, st, func(tx *store.Tx) error {
				if err := overwrite(tx, 700, b); err != nil {
					return err
				}
				return overwrite(tx, 1300, a)
			})
			wantBroken(t, l, pub, 700, "entry 700 out of place")
			sqlTx(t, st, func(tx *store.Tx) error {
				if err := overwrite(tx, 700, a); err != nil {
					return err
				}
				return overwrite(tx, 1300, b)
			})
			wantOK(t, l, pub, n)
		})

		swapSeq := func(t *testing.T, x, y int64) {
			sqlTx(t, st, func(tx *store.Tx) error {
				for _, q := range []struct{ from, to int64 }{{x, -1}, {y, x}, {-1, y}} {
					if _, err := tx.ExecContext(ctx, `UPDATE audit_events SET seq = ? WHERE seq = ?`, q.to, q.from); err != nil {
						return err
					}
				}
				return nil
			})
		}
		t.Run("swapped seq numbers", func(t *testing.T) {
			swapSeq(t, 700, 1300)
			wantBroken(t, l, pub, 700, "entry 700 out of place")
			swapSeq(t, 700, 1300)
			wantOK(t, l, pub, n)
		})

		t.Run("swapped neighbours", func(t *testing.T) {
			swapSeq(t, 10, 11)
			wantBroken(t, l, pub, 10, "entry 10 out of place")
			swapSeq(t, 10, 11)
			wantOK(t, l, pub, n)
		})

		t.Run("truncated tail", func(t *testing.T) {
			// The last checkpoint covers the head; drop the last 5 entries.
			tail := readRows(t, st, `seq > ?`, n-5)
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq > ?`, n-5)
				return err
			})
			first := cps[len(cps)-1].Seq // the first checkpoint past the new end
			for _, c := range cps {
				if c.Seq > n-5 {
					first = c.Seq
					break
				}
			}
			wantBroken(t, l, pub, n-4, fmt.Sprintf("checkpoint at %d points past the last entry %d (tail truncated)", first, n-5))
			sqlTx(t, st, func(tx *store.Tx) error {
				for _, r := range tail {
					if err := insert(tx, r); err != nil {
						return err
					}
				}
				return nil
			})
			wantOK(t, l, pub, n)
		})

		t.Run("tail rewritten with valid hashes across a checkpoint", func(t *testing.T) {
			from := cps[len(cps)-2].Seq - 3
			orig := readRows(t, st, `seq >= ?`, from)
			sqlTx(t, st, func(tx *store.Tx) error {
				prev := orig[0].PrevHash
				for _, r := range orig {
					r.Reason = "nothing happened"
					r.PrevHash = prev
					r.Hash = independentHash(r.Seq, r.At, r.Actor, r.Action, r.Target, r.Outcome, r.Reason, r.Source, r.RequestID, r.Detail, r.PrevHash)
					prev = r.Hash
					if err := overwrite(tx, r.Seq, r); err != nil {
						return err
					}
				}
				return nil
			})
			at := cps[len(cps)-2].Seq
			wantBroken(t, l, pub, at, fmt.Sprintf("entry %d: its hash differs from the one checkpoint %d signed", at, at))
			sqlTx(t, st, func(tx *store.Tx) error {
				for _, r := range orig {
					if err := overwrite(tx, r.Seq, r); err != nil {
						return err
					}
				}
				return nil
			})
			wantOK(t, l, pub, n)
		})

		t.Run("forged checkpoint signature", func(t *testing.T) {
			c := cps[len(cps)/2]
			forged := bytes.Clone(c.Signature)
			forged[10] ^= 1
			setSig := func(sig []byte) {
				sqlTx(t, st, func(tx *store.Tx) error {
					_, err := tx.ExecContext(ctx, `UPDATE audit_checkpoints SET signature = ? WHERE seq = ?`, sig, c.Seq)
					return err
				})
			}
			setSig(forged)
			wantBroken(t, l, pub, c.Seq, fmt.Sprintf("checkpoint at %d: bad signature (forged)", c.Seq))
			// Without the key the chain itself still holds.
			if r := verify(t, l, nil); !r.OK {
				t.Fatalf("Verify without a key: %+v", r)
			}
			setSig(c.Signature)
			wantOK(t, l, pub, n)
		})

		t.Run("checkpoint signed by another key", func(t *testing.T) {
			c := cps[len(cps)/3]
			other := testKey(2)
			fake := audit.Checkpoint{Seq: c.Seq, Hash: c.Hash, At: c.At}
			sig := ed25519.Sign(other, fake.Statement())
			otherID, _ := audit.KeyID(other.Public())
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE audit_checkpoints SET signature = ?, key_id = ? WHERE seq = ?`, sig, otherID, c.Seq)
				return err
			})
			wantBroken(t, l, pub, c.Seq, "signed by key "+otherID)
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE audit_checkpoints SET signature = ?, key_id = ? WHERE seq = ?`, c.Signature, c.KeyID, c.Seq)
				return err
			})
			wantOK(t, l, pub, n)
		})

		t.Run("wrong verification key", func(t *testing.T) {
			wantBroken(t, l, testKey(3).Public(), cps[0].Seq, "bad signature")
		})

		t.Run("documented limit: tail after the last checkpoint", func(t *testing.T) {
			// Entries after the last checkpoint can be cut off unseen; the
			// package documentation says so.
			for i := range 3 {
				if err := l.Record(ctx, audit.Entry{Actor: audit.System, Action: "test.extra", Outcome: audit.Success, Reason: strconv.Itoa(i)}); err != nil {
					t.Fatal(err)
				}
			}
			wantOK(t, l, pub, n+3)
			sqlTx(t, st, func(tx *store.Tx) error {
				_, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq > ?`, n)
				return err
			})
			wantOK(t, l, pub, n)
		})
	})
}

func TestRolledBackAppendLeavesTheChainWhole(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		l := audit.New(st, nil)
		for i := range 3 {
			if err := l.Record(ctx, audit.Entry{Actor: "token:a", Action: "device.approve", Outcome: audit.Success, Reason: strconv.Itoa(i)}); err != nil {
				t.Fatal(err)
			}
		}
		boom := errors.New("the change failed")
		err := st.Tx(ctx, func(tx *store.Tx) error {
			for range 2 {
				if err := l.Append(ctx, tx, audit.Entry{Actor: "token:a", Action: "device.revoke", Outcome: audit.Success}); err != nil {
					return err
				}
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatal(err)
		}
		wantOK(t, l, nil, 3)
		if err := l.Record(ctx, audit.Entry{Actor: "token:a", Action: "device.reject", Outcome: audit.Success}); err != nil {
			t.Fatal(err)
		}
		wantOK(t, l, nil, 4)
		es, err := l.List(ctx, audit.Filter{})
		if err != nil || len(es) != 4 {
			t.Fatalf("List: %d, %v", len(es), err)
		}
		for i, e := range es {
			if e.Seq != int64(i+1) || e.Hash == "" || (i > 0 && e.PrevHash != es[i-1].Hash) {
				t.Fatalf("entry %d: %+v", i, e)
			}
		}
		if es[3].Action != "device.reject" {
			t.Fatalf("entry 4 is %s", es[3].Action)
		}
	})
}

func TestRequestContext(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := audit.WithRequest(context.Background(), audit.RequestInfo{ID: "req-9", Source: "198.51.100.4:1234"})
		l := audit.New(st, nil)
		for _, e := range []audit.Entry{
			{Actor: "token:a", Action: "a.one", Outcome: audit.Success},
			{Actor: "token:a", Action: "a.two", Outcome: audit.Success, Source: "203.0.113.9:80", RequestID: "own"},
		} {
			if err := l.Record(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Record(context.Background(), audit.Entry{Actor: "token:a", Action: "a.three", Outcome: audit.Success}); err != nil {
			t.Fatal(err)
		}
		es, err := l.List(context.Background(), audit.Filter{})
		if err != nil || len(es) != 3 {
			t.Fatal(len(es), err)
		}
		for i, want := range [][2]string{{"req-9", "198.51.100.4:1234"}, {"own", "203.0.113.9:80"}, {"", ""}} {
			if es[i].RequestID != want[0] || es[i].Source != want[1] {
				t.Errorf("entry %d: request %q source %q; want %q %q", i+1, es[i].RequestID, es[i].Source, want[0], want[1])
			}
		}
	})
}

// exported is a JSON-lines export line, read by a verifier that knows only
// the package documentation.
type exported struct {
	Seq       int64           `json:"seq"`
	At        string          `json:"at"`
	Actor     string          `json:"actor"`
	Action    string          `json:"action"`
	Target    string          `json:"target"`
	Outcome   string          `json:"outcome"`
	Reason    string          `json:"reason"`
	Source    string          `json:"source"`
	RequestID string          `json:"request_id"`
	Detail    json.RawMessage `json:"detail"`
	PrevHash  string          `json:"prev_hash"`
	Hash      string          `json:"hash"`
}

// TestExportReverifies exports the chain as JSON lines and re-verifies it
// from the lines alone with an independent implementation of the hash.
func TestExportReverifies(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		clock := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
		l := audit.New(st, func() time.Time { clock = clock.Add(1500 * time.Microsecond); return clock }, audit.WithVersion("9.9"))
		details := []map[string]any{
			nil,
			{"cert_serial": "ab12", "n": 3},
			{"html": "<script>&</script>", "u2028": "a\u2028b", "ctl": "\x01", "nested": map[string]any{"b": []any{2.5, "x"}, "a": nil}},
			{"é": "ü", "big": int64(9007199254740993)},
		}
		const n = 40
		for i := range n {
			ri := audit.RequestInfo{ID: "req-" + strconv.Itoa(i), Source: "192.0.2.1:443"}
			e := audit.Entry{
				Actor: "user:ann", Action: "device.quarantine", Target: "device:" + strconv.Itoa(i%5),
				Outcome: audit.Success, Reason: "line one\nline two | a=b \\ \"quoted\"", Detail: details[i%len(details)],
			}
			if err := l.Record(audit.WithRequest(ctx, ri), e); err != nil {
				t.Fatal(err)
			}
		}

		var out bytes.Buffer
		if err := l.Export(ctx, &out, audit.FormatJSONL, audit.Filter{}); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != n {
			t.Fatalf("%d lines, want %d", len(lines), n)
		}
		prev := strings.Repeat("0", 64)
		for i, line := range lines {
			var x exported
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&x); err != nil {
				t.Fatalf("line %d: %v: %s", i+1, err, line)
			}
			at, err := time.Parse(time.RFC3339Nano, x.At)
			if err != nil {
				t.Fatal(err)
			}
			if at.Nanosecond()%1000 != 0 || at.Location() != time.UTC {
				t.Fatalf("line %d: time %s not UTC microseconds", i+1, x.At)
			}
			// The detail is canonical: re-encoding it with sorted keys and
			// no HTML escaping gives the same bytes.
			var d map[string]any
			ddec := json.NewDecoder(bytes.NewReader(x.Detail))
			ddec.UseNumber()
			if err := ddec.Decode(&d); err != nil {
				t.Fatal(err)
			}
			var re bytes.Buffer
			enc := json.NewEncoder(&re)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(d); err != nil {
				t.Fatal(err)
			}
			canon := strings.ReplaceAll(strings.TrimSuffix(re.String(), "\n"), `\u2028`, "\u2028")
			if canon != string(x.Detail) {
				t.Fatalf("line %d: detail %s is not canonical (%s)", i+1, x.Detail, canon)
			}
			if x.Seq != int64(i+1) || x.PrevHash != prev {
				t.Fatalf("line %d: seq %d prev_hash %s, want %d %s", i+1, x.Seq, x.PrevHash, i+1, prev)
			}
			if h := independentHash(x.Seq, at, x.Actor, x.Action, x.Target, x.Outcome, x.Reason, x.Source, x.RequestID, string(x.Detail), x.PrevHash); h != x.Hash {
				t.Fatalf("line %d: hash %s, recomputed %s: %s", i+1, x.Hash, h, line)
			}
			if x.RequestID != "req-"+strconv.Itoa(i) {
				t.Fatalf("line %d: request id %q", i+1, x.RequestID)
			}
			prev = x.Hash
		}

		// Paging: after, limit and filters.
		out.Reset()
		if err := l.Export(ctx, &out, audit.FormatJSONL, audit.Filter{After: 10, Limit: 5}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); len(got) != 5 || got[0] != lines[10] || got[4] != lines[14] {
			t.Fatalf("after 10, limit 5: %d lines", len(got))
		}
		out.Reset()
		if err := l.Export(ctx, &out, audit.FormatCEF, audit.Filter{Target: "device:3"}); err != nil {
			t.Fatal(err)
		}
		cef := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(cef) != n/5 {
			t.Fatalf("%d CEF lines, want %d", len(cef), n/5)
		}
		var first exported
		_ = json.Unmarshal([]byte(lines[3]), &first)
		at, _ := time.Parse(time.RFC3339Nano, first.At)
		want := fmt.Sprintf(`CEF:0|Ward|Ward|9.9|device.quarantine|device.quarantine|3|rt=%d suser=user:ann act=device.quarantine outcome=success duser=device:3 src=192.0.2.1 msg=line one\nline two | a\=b \\ "quoted" cs1Label=requestId cs1=req-3 cs2Label=hash cs2=%s externalId=4`, at.UnixMilli(), first.Hash)
		if cef[0] != want {
			t.Fatalf("CEF line:\n got %s\nwant %s", cef[0], want)
		}
		if err := l.Export(ctx, &out, "xml", audit.Filter{}); !errors.Is(err, audit.ErrFormat) {
			t.Fatalf("format xml: %v", err)
		}
	})
}

func TestExportIsStreamedInPages(t *testing.T) {
	st := storetest.Open(t, store.SQLite)
	ctx := context.Background()
	l := audit.New(st, nil)
	const n = 2600 // more than two export pages
	sqlTx(t, st, func(tx *store.Tx) error {
		for i := range n {
			if err := l.Append(ctx, tx, audit.Entry{Actor: "system", Action: "bulk", Outcome: audit.Success, Reason: strconv.Itoa(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	var out bytes.Buffer
	if err := l.Export(ctx, &out, audit.FormatJSONL, audit.Filter{}); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&out)
	seq := int64(0)
	for sc.Scan() {
		var x exported
		if err := json.Unmarshal(sc.Bytes(), &x); err != nil || x.Seq != seq+1 {
			t.Fatalf("line after %d: %v %s", seq, err, sc.Text())
		}
		seq = x.Seq
	}
	if seq != n {
		t.Fatalf("export ended at %d, want %d", seq, n)
	}
	wantOK(t, l, nil, n)
}

func TestCheckpointerRun(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		l := audit.New(st, nil)
		key := testKey(4)
		record := func(k int) {
			for range k {
				if err := l.Record(ctx, audit.Entry{Actor: audit.System, Action: "tick", Outcome: audit.Success}); err != nil {
					t.Fatal(err)
				}
			}
		}
		count := func() (int, int64) {
			cps, err := l.Checkpoints(ctx, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(cps) == 0 {
				return 0, 0
			}
			return len(cps), cps[len(cps)-1].Seq
		}

		// Nothing to sign on an empty log.
		c := checkpointer(t, l, key)
		if _, err := c.Checkpoint(ctx); !errors.Is(err, audit.ErrEmpty) {
			t.Fatalf("Checkpoint of an empty log: %v", err)
		}

		// Periodic: one checkpoint per tick with new entries, none when idle.
		pc, err := audit.NewCheckpointer(audit.CheckpointerConfig{Log: l, Signer: key, Every: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- pc.Run(rctx) }()
		waitFor := func(seq int64) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, last := count(); last == seq {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("no checkpoint at %d", seq)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		record(5)
		waitFor(5)
		idle, _ := count()
		time.Sleep(150 * time.Millisecond)
		if k, _ := count(); k != idle {
			t.Fatalf("%d checkpoints after idle ticks, want %d", k, idle)
		}
		record(2)
		waitFor(7)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}

		// Stopping signs what came since the last tick.
		sc, err := audit.NewCheckpointer(audit.CheckpointerConfig{Log: l, Signer: key, Every: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel = context.WithCancel(ctx)
		go func() { done <- sc.Run(rctx) }()
		record(3)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, last := count(); last != 10 {
			t.Fatalf("last checkpoint at %d after stopping, want 10", last)
		}
		// Asking again signs nothing new.
		k, _ := count()
		cp, err := c.Checkpoint(ctx)
		if err != nil || cp.Seq != 10 {
			t.Fatalf("Checkpoint = %+v, %v", cp, err)
		}
		if k2, _ := count(); k2 != k {
			t.Fatalf("a second checkpoint of the same head: %d, want %d", k2, k)
		}
		rep := wantOK(t, l, key.Public(), 10)
		if rep.KeyID != c.KeyID() || rep.LastCheckpoint != 10 {
			t.Fatalf("report %+v, key %s", rep, c.KeyID())
		}
	})
}

func TestECDSACheckpoints(t *testing.T) {
	st := storetest.Open(t, store.SQLite)
	ctx := context.Background()
	l := audit.New(st, nil)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := checkpointer(t, l, key)
	for range 3 {
		if err := l.Record(ctx, audit.Entry{Actor: audit.System, Action: "x", Outcome: audit.Success}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if rep := wantOK(t, l, key.Public(), 3); rep.Checkpoints != 3 {
		t.Fatalf("%+v", rep)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wantBroken(t, l, other.Public(), 1, "bad signature")
	if _, err := audit.NewCheckpointer(audit.CheckpointerConfig{Log: l}); err == nil {
		t.Fatal("checkpointer without a signer")
	}
}

func TestNewCheckpointKey(t *testing.T) {
	dir := t.TempDir()
	pass := []byte("correct horse battery staple")
	path := filepath.Join(dir, "audit.key")
	k1, err := audit.NewCheckpointKey(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k1.Public().(ed25519.PublicKey); !ok {
		t.Fatalf("key is %T, want Ed25519", k1.Public())
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte("ENCRYPTED PRIVATE KEY")) {
		t.Fatal("key file is not encrypted")
	}
	k2, err := audit.NewCheckpointKey(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := audit.KeyID(k1.Public())
	id2, _ := audit.KeyID(k2.Public())
	if id1 != id2 || !strings.HasPrefix(id1, "SHA256:") || len(id1) != len("SHA256:")+64 {
		t.Fatalf("key ids %s %s", id1, id2)
	}
	if _, err := audit.NewCheckpointKey(path, []byte("xyzzy-plugh")); err == nil {
		t.Fatal("wrong passphrase accepted")
	} else if strings.Contains(err.Error(), "xyzzy") || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("error echoes the passphrase: %v", err)
	}

	plain := filepath.Join(dir, "plain.key")
	if _, err := audit.NewCheckpointKey(plain, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(plain); !bytes.Contains(b, []byte("BEGIN PRIVATE KEY")) {
		t.Fatal("plain key file expected")
	}
	if _, err := audit.NewCheckpointKey(plain, pass); err == nil {
		t.Fatal("plain key read with a passphrase")
	}
}
