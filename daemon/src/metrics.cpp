// Prometheus text metrics (docs/operations.md, "Metrics"): an HTTP endpoint on its own
// thread (cpp-httplib), off unless --metrics-listen is given. A scrape pushes a
// `metrics` command to the registry thread, which fills a snapshot with the figures of
// the `stat` request (Registry::stat_topic) and the archiver's statistics; the text is
// formatted here, outside the registry thread. The registry never waits for a scrape.
#include <arpa/inet.h>

#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>

#include <capnp/schema.h>
#include <httplib.h>

#include "core.hpp"
#include "shmbus/shm/ring.hpp"

namespace shmbus::daemon {

// ---- lag in messages

uint64_t lag_messages(const shm::RingRefs& r, uint64_t pos, uint64_t tail, uint64_t next_seq, bool& lapped) {
  lapped = false;
  if (pos >= tail || next_seq <= 1 || r.capacity == 0) return 0;
  const uint64_t lag = tail - pos;
  // The mean frame size over the partition's life (every frame is >= 8 bytes).
  auto estimate = [&] {
    const uint64_t published = next_seq - 1;
    const uint64_t mean = std::max<uint64_t>(shm::kFrameAlign, tail / published);
    return std::min<uint64_t>(published, (lag + mean - 1) / mean);
  };
  if (lag > r.capacity) {
    lapped = true;
    return estimate();
  }
  // Up to a few padding frames, then the data frame at the read position: its commit
  // word and sequence are copied once, the commit re-read after the sequence (a frame
  // overwritten meanwhile is not used) and the copy checked against what the
  // partition's figures allow.
  for (int hop = 0; hop < 4 && pos < tail; ++hop) {
    const uint64_t off = pos & r.mask();
    if (pos % shm::kFrameAlign || off + sizeof(uint64_t) > r.capacity) break;
    shm::FrameHeader* f = r.frame_at(pos);
    const uint64_t w = shm::aref(f->commit).load(std::memory_order_acquire);
    const uint32_t len = shm::commit_length(w);
    if (w == 0 || len < shm::kFrameAlign || len % shm::kFrameAlign || len > r.capacity - off) break;
    if (shm::commit_type(w) == shm::kFramePad) {
      pos += len;
      continue;
    }
    if (shm::commit_type(w) != shm::kFrameData || len < shm::kFrameHeaderSize) break;
    const uint64_t seq = shm::aref(f->sequence).load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (shm::aref(f->commit).load(std::memory_order_relaxed) != w) break;
    // Each frame takes at least a header: no more messages than that in `lag` bytes.
    if (seq == 0 || seq >= next_seq || next_seq - seq > lag / shm::kFrameHeaderSize + 1) break;
    return next_seq - seq;
  }
  if (pos >= tail) return 0;
  return estimate();
}

// ---- the registry's side: a snapshot

void Registry::metrics_snapshot(MetricsSnapshot& s) {
  try {
    auto page = s.stats.initRoot<proto::TopicPage>();
    auto l = page.initStats(uint32_t(topics_.size()));
    uint32_t i = 0;
    for (auto& [name, t] : topics_) stat_topic(t, l[i++]);
    if (core_.has_archiver()) s.archive = core_.archiver().stats();
    s.topics = uint32_t(topics_.size());
  } catch (...) {
    // An incomplete snapshot is still answered (done), never left waiting.
  }
  std::lock_guard<std::mutex> g(s.mu);
  s.done = true;
  s.cv.notify_all();
}

// ---- the listen address

bool parse_metrics_listen(const std::string& s, bool allow_remote, std::string& host, int& port,
                          std::string& why) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    why = "--metrics-listen '" + s + "': expected HOST:PORT (e.g. 127.0.0.1:9464)";
    return false;
  }
  host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string ps = s.substr(colon + 1);
  char* end = nullptr;
  const long p = std::strtol(ps.c_str(), &end, 10);
  if (ps.empty() || *end || p < 0 || p > 65535) {
    why = "--metrics-listen '" + s + "': the port must be a number 0-65535";
    return false;
  }
  port = int(p);
  in_addr a4{};
  in6_addr a6{};
  bool loopback = host == "localhost";
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1)
    loopback = (ntohl(a4.s_addr) >> 24) == 127;
  else if (inet_pton(AF_INET6, host.c_str(), &a6) == 1)
    loopback = IN6_IS_ADDR_LOOPBACK(&a6);
  if (!loopback && !allow_remote) {
    why = "--metrics-listen '" + s +
          "': not a loopback address; the metrics name every topic and subscriber pid, so serving them "
          "beyond this host needs --metrics-allow-remote (or metrics_allow_remote = true)";
    return false;
  }
  return true;
}

