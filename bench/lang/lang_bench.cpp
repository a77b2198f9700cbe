// shmbus-lang-bench-cpp: the C++ side of the language-pair benchmark
// (bench/lang/run.sh). The Go and Rust sides are the `bench-produce` /
// `bench-consume` modes of their xlang programs, with the same flags and output:
//
//   bench-consume --prefix P --topic T --count N [--latency] [--capacity BYTES]
//       creates the topic if needed, subscribes (busy-spin), prints READY, then
//       reads N Quote messages in place (poll a batch, read every message with the
//       Cap'n Proto reader, check its seq, release the batch) and prints one JSON
//       line: throughput from the first to the last message and, with --latency,
//       one-way latency percentiles: CLOCK_MONOTONIC at receive - the frame's
//       timestamp (CLOCK_MONOTONIC at commit). With --lat-dump FILE it also
//       writes every message's (commit, receive) timestamps there, two
//       little-endian u64 each, in the order received.
//   bench-produce --prefix P --topic T --count N [--rate R] [--batch K]
//       builds N 64-byte Quote messages in place (claim 64 B, build, commit), as
//       fast as it can or paced at R msg/s, and prints one JSON line. With
//       --batch K: builds one reused Quote in its own memory, copies each message
//       into a packed buffer and publishes K at a time (offer_batch), the path
//       the Go and Rust batched producers take through the C ABI. With --rate and
//       --pauses FILE, writes there every gap longer than 2 us between two of its
//       consecutive clock reads (pacing spins, and across each publish) as
//       (start, end) pairs of little-endian u64: time its core did not run it,
//       which on a VM pausing all vCPUs at once is time the consumer lost too
//       (bench/lang/pauses.py drops the messages in flight during one).
//   hiccups --seconds S
//       the machine's own latency floor: one thread spins reading CLOCK_MONOTONIC
//       for S seconds and reports the gaps longer than 3 us (time it did not run:
//       interrupts, preemption, or the hypervisor pausing the vCPU) as one JSON
//       line. run.sh runs it on both cores at once before the pairs: a paced
//       message in flight when such a gap hits is late by the gap, whatever the
//       language, so it bounds what p99 can show on this machine.
#include <algorithm>
#include <utility>
#include <span>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "market.capnp.h"
#include "shmbus/message.hpp"
#include "shmbus/shmbus.hpp"

using namespace shmbus;

namespace {

struct Args {
  std::string cmd, prefix, topic, lat_dump, pauses;
  uint64_t count = 0, rate = 0, capacity = 1u << 20, batch = 0;
  bool latency = false;
  double seconds = 0.5;
};

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: shmbus-lang-bench-cpp bench-consume|bench-produce --prefix P --topic T "
               "--count N [--latency] [--lat-dump FILE] [--rate R] [--pauses FILE] "
               "[--capacity BYTES] [--batch K]\n"
               "       shmbus-lang-bench-cpp hiccups [--seconds S]\n");
  std::exit(64);
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) usage();
  a.cmd = argv[1];
  if (a.cmd != "bench-consume" && a.cmd != "bench-produce" && a.cmd != "hiccups") usage();
  for (int i = 2; i < argc; ++i) {
    std::string f = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (f == "--prefix")
      a.prefix = val();
    else if (f == "--topic")
      a.topic = val();
    else if (f == "--count")
      a.count = std::stoull(val());
    else if (f == "--batch")
      a.batch = std::stoull(val());
    else if (f == "--rate")
      a.rate = std::stoull(val());
    else if (f == "--capacity")
      a.capacity = std::stoull(val());
    else if (f == "--latency")
      a.latency = true;
    else if (f == "--lat-dump")
      a.lat_dump = val();
    else if (f == "--pauses")
      a.pauses = val();
    else if (f == "--seconds")
      a.seconds = std::stod(val());
    else
      usage();
  }
  if (a.cmd != "hiccups" && (a.prefix.empty() || a.topic.empty() || a.count == 0)) usage();
  return a;
}

// write_pairs: (a, b) pairs as little-endian u64 (this program runs on x86-64 and
// arm64 Linux, both little-endian), the format of --lat-dump and --pauses.
bool write_pairs(const std::string& path, const std::vector<std::pair<uint64_t, uint64_t>>& v) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  bool ok = true;
  for (const auto& [x, y] : v) {
    const uint64_t w[2] = {x, y};
    ok = ok && std::fwrite(w, sizeof w, 1, f) == 1;
  }
  return std::fclose(f) == 0 && ok;
}

