package shmbus_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"shmbus.dev/shmbus"
)

// A responder serving a topic and a requester asking it, through an embedded shmbusd
// (the requester's reply topic is ephemeral: removed when its connection ends). The
// request's timeout is its context's deadline.
func ExampleRequester() {
	dir, err := os.MkdirTemp("", "shmbus-example-rr")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bus, err := shmbus.OpenEmbedded(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	if err := bus.CreateTopic("pricing.quote", shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true}); err != nil {
		log.Fatal(err)
	}

	resp, err := bus.Responder("pricing.quote", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Close()
	serving, stop := context.WithCancel(context.Background())
	defer stop()
	go resp.Serve(serving, func(_ context.Context, q *shmbus.Request) (shmbus.Response, error) {
		if len(q.Payload) == 0 {
			return shmbus.Response{}, fmt.Errorf("no symbol") // answered with status 500
		}
		return shmbus.Response{Payload: []byte(strings.ToUpper(string(q.Payload)) + " 187.50")}, nil
	})

	req, err := bus.Requester(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer req.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, sym := range []string{"aapl", ""} {
		r, err := req.Request(ctx, "pricing.quote", []byte(sym))
		if err != nil {
			log.Fatal(err) // errors.Is(err, shmbus.ErrTimedOut): no reply before the deadline
		}
		fmt.Printf("status %d: %s\n", r.Status, r.Payload)
	}
	// Output:
	// status 0: AAPL 187.50
	// status 500: exception: no symbol
}
