package shmbus

/*
#include <stdlib.h>
#include <string.h>
#include "shmbus.h"
*/
import "C"

import (
	"context"
	"unsafe"
)

// EnvelopeSchemaID is the frame schema id that flags an envelope (the Cap'n Proto
// type id of lib/schema/envelope.capnp's Envelope).
const EnvelopeSchemaID uint64 = C.SHMBUS_ENVELOPE_SCHEMA_ID

// Limits of the envelope's texts (longer ones are refused on publish and read as
// malformed).
const (
	MaxReplyTo    = C.SHMBUS_MAX_REPLY_TO
	MaxTraceState = C.SHMBUS_MAX_TRACE_STATE
)

// TraceContext is a W3C Trace Context (traceparent version 00, and tracestate).
// The zero value is "no trace".
type TraceContext struct {
	TraceIDHigh, TraceIDLow uint64 // the 128-bit trace id
	ParentID                uint64 // the sender's span id
	Flags                   uint8  // 0x01: sampled
	State                   string // tracestate, verbatim (<= MaxTraceState bytes)
}

// Valid reports whether both ids are non-zero (the W3C rule).
func (t TraceContext) Valid() bool { return (t.TraceIDHigh|t.TraceIDLow) != 0 && t.ParentID != 0 }

// Envelope is the messaging contract's envelope around a payload (docs/messaging.md,
// "The envelope"): the same Cap'n Proto Envelope as C++'s shmbus::Envelope, written
// and read by the same code through the C ABI.
type Envelope struct {
	CorrelationID   uint64
	CausationID     uint64 // the message id that caused this one
	ReplyTo         string // a topic name (<= MaxReplyTo bytes), or ""
	Trace           TraceContext
	ContentVersion  uint32
	Status          uint32 // replies: the application's status (0: ok)
	PayloadSchemaID uint64 // the payload's own Cap'n Proto type id (0: none)
}

var errEnvText = &Error{Code: CodeInvalidArgument, Msg: "envelope: ReplyTo or Trace.State too long, or has a NUL byte"}

func (e *Envelope) toC(c *C.shmbus_envelope_t) error {
	C.shmbus_envelope_init(c)
	if len(e.ReplyTo) > MaxReplyTo || len(e.Trace.State) > MaxTraceState {
		return errEnvText
	}
	for _, s := range []string{e.ReplyTo, e.Trace.State} {
		for i := 0; i < len(s); i++ {
			if s[i] == 0 {
				return errEnvText
			}
		}
	}
	c.correlation_id = C.uint64_t(e.CorrelationID)
	c.causation_id = C.uint64_t(e.CausationID)
	c.payload_schema_id = C.uint64_t(e.PayloadSchemaID)
	c.content_version = C.uint32_t(e.ContentVersion)
	c.status = C.uint32_t(e.Status)
	traceToC(&e.Trace, c)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&c.reply_to[0])), len(c.reply_to)), e.ReplyTo)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&c.trace_state[0])), len(c.trace_state)), e.Trace.State)
	return nil
}

func traceToC(t *TraceContext, c *C.shmbus_envelope_t) {
	c.trace_id_high = C.uint64_t(t.TraceIDHigh)
	c.trace_id_low = C.uint64_t(t.TraceIDLow)
	c.trace_parent_id = C.uint64_t(t.ParentID)
	c.trace_flags = C.uint32_t(t.Flags)
}

func traceFromC(c *C.shmbus_envelope_t) TraceContext {
	return TraceContext{TraceIDHigh: uint64(c.trace_id_high), TraceIDLow: uint64(c.trace_id_low),
		ParentID: uint64(c.trace_parent_id), Flags: uint8(c.trace_flags),
		State: C.GoString(&c.trace_state[0])}
}

// ParseTraceparent reads a W3C traceparent header ("00-<32 hex>-<16 hex>-<2 hex>",
// lower-case); ErrInvalidArgument when malformed or an id is zero.
func ParseTraceparent(s string) (TraceContext, error) {
	var c C.shmbus_envelope_t
	C.shmbus_envelope_init(&c)
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	if err := call(func() C.int { return C.shmbus_trace_parse(cs, &c) }); err != nil {
		return TraceContext{}, err
	}
	return traceFromC(&c), nil
}

// Traceparent formats the trace context as a W3C traceparent header ("" when it is
// not Valid).
func (t TraceContext) Traceparent() string {
	var c C.shmbus_envelope_t
	C.shmbus_envelope_init(&c)
	traceToC(&t, &c)
	var buf [C.SHMBUS_TRACEPARENT_LEN + 1]C.char
	if C.shmbus_trace_format(&c, &buf[0], C.size_t(len(buf))) != 0 {
		return ""
	}
	return C.GoString(&buf[0])
}

// NewTrace starts a new trace: random ids, sampled.
func NewTrace() TraceContext {
	var c C.shmbus_envelope_t
	C.shmbus_envelope_init(&c)
	C.shmbus_trace_fresh(&c)
	return traceFromC(&c)
}

