package shmbus_test

import (
	"context"
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
