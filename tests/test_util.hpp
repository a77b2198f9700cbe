// Helpers shared by the test suites.
#pragma once

#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "shmbus/bus.hpp"
#include "shmbus/shm/futex.hpp"

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

// Trials of a long loop: `full` in a normal build, `short_n` in the sanitizer builds
// (their meson.build sets SHMBUS_TEST_SHORT=1: a sanitized process is 2-10x slower).
inline int trials(int full, int short_n) {
  const char* e = std::getenv("SHMBUS_TEST_SHORT");
  return e && *e && std::string(e) != "0" ? short_n : full;
}

// A random gap between bursts: nothing, a yield, a spin, or a sleep of up to
// max_sleep_ns, so that the next commit lands in every phase of a reader's way into the
// futex (a perturbation of timing, not a synchronisation).
inline void random_gap(Rng& rng, uint64_t max_sleep_ns = 100'000) {
  uint64_t r = rng.next();
  switch (r & 3) {
    case 0: break;
    case 1: sched_yield(); break;
    case 2:
      for (uint64_t i = (r >> 8) % 20000; i > 0; --i) shm::cpu_relax();
      break;
    default: {
      timespec ts{0, long(1000 + (r >> 8) % max_sleep_ns)};
      nanosleep(&ts, nullptr);
    }
  }
}

// The kernel's view of a thread of this process: 'S' while it sleeps (e.g. in a
// futex wait), 'R' while it runs.
inline char thread_state(pid_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto p = s.rfind(')');
  return p == std::string::npos || p + 2 >= s.size() ? '?' : s[p + 2];
}

// Waits (bounded: 20 s) until thread `tid` sleeps in the kernel; false if it never does.
inline bool wait_until_asleep(const std::atomic<pid_t>& tid) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < until) {
    const pid_t t = tid.load();
    if (t && thread_state(t) == 'S') return true;
    std::this_thread::yield();
  }
  return false;
}

}  // namespace shmbus::test
