// Helpers shared by the test suites.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "shmbus/bus.hpp"

namespace shmbus::test {

// A segment prefix unique to this process and call, so tests never collide, and
// a guard that removes the topic's segments when the test ends.
inline std::string unique_prefix(const char* what) {
  static std::atomic<int> n{0};
  return std::string("shmbus-t-") + what + "-" + std::to_string(getpid()) + "-" +
         std::to_string(n.fetch_add(1));
}

struct TopicGuard {
  Bus bus;
  std::string topic;
  ~TopicGuard() {
    try {
      bus.remove_topic(topic);
    } catch (...) {
    }
  }
};

inline uint64_t fnv1a(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// Deterministic xorshift for payload contents and sizes.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed ? seed : 0x9e3779b97f4a7c15ull) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

}  // namespace shmbus::test
