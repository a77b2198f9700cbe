package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"

// The per-message calls never call back into Go and keep no pointer they are
// given: the cgo runtime may skip the bookkeeping for either.
#cgo nocallback shmbus_publisher_commit_message_and_claim
#cgo noescape shmbus_publisher_commit_message_and_claim
#cgo nocallback shmbus_publisher_commit_message
#cgo noescape shmbus_publisher_commit_message
#cgo nocallback shmbus_publisher_claim
#cgo noescape shmbus_publisher_claim

// One C allocation per publisher for everything the hot path passes by pointer,
// so that no Go memory is handed to C per message (and nothing escapes).
typedef struct gosb_pub_scratch {
  shmbus_claim_t claim;
  shmbus_publisher_stats_t stats;
  size_t published;
} gosb_pub_scratch;
*/
import "C"

import (
	"context"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
)

// PublisherOptions configures Bus.Publisher. The zero value is the defaults.
type PublisherOptions struct {
	Partition  uint32
	ProducerID uint32       // 0: the pid
	Wait       WaitStrategy // how to wait for space under policy block
	// BlockTimeout bounds a wait for space under policy block (0: 1 s; < 0: only
	// the context bounds it). ErrBackPressured when it runs out.
	BlockTimeout time.Duration
	OpenTimeout  time.Duration // wait for a topic being created (0: 5 s)
	// DisablePipelining turns off pre-claiming: by default CommitMessage commits
	// and claims the next message's room in one C call (one cgo crossing per
	// message). Always off on multi-producer topics, where a pre-claimed frame
	// would hold back readers of the other producers' later frames.
	DisablePipelining bool
	// Schema, when set, is presented to the daemon's schema registry before the
	// partition is opened (Bus.RegisterSchema): a new compatible version is stored,
	// an incompatible one makes the open fail with ErrIncompatible naming the type,
	// the field and the rule. Build it with SchemaOf from generated code.
	Schema *Schema
}

// Publisher writes messages into one partition of a topic. Use it from one
// goroutine at a time; Close may come from any goroutine.
type Publisher struct {
	mu      sync.Mutex
	closing atomic.Bool
	hmu     sync.Mutex // guards h for Close's interrupt (h is freed under mu and hmu)
	h       *C.shmbus_publisher_t
	s       *C.gosb_pub_scratch

	policy       Policy
	blockTimeout time.Duration
	pipeline     bool
	maxPayload   int

	open     []byte // the open claim (ring memory), or nil
	pending  bool   // open was pre-claimed by CommitMessage (pipelining)
	msgClaim bool   // open is used by p.msg (ClaimMessage)
	nextMax  int    // size to pre-claim
	msg      capnp.Message
	seg      *capnp.Segment // p.msg's only segment, repointed at each claim (segRepoint)
	root     rootCache      // ClaimRoot: the root of the previous message, rebuilt in place
	batch    *Batch         // ClaimBatch: the publisher's multi-frame claim (reused)

	fallbacks uint64
	spin      spinner // spinning waits in slices (spin.go)
}

// Publisher opens a publisher on topic. On a single-producer topic a partition
// takes one publisher at a time (ErrAlreadyExists otherwise).
func (b *Bus) Publisher(topic string, opts *PublisherOptions) (*Publisher, error) {
	var o PublisherOptions
	if opts != nil {
		o = *opts
	}
	cfg, err := b.DescribeTopic(topic)
	if err != nil {
		return nil, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return nil, err
	}
	var co C.shmbus_publisher_options_t
	C.shmbus_publisher_options_init(&co)
	co.partition = C.uint32_t(o.Partition)
	co.producer_id = C.uint32_t(o.ProducerID)
	co.wait = o.Wait.c()
	if o.BlockTimeout == 0 {
		o.BlockTimeout = time.Second
	}
	// The C claim never waits (block timeout 0): Publisher.blocking waits for space
	// through shmbus_publisher_wait_space, which ctx interrupts, until BlockTimeout.
	co.block_timeout_ns = 0
	if o.OpenTimeout > 0 {
		co.open_timeout_ms = C.int32_t(o.OpenTimeout.Milliseconds())
	}
	if o.Schema != nil {
		if _, err := presentSchema(bh, topic, o.Schema, 0); err != nil {
			return nil, err
		}
	}
	cn := C.CString(topic)
	defer C.free(unsafe.Pointer(cn))
	var h *C.shmbus_publisher_t
	if err := call(func() C.int { return C.shmbus_publisher_open(bh, cn, &co, &h) }); err != nil {
		return nil, err
	}
	p := &Publisher{
		h:            h,
		s:            (*C.gosb_pub_scratch)(C.calloc(1, C.size_t(unsafe.Sizeof(C.gosb_pub_scratch{})))),
		policy:       cfg.Policy,
		blockTimeout: o.BlockTimeout,
		pipeline:     !o.DisablePipelining && !cfg.MultiProducer,
		maxPayload:   int(C.shmbus_publisher_max_payload(h)),
		spin:         newSpinner(o.Wait),
	}
	if segRepoint {
		// One message and one arena for the publisher's life: each claim repoints
		// the segment at its ring memory (no allocation per message). The arena
		// has no buffer pool, so it cannot grow past the claim.
		seg, err := p.msg.Reset(capnp.SingleSegment(make([]byte, 0)))
		if err != nil {
			C.shmbus_publisher_close(h)
			C.free(unsafe.Pointer(p.s))
			return nil, err
		}
		p.seg = seg
	}
	return p, nil
}

