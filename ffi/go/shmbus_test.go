package shmbus_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

var prefix = fmt.Sprintf("shmbus-gotest-%d", os.Getpid())

// newTopic opens a direct bus and creates a fresh topic, removed at the end.
func newTopic(t *testing.T, cfg shmbus.TopicConfig) (*shmbus.Bus, string) {
	t.Helper()
	bus, err := shmbus.OpenDirect(prefix)
	if err != nil {
		t.Fatalf("OpenDirect: %v", err)
	}
	topic := "go." + strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	if err := bus.CreateTopic(topic, cfg); err != nil {
		t.Fatalf("CreateTopic: %v", err)
	}
	t.Cleanup(func() {
		bus.RemoveTopic(topic)
		bus.Close()
	})
	return bus, topic
}

func openPair(t *testing.T, bus *shmbus.Bus, topic string, po *shmbus.PublisherOptions, so *shmbus.SubscriberOptions) (*shmbus.Publisher, *shmbus.Subscriber) {
	t.Helper()
	sub, err := bus.Subscriber(topic, so)
	if err != nil {
		t.Fatalf("Subscriber: %v", err)
	}
	pub, err := bus.Publisher(topic, po)
	if err != nil {
		t.Fatalf("Publisher: %v", err)
	}
	t.Cleanup(func() {
		pub.Close()
		sub.Close()
	})
	return pub, sub
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestErrorsAreValuesMatchedByCode(t *testing.T) {
	_, err := shmbus.OpenDirect("bad/prefix")
	if !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
	var e *shmbus.Error
	if !errors.As(err, &e) || e.Code != shmbus.CodeInvalidArgument || !strings.Contains(e.Msg, "prefix") {
		t.Fatalf("want a detailed *Error, got %#v", err)
	}
	if errors.Is(err, shmbus.ErrNotFound) {
		t.Fatal("an invalid-argument error matched ErrNotFound")
	}
	if _, err := shmbus.Connect(context.Background(), shmbus.ConnectOptions{SocketPath: "/nonexistent.sock"}); !errors.Is(err, shmbus.ErrNotConnected) {
		t.Fatalf("Connect: want ErrNotConnected, got %v", err)
	}
	// Unsupported until the embedded daemon is in libshmbus_c; then it must work.
	if b, err := shmbus.OpenEmbedded(""); err == nil {
		b.Close()
	} else if !errors.Is(err, shmbus.ErrUnsupported) {
		t.Fatalf("OpenEmbedded: want ErrUnsupported or a bus, got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := shmbus.Connect(ctx, shmbus.ConnectOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect with a cancelled context: %v", err)
	}
	os := &shmbus.Error{Code: -int(syscall.EIO), Msg: "io"}
	if !errors.Is(os, syscall.EIO) {
		t.Fatal("an OS error does not unwrap to its errno")
	}
	if shmbus.LibraryABIVersion() != shmbus.ABIVersion {
		t.Fatalf("library ABI %d, binding %d", shmbus.LibraryABIVersion(), shmbus.ABIVersion)
	}
}

func TestTopicsCanBeCreatedDescribedAndRemoved(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16, Partitions: 2, Policy: shmbus.PolicyFail, SchemaID: 42})
	cfg, err := bus.DescribeTopic(topic)
	if err != nil {
		t.Fatal(err)
	}
	want := shmbus.TopicConfig{Partitions: 2, Capacity: 1 << 16, MaxPayload: 1 << 14, Policy: shmbus.PolicyFail,
		Slots: 64, Mode: 0o660, SchemaID: 42}
	if cfg != want {
		t.Fatalf("describe: got %+v, want %+v", cfg, want)
	}
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 16, Partitions: 2, Policy: shmbus.PolicyFail, SchemaID: 42}); err != nil {
		t.Fatalf("create is not idempotent: %v", err)
	}
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 17}); !errors.Is(err, shmbus.ErrAlreadyExists) {
		t.Fatalf("other settings: want ErrAlreadyExists, got %v", err)
	}
	if err := bus.CreateTopic("x.y", shmbus.TopicConfig{Capacity: 1000}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("bad capacity: want ErrInvalidArgument, got %v", err)
	}
	if err := bus.RemoveTopic(topic); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.DescribeTopic(topic); !errors.Is(err, shmbus.ErrNotFound) {
		t.Fatalf("removed topic: want ErrNotFound, got %v", err)
	}
	if _, err := bus.Publisher(topic, nil); !errors.Is(err, shmbus.ErrNotFound) {
		t.Fatalf("publisher on a missing topic: want ErrNotFound, got %v", err)
	}
	bus.Close()
	if err := bus.CreateTopic("a.b", shmbus.TopicConfig{}); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("closed bus: want ErrClosed, got %v", err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal("second Close failed")
	}
}

