package shmbus_test

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"shmbus.dev/shmbus"
)

// Durable topics through a real daemon (embedded, with a state directory): create
// with DurableConfig, publish, WaitDurable, stop the daemon, start a new one on the
// same state, replay from the earliest message (all of it in order, most of it
// only in the log), then live messages through the same subscriber.
func TestDurableTopicReplaysFromEarliestAfterADaemonRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	const topic, n, live = "go.durable", 2000, 200

	// Without a daemon: refused with the reason.
	direct, err := shmbus.OpenDirect(prefix)
	if err != nil {
		t.Fatal(err)
	}
	err = direct.CreateTopic(topic, shmbus.TopicConfig{Capacity: 8192, Durable: &shmbus.DurableConfig{}})
	if !errors.Is(err, shmbus.ErrUnsupported) {
		t.Fatalf("durable on a direct bus: want ErrUnsupported, got %v", err)
	}
	direct.Close()

	bus, err := shmbus.OpenEmbedded(dir)
	if err != nil {
		t.Fatalf("OpenEmbedded: %v", err)
	}
	defer func() { bus.Close() }()
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 8192, Durable: &shmbus.DurableConfig{Flush: 9}}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("bad flush: want ErrInvalidArgument, got %v", err)
	}
	dur := &shmbus.DurableConfig{Flush: shmbus.FlushBatch, SegmentBytes: 1 << 20, RetentionAge: time.Hour}
	cfg := shmbus.TopicConfig{Capacity: 8192, Durable: dur}
	if err := bus.CreateTopic(topic, cfg); err != nil {
		t.Fatal(err)
	}
	if err := bus.CreateTopic(topic, cfg); err != nil {
		t.Fatalf("create is not idempotent: %v", err)
	}
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 8192, Durable: &shmbus.DurableConfig{Flush: shmbus.FlushNone}}); !errors.Is(err, shmbus.ErrAlreadyExists) {
		t.Fatalf("other flush: want ErrAlreadyExists, got %v", err)
	}
	got, err := bus.DescribeDurable(topic)
	if err != nil || got == nil || got.Flush != shmbus.FlushBatch || got.SegmentBytes != 1<<20 || got.RetentionAge != time.Hour {
		t.Fatalf("DescribeDurable: %+v %v", got, err)
	}
	if err := bus.CreateTopic("go.plain", shmbus.TopicConfig{Capacity: 8192}); err != nil {
		t.Fatal(err)
	}
	if d, err := bus.DescribeDurable("go.plain"); d != nil || err != nil {
		t.Fatalf("plain topic: want nil, nil, got %+v %v", d, err)
	}
	if _, err := bus.Subscriber("go.plain", &shmbus.SubscriberOptions{Start: shmbus.StartEarliest()}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("replay of a plain topic: want ErrInvalidArgument, got %v", err)
	}

	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]uint64, n+live)
	publish := func(pub *shmbus.Publisher, from, to int) {
		for i := from; i < to; i++ {
			b, err := pub.Claim(ctx, 8)
			if err != nil {
				t.Fatalf("claim %d: %v", i, err)
			}
			binary.LittleEndian.PutUint64(b, uint64(i))
			seqs[i] = pub.ClaimSequence()
			if err := pub.Commit(8, uint64(i), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(pub, 0, n)
	if err := pub.WaitDurable(ctx, seqs[n-1]); err != nil {
		t.Fatalf("WaitDurable: %v", err)
	}
	if ds, aerr, err := pub.DurableSequence(); err != nil || ds < seqs[n-1] || aerr != 0 {
		t.Fatalf("DurableSequence: %d %d %v", ds, aerr, err)
	}
	pub.Close()
	bus.Close() // stops the daemon; a new one starts on the same state
	if bus, err = shmbus.OpenEmbedded(dir); err != nil {
		t.Fatalf("OpenEmbedded again: %v", err)
	}

	expect := func(sub *shmbus.Subscriber, from, count int, what string) {
		t.Helper()
		for i := from; i < from+count; i++ {
			v, err := sub.Poll(ctx)
			for errors.Is(err, shmbus.ErrCorrupt) {
				v, err = sub.Poll(ctx)
			}
			if err != nil {
				t.Fatalf("%s: message %d: %v", what, i, err)
			}
			if len(v.Data) != 8 || binary.LittleEndian.Uint64(v.Data) != uint64(i) || v.Sequence != seqs[i] {
				t.Fatalf("%s: got %x (seq %d), want %d (seq %d)", what, v.Data, v.Sequence, i, seqs[i])
			}
			if err := sub.Release(&v); err != nil {
				t.Fatal(err)
			}
		}
	}
	sub, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Start: shmbus.StartEarliest()})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	expect(sub, 0, n, "replay from earliest")
	if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("after the history: want ErrEmpty, got %v", err)
	}
	pub, err = bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publish(pub, n, n+live)
	expect(sub, n, live, "live after the replay")

	mid, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Start: shmbus.StartAtSequence(seqs[n/2])})
	if err != nil {
		t.Fatal(err)
	}
	defer mid.Close()
	expect(mid, n/2, n/2+live, "start at a sequence")
	old, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Start: shmbus.StartAtTime(time.Now().Add(-time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	expect(old, 0, 10, "start an hour ago")
	// Leave nothing behind in /dev/shm (the deferred Closes are then no-ops).
	old.Close()
	mid.Close()
	sub.Close()
	pub.Close()
	for _, tp := range []string{topic, "go.plain"} {
		if err := bus.RemoveTopic(tp); err != nil {
			t.Fatalf("RemoveTopic %s: %v", tp, err)
		}
	}
}
