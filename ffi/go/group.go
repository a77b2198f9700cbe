package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// GroupOptions configures Bus.GroupSubscriber. The zero value is the defaults.
type GroupOptions struct {
	// Untethered members do not hold producers back on the partitions they hold
	// (see SubscriberOptions.Untethered). The default holds them back.
	Untethered  bool
	Wait        WaitStrategy
	Spin        time.Duration // hybrid: spin this long before sleeping (0: 20 µs)
	OpenTimeout time.Duration // wait for a topic being created (0: 5 s)
	// SyncInterval is the longest between two syncs with the daemon (0: 10 ms):
	// how soon a member sees a join, a leave or a death.
	SyncInterval time.Duration
	// IdleSync: while an assigned partition is still held by its previous owner, a
	// sync per empty poll, at most this often (0: 1 ms).
	IdleSync time.Duration
}

// GroupView is a message polled by a group member, and the partition it came from.
// Like a View, its Data is ring memory, valid only until it is released (or the
// member is closed).
type GroupView struct {
	View
	Partition uint32
}

// GroupSubscriber is one member of a consumer group: the members of a group split
// the topic's partitions (the daemon assigns them, an even and sticky share per
// member), and a join, a leave or a death (the daemon sees it at once) moves
// partitions between them. On each partition it holds a member reads as the
// durable subscriber "group:<group>": the group's committed position there is the
// last Release, and it survives member deaths and daemon restarts. Delivery is at
// least once per group and in order per partition: what a member polled and had not
// released when it died is read again by the partition's next holder.
//
// The member talks to the daemon inside Poll/TryPoll (a sync every SyncInterval),
// so poll it regularly. Use it from one goroutine at a time; Close may come from any
// goroutine. Needs a daemon bus (Connect or OpenEmbedded).
type GroupSubscriber struct {
	mu      sync.Mutex
	closing atomic.Bool
	hmu     sync.Mutex // guards h for Close's interrupt (h is freed under mu and hmu)
	h       *C.shmbus_group_subscriber_t
	cv      *C.shmbus_group_view_t // C memory: poll output and release scratch
	rel     *C.shmbus_group_view_t
	parts   *C.uint32_t // C memory for Partitions
	nparts  *C.size_t
	maxp    int
	topic   string
	group   string
	spin    spinner // spinning waits in slices (spin.go)
}

// GroupSubscriber joins group on topic. ctx bounds the open (its end interrupts
// nothing inside the C call, which is bounded by OpenTimeout); it is not kept.
func (b *Bus) GroupSubscriber(ctx context.Context, topic, group string, opts *GroupOptions) (*GroupSubscriber, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o GroupOptions
	if opts != nil {
		o = *opts
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return nil, err
	}
	var co C.shmbus_group_options_t
	C.shmbus_group_options_init(&co)
	if o.Untethered {
		co.tethered = 0
	}
	co.wait = o.Wait.c()
	if o.Spin > 0 {
		co.spin_ns = durationNs(o.Spin)
	}
	if o.OpenTimeout > 0 {
		co.open_timeout_ms = C.int32_t(o.OpenTimeout.Milliseconds())
	}
	if o.SyncInterval > 0 {
		co.sync_interval_ns = durationNs(o.SyncInterval)
	}
	if o.IdleSync > 0 {
		co.idle_sync_ns = durationNs(o.IdleSync)
	}
	ct := C.CString(topic)
	defer C.free(unsafe.Pointer(ct))
	cg := C.CString(group)
	defer C.free(unsafe.Pointer(cg))
	var h *C.shmbus_group_subscriber_t
	if err := call(func() C.int { return C.shmbus_group_subscriber_open(bh, ct, cg, &co, &h) }); err != nil {
		return nil, err
	}
	// Views and the partition list live in C memory: C never writes Go memory.
	const maxp = 1024
	views := (*[2]C.shmbus_group_view_t)(C.calloc(2, C.size_t(unsafe.Sizeof(C.shmbus_group_view_t{}))))
	return &GroupSubscriber{
		h:      h,
		cv:     &views[0],
		rel:    &views[1],
		parts:  (*C.uint32_t)(C.calloc(maxp, 4)),
		nparts: (*C.size_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.size_t(0))))),
		maxp:   maxp,
		topic:  topic,
		group:  group,
		spin:   newSpinner(o.Wait),
	}, nil
}

// Topic is the topic the member reads.
func (g *GroupSubscriber) Topic() string { return g.topic }

// Group is the group's name.
func (g *GroupSubscriber) Group() string { return g.group }

// Close parks every partition the member holds (committed up to its last Release)
// and leaves the group; the others take its partitions on their next sync. Safe
// from any goroutine; a blocked Poll returns ErrClosed. Closing twice is a no-op.
func (g *GroupSubscriber) Close() error {
	g.closing.Store(true)
	g.hmu.Lock()
	if g.h != nil {
		C.shmbus_group_subscriber_interrupt(g.h) // a Poll waiting returns now
	}
	g.hmu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.h == nil {
		return nil
	}
	g.hmu.Lock()
	C.shmbus_group_subscriber_close(g.h)
	g.h = nil
	g.hmu.Unlock()
	C.free(unsafe.Pointer(g.cv))
	C.free(unsafe.Pointer(g.parts))
	C.free(unsafe.Pointer(g.nparts))
	g.cv, g.rel, g.parts, g.nparts = nil, nil, nil, nil
	return nil
}

var errGroupClosed = &Error{Code: CodeClosed, Msg: "group subscriber is closed"}

