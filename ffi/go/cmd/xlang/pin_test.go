package main

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPinThreadPinsTheCallingThreadAlone: after pinThread(c) the calling thread may
// run on c only, and every other thread of the process keeps the affinity it had
// (the runtime's sysmon among them); bad CPUs are refused.
func TestPinThreadPinsTheCallingThreadAlone(t *testing.T) {
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for c := 0; c < 1024; c++ {
		if before.IsSet(c) {
			cpu = c // the last allowed CPU
		}
	}
	done := make(chan struct{})
	var pinnedTid int
	var got unix.CPUSet
	var pinErr, getErr error
	go func() {
		defer close(done)
		// This goroutine ends locked: the runtime ends its thread with it, so the
		// pinned thread does not go back to the pool.
		if pinErr = pinThread(cpu); pinErr != nil {
			return
		}
		pinnedTid = unix.Gettid()
		getErr = unix.SchedGetaffinity(0, &got)
		// The other threads, read while this one is still pinned.
		dirs, _ := os.ReadDir("/proc/self/task")
		for _, d := range dirs {
			tid, _ := strconv.Atoi(d.Name())
			if tid == pinnedTid {
				continue
			}
			var s unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &s); err != nil {
				continue // ended meanwhile
			}
			if s != before {
				t.Errorf("thread %d: affinity changed to %d CPUs (was %d)", tid, s.Count(), before.Count())
			}
		}
	}()
	<-done
	if pinErr != nil {
		t.Fatal(pinErr)
	}
	if getErr != nil {
		t.Fatal(getErr)
	}
	if got.Count() != 1 || !got.IsSet(cpu) {
		t.Fatalf("pinned thread %d: %d CPUs allowed, CPU %d set: %v", pinnedTid, got.Count(), cpu, got.IsSet(cpu))
	}
	bads := [][]int{nil, {-1}, {1 << 20}}
	if !before.IsSet(1000) {
		bads = append(bads, []int{1000}) // in range, not a CPU this process may use: EINVAL
	}
	for _, bad := range bads {
		err := pinThread(bad...)
		if err == nil || !strings.Contains(err.Error(), "pinThread") {
			t.Errorf("pinThread(%v) = %v, want an error", bad, err)
		}
	}
}
