package agent

// outbox is the bounded FIFO of encoded events waiting for Ward's PUBACK.
// An event leaves it only when Ward acknowledged it, or refused it for good
// (counted as rejected); when full, the oldest event is dropped and counted.
// The agent's mutex guards it.
type outbox struct {
	limit   int
	buf     [][]byte // ring
	head, n int
	dropped uint64
}

func (o *outbox) len() int { return o.n }

// push appends b, dropping the oldest event if the outbox is full; it
// reports whether it dropped one.
func (o *outbox) push(b []byte) (dropped bool) {
	if o.buf == nil {
		o.buf = make([][]byte, min(o.limit, 64))
	}
	if o.n == o.limit {
		o.buf[o.head] = nil
		o.head = (o.head + 1) % len(o.buf)
		o.n--
		o.dropped++
		dropped = true
	}
	if o.n == len(o.buf) { // grow, up to the limit
		nb := make([][]byte, min(o.limit, 2*len(o.buf)))
		for i := range o.n {
			nb[i] = o.buf[(o.head+i)%len(o.buf)]
		}
		o.buf, o.head = nb, 0
	}
	o.buf[(o.head+o.n)%len(o.buf)] = b
	o.n++
	return dropped
}

// peek returns the oldest event, or nil.
func (o *outbox) peek() []byte {
	if o.n == 0 {
		return nil
	}
	return o.buf[o.head]
}

// pop removes the oldest event if it is still b (it may have been dropped
// for space while it was being published) and reports whether it did.
func (o *outbox) pop(b []byte) bool {
	if o.n == 0 || &o.buf[o.head][0] != &b[0] {
		return false
	}
	o.buf[o.head] = nil
	o.head = (o.head + 1) % len(o.buf)
	o.n--
	return true
}
