//go:build !linux

package cached

// monotonicNow: off Linux the daemon's clock cannot be read, so a proof is never fresh and a near
// cache under a staleness bound serves nothing.
func monotonicNow() (int64, bool) { return 0, false }
