// Command xlang is the Go side of the cross-language scenario
// (docs/xlang-scenario.md): a producer that builds every message in place in
// ring memory, and a consumer that reads every message in place and checks every
// field, sequence and order.
//
//	xlang consume --prefix P --topic T --count N --schema quote|order [--schema-version 1|2] [--timeout-ms 10000] [--allow-truncated]
//	xlang respond|request ... (rr.go: request/response through shmbusd)
//	xlang produce --prefix P --topic T --count N --schema quote|order [--schema-version 1|2] [--create] [--capacity BYTES] [--start SEQ] [--kill-self-after K]
//	xlang schema-open --socket S --topic T
//
// produce/consume take --socket S (through shmbusd instead of --prefix) and
// --present-schema (present the compiled Quote/Order at open, for the schema
// registry). schema-open opens a publisher and a subscriber presenting the compiled
// Quote and prints "PUBLISHER ok|refused: <error>" and "SUBSCRIBER ok|refused: <error>".
// Durable topics: consume --earliest replays from the oldest message the log
// retains; produce --wait-durable waits until the last message is durable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
	"shmbus.dev/shmbus/marketv2"
)

type config struct {
	prefix, topic, schema   string
	count, start, killAfter uint64
	version                 int
	timeout                 time.Duration
	create, allowTruncated  bool
	capacity                uint64
	socket                  string
	presentSchema           bool
	earliest, waitDurable   bool
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("xlang "+args[0], flag.ContinueOnError)
	fs.StringVar(&c.prefix, "prefix", "shmbus", "shm prefix")
	fs.StringVar(&c.topic, "topic", "", "topic")
	fs.Uint64Var(&c.count, "count", 0, "messages")
	fs.StringVar(&c.schema, "schema", "quote", "quote|order")
	fs.IntVar(&c.version, "schema-version", 1, "1|2")
	timeoutMs := fs.Int("timeout-ms", 10000, "consumer: longest gap in the stream")
	fs.BoolVar(&c.create, "create", false, "producer: create the topic")
	fs.Uint64Var(&c.capacity, "capacity", 4<<20, "ring bytes when creating")
	fs.Uint64Var(&c.start, "start", 1, "first sequence (the consumer expects it too)")
	fs.Uint64Var(&c.killAfter, "kill-self-after", 0, "producer: SIGKILL itself after committing message K")
	fs.BoolVar(&c.allowTruncated, "allow-truncated", false, "consumer: a stream that stops early is OK")
	fs.StringVar(&c.socket, "socket", "", "through shmbusd's socket instead of --prefix")
	fs.BoolVar(&c.presentSchema, "present-schema", false, "present the compiled schema at open")
	fs.BoolVar(&c.earliest, "earliest", false, "consumer: start from the oldest message a durable topic's log retains")
	fs.BoolVar(&c.waitDurable, "wait-durable", false, "producer: wait until sequence start+count-1 is durable (one producer on the topic: the sequence is the message number)")
	if err := fs.Parse(args[1:]); err != nil {
		return c, err
	}
	c.timeout = time.Duration(*timeoutMs) * time.Millisecond
	if c.topic == "" || (c.schema != "quote" && c.schema != "order") || (c.version != 1 && c.version != 2) {
		return c, errors.New("need --topic, --schema quote|order, --schema-version 1|2")
	}
	return c, nil
}

func main() {
	if len(os.Args) >= 2 && (os.Args[1] == "bench-consume" || os.Args[1] == "bench-produce") {
		os.Exit(benchMain(os.Args[1], os.Args[2:])) // bench.go: bench/lang/run.sh
	}
	if len(os.Args) >= 2 && (os.Args[1] == "respond" || os.Args[1] == "request") {
		os.Exit(rrMain(os.Args[1], os.Args[2:])) // rr.go: request/response
	}
	if len(os.Args) < 2 || (os.Args[1] != "consume" && os.Args[1] != "produce" && os.Args[1] != "schema-open") {
		fmt.Fprintln(os.Stderr, "usage: xlang consume|produce --prefix P --topic T --count N --schema quote|order ...")
		os.Exit(64)
	}
	c, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(64)
	}
	if os.Args[1] == "produce" {
		os.Exit(produce(c))
	}
	if os.Args[1] == "schema-open" {
		c.presentSchema = true
		os.Exit(schemaOpen(c))
	}
	os.Exit(consume(c))
}

