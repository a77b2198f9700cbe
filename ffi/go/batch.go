package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"

#cgo nocallback shmbus_publisher_commit_messages_n
#cgo noescape shmbus_publisher_commit_messages_n
#cgo nocallback shmbus_publisher_try_claim_n
#cgo noescape shmbus_publisher_try_claim_n
*/
import "C"

import (
	"context"
	"reflect"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
)

// Batch is an open multi-frame claim (Publisher.ClaimBatch): Len() frames taken
// as one ring claim, each a Cap'n Proto message built in place in ring memory,
// published together by Commit in one C call. Readers see none of the frames
// before Commit and all of them after. A Batch belongs to its Publisher (one per
// publisher, reused by the next ClaimBatch) and is valid until Commit, Abort,
// Close or any other claim, offer or commit on the publisher: its builders then
// read as empty (writing through them panics out of range, never touches the ring).
type Batch struct {
	p       *Publisher
	n       int
	max     int
	open    bool
	pending bool          // pre-claimed by the last Commit (pipelining), not handed out yet
	frames  []*batchFrame // frame i's builder; reused by every batch of the publisher
	// C memory handed to the C calls (no Go pointer crosses per batch).
	claims *C.shmbus_claim_t
	words  *C.uint32_t
	ids    *C.uint64_t
	capN   int
}

type batchFrame struct {
	mem   []byte // ring memory of the frame's payload: 8-byte segment table + segment
	msg   capnp.Message
	seg   *capnp.Segment // repointed at each batch (segRepoint), or the last Reset's
	built bool
	root  rootCache // BatchRoot: the root the constructor built in this frame, rebuilt in place
}

// ClaimBatch claims n frames of up to maxBytes each (serialized message, segment
// table included) as one ring claim, and returns the publisher's Batch over them:
// build message i with BatchRoot or Message(i), then Commit. Under policy block it
// waits for space for the whole batch (BlockTimeout, ctx); ErrTooLarge when a
// frame exceeds MaxPayload or the n frames could never fit the ring (n frames of
// 48 + maxBytes bytes more than about half its capacity). On a single-producer
// topic (unless DisablePipelining) Commit also claims the next batch of the same
// shape in its C call, so that a loop of ClaimBatch, build, Commit pays one cgo
// crossing per batch.
func (p *Publisher) ClaimBatch(ctx context.Context, n, maxBytes int) (*Batch, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return nil, err
	}
	if n <= 0 || n > 1<<20 {
		return nil, &Error{Code: CodeInvalidArgument, Msg: "ClaimBatch: n must be in [1, 2^20]"}
	}
	if maxBytes < 16 {
		maxBytes = 16
	}
	cm, err := sizeArg(maxBytes)
	if err != nil {
		return nil, err
	}
	b := p.batchState()
	if b.open && b.pending && b.n == n && b.max == maxBytes {
		b.pending = false
		b.reset()
		return b, nil // pre-claimed by the last Commit: no C call
	}
	p.dropMsg() // also drops an open batch (the C claim_n below aborts it)
	p.open, p.pending = nil, false
	b.ensure(n)
	err = p.blockingN(ctx, n, func() C.uint32_t { return cm },
		func() C.int { return C.shmbus_publisher_try_claim_n(p.h, C.size_t(n), cm, b.claims) })
	if err != nil {
		return nil, err
	}
	b.n, b.max = n, maxBytes
	b.take()
	return b, nil
}

func (p *Publisher) batchState() *Batch {
	if p.batch == nil {
		p.batch = &Batch{p: p}
	}
	return p.batch
}

// ensure sizes the C arrays for n frames.
func (b *Batch) ensure(n int) {
	if n <= b.capN {
		return
	}
	b.freeC()
	b.claims = (*C.shmbus_claim_t)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.shmbus_claim_t{}))))
	b.words = (*C.uint32_t)(C.calloc(C.size_t(n), 4))
	b.ids = (*C.uint64_t)(C.calloc(C.size_t(n), 8))
	b.capN = n
}

func (b *Batch) freeC() {
	if b.capN == 0 {
		return
	}
	C.free(unsafe.Pointer(b.claims))
	C.free(unsafe.Pointer(b.words))
	C.free(unsafe.Pointer(b.ids))
	b.claims, b.words, b.ids, b.capN = nil, nil, nil, 0
}

// take points the frames at the claims the C call wrote.
func (b *Batch) take() {
	cl := unsafe.Slice(b.claims, b.n)
	for len(b.frames) < b.n {
		b.frames = append(b.frames, &batchFrame{})
	}
	for i := 0; i < b.n; i++ {
		b.frames[i].mem = unsafe.Slice((*byte)(unsafe.Pointer(cl[i].data)), int(cl[i].size))
	}
	b.open = true
	b.reset()
}

// reset clears the per-batch state (message ids, built flags).
func (b *Batch) reset() {
	ids := unsafe.Slice(b.ids, b.n)
	for i := range ids {
		ids[i] = 0
	}
	for _, f := range b.frames {
		f.built = false
	}
}

// drop detaches every frame's builder from ring memory (the C batch is gone).
func (b *Batch) drop() {
	if !b.open {
		return
	}
	for _, f := range b.frames {
		if f.built {
			if f.seg != nil && segRepoint {
				setSegData(f.seg, nil)
			} else {
				f.msg.Reset(nil)
			}
		}
		f.built = false
		f.mem = nil
	}
	b.open, b.pending = false, false
}

// Len is the number of frames claimed.
func (b *Batch) Len() int { return b.n }

