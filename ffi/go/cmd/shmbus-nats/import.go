package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"shmbus.dev/shmbus"
)

// importState is an importer's checkpoint (state_dir/<durable>.json): every stream
// message with sequence <= StreamSeq is durable in its local topic; per topic, the
// partition sequence of the last frame known durable and the stream sequence it
// carried. Written atomically (temporary file, fsync, rename).
type importState struct {
	StreamSeq uint64                `json:"stream_seq"`
	Topics    map[string]topicState `json:"topics"`
}

type topicState struct {
	LocalSeq  uint64 `json:"local_seq"`
	StreamSeq uint64 `json:"stream_seq"`
}

func loadState(path string) (*importState, error) {
	st := &importState{Topics: map[string]topicState{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) > 16<<20 {
		return nil, fmt.Errorf("%s: larger than 16 MiB", path)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if st.Topics == nil {
		st.Topics = map[string]topicState{}
	}
	for n := range st.Topics {
		if !validName(n) {
			return nil, fmt.Errorf("%s: bad topic name %q", path, n)
		}
	}
	return st, nil
}

func saveState(path string, st *importState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// impTopic is a local topic an importer writes: the bridge is its only producer.
type impTopic struct {
	name    string
	pub     *shmbus.Publisher
	next    uint64 // partition sequence the next frame gets
	applied uint64 // highest stream sequence written into it
	durable uint64 // highest partition sequence known durable
	ck      topicState
	tc      *topicCounters
}

type ackItem struct {
	t        *impTopic // nil: nothing written locally (skipped or dropped)
	localSeq uint64
	msg      jetstream.Msg
	seq      uint64 // stream sequence
}

// importOnce (re)creates the durable pull consumer at the checkpoint and imports.
// Each message is written to the local topic named by its subject with the stream
// sequence as its message id, unless that topic already holds it (stream sequence
// <= the highest one written there: a redelivery after a crash); it is acknowledged
// (AckAll) and checkpointed once durable in the local topic.
func (b *Bridge) importOnce(ctx context.Context, im Import) error {
	path := filepath.Join(b.cfg.StateDir, im.Durable+".json")
	st, err := loadState(path)
	if err != nil {
		return err
	}
	topics := map[string]*impTopic{}
	defer func() {
		for _, t := range topics {
			t.pub.Close()
		}
	}()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = b.js.DeleteConsumer(c, b.cfg.Stream, im.Durable)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		cancel()
		return fmt.Errorf("resetting consumer %s: %v", im.Durable, err)
	}
	cons, err := b.js.CreateConsumer(c, b.cfg.Stream, jetstream.ConsumerConfig{
		Durable: im.Durable, FilterSubject: im.Subject, AckPolicy: jetstream.AckAllPolicy,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: st.StreamSeq + 1,
		AckWait: 30 * time.Second, MaxAckPending: 1 << 20, MaxDeliver: -1,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("creating consumer %s: %v", im.Durable, err)
	}
	b.m.importers.Add(1)
	defer b.m.importers.Add(-1)

	var queue []ackItem
	lastSave := time.Now()
	dirty := false
	settle := func(block bool) error {
		var last *ackItem
		for len(queue) > 0 {
			h := &queue[0]
			if h.t != nil && h.t.durable < h.localSeq {
				if s, _, err := h.t.pub.DurableSequence(); err == nil && s > h.t.durable {
					h.t.durable = s
				}
			}
			if h.t != nil && h.t.durable < h.localSeq {
				if !block {
					break
				}
				wc, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := h.t.pub.WaitDurable(wc, h.localSeq)
				cancel()
				if err != nil {
					return fmt.Errorf("waiting for %s seq %d to be durable: %v", h.t.name, h.localSeq, err)
				}
				h.t.durable = h.localSeq
			}
			if h.t != nil {
				h.t.ck = topicState{LocalSeq: h.localSeq, StreamSeq: h.seq}
				st.Topics[h.t.name] = h.t.ck
			}
			st.StreamSeq = h.seq
			last = h
			queue = queue[1:]
			dirty = true
			b.m.importAcked.Add(1)
		}
		if last != nil {
			if err := last.msg.Ack(); err != nil {
				b.log.Printf("import %s: ack: %v", im.Subject, err)
			}
		}
		if dirty && (block || time.Since(lastSave) > 100*time.Millisecond) {
			if err := saveState(path, st); err != nil {
				return fmt.Errorf("checkpoint %s: %v", path, err)
			}
			b.m.checkpoints.Add(1)
			dirty, lastSave = false, time.Now()
		}
		return nil
	}

	// process writes one delivered message locally (or skips it) and queues its ack.
	process := func(m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("metadata: %v", err)
		}
		item := ackItem{msg: m, seq: meta.Sequence.Stream}
		t, err := b.importTopic(ctx, st, topics, m.Subject(), im)
		if err != nil {
			if errors.Is(err, errNoTopic) {
				b.m.importDropped.Add(1)
				b.log.Printf("import %s seq %d: dropped: %v", m.Subject(), item.seq, err)
				queue = append(queue, item)
				return nil
			}
			return err
		}
		if item.seq <= t.applied {
			b.m.importSkipped.Add(1)
			queue = append(queue, item)
			return nil
		}
		item.t = t
		if item.localSeq, err = b.writeLocal(ctx, t, m, item.seq); err != nil {
			if errors.Is(err, errNoTopic) {
				item.t = nil
				b.m.importDropped.Add(1)
				b.log.Printf("import %s seq %d: dropped: %v", m.Subject(), item.seq, err)
				queue = append(queue, item)
				return nil
			}
			return err
		}
		t.applied = item.seq
		t.tc.imported.Add(1)
		b.m.imported.Add(1)
		queue = append(queue, item)
		return nil
	}

	// A pipelined pull (the server keeps up to 2048 messages in flight to us).
	it, err := cons.Messages(jetstream.PullMaxMessages(2048), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		return fmt.Errorf("consume: %v", err)
	}
	defer it.Stop()
	sinceSettle := 0
	lastMsg, lastCheck := time.Now(), time.Now()
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if len(queue) >= b.cfg.MaxPending || sinceSettle >= 256 {
			if err := settle(len(queue) >= b.cfg.MaxPending); err != nil {
				return err
			}
			sinceSettle = 0
		}
		wait := time.Second
		if len(queue) > 0 {
			wait = 5 * time.Millisecond
		}
		m, err := it.Next(jetstream.NextMaxWait(wait))
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				if len(queue) > 0 {
					if err := settle(true); err != nil {
						return err
					}
				}
				// A pull can be lost with a server restart and the client not notice
				// for long: idle for 2 s with messages waiting or delivered but never
				// received means start again (at the checkpoint: nothing is lost).
				if time.Since(lastMsg) > 2*time.Second && time.Since(lastCheck) > 2*time.Second {
					lastCheck = time.Now()
					ic, cancel := context.WithTimeout(ctx, 2*time.Second)
					info, err := cons.Info(ic)
					cancel()
					if err == nil && (info.NumPending > 0 || info.NumAckPending > 0) {
						return fmt.Errorf("pull stalled: %d pending, %d delivered and not received", info.NumPending, info.NumAckPending)
					}
				}
				continue
			}
			return fmt.Errorf("next: %v", err)
		}
		sinceSettle++
		lastMsg = time.Now()
		if err := process(m); err != nil {
			return err
		}
	}
}

