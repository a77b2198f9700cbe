package shmbus_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"shmbus.dev/shmbus"
)

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// W3C trace context through the C ABI: parse, format, new traces and child spans.
func TestTraceContext(t *testing.T) {
	tc, err := shmbus.ParseTraceparent(testTraceparent)
	if err != nil || tc.TraceIDHigh != 0x4bf92f3577b34da6 || tc.TraceIDLow != 0xa3ce929d0e0e4736 ||
		tc.ParentID != 0x00f067aa0ba902b7 || tc.Flags != 1 {
		t.Fatalf("parse: %+v %v", tc, err)
	}
	if got := tc.Traceparent(); got != testTraceparent {
		t.Fatalf("format: %q", got)
	}
	for _, bad := range []string{strings.ToUpper(testTraceparent), "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		testTraceparent[:52], ""} {
		if _, err := shmbus.ParseTraceparent(bad); !errors.Is(err, shmbus.ErrInvalidArgument) {
			t.Fatalf("parse %q: want ErrInvalidArgument, got %v", bad, err)
		}
	}
	if (shmbus.TraceContext{}).Traceparent() != "" || (shmbus.TraceContext{}).Child().Valid() {
		t.Fatal("the zero trace formats or continues")
	}
	a, b := shmbus.NewTrace(), shmbus.NewTrace()
	if !a.Valid() || a.Flags != 1 || (a.TraceIDHigh == b.TraceIDHigh && a.TraceIDLow == b.TraceIDLow) {
		t.Fatalf("new traces: %+v %+v", a, b)
	}
	tc.State = "congo=t61rcWkgMzE"
	c := tc.Child()
	if c.TraceIDHigh != tc.TraceIDHigh || c.TraceIDLow != tc.TraceIDLow || c.ParentID == tc.ParentID || c.ParentID == 0 || c.State != tc.State {
		t.Fatalf("child: %+v of %+v", c, tc)
	}
}

// Every envelope field and the payload round-trip through a ring (the payload read in
// place with its own schema id); a plain frame is not an envelope; a frame flagged as
// an envelope over garbage is ErrMalformed; bad texts are refused before publishing.
func TestEnvelopeRoundTripAndHostileFrames(t *testing.T) {
	ctx := ctxT(t)
	bus, topic := newTopic(t, shmbus.TopicConfig{Capacity: 1 << 16})
	sub, err := bus.Subscriber(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	tc, _ := shmbus.ParseTraceparent(testTraceparent)
	tc.State = "congo=t61rcWkgMzE"
	env := &shmbus.Envelope{CorrelationID: 42, CausationID: 41, ReplyTo: "orders.reply", Trace: tc,
		ContentVersion: 3, Status: 404, PayloadSchemaID: 0x1234abcd}
	payload := []byte("an order, 24 bytes long!")
	if err := pub.OfferEnveloped(ctx, env, payload, 7); err != nil {
		t.Fatal(err)
	}
	v, err := sub.Poll(ctx)
	if err != nil || v.SchemaID != shmbus.EnvelopeSchemaID || v.MessageID != 7 {
		t.Fatalf("poll: %+v %v", v, err)
	}
	got, p, err := v.Envelope()
	if err != nil || got == nil {
		t.Fatalf("Envelope: %v %v", got, err)
	}
	if *got != *env {
		t.Fatalf("envelope: got %+v, want %+v", *got, *env)
	}
	if !bytes.Equal(p.Data, payload) || p.SchemaID != 0x1234abcd || p.MessageID != 7 || p.Sequence != v.Sequence {
		t.Fatalf("payload view: %+v", p)
	}
	if got.Trace.Traceparent() != testTraceparent {
		t.Fatalf("traceparent: %q", got.Trace.Traceparent())
	}
	if err := sub.Release(&v); err != nil {
		t.Fatal(err)
	}

	// Not an envelope: nil, and the view itself.
	if err := pub.Offer(ctx, payload[:16], 9, 77); err != nil {
		t.Fatal(err)
	}
	v, _ = sub.Poll(ctx)
	if e, p, err := v.Envelope(); e != nil || err != nil || p.SchemaID != 77 || len(p.Data) != 16 {
		t.Fatalf("plain frame: %v %+v %v", e, p, err)
	}
	sub.Release(&v)

	// Garbage under the envelope's schema id.
	garbage := []byte{0xff, 0xff, 0xff, 0xff, 5, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8}
	if err := pub.Offer(ctx, garbage, 10, shmbus.EnvelopeSchemaID); err != nil {
		t.Fatal(err)
	}
	v, _ = sub.Poll(ctx)
	if e, _, err := v.Envelope(); e != nil || !errors.Is(err, shmbus.ErrMalformed) {
		t.Fatalf("garbage envelope: want ErrMalformed, got %v %v", e, err)
	}
	sub.Release(&v)

	// Refused before anything is published.
	for _, bad := range []*shmbus.Envelope{
		{ReplyTo: strings.Repeat("a", shmbus.MaxReplyTo+1)},
		{ReplyTo: "a\x00b"},
		{Trace: shmbus.TraceContext{TraceIDLow: 1}}, // no parent id
	} {
		if err := pub.OfferEnveloped(ctx, bad, payload, 1); !errors.Is(err, shmbus.ErrInvalidArgument) {
			t.Fatalf("%+v: want ErrInvalidArgument, got %v", bad, err)
		}
	}
	if _, err := sub.TryPoll(); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("a refused envelope was published: %v", err)
	}
}