func (g *GroupSubscriber) check() error {
	if g.h == nil || g.closing.Load() {
		return errGroupClosed
	}
	return nil
}

// pollC runs a poll on a locked OS thread: a failing sync with the daemon inside it
// (access refused, the topic removed) comes back with the C library's detail.
func pollC(f func() C.int) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rc := int(f())
	switch rc {
	case 0, CodeEmpty, CodeTimedOut, CodeInterrupted:
		return rc, nil
	}
	return rc, &Error{Code: rc, Msg: C.GoString(C.shmbus_last_error()), Errno: syscall.Errno(C.shmbus_last_errno())}
}

// TryPoll returns the next message of any held partition, or ErrEmpty at once
// (after a sync with the daemon when one is due).
func (g *GroupSubscriber) TryPoll() (GroupView, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var v GroupView
	if err := g.check(); err != nil {
		return v, err
	}
	rc, err := pollC(func() C.int { return C.shmbus_group_subscriber_poll(g.h, g.cv) })
	if err != nil {
		return v, err
	}
	if rc != 0 {
		return v, codeError(rc)
	}
	toView(&g.cv.view, &v.View)
	v.Partition = uint32(g.cv.partition)
	return v, nil
}

// Poll returns the next message of any held partition, waiting until one arrives,
// ctx ends (ctx.Err()) or the member is closed (ErrClosed). The view is NOT
// released: Release it (or ReleaseAll) when done; that commits it for the group.
func (g *GroupSubscriber) Poll(ctx context.Context) (GroupView, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var v GroupView
	g.spin.enter()
	timeout := C.int64_t(0)
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		if err := g.check(); err != nil {
			return v, err
		}
		t := g.spin.wait(timeout)
		rc, err := pollC(func() C.int { return C.shmbus_group_subscriber_poll_wait(g.h, g.cv, t) })
		if err != nil {
			return v, err
		}
		if rc == 0 {
			toView(&g.cv.view, &v.View)
			v.Partition = uint32(g.cv.partition)
			return v, nil
		}
		if stop == nil {
			stop = interruptOnDone(ctx, func() { C.shmbus_group_subscriber_interrupt(g.h) })
		}
		if timeout, err = waitFor(ctx); err != nil {
			return v, err
		}
	}
}

// Release frees (commits) v and every view polled before it on its partition.
func (g *GroupSubscriber) Release(v *GroupView) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(); err != nil {
		return err
	}
	if v == nil || v.ptr == nil {
		return &Error{Code: CodeInvalidArgument, Msg: "Release: not a polled view"}
	}
	r := &g.rel.view
	r.data = (*C.uint8_t)(v.ptr)
	r.size = C.uint32_t(len(v.Data))
	r.position = C.uint64_t(v.Position)
	r.next_position = C.uint64_t(v.NextPosition)
	r.sequence = C.uint64_t(v.Sequence)
	g.rel.partition = C.uint32_t(v.Partition)
	return codeError(int(C.shmbus_group_subscriber_release(g.h, g.rel)))
}

// ReleaseAll frees (commits) every view polled so far, on every partition.
func (g *GroupSubscriber) ReleaseAll() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(); err != nil {
		return err
	}
	return codeError(int(C.shmbus_group_subscriber_release_all(g.h)))
}

// Sync talks to the daemon now (Poll does so every SyncInterval); it reports
// whether the partitions held changed.
func (g *GroupSubscriber) Sync() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(); err != nil {
		return false, err
	}
	var changed C.int
	if err := call(func() C.int { return C.shmbus_group_subscriber_sync(g.h, &changed) }); err != nil {
		return false, err
	}
	return changed != 0, nil
}

// Partitions returns the partitions the member holds (reads) now, ascending.
func (g *GroupSubscriber) Partitions() ([]uint32, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(); err != nil {
		return nil, err
	}
	if err := codeError(int(C.shmbus_group_subscriber_partitions(g.h, g.parts, C.size_t(g.maxp), g.nparts))); err != nil {
		return nil, err
	}
	n := int(*g.nparts)
	if n > g.maxp {
		n = g.maxp
	}
	out := make([]uint32, n)
	for i, p := range unsafe.Slice(g.parts, n) {
		out[i] = uint32(p)
	}
	return out, nil
}

// GroupStats are a member's counters and its view of the group.
type GroupStats struct {
	Received    uint64
	Syncs       uint64
	Rebalances  uint64 // assignments that changed what this member should hold
	Taken       uint64 // partitions taken
	GivenUp     uint64 // partitions parked for another member
	TakeRetries uint64 // takes refused while the previous holder had not let go
	Rejoins     uint64 // joined again after the daemon forgot the member (a restart)
	MemberID    uint64
	Generation  uint32 // of the last assignment this member saw
	Assigned    uint32 // partitions the daemon assigned to it (some may not be held yet)
}

// Stats returns the member's counters.
func (g *GroupSubscriber) Stats() (GroupStats, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(); err != nil {
		return GroupStats{}, err
	}
	var st C.shmbus_group_stats_t
	if err := codeError(int(C.shmbus_group_subscriber_stats(g.h, &st))); err != nil {
		return GroupStats{}, err
	}
	return GroupStats{Received: uint64(st.received), Syncs: uint64(st.syncs), Rebalances: uint64(st.rebalances),
		Taken: uint64(st.taken), GivenUp: uint64(st.given_up), TakeRetries: uint64(st.take_retries),
		Rejoins: uint64(st.rejoins), MemberID: uint64(st.member_id), Generation: uint32(st.generation),
		Assigned: uint32(st.assigned)}, nil
}
