package shmbus_test

import (
	"context"
	"fmt"
	"log"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

// The example of docs/bindings-go.md: a quote built in ring memory, read in place.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	bus, err := shmbus.OpenDirect("example-go") // segments /dev/shm/example-go.*
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	if err := bus.CreateTopic("md.quotes", shmbus.TopicConfig{Capacity: 1 << 20}); err != nil {
		log.Fatal(err)
	}
	defer bus.RemoveTopic("md.quotes")

	sub, err := bus.Subscriber("md.quotes", nil) // sees what is published after it joins
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	pub, err := bus.Publisher("md.quotes", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()

	// Publish: build the Cap'n Proto message directly in the claimed ring bytes.
	for i := uint64(1); i <= 3; i++ {
		err := pub.Publish(ctx, 128, i, market.Quote_TypeID, func(seg *capnp.Segment) error {
			q, err := market.NewRootQuote(seg)
			if err != nil {
				return err
			}
			q.SetInstrumentId(7)
			q.SetBidPx(10_000_000_000 + int64(i))
			q.SetSeq(i)
			return nil
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	// Consume: one cgo call for a batch; every view is read in place.
	views := make([]shmbus.View, 16)
	var r shmbus.Reader
	for got := 0; got < 3; {
		n, err := sub.PollBatch(ctx, views)
		if err != nil {
			log.Fatal(err)
		}
		for i := 0; i < n; i++ {
			msg, err := r.Read(&views[i]) // no copy: msg reads ring memory
			if err != nil {
				log.Fatal(err)
			}
			q, err := market.ReadRootQuote(msg)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("seq %d instrument %d bid %d\n", q.Seq(), q.InstrumentId(), q.BidPx())
		}
		got += n
		// Done with every view of the batch: after this their bytes are off limits.
		if err := sub.ReleaseAll(); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// seq 1 instrument 7 bid 10000000001
	// seq 2 instrument 7 bid 10000000002
	// seq 3 instrument 7 bid 10000000003
}
