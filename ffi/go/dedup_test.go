package shmbus_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"shmbus.dev/shmbus"
)

// A consumer with a durable subscriber and a persisted dedup window, through a real
// daemon (embedded, with a state directory): it commits message 61 and "crashes"
// before releasing it (closes without the release), the producer retries ids 55..70
// (new sequences, same producer and message ids); the restarted consumer (the window
// loaded from its file, the subscriber by name) applies every id 1..100 exactly once:
// 61 is dropped by position, the retries by id. Then a corrupted state file is refused.
func TestDedupWindowAcrossAConsumerRestartAndAProducerRetry(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	bus, err := shmbus.OpenEmbedded(filepath.Join(dir, "daemon"))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	const topic = "go.dedup"
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 16}); err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(dir, "consumer.dedup")
	subOpts := &shmbus.SubscriberOptions{Name: "consumer"}
	sub, err := bus.Subscriber(topic, subOpts)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{ProducerID: 77})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publish := func(from, to uint64) {
		var b [8]byte
		for id := from; id <= to; id++ {
			binary.LittleEndian.PutUint64(b[:], id)
			if err := pub.Offer(ctx, b[:], id, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	applied := map[uint64]int{}
	// handle applies one message unless seen: the state is the sum of applied ids.
	handle := func(w *shmbus.DedupWindow, v *shmbus.View, release bool) {
		seen, err := w.Seen(v)
		if err != nil {
			t.Fatal(err)
		}
		if !seen {
			id := binary.LittleEndian.Uint64(v.Data)
			applied[id]++
			sum := binary.LittleEndian.Uint64(append(w.AppState(), make([]byte, 8)...)) + id
			var st [8]byte
			binary.LittleEndian.PutUint64(st[:], sum)
			if err := w.Record(v); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(st[:]); err != nil {
				t.Fatal(err)
			}
		}
		if release {
			if err := sub.Release(v); err != nil {
				t.Fatal(err)
			}
		}
	}

	w, err := shmbus.OpenDedup(shmbus.DedupOptions{Path: statePath, Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	publish(1, 100)
	for i := 1; i <= 61; i++ {
		v, err := sub.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		handle(w, &v, i < 61) // 61: committed, not released
	}
	sub.Close() // the "crash": the durable name resumes after 60
	w.Close()
	publish(55, 70) // the producer's retry

	w, err = shmbus.OpenDedup(shmbus.DedupOptions{Path: statePath, Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if sub, err = bus.Subscriber(topic, subOpts); err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := 0; i < 40+16; i++ { // 61..100, then the 16 retries
		v, err := sub.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		handle(w, &v, true)
	}
	for id := uint64(1); id <= 100; id++ {
		if applied[id] != 1 {
			t.Fatalf("id %d applied %d times", id, applied[id])
		}
	}
	st := w.Stats()
	if st.ByPosition != 1 || st.ByID != 16 {
		t.Fatalf("stats: %+v, want 1 by position, 16 by id", st)
	}
	if got := binary.LittleEndian.Uint64(w.AppState()); got != 5050 {
		t.Fatalf("state: sum %d, want 5050", got)
	}
	t.Logf("100 ids applied once each; dropped: %d by position (the restart), %d by id (the retry)", st.ByPosition, st.ByID)

	// A corrupted state is refused, naming its file.
	b, err := os.ReadFile(statePath)
	if err != nil || len(b) < 24 {
		t.Fatalf("state file: %d bytes, %v", len(b), err)
	}
	b[20] ^= 0x40
	if err := os.WriteFile(statePath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := shmbus.OpenDedup(shmbus.DedupOptions{Path: statePath}); !errors.Is(err, shmbus.ErrInvalidArgument) || !strings.Contains(err.Error(), statePath) {
		t.Fatalf("corrupted state: want ErrInvalidArgument naming the file, got %v", err)
	}
}
