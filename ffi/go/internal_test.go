package shmbus

import "testing"

// The publisher's no-allocation path depends on capnp.Segment's layout (see
// segment_repoint.go). A Cap'n Proto library whose Segment changed must fail
// here, not silently fall back to the slower path.
func TestSegmentLayoutOfTheCapnpLibraryIsTheMirrored(t *testing.T) {
	if !segRepoint {
		t.Fatal("capnp.Segment's layout does not match segmentMirror: update segment_repoint.go")
	}
}
