package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// StatusFailed is the status of a reply whose handler failed (C++: threw; Go: Serve's
// function returned an error or panicked); its payload is "exception: <reason>".
const StatusFailed = C.SHMBUS_REPLY_STATUS_FAILED

// RequesterOptions configures a Requester. The zero value is the library default.
type RequesterOptions struct {
	ReplyTopic   string        // "": "reply.<pid>.<16 random hex digits>"
	Capacity     uint64        // reply ring bytes, power of two >= 4096 (0: 1 MiB)
	MaxPayload   uint64        // largest reply payload (0: Capacity / 4)
	MaxInFlight  int           // requests awaited at once (0: 4096)
	BlockTimeout time.Duration // sending into a full service topic (0: 1 s)
	OpenTimeout  time.Duration // a service topic being created (0: 5 s; <0: no wait)
}

// Reply is a response to a request. Payload is a copy (Go memory).
type Reply struct {
	CorrelationID uint64
	Status        uint32 // the responder's status (0: ok; StatusFailed: its handler failed)
	SchemaID      uint64 // the reply payload's schema id (0: opaque)
	MessageID     uint64 // of the reply frame
	ProducerID    uint32 // of the reply frame
	Payload       []byte
	Envelope      Envelope // every envelope field (CausationID: the request's message id)
}

// RequesterStats counts what a Requester did.
type RequesterStats struct {
	Sent, Replies, Timeouts uint64
	Stale                   uint64 // replies to no request in flight: dropped
	Forged                  uint64 // a request's correlation id without its causation id: dropped
	Malformed               uint64 // frames on the reply topic that are no valid reply: dropped
	InFlight                uint64
}

// SendOption sets what a request carries besides its payload.
type SendOption func(*sendOpts)

type sendOpts struct {
	schema uint64
	trace  *TraceContext
}

// WithSchemaID gives the request payload's schema id (default 0: opaque).
func WithSchemaID(id uint64) SendOption { return func(o *sendOpts) { o.schema = id } }

// WithTrace continues trace t (the request carries a child span); without it each
// request starts a fresh trace.
func WithTrace(t TraceContext) SendOption { return func(o *sendOpts) { o.trace = &t } }

// Requester sends requests and takes their replies: C++'s shmbus::Requester through
// the C ABI, so the same protocol in every language (docs/messaging.md,
// "Request/response"). It owns a reply topic; through shmbusd an ephemeral one that
// the daemon removes when this process's connection ends, however it ends. A reply
// is taken only with both random ids of a request in flight (correlation id and the
// request frame's message id); anything else is dropped and counted, never returned.
//
// One call runs at a time (a mutex): a goroutine waiting in Await or Request holds
// the requester until its reply, its context's end or Close. Use one Requester per
// goroutine that waits concurrently. Close may come from any goroutine and ends a
// waiting call with ErrClosed.
type Requester struct {
	mu      sync.Mutex
	closing atomic.Bool
	hmu     sync.Mutex // guards h for Close's interrupt
	h       *C.shmbus_requester_t
	rep     *C.shmbus_reply_t // C memory: what await fills
	topic   string
	// Requests that timed out at their context's deadline before the C wait's own
	// timeout did (the deadline's interrupt ended the wait): the C library counted
	// them as forgotten, not timed out. Added to Stats().Timeouts. Guarded by mu.
	ctxTimeouts uint64
}

var errRequesterClosed = &Error{Code: CodeClosed, Msg: "requester is closed"}