func TestClaimCommitPollReleaseRoundTrip(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	if _, err := bus.Publisher(topic, nil); !errors.Is(err, shmbus.ErrAlreadyExists) {
		t.Fatalf("second publisher on a single-producer topic: %v", err)
	}
	if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("want ErrEmpty, got %v", err)
	}
	buf, err := pub.Claim(ctx, 11)
	if err != nil {
		t.Fatal(err)
	}
	if len(buf) < 11 || !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatalf("claim is not zeroed memory of >= 11 bytes: %d", len(buf))
	}
	copy(buf, "hello, ring")
	if err := pub.Commit(11, 7, 9); err != nil {
		t.Fatal(err)
	}
	if err := pub.Commit(1, 0, 0); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("commit without a claim: want ErrClosed, got %v", err)
	}
	v, err := sub.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(v.Data) != "hello, ring" || v.MessageID != 7 || v.SchemaID != 9 || v.Sequence != 1 ||
		v.ProducerID != uint32(os.Getpid()) || v.TimestampNs == 0 {
		t.Fatalf("view: %+v", v)
	}
	if err := sub.Release(&v); err != nil {
		t.Fatal(err)
	}
	bogus := v
	bogus.NextPosition += 1 << 20
	if err := sub.Release(&bogus); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("release of a view never polled: %v", err)
	}
	if err := sub.Release(&shmbus.View{}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("release of a zero view: %v", err)
	}
	// Abort: readers skip it.
	if _, err := pub.TryClaim(64); err != nil {
		t.Fatal(err)
	}
	if err := pub.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := pub.Abort(); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("abort without a claim: %v", err)
	}
	if _, err := pub.Claim(ctx, pub.MaxPayload()+1); !errors.Is(err, shmbus.ErrTooLarge) {
		t.Fatalf("claim beyond max payload: %v", err)
	}
	if err := pub.Offer(ctx, []byte("copied"), 1, 2); err != nil {
		t.Fatal(err)
	}
	v, err = sub.Poll(ctx)
	if err != nil || string(v.Data) != "copied" || v.Sequence != 2 {
		t.Fatalf("after abort: %+v %v (an aborted claim takes no sequence)", v, err)
	}
	if err := sub.ReleaseAll(); err != nil {
		t.Fatal(err)
	}
	st, err := sub.Stats()
	if err != nil || st.Received != 2 || st.Corrupt != 0 {
		t.Fatalf("stats %+v %v", st, err)
	}
}

func quoteFields(i uint64) (uint32, int64, int64, uint32, uint32, uint64) {
	return uint32(i % 1000), int64(10000000000 + i), int64(10000000000 + i + 100), uint32(i%500 + 1), uint32(i%700 + 1), i * 1000
}

func buildQuote(seg *capnp.Segment, i uint64) error {
	q, err := market.NewRootQuote(seg)
	if err != nil {
		return err
	}
	inst, bid, ask, bq, aq, ts := quoteFields(i)
	q.SetInstrumentId(inst)
	q.SetBidPx(bid)
	q.SetAskPx(ask)
	q.SetBidQty(bq)
	q.SetAskQty(aq)
	q.SetExchangeTsNs(ts)
	q.SetSeq(i)
	return nil
}

func checkQuote(t *testing.T, r *shmbus.Reader, v *shmbus.View, i uint64) {
	t.Helper()
	msg, err := r.Read(v)
	if err != nil {
		t.Fatalf("read %d: %v", i, err)
	}
	q, err := market.ReadRootQuote(msg)
	if err != nil {
		t.Fatalf("root %d: %v", i, err)
	}
	inst, bid, ask, bq, aq, ts := quoteFields(i)
	if q.InstrumentId() != inst || q.BidPx() != bid || q.AskPx() != ask || q.BidQty() != bq ||
		q.AskQty() != aq || q.ExchangeTsNs() != ts || q.Seq() != i || v.MessageID != i ||
		v.SchemaID != market.Quote_TypeID {
		t.Fatalf("quote %d differs: %v (view %+v)", i, q, v)
	}
}

func within(p unsafe.Pointer, b []byte) bool {
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return uintptr(p) >= base && uintptr(p) < base+uintptr(len(b))
}

