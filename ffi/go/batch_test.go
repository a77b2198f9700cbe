package shmbus_test

import (
	"errors"
	"testing"

	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

// ClaimBatch: n quotes built in place in one multi-frame claim, published by one
// Commit; nothing is visible before it, all of it after, in order, one sequence per
// frame; a partial commit and an abort are skipped by readers; BatchRoot costs no
// allocation per message once every frame index has been built once. Single- and
// multi-producer topics (the latter without pipelining).
func TestClaimBatchPublishesFramesTogetherInPlace(t *testing.T) {
	for _, multi := range []bool{false, true} {
		name := "single-producer"
		if multi {
			name = "multi-producer"
		}
		t.Run(name, func(t *testing.T) {
			bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 20, MultiProducer: multi})
			pub, sub := openPair(t, bus, topic, nil, nil)
			ctx := ctxT(t)
			var r shmbus.Reader
			views := make([]shmbus.View, 256)
			next := uint64(1) // next quote number expected
			var lastSeq uint64
			drain := func() int {
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
						checkQuote(t, &r, &views[j], next)
						if views[j].Sequence <= lastSeq {
							t.Fatalf("quote %d: sequence %d after %d", next, views[j].Sequence, lastSeq)
						}
						lastSeq = views[j].Sequence
						next++
						got++
					}
					if err := sub.ReleaseAll(); err != nil {
						t.Fatal(err)
					}
				}
			}
			i := uint64(0) // last quote built
			build := func(b *shmbus.Batch, k int) {
				t.Helper()
				for f := 0; f < k; f++ {
					q, err := shmbus.BatchRoot(b, f, market.NewRootQuote)
					if err != nil {
						t.Fatalf("BatchRoot %d: %v", f, err)
					}
					if q.Seq() != 0 || q.BidPx() != 0 {
						t.Fatalf("frame %d: the reused root is not zeroed", f)
					}
					i++
					setQuote(q, i)
					b.SetMessageID(f, i)
				}
			}

			// Nothing before the commit, all of it after, one sequence per frame.
			b, err := pub.ClaimBatch(ctx, 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			if b.Len() != 8 {
				t.Fatalf("Len %d, want 8", b.Len())
			}
			build(b, 8)
			if got := drain(); got != 0 {
				t.Fatalf("%d quotes visible before the commit", got)
			}
			if err := b.Commit(8, market.Quote_TypeID); err != nil {
				t.Fatal(err)
			}
			if got := drain(); got != 8 {
				t.Fatalf("read %d quotes after the commit, want 8", got)
			}
			// Batches in a loop (pipelined on a single-producer topic).
			for round := 0; round < 40; round++ {
				b, err := pub.ClaimBatch(ctx, 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				build(b, 8)
				if err := b.Commit(8, market.Quote_TypeID); err != nil {
					t.Fatal(err)
				}
				drain()
			}
			// Part of a batch: 3 of 8; an aborted batch; then a single message.
			b, err = pub.ClaimBatch(ctx, 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			build(b, 3)
			if err := b.Commit(3, market.Quote_TypeID); err != nil {
				t.Fatal(err)
			}
			b, err = pub.ClaimBatch(ctx, 4, 64)
			if err != nil {
				t.Fatal(err)
			}
			saved := i
			build(b, 4)
			if err := b.Abort(); err != nil {
				t.Fatal(err)
			}
			i = saved
			q, err := shmbus.ClaimRoot(ctx, pub, 64, market.NewRootQuote)
			if err != nil {
				t.Fatal(err)
			}
			i++
			setQuote(q, i)
			if err := pub.CommitMessage(i, market.Quote_TypeID); err != nil {
				t.Fatal(err)
			}
			drain()
			if next != i+1 {
				t.Fatalf("read up to quote %d, built %d", next-1, i)
			}
			// A frame not built: the batch is aborted, nothing is published.
			b, err = pub.ClaimBatch(ctx, 2, 64)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Commit(2, market.Quote_TypeID); err == nil {
				t.Fatal("Commit of frames never built succeeded")
			}
			if got := drain(); got != 0 {
				t.Fatalf("%d quotes of an unbuilt batch read", got)
			}
			// Too large: more frames than half the ring.
			if _, err := pub.ClaimBatch(ctx, 20000, 64); !errors.Is(err, shmbus.ErrTooLarge) {
				t.Fatalf("ClaimBatch of 20000 frames of a 1 MiB ring: %v, want ErrTooLarge", err)
			}
			// No allocation per message (the race detector's instrumentation allocates).
			allocs := testing.AllocsPerRun(50, func() {
				b, err := pub.ClaimBatch(ctx, 8, 64)
				if err != nil {
					panic(err)
				}
				for f := 0; f < 8; f++ {
					q, err := shmbus.BatchRoot(b, f, market.NewRootQuote)
					if err != nil {
						panic(err)
					}
					i++
					setQuote(q, i)
					b.SetMessageID(f, i)
				}
				if err := b.Commit(8, market.Quote_TypeID); err != nil {
					panic(err)
				}
			})
			if allocs != 0 && !raceEnabled {
				t.Fatalf("ClaimBatch + BatchRoot + Commit: %.1f allocations per batch, want 0", allocs)
			}
			drain()
			if next != i+1 {
				t.Fatalf("read up to quote %d, built %d", next-1, i)
			}
			// A builder kept past its commit cannot write into the ring: it panics.
			b, err = pub.ClaimBatch(ctx, 1, 64)
			if err != nil {
				t.Fatal(err)
			}
			q, err = shmbus.BatchRoot(b, 0, market.NewRootQuote)
			if err != nil {
				t.Fatal(err)
			}
			i++
			setQuote(q, i)
			b.SetMessageID(0, i)
			if err := b.Commit(1, market.Quote_TypeID); err != nil {
				t.Fatal(err)
			}
			func() {
				defer func() {
					if recover() == nil {
						t.Fatal("a write through a committed batch root did not panic")
					}
				}()
				q.SetSeq(99)
			}()
			drain()
			if next != i+1 {
				t.Fatalf("read up to quote %d, built %d", next-1, i)
			}
		})
	}
}
