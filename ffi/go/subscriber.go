package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
)

// SubscriberOptions configures Bus.Subscriber. The zero value is the defaults.
type SubscriberOptions struct {
	Partition uint32
	// Untethered subscribers do not hold producers back: a producer may lap them.
	// A lapped subscriber gets ErrLapped once from Poll/PollBatch (never the
	// overwritten bytes), then continues at the producer's tail (the sequence
	// numbers show the gap). A view it holds may be overwritten while it reads
	// it: call Check after reading, and discard what was read on ErrLapped.
	// The default (tethered) holds producers back and is never overwritten.
	Untethered bool
	// Name makes the subscriber durable: closing parks its slot under the name
	// and a subscriber opening with the same name resumes after the last
	// release (durable resume records need the daemon: Connect/OpenEmbedded).
	Name string
	// Schema, when set, is checked by the daemon's schema registry against the
	// topic's stored versions before the partition is opened (never stored): an
	// incompatible one makes the open fail with ErrIncompatible naming the field.
	Schema      *Schema
	Wait        WaitStrategy
	Spin        time.Duration // hybrid: spin this long before sleeping (0: 20 µs)
	OpenTimeout time.Duration // wait for a topic being created (0: 5 s)
	// BatchSize is the most views one PollBatch call returns (0: 256).
	BatchSize int
	// Start is where the subscriber starts (zero value: StartLatest). Other starts
	// replay a durable topic's log first; see StartPosition.
	Start StartPosition
}

// View is one message in the ring, read in place.
//
// DATA IS RING MEMORY: valid only until this view is released (Release of it or
// of a later view, ReleaseAll) or the subscriber is closed. After that another
// process may overwrite it while you read. Copy what you keep before releasing.
// Data is mapped read-only: writing to it crashes the process.
type View struct {
	Data         []byte
	ProducerID   uint32
	Sequence     uint64 // partition sequence, dense, from 1
	TimestampNs  uint64 // CLOCK_MONOTONIC at commit
	MessageID    uint64
	SchemaID     uint64
	Position     uint64 // ring position of the frame
	NextPosition uint64 // release token

	ptr unsafe.Pointer // C pointer of Data (also for empty payloads)
	dbg *debugView     // SHMBUS_DEBUG_VIEWS only (debugviews.go)
}

// Subscriber reads one partition of a topic. Use it from one goroutine at a
// time; Close may come from any goroutine.
type Subscriber struct {
	mu      sync.Mutex
	closing atomic.Bool
	hmu     sync.Mutex // guards h for Close's interrupt (h is freed under mu and hmu)
	h       *C.shmbus_subscriber_t
	cv      []C.shmbus_view_t // C memory: BatchSize views + 1 scratch for Release
	dbg     debugTracker      // SHMBUS_DEBUG_VIEWS only
	n       *C.size_t
	rel     *C.shmbus_view_t
	spin    spinner // spinning waits in slices (spin.go)
}

// SubscriberContext is Subscriber, closed when ctx ends (cancelled or past its
// deadline): a consumer that is cancelled and forgets Close cannot keep its
// tethered cursor, and with it the producer, held back for good. A Poll blocked at
// that moment returns ErrClosed (or ctx.Err() when it was given the same ctx).
// Closing it earlier yourself is fine; the subscriber does not outlive ctx.
func (b *Bus) SubscriberContext(ctx context.Context, topic string, opts *SubscriberOptions) (*Subscriber, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := b.Subscriber(topic, opts)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { s.Close() })
	return s, nil
}

// Subscriber opens a subscriber on topic. By default it sees the messages published
// after it joined; opts.Start can start it in a durable topic's past.
func (b *Bus) Subscriber(topic string, opts *SubscriberOptions) (*Subscriber, error) {
	var o SubscriberOptions
	if opts != nil {
		o = *opts
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 256
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return nil, err
	}
	co, freeOpts := o.toC()
	defer freeOpts()
	if o.Schema != nil {
		if _, err := presentSchema(bh, topic, o.Schema, C.SHMBUS_SCHEMA_SUBSCRIBER); err != nil {
			return nil, err
		}
	}
	cn := C.CString(topic)
	defer C.free(unsafe.Pointer(cn))
	var h *C.shmbus_subscriber_t
	if err := call(func() C.int { return C.shmbus_subscriber_open(bh, cn, &co, &h) }); err != nil {
		return nil, err
	}
	// Views, the count and the release scratch live in C memory: C never gets
	// Go memory to write into.
	nv := o.BatchSize + 1
	mem := C.calloc(C.size_t(nv), C.size_t(unsafe.Sizeof(C.shmbus_view_t{})))
	cv := unsafe.Slice((*C.shmbus_view_t)(mem), nv)
	return &Subscriber{
		h:    h,
		cv:   cv[:o.BatchSize],
		rel:  &cv[o.BatchSize],
		n:    (*C.size_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.size_t(0))))),
		spin: newSpinner(o.Wait),
	}, nil
}

