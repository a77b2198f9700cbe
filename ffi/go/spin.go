package shmbus

// #include <stdint.h>
import "C"

import "runtime"

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
// of 7 µs against C++'s 0.7 µs. Two rules avoid it: one spinning C wait lasts at
// most waitSlice (below sysmon's 20 µs tick) before returning to Go, and the
// goroutine yields (runtime.Gosched: ~0.1 µs with nothing else to run) before
// each spinning wait and on every 64th call, so that sysmon sees it rescheduled
// and backs off to sleeping 10 ms (docs/bindings-go.md, "Waiting").
type spinner struct {
	slice C.int64_t // longest one C wait spins, ns; 0: not a spinning strategy
	calls uint32
}

// waitSlice: see spinner.
const waitSlice = 10_000

func newSpinner(w WaitStrategy) spinner {
	if w == WaitBusySpin || w == WaitSpinYield {
		return spinner{slice: waitSlice}
	}
	return spinner{}
}

// enter is called once per Go call that polls, publishes or may wait (under the
// owner's lock), whatever the strategy.
func (p *spinner) enter() {
	p.calls++
	if p.calls%64 == 0 {
		runtime.Gosched()
	}
}

// wait returns the timeout (ns; 0: none, <0: forever) for the next C call,
// capped at the slice; before a waiting call it yields.
func (p *spinner) wait(timeout C.int64_t) C.int64_t {
	if p.slice == 0 || timeout == 0 {
		return timeout
	}
	runtime.Gosched()
	if timeout < 0 || timeout > p.slice {
		return p.slice
	}
	return timeout
}