// Requester creates a reply topic and a requester on it.
func (b *Bus) Requester(opts *RequesterOptions) (*Requester, error) {
	var o RequesterOptions
	if opts != nil {
		o = *opts
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return nil, err
	}
	co := (*C.shmbus_requester_options_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.shmbus_requester_options_t{}))))
	defer C.free(unsafe.Pointer(co))
	C.shmbus_requester_options_init(co, C.uint32_t(unsafe.Sizeof(*co)))
	if o.ReplyTopic != "" {
		co.reply_topic = C.CString(o.ReplyTopic)
		defer C.free(unsafe.Pointer(co.reply_topic))
	}
	if o.Capacity > 0 {
		co.capacity = C.uint64_t(o.Capacity)
	}
	co.max_payload = C.uint64_t(o.MaxPayload)
	if o.MaxInFlight > 0 {
		co.max_in_flight = C.uint64_t(o.MaxInFlight)
	}
	if o.BlockTimeout > 0 {
		co.block_timeout_ns = durationNs(o.BlockTimeout)
	}
	if o.OpenTimeout > 0 {
		co.open_timeout_ms = C.int32_t(o.OpenTimeout.Milliseconds())
	} else if o.OpenTimeout < 0 {
		co.open_timeout_ms = 0
	}
	var h *C.shmbus_requester_t
	if err := call(func() C.int { return C.shmbus_requester_open(bh, co, &h) }); err != nil {
		return nil, err
	}
	rep := (*C.shmbus_reply_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.shmbus_reply_t{}))))
	C.shmbus_reply_init(rep)
	return &Requester{h: h, rep: rep, topic: C.GoString(C.shmbus_requester_reply_topic(h))}, nil
}

// ReplyTopic is the name of this requester's reply topic.
func (r *Requester) ReplyTopic() string { return r.topic }

// Close removes the reply topic. Safe from any goroutine; a waiting Await or Request
// returns ErrClosed. Closing twice is a no-op.
func (r *Requester) Close() error {
	r.closing.Store(true)
	r.hmu.Lock()
	if r.h != nil {
		C.shmbus_requester_interrupt(r.h) // an await waiting returns now
	}
	r.hmu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil
	}
	r.hmu.Lock()
	C.shmbus_requester_close(r.h)
	r.h = nil
	r.hmu.Unlock()
	C.free(unsafe.Pointer(r.rep))
	r.rep = nil
	return nil
}

func (r *Requester) check() error {
	if r.h == nil || r.closing.Load() {
		return errRequesterClosed
	}
	return nil
}

// Send publishes a request on topic and returns its correlation id, for Await.
// ErrBackPressured when the topic is full (after BlockTimeout under policy block) or
// MaxInFlight requests are waiting; ErrNotFound when the topic does not exist.
func (r *Requester) Send(topic string, payload []byte, opts ...SendOption) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return 0, err
	}
	return r.send(topic, payload, opts)
}

func (r *Requester) send(topic string, payload []byte, opts []SendOption) (uint64, error) {
	var so sendOpts
	for _, f := range opts {
		f(&so)
	}
	ct := C.CString(topic)
	defer C.free(unsafe.Pointer(ct))
	var tr *C.shmbus_envelope_t
	if so.trace != nil {
		tr = (*C.shmbus_envelope_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.shmbus_envelope_t{}))))
		defer C.free(unsafe.Pointer(tr))
		C.shmbus_envelope_init(tr)
		traceToC(so.trace, tr)
	}
	var p unsafe.Pointer
	if len(payload) > 0 {
		p = unsafe.Pointer(&payload[0])
	}
	var corr C.uint64_t
	err := call(func() C.int {
		return C.shmbus_requester_send(r.h, ct, p, C.size_t(len(payload)), C.uint64_t(so.schema), tr, &corr)
	})
	runtime.KeepAlive(payload)
	return uint64(corr), err
}

// timedOut is what a request that got no reply in time returns: it matches both
// ErrTimedOut and context.DeadlineExceeded (the deadline was the context's).
func timedOut(ctx context.Context) error {
	if _, has := ctx.Deadline(); has {
		return fmt.Errorf("%w: no reply before the context's deadline (%w)", ErrTimedOut, context.DeadlineExceeded)
	}
	return ErrTimedOut
}

// Await waits for the reply to corr until ctx ends. Its deadline is the request's
// timeout: past it the request is forgotten (a late reply is dropped as stale) and
// the error matches ErrTimedOut and context.DeadlineExceeded. A cancelled ctx returns
// ctx.Err() at once and forgets corr too. ErrClosed: corr is not in flight (never
// sent, answered, timed out, forgotten), or the requester was closed. Replies to
// other requests in flight that come meanwhile are kept for them.
func (r *Requester) Await(ctx context.Context, corr uint64) (*Reply, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return nil, err
	}
	return r.await(ctx, corr)
}