// Close aborts an open claim and releases the publisher. Safe from any
// goroutine; a blocked Claim/Offer returns ErrClosed. Closing twice is a no-op.
func (p *Publisher) Close() error {
	p.closing.Store(true)
	p.hmu.Lock()
	if p.h != nil {
		C.shmbus_publisher_interrupt(p.h) // a Claim waiting for space returns now
	}
	p.hmu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.h == nil {
		return nil
	}
	p.dropMsg()
	p.hmu.Lock()
	C.shmbus_publisher_close(p.h)
	p.h = nil
	p.hmu.Unlock()
	C.free(unsafe.Pointer(p.s))
	if p.batch != nil {
		p.batch.freeC()
	}
	p.s, p.open = nil, nil
	return nil
}

// ClaimedBytes returns the open claim's bytes (ring memory, including the 8-byte
// segment table of a ClaimMessage), or nil when no claim is open. Same lifetime
// as the claim.
func (p *Publisher) ClaimedBytes() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// MaxPayload is the largest payload a message on this topic may have.
func (p *Publisher) MaxPayload() int { return p.maxPayload }

var errPubClosed = &Error{Code: CodeClosed, Msg: "publisher is closed"}

func (p *Publisher) check() error {
	if p.h == nil || p.closing.Load() {
		return errPubClosed
	}
	return nil
}

func sizeArg(n int) (C.uint32_t, error) {
	if n < 0 || n > math.MaxUint32 {
		return 0, ErrInvalidArgument
	}
	return C.uint32_t(n), nil
}

// dropMsg detaches p.msg from ring memory (its segment then reads as empty, so a
// stale builder cannot write into the ring: its writes panic out of range).
func (p *Publisher) dropMsg() {
	if p.batch != nil {
		p.batch.drop() // every C claim, offer or abort drops an open batch too
	}
	if p.msgClaim {
		if p.seg != nil {
			setSegData(p.seg, nil)
		} else {
			p.msg.Reset(nil)
		}
		p.msgClaim = false
	}
}

func (p *Publisher) setOpen() {
	p.open = unsafe.Slice((*byte)(unsafe.Pointer(p.s.claim.data)), int(p.s.claim.size))
}

// blocking runs retry (a C call that never waits: the C publisher's block timeout
// is 0) and, while it reports a full ring under policy block, waits for space for
// need() bytes in the C library until BlockTimeout runs out (ErrBackPressured) or
// ctx ends (ctx.Err(), at once: the wait is interrupted), then retries.
func (p *Publisher) blocking(ctx context.Context, need func() C.uint32_t, retry func() C.int) error {
	return p.blockingN(ctx, 1, need, retry)
}

// blockingN is blocking for a claim of `frames` frames of need() bytes (ClaimBatch).
func (p *Publisher) blockingN(ctx context.Context, frames int, need func() C.uint32_t, retry func() C.int) error {
	rc := int(retry())
	if rc == 0 {
		return nil
	}
	// Interrupted: an interrupt left pending by an earlier call's context (it
	// fired after that call returned); this call has not waited yet.
	// Policy spill waits like block (the C++ Publisher's rule): only a named,
	// tethered subscriber (or its parked slot) can hold the producer there.
	if p.policy == PolicyFail || (rc != CodeBackPressured && rc != CodeInterrupted) {
		return codeError(rc)
	}
	stop := interruptOnDone(ctx, func() { C.shmbus_publisher_interrupt(p.h) })
	defer stop()
	p.spin.enter()
	var deadline time.Time
	if p.blockTimeout > 0 {
		deadline = time.Now().Add(p.blockTimeout)
	}
	for {
		if err := p.check(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		timeout := C.int64_t(-1)
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return ErrBackPressured
			}
			timeout = durationNs(left)
		}
		timeout = p.spin.wait(timeout)
		if frames > 1 {
			rc = int(C.shmbus_publisher_wait_space_n(p.h, C.size_t(frames), need(), timeout))
		} else {
			rc = int(C.shmbus_publisher_wait_space(p.h, need(), timeout))
		}
		switch rc {
		case 0:
			if rc = int(retry()); rc == 0 {
				return nil
			}
			if rc != CodeBackPressured && rc != CodeInterrupted {
				return codeError(rc)
			}
		case CodeBackPressured, CodeInterrupted: // the deadline or ctx, checked above
		default:
			return codeError(rc)
		}
	}
}