// ---- formatting

namespace {

std::string esc(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\' || c == '"')
      o += '\\', o += c;
    else if (c == '\n')
      o += "\\n";
    else
      o += c;
  }
  return o;
}

struct Out {
  std::string text;
  void head(const char* name, const char* type, const char* help) {
    text.append("# HELP ").append(name).append(" ").append(help).append("\n");
    text.append("# TYPE ").append(name).append(" ").append(type).append("\n");
  }
  void line(const char* name, const std::string& labels, double v) {
    char b[64];
    const auto r = std::to_chars(b, b + sizeof b, v);  // the shortest text that reads back as v
    text.append(name);
    if (!labels.empty()) text.append("{").append(labels).append("}");
    text.append(" ").append(b, size_t(r.ptr - b)).append("\n");
  }
  void line(const char* name, const std::string& labels, uint64_t v) {
    text.append(name);
    if (!labels.empty()) text.append("{").append(labels).append("}");
    text.append(" ").append(std::to_string(v)).append("\n");
  }
};

// One metric family per partition figure: every series of a family together, as the
// exposition format wants.
struct PartRow {
  std::string labels;
  proto::PartitionStat::Reader p;
  const spill::PartitionStats* arch = nullptr;
};

std::string request_name(unsigned type) {
  auto fields = capnp::Schema::from<proto::Request>().getUnionFields();
  if (type < fields.size()) return fields[type].getProto().getName().cStr();
  return "other";
}

