package shmbus

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// Debug mode for views (SHMBUS_DEBUG_VIEWS=1 in the environment at start): a view
// used after it was released fails loudly instead of reading what the producer wrote
// there since.
//
// With it, Poll, TryPoll, PollBatch and TryPollBatch give each view's Data in pages
// of its own (a copy of the ring bytes, mmap'ed); releasing the view (Release of it
// or of a later one, ReleaseAll, Close) makes those pages inaccessible (PROT_NONE).
// Then:
//   - View.Message, Reader.Read and View.Envelope panic with "shmbus: view ...
//     used after release";
//   - reading Data (or a Cap'n Proto message read from it) faults: the Go runtime
//     stops the program with "unexpected fault address" and the stack of the read
//     (a panic instead under debug.SetPanicOnFault).
//
// The last 4096 released views stay inaccessible (a quarantine, as ASan's); older
// ones are unmapped. It costs a copy and two system calls per message: for tests and
// debugging, never production. Checking a view of an untethered subscriber
// (Subscriber.Check) still checks the ring bytes the copy was made from.
var debugViews = os.Getenv("SHMBUS_DEBUG_VIEWS") == "1"

// DebugViews reports whether the view debug mode is on (SHMBUS_DEBUG_VIEWS=1).
func DebugViews() bool { return debugViews }

const debugQuarantine = 4096

type debugView struct {
	mem      []byte
	seq      uint64
	released atomic.Bool
}

// debugTracker: a subscriber's views handed out and not yet released (in poll order).
type debugTracker struct {
	out []*debugView
}

var (
	quarantineMu sync.Mutex
	quarantine   []*debugView
)

// wrap moves v's Data into pages of its own.
func (t *debugTracker) wrap(v *View) {
	page := os.Getpagesize()
	n := (len(v.Data) + page - 1) / page * page
	if n == 0 {
		n = page
	}
	mem, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		panic(fmt.Sprintf("shmbus: SHMBUS_DEBUG_VIEWS: mmap of %d bytes: %v", n, err))
	}
	copy(mem, v.Data)
	d := &debugView{mem: mem, seq: v.Sequence}
	v.Data = mem[:len(v.Data):len(v.Data)]
	v.dbg = d
	t.out = append(t.out, d)
}

// releaseUpTo protects the views with a sequence <= seq (all when all is set).
func (t *debugTracker) releaseUpTo(seq uint64, all bool) {
	keep := t.out[:0]
	for _, d := range t.out {
		if all || d.seq <= seq {
			d.retire()
		} else {
			keep = append(keep, d)
		}
	}
	for i := len(keep); i < len(t.out); i++ {
		t.out[i] = nil
	}
	t.out = keep
}

func (d *debugView) retire() {
	d.released.Store(true)
	if err := syscall.Mprotect(d.mem, syscall.PROT_NONE); err != nil {
		panic(fmt.Sprintf("shmbus: SHMBUS_DEBUG_VIEWS: mprotect: %v", err))
	}
	quarantineMu.Lock()
	quarantine = append(quarantine, d)
	var old *debugView
	if len(quarantine) > debugQuarantine {
		old = quarantine[0]
		quarantine[0] = nil
		quarantine = quarantine[1:]
	}
	quarantineMu.Unlock()
	if old != nil {
		_ = syscall.Munmap(old.mem)
	}
}

// mustLive panics when v is a released view (debug mode only).
func (v *View) mustLive(what string) {
	if v.dbg != nil && v.dbg.released.Load() {
		panic(fmt.Sprintf("shmbus: view of sequence %d used after release (%s; SHMBUS_DEBUG_VIEWS): "+
			"copy what you keep before Release/ReleaseAll/Close", v.Sequence, what))
	}
}
