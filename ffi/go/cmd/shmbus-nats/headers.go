package main

import (
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"shmbus.dev/shmbus"
)

// NATS headers the bridge writes (docs/bridge.md, "Headers"). Every value read back
// is untrusted: parsed strictly, length-checked, and on any error the message is
// imported without an envelope (and counted).
const (
	hdrMsgID       = "Shmbus-Msg-Id"      // the origin frame's message id (decimal)
	hdrProducer    = "Shmbus-Producer-Id" // the origin frame's producer id (decimal)
	hdrSchema      = "Shmbus-Schema-Id"   // payload schema id (0x + 16 hex)
	hdrEnvelope    = "Shmbus-Envelope"    // "1": the origin frame was an envelope
	hdrCorrelation = "Shmbus-Correlation-Id"
	hdrCausation   = "Shmbus-Causation-Id"
	hdrReplyTo     = "Shmbus-Reply-To"
	hdrVersion     = "Shmbus-Content-Version"
	hdrStatus      = "Shmbus-Status"
	hdrTraceparent = "traceparent"
	hdrTracestate  = "tracestate"
	hdrOrigin      = "Shmbus-Origin" // bus id of the forwarding bridge
)

func hex64(v uint64) string { return "0x" + strconv.FormatUint(v, 16) }

// envelopeHeaders writes env's fields (nil: a plain frame) and the frame's ids.
func envelopeHeaders(h nats.Header, env *shmbus.Envelope, v *shmbus.View, payloadSchema uint64) {
	h.Set(hdrMsgID, strconv.FormatUint(v.MessageID, 10))
	h.Set(hdrProducer, strconv.FormatUint(uint64(v.ProducerID), 10))
	h.Set(hdrSchema, hex64(payloadSchema))
	if env == nil {
		return
	}
	h.Set(hdrEnvelope, "1")
	h.Set(hdrCorrelation, strconv.FormatUint(env.CorrelationID, 10))
	h.Set(hdrCausation, strconv.FormatUint(env.CausationID, 10))
	if env.ReplyTo != "" {
		h.Set(hdrReplyTo, env.ReplyTo)
	}
	if env.ContentVersion != 0 {
		h.Set(hdrVersion, strconv.FormatUint(uint64(env.ContentVersion), 10))
	}
	if env.Status != 0 {
		h.Set(hdrStatus, strconv.FormatUint(uint64(env.Status), 10))
	}
	if env.Trace.Valid() {
		h.Set(hdrTraceparent, env.Trace.Traceparent())
		if env.Trace.State != "" {
			h.Set(hdrTracestate, env.Trace.State)
		}
	}
}

// one returns the single value of key ("" and ok when absent; !ok when repeated).
func one(h nats.Header, key string) (string, bool) {
	vs := h.Values(key)
	switch len(vs) {
	case 0:
		return "", true
	case 1:
		return vs[0], true
	}
	return "", false
}

func parseUint(s string, bits int, hex bool) (uint64, bool) {
	if s == "" {
		return 0, true
	}
	if len(s) > 24 {
		return 0, false
	}
	if hex {
		if !strings.HasPrefix(s, "0x") {
			return 0, false
		}
		v, err := strconv.ParseUint(s[2:], 16, bits)
		return v, err == nil
	}
	v, err := strconv.ParseUint(s, 10, bits)
	return v, err == nil
}

func printable(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// parseEnvelope reads the headers of an imported message: the payload schema id and
// the envelope (nil when the message carried none). ok is false when any header is
// malformed; then schema and env are zero and the message is imported plain.
func parseEnvelope(h nats.Header) (schema uint64, env *shmbus.Envelope, ok bool) {
	if h == nil {
		return 0, nil, true
	}
	get := func(k string) string {
		v, good := one(h, k)
		if !good {
			ok = false
		}
		return v
	}
	ok = true
	s, good := parseUint(get(hdrSchema), 64, true)
	flag := get(hdrEnvelope)
	if !good || (flag != "" && flag != "1") {
		return 0, nil, false
	}
	if !ok {
		return 0, nil, false
	}
	if flag == "" {
		return s, nil, true
	}
	e := &shmbus.Envelope{PayloadSchemaID: s}
	var g1, g2, g3, g4 bool
	e.CorrelationID, g1 = parseUint(get(hdrCorrelation), 64, false)
	e.CausationID, g2 = parseUint(get(hdrCausation), 64, false)
	var cv, st uint64
	cv, g3 = parseUint(get(hdrVersion), 32, false)
	st, g4 = parseUint(get(hdrStatus), 32, false)
	e.ContentVersion, e.Status = uint32(cv), uint32(st)
	e.ReplyTo = get(hdrReplyTo)
	if !ok || !g1 || !g2 || !g3 || !g4 || !printable(e.ReplyTo, shmbus.MaxReplyTo) ||
		(e.ReplyTo != "" && !validName(e.ReplyTo)) {
		return 0, nil, false
	}
	if tp := get(hdrTraceparent); tp != "" {
		tc, err := shmbus.ParseTraceparent(tp)
		if err != nil || len(tp) > 64 {
			return 0, nil, false
		}
		e.Trace = tc
		e.Trace.State = get(hdrTracestate)
		if !printable(e.Trace.State, shmbus.MaxTraceState) {
			return 0, nil, false
		}
	}
	if !ok {
		return 0, nil, false
	}
	return s, e, true
}
