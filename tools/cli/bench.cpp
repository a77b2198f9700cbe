// shmbus bench: a quick publish/subscribe run against the live daemon (like `nats
// bench`). It creates a temporary topic (one partition per publisher, each partition
// single-producer), joins every subscriber to every partition before the first
// message, publishes --count messages of --size bytes per publisher (zero-copy
// claim/commit), and reports throughput and the commit-to-receive latency of every
// message (the frame's CLOCK_MONOTONIC stamp against the subscriber's clock). The
// topic is deleted at the end, also after an error or Ctrl-C.
//
// This is an operator's smoke figure, not the project's benchmark: performance claims
// come from bench/ (docs/benchmarks.md).
#include <time.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "cli/common.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus::cli {
namespace {

uint64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// The q-quantile of sorted samples (nearest rank).
uint64_t quantile(const std::vector<uint64_t>& s, double q) {
  if (s.empty()) return 0;
  size_t i = size_t(std::ceil(q * double(s.size())));
  return s[std::min(s.size() - 1, i ? i - 1 : 0)];
}

}  // namespace

int run_bench(DaemonClient& c, const std::string& socket, const BenchArgs& a, bool json) {
  if (a.pubs == 0 || a.pubs > 64 || a.subs > 64)
    throw Error(ErrorCode::invalid_argument, "--pubs must be 1..64 and --subs 0..64");
  if (a.count == 0) throw Error(ErrorCode::invalid_argument, "--count must be > 0");
  if (a.rate < 0) throw Error(ErrorCode::invalid_argument, "--rate must be >= 0");
  std::string name = a.topic;
  if (name.empty()) {
    std::random_device rd;
    char b[64];
    std::snprintf(b, sizeof b, "shmbus-bench.%d.%08x", int(getpid()), unsigned(rd()));
    name = b;
  }
  TopicConfig cfg;
  cfg.partitions = a.pubs;
  cfg.capacity = a.capacity;
  cfg.mode = 0600;
  cfg.ephemeral = true;       // shmbusd removes it when this connection ends, even after a SIGKILL
  c.create_topic(name, cfg);  // refuses an existing topic with other settings
  stop_on_signals();

  struct Result {
    uint64_t received = 0, lapped = 0;
    uint64_t first_ns = 0, last_ns = 0;
    std::vector<uint64_t> lat;
  };
  std::vector<Result> results(a.subs);
  uint64_t published = 0, back_pressured = 0, pub_start = 0, pub_end = 0;
  std::string error;
  try {
    Bus bus = Bus::connect(socket);
    std::vector<std::vector<Subscriber>> subs(a.subs);
    for (auto& s : subs)
      for (uint32_t p = 0; p < a.pubs; ++p) {
        SubscriberOptions so;
        so.partition = p;
        s.push_back(bus.subscriber(name, so));
      }
    std::vector<Publisher> pubs;
    for (uint32_t p = 0; p < a.pubs; ++p) {
      PublisherOptions po;
      po.partition = p;
      po.block_timeout_ns = 10'000'000'000;
      pubs.push_back(bus.publisher(name, po));
      if (a.size > pubs.back().max_payload())
        throw Error(ErrorCode::invalid_argument,
                    "--size " + std::to_string(a.size) + " exceeds the max payload " +
                        std::to_string(pubs.back().max_payload()) + " (raise --capacity)");
    }
    const uint64_t expect = a.count * a.pubs;
    std::atomic<bool> go{false};
    std::atomic<uint64_t> pub_done{0}, pub_bp{0};
    std::vector<std::thread> threads;
    for (uint32_t i = 0; i < a.subs; ++i)
      threads.emplace_back([&, i] {
        Result& r = results[i];
        r.lat.reserve(expect);
        auto& ss = subs[i];
        uint64_t idle_since = 0;
        size_t k = 0;
        View v;
        while (r.received < expect && !g_stop) {
          Subscriber& s = ss[k];
          k = (k + 1) % ss.size();
          Status st = ss.size() == 1 ? s.poll_wait(v, 100'000'000) : s.poll(v);
          if (st == Status::lapped) {
            ++r.lapped;
            continue;
          }
          if (st != Status::ok) {
            const uint64_t now = mono_ns();
            if (!idle_since) idle_since = now;
            // Nothing for 10 s once the publishers are done: something was lost.
            if (pub_done.load(std::memory_order_acquire) == a.pubs && now - idle_since > 10'000'000'000ull)
              break;
            if (ss.size() > 1 && k == 0) s.wait_for(1'000'000);
            continue;
          }
          idle_since = 0;
          const uint64_t now = mono_ns();
          const uint64_t ts = v.timestamp_ns();
          r.lat.push_back(now > ts ? now - ts : 0);
          if (!r.received) r.first_ns = now;
          r.last_ns = now;
          ++r.received;
          s.release(v);
          v = View{};
        }
      });
    std::vector<uint64_t> done_at(a.pubs, 0);
    for (uint32_t p = 0; p < a.pubs; ++p)
      threads.emplace_back([&, p] {
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        Publisher& pub = pubs[p];
        const uint64_t t0 = mono_ns();
        for (uint64_t n = 0; n < a.count && !g_stop; ++n) {
          if (a.rate > 0) {  // absolute deadlines: no drift, and a late message is not made up by a burst
            const uint64_t t = t0 + uint64_t(double(n) * 1e9 / a.rate);
            timespec ts{time_t(t / 1'000'000'000ull), long(t % 1'000'000'000ull)};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR && !g_stop) {
            }
          }
          ClaimView cv;
          Status st = pub.claim(a.size, cv);
          if (st != Status::ok) {
            pub_bp.fetch_add(1, std::memory_order_relaxed);
            break;
          }
          if (a.size >= 8) std::memcpy(cv.data, &n, 8);
          pub.commit(a.size);
        }
        done_at[p] = mono_ns();
        pub_done.fetch_add(1, std::memory_order_release);
      });
    pub_start = mono_ns();
    go.store(true, std::memory_order_release);
    for (auto& t : threads) t.join();
    for (auto& p : pubs) published += p.stats().published;
    back_pressured = pub_bp.load();
    pub_end = *std::max_element(done_at.begin(), done_at.end());
  } catch (const Error& e) {
    error = e.what();
  }
  try {
    c.delete_topic(name);
  } catch (const Error& e) {
    if (error.empty()) error = std::string("deleting the bench topic: ") + e.what();
  }
  if (!error.empty()) throw Error(ErrorCode::system, error);

  std::vector<uint64_t> lat;
  uint64_t received = 0, lapped = 0, sub_end = pub_start;
  for (auto& r : results) {
    received += r.received;
    lapped += r.lapped;
    sub_end = std::max(sub_end, r.last_ns);
    lat.insert(lat.end(), r.lat.begin(), r.lat.end());
  }
  std::sort(lat.begin(), lat.end());
  const double pub_s = double(pub_end - pub_start) / 1e9, sub_s = double(sub_end - pub_start) / 1e9;
  const double pub_rate = pub_s > 0 ? double(published) / pub_s : 0;
  const double sub_rate = sub_s > 0 ? double(received) / sub_s : 0;
  const uint64_t p50 = quantile(lat, 0.5), p99 = quantile(lat, 0.99), p999 = quantile(lat, 0.999),
                 mx = lat.empty() ? 0 : lat.back();
  const bool complete = published == a.count * a.pubs && received == published * a.subs;
  if (json) {
    std::printf(
        "{\"topic\":%s,\"publishers\":%u,\"subscribers\":%u,\"size\":%u,\"rate\":%g,\"count\":%" PRIu64
        ",\"published\":%" PRIu64 ",\"received\":%" PRIu64 ",\"lapped\":%" PRIu64
        ",\"back_pressured\":%" PRIu64
        ",\"complete\":%s,"
        "\"publish\":{\"seconds\":%.6f,\"msgs_per_sec\":%.1f,\"mb_per_sec\":%.3f},"
        "\"subscribe\":{\"seconds\":%.6f,\"msgs_per_sec\":%.1f,\"mb_per_sec\":%.3f},"
        "\"latency_ns\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"p99_9\":%" PRIu64 ",\"max\":%" PRIu64
        "}}\n",
        jstr(name).c_str(), a.pubs, a.subs, a.size, a.rate, a.count, published, received, lapped,
        back_pressured, complete ? "true" : "false", pub_s, pub_rate, pub_rate * a.size / 1e6, sub_s,
        sub_rate, sub_rate * a.size / 1e6, p50, p99, p999, mx);
  } else {
    std::printf("bench %s: %u publishers, %u subscribers, %" PRIu64 " messages of %u B per publisher%s\n",
                name.c_str(), a.pubs, a.subs, a.count, a.size,
                a.rate > 0 ? (", " + std::to_string(uint64_t(a.rate)) + " msg/s each").c_str() : "");
    std::printf("  publish   %" PRIu64 " msgs in %.3f s: %.0f msgs/s, %.2f MB/s\n", published, pub_s,
                pub_rate, pub_rate * a.size / 1e6);
    if (a.subs)
      std::printf("  subscribe %" PRIu64 " msgs in %.3f s: %.0f msgs/s, %.2f MB/s (all subscribers)\n",
                  received, sub_s, sub_rate, sub_rate * a.size / 1e6);
    if (!lat.empty())
      std::printf("  latency (commit to receive) p50 %.2f us, p99 %.2f us, p99.9 %.2f us, max %.2f us\n",
                  p50 / 1e3, p99 / 1e3, p999 / 1e3, mx / 1e3);
    if (!complete)
      std::printf("  INCOMPLETE: %" PRIu64 " back-pressured, %" PRIu64 " lapped%s\n", back_pressured, lapped,
                  g_stop ? ", interrupted" : "");
  }
  return complete ? 0 : 1;
}

}  // namespace shmbus::cli