// Claim reserves room for n payload bytes and returns them: zeroed ring memory,
// 8-byte aligned, at least n long, yours until Commit, Abort or Close. Under
// policy block it waits for space (BlockTimeout, ctx); under policy fail it
// returns ErrBackPressured at once. A claim still open is dropped first.
func (p *Publisher) Claim(ctx context.Context, n int) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.claim(ctx, n, true)
}

// TryClaim is Claim without waiting.
func (p *Publisher) TryClaim(n int) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.claim(context.Background(), n, false)
}

func (p *Publisher) claim(ctx context.Context, n int, wait bool) ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	cn, err := sizeArg(n)
	if err != nil {
		return nil, err
	}
	p.dropMsg()
	p.open, p.pending = nil, false
	if wait {
		err = p.blocking(ctx, func() C.uint32_t { return cn },
			func() C.int { return C.shmbus_publisher_claim(p.h, cn, &p.s.claim) })
	} else {
		err = codeError(int(C.shmbus_publisher_try_claim(p.h, cn, &p.s.claim)))
	}
	if err != nil {
		return nil, err
	}
	p.setOpen()
	return p.open, nil
}

// Commit publishes the open claim with its first `used` bytes as the payload.
func (p *Publisher) Commit(used int, messageID, schemaID uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	p.spin.enter()
	cu, err := sizeArg(used)
	if err != nil {
		return err
	}
	p.dropMsg()
	p.open, p.pending = nil, false
	return codeError(int(C.shmbus_publisher_commit(p.h, cu, C.uint64_t(messageID), C.uint64_t(schemaID))))
}

// Abort drops the open claim (readers skip it). ErrClosed if none is open.
func (p *Publisher) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	return p.abort()
}

func (p *Publisher) abort() error {
	p.dropMsg()
	p.open, p.pending = nil, false
	return codeError(int(C.shmbus_publisher_abort(p.h)))
}

// ClaimMessage claims room for a Cap'n Proto message of up to maxBytes
// (serialized, segment table included) and returns a message whose only segment
// is that ring memory: build it with the generated code (e.g.
// market.NewRootQuote(seg)), then CommitMessage. The segment cannot grow past
// the claim: an allocation that does not fit fails with an error (then Abort and
// use OfferMessage, or use Publish, which does that for you).
// The message and everything built on it are valid until CommitMessage, Abort or
// Close; do not keep them.
func (p *Publisher) ClaimMessage(ctx context.Context, maxBytes int) (*capnp.Message, *capnp.Segment, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.claimMessage(ctx, maxBytes)
}

func (p *Publisher) claimMessage(ctx context.Context, maxBytes int) (*capnp.Message, *capnp.Segment, error) {
	if maxBytes < 16 {
		maxBytes = 16
	}
	if err := p.check(); err != nil {
		return nil, nil, err
	}
	if !(p.pending && len(p.open) >= maxBytes) {
		if _, err := p.claim(ctx, maxBytes, true); err != nil {
			return nil, nil, err
		}
	}
	p.pending = false
	p.nextMax = maxBytes
	// The builder's first segment: the claim past the 8-byte segment table,
	// empty but with the claim's capacity. SingleSegment over caller memory
	// refuses to grow beyond it (it has no buffer pool to grow into).
	if p.seg != nil {
		setSegData(p.seg, p.open[8:8:len(p.open)])
		p.msgClaim = true
		return &p.msg, p.seg, nil
	}
	first, err := p.msg.Reset(capnp.SingleSegment(p.open[8:8:len(p.open)]))
	if err != nil {
		p.abort()
		return nil, nil, err
	}
	p.msgClaim = true
	return &p.msg, first, nil
}

