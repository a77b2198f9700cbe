package main

import (
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
)

// metrics: counters in the Prometheus text format on /metrics, as shmbusd's
// --metrics-listen serves them (names prefixed shmbus_nats_).
type metrics struct {
	forwarded       atomic.Uint64 // published to JetStream and acknowledged
	forwardRetries  atomic.Uint64 // publishes sent again after an error
	forwardDups     atomic.Uint64 // acks JetStream flagged duplicate (the resume overlap)
	forwardDropped  atomic.Uint64 // frames that cannot be a NATS message (bad subject, malformed envelope)
	forwardPending  atomic.Int64  // publishes awaiting their ack
	forwarders      atomic.Int64  // forwarders subscribed (one per local topic partition)
	importers       atomic.Int64  // importers with their consumer created
	imported        atomic.Uint64 // published into a local topic
	importSkipped   atomic.Uint64 // redeliveries already applied (stream sequence <= applied)
	importDropped   atomic.Uint64 // messages no local topic can take (bad name, too large)
	importBadHeader atomic.Uint64 // envelope headers that did not parse (imported without envelope)
	importAcked     atomic.Uint64 // messages acknowledged to JetStream after local durability
	restarts        atomic.Uint64 // a forwarder or importer started again after an error
	checkpoints     atomic.Uint64

	mu       sync.Mutex
	perTopic map[string]*topicCounters
}

type topicCounters struct{ forwarded, imported atomic.Uint64 }

func newMetrics() *metrics { return &metrics{perTopic: map[string]*topicCounters{}} }

func (m *metrics) topic(name string) *topicCounters {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.perTopic[name]
	if t == nil {
		t = &topicCounters{}
		m.perTopic[name] = t
	}
	return t
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	c := func(name, help string, v uint64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	c("shmbus_nats_forwarded_total", "Local messages published to JetStream and acknowledged.", m.forwarded.Load())
	c("shmbus_nats_forward_retries_total", "Publishes sent again after an error.", m.forwardRetries.Load())
	c("shmbus_nats_forward_duplicates_total", "Publish acks JetStream flagged duplicate.", m.forwardDups.Load())
	c("shmbus_nats_forward_dropped_total", "Local frames that cannot be forwarded.", m.forwardDropped.Load())
	fmt.Fprintf(w, "# HELP shmbus_nats_forward_pending Publishes awaiting their ack.\n# TYPE shmbus_nats_forward_pending gauge\nshmbus_nats_forward_pending %d\n", m.forwardPending.Load())
	fmt.Fprintf(w, "# HELP shmbus_nats_forwarders Forwarders subscribed (one per local topic partition).\n# TYPE shmbus_nats_forwarders gauge\nshmbus_nats_forwarders %d\n", m.forwarders.Load())
	fmt.Fprintf(w, "# HELP shmbus_nats_importers Importers with their JetStream consumer.\n# TYPE shmbus_nats_importers gauge\nshmbus_nats_importers %d\n", m.importers.Load())
	c("shmbus_nats_imported_total", "JetStream messages published into local topics.", m.imported.Load())
	c("shmbus_nats_import_skipped_total", "Redelivered JetStream messages already applied locally.", m.importSkipped.Load())
	c("shmbus_nats_import_dropped_total", "JetStream messages no local topic can take.", m.importDropped.Load())
	c("shmbus_nats_import_bad_headers_total", "Envelope headers that did not parse.", m.importBadHeader.Load())
	c("shmbus_nats_import_acked_total", "JetStream messages acknowledged after local durability.", m.importAcked.Load())
	c("shmbus_nats_restarts_total", "Forwarders or importers started again after an error.", m.restarts.Load())
	c("shmbus_nats_checkpoints_total", "Import checkpoints written.", m.checkpoints.Load())
	m.mu.Lock()
	names := make([]string, 0, len(m.perTopic))
	for n := range m.perTopic {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "# HELP shmbus_nats_topic_messages_total Messages per local topic and direction.\n# TYPE shmbus_nats_topic_messages_total counter\n")
	for _, n := range names {
		t := m.perTopic[n]
		fmt.Fprintf(w, "shmbus_nats_topic_messages_total{topic=%q,direction=\"forward\"} %d\n", n, t.forwarded.Load())
		fmt.Fprintf(w, "shmbus_nats_topic_messages_total{topic=%q,direction=\"import\"} %d\n", n, t.imported.Load())
	}
	m.mu.Unlock()
}

// serveMetrics listens on addr and serves /metrics; it returns the bound address.
func serveMetrics(addr string, m *metrics) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m)
	go http.Serve(ln, mux)
	return ln.Addr().String(), nil
}
