package main

// Request/response through shmbusd (docs/xlang-scenario.md, "Request/response"),
// the same exchange in every language:
//
//	xlang respond --socket S --topic T --count N [--kill-self-before-reply K]
//	xlang request --socket S --topic T --count N [--from F] [--timeout-ms MS] [--expect-timeout-at K]

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"shmbus.dev/shmbus"
)

const (
	reqSchema0        = 0x1000
	replySchemaDelta  = 0x10000
	noExpectedTimeout = ^uint64(0)
)

func requestPayload(i uint64) []byte {
	p := make([]byte, (i*37)%1500)
	for j := range p {
		p[j] = byte((i*131 + uint64(j)*7 + 3) & 0xff)
	}
	return p
}

func replyPayload(req []byte, corr uint64) []byte {
	p := make([]byte, len(req)+8)
	for j, b := range req {
		p[j] = b ^ 0xa5
	}
	binary.LittleEndian.PutUint64(p[len(req):], corr)
	return p
}

func replyStatus(i uint64) uint32 { return 200 + uint32(i%100) }

type rrConfig struct {
	socket, topic                            string
	count, from, killBefore, expectTimeoutAt uint64
	timeout                                  time.Duration
}

func parseRR(args []string) (rrConfig, error) {
	var c rrConfig
	fs := flag.NewFlagSet("xlang "+args[0], flag.ContinueOnError)
	fs.StringVar(&c.socket, "socket", "", "shmbusd's socket")
	fs.StringVar(&c.topic, "topic", "", "service topic")
	fs.Uint64Var(&c.count, "count", 0, "requests")
	fs.Uint64Var(&c.from, "from", 0, "request: first request index")
	fs.Uint64Var(&c.killBefore, "kill-self-before-reply", 0, "respond: SIGKILL itself on taking request K (1-based)")
	fs.Uint64Var(&c.expectTimeoutAt, "expect-timeout-at", noExpectedTimeout, "request: the index whose responder dies")
	ms := fs.Int("timeout-ms", 10000, "request: each request's timeout")
	if err := fs.Parse(args[1:]); err != nil {
		return c, err
	}
	c.timeout = time.Duration(*ms) * time.Millisecond
	if c.socket == "" || c.topic == "" {
		return c, errors.New("need --socket and --topic")
	}
	return c, nil
}

func rrMain(cmd string, args []string) int {
	c, err := parseRR(append([]string{cmd}, args...))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 64
	}
	ctx := context.Background()
	bus, err := shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: c.socket})
	if err != nil {
		fmt.Println("FAIL connect:", err)
		return 1
	}
	defer bus.Close()
	if cmd == "respond" {
		return respond(bus, c)
	}
	return request(bus, c)
}

func respond(bus *shmbus.Bus, c rrConfig) int {
	err := bus.CreateTopic(c.topic, shmbus.TopicConfig{Capacity: 1 << 20, MultiProducer: true})
	if err != nil && !errors.Is(err, shmbus.ErrAlreadyExists) {
		fmt.Println("FAIL create:", err)
		return 1
	}
	resp, err := bus.Responder(c.topic, nil)
	if err != nil {
		fmt.Println("FAIL responder:", err)
		return 1
	}
	defer resp.Close()
	fmt.Println("READY")
	ctx, cancel := context.WithTimeout(context.Background(), 10*c.timeout)
	defer cancel()
	var taken, answered uint64
	var bad string
	for answered < c.count && bad == "" {
		q, err := resp.Next(ctx)
		if err != nil {
			fmt.Printf("FAIL next after %d: %v\n", answered, err)
			return 1
		}
		taken++
		if taken == c.killBefore {
			syscall.Kill(os.Getpid(), syscall.SIGKILL) // holding the request, before any reply
		}
		i := q.SchemaID - reqSchema0
		e := q.Envelope
		if !q.Enveloped || e.CorrelationID == 0 || !strings.HasPrefix(e.ReplyTo, "reply.") || q.SchemaID < reqSchema0 ||
			!bytes.Equal(q.Payload, requestPayload(i)) {
			bad = fmt.Sprintf("request %d is not what was specified", i)
		}
		err = resp.Reply(q, shmbus.Response{Payload: replyPayload(q.Payload, e.CorrelationID),
			SchemaID: q.SchemaID + replySchemaDelta, Status: replyStatus(i)})
		if err != nil {
			fmt.Printf("FAIL reply %d: %v\n", i, err)
			return 1
		}
		answered++
	}
	if bad != "" {
		fmt.Println("FAIL", bad)
		return 1
	}
	fmt.Printf("OK answered=%d replied=%d\n", answered, resp.Stats().Replied)
	return 0
}

func request(bus *shmbus.Bus, c rrConfig) int {
	req, err := bus.Requester(nil)
	if err != nil {
		fmt.Println("FAIL requester:", err)
		return 1
	}
	defer req.Close()
	stdin := bufio.NewReader(os.Stdin)
	var replies, timeouts uint64
	for i := c.from; i < c.from+c.count; i++ {
		p := requestPayload(i)
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		t0 := time.Now()
		corr, err := req.Send(c.topic, p, shmbus.WithSchemaID(reqSchema0+i))
		if err != nil {
			cancel()
			fmt.Printf("FAIL send %d: %v\n", i, err)
			return 1
		}
		r, err := req.Await(ctx, corr)
		took := time.Since(t0)
		cancel()
		if i == c.expectTimeoutAt {
			if !errors.Is(err, shmbus.ErrTimedOut) || took < c.timeout || took > c.timeout+300*time.Millisecond {
				fmt.Printf("FAIL request %d: %v after %v, want a timeout after %v (+300 ms)\n", i, err, took, c.timeout)
				return 1
			}
			timeouts++
			fmt.Printf("TIMED_OUT ms=%d\n", took.Milliseconds())
			if _, err := stdin.ReadString('\n'); err != nil {
				fmt.Println("FAIL no go-ahead after the timeout")
				return 1
			}
			continue
		}
		if err != nil {
			fmt.Printf("FAIL request %d: %v after %v\n", i, err, took)
			return 1
		}
		if r.CorrelationID != corr || r.Envelope.CorrelationID != corr || r.Envelope.CausationID == 0 ||
			r.Status != replyStatus(i) || r.SchemaID != reqSchema0+i+replySchemaDelta || !bytes.Equal(r.Payload, replyPayload(p, corr)) {
			fmt.Printf("FAIL reply %d differs (status %d, schema %x, %d bytes)\n", i, r.Status, r.SchemaID, len(r.Payload))
			return 1
		}
		replies++
	}
	fmt.Printf("OK replies=%d timeouts=%d\n", replies, timeouts)
	return 0
}