var errNoTopic = errors.New("no local topic can take it")

// importTopic opens (creating when missing) the local topic a subject maps to and
// finds what it already holds: from the checkpoint's partition sequence to the
// partition's tail (the next claim's sequence), the highest message id, which is
// the highest stream sequence written there.
func (b *Bridge) importTopic(ctx context.Context, st *importState, topics map[string]*impTopic, name string, im Import) (*impTopic, error) {
	if t := topics[name]; t != nil {
		return t, nil
	}
	if !validName(name) {
		return nil, fmt.Errorf("%w: %q is not a topic name", errNoTopic, name)
	}
	if _, err := b.bus.DescribeTopic(name); errors.Is(err, shmbus.ErrNotFound) {
		cfg := b.topicConfig(ctx, name, im)
		if err := b.bus.CreateTopic(name, cfg); err != nil && !errors.Is(err, shmbus.ErrAlreadyExists) {
			if errors.Is(err, shmbus.ErrInvalidArgument) {
				return nil, fmt.Errorf("%w: creating %s: %v", errNoTopic, name, err)
			}
			return nil, fmt.Errorf("creating %s: %v", name, err)
		}
	} else if err != nil {
		return nil, err
	}
	desc, err := b.bus.DescribeTopic(name)
	if err != nil {
		return nil, err
	}
	if d, err := b.bus.DescribeDurable(name); err != nil {
		return nil, err
	} else if d == nil || desc.MultiProducer {
		return nil, fmt.Errorf("%w: %s must be durable and single-producer to import into", errNoTopic, name)
	}
	pub, err := b.bus.Publisher(name, &shmbus.PublisherOptions{BlockTimeout: -1})
	if err != nil {
		return nil, fmt.Errorf("publisher on %s: %v", name, err)
	}
	t := &impTopic{name: name, pub: pub, tc: b.m.topic(name)}
	ok := false
	defer func() {
		if !ok {
			pub.Close()
		}
	}()
	// The next sequence: claim and abort (an abort takes no sequence).
	if _, err := pub.Claim(ctx, 1); err != nil {
		return nil, fmt.Errorf("%s: claim: %v", name, err)
	}
	t.next = pub.ClaimSequence()
	if err := pub.Abort(); err != nil {
		return nil, err
	}
	ck := st.Topics[name]
	t.applied, t.durable, t.ck = ck.StreamSeq, ck.LocalSeq, ck
	if t.next == 0 || t.next-1 < ck.LocalSeq {
		return nil, fmt.Errorf("%s: tail sequence %d is before the checkpoint's %d (topic recreated?)", name, t.next, ck.LocalSeq)
	}
	if tail := t.next - 1; tail > ck.LocalSeq {
		if err := scanTail(ctx, b.bus, name, ck.LocalSeq+1, tail, &t.applied); err != nil {
			return nil, err
		}
	}
	if _, known := st.Topics[name]; !known {
		// Remember the topic before the first write into it, so that a restart
		// scans it even when no checkpoint covered it yet.
		st.Topics[name] = topicState{LocalSeq: t.next - 1, StreamSeq: t.applied}
		t.ck = st.Topics[name]
		if err := saveState(filepath.Join(b.cfg.StateDir, im.Durable+".json"), st); err != nil {
			return nil, err
		}
	}
	ok = true
	topics[name] = t
	return t, nil
}

