package cached

import (
	"encoding/binary"
	"errors"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// proofPage is the daemon's proof page, mapped read-only (docs/protocol.md, "track"): little-endian,
// bytes 0-7 "CACHEDPF", 8-11 the version (1), 16-23 the proof instant in CLOCK_MONOTONIC
// nanoseconds (0: none), 24-31 max_staleness in nanoseconds. The instant is one aligned 8-byte store.
type proofPage struct {
	data []byte
}

const proofPageSize = 4096

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

func mapProofPage(path string) (*proofPage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := syscall.Mmap(int(f.Fd()), 0, proofPageSize, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	if string(data[:8]) != "CACHEDPF" || binary.LittleEndian.Uint32(data[8:12]) != 1 {
		_ = syscall.Munmap(data)
		return nil, errors.New("not a cached proof page: " + path)
	}
	return &proofPage{data: data}, nil
}

// instant is the proof instant, read with one atomic 8-byte load.
func (p *proofPage) instant() int64 {
	v := atomic.LoadUint64((*uint64)(unsafe.Pointer(&p.data[16])))
	if !littleEndian {
		v = v>>56 | (v>>40)&0xff00 | (v>>24)&0xff0000 | (v>>8)&0xff000000 |
			(v<<8)&0xff00000000 | (v<<24)&0xff0000000000 | (v<<40)&0xff000000000000 | v<<56
	}
	return int64(v)
}

func (p *proofPage) close() {
	if p.data != nil {
		_ = syscall.Munmap(p.data)
		p.data = nil
	}
}