// Close releases the subscriber: its slot is freed and every view it handed out
// becomes invalid. Safe from any goroutine; a blocked Poll returns ErrClosed.
// Closing twice is a no-op.
func (s *Subscriber) Close() error {
	s.closing.Store(true)
	s.hmu.Lock()
	if s.h != nil {
		C.shmbus_subscriber_interrupt(s.h) // a Poll waiting returns now
	}
	s.hmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return nil
	}
	s.hmu.Lock()
	C.shmbus_subscriber_close(s.h)
	s.h = nil
	if debugViews {
		s.dbg.releaseUpTo(0, true)
	}
	s.hmu.Unlock()
	C.free(unsafe.Pointer(unsafe.SliceData(s.cv)))
	C.free(unsafe.Pointer(s.n))
	s.cv, s.n, s.rel = nil, nil, nil
	return nil
}

var errSubClosed = &Error{Code: CodeClosed, Msg: "subscriber is closed"}

func (s *Subscriber) check() error {
	if s.h == nil || s.closing.Load() {
		return errSubClosed
	}
	return nil
}

// toC converts the options for shmbus_subscriber_open (Subscriber, Responder); call
// the returned function after the open (it frees the C copy of the name).
func (o *SubscriberOptions) toC() (C.shmbus_subscriber_options_t, func()) {
	var co C.shmbus_subscriber_options_t
	C.shmbus_subscriber_options_init(&co)
	co.partition = C.uint32_t(o.Partition)
	if o.Untethered {
		co.tethered = 0
	}
	co.wait = o.Wait.c()
	co.start = o.Start.kind
	co.start_value = C.uint64_t(o.Start.value)
	if o.Spin > 0 {
		co.spin_ns = durationNs(o.Spin)
	}
	if o.OpenTimeout > 0 {
		co.open_timeout_ms = C.int32_t(o.OpenTimeout.Milliseconds())
	}
	if o.Name == "" {
		return co, func() {}
	}
	cname := C.CString(o.Name)
	co.name = cname
	return co, func() { C.free(unsafe.Pointer(cname)) }
}

func toView(c *C.shmbus_view_t, v *View) {
	v.ptr = unsafe.Pointer(c.data)
	v.Data = unsafe.Slice((*byte)(v.ptr), int(c.size))
	v.ProducerID = uint32(c.producer_id)
	v.Sequence = uint64(c.sequence)
	v.TimestampNs = uint64(c.timestamp_ns)
	v.MessageID = uint64(c.message_id)
	v.SchemaID = uint64(c.schema_id)
	v.Position = uint64(c.position)
	v.NextPosition = uint64(c.next_position)
}

// TryPoll returns the next message, or ErrEmpty at once.
func (s *Subscriber) TryPoll() (View, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var v View
	s.spin.enter()
	if err := s.check(); err != nil {
		return v, err
	}
	if err := codeError(int(C.shmbus_subscriber_poll(s.h, &s.cv[0]))); err != nil {
		return v, err
	}
	toView(&s.cv[0], &v)
	if debugViews {
		s.dbg.wrap(&v)
	}
	return v, nil
}

// Poll returns the next message, waiting until one arrives, ctx ends (ctx.Err())
// or the subscriber is closed (ErrClosed). The view is NOT released: call
// Release (or ReleaseAll) when done with it.
func (s *Subscriber) Poll(ctx context.Context) (View, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var v View
	s.spin.enter()
	// First without waiting; then waits until a message, ctx's deadline, ctx's
	// end or Close (both interrupt the wait in the C library at once).
	timeout := C.int64_t(0)
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		if err := s.check(); err != nil {
			return v, err
		}
		rc := int(C.shmbus_subscriber_poll_wait(s.h, &s.cv[0], s.spin.wait(timeout)))
		if rc == 0 {
			toView(&s.cv[0], &v)
			if debugViews {
				s.dbg.wrap(&v)
			}
			return v, nil
		}
		if rc != CodeTimedOut && rc != CodeInterrupted {
			return v, codeError(rc)
		}
		if stop == nil {
			stop = s.interruptOnDone(ctx)
		}
		var err error
		if timeout, err = waitFor(ctx); err != nil {
			return v, err
		}
	}
}