// An envelope written by Go, read by the C++ tool: `shmbus replay` (SHMBUS_CLI, the
// build's tools/shmbus; skipped without it) prints its fields as JSON.
func TestEnvelopeWrittenByGoReadByTheCxxTool(t *testing.T) {
	cli := os.Getenv("SHMBUS_CLI")
	if cli == "" {
		t.Skip("SHMBUS_CLI (the build's tools/shmbus) is not set")
	}
	ctx := ctxT(t)
	dir := t.TempDir()
	bus, err := shmbus.OpenEmbedded(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	const topic = "go.env.xlang"
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 16, Durable: &shmbus.DurableConfig{Flush: shmbus.FlushBatch}}); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	tc, _ := shmbus.ParseTraceparent(testTraceparent)
	tc.State = "congo=t61rcWkgMzE"
	env := &shmbus.Envelope{CorrelationID: 42, CausationID: 41, ReplyTo: "orders.reply", Trace: tc,
		ContentVersion: 3, Status: 404, PayloadSchemaID: 0x1234abcd}
	if err := pub.OfferEnveloped(ctx, env, []byte("an order, 24 bytes long!"), 7); err != nil {
		t.Fatal(err)
	}
	if err := pub.WaitDurable(ctx, 1); err != nil { // the first frame of the partition
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, cli, "--socket", filepath.Join(dir, "shmbusd.sock"), "replay", topic,
		"--count", "1").Output()
	if err != nil {
		t.Fatalf("shmbus replay: %v (%s)", err, out)
	}
	var line struct {
		MessageID string         `json:"message_id"`
		Len       int            `json:"len"`
		SchemaID  string         `json:"schema_id"`
		Envelope  map[string]any `json:"envelope"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &line); err != nil {
		t.Fatalf("shmbus replay printed %q: %v", out, err)
	}
	want := map[string]any{"correlationId": "0x000000000000002a", "causationId": "0x0000000000000029", "replyTo": "orders.reply",
		"traceparent": testTraceparent, "tracestate": "congo=t61rcWkgMzE", "contentVersion": 3.0, "status": 404.0,
		"payloadSchemaId": "0x000000001234abcd"}
	for k, v := range want {
		if line.Envelope[k] != v {
			t.Fatalf("envelope field %s: C++ read %v, want %v (line %s)", k, line.Envelope[k], v, out)
		}
	}
	if line.MessageID != "0x0000000000000007" || line.Len != 24 || line.SchemaID != "0x000000001234abcd" {
		t.Fatalf("frame: %s", out)
	}
}
