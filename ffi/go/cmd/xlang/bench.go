// Bench modes of xlang, for the language-pair benchmark (bench/lang/run.sh); the
// same flags and JSON output as bench/lang/lang_bench.cpp and the Rust xlang:
//
//	xlang bench-consume --prefix P --topic T --count N [--latency] [--lat-dump FILE] [--single] [--capacity BYTES]
//	xlang bench-produce --prefix P --topic T --count N [--rate R [--pauses FILE]] [--batch K | --inplace-batch K]
//
// --lat-dump and --pauses write the files of bench/lang/pauses.py (the format is in
// lang_bench.cpp's header).
//
// The consumer is batched (PollBatch + ReleaseAll: two cgo calls per batch; with
// --single, Poll + Release: two per message); the producer pipelines
// (CommitMessage commits and claims the next message: one cgo call per message)
// and reuses the root struct (ClaimRoot: no allocation or capnp set-up per message).
// With --batch K the producer builds each message in Go memory (one Quote message
// reused, its fields set, its 64 bytes copied into a packed buffer) and publishes K
// at a time with OfferPacked: one cgo call per K messages, one copy of each.
// With --inplace-batch K the producer claims K frames at once (ClaimBatch), builds
// each message in ring memory (BatchRoot: the root reused, no copy) and publishes
// them with one Commit, which also claims the next K: one cgo call per K messages,
// no copy (paced runs: K = 1, each message published at once).
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"time"
	_ "unsafe" // go:linkname

	"capnproto.org/go/capnp/v3"
	"shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

// nanotime is the runtime's CLOCK_MONOTONIC reading (vDSO, no cgo), the clock
// of the frame timestamps.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

type benchConfig struct {
	prefix, topic         string
	latDump, pauses       string
	count, rate, capacity uint64
	batch, inplace        int
	pinPoller             int
	latency, single       bool
}

