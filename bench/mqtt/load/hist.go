package load

import (
	"math"
	"sort"
	"strconv"
	"time"
)

// histBase is the ratio between neighbouring buckets: 2 % resolution.
const histBase = 1.02

// Hist is a log-scale latency histogram in microseconds that merges across
// processes (bucket index → count; JSON-encodable).
type Hist map[string]int64

// Add records one latency.
func (h Hist) Add(d time.Duration) {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		us = 1
	}
	h[strconv.Itoa(int(math.Log(us)/math.Log(histBase)))]++
}

// Merge adds o into h.
func (h Hist) Merge(o Hist) {
	for k, v := range o {
		h[k] += v
	}
}

// Count is the number of recorded latencies.
func (h Hist) Count() int64 {
	var n int64
	for _, v := range h {
		n += v
	}
	return n
}

// Quantile returns the q-quantile (0 < q ≤ 1), to within 2 %.
func (h Hist) Quantile(q float64) time.Duration {
	type bucket struct {
		i int
		n int64
	}
	var bs []bucket
	var total int64
	for k, v := range h {
		i, _ := strconv.Atoi(k)
		bs = append(bs, bucket{i, v})
		total += v
	}
	if total == 0 {
		return 0
	}
	sort.Slice(bs, func(a, b int) bool { return bs[a].i < bs[b].i })
	want := int64(math.Ceil(q * float64(total)))
	var seen int64
	for _, b := range bs {
		seen += b.n
		if seen >= want {
			us := math.Pow(histBase, float64(b.i)+0.5)
			return time.Duration(us * float64(time.Microsecond))
		}
	}
	return 0
}