func TestQuoteIsBuiltAndReadInRingMemoryWithoutCopy(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, sub := openPair(t, bus, topic, &shmbus.PublisherOptions{DisablePipelining: true}, nil)
	ctx := ctxT(t)
	// Raw claim: the builder's segment is the claimed bytes past the table.
	msg, seg, err := pub.ClaimMessage(ctx, 128)
	if err != nil {
		t.Fatal(err)
	}
	if err := buildQuote(seg, 5); err != nil {
		t.Fatal(err)
	}
	if msg.NumSegments() != 1 || len(seg.Data()) == 0 {
		t.Fatal("the message left its single ring segment")
	}
	claimed := pub.ClaimedBytes()
	if unsafe.Pointer(unsafe.SliceData(seg.Data())) != unsafe.Pointer(&claimed[8]) {
		t.Fatal("the builder's segment is not the claimed ring memory past the table")
	}
	if err := pub.CommitMessage(5, market.Quote_TypeID); err != nil {
		t.Fatal(err)
	}
	if err := pub.CommitMessage(5, 0); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("second commit: %v", err)
	}
	v, err := sub.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The payload the subscriber sees starts 8 bytes (the table) before the
	// segment the publisher built in: same ring bytes, mapped twice.
	if len(v.Data) != 8+8+6*8 {
		t.Fatalf("payload %d bytes, want table + root pointer + 6 data words", len(v.Data))
	}
	var r shmbus.Reader
	checkQuote(t, &r, &v, 5)
	m, _ := r.Read(&v)
	s0, _ := m.Segment(0)
	if !within(unsafe.Pointer(unsafe.SliceData(s0.Data())), v.Data) {
		t.Fatal("the reader's segment is not the view's ring bytes")
	}
	if err := sub.Release(&v); err != nil {
		t.Fatal(err)
	}
	st, _ := pub.Stats()
	if st.Published != 1 || st.BuilderFallbacks != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPublishFallsBackToACopyWhenTheMessageOutgrowsItsClaim(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	long := strings.Repeat("account-", 40)
	build := func(seg *capnp.Segment) error {
		o, err := market.NewRootOrder(seg)
		if err != nil {
			return err
		}
		o.SetOrderId(99)
		o.SetSide(market.Side_sell)
		return o.SetAccount(long)
	}
	if err := pub.Publish(ctx, 64, 99, market.Order_TypeID, build); err != nil {
		t.Fatal(err)
	}
	st, _ := pub.Stats()
	if st.BuilderFallbacks != 1 || st.Published != 1 {
		t.Fatalf("want one counted fallback, stats %+v", st)
	}
	v, err := sub.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := v.Message()
	if err != nil {
		t.Fatal(err)
	}
	o, err := market.ReadRootOrder(msg)
	if err != nil {
		t.Fatal(err)
	}
	acct, _ := o.Account()
	if o.OrderId() != 99 || o.Side() != market.Side_sell || acct != long {
		t.Fatalf("order %v", o)
	}
	// A build error that is not about room is returned as is.
	boom := errors.New("boom")
	if err := pub.Publish(ctx, 64, 1, 0, func(*capnp.Segment) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("build error: %v", err)
	}
	// And the next message is in place again.
	if err := pub.Publish(ctx, 128, 2, market.Quote_TypeID, func(s *capnp.Segment) error { return buildQuote(s, 2) }); err != nil {
		t.Fatal(err)
	}
	if st, _ := pub.Stats(); st.BuilderFallbacks != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPipelinedPublishDeliversEveryMessageInOrder(t *testing.T) {
	const n = 20000
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	errc := make(chan error, 1)
	go func() {
		for i := uint64(1); i <= n; i++ {
			if err := pub.Publish(ctx, 128, i, market.Quote_TypeID, func(s *capnp.Segment) error { return buildQuote(s, i) }); err != nil {
				errc <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
		}
		errc <- nil
	}()
	views := make([]shmbus.View, 64)
	var r shmbus.Reader
	next := uint64(1)
	for next <= n {
		k, err := sub.PollBatch(ctx, views)
		if err != nil {
			t.Fatalf("poll batch at %d: %v", next, err)
		}
		for i := 0; i < k; i++ {
			checkQuote(t, &r, &views[i], next)
			next++
		}
		if err := sub.Release(&views[k-1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	st, _ := pub.Stats()
	if st.Published != n || st.BuilderFallbacks != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestOfferPackedAndPollBatch(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	pub, sub := openPair(t, bus, topic, nil, &shmbus.SubscriberOptions{BatchSize: 4})
	ctx := ctxT(t)
	var buf []byte
	var lens []uint32
	for i := 0; i < 10; i++ {
		m := bytes.Repeat([]byte{byte('a' + i)}, i+1)
		buf = append(buf, m...)
		lens = append(lens, uint32(len(m)))
	}
	k, err := pub.OfferPacked(ctx, buf, lens)
	if err != nil || k != 10 {
		t.Fatalf("OfferPacked: %d %v", k, err)
	}
	if _, err := pub.OfferPacked(ctx, buf[:3], lens); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("short buffer: %v", err)
	}
	views := make([]shmbus.View, 8)
	got := 0
	for got < 10 {
		k, err := sub.PollBatch(ctx, views)
		if err != nil {
			t.Fatal(err)
		}
		if k > 4 {
			t.Fatalf("batch of %d exceeds BatchSize 4", k)
		}
		for i := 0; i < k; i++ {
			want := bytes.Repeat([]byte{byte('a' + got)}, got+1)
			if !bytes.Equal(views[i].Data, want) {
				t.Fatalf("message %d: %q", got, views[i].Data)
			}
			got++
		}
		if err := sub.ReleaseAll(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sub.TryPollBatch(views); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("want ErrEmpty, got %v", err)
	}
}

func TestPolicyFailReportsBackPressure(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 12, Policy: shmbus.PolicyFail})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	payload := make([]byte, 512)
	var err error
	sent := 0
	for ; sent < 100; sent++ {
		if err = pub.Offer(ctx, payload, 0, 0); err != nil {
			break
		}
	}
	if !errors.Is(err, shmbus.ErrBackPressured) || sent == 0 || sent == 100 {
		t.Fatalf("after %d offers: %v", sent, err)
	}
	// Draining the ring makes room again.
	views := make([]shmbus.View, 100)
	k, err := sub.TryPollBatch(views)
	if err != nil || k != sent {
		t.Fatalf("drained %d of %d: %v", k, sent, err)
	}
	sub.ReleaseAll()
	if err := pub.Offer(ctx, payload, 0, 0); err != nil {
		t.Fatal(err)
	}
	st, _ := pub.Stats()
	if st.BackPressured == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func fillRing(t *testing.T, ctx context.Context, pub *shmbus.Publisher) {
	t.Helper()
	payload := make([]byte, 512)
	for i := 0; ; i++ {
		if _, err := pub.TryClaim(len(payload)); err != nil {
			if !errors.Is(err, shmbus.ErrBackPressured) {
				t.Fatal(err)
			}
			return
		}
		if err := pub.Commit(len(payload), 0, 0); err != nil {
			t.Fatal(err)
		}
		if i > 100 {
			t.Fatal("the ring never filled")
		}
	}
}

func TestPolicyBlockWaitsBoundedByTimeoutAndContext(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 12})
	pub, _ := openPair(t, bus, topic, &shmbus.PublisherOptions{BlockTimeout: 5 * time.Millisecond}, nil)
	ctx := ctxT(t)
	fillRing(t, ctx, pub)
	if _, err := pub.Claim(ctx, 512); !errors.Is(err, shmbus.ErrBackPressured) {
		t.Fatalf("block timeout: want ErrBackPressured, got %v", err)
	}
	pub.Close()

	pub2, err := bus.Publisher(topic, &shmbus.PublisherOptions{BlockTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub2.Close()
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := pub2.Claim(short, 512); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("context deadline: want DeadlineExceeded, got %v", err)
	}
	cancelled, cancel2 := context.WithCancel(ctx)
	cancel2()
	if err := pub2.Offer(cancelled, make([]byte, 512), 0, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: want Canceled, got %v", err)
	}
}

// A cancelled context ends a Claim, an Offer or a Poll blocked in the C library at
// once (the wait is interrupted, not sliced): median under 10 ms over 21 cancels
// each, none over 2 s. The waits have no timeout of their own (BlockTimeout -1,
// Background-derived contexts without deadline): an interrupt that is lost hangs.
func TestCancelledContextEndsABlockedWaitAtOnce(t *testing.T) {
	for _, ws := range waitStrategies {
		t.Run(ws.name, func(t *testing.T) {
			bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 12})
			pub, _ := openPair(t, bus, topic, &shmbus.PublisherOptions{BlockTimeout: -1, Wait: ws.w}, nil)
			fillRing(t, ctxT(t), pub)
			topic2 := topic + ".poll"
			if err := bus.CreateTopic(topic2, shmbus.TopicConfig{Capacity: 1 << 12}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { bus.RemoveTopic(topic2) })
			_, sub := openPair(t, bus, topic2, nil, &shmbus.SubscriberOptions{Wait: ws.w})
			calls := []struct {
				name string
				call func(context.Context) error
			}{
				{"Claim", func(c context.Context) error { _, err := pub.Claim(c, 512); return err }},
				{"Offer", func(c context.Context) error { return pub.Offer(c, make([]byte, 512), 0, 0) }},
				{"Poll", func(c context.Context) error { _, err := sub.Poll(c); return err }},
				{"PollBatch", func(c context.Context) error { _, err := sub.PollBatch(c, make([]shmbus.View, 4)); return err }},
				// Nothing archives this topic: the sequence never becomes durable.
				{"WaitDurable", func(c context.Context) error { return pub.WaitDurable(c, 1<<40) }},
			}
			for _, tc := range calls {
				lat := make([]time.Duration, 0, 21)
				for i := 0; i < 21; i++ {
					ctx, cancel := context.WithCancel(context.Background())
					started := make(chan struct{})
					errc := make(chan error, 1)
					go func() {
						close(started)
						errc <- tc.call(ctx)
					}()
					<-started
					// Give the call time to reach its wait (when it has not, it sees the
					// cancelled context first: still a pass, and the median shows it).
					time.Sleep(2 * time.Millisecond)
					t0 := time.Now()
					cancel()
					select {
					case err := <-errc:
						lat = append(lat, time.Since(t0))
						if !errors.Is(err, context.Canceled) {
							t.Fatalf("%s: want context.Canceled, got %v", tc.name, err)
						}
					case <-time.After(2 * time.Second):
						t.Fatalf("%s: still blocked 2 s after its context was cancelled", tc.name)
					}
				}
				sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
				t.Logf("%s: cancel to return median %v, max %v", tc.name, lat[len(lat)/2], lat[len(lat)-1])
				if lat[len(lat)/2] > 10*time.Millisecond {
					t.Errorf("%s: median cancel latency %v, want under 10 ms", tc.name, lat[len(lat)/2])
				}
			}
			// Close from another goroutine ends a Claim blocked without any deadline.
			errc := make(chan error, 1)
			go func() { _, err := pub.Claim(context.Background(), 512); errc <- err }()
			time.Sleep(2 * time.Millisecond)
			pub.Close()
			select {
			case err := <-errc:
				if !errors.Is(err, shmbus.ErrClosed) {
					t.Fatalf("claim after close: want ErrClosed, got %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("Close did not end a blocked Claim")
			}

		})
	}
}

// A consumer opened with SubscriberContext and then cancelled without Close (the
// forgotten-Close bug) frees its tethered cursor: the producer, which it would
// otherwise hold back for good on a full ring, publishes on.
func TestSubscriberContextClosesWhenItsContextEnds(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 12})
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := bus.SubscriberContext(ctx, topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{BlockTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	fillRing(t, ctxT(t), pub) // the ring is full: the cursor of sub holds the producer
	polled := make(chan error, 1)
	go func() { _, err := sub.Poll(context.Background()); polled <- err }()
	cancel() // and sub.Close() is never called
	errc := make(chan error, 1)
	go func() { errc <- pub.Offer(context.Background(), make([]byte, 512), 0, 0) }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("offer after the consumer's context ended: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled consumer still holds the producer back")
	}
	if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("TryPoll after the context ended: want ErrClosed, got %v", err)
	}
	// Its Poll may have read a message before the close: either way it ends.
	select {
	case <-polled:
	case <-time.After(10 * time.Second):
		t.Fatal("a Poll of the cancelled consumer is still blocked")
	}
	if _, err := bus.SubscriberContext(ctx, topic, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("SubscriberContext with an ended context: want Canceled, got %v", err)
	}
}

// Every wait strategy: the spinning ones wait in slices (spin.go) that must still
// end at the deadline and at Close.
var waitStrategies = []struct {
	name string
	w    shmbus.WaitStrategy
}{{"default", shmbus.WaitDefault}, {"busy-spin", shmbus.WaitBusySpin}, {"spin-yield", shmbus.WaitSpinYield}, {"futex", shmbus.WaitFutex}}

func TestPollHonoursContextAndClose(t *testing.T) {
	for _, ws := range waitStrategies {
		t.Run(ws.name, func(t *testing.T) {
			bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 12})
			_, sub := openPair(t, bus, topic, nil, &shmbus.SubscriberOptions{Wait: ws.w})
			short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			if v, err := sub.Poll(short); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("want DeadlineExceeded, got %v (%+v)", err, v)
			}
			if _, err := sub.PollBatch(short, make([]shmbus.View, 4)); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("batch: want DeadlineExceeded, got %v", err)
			}
			// Close from another goroutine ends a Poll blocked without a deadline.
			done := make(chan error, 1)
			go func() {
				_, err := sub.Poll(context.Background())
				done <- err
			}()
			sub.Close()
			if err := <-done; !errors.Is(err, shmbus.ErrClosed) {
				t.Fatalf("poll after close: want ErrClosed, got %v", err)
			}
			if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrClosed) {
				t.Fatalf("want ErrClosed, got %v", err)
			}
			if err := sub.Close(); err != nil {
				t.Fatal(err)
			}

		})
	}
}