// ClaimRoot is ClaimMessage plus the root struct, for publishing many messages of
// one root type in a loop: newRoot is the generated constructor (e.g.
// market.NewRootQuote). The first call runs it; later calls reuse what it built:
// they write the same root pointer into the new claim and return the same struct
// value over the new ring memory (zeroed), so a message costs no allocation and
// no capnp set-up. Set the fields, then CommitMessage (or Abort). The struct is
// valid until CommitMessage, Abort or Close, like ClaimMessage's segment: writing
// through it afterwards panics (out of range) instead of touching the ring.
//
// newRoot must be a plain constructor: the reuse is keyed on the function and
// checked against what it built (the root must be the segment's first and only
// object); anything else runs newRoot every time, which is ClaimMessage's cost.
func ClaimRoot[T ~capnp.StructKind](ctx context.Context, p *Publisher, maxBytes int,
	newRoot func(*capnp.Segment) (T, error)) (T, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, seg, err := p.claimMessage(ctx, maxBytes)
	if err != nil {
		return T{}, err
	}
	fn := reflect.ValueOf(newRoot).Pointer()
	rc := &p.root
	if rc.fn == fn && p.seg != nil && rc.used+8 <= len(p.open) {
		// The segment: root pointer word + struct, zeroed ring memory.
		*(*uint64)(unsafe.Pointer(&p.open[8])) = rc.word
		setSegData(p.seg, p.open[8:8+rc.used:len(p.open)])
		return T(rc.st), nil
	}
	st, err := newRoot(seg)
	if err != nil {
		p.abort()
		return T{}, err
	}
	rc.fn = 0
	s := capnp.Struct(st)
	data := seg.Data()
	// Cacheable: built in the repointed segment, one word of root pointer then the
	// struct and nothing else (a root with no pointer fields set, which is what a
	// constructor returns).
	if p.seg != nil && s.Segment() == p.seg && len(data) >= 8 &&
		len(data) == 8+int(s.Size().DataSize)+8*int(s.Size().PointerCount) {
		rc.fn, rc.st, rc.used = fn, s, len(data)
		rc.word = *(*uint64)(unsafe.Pointer(&data[0]))
	}
	return st, nil
}

// rootCache is what ClaimRoot reuses: the root struct (over p.seg, which is
// repointed at each claim), its root pointer word and the segment bytes it takes.
type rootCache struct {
	fn   uintptr // code pointer of the constructor, 0: nothing cached
	st   capnp.Struct
	word uint64
	used int
}

// CommitMessage publishes the message built on ClaimMessage's segment. Unless
// pipelining is off it also claims room for the next message in the same C
// call (that claim never blocks the caller for long: if there is no room the
// next ClaimMessage waits as usual).
func (p *Publisher) CommitMessage(messageID, schemaID uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.commitMessage(messageID, schemaID)
}

func (p *Publisher) commitMessage(messageID, schemaID uint64) error {
	if err := p.check(); err != nil {
		return err
	}
	p.spin.enter()
	if !p.msgClaim || p.open == nil {
		return &Error{Code: CodeClosed, Msg: "CommitMessage: no message claimed"}
	}
	seg, err := p.msg.Segment(0)
	if err != nil || p.msg.NumSegments() != 1 {
		p.abort()
		return &Error{Code: CodeInternal, Msg: "CommitMessage: the message left ring memory"}
	}
	data := seg.Data()
	if len(data) == 0 || unsafe.SliceData(data) != &p.open[8] || len(data)+8 > len(p.open) {
		p.abort()
		return &Error{Code: CodeInternal, Msg: "CommitMessage: the message left ring memory"}
	}
	words := C.uint32_t(len(data) / 8)
	p.dropMsg()
	p.open = nil
	if !p.pipeline {
		return codeError(int(C.shmbus_publisher_commit_message(p.h, words, C.uint64_t(messageID), C.uint64_t(schemaID))))
	}
	next := p.nextMax
	if next > p.maxPayload {
		next = p.maxPayload
	}
	rc := C.shmbus_publisher_commit_message_and_claim(p.h, words, C.uint64_t(messageID),
		C.uint64_t(schemaID), C.uint32_t(next), &p.s.claim)
	if p.s.claim.data != nil {
		p.setOpen()
		p.pending = true
		return nil
	}
	// The commit cannot fail here (the segment was checked against the claim),
	// so a non-zero status is the pre-claim's: the message is published.
	_ = rc
	return nil
}