// Pacer: waits for each message's send time and records the gaps between its
// consecutive clock reads that are longer than kPauseNs (see --pauses).
struct Pacer {
  static constexpr uint64_t kPauseNs = 2000;
  uint64_t gap = 0, next = 0, last = 0;
  std::vector<std::pair<uint64_t, uint64_t>> pauses;
  explicit Pacer(uint64_t g) : gap(g) { pauses.reserve(1 << 16); }
  void start(uint64_t t0) { next = last = t0; }
  // wait: spins until the next send time (reading the clock at least once).
  void wait() {
    for (;;) {
      const uint64_t t = shm::monotonic_ns();
      if (t - last > kPauseNs) pauses.emplace_back(last, t);
      last = t;
      if (t >= next) break;
      shm::cpu_relax();
    }
    next += gap;
  }
};

int consume(const Args& a) {
  Bus bus = Bus::direct({.shm_prefix = a.prefix});
  try {
    bus.create_topic(a.topic, {.capacity = a.capacity});
  } catch (const Error&) {
    // exists already (created by the other side)
  }
  SubscriberOptions so;
  so.wait = WaitStrategy::busy_spin;
  Subscriber sub = bus.subscriber(a.topic, so);
  std::printf("READY\n");
  std::fflush(stdout);
  std::vector<uint64_t> lat;
  std::vector<std::pair<uint64_t, uint64_t>> dump;  // (commit, receive)
  if (a.latency) lat.reserve(a.count);
  if (!a.lat_dump.empty()) dump.reserve(a.count);
  uint64_t got = 0, errors = 0, t_first = 0, t_last = 0, bytes = 0;
  while (got < a.count) {
    const size_t k = sub.poll_batch(256, [&](const View& v) {
      MessageReader r(v);
      if (!r || r.root<schema::Quote>().getSeq() != got + 1) ++errors;
      ++got;
      if (a.latency || !a.lat_dump.empty()) {
        const uint64_t now = shm::monotonic_ns();
        if (a.latency) lat.push_back(now - v.timestamp_ns());
        if (!a.lat_dump.empty()) dump.emplace_back(v.timestamp_ns(), now);
      }
      if (got == 1) bytes = v.size();
    });
    if (k == 0) {
      // Nothing there: wait (busy-spin strategy) with a watchdog.
      if (!sub.wait(30'000'000'000)) {
        std::fprintf(stderr, "bench-consume: nothing for 30 s after %lu\n", got);
        return 2;
      }
      continue;
    }
    const uint64_t now = shm::monotonic_ns();
    if (t_first == 0) t_first = now;
    t_last = now;
  }
  const double secs = double(t_last - t_first) / 1e9;
  const double mps = secs > 0 ? double(got - 1) / secs : 0;
  if (!a.lat_dump.empty() && !write_pairs(a.lat_dump, dump)) {
    std::fprintf(stderr, "bench-consume: cannot write %s\n", a.lat_dump.c_str());
    return 1;
  }
  uint64_t p50 = 0, p99 = 0, p999 = 0, mx = 0;
  if (!lat.empty()) {
    std::sort(lat.begin(), lat.end());
    auto at = [&](double q) { return lat[size_t(q * double(lat.size() - 1))]; };
    p50 = at(0.5), p99 = at(0.99), p999 = at(0.999), mx = lat.back();
  }
  std::printf(
      "{\"lang\":\"cpp\",\"role\":\"consumer\",\"received\":%lu,\"errors\":%lu,\"bytes\":%lu,"
      "\"mps\":%.0f,\"ns_per_msg\":%.2f,\"p50_ns\":%lu,\"p99_ns\":%lu,\"p999_ns\":%lu,\"max_ns\":%lu}\n",
      got, errors, bytes, mps, mps > 0 ? 1e9 / mps : 0.0, p50, p99, p999, mx);
  return errors ? 1 : 0;
}

// bench-produce --batch: one Quote in the producer's own memory, reused, its flat
// form (segment table + segment) copied into a packed buffer; offer_batch per K.
int produce_packed(const Args& a, Publisher& pub, Pacer& pace) {
  capnp::MallocMessageBuilder msg(64);
  auto q = msg.initRoot<schema::Quote>();
  const auto seg = msg.getSegmentsForOutput()[0].asBytes();
  const size_t size = 8 + seg.size();
  std::vector<std::byte> buf(size * a.batch);
  std::vector<std::span<const std::byte>> spans(a.batch);
  for (size_t k = 0; k < a.batch; ++k) {
    const uint32_t table[2] = {0, uint32_t(seg.size() / 8)};
    std::memcpy(&buf[k * size], table, sizeof table);
    spans[k] = {&buf[k * size], size};
  }
  const uint64_t t0 = shm::monotonic_ns();
  pace.start(t0);
  size_t k = 0;
  for (uint64_t i = 1; i <= a.count; ++i) {
    if (pace.gap) pace.wait();
    q.setInstrumentId(uint32_t(i % 1000));
    q.setBidPx(int64_t(10'000'000'000 + i));
    q.setAskPx(int64_t(10'000'000'100 + i));
    q.setBidQty(uint32_t(i % 500 + 1));
    q.setAskQty(uint32_t(i % 700 + 1));
    q.setExchangeTsNs(i);
    q.setSeq(i);
    std::memcpy(&buf[k * size + 8], seg.begin(), seg.size());
    // Paced runs publish at once (the latency mode measures each message).
    if (++k == a.batch || i == a.count || pace.gap) {
      Status last = Status::ok;
      if (pub.offer_batch(std::span(spans.data(), k), &last) != k) {
        std::fprintf(stderr, "bench-produce: offer up to %lu: %s\n", i, to_string(last));
        return 1;
      }
      k = 0;
    }
  }
  const double secs = double(shm::monotonic_ns() - t0) / 1e9;
  std::printf("{\"lang\":\"cpp\",\"role\":\"producer\",\"published\":%lu,\"mps\":%.0f,\"fallbacks\":0}\n",
              a.count, secs > 0 ? double(a.count) / secs : 0);
  return 0;
}

// bench-produce without --batch: claim 64 B, build the Quote in place, commit.
int produce_in_place(const Args& a, Publisher& pub, Pacer& pace) {
  const uint64_t t0 = shm::monotonic_ns();
  pace.start(t0);
  uint64_t fallbacks = 0;
  for (uint64_t i = 1; i <= a.count; ++i) {
    if (pace.gap) pace.wait();
    MessageClaim m(pub, 64);
    if (!m) {
      std::fprintf(stderr, "bench-produce: claim %lu: %s\n", i, to_string(m.status()));
      return 1;
    }
    auto q = m.init_root<schema::Quote>();
    q.setInstrumentId(uint32_t(i % 1000));
    q.setBidPx(int64_t(10'000'000'000 + i));
    q.setAskPx(int64_t(10'000'000'100 + i));
    q.setBidQty(uint32_t(i % 500 + 1));
    q.setAskQty(uint32_t(i % 700 + 1));
    q.setExchangeTsNs(i);
    q.setSeq(i);
    if (m.commit_as<schema::Quote>(i) != Status::ok) {
      std::fprintf(stderr, "bench-produce: commit %lu failed\n", i);
      return 1;
    }
    fallbacks += m.fell_back();
  }
  const double secs = double(shm::monotonic_ns() - t0) / 1e9;
  std::printf("{\"lang\":\"cpp\",\"role\":\"producer\",\"published\":%lu,\"mps\":%.0f,\"fallbacks\":%lu}\n",
              a.count, secs > 0 ? double(a.count) / secs : 0, fallbacks);
  return 0;
}

int produce(const Args& a) {
  Bus bus = Bus::direct({.shm_prefix = a.prefix});
  PublisherOptions po;
  po.wait = WaitStrategy::busy_spin;
  po.block_timeout_ns = 30'000'000'000;
  Publisher pub = bus.publisher(a.topic, po);
  Pacer pace(a.rate ? 1'000'000'000ull / a.rate : 0);
  const int rc = a.batch ? produce_packed(a, pub, pace) : produce_in_place(a, pub, pace);
  if (rc == 0 && !a.pauses.empty() && !write_pairs(a.pauses, pace.pauses)) {
    std::fprintf(stderr, "bench-produce: cannot write %s\n", a.pauses.c_str());
    return 1;
  }
  return rc;
}

// hiccups: see the header comment.
int hiccups(const Args& a) {
  std::vector<uint64_t> gaps;
  gaps.reserve(1 << 20);
  const uint64_t t0 = shm::monotonic_ns(), end = t0 + uint64_t(a.seconds * 1e9);
  uint64_t last = t0, total = 0;
  for (;;) {
    const uint64_t t = shm::monotonic_ns();
    if (t - last > 3000 && gaps.size() < gaps.capacity()) {
      gaps.push_back(t - last);
      total += t - last;
    }
    last = t;
    if (t >= end) break;
  }
  const double secs = double(last - t0) / 1e9;
  std::sort(gaps.begin(), gaps.end());
  const auto at = [&](double q) {
    return gaps.empty() ? 0.0 : double(gaps[size_t(q * double(gaps.size() - 1))]) / 1e3;
  };
  std::printf(
      "{\"role\":\"hiccups\",\"per_s\":%.0f,\"median_us\":%.1f,\"p90_us\":%.1f,\"max_us\":%.1f,"
      "\"lost_pct\":%.2f}\n",
      double(gaps.size()) / secs, at(0.5), at(0.9), at(1.0), 100.0 * double(total) / 1e9 / secs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  try {
    int rc = a.cmd == "bench-consume" ? consume(a) : a.cmd == "hiccups" ? hiccups(a) : produce(a);
    std::fflush(stdout);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", a.cmd.c_str(), e.what());
    return 1;
  }
}