func TestClosedPublisherRefusesEverythingAndFreesThePartition(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 12})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	if _, _, err := pub.ClaimMessage(ctx, 64); err != nil {
		t.Fatal(err)
	}
	pub.Close()
	if _, err := pub.Claim(ctx, 8); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
	if err := pub.Offer(ctx, []byte("x"), 0, 0); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
	if _, err := pub.Stats(); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
	// The claim open at Close was aborted; a new publisher may take over.
	pub2, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub2.Close()
	if err := pub2.Offer(ctx, []byte("next"), 0, 0); err != nil {
		t.Fatal(err)
	}
	v, err := sub.Poll(ctx)
	if err != nil || string(v.Data) != "next" {
		t.Fatalf("%q %v", v.Data, err)
	}
}

func TestConcurrentProducerAndConsumers(t *testing.T) {
	const n = 50000
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 15})
	ctx := ctxT(t)
	var subs []*shmbus.Subscriber
	for i := 0; i < 2; i++ {
		s, err := bus.Subscriber(topic, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		subs = append(subs, s)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for _, s := range subs {
		wg.Add(1)
		go func(s *shmbus.Subscriber) {
			defer wg.Done()
			var r shmbus.Reader
			views := make([]shmbus.View, 32)
			for next := uint64(1); next <= n; {
				k, err := s.PollBatch(ctx, views)
				if err != nil {
					errs <- err
					return
				}
				for i := 0; i < k; i++ {
					msg, err := r.Read(&views[i])
					if err != nil {
						errs <- err
						return
					}
					q, err := market.ReadRootQuote(msg)
					if err != nil || q.Seq() != next || views[i].Sequence != next {
						errs <- fmt.Errorf("want seq %d, got %d/%d (%v)", next, q.Seq(), views[i].Sequence, err)
						return
					}
					next++
				}
				s.ReleaseAll()
			}
		}(s)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); i <= n; i++ {
			if err := pub.Publish(ctx, 128, i, market.Quote_TypeID, func(s *capnp.Segment) error { return buildQuote(s, i) }); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestMalformedPayloadsAreRejected(t *testing.T) {
	var r shmbus.Reader
	for _, b := range [][]byte{
		nil,
		make([]byte, 7),
		{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0}, // 2^32 segments
		{0, 0, 0, 0, 2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, // 2 words claimed, 1 present
	} {
		v := shmbus.View{Data: b}
		if _, err := r.Read(&v); !errors.Is(err, shmbus.ErrMalformed) {
			t.Fatalf("%x: want ErrMalformed, got %v", b, err)
		}
	}
	// A root pointer to a far-away struct: the bounds check refuses it on read.
	b := []byte{0, 0, 0, 0, 1, 0, 0, 0, 0xfc, 0xff, 0xff, 0x7f, 1, 0, 0, 0}
	v := shmbus.View{Data: b}
	msg, err := r.Read(&v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := market.ReadRootQuote(msg); err == nil {
		t.Fatal("an out-of-bounds root pointer was followed")
	}
}

func TestMultiSegmentMessagesAreReadInPlace(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 20})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	msg, seg, err := capnp.NewMessage(capnp.MultiSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	o, err := market.NewRootOrder(seg)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 64<<10) // larger than a first segment: a second one follows
	if err := o.SetAccount(long); err != nil {
		t.Fatal(err)
	}
	o.SetOrderId(3)
	if msg.NumSegments() < 2 {
		t.Fatalf("want a multi-segment message, got %d segment(s)", msg.NumSegments())
	}
	if err := pub.OfferMessage(ctx, msg, 3, market.Order_TypeID); err != nil {
		t.Fatal(err)
	}
	v, err := sub.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var r shmbus.Reader
	m, err := r.Read(&v)
	if err != nil {
		t.Fatal(err)
	}
	if m.NumSegments() < 2 {
		t.Fatalf("read %d segment(s)", m.NumSegments())
	}
	for i := int64(0); i < m.NumSegments(); i++ {
		s, err := m.Segment(capnp.SegmentID(i))
		if err != nil || (len(s.Data()) > 0 && !within(unsafe.Pointer(unsafe.SliceData(s.Data())), v.Data)) {
			t.Fatalf("segment %d is not in the view's bytes (%v)", i, err)
		}
	}
	got, err := market.ReadRootOrder(m)
	if err != nil {
		t.Fatal(err)
	}
	acct, err := got.Account()
	if err != nil || acct != long || got.OrderId() != 3 {
		t.Fatalf("order %d, account of %d bytes, %v", got.OrderId(), len(acct), err)
	}
}

// An untethered subscriber that stops reading while the producer laps the ring:
// Check reports the view it holds as overwritten, the next poll reports the lap
// once (ErrLapped) without handing out overwritten bytes, and then it reads on
// at the producer's tail.
func TestUntetheredSubscriberIsToldWhenLapped(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 8192, Policy: shmbus.PolicyFail})
	pub, sub := openPair(t, bus, topic, nil, &shmbus.SubscriberOptions{Untethered: true})
	ctx := ctxT(t)
	msg := make([]byte, 256)
	put := func(n uint64) {
		t.Helper()
		binary.LittleEndian.PutUint64(msg, n)
		// Policy fail: an untethered subscriber never holds the producer back,
		// so a full ring would show up here as ErrBackPressured.
		if err := pub.Offer(ctx, msg, n, 0); err != nil {
			t.Fatalf("Offer %d: %v", n, err)
		}
	}
	counter := func(v *shmbus.View) uint64 { return binary.LittleEndian.Uint64(v.Data) }

	put(1)
	first, err := sub.TryPoll()
	if err != nil || counter(&first) != 1 {
		t.Fatalf("first poll: %v", err)
	}
	if err := sub.Check(&first); err != nil {
		t.Fatalf("Check of an intact view: %v", err)
	}
	for n := uint64(2); n <= 100; n++ { // ~3 laps of an 8 KiB ring
		put(n)
	}
	if err := sub.Check(&first); !errors.Is(err, shmbus.ErrLapped) {
		t.Fatalf("Check of an overwritten view: want ErrLapped, got %v", err)
	}
	if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrLapped) {
		t.Fatalf("poll after the lap: want ErrLapped, got %v", err)
	}
	if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("poll after ErrLapped: want ErrEmpty (continues at the tail), got %v", err)
	}
	// Lapped again, seen by the batch poll.
	for n := uint64(101); n <= 200; n++ {
		put(n)
	}
	views := make([]shmbus.View, 8)
	if _, err := sub.PollBatch(ctx, views); !errors.Is(err, shmbus.ErrLapped) {
		t.Fatalf("PollBatch after a lap: want ErrLapped, got %v", err)
	}
	put(201)
	k, err := sub.PollBatch(ctx, views)
	if err != nil || k != 1 || counter(&views[0]) != 201 {
		t.Fatalf("PollBatch after the lap: k=%d err=%v", k, err)
	}
	if err := sub.Check(&views[0]); err != nil {
		t.Fatalf("Check of a fresh view: %v", err)
	}
	if err := sub.ReleaseAll(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Check(nil); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("Check(nil): %v", err)
	}
}