func (r *Requester) await(ctx context.Context, corr uint64) (*Reply, error) {
	stop := interruptOnDone(ctx, func() { C.shmbus_requester_interrupt(r.h) })
	defer stop()
	for {
		if r.closing.Load() {
			C.shmbus_requester_forget(r.h, C.uint64_t(corr))
			return nil, errRequesterClosed
		}
		timeout, err := waitFor(ctx)
		if err != nil {
			C.shmbus_requester_forget(r.h, C.uint64_t(corr))
			if ctx.Err() == nil || ctx.Err() == context.DeadlineExceeded {
				r.ctxTimeouts++
				return nil, timedOut(ctx)
			}
			return nil, err
		}
		rc, err := pollC(func() C.int { return C.shmbus_requester_await(r.h, C.uint64_t(corr), timeout, r.rep) })
		if err != nil {
			return nil, err
		}
		switch rc {
		case 0:
			return replyFromC(r.rep), nil
		case CodeTimedOut:
			return nil, timedOut(ctx)
		case CodeInterrupted:
			continue // ctx ended, Close, or an interrupt left over: the loop decides
		}
		return nil, codeError(rc)
	}
}

func replyFromC(c *C.shmbus_reply_t) *Reply {
	rep := &Reply{
		CorrelationID: uint64(c.correlation_id),
		Status:        uint32(c.status),
		SchemaID:      uint64(c.schema_id),
		MessageID:     uint64(c.message_id),
		ProducerID:    uint32(c.producer_id),
		Envelope:      envelopeFromC(&c.envelope),
	}
	if c.len > 0 {
		rep.Payload = C.GoBytes(unsafe.Pointer(c.data), C.int(c.len))
	} else {
		rep.Payload = []byte{}
	}
	return rep
}

func envelopeFromC(c *C.shmbus_envelope_t) Envelope {
	return Envelope{
		CorrelationID:   uint64(c.correlation_id),
		CausationID:     uint64(c.causation_id),
		ReplyTo:         C.GoString(&c.reply_to[0]),
		Trace:           traceFromC(c),
		ContentVersion:  uint32(c.content_version),
		Status:          uint32(c.status),
		PayloadSchemaID: uint64(c.payload_schema_id),
	}
}

// Request sends a request on topic and waits for its reply until ctx ends: the
// context's deadline is the request's timeout (see Await).
func (r *Requester) Request(ctx context.Context, topic string, payload []byte, opts ...SendOption) (*Reply, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return nil, err
	}
	corr, err := r.send(topic, payload, opts)
	if err != nil {
		return nil, err
	}
	return r.await(ctx, corr)
}

// Forget stops waiting for corr: its reply will be dropped as stale.
func (r *Requester) Forget(corr uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h != nil {
		C.shmbus_requester_forget(r.h, C.uint64_t(corr))
	}
}

// Stats returns the requester's counters.
func (r *Requester) Stats() RequesterStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s C.shmbus_requester_stats_t
	if r.h == nil || C.shmbus_requester_stats(r.h, &s) != 0 {
		return RequesterStats{}
	}
	return RequesterStats{Sent: uint64(s.sent), Replies: uint64(s.replies), Timeouts: uint64(s.timeouts) + r.ctxTimeouts,
		Stale: uint64(s.stale), Forged: uint64(s.forged), Malformed: uint64(s.malformed), InFlight: uint64(s.in_flight)}
}

// Request is a request taken by a Responder. Payload is a copy (Go memory).
type Request struct {
	Payload    []byte
	SchemaID   uint64   // the payload's schema id
	Envelope   Envelope // correlation id, reply-to, trace ...
	Enveloped  bool     // false: a plain frame (it cannot be answered)
	MessageID  uint64   // of the request frame (the causation id of its reply)
	ProducerID uint32
	token      uint64
}

