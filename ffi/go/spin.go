package shmbus

// #include <stdint.h>
import "C"

import (
	"runtime"
	"time"
)

// spinner keeps a goroutine that calls into C in a loop (a consumer polling, a
// producer publishing, waits that spin in C under WaitBusySpin or WaitSpinYield)
// from being handed off by the Go runtime again and again.
//
// A goroutine inside a cgo call is "in a syscall" for the scheduler. When the
// same goroutine also never reschedules (a poll or publish loop) for 10 ms,
// sysmon stops giving it the benefit of the doubt: every time it finds it in a C
// call it takes its P away, and it keeps waking every 20 µs to look. With the
// process pinned to one core (GOMAXPROCS 1), each wake-up preempts the loop's
// thread: a paced Go consumer measured ~10 000 sysmon wake-ups and ~7 000
// preemptions a second (sysmon alone took ~10 % of the core), and a p99 latency
// of 7 µs against C++'s 0.7 µs. Two rules avoid it:
//   - one spinning C wait lasts at most waitSlice, below sysmon's 20 µs tick, so
//     that sysmon never finds the same call twice;
//   - the goroutine yields (runtime.Gosched) once every yieldEvery, well inside
//     sysmon's 10 ms, so that sysmon sees it reschedule and never takes its P.
//     Time-based, not per call: on a goroutine locked to its thread
//     (runtime.LockOSThread) a yield costs two thread hand-offs, which is what the
//     runtime's own forced preemption of it every 10 ms costs anyway.
//
// Then sysmon backs off to sleeping 10 ms (docs/bindings-go.md, "Waiting").
type spinner struct {
	slice C.int64_t // longest one C wait spins, ns; 0: not a spinning strategy
	calls uint32
	last  time.Duration // since spinEpoch, at the last yield
}

const (
	waitSlice  = 10_000 // ns; see spinner
	yieldEvery = 4 * time.Millisecond
)

var spinEpoch = time.Now()

func newSpinner(w WaitStrategy) spinner {
	if w == WaitBusySpin || w == WaitSpinYield {
		return spinner{slice: waitSlice}
	}
	return spinner{}
}

// enter is called once per Go call that polls, publishes or may wait (under the
// owner's lock), whatever the strategy: every 16th call reads the clock (a vDSO
// read, ~20 ns) and yields when yieldEvery has passed.
func (p *spinner) enter() {
	p.calls++
	if p.calls%16 != 0 {
		return
	}
	if now := time.Since(spinEpoch); now-p.last >= yieldEvery {
		p.last = now
		runtime.Gosched()
	}
}

// wait returns the timeout (ns; 0: none, <0: forever) for the next C call,
// capped at the slice; each spinning wait counts as a call (enter).
func (p *spinner) wait(timeout C.int64_t) C.int64_t {
	if p.slice == 0 || timeout == 0 {
		return timeout
	}
	p.enter()
	if timeout < 0 || timeout > p.slice {
		return p.slice
	}
	return timeout
}
