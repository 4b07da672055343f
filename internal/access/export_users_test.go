package access

// HashCount is how many argon2id computations u has made, for tests that
// show an unknown username costs what a known one does.
func (u *Users) HashCount() int64 { return u.hashes.Load() }
