package main

import (
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"shmbus.dev/shmbus"
)

// Every producer version reads back correctly under every consumer version
// (schema evolution both ways), and a changed field is caught.
func TestScenarioContentSurvivesSchemaEvolution(t *testing.T) {
	for _, schema := range []string{"quote", "order"} {
		for _, pv := range []int{1, 2} {
			for _, cv := range []int{1, 2} {
				prod := config{schema: schema, version: pv}
				cons := config{schema: schema, version: cv}
				for _, i := range []uint64{1, 2, 999, 1 << 40} {
					msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
					if err != nil {
						t.Fatal(err)
					}
					if err := build(prod, seg, i); err != nil {
						t.Fatal(err)
					}
					b, err := msg.Marshal()
					if err != nil {
						t.Fatal(err)
					}
					v := shmbus.View{Data: b, MessageID: i, SchemaID: schemaID(prod)}
					var r shmbus.Reader
					m, err := r.Read(&v)
					if err != nil {
						t.Fatal(err)
					}
					if err := check(cons, m, &v, i); err != nil {
						t.Fatalf("%s v%d -> v%d, seq %d: %v", schema, pv, cv, i, err)
					}
					if err := check(cons, m, &v, i+1); err == nil {
						t.Fatalf("%s v%d -> v%d: content of seq %d accepted as seq %d", schema, pv, cv, i, i+1)
					}
					v.SchemaID = 0x1234
					if err := check(cons, m, &v, i); err == nil {
						t.Fatal("a foreign schema id was accepted")
					}
				}
			}
		}
	}
}
