package shmbus_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"shmbus.dev/shmbus"
)

// A consumer group on a durable (spill) topic through a real shmbusd whose parked
// slots expire at once (--durable-hold-ms 0): a member commits k messages and
// leaves, the producer goes on for many laps of a small ring, and the next member
// (a Go GroupSubscriber, through the C ABI) reads everything from k+1 on: the
// first part from the topic's log, the rest from the ring, in order, none twice.
func TestGroupMemberOnADurableTopicReadsTheLogWhatTheRingLost(t *testing.T) {
	bin := os.Getenv("SHMBUSD")
	if bin == "" {
		t.Fatal("SHMBUSD (the shmbusd binary) is not set: run through ffi/go/test.sh")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "shmbusd.sock")
	d := exec.Command(bin, "--socket", sock, "--state-dir", filepath.Join(dir, "state"),
		"--shm-prefix", fmt.Sprintf("gogl%d", os.Getpid()), "--durable-hold-ms", "0", "--log-level", "warn")
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })
	ctx := ctxT(t)
	var bus *shmbus.Bus
	for {
		b, err := shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: sock})
		if err == nil {
			bus = b
			break
		}
		if !errors.Is(err, shmbus.ErrNotConnected) || ctx.Err() != nil {
			t.Fatalf("Connect: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // the daemon is starting: poll its socket
	}
	defer bus.Close()
	const topic, k, n = "go.grouplog", 60, 20000
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 64 << 10, Policy: shmbus.PolicySpill,
		Durable: &shmbus.DurableConfig{}}); err != nil {
		t.Fatal(err)
	}
	// Patient: the first member's parked slot holds it until the daemon expires it.
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{BlockTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	payload := make([]byte, 64)
	publish := func(from, to uint64) {
		for i := from; i <= to; i++ {
			binary.LittleEndian.PutUint64(payload, i)
			if err := pub.Offer(ctx, payload, i, 0); err != nil {
				t.Fatalf("offer %d: %v", i, err)
			}
		}
	}
	read := func(m *shmbus.GroupSubscriber, from, to uint64) {
		for i := from; i <= to; i++ {
			v, err := m.Poll(ctx)
			if err != nil {
				t.Fatalf("poll for %d: %v", i, err)
			}
			if got := binary.LittleEndian.Uint64(v.Data); got != i || v.Sequence != i {
				t.Fatalf("want message %d, got %d (sequence %d)", i, got, v.Sequence)
			}
			if err := m.Release(&v); err != nil {
				t.Fatal(err)
			}
		}
	}
	m, err := bus.GroupSubscriber(ctx, topic, "g", nil) // a new group starts at the tail
	if err != nil {
		t.Fatal(err)
	}
	publish(1, k)
	read(m, 1, k)
	if err := m.Close(); err != nil { // committed: k; the parked slot expires at once
		t.Fatal(err)
	}
	publish(k+1, n) // ~100 B frames in a 64 KiB ring: ~30 laps the group never saw
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := pub.WaitDurable(wctx, n); err != nil {
		t.Fatal(err)
	}
	m2, err := bus.GroupSubscriber(ctx, topic, "g", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	read(m2, k+1, n) // from the log, then the ring
	publish(n+1, n+200)
	read(m2, n+1, n+200) // live
}