func ensureTopic(bus *shmbus.Bus, c config) error {
	if _, err := bus.DescribeTopic(c.topic); err == nil {
		return nil
	}
	err := bus.CreateTopic(c.topic, shmbus.TopicConfig{Capacity: c.capacity, Policy: shmbus.PolicyBlock})
	if errors.Is(err, shmbus.ErrAlreadyExists) {
		return nil // created meanwhile by the peer with its own settings
	}
	return err
}

// ---- deterministic content ---------------------------------------------------

const px0 = 10000000000

func venue(i uint64) string {
	if i%2 == 0 {
		return "XNAS"
	}
	return "XNYS"
}

func side(i uint64) uint16 {
	if i%2 == 0 {
		return uint16(market.Side_buy)
	}
	return uint16(market.Side_sell)
}

func account(i uint64) string { return "acct-" + strconv.FormatUint(i%10, 10) }

func build(c config, seg *capnp.Segment, i uint64) error {
	switch {
	case c.schema == "quote" && c.version == 1:
		q, err := market.NewRootQuote(seg)
		if err != nil {
			return err
		}
		q.SetInstrumentId(uint32(i % 1000))
		q.SetBidPx(int64(px0 + i))
		q.SetAskPx(int64(px0 + i + 100))
		q.SetBidQty(uint32(i%500 + 1))
		q.SetAskQty(uint32(i%700 + 1))
		q.SetExchangeTsNs(i * 1000)
		q.SetSeq(i)
		return nil
	case c.schema == "quote":
		q, err := marketv2.NewRootQuote(seg)
		if err != nil {
			return err
		}
		q.SetInstrumentId(uint32(i % 1000))
		q.SetBidPx(int64(px0 + i))
		q.SetAskPx(int64(px0 + i + 100))
		q.SetBidQty(uint32(i%500 + 1))
		q.SetAskQty(uint32(i%700 + 1))
		q.SetExchangeTsNs(i * 1000)
		q.SetSeq(i)
		q.SetMidPx(int64(px0 + i + 50))
		return q.SetVenue(venue(i))
	case c.version == 1:
		o, err := market.NewRootOrder(seg)
		if err != nil {
			return err
		}
		o.SetOrderId(i)
		o.SetInstrumentId(uint32(i % 1000))
		o.SetSide(market.Side(side(i)))
		o.SetPx(int64(px0 + i))
		o.SetQty(uint32(i%100 + 1))
		o.SetQuoteSeq(i)
		o.SetQuoteTsNs(i * 7)
		return o.SetAccount(account(i))
	default:
		o, err := marketv2.NewRootOrder(seg)
		if err != nil {
			return err
		}
		o.SetOrderId(i)
		o.SetInstrumentId(uint32(i % 1000))
		o.SetSide(marketv2.Side(side(i)))
		o.SetPx(int64(px0 + i))
		o.SetQty(uint32(i%100 + 1))
		o.SetQuoteSeq(i)
		o.SetQuoteTsNs(i * 7)
		o.SetClientTag(uint32(i % 65536))
		return o.SetAccount(account(i))
	}
}

func schemaID(c config) uint64 {
	switch {
	case c.schema == "quote" && c.version == 1:
		return market.Quote_TypeID
	case c.schema == "quote":
		return marketv2.Quote_TypeID
	case c.version == 1:
		return market.Order_TypeID
	default:
		return marketv2.Order_TypeID
	}
}

// openBus: through shmbusd with --socket, else direct on --prefix.
func openBus(c config) (*shmbus.Bus, error) {
	if c.socket != "" {
		return shmbus.Connect(context.Background(), shmbus.ConnectOptions{SocketPath: c.socket})
	}
	return shmbus.OpenDirect(c.prefix)
}

// ownSchema: the compiled schema of what this run sends or reads (--present-schema).
func ownSchema(c config) (*shmbus.Schema, error) {
	if !c.presentSchema {
		return nil, nil
	}
	switch {
	case c.schema == "quote" && c.version == 1:
		return shmbus.SchemaOf(market.RegisterSchema, market.Quote_TypeID)
	case c.schema == "quote":
		return shmbus.SchemaOf(marketv2.RegisterSchema, marketv2.Quote_TypeID)
	case c.version == 1:
		return shmbus.SchemaOf(market.RegisterSchema, market.Order_TypeID)
	}
	return shmbus.SchemaOf(marketv2.RegisterSchema, marketv2.Order_TypeID)
}