// Response is what a responder answers.
type Response struct {
	Payload  []byte
	SchemaID uint64 // the reply payload's schema id
	Status   uint32 // application status (0: ok)
	NoReply  bool   // true: no reply (the requester times out)
}

// ResponderStats counts what a Responder did.
type ResponderStats struct {
	Requests, Replied uint64
	NoReplyTo         uint64 // requests without reply-to: handled, not answered
	Undeliverable     uint64 // the reply topic gone or full, or the reply too large
	Refused           uint64 // through shmbusd: reply-to not an ephemeral (reply) topic
	Malformed         uint64 // frames that are no valid envelope: skipped
	Failed            uint64 // answered with StatusFailed
}

// Responder answers the requests of a service topic: C++'s shmbus::Responder through
// the C ABI. Through shmbusd it answers only on ephemeral (reply) topics. Serve runs
// a function per request; Next and Reply/Fail/Skip are the same by hand. Use it from
// one goroutine at a time; Close may come from any goroutine.
type Responder struct {
	mu      sync.Mutex
	closing atomic.Bool
	hmu     sync.Mutex
	h       *C.shmbus_responder_t
	req     *C.shmbus_request_t // C memory: the pending request
	topic   string
}

var errResponderClosed = &Error{Code: CodeClosed, Msg: "responder is closed"}

// Responder subscribes to topic (opts as for Subscriber; the start must be latest).
func (b *Bus) Responder(topic string, opts *SubscriberOptions) (*Responder, error) {
	var o SubscriberOptions
	if opts != nil {
		o = *opts
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return nil, err
	}
	if o.Schema != nil {
		if _, err := presentSchema(bh, topic, o.Schema, C.SHMBUS_SCHEMA_SUBSCRIBER); err != nil {
			return nil, err
		}
	}
	co, freeOpts := o.toC()
	defer freeOpts()
	cn := C.CString(topic)
	defer C.free(unsafe.Pointer(cn))
	var h *C.shmbus_responder_t
	if err := call(func() C.int { return C.shmbus_responder_open(bh, cn, &co, &h) }); err != nil {
		return nil, err
	}
	q := (*C.shmbus_request_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.shmbus_request_t{}))))
	C.shmbus_request_init(q)
	return &Responder{h: h, req: q, topic: topic}, nil
}

// Topic is the service topic.
func (s *Responder) Topic() string { return s.topic }

// Close stops the responder (a request taken and not answered is not answered).
// Safe from any goroutine; a waiting Next returns ErrClosed.
func (s *Responder) Close() error {
	s.closing.Store(true)
	s.hmu.Lock()
	if s.h != nil {
		C.shmbus_responder_interrupt(s.h)
	}
	s.hmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return nil
	}
	s.hmu.Lock()
	C.shmbus_responder_close(s.h)
	s.h = nil
	s.hmu.Unlock()
	C.free(unsafe.Pointer(s.req))
	s.req = nil
	return nil
}

func (s *Responder) check() error {
	if s.h == nil || s.closing.Load() {
		return errResponderClosed
	}
	return nil
}

// Next waits until a request comes, ctx ends (ctx.Err()) or the responder is closed
// (ErrClosed). The request is pending until Reply, Fail or Skip (a request left
// pending is skipped by the next Next). Frames that are no valid envelope are skipped
// and counted (Stats().Malformed).
func (s *Responder) Next(ctx context.Context) (*Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stop := interruptOnDone(ctx, func() { C.shmbus_responder_interrupt(s.h) })
	defer stop()
	for {
		if err := s.check(); err != nil {
			return nil, err
		}
		timeout, err := waitFor(ctx)
		if err != nil {
			return nil, err
		}
		rc, err := pollC(func() C.int { return C.shmbus_responder_next(s.h, timeout, s.req) })
		if err != nil {
			if rc == CodeMalformed {
				continue
			}
			return nil, err
		}
		switch rc {
		case 0:
			q := s.req
			return &Request{
				Payload:    C.GoBytes(unsafe.Pointer(q.payload.data), C.int(q.payload.size)),
				SchemaID:   uint64(q.payload.schema_id),
				Envelope:   envelopeFromC(&q.envelope),
				Enveloped:  q.enveloped != 0,
				MessageID:  uint64(q.message_id),
				ProducerID: uint32(q.producer_id),
				token:      uint64(q.token),
			}, nil
		case CodeTimedOut, CodeInterrupted:
			continue // the loop checks ctx and Close
		}
		return nil, codeError(rc)
	}
}

