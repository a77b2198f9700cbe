// Helpers for the durable-topic tests: a topic + state directory per test, and
// deterministic payloads so any consumer can check a message by its sequence.
#pragma once

#include <time.h>

#include <atomic>

#include <ftw.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus::test {

inline int rm_entry(const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }
inline void rm_rf(const std::string& dir) { nftw(dir.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

// A temporary state directory on the real disk (not tmpfs), removed at the end.
struct TempDir {
  std::string path;
  explicit TempDir(const char* base = nullptr) {
    std::string b = base ? base : (getenv("SHMBUS_SPILL_TMP") ? getenv("SHMBUS_SPILL_TMP") : "/var/tmp");
    std::string t = b + "/shmbus-spill-XXXXXX";
    std::vector<char> buf(t.begin(), t.end());
    buf.push_back(0);
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
    path = buf.data();
  }
  ~TempDir() { rm_rf(path); }
};

// Payload of sequence `seq`: 8..(8+span) bytes derived from seq.
inline uint32_t payload_len(uint64_t seq, uint32_t span = 120) {
  return 8 + uint32_t((seq * 2654435761u) % (span + 1));
}
inline void fill_payload(uint64_t seq, std::byte* p, uint32_t n) {
  Rng r(seq * 0x9E3779B97F4A7C15ull + 1);
  for (uint32_t i = 0; i < n; i += 8) {
    uint64_t v = r.next();
    std::memcpy(p + i, &v, n - i < 8 ? n - i : 8);
  }
  std::memcpy(p, &seq, n < 8 ? n : 8);
}
inline bool payload_ok(uint64_t seq, const std::byte* p, uint32_t n, uint32_t span = 120) {
  if (n != payload_len(seq, span)) return false;
  std::byte buf[4096];
  fill_payload(seq, buf, n);
  return std::memcmp(buf, p, n) == 0;
}

// Publishes one deterministic message; returns its sequence (0 if not published).
inline uint64_t publish_one(Publisher& pub, uint64_t expect_seq, uint32_t span = 120) {
  ClaimView cv;
  const uint32_t n = payload_len(expect_seq, span);
  if (pub.claim(n, cv) != Status::ok) return 0;
  fill_payload(cv.sequence, cv.data, payload_len(cv.sequence, span));
  const uint32_t used = payload_len(cv.sequence, span);
  if (pub.commit(used) != Status::ok) return 0;
  return cv.sequence;
}

// Publishes 1, 2, 3, ... until `stop`, storing the last published sequence in
// `produced`; sets `failed` (and returns) if a publish does not get the expected
// sequence. Load shape, not synchronisation: it sleeps 1 ms every 256 messages (at
// most ~250k messages/s), so crash tests with 100 kills write tens of MB over a few
// dozen segment files instead of filling the disk at full speed.
inline void paced_producer(Publisher& pub, const std::atomic<bool>& stop, std::atomic<bool>& failed,
                           std::atomic<uint64_t>& produced) {
  // 256 messages a millisecond; an eighth of that in the short (sanitizer) variant,
  // where the kills take seconds each and the final check reads everything produced.
  const uint64_t per_ms = uint64_t(shmbus::test::trials(256, 32));
  for (uint64_t i = 1; !stop.load(std::memory_order_relaxed); ++i) {
    if (publish_one(pub, i) != i) {
      failed = true;
      return;
    }
    produced.store(i, std::memory_order_release);
    if (i % per_ms == 0) {
      timespec pace{0, 1'000'000};
      nanosleep(&pace, nullptr);
    }
  }
}

inline TopicConfig durable_topic(uint64_t capacity = 1 << 20) {
  TopicConfig c;
  c.capacity = capacity;
  c.max_payload = 4096;
  c.policy = Policy::spill;
  return c;
}

inline PublisherOptions patient_publisher() {
  PublisherOptions o;
  o.block_timeout_ns = 20'000'000'000;  // the archiver may be restarting
  o.reclaim_after_ns = INT64_MAX / 4;   // never reap the (dead) archiver's cursor
  return o;
}

}  // namespace shmbus::test
