package main

// Tests of the bridge against real processes: a nats-server (the Debian package,
// started and restarted by the test), two shmbusd daemons with different shm
// prefixes (two buses on one machine) and the bridge built from this package and
// run as a child process (SIGKILLed by the trials).

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"shmbus.dev/shmbus"
)

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "../../../.."))
}

// tool finds a program: $env, then the candidates; the test fails without it (a
// missing dependency is a failure, never a skip).
func tool(t *testing.T, env string, candidates ...string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		candidates = append([]string{p}, candidates...)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found (set %s; tools/setup installs nats-server, meson builds shmbusd and shmbus)", candidates, env)
	return ""
}

func buildDir(t *testing.T) string {
	if d := os.Getenv("BUILD_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "build")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bridgeBin != "" {
		os.RemoveAll(filepath.Dir(bridgeBin))
	}
	os.Exit(code)
}

var (
	bridgeOnce sync.Once
	bridgeBin  string
	bridgeErr  error
)

// bridgeBinary builds this command once per test binary (a normal build: the
// bridge's own speed is measured, not the race detector's).
func bridgeBinary(t *testing.T) string {
	bridgeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shmbus-nats-bin")
		if err != nil {
			bridgeErr = err
			return
		}
		bridgeBin = filepath.Join(dir, "shmbus-nats")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bridgeBin, ".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			bridgeErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bridgeErr != nil {
		t.Fatal(bridgeErr)
	}
	return bridgeBin
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitUntil polls cond every 10 ms until it holds or d passes (then fails with what).
func waitUntil(t *testing.T, d time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (last error: %v)", what, d, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type natsServer struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
}

func startNats(t *testing.T) *natsServer {
	s := &natsServer{t: t, bin: tool(t, "NATS_SERVER", "nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"),
		dir: t.TempDir(), port: freePort(t)}
	s.start()
	t.Cleanup(func() { s.stop(syscall.SIGKILL) })
	return s
}