// interruptOnDone makes ctx's end interrupt this subscriber's wait (until stop).
func (s *Subscriber) interruptOnDone(ctx context.Context) (stop func()) {
	return interruptOnDone(ctx, func() { C.shmbus_subscriber_interrupt(s.h) })
}

// PollBatch fills views with the next messages in one C call: it waits for at
// least one (like Poll), then takes whatever else is ready, up to len(views) and
// the subscriber's BatchSize. It returns how many it filled. None is released:
// ReleaseAll (or Release of the last one you are done with) when done.
func (s *Subscriber) PollBatch(ctx context.Context, views []View) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pollBatch(ctx, views, true)
}

// TryPollBatch is PollBatch without waiting: ErrEmpty when nothing is ready.
func (s *Subscriber) TryPollBatch(views []View) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pollBatch(context.Background(), views, false)
}

func (s *Subscriber) pollBatch(ctx context.Context, views []View, wait bool) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	max := len(views)
	if max > len(s.cv) {
		max = len(s.cv)
	}
	if max == 0 {
		return 0, nil
	}
	// As Poll: first without waiting, then interruptible waits.
	s.spin.enter()
	timeout := C.int64_t(0)
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		if err := s.check(); err != nil {
			return 0, err
		}
		rc := int(C.shmbus_subscriber_poll_batch(s.h, &s.cv[0], C.size_t(max), s.spin.wait(timeout), s.n))
		if rc == 0 {
			n := int(*s.n)
			for i := 0; i < n; i++ {
				toView(&s.cv[i], &views[i])
				if debugViews {
					s.dbg.wrap(&views[i])
				}
			}
			return n, nil
		}
		if !wait || (rc != CodeTimedOut && rc != CodeEmpty && rc != CodeInterrupted) {
			return 0, codeError(rc)
		}
		if stop == nil {
			stop = s.interruptOnDone(ctx)
		}
		var err error
		if timeout, err = waitFor(ctx); err != nil {
			return 0, err
		}
	}
}

// Release frees v and every view polled before it: their bytes may be reused.
func (s *Subscriber) Release(v *View) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	if v == nil || v.ptr == nil {
		return &Error{Code: CodeInvalidArgument, Msg: "Release: not a polled view"}
	}
	s.rel.data = (*C.uint8_t)(v.ptr)
	s.rel.size = C.uint32_t(len(v.Data))
	s.rel.position = C.uint64_t(v.Position)
	s.rel.next_position = C.uint64_t(v.NextPosition)
	s.rel.sequence = C.uint64_t(v.Sequence) // a replaying subscriber releases by sequence
	if debugViews {
		s.dbg.releaseUpTo(v.Sequence, false)
	}
	return codeError(int(C.shmbus_subscriber_release(s.h, s.rel)))
}

// Check tells whether what was read from v is intact: nil, or ErrLapped when the
// producer may have overwritten v's bytes while they were read (untethered
// subscribers only; discard what was read). Call it after reading a view and
// before acting on what was read. Always nil for a tethered subscriber, whose
// views are never overwritten before they are released.
func (s *Subscriber) Check(v *View) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	if v == nil || v.ptr == nil {
		return &Error{Code: CodeInvalidArgument, Msg: "Check: not a polled view"}
	}
	s.rel.data = (*C.uint8_t)(v.ptr)
	s.rel.size = C.uint32_t(len(v.Data))
	s.rel.position = C.uint64_t(v.Position)
	s.rel.next_position = C.uint64_t(v.NextPosition)
	return codeError(int(C.shmbus_subscriber_check(s.h, s.rel)))
}

// ReleaseAll frees every view polled so far.
func (s *Subscriber) ReleaseAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	if debugViews {
		s.dbg.releaseUpTo(0, true)
	}
	return codeError(int(C.shmbus_subscriber_release_all(s.h)))
}

// SubscriberStats are the subscriber's counters.
type SubscriberStats struct {
	Received uint64
	Waits    uint64 // times a wait slept on the futex
	Corrupt  uint64 // polls that found an invalid frame
	Position uint64 // read position in the ring
}

