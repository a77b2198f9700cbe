// Runs an Archiver for one partition in its own process, for the crash tests:
//   spill_archiver_child <shm-prefix> <topic> <state-dir> <none|interval|batch> <segment-bytes>
// Prints "R\n" on stdout once archiving, then runs until stdin closes (clean stop)
// or it is killed.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shmbus/bus.hpp"
#include "shmbus/spill/archiver.hpp"

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s prefix topic state-dir policy segment-bytes\n", argv[0]);
    return 2;
  }
  try {
    shmbus::Bus bus = shmbus::Bus::direct({.shm_prefix = argv[1]});
    shmbus::spill::LogConfig lc;
    lc.state_dir = argv[3];
    std::string pol = argv[4];
    lc.flush = pol == "none"    ? shmbus::spill::FlushPolicy::none
               : pol == "batch" ? shmbus::spill::FlushPolicy::batch
                                : shmbus::spill::FlushPolicy::interval;
    lc.flush_interval_ms = 2;
    lc.segment_bytes = std::strtoull(argv[5], nullptr, 10);
    lc.index_interval = 16 << 10;
    shmbus::spill::Archiver a;
    a.add_partition(bus.provider().open(argv[2], 0, shmbus::Role::admin, 5000), lc);
    a.start();
    if (write(1, "R\n", 2) != 2) return 3;
    char c;
    while (read(0, &c, 1) > 0) {
    }
    a.stop();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "archiver child: %s\n", e.what());
    return 1;
  }
}
