package shmbus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"shmbus.dev/shmbus"
)

// reqFixture: an embedded shmbusd (ephemeral reply topics, the responder's
// confused-deputy check) with a multi-producer service topic.
func reqFixture(t *testing.T, topic string) (*shmbus.Bus, string) {
	t.Helper()
	dir := t.TempDir()
	bus, err := shmbus.OpenEmbedded(dir)
	if err != nil {
		t.Fatalf("OpenEmbedded: %v", err)
	}
	t.Cleanup(func() { bus.Close() })
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true}); err != nil {
		t.Fatal(err)
	}
	return bus, filepath.Join(dir, "shmbusd.sock")
}

func openReqResp(t *testing.T, bus *shmbus.Bus, topic string, ro *shmbus.RequesterOptions) (*shmbus.Requester, *shmbus.Responder) {
	t.Helper()
	req, err := bus.Requester(ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { req.Close() })
	resp, err := bus.Responder(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Close() })
	return req, resp
}

func TestRequestReplyRoundTripFieldByField(t *testing.T) {
	bus, _ := reqFixture(t, "go.svc")
	req, resp := openReqResp(t, bus, "go.svc", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	served := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	go func() {
		served <- resp.Serve(sctx, func(_ context.Context, q *shmbus.Request) (shmbus.Response, error) {
			switch string(q.Payload) {
			case "fail":
				return shmbus.Response{}, errors.New("db down")
			case "panic":
				panic("oops")
			case "none":
				return shmbus.Response{NoReply: true}, nil
			}
			if !q.Enveloped || q.Envelope.CorrelationID == 0 || q.Envelope.ReplyTo != req.ReplyTopic() || q.MessageID == 0 {
				return shmbus.Response{}, fmt.Errorf("bad request envelope %+v", q.Envelope)
			}
			out := append([]byte("re:"), q.Payload...)
			return shmbus.Response{Payload: out, SchemaID: q.SchemaID + 1, Status: 201}, nil
		})
	}()
	trace, _ := shmbus.ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	rep, err := req.Request(ctx, "go.svc", []byte("quote"), shmbus.WithSchemaID(0x77), shmbus.WithTrace(trace))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rep.Payload, []byte("re:quote")) || rep.Status != 201 || rep.SchemaID != 0x78 ||
		rep.Envelope.CorrelationID != rep.CorrelationID || rep.CorrelationID == 0 || rep.Envelope.CausationID == 0 ||
		rep.Envelope.Trace.TraceIDLow != trace.TraceIDLow || rep.Envelope.Trace.ParentID == trace.ParentID {
		t.Fatalf("reply %+v", rep)
	}
	// Two in flight, awaited in reverse order.
	c1, err := req.Send("go.svc", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := req.Send("go.svc", []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := req.Await(ctx, c2)
	if err != nil || string(r2.Payload) != "re:two" || r2.CorrelationID != c2 {
		t.Fatalf("await c2: %v %+v", err, r2)
	}
	r1, err := req.Await(ctx, c1)
	if err != nil || string(r1.Payload) != "re:one" || r1.CorrelationID != c1 {
		t.Fatalf("await c1: %v %+v", err, r1)
	}
	if _, err := req.Await(ctx, c1); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("await of an answered request: %v, want ErrClosed", err)
	}
	for in, want := range map[string]string{"fail": "exception: db down", "panic": "exception: panic: oops"} {
		rep, err := req.Request(ctx, "go.svc", []byte(in))
		if err != nil || rep.Status != shmbus.StatusFailed || string(rep.Payload) != want {
			t.Fatalf("%s: %v %+v", in, err, rep)
		}
	}
	stop()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve returned %v, want context.Canceled", err)
	}
	if st := resp.Stats(); st.Requests != 5 || st.Replied != 5 || st.Failed != 2 {
		t.Fatalf("responder stats %+v", st)
	}
}

