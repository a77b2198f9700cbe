package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"shmbus.dev/shmbus"
)

// schemaEntry is what the schema bucket holds per topic (key: the topic name): what
// a remote bus needs to create the topic and decode its messages.
type schemaEntry struct {
	Topic         string `json:"topic"`
	SchemaID      string `json:"schema_id"` // 0x + hex, the Cap'n Proto root type id (0x0: any)
	Partitions    uint32 `json:"partitions"`
	Capacity      uint64 `json:"capacity"`
	MaxPayload    uint64 `json:"max_payload"`
	MultiProducer bool   `json:"multi_producer"`
	Bus           string `json:"bus"`
}

// discover starts a forwarder for each configured topic name and, every
// rescan_interval, for each topic the shmbus tool lists that matches a glob.
func (b *Bridge) discover(ctx context.Context) {
	t := time.NewTicker(b.cfg.Rescan.Duration)
	defer t.Stop()
	for {
		var names []string
		globs := false
		for _, p := range b.cfg.Forward.Topics {
			if isGlob(p) {
				globs = true
			} else {
				names = append(names, p)
			}
		}
		if globs {
			listed, err := b.listTopics(ctx)
			if err != nil {
				b.log.Printf("listing topics: %v", err)
			}
			for _, n := range listed {
				for _, p := range b.cfg.Forward.Topics {
					if isGlob(p) && matches(p, n) {
						names = append(names, n)
						break
					}
				}
			}
		}
		for _, n := range names {
			b.startForward(ctx, n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *Bridge) listTopics(ctx context.Context) ([]string, error) {
	args := []string{"--json"}
	if b.cfg.Socket != "" {
		args = append(args, "--socket", b.cfg.Socket)
	}
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(c, b.cfg.ShmbusCLI, append(args, "topic", "list")...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s topic list: %v", b.cfg.ShmbusCLI, err)
	}
	var ts []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(out, &ts); err != nil {
		return nil, fmt.Errorf("%s topic list: %v", b.cfg.ShmbusCLI, err)
	}
	var names []string
	for _, t := range ts {
		if validName(t.Name) {
			names = append(names, t.Name)
		}
	}
	return names, nil
}

// startForward starts the forwarders of topic (once; a missing topic is tried
// again at the next scan) and publishes its schema entry.
func (b *Bridge) startForward(ctx context.Context, topic string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started[topic] {
		return
	}
	if !validName(topic) {
		return
	}
	cfg, err := b.bus.DescribeTopic(topic)
	if err != nil {
		if !errors.Is(err, shmbus.ErrNotFound) {
			b.log.Printf("forward %s: %v", topic, err)
		}
		return
	}
	e := schemaEntry{Topic: topic, SchemaID: hex64(cfg.SchemaID), Partitions: cfg.Partitions, Capacity: cfg.Capacity,
		MaxPayload: cfg.MaxPayload, MultiProducer: cfg.MultiProducer, Bus: b.cfg.BusID}
	if v, err := json.Marshal(e); err == nil {
		b.entries[topic] = v
		if b.kv != nil { // else setupStream puts it once the bucket is open
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := b.kv.Put(c, topic, v); err != nil {
				b.log.Printf("schema bucket: %s: %v (forwarding anyway)", topic, err)
			}
			cancel()
		}
	}
	b.started[topic] = true
	for p := uint32(0); p < cfg.Partitions; p++ {
		p := p
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.loop(ctx, fmt.Sprintf("forward %s[%d]", topic, p), func() error { return b.forwardOnce(ctx, topic, p) })
		}()
	}
	b.log.Printf("forwarding %s (%d partitions)", topic, cfg.Partitions)
}

type fwdItem struct {
	fut  jetstream.PubAckFuture
	msg  *nats.Msg
	view shmbus.View // released (the position committed) once fut and all before it are acked
}

// forwardOnce reads one partition with the durable subscriber and publishes each
// message, keeping at most max_pending unacknowledged; the subscriber releases a
// message (commits its position) only when its ack and every earlier one came back.
// Any error ends it: the loop starts it again, and the durable subscriber resumes
// after the last release (what was in flight is sent again with the same ids).
func (b *Bridge) forwardOnce(ctx context.Context, topic string, part uint32) error {
	sub, err := b.bus.Subscriber(topic, &shmbus.SubscriberOptions{Partition: part, Name: b.cfg.Forward.Durable, BatchSize: 256})
	if err != nil {
		return err
	}
	defer sub.Close()
	b.m.forwarders.Add(1)
	defer b.m.forwarders.Add(-1)
	tc := b.m.topic(topic)
	idPrefix := b.cfg.BusID + ":" + topic + ":" + strconv.FormatUint(uint64(part), 10) + ":"
	views := make([]shmbus.View, 256)
	var pending []fwdItem
	defer func() { b.m.forwardPending.Add(-int64(len(pending))) }()

	settle := func(block bool) error {
		var last *shmbus.View
		for len(pending) > 0 {
			h := &pending[0]
			var ack *jetstream.PubAck
			var perr error
			if block {
				t := time.NewTimer(10 * time.Second)
				select {
				case ack = <-h.fut.Ok():
				case perr = <-h.fut.Err():
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
					perr = errors.New("no publish ack in 10 s")
				}
				t.Stop()
			} else {
				select {
				case ack = <-h.fut.Ok():
				case perr = <-h.fut.Err():
				default:
				}
			}
			if ack == nil && perr == nil {
				break
			}
			if perr != nil {
				// Send it again (same Nats-Msg-Id). Later ones may land first: order
				// across a failed publish is not kept (docs/bridge.md).
				if n := b.m.forwardRetries.Add(1); n <= 10 || n%1000 == 0 {
					b.log.Printf("forward %s: publish failed (%v), sending again (%d retries so far)", topic, perr, n)
				}
				select { // no server, no stream yet: do not spin
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
				f, err := b.js.PublishMsgAsync(h.msg)
				if err != nil {
					return fmt.Errorf("publish %s: %v (after %v)", h.msg.Subject, err, perr)
				}
				h.fut = f
				block = true
				continue
			}
			if ack.Duplicate {
				b.m.forwardDups.Add(1)
			}
			last = &h.view
			pending = pending[1:]
			b.m.forwardPending.Add(-1)
			b.m.forwarded.Add(1)
			tc.forwarded.Add(1)
			block = false
		}
		if last != nil {
			return sub.Release(last)
		}
		return nil
	}

	for {
		if err := settle(len(pending) >= b.cfg.MaxPending); err != nil {
			return err
		}
		room := b.cfg.MaxPending - len(pending)
		if room > len(views) {
			room = len(views)
		}
		wait := 200 * time.Millisecond
		if len(pending) > 0 {
			wait = 2 * time.Millisecond
		}
		pc, cancel := context.WithTimeout(ctx, wait)
		n, err := sub.PollBatch(pc, views[:room])
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				if len(pending) > 0 {
					if err := settle(true); err != nil {
						return err
					}
				}
				continue
			}
			return err
		}
		for i := 0; i < n; i++ {
			v := views[i]
			msg, err := b.toNats(topic, idPrefix, &v)
			if err != nil {
				// Not representable: counted, logged, committed past (never retried forever).
				b.m.forwardDropped.Add(1)
				b.log.Printf("forward %s seq %d: dropped: %v", topic, v.Sequence, err)
				if len(pending) == 0 {
					if err := sub.Release(&v); err != nil {
						return err
					}
				} else {
					pending[len(pending)-1].view = v
				}
				continue
			}
			f, err := b.js.PublishMsgAsync(msg)
			if err != nil {
				return fmt.Errorf("publish %s: %v", topic, err)
			}
			pending = append(pending, fwdItem{fut: f, msg: msg, view: v})
			b.m.forwardPending.Add(1)
		}
	}
}

// toNats copies a frame into a NATS message: the payload (an envelope's payload,
// unwrapped) and the envelope's fields as headers; Nats-Msg-Id is the bus id, the
// topic, the partition and the frame's partition sequence (stable across restarts).
func (b *Bridge) toNats(topic, idPrefix string, v *shmbus.View) (*nats.Msg, error) {
	env, pv, err := v.Envelope()
	if err != nil {
		return nil, err
	}
	schema := v.SchemaID
	if env != nil {
		schema = env.PayloadSchemaID
	}
	data := make([]byte, len(pv.Data))
	copy(data, pv.Data)
	m := nats.NewMsg(topic)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, idPrefix+strconv.FormatUint(v.Sequence, 10))
	m.Header.Set(hdrOrigin, b.cfg.BusID)
	envelopeHeaders(m.Header, env, v, schema)
	return m, nil
}