func (s *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

func (s *natsServer) start() {
	s.t.Helper()
	log, err := os.OpenFile(filepath.Join(s.dir, "nats-server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd = exec.Command(s.bin, "-js", "-sd", filepath.Join(s.dir, "store"), "-a", "127.0.0.1", "-p", strconv.Itoa(s.port))
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	log.Close()
	waitUntil(s.t, 20*time.Second, "nats-server accepting JetStream requests", func() (bool, error) {
		nc, err := nats.Connect(s.url())
		if err != nil {
			return false, err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return false, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err == nil, err
	})
}

func (s *natsServer) stop(sig syscall.Signal) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	s.cmd.Wait()
	s.cmd = nil
}

// restart stops the server (SIGTERM: it flushes its store) and starts it again on
// the same port and store.
func (s *natsServer) restart() {
	s.stop(syscall.SIGTERM)
	s.start()
}

// crash SIGKILLs the server (no flush, no goodbye to clients) and starts it again on
// the same port and store: JetStream recovers its file store from what was written.
func (s *natsServer) crash() {
	s.stop(syscall.SIGKILL)
	s.start()
}

type daemon struct {
	dir, sock string
	bus       *shmbus.Bus
}

// startDaemon runs a shmbusd with its own socket, state dir and shm prefix.
func startDaemon(t *testing.T, name string) *daemon {
	bin := tool(t, "SHMBUSD", filepath.Join(buildDir(t), "daemon", "shmbusd"))
	d := &daemon{dir: t.TempDir()}
	d.sock = filepath.Join(d.dir, "shmbusd.sock")
	log, err := os.Create(filepath.Join(d.dir, "shmbusd.log"))
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("nb%d%s", os.Getpid(), name)
	cmd := exec.Command(bin, "--socket", d.sock, "--state-dir", filepath.Join(d.dir, "state"), "--shm-prefix", prefix)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log.Close()
	t.Cleanup(func() {
		if d.bus != nil {
			d.bus.Close()
		}
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	waitUntil(t, 20*time.Second, "shmbusd "+name+" accepting", func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		b, err := shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: d.sock})
		if err != nil {
			return false, err
		}
		d.bus = b
		return true, nil
	})
	return d
}

type bridge struct {
	t      *testing.T
	cfg    string
	log    string
	cmd    *exec.Cmd
	killed int
}

// startBridge writes the TOML configuration and runs the bridge.
func startBridge(t *testing.T, d *daemon, natsURL, busID string, forward []string, imports map[string]string, metricsPort int) *bridge {
	dir := t.TempDir()
	var sb strings.Builder
	fmt.Fprintf(&sb, "nats_url = %q\nstream = \"SHMBUS\"\nbus_id = %q\nsocket = %q\nstate_dir = %q\nshmbus_cli = %q\nrescan_interval = \"200ms\"\n",
		natsURL, busID, d.sock, filepath.Join(dir, "state"), tool(t, "SHMBUS_CLI", filepath.Join(buildDir(t), "tools", "shmbus")))
	if metricsPort != 0 {
		fmt.Fprintf(&sb, "metrics_listen = \"127.0.0.1:%d\"\n", metricsPort)
	}
	q := make([]string, len(forward))
	for i, f := range forward {
		q[i] = strconv.Quote(f)
	}
	fmt.Fprintf(&sb, "\n[forward]\ntopics = [%s]\ndurable = \"to-nats\"\n", strings.Join(q, ", "))
	for subj, durable := range imports {
		fmt.Fprintf(&sb, "\n[[import]]\nsubject = %q\ndurable = %q\ncapacity = 2097152\nflush = \"none\"\n", subj, durable)
	}
	b := &bridge{t: t, cfg: filepath.Join(dir, "bridge.toml"), log: filepath.Join(dir, "bridge.log")}
	if err := os.WriteFile(b.cfg, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	b.start()
	t.Cleanup(func() {
		defer b.kill() // also when a diagnostic below fails
		if t.Failed() {
			out, err := exec.Command(tool(t, "SHMBUS_CLI", filepath.Join(buildDir(t), "tools", "shmbus")), "--socket", d.sock, "--json", "stat").CombinedOutput()
			t.Logf("bus %s stat: %s (%v)", busID, out, err)
		}
		if t.Failed() && metricsPort != 0 {
			if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var keep []string
				for _, l := range strings.Split(string(body), "\n") {
					if l != "" && !strings.HasPrefix(l, "#") {
						keep = append(keep, l)
					}
				}
				t.Logf("bridge %s metrics: %s", busID, strings.Join(keep, "; "))
			}
		}
		b.kill()
		if t.Failed() {
			if out, err := os.ReadFile(b.log); err == nil {
				lines := strings.Split(string(out), "\n")
				if len(lines) > 40 {
					lines = lines[len(lines)-40:]
				}
				t.Logf("bridge %s log (tail):\n%s", busID, strings.Join(lines, "\n"))
			}
		}
	})
	return b
}

func (b *bridge) start() {
	log, err := os.OpenFile(b.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.t.Fatal(err)
	}
	b.cmd = exec.Command(bridgeBinary(b.t), "-config", b.cfg)
	b.cmd.Stdout, b.cmd.Stderr = log, log
	if err := b.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	log.Close()
}

func (b *bridge) kill() {
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Kill() // SIGKILL
	b.cmd.Wait()
	b.cmd = nil
	b.killed++
}

// receiver reads a topic from its log's start (a replaying subscriber) and checks
// every message: the payload's first 8 bytes are the producer's index; each index
// must arrive once, and the message ids (JetStream stream sequences) must rise.
type receiver struct {
	mu      sync.Mutex
	seen    []bool
	count   int
	dups    int
	inOrder bool
	lastIdx int64
	lastID  uint64
	badID   int
	envOK   int
	doneAt  time.Time // when the last index arrived
	err     error
	done    chan struct{}
}

func receive(ctx context.Context, t *testing.T, bus *shmbus.Bus, topic string, n int, checkEnv func(i uint64, env *shmbus.Envelope, schema uint64) error) *receiver {
	r := &receiver{seen: make([]bool, n), inOrder: true, lastIdx: -1, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		fail := func(err error) { r.mu.Lock(); r.err = err; r.mu.Unlock() }
		// the importer creates the topic at its first message
		for {
			if _, err := bus.DescribeTopic(topic); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				fail(fmt.Errorf("%s never created: %v", topic, ctx.Err()))
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		sub, err := bus.Subscriber(topic, &shmbus.SubscriberOptions{Start: shmbus.StartEarliest()})
		if err != nil {
			fail(err)
			return
		}
		defer sub.Close()
		views := make([]shmbus.View, 256)
		for {
			k, err := sub.PollBatch(ctx, views)
			if err != nil {
				if ctx.Err() == nil {
					fail(err)
				}
				return
			}
			r.mu.Lock()
			for j := 0; j < k; j++ {
				v := &views[j]
				env, pv, err := v.Envelope()
				if err != nil || len(pv.Data) < 8 {
					r.err = fmt.Errorf("%s seq %d: bad message (%v, %d bytes)", topic, v.Sequence, err, len(pv.Data))
					continue
				}
				i := binary.LittleEndian.Uint64(pv.Data)
				if i >= uint64(n) {
					r.err = fmt.Errorf("%s: index %d out of range", topic, i)
					continue
				}
				if v.MessageID <= r.lastID {
					r.badID++
				}
				r.lastID = v.MessageID
				if r.seen[i] {
					r.dups++
					continue
				}
				if int64(i) != r.lastIdx+1 {
					r.inOrder = false
				}
				r.lastIdx = int64(i)
				r.seen[i] = true
				r.count++
				if r.count == len(r.seen) {
					r.doneAt = time.Now()
				}
				if checkEnv != nil {
					schema := v.SchemaID
					if env != nil {
						schema = pv.SchemaID
					}
					if err := checkEnv(i, env, schema); err != nil {
						r.err = err
					} else {
						r.envOK++
					}
				}
			}
			r.mu.Unlock()
			sub.ReleaseAll()
		}
	}()
	return r
}

func (r *receiver) snapshot() (count, dups, badID int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count, r.dups, r.badID, r.err
}

const testSchema = 0xabcdef0123456789

// publish sends indices [from, to) to topic: payload = index (8 bytes) + padding to
// size; every 10th in an envelope (correlation id = index, a trace, reply-to).
func publish(ctx context.Context, pub *shmbus.Publisher, from, to, size int) error {
	buf := make([]byte, size)
	for i := from; i < to; i++ {
		binary.LittleEndian.PutUint64(buf, uint64(i))
		var err error
		if i%10 == 0 {
			env := &shmbus.Envelope{CorrelationID: uint64(i), CausationID: 7, ReplyTo: "replies.x",
				Trace:          shmbus.TraceContext{TraceIDHigh: 1, TraceIDLow: uint64(i) + 1, ParentID: 99, Flags: 1, State: "k=v"},
				ContentVersion: 3, PayloadSchemaID: testSchema}
			err = pub.OfferEnveloped(ctx, env, buf, uint64(i)+1)
		} else {
			err = pub.Offer(ctx, buf, uint64(i)+1, testSchema)
		}
		if err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	return nil
}

func checkEnvelope(i uint64, env *shmbus.Envelope, schema uint64) error {
	if schema != testSchema {
		return fmt.Errorf("index %d: schema id %#x, want %#x", i, schema, uint64(testSchema))
	}
	if i%10 != 0 {
		if env != nil {
			return fmt.Errorf("index %d: an envelope on a plain message", i)
		}
		return nil
	}
	if env == nil {
		return fmt.Errorf("index %d: envelope lost", i)
	}
	want := shmbus.TraceContext{TraceIDHigh: 1, TraceIDLow: i + 1, ParentID: 99, Flags: 1, State: "k=v"}
	if env.CorrelationID != i || env.CausationID != 7 || env.ReplyTo != "replies.x" || env.ContentVersion != 3 || env.Trace != want {
		return fmt.Errorf("index %d: envelope %+v", i, *env)
	}
	return nil
}

func durableTopic(t *testing.T, bus *shmbus.Bus, name string, capacity uint64) *shmbus.Publisher {
	t.Helper()
	if err := bus.CreateTopic(name, shmbus.TopicConfig{Capacity: capacity, SchemaID: 0, Durable: &shmbus.DurableConfig{Flush: shmbus.FlushNone}}); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.Publisher(name, &shmbus.PublisherOptions{BlockTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	return pub
}

// settled: the import consumer has acknowledged everything its subject holds in
// the stream (so the importer wrote all of it locally).
func settled(ctx context.Context, js jetstream.JetStream, durable string) (bool, error) {
	c, err := js.Consumer(ctx, "SHMBUS", durable)
	if err != nil {
		return false, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false, err
	}
	return info.NumPending == 0 && info.NumAckPending == 0, fmt.Errorf("pending %d, ack pending %d", info.NumPending, info.NumAckPending)
}

func subjectCount(ctx context.Context, js jetstream.JetStream, subject string) (uint64, error) {
	s, err := js.Stream(ctx, "SHMBUS")
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	return info.State.Subjects[subject], nil
}

type fixture struct {
	nats       *natsServer
	a, b       *daemon
	ba, bb     *bridge
	js         jetstream.JetStream
	metricsA   int
	metricsB   int
	pubA, pubB *shmbus.Publisher
}

// newFixture: bus A forwards orders.> and imports quotes.>; bus B the other way.
func newFixture(t *testing.T, capacity uint64) *fixture {
	f := &fixture{nats: startNats(t), a: startDaemon(t, "a"), b: startDaemon(t, "b"), metricsA: freePort(t), metricsB: freePort(t)}
	f.pubA = durableTopic(t, f.a.bus, "orders.eu", capacity)
	f.pubB = durableTopic(t, f.b.bus, "quotes.us", capacity)
	f.ba = startBridge(t, f.a, f.nats.url(), "bus-a", []string{"orders.>"}, map[string]string{"quotes.>": "a-quotes"}, f.metricsA)
	f.bb = startBridge(t, f.b, f.nats.url(), "bus-b", []string{"quotes.>"}, map[string]string{"orders.>": "b-orders"}, f.metricsB)
	f.waitReady(t)
	nc, err := nats.Connect(f.nats.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if f.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return f
}

// waitReady: both bridges have their forwarder subscribed and importer consuming
// (a durable subscriber's first join starts at the tail: what is published before
// it is not forwarded).
func (f *fixture) waitReady(t *testing.T) {
	t.Helper()
	for _, port := range []int{f.metricsA, f.metricsB} {
		waitUntil(t, 30*time.Second, "bridge ready", func() (bool, error) {
			fw, err1 := tryMetric(port, "shmbus_nats_forwarders")
			im, err2 := tryMetric(port, "shmbus_nats_importers")
			return err1 == nil && err2 == nil && fw == 1 && im == 1, errors.Join(err1, err2)
		})
	}
}

// finish waits for both receivers to have every message, then for both importers to
// have settled, and checks: none lost, none twice (locally and in the stream).
func (f *fixture) finish(t *testing.T, ctx context.Context, ra, rb *receiver, n int, d time.Duration) {
	t.Helper()
	for _, c := range []struct {
		name    string
		r       *receiver
		durable string
		subject string
	}{{"orders.eu on bus B", rb, "b-orders", "orders.eu"}, {"quotes.us on bus A", ra, "a-quotes", "quotes.us"}} {
		waitUntil(t, d, c.name+": every message", func() (bool, error) {
			count, dups, _, err := c.r.snapshot()
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			return count == n || dups > 0, fmt.Errorf("%d of %d", count, n)
		})
		waitUntil(t, 60*time.Second, c.name+": importer settled", func() (bool, error) {
			cc, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			return settled(cc, f.js, c.durable)
		})
		cc, cancel := context.WithTimeout(ctx, 5*time.Second)
		stored, err := subjectCount(cc, f.js, c.subject)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		count, dups, badID, err := c.r.snapshot()
		if err != nil || count != n || dups != 0 || badID != 0 || stored != uint64(n) {
			t.Fatalf("%s: %d of %d received, %d twice, %d message ids not rising, %d stored in JetStream (%v)", c.name, count, n, dups, badID, stored, err)
		}
	}
}

func tryMetric(port int, name string) (uint64, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("metric %s not served", name)
}

func metric(t *testing.T, port int, name string) uint64 {
	t.Helper()
	v, err := tryMetric(port, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// N messages each way through one JetStream server: in order, exactly once, the
// envelope fields and schema ids kept; the schema bucket and the metrics filled.
func TestBridgeBothWaysInOrderExactlyOnce(t *testing.T) {
	const n = 20000
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	f := newFixture(t, 1<<20)
	rb := receive(ctx, t, f.b.bus, "orders.eu", n, checkEnvelope)
	ra := receive(ctx, t, f.a.bus, "quotes.us", n, checkEnvelope)
	errs := make(chan error, 2)
	go func() { errs <- publish(ctx, f.pubA, 0, n, 64) }()
	go func() { errs <- publish(ctx, f.pubB, 0, n, 64) }()
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	f.finish(t, ctx, ra, rb, n, 120*time.Second)
	for _, r := range []*receiver{ra, rb} {
		if !r.inOrder || r.envOK != n {
			t.Fatalf("in order %v, %d of %d envelopes and schema ids as sent", r.inOrder, r.envOK, n)
		}
	}
	kv, err := f.js.KeyValue(ctx, "shmbus-schemas")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "orders.eu")
	if err != nil {
		t.Fatal(err)
	}
	var s schemaEntry
	if err := json.Unmarshal(e.Value(), &s); err != nil || s.Topic != "orders.eu" || s.Bus != "bus-a" || s.Partitions != 1 || s.Capacity != 1<<20 {
		t.Fatalf("schema entry %s (%v)", e.Value(), err)
	}
	// the importer created the far topic from the schema bucket's entry (the
	// origin's 1 MiB), not from its own default (2 MiB in this configuration)
	if far, err := f.b.bus.DescribeTopic("orders.eu"); err != nil || far.Capacity != 1<<20 || far.MultiProducer {
		t.Fatalf("orders.eu on bus B: %+v (%v), want the origin's capacity, single producer", far, err)
	}
	if d, err := f.b.bus.DescribeDurable("orders.eu"); err != nil || d == nil || d.Flush != shmbus.FlushNone {
		t.Fatalf("orders.eu on bus B: durable %+v (%v), want flush none", d, err)
	}
	if got := metric(t, f.metricsA, "shmbus_nats_forwarded_total"); got != n {
		t.Fatalf("bus A forwarded_total %d, want %d", got, n)
	}
	if got := metric(t, f.metricsA, "shmbus_nats_imported_total"); got != n {
		t.Fatalf("bus A imported_total %d, want %d", got, n)
	}
}

// 20 SIGKILLs of the bridges at random points of the flow (each after a random
// number of messages crossed), two SIGKILLs of nats-server (at a quarter and three
// quarters) and a clean restart of it in the middle: every message arrives on the
// far side, none twice.
func TestBridgeSIGKILLTrialsAndServerRestart(t *testing.T) {
	const n = 60000
	const trials = 20
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	f := newFixture(t, 256<<10)
	rb := receive(ctx, t, f.b.bus, "orders.eu", n, nil)
	ra := receive(ctx, t, f.a.bus, "quotes.us", n, nil)
	errs := make(chan error, 2)
	go func() { errs <- publish(ctx, f.pubA, 0, n, 48) }()
	go func() { errs <- publish(ctx, f.pubB, 0, n, 48) }()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for trial := 0; trial < trials; trial++ {
		// wait until a random number of further messages crossed (both ways), then kill
		ca, _, _, _ := ra.snapshot()
		cb, _, _, _ := rb.snapshot()
		step := 200 + rng.Intn(2000)
		if ca+step > n {
			step = 0
		}
		waitUntil(t, 60*time.Second, fmt.Sprintf("trial %d: %d more messages", trial, step), func() (bool, error) {
			a, _, _, errA := ra.snapshot()
			b, _, _, errB := rb.snapshot()
			if errA != nil || errB != nil {
				t.Fatalf("trial %d: %v %v", trial, errA, errB)
			}
			return a >= min(ca+step, n) && b >= min(cb+step, n), nil
		})
		switch rng.Intn(3) {
		case 0:
			f.ba.kill()
			f.ba.start()
		case 1:
			f.bb.kill()
			f.bb.start()
		default:
			f.ba.kill()
			f.bb.kill()
			f.ba.start()
			f.bb.start()
		}
		switch trial {
		case trials / 4, 3 * trials / 4:
			f.nats.crash() // SIGKILL of nats-server mid-flow
		case trials / 2:
			f.nats.restart()
		}
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	f.finish(t, ctx, ra, rb, n, 120*time.Second)
	t.Logf("%d messages each way, %d bridge SIGKILLs (A %d, B %d), two nats-server SIGKILLs and one restart: none lost, none twice",
		n, f.ba.killed+f.bb.killed, f.ba.killed, f.bb.killed)
}

// rawPublishRate is the baseline: nats.go async JetStream publishes of n messages of
// size bytes into a stream of their own on the same server, with the bridge's
// window of pending acks (what `nats bench --js --pub 1` measures), in msg/s.
func rawPublishRate(t *testing.T, ctx context.Context, url string, n, size int) float64 {
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.raw"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := js.PublishAsync("bench.raw", data); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("raw publishes not acknowledged")
	}
	rate := float64(n) / time.Since(start).Seconds()
	s, err := js.Stream(ctx, "BENCH")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs != uint64(n) {
		t.Fatalf("baseline stream holds %v messages, want %d (%v)", info, n, err)
	}
	if err := js.DeleteStream(ctx, "BENCH"); err != nil {
		t.Fatal(err)
	}
	return rate
}

// One million messages each way (both directions at once) through the bridges,
// none lost, none twice; the rate against the baseline measured in the same run
// (docs/benchmarks.md, "NATS bridge").
func TestBridgeThroughputMillionEachWay(t *testing.T) {
	const n = 1000000
	const size = 64
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	f := newFixture(t, 16<<20)
	raw := rawPublishRate(t, ctx, f.nats.url(), rawBaselineMessages, size)
	rb := receive(ctx, t, f.b.bus, "orders.eu", n, nil)
	ra := receive(ctx, t, f.a.bus, "quotes.us", n, nil)
	start := time.Now()
	errs := make(chan error, 2)
	go func() { errs <- publish(ctx, f.pubA, 0, n, size) }()
	go func() { errs <- publish(ctx, f.pubB, 0, n, size) }()
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var done [2]time.Duration
	for i, r := range []*receiver{rb, ra} {
		r := r
		waitUntil(t, 200*time.Second, "a million messages across", func() (bool, error) {
			c, dups, _, err := r.snapshot()
			if err != nil || dups > 0 {
				t.Fatalf("%d twice, %v", dups, err)
			}
			return c == n, fmt.Errorf("%d of %d", c, n)
		})
		r.mu.Lock()
		done[i] = r.doneAt.Sub(start)
		r.mu.Unlock()
	}
	f.finish(t, ctx, ra, rb, n, 60*time.Second)
	ab, ba := float64(n)/done[0].Seconds(), float64(n)/done[1].Seconds()
	t.Logf("BENCH raw JetStream async publish (%d messages) %.0f msg/s; bridge A->B %.0f msg/s (%.2f of raw), B->A %.0f msg/s (%.2f of raw), both at once, %d B payloads",
		rawBaselineMessages, raw, ab, ab/raw, ba, ba/raw, size)
}
