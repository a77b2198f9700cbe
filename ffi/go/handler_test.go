package shmbus_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/envelopecapnp"
)

// The C++ policies of testdata/gen_backoff_table.cpp.
var (
	def  = shmbus.DefaultRetryPolicy()
	odd  = shmbus.RetryPolicy{MaxAttempts: 9, InitialBackoff: 1_500_000, MaxBackoff: 250_000_000, Multiplier: 1.7, Jitter: 0.35}
	wide = shmbus.RetryPolicy{MaxAttempts: 9, InitialBackoff: 3, MaxBackoff: 1_000_000_000_000, Multiplier: 3.3, Jitter: 1.5}
	sub1 = shmbus.RetryPolicy{MaxAttempts: 9, InitialBackoff: 1000, MaxBackoff: 5000, Multiplier: 0.5, Jitter: -1}
)

// backoffTable is C++'s RetryPolicy::backoff_ns (libshmbus) printed by
// testdata/gen_backoff_table.cpp: policy, attempt, random word, nanoseconds.
var backoffTable = []struct {
	p       shmbus.RetryPolicy
	attempt uint32
	rnd     uint64
	ns      int64
}{
	{def, 1, 0x0000000000000000, 0},
	{def, 1, 0xffffffffffffffff, 0},
	{def, 1, 0x8000000000000000, 0},
	{def, 1, 0x9e3779b97f4a7c15, 0},
	{def, 1, 0x0123456789abcdef, 0},
	{def, 1, 0xfedcba9876543210, 0},
	{def, 2, 0x0000000000000000, 800000},
	{def, 2, 0xffffffffffffffff, 1200000},
	{def, 2, 0x8000000000000000, 1000000},
	{def, 2, 0x9e3779b97f4a7c15, 1047213},
	{def, 2, 0x0123456789abcdef, 801777},
	{def, 2, 0xfedcba9876543210, 1198222},
	{def, 3, 0x0000000000000000, 1600000},
	{def, 3, 0xffffffffffffffff, 2400000},
	{def, 3, 0x8000000000000000, 2000000},
	{def, 3, 0x9e3779b97f4a7c15, 2094427},
	{def, 3, 0x0123456789abcdef, 1603555},
	{def, 3, 0xfedcba9876543210, 2396444},
	{def, 7, 0x0000000000000000, 25600000},
	{def, 7, 0xffffffffffffffff, 38400000},
	{def, 7, 0x8000000000000000, 32000000},
	{def, 7, 0x9e3779b97f4a7c15, 33510835},
	{def, 7, 0x0123456789abcdef, 25656888},
	{def, 7, 0xfedcba9876543210, 38343111},
	{def, 12, 0x0000000000000000, 800000000},
	{def, 12, 0xffffffffffffffff, 1200000000},
	{def, 12, 0x8000000000000000, 1000000000},
	{def, 12, 0x9e3779b97f4a7c15, 1047213595},
	{def, 12, 0x0123456789abcdef, 801777777},
	{def, 12, 0xfedcba9876543210, 1198222222},
	{def, 40, 0x0000000000000000, 800000000},
	{def, 40, 0xffffffffffffffff, 1200000000},
	{def, 40, 0x8000000000000000, 1000000000},
	{def, 40, 0x9e3779b97f4a7c15, 1047213595},
	{def, 40, 0x0123456789abcdef, 801777777},
	{def, 40, 0xfedcba9876543210, 1198222222},
	{def, 70, 0x0000000000000000, 800000000},
	{def, 70, 0xffffffffffffffff, 1200000000},
	{def, 70, 0x8000000000000000, 1000000000},
	{def, 70, 0x9e3779b97f4a7c15, 1047213595},
	{def, 70, 0x0123456789abcdef, 801777777},
	{def, 70, 0xfedcba9876543210, 1198222222},
	{odd, 1, 0x0000000000000000, 0},
	{odd, 1, 0xffffffffffffffff, 0},
	{odd, 1, 0x8000000000000000, 0},
	{odd, 1, 0x9e3779b97f4a7c15, 0},
	{odd, 1, 0x0123456789abcdef, 0},
	{odd, 1, 0xfedcba9876543210, 0},
	{odd, 2, 0x0000000000000000, 975000},
	{odd, 2, 0xffffffffffffffff, 2024999},
	{odd, 2, 0x8000000000000000, 1500000},
	{odd, 2, 0x9e3779b97f4a7c15, 1623935},
	{odd, 2, 0x0123456789abcdef, 979666},
	{odd, 2, 0xfedcba9876543210, 2020333},
	{odd, 3, 0x0000000000000000, 1657500},
	{odd, 3, 0xffffffffffffffff, 3442499},
	{odd, 3, 0x8000000000000000, 2550000},
	{odd, 3, 0x9e3779b97f4a7c15, 2760690},
	{odd, 3, 0x0123456789abcdef, 1665433},
	{odd, 3, 0xfedcba9876543210, 3434566},
	{odd, 7, 0x0000000000000000, 13843605},
	{odd, 7, 0xffffffffffffffff, 28752104},
	{odd, 7, 0x8000000000000000, 21297854},
	{odd, 7, 0x9e3779b97f4a7c15, 23057564},
	{odd, 7, 0x0123456789abcdef, 13909865},
	{odd, 7, 0xfedcba9876543210, 28685844},
	{odd, 12, 0x0000000000000000, 162500000},
	{odd, 12, 0xffffffffffffffff, 337499999},
	{odd, 12, 0x8000000000000000, 250000000},
	{odd, 12, 0x9e3779b97f4a7c15, 270655948},
	{odd, 12, 0x0123456789abcdef, 163277777},
	{odd, 12, 0xfedcba9876543210, 336722222},
	{odd, 40, 0x0000000000000000, 162500000},
	{odd, 40, 0xffffffffffffffff, 337499999},
	{odd, 40, 0x8000000000000000, 250000000},
	{odd, 40, 0x9e3779b97f4a7c15, 270655948},
	{odd, 40, 0x0123456789abcdef, 163277777},
	{odd, 40, 0xfedcba9876543210, 336722222},
	{odd, 70, 0x0000000000000000, 162500000},
	{odd, 70, 0xffffffffffffffff, 337499999},
	{odd, 70, 0x8000000000000000, 250000000},
	{odd, 70, 0x9e3779b97f4a7c15, 270655948},
	{odd, 70, 0x0123456789abcdef, 163277777},
	{odd, 70, 0xfedcba9876543210, 336722222},
	{wide, 1, 0x0000000000000000, 0},
	{wide, 1, 0xffffffffffffffff, 0},
	{wide, 1, 0x8000000000000000, 0},
	{wide, 1, 0x9e3779b97f4a7c15, 0},
	{wide, 1, 0x0123456789abcdef, 0},
	{wide, 1, 0xfedcba9876543210, 0},
	{wide, 2, 0x0000000000000000, 0},
	{wide, 2, 0xffffffffffffffff, 5},
	{wide, 2, 0x8000000000000000, 3},
	{wide, 2, 0x9e3779b97f4a7c15, 3},
	{wide, 2, 0x0123456789abcdef, 0},
	{wide, 2, 0xfedcba9876543210, 5},
	{wide, 3, 0x0000000000000000, 0},
	{wide, 3, 0xffffffffffffffff, 19},
	{wide, 3, 0x8000000000000000, 9},
	{wide, 3, 0x9e3779b97f4a7c15, 12},
	{wide, 3, 0x0123456789abcdef, 0},
	{wide, 3, 0xfedcba9876543210, 19},
	{wide, 7, 0x0000000000000000, 0},
	{wide, 7, 0xffffffffffffffff, 2348},
	{wide, 7, 0x8000000000000000, 1174},
	{wide, 7, 0x9e3779b97f4a7c15, 1451},
	{wide, 7, 0x0123456789abcdef, 10},
	{wide, 7, 0xfedcba9876543210, 2337},
	{wide, 12, 0x0000000000000000, 0},
	{wide, 12, 0xffffffffffffffff, 918947},
	{wide, 12, 0x8000000000000000, 459473},
	{wide, 12, 0x9e3779b97f4a7c15, 567940},
	{wide, 12, 0x0123456789abcdef, 4084},
	{wide, 12, 0xfedcba9876543210, 914863},
	{wide, 40, 0x0000000000000000, 0},
	{wide, 40, 0xffffffffffffffff, 1999999999999},
	{wide, 40, 0x8000000000000000, 1000000000000},
	{wide, 40, 0x9e3779b97f4a7c15, 1236067977499},
	{wide, 40, 0x0123456789abcdef, 8888888888},
	{wide, 40, 0xfedcba9876543210, 1991111111111},
	{wide, 70, 0x0000000000000000, 0},
	{wide, 70, 0xffffffffffffffff, 1999999999999},
	{wide, 70, 0x8000000000000000, 1000000000000},
	{wide, 70, 0x9e3779b97f4a7c15, 1236067977499},
	{wide, 70, 0x0123456789abcdef, 8888888888},
	{wide, 70, 0xfedcba9876543210, 1991111111111},
	{sub1, 1, 0x0000000000000000, 0},
	{sub1, 1, 0xffffffffffffffff, 0},
	{sub1, 1, 0x8000000000000000, 0},
	{sub1, 1, 0x9e3779b97f4a7c15, 0},
	{sub1, 1, 0x0123456789abcdef, 0},
	{sub1, 1, 0xfedcba9876543210, 0},
	{sub1, 2, 0x0000000000000000, 1000},
	{sub1, 2, 0xffffffffffffffff, 1000},
	{sub1, 2, 0x8000000000000000, 1000},
	{sub1, 2, 0x9e3779b97f4a7c15, 1000},
	{sub1, 2, 0x0123456789abcdef, 1000},
	{sub1, 2, 0xfedcba9876543210, 1000},
	{sub1, 3, 0x0000000000000000, 1000},
	{sub1, 3, 0xffffffffffffffff, 1000},
	{sub1, 3, 0x8000000000000000, 1000},
	{sub1, 3, 0x9e3779b97f4a7c15, 1000},
	{sub1, 3, 0x0123456789abcdef, 1000},
	{sub1, 3, 0xfedcba9876543210, 1000},
	{sub1, 7, 0x0000000000000000, 1000},
	{sub1, 7, 0xffffffffffffffff, 1000},
	{sub1, 7, 0x8000000000000000, 1000},
	{sub1, 7, 0x9e3779b97f4a7c15, 1000},
	{sub1, 7, 0x0123456789abcdef, 1000},
	{sub1, 7, 0xfedcba9876543210, 1000},
	{sub1, 12, 0x0000000000000000, 1000},
	{sub1, 12, 0xffffffffffffffff, 1000},
	{sub1, 12, 0x8000000000000000, 1000},
	{sub1, 12, 0x9e3779b97f4a7c15, 1000},
	{sub1, 12, 0x0123456789abcdef, 1000},
	{sub1, 12, 0xfedcba9876543210, 1000},
	{sub1, 40, 0x0000000000000000, 1000},
	{sub1, 40, 0xffffffffffffffff, 1000},
	{sub1, 40, 0x8000000000000000, 1000},
	{sub1, 40, 0x9e3779b97f4a7c15, 1000},
	{sub1, 40, 0x0123456789abcdef, 1000},
	{sub1, 40, 0xfedcba9876543210, 1000},
	{sub1, 70, 0x0000000000000000, 1000},
	{sub1, 70, 0xffffffffffffffff, 1000},
	{sub1, 70, 0x8000000000000000, 1000},
	{sub1, 70, 0x9e3779b97f4a7c15, 1000},
	{sub1, 70, 0x0123456789abcdef, 1000},
	{sub1, 70, 0xfedcba9876543210, 1000},
}