// Message returns frame i's message and its only segment, over ring memory: build
// it with the generated code (e.g. market.NewRootQuote(seg)). The segment cannot
// grow past the frame (an allocation that does not fit fails).
func (b *Batch) Message(i int) (*capnp.Message, *capnp.Segment, error) {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	return b.message(i)
}

func (b *Batch) message(i int) (*capnp.Message, *capnp.Segment, error) {
	if err := b.p.check(); err != nil {
		return nil, nil, err
	}
	if !b.open || b.pending {
		return nil, nil, &Error{Code: CodeClosed, Msg: "Batch: no open batch"}
	}
	if i < 0 || i >= b.n {
		return nil, nil, &Error{Code: CodeInvalidArgument, Msg: "Batch: frame index out of range"}
	}
	f := b.frames[i]
	f.built = true
	room := f.mem[8:8:len(f.mem)]
	if segRepoint {
		if f.seg == nil {
			seg, err := f.msg.Reset(capnp.SingleSegment(make([]byte, 0)))
			if err != nil {
				return nil, nil, err
			}
			f.seg = seg
		}
		setSegData(f.seg, room)
		return &f.msg, f.seg, nil
	}
	seg, err := f.msg.Reset(capnp.SingleSegment(room))
	if err != nil {
		return nil, nil, err
	}
	f.seg = seg
	return &f.msg, seg, nil
}

// BatchRoot is Message(i) plus the root struct, as ClaimRoot is for single
// messages: the first call for frame index i runs newRoot, later ones for that
// index (in later batches of this publisher) write the same root pointer into the
// frame and return the same struct value over the frame's zeroed ring memory,
// with no allocation. The same conditions as ClaimRoot apply to newRoot.
func BatchRoot[T ~capnp.StructKind](b *Batch, i int, newRoot func(*capnp.Segment) (T, error)) (T, error) {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	_, seg, err := b.message(i)
	if err != nil {
		return T{}, err
	}
	f := b.frames[i]
	fn := reflect.ValueOf(newRoot).Pointer()
	rc := &f.root
	if rc.fn == fn && segRepoint && rc.used+8 <= len(f.mem) {
		*(*uint64)(unsafe.Pointer(&f.mem[8])) = rc.word
		setSegData(f.seg, f.mem[8:8+rc.used:len(f.mem)])
		return T(rc.st), nil
	}
	st, err := newRoot(seg)
	if err != nil {
		return T{}, err
	}
	rc.fn = 0
	s := capnp.Struct(st)
	data := seg.Data()
	if segRepoint && s.Segment() == f.seg && len(data) >= 8 &&
		len(data) == 8+int(s.Size().DataSize)+8*int(s.Size().PointerCount) {
		rc.fn, rc.st, rc.used = fn, s, len(data)
		rc.word = *(*uint64)(unsafe.Pointer(&data[0]))
	}
	return st, nil
}

// SetMessageID sets frame i's message id (0 unless set).
func (b *Batch) SetMessageID(i int, id uint64) {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	if b.open && !b.pending && i >= 0 && i < b.n {
		unsafe.Slice(b.ids, b.n)[i] = C.uint64_t(id)
	}
}

// Commit publishes frames 0..k-1 (each must have been built; k 0 aborts the
// batch): one C call, one timestamp for all of them. Frames k.. are skipped by
// readers. On a single-producer topic with pipelining the same call claims the
// next batch of the same shape (if there is no room, the next ClaimBatch waits
// as usual).
func (b *Batch) Commit(k int, schemaID uint64) error {
	p := b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	p.spin.enter()
	if !b.open || b.pending {
		return &Error{Code: CodeClosed, Msg: "Batch.Commit: no open batch"}
	}
	if k < 0 || k > b.n {
		return &Error{Code: CodeInvalidArgument, Msg: "Batch.Commit: k out of range"}
	}
	words := unsafe.Slice(b.words, b.n)
	for i := 0; i < k; i++ {
		f := b.frames[i]
		ok := f.built && f.msg.NumSegments() == 1
		if ok {
			seg, err := f.msg.Segment(0)
			data := []byte(nil)
			if err == nil {
				data = seg.Data()
			}
			ok = err == nil && len(data) > 0 && unsafe.SliceData(data) == &f.mem[8] && len(data)+8 <= len(f.mem)
			words[i] = C.uint32_t(len(data) / 8)
		}
		if !ok {
			b.drop()
			C.shmbus_publisher_abort(p.h)
			return &Error{Code: CodeInternal, Msg: "Batch.Commit: a frame was not built, or its message left ring memory"}
		}
	}
	n, max := b.n, b.max
	b.drop()
	nextN := 0
	if p.pipeline && k > 0 {
		nextN = n
	}
	rc := C.shmbus_publisher_commit_messages_n(p.h, C.size_t(k), b.words, b.ids, C.uint64_t(schemaID),
		C.size_t(nextN), C.uint32_t(max), b.claims)
	if nextN == 0 {
		return codeError(int(rc))
	}
	if b.claims.data != nil {
		b.n, b.max = n, max
		b.take()
		b.pending = true
	}
	// Otherwise the status is the pre-claim's (the commit cannot fail: every
	// segment was checked against its frame): the messages are published, and
	// the next ClaimBatch claims again.
	return nil
}

// Abort drops the batch (readers skip all of it).
func (b *Batch) Abort() error {
	p := b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	if !b.open {
		return &Error{Code: CodeClosed, Msg: "Batch.Abort: no open batch"}
	}
	b.drop()
	return codeError(int(C.shmbus_publisher_abort(p.h)))
}