// A tethered subscriber holds the producer back instead: the same traffic fills
// the ring (ErrBackPressured) and Check never reports a lap.
func TestTetheredSubscriberIsNeverLapped(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 8192, Policy: shmbus.PolicyFail})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	msg := make([]byte, 256)
	if err := pub.Offer(ctx, msg, 1, 0); err != nil {
		t.Fatal(err)
	}
	v, err := sub.TryPoll()
	if err != nil {
		t.Fatal(err)
	}
	var perr error
	for n := 0; n < 100 && perr == nil; n++ {
		perr = pub.Offer(ctx, msg, 2, 0)
	}
	if !errors.Is(perr, shmbus.ErrBackPressured) {
		t.Fatalf("want ErrBackPressured from a ring held by a tethered subscriber, got %v", perr)
	}
	if err := sub.Check(&v); err != nil {
		t.Fatalf("Check (tethered): %v", err)
	}
}

// A named (durable) subscriber resumes after its last release when it reopens
// under the same name: on the embedded daemon, which keeps the resume records.
func TestNamedSubscriberResumesAfterItsLastRelease(t *testing.T) {
	bus, err := shmbus.OpenEmbedded(t.TempDir())
	if errors.Is(err, shmbus.ErrUnsupported) {
		t.Skip("no embedded daemon in this build")
	}
	if err != nil {
		t.Fatalf("OpenEmbedded: %v", err)
	}
	defer bus.Close()
	topic := "go.named"
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 8192}); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	so := &shmbus.SubscriberOptions{Name: "go-durable"}
	sub, err := bus.Subscriber(topic, so)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i, s := range []string{"abc", "de", "f"} {
		if err := pub.Offer(ctx, []byte(s), uint64(i+1), 0); err != nil {
			t.Fatal(err)
		}
	}
	v, err := sub.Poll(ctx)
	if err != nil || string(v.Data) != "abc" {
		t.Fatalf("first poll: %q %v", v.Data, err)
	}
	if err := sub.Release(&v); err != nil {
		t.Fatal(err)
	}
	sub.Close() // parked under its name
	sub, err = bus.Subscriber(topic, so)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	v, err = sub.Poll(ctx)
	if err != nil || string(v.Data) != "de" || v.MessageID != 2 {
		t.Fatalf("after reopening under the name: want \"de\" (id 2), got %q (id %d) %v", v.Data, v.MessageID, err)
	}
	// Another name starts at the tail: it sees nothing of the above.
	other, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Name: "go-other"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.TryPoll(); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("a new name: want ErrEmpty, got %v", err)
	}
	// Leave nothing behind in /dev/shm: the named slot keeps the topic's segments
	// otherwise (Close is idempotent, the defers above are then no-ops).
	other.Close()
	sub.Close()
	pub.Close()
	if err := bus.RemoveTopic(topic); err != nil {
		t.Fatalf("RemoveTopic: %v", err)
	}
}