// cxxRand is C++'s jitter generator (HandlerRunner::next_rand, xorshift64*) from seed
// 42, printed by testdata/gen_backoff_table.cpp.
var cxxRand = []uint64{
	0x56ce4ab7719ba3a0,
	0xc841eb53ebbb2dda,
	0xca466be0c9980276,
	0xf1acc7334a7b70df,
	0xc3af4dd7fb900a06,
	0xd5f30c2206dfcea3,
	0x3447be26f68e2c72,
	0x70977e1b66b10e4f,
	0x4d8ffb65f9eb6e50,
	0xac515db7bddb6a46,
}

// The backoff is C++'s, to the nanosecond, over a grid of policies (odd multipliers,
// a cap, jitter out of [0, 1], a multiplier below 1) and random words; and every
// jittered delay lies in [base·(1−j), base·(1+j)].
func TestBackoffIsTheCxxFormula(t *testing.T) {
	for _, c := range backoffTable {
		if got := c.p.Backoff(c.attempt, c.rnd); int64(got) != c.ns {
			t.Errorf("%+v attempt %d rnd %#x: Go %d ns, C++ %d ns", c.p, c.attempt, c.rnd, int64(got), c.ns)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100_000; i++ {
		a := uint32(2 + r.IntN(30))
		base := math.Min(float64(def.InitialBackoff)*math.Pow(def.Multiplier, float64(a-2)), float64(def.MaxBackoff))
		got := float64(def.Backoff(a, r.Uint64()))
		if got < math.Floor(base*(1-def.Jitter))-1 || got > base*(1+def.Jitter) {
			t.Fatalf("attempt %d: %v ns outside [%v, %v]", a, got, base*(1-def.Jitter), base*(1+def.Jitter))
		}
	}
	if d := def.Backoff(1, ^uint64(0)); d != 0 {
		t.Fatalf("the first attempt waits %v", d)
	}
}

// The breaker's transitions, as C++'s CircuitBreaker: threshold consecutive failures
// open it, a success resets the count, the open time ends in half-open, a failed
// trial re-opens it, the required successes close it.
func TestCircuitBreakerStateMachine(t *testing.T) {
	b := shmbus.NewCircuitBreaker(shmbus.BreakerPolicy{FailureThreshold: 3, Open: 10, HalfOpenSuccesses: 2})
	now := int64(1000)
	b.OnFailure(now)
	b.OnFailure(now)
	b.OnSuccess() // resets the consecutive count
	b.OnFailure(now)
	b.OnFailure(now)
	if b.State() != shmbus.BreakerClosed || !b.Allow(now) {
		t.Fatalf("2 consecutive failures of 3: %v", b.State())
	}
	b.OnFailure(now)
	if b.State() != shmbus.BreakerOpen || b.OpenUntilNs() != now+10 || b.TimesOpened() != 1 {
		t.Fatalf("3rd failure: %v until %d, opened %d", b.State(), b.OpenUntilNs(), b.TimesOpened())
	}
	if b.Allow(now+9) || b.State() != shmbus.BreakerOpen {
		t.Fatal("allowed while open")
	}
	if !b.Allow(now+10) || b.State() != shmbus.BreakerHalfOpen {
		t.Fatalf("after the open time: %v", b.State())
	}
	b.OnFailure(now + 10) // a failed trial re-opens it at once
	if b.State() != shmbus.BreakerOpen || b.OpenUntilNs() != now+20 || b.TimesOpened() != 2 {
		t.Fatalf("failed trial: %v until %d", b.State(), b.OpenUntilNs())
	}
	if !b.Allow(now + 25) {
		t.Fatal("not half-open after the second open time")
	}
	b.OnSuccess()
	if b.State() != shmbus.BreakerHalfOpen {
		t.Fatalf("1 of 2 successes: %v", b.State())
	}
	b.OnSuccess()
	if b.State() != shmbus.BreakerClosed {
		t.Fatalf("2 of 2 successes: %v", b.State())
	}
	// Zero thresholds count as 1 (as C++).
	z := shmbus.NewCircuitBreaker(shmbus.BreakerPolicy{Open: 5})
	z.OnFailure(0)
	if z.State() != shmbus.BreakerOpen {
		t.Fatalf("threshold 0: %v", z.State())
	}
	z.Allow(5)
	z.OnSuccess()
	if z.State() != shmbus.BreakerClosed {
		t.Fatalf("half-open successes 0: %v", z.State())
	}
}

// fakeClock is a runner's injected time: Sleep advances it (exact waits, no real
// sleeping) and records each wait.
type fakeClock struct {
	mu    sync.Mutex
	now   int64
	waits []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: 1_000_000_000} }

func (c *fakeClock) Now() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now += int64(d)
	c.waits = append(c.waits, d)
}