func TestRequestTimesOutAtItsContextDeadline(t *testing.T) {
	bus, _ := reqFixture(t, "go.skip")
	req, resp := openReqResp(t, bus, "go.skip", nil)
	go resp.Serve(context.Background(), func(context.Context, *shmbus.Request) (shmbus.Response, error) {
		return shmbus.Response{NoReply: true}, nil
	})
	const d = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	t0 := time.Now()
	_, err := req.Request(ctx, "go.skip", []byte("x"))
	took := time.Since(t0)
	t.Logf("no reply: %v after %v (deadline %v)", err, took, d)
	if !errors.Is(err, shmbus.ErrTimedOut) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want ErrTimedOut and DeadlineExceeded", err)
	}
	if took < d-time.Millisecond || took > d+400*time.Millisecond {
		t.Fatalf("timed out after %v for a %v deadline", took, d)
	}
	if st := req.Stats(); st.InFlight != 0 || st.Timeouts != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRequestReturnsPromptlyWhenItsContextIsCancelled(t *testing.T) {
	bus, _ := reqFixture(t, "go.cancel")
	req, _ := openReqResp(t, bus, "go.cancel", nil) // a responder that never answers
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	t0 := time.Now()
	_, err := req.Request(ctx, "go.cancel", []byte("x"))
	took := time.Since(t0)
	t.Logf("cancelled: %v after %v", err, took)
	if !errors.Is(err, context.Canceled) || took > 50*time.Millisecond+300*time.Millisecond {
		t.Fatalf("err %v after %v, want context.Canceled soon after 50 ms", err, took)
	}
	if st := req.Stats(); st.InFlight != 0 {
		t.Fatalf("a cancelled request is still in flight: %+v", st)
	}
}

func TestRequesterClosedWhileAGoroutineAwaits(t *testing.T) {
	bus, _ := reqFixture(t, "go.close")
	req, resp := openReqResp(t, bus, "go.close", nil)
	done := make(chan error, 1)
	go func() {
		_, err := req.Request(context.Background(), "go.close", []byte("x")) // no deadline
		done <- err
	}()
	// The request reached the responder: the goroutine is sending or awaiting.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := resp.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := req.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Logf("awaiting goroutine: %v, %v after Close began", err, time.Since(t0))
		if !errors.Is(err, shmbus.ErrClosed) {
			t.Fatalf("err %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Request still waiting 5 s after Close")
	}
	// Its reply topic is gone: the reply is undeliverable, not a crash.
	if err := resp.Reply(q, shmbus.Response{Payload: []byte("late")}); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("reply to a closed requester: %v, want ErrClosed", err)
	}
	if _, err := req.Send("go.close", nil); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
	req.Close()
}