std::string format(Core& core, MetricsSnapshot& s) {
  Out o;
  o.text.reserve(1 << 16);
  o.head("shmbus_up", "gauge", "1 while shmbusd serves");
  o.line("shmbus_up", "", uint64_t(core.counters.serving.load() && !core.stopping.load()));
  o.head("shmbus_uptime_seconds", "gauge", "seconds since shmbusd started");
  o.line("shmbus_uptime_seconds", "", double(realtime_ns() - core.counters.start_ns) / 1e9);
  o.head("shmbus_clients", "gauge", "control connections open now");
  o.line("shmbus_clients", "", uint64_t(core.counters.clients.load()));
  o.head("shmbus_topics", "gauge", "topics");
  o.line("shmbus_topics", "", uint64_t(s.topics));
  o.head("shmbus_open_fds", "gauge", "file descriptors open in shmbusd");
  o.line("shmbus_open_fds", "", count_open_fds());
  o.head("shmbus_rss_bytes", "gauge", "resident set size of shmbusd");
  o.line("shmbus_rss_bytes", "", rss_bytes());
  o.head("shmbus_reclaimed_clients_total", "counter", "dead clients whose cursors or claims were reclaimed");
  o.line("shmbus_reclaimed_clients_total", "", core.counters.reclaimed_clients.load());
  o.head("shmbus_reclaim_seconds_total", "counter", "time spent reclaiming dead clients");
  o.line("shmbus_reclaim_seconds_total", "", double(core.counters.reclaim_ns.load()) / 1e9);

  auto& rq = core.requests;
  o.head("shmbus_control_requests_total", "counter", "control requests handled, by type");
  for (unsigned t = 0; t < RequestMetrics::kTypes; ++t)
    if (uint64_t n = rq.count[t].load(std::memory_order_relaxed))
      o.line("shmbus_control_requests_total", "type=\"" + request_name(t) + "\"", n);
  o.head("shmbus_control_request_duration_seconds", "histogram",
         "control request latency, from its decode to the end of its handling");
  for (unsigned t = 0; t < RequestMetrics::kTypes; ++t) {
    // The buckets first, then count = the +Inf bucket (read once: a consistent line).
    uint64_t b[RequestMetrics::kBuckets];
    uint64_t total = 0;
    for (size_t k = 0; k < RequestMetrics::kBuckets; ++k) total += b[k] = rq.bucket[t][k].load();
    if (!total) continue;
    const std::string ty = "type=\"" + request_name(t) + "\"";
    uint64_t cum = 0;
    for (size_t k = 0; k < RequestMetrics::kBoundsNs.size(); ++k) {
      cum += b[k];
      char le[32];
      std::snprintf(le, sizeof le, "%g", double(RequestMetrics::kBoundsNs[k]) / 1e9);
      o.line("shmbus_control_request_duration_seconds_bucket", ty + ",le=\"" + le + "\"", cum);
    }
    o.line("shmbus_control_request_duration_seconds_bucket", ty + ",le=\"+Inf\"", total);
    o.line("shmbus_control_request_duration_seconds_sum", ty, double(rq.sum_ns[t].load()) / 1e9);
    o.line("shmbus_control_request_duration_seconds_count", ty, total);
  }

  std::vector<PartRow> rows;
  auto page = s.stats.getRoot<proto::TopicPage>().asReader();
  for (auto t : page.getStats())
    for (auto p : t.getPartitions()) {
      PartRow row{
          "topic=\"" + esc(t.getName().cStr()) + "\",partition=\"" + std::to_string(p.getPartition()) + "\"",
          p};
      for (auto& a : s.archive)
        if (a.topic == t.getName().cStr() && a.partition == p.getPartition()) row.arch = &a;
      rows.push_back(std::move(row));
    }
  auto family = [&](const char* name, const char* type, const char* help, auto get) {
    o.head(name, type, help);
    for (auto& r : rows) o.line(name, r.labels, get(r));
  };
  auto last_seq = [](const PartRow& r) {
    const uint64_t n = r.p.getNextSequence();
    return n ? n - 1 : 0;
  };
  family("shmbus_published_messages_total", "counter", "messages published (the last sequence)", last_seq);
  family("shmbus_published_bytes_total", "counter",
         "ring bytes published (frames: headers, payloads and padding; the producer position)",
         [](const PartRow& r) { return r.p.getProducerPosition(); });
  family("shmbus_publish_rate_messages_per_second", "gauge",
         "messages per second over the daemon's last sample",
         [](const PartRow& r) { return r.p.getRatePerSec(); });
  family("shmbus_producers", "gauge", "live producers (grants)",
         [](const PartRow& r) { return uint64_t(r.p.getLiveProducers()) + (r.p.getProducerPid() ? 1 : 0); });
  family("shmbus_subscribers", "gauge", "subscriber cursors held (live or parked)",
         [](const PartRow& r) { return uint64_t(r.p.getSubscribers().size()); });
  family("shmbus_ring_capacity_bytes", "gauge", "ring size",
         [](const PartRow& r) { return r.p.getCapacity(); });
  family("shmbus_back_pressure_waits_total", "counter", "times a producer found the ring full",
         [](const PartRow& r) { return r.p.getBackPressureEvents(); });
  family("shmbus_reclaimed_cursors_total", "counter", "cursors of dead subscribers freed",
         [](const PartRow& r) { return r.p.getReclaimedCursors(); });
  family("shmbus_filled_claims_total", "counter", "claims of dead producers filled with padding",
         [](const PartRow& r) { return r.p.getFilledClaims(); });
  family("shmbus_lapped_subscribers", "gauge", "subscribers whose read position the producer overwrote",
         [](const PartRow& r) {
           uint64_t n = 0;
           for (auto s : r.p.getSubscribers()) n += s.getLapped();
           return n;
         });

  // Subscribers: one series per cursor slot.
  struct SubRow {
    std::string labels;
    proto::SubscriberStat::Reader s;
  };
  std::vector<SubRow> subs;
  for (auto& r : rows)
    for (auto s : r.p.getSubscribers())
      subs.push_back({r.labels + ",slot=\"" + std::to_string(s.getSlot()) + "\"", s});
  auto sfamily = [&](const char* name, const char* help, auto get) {
    o.head(name, "gauge", help);
    for (auto& r : subs) o.line(name, r.labels, get(r.s));
  };
  sfamily("shmbus_subscriber_lag_messages", "messages published and not yet read",
          [](proto::SubscriberStat::Reader s) { return s.getLagMessages(); });
  sfamily("shmbus_subscriber_lag_bytes", "ring bytes published and not yet read",
          [](proto::SubscriberStat::Reader s) { return s.getLag(); });
  sfamily("shmbus_subscriber_lapped", "1 when the producer overwrote the read position (messages lost)",
          [](proto::SubscriberStat::Reader s) { return uint64_t(s.getLapped()); });
  o.head("shmbus_subscriber_info", "gauge", "a subscriber's process and kind (always 1)");
  for (auto& r : subs)
    o.line("shmbus_subscriber_info",
           r.labels + ",pid=\"" + std::to_string(r.s.getPid()) + "\",tethered=\"" +
               (r.s.getTethered() ? "true" : "false") + "\",durable=\"" +
               (r.s.getDurable() ? "true" : "false") + "\"",
           uint64_t(1));

  // Durable topics: the archiver.
  std::vector<PartRow> arch;
  for (auto& r : rows)
    if (r.arch) arch.push_back(r);
  auto afamily = [&](const char* name, const char* type, const char* help, auto get) {
    o.head(name, type, help);
    for (auto& r : arch) o.line(name, r.labels, get(r));
  };
  afamily("shmbus_archiver_backlog_messages", "gauge", "messages published and not yet written to the log",
          [&](const PartRow& r) {
            const uint64_t l = last_seq(r);
            return l > r.arch->archived_seq ? l - r.arch->archived_seq : 0;
          });
  afamily("shmbus_durable_lag_messages", "gauge", "messages published and not yet durable (flush policy)",
          [&](const PartRow& r) {
            const uint64_t l = last_seq(r);
            return l > r.arch->durable_seq ? l - r.arch->durable_seq : 0;
          });
  afamily("shmbus_archiver_written_bytes_total", "counter", "log bytes written",
          [](const PartRow& r) { return r.arch->bytes; });
  afamily("shmbus_archiver_records_total", "counter", "messages written to the log",
          [](const PartRow& r) { return r.arch->records; });
  afamily("shmbus_archiver_writes_total", "counter", "log write calls",
          [](const PartRow& r) { return r.arch->writes; });
  afamily("shmbus_archiver_fsyncs_total", "counter", "log syncs",
          [](const PartRow& r) { return r.arch->fsyncs; });
  afamily("shmbus_archiver_io_errors_total", "counter", "failed log writes or syncs",
          [](const PartRow& r) { return r.arch->io_errors; });
  afamily("shmbus_archiver_error", "gauge", "errno of the failing log write or sync, 0 = healthy",
          [](const PartRow& r) { return uint64_t(r.arch->last_error < 0 ? 0 : r.arch->last_error); });
  return std::move(o.text);
}

