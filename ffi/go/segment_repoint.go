package shmbus

import (
	"reflect"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
)

// The publisher builds every message in ring memory through one capnp.Message
// whose single segment it repoints at each new claim, instead of a new message
// and arena per claim (an allocation and the capnp set-up per message). The
// Cap'n Proto library has no exported way to repoint a segment, so this writes
// its data field through a mirror of the struct. segRepoint is true only if the
// library's Segment has exactly the fields the mirror expects (names, types,
// offsets: checked with reflect when the package loads); otherwise the publisher
// falls back to a new arena per claim, which is correct but slower.
type segmentMirror struct {
	msg  *capnp.Message
	id   capnp.SegmentID
	data []byte
}

var segRepoint = segmentLayoutMatches()

func segmentLayoutMatches() bool {
	want := reflect.TypeOf(segmentMirror{})
	got := reflect.TypeOf(capnp.Segment{})
	if got.Size() != want.Size() || got.NumField() != want.NumField() {
		return false
	}
	for i := 0; i < want.NumField(); i++ {
		w, g := want.Field(i), got.Field(i)
		if w.Name != g.Name || w.Type != g.Type || w.Offset != g.Offset {
			return false
		}
	}
	// And behaviourally: Data() returns what was written.
	var s capnp.Segment
	b := make([]byte, 8, 16)
	setSegData(&s, b)
	d := s.Data()
	return len(d) == 8 && cap(d) == 16 && unsafe.SliceData(d) == unsafe.SliceData(b)
}

// setSegData points s at b (ring memory of the open claim, or nil).
func setSegData(s *capnp.Segment, b []byte) {
	(*segmentMirror)(unsafe.Pointer(s)).data = b
}
