package shmbus_test

import (
	"context"
	"errors"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

// Publish (in place, pipelined) in one goroutine, PollBatch + in-place read in
// another: per-message cost of the Go binding end to end on a 64 B quote.
func BenchmarkQuotePublishAndPollBatch(b *testing.B) {
	bus, err := shmbus.OpenDirect(prefix)
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	topic := "go.bench.quotes"
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 22}); err != nil {
		b.Fatal(err)
	}
	defer bus.RemoveTopic(topic)
	sub, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Wait: shmbus.WaitSpinYield})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{Wait: shmbus.WaitSpinYield})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	ctx := context.Background()
	n := uint64(b.N)
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		var r shmbus.Reader
		views := make([]shmbus.View, 256)
		for got := uint64(0); got < n; {
			k, err := sub.PollBatch(ctx, views)
			if err != nil {
				done <- err
				return
			}
			for i := 0; i < k; i++ {
				msg, _ := r.Read(&views[i])
				q, err := market.ReadRootQuote(msg)
				if err != nil || q.Seq() != got+1 {
					done <- err
					return
				}
				got++
			}
			sub.ReleaseAll()
		}
		done <- nil
	}()
	for i := uint64(1); i <= n; i++ {
		if err := pub.Publish(ctx, 128, i, market.Quote_TypeID, func(s *capnp.Segment) error { return buildQuote(s, i) }); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// A consumer group member's TryPoll + Release per 8-byte message, against a named
// Subscriber's on the same kind of ring (embedded daemon, one partition, the
// messages published beforehand in chunks that fit the ring).
func BenchmarkGroupVersusNamedSubscriber(b *testing.B) {
	for _, group := range []bool{false, true} {
		name := "named-subscriber"
		if group {
			name = "group-member"
		}
		b.Run(name, func(b *testing.B) {
			bus, err := shmbus.OpenEmbedded(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer bus.Close()
			const topic = "go.bench.group"
			if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 22}); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var poll func() (shmbus.View, error)
			var release func() error
			if group {
				m, err := bus.GroupSubscriber(ctx, topic, "bench", nil)
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close()
				var v shmbus.GroupView
				poll = func() (shmbus.View, error) { var err error; v, err = m.TryPoll(); return v.View, err }
				release = func() error { return m.Release(&v) }
			} else {
				s, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Name: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				var v shmbus.View
				poll = func() (shmbus.View, error) { var err error; v, err = s.TryPoll(); return v, err }
				release = func() error { return s.Release(&v) }
			}
			pub, err := bus.Publisher(topic, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			msg := make([]byte, 8)
			b.ResetTimer()
			for done := 0; done < b.N; {
				chunk := min(b.N-done, 50000)
				b.StopTimer()
				for i := 0; i < chunk; i++ {
					if err := pub.Offer(ctx, msg, uint64(done+i+1), 0); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				for i := 0; i < chunk; {
					if _, err := poll(); err != nil {
						if errors.Is(err, shmbus.ErrEmpty) {
							continue
						}
						b.Fatal(err)
					}
					if err := release(); err != nil {
						b.Fatal(err)
					}
					i++
				}
				done += chunk
			}
		})
	}
}