// At most kWorkers scrapes at once and kQueued waiting; beyond that the accepting
// thread serves the connection itself, so it stops accepting (the kernel's backlog
// then refuses): connections to the metrics port never cost shmbusd more than a few
// fds, whoever opens them.
class BoundedQueue final : public httplib::TaskQueue {
 public:
  static constexpr int kWorkers = 2, kQueued = 4;
  BoundedQueue() : pool_(kWorkers) {}
  void enqueue(std::function<void()> fn) override {
    if (pending_->load() >= kWorkers + kQueued) return fn();
    pending_->fetch_add(1);
    pool_.enqueue([fn = std::move(fn), p = pending_] {
      fn();
      p->fetch_sub(1);
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
  std::shared_ptr<std::atomic<int>> pending_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace

struct MetricsServer::Impl {
  Core& core;
  httplib::Server svr;
  std::string host;
  int port = 0;
  std::thread thread;
  bool running = false;
  explicit Impl(Core& c) : core(c) {}
};

MetricsServer::MetricsServer(Core& core) : impl_(std::make_unique<Impl>(core)) {}
MetricsServer::~MetricsServer() { stop(); }
int MetricsServer::port() const { return impl_->port; }

void MetricsServer::bind() {
  Impl& m = *impl_;
  std::string why;
  if (!parse_metrics_listen(m.core.opts.metrics_listen, m.core.opts.metrics_allow_remote, m.host, m.port,
                            why))
    throw Error(ErrorCode::invalid_argument, why);
  m.svr.new_task_queue = [] { return new BoundedQueue(); };
  m.svr.set_read_timeout(2, 0);
  m.svr.set_write_timeout(2, 0);
  m.svr.set_keep_alive_max_count(8);
  m.svr.set_keep_alive_timeout(2);
  m.svr.set_payload_max_length(4096);
  m.svr.Get("/metrics", [&m](const httplib::Request&, httplib::Response& res) {
    auto snap = std::make_shared<MetricsSnapshot>();
    RegistryCmd c;
    c.kind = RegistryCmd::metrics;
    c.snap = snap;
    m.core.registry_q.push(std::move(c));
    {
      // The registry answers between two batches of requests; a stopping daemon's
      // registry may never answer: checked every 100 ms, at most 5 s in all.
      std::unique_lock<std::mutex> g(snap->mu);
      for (int i = 0; i < 50 && !snap->done && !m.core.stopping.load(); ++i)
        snap->cv.wait_for(g, std::chrono::milliseconds(100), [&] { return snap->done; });
      if (!snap->done) {
        res.status = 503;
        res.set_content("shmbusd: the registry did not answer (stopping or overloaded)\n", "text/plain");
        return;
      }
    }
    res.set_content(format(m.core, *snap), "text/plain; version=0.0.4; charset=utf-8");
  });
  m.svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("shmbusd: Prometheus metrics at /metrics\n", "text/plain");
  });
  if (m.port == 0) {
    m.port = m.svr.bind_to_any_port(m.host);
    if (m.port <= 0)
      throw Error(ErrorCode::system, "--metrics-listen " + m.core.opts.metrics_listen + ": cannot bind");
  } else if (!m.svr.bind_to_port(m.host, m.port)) {
    throw Error(ErrorCode::system, "--metrics-listen " + m.core.opts.metrics_listen +
                                       ": cannot bind (address in use, or not an address of this host)");
  }
}

void MetricsServer::start() {
  Impl& m = *impl_;
  m.running = true;
  m.thread = std::thread([&m] { m.svr.listen_after_bind(); });
  // stop() must find it running (a stop before the loop began would not end it).
  for (int i = 0; i < 2'000'000 && !m.svr.is_running(); ++i) std::this_thread::yield();
  const std::string where =
      (m.host.find(':') != std::string::npos ? "[" + m.host + "]" : m.host) + ":" + std::to_string(m.port);
  log_event(m.core.instance, LOG_INFO, "metrics_listening", "", getpid(), where);
  if (m.core.opts.metrics_allow_remote)
    log_event(m.core.instance, LOG_WARN, "metrics_remote", "", getpid(),
              "metrics on " + where + " name every topic and subscriber pid to whoever reaches it");
}

void MetricsServer::stop() {
  Impl& m = *impl_;
  if (!m.running) return;
  m.running = false;
  m.svr.stop();
  if (m.thread.joinable()) m.thread.join();
}

}  // namespace shmbus::daemon