// Stats returns the subscriber's counters.
func (s *Subscriber) Stats() (SubscriberStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return SubscriberStats{}, err
	}
	var st C.shmbus_subscriber_stats_t
	if err := codeError(int(C.shmbus_subscriber_stats(s.h, &st))); err != nil {
		return SubscriberStats{}, err
	}
	return SubscriberStats{Received: uint64(st.received), Waits: uint64(st.waits),
		Corrupt: uint64(st.corrupt), Position: uint64(st.position)}, nil
}

// ---- reading Cap'n Proto in place ------------------------------------------

// Reader reads views as Cap'n Proto messages in place (no copy), reusing its
// state from one message to the next. The bytes are untrusted (another process
// wrote them): the segment table is checked against the view, and reads are
// bounded by a traversal limit and a depth limit. A message from Read is valid
// until the next Read and, like the view's bytes, only until the view is released.
// A Reader is not safe for concurrent use.
type Reader struct {
	// TraverseLimitBytes bounds the bytes a reader may traverse per message
	// (0: 8 × the payload + 512 bytes, as the C++ reader).
	TraverseLimitBytes uint64
	DepthLimit         uint // 0: 64

	msg   capnp.Message
	arena capnp.ReadOnlySingleSegment
	used  bool
}

// Read returns the Cap'n Proto message in v, over the ring bytes. ErrMalformed
// when the segment table does not fit the payload.
func (r *Reader) Read(v *View) (*capnp.Message, error) {
	v.mustLive("Reader.Read")
	seg0, count, err := firstSegment(v.Data)
	if err != nil {
		return nil, err
	}
	limit := r.TraverseLimitBytes
	if limit == 0 {
		limit = uint64(len(v.Data))*8 + 512
	}
	depth := r.DepthLimit
	if depth == 0 {
		depth = 64
	}
	if count > 1 {
		// Rare (a C++ message that outgrew its claim and was copied in
		// several segments): a fresh message over the same bytes, still no copy.
		segs, err := segments(v.Data, count)
		if err != nil {
			return nil, err
		}
		return &capnp.Message{Arena: capnp.MultiSegment(segs), TraverseLimit: limit, DepthLimit: depth}, nil
	}
	if r.used {
		r.msg.Reset(nil) // releases r.arena (its data becomes nil)
	}
	r.arena.ReplaceData(seg0)
	r.msg.TraverseLimit = limit
	r.msg.DepthLimit = depth
	if _, err := r.msg.Reset(&r.arena); err != nil {
		return nil, &Error{Code: CodeMalformed, Msg: err.Error()}
	}
	r.msg.ResetReadLimit(limit)
	r.used = true
	return &r.msg, nil
}

// Message reads v as a Cap'n Proto message in place (a new Reader each call;
// use a Reader to read many without allocating).
func (v *View) Message() (*capnp.Message, error) {
	var r Reader
	return r.Read(v)
}

var errMalformedTable = &Error{Code: CodeMalformed, Msg: "segment table does not fit the payload"}

// firstSegment checks a flat Cap'n Proto message's segment table against b and
// returns its first segment and the segment count.
func firstSegment(b []byte) ([]byte, uint64, error) {
	if len(b) < 8 || len(b)%8 != 0 {
		return nil, 0, errMalformedTable
	}
	count := uint64(binary.LittleEndian.Uint32(b)) + 1
	if count > uint64(len(b))/4 {
		return nil, 0, errMalformedTable
	}
	table := ((count+1)*4 + 7) &^ 7
	if table > uint64(len(b)) {
		return nil, 0, errMalformedTable
	}
	total := table
	for i := uint64(0); i < count; i++ {
		total += uint64(binary.LittleEndian.Uint32(b[4+4*i:])) * 8
		if total > uint64(len(b)) {
			return nil, 0, errMalformedTable
		}
	}
	w := uint64(binary.LittleEndian.Uint32(b[4:]))
	return b[table : table+w*8 : table+w*8], count, nil
}

// segments splits a flat message already checked by firstSegment.
func segments(b []byte, count uint64) ([][]byte, error) {
	segs := make([][]byte, count)
	off := ((count+1)*4 + 7) &^ 7
	for i := uint64(0); i < count; i++ {
		w := uint64(binary.LittleEndian.Uint32(b[4+4*i:]))
		segs[i] = b[off : off+w*8 : off+w*8]
		off += w * 8
	}
	return segs, nil
}
