// Package shmbus is the Go binding of shmbus, a same-host publish/subscribe bus:
// Cap'n Proto messages through shared-memory rings, without copying them.
//
// It wraps the C ABI (ffi/include/shmbus.h, library libshmbus_c) with cgo. Build
// with pkg-config able to find shmbus_c, e.g. from a meson build tree:
//
//	export PKG_CONFIG_PATH=/path/to/shmbus/build/meson-uninstalled
//	export CGO_LDFLAGS="-Wl,-rpath,/path/to/shmbus/build/ffi"   # or LD_LIBRARY_PATH
//
// # Zero copy, and what it costs you
//
// Publisher.Claim and Publisher.ClaimMessage hand out ring memory to build in;
// Subscriber.Poll and PollBatch hand out Views whose Data is ring memory, read in
// place (View.Message, Reader). THE BYTES OF A VIEW ARE VALID ONLY UNTIL THE VIEW
// IS RELEASED (Release of it or of a later view, ReleaseAll) OR ITS SUBSCRIBER IS
// CLOSED. After that the producer may overwrite them while you read: copy what
// you keep (bytes.Clone, or the Cap'n Proto values you need) before releasing.
// A view's Data is mapped read-only: writing to it crashes the process.
// Likewise a claim's bytes are yours only until Commit/Abort/Close.
//
// # Concurrency
//
// A Bus may be used from any goroutine. A Publisher or a Subscriber is used by
// one goroutine at a time; Close may be called from any goroutine at any time
// and makes a blocked Claim/Poll return ErrClosed (the clean way to shut down is
// to cancel the context of the blocked call, then Close).
//
// # Errors
//
// Every error from the C ABI is an *Error{Code, Msg}; test with errors.Is against
// the sentinels (ErrBackPressured, ErrTimedOut, ErrNotFound, ErrClosed, ...).
// Blocking calls return ctx.Err() when their context ends first.
package shmbus

