// Command shmbus-nats bridges shmbus topics and NATS JetStream subjects of the same
// dotted names: chosen local topics are forwarded to JetStream (each message once:
// Nats-Msg-Id deduplication, the local position committed after the publish ack),
// and chosen subjects are imported into local topics (each message once: the stream
// sequence is the local message id, acknowledged after the local write is durable).
// docs/bridge.md has the guarantees, the configuration and the topology.
//
//	shmbus-nats -config /etc/shmbus/nats-bridge.toml
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"shmbus.dev/shmbus"
)

func main() {
	cfgPath := flag.String("config", "", "TOML configuration file (required)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile here until SIGTERM/SIGINT")
	flag.Parse()
	if *cfgPath == "" {
		fmt.Fprintln(os.Stderr, "usage: shmbus-nats -config FILE")
		os.Exit(2)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "shmbus-nats:", err)
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "shmbus-nats: cpuprofile:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "shmbus-nats:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// Bridge is one running bridge: a bus connection, a NATS connection, forwarders
// (one per local topic partition) and importers (one per import subject).
type Bridge struct {
	cfg *Config
	bus *shmbus.Bus
	nc  *nats.Conn
	js  jetstream.JetStream
	m   *metrics
	log *log.Logger

	mu      sync.Mutex
	started map[string]bool   // forwarded topics
	entries map[string][]byte // their schema bucket entries, put once the bucket is open
	kv      jetstream.KeyValue
	wg      sync.WaitGroup
}

func run(ctx context.Context, cfg *Config) error {
	lg := log.New(os.Stderr, "shmbus-nats: ", log.LstdFlags|log.Lmicroseconds)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	m := newMetrics()
	if cfg.MetricsListen != "" {
		addr, err := serveMetrics(cfg.MetricsListen, m)
		if err != nil {
			return fmt.Errorf("metrics: %v", err)
		}
		lg.Printf("metrics on http://%s/metrics", addr)
	}
	bus, err := connectBus(ctx, cfg.Socket)
	if err != nil {
		return err
	}
	defer bus.Close()
	nc, err := nats.Connect(cfg.NatsURL, nats.Name("shmbus-nats "+cfg.BusID),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.ReconnectBufSize(64<<20))
	if err != nil {
		return fmt.Errorf("nats: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return err
	}
	b := &Bridge{cfg: cfg, bus: bus, nc: nc, js: js, m: m, log: lg, started: map[string]bool{}, entries: map[string][]byte{}}
	// The forwarders subscribe at once, whatever NATS is doing: a restarted bridge
	// takes its durable subscribers' parked slots back before the daemon's hold
	// expires them (their publishes wait for the server, see forwardOnce).
	if len(cfg.Forward.Topics) > 0 {
		b.wg.Add(1)
		go func() { defer b.wg.Done(); b.discover(ctx) }()
	}
	if err := retry(ctx, lg, "stream and schema bucket", b.setupStream); err != nil {
		b.wg.Wait()
		return err
	}
	for _, im := range cfg.Import {
		im := im
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.loop(ctx, "import "+im.Subject, func() error { return b.importOnce(ctx, im) })
		}()
	}
	lg.Printf("running: bus %s, nats %s, stream %s, forward %v, %d imports", cfg.BusID, cfg.NatsURL, cfg.Stream, cfg.Forward.Topics, len(cfg.Import))
	<-ctx.Done()
	b.wg.Wait()
	return ctx.Err()
}

func connectBus(ctx context.Context, socket string) (*shmbus.Bus, error) {
	var bus *shmbus.Bus
	err := retry(ctx, nil, "bus", func(ctx context.Context) error {
		var err error
		bus, err = shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: socket})
		return err
	})
	return bus, err
}

// retry runs f until it succeeds or ctx ends, backing off 100 ms .. 2 s.
func retry(ctx context.Context, lg *log.Logger, what string, f func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(c)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if lg != nil {
			lg.Printf("%s: %v (retrying)", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if wait < 2*time.Second {
			wait *= 2
		}
	}
}

// loop runs one forwarder or importer until ctx ends, starting it again after an
// error (it resumes from its committed position).
func (b *Bridge) loop(ctx context.Context, what string, once func() error) {
	wait := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := once()
		if ctx.Err() != nil {
			return
		}
		b.m.restarts.Add(1)
		b.log.Printf("%s: %v (starting again)", what, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if wait < time.Second {
			wait *= 2
		}
	}
}

// covers: every subject matching p matches s.
func covers(s, p string) bool {
	x, y := splitDots(s), splitDots(p)
	for i := range x {
		if x[i] == ">" {
			return i < len(y)
		}
		if i >= len(y) || y[i] == ">" || (x[i] != "*" && (y[i] == "*" || x[i] != y[i])) {
			return false
		}
	}
	return len(x) == len(y)
}

// setupStream creates the stream (file storage, the dedup window) or adds the
// subjects this bridge needs to it, and opens the schema bucket.
func (b *Bridge) setupStream(ctx context.Context) error {
	want := append(append([]string{}, b.cfg.Forward.Topics...), importSubjects(b.cfg)...)
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = b.js.CreateStream(ctx, jetstream.StreamConfig{
			Name: b.cfg.Stream, Subjects: minimalSubjects(nil, want), Storage: jetstream.FileStorage,
			Duplicates: b.cfg.DedupWindow.Duration, Replicas: b.cfg.Replicas,
		})
		if err != nil {
			return fmt.Errorf("creating stream %s: %v", b.cfg.Stream, err)
		}
	case err != nil:
		return err
	default:
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		c := info.Config
		if add := minimalSubjects(c.Subjects, want); len(add) > len(c.Subjects) {
			c.Subjects = add
			if _, err := b.js.UpdateStream(ctx, c); err != nil {
				return fmt.Errorf("adding subjects to stream %s: %v", b.cfg.Stream, err)
			}
		}
		if c.Duplicates < b.cfg.DedupWindow.Duration {
			b.log.Printf("stream %s: dedup window %v is shorter than dedup_window %v", b.cfg.Stream, c.Duplicates, b.cfg.DedupWindow.Duration)
		}
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b.cfg.SchemaBucket, History: 8, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("schema bucket %s: %v", b.cfg.SchemaBucket, err)
	}
	b.mu.Lock()
	b.kv = kv
	pending := make(map[string][]byte, len(b.entries))
	for k, v := range b.entries {
		pending[k] = v
	}
	b.mu.Unlock()
	for topic, v := range pending {
		if _, err := kv.Put(ctx, topic, v); err != nil {
			b.log.Printf("schema bucket: %s: %v", topic, err)
		}
	}
	return nil
}

func importSubjects(c *Config) []string {
	var s []string
	for _, im := range c.Import {
		s = append(s, im.Subject)
	}
	return s
}

// minimalSubjects: have plus each of want not covered by a subject already there.
func minimalSubjects(have, want []string) []string {
	out := append([]string{}, have...)
	for _, w := range want {
		covered := false
		for _, h := range out {
			if covers(h, w) {
				covered = true
				break
			}
		}
		if !covered {
			// drop those w covers (the server refuses overlapping subjects)
			kept := out[:0]
			for _, h := range out {
				if !covers(w, h) {
					kept = append(kept, h)
				}
			}
			out = append(kept, w)
		}
	}
	return out
}
