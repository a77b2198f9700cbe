package shmbus_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	shmbus "shmbus.dev/shmbus"
)

// In SHMBUS_DEBUG_VIEWS mode a view used after its release fails loudly: Message
// and Envelope panic naming the rule, and a read of its bytes faults (the runtime
// stops the program with "unexpected fault address"), where without the mode the
// read silently returns what the producer wrote there since. Each case runs in a
// child process (the fault is fatal), this test binary re-executed with -test.run.
func TestDebugViewsCatchUseAfterRelease(t *testing.T) {
	if mode := os.Getenv("SHMBUS_DEBUG_VIEWS_CASE"); mode != "" {
		debugViewsChild(mode)
		return
	}
	for _, c := range []struct{ mode, debug, want string }{
		{"message", "1", "used after release (Reader.Read; SHMBUS_DEBUG_VIEWS)"},
		{"envelope", "1", "used after release (Envelope; SHMBUS_DEBUG_VIEWS)"},
		{"bytes", "1", "unexpected fault address"},
		{"bytes-after-releaseall", "1", "unexpected fault address"},
		{"bytes-after-close", "1", "unexpected fault address"},
		{"bytes", "0", "READ-AFTER-RELEASE-GOT-OTHER-BYTES"}, // the silent bug the mode exists for
		{"live", "1", "LIVE-VIEWS-OK"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestDebugViewsCatchUseAfterRelease$")
		cmd.Env = append(os.Environ(), "SHMBUS_DEBUG_VIEWS_CASE="+c.mode, "SHMBUS_DEBUG_VIEWS="+c.debug,
			"SHMBUS_DEBUG_VIEWS_PREFIX="+prefix+"-dbg") // this process's, so that it can remove the topic
		out, _ := cmd.CombinedOutput()
		removeDebugViewsTopic(t) // a child that faulted could not
		if !strings.Contains(string(out), c.want) {
			t.Errorf("case %s (SHMBUS_DEBUG_VIEWS=%s): want %q in the output, got:\n%s", c.mode, c.debug, c.want, out)
		}
	}
}

// removeDebugViewsTopic removes the children's topic (its /dev/shm files).
func removeDebugViewsTopic(t *testing.T) {
	bus, err := shmbus.OpenDirect(prefix + "-dbg")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if err := bus.RemoveTopic(debugViewsTopic); err != nil && !errors.Is(err, shmbus.ErrNotFound) {
		t.Errorf("removing %s: %v", debugViewsTopic, err)
	}
}

const debugViewsTopic = "go.debugviews"

func debugViewsChild(mode string) {
	bus, err := shmbus.OpenDirect(os.Getenv("SHMBUS_DEBUG_VIEWS_PREFIX"))
	if err != nil {
		panic(err)
	}
	topic := debugViewsTopic
	_ = bus.RemoveTopic(topic)
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 4096}); err != nil {
		panic(err)
	}
	defer bus.RemoveTopic(topic)
	sub, err := bus.Subscriber(topic, nil)
	if err != nil {
		panic(err)
	}
	pub, err := bus.Publisher(topic, nil)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A flat Cap'n Proto message (empty struct root) of 64 bytes, stamped with a.
	msg := func(a byte) []byte {
		b := make([]byte, 64)
		b[4] = 7 // one segment of 7 words
		for i := 16; i < 64; i++ {
			b[i] = a
		}
		return b
	}
	if mode == "envelope" {
		env := &shmbus.Envelope{CorrelationID: 42}
		if err := pub.OfferEnveloped(ctx, env, msg('a'), 1); err != nil {
			panic(err)
		}
	} else if err := pub.Offer(ctx, msg('a'), 1, 0); err != nil {
		panic(err)
	}
	v, err := sub.Poll(ctx)
	if err != nil {
		panic(err)
	}
	keep := v.Data
	switch mode {
	case "bytes-after-releaseall":
		_ = sub.ReleaseAll()
	case "bytes-after-close":
		_ = sub.Close()
	case "live":
		// Views not yet released read normally, as many as polled.
		if _, err := v.Message(); err != nil {
			panic(err)
		}
		if keep[20] != 'a' {
			panic("live view reads wrong bytes")
		}
		println("LIVE-VIEWS-OK")
		return
	default:
		_ = sub.Release(&v)
	}
	// The ring slot is reused: fill the ring so the old frame's bytes change.
	for i := 0; i < 200; i++ {
		if err := pub.Offer(ctx, msg('z'), 2, 0); err != nil {
			break
		}
		if w, err := sub.TryPoll(); err == nil {
			_ = sub.Release(&w)
		}
	}
	switch mode {
	case "message":
		_, _ = v.Message()
	case "envelope":
		_, _, _ = v.Envelope()
	default:
		if keep[20] != 'a' {
			println("READ-AFTER-RELEASE-GOT-OTHER-BYTES")
		} else {
			println("READ-AFTER-RELEASE-SAME-BYTES")
		}
	}
}