// runUntil runs r until done is closed, then cancels it and returns what Run
// returned (the timeouts are watchdogs).
func runUntil(t *testing.T, r *shmbus.Runner, done <-chan struct{}) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	select {
	case <-done:
	case err := <-errc:
		t.Fatalf("Run returned before the test was done: %v", err)
	case <-time.After(120 * time.Second):
		t.Fatal("watchdog: the runner did not finish in 120 s")
	}
	cancel()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("watchdog: Run did not return 30 s after its context ended")
	}
	return nil
}

func idPayload(i uint64) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], i)
	return b[:]
}

// A flaky handler: every 5th message fails twice and then succeeds, message 7 asks
// for a 7 ms retry once. Every message is acked exactly once, in order, and the
// waits are C++'s backoffs with C++'s generator (seed 42) in turn, 7 ms for the
// explicit one (which draws no random word).
func TestRunnerRetriesAFlakyHandlerInOrderWithTheCxxBackoff(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	clk := newFakeClock()
	var acked []uint64
	calls := map[uint64]int{}
	done := make(chan struct{})
	const n = 20
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		calls[id]++
		if uint32(calls[id]) != m.Attempt {
			t.Errorf("message %d: attempt %d on call %d", id, m.Attempt, calls[id])
		}
		if id%5 == 0 && calls[id] <= 2 {
			return shmbus.Retry("flaky", 503)
		}
		if id == 7 && calls[id] == 1 {
			return shmbus.RetryAfter("later", 0, 7*time.Millisecond)
		}
		acked = append(acked, id)
		if id == n {
			close(done)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{Seed: 42, Clock: clk.Now, Sleep: clk.Sleep,
		Breaker: &shmbus.BreakerPolicy{FailureThreshold: 1000, Open: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := uint64(1); i <= n; i++ {
		if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	for i, id := range acked {
		if id != uint64(i+1) {
			t.Fatalf("acked %v: not each once in order", acked)
		}
	}
	if len(acked) != n {
		t.Fatalf("acked %d of %d", len(acked), n)
	}
	var want []time.Duration
	k := 0
	for id := uint64(1); id <= n; id++ {
		if id == 7 {
			want = append(want, 7*time.Millisecond)
		}
		if id%5 == 0 {
			for a := uint32(2); a <= 3; a++ {
				want = append(want, def.Backoff(a, cxxRand[k]))
				k++
			}
		}
	}
	if fmt.Sprint(clk.waits) != fmt.Sprint(want) {
		t.Fatalf("waits %v, want C++'s %v", clk.waits, want)
	}
	st := r.Stats()
	if st != (shmbus.HandlerStats{Handled: n, Acked: n, Attempts: n + 9, Retries: 9}) {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("waits %v", clk.waits)
}

// A dependency down for 35 ms of (fake) time, the breaker at 3 failures, 10 ms open,
// 2 successful trials to close, a 1 ms backoff without jitter: it opens at 3 failures
// and after each failed trial (4 openings: at +2, +12, +22, +32 ms), no call is made
// while it is open, the trial at +42 ms succeeds and the next message's call (the
// second trial) closes it; both messages are acked in order.
func TestRunnerCircuitBreakerOpensTriesHalfOpenAndCloses(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	clk := newFakeClock()
	t0 := clk.Now()
	var r *shmbus.Runner
	type call struct {
		id    uint64
		at    int64
		state shmbus.BreakerState
	}
	var calls []call
	done := make(chan struct{})
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		b, _ := r.Breaker(0)
		id := binary.LittleEndian.Uint64(m.Data)
		calls = append(calls, call{id, clk.Now() - t0, b.State})
		if clk.Now() < t0+35_000_000 {
			return shmbus.Retry("dependency down", 503)
		}
		if id == 2 {
			close(done)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{Clock: clk.Now, Sleep: clk.Sleep,
		Retry:   &shmbus.RetryPolicy{MaxAttempts: 1000, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Multiplier: 1},
		Breaker: &shmbus.BreakerPolicy{FailureThreshold: 3, Open: 10 * time.Millisecond, HalfOpenSuccesses: 2}})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := uint64(1); i <= 2; i++ {
		if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	ms := int64(time.Millisecond)
	want := []call{{1, 0, shmbus.BreakerClosed}, {1, 1 * ms, shmbus.BreakerClosed}, {1, 2 * ms, shmbus.BreakerClosed},
		{1, 12 * ms, shmbus.BreakerHalfOpen}, {1, 22 * ms, shmbus.BreakerHalfOpen}, {1, 32 * ms, shmbus.BreakerHalfOpen},
		{1, 42 * ms, shmbus.BreakerHalfOpen}, {2, 42 * ms, shmbus.BreakerHalfOpen}}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("calls (message, ns after start, breaker state):\n got %v\nwant %v", calls, want)
	}
	b, _ := r.Breaker(0)
	if b.State != shmbus.BreakerClosed || b.TimesOpened != 4 {
		t.Fatalf("breaker at the end: %+v", b)
	}
	if st := r.Stats(); st.Acked != 2 || st.DeadLettered != 0 || st.Attempts != 8 {
		t.Fatalf("stats %+v", st)
	}
}

// dlqLine is one line of `shmbus tail/replay` for a dead letter.
type dlqLine struct {
	MessageID string         `json:"message_id"`
	SchemaID  string         `json:"schema_id"`
	Producer  uint32         `json:"producer"`
	Type      string         `json:"type"`
	Message   map[string]any `json:"message"`
}

// A poison message among 100 000 others, through a real daemon (embedded) on a
// tethered 64 KiB ring the producer fills: it is retried 3 times (the ring holds it,
// the producer waits), dead-lettered to a durable <topic>.dlq with every field, and
// the 100 000 others are acked once each, in order. The Go-written DeadLetter is read
// by the C++ tool (`shmbus tail <topic>.dlq`, SHMBUS_CLI; that part is skipped
// without it) and every field it prints is checked.
func TestRunnerDeadLettersAPoisonMessageWhile100000Flow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second) // (a watchdog: -race is slow)
	defer cancel()
	dir := t.TempDir()
	bus, err := shmbus.OpenEmbedded(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	const topic = "go.run.poison"
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 16}); err != nil {
		t.Fatal(err)
	}
	if err := bus.CreateTopic(topic+".dlq", shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true,
		Durable: &shmbus.DurableConfig{Flush: shmbus.FlushBatch}}); err != nil {
		t.Fatal(err)
	}
	const n = 100_001
	const poison = 50_001
	var next uint64 = 1
	var poisonSeq, poisonTs uint64
	var poisonPayload []byte
	done := make(chan struct{})
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data[len(m.Data)-8:])
		if id != next {
			t.Errorf("got message %d, want %d (order)", id, next)
		}
		if id == poison {
			poisonSeq, poisonTs, poisonPayload = m.Sequence, m.TimestampNs, bytes.Clone(m.Data)
			if m.Attempt < 3 {
				return shmbus.Retry("db says no", 503)
			}
			next++
			return shmbus.Retry("db says no, again", 503)
		}
		next++
		if id == n {
			close(done)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{Name: "fulfilment",
		Retry: &shmbus.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{ProducerID: 77, BlockTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	perr := make(chan error, 1)
	go func() {
		for i := uint64(1); i <= n; i++ {
			p := idPayload(i)
			if i == poison {
				p = append([]byte("poison:"), p...)
			}
			if err := pub.Offer(ctx, p, 1000+i, 0x1234); err != nil {
				perr <- err
				return
			}
		}
		perr <- nil
	}()
	start := time.Now()
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if err := <-perr; err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	if st != (shmbus.HandlerStats{Handled: n, Acked: n - 1, Attempts: n + 2, Retries: 2, DeadLettered: 1}) {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d messages through the runner in %v (%.2f µs each), the poison dead-lettered", n, took, float64(took.Microseconds())/n)

	cli := os.Getenv("SHMBUS_CLI")
	if cli == "" {
		t.Skip("SHMBUS_CLI (the build's tools/shmbus) is not set: the dead letter is not read by C++")
	}
	out, err := exec.CommandContext(ctx, cli, "--socket", filepath.Join(dir, "shmbusd.sock"), "tail", topic+".dlq",
		"--from", "earliest", "--count", "1").Output()
	if err != nil {
		t.Fatalf("shmbus tail: %v (%s)", err, out)
	}
	var line dlqLine
	if err := json.Unmarshal(bytes.TrimSpace(out), &line); err != nil {
		t.Fatalf("shmbus tail printed %q: %v", out, err)
	}
	t.Logf("C++ read: %s", bytes.TrimSpace(out))
	if line.MessageID != fmt.Sprintf("0x%016x", 1000+poison) || line.SchemaID != fmt.Sprintf("0x%016x", uint64(envelopecapnp.DeadLetter_TypeID)) ||
		line.Type != "DeadLetter" {
		t.Fatalf("frame: %s", out)
	}
	m := line.Message
	payload := make([]any, len(poisonPayload))
	for i, b := range poisonPayload {
		payload[i] = float64(b)
	}
	want := map[string]any{"code": 503.0, "message": "db says no, again", "attempts": 3.0, "handler": "fulfilment",
		"retry": map[string]any{"maxAttempts": 3.0, "initialBackoffNs": "1000000", "maxBackoffNs": "1000000000",
			"multiplier": 2.0, "jitter": 0.2},
		"reason": "exhausted", "originalTopic": topic, "sequence": strconv.FormatUint(poisonSeq, 10),
		"messageId": strconv.Itoa(1000 + poison), "schemaId": "4660", "producerId": 77.0,
		"timestampNs": strconv.FormatUint(poisonTs, 10), "payload": payload}
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			t.Errorf("field %s: C++ read %v, want %v", k, m[k], v)
		}
	}
	if p, ok := m["partition"]; !ok || p != 0.0 {
		t.Errorf("partition %v", p)
	}
	first, err1 := strconv.ParseUint(fmt.Sprint(m["firstFailureNs"]), 10, 64)
	last, err2 := strconv.ParseUint(fmt.Sprint(m["lastFailureNs"]), 10, 64)
	// Two backoffs (≥ 0.8 ms and ≥ 1.6 ms) lie between the first and the last failure.
	if err1 != nil || err2 != nil || first < poisonTs || last < first+2_400_000 {
		t.Errorf("failure times %v .. %v (frame at %d)", m["firstFailureNs"], m["lastFailureNs"], poisonTs)
	}
	if len(m) != len(want)+3 { // partition, firstFailureNs, lastFailureNs
		t.Errorf("C++ printed fields %v", m)
	}
}

// readDeadLetter polls one dead letter from sub and decodes it in Go.
func readDeadLetter(t *testing.T, ctx context.Context, sub *shmbus.Subscriber) (shmbus.View, envelopecapnp.DeadLetter) {
	t.Helper()
	v, err := sub.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := capnp.Unmarshal(bytes.Clone(v.Data))
	if err != nil {
		t.Fatal(err)
	}
	d, err := envelopecapnp.ReadRootDeadLetter(msg)
	if err != nil {
		t.Fatal(err)
	}
	sub.Release(&v)
	return v, d
}

func deadLetterText(d envelopecapnp.DeadLetter) string {
	s, _ := d.Message_()
	p, _ := d.Payload()
	return fmt.Sprintf("%s (%d attempts, %s, payload %d)", s, d.Attempts(), d.Reason(), binary.LittleEndian.Uint64(p))
}

// A panic is a retry whose reason is "panic: <value>": caught by Recoverer and,
// without it, by the runner itself, the Trace and Metrics middleware around it
// recording the attempt as a retry either way (and letting the panic through).
func TestRunnerRecoversAPanic(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	if err := bus.CreateTopic(topic+".dlq", shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true}); err != nil {
		t.Fatal(err)
	}
	defer bus.RemoveTopic(topic + ".dlq")
	dlq, err := bus.Subscriber(topic+".dlq", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	clk := newFakeClock()
	var seen []string
	var stacks int
	handler := func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		if id == 2 || m.Attempt == 1 {
			panic(fmt.Sprintf("boom %d", id))
		}
		return shmbus.Ack()
	}
	for _, recoverer := range []bool{true, false} {
		done := make(chan struct{})
		var metrics shmbus.HandlerMetrics
		mw := []shmbus.Middleware{shmbus.Metrics(&metrics), shmbus.Trace("panicky", func(ctx context.Context, r *shmbus.TraceRecord) {
			seen = append(seen, fmt.Sprintf("%d/%d %s %s", r.MessageID, r.Attempt, r.Outcome.Kind, r.Outcome.Message))
		})}
		if recoverer {
			mw = append(mw, shmbus.Recoverer(func(r any, stack []byte) {
				if bytes.Contains(stack, []byte("handler_test.go")) {
					stacks++
				}
			}))
		}
		r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
			defer func() {
				if binary.LittleEndian.Uint64(m.Data) == 3 && m.Attempt == 2 {
					close(done)
				}
			}()
			return handler(ctx, m)
		}, &shmbus.RunnerOptions{Clock: clk.Now, Sleep: clk.Sleep, Middleware: mw,
			Retry: &shmbus.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		for i := uint64(1); i <= 3; i++ {
			if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := runUntil(t, r, done); err != nil {
			t.Fatal(err)
		}
		if st := r.Stats(); st != (shmbus.HandlerStats{Handled: 3, Acked: 2, Attempts: 6, Retries: 3, DeadLettered: 1}) {
			t.Fatalf("recoverer %v: stats %+v", recoverer, st)
		}
		v, d := readDeadLetter(t, ctx, dlq)
		if got := deadLetterText(d); got != "panic: boom 2 (2 attempts, exhausted, payload 2)" || v.MessageID != 2 {
			t.Fatalf("recoverer %v: dead letter %q, message id %d", recoverer, got, v.MessageID)
		}
		var inBuckets uint64
		for i := range metrics.DurationLog2Ns {
			inBuckets += metrics.DurationLog2Ns[i].Load()
		}
		if metrics.Attempts.Load() != 6 || metrics.Acks.Load() != 2 || metrics.Retries.Load() != 4 ||
			metrics.Rejects.Load() != 0 || inBuckets != 6 {
			t.Fatalf("recoverer %v: metrics %d attempts, %d acks, %d retries, %d rejects, %d in the histogram", recoverer,
				metrics.Attempts.Load(), metrics.Acks.Load(), metrics.Retries.Load(), metrics.Rejects.Load(), inBuckets)
		}
	}
	want := []string{"1/1 retry panic: boom 1", "1/2 ack ", "2/1 retry panic: boom 2", "2/2 retry panic: boom 2",
		"3/1 retry panic: boom 3", "3/2 ack "}
	want = append(want, want...) // the same with the runner recovering
	if fmt.Sprint(seen) != fmt.Sprint(want) || stacks != 4 {
		t.Fatalf("trace hook saw %q, want %q; %d stacks (want 4)", seen, want, stacks)
	}
}

// An attempt that overruns its deadline (RunnerOptions.AttemptTimeout: C++'s
// layers::timeout) is a failed attempt even when it then returns an ack: retried, and
// dead-lettered with C++'s reason and code 408 when every attempt overruns; a reject
// that overruns stays a reject. The handler's ctx has the deadline.
func TestRunnerAttemptTimeout(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	if err := bus.CreateTopic(topic+".dlq", shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true}); err != nil {
		t.Fatal(err)
	}
	defer bus.RemoveTopic(topic + ".dlq")
	dlq, err := bus.Subscriber(topic+".dlq", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	const limit = 30 * time.Millisecond
	done := make(chan struct{})
	var calls []string
	r, err := shmbus.NewRunner(bus, topic, func(actx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		dl, ok := actx.Deadline()
		if !ok || time.Until(dl) > limit {
			t.Errorf("attempt deadline %v %v", dl, ok)
		}
		calls = append(calls, fmt.Sprintf("%d/%d", id, m.Attempt))
		if id == 4 {
			close(done)
			return shmbus.Ack()
		}
		if id == 2 || m.Attempt == 1 {
			select { // ignores its deadline: returns once it has passed
			case <-actx.Done():
			case <-ctx.Done():
			}
		}
		if id == 3 {
			return shmbus.Reject("bad", 422)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{AttemptTimeout: limit, Sleep: func(context.Context, time.Duration) {},
		Retry: &shmbus.RetryPolicy{MaxAttempts: 2}})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := uint64(1); i <= 4; i++ {
		if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st != (shmbus.HandlerStats{Handled: 4, Acked: 2, Attempts: 6, Retries: 2, DeadLettered: 2}) {
		t.Fatalf("stats %+v (calls %v)", st, calls)
	}
	_, d := readDeadLetter(t, ctx, dlq)
	text, _ := d.Message_()
	if !strings.HasPrefix(text, "timeout: the attempt took ") || !strings.HasSuffix(text, " ms, the limit is 30.000 ms") ||
		d.Code() != shmbus.TimeoutCode || d.Attempts() != 2 || d.Reason() != envelopecapnp.DeadLetter_Reason_exhausted {
		t.Fatalf("dead letter of 2: %q", deadLetterText(d))
	}
	if _, d := readDeadLetter(t, ctx, dlq); deadLetterText(d) != "bad (1 attempts, rejected, payload 3)" || d.Code() != 422 {
		t.Fatalf("dead letter of 3: %q code %d", deadLetterText(d), d.Code())
	}
}

// The handler gets an enveloped message's envelope and payload, and Trace puts a
// child span of the envelope's trace in its ctx; a plain frame has neither; garbage
// under the envelope's schema id is EnvelopeErr (ErrMalformed) with Payload = Data.
func TestRunnerHandsTheEnvelopeAndItsTraceToTheHandler(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	tc, _ := shmbus.ParseTraceparent(testTraceparent)
	done := make(chan struct{})
	var got []string
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		span, ok := shmbus.TraceFromContext(ctx)
		if m.Envelope != nil {
			if !ok || span.TraceIDHigh != tc.TraceIDHigh || span.TraceIDLow != tc.TraceIDLow || span.ParentID == tc.ParentID ||
				m.Envelope.Trace != tc || m.Envelope.CorrelationID != 42 || m.SchemaID != shmbus.EnvelopeSchemaID {
				t.Errorf("span %+v %v, envelope %+v", span, ok, m.Envelope)
			}
		} else if !ok || span.TraceIDHigh == tc.TraceIDHigh {
			t.Errorf("a plain frame's span is not a fresh trace: %+v %v", span, ok)
		}
		if (m.SchemaID == shmbus.EnvelopeSchemaID && m.Envelope == nil) != errors.Is(m.EnvelopeErr, shmbus.ErrMalformed) {
			t.Errorf("message %d: envelope %v, error %v", m.MessageID, m.Envelope, m.EnvelopeErr)
		}
		got = append(got, string(m.Payload))
		if len(got) == 3 {
			close(done)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{Middleware: []shmbus.Middleware{shmbus.Trace("t", nil)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.OfferEnveloped(ctx, &shmbus.Envelope{CorrelationID: 42, Trace: tc}, []byte("inside"), 1); err != nil {
		t.Fatal(err)
	}
	if err := pub.Offer(ctx, []byte("plain"), 2, 0); err != nil {
		t.Fatal(err)
	}
	// Garbage flagged as an envelope: EnvelopeErr, and the bytes as they are.
	if err := pub.Offer(ctx, []byte("garbage!"), 3, shmbus.EnvelopeSchemaID); err != nil {
		t.Fatal(err)
	}
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[inside plain garbage!]" {
		t.Fatalf("payloads %q", got)
	}
}

// embeddedTopic starts a daemon in this process (durable subscriber names need one)
// and creates topic.
func embeddedTopic(t *testing.T, topic string, cfg shmbus.TopicConfig) (*shmbus.Bus, string) {
	t.Helper()
	dir := t.TempDir()
	bus, err := shmbus.OpenEmbedded(filepath.Join(dir, "daemon"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	if err := bus.CreateTopic(topic, cfg); err != nil {
		t.Fatal(err)
	}
	return bus, dir
}

// Run's context ends while message 3 waits for its retry: Run returns at once (the
// wait is 1 h), message 3 is not released, and a restarted runner with the same
// durable subscriber name handles 3, 4, 5: nothing skipped, nothing repeated.
func TestRunnerCancelledMidRetryLeavesTheMessageForARestart(t *testing.T) {
	ctx := ctxT(t)
	const topic = "go.run.cancel"
	bus, _ := embeddedTopic(t, topic, shmbus.TopicConfig{Capacity: 1 << 16})
	opts := &shmbus.RunnerOptions{Subscriber: shmbus.SubscriberOptions{Name: "svc"},
		Retry: &shmbus.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Hour, MaxBackoff: time.Hour, Multiplier: 1}}
	var handled []string
	retrying := make(chan struct{})
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		handled = append(handled, fmt.Sprintf("%d/%d", id, m.Attempt))
		if id == 3 {
			close(retrying)
			return shmbus.Retry("not now", 0)
		}
		return shmbus.Ack()
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := uint64(1); i <= 5; i++ {
		if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := runUntil(t, r, retrying); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("Run took %v to return", took)
	}
	if st := r.Stats(); st.Handled != 2 || st.Retries != 1 {
		t.Fatalf("first runner: stats %+v", st)
	}
	if err := r.Run(ctx); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("a second Run: %v", err)
	}
	done := make(chan struct{})
	r2, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		handled = append(handled, fmt.Sprintf("%d/%d", id, m.Attempt))
		if id == 5 {
			close(done)
		}
		return shmbus.Ack()
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := runUntil(t, r2, done); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(handled, " "); got != "1/1 2/1 3/1 3/1 4/1 5/1" {
		t.Fatalf("handled %s", got)
	}
	if st := r2.Stats(); st.Handled != 3 || st.Acked != 3 {
		t.Fatalf("second runner: stats %+v", st)
	}
}

// A runner with a durable subscriber name and a persisted dedup window, restarted:
// the first handles ids 1..50 (the effect, the sum of ids, is the window's
// application state, committed with each message); a consumer dies between committing
// 51 and releasing it; the producer retries 41..60 (same producer and message ids, new
// sequences); the restarted runner (the window loaded from its file) drops 51 by
// position and 41..51 by id without calling the handler and applies 52..60: every id
// applied once, the state 1830.
func TestRunnerDedupAcrossARestart(t *testing.T) {
	ctx := ctxT(t)
	const topic = "go.run.dedup"
	bus, dir := embeddedTopic(t, topic, shmbus.TopicConfig{Capacity: 1 << 16})
	statePath := filepath.Join(dir, "svc.dedup")
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{ProducerID: 77})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	applied := map[uint64]int{}
	var ds shmbus.DedupStats // the window's, at the end of the last run
	run := func(last uint64, publish func()) *shmbus.Runner {
		w, err := shmbus.OpenDedup(shmbus.DedupOptions{Path: statePath, Capacity: 64})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		done := make(chan struct{})
		r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
			id := binary.LittleEndian.Uint64(m.Data)
			applied[id]++
			sum := binary.LittleEndian.Uint64(append(w.AppState(), make([]byte, 8)...)) + id
			m.SetAppState(idPayload(sum))
			if id == last {
				close(done)
			}
			return shmbus.Ack()
		}, &shmbus.RunnerOptions{Subscriber: shmbus.SubscriberOptions{Name: "svc"}, Dedup: w})
		if err != nil {
			t.Fatal(err)
		}
		publish()
		if err := runUntil(t, r, done); err != nil {
			t.Fatal(err)
		}
		ds = w.Stats()
		if got := binary.LittleEndian.Uint64(append(w.AppState(), make([]byte, 8)...)); got != last*(last+1)/2 {
			t.Fatalf("state %d after %d", got, last)
		}
		return r
	}
	publish := func(from, to uint64) func() {
		return func() {
			for id := from; id <= to; id++ {
				if err := pub.Offer(ctx, idPayload(id), id, 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	r1 := run(50, publish(1, 50))
	// A runner that dies between its commit and its release, by hand: message 51 is
	// applied and committed with the window, the subscriber closed without releasing.
	publish(51, 51)()
	func() {
		w, err := shmbus.OpenDedup(shmbus.DedupOptions{Path: statePath, Capacity: 64})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		sub, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Name: "svc"})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		v, err := sub.Poll(ctx)
		if err != nil || binary.LittleEndian.Uint64(v.Data) != 51 {
			t.Fatalf("poll: %v", err)
		}
		applied[51]++
		if err := w.Record(&v); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(idPayload(51 * 52 / 2)); err != nil {
			t.Fatal(err)
		}
	}()
	r2 := run(60, publish(41, 60))
	for id := uint64(1); id <= 60; id++ {
		if applied[id] != 1 {
			t.Fatalf("id %d applied %d times", id, applied[id])
		}
	}
	// The second runner: 51 again by position (the durable name), 41..51 again by id
	// (the producer's retry), 52..60 applied.
	if s1, s2 := r1.Stats(), r2.Stats(); s1.Acked != 50 || s1.Duplicates != 0 || s2.Acked != 9 || s2.Duplicates != 12 ||
		ds.ByPosition != 1 || ds.ByID != 11 {
		t.Fatalf("stats %+v, %+v, window %+v", s1, s2, ds)
	}
}

// AllPartitions: one goroutine per partition, each partition's messages in order,
// every message once; per-partition counters.
func TestRunnerHandlesEveryPartitionInOrder(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Partitions: 4, Capacity: 1 << 16})
	const per = 2000
	var mu sync.Mutex
	next := map[uint32]uint64{}
	total := 0
	done := make(chan struct{})
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		mu.Lock()
		defer mu.Unlock()
		if id != next[m.Partition]+1 {
			t.Errorf("partition %d: %d after %d", m.Partition, id, next[m.Partition])
		}
		next[m.Partition] = id
		if total++; total == 4*per {
			close(done)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{AllPartitions: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Partitions()); got != "[0 1 2 3]" {
		t.Fatalf("partitions %s", got)
	}
	var wg sync.WaitGroup
	for p := uint32(0); p < 4; p++ {
		pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{Partition: p, BlockTimeout: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(1); i <= per; i++ {
				if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for p := uint32(0); p < 4; p++ {
		if s, ok := r.PartitionStats(p); !ok || s.Acked != per {
			t.Fatalf("partition %d: %+v", p, s)
		}
	}
}

// Untethered: the handler gets a copy of the message, so a producer that laps the
// ring while the handler runs does not change what it reads; the lap is counted and
// the runner continues at the producer's tail.
func TestRunnerUntetheredHandsACopyAndCountsTheLap(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	inHandler, lapped, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var once sync.Once
	const last = 1 << 40
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		id := binary.LittleEndian.Uint64(m.Data)
		switch id {
		case 1:
			close(inHandler)
			<-lapped // the producer has written the ring over 4 times meanwhile
			if got := binary.LittleEndian.Uint64(m.Data); got != 1 {
				t.Errorf("message 1 read %d after the lap: the handler got ring memory, not a copy", got)
			}
		case last:
			once.Do(func() { close(done) })
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{Subscriber: shmbus.SubscriberOptions{Untethered: true}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Offer(ctx, idPayload(1), 1, 0); err != nil {
		t.Fatal(err)
	}
	go func() {
		select {
		case <-inHandler:
		case <-ctx.Done():
			return
		}
		for i := uint64(2); i < 5000; i++ { // 56-byte frames: 4 × the 64 KiB ring
			if err := pub.Offer(ctx, idPayload(i), i, 0); err != nil {
				t.Error(err)
			}
		}
		close(lapped)
		// The runner continues at the tail it finds after the lap: publish until it
		// has handled one of these (untethered: the producer never waits).
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := pub.Offer(ctx, idPayload(last), last, 0); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Lapped == 0 || st.Acked < 2 {
		t.Fatalf("stats %+v: no lap counted", st)
	}
}

// Close from another goroutine while Run waits for a 1 h retry: Run returns nil and
// a second Close is a no-op.
func TestRunnerCloseStopsRun(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	retrying := make(chan struct{})
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		close(retrying)
		return shmbus.RetryAfter("later", 0, time.Hour)
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Offer(ctx, idPayload(1), 1, 0); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- r.Run(context.Background()) }()
	select {
	case <-retrying:
	case <-ctx.Done():
		t.Fatal("watchdog: the handler was not called")
	}
	r.Close() // returns once Run's partitions have stopped
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("watchdog: Run did not return after Close")
	}
	r.Close()
	if st := r.Stats(); st.Attempts != 1 || st.Handled != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// jsonLine is C++'s layers::json_lines format, key for key (the optional keys in
// their place).
var jsonLine = regexp.MustCompile(`^\{"event":"attempt","handler":"((?:[^"\\]|\\.)*)","message_id":"([0-9a-f]{16})",` +
	`"sequence":(\d+),"producer_id":(\d+),"trace_id":"([0-9a-f]{32})","span_id":"([0-9a-f]{16})"` +
	`(?:,"parent_span_id":"([0-9a-f]{16})")?(?:,"correlation_id":"([0-9a-f]{16})")?(?:,"causation_id":"([0-9a-f]{16})")?` +
	`,"outcome":"(ack|retry|reject)","code":(\d+),"duration_ns":(\d+)\}$`)

// Trace with JSONLines writes C++'s structured log line per attempt: an enveloped
// message continues the envelope's trace (its span is the one the handler got in
// ctx) with its correlation and causation ids; a plain one starts a fresh trace; the
// handler name is escaped as C++ escapes it.
func TestTraceJSONLinesIsTheCxxFormat(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	t.Cleanup(func() { bus.RemoveTopic(topic + ".dlq") }) // the runner's, for the rejected message
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{ProducerID: 26135})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	tc, _ := shmbus.ParseTraceparent(testTraceparent)
	var log bytes.Buffer
	var spans []shmbus.TraceContext
	done := make(chan struct{})
	r, err := shmbus.NewRunner(bus, topic, func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		span, _ := shmbus.TraceFromContext(ctx)
		spans = append(spans, span)
		if m.MessageID == 0x2222 {
			close(done)
			return shmbus.Reject("no", 409)
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{Middleware: []shmbus.Middleware{shmbus.Trace("bi\"l\x01l\\ing", shmbus.JSONLines(&log))}})
	if err != nil {
		t.Fatal(err)
	}
	env := &shmbus.Envelope{CorrelationID: 0xabcdef0123456789, CausationID: 0x77, Trace: tc}
	if err := pub.OfferEnveloped(ctx, env, []byte("x"), 0x1111); err != nil {
		t.Fatal(err)
	}
	if err := pub.Offer(ctx, []byte("y"), 0x2222, 0); err != nil {
		t.Fatal(err)
	}
	if err := runUntil(t, r, done); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(log.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("log %q", log.String())
	}
	hex := func(v uint64) string { return fmt.Sprintf("%016x", v) }
	for i, l := range lines {
		g := jsonLine.FindStringSubmatch(l)
		if g == nil {
			t.Fatalf("line %q is not C++'s format", l)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil || v["handler"] != "bi\"ll\\ing" {
			t.Fatalf("line %q: %v, handler %q", l, err, v["handler"])
		}
		sp := spans[i]
		if g[3] != strconv.Itoa(i+1) || g[4] != "26135" || g[5] != hex(sp.TraceIDHigh)+hex(sp.TraceIDLow) || g[6] != hex(sp.ParentID) {
			t.Fatalf("line %q: span %+v", l, sp)
		}
		switch i {
		case 0:
			if g[2] != "0000000000001111" || g[5] != hex(tc.TraceIDHigh)+hex(tc.TraceIDLow) || g[7] != hex(tc.ParentID) ||
				g[8] != "abcdef0123456789" || g[9] != "0000000000000077" || g[10] != "ack" || g[11] != "0" {
				t.Fatalf("enveloped: %q", l)
			}
		case 1:
			if g[2] != "0000000000002222" || g[5] == hex(tc.TraceIDHigh)+hex(tc.TraceIDLow) || g[7] != "" || g[8] != "" ||
				g[9] != "" || g[10] != "reject" || g[11] != "409" {
				t.Fatalf("plain: %q", l)
			}
		}
	}
	t.Logf("%s", log.String())
}