// Child is the same trace with a new random span id (what a handler puts on what it
// sends); the zero value when t is not Valid. The trace state is kept.
func (t TraceContext) Child() TraceContext {
	var c C.shmbus_envelope_t
	C.shmbus_envelope_init(&c)
	traceToC(&t, &c)
	if C.shmbus_trace_child(&c) != 0 {
		return TraceContext{}
	}
	n := traceFromC(&c)
	n.State = t.State
	return n
}

// envelopeOverhead bounds what an envelope adds to its payload (segment table, root,
// pointers, the texts at their longest): the space a blocked OfferEnveloped waits for.
const envelopeOverhead = 128 + MaxReplyTo + MaxTraceState + 16

// OfferEnveloped publishes a copy of payload inside env (the frame's schema id is
// EnvelopeSchemaID, its message id messageID). Waits for space like Offer. A claim
// still open is dropped.
func (p *Publisher) OfferEnveloped(ctx context.Context, env *Envelope, payload []byte, messageID uint64) error {
	if env == nil {
		env = &Envelope{}
	}
	var c C.shmbus_envelope_t
	if err := env.toC(&c); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	p.dropMsg()
	p.open, p.pending = nil, false
	var ptr unsafe.Pointer
	if len(payload) > 0 {
		ptr = unsafe.Pointer(&payload[0])
	}
	need := len(payload) + envelopeOverhead
	if need > p.maxPayload {
		need = p.maxPayload
	}
	var detail error
	err := p.blocking(ctx, func() C.uint32_t { return C.uint32_t(need) }, func() C.int {
		rc := C.shmbus_publisher_offer_enveloped(p.h, &c, ptr, C.size_t(len(payload)), C.uint64_t(messageID))
		if rc == C.SHMBUS_E_INVALID_ARGUMENT {
			detail = &Error{Code: int(rc), Msg: C.GoString(C.shmbus_last_error())}
		}
		return rc
	})
	if detail != nil {
		return detail
	}
	return err
}

// Envelope reads v's envelope, once, validated (the ring's bytes are untrusted).
// For an enveloped frame it returns the envelope and a View of the payload inside
// the frame (its SchemaID the payload's; valid as long as v). For any other frame it
// returns nil and v itself. ErrMalformed for an envelope's schema id over bytes that
// are not a valid Envelope. Release (and Check) v, the frame, not the payload view.
func (v *View) Envelope() (*Envelope, View, error) {
	if v == nil || v.ptr == nil {
		return nil, View{}, &Error{Code: CodeInvalidArgument, Msg: "Envelope: not a polled view"}
	}
	v.mustLive("Envelope")
	if v.SchemaID != EnvelopeSchemaID {
		return nil, *v, nil
	}
	// C memory: the C side writes the envelope and the payload view.
	type scratch struct {
		in, out C.shmbus_view_t
		env     C.shmbus_envelope_t
		flag    C.int
	}
	s := (*scratch)(C.calloc(1, C.size_t(unsafe.Sizeof(scratch{}))))
	defer C.free(unsafe.Pointer(s))
	s.in.data = (*C.uint8_t)(v.ptr)
	s.in.size = C.uint32_t(len(v.Data))
	s.in.producer_id = C.uint32_t(v.ProducerID)
	s.in.sequence = C.uint64_t(v.Sequence)
	s.in.timestamp_ns = C.uint64_t(v.TimestampNs)
	s.in.message_id = C.uint64_t(v.MessageID)
	s.in.schema_id = C.uint64_t(v.SchemaID)
	s.in.position = C.uint64_t(v.Position)
	s.in.next_position = C.uint64_t(v.NextPosition)
	C.shmbus_envelope_init(&s.env)
	if err := call(func() C.int { return C.shmbus_view_open_envelope(&s.in, &s.env, &s.out, &s.flag) }); err != nil {
		return nil, View{}, err
	}
	if s.flag == 0 {
		return nil, *v, nil
	}
	e := &Envelope{
		CorrelationID:   uint64(s.env.correlation_id),
		CausationID:     uint64(s.env.causation_id),
		ReplyTo:         C.GoString(&s.env.reply_to[0]),
		Trace:           traceFromC(&s.env),
		ContentVersion:  uint32(s.env.content_version),
		Status:          uint32(s.env.status),
		PayloadSchemaID: uint64(s.env.payload_schema_id),
	}
	var pv View
	toView(&s.out, &pv)
	if v.dbg != nil {
		// Debug views: the payload view lies in the frame's pages, released with it.
		off := uintptr(pv.ptr) - uintptr(v.ptr)
		pv.Data = v.Data[off : off+uintptr(len(pv.Data)) : off+uintptr(len(pv.Data))]
		pv.dbg = v.dbg
	}
	return e, pv, nil
}
