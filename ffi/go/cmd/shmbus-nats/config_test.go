package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"shmbus.dev/shmbus"
)

func TestConfigPatternsAndRefusals(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (*Config, error) {
		p := filepath.Join(dir, "c.toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return loadConfig(p)
	}
	c, err := load("state_dir = \"/tmp/x\"\nbus_id = \"a\"\nshmbus_cli = \"shmbus\"\n[forward]\ntopics = [\"orders.>\", \"fx.spot\"]\n[[import]]\nsubject = \"quotes.*\"\ndurable = \"q\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.NatsURL != "nats://127.0.0.1:4222" || c.Stream != "SHMBUS" || c.DedupWindow.Minutes() != 2 || c.Forward.Durable != "shmbus-nats" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	for _, bad := range []struct{ body, want string }{
		{"state_dir = \"/x\"\n[forward]\ntopics = [\"orders.>\"]\n[[import]]\nsubject = \"orders.eu\"\ndurable = \"o\"\nshmbus_cli = \"s\"\n", ""},
		{"state_dir = \"/x\"\nshmbus_cli = \"s\"\n[forward]\ntopics = [\"orders.>\"]\n[[import]]\nsubject = \"orders.eu\"\ndurable = \"o\"\n", "loop"},
		{"state_dir = \"/x\"\n[forward]\ntopics = [\"orders.>\"]\n", "shmbus_cli"},
		{"state_dir = \"/x\"\n[[import]]\nsubject = \"a.>\"\ndurable = \"x\"\n[[import]]\nsubject = \"a.b\"\ndurable = \"y\"\n", "overlap"},
		{"state_dir = \"/x\"\n[[import]]\nsubject = \"a.>.b\"\ndurable = \"x\"\n", "last token"},
		{"state_dir = \"/x\"\n[[import]]\nsubject = \"a..b\"\ndurable = \"x\"\n", "empty token"},
		{"state_dir = \"/x\"\n[[import]]\nsubject = \"a.b\"\ndurable = \"x.y\"\n", "durable"},
		{"[[import]]\nsubject = \"a.b\"\ndurable = \"x\"\n", "state_dir"},
		{"state_dir = \"/x\"\nunknown_key = 1\n", "unknown"},
	} {
		if _, err := load(bad.body); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("config %q: want an error naming %q, got %v", bad.body, bad.want, err)
		}
	}
	for _, m := range []struct {
		p, n string
		want bool
	}{{"orders.>", "orders.eu", true}, {"orders.>", "orders", false}, {"orders.*", "orders.eu.x", false},
		{"orders.*.x", "orders.eu.x", true}, {"a.b", "a.b", true}, {"a.b", "a.c", false}} {
		if matches(m.p, m.n) != m.want {
			t.Fatalf("matches(%q, %q) != %v", m.p, m.n, m.want)
		}
	}
	if got := minimalSubjects([]string{"orders.eu"}, []string{"orders.>", "quotes.us", "quotes.>"}); strings.Join(got, ",") != "orders.>,quotes.>" {
		t.Fatalf("stream subjects %v", got)
	}
}

// Headers are what any NATS client may send: a round trip keeps the envelope, and
// every malformed or hostile value makes the message plain (never a crash, never a
// half-read envelope).
func TestEnvelopeHeadersRoundTripAndHostile(t *testing.T) {
	env := &shmbus.Envelope{CorrelationID: 42, CausationID: 7, ReplyTo: "replies.a", ContentVersion: 2, Status: 5,
		Trace: shmbus.TraceContext{TraceIDHigh: 1, TraceIDLow: 2, ParentID: 3, Flags: 1, State: "a=b"}, PayloadSchemaID: 0xfeed}
	h := nats.Header{}
	envelopeHeaders(h, env, &shmbus.View{MessageID: 9, ProducerID: 4}, env.PayloadSchemaID)
	schema, got, ok := parseEnvelope(h)
	if !ok || got == nil || *got != *env || schema != 0xfeed {
		t.Fatalf("round trip: ok %v, schema %#x, %+v", ok, schema, got)
	}
	if s, e, ok := parseEnvelope(nats.Header{hdrSchema: {"0x10"}}); !ok || e != nil || s != 0x10 {
		t.Fatalf("plain message: %v %v %#x", ok, e, s)
	}
	for name, mutate := range map[string]func(nats.Header){
		"repeated header":     func(h nats.Header) { h.Add(hdrCorrelation, "1") },
		"schema not hex":      func(h nats.Header) { h.Set(hdrSchema, "12") },
		"schema overflow":     func(h nats.Header) { h.Set(hdrSchema, "0x1ffffffffffffffff") },
		"negative id":         func(h nats.Header) { h.Set(hdrCausation, "-1") },
		"version over 32 bit": func(h nats.Header) { h.Set(hdrVersion, "4294967296") },
		"envelope flag":       func(h nats.Header) { h.Set(hdrEnvelope, "yes") },
		"reply-to too long":   func(h nats.Header) { h.Set(hdrReplyTo, strings.Repeat("a", shmbus.MaxReplyTo+1)) },
		"reply-to wildcard":   func(h nats.Header) { h.Set(hdrReplyTo, "replies.>") },
		"reply-to control":    func(h nats.Header) { h.Set(hdrReplyTo, "a\x01b") },
		"traceparent":         func(h nats.Header) { h.Set(hdrTraceparent, "00-zz-00-01") },
		"traceparent zero id": func(h nats.Header) { h.Set(hdrTraceparent, "00-00000000000000000000000000000000-0000000000000003-01") },
		"tracestate too long": func(h nats.Header) { h.Set(hdrTracestate, strings.Repeat("x", shmbus.MaxTraceState+1)) },
	} {
		c := nats.Header{}
		for k, v := range h {
			c[k] = append([]string(nil), v...)
		}
		mutate(c)
		if s, e, ok := parseEnvelope(c); ok || e != nil || s != 0 {
			t.Fatalf("%s: accepted (ok %v, env %+v, schema %#x)", name, ok, e, s)
		}
	}
}
