package shmbus_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	shmbus "shmbus.dev/shmbus"
	"shmbus.dev/shmbus/market"
)

// compileSchema runs `capnp compile -o-` on tests/ffi/schema/<file>: the
// CodeGeneratorRequest the daemon's registry takes (the capnp tool is installed by
// tools/setup).
func compileSchema(t *testing.T, file string) []byte {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(self), "..", "..", "tests", "ffi", "schema")
	out, err := exec.Command("capnp", "compile", "-o-", "--src-prefix="+dir, filepath.Join(dir, file)).Output()
	if err != nil {
		t.Fatalf("capnp compile %s: %v", file, err)
	}
	return out
}

// The schema registry from Go: the generated code's schema is presented at open; a
// version that breaks the stored one is refused naming the field and the rule, for
// a publisher and a subscriber; a compatible evolution becomes version 2 and the old
// version still opens; a direct bus has no registry.
func TestSchemaRegistryFromGo(t *testing.T) {
	quote, err := shmbus.SchemaOf(market.RegisterSchema, market.Quote_TypeID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shmbus.SchemaOf(market.RegisterSchema, 0x1234); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("SchemaOf an unknown id: want ErrInvalidArgument, got %v", err)
	}
	broken := &shmbus.Schema{RootID: market.Quote_TypeID, Nodes: compileSchema(t, "market_broken.capnp")}
	evolved := &shmbus.Schema{RootID: market.Quote_TypeID, Nodes: compileSchema(t, "market_evolved.capnp")}

	direct, err := shmbus.OpenDirect(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.RegisterSchema("go.schema", quote); !errors.Is(err, shmbus.ErrUnsupported) {
		t.Fatalf("direct bus: want ErrUnsupported, got %v", err)
	}
	direct.Close()

	bus, err := shmbus.OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	cfg := shmbus.TopicConfig{Capacity: 1 << 16, SchemaID: market.Quote_TypeID}

	// Another team registered a Quote whose bidPx is Text: Go's Quote is refused.
	if err := bus.CreateTopic("go.schema.other", cfg); err != nil {
		t.Fatal(err)
	}
	if v, err := bus.RegisterSchema("go.schema.other", broken); err != nil || v != 1 {
		t.Fatalf("register the other version: %d %v", v, err)
	}
	const want = "field 'bidPx' @1 changed type Text -> Int64"
	_, err = bus.Publisher("go.schema.other", &shmbus.PublisherOptions{Schema: quote})
	if !errors.Is(err, shmbus.ErrIncompatible) || !strings.Contains(err.Error(), want) {
		t.Fatalf("incompatible publisher: want ErrIncompatible naming %q, got %v", want, err)
	}
	_, err = bus.Subscriber("go.schema.other", &shmbus.SubscriberOptions{Schema: quote})
	if !errors.Is(err, shmbus.ErrIncompatible) || !strings.Contains(err.Error(), want) {
		t.Fatalf("incompatible subscriber: want ErrIncompatible naming %q, got %v", want, err)
	}
	if _, err := bus.CheckSchema("go.schema.other", quote); !errors.Is(err, shmbus.ErrIncompatible) {
		t.Fatalf("check: want ErrIncompatible, got %v", err)
	}

	// Go's Quote first: version 1; the evolution is version 2; Go's still opens.
	if err := bus.CreateTopic("go.schema", cfg); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher("go.schema", &shmbus.PublisherOptions{Schema: quote})
	if err != nil {
		t.Fatalf("publisher with its schema: %v", err)
	}
	pub.Close()
	if v, err := bus.CheckSchema("go.schema", quote); err != nil || v != 1 {
		t.Fatalf("Go's Quote is not version 1: %d %v", v, err)
	}
	if v, err := bus.RegisterSchema("go.schema", evolved); err != nil || v != 2 {
		t.Fatalf("the evolution is not version 2: %d %v", v, err)
	}
	if _, err := bus.RegisterSchema("go.schema", broken); !errors.Is(err, shmbus.ErrIncompatible) {
		t.Fatalf("broken after v2: want ErrIncompatible, got %v", err)
	}
	sub, err := bus.Subscriber("go.schema", &shmbus.SubscriberOptions{Schema: quote})
	if err != nil {
		t.Fatalf("an old reader after version 2: %v", err)
	}
	sub.Close()
	pub, err = bus.Publisher("go.schema", &shmbus.PublisherOptions{Schema: quote})
	if err != nil {
		t.Fatalf("an old producer after version 2: %v", err)
	}
	pub.Close()
	if _, err := bus.RegisterSchema("go.schema", &shmbus.Schema{RootID: market.Quote_TypeID, Nodes: []byte{1, 2, 3, 4, 5, 6, 7, 8}}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("garbage nodes: want ErrInvalidArgument, got %v", err)
	}
	if _, err := bus.RegisterSchema("go.schema", &shmbus.Schema{RootID: market.Quote_TypeID}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("no nodes: want ErrInvalidArgument, got %v", err)
	}
}

// The schema mode from Go: backward refuses Go's Quote after a version whose bidPx is
// Text; SetSchemaMode(SchemaNone) and the same Quote is stored; the reverse, none
// then backward, turns an accepted check into a refusal. A mode outside the
// constants, an unknown topic and a direct bus are refused.
func TestSchemaModeFromGo(t *testing.T) {
	quote, err := shmbus.SchemaOf(market.RegisterSchema, market.Quote_TypeID)
	if err != nil {
		t.Fatal(err)
	}
	broken := &shmbus.Schema{RootID: market.Quote_TypeID, Nodes: compileSchema(t, "market_broken.capnp")}

	direct, err := shmbus.OpenDirect(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.SetSchemaMode("go.mode", shmbus.SchemaNone); !errors.Is(err, shmbus.ErrUnsupported) {
		t.Fatalf("direct bus: want ErrUnsupported, got %v", err)
	}
	direct.Close()

	bus, err := shmbus.OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	cfg := shmbus.TopicConfig{Capacity: 1 << 16, SchemaID: market.Quote_TypeID}

	// backward -> none: the refused Quote is stored.
	if err := bus.CreateTopic("go.mode", cfg); err != nil {
		t.Fatal(err)
	}
	if v, err := bus.RegisterSchema("go.mode", broken); err != nil || v != 1 {
		t.Fatalf("register the other version: %d %v", v, err)
	}
	if _, err := bus.RegisterSchema("go.mode", quote); !errors.Is(err, shmbus.ErrIncompatible) {
		t.Fatalf("backward: want ErrIncompatible, got %v", err)
	}
	if err := bus.SetSchemaMode("go.mode", shmbus.SchemaMode(4)); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("mode 4: want ErrInvalidArgument, got %v", err)
	}
	if err := bus.SetSchemaMode("go.nosuch", shmbus.SchemaNone); !errors.Is(err, shmbus.ErrNotFound) {
		t.Fatalf("no such topic: want ErrNotFound, got %v", err)
	}
	if err := bus.SetSchemaMode("go.mode", shmbus.SchemaNone); err != nil {
		t.Fatalf("SetSchemaMode(none): %v", err)
	}
	if v, err := bus.RegisterSchema("go.mode", quote); err != nil || v != 2 {
		t.Fatalf("none: want Go's Quote stored as version 2, got %d %v", v, err)
	}

	// none -> backward: what none accepts is refused again.
	if err := bus.CreateTopic("go.mode.back", cfg); err != nil {
		t.Fatal(err)
	}
	if err := bus.SetSchemaMode("go.mode.back", shmbus.SchemaNone); err != nil {
		t.Fatal(err)
	}
	if v, err := bus.RegisterSchema("go.mode.back", quote); err != nil || v != 1 {
		t.Fatalf("register Go's Quote: %d %v", v, err)
	}
	if v, err := bus.CheckSchema("go.mode.back", broken); err != nil || v != 2 {
		t.Fatalf("none: want the other version accepted as 2, got %d %v", v, err)
	}
	if err := bus.SetSchemaMode("go.mode.back", shmbus.SchemaBackward); err != nil {
		t.Fatal(err)
	}
	const want = "field 'bidPx' @1 changed type Int64 -> Text (backward)"
	if _, err := bus.CheckSchema("go.mode.back", broken); !errors.Is(err, shmbus.ErrIncompatible) || !strings.Contains(err.Error(), want) {
		t.Fatalf("backward again: want ErrIncompatible naming %q, got %v", want, err)
	}
	if s := shmbus.SchemaFull.String(); s != "full" {
		t.Fatalf("SchemaFull.String() = %q", s)
	}
}