/*
#cgo pkg-config: shmbus_c
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"context"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// ABIVersion is the SHMBUS_ABI_VERSION this package was written against.
const ABIVersion = 1

// LibraryABIVersion is the ABI version of the libshmbus_c this process loaded.
func LibraryABIVersion() uint32 { return uint32(C.shmbus_abi_version()) }

func strerror(rc int) string { return C.GoString(C.shmbus_strerror(C.int(rc))) }

// call runs a set-up call on a locked OS thread, so that the thread-local detail
// message read after a failure belongs to this call.
func call(f func() C.int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rc := int(f())
	if rc == 0 {
		return nil
	}
	return &Error{Code: rc, Msg: C.GoString(C.shmbus_last_error()), Errno: syscall.Errno(C.shmbus_last_errno())}
}

// Policy is what a publisher does when the ring is full.
type Policy uint32

const (
	PolicyBlock Policy = 0 // wait for space (bounded by BlockTimeout and the context)
	PolicyFail  Policy = 1 // return ErrBackPressured at once
	PolicySpill Policy = 2 // durable; a slow replaying subscriber reads the log (needs the daemon)
)

// The Policy values are the C ABI's SHMBUS_POLICY_* (written out above so that the
// documentation shows them): a difference fails to compile (a constant index out of
// range).
var _ = [1]struct{}{}[PolicyBlock-C.SHMBUS_POLICY_BLOCK]
var _ = [1]struct{}{}[PolicyFail-C.SHMBUS_POLICY_FAIL]
var _ = [1]struct{}{}[PolicySpill-C.SHMBUS_POLICY_SPILL]

// WaitStrategy is how a blocked call waits. The zero value is the library default (hybrid).
type WaitStrategy int

const (
	WaitDefault   WaitStrategy = iota // hybrid
	WaitBusySpin                      // lowest latency, burns a core
	WaitSpinYield                     // spins, then sched_yield
	WaitFutex                         // sleeps at once
	WaitHybrid                        // spins a little, then sleeps on the futex
)

func (w WaitStrategy) c() C.uint32_t {
	switch w {
	case WaitBusySpin:
		return C.SHMBUS_WAIT_BUSY_SPIN
	case WaitSpinYield:
		return C.SHMBUS_WAIT_SPIN_YIELD
	case WaitFutex:
		return C.SHMBUS_WAIT_FUTEX
	default:
		return C.SHMBUS_WAIT_HYBRID
	}
}

// Bus is a process's connection to the bus. Safe for concurrent use.
type Bus struct {
	mu sync.RWMutex
	h  *C.shmbus_bus_t
}

// OpenDirect opens a bus without a daemon: this process creates and maps the
// segments itself under /dev/shm, named with prefix ("" means "shmbus").
func OpenDirect(prefix string) (*Bus, error) {
	var cp *C.char
	if prefix != "" {
		cp = C.CString(prefix)
		defer C.free(unsafe.Pointer(cp))
	}
	var h *C.shmbus_bus_t
	if err := call(func() C.int { return C.shmbus_bus_open_direct(cp, &h) }); err != nil {
		return nil, err
	}
	return &Bus{h: h}, nil
}

// ConnectOptions selects the daemon to connect to.
type ConnectOptions struct {
	SocketPath string // "" means the per-user default
}

// Connect connects to the shmbusd listening on opts.SocketPath (the per-user
// default, or $SHMBUS_SOCKET, when empty). A daemon that is not running gives an
// error matching ErrNotConnected.
func Connect(ctx context.Context, opts ConnectOptions) (*Bus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var cp *C.char
	if opts.SocketPath != "" {
		cp = C.CString(opts.SocketPath)
		defer C.free(unsafe.Pointer(cp))
	}
	var h *C.shmbus_bus_t
	if err := call(func() C.int { return C.shmbus_bus_connect(cp, &h) }); err != nil {
		return nil, err
	}
	return &Bus{h: h}, nil
}

// OpenEmbedded starts a daemon inside this process with its state in stateDir
// ("" means a private temporary directory; with a stateDir its socket is
// <stateDir>/shmbusd.sock, which other processes may Connect to) and connects to
// it. The daemon stops when the Bus is closed.
func OpenEmbedded(stateDir string) (*Bus, error) {
	var cp *C.char
	if stateDir != "" {
		cp = C.CString(stateDir)
		defer C.free(unsafe.Pointer(cp))
	}
	var h *C.shmbus_bus_t
	if err := call(func() C.int { return C.shmbus_bus_open_embedded(cp, &h) }); err != nil {
		return nil, err
	}
	return &Bus{h: h}, nil
}

// Close releases the bus. Publishers and subscribers opened from it stay usable
// until they are closed themselves. Closing twice is a no-op.
func (b *Bus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.h != nil {
		C.shmbus_bus_close(b.h)
		b.h = nil
	}
	return nil
}

// TopicConfig describes a topic. Zero fields take the library defaults
// (1 partition, 16 MiB per partition, max payload capacity/4, policy block,
// single producer, 64 subscriber slots, mode 0660).
type TopicConfig struct {
	Partitions    uint32
	Capacity      uint64 // ring bytes per partition: a power of two >= 4096
	MaxPayload    uint64
	Policy        Policy
	MultiProducer bool   // false: one producer per partition (the fast path)
	Slots         uint32 // subscriber slots per partition
	Mode          uint32 // permission bits of the segments
	SchemaID      uint64 // expected Cap'n Proto root type id, 0 = any
	// Durable, when set, makes the topic durable (archived by the daemon; see
	// DurableConfig). PolicySpill makes it durable with the defaults. Not filled
	// by DescribeTopic: see DescribeDurable.
	Durable *DurableConfig
}

func (c TopicConfig) toC() C.shmbus_topic_config_t {
	var cfg C.shmbus_topic_config_t
	C.shmbus_topic_config_init(&cfg)
	if c.Partitions != 0 {
		cfg.partitions = C.uint32_t(c.Partitions)
	}
	if c.Capacity != 0 {
		cfg.capacity = C.uint64_t(c.Capacity)
	}
	cfg.max_payload = C.uint64_t(c.MaxPayload)
	cfg.policy = C.uint32_t(c.Policy)
	if c.MultiProducer {
		cfg.multi_producer = 1
	}
	if c.Slots != 0 {
		cfg.slots = C.uint32_t(c.Slots)
	}
	if c.Mode != 0 {
		cfg.mode = C.uint32_t(c.Mode)
	}
	cfg.schema_id = C.uint64_t(c.SchemaID)
	return cfg
}

func (b *Bus) handle() (*C.shmbus_bus_t, error) {
	if b.h == nil {
		return nil, &Error{Code: CodeClosed, Msg: "bus is closed"}
	}
	return b.h, nil
}

// CreateTopic creates a topic; idempotent for the same settings, ErrAlreadyExists
// for other settings.
func (b *Bus) CreateTopic(name string, cfg TopicConfig) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	h, err := b.handle()
	if err != nil {
		return err
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	c := cfg.toC()
	if cfg.Durable != nil {
		d, err := cfg.Durable.toC()
		if err != nil {
			return err
		}
		return call(func() C.int { return C.shmbus_topic_create_durable(h, cn, &c, &d) })
	}
	return call(func() C.int { return C.shmbus_topic_create(h, cn, &c) })
}

// RemoveTopic removes a topic's segments; mappings already open stay valid.
func (b *Bus) RemoveTopic(name string) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	h, err := b.handle()
	if err != nil {
		return err
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	return call(func() C.int { return C.shmbus_topic_remove(h, cn) })
}

// DescribeTopic returns the settings of an existing topic (ErrNotFound otherwise).
func (b *Bus) DescribeTopic(name string) (TopicConfig, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	h, err := b.handle()
	if err != nil {
		return TopicConfig{}, err
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var c C.shmbus_topic_config_t
	if err := call(func() C.int { return C.shmbus_topic_describe(h, cn, &c) }); err != nil {
		return TopicConfig{}, err
	}
	return TopicConfig{
		Partitions:    uint32(c.partitions),
		Capacity:      uint64(c.capacity),
		MaxPayload:    uint64(c.max_payload),
		Policy:        Policy(c.policy),
		MultiProducer: c.multi_producer != 0,
		Slots:         uint32(c.slots),
		Mode:          uint32(c.mode),
		SchemaID:      uint64(c.schema_id),
	}, nil
}

func durationNs(d time.Duration) C.int64_t { return C.int64_t(d.Nanoseconds()) }

// interruptOnDone arranges for interrupt to run when ctx ends, until the returned
// stop runs; stop waits for an interrupt already running, so the C handle stays
// valid for it. A context that cannot end (Background) costs nothing.
func interruptOnDone(ctx context.Context, interrupt func()) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	fired := make(chan struct{})
	after := context.AfterFunc(ctx, func() {
		interrupt()
		close(fired)
	})
	return func() {
		if !after() {
			<-fired
		}
	}
}

// waitFor is the timeout of the next C wait under ctx: until its deadline (-1:
// none; ctx's end interrupts the wait), or ctx.Err() when it has ended.
func waitFor(ctx context.Context) (C.int64_t, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if dl, has := ctx.Deadline(); has {
		left := time.Until(dl)
		if left <= 0 {
			return 0, deadlineErr(ctx)
		}
		return durationNs(left), nil
	}
	return -1, nil
}

// deadlineErr is ctx.Err() once ctx's deadline has passed (its timer may not
// have fired yet).
func deadlineErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return context.DeadlineExceeded
}
