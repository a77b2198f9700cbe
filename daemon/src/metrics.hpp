// shmbusd metrics (metrics.cpp): control-request counts and latency histograms, and
// the Prometheus text endpoint (--metrics-listen, off by default) served from its own
// thread. A scrape asks the registry thread for a snapshot (the same figures as the
// `stat` request, built by Registry::stat_topic) and formats it outside that thread.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "shmbus/spill/archiver.hpp"

namespace shmbus::shm {
struct RingRefs;
}

namespace shmbus::daemon {

class Core;

// Control requests by type (proto::Request::which()): a count, the sum of their
// latencies and a cumulative-free histogram (bucket i counts latencies <= kBoundsNs[i],
// the last one the rest). Latency: from the server thread's decode of the request to the
// end of the registry's handling of it (queue wait included; the batch's registry
// write, when a create or delete forces one, is not).
struct RequestMetrics {
  static constexpr size_t kTypes = 32;
  static constexpr std::array<uint64_t, 12> kBoundsNs = {10'000,     50'000,     100'000,     250'000,
                                                         500'000,    1'000'000,  2'500'000,   5'000'000,
                                                         10'000'000, 50'000'000, 250'000'000, 1'000'000'000};
  static constexpr size_t kBuckets = kBoundsNs.size() + 1;
  std::array<std::atomic<uint64_t>, kTypes> count{};
  std::array<std::atomic<uint64_t>, kTypes> sum_ns{};
  std::array<std::array<std::atomic<uint64_t>, kBuckets>, kTypes> bucket{};
  void observe(unsigned type, uint64_t ns) {
    if (type >= kTypes) type = kTypes - 1;
    size_t b = 0;
    while (b < kBoundsNs.size() && ns > kBoundsNs[b]) ++b;
    count[type].fetch_add(1, std::memory_order_relaxed);
    sum_ns[type].fetch_add(ns, std::memory_order_relaxed);
    bucket[type][b].fetch_add(1, std::memory_order_relaxed);
  }
};

// One scrape's figures, filled by the registry thread (Registry::metrics_snapshot) and
// read by the metrics thread once `done`.
struct MetricsSnapshot {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  capnp::MallocMessageBuilder stats{4096};  // root: proto::TopicPage, its `stats` (every topic)
  std::vector<spill::PartitionStats> archive;
  uint32_t topics = 0;
};

// A subscriber's lag in messages: from the frame at its read position (its sequence,
// read from the ring: copied once and validated against the partition's figures),
// else estimated from its lag in bytes and the partition's mean frame size. `lapped`:
// the producer has overwritten the read position (tail - pos > capacity).
uint64_t lag_messages(const shm::RingRefs& r, uint64_t pos, uint64_t tail, uint64_t next_seq, bool& lapped);

// The HTTP endpoint. bind() before the daemon's threads start (a bad address or a port
// in use fails the start with a clear Error); start() serves from its own thread;
// stop() ends it (idempotent).
class MetricsServer {
 public:
  explicit MetricsServer(Core& core);
  ~MetricsServer();
  void bind();
  void start();
  void stop();
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "host:port" -> host, port; false with why when malformed or (without allow_remote) not
// a loopback address.
bool parse_metrics_listen(const std::string& s, bool allow_remote, std::string& host, int& port,
                          std::string& why);

}  // namespace shmbus::daemon