// scanTail replays [from, to] of a topic's log and raises *applied to the highest
// message id found.
func scanTail(ctx context.Context, bus *shmbus.Bus, name string, from, to uint64, applied *uint64) error {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sub, err := bus.Subscriber(name, &shmbus.SubscriberOptions{Start: shmbus.StartAtSequence(from)})
	if err != nil {
		return fmt.Errorf("%s: replay from %d: %v", name, from, err)
	}
	defer sub.Close()
	views := make([]shmbus.View, 256)
	for {
		n, err := sub.PollBatch(c, views)
		if err != nil {
			return fmt.Errorf("%s: replay from %d to %d: %v", name, from, to, err)
		}
		for i := 0; i < n; i++ {
			if views[i].MessageID > *applied {
				*applied = views[i].MessageID
			}
			if views[i].Sequence >= to {
				return nil
			}
		}
		if err := sub.ReleaseAll(); err != nil {
			return err
		}
	}
}

// topicConfig: a local topic for an imported subject, from the schema bucket's
// entry when there is one (same schema id, capacity, max payload), durable.
func (b *Bridge) topicConfig(ctx context.Context, name string, im Import) shmbus.TopicConfig {
	cfg := shmbus.TopicConfig{Capacity: im.Capacity}
	if cfg.Capacity == 0 {
		cfg.Capacity = 16 << 20
	}
	d := &shmbus.DurableConfig{}
	switch im.Flush {
	case "batch":
		d.Flush = shmbus.FlushBatch
	case "none":
		d.Flush = shmbus.FlushNone
	}
	cfg.Durable = d
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b.mu.Lock()
	kv := b.kv
	b.mu.Unlock()
	if kv == nil {
		return cfg
	}
	if e, err := kv.Get(c, name); err == nil {
		var s schemaEntry
		v := e.Value()
		if len(v) < 64<<10 && json.Unmarshal(v, &s) == nil && s.Topic == name {
			if id, ok := parseUint(s.SchemaID, 64, true); ok {
				cfg.SchemaID = id
			}
			if s.Capacity >= 4096 && s.Capacity <= 1<<32 && s.Capacity&(s.Capacity-1) == 0 {
				cfg.Capacity = s.Capacity
			}
			if s.MaxPayload > 0 && s.MaxPayload <= cfg.Capacity/2 {
				cfg.MaxPayload = s.MaxPayload
			}
		}
	}
	return cfg
}

// writeLocal publishes m into t with the stream sequence as message id; it returns
// the frame's partition sequence.
func (b *Bridge) writeLocal(ctx context.Context, t *impTopic, m jetstream.Msg, streamSeq uint64) (uint64, error) {
	data := m.Data()
	if len(data) > t.pub.MaxPayload() {
		return 0, fmt.Errorf("%w: %d bytes, the topic's max payload is %d", errNoTopic, len(data), t.pub.MaxPayload())
	}
	schema, env, ok := parseEnvelope(m.Headers())
	if !ok {
		b.m.importBadHeader.Add(1)
	}
	if env != nil {
		seq := t.next
		if err := t.pub.OfferEnveloped(ctx, env, data, streamSeq); err != nil {
			if errors.Is(err, shmbus.ErrInvalidArgument) || errors.Is(err, shmbus.ErrTooLarge) {
				return 0, fmt.Errorf("%w: %v", errNoTopic, err)
			}
			return 0, err
		}
		t.next++
		return seq, nil
	}
	n := len(data)
	if n == 0 {
		n = 1
	}
	buf, err := t.pub.Claim(ctx, n)
	if err != nil {
		return 0, err
	}
	seq := t.pub.ClaimSequence()
	copy(buf, data)
	if err := t.pub.Commit(len(data), streamSeq, schema); err != nil {
		return 0, err
	}
	t.next = seq + 1
	return seq, nil
}