func benchMain(cmd string, args []string) int {
	var c benchConfig
	fs := flag.NewFlagSet("xlang "+cmd, flag.ContinueOnError)
	fs.StringVar(&c.prefix, "prefix", "", "shm prefix")
	fs.StringVar(&c.topic, "topic", "", "topic")
	fs.Uint64Var(&c.count, "count", 0, "messages")
	fs.Uint64Var(&c.rate, "rate", 0, "producer: msg/s (0: full speed)")
	fs.Uint64Var(&c.capacity, "capacity", 1<<20, "consumer: ring bytes when creating")
	fs.BoolVar(&c.latency, "latency", false, "consumer: one-way latency of every message")
	fs.StringVar(&c.latDump, "lat-dump", "", "consumer: write every message's (commit, receive) timestamps here")
	fs.StringVar(&c.pauses, "pauses", "", "paced producer: write the gaps > 2 us between its clock reads here")
	fs.BoolVar(&c.single, "single", false, "consumer: Poll/Release per message instead of batches")
	fs.IntVar(&c.pinPoller, "pin-poller", -1, "consumer: lock the polling goroutine to its thread and pin that thread alone to this CPU (the runtime's other threads stay where the process runs)")
	fs.IntVar(&c.batch, "batch", 0, "producer: build in Go memory, publish K messages per cgo call (OfferPacked)")
	fs.IntVar(&c.inplace, "inplace-batch", 0, "producer: claim K frames at once, build in ring memory, one cgo call per K (ClaimBatch)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile (runtime/pprof) here")
	if err := fs.Parse(args); err != nil || c.prefix == "" || c.topic == "" || c.count == 0 {
		fmt.Fprintln(os.Stderr, "usage: xlang bench-consume|bench-produce --prefix P --topic T --count N [--latency] [--single] [--rate R]")
		return 64
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	var err error
	if cmd == "bench-consume" {
		err = benchConsume(c)
	} else {
		err = benchProduce(c)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func benchConsume(c benchConfig) error {
	bus, err := shmbus.OpenDirect(c.prefix)
	if err != nil {
		return err
	}
	defer bus.Close()
	err = bus.CreateTopic(c.topic, shmbus.TopicConfig{Capacity: c.capacity})
	if err != nil && !errors.Is(err, shmbus.ErrAlreadyExists) {
		return err
	}
	sub, err := bus.Subscriber(c.topic, &shmbus.SubscriberOptions{Wait: shmbus.WaitBusySpin})
	if err != nil {
		return err
	}
	defer sub.Close()
	if c.pinPoller >= 0 {
		if err := pinThread(c.pinPoller); err != nil {
			return err
		}
	}
	fmt.Println("READY")
	os.Stdout.Sync()

	ctx := context.Background()
	var lat []uint64
	var dump [][2]uint64 // (commit, receive)
	if c.latency {
		lat = make([]uint64, 0, c.count)
	}
	if c.latDump != "" {
		dump = make([][2]uint64, 0, c.count)
	}
	views := make([]shmbus.View, 256)
	var r shmbus.Reader
	var got, errs, bytes uint64
	var tFirst, tLast int64
	handle := func(v *shmbus.View) {
		msg, err := r.Read(v)
		if err == nil {
			q, err2 := market.ReadRootQuote(msg)
			if err2 != nil || q.Seq() != got+1 {
				errs++
			}
		} else {
			errs++
		}
		got++
		if c.latency || c.latDump != "" {
			now := uint64(nanotime())
			if c.latency {
				lat = append(lat, now-v.TimestampNs)
			}
			if c.latDump != "" {
				dump = append(dump, [2]uint64{v.TimestampNs, now})
			}
		}
		if got == 1 {
			bytes = uint64(len(v.Data))
		}
	}
	for got < c.count {
		if c.single {
			v, err := sub.Poll(ctx)
			if err != nil {
				return fmt.Errorf("poll after %d: %w", got, err)
			}
			handle(&v)
			if err := sub.Release(&v); err != nil {
				return err
			}
		} else {
			k, err := sub.PollBatch(ctx, views)
			if err != nil {
				return fmt.Errorf("poll after %d: %w", got, err)
			}
			for j := 0; j < k; j++ {
				handle(&views[j])
			}
			if err := sub.ReleaseAll(); err != nil {
				return err
			}
		}
		now := nanotime()
		if tFirst == 0 {
			tFirst = now
		}
		tLast = now
	}
	secs := float64(tLast-tFirst) / 1e9
	mps, nsPer := 0.0, 0.0
	if secs > 0 {
		mps = float64(got-1) / secs
		nsPer = 1e9 / mps
	}
	if c.latDump != "" {
		if err := writePairs(c.latDump, dump); err != nil {
			return err
		}
	}
	var p50, p99, p999, mx uint64
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		at := func(q float64) uint64 { return lat[int(q*float64(len(lat)-1))] }
		p50, p99, p999, mx = at(0.5), at(0.99), at(0.999), lat[len(lat)-1]
	}
	lang := "go"
	if c.single {
		lang = "go-single"
	}
	fmt.Printf(`{"lang":"%s","role":"consumer","received":%d,"errors":%d,"bytes":%d,"mps":%.0f,"ns_per_msg":%.2f,"p50_ns":%d,"p99_ns":%d,"p999_ns":%d,"max_ns":%d}`+"\n",
		lang, got, errs, bytes, mps, nsPer, p50, p99, p999, mx)
	if errs != 0 {
		return fmt.Errorf("%d bad messages", errs)
	}
	return nil
}

func benchProduce(c benchConfig) error {
	bus, err := shmbus.OpenDirect(c.prefix)
	if err != nil {
		return err
	}
	defer bus.Close()
	pub, err := bus.Publisher(c.topic, &shmbus.PublisherOptions{Wait: shmbus.WaitBusySpin, BlockTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer pub.Close()
	ctx := context.Background()
	p := &pacer{pauses: make([][2]uint64, 0, 1<<16)}
	if c.rate > 0 {
		p.gap = int64(time.Second) / int64(c.rate)
	}
	switch {
	case c.batch > 0:
		err = benchProducePacked(ctx, pub, c, p)
	case c.inplace > 0:
		err = benchProduceInPlaceBatch(ctx, pub, c, p)
	default:
		err = benchProduceInPlace(ctx, pub, c, p)
	}
	if err == nil && c.pauses != "" {
		err = writePairs(c.pauses, p.pauses)
	}
	return err
}

// pacer waits for each message's send time (gap apart) and records, as
// (start, end), every gap longer than pauseNs between two of its consecutive
// clock reads: time the producer's core did not run it (--pauses).
type pacer struct {
	gap, next, last int64
	pauses          [][2]uint64
}

const pauseNs = 2000

func (p *pacer) start(t0 int64) { p.next, p.last = t0, t0 }

// wait spins until the next send time, reading the clock at least once.
func (p *pacer) wait() {
	for {
		t := nanotime()
		if t-p.last > pauseNs {
			p.pauses = append(p.pauses, [2]uint64{uint64(p.last), uint64(t)})
		}
		p.last = t
		if t >= p.next {
			break
		}
	}
	p.next += p.gap
}

// writePairs writes (a, b) pairs as little-endian u64, the format of --lat-dump
// and --pauses.
func writePairs(path string, v [][2]uint64) error {
	b := make([]byte, 0, 16*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x[0])
		b = binary.LittleEndian.AppendUint64(b, x[1])
	}
	return os.WriteFile(path, b, 0o644)
}

// benchProduceInPlace is bench-produce without --batch or --inplace-batch.
func benchProduceInPlace(ctx context.Context, pub *shmbus.Publisher, c benchConfig, p *pacer) error {
	t0 := nanotime()
	p.start(t0)
	for i := uint64(1); i <= c.count; i++ {
		if p.gap > 0 {
			p.wait()
		}
		q, err := shmbus.ClaimRoot(ctx, pub, 64, market.NewRootQuote)
		if err != nil {
			return fmt.Errorf("claim %d: %w", i, err)
		}
		q.SetInstrumentId(uint32(i % 1000))
		q.SetBidPx(int64(px0 + i))
		q.SetAskPx(int64(px0 + i + 100))
		q.SetBidQty(uint32(i%500 + 1))
		q.SetAskQty(uint32(i%700 + 1))
		q.SetExchangeTsNs(i)
		q.SetSeq(i)
		if err := pub.CommitMessage(i, market.Quote_TypeID); err != nil {
			return fmt.Errorf("commit %d: %w", i, err)
		}
	}
	secs := float64(nanotime()-t0) / 1e9
	fmt.Printf(`{"lang":"go","role":"producer","published":%d,"mps":%.0f,"fallbacks":0}`+"\n", c.count, float64(c.count)/secs)
	return nil
}

// benchProducePacked is bench-produce --batch: one Quote message in Go memory,
// reused (its fields set for each message), copied in its flat form (segment
// table + segment: what CommitMessage publishes) into a packed buffer of up to
// c.batch messages, published with one OfferPacked call.
func benchProducePacked(ctx context.Context, pub *shmbus.Publisher, c benchConfig, p *pacer) error {
	arena := make([]byte, 0, 256)
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(arena))
	if err != nil {
		return err
	}
	_ = msg
	q, err := market.NewRootQuote(seg)
	if err != nil {
		return err
	}
	size := 8 + len(seg.Data()) // flat form: 8-byte table, then the segment
	buf := make([]byte, size*c.batch)
	lens := make([]uint32, c.batch)
	for k := range lens {
		lens[k] = uint32(size)
		binary.LittleEndian.PutUint32(buf[k*size+4:], uint32(len(seg.Data())/8))
	}
	t0 := nanotime()
	p.start(t0)
	k := 0
	for i := uint64(1); i <= c.count; i++ {
		if p.gap > 0 {
			p.wait()
		}
		q.SetInstrumentId(uint32(i % 1000))
		q.SetBidPx(int64(px0 + i))
		q.SetAskPx(int64(px0 + i + 100))
		q.SetBidQty(uint32(i%500 + 1))
		q.SetAskQty(uint32(i%700 + 1))
		q.SetExchangeTsNs(i)
		q.SetSeq(i)
		copy(buf[k*size+8:(k+1)*size], seg.Data())
		k++
		// Paced runs publish at once (the latency mode measures each message).
		if k == c.batch || i == c.count || p.gap > 0 {
			if _, err := pub.OfferPacked(ctx, buf[:k*size], lens[:k]); err != nil {
				return fmt.Errorf("offer up to %d: %w", i, err)
			}
			k = 0
		}
	}
	secs := float64(nanotime()-t0) / 1e9
	fmt.Printf(`{"lang":"go","role":"producer","published":%d,"mps":%.0f,"fallbacks":0}`+"\n", c.count, float64(c.count)/secs)
	return nil
}

// benchProduceInPlaceBatch is bench-produce --inplace-batch: c.inplace frames
// claimed at once (ClaimBatch), each Quote built in its ring frame (BatchRoot),
// published by one Commit that also claims the next batch (pipelining).
func benchProduceInPlaceBatch(ctx context.Context, pub *shmbus.Publisher, c benchConfig, p *pacer) error {
	n := c.inplace
	if p.gap > 0 {
		n = 1 // paced: each message published at once
	}
	t0 := nanotime()
	p.start(t0)
	for i := uint64(1); i <= c.count; {
		k := n
		if left := c.count - i + 1; uint64(k) > left {
			k = int(left)
		}
		if p.gap > 0 {
			p.wait()
		}
		b, err := pub.ClaimBatch(ctx, k, 64)
		if err != nil {
			return fmt.Errorf("claim batch at %d: %w", i, err)
		}
		for f := 0; f < k; f++ {
			q, err := shmbus.BatchRoot(b, f, market.NewRootQuote)
			if err != nil {
				return fmt.Errorf("root %d: %w", i, err)
			}
			q.SetInstrumentId(uint32(i % 1000))
			q.SetBidPx(int64(px0 + i))
			q.SetAskPx(int64(px0 + i + 100))
			q.SetBidQty(uint32(i%500 + 1))
			q.SetAskQty(uint32(i%700 + 1))
			q.SetExchangeTsNs(i)
			q.SetSeq(i)
			b.SetMessageID(f, i)
			i++
		}
		if err := b.Commit(k, market.Quote_TypeID); err != nil {
			return fmt.Errorf("commit up to %d: %w", i-1, err)
		}
	}
	secs := float64(nanotime()-t0) / 1e9
	fmt.Printf(`{"lang":"go","role":"producer","published":%d,"mps":%.0f,"fallbacks":0}`+"\n", c.count, float64(c.count)/secs)
	return nil
}
