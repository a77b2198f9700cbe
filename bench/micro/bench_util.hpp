// Helpers shared by the micro-benchmarks: a topic per benchmark (removed at the
// end), payload sizes and core pinning.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "shmbus/shmbus.hpp"

namespace shmbus::bench {

// Ring size for the micro-benchmarks: 1 MiB fits the L2 of this machine, like the
// e2e harness's default, so that the numbers measure the algorithm, not DRAM.
inline constexpr uint64_t kRingBytes = 1u << 20;

struct BenchTopic {
  Bus bus;
  std::string topic = "bench.micro";
  explicit BenchTopic(uint64_t capacity = kRingBytes, uint64_t max_payload = 16384)
      : bus(Bus::direct({.shm_prefix = unique()})) {
    bus.create_topic(topic, {.capacity = capacity, .max_payload = max_payload});
  }
  ~BenchTopic() {
    try {
      bus.remove_topic(topic);
    } catch (...) {
    }
  }
  static std::string unique() {
    static std::atomic<int> n{0};
    return "shmbus-bm-" + std::to_string(getpid()) + "-" + std::to_string(n.fetch_add(1));
  }
};

inline bool pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

// Payload sizes 8 B ... 4 KiB, in powers of 8 plus the common 64 B and 256 B.
#define SHMBUS_BENCH_SIZES ->Arg(8)->Arg(64)->Arg(256)->Arg(1024)->Arg(4096)

}  // namespace shmbus::bench
