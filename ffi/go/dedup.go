package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"sync"
	"unsafe"
)

// DedupOptions configures OpenDedup. The zero value is a 4096-id window in memory.
type DedupOptions struct {
	Capacity int    // (producer id, message id) pairs remembered (0: 4096)
	Path     string // the persisted state ("": in memory only)
}

// DedupStats are a window's counters.
type DedupStats struct {
	ByPosition uint64 // duplicates caught by the sequence (a consumer restart)
	ByID       uint64 // duplicates caught by (producer id, message id) (a producer's retry)
	Position   uint64 // the last sequence recorded
	Size       uint64 // ids in the window
}

// DedupWindow drops messages a consumer handled already (docs/messaging.md, "Dedup"):
// across its own restart, by the partition sequence (a message at or below the last
// one recorded: a durable subscriber gets again what it had not released), and across
// a producer's retry, by (producer id, message id) among the last Capacity recorded
// (message id 0 is not checked; give the publisher a stable ProducerID). Commit
// writes the window, the position and an application state blob to Path atomically:
// a handler that keeps its side effects in that state is effectively-once. It is
// C++'s shmbus::DedupWindow through the C ABI. Safe for concurrent use.
//
//	w, _ := shmbus.OpenDedup(shmbus.DedupOptions{Path: "/var/lib/app/orders.dedup"})
//	state := w.AppState()                  // what the last Commit saved
//	for {
//		v, _ := sub.Poll(ctx)                // a named (durable) subscriber
//		if seen, _ := w.Seen(&v); !seen {
//			state = apply(v, state)
//			w.Record(&v)
//			w.Commit(state)                    // the window, the position and state: one write
//		}
//		sub.Release(&v)                      // after the commit
//	}
type DedupWindow struct {
	mu sync.Mutex
	h  *C.shmbus_dedup_t
}

var errDedupClosed = &Error{Code: CodeClosed, Msg: "dedup window is closed"}

// OpenDedup opens a window, loading opts.Path when it exists (a file that is not a
// valid state is ErrInvalidArgument naming it: never half-used).
func OpenDedup(opts DedupOptions) (*DedupWindow, error) {
	var cp *C.char
	if opts.Path != "" {
		cp = C.CString(opts.Path)
		defer C.free(unsafe.Pointer(cp))
	}
	capacity := opts.Capacity
	if capacity < 0 {
		capacity = 0
	}
	var h *C.shmbus_dedup_t
	if err := call(func() C.int { return C.shmbus_dedup_open(C.size_t(capacity), cp, &h) }); err != nil {
		return nil, err
	}
	return &DedupWindow{h: h}, nil
}

// Close frees the window (nothing is written: Commit first). Closing twice is a no-op.
func (w *DedupWindow) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h != nil {
		C.shmbus_dedup_close(w.h)
		w.h = nil
	}
	return nil
}

// SeenIDs reports whether the message with these header fields was handled already
// (counted in Stats).
func (w *DedupWindow) SeenIDs(producerID uint32, messageID, sequence uint64) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h == nil {
		return false, errDedupClosed
	}
	var s C.int
	if err := codeError(int(C.shmbus_dedup_seen(w.h, C.uint32_t(producerID), C.uint64_t(messageID),
		C.uint64_t(sequence), &s))); err != nil {
		return false, err
	}
	return s != 0, nil
}

// Seen reports whether v was handled already.
func (w *DedupWindow) Seen(v *View) (bool, error) {
	return w.SeenIDs(v.ProducerID, v.MessageID, v.Sequence)
}

// RecordIDs marks a message handled: the position becomes its sequence, its ids
// enter the window.
func (w *DedupWindow) RecordIDs(producerID uint32, messageID, sequence uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h == nil {
		return errDedupClosed
	}
	return codeError(int(C.shmbus_dedup_record(w.h, C.uint32_t(producerID), C.uint64_t(messageID), C.uint64_t(sequence))))
}

// Record marks v handled.
func (w *DedupWindow) Record(v *View) error {
	return w.RecordIDs(v.ProducerID, v.MessageID, v.Sequence)
}

// Commit persists the window, the position and state atomically (nil state: the
// state as it is). An OS failure is an *Error with its errno.
func (w *DedupWindow) Commit(state []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h == nil {
		return errDedupClosed
	}
	var p unsafe.Pointer
	if state != nil {
		// C copies it during the call (cgo: Go memory passed, not kept).
		p = C.CBytes(state)
		defer C.free(p)
	}
	return call(func() C.int { return C.shmbus_dedup_commit(w.h, p, C.size_t(len(state))) })
}

// AppState returns a copy of the application state (as loaded or last committed).
func (w *DedupWindow) AppState() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h == nil {
		return nil
	}
	var d *C.uint8_t
	var n C.size_t
	if C.shmbus_dedup_app_state(w.h, &d, &n) != 0 || n == 0 {
		return []byte{}
	}
	return C.GoBytes(unsafe.Pointer(d), C.int(n))
}

// Stats returns the window's counters.
func (w *DedupWindow) Stats() DedupStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h == nil {
		return DedupStats{}
	}
	var s C.shmbus_dedup_stats_t
	C.shmbus_dedup_stats(w.h, &s)
	return DedupStats{ByPosition: uint64(s.by_position), ByID: uint64(s.by_id), Position: uint64(s.position), Size: uint64(s.size)}
}
