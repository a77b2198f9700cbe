package main

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pinThread (bench-consume --pin-poller) locks the calling goroutine to its OS
// thread (runtime.LockOSThread) and restricts that thread alone to the given CPUs
// (sched_setaffinity), for a polling loop that should have a core to itself. The Go runtime's other threads
// (sysmon, the garbage collector's workers, threads it starts later: the runtime
// starts them from a thread of its own, not from a locked one) keep the process's
// affinity, so start the process on other cores than the ones given here, e.g.
//
//	taskset -c 0 ./consumer   // runtime threads on CPU 0
//	pinThread(3)              // in the polling goroutine: its thread on CPU 3
//
// A process pinned whole to one core instead (taskset -c 3) shares that core with
// sysmon, which wakes every 10 ms while a goroutine runs and takes the core from
// the polling thread each time (10-30 µs a switch measured on a VM). On the
// bench's two-core machine this measured no better than pinning the process whole
// (docs/benchmarks.md, "Consumer p99 with the platform's pauses set apart"), so it
// stays a bench option, not a binding API. A goroutine that returns while locked
// takes its thread with it (the runtime ends the thread).
func pinThread(cpus ...int) error {
	if len(cpus) == 0 {
		return fmt.Errorf("pinThread: no CPU given")
	}
	var set unix.CPUSet
	for _, c := range cpus {
		if c < 0 || c >= len(set)*int(unsafe.Sizeof(set[0]))*8 {
			return fmt.Errorf("pinThread: no CPU %d", c)
		}
		set.Set(c)
	}
	runtime.LockOSThread()
	if err := unix.SchedSetaffinity(0, &set); err != nil { // 0: the calling thread
		runtime.UnlockOSThread()
		return fmt.Errorf("pinThread(%v): %w", cpus, err)
	}
	return nil
}
