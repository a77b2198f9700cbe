package shmbus

/*
#cgo LDFLAGS: -lm
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline long long gosb_mono_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus/envelopecapnp"
)

// The handler runtime: C++'s shmbus::HandlerRunner (lib/include/shmbus/handler.hpp)
// written in Go over this binding, with the same outcomes, retry policy and backoff
// formula, circuit breaker, dead letters and shutdown rule (docs/messaging.md,
// "Handler runner (Go)"), plus what Go adds: a context per attempt with an optional
// deadline, middleware, and one goroutine per partition.

// OutcomeKind is what a handler decided about a message.
type OutcomeKind uint8

const (
	OutcomeAck    OutcomeKind = iota // done: the message is released
	OutcomeRetry                     // transient failure: try again per the retry policy
	OutcomeReject                    // permanent failure: dead-letter it now
)

func (k OutcomeKind) String() string {
	switch k {
	case OutcomeAck:
		return "ack"
	case OutcomeRetry:
		return "retry"
	case OutcomeReject:
		return "reject"
	}
	return fmt.Sprintf("OutcomeKind(%d)", uint8(k))
}

// Outcome is what a handler says about one message (C++ shmbus::Outcome).
type Outcome struct {
	Kind    OutcomeKind
	Code    uint32 // application error code (in the dead letter)
	Message string // the reason (in the dead letter)
	// After is, for a retry, the wait before the next attempt instead of the backoff;
	// negative (what Retry sets): the backoff.
	After time.Duration
}

// Ack is the outcome of a message handled.
func Ack() Outcome { return Outcome{Kind: OutcomeAck, After: -1} }

// Retry is a transient failure: the message is tried again after the backoff.
func Retry(why string, code uint32) Outcome {
	return Outcome{Kind: OutcomeRetry, Code: code, Message: why, After: -1}
}

// RetryAfter is a transient failure tried again after `after` instead of the backoff.
func RetryAfter(why string, code uint32, after time.Duration) Outcome {
	return Outcome{Kind: OutcomeRetry, Code: code, Message: why, After: after}
}

// Reject is a permanent failure: the message is dead-lettered at once.
func Reject(why string, code uint32) Outcome {
	return Outcome{Kind: OutcomeReject, Code: code, Message: why, After: -1}
}

// RetryPolicy is C++'s shmbus::RetryPolicy: the same fields, defaults and formula.
type RetryPolicy struct {
	MaxAttempts    uint32 // handler calls per message, the first included (0 counts as 1)
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	Jitter         float64 // each delay is scaled by a uniform factor in [1 - Jitter, 1 + Jitter]
}

// DefaultRetryPolicy is C++'s default: 5 attempts, 1 ms doubling up to 1 s, ±20 %.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Second,
		Multiplier: 2.0, Jitter: 0.2}
}

// Backoff is the wait before attempt `attempt` (2 = the first retry):
// min(InitialBackoff × Multiplier^(attempt−2), MaxBackoff) scaled by
// 1 − j + 2·j·u, where j is Jitter clamped to [0, 1] and u = (rnd >> 11)·2^−53, a
// uniform [0, 1) from rnd's top 53 bits; 0 before attempt 2. The same arithmetic as
// C++'s RetryPolicy::backoff_ns, step for step (libm's pow, no fused operations), so
// the same rnd gives the same nanosecond. One difference: a result past the int64
// range is the largest Duration here (in C++ that conversion is undefined).
func (p RetryPolicy) Backoff(attempt uint32, rnd uint64) time.Duration {
	if attempt < 2 {
		return 0
	}
	m := p.Multiplier
	if m < 1.0 {
		m = 1.0
	}
	d := float64(p.InitialBackoff) * float64(C.pow(C.double(m), C.double(float64(attempt-2))))
	limit := float64(p.MaxBackoff)
	if !(d <= limit) { // also catches inf and NaN
		d = limit
	}
	j := p.Jitter
	if j < 0 {
		j = 0
	} else if j > 1 {
		j = 1
	}
	u := float64(rnd>>11) * 0x1p-53
	// Each conversion rounds, so no fused multiply-add changes the result (the Go spec).
	d *= float64(1.0 - j + float64(2.0*j*u))
	if d < 0 {
		return 0
	}
	if d >= 0x1p63 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(int64(d))
}

// BreakerPolicy is C++'s shmbus::BreakerPolicy.
type BreakerPolicy struct {
	FailureThreshold  uint32        // consecutive failed attempts that open the breaker (0 counts as 1)
	Open              time.Duration // how long it stays open before a trial (half-open)
	HalfOpenSuccesses uint32        // successful trials that close it again (0 counts as 1)
}

// DefaultBreakerPolicy is C++'s default: 5 failures open it for 1 s, 1 success closes it.
func DefaultBreakerPolicy() BreakerPolicy {
	return BreakerPolicy{FailureThreshold: 5, Open: time.Second, HalfOpenSuccesses: 1}
}

// BreakerState is a circuit breaker's state.
type BreakerState uint8

const (
	BreakerClosed   BreakerState = iota // attempts run
	BreakerOpen                         // no attempt until the open time is over
	BreakerHalfOpen                     // a trial runs
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("BreakerState(%d)", uint8(s))
}

// CircuitBreaker is C++'s shmbus::CircuitBreaker: closed → (FailureThreshold
// consecutive failures) → open → (Open elapsed, at the next Allow) → half-open: a
// failure re-opens it, HalfOpenSuccesses successes close it. Time is passed in
// (CLOCK_MONOTONIC ns), so it is testable. Not safe for concurrent use (the Runner
// keeps one per partition behind a lock).
type CircuitBreaker struct {
	p         BreakerPolicy
	state     BreakerState
	failures  uint32
	successes uint32
	openUntil int64
	opened    uint64
}

// NewCircuitBreaker returns a closed breaker with policy p.
func NewCircuitBreaker(p BreakerPolicy) *CircuitBreaker { return &CircuitBreaker{p: p} }

// Allow tells whether an attempt may start at nowNs (an open breaker whose time is
// over turns half-open here).
func (b *CircuitBreaker) Allow(nowNs int64) bool {
	if b.state == BreakerOpen {
		if nowNs < b.openUntil {
			return false
		}
		b.state = BreakerHalfOpen
		b.successes = 0
	}
	return true
}

// OnSuccess records a successful attempt.
func (b *CircuitBreaker) OnSuccess() {
	b.failures = 0
	if b.state == BreakerHalfOpen {
		b.successes++
		if b.successes >= max(1, b.p.HalfOpenSuccesses) {
			b.state = BreakerClosed
		}
	}
}

// OnFailure records a failed attempt at nowNs.
func (b *CircuitBreaker) OnFailure(nowNs int64) {
	if b.state != BreakerHalfOpen {
		b.failures++
		if b.failures < max(1, b.p.FailureThreshold) {
			return
		}
	}
	b.state = BreakerOpen
	b.openUntil = nowNs + int64(b.p.Open)
	b.failures = 0
	b.opened++
}

// State is the breaker's state.
func (b *CircuitBreaker) State() BreakerState { return b.state }

// OpenUntilNs is when an open breaker allows a trial (CLOCK_MONOTONIC ns).
func (b *CircuitBreaker) OpenUntilNs() int64 { return b.openUntil }

// TimesOpened counts the breaker's openings.
func (b *CircuitBreaker) TimesOpened() uint64 { return b.opened }

// BreakerStatus is a snapshot of a runner's breaker.
type BreakerStatus struct {
	State       BreakerState
	OpenUntilNs int64 // CLOCK_MONOTONIC (the runner's clock)
	TimesOpened uint64
}

// Message is what a Handler gets: one message of the partition, with its frame
// header and, for an enveloped frame, its envelope.
//
// Data and Payload are ring memory (a copy for an untethered subscription), valid
// only during the handler's call: copy what you keep.
type Message struct {
	Topic     string
	Partition uint32
	// Data is the frame's payload as published (for an enveloped frame, the
	// envelope around the payload: what a dead letter keeps).
	Data []byte
	// Payload is the envelope's payload for an enveloped frame, otherwise Data.
	Payload []byte
	// Envelope is the frame's envelope (nil: not enveloped, or EnvelopeErr).
	Envelope *Envelope
	// EnvelopeErr is ErrMalformed for a frame flagged as an envelope whose bytes are
	// not one (Payload is then Data; the handler decides).
	EnvelopeErr error
	MessageID   uint64
	SchemaID    uint64 // the frame's (EnvelopeSchemaID for an enveloped frame)
	Sequence    uint64 // partition sequence
	ProducerID  uint32
	TimestampNs uint64 // CLOCK_MONOTONIC at commit
	Attempt     uint32 // 1: the first call for this message

	appState    []byte
	hasAppState bool
}

// SetAppState sets the application state that the runner's dedup window commits
// with this message (RunnerOptions.Dedup; C++ DedupWindow::set_app_state from the
// handler). The last call of the message's last attempt counts; b is copied.
func (m *Message) SetAppState(b []byte) {
	m.appState = append(m.appState[:0], b...)
	m.hasAppState = true
}

// Handler handles one message. ctx carries Run's values, not its cancellation (an
// attempt in flight when Run's context ends finishes), and the attempt's deadline
// when one is set (RunnerOptions.AttemptTimeout, Timeout).
type Handler func(ctx context.Context, m *Message) Outcome

// Middleware wraps a Handler (in the spirit of Watermill's router middleware).
type Middleware func(Handler) Handler

// Chain composes middleware: Chain(a, b)(h) is a(b(h)): a is the outermost, it sees
// the message first and the outcome last.
func Chain(mw ...Middleware) Middleware {
	return func(h Handler) Handler {
		for i := len(mw) - 1; i >= 0; i-- {
			if mw[i] != nil {
				h = mw[i](h)
			}
		}
		return h
	}
}

// panicOutcome is the retry a panic becomes ("panic: <value>", as C++'s
// "exception: <what()>").
func panicOutcome(r any) Outcome {
	return Retry(fmt.Sprintf("panic: %v", r), 0)
}

// Recoverer turns a panic in the handler into a retry whose reason is
// "panic: <value>". stack, when not nil, gets the panic value and the stack (for a
// log). The runner recovers a panic that reaches it the same way; Recoverer puts
// the recovery where the middleware around it (Trace, metrics) sees the outcome.
func Recoverer(stack func(r any, trace []byte)) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) (o Outcome) {
			defer func() {
				if r := recover(); r != nil {
					if stack != nil {
						stack(r, debug.Stack())
					}
					o = panicOutcome(r)
				}
			}()
			return next(ctx, m)
		}
	}
}

// TimeoutCode is the outcome code of an attempt that overran its Timeout (C++
// kTimeoutCode).
const TimeoutCode = 408

// Timeout is C++'s layers::timeout: each attempt's ctx gets a deadline d after it
// starts, and an attempt that takes longer than d counts as failed whatever it
// returned: Retry("timeout: the attempt took <t> ms, the limit is <d> ms",
// TimeoutCode); a Reject stays a Reject. The handler is not abandoned (its bytes are
// ring memory, valid only during the call): it should return when ctx is done. The
// work of an overrun attempt may have been done: retried handlers must be idempotent,
// as for every retry.
func Timeout(d time.Duration) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) Outcome {
			if d <= 0 {
				return next(ctx, m)
			}
			start := time.Now()
			ctx, cancel := context.WithDeadline(ctx, start.Add(d))
			defer cancel()
			o := next(ctx, m)
			if took := time.Since(start); took > d && o.Kind != OutcomeReject {
				return Retry(fmt.Sprintf("timeout: the attempt took %.3f ms, the limit is %.3f ms",
					float64(took)/1e6, float64(d)/1e6), TimeoutCode)
			}
			return o
		}
	}
}

// MetricsBuckets is the number of HandlerMetrics' duration buckets (C++ kBuckets).
const MetricsBuckets = 40

// HandlerMetrics are what a Metrics middleware counts (C++ HandlerMetrics), in
// atomics: one can serve every partition of a runner, or several runners.
type HandlerMetrics struct {
	Attempts, Acks, Retries, Rejects atomic.Uint64
	// DurationLog2Ns[i] counts attempts of [2^i, 2^(i+1)) ns (bucket 0 also 0 ns, the
	// last one everything longer).
	DurationLog2Ns [MetricsBuckets]atomic.Uint64
	DurationSumNs  atomic.Uint64
}

func (h *HandlerMetrics) observe(kind OutcomeKind, d time.Duration) {
	switch kind {
	case OutcomeAck:
		h.Acks.Add(1)
	case OutcomeReject:
		h.Rejects.Add(1)
	default:
		h.Retries.Add(1)
	}
	if d < 0 {
		d = 0
	}
	h.DurationSumNs.Add(uint64(d))
	b := 0
	if d > 0 {
		b = min(bits.Len64(uint64(d))-1, MetricsBuckets-1)
	}
	h.DurationLog2Ns[b].Add(1)
}

// Metrics is C++'s layers::metrics: it counts each attempt, its outcome (a panic
// passing through as a retry) and its duration into h.
func Metrics(h *HandlerMetrics) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) (o Outcome) {
			h.Attempts.Add(1)
			start := time.Now()
			defer func() {
				if r := recover(); r != nil {
					h.observe(OutcomeRetry, time.Since(start))
					panic(r)
				}
			}()
			o = next(ctx, m)
			h.observe(o.Kind, time.Since(start))
			return o
		}
	}
}

type traceKey struct{}

// TraceFromContext returns the span of the attempt being handled, put in ctx by the
// Trace middleware: a child span of the message envelope's trace, or a fresh trace
// (what a handler puts on the messages it sends). False outside Trace.
func TraceFromContext(ctx context.Context) (TraceContext, bool) {
	t, ok := ctx.Value(traceKey{}).(TraceContext)
	return t, ok && t.Valid()
}

// TraceRecord describes one attempt (C++ TraceRecord), for a Trace sink.
type TraceRecord struct {
	Handler       string // Trace's name
	Topic         string
	Partition     uint32
	MessageID     uint64
	Sequence      uint64
	ProducerID    uint32
	CorrelationID uint64       // the envelope's (0: none)
	CausationID   uint64       // the envelope's (0: none)
	Parent        TraceContext // the envelope's trace context (zero: none)
	Span          TraceContext // this attempt's span: Parent.Child(), or a fresh trace
	Attempt       uint32
	Start         time.Time
	Duration      time.Duration
	Outcome       Outcome // a panic passing through: Retry("panic: ...")
}

// TraceSink gets a TraceRecord after each attempt (on the partition's goroutine: keep
// it short; with AllPartitions, from several goroutines at once).
type TraceSink func(ctx context.Context, r *TraceRecord)

// Trace is C++'s layers::trace: each attempt gets a span of its own (a child of the
// envelope's trace, or a fresh trace), put in ctx (TraceFromContext); after the
// attempt, sink (when not nil) gets the record with the envelope's ids, the duration
// and the outcome. name is the record's Handler (the runner's Name, usually).
func Trace(name string, sink TraceSink) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) (o Outcome) {
			r := TraceRecord{Handler: name}
			if e := m.Envelope; e != nil {
				r.CorrelationID, r.CausationID = e.CorrelationID, e.CausationID
				if e.Trace.Valid() {
					r.Parent = e.Trace
				}
			}
			if r.Parent.Valid() {
				r.Span = r.Parent.Child()
			} else {
				r.Span = NewTrace()
			}
			ctx = context.WithValue(ctx, traceKey{}, r.Span)
			r.Start = time.Now()
			report := func() {
				if sink != nil {
					r.Topic, r.Partition, r.MessageID, r.Sequence, r.ProducerID, r.Attempt =
						m.Topic, m.Partition, m.MessageID, m.Sequence, m.ProducerID, m.Attempt
					r.Duration = time.Since(r.Start)
					r.Outcome = o
					sink(ctx, &r)
				}
			}
			defer func() {
				if p := recover(); p != nil {
					o = panicOutcome(p)
					report()
					panic(p)
				}
			}()
			o = next(ctx, m)
			report()
			return o
		}
	}
}

// JSONLines is a TraceSink writing each record as one JSON object per line to w, in
// C++'s layers::json_lines format (ids as 16/32 lower-case hex digits; parent_span_id,
// correlation_id and causation_id only when set):
//
//	{"event":"attempt","handler":"billing","message_id":"0000000000001111","sequence":1,"producer_id":26135,
//	 "trace_id":"<32 hex>","span_id":"<16 hex>","parent_span_id":"<16 hex>","correlation_id":"<16 hex>",
//	 "outcome":"ack","code":0,"duration_ns":2034}
//
// One Write per line, under a lock (safe from several partitions).
func JSONLines(w io.Writer) TraceSink {
	var mu sync.Mutex
	return func(_ context.Context, r *TraceRecord) {
		b := make([]byte, 0, 320)
		b = append(b, `{"event":"attempt","handler":"`...)
		for i := 0; i < len(r.Handler); i++ {
			switch c := r.Handler[i]; {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c >= 0x20:
				b = append(b, c)
			}
		}
		hex := func(key string, v uint64) {
			b = append(b, `,"`...)
			b = append(b, key...)
			b = append(b, `":"`...)
			b = fmt.Appendf(b, "%016x", v)
			b = append(b, '"')
		}
		b = append(b, '"')
		hex("message_id", r.MessageID)
		b = fmt.Appendf(b, `,"sequence":%d,"producer_id":%d,"trace_id":"%016x%016x"`, r.Sequence, r.ProducerID,
			r.Span.TraceIDHigh, r.Span.TraceIDLow)
		hex("span_id", r.Span.ParentID)
		if r.Parent.Valid() {
			hex("parent_span_id", r.Parent.ParentID)
		}
		if r.CorrelationID != 0 {
			hex("correlation_id", r.CorrelationID)
		}
		if r.CausationID != 0 {
			hex("causation_id", r.CausationID)
		}
		b = fmt.Appendf(b, `,"outcome":"%s","code":%d,"duration_ns":%d}`+"\n", r.Outcome.Kind, r.Outcome.Code,
			r.Duration.Nanoseconds())
		mu.Lock()
		w.Write(b)
		mu.Unlock()
	}
}

// RunnerOptions configures NewRunner (C++ HandlerOptions). The zero value is the
// defaults.
type RunnerOptions struct {
	Name    string         // in dead letters ("": "handler")
	Retry   *RetryPolicy   // nil: DefaultRetryPolicy()
	Breaker *BreakerPolicy // nil: DefaultBreakerPolicy()
	// Subscriber: the partition, a durable Name (a restarted runner resumes at the
	// first message not finished), Untethered ... (Start, BatchSize: as given).
	Subscriber SubscriberOptions
	// AllPartitions runs one goroutine per partition of the topic (each with its own
	// subscriber, breaker and counters; Subscriber.Partition is ignored).
	AllPartitions bool
	// DLQTopic is where dead letters go ("": "<topic>.dlq"); created with DLQConfig
	// when missing (nil: 1 MiB, multi-producer), used as it is when it exists:
	// create it durable on a daemon to keep dead letters nobody reads yet.
	DLQTopic  string
	DLQConfig *TopicConfig
	// Seed of the jitter generator (0: from the clock); with AllPartitions, partition p
	// uses Seed+p.
	Seed uint64
	// AttemptTimeout, when > 0, is the innermost Timeout middleware: each attempt's
	// ctx has this deadline and an attempt that overruns it is a failed attempt.
	AttemptTimeout time.Duration
	// Middleware wraps the handler, the first the outermost (Chain).
	Middleware []Middleware
	// Dedup (not owned, outlives the runner; one partition only: a window follows one
	// partition's sequence): a message the window has seen is released without a
	// call (Stats().Duplicates); every finished message (acked or dead-lettered) is
	// recorded and committed, with the state the handler set (Message.SetAppState),
	// before it is released.
	Dedup *DedupWindow
	// Clock and Sleep replace CLOCK_MONOTONIC and the real wait (tests: a fake clock
	// that Sleep advances). Sleep must return early when ctx ends.
	Clock func() int64
	Sleep func(ctx context.Context, d time.Duration)
}

// HandlerStats are a runner's counters (C++ HandlerStats).
type HandlerStats struct {
	Handled      uint64 // messages finished (acked or dead-lettered)
	Acked        uint64
	Attempts     uint64 // handler calls
	Retries      uint64 // attempts after a failure
	DeadLettered uint64
	Lapped       uint64 // untethered: messages lost to the producer overtaking
	Duplicates   uint64 // dedup: messages released without calling the handler
}

type counters struct {
	handled, acked, attempts, retries, deadLettered, lapped, duplicates atomic.Uint64
}

func (c *counters) add(s *HandlerStats) {
	s.Handled += c.handled.Load()
	s.Acked += c.acked.Load()
	s.Attempts += c.attempts.Load()
	s.Retries += c.retries.Load()
	s.DeadLettered += c.deadLettered.Load()
	s.Lapped += c.lapped.Load()
	s.Duplicates += c.duplicates.Load()
}

// Runner handles a topic's messages with a Handler: retries with backoff and
// jitter, a circuit breaker, dead letters to "<topic>.dlq" (docs/messaging.md,
// "Handler runner (Go)"). Each partition it runs is handled by one goroutine, one
// message at a time, in order: a message is released only once it is acked or
// dead-lettered, so a retry or an open breaker holds the ring (a tethered
// subscription back-pressures the producer); nothing queues in between.
type Runner struct {
	bus   *Bus
	topic string
	h     Handler
	o     RunnerOptions
	retry RetryPolicy
	parts []*partition
	dlqT  string

	dlqMu sync.Mutex
	dlq   *Publisher

	mu       sync.Mutex
	ran      bool
	closed   bool
	stop     context.CancelCauseFunc // Run's, while it runs
	finished chan struct{}           // closed when Run has returned
}

type partition struct {
	r     *Runner
	id    uint32
	sub   *Subscriber
	dedup *DedupWindow
	rng   uint64
	st    counters
	bmu   sync.Mutex
	br    CircuitBreaker
	timer *time.Timer
	buf   unsafe.Pointer // untethered: C memory the message is copied to
	bufN  int
	msg   Message
}

func monoNs() int64 { return int64(C.gosb_mono_ns()) }

var errRunnerUsed = &Error{Code: CodeClosed, Msg: "runner: Run was called already or the runner is closed (make a new one)"}

// NewRunner subscribes to topic (its messages from now on, or where the durable
// subscriber name left off) and returns a runner; Run handles them.
func NewRunner(bus *Bus, topic string, h Handler, opts *RunnerOptions) (*Runner, error) {
	if h == nil {
		return nil, &Error{Code: CodeInvalidArgument, Msg: "NewRunner: no handler"}
	}
	r := &Runner{bus: bus, topic: topic}
	if opts != nil {
		r.o = *opts
	}
	if r.o.Name == "" {
		r.o.Name = "handler"
	}
	r.retry = DefaultRetryPolicy()
	if r.o.Retry != nil {
		r.retry = *r.o.Retry
	}
	if r.retry.MaxAttempts == 0 {
		r.retry.MaxAttempts = 1
	}
	bp := DefaultBreakerPolicy()
	if r.o.Breaker != nil {
		bp = *r.o.Breaker
	}
	if r.o.Clock == nil {
		r.o.Clock = monoNs
	}
	r.dlqT = r.o.DLQTopic
	if r.dlqT == "" {
		r.dlqT = topic + ".dlq"
	}
	inner := h
	if r.o.AttemptTimeout > 0 {
		inner = Timeout(r.o.AttemptTimeout)(inner)
	}
	r.h = Chain(r.o.Middleware...)(inner)

	ids := []uint32{r.o.Subscriber.Partition}
	if r.o.AllPartitions {
		cfg, err := bus.DescribeTopic(topic)
		if err != nil {
			return nil, err
		}
		ids = ids[:0]
		for p := uint32(0); p < cfg.Partitions; p++ {
			ids = append(ids, p)
		}
	}
	if r.o.Dedup != nil && len(ids) != 1 {
		return nil, &Error{Code: CodeInvalidArgument, Msg: "NewRunner: a dedup window follows one partition (the topic has several)"}
	}
	seed := r.o.Seed
	if seed == 0 {
		seed = uint64(monoNs()) | 1
	}
	for i, id := range ids {
		so := r.o.Subscriber
		so.Partition = id
		sub, err := bus.Subscriber(topic, &so)
		if err != nil {
			r.Close()
			return nil, err
		}
		p := &partition{r: r, id: id, sub: sub, dedup: r.o.Dedup, rng: seed + uint64(i), br: CircuitBreaker{p: bp}}
		if p.rng == 0 {
			p.rng = 1
		}
		r.parts = append(r.parts, p)
	}
	return r, nil
}

// Run handles messages until ctx ends, then returns nil; or returns the error that
// stopped a partition (a dead letter that could not be published, a subscriber
// failure), after stopping the others. An attempt in flight when ctx ends finishes
// (its context does not carry ctx's cancellation): an ack releases its message; a
// message still to be retried (or waiting for the breaker) is not released, so a
// durable subscriber name gets it again. Run closes the runner's subscribers when it
// returns; it runs once (a restart is a new Runner).
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.ran || r.closed {
		r.mu.Unlock()
		return errRunnerUsed
	}
	r.ran = true
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r.stop, r.finished = cancel, make(chan struct{})
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.closeLocked()
		close(r.finished)
		r.mu.Unlock()
	}()
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for _, p := range r.parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.run(ctx); err != nil {
				once.Do(func() { first = err })
				cancel(err)
			}
		}()
	}
	wg.Wait()
	return first
}

// Close closes the subscribers (the messages not finished stay unreleased: a durable
// name resumes at them) and the dead-letter publisher. While Run runs, Close stops it
// as the end of its context does and returns once Run has returned (Run then returns
// nil). Run closes the runner itself when it returns. Closing twice is a no-op. Not
// from the handler (it would wait for itself): cancel Run's context there.
func (r *Runner) Close() error {
	r.mu.Lock()
	if r.stop != nil && !r.closed { // running: stop it, wait for it
		stop, fin := r.stop, r.finished
		r.mu.Unlock()
		stop(errRunnerClosing)
		<-fin
		return nil
	}
	defer r.mu.Unlock()
	r.closeLocked()
	return nil
}

var errRunnerClosing = errors.New("runner closing")

func (r *Runner) closeLocked() {
	if r.closed {
		return
	}
	r.closed = true
	for _, p := range r.parts {
		p.sub.Close()
		if p.buf != nil {
			C.free(p.buf)
			p.buf = nil
		}
	}
	r.dlqMu.Lock()
	if r.dlq != nil {
		r.dlq.Close()
	}
	r.dlqMu.Unlock()
}

// Stats sums the counters of every partition. Safe from any goroutine.
func (r *Runner) Stats() HandlerStats {
	var s HandlerStats
	for _, p := range r.parts {
		p.st.add(&s)
	}
	return s
}

// PartitionStats is one partition's counters (false: the runner does not run it).
func (r *Runner) PartitionStats(partition uint32) (HandlerStats, bool) {
	var s HandlerStats
	for _, p := range r.parts {
		if p.id == partition {
			p.st.add(&s)
			return s, true
		}
	}
	return s, false
}

// Breaker is the state of a partition's circuit breaker (false: the runner does not
// run that partition). Safe from any goroutine.
func (r *Runner) Breaker(partition uint32) (BreakerStatus, bool) {
	for _, p := range r.parts {
		if p.id == partition {
			p.bmu.Lock()
			defer p.bmu.Unlock()
			return BreakerStatus{State: p.br.state, OpenUntilNs: p.br.openUntil, TimesOpened: p.br.opened}, true
		}
	}
	return BreakerStatus{}, false
}

// Partitions lists the partitions the runner handles.
func (r *Runner) Partitions() []uint32 {
	ids := make([]uint32, len(r.parts))
	for i, p := range r.parts {
		ids[i] = p.id
	}
	return ids
}

// DLQTopic is where the runner's dead letters go.
func (r *Runner) DLQTopic() string { return r.dlqT }

// run is one partition's loop: C++ HandlerRunner::run.
func (p *partition) run(ctx context.Context) error {
	// Attempts keep Run's values but not its cancellation (an attempt in flight
	// finishes); the per-attempt deadline comes from Timeout.
	actx := context.WithoutCancel(ctx)
	for {
		if ctx.Err() != nil { // (Poll returns a message that is ready even after ctx ended)
			return nil
		}
		v, err := p.sub.Poll(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrLapped) {
				p.st.lapped.Add(1)
				continue
			}
			return fmt.Errorf("runner %s: %s partition %d: %w", p.r.o.Name, p.r.topic, p.id, err)
		}
		more, err := p.step(ctx, actx, &v)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
}

// step handles one polled message: C++ HandlerRunner::step. False when ctx ended
// before the message was finished (it stays unreleased).
func (p *partition) step(ctx, actx context.Context, v *View) (bool, error) {
	mv := v
	if p.r.o.Subscriber.Untethered {
		// The producer may overwrite an untethered view while the handler retries:
		// copy it (into C memory, so that the envelope reader may read it), check the
		// copy is intact, hand the handler the copy.
		n := len(v.Data)
		if p.buf == nil || p.bufN < n {
			if p.buf != nil {
				C.free(p.buf)
			}
			p.bufN = max(n, 256)
			p.buf = C.malloc(C.size_t(p.bufN))
		}
		if n > 0 {
			C.memcpy(p.buf, v.ptr, C.size_t(n))
		}
		if err := p.sub.Check(v); err != nil {
			if !errors.Is(err, ErrLapped) {
				return false, err
			}
			p.st.lapped.Add(1)
			return true, p.release(v)
		}
		c := *v
		c.ptr = p.buf
		c.Data = unsafe.Slice((*byte)(p.buf), n)
		mv = &c
	}
	if p.dedup != nil {
		seen, err := p.dedup.Seen(mv)
		if err != nil {
			return false, err
		}
		if seen {
			p.st.duplicates.Add(1)
			return true, p.release(v)
		}
	}
	m := &p.msg
	*m = Message{Topic: p.r.topic, Partition: p.id, Data: mv.Data, Payload: mv.Data, MessageID: mv.MessageID,
		SchemaID: mv.SchemaID, Sequence: mv.Sequence, ProducerID: mv.ProducerID, TimestampNs: mv.TimestampNs,
		appState: m.appState[:0]}
	if mv.SchemaID == EnvelopeSchemaID {
		env, pv, err := mv.Envelope()
		if err != nil {
			m.EnvelopeErr = err
		} else if env != nil {
			m.Envelope, m.Payload = env, pv.Data
		}
	}
	done, err := p.handle(ctx, actx, mv, m)
	m.Data, m.Payload = nil, nil // ring memory: not kept past the call
	if err != nil || !done {
		return false, err
	}
	if p.dedup != nil { // recorded and committed before the release: a restart finds it seen
		if err := p.dedup.Record(mv); err != nil {
			return false, err
		}
		var st []byte
		if m.hasAppState {
			st = m.appState
		}
		if err := p.dedup.Commit(st); err != nil {
			return false, err
		}
	}
	return true, p.release(v)
}

func (p *partition) release(v *View) error {
	if err := p.sub.Release(v); err != nil {
		return fmt.Errorf("runner %s: release of %s partition %d sequence %d: %w", p.r.o.Name, p.r.topic, p.id, v.Sequence, err)
	}
	return nil
}

// handle runs the handler on one message until it is acked or dead-lettered (true),
// or ctx ends first (false: the message stays unreleased). C++ HandlerRunner::handle.
func (p *partition) handle(ctx, actx context.Context, v *View, m *Message) (bool, error) {
	clock := p.r.o.Clock
	attempt := uint32(1)
	var firstFail, lastFail int64
	for {
		// An open breaker: no attempt until its open time is over. (A closed one needs
		// no clock read: the success path reads no clock, as in C++.)
		for {
			p.bmu.Lock()
			if p.br.state == BreakerClosed {
				p.bmu.Unlock()
				break
			}
			now := clock()
			ok := p.br.Allow(now)
			until := p.br.openUntil
			p.bmu.Unlock()
			if ok {
				break
			}
			if ctx.Err() != nil {
				return false, nil
			}
			p.wait(ctx, time.Duration(until-now))
		}
		p.st.attempts.Add(1)
		m.Attempt = attempt
		m.hasAppState = false
		o := p.call(actx, m)
		if o.Kind == OutcomeAck {
			p.bmu.Lock()
			p.br.OnSuccess()
			p.bmu.Unlock()
			p.st.acked.Add(1)
			p.st.handled.Add(1)
			return true, nil
		}
		now := clock()
		p.bmu.Lock()
		p.br.OnFailure(now)
		p.bmu.Unlock()
		if firstFail == 0 {
			firstFail = now
		}
		lastFail = now
		if o.Kind == OutcomeReject || attempt >= p.r.retry.MaxAttempts {
			if err := p.r.deadLetter(actx, p.id, v, o, attempt, firstFail, lastFail); err != nil {
				return false, err
			}
			p.st.deadLettered.Add(1)
			p.st.handled.Add(1)
			return true, nil
		}
		attempt++
		p.st.retries.Add(1)
		d := o.After
		if d < 0 {
			d = p.r.retry.Backoff(attempt, p.nextRand())
		}
		p.wait(ctx, d)
		if ctx.Err() != nil {
			return false, nil
		}
	}
}

// call runs the handler chain; a panic that reaches the runner is a retry
// ("panic: <value>"), as a C++ handler's exception is.
func (p *partition) call(ctx context.Context, m *Message) (o Outcome) {
	defer func() {
		if r := recover(); r != nil {
			o = panicOutcome(r)
		}
	}()
	o = p.r.h(ctx, m)
	if o.Kind > OutcomeReject {
		o = Retry(fmt.Sprintf("handler returned an unknown outcome kind %d", o.Kind), 0)
	}
	return o
}

// nextRand is C++'s xorshift64* (HandlerRunner::next_rand).
func (p *partition) nextRand() uint64 {
	x := p.rng
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	p.rng = x
	return x * 0x2545F4914F6CDD1D
}

// wait sleeps d, or less when ctx ends.
func (p *partition) wait(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	if p.r.o.Sleep != nil {
		p.r.o.Sleep(ctx, d)
		return
	}
	if p.timer == nil {
		p.timer = time.NewTimer(d)
	} else {
		p.timer.Reset(d)
	}
	select {
	case <-p.timer.C:
	case <-ctx.Done():
		p.timer.Stop()
	}
}

// deadLetter publishes v's DeadLetter to the dead-letter topic (created when
// missing): the frame has v's message id and DeadLetter's type id as schema id.
// C++ HandlerRunner::dead_letter, field for field.
func (r *Runner) deadLetter(ctx context.Context, partition uint32, v *View, last Outcome, attempts uint32,
	firstNs, lastNs int64) error {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return err
	}
	d, err := envelopecapnp.NewRootDeadLetter(seg)
	if err != nil {
		return err
	}
	d.SetCode(last.Code)
	if err := d.SetMessage_(last.Message); err != nil {
		return err
	}
	d.SetAttempts(attempts)
	d.SetFirstFailureNs(uint64(firstNs))
	d.SetLastFailureNs(uint64(lastNs))
	if err := d.SetHandler(r.o.Name); err != nil {
		return err
	}
	rs, err := d.NewRetry()
	if err != nil {
		return err
	}
	rs.SetMaxAttempts(r.retry.MaxAttempts)
	rs.SetInitialBackoffNs(uint64(r.retry.InitialBackoff))
	rs.SetMaxBackoffNs(uint64(r.retry.MaxBackoff))
	rs.SetMultiplier(r.retry.Multiplier)
	rs.SetJitter(r.retry.Jitter)
	if last.Kind == OutcomeReject {
		d.SetReason(envelopecapnp.DeadLetter_Reason_rejected)
	} else {
		d.SetReason(envelopecapnp.DeadLetter_Reason_exhausted)
	}
	if err := d.SetOriginalTopic(r.topic); err != nil {
		return err
	}
	d.SetPartition(partition)
	d.SetSequence(v.Sequence)
	d.SetMessageId(v.MessageID)
	d.SetSchemaId(v.SchemaID)
	d.SetProducerId(v.ProducerID)
	d.SetTimestampNs(v.TimestampNs)
	payload := v.Data
	if payload == nil {
		payload = []byte{}
	}
	if err := d.SetPayload(payload); err != nil {
		return err
	}
	b, err := msg.Marshal()
	if err != nil {
		return err
	}
	r.dlqMu.Lock()
	defer r.dlqMu.Unlock()
	if r.dlq == nil {
		// An existing dead-letter topic is used as it is (whatever its settings).
		if _, err := r.bus.DescribeTopic(r.dlqT); err != nil {
			if !errors.Is(err, ErrNotFound) {
				return err
			}
			cfg := TopicConfig{Capacity: 1 << 20, MultiProducer: true}
			if r.o.DLQConfig != nil {
				cfg = *r.o.DLQConfig
			}
			if err := r.bus.CreateTopic(r.dlqT, cfg); err != nil && !errors.Is(err, ErrAlreadyExists) {
				return err // (already made meanwhile by another runner: fine)
			}
		}
		if r.dlq, err = r.bus.Publisher(r.dlqT, nil); err != nil {
			return fmt.Errorf("runner %s: dead-letter publisher on %s: %w", r.o.Name, r.dlqT, err)
		}
	}
	if err := r.dlq.Offer(ctx, b, v.MessageID, envelopecapnp.DeadLetter_TypeID); err != nil {
		return fmt.Errorf("runner %s: dead letter of %s partition %d sequence %d not published to %s: %w",
			r.o.Name, r.topic, partition, v.Sequence, r.dlqT, err)
	}
	return nil
}
