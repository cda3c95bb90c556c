package cached

import (
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// CLOCK_MONOTONIC, as the daemon writes it in the proof page, without a system call per read.
// Go's runtime reads CLOCK_MONOTONIC for time.Now's monotonic reading, but only exposes it relative
// to an arbitrary base; the offset between the two is measured once with clock_gettime(2) and is
// constant. It is measured so that the result is never earlier than the true clock (by at most
// the few microseconds the measurement took): a proof then looks older, never younger.
var (
	monoOnce   sync.Once
	monoBase   time.Time
	monoOffset int64 // CLOCK_MONOTONIC ns at monoBase, rounded up
	monoOK     bool
)

func clockGettimeMonotonic() (int64, bool) {
	var ts syscall.Timespec
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		return 0, false
	}
	return ts.Nano(), true
}

func calibrate() {
	monoBase = time.Now()
	best := time.Duration(1 << 62)
	for i := 0; i < 5; i++ {
		t0 := time.Since(monoBase)
		clock, ok := clockGettimeMonotonic()
		t1 := time.Since(monoBase)
		if !ok {
			return
		}
		if t1-t0 < best {
			// clock was read at some instant in [t0, t1]: clock - t0 is the latest the base can be.
			best = t1 - t0
			monoOffset = clock - int64(t0)
		}
	}
	monoOK = true
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds (never early), and whether it could be read.
func monotonicNow() (int64, bool) {
	monoOnce.Do(calibrate)
	if !monoOK {
		return 0, false
	}
	return monoOffset + int64(time.Since(monoBase)), true
}
