// Command mdfeed is the Go market-data feed of the demo pipeline (tools/demo):
// it publishes Quote messages on md.quotes, each built in place in ring memory
// with the Go Cap'n Proto library (pipelined: one cgo call per message).
//
//	mdfeed (--socket PATH | --prefix P) --paced N --rate R --burst M --signal-every S [--topic md.quotes]
//
// The first N quotes are paced at R/s (the demo's latency phase), the next M go
// at full speed (its throughput phase). Quote i (seq from 1) has an imbalanced
// book (bidQty >= 4 x askQty) exactly when i % S == 0: the strategy orders on those.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

const px0 = 10000000000

func main() {
	socket := flag.String("socket", "", "shmbusd control socket (through the daemon)")
	prefix := flag.String("prefix", "", "direct bus with this shm prefix (no daemon)")
	topic := flag.String("topic", "md.quotes", "quotes topic")
	paced := flag.Uint64("paced", 0, "quotes in the paced phase")
	rate := flag.Uint64("rate", 100000, "paced rate, quotes/s")
	burst := flag.Uint64("burst", 0, "quotes at full speed")
	every := flag.Uint64("signal-every", 10, "every S-th quote has an imbalanced book")
	flag.Parse()
	if (*socket == "") == (*prefix == "") || *rate == 0 || *every == 0 {
		fmt.Fprintln(os.Stderr, "mdfeed: give exactly one of --socket and --prefix; --rate and --signal-every > 0")
		os.Exit(64)
	}
	if err := run(*socket, *prefix, *topic, *paced, *rate, *burst, *every); err != nil {
		fmt.Fprintln(os.Stderr, "mdfeed:", err)
		os.Exit(1)
	}
}

func run(socket, prefix, topic string, paced, rate, burst, every uint64) error {
	ctx := context.Background()
	var bus *shmbus.Bus
	var err error
	if socket != "" {
		bus, err = shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: socket})
	} else {
		bus, err = shmbus.OpenDirect(prefix)
	}
	if err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	defer bus.Close()
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{BlockTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	defer pub.Close()

	publish := func(i uint64) error {
		return pub.Publish(ctx, 96, i, market.Quote_TypeID, func(seg *capnp.Segment) error {
			q, err := market.NewRootQuote(seg)
			if err != nil {
				return err
			}
			bidQty, askQty := uint32(100+(i%5)*10), uint32(100+(i%7)*10)
			if i%every == 0 {
				bidQty, askQty = 900, 100
			}
			q.SetInstrumentId(uint32(i % 64))
			q.SetBidPx(px0 + int64(i%1000)*100)
			q.SetAskPx(px0 + int64(i%1000)*100 + 500)
			q.SetBidQty(bidQty)
			q.SetAskQty(askQty)
			q.SetExchangeTsNs(uint64(time.Now().UnixNano()))
			q.SetSeq(i)
			return nil
		})
	}

	// Paced phase: spin to each send time (a sleep's wake-up jitter would be
	// larger than the gap at 100k/s).
	gap := time.Second / time.Duration(rate)
	next := time.Now()
	i := uint64(1)
	for ; i <= paced; i++ {
		for time.Now().Before(next) {
		}
		next = next.Add(gap)
		if err := publish(i); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	t1 := time.Now()
	for ; i <= paced+burst; i++ {
		if err := publish(i); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	secs := time.Since(t1).Seconds()
	st, _ := pub.Stats()
	mps := 0.0
	if secs > 0 {
		mps = float64(burst) / secs / 1e6
	}
	fmt.Printf("published %d quotes: %d paced at %d/s, %d at full speed (%.2f M/s), %d copied (outgrew the claim)\n",
		paced+burst, paced, rate, burst, mps, st.BuilderFallbacks)
	return nil
}
