package shmbus_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"shmbus.dev/shmbus"
)

var errDBUnavailable = errors.New("db unavailable")

// The example of docs/messaging.md, "Handler runner (Go)": a handler that acks,
// retries a transient failure and rejects a message that can never succeed (dead-
// lettered to "orders.done.dlq").
func ExampleRunner() {
	bus, err := shmbus.OpenDirect("example-runner")
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	for _, t := range []string{"orders.done", "orders.done.dlq"} {
		if err := bus.CreateTopic(t, shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true}); err != nil {
			log.Fatal(err)
		}
		defer bus.RemoveTopic(t)
	}
	dlq, err := bus.Subscriber("orders.done.dlq", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer dlq.Close()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	failedOnce := false
	run, err := shmbus.NewRunner(bus, "orders.done", func(ctx context.Context, m *shmbus.Message) shmbus.Outcome {
		order := string(m.Payload) // ring memory: valid during the call only
		switch {
		case order == "order-2" && !failedOnce:
			failedOnce = true
			return shmbus.Retry(errDBUnavailable.Error(), 503) // tried again after the backoff
		case order == "order-3":
			return shmbus.Reject("unknown customer", 404) // dead-lettered at once
		}
		fmt.Printf("%s done (attempt %d)\n", order, m.Attempt)
		if order == "order-4" {
			stop() // the example ends here: Run returns once this attempt is finished
		}
		return shmbus.Ack()
	}, &shmbus.RunnerOptions{
		Name:           "fulfilment",
		Retry:          &shmbus.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2},
		AttemptTimeout: time.Second,
		Middleware:     []shmbus.Middleware{shmbus.Recoverer(nil), shmbus.Trace("fulfilment", nil)},
	})
	if err != nil {
		log.Fatal(err)
	}
	pub, err := bus.Publisher("orders.done", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	for i := 1; i <= 4; i++ {
		if err := pub.Offer(ctx, []byte(fmt.Sprintf("order-%d", i)), uint64(700+i), 0); err != nil {
			log.Fatal(err)
		}
	}
	if err := run.Run(ctx); err != nil {
		log.Fatal(err)
	}
	st := run.Stats()
	fmt.Printf("acked %d, retries %d, dead letters %d\n", st.Acked, st.Retries, st.DeadLettered)
	v, err := dlq.Poll(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("dead letter of message %d (%d bytes)\n", v.MessageID, len(v.Data))
	// Output:
	// order-1 done (attempt 1)
	// order-2 done (attempt 2)
	// order-4 done (attempt 1)
	// acked 3, retries 1, dead letters 1
	// dead letter of message 703 (232 bytes)
}
