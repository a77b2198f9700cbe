package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"context"
	"time"
	"unsafe"
)

// FlushPolicy is when the daemon's archiver makes a durable topic's log durable
// on disk. The zero value is FlushInterval.
type FlushPolicy uint32

const (
	// FlushInterval: fdatasync every DurableConfig.FlushInterval (default 10 ms).
	FlushInterval FlushPolicy = iota
	// FlushBatch: fdatasync after each batch the archiver writes.
	FlushBatch
	// FlushNone: the page cache only; survives a daemon crash, not a power loss.
	FlushNone
)

func (f FlushPolicy) c() (C.uint32_t, error) {
	switch f {
	case FlushInterval:
		return C.SHMBUS_FLUSH_INTERVAL, nil
	case FlushBatch:
		return C.SHMBUS_FLUSH_BATCH, nil
	case FlushNone:
		return C.SHMBUS_FLUSH_NONE, nil
	}
	return 0, &Error{Code: CodeInvalidArgument, Msg: "FlushPolicy is not FlushInterval, FlushBatch or FlushNone"}
}

// DurableConfig makes a topic durable (TopicConfig.Durable): shmbusd archives it
// to its spill log, subscribers can start in the past (StartEarliest,
// StartAtSequence, StartAtTime) and Publisher.WaitDurable acknowledges. Durable
// topics need a daemon: Connect, or OpenEmbedded with a state directory. The zero
// value is the defaults (flush every 10 ms, unlimited retention, 64 MiB segments).
type DurableConfig struct {
	Flush          FlushPolicy
	FlushInterval  time.Duration // FlushInterval: the fdatasync period (0: 10 ms), whole milliseconds
	RetentionBytes uint64        // per partition, 0 = unlimited
	RetentionAge   time.Duration // by a log segment's last write, whole seconds, 0 = unlimited
	SegmentBytes   uint64        // log segment file size, 0 = 64 MiB
}

func (d *DurableConfig) toC() (C.shmbus_durable_config_t, error) {
	var c C.shmbus_durable_config_t
	C.shmbus_durable_config_init(&c, C.uint32_t(unsafe.Sizeof(c)))
	c.durable = 1
	f, err := d.Flush.c()
	if err != nil {
		return c, err
	}
	c.flush = f
	if d.FlushInterval < 0 || d.RetentionAge < 0 {
		return c, &Error{Code: CodeInvalidArgument, Msg: "negative FlushInterval or RetentionAge"}
	}
	if d.FlushInterval > 0 {
		ms := d.FlushInterval.Milliseconds()
		if ms == 0 || ms > 1<<31 {
			return c, &Error{Code: CodeInvalidArgument, Msg: "FlushInterval must be 1 ms .. 2^31 ms"}
		}
		c.flush_interval_ms = C.uint32_t(ms)
	}
	c.retention_bytes = C.uint64_t(d.RetentionBytes)
	c.retention_age_s = C.uint64_t(d.RetentionAge / time.Second)
	c.segment_bytes = C.uint64_t(d.SegmentBytes)
	return c, nil
}

// DescribeDurable returns the durable settings of an existing topic, or nil when it
// is not durable (on a bus without a daemon every topic is not durable).
func (b *Bus) DescribeDurable(name string) (*DurableConfig, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	h, err := b.handle()
	if err != nil {
		return nil, err
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var c C.shmbus_durable_config_t
	C.shmbus_durable_config_init(&c, C.uint32_t(unsafe.Sizeof(c)))
	if err := call(func() C.int { return C.shmbus_topic_describe_durable(h, cn, &c) }); err != nil {
		return nil, err
	}
	if c.durable == 0 {
		return nil, nil
	}
	d := &DurableConfig{
		FlushInterval:  time.Duration(c.flush_interval_ms) * time.Millisecond,
		RetentionBytes: uint64(c.retention_bytes),
		RetentionAge:   time.Duration(c.retention_age_s) * time.Second,
		SegmentBytes:   uint64(c.segment_bytes),
	}
	switch c.flush {
	case C.SHMBUS_FLUSH_BATCH:
		d.Flush = FlushBatch
	case C.SHMBUS_FLUSH_NONE:
		d.Flush = FlushNone
	default:
		d.Flush = FlushInterval
	}
	return d, nil
}

// StartPosition is where a subscriber starts. The zero value is StartLatest.
// Any other start replays a durable topic's log, then continues live in the ring
// without a gap or duplicate; such a subscriber is always untethered (it never
// holds the producer back; lapped, it continues from the log) and has no Name.
type StartPosition struct {
	kind  C.uint32_t
	value uint64
}

// StartLatest: only messages published after the subscriber joins (the default).
func StartLatest() StartPosition { return StartPosition{kind: C.SHMBUS_START_LATEST} }

// StartEarliest: from the oldest message the log retains (durable topics).
func StartEarliest() StartPosition { return StartPosition{kind: C.SHMBUS_START_EARLIEST} }

// StartAtSequence: from the first message with sequence >= seq (durable topics).
func StartAtSequence(seq uint64) StartPosition {
	return StartPosition{kind: C.SHMBUS_START_SEQUENCE, value: seq}
}

// StartAtTime: from the first message committed at or after t (durable topics).
func StartAtTime(t time.Time) StartPosition {
	ns := t.UnixNano()
	if ns < 0 {
		ns = 0
	}
	return StartPosition{kind: C.SHMBUS_START_TIME, value: uint64(ns)}
}

// ClaimSequence is the partition sequence of the open claim (0 when none): pass it
// to WaitDurable after committing.
func (p *Publisher) ClaimSequence() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.h == nil || p.open == nil {
		return 0
	}
	return uint64(p.s.claim.sequence)
}

// DurableSequence is the highest sequence of the publisher's partition known
// durable (0 when no archiver ran), and the errno of the archiver's failing write
// or sync (0 when healthy): why a durable topic back-pressures.
func (p *Publisher) DurableSequence() (uint64, int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return 0, 0, err
	}
	var seq C.uint64_t
	var e C.int
	if err := call(func() C.int { return C.shmbus_publisher_durable_sequence(p.h, &seq, &e) }); err != nil {
		return 0, 0, err
	}
	return uint64(seq), int(e), nil
}

// WaitDurable waits until every message of the partition with sequence <= seq is
// durable per the topic's flush policy, ctx ends (ctx.Err(), at once: the wait is
// interrupted) or the publisher is closed (ErrClosed, at once).
func (p *Publisher) WaitDurable(ctx context.Context, seq uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		if err := p.check(); err != nil {
			return err
		}
		timeout, err := waitFor(ctx)
		if err != nil {
			return err
		}
		if stop == nil && ctx.Done() != nil {
			stop = interruptOnDone(ctx, func() { C.shmbus_publisher_interrupt(p.h) })
		}
		switch rc := int(C.shmbus_publisher_wait_durable(p.h, C.uint64_t(seq), timeout)); rc {
		case 0:
			return nil
		case CodeTimedOut, CodeInterrupted: // ctx, Close or an earlier call's interrupt: checked above
		default:
			return codeError(rc)
		}
	}
}