// answer runs one of the C answer calls on the pending request q.
func (s *Responder) answer(q *Request, f func(*C.shmbus_request_t) C.int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return errResponderClosed
	}
	if q == nil || q.token != uint64(s.req.token) {
		return &Error{Code: CodeInvalidArgument, Msg: "the request is not the one pending (answered, skipped, or not from this responder)"}
	}
	err := call(func() C.int { return f(s.req) })
	s.req.token = 0
	return err
}

// Reply answers q with resp (resp.NoReply: no reply) and releases it. nil: published.
// Otherwise nothing was published and the error says why: ErrNotFound (no reply-to),
// ErrPermissionDenied (reply-to is not a reply topic), ErrClosed (the reply topic is
// gone or full), ErrTooLarge (can never fit the reply topic), ErrInvalidArgument (q
// is not the request pending).
func (s *Responder) Reply(q *Request, resp Response) error {
	if resp.NoReply {
		return s.Skip(q)
	}
	var p unsafe.Pointer
	if len(resp.Payload) > 0 {
		p = unsafe.Pointer(&resp.Payload[0])
	}
	err := s.answer(q, func(c *C.shmbus_request_t) C.int {
		return C.shmbus_responder_reply(s.h, c, p, C.size_t(len(resp.Payload)), C.uint64_t(resp.SchemaID),
			C.uint32_t(resp.Status))
	})
	runtime.KeepAlive(resp.Payload)
	return err
}

// Fail answers q as a failed handler: status StatusFailed, payload "exception: " +
// why (what C++ answers for a function that throws).
func (s *Responder) Fail(q *Request, why string) error {
	cw := C.CString(why)
	defer C.free(unsafe.Pointer(cw))
	return s.answer(q, func(c *C.shmbus_request_t) C.int { return C.shmbus_responder_fail(s.h, c, cw) })
}

// Skip releases q without a reply (its requester times out).
func (s *Responder) Skip(q *Request) error {
	return s.answer(q, func(c *C.shmbus_request_t) C.int { return C.shmbus_responder_skip(s.h, c) })
}

// Serve answers requests with fn until ctx ends (it returns ctx.Err()) or the
// responder is closed (ErrClosed). An error from fn, or a panic, is answered with
// StatusFailed and "exception: <error>" as payload, at once, as C++ answers a
// function that throws. A reply that cannot be delivered is counted (Stats), not
// returned. fn gets ctx.
func (s *Responder) Serve(ctx context.Context, fn func(context.Context, *Request) (Response, error)) error {
	for {
		q, err := s.Next(ctx)
		if err != nil {
			return err
		}
		resp, ferr := s.call(ctx, fn, q)
		if ferr != nil {
			err = s.Fail(q, ferr.Error())
		} else {
			err = s.Reply(q, resp)
		}
		if err != nil && s.check() != nil {
			return errResponderClosed
		}
	}
}

func (s *Responder) call(ctx context.Context, fn func(context.Context, *Request) (Response, error), q *Request) (resp Response, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return fn(ctx, q)
}

// Stats returns the responder's counters.
func (s *Responder) Stats() ResponderStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c C.shmbus_responder_stats_t
	if s.h == nil || C.shmbus_responder_stats(s.h, &c) != 0 {
		return ResponderStats{}
	}
	return ResponderStats{Requests: uint64(c.requests), Replied: uint64(c.replied), NoReplyTo: uint64(c.no_reply_to),
		Undeliverable: uint64(c.undeliverable), Refused: uint64(c.refused), Malformed: uint64(c.malformed),
		Failed: uint64(c.failed)}
}
