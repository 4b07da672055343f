package audit

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"math"
)

// Report is the outcome of Verify.
type Report struct {
	OK          bool   `json:"ok" doc:"The chain is whole and every checkpoint holds"`
	Entries     int    `json:"entries" doc:"Entries read"`
	Checkpoints int    `json:"checkpoints" doc:"Checkpoints checked"`
	LastSeq     int64  `json:"last_seq" doc:"Sequence number of the last entry read"`
	LastHash    string `json:"last_hash" doc:"Hash of the last entry read"`
	// LastCheckpoint is the seq of the latest checkpoint that held.
	LastCheckpoint int64 `json:"last_checkpoint" doc:"Sequence number the latest good checkpoint covers"`
	// KeyID names the key checkpoint signatures were checked with; empty
	// when Verify had no key and checked only the chain.
	KeyID    string `json:"key_id,omitempty" doc:"Key the checkpoint signatures were checked with"`
	FirstBad int64  `json:"first_bad,omitempty" doc:"First entry (or checkpoint) found bad"`
	Problem  string `json:"problem,omitempty" doc:"What is wrong with it"`
}

// verifyPage is how many entries Verify reads at a time.
const verifyPage = 5000

// errStop ends a scan once Verify has found the first problem.
var errStop = errors.New("stop")

// Verify reads the whole chain in sequence order and checks that entries
// are numbered from 1 without a gap, that each entry's hash is the hash of
// its content and links to the entry before, and that every checkpoint is
// signed by pub and matches the entry it names. It stops at the first
// problem, which the report names. With a nil pub checkpoint signatures are
// not checked (only their hashes).
//
// Entries appended while Verify runs are not read: it checks the chain as
// it stood when it started. An error means the store could not be read,
// not that the chain is broken.
func (l *Log) Verify(ctx context.Context, pub crypto.PublicKey) (Report, error) {
	rep := Report{LastHash: GenesisHash}
	if pub != nil {
		id, err := KeyID(pub)
		if err != nil {
			return rep, err
		}
		rep.KeyID = id
	}
	// The last checkpoint first, then the head: a checkpoint is written
	// after its entry committed, so every checkpoint read below names an
	// entry that exists unless someone deleted it.
	var maxCp, maxSeq int64
	if err := l.st.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints`).Scan(&maxCp); err != nil {
		return rep, fmt.Errorf("audit: verify: %w", err)
	}
	if err := l.st.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM audit_events`).Scan(&maxSeq); err != nil {
		return rep, fmt.Errorf("audit: verify: %w", err)
	}

	// Scans start below 1, so that rows numbered 0 or less show too.
	cps := &cpCursor{l: l, upTo: maxCp, after: math.MinInt64}
	fail := func(seq int64, format string, args ...any) error {
		rep.FirstBad, rep.Problem = seq, fmt.Sprintf(format, args...)
		return errStop
	}
	checkCheckpoints := func(r *record) error {
		for {
			cp, ok, err := cps.peek(ctx)
			if err != nil {
				return err
			}
			if !ok || cp.Seq > r.Seq {
				return nil
			}
			if cp.Seq < r.Seq {
				// Entries are contiguous up to r, so this names no entry.
				return fail(cp.Seq, "checkpoint at %d names no entry", cp.Seq)
			}
			if pub != nil && !verifySignature(pub, cp.Statement(), cp.Signature) {
				if cp.KeyID != rep.KeyID {
					return fail(cp.Seq, "checkpoint at %d: bad signature (forged, or signed by key %s, not %s)", cp.Seq, clean(cp.KeyID, 80), rep.KeyID)
				}
				return fail(cp.Seq, "checkpoint at %d: bad signature (forged)", cp.Seq)
			}
			if cp.Hash != r.Hash {
				return fail(cp.Seq, "entry %d: its hash differs from the one checkpoint %d signed (the chain was rewritten after the checkpoint)", r.Seq, cp.Seq)
			}
			rep.Checkpoints++
			rep.LastCheckpoint = cp.Seq
			cps.next()
		}
	}

	prev, expect := GenesisHash, int64(1)
	after := int64(math.MinInt64)
	for after < maxSeq {
		n := 0
		err := l.rows(ctx, `SELECT `+entryColumns+` FROM audit_events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?`,
			[]any{after, maxSeq, verifyPage}, false, func(r *record) error {
				n++
				after = r.Seq
				switch {
				case r.Seq > expect:
					return fail(expect, "entry %d missing (deleted or reordered)", expect)
				case r.Seq < expect:
					return fail(r.Seq, "entry %d: sequence numbers must start at 1", r.Seq)
				}
				rep.Entries++
				hashOK, linked := r.hash() == r.Hash, r.PrevHash == prev
				switch {
				case !hashOK && !linked:
					return fail(r.Seq, "entry %d out of place: neither its hash nor its link to the entry before holds (reordered or replaced)", r.Seq)
				case !hashOK:
					return fail(r.Seq, "entry %d: hash mismatch (edited)", r.Seq)
				case !linked && r.Seq == 1:
					return fail(r.Seq, "entry 1: prev_hash is not the genesis hash (entries before it were deleted, or it was rewritten)")
				case !linked:
					return fail(r.Seq, "entry %d: prev_hash does not match the hash of entry %d (one of them rewritten, or rows reordered)", r.Seq, r.Seq-1)
				}
				prev, expect = r.Hash, r.Seq+1
				rep.LastSeq, rep.LastHash = r.Seq, r.Hash
				return checkCheckpoints(r)
			})
		if errors.Is(err, errStop) {
			return rep, nil
		}
		if err != nil {
			return rep, fmt.Errorf("audit: verify: %w", err)
		}
		if n == 0 {
			break
		}
	}
	cp, ok, err := cps.peek(ctx)
	if err != nil {
		return rep, fmt.Errorf("audit: verify: %w", err)
	}
	if ok {
		fail(rep.LastSeq+1, "checkpoint at %d points past the last entry %d (tail truncated)", cp.Seq, rep.LastSeq)
		return rep, nil
	}
	rep.OK = true
	return rep, nil
}

// cpCursor reads checkpoints in seq order, a page at a time.
type cpCursor struct {
	l     *Log
	upTo  int64
	after int64
	page  []Checkpoint
	done  bool
}

func (c *cpCursor) peek(ctx context.Context) (Checkpoint, bool, error) {
	if len(c.page) == 0 && !c.done {
		err := c.l.checkpoints(ctx, c.after, c.upTo, 1000, func(cp Checkpoint) error {
			c.page = append(c.page, cp)
			return nil
		})
		if err != nil {
			return Checkpoint{}, false, err
		}
		if len(c.page) == 0 {
			c.done = true
		} else {
			c.after = c.page[len(c.page)-1].Seq
		}
	}
	if len(c.page) == 0 {
		return Checkpoint{}, false, nil
	}
	return c.page[0], true, nil
}

func (c *cpCursor) next() { c.page = c.page[1:] }