// Publish builds one message in place and publishes it: it claims maxBytes,
// calls build on a segment over the claim, and commits. If build fails on ring
// memory (the message outgrew maxBytes) it is run again on a heap message that is
// then copied in (counted in Stats().BuilderFallbacks); an error from that second
// run is returned. build must not call the Publisher.
func (p *Publisher) Publish(ctx context.Context, maxBytes int, messageID, schemaID uint64,
	build func(seg *capnp.Segment) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, seg, err := p.claimMessage(ctx, maxBytes)
	if err != nil {
		return err
	}
	if berr := build(seg); berr == nil {
		return p.commitMessage(messageID, schemaID)
	}
	p.abort()
	msg, hseg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return err
	}
	defer msg.Release()
	if err := build(hseg); err != nil {
		return err
	}
	p.fallbacks++
	b, err := msg.Marshal()
	if err != nil {
		return err
	}
	return p.offer(ctx, b, messageID, schemaID)
}

// OfferMessage publishes a message built anywhere (copy path: serialized, then
// copied into the ring).
func (p *Publisher) OfferMessage(ctx context.Context, msg *capnp.Message, messageID, schemaID uint64) error {
	b, err := msg.Marshal()
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.offer(ctx, b, messageID, schemaID)
}

// Offer publishes a copy of data (the copy path). A claim still open is dropped.
func (p *Publisher) Offer(ctx context.Context, data []byte, messageID, schemaID uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.offer(ctx, data, messageID, schemaID)
}

func (p *Publisher) offer(ctx context.Context, data []byte, messageID, schemaID uint64) error {
	if err := p.check(); err != nil {
		return err
	}
	p.spin.enter()
	p.dropMsg()
	p.open, p.pending = nil, false
	var ptr unsafe.Pointer
	if len(data) > 0 {
		ptr = unsafe.Pointer(&data[0])
	}
	return p.blocking(ctx, func() C.uint32_t { return C.uint32_t(len(data)) }, func() C.int {
		return C.shmbus_publisher_offer(p.h, ptr, C.size_t(len(data)), C.uint64_t(messageID), C.uint64_t(schemaID))
	})
}

// OfferPacked publishes len(lens) messages packed back to back in buf (message
// i is lens[i] bytes) with one C call per chunk that fits, and one wake-up check
// per call. It returns how many were published; on error, the messages before
// that count are published and the rest are not.
func (p *Publisher) OfferPacked(ctx context.Context, buf []byte, lens []uint32) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return 0, err
	}
	p.spin.enter()
	total := 0
	for _, l := range lens {
		total += int(l)
	}
	if total > len(buf) {
		return 0, &Error{Code: CodeInvalidArgument, Msg: "OfferPacked: lens add up to more than len(buf)"}
	}
	p.dropMsg()
	p.open, p.pending = nil, false
	done, off := 0, 0
	err := p.blocking(ctx, func() C.uint32_t {
		if done < len(lens) {
			return C.uint32_t(lens[done])
		}
		return 0
	}, func() C.int {
		if done == len(lens) {
			return 0
		}
		var bp unsafe.Pointer
		if off < len(buf) {
			bp = unsafe.Pointer(&buf[off])
		} else {
			bp = unsafe.Pointer(unsafe.SliceData(buf))
		}
		rc := C.shmbus_publisher_offer_packed(p.h, bp, (*C.uint32_t)(unsafe.Pointer(&lens[done])),
			C.size_t(len(lens)-done), &p.s.published)
		for i := 0; i < int(p.s.published); i++ {
			off += int(lens[done+i])
		}
		done += int(p.s.published)
		return rc
	})
	return done, err
}

// PublisherStats are the publisher's counters.
type PublisherStats struct {
	Published        uint64
	BackPressured    uint64 // claims that found the ring full (counted per bounded wait)
	BlockedWaits     uint64
	BuilderFallbacks uint64 // messages that outgrew their claim and were copied
	ReclaimedCursors uint64
}

// Stats returns the publisher's counters.
func (p *Publisher) Stats() (PublisherStats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return PublisherStats{}, err
	}
	if err := codeError(int(C.shmbus_publisher_stats(p.h, &p.s.stats))); err != nil {
		return PublisherStats{}, err
	}
	st := &p.s.stats
	return PublisherStats{
		Published:        uint64(st.published),
		BackPressured:    uint64(st.back_pressured),
		BlockedWaits:     uint64(st.blocked_waits),
		BuilderFallbacks: uint64(st.builder_fallbacks) + p.fallbacks,
		ReclaimedCursors: uint64(st.reclaimed_cursors),
	}, nil
}
