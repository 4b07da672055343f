package audit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func TestAppendListFilter(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		t0 := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
		l := audit.New(st, func() time.Time { return t0 })
		entries := []audit.Entry{
			{Actor: "token:a", Action: "device.approve", Target: "device:x", Outcome: audit.Success},
			{Actor: "birthcert:SHA256:ff", Action: "enroll.simpleenroll", Target: "device:x", Outcome: audit.Denied, Reason: "CSR serial differs", Source: "192.0.2.7:5000"},
			{Actor: "device:x", Action: "enroll.simplereenroll", Target: "device:x", Outcome: audit.Success, Detail: map[string]any{"cert_serial": "ab12"}},
			{Actor: "token:a", Action: "manufacturer.add", Target: "manufacturer:m", Outcome: audit.Success},
		}
		for _, e := range entries {
			if err := l.Record(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		all, err := l.List(ctx, audit.Filter{})
		if err != nil || len(all) != 4 {
			t.Fatalf("List = %d entries, %v", len(all), err)
		}
		for i := 1; i < len(all); i++ {
			if all[i].Seq <= all[i-1].Seq {
				t.Fatalf("entries out of order: %d then %d", all[i-1].Seq, all[i].Seq)
			}
		}
		if !all[0].At.Equal(t0) || all[1].Source != "192.0.2.7:5000" || all[2].Detail["cert_serial"] != "ab12" {
			t.Fatalf("entries did not round-trip: %+v", all)
		}
		for _, tc := range []struct {
			f    audit.Filter
			want int
		}{
			{audit.Filter{Action: "enroll."}, 2},
			{audit.Filter{Action: "enroll.simple"}, 2},
			{audit.Filter{Action: "enroll.simplereenroll"}, 1},
			{audit.Filter{Action: "enroll%"}, 0}, // no wildcards
			{audit.Filter{Target: "device:x"}, 3},
			{audit.Filter{Outcome: audit.Denied}, 1},
			{audit.Filter{After: all[1].Seq}, 2},
			{audit.Filter{Limit: 1}, 1},
		} {
			got, err := l.List(ctx, tc.f)
			if err != nil || len(got) != tc.want {
				t.Errorf("List(%+v) = %d entries, %v; want %d", tc.f, len(got), err, tc.want)
			}
		}
	})
}

func TestAppendIsPartOfTheTransaction(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		l := audit.New(st, nil)
		boom := errors.New("the change failed")
		err := st.Tx(ctx, func(tx *store.Tx) error {
			if err := l.Append(ctx, tx, audit.Entry{Actor: "token:a", Action: "device.revoke", Outcome: audit.Success}); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatal(err)
		}
		if got, _ := l.List(ctx, audit.Filter{}); len(got) != 0 {
			t.Fatalf("an entry outlived its rolled-back change: %+v", got)
		}
		if err := l.Record(ctx, audit.Entry{Action: "x", Outcome: audit.Success}); err == nil {
			t.Fatal("entry without an actor accepted")
		}
	})
}