func setQuote(q market.Quote, i uint64) {
	inst, bid, ask, bq, aq, ts := quoteFields(i)
	q.SetInstrumentId(inst)
	q.SetBidPx(bid)
	q.SetAskPx(ask)
	q.SetBidQty(bq)
	q.SetAskQty(aq)
	q.SetExchangeTsNs(ts)
	q.SetSeq(i)
}

// ClaimRoot builds message after message in ring memory reusing the root it built
// first: every message reads back field by field, in place, interleaved with other
// root types (one with a pointer field that allocates past the root), and a
// message costs no allocation.
func TestClaimRootReusesTheRootInPlaceWithoutAllocating(t *testing.T) {
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 20})
	pub, sub := openPair(t, bus, topic, nil, nil)
	ctx := ctxT(t)
	var r shmbus.Reader
	views := make([]shmbus.View, 256)
	drain := func(check func(i int, v *shmbus.View)) int {
		t.Helper()
		got := 0
		for {
			k, err := sub.TryPollBatch(views)
			if errors.Is(err, shmbus.ErrEmpty) {
				return got
			}
			if err != nil {
				t.Fatal(err)
			}
			for j := 0; j < k; j++ {
				check(got, &views[j])
				got++
			}
			if err := sub.ReleaseAll(); err != nil {
				t.Fatal(err)
			}
		}
	}

	for i := uint64(1); i <= 300; i++ {
		if i%3 == 0 { // an order (Text pointer) between quotes
			o, err := shmbus.ClaimRoot(ctx, pub, 128, market.NewRootOrder)
			if err != nil {
				t.Fatalf("ClaimRoot order %d: %v", i, err)
			}
			o.SetOrderId(i)
			if err := o.SetAccount(fmt.Sprintf("acct-%d", i)); err != nil {
				t.Fatalf("SetAccount %d: %v", i, err)
			}
			if err := pub.CommitMessage(i, market.Order_TypeID); err != nil {
				t.Fatal(err)
			}
			continue
		}
		q, err := shmbus.ClaimRoot(ctx, pub, 64, market.NewRootQuote)
		if err != nil {
			t.Fatalf("ClaimRoot quote %d: %v", i, err)
		}
		if q.Seq() != 0 || q.BidPx() != 0 {
			t.Fatalf("quote %d: the reused root is not zeroed", i)
		}
		setQuote(q, i)
		if err := pub.CommitMessage(i, market.Quote_TypeID); err != nil {
			t.Fatal(err)
		}
	}
	n := drain(func(k int, v *shmbus.View) {
		i := uint64(k + 1)
		if i%3 != 0 {
			if len(v.Data) != 64 {
				t.Fatalf("quote %d: %d bytes, want 64 (segment table + root pointer + 6 words)", i, len(v.Data))
			}
			checkQuote(t, &r, v, i)
			return
		}
		msg, err := r.Read(v)
		if err != nil {
			t.Fatal(err)
		}
		o, err := market.ReadRootOrder(msg)
		if err != nil {
			t.Fatal(err)
		}
		acct, _ := o.Account()
		if o.OrderId() != i || acct != fmt.Sprintf("acct-%d", i) || v.SchemaID != market.Order_TypeID {
			t.Fatalf("order %d differs: id %d account %q", i, o.OrderId(), acct)
		}
	})
	if n != 300 {
		t.Fatalf("read %d messages, want 300", n)
	}

	// No allocation per message (the race detector's instrumentation allocates).
	i := uint64(1000)
	allocs := testing.AllocsPerRun(200, func() {
		q, err := shmbus.ClaimRoot(ctx, pub, 64, market.NewRootQuote)
		if err != nil {
			panic(err)
		}
		i++
		setQuote(q, i)
		if err := pub.CommitMessage(i, market.Quote_TypeID); err != nil {
			panic(err)
		}
	})
	if allocs != 0 && !raceEnabled {
		t.Fatalf("ClaimRoot + CommitMessage: %.1f allocations per message, want 0", allocs)
	}
	drain(func(int, *shmbus.View) {})

	// A root kept past its commit cannot write into the ring: it panics.
	q, err := shmbus.ClaimRoot(ctx, pub, 64, market.NewRootQuote)
	if err != nil {
		t.Fatal(err)
	}
	setQuote(q, 7)
	if err := pub.CommitMessage(7, market.Quote_TypeID); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("a write through a committed root did not panic")
			}
		}()
		q.SetSeq(99)
	}()
	drain(func(_ int, v *shmbus.View) { checkQuote(t, &r, v, 7) })
}
