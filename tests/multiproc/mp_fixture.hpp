// Scaffolding for the multi-process tests: a topic under a per-run /dev/shm prefix
// (removed at the end), a printed seed, and helpers that start mp_helper roles.
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../child_process.hpp"
#include "shmbus/shmbus.hpp"
#include "../test_util.hpp"

namespace shmbus::test {

// A fresh seed per run, printed; SHMBUS_TEST_SEED replays one.
inline uint64_t test_seed(const char* what) {
  uint64_t seed;
  if (const char* e = std::getenv("SHMBUS_TEST_SEED"))
    seed = std::strtoull(e, nullptr, 0);
  else
    seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) ^ (uint64_t(getpid()) << 32);
  seed &= 0xffffffffffffull;
  std::fprintf(stderr, "[%s] seed %llu (replay: SHMBUS_TEST_SEED=%llu)\n", what, (unsigned long long)seed,
               (unsigned long long)seed);
  return seed;
}

// One topic on a direct bus with a prefix unique to this run.
struct MpTopic {
  std::string prefix;
  TopicGuard guard;
  MpTopic(const char* what, const TopicConfig& cfg)
      : prefix(unique_prefix(what)), guard{Bus::direct({.shm_prefix = prefix}), "mp.topic"} {
    guard.bus.create_topic(guard.topic, cfg);
  }
#ifdef SHMBUS_TEST_HELPER  // the tests that run mp_helper (tests/multiproc/meson.build)
  // The helper's command line: the role, then the key=value arguments every helper of
  // this topic gets.
  std::vector<std::string> args(const std::string& role, uint64_t seed, uint32_t max_body,
                                std::vector<std::string> more) const {
    std::vector<std::string> a{helper_path(),
                               role,
                               "prefix=" + prefix,
                               "topic=" + guard.topic,
                               "seed=" + std::to_string(seed),
                               "max_body=" + std::to_string(max_body)};
    a.insert(a.end(), more.begin(), more.end());
    return a;
  }
#endif
};

// Starts a subscriber helper and waits (bounded) until it has joined.
inline void start_ready(Child& c, const std::vector<std::string>& args) {
  c.start(args);
  INFO(c.describe());
  REQUIRE(c.await("ready", 20'000) == "1");
}

// Waits for a helper to end and requires a clean "ok".
inline void require_ok(Child& c, int timeout_ms) {
  c.finish(timeout_ms);
  INFO(c.describe());
  REQUIRE(c.ok());
  REQUIRE(c.fact("ok") == "1");
}

}  // namespace shmbus::test