// schemaOpen opens a publisher and a subscriber presenting the compiled schema and
// prints what each did.
func schemaOpen(c config) int {
	bus, err := openBus(c)
	if err != nil {
		fmt.Printf("FAIL open: %v\n", err)
		return 1
	}
	defer bus.Close()
	s, err := ownSchema(c)
	if err != nil {
		fmt.Printf("FAIL schema: %v\n", err)
		return 1
	}
	if pub, err := bus.Publisher(c.topic, &shmbus.PublisherOptions{Schema: s, OpenTimeout: 10 * time.Second}); err != nil {
		fmt.Printf("PUBLISHER refused: %v\n", err)
	} else {
		pub.Close()
		fmt.Println("PUBLISHER ok")
	}
	if sub, err := bus.Subscriber(c.topic, &shmbus.SubscriberOptions{Schema: s, OpenTimeout: 10 * time.Second}); err != nil {
		fmt.Printf("SUBSCRIBER refused: %v\n", err)
	} else {
		sub.Close()
		fmt.Println("SUBSCRIBER ok")
	}
	return 0
}

func produce(c config) int {
	bus, err := openBus(c)
	if err != nil {
		fmt.Printf("FAIL open: %v\n", err)
		return 1
	}
	defer bus.Close()
	if c.create {
		if err := ensureTopic(bus, c); err != nil {
			fmt.Printf("FAIL create: %v\n", err)
			return 1
		}
	}
	schema, err := ownSchema(c)
	if err != nil {
		fmt.Printf("FAIL schema: %v\n", err)
		return 1
	}
	pub, err := bus.Publisher(c.topic, &shmbus.PublisherOptions{BlockTimeout: 30 * time.Second, OpenTimeout: 10 * time.Second, Schema: schema})
	if err != nil {
		fmt.Printf("FAIL publisher: %v\n", err)
		return 1
	}
	defer pub.Close()
	ctx := context.Background()
	id := schemaID(c)
	for i := c.start; i < c.start+c.count; i++ {
		if err := pub.Publish(ctx, 256, i, id, func(seg *capnp.Segment) error { return build(c, seg, i) }); err != nil {
			fmt.Printf("FAIL publish %d: %v\n", i, err)
			return 1
		}
		if c.killAfter != 0 && i-c.start+1 == c.killAfter {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
	if c.waitDurable {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := pub.WaitDurable(wctx, c.start+c.count-1)
		cancel()
		if err != nil {
			fmt.Printf("FAIL wait durable %d: %v\n", c.start+c.count-1, err)
			return 1
		}
	}
	st, _ := pub.Stats()
	fmt.Printf("OK published=%d fallbacks=%d\n", c.count, st.BuilderFallbacks)
	return 0
}

// ---- consumer ------------------------------------------------------------------

func check(c config, msg *capnp.Message, v *shmbus.View, i uint64) error {
	v2msg := v.SchemaID == marketv2.Quote_TypeID || v.SchemaID == marketv2.Order_TypeID
	var want uint64
	if c.schema == "quote" {
		want = market.Quote_TypeID
		if v2msg {
			want = marketv2.Quote_TypeID
		}
	} else {
		want = market.Order_TypeID
		if v2msg {
			want = marketv2.Order_TypeID
		}
	}
	if v.SchemaID != want {
		return fmt.Errorf("schema id %x at %d", v.SchemaID, i)
	}
	bad := func(field string, got, exp any) error {
		return fmt.Errorf("seq %d field %s: got %v want %v", i, field, got, exp)
	}
	switch {
	case c.schema == "quote":
		// v2 is a superset with the same layout for v1's fields: read through the
		// consumer's version and check the added fields only on version 2.
		q, err := marketv2.ReadRootQuote(msg)
		if c.version == 1 {
			q1, err1 := market.ReadRootQuote(msg)
			if err1 != nil {
				return err1
			}
			q, err = marketv2.Quote(q1), nil
		}
		if err != nil {
			return err
		}
		switch {
		case q.InstrumentId() != uint32(i%1000):
			return bad("instrumentId", q.InstrumentId(), i%1000)
		case q.BidPx() != int64(px0+i):
			return bad("bidPx", q.BidPx(), px0+i)
		case q.AskPx() != int64(px0+i+100):
			return bad("askPx", q.AskPx(), px0+i+100)
		case q.BidQty() != uint32(i%500+1):
			return bad("bidQty", q.BidQty(), i%500+1)
		case q.AskQty() != uint32(i%700+1):
			return bad("askQty", q.AskQty(), i%700+1)
		case q.ExchangeTsNs() != i*1000:
			return bad("exchangeTsNs", q.ExchangeTsNs(), i*1000)
		case q.Seq() != i:
			return bad("seq", q.Seq(), i)
		}
		if c.version == 2 {
			wantVenue, wantMid := "", int64(0)
			if v2msg {
				wantVenue, wantMid = venue(i), int64(px0+i+50)
			}
			got, err := q.Venue()
			if err != nil || got != wantVenue {
				return bad("venue", got, wantVenue)
			}
			if q.MidPx() != wantMid {
				return bad("midPx", q.MidPx(), wantMid)
			}
		}
	default:
		o, err := marketv2.ReadRootOrder(msg)
		if c.version == 1 {
			o1, err1 := market.ReadRootOrder(msg)
			if err1 != nil {
				return err1
			}
			o, err = marketv2.Order(o1), nil
		}
		if err != nil {
			return err
		}
		acct, err := o.Account()
		switch {
		case err != nil:
			return err
		case o.OrderId() != i:
			return bad("orderId", o.OrderId(), i)
		case o.InstrumentId() != uint32(i%1000):
			return bad("instrumentId", o.InstrumentId(), i%1000)
		case uint16(o.Side()) != side(i):
			return bad("side", o.Side(), side(i))
		case o.Px() != int64(px0+i):
			return bad("px", o.Px(), px0+i)
		case o.Qty() != uint32(i%100+1):
			return bad("qty", o.Qty(), i%100+1)
		case o.QuoteSeq() != i:
			return bad("quoteSeq", o.QuoteSeq(), i)
		case o.QuoteTsNs() != i*7:
			return bad("quoteTsNs", o.QuoteTsNs(), i*7)
		case acct != account(i):
			return bad("account", acct, account(i))
		}
		if c.version == 2 {
			want := uint32(0)
			if v2msg {
				want = uint32(i % 65536)
			}
			if o.ClientTag() != want {
				return bad("clientTag", o.ClientTag(), want)
			}
		}
	}
	return nil
}

func consume(c config) int {
	bus, err := openBus(c)
	if err != nil {
		fmt.Printf("FAIL open: %v\n", err)
		return 1
	}
	defer bus.Close()
	if err := ensureTopic(bus, c); err != nil {
		fmt.Printf("FAIL create: %v\n", err)
		return 1
	}
	schema, err := ownSchema(c)
	if err != nil {
		fmt.Printf("FAIL schema: %v\n", err)
		return 1
	}
	so := &shmbus.SubscriberOptions{OpenTimeout: 10 * time.Second, Schema: schema}
	if c.earliest {
		so.Start = shmbus.StartEarliest()
	}
	sub, err := bus.Subscriber(c.topic, so)
	if err != nil {
		fmt.Printf("FAIL subscriber: %v\n", err)
		return 1
	}
	defer sub.Close()
	fmt.Println("READY")
	os.Stdout.Sync()

	views := make([]shmbus.View, 256)
	var r shmbus.Reader
	var received uint64
	next := c.start // dense from --start (default 1)
	for received < c.count {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		k, err := sub.PollBatch(ctx, views)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			if c.allowTruncated && received > 0 {
				fmt.Printf("OK received=%d\n", received)
				return 0
			}
			fmt.Printf("FAIL timeout received=%d\n", received)
			return 2
		}
		if err != nil {
			fmt.Printf("FAIL poll after %d: %v\n", received, err)
			return 1
		}
		for j := 0; j < k && received < c.count; j++ {
			v := &views[j]
			if v.MessageID != next {
				fmt.Printf("FAIL order: message_id %d, want %d\n", v.MessageID, next)
				return 1
			}
			msg, err := r.Read(v)
			if err == nil {
				err = check(c, msg, v, next)
			}
			if err != nil {
				fmt.Printf("FAIL %v\n", err)
				return 1
			}
			next++
			received++
		}
		if err := sub.ReleaseAll(); err != nil {
			fmt.Printf("FAIL release: %v\n", err)
			return 1
		}
	}
	fmt.Printf("OK received=%d\n", received)
	return 0
}