func TestReplyBiggerThanTheReplyRingIsRefusedAndTheRequestTimesOut(t *testing.T) {
	bus, _ := reqFixture(t, "go.big")
	req, resp := openReqResp(t, bus, "go.big", &shmbus.RequesterOptions{Capacity: 4096})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	corr, err := req.Send("go.big", []byte("big?"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := resp.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Reply(q, shmbus.Response{Payload: make([]byte, 8192)}); !errors.Is(err, shmbus.ErrTooLarge) {
		t.Fatalf("reply of 8 KiB into a 4 KiB reply ring: %v, want ErrTooLarge", err)
	}
	if err := resp.Reply(q, shmbus.Response{}); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("second reply: %v, want ErrInvalidArgument", err)
	}
	actx, acancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer acancel()
	if _, err := req.Await(actx, corr); !errors.Is(err, shmbus.ErrTimedOut) {
		t.Fatalf("await: %v, want ErrTimedOut", err)
	}
	if st := resp.Stats(); st.Undeliverable != 1 {
		t.Fatalf("responder stats %+v", st)
	}
}

// forgerMain (this binary run again): publishes, on the reply topic, a reply with the
// request's correlation id and a guessed causation id, and a garbage frame flagged as
// an envelope; exit 0 when both were published.
func forgerMain(sock string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus, err := shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: sock})
	if err != nil {
		fmt.Println("forger: connect:", err)
		os.Exit(1)
	}
	defer bus.Close()
	pub, err := bus.Publisher(os.Getenv("SHMBUS_GO_FORGER_TOPIC"), nil)
	if err != nil {
		fmt.Println("forger: publisher:", err)
		os.Exit(1)
	}
	defer pub.Close()
	corr, _ := strconv.ParseUint(os.Getenv("SHMBUS_GO_FORGER_CORR"), 10, 64)
	guess, _ := strconv.ParseUint(os.Getenv("SHMBUS_GO_FORGER_GUESS"), 10, 64)
	env := shmbus.Envelope{CorrelationID: corr, CausationID: guess, Status: 0}
	if err := pub.OfferEnveloped(ctx, &env, []byte("forged"), 0); err != nil {
		fmt.Println("forger: offer:", err)
		os.Exit(1)
	}
	if err := pub.Offer(ctx, []byte("garbage!"), 0, shmbus.EnvelopeSchemaID); err != nil {
		fmt.Println("forger: offer garbage:", err)
		os.Exit(1)
	}
}

func TestForgedReplyFromAnotherProcessIsDropped(t *testing.T) {
	bus, sock := reqFixture(t, "go.forge")
	req, resp := openReqResp(t, bus, "go.forge", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	corr, err := req.Send("go.forge", []byte("real?"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := resp.Next(ctx) // taken, not answered yet
	if err != nil {
		t.Fatal(err)
	}
	// Another process knows the correlation id (say, it read the request) but not the
	// request frame's message id: it guesses one.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SHMBUS_GO_FORGER_SOCK="+sock, "SHMBUS_GO_FORGER_TOPIC="+req.ReplyTopic(),
		"SHMBUS_GO_FORGER_CORR="+strconv.FormatUint(corr, 10),
		"SHMBUS_GO_FORGER_GUESS="+strconv.FormatUint(q.MessageID^1, 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("forger: %v: %s", err, out)
	}
	if err := resp.Reply(q, shmbus.Response{Payload: []byte("real")}); err != nil {
		t.Fatal(err)
	}
	rep, err := req.Await(ctx, corr)
	if err != nil || string(rep.Payload) != "real" || rep.Envelope.CausationID != q.MessageID {
		t.Fatalf("await: %v %+v", err, rep)
	}
	if st := req.Stats(); st.Forged != 1 || st.Malformed != 1 || st.Replies != 1 {
		t.Fatalf("stats %+v: want the forged reply and the garbage dropped and counted", st)
	}
}

func TestResponderRefusesAReplyToThatIsNoReplyTopic(t *testing.T) {
	bus, _ := reqFixture(t, "go.deputy")
	if err := bus.CreateTopic("go.victim", shmbus.TopicConfig{Capacity: 1 << 16, MultiProducer: true}); err != nil {
		t.Fatal(err)
	}
	_, resp := openReqResp(t, bus, "go.deputy", nil)
	victim, err := bus.Subscriber("go.victim", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	pub, err := bus.Publisher("go.deputy", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	env := shmbus.Envelope{CorrelationID: 5, ReplyTo: "go.victim"}
	if err := pub.OfferEnveloped(ctx, &env, []byte("x"), 9); err != nil {
		t.Fatal(err)
	}
	q, err := resp.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Reply(q, shmbus.Response{Payload: []byte("into the victim")}); !errors.Is(err, shmbus.ErrPermissionDenied) {
		t.Fatalf("reply: %v, want ErrPermissionDenied", err)
	}
	if _, err := victim.TryPoll(); !errors.Is(err, shmbus.ErrEmpty) {
		t.Fatalf("something landed on the victim topic: %v", err)
	}
}
